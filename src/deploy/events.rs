//! Deployment progress: the events of a deployment (stored, and broadcast to the SSE
//! stream of `GET /v1/deployments/{id}/events`) and waiting for a deployment to finish.

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::{now_ms, DeployError, Engine, Inner, LockExt};
use crate::store::deployments::{DeployState, DeploymentRecord, StoredEvent};

/// One progress event of a deployment (the SSE stream of `GET /v1/deployments/{id}/events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeployEvent {
    pub deployment: String,
    /// Unix milliseconds.
    pub at: i64,
    /// `accepted`, `image`, `start`, `healthy`, `routed`, `drain`, `drained`, `stopped`,
    /// `aborting`, `restored`, `removed`, `succeeded`, `failed`, `pruned`.
    pub stage: String,
    pub message: String,
    /// `running` until the last event, then `succeeded` or `failed` (what clients stop on).
    pub state: DeployState,
    /// True on the last event.
    pub done: bool,
}

impl DeployEvent {
    /// An event of `stage`; `succeeded` and `failed` end the stream.
    pub fn new(deployment: &str, at: i64, stage: &str, message: String) -> Self {
        DeployEvent {
            deployment: deployment.to_string(),
            at,
            stage: stage.to_string(),
            message,
            state: match stage {
                "succeeded" => DeployState::Succeeded,
                "failed" => DeployState::Failed,
                _ => DeployState::Running,
            },
            done: matches!(stage, "succeeded" | "failed"),
        }
    }
}

pub(super) struct Progress {
    pub(super) events: Vec<DeployEvent>,
    pub(super) tx: broadcast::Sender<DeployEvent>,
    pub(super) done: watch::Sender<Option<DeployState>>,
}

impl Inner {
    pub(crate) fn emit(&self, deployment: &str, stage: &str, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(deployment, stage, "{message}");
        let ev = DeployEvent::new(deployment, now_ms(), stage, message);
        // The log outlives this process (the status page's timeline after a restart). A
        // failed write costs the log, never the deployment.
        let stored = StoredEvent {
            at: ev.at,
            stage: ev.stage.clone(),
            message: ev.message.clone(),
        };
        if let Err(e) = self.store.add_event(deployment, &stored) {
            tracing::warn!(deployment, stage, error = %e, "deployment event not stored");
        }
        let mut p = self.progress.locked();
        if let Some(p) = p.get_mut(deployment) {
            p.events.push(ev.clone());
            let _ = p.tx.send(ev);
        }
    }

    /// Follows deployment `id` in this process (its events so far are `past`), as for a
    /// deploy started here: a successor resuming a handed-over deploy.
    pub(crate) fn track(&self, id: &str, past: Vec<DeployEvent>) {
        let (tx, _) = broadcast::channel(256);
        self.progress.locked().insert(
            id.to_string(),
            Progress {
                events: past,
                tx,
                done: watch::Sender::new(None),
            },
        );
    }

    pub(crate) fn mark_done(&self, deployment: &str, state: DeployState) {
        if let Some(p) = self.progress.locked().get(deployment) {
            p.done.send_replace(Some(state));
        }
    }
}

impl Engine {
    /// `GET /v1/deployments/{id}/events`: the events so far plus a receiver for the rest
    /// (no gap, no duplicate). None if the deployment did not run in this process.
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Option<(Vec<DeployEvent>, broadcast::Receiver<DeployEvent>)> {
        let p = self.inner.progress.locked();
        let p = p.get(id)?;
        Some((p.events.clone(), p.tx.subscribe()))
    }

    /// Waits until deployment `id` (started in this process) finishes; returns its record.
    pub async fn wait(&self, id: &str) -> Result<DeploymentRecord, DeployError> {
        let rx = self
            .inner
            .progress
            .locked()
            .get(id)
            .map(|p| p.done.subscribe());
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|s| s.is_some()).await;
        }
        self.deployment(id)
    }

    /// The stored event log of a deployment (what an earlier run of berthd recorded).
    pub fn stored_events(&self, id: &str) -> Result<Vec<DeployEvent>, DeployError> {
        Ok(self
            .inner
            .store
            .events(id)?
            .into_iter()
            .map(|e| DeployEvent::new(id, e.at, &e.stage, e.message))
            .collect())
    }
}
