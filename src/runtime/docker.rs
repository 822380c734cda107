//! `ContainerRuntime` over bollard. Connects, then negotiates the API version (Debian's
//! dockerd speaks 1.41, bollard asks for newer by default). Docker's answers are mapped into
//! `runtime` types; a missing container on stop/remove is success (the goal state holds).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    EventMessageTypeEnum, HealthStatusEnum, HostConfig, NetworkCreateRequest, NetworkingConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ImportImageOptions,
    ListContainersOptions, LogsOptions, RemoveContainerOptions, RemoveImageOptions,
    StopContainerOptions,
};
use bollard::Docker;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{
    ByteStream, ContainerEvent, ContainerInfo, ContainerRuntime, ContainerSpec, DockerHealth,
    RegistryCreds, RunState, RuntimeError,
};

/// The bollard-backed runtime.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    network: String,
}

fn status(e: &BError) -> Option<u16> {
    match e {
        BError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Inspects in flight at once while listing containers.
const LIST_INSPECTS: usize = 8;

fn derr(op: &'static str) -> impl Fn(BError) -> RuntimeError {
    move |e| RuntimeError::Docker {
        op,
        message: e.to_string(),
    }
}

impl DockerRuntime {
    /// Keeps the oldest network with our exact name and removes the others (racing
    /// creators all pick the same survivor, so this converges).
    async fn dedupe_network(&self) -> Result<(), RuntimeError> {
        let opts = bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_string(),
                vec![self.network.clone()],
            )])),
        };
        let mut same: Vec<(String, String)> = self
            .docker
            .list_networks(Some(opts))
            .await
            .map_err(derr("network list"))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(self.network.as_str()))
            .filter_map(|n| Some((n.created.map(|c| c.to_string()).unwrap_or_default(), n.id?)))
            .collect();
        same.sort();
        for (_, id) in same.iter().skip(1) {
            if let Err(e) = self.docker.remove_network(id).await {
                tracing::warn!(network = %self.network, %id, error = %e, "could not remove a duplicate network");
            }
        }
        Ok(())
    }

    /// Connects to the local engine (`DOCKER_HOST` or /var/run/docker.sock) and negotiates the
    /// API version. Containers will join `network`.
    pub async fn connect(network: impl Into<String>) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Connect(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| RuntimeError::Connect(e.to_string()))?;
        Ok(Self {
            docker,
            network: network.into(),
        })
    }

    /// The underlying client (tests use it for setup).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn parse_inspect(&self, c: ContainerInspectResponse) -> Result<ContainerInfo, RuntimeError> {
        let id = c.id.ok_or_else(|| RuntimeError::Docker {
            op: "inspect",
            message: "answer without an Id".into(),
        })?;
        let state = c.state.unwrap_or_default();
        let run = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
            Some(ContainerStateStatusEnum::RUNNING) => RunState::Running,
            Some(ContainerStateStatusEnum::RESTARTING) => RunState::Restarting,
            Some(ContainerStateStatusEnum::PAUSED) => RunState::Paused,
            Some(ContainerStateStatusEnum::EXITED) => RunState::Exited,
            Some(ContainerStateStatusEnum::DEAD) => RunState::Dead,
            _ => RunState::Other,
        };
        let health = state.health.and_then(|h| h.status).and_then(|s| match s {
            HealthStatusEnum::STARTING => Some(DockerHealth::Starting),
            HealthStatusEnum::HEALTHY => Some(DockerHealth::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(DockerHealth::Unhealthy),
            _ => None,
        });
        let address = c
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(&self.network))
            .and_then(|e| e.ip_address)
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        Ok(ContainerInfo {
            id,
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image_id: c.image.unwrap_or_default(),
            labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
            state: run,
            address: if run == RunState::Running {
                address
            } else {
                None
            },
            health,
            restart_count: c.restart_count.unwrap_or(0),
        })
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    fn network(&self) -> &str {
        &self.network
    }

    async fn ensure_network(&self) -> Result<(), RuntimeError> {
        match self.docker.inspect_network(&self.network, None).await {
            Ok(_) => return Ok(()),
            Err(e) if status(&e) == Some(404) => {}
            // Two processes created it at once (Docker allows duplicate names): keep one.
            Err(e) if e.to_string().contains("ambiguous") => {
                return self.dedupe_network().await;
            }
            Err(e) => return Err(derr("network inspect")(e)),
        }
        let req = NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                "berth.network".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(req).await {
            Ok(_) => self.dedupe_network().await,
            // Created concurrently by someone else: the goal holds.
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(derr("network create")(e)),
        }
    }

    async fn load_image(&self, tar: ByteStream) -> Result<String, RuntimeError> {
        let mut s = self
            .docker
            .import_image_stream(ImportImageOptions::default(), tar, None);
        let mut loaded: Option<String> = None;
        while let Some(item) = s.next().await {
            let info = item.map_err(|e| RuntimeError::Load(e.to_string()))?;
            if let Some(line) = info.stream {
                for l in line.lines() {
                    if let Some(id) = l.strip_prefix("Loaded image ID: ") {
                        loaded = Some(id.trim().to_string());
                    } else if let Some(r) = l.strip_prefix("Loaded image: ") {
                        loaded = Some(r.trim().to_string());
                    }
                }
            }
        }
        let reference =
            loaded.ok_or_else(|| RuntimeError::Load("Docker reported no loaded image".into()))?;
        self.image_id(&reference).await
    }

    async fn pull_image(
        &self,
        reference: &str,
        creds: Option<&RegistryCreds>,
    ) -> Result<String, RuntimeError> {
        let creds = creds.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: c.server.clone(),
            ..Default::default()
        });
        let opts = CreateImageOptions {
            from_image: Some(reference.to_string()),
            ..Default::default()
        };
        let mut s = self.docker.create_image(Some(opts), None, creds);
        while let Some(item) = s.next().await {
            let info = item.map_err(|e| RuntimeError::Pull {
                reference: reference.into(),
                message: e.to_string(),
            })?;
            if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                return Err(RuntimeError::Pull {
                    reference: reference.into(),
                    message: msg,
                });
            }
        }
        self.image_id(reference).await
    }

    async fn image_id(&self, reference: &str) -> Result<String, RuntimeError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => i.id.ok_or_else(|| RuntimeError::Docker {
                op: "image inspect",
                message: "answer without an Id".into(),
            }),
            Err(e) if status(&e) == Some(404) => Err(RuntimeError::NotFound {
                what: "image",
                id: reference.into(),
            }),
            Err(e) => Err(derr("image inspect")(e)),
        }
    }

    async fn remove_image(&self, id: &str) -> Result<bool, RuntimeError> {
        let opts = RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_image(id, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(true),
            Err(e) if status(&e) == Some(409) => Ok(false),
            Err(e) => Err(derr("image remove")(e)),
        }
    }

    async fn tag_image(&self, id: &str, repo: &str, tag: &str) -> Result<(), RuntimeError> {
        let opts = bollard::query_parameters::TagImageOptions {
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
        };
        self.docker
            .tag_image(id, Some(opts))
            .await
            .map_err(derr("image tag"))
    }

    async fn untag_image(&self, reference: &str) -> Result<bool, RuntimeError> {
        let opts = RemoveImageOptions {
            force: false,
            ..Default::default()
        };
        match self.docker.remove_image(reference, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) if status(&e) == Some(404) => Ok(true),
            Err(e) if status(&e) == Some(409) => Ok(false),
            Err(e) => Err(derr("image untag")(e)),
        }
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.create_started(spec, true).await
    }

    async fn run_once(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
        on_line: &(dyn Fn(String) + Send + Sync),
    ) -> Result<i64, RuntimeError> {
        let id = self.create_started(spec, false).await?;
        let run = async {
            // The log stream ends when the container stops; then its exit code is read.
            let mut logs = self.logs(&id, true, None);
            while let Some(line) = logs.next().await {
                match line {
                    Ok(l) => on_line(l),
                    Err(_) => break,
                }
            }
            let opts = bollard::query_parameters::WaitContainerOptions {
                condition: "not-running".into(),
            };
            let mut wait = self.docker.wait_container(&id, Some(opts));
            match wait.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(BError::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(derr("container wait")(e)),
                None => Err(RuntimeError::Docker {
                    op: "container wait",
                    message: "no answer".into(),
                }),
            }
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::Timeout {
                what: "one-off container",
                after: timeout,
            }),
        };
        let _ = self.remove(&id).await;
        result
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(304) => Ok(()),
            Err(e) if status(&e) == Some(404) => Err(RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            }),
            Err(e) => Err(derr("container start")(e)),
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let opts = StopContainerOptions {
            t: Some(grace.as_secs().min(i32::MAX as u64) as i32),
            signal: None,
        };
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status(&e), Some(304) | Some(404)) => Ok(()),
            Err(e) => Err(derr("container stop")(e)),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            // 404: already gone; 409: removal already in progress.
            Err(e) if matches!(status(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(derr("container remove")(e)),
        }
    }

    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => self.parse_inspect(c),
            Err(e) if status(&e) == Some(404) => Err(RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            }),
            Err(e) => Err(derr("container inspect")(e)),
        }
    }

    async fn list(&self, labels: &[String]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels.to_vec())])),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(derr("container list"))?;
        // A few inspects at a time: berthd's start lists every managed container before it
        // serves, and one inspect after the other made it wait one dockerd round trip per
        // container (0.2-0.5 s for a dozen on a loaded host).
        let inspected: Vec<_> =
            futures_util::stream::iter(summaries.into_iter().filter_map(|s| s.id))
                .map(|id| async move { self.inspect(&id).await })
                .buffered(LIST_INSPECTS)
                .collect()
                .await;
        let mut out = Vec::with_capacity(inspected.len());
        for c in inspected {
            match c {
                Ok(c) => out.push(c),
                // Removed between list and inspect.
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn logs(
        &self,
        id: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> BoxStream<'static, Result<String, RuntimeError>> {
        let opts = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: tail.map_or_else(|| "all".to_string(), |n| n.to_string()),
            ..Default::default()
        };
        self.docker
            .logs(id, Some(opts))
            .map(|r| {
                r.map(|o| String::from_utf8_lossy(&o.into_bytes()).into_owned())
                    .map_err(derr("logs"))
            })
            .boxed()
    }

    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, RuntimeError>> {
        let opts = EventsOptions {
            filters: Some(HashMap::from([(
                "type".to_string(),
                vec!["container".to_string()],
            )])),
            ..Default::default()
        };
        self.docker
            .events(Some(opts))
            .filter_map(|r| async move {
                match r {
                    Err(e) => Some(Err(derr("events")(e))),
                    Ok(m) if m.typ != Some(EventMessageTypeEnum::CONTAINER) => None,
                    Ok(m) => {
                        let actor = m.actor.unwrap_or_default();
                        Some(Ok(ContainerEvent {
                            id: actor.id?,
                            action: m.action.unwrap_or_default(),
                            labels: actor.attributes.unwrap_or_default(),
                        }))
                    }
                }
            })
            .boxed()
    }
}

impl DockerRuntime {
    /// Creates and starts a container (`restart`: with restart policy `unless-stopped`).
    async fn create_started(
        &self,
        spec: &ContainerSpec,
        restart: bool,
    ) -> Result<String, RuntimeError> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            labels: Some(spec.labels.clone()),
            env: Some(spec.env.clone()),
            cmd: spec.cmd.clone(),
            stop_signal: spec.stop_signal.clone(),
            entrypoint: spec.entrypoint.clone(),
            host_config: Some(HostConfig {
                memory: spec.memory,
                nano_cpus: spec.nano_cpus,
                binds: (!spec.volumes.is_empty()).then(|| spec.volumes.clone()),
                network_mode: Some(self.network.clone()),
                // Replicas come back after a daemon restart; one-off containers never restart.
                restart_policy: restart.then_some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    self.network.clone(),
                    EndpointSettings::default(),
                )])),
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(derr("container create"))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(derr("container start")(e));
        }
        Ok(created.id)
    }
}
