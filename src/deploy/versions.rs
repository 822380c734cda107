//! Several versions of one app side by side (A/B by version, Aqueduct's model).
//!
//! `strategy: side_by_side` (or `berth deploy --keep`) starts the new version next to the
//! running ones, health-gated, and keeps them all: the new version joins the app's split with
//! weight 0 and becomes the current deployment. `PUT /v1/apps/{app}/traffic` (`berth
//! traffic`) moves traffic between the running versions; `DELETE
//! /v1/apps/{app}/versions/{version}` (`berth version rm`) gives its weight to the others,
//! drains it (open requests finish), takes it out of the route and removes its containers. A
//! plain deploy (rolling, replace) replaces every running version; a canary is refused while
//! several run.
//!
//! Invariant: while an app runs several versions (and no canary), the split in `app_traffic`
//! names exactly them, the current deployment among them, and it is persisted before it is
//! published. What a crash does: `serve_first` routes every version the stored split names
//! (succeeded deployments of the app, the current one included; others are dropped from it)
//! with the stored weights, and reconcile keeps their containers. A side-by-side deploy
//! interrupted by a crash is failed on start (its containers removed); a removal interrupted
//! was persisted first, so reconcile removes the rest of the version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::canary::{image_tag, publish_split, running_version, start_beside};
use super::failure::StepError;
use super::run::{self, Progress};
use super::{now_ms, DeployError, Engine, Inner, LockExt, Replica, Stage};
use crate::model::canary::VersionSplit;
use crate::model::deploy::Strategy;
use crate::model::route::ServerState;
use crate::store::deployments::{DeployState, DeploymentRecord};

/// What `running` says while a version is removed.
fn removing(version: &str) -> String {
    format!("removing version {version}")
}

