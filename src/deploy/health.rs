//! The deploy health gate: the app's health check (the one prober of `proxy::health`, same
//! method, path and expected statuses as routing uses) against a container's address on the
//! Berth network until it passes (and Docker's own HEALTHCHECK, if the image has one, says
//! healthy), bounded by a deadline. The container exiting ends the wait at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::deploy::HealthSpec;
use crate::runtime::{ContainerRuntime, DockerHealth, RunState};

/// The deploy gate's view of the one health prober (`proxy::health::probe_once`): the gate
/// and the routing prober run the same check (method, path, expected statuses, timeout), so
/// a replica the gate lets in is one the prober keeps.
#[derive(Clone, Default)]
pub struct HealthClient;

impl HealthClient {
    /// One check with `spec`'s method, path and expected statuses, bounded by `timeout`.
    /// `Ok(status)` on success, otherwise a one-line reason.
    pub async fn check(
        &self,
        addr: SocketAddr,
        host: &str,
        spec: &HealthSpec,
        timeout: Duration,
    ) -> Result<u16, String> {
        let mut check = spec.check();
        check.timeout = timeout;
        crate::proxy::health::probe_once(&addr.to_string(), host, &check)
            .await
            .map_err(|e| e.to_string())
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
                Err(e) => last = e,
            }
            if Instant::now() + spec.interval > deadline {
                return Err(last);
            }
            tokio::time::sleep(spec.interval).await;
        }
    }
}
