//! The deploy health gate: HTTP GET to a container's address on the Berth network until it
//! answers 2xx/3xx (and Docker's own HEALTHCHECK, if the image has one, says healthy), bounded
//! by a deadline. The container exiting ends the wait at once.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use crate::model::deploy::HealthSpec;
use crate::runtime::{ContainerRuntime, DockerHealth, RunState};

/// HTTP client for health checks: no connection reuse (containers come and go).
#[derive(Clone)]
pub struct HealthClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HealthClient {
    fn default() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(http);
        Self { client }
    }
}

impl HealthClient {
    /// One check. `Ok(status)` for 2xx/3xx, otherwise a one-line reason.
    pub async fn check(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<u16, String> {
        let url = format!("http://{addr}{path}");
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("GET {url}: invalid URL: {e}"))?;
        let req = Request::get(uri)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "berth-health/1")
            .body(Empty::new())
            .map_err(|e| format!("GET {url}: {e}"))?;
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(format!("GET {url}: no answer within {timeout:?}")),
            Ok(Err(e)) => {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                Err(format!("GET {url}: {msg}"))
            }
            Ok(Ok(resp)) => {
                let s = resp.status();
                if s.is_success() || s.is_redirection() {
                    Ok(s.as_u16())
                } else {
                    Err(format!("GET {url}: answered {s}"))
                }
            }
        }
    }

    /// A worker's gate (an app without domains has nothing to GET): the container runs
    /// without a restart for `steady`, or, if its image has a HEALTHCHECK, Docker says
    /// healthy. Exiting or restarting ends the wait at once.
    pub async fn wait_running(
        &self,
        rt: &dyn ContainerRuntime,
        container_id: &str,
        steady: Duration,
        spec: &HealthSpec,
        deadline: Instant,
    ) -> Result<(), String> {
        let poll = spec.interval.min(Duration::from_millis(250));
        let mut first: Option<(Instant, i64)> = None;
        loop {
            let info = rt
                .inspect(container_id)
                .await
                .map_err(|e| format!("inspect failed: {e}"))?;
            if !matches!(info.state, RunState::Running) {
                return Err(format!("container is {:?}, not running", info.state));
            }
            let (since, restarts) = *first.get_or_insert((Instant::now(), info.restart_count));
            if info.restart_count != restarts {
                return Err(format!(
                    "container restarted {} time(s) while it was checked",
                    info.restart_count - restarts
                ));
            }
            let last = match info.health {
                Some(DockerHealth::Healthy) => return Ok(()),
                Some(h) => format!("Docker HEALTHCHECK is {h:?}"),
                None if since.elapsed() >= steady => return Ok(()),
                None => format!(
                    "running for {:.1}s of the {steady:?} a worker must run steadily",
                    since.elapsed().as_secs_f64()
                ),
            };
            if Instant::now() + poll > deadline {
                return Err(last);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Polls until healthy or `deadline`. The error is the last check's reason.
    pub async fn wait_healthy(
        &self,
        rt: &dyn ContainerRuntime,
        container_id: &str,
        addr: SocketAddr,
        host: &str,
        spec: &HealthSpec,
        deadline: Instant,
    ) -> Result<(), String> {
        let mut last = String::from("no check completed");
        loop {
            let info = rt
                .inspect(container_id)
                .await
                .map_err(|e| format!("inspect failed: {e}"))?;
            if !matches!(info.state, RunState::Running) {
                return Err(format!(
                    "container is {:?}, not running (last check: {last})",
                    info.state
                ));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = spec.timeout.min(remaining.max(Duration::from_millis(50)));
            match self.check(addr, host, &spec.path, timeout).await {
                Ok(_) => match info.health {
                    None | Some(DockerHealth::Healthy) => return Ok(()),
                    Some(h) => last = format!("HTTP check passed; Docker HEALTHCHECK is {h:?}"),
                },
                Err(e) => last = e,
            }
            if Instant::now() + spec.interval > deadline {
                return Err(last);
            }
            tokio::time::sleep(spec.interval).await;
        }
    }
}
