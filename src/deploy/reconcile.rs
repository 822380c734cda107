//! Start-up of the engine in two phases, and the self-healing loop after it.
//!
//! 1. [`serve_first`] (awaited by `Engine::start`, one Docker listing and a few store reads):
//!    every app's route is published at once from the store's current deployments and the
//!    running containers that carry their ids, without health gates (the proxy's own prober
//!    takes an unhealthy replica out). Containers whose `berth.deployment` the store does not
//!    know (the store is behind reality: lost WAL, restored backup) are **adopted**: routed
//!    from their labels and reported at ERROR, never removed. Apps being reconciled refuse
//!    deploys and stops until phase 2 is done with them.
//! 2. [`reconcile`] (a background task): SQLite says what should run, Docker what does. An
//!    interrupted deployment is finished if all its replicas run and pass a health check,
//!    otherwise recorded as failed. Each app's current deployment is brought back to its
//!    replica count (stopped replicas started, unhealthy or missing ones replaced, all
//!    health-gated) and containers of deployments the store knows and no longer wants are
//!    removed. Apps with adopted containers are left as they run. Containers of apps the
//!    store does not know are adopted (routed), never removed.
//! 3. [`heal`] (a background loop): restores each app's replica count after `docker stop`,
//!    `docker kill` or a lost container, with exponential backoff per app, an event on the
//!    current deployment's log and a status line (`AppStatus::heal`). An app stopped with
//!    `berth stop` has no current deployment, so it is never restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::failure::StepError;
use super::run::{address_of, ready, start_replica};
use super::{now_ms, AppHosts, AppState, DeployError, Inner, LockExt, Replica, Stage, RECONCILING};
use crate::model::labels::{self, Parsed};
use crate::model::route::{BackendAddr, ServerState};
use crate::runtime::{ContainerInfo, RuntimeError};
use crate::store::deployments::{DeployState, DeploymentRecord};

fn deployment_of(c: &ContainerInfo) -> Option<&str> {
    c.labels.get(labels::DEPLOYMENT).map(String::as_str)
}

/// Whether the store knows deployment `id` (an unreadable store knows nothing).
fn known(inner: &Inner, id: &str) -> bool {
    !inner.store_damaged() && matches!(inner.store.get(id), Ok(Some(_)))
}

async fn all_healthy(inner: &Inner, d: &DeploymentRecord, cs: &[&ContainerInfo]) -> bool {
    for c in cs {
        let Some(ip) = c.address else { return false };
        let addr = std::net::SocketAddr::new(ip, d.spec.port);
        let deadline = Instant::now()
            + if d.spec.is_worker() {
                d.spec.worker_steady() + d.spec.health.timeout
            } else {
                d.spec.health.timeout * 3
            };
        if ready(inner, &d.spec, &c.id, addr, deadline).await.is_err() {
            return false;
        }
    }
    true
}

fn replica_of(c: &ContainerInfo, port: u16, deployment: &str) -> Option<Replica> {
    let ip = c.address?;
    Some(Replica {
        container_id: c.id.clone(),
        name: c.name.clone(),
        address: BackendAddr::new(ip.to_string(), port),
        deployment: deployment.to_string(),
        state: ServerState::Ready,
    })
}

/// What phase 1 found, for phase 2. Captured before `Engine::start` returns, so a deploy
/// accepted afterwards (of an app the store did not know) is never mistaken for one that a
/// crash interrupted, and never reconciled while it runs.
pub(crate) struct Startup {
    /// Containers adopted (their deployment is unknown to the store).
    pub adopted: usize,
    /// Deployments still marked running when berthd started.
    unfinished: Vec<DeploymentRecord>,
    /// Apps the store knew at start (claimed with [`RECONCILING`] until reconciled).
    apps: Vec<String>,
    /// Deploys with a checkpoint (handed over by an upgrade): resumed, not reconciled.
    pub handed: Vec<super::handover::Adopted>,
    /// Canaries held by a manual split (A/B) when berthd stopped: routed as split, resumed
    /// (waiting for promote or abort), not reconciled.
    pub ab: Vec<super::canary::Resumed>,
}