fn list(split: &VersionSplit) -> String {
    split
        .weights
        .iter()
        .map(|(v, w)| format!("{v}={w}%"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A side-by-side deploy of `rec` next to the `old` replicas: its replicas start and are
/// routed with weight 0, then the split naming every version is persisted; `conclude`
/// commits (the new version becomes the current deployment, nothing old is stopped). `Err`:
/// the split is back as it was (`conclude` removes the new replicas).
pub(super) async fn run_side_by_side(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image_id: &str,
    old: &[Replica],
    progress: &mut Progress,
) -> Result<(), StepError> {
    let app = &rec.app;
    let current = old
        .first()
        .map(|r| r.deployment.clone())
        .unwrap_or_default();
    let base = inner
        .state
        .locked()
        .apps
        .get(app)
        .and_then(|a| a.split.clone());
    let split = VersionSplit::joined(base.as_ref(), &current, &rec.id);
    publish_split(inner, app, Some(split.clone()))?;
    let started = async {
        start_beside(inner, rec, image_id, progress, "replica").await?;
        // Persisted before the deploy commits: a crash from here on finds the split naming
        // a deployment that did not succeed, and drops it from the split.
        inner
            .store
            .set_traffic_split(app, Some(&split), now_ms() / 1000)
            .map_err(StepError::Store)
    }
    .await;
    if let Err(e) = started {
        if let Err(p) = publish_split(inner, app, base) {
            inner.warn(format!("deployment {}: restoring the split: {p}", rec.id));
        }
        return Err(e);
    }
    inner.emit(
        &rec.id,
        Stage::Split,
        format!(
            "version {} runs next to {}, with weight 0 (split: {}); move traffic with \
             `berth traffic {app} ...`, remove a version with `berth version rm {app} VERSION`",
            rec.id,
            split
                .weights
                .keys()
                .filter(|v| **v != rec.id)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            list(&split)
        ),
    );
    Ok(())
}

/// A plain deploy (rolling, replace) of an app that runs several versions replaces them all:
/// their split stops at once (traffic spreads over the ready replicas of every version while
/// the deploy runs); the stored split goes when the deploy commits (`concluded`).
pub(super) fn before_plain(inner: &Inner, rec: &DeploymentRecord) {
    let split = {
        let mut st = inner.state.locked();
        let Some(a) = st.apps.get_mut(&rec.app) else {
            return;
        };
        let Some(split) = a.split.take() else {
            return;
        };
        if let Err(e) = inner.publish_app(&st, &rec.app) {
            inner.warn(format!("deployment {}: publishing the route: {e}", rec.id));
        }
        split
    };
    inner.emit(
        &rec.id,
        Stage::Split,
        format!(
            "app {} runs {} versions ({}): this {} deploy replaces them all",
            rec.app,
            split.weights.len(),
            list(&split),
            match rec.spec.strategy {
                Strategy::Replace => "replace",
                _ => "rolling",
            }
        ),
    );
}

/// After a deploy of an app: a plain deploy that committed drops the stored split (one
/// version runs); one that failed gets the stored split back (its old replicas are routed
/// again by the abort).
pub(super) fn concluded(inner: &Inner, rec: &DeploymentRecord, state: DeployState) {
    if matches!(rec.spec.strategy, Strategy::Canary | Strategy::SideBySide) {
        return;
    }
    let app = &rec.app;
    if state == DeployState::Succeeded {
        if let Err(e) = inner.store.set_traffic_split(app, None, now_ms() / 1000) {
            inner.warn(format!("app {app}: clearing the split: {e}"));
        }
        return;
    }
    let stored = match inner.store.traffic_splits() {
        Ok(all) => all.into_iter().find(|(a, _)| a == app).map(|(_, s)| s),
        Err(e) => {
            inner.warn(format!("app {app}: reading the split: {e}"));
            return;
        }
    };
    if let Some(s) = stored {
        if let Err(e) = publish_split(inner, app, Some(s)) {
            inner.warn(format!("app {app}: restoring the split: {e}"));
        }
    }
}

/// Ends the claim of a version's removal.
fn release_removal(inner: &Inner, app: &str, id: &str) {
    if let Some(a) = inner.state.locked().apps.get_mut(app) {
        if a.running.as_deref() == Some(removing(id).as_str()) {
            a.running = None;
        }
    }
}

/// The versions side by side `serve_first` routes, by app: the stored split without the
/// versions that are not succeeded deployments of the app (an interrupted side-by-side
/// deploy), and the records of the versions other than the current one. A split that does
/// not name the current deployment or names one version is stale and deleted (a plain
/// deploy committed before it could delete it); a changed one is stored again.
pub(super) fn kept_at_start(
    inner: &Inner,
    splits: &BTreeMap<String, VersionSplit>,
    currents: &BTreeMap<String, Option<DeploymentRecord>>,
    busy: &BTreeSet<String>,
) -> Result<BTreeMap<String, (VersionSplit, Vec<DeploymentRecord>)>, DeployError> {
    let mut out = BTreeMap::new();
    for (app, split) in splits {
        // A resumed or handed-over canary owns the app's split.
        if busy.contains(app) {
            continue;
        }
        let Some(Some(cur)) = currents.get(app) else {
            continue;
        };
        let mut s = split.clone();
        let mut recs = Vec::new();
        for v in split.weights.keys() {
            match inner.store.get(v)? {
                Some(d) if &d.app == app && d.state == DeployState::Succeeded => {
                    if d.id != cur.id {
                        recs.push(d);
                    }
                }
                _ => s = s.without(v),
            }
        }
        // (An interrupted canary's split loses the canary here: one version, stale.)
        let stale = !s.weights.contains_key(&cur.id) || s.weights.len() < 2;
        if stale || s != *split {
            let keep = (!stale).then_some(&s);
            if let Err(e) = inner.store.set_traffic_split(app, keep, now_ms() / 1000) {
                inner.warn(format!("start: app {app}: storing its split: {e}"));
            }
        }
        if !stale {
            tracing::info!(app = %app, split = %list(&s), "versions side by side restored");
            out.insert(app.clone(), (s, recs));
        }
    }
    Ok(out)
}

/// The replicas of the versions `app` keeps next to `current` (its split's other versions).
pub(super) fn kept_replicas(
    inner: &Inner,
    app: &str,
    current: Option<&DeploymentRecord>,
) -> Vec<Replica> {
    let st = inner.state.locked();
    let Some(a) = st.apps.get(app) else {
        return Vec::new();
    };
    let Some(split) = &a.split else {
        return Vec::new();
    };
    a.replicas
        .iter()
        .filter(|r| split.weights.contains_key(&r.deployment))
        .filter(|r| current.is_none_or(|c| c.id != r.deployment))
        .cloned()
        .collect()
}

impl Engine {
    /// The versions (deployment ids, with their image tags) that have replicas routed for
    /// `app`.
    pub(super) fn running_versions(&self, app: &str) -> Result<Vec<(String, String)>, DeployError> {
        let ids: Vec<String> = {
            let st = self.inner.state.locked();
            let a = st
                .apps
                .get(app)
                .filter(|a| a.hosts.is_some())
                .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
            let mut ids: Vec<String> = a.replicas.iter().map(|r| r.deployment.clone()).collect();
            ids.sort();
            ids.dedup();
            ids
        };
        Ok(ids
            .into_iter()
            .map(|id| {
                let tag = self
                    .inner
                    .store
                    .get(&id)
                    .ok()
                    .flatten()
                    .map(|d| image_tag(&d.spec.image))
                    .unwrap_or_default();
                (id, tag)
            })
            .collect())
    }

    /// The split of an app that runs several versions side by side (no canary), if it does.
    pub(super) fn kept_split(&self, app: &str) -> Option<VersionSplit> {
        if self.inner.canaries.status(app).is_some() {
            return None;
        }
        let st = self.inner.state.locked();
        st.apps.get(app).and_then(|a| a.split.clone())
    }

    /// `PUT /v1/apps/{app}/traffic` of an app that runs several versions side by side: the
    /// split (validated, versions not named get 0) is persisted, then published.
    pub(super) fn set_kept_split(
        &self,
        app: &str,
        mut split: VersionSplit,
        running: &[(String, String)],
    ) -> Result<VersionSplit, DeployError> {
        {
            let st = self.inner.state.locked();
            if let Some(running) = st.apps.get(app).and_then(|a| a.running.clone()) {
                return Err(DeployError::Conflict {
                    app: app.to_string(),
                    running,
                });
            }
        }
        for (id, _) in running {
            split.weights.entry(id.clone()).or_insert(0);
        }
        self.inner
            .store
            .set_traffic_split(app, Some(&split), now_ms() / 1000)?;
        publish_split(&self.inner, app, Some(split.clone()))
            .map_err(|e| DeployError::Versions(e.to_string()))?;
        tracing::info!(app, split = %list(&split), "traffic split between versions");
        Ok(split)
    }

    /// `DELETE /v1/apps/{app}/versions/{version}`: the version (deployment id or image tag)
    /// gets no new request (its weight goes to the others; persisted first), drains, leaves
    /// the route, and its containers are removed, in the background. Returns the split in
    /// force. The app's current (newest) deployment cannot be removed this way.
    pub fn remove_version(&self, app: &str, version: &str) -> Result<VersionSplit, DeployError> {
        self.refuse_if_damaged(app)?;
        let running = self.running_versions(app)?;
        let id = running_version(app, version, "version".into(), &running)?;
        let Some(split) = self.kept_split(app) else {
            return Err(DeployError::Versions(format!(
                "app {app} runs one version{}: stop it with `berth stop {app}`",
                if self.inner.canaries.status(app).is_some() {
                    " and a canary (promote or abort it)"
                } else {
                    ""
                }
            )));
        };
        let current = self.inner.store.current(app)?.map(|c| c.id);
        if current.as_deref() == Some(id.as_str()) {
            return Err(DeployError::Versions(format!(
                "version {id} is app {app}'s current deployment (the newest): remove the older \
                 versions, or deploy again"
            )));
        }
        let rec = self
            .inner
            .store
            .get(&id)?
            .ok_or_else(|| DeployError::DeploymentNotFound(id.clone()))?;
        // Claimed like a deploy, so no deploy or second removal slips in.
        {
            let mut st = self.inner.state.locked();
            let a = st
                .apps
                .get_mut(app)
                .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
            a.claim(app, &removing(&id))?;
        }
        let rest = split.without(&id);
        let release = |inner: &Inner| release_removal(inner, app, &id);
        // Persist before the route changes: after a crash, the version is not routed again
        // and reconcile removes its containers.
        let stored = if rest.weights.len() > 1 {
            Some(&rest)
        } else {
            None
        };
        if let Err(e) = self
            .inner
            .store
            .set_traffic_split(app, stored, now_ms() / 1000)
        {
            release(&self.inner);
            return Err(e.into());
        }
        let draining: Vec<Replica> = {
            let mut st = self.inner.state.locked();
            let Some(a) = st.apps.get_mut(app) else {
                release(&self.inner);
                return Err(DeployError::AppNotFound(app.to_string()));
            };
            a.split = stored.cloned();
            for r in a.replicas.iter_mut().filter(|r| r.deployment == id) {
                r.state = ServerState::Drain;
            }
            let draining = a
                .replicas
                .iter()
                .filter(|r| r.deployment == id)
                .cloned()
                .collect();
            if let Err(e) = self.inner.publish_app(&st, app) {
                self.inner
                    .warn(format!("app {app}: publishing the drain of {id}: {e}"));
            }
            draining
        };
        tracing::info!(app, version = %id, split = %list(&rest), "version removed from the split; draining");
        let inner = self.inner.clone();
        let app_s = app.to_string();
        self.inner.spawn(async move {
            let grace = rec.spec.stop_timeout.unwrap_or(inner.cfg.stop_grace);
            for r in &draining {
                run::wait_drained(&inner, &app_s, &r.container_id, rec.spec.drain_timeout).await;
                if let Err(e) = run::take_out(&inner, &app_s, &r.container_id) {
                    inner.warn(format!("app {app_s}: taking {} out: {e}", r.name));
                }
            }
            for r in &draining {
                if let Err(e) = inner.rt.stop(&r.container_id, grace).await {
                    inner.warn(format!("app {app_s}: stopping {}: {e}", r.name));
                }
                if let Err(e) = inner.rt.remove(&r.container_id).await {
                    inner.warn(format!("app {app_s}: removing {}: {e}", r.name));
                }
            }
            tracing::info!(app = %app_s, version = %rec.id, containers = draining.len(), "version drained and removed");
            release_removal(&inner, &app_s, &rec.id);
        });
        Ok(rest)
    }
}
