//! The engine's in-memory state: what each app routes (replicas, hosts, gate), hand-started
//! containers, the shared `Inner` every task holds, and how a state becomes routes
//! (`publish_app`, `publish_discovered`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::events::Progress;
use super::health::HealthClient;
use super::{handover, reconcile, EngineConfig, RoutePublisher};
use crate::model::deploy::{AppSpec, TrafficPolicy};
use crate::model::labels::LabelSpec;
use crate::model::route::{BackendAddr, BackendSpec, Domain, RouteSpec, ServerState};
use crate::runtime::ContainerRuntime;
use crate::store::deployments::DeploymentStore;
use crate::store::registry::ChangeError;

/// One routed replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Replica {
    pub container_id: String,
    pub name: String,
    pub address: BackendAddr,
    pub deployment: String,
    pub state: ServerState,
}

/// What the app's route answers for, and how its replicas are checked while they serve.
#[derive(Clone, Debug)]
pub(crate) struct AppHosts {
    pub domains: Vec<Domain>,
    pub aliases: Vec<Domain>,
    /// Balancer, health check, slow start, prefix and retries of the app's route.
    pub traffic: TrafficPolicy,
}

impl AppHosts {
    pub fn of(spec: &AppSpec) -> Self {
        AppHosts {
            domains: spec.domains.clone(),
            aliases: spec.aliases.clone(),
            traffic: spec.traffic(),
        }
    }
}

#[derive(Default)]
pub(crate) struct AppState {
    /// Domains and aliases the app's route answers for.
    pub hosts: Option<AppHosts>,
    /// Replicas in the route (ready or draining).
    pub replicas: Vec<Replica>,
    /// Replicas whose container stopped outside a deploy (crash, OOM, `docker stop`): out of
    /// the route until the container runs again and passes its health check.
    pub down: BTreeSet<String>,
    /// The deployment in progress (or [`RECONCILING`], [`STOPPING`]).
    pub running: Option<String>,
    /// Set when the app runs containers of deployments the store has no record of (they
    /// are routed as they run and never removed by reconcile); what was reported.
    pub adopted: Option<String>,
    /// Pause / maintenance set by the operator (persisted, see `traffic.rs`).
    pub gate: crate::model::traffic::AppGate,
    /// A replace deploy of a one-replica app holds requests during its cut-over (not
    /// persisted: a restart mid-deploy ends the hold with the deploy).
    pub deploy_hold: Option<Duration>,
    /// How the route splits traffic between the versions (deployment ids) of `replicas`
    /// while a canary runs (see `canary.rs`); `None`: one version, no split.
    pub split: Option<crate::model::canary::VersionSplit>,
}

impl AppState {
    /// Claims the app for one change (a deploy's id, `STOPPING`, `DELETING`) under the state
    /// lock; refused with `Conflict` while another change holds it.
    pub fn claim(&mut self, app: &str, by: &str) -> Result<(), super::DeployError> {
        if let Some(running) = &self.running {
            return Err(super::DeployError::Conflict {
                app: app.to_string(),
                running: running.clone(),
            });
        }
        self.running = Some(by.to_string());
        Ok(())
    }