/// Phase 1: publish what runs now, at once.
pub(crate) async fn serve_first(inner: &Arc<Inner>) -> Result<Startup, DeployError> {
    let managed = inner
        .rt
        .list(&[format!("{}=true", labels::MANAGED)])
        .await?;
    let (apps, unfinished) = if inner.store_damaged() {
        (Vec::new(), Vec::new())
    } else {
        (inner.store.apps()?, inner.store.unfinished()?)
    };
    // Pause / maintenance survive a restart: loaded before the first route is published.
    let gates: BTreeMap<String, crate::model::traffic::AppGate> = if inner.store_damaged() {
        BTreeMap::new()
    } else {
        inner.store.gates()?.into_iter().collect()
    };
    // Deploys a predecessor paused at a step boundary and handed over (or died with): the
    // successor resumes them, so reconcile neither fails them nor touches their apps.
    let mut handed = Vec::new();
    let mut crashed = Vec::new();
    for d in unfinished {
        let cp = match inner.store.checkpoint(&d.id)? {
            Some(c) => super::handover::Checkpoint::parse(&c.data)
                .map_err(|e| {
                    inner.warn(format!(
                        "deployment {}: unusable checkpoint ({e}); treated as interrupted",
                        d.id
                    ))
                })
                .ok(),
            None => None,
        };
        match cp {
            Some(cp) => handed.push(super::handover::Adopted { rec: d, cp }),
            None => crashed.push(d),
        }
    }
    let unfinished = crashed;
    let mut currents: BTreeMap<String, Option<DeploymentRecord>> = BTreeMap::new();
    for (app, current) in apps {
        let cur = match current {
            Some(id) => inner.store.get(&id)?,
            None => None,
        };
        currents.insert(app, cur);
    }
    // A/B splits set by hand survive a restart: the canary they split to is resumed (held
    // until promote or abort) instead of failed, and both versions are routed as split.
    let splits: BTreeMap<String, crate::model::canary::VersionSplit> = if inner.store_damaged() {
        BTreeMap::new()
    } else {
        inner.store.traffic_splits()?.into_iter().collect()
    };
    let mut ab = Vec::new();
    let mut unfinished = unfinished;
    unfinished.retain(|d| {
        let stable = currents.get(&d.app).cloned().flatten();
        match (splits.get(&d.app), stable) {
            (Some(split), Some(cur))
                if d.spec.strategy == crate::model::deploy::Strategy::Canary
                    && split.weights.len() == 2
                    && split.weights.contains_key(&d.id)
                    && split.weights.contains_key(&cur.id) =>
            {
                ab.push(super::canary::Resumed {
                    rec: d.clone(),
                    stable: cur,
                    split: split.clone(),
                });
                false
            }
            _ => true,
        }
    });
    // Versions kept side by side (`versions.rs`): routed with their stored split.
    let busy: BTreeSet<String> = ab
        .iter()
        .map(|r| r.rec.app.clone())
        .chain(handed.iter().map(|h| h.rec.app.clone()))
        .collect();
    let kept = super::versions::kept_at_start(inner, &splits, &currents, &busy)?;
    // Running containers whose deployment the store has no record of, by app.
    let mut unknown: BTreeMap<String, Vec<&ContainerInfo>> = BTreeMap::new();
    // Only containers on this engine's network: another berthd on the same Docker host
    // (tests, a second instance) owns the rest.
    for c in managed
        .iter()
        .filter(|c| c.running() && c.address.is_some())
    {
        let Some(app) = c.labels.get(labels::APP) else {
            continue;
        };
        let is_known = deployment_of(c).is_some_and(|d| known(inner, d));
        if !is_known {
            unknown.entry(app.clone()).or_default().push(c);
        }
    }

    let mut adopted_count = 0;
    let mut st = inner.state.locked();
    let names: BTreeSet<String> = currents.keys().chain(unknown.keys()).cloned().collect();
    for app in names {
        let cur = currents.get(&app).cloned().flatten();
        let mut a = AppState {
            hosts: cur.as_ref().map(|c| AppHosts::of(&c.spec)),
            running: Some(RECONCILING.to_string()),
            gate: gates.get(&app).cloned().unwrap_or_default(),
            ..AppState::default()
        };
        if let Some(cur) = &cur {
            a.replicas = managed
                .iter()
                .filter(|c| c.running() && deployment_of(c) == Some(cur.id.as_str()))
                .filter(|c| c.labels.get(labels::APP) == Some(&app))
                .filter_map(|c| replica_of(c, cur.spec.port, &cur.id))
                .collect();
        }
        if let Some(cs) = unknown.get(&app) {
            let mut ids = Vec::new();
            for c in cs {
                let spec = match labels::parse(&c.name, &c.labels) {
                    Parsed::Ok(s) => s,
                    Parsed::Invalid(w) => {
                        tracing::error!(app = %app, container = %c.name, "container of a deployment unknown to the store has unusable labels ({w}); left running, not routed");
                        continue;
                    }
                    Parsed::NotOurs => continue,
                };
                let dep = spec.deployment.clone().unwrap_or_default();
                let Some(r) = replica_of(c, spec.port, &dep) else {
                    continue;
                };
                // The newest labels say what the app answers for.
                a.hosts = Some(AppHosts {
                    domains: spec.domains.clone(),
                    aliases: spec.aliases.clone(),
                    traffic: spec.traffic.clone(),
                });
                a.replicas.push(r);
                if !ids.contains(&dep) {
                    ids.push(dep);
                }
                adopted_count += 1;
            }
            if !ids.is_empty() {
                let msg = format!(
                    "store is behind the running containers: app {app} runs deployment(s) {} \
                     that {} has no record of (lost or damaged berth.db-wal, a restored \
                     backup?); adopted and routed as they run, and reconcile leaves app {app} \
                     alone: nothing of it is removed or recreated. Deploy it again to make the \
                     store current",
                    ids.join(", "),
                    inner.store_name(),
                );
                tracing::error!(app = %app, "{msg}");
                // Listed with the engine's warnings too (logged once, above, at ERROR).
                {
                    let mut w = inner.warnings.locked();
                    if !w.contains(&msg) {
                        w.push(msg.clone());
                    }
                }
                a.adopted = Some(msg);
            }
        }
        if let Some(ad) = handed.iter().find(|h| h.rec.app == app) {
            super::handover::route_as_checkpointed(&mut a, ad);
        }
        if let Some(r) = ab.iter().find(|r| r.rec.app == app) {
            a.replicas.extend(
                managed
                    .iter()
                    .filter(|c| c.running() && deployment_of(c) == Some(r.rec.id.as_str()))
                    .filter(|c| c.labels.get(labels::APP) == Some(&app))
                    .filter_map(|c| replica_of(c, r.rec.spec.port, &r.rec.id)),
            );
            a.hosts = Some(AppHosts::of(&r.rec.spec));
            a.split = Some(r.split.clone());
            a.running = Some(r.rec.id.clone());
        }
        if let Some((split, recs)) = kept.get(&app) {
            for d in recs {
                a.replicas.extend(
                    managed
                        .iter()
                        .filter(|c| c.running() && deployment_of(c) == Some(d.id.as_str()))
                        .filter(|c| c.labels.get(labels::APP) == Some(&app))
                        .filter_map(|c| replica_of(c, d.spec.port, &d.id)),
                );
            }
            a.split = Some(split.clone());
        }
        if a.adopted.is_none() && !currents.contains_key(&app) {
            // Nothing of this app could be adopted (reported above): nothing to route.
            continue;
        }
        st.apps.insert(app.clone(), a);
        if let Err(e) = inner.publish_app(&st, &app) {
            inner.warn(format!("start: publishing routes of {app}: {e}"));
        }
    }
    // A first deploy handed over: the app has no current deployment yet.
    for ad in &handed {
        if !st.apps.contains_key(&ad.rec.app) {
            let mut a = AppState::default();
            super::handover::route_as_checkpointed(&mut a, ad);
            st.apps.insert(ad.rec.app.clone(), a);
            if let Err(e) = inner.publish_app(&st, &ad.rec.app) {
                inner.warn(format!("start: publishing routes of {}: {e}", ad.rec.app));
            }
        }
    }
    drop(st);
    for ad in &handed {
        let past = inner
            .store
            .events(&ad.rec.id)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|e| super::replayed(&ad.rec.id, e))
            .collect();
        inner.track(&ad.rec.id, past);
    }
    let apps = currents
        .into_keys()
        .filter(|app| !handed.iter().any(|h| &h.rec.app == app))
        .filter(|app| !ab.iter().any(|r| &r.rec.app == app))
        .collect();
    Ok(Startup {
        adopted: adopted_count,
        unfinished,
        apps,
        handed,
        ab,
    })
}

