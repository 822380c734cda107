//! Why a deployment step failed ([`StepError`]): the deploy run, its hand-over boundaries and
//! reconcile's repairs return it; `run::conclude` stores its text as the deployment's
//! `reason` and sends it as the `failed` event. That text is what users and tests read, so
//! each variant's message is the exact wording the step always used.

use std::time::Duration;

use thiserror::Error;

use super::health::GateError;
use crate::runtime::{RunState, RuntimeError};
use crate::store::deployments::DeploymentStoreError;
use crate::store::registry::ChangeError;
use crate::store::secrets::SecretsError;

/// Why one step of a deployment (or of a repair) failed.
#[derive(Debug, Error)]
pub(crate) enum StepError {
    /// The image named by id could not be inspected.
    #[error("image {image}: {source}")]
    Image { image: String, source: RuntimeError },
    /// The uploaded image tar broke off; the upload's own error is the cause.
    #[error("image load failed: {0}")]
    Upload(String),
    #[error("image {reference} is not present on the server and pull is never")]
    NotPresent { reference: String },
    #[error(
        "image {reference} is not present on the server, and the server's deploy.pull is never \
         (no registry is contacted): upload the image (`berth deploy --image-tar`, or `build:`) \
         or load it on the server"
    )]
    NotPresentServerNever { reference: String },
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Store(#[from] DeploymentStoreError),
    #[error("the app has secrets but this server has no secrets key")]
    NoSecretsKey,
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Running `hooks.pre_deploy` failed before it exited.
    #[error("pre_deploy hook: {0}")]
    Hook(Box<StepError>),
    #[error("pre_deploy hook exited with {code}; nothing was changed (last output: {last})")]
    HookExit { code: i64, last: String },
    /// Starting replica `slot` failed.
    #[error("replica {slot}: {source}")]
    Replica { slot: u32, source: Box<StepError> },
    #[error("container exited right after start ({state:?}); last log lines:\n{logs}")]
    ExitedAtStart { state: RunState, logs: String },
    #[error("container has no address on network {network}")]
    NoAddress { network: String },
    #[error("internal: replica {slot} was not started")]
    NotStarted { slot: u32 },
    #[error("publishing the route failed: {0}")]
    Publish(ChangeError),
    #[error(
        "replica {slot} ({name}) did not become healthy within {timeout:?}: {cause}; last log lines:\n{}",
        if logs.is_empty() { "(none)" } else { logs }
    )]
    Unhealthy {
        slot: u32,
        name: String,
        timeout: Duration,
        cause: Box<GateFailure>,
        logs: String,
    },
    #[error("stopping an old replica failed: {0}")]
    StopOld(RuntimeError),
    #[error("stopping an old replica failed: {0}")]
    StopTask(tokio::task::JoinError),
    #[error("deploy checkpoint: {0}")]
    CheckpointEncode(serde_json::Error),
    #[error("saving the deploy checkpoint: {0}")]
    CheckpointSave(DeploymentStoreError),
    /// Reconcile: the current deployment has no image to recreate a replica from.
    #[error("deployment {0} has no image id")]
    NoImageId(String),
    /// Reconcile: a replacement replica failed its gate (and was removed).
    #[error("new replica {name} unhealthy: {source}")]
    ReplacementUnhealthy {
        name: String,
        source: Box<GateError>,
    },
    /// A canary's own verdict: aborted by hand, or the analysis numbers that broke a threshold.
    #[error("{0}")]
    Canary(String),
    #[error("internal: strategy canary without a canary spec")]
    NoCanarySpec,
}

/// How a new replica failed its health gate.
#[derive(Debug, Error)]
pub(crate) enum GateFailure {
    #[error(transparent)]
    Gate(GateError),
    /// Healthy first, unhealthy again after `min_ready`.
    #[error("unhealthy again after min_ready {min_ready:?}: {source}")]
    Again {
        min_ready: Duration,
        source: GateError,
    },
}

impl StepError {
    /// The same failure, said of replica `slot`.
    pub(crate) fn of_replica(self, slot: u32) -> StepError {
        StepError::Replica {
            slot,
            source: Box::new(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored reason of the common failures, word for word (users and the deploy tests
    /// read these).
    #[test]
    fn messages_keep_their_wording() {
        let e = StepError::NoSecretsKey.of_replica(2);
        assert_eq!(
            e.to_string(),
            "replica 2: the app has secrets but this server has no secrets key"
        );
        let e = StepError::Hook(Box::new(StepError::Runtime(RuntimeError::Timeout {
            what: "hook",
            after: Duration::from_secs(3),
        })));
        assert_eq!(
            e.to_string(),
            "pre_deploy hook: hook did not finish within 3s"
        );
        let e = StepError::Unhealthy {
            slot: 1,
            name: "berth-a-1".into(),
            timeout: Duration::from_secs(5),
            cause: Box::new(GateFailure::Again {
                min_ready: Duration::from_secs(1),
                source: GateError::Restarted(2),
            }),
            logs: String::new(),
        };
        assert_eq!(
            e.to_string(),
            "replica 1 (berth-a-1) did not become healthy within 5s: unhealthy again after \
             min_ready 1s: container restarted 2 time(s) while it was checked; last log \
             lines:\n(none)"
        );
        assert_eq!(
            StepError::NotStarted { slot: 0 }.to_string(),
            "internal: replica 0 was not started"
        );
    }
}
