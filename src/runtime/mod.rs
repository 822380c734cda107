//! The container runtime seam: a narrow async `ContainerRuntime` trait (what the deploy engine
//! needs from Docker, nothing more) and its bollard implementation in `docker.rs`. Everything
//! that comes back from Docker is parsed into plain types here; nothing is unwrapped.

pub mod docker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use thiserror::Error;

pub use docker::DockerRuntime;

/// Errors from the container runtime.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("cannot reach the Docker engine: {0}")]
    Connect(String),
    #[error("{what} not found: {id}")]
    NotFound { what: &'static str, id: String },
    #[error("image load failed: {0}")]
    Load(String),
    #[error("image pull of {reference} failed: {message}")]
    Pull { reference: String, message: String },
    #[error("Docker {op} failed: {message}")]
    Docker { op: &'static str, message: String },
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
}

/// A byte stream (an image tar, a request body).
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Registry credentials for a pull. `Debug` never shows the password.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct RegistryCreds {
    pub username: String,
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

impl std::fmt::Debug for RegistryCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCreds")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("server", &self.server)
            .finish()
    }
}

/// What to create. The container joins the runtime's network; restart policy `unless-stopped`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    /// Image reference or id.
    pub image: String,
    pub labels: HashMap<String, String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    /// Docker bind/volume specs.
    pub volumes: Vec<String>,
    /// Overrides the image's command (tests start busybox httpd this way).
    pub cmd: Option<Vec<String>>,
    /// Signal `docker stop` sends (the image's, usually SIGTERM, when unset).
    pub stop_signal: Option<String>,
    /// Overrides the image's entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: Option<i64>,
}

/// Run state of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Restarting,
    Paused,
    Exited,
    Dead,
    Other,
}

/// Docker's own HEALTHCHECK status, when the image defines one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DockerHealth {
    Starting,
    Healthy,
    Unhealthy,
}

/// A container as inspected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Without Docker's leading '/'.
    pub name: String,
    pub image_id: String,
    pub labels: HashMap<String, String>,
    pub state: RunState,
    /// Address on the runtime's network, if attached and running.
    pub address: Option<IpAddr>,
    pub health: Option<DockerHealth>,
    /// Restarts by Docker's restart policy (a worker's gate wants none while it waits).
    pub restart_count: i64,
}

impl ContainerInfo {
    pub fn running(&self) -> bool {
        self.state == RunState::Running
    }
}

/// A container lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// Docker's action: `start`, `die`, `stop`, `destroy`, `health_status: healthy`, …
    pub action: String,
    pub labels: HashMap<String, String>,
}

impl ContainerEvent {
    /// Whether the container stopped serving with this event.
    pub fn is_gone(&self) -> bool {
        matches!(
            self.action.as_str(),
            "die" | "stop" | "kill" | "destroy" | "pause" | "oom"
        )
    }
}

/// What Berth needs from a container engine.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Name of the network containers are attached to.
    fn network(&self) -> &str;
    /// Creates the network if it is missing.
    async fn ensure_network(&self) -> Result<(), RuntimeError>;
    /// `docker load` of an image tar; returns the loaded image's id (`sha256:…`).
    async fn load_image(&self, tar: ByteStream) -> Result<String, RuntimeError>;
    /// Pulls a reference; returns its image id.
    async fn pull_image(
        &self,
        reference: &str,
        creds: Option<&RegistryCreds>,
    ) -> Result<String, RuntimeError>;
    /// The id of a local image (`NotFound` if it is not present).
    async fn image_id(&self, reference: &str) -> Result<String, RuntimeError>;
    /// Removes an image; an image still used by a container is left alone (`Ok(false)`).
    async fn remove_image(&self, id: &str) -> Result<bool, RuntimeError>;
    /// Adds the tag `repo:tag` to a local image (Berth's own `berth/APP:DEPLOYMENT` tags).
    async fn tag_image(&self, id: &str, repo: &str, tag: &str) -> Result<(), RuntimeError> {
        let _ = (id, repo, tag);
        Ok(())
    }
    /// Removes one tag (never forced): the image goes only with its last tag and when no
    /// container uses it; other tags (an operator's own) keep it. `Ok(false)`: still in use.
    async fn untag_image(&self, reference: &str) -> Result<bool, RuntimeError> {
        let _ = reference;
        Ok(false)
    }
    /// Creates and starts a container; returns its id.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Runs a one-off container (never restarted) to its end: each output line goes to
    /// `on_line`, the exit code is returned, and the container is removed in every case.
    /// Past `timeout` it is killed and the result is `RuntimeError::Timeout`.
    async fn run_once(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
        on_line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<i64, RuntimeError> {
        let _ = (spec, timeout, on_line);
        Err(RuntimeError::Docker {
            op: "run once",
            message: "not supported by this runtime".into(),
        })
    }
    /// Starts an existing, stopped container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// SIGTERM, then SIGKILL after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Removes a container (forcefully, with its anonymous volumes). Missing is fine.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;
    /// Containers (running or not) carrying every one of `labels` (`key` or `key=value`).
    async fn list(&self, labels: &[String]) -> Result<Vec<ContainerInfo>, RuntimeError>;
    /// Log lines (stdout and stderr), the last `tail` of them, then new ones if `follow`.
    fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<String, RuntimeError>>;
    /// Container events from now on.
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, RuntimeError>>;
}

/// The last `n` log lines of a container, joined; empty if they cannot be read.
pub async fn last_log_lines(rt: &dyn ContainerRuntime, id: &str, n: usize) -> String {
    use futures_util::StreamExt;
    let mut s = rt.logs(id, false, Some(n));
    let mut out = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(Ok(line))) = tokio::time::timeout_at(deadline, s.next()).await {
        out.push_str(&line);
        if !line.ends_with('\n') {
            out.push('\n');
        }
    }
    out.trim_end().to_string()
}