/// Clears the reconcile claim of `app` (set by `serve_first`).
fn release(inner: &Inner, app: &str) {
    if let Some(a) = inner.state.locked().apps.get_mut(app) {
        if a.running.as_deref() == Some(RECONCILING) {
            a.running = None;
        }
    }
}

/// Phase 2 (background): finish or fail interrupted deployments, then bring every app the
/// store knows to its current deployment. Errors are reported per app; the rest goes on.
pub(crate) async fn reconcile(inner: &Arc<Inner>, startup: Startup) -> Result<(), DeployError> {
    let result = reconcile_all(inner, startup).await;
    // Whatever happened, no app stays claimed.
    let apps: Vec<String> = inner.state.locked().apps.keys().cloned().collect();
    for app in apps {
        release(inner, &app);
    }
    result
}

async fn reconcile_all(inner: &Arc<Inner>, startup: Startup) -> Result<(), DeployError> {
    let managed = inner
        .rt
        .list(&[format!("{}=true", labels::MANAGED)])
        .await?;

    // 1. Deployments interrupted by a crash: finish or roll back.
    for d in startup.unfinished {
        let mine: Vec<&ContainerInfo> = managed
            .iter()
            .filter(|c| deployment_of(c) == Some(d.id.as_str()) && c.running())
            .collect();
        // An interrupted canary is never finished here: it was not promoted (promotion commits
        // before anything of the old version is removed), so it is aborted; the traffic is
        // already on stable (`serve_first` routes the current deployment only).
        let canary = d.spec.strategy == crate::model::deploy::Strategy::Canary;
        // A side-by-side deploy is not finished either: the split `serve_first` restored
        // does not name it (`versions.rs`), so it is failed and its containers removed.
        let beside = d.spec.strategy == crate::model::deploy::Strategy::SideBySide;
        let complete = !canary
            && !beside
            && mine.len() as u32 >= d.spec.replicas
            && all_healthy(inner, &d, &mine).await;
        if beside {
            let reason = "interrupted: berthd stopped during the side-by-side deploy; failed on \
                          start (the running versions kept their split)";
            inner
                .store
                .finish(&d.id, DeployState::Failed, Some(reason), now_ms())?;
            tracing::warn!(deployment = %d.id, app = %d.app, "{reason}");
        } else if canary {
            let reason = "interrupted: berthd stopped during the canary; aborted on start (the \
                          stable version kept the traffic)";
            inner
                .store
                .finish(&d.id, DeployState::Failed, Some(reason), now_ms())?;
            if let Err(e) = inner.store.set_traffic_split(&d.app, None, now_ms() / 1000) {
                inner.warn(format!("reconcile: app {}: clearing its split: {e}", d.app));
            }
            tracing::warn!(deployment = %d.id, app = %d.app, "{reason}");
        } else if complete {
            inner
                .store
                .finish(&d.id, DeployState::Succeeded, None, now_ms())?;
            tracing::info!(deployment = %d.id, app = %d.app, "interrupted deployment was complete: finished");
        } else {
            let reason = format!(
                "interrupted: berthd stopped during the deploy ({} of {} new replicas running); rolled back on start",
                mine.len(),
                d.spec.replicas
            );
            inner
                .store
                .finish(&d.id, DeployState::Failed, Some(&reason), now_ms())?;
            tracing::warn!(deployment = %d.id, app = %d.app, "{reason}");
        }
    }

    // 2. Each known app: bring the current deployment back, remove what the store knows it
    // no longer wants.
    // Apps are independent: each is released (deploys accepted again) as soon as it is done,
    // so one app's slow health gate holds no other app.
    // Only apps known (and claimed) at start: a deploy accepted since owns its app.
    let managed = &managed;
    futures_util::future::join_all(startup.apps.into_iter().map(|app| async move {
        let current = match inner.store.current(&app) {
            Ok(c) => c.map(|c| c.id),
            Err(e) => {
                inner.warn(format!("reconcile: app {app}: {e}"));
                release(inner, &app);
                return;
            }
        };
        if let Err(e) = reconcile_app(inner, managed, &app, current).await {
            inner.warn(format!("reconcile: app {app}: {e}"));
        }
        release(inner, &app);
    }))
    .await;
    Ok(())
}

