//! Deployment progress: the events of a deployment (stored, and broadcast to the SSE
//! stream of `GET /v1/deployments/{id}/events`) and waiting for a deployment to finish.

use tokio::sync::{broadcast, watch};

use super::{now_ms, DeployError, DeployEvent, Engine, Inner, LockExt, Stage};
use crate::store::deployments::{DeployState, DeploymentRecord, StoredEvent};

/// A stored event as its stream shows it; a stage this version does not know (a log written
/// by a newer berthd before a downgrade) is left out, with a warning.
pub(crate) fn replayed(id: &str, e: StoredEvent) -> Option<DeployEvent> {
    match Stage::parse(&e.stage) {
        Some(stage) => Some(DeployEvent::new(id, e.at, stage, e.message)),
        None => {
            tracing::warn!(
                deployment = id,
                stage = %e.stage,
                "stored event of an unknown stage left out"
            );
            None
        }
    }
}

pub(super) struct Progress {
    pub(super) events: Vec<DeployEvent>,
    pub(super) tx: broadcast::Sender<DeployEvent>,
    pub(super) done: watch::Sender<Option<DeployState>>,
}

impl Inner {
    pub(crate) fn emit(&self, deployment: &str, stage: Stage, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(deployment, stage = stage.as_str(), "{message}");
        let ev = DeployEvent::new(deployment, now_ms(), stage, message);
        // The log outlives this process (the status page's timeline after a restart). A
        // failed write costs the log, never the deployment.
        let stored = StoredEvent {
            at: ev.at,
            stage: ev.stage.as_str().to_string(),
            message: ev.message.clone(),
        };
        if let Err(e) = self.store.add_event(deployment, &stored) {
            tracing::warn!(deployment, stage = stage.as_str(), error = %e, "deployment event not stored");
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
            .filter_map(|e| replayed(id, e))
            .collect())
    }
}
