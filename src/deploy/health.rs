//! The deploy health gate: the app's health check (the one prober of `proxy::health`, behind
//! the [`HealthProbe`] interface; same method, path and expected statuses as routing uses) against a container's address on the
//! Berth network until it passes (and Docker's own HEALTHCHECK, if the image has one, says
//! healthy), bounded by a deadline. The container exiting ends the wait at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use thiserror::Error;
use tokio::time::Instant;

use crate::model::deploy::HealthSpec;
use crate::model::health::ProbeError;
use crate::model::route::HealthCheckSpec;
use crate::runtime::{ContainerRuntime, DockerHealth, RunState, RuntimeError};

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
    ) -> Result<(), GateError> {
        let poll = spec.interval.min(Duration::from_millis(250));
        let mut first: Option<(Instant, i64)> = None;
        loop {
            let info = rt.inspect(container_id).await.map_err(GateError::Inspect)?;
            if !matches!(info.state, RunState::Running) {
                return Err(GateError::NotRunning {
                    state: info.state,
                    last: None,
                });
            }
            let (since, restarts) = *first.get_or_insert((Instant::now(), info.restart_count));
            if info.restart_count != restarts {
                return Err(GateError::Restarted(info.restart_count - restarts));
            }
            let last = match info.health {
                Some(DockerHealth::Healthy) => return Ok(()),
                Some(h) => LastCheck::DockerHealth(h),
                None if since.elapsed() >= steady => return Ok(()),
                None => LastCheck::Steadying {
                    ran: since.elapsed(),
                    steady,
                },
            };
            if Instant::now() + poll > deadline {
                return Err(GateError::NotReady(last));
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
    ) -> Result<(), GateError> {
        let mut last = LastCheck::None;
        loop {
            let info = rt.inspect(container_id).await.map_err(GateError::Inspect)?;
            if !matches!(info.state, RunState::Running) {
                return Err(GateError::NotRunning {
                    state: info.state,
                    last: Some(last),
                });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = spec.timeout.min(remaining.max(Duration::from_millis(50)));
            match self.check(addr, host, spec, timeout).await {
                Ok(_) => match info.health {
                    None | Some(DockerHealth::Healthy) => return Ok(()),
                    Some(h) => last = LastCheck::HttpPassedDockerHealth(h),
                },
                Err(e) => last = LastCheck::Probe(e),
            }
            if Instant::now() + spec.interval > deadline {
                return Err(GateError::NotReady(last));
            }
            tokio::time::sleep(spec.interval).await;
        }
    }
}

/// Why a replica did not pass the deploy gate (one line, for deploy events and logs).
#[derive(Debug, Error)]
pub enum GateError {
    #[error("inspect failed: {0}")]
    Inspect(RuntimeError),
    /// The container stopped; with the last check before, when one ran (HTTP gate).
    #[error("container is {state:?}, not running{}", match last {
        Some(l) => format!(" (last check: {l})"),
        None => String::new(),
    })]
    NotRunning {
        state: RunState,
        last: Option<LastCheck>,
    },
    #[error("container restarted {0} time(s) while it was checked")]
    Restarted(i64),
    /// The deadline passed; what the last check said.
    #[error("{0}")]
    NotReady(LastCheck),
}

/// What the last check of a gate said.
#[derive(Debug)]
pub enum LastCheck {
    None,
    Probe(ProbeError),
    /// The HTTP check passed, Docker's HEALTHCHECK is not healthy (yet).
    HttpPassedDockerHealth(DockerHealth),
    /// A worker's Docker HEALTHCHECK is not healthy (yet).
    DockerHealth(DockerHealth),
    /// A worker has run `ran` of the `steady` it must run without a restart.
    Steadying {
        ran: Duration,
        steady: Duration,
    },
}

impl std::fmt::Display for LastCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastCheck::None => write!(f, "no check completed"),
            LastCheck::Probe(e) => write!(f, "{e}"),
            LastCheck::HttpPassedDockerHealth(h) => {
                write!(f, "HTTP check passed; Docker HEALTHCHECK is {h:?}")
            }
            LastCheck::DockerHealth(h) => write!(f, "Docker HEALTHCHECK is {h:?}"),
            LastCheck::Steadying { ran, steady } => write!(
                f,
                "running for {:.1}s of the {steady:?} a worker must run steadily",
                ran.as_secs_f64()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gate's reasons end up in deploy events and the stored failure reason: the same
    /// lines as when they were strings.
    #[test]
    fn gate_errors_read_as_before() {
        let cases = [
            (
                GateError::NotRunning {
                    state: RunState::Exited,
                    last: None,
                },
                "container is Exited, not running",
            ),
            (
                GateError::NotRunning {
                    state: RunState::Exited,
                    last: Some(LastCheck::None),
                },
                "container is Exited, not running (last check: no check completed)",
            ),
            (
                GateError::Restarted(2),
                "container restarted 2 time(s) while it was checked",
            ),
            (
                GateError::NotReady(LastCheck::HttpPassedDockerHealth(DockerHealth::Starting)),
                "HTTP check passed; Docker HEALTHCHECK is Starting",
            ),
            (
                GateError::NotReady(LastCheck::Steadying {
                    ran: Duration::from_millis(1500),
                    steady: Duration::from_secs(3),
                }),
                "running for 1.5s of the 3s a worker must run steadily",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.to_string(), want);
        }
    }
}