async fn reconcile_app(
    inner: &Arc<Inner>,
    managed: &[ContainerInfo],
    app: &str,
    current: Option<String>,
) -> Result<(), DeployError> {
    if inner
        .state
        .locked()
        .apps
        .get(app)
        .is_some_and(|a| a.adopted.is_some())
    {
        tracing::warn!(
            app,
            "reconcile: app runs containers the store does not know; left as it runs"
        );
        return Ok(());
    }
    let of_app: Vec<&ContainerInfo> = managed
        .iter()
        .filter(|c| c.labels.get(labels::APP).map(String::as_str) == Some(app))
        .collect();
    let cur = match &current {
        Some(id) => inner.store.get(id)?,
        None => None,
    };
    let mut replicas = Vec::new();
    if let Some(cur) = &cur {
        let mut mine: Vec<&ContainerInfo> = of_app
            .iter()
            .copied()
            .filter(|c| deployment_of(c) == Some(cur.id.as_str()))
            .collect();
        // Running ones first: they are the cheapest to keep.
        mine.sort_by_key(|c| !c.running());
        for c in mine {
            if replicas.len() as u32 >= cur.spec.replicas {
                // A surplus replica may be routed since `serve_first`: out of the route
                // first, then gone.
                unroute(inner, app, &c.id);
                inner.rt.remove(&c.id).await?;
                continue;
            }
            if !c.running() {
                if let Err(e) = inner.rt.start(&c.id).await {
                    inner.warn(format!("reconcile: starting {}: {e}; removing it", c.name));
                    inner.rt.remove(&c.id).await?;
                    continue;
                }
            }
            let ok = match address_of(inner, &c.id, cur.spec.port).await {
                Ok(addr) => {
                    let deadline = Instant::now() + cur.spec.deploy_timeout;
                    match ready(inner, &cur.spec, &c.id, addr, deadline).await {
                        Ok(()) => Some(addr),
                        Err(e) => {
                            inner.warn(format!(
                                "reconcile: {} unhealthy: {e}; replacing it",
                                c.name
                            ));
                            None
                        }
                    }
                }
                // Docker did not answer (dockerd restarting or overloaded, this process
                // stopping): that says nothing about the replica, which keeps running and
                // routed; the app is left as it runs (self-healing looks again).
                Err(StepError::Runtime(e)) if !matches!(e, RuntimeError::NotFound { .. }) => {
                    inner.warn(format!(
                        "reconcile: app {app}: inspecting {}: {e}; left as it runs",
                        c.name
                    ));
                    return Ok(());
                }
                Err(e) => {
                    inner.warn(format!("reconcile: {}: {e}; replacing it", c.name));
                    None
                }
            };
            match ok {
                Some(addr) => replicas.push(Replica {
                    container_id: c.id.clone(),
                    name: c.name.clone(),
                    address: BackendAddr::new(addr.ip().to_string(), addr.port()),
                    deployment: cur.id.clone(),
                    state: ServerState::Ready,
                }),
                None => {
                    // Out of the route first, then gone.
                    unroute(inner, app, &c.id);
                    inner.rt.remove(&c.id).await?;
                }
            }
        }
        // Missing replicas are recreated from the stored spec and image id.
        let mut slot = 0;
        while (replicas.len() as u32) < cur.spec.replicas {
            match replace_one(inner, cur, 100 + slot).await {
                Ok(r) => replicas.push(r),
                Err(e) => {
                    inner.warn(format!("reconcile: app {app}: {e}"));
                    break;
                }
            }
            slot += 1;
        }
    }
    // Versions kept side by side stay as they run (routed since `serve_first`; the
    // proxy's prober checks them).
    replicas.extend(super::versions::kept_replicas(inner, app, cur.as_ref()));
    // Other containers of this app: removed only when the store knows their deployment
    // (failed or interrupted deploys, replaced versions). One it does not know is newer
    // than the store: adopted by `serve_first` if it runs, reported here if not.
    let keep: Vec<&str> = replicas.iter().map(|r| r.container_id.as_str()).collect();
    for c in &of_app {
        if keep.contains(&c.id.as_str()) {
            continue;
        }
        match deployment_of(c) {
            Some(d) if known(inner, d) => {
                inner.rt.remove(&c.id).await?;
                tracing::info!(container = %c.name, app = %app, "reconcile: removed leftover container");
            }
            other => {
                tracing::error!(container = %c.name, app = %app, deployment = ?other, running = c.running(), "reconcile: container of a deployment the store does not know; left alone");
            }
        }
    }
    let mut st = inner.state.locked();
    let down = st.apps.get(app).map(|a| a.down.clone()).unwrap_or_default();
    let a = st.apps.entry(app.to_string()).or_default();
    a.hosts = cur.as_ref().map(|c| AppHosts::of(&c.spec));
    a.down = down
        .into_iter()
        .filter(|d| replicas.iter().any(|r| &r.container_id == d))
        .collect();
    a.replicas = replicas;
    if let Err(e) = inner.publish_app(&st, app) {
        inner.warn(format!("reconcile: publishing routes of {app}: {e}"));
    }
    Ok(())
}

