//! The engine's per-app traffic controls: pause / resume and maintenance on / off. A change is
//! validated, persisted (`DeploymentStore::set_gate`), then put into the app's state and
//! published with its route, in that order under the state lock: a refused or failed change
//! changes nothing, and what is published is what a restart restores (`reconcile` loads the
//! gates before it publishes the first routes).

use crate::model::traffic::{AppGate, Maintenance, Pause};

use super::{now_ms, DeployError, Engine, LockExt};

impl Engine {
    /// The app's gate as set by the operator.
    pub fn gate(&self, app: &str) -> Result<AppGate, DeployError> {
        self.known_app(app)?;
        Ok(self
            .inner
            .state
            .locked()
            .apps
            .get(app)
            .map(|a| a.gate.clone())
            .unwrap_or_default())
    }

    /// `berth pause`: new requests to the app are held (up to `pause.timeout` each, then 503)
    /// until `resume`.
    pub fn pause(&self, app: &str, pause: Pause) -> Result<AppGate, DeployError> {
        pause.validate()?;
        self.change_gate(app, |g| g.paused = Some(pause))
    }

    /// `berth resume`: held requests go on at once.
    pub fn resume(&self, app: &str) -> Result<AppGate, DeployError> {
        self.change_gate(app, |g| g.paused = None)
    }

    /// `berth maintenance on|off`.
    pub fn maintenance(
        &self,
        app: &str,
        maintenance: Option<Maintenance>,
    ) -> Result<AppGate, DeployError> {
        if let Some(m) = &maintenance {
            m.validate()?;
        }
        self.change_gate(app, |g| g.maintenance = maintenance)
    }

    fn known_app(&self, app: &str) -> Result<(), DeployError> {
        let in_state = self
            .inner
            .state
            .locked()
            .apps
            .get(app)
            .is_some_and(|a| a.hosts.is_some());
        if in_state || self.inner.store.current(app)?.is_some() {
            Ok(())
        } else {
            Err(DeployError::AppNotFound(app.to_string()))
        }
    }

    fn change_gate(
        &self,
        app: &str,
        change: impl FnOnce(&mut AppGate),
    ) -> Result<AppGate, DeployError> {
        self.refuse_if_damaged(app)?;
        self.known_app(app)?;
        let mut st = self.inner.state.locked();
        let a = st.apps.entry(app.to_string()).or_default();
        let mut next = a.gate.clone();
        change(&mut next);
        // Persist before publishing: what the proxy does is what a restart restores.
        self.inner.store.set_gate(app, &next, now_ms() / 1000)?;
        a.gate = next.clone();
        if let Err(e) = self.inner.publish_app(&st, app) {
            // The gate does not take part in route validation; a refusal here is about the
            // route itself and was there before this change.
            tracing::warn!(app, error = %e, "publishing the app's route after a gate change failed");
        }
        tracing::info!(app, gate = ?next, "app gate changed");
        Ok(next)
    }
}

/// How long a deploy of `spec` over `old_replicas` holds requests during its cut-over: a
/// replace deploy of a one-replica app does, long enough for the whole cut-over (drain, stop,
/// start, health gate); others do not.
pub(super) fn cutover_hold(
    spec: &crate::model::deploy::AppSpec,
    old_replicas: usize,
    stop_grace: std::time::Duration,
) -> Option<std::time::Duration> {
    (spec.strategy == crate::model::deploy::Strategy::Replace
        && spec.replicas == 1
        && old_replicas == 1)
        .then(|| {
            (spec.drain_timeout + stop_grace + spec.deploy_timeout)
                .min(crate::model::traffic::MAX_PAUSE_TIMEOUT)
        })
}

/// A replace deploy of a one-replica app holds new requests from the moment the old replica
/// drains until the new one takes traffic (or the deploy ends), so the cut-over fails no
/// request: they wait instead of getting 503. Dropping the guard ends the hold, on every
/// path out of the deploy.
pub(super) struct CutoverHold {
    inner: std::sync::Arc<super::Inner>,
    app: String,
}

impl CutoverHold {
    /// Starts the hold when the deploy replaces the only replica of a running app.
    pub(super) fn start(
        inner: &std::sync::Arc<super::Inner>,
        app: &str,
        spec: &crate::model::deploy::AppSpec,
        old_replicas: usize,
        stop_grace: std::time::Duration,
    ) -> Option<Self> {
        let timeout = cutover_hold(spec, old_replicas, stop_grace)?;
        let mut st = inner.state.locked();
        let a = st.apps.entry(app.to_string()).or_default();
        a.deploy_hold = Some(timeout);
        if let Err(e) = inner.publish_app(&st, app) {
            tracing::warn!(app, error = %e, "holding requests for the cut-over failed");
        }
        Some(Self {
            inner: inner.clone(),
            app: app.to_string(),
        })
    }
}

impl Drop for CutoverHold {
    fn drop(&mut self) {
        let mut st = self.inner.state.locked();
        if let Some(a) = st.apps.get_mut(&self.app) {
            a.deploy_hold = None;
        }
        if let Err(e) = self.inner.publish_app(&st, &self.app) {
            tracing::warn!(app = %self.app, error = %e, "ending the cut-over hold failed");
        }
    }
}
