//! The deploy health gate: the app's health check (the one prober of `proxy::health`, behind
//! the [`HealthProbe`] interface; same method, path and expected statuses as routing uses) against a container's address on the
//! Berth network until it passes (and Docker's own HEALTHCHECK, if the image has one, says
//! healthy), bounded by a deadline. The container exiting ends the wait at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::model::deploy::HealthSpec;
use crate::model::health::ProbeError;
use crate::model::route::HealthCheckSpec;
use crate::runtime::{ContainerRuntime, DockerHealth, RunState};

/// The one health check of the proxy (`proxy::health::probe_once`), as the deploy gate asks
/// for it: the daemon implements it (with [`super::RoutePublisher`]) so the deploy engine
/// depends on this interface, not on the proxy, and the gate and the routing prober run the
/// same check (method, path, expected statuses, timeout).
pub trait HealthProbe: Send + Sync + 'static {
    /// One check of `check` against `authority` with `Host: host`; the status on success.
    fn probe<'a>(
        &'a self,
        authority: &'a str,
        host: &'a str,
        check: &'a HealthCheckSpec,
    ) -> BoxFuture<'a, Result<u16, ProbeError>>;
}

/// The deploy gate's checks: HTTP through the [`HealthProbe`], Docker's state and HEALTHCHECK
/// through the runtime. A replica the gate lets in is one the prober keeps.
#[derive(Clone)]
pub struct HealthClient {
    probe: Arc<dyn HealthProbe>,
}

impl HealthClient {
    pub fn new(probe: Arc<dyn HealthProbe>) -> Self {
        HealthClient { probe }
    }

    /// One check with `spec`'s method, path and expected statuses, bounded by `timeout`.
    pub async fn check(
        &self,
        addr: SocketAddr,
        host: &str,
        spec: &HealthSpec,
        timeout: Duration,
    ) -> Result<u16, ProbeError> {
        let mut check = spec.check();
        check.timeout = timeout;
        self.probe.probe(&addr.to_string(), host, &check).await
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
            match self.check(addr, host, spec, timeout).await {
                Ok(_) => match info.health {
                    None | Some(DockerHealth::Healthy) => return Ok(()),
                    Some(h) => last = format!("HTTP check passed; Docker HEALTHCHECK is {h:?}"),
                },
                Err(e) => last = e.to_string(),
            }
            if Instant::now() + spec.interval > deadline {
                return Err(last);
            }
            tokio::time::sleep(spec.interval).await;
        }
    }
}