    /// The gate the app's route carries: the operator's, plus a deploy's hold.
    pub fn effective_gate(&self) -> Option<crate::model::traffic::AppGate> {
        let mut g = self.gate.clone();
        if g.paused.is_none() {
            g.paused = self
                .deploy_hold
                .map(|timeout| crate::model::traffic::Pause { timeout });
        }
        (!g.is_empty()).then_some(g)
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Discovered {
    pub labels: LabelSpec,
    pub replica: Replica,
}

#[derive(Default)]
pub(crate) struct State {
    pub apps: BTreeMap<String, AppState>,
    /// Hand-started containers that passed their health gate, by container id.
    pub discovered: BTreeMap<String, Discovered>,
}

pub(crate) struct Inner {
    pub rt: Arc<dyn ContainerRuntime>,
    pub store: Arc<dyn DeploymentStore>,
    pub publisher: Arc<dyn RoutePublisher>,
    pub cfg: EngineConfig,
    pub health: HealthClient,
    pub state: Mutex<State>,
    pub(super) progress: Mutex<HashMap<String, Progress>>,
    pub(super) tasks: Mutex<Vec<JoinHandle<()>>>,
    pub warnings: Mutex<Vec<String>>,
    /// Self-healing backoff and status line per app.
    pub heal: Mutex<HashMap<String, reconcile::HealState>>,
    /// True once the background reconcile is done.
    pub(super) reconciled: watch::Sender<bool>,
    /// Pause and hand-over of in-flight deploys across an upgrade.
    pub(crate) handover: handover::Handover,
    /// Running canaries: their hand controls (promote, abort, split) and live status.
    pub(crate) canaries: super::canary::Canaries,
}

/// What `Conflict.running` says while an app is being stopped.
pub const STOPPING: &str = "stopping";
/// The `running` marker while an app is being deleted.
pub const DELETING: &str = "deleting";

/// What `Conflict.running` says while reconcile (after a start) has not finished an app.
pub const RECONCILING: &str = "reconcile after start";

/// Route name of a deployed app.
pub fn app_route_name(app: &str) -> String {
    format!("app/{app}")
}

/// Route name of hand-started containers of an app.
pub fn discovered_route_name(app: &str) -> String {
    format!("discovered/{app}")
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl<T> LockExt<T> for Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        // State is only mutated in small, panic-free sections; a poisoned lock still holds
        // consistent data.
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) trait LockExt<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl Inner {
    pub(crate) fn store_damaged(&self) -> bool {
        self.cfg.store_damaged.is_some()
    }

    /// How log lines name the store.
    pub(crate) fn store_name(&self) -> &'static str {
        "berth.db"
    }

    /// Publishes the route of a deployed app from `state` (caller holds the lock).
    /// An app with hosts but no replicas keeps a route without backends (503).
    /// Sets every replica of `app` to drain (one table swap) and returns them: how stop and
    /// delete begin.
    pub(crate) fn drain_all(&self, st: &mut State, app: &str) -> Vec<Replica> {
        let Some(a) = st.apps.get_mut(app) else {
            return Vec::new();
        };
        for r in a.replicas.iter_mut() {
            r.state = ServerState::Drain;
        }
        let replicas = a.replicas.clone();
        if let Err(e) = self.publish_app(st, app) {
            self.warn(format!("app {app}: publishing drained routes failed: {e}"));
        }
        replicas
    }

    pub(crate) fn publish_app(&self, state: &State, app: &str) -> Result<(), ChangeError> {
        // Pools that follow the app (`model::pool`): workers too, so before the route.
        let replicas = state.apps.get(app).map(|a| {
            a.replicas
                .iter()
                .filter(|r| !a.down.contains(&r.container_id))
                .map(|r| crate::model::pool::AppReplica {
                    id: r.container_id.clone(),
                    deployment: r.deployment.clone(),
                    address: r.address.to_string(),
                    state: r.state,
                })
                .collect()
        });
        self.publisher
            .set_replicas(app, replicas.unwrap_or_default());
        let routes = match state.apps.get(app) {
            // A route with no ready backend answers 503 (replace downtime); an app that runs
            // nothing (stopped, never deployed) has no route at all.
            Some(a) => match &a.hosts {
                // The deploy gate checks a replica before it is routed; from then on the
                // proxy's prober checks it with the same check (a backend starts up, so a
                // gated replica serves at once).
                // A worker (no domains) has no route.
                Some(h) if !h.domains.is_empty() => vec![RouteSpec {
                    gate: a.effective_gate(),
                    split: a.split.as_ref().map(|s| crate::model::canary::RouteSplit {
                        split: s.clone(),
                        members: a
                            .replicas
                            .iter()
                            .map(|r| (r.container_id.clone(), r.deployment.clone()))
                            .collect(),
                    }),
                    ..h.traffic.route(
                        app_route_name(app),
                        h.domains.clone(),
                        h.aliases.clone(),
                        a.replicas
                            .iter()
                            .filter(|r| !a.down.contains(&r.container_id))
                            .map(|r| BackendSpec {
                                id: Some(r.container_id.clone()),
                                address: r.address.clone(),
                                weight: 1,
                                state: r.state,
                            })
                            .collect(),
                    )
                }],
                _ => vec![],
            },
            _ => vec![],
        };
        self.publisher.set_routes(&app_route_name(app), routes)
    }

    /// Publishes the route of hand-started containers of `app` (caller holds the lock).
    pub(crate) fn publish_discovered(&self, state: &State, app: &str) -> Result<(), ChangeError> {
        let members: Vec<&Discovered> = state
            .discovered
            .values()
            .filter(|d| d.labels.app == app)
            .collect();
        let routes = match members.first() {
            None => vec![],
            // Hand-started containers are checked continuously like deployed ones, with the
            // policy their labels give (`berth.health.*`, `berth.balancer`, ...).
            Some(first) => vec![first.labels.traffic.route(
                discovered_route_name(app),
                first.labels.domains.clone(),
                first.labels.aliases.clone(),
                members
                    .iter()
                    .map(|d| BackendSpec {
                        id: Some(d.replica.container_id.clone()),
                        address: d.replica.address.clone(),
                        weight: 1,
                        state: ServerState::Ready,
                    })
                    .collect(),
            )],
        };
        self.publisher
            .set_routes(&discovered_route_name(app), routes)
    }

    pub(crate) fn spawn(
        self: &Arc<Self>,
        fut: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let h = tokio::spawn(fut);
        let mut tasks = self.tasks.locked();
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    pub(crate) fn warn(&self, msg: String) {
        tracing::warn!("{msg}");
        let mut w = self.warnings.locked();
        if !w.contains(&msg) {
            w.push(msg);
        }
    }
}