/// Takes one container out of the app's route (before it is removed).
fn unroute(inner: &Inner, app: &str, id: &str) {
    let mut st = inner.state.locked();
    let Some(a) = st.apps.get_mut(app) else {
        return;
    };
    let before = a.replicas.len();
    a.replicas.retain(|r| r.container_id != id);
    if a.replicas.len() != before {
        if let Err(e) = inner.publish_app(&st, app) {
            inner.warn(format!("unrouting {id} of {app}: {e}"));
        }
    }
}

/// Takes a stopped replica out of the route until discovery's start event has health-gated
/// it again (the event stream may have missed its stop).
fn mark_down(inner: &Inner, app: &str, id: &str) {
    let mut st = inner.state.locked();
    let Some(a) = st.apps.get_mut(app) else {
        return;
    };
    if a.down.insert(id.to_string()) {
        if let Err(e) = inner.publish_app(&st, app) {
            inner.warn(format!("unrouting stopped {id} of {app}: {e}"));
        }
    }
}

/// Creates one replica of `cur` and waits for its health gate; removes it if it fails.
async fn replace_one(
    inner: &Arc<Inner>,
    cur: &DeploymentRecord,
    slot: u32,
) -> Result<Replica, StepError> {
    let image = cur
        .image_id
        .clone()
        .ok_or_else(|| StepError::NoImageId(cur.id.clone()))?;
    let new = start_replica(inner, cur, &image, slot).await?;
    let deadline = Instant::now() + cur.spec.deploy_timeout;
    if let Err(source) = ready(inner, &cur.spec, &new.id, new.addr, deadline).await {
        let _ = inner.rt.remove(&new.id).await;
        return Err(StepError::ReplacementUnhealthy {
            name: new.name,
            source: Box::new(source),
        });
    }
    Ok(Replica {
        container_id: new.id,
        name: new.name,
        address: BackendAddr::new(new.addr.ip().to_string(), new.addr.port()),
        deployment: cur.id.clone(),
        state: ServerState::Ready,
    })
}

/// Self-healing state of one app (backoff and the status line).
#[derive(Clone, Debug, Default)]
pub(crate) struct HealState {
    pub failures: u32,
    pub next_at: Option<Instant>,
    /// Shown in `AppStatus::heal` while the app is short of replicas.
    pub line: Option<String>,
}

/// Longest wait between two repair attempts of one app.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Phase 3 (background, forever): every `heal_interval`, restore each app's replica count.
pub(crate) async fn heal(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.cfg.heal_interval).await;
        if !inner.handover.running() {
            // Paused or handed over for an upgrade: the successor heals.
            continue;
        }
        let apps: Vec<String> = {
            let st = inner.state.locked();
            st.apps
                .iter()
                .filter(|(_, a)| a.running.is_none() && a.adopted.is_none() && a.hosts.is_some())
                .map(|(n, _)| n.clone())
                .collect()
        };
        for app in apps {
            let due = inner
                .heal
                .locked()
                .get(&app)
                .and_then(|h| h.next_at)
                .is_none_or(|t| Instant::now() >= t);
            if due && inner.handover.running() {
                let _active = inner.handover.enter(&format!("heal:{app}"));
                heal_app(&inner, &app).await;
            }
        }
    }
}

async fn heal_app(inner: &Arc<Inner>, app: &str) {
    let cur = match inner.store.current(app) {
        Ok(Some(c)) => c,
        // Stopped (`berth stop`) or never deployed: nothing to restore.
        Ok(None) => {
            inner.heal.locked().remove(app);
            return;
        }
        Err(e) => {
            inner.warn(format!("heal: app {app}: reading the store: {e}"));
            return;
        }
    };
    let replicas: Vec<Replica> = {
        let st = inner.state.locked();
        match st.apps.get(app) {
            Some(a) if a.running.is_none() => a
                .replicas
                .iter()
                .filter(|r| r.deployment == cur.id)
                .cloned()
                .collect(),
            _ => return,
        }
    };
    let mut live = 0u32;
    let mut stopped = Vec::new();
    let mut gone = Vec::new();
    for r in &replicas {
        match inner.rt.inspect(&r.container_id).await {
            Ok(c) if c.running() => live += 1,
            Ok(_) => stopped.push(r.clone()),
            Err(RuntimeError::NotFound { .. }) => gone.push(r.clone()),
            Err(e) => {
                inner.warn(format!("heal: app {app}: inspecting {}: {e}", r.name));
                return;
            }
        }
    }
    let want = cur.spec.replicas;
    if live >= want && gone.is_empty() {
        if inner
            .heal
            .locked()
            .remove(app)
            .is_some_and(|h| h.line.is_some())
        {
            inner.emit(
                &cur.id,
                Stage::Healed,
                format!("app {app}: {live}/{want} replicas run again"),
            );
        }
        return;
    }
    let missing = want.saturating_sub(live);
    let (attempt, first) = {
        let h = inner.heal.locked();
        let s = h.get(app);
        (
            s.map_or(0, |h| h.failures) + 1,
            s.is_none_or(|h| h.line.is_none()),
        )
    };
    let line = format!(
        "restoring {missing} of {want} replicas (attempt {attempt}): {} stopped, {} gone",
        stopped.len(),
        gone.len()
    );
    if first {
        // One event per episode (and one per failed attempt, below), not one per pass.
        tracing::warn!(app, "{line}");
        inner.emit(&cur.id, Stage::Heal, format!("app {app}: {line}"));
    }
    inner.heal.locked().entry(app.to_string()).or_default().line = Some(line);

    let mut errors = Vec::new();
    let mut restored = 0u32;
    // Stopped replicas are started again; discovery's start event health-gates and routes
    // them (as after Docker's own restart policy).
    for r in stopped.iter().take(missing as usize) {
        mark_down(inner, app, &r.container_id);
        match inner.rt.start(&r.container_id).await {
            Ok(()) => restored += 1,
            Err(RuntimeError::NotFound { .. }) => gone.push(r.clone()),
            Err(e) => {
                errors.push(format!("starting {}: {e}", r.name));
                gone.push(r.clone());
            }
        }
    }
    // Gone ones leave the route and Docker.
    for r in &gone {
        unroute(inner, app, &r.container_id);
        let _ = inner.rt.remove(&r.container_id).await;
    }
    // Whatever is still missing is created from the current deployment's image.
    let mut slot = 200;
    while live + restored < want {
        let new = match replace_one(inner, &cur, slot).await {
            Ok(new) => new,
            Err(e) => {
                errors.push(e.to_string());
                break;
            }
        };
        slot += 1;
        let name = new.name.clone();
        let new_id = new.container_id.clone();
        // A deploy or stop started meanwhile: it owns the app now. (A stop claims the app
        // before it clears the current deployment, so checking the claim under the lock
        // below after this read is enough.)
        let still_current = matches!(inner.store.current(app), Ok(Some(c)) if c.id == cur.id);
        let routed = {
            let mut st = inner.state.locked();
            let ok = st
                .apps
                .get(app)
                .is_some_and(|a| a.running.is_none() && a.hosts.is_some());
            if !ok || !still_current {
                None
            } else {
                if let Some(a) = st.apps.get_mut(app) {
                    a.replicas.push(new);
                }
                Some(inner.publish_app(&st, app))
            }
        };
        match routed {
            None => {
                let _ = inner.rt.remove(&new_id).await;
                inner.heal.locked().remove(app);
                return;
            }
            Some(Err(e)) => {
                errors.push(format!("routing {name}: {e}"));
                break;
            }
            Some(Ok(())) => {
                restored += 1;
                inner.emit(
                    &cur.id,
                    Stage::Heal,
                    format!("app {app}: new replica {name} takes traffic"),
                );
            }
        }
    }
    let mut h = inner.heal.locked();
    let s = h.entry(app.to_string()).or_default();
    if errors.is_empty() {
        s.failures = 0;
        s.next_at = None;
    } else {
        s.failures += 1;
        let backoff = inner
            .cfg
            .heal_interval
            .saturating_mul(1 << s.failures.min(6))
            .min(MAX_BACKOFF);
        s.next_at = Some(Instant::now() + backoff);
        let msg = format!(
            "restoring {missing} of {want} replicas failed (attempt {attempt}): {}; next \
             attempt in {backoff:?}",
            errors.join("; ")
        );
        s.line = Some(msg.clone());
        drop(h);
        tracing::error!(app, "{msg}");
        inner.emit(&cur.id, Stage::Heal, format!("app {app}: {msg}"));
    }
}
