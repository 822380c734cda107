//! The deploy engine: runs `model::deploy::plan` through a `ContainerRuntime` and a
//! `RoutePublisher`, one deploy per app at a time, with progress events per deployment,
//! history in a `DeploymentStore`, rollback, label discovery and reconcile-on-start.
//!
//! Invariants: a deployment is inserted (persisted) before its task starts and its outcome is
//! committed before old containers are removed; routes of one app (or one discovered app) are
//! replaced as a whole in one `set_routes` call, made while holding the state lock so two
//! publishes never reorder; a new replica enters a route only after its health gate passed.
//! Each API endpoint of issue 4 is one method of `Engine`.

mod discovery;
mod handover;
pub mod health;
mod reconcile;
mod run;
mod traffic;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::model::deploy::{validate_app_name, AppSpec, SpecError, Strategy, TrafficPolicy};
use crate::model::labels::LabelSpec;
use crate::model::route::{BackendAddr, BackendSpec, Domain, RouteSpec, ServerState};
use crate::runtime::{ByteStream, ContainerRuntime, RegistryCreds, RuntimeError};
use crate::store::deployments::{
    DeployState, DeploymentRecord, DeploymentStore, DeploymentStoreError, StoredEvent,
};

pub use handover::HandoverError;
use health::HealthClient;

/// Where the route changes of the engine go. Implemented over the proxy's `Tables` by the
/// daemon (see `daemon/engine.rs`); of the proxy the engine uses only its one health prober
/// (`proxy::health::probe_once`, via `health::HealthClient`).
pub trait RoutePublisher: Send + Sync + 'static {
    /// Replaces every route published under `key` (`app/NAME`, `discovered/NAME`) in one
    /// atomic table swap. An empty list removes them. An error changes nothing.
    fn set_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), String>;
    /// Whether `set_routes(key, routes)` would be refused (a domain another route serves),
    /// changing nothing. The engine asks before it accepts a deploy.
    fn check_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), String> {
        let _ = (key, routes);
        Ok(())
    }
    /// Requests in flight to backend `backend_id` of route `route`, if that backend is
    /// in the current table.
    fn inflight(&self, route: &str, backend_id: &str) -> Option<u64>;
    /// The proxy's own health of that backend (active and passive checks), if it is in the
    /// current table: what status reports, so it never says healthy while the route is down.
    fn healthy(&self, _route: &str, _backend_id: &str) -> Option<bool> {
        None
    }
}

/// Errors of the engine's API (the API layer maps them to HTTP statuses).
#[derive(Debug, Error)]
pub enum DeployError {
    /// 409: one deploy per app at a time.
    #[error("app {app} already has a deployment in progress: {running}")]
    Conflict { app: String, running: String },
    /// 400, naming the field.
    #[error("invalid app spec: {0}")]
    Invalid(#[from] SpecError),
    #[error("app {0} not found")]
    AppNotFound(String),
    #[error("deployment {0} not found")]
    DeploymentNotFound(String),
    #[error("cannot roll back: {0}")]
    NoRollbackTarget(String),
    /// 409: a domain or alias of the spec is served by another route.
    #[error("{0}")]
    DomainTaken(String),
    #[error(transparent)]
    Store(#[from] DeploymentStoreError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The stored secrets of a deployment cannot be decrypted (wrong or missing key).
    #[error("{0}")]
    Secrets(String),
    /// 503: this process is handing its deploys to a new berthd (upgrade); retry shortly.
    #[error(
        "berthd is upgrading: this process takes no deploys, stops or deletes now; retry in \
         a few seconds (the new process takes them)"
    )]
    Upgrading,
}

/// Where the image of a deploy comes from.
pub enum ImageSource {
    /// Use the local image if present, else pull it.
    Reference {
        reference: String,
        creds: Option<RegistryCreds>,
    },
    /// An image tar (`docker save`), streamed in.
    Tar(ByteStream),
    /// A local image id (rollback): never pulled.
    Id(String),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Images of this many most recent successful deployments per app are kept.
    pub keep_images: usize,
    /// Grace period of `docker stop` for old replicas.
    pub stop_grace: Duration,
    /// Added to every container Berth creates (tests put their cleanup label here).
    pub extra_labels: HashMap<String, String>,
    /// Longest health gate for hand-started (discovered) containers.
    pub discovery_health_timeout: Duration,
    /// How often the self-healing loop compares each app's running replicas with its
    /// current deployment (failed repairs back off exponentially, up to a minute).
    pub heal_interval: Duration,
    /// Set when the store failed its integrity check: the engine routes what runs (adopted
    /// from the container labels), and neither reconciles, heals nor deploys.
    pub store_damaged: Option<String>,
    /// Seals app secrets before they are stored and opens them for `docker create`; without
    /// it, a deploy with secrets is refused.
    pub secrets: Option<Arc<crate::store::secrets::SecretsKey>>,
    /// `deploy.allow_host_mounts`: whether specs may bind-mount host paths.
    pub allow_host_mounts: bool,
    /// `deploy.pull`: ceiling over every app's pull policy.
    pub pull_ceiling: crate::model::deploy::PullPolicy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            keep_images: 5,
            stop_grace: Duration::from_secs(10),
            extra_labels: HashMap::new(),
            discovery_health_timeout: Duration::from_secs(60),
            heal_interval: Duration::from_secs(5),
            store_damaged: None,
            secrets: None,
            allow_host_mounts: false,
            pull_ceiling: crate::model::deploy::PullPolicy::Always,
        }
    }
}

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

struct Progress {
    events: Vec<DeployEvent>,
    tx: broadcast::Sender<DeployEvent>,
    done: watch::Sender<Option<DeployState>>,
}

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
}

impl AppState {
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
    progress: Mutex<HashMap<String, Progress>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    pub warnings: Mutex<Vec<String>>,
    /// Self-healing backoff and status line per app.
    pub heal: Mutex<HashMap<String, reconcile::HealState>>,
    /// True once the background reconcile is done.
    reconciled: watch::Sender<bool>,
    /// Pause and hand-over of in-flight deploys across an upgrade.
    pub(crate) handover: handover::Handover,
}

/// What `Conflict.running` says while an app is being stopped.
pub const STOPPING: &str = "stopping";
/// The `running` marker while an app is being deleted.
pub const DELETING: &str = "deleting";

/// What `DELETE /v1/apps/{app}` did.
#[derive(Clone, Debug, Serialize)]
pub struct AppDeleted {
    pub app: String,
    /// Replicas drained, stopped and removed.
    pub replicas_removed: usize,
    /// Deployments the app had.
    pub deployments: usize,
    /// Whether those deployments stay readable by id.
    pub history_kept: bool,
    /// Berth's image tags removed (`berth/APP:DEPLOYMENT`; none when history is kept).
    pub images_untagged: usize,
}

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

fn new_deployment_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("d{:011x}{:05x}", now_ms(), h.finish() & 0xfffff)
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
    pub(crate) fn publish_app(&self, state: &State, app: &str) -> Result<(), String> {
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
    pub(crate) fn publish_discovered(&self, state: &State, app: &str) -> Result<(), String> {
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

/// A replica as `GET /v1/apps/{app}` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaStatus {
    pub container_id: String,
    pub name: String,
    pub address: String,
    pub deployment: Option<String>,
    /// Routing state: `ready` or `drain`.
    pub routing: ServerState,
    /// False while the container is out of the route: it stopped outside a deploy (until it
    /// runs again and passes its health check), or the proxy's health checks mark it down.
    pub routed: bool,
    /// The proxy's health of this backend (the same the proxy routes by), when routed.
    pub healthy: Option<bool>,
    /// Docker's run state and HEALTHCHECK status, when inspect succeeds.
    pub running: Option<bool>,
    pub docker_health: Option<String>,
    pub inflight: Option<u64>,
}

/// `GET /v1/apps/{app}`.
#[derive(Clone, Debug, Serialize)]
pub struct AppStatus {
    pub name: String,
    pub replicas: Vec<ReplicaStatus>,
    /// Hand-started containers routed for this app.
    pub discovered: Vec<ReplicaStatus>,
    pub current: Option<DeploymentRecord>,
    pub previous: Option<DeploymentRecord>,
    pub deploying: Option<String>,
    /// The self-healing loop's line while the app is short of replicas.
    pub heal: Option<String>,
    /// Set when the app runs containers the store has no record of (see `reconcile`).
    pub adopted: Option<String>,
    /// Pause / maintenance (omitted when neither is on).
    #[serde(skip_serializing_if = "crate::model::traffic::AppGate::is_empty")]
    pub gate: crate::model::traffic::AppGate,
}

/// The engine. Dropping it (or `kill`) aborts its tasks without any cleanup, like `kill -9`;
/// a new engine on the same store reconciles.
pub struct Engine {
    inner: Arc<Inner>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Engine {
    /// Reconciles (SQLite says what should run, Docker what does), rebuilds and publishes
    /// every route, starts discovery, and only then returns: the daemon may report READY.
    pub async fn start(
        rt: Arc<dyn ContainerRuntime>,
        store: Arc<dyn DeploymentStore>,
        publisher: Arc<dyn RoutePublisher>,
        cfg: EngineConfig,
    ) -> Result<Engine, DeployError> {
        let inner = Arc::new(Inner {
            rt,
            store,
            publisher,
            cfg,
            health: HealthClient,
            state: Mutex::new(State::default()),
            progress: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            heal: Mutex::new(HashMap::new()),
            reconciled: watch::Sender::new(false),
            handover: handover::Handover::default(),
        });
        inner.rt.ensure_network().await?;
        // Serve first: what runs now is routed before this returns (one Docker listing, no
        // health gate); reconcile and repairs follow in the background.
        let mut startup = reconcile::serve_first(&inner).await?;
        // Deploys a previous process handed over (or paused and then died): resumed from
        // their checkpoints once they are ours.
        for ad in std::mem::take(&mut startup.handed) {
            let bg = inner.clone();
            inner.spawn(handover::resume_when_ours(bg, ad));
        }
        discovery::start(&inner).await?;
        if let Some(why) = &inner.cfg.store_damaged {
            tracing::error!(
                adopted = startup.adopted,
                "deploy engine: the store is damaged ({why}); reconcile, self-healing and \
                 deploys are off, running containers are routed as they are"
            );
            let apps: Vec<String> = inner.state.locked().apps.keys().cloned().collect();
            for app in apps {
                if let Some(a) = inner.state.locked().apps.get_mut(&app) {
                    a.running = None;
                }
            }
            inner.reconciled.send_replace(true);
        } else {
            let bg = inner.clone();
            inner.spawn(async move {
                if let Err(e) = reconcile::reconcile(&bg, startup).await {
                    bg.warn(format!("reconcile: {e}"));
                }
                bg.reconciled.send_replace(true);
                tracing::info!("reconcile done");
                reconcile::heal(bg).await;
            });
        }
        Ok(Engine { inner })
    }

    /// Waits until the background reconcile after start is done.
    pub async fn reconciled(&self) {
        let mut rx = self.inner.reconciled.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Upgrade, step 1 (before the successor starts): pauses every deploy at its next step
    /// boundary with its checkpoint persisted, and waits for running repairs. Fails (and
    /// lets them carry on) if one does not get there within `timeout`. Returns how many
    /// deploys are paused.
    pub async fn pause_for_upgrade(&self, timeout: Duration) -> Result<usize, HandoverError> {
        handover::pause_all(&self.inner, timeout).await
    }

    /// The upgrade failed: paused deploys carry on in this process.
    pub fn resume_after_failed_upgrade(&self) {
        handover::resume_all(&self.inner);
    }

    /// Upgrade, step 2 (the successor `pid` is serving): the paused deploys are its now;
    /// this process writes none of them again.
    pub fn hand_over(&self, pid: u32) {
        handover::hand_over_all(&self.inner, pid);
    }

    /// Aborts every task of this engine at its next await point, without cleanup.
    pub fn kill(&self) {
        for t in self.inner.tasks.locked().drain(..) {
            t.abort();
        }
    }

    fn secrets_key(&self) -> Result<&crate::store::secrets::SecretsKey, DeployError> {
        self.inner.cfg.secrets.as_deref().ok_or_else(|| {
            DeployError::Secrets(
                "this server has no secrets key, so it cannot take or use app secrets".into(),
            )
        })
    }

    /// `POST /v1/apps/{app}/deploy`: validates, records the deployment and starts it; returns
    /// its id at once. A deploy already running for the app → `Conflict` with its id.
    pub async fn deploy(
        &self,
        app: &str,
        spec: AppSpec,
        image: ImageSource,
        who: &str,
    ) -> Result<String, DeployError> {
        self.start_deployment(app, spec, image, who, None)
    }

    fn start_deployment(
        &self,
        app: &str,
        spec: AppSpec,
        image: ImageSource,
        who: &str,
        rollback_of: Option<String>,
    ) -> Result<String, DeployError> {
        validate_app_name(app)?;
        spec.validate()?;
        self.refuse_if_damaged(app)?;
        spec.check_host_mounts(self.inner.cfg.allow_host_mounts)?;
        // The domains must be free before the deploy is accepted (the route is published only
        // after the first replica is healthy; a collision then would fail the deploy late).
        let probe = spec.traffic().route(
            app_route_name(app),
            spec.domains.clone(),
            spec.aliases.clone(),
            vec![],
        );
        if !spec.is_worker() {
            self.inner
                .publisher
                .check_routes(&app_route_name(app), vec![probe])
                .map_err(DeployError::DomainTaken)?;
        }
        let mut spec = spec;
        if !spec.secrets.is_empty() {
            // Sealed before anything is stored; the values in clear are dropped here.
            self.secrets_key()?.seal_spec(&mut spec)?;
        }
        let id = new_deployment_id();
        let rec = DeploymentRecord {
            id: id.clone(),
            app: app.to_string(),
            spec,
            image_id: match &image {
                ImageSource::Id(i) => Some(i.clone()),
                _ => None,
            },
            state: DeployState::Running,
            reason: None,
            created_by: who.to_string(),
            created_at: now_ms(),
            finished_at: None,
            rollback_of,
        };
        {
            let mut st = self.inner.state.locked();
            let a = st.apps.entry(app.to_string()).or_default();
            if let Some(running) = &a.running {
                return Err(DeployError::Conflict {
                    app: app.to_string(),
                    running: running.clone(),
                });
            }
            // Claimed here, so no second deploy can slip in; persisted (below, outside the
            // state lock) before anything runs.
            a.running = Some(id.clone());
            let (tx, _) = broadcast::channel(256);
            let mut progress = self.inner.progress.locked();
            if progress.len() > 200 {
                // Forget the oldest finished deployments' event logs.
                let mut done: Vec<(String, i64)> = progress
                    .iter()
                    .filter(|(_, p)| p.done.borrow().is_some())
                    .map(|(k, p)| (k.clone(), p.events.first().map_or(0, |e| e.at)))
                    .collect();
                done.sort_by_key(|(_, at)| *at);
                for (k, _) in done.into_iter().take(100) {
                    progress.remove(&k);
                }
            }
            progress.insert(
                id.clone(),
                Progress {
                    events: Vec::new(),
                    tx,
                    done: watch::Sender::new(None),
                },
            );
        }
        if let Err(e) = self.inner.store.insert(&rec) {
            if let Some(a) = self.inner.state.locked().apps.get_mut(app) {
                if a.running.as_deref() == Some(id.as_str()) {
                    a.running = None;
                }
            }
            self.inner.progress.locked().remove(&id);
            return Err(e.into());
        }
        self.inner.emit(
            &id,
            "accepted",
            format!(
                "{} deploy of {} ({} replicas) requested by {who}",
                match rec.spec.strategy {
                    Strategy::Rolling => "rolling",
                    Strategy::Replace => "replace",
                },
                rec.spec.image,
                rec.spec.replicas
            ),
        );
        let inner = self.inner.clone();
        self.inner
            .spawn(async move { run::run(inner, rec, image).await });
        Ok(id)
    }

    fn refuse_if_damaged(&self, app: &str) -> Result<(), DeployError> {
        if !self.inner.handover.running() {
            return Err(DeployError::Upgrading);
        }
        match &self.inner.cfg.store_damaged {
            Some(why) => Err(DeployError::Conflict {
                app: app.to_string(),
                running: format!(
                    "nothing (the store is damaged: {why}; restore a backup and restart berthd)"
                ),
            }),
            None => Ok(()),
        }
    }

    /// The id of the deployment running for `app`, if one is (or [`RECONCILING`],
    /// [`STOPPING`]). The API checks it before reading an image upload, so a second upload
    /// is refused (409) without being streamed.
    pub fn running(&self, app: &str) -> Option<String> {
        let st = self.inner.state.locked();
        st.apps.get(app).and_then(|a| a.running.clone())
    }

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

    /// `GET /v1/deployments/{id}`.
    pub fn deployment(&self, id: &str) -> Result<DeploymentRecord, DeployError> {
        self.inner
            .store
            .get(id)?
            .ok_or_else(|| DeployError::DeploymentNotFound(id.to_string()))
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

    /// `GET /v1/apps/{app}/deployments` (newest first).
    pub fn deployments(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, DeployError> {
        Ok(self.inner.store.list(app, limit)?)
    }

    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<Vec<AppStatus>, DeployError> {
        let mut names: Vec<String> = self
            .inner
            .store
            .apps()?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        {
            let st = self.inner.state.locked();
            names.extend(st.discovered.values().map(|d| d.labels.app.clone()));
            names.extend(
                st.apps
                    .iter()
                    .filter(|(_, a)| a.adopted.is_some())
                    .map(|(n, _)| n.clone()),
            );
        }
        names.sort();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.app(&n).await?);
        }
        Ok(out)
    }

    /// `GET /v1/apps/{app}`: replicas (with Docker state and in-flight counts), current and
    /// previous deployments, the deployment in progress.
    pub async fn app(&self, app: &str) -> Result<AppStatus, DeployError> {
        let (replicas, down, discovered, deploying, adopted, gate) = {
            let st = self.inner.state.locked();
            let a = st.apps.get(app);
            (
                a.map(|a| a.replicas.clone()).unwrap_or_default(),
                a.map(|a| a.down.clone()).unwrap_or_default(),
                st.discovered
                    .values()
                    .filter(|d| d.labels.app == app)
                    .map(|d| d.replica.clone())
                    .collect::<Vec<_>>(),
                a.and_then(|a| a.running.clone()),
                a.and_then(|a| a.adopted.clone()),
                a.map(|a| a.gate.clone()).unwrap_or_default(),
            )
        };
        let history = self.inner.store.list(app, 50)?;
        let current = self.inner.store.current(app)?;
        if history.is_empty() && discovered.is_empty() && adopted.is_none() {
            return Err(DeployError::AppNotFound(app.to_string()));
        }
        let previous = history
            .iter()
            .find(|d| {
                d.state == DeployState::Succeeded && Some(&d.id) != current.as_ref().map(|c| &c.id)
            })
            .cloned();
        let mut rs = Vec::new();
        for (route, r) in replicas
            .iter()
            .map(|r| (app_route_name(app), r))
            .chain(discovered.iter().map(|r| (discovered_route_name(app), r)))
        {
            let info = self.inner.rt.inspect(&r.container_id).await.ok();
            let healthy = self.inner.publisher.healthy(&route, &r.container_id);
            rs.push(ReplicaStatus {
                container_id: r.container_id.clone(),
                name: r.name.clone(),
                address: r.address.to_string(),
                deployment: (!r.deployment.is_empty()).then(|| r.deployment.clone()),
                routing: r.state,
                routed: !down.contains(&r.container_id) && healthy != Some(false),
                healthy,
                running: info.as_ref().map(|i| i.running()),
                docker_health: info
                    .and_then(|i| i.health)
                    .map(|h| format!("{h:?}").to_lowercase()),
                inflight: self.inner.publisher.inflight(&route, &r.container_id),
            });
        }
        let discovered_status = rs.split_off(replicas.len());
        Ok(AppStatus {
            name: app.to_string(),
            replicas: rs,
            discovered: discovered_status,
            current,
            previous,
            deploying,
            heal: self
                .inner
                .heal
                .locked()
                .get(app)
                .and_then(|h| h.line.clone()),
            adopted,
            gate,
        })
    }

    /// `POST /v1/apps/{app}/rollback`: a rolling deploy of the stored spec and image of
    /// deployment `to`, or of the newest successful deployment before the current one.
    pub async fn rollback(
        &self,
        app: &str,
        to: Option<&str>,
        who: &str,
    ) -> Result<String, DeployError> {
        let target = match to {
            Some(id) => {
                let d = self
                    .inner
                    .store
                    .get(id)?
                    .ok_or_else(|| DeployError::DeploymentNotFound(id.to_string()))?;
                if d.app != app {
                    return Err(DeployError::NoRollbackTarget(format!(
                        "deployment {id} belongs to app {}",
                        d.app
                    )));
                }
                if d.state != DeployState::Succeeded {
                    return Err(DeployError::NoRollbackTarget(format!(
                        "deployment {id} did not succeed"
                    )));
                }
                d
            }
            None => {
                let current = self.inner.store.current(app)?.map(|c| c.id);
                self.inner
                    .store
                    .list(app, 1000)?
                    .into_iter()
                    .find(|d| d.state == DeployState::Succeeded && Some(&d.id) != current.as_ref())
                    .ok_or_else(|| {
                        DeployError::NoRollbackTarget(format!(
                            "app {app} has no earlier successful deployment"
                        ))
                    })?
            }
        };
        let image_id = target.image_id.clone().ok_or_else(|| {
            DeployError::NoRollbackTarget(format!("deployment {} has no image id", target.id))
        })?;
        if let Err(e) = self.inner.rt.image_id(&image_id).await {
            return Err(DeployError::NoRollbackTarget(format!(
                "the image of deployment {} is gone ({e}); only the last {} are kept",
                target.id, self.inner.cfg.keep_images
            )));
        }
        let mut spec = target.spec.clone();
        if !spec.secrets.is_empty() {
            // Fail now, clearly, rather than at the first container.
            self.secrets_key()?
                .env_of(&spec)
                .map_err(|e| DeployError::Secrets(format!("cannot roll back: {e}")))?;
        }
        spec.strategy = Strategy::Rolling;
        self.start_deployment(app, spec, ImageSource::Id(image_id), who, Some(target.id))
    }

    /// `POST /v1/apps/{app}/stop`: drains and stops every replica; the app then runs
    /// nothing (also after a restart) until the next deploy.
    pub async fn stop(&self, app: &str) -> Result<(), DeployError> {
        self.refuse_if_damaged(app)?;
        let current = self.inner.store.current(app)?;
        let drain = current
            .as_ref()
            .map_or(Duration::from_secs(30), |c| c.spec.drain_timeout);
        let grace = current
            .and_then(|c| c.spec.stop_timeout)
            .unwrap_or(self.inner.cfg.stop_grace);
        {
            let mut st = self.inner.state.locked();
            let Some(a) = st.apps.get_mut(app) else {
                return Err(DeployError::AppNotFound(app.to_string()));
            };
            if let Some(running) = &a.running {
                return Err(DeployError::Conflict {
                    app: app.to_string(),
                    running: running.clone(),
                });
            }
            // Deploys of this app get Conflict("stopping") until the stop is done.
            a.running = Some(STOPPING.to_string());
        }
        // Persist first (outside the state lock): after a crash from here on, reconcile
        // stops the rest.
        if let Err(e) = self.inner.store.clear_current(app) {
            if let Some(a) = self.inner.state.locked().apps.get_mut(app) {
                a.running = None;
            }
            return Err(e.into());
        }
        let replicas = {
            let mut st = self.inner.state.locked();
            let Some(a) = st.apps.get_mut(app) else {
                return Err(DeployError::AppNotFound(app.to_string()));
            };
            for r in a.replicas.iter_mut() {
                r.state = ServerState::Drain;
            }
            let replicas = a.replicas.clone();
            if let Err(e) = self.inner.publish_app(&st, app) {
                self.inner
                    .warn(format!("app {app}: publishing drained routes failed: {e}"));
            }
            replicas
        };
        let result = self.finish_stop(app, &replicas, drain, grace).await;
        if let Some(a) = self.inner.state.locked().apps.get_mut(app) {
            a.running = None;
        }
        result
    }

    /// Deletes an app: drains, stops and removes its replicas and its route, then forgets it
    /// (history kept readable by deployment id, or removed with Berth's image tags). A failed
    /// first deploy leaves an app record behind; this is how it goes. Hand-started containers
    /// with the app's labels are the operator's and stay.
    pub async fn delete(&self, app: &str, keep_history: bool) -> Result<AppDeleted, DeployError> {
        self.refuse_if_damaged(app)?;
        let history = self.inner.store.list(app, 100_000)?;
        let current = self.inner.store.current(app)?;
        let drain = current
            .as_ref()
            .map_or(Duration::from_secs(30), |c| c.spec.drain_timeout);
        let grace = current
            .as_ref()
            .and_then(|c| c.spec.stop_timeout)
            .unwrap_or(self.inner.cfg.stop_grace);
        let replicas = {
            let mut st = self.inner.state.locked();
            if history.is_empty() && !st.apps.contains_key(app) {
                return Err(DeployError::AppNotFound(app.to_string()));
            }
            let a = st.apps.entry(app.to_string()).or_default();
            if let Some(running) = &a.running {
                return Err(DeployError::Conflict {
                    app: app.to_string(),
                    running: running.clone(),
                });
            }
            // Deploys of this app get Conflict("deleting") until the delete is done.
            a.running = Some(DELETING.to_string());
            for r in a.replicas.iter_mut() {
                r.state = ServerState::Drain;
            }
            let replicas = a.replicas.clone();
            if let Err(e) = self.inner.publish_app(&st, app) {
                self.inner
                    .warn(format!("app {app}: publishing drained routes failed: {e}"));
            }
            replicas
        };
        let result = async {
            // Persist first: after a crash from here on, reconcile stops the rest.
            self.inner.store.clear_current(app)?;
            self.finish_stop(app, &replicas, drain, grace).await?;
            let deployments = self.inner.store.delete_app(app, keep_history, now_ms())?;
            let mut images_untagged = 0;
            if !keep_history {
                for d in history.iter().filter(|d| d.image_id.is_some()) {
                    let (repo, tag) = run::berth_tag(app, &d.id);
                    let reference = format!("{repo}:{tag}");
                    match self.inner.rt.untag_image(&reference).await {
                        Ok(true) => images_untagged += 1,
                        Ok(false) => {}
                        Err(e) => self.inner.warn(format!("removing image {reference}: {e}")),
                    }
                }
            }
            Ok::<_, DeployError>(AppDeleted {
                app: app.to_string(),
                replicas_removed: replicas.len(),
                deployments,
                history_kept: keep_history,
                images_untagged,
            })
        }
        .await;
        {
            let mut st = self.inner.state.locked();
            match &result {
                Ok(_) => {
                    st.apps.remove(app);
                }
                Err(_) => {
                    if let Some(a) = st.apps.get_mut(app) {
                        a.running = None;
                    }
                }
            }
        }
        if let Ok(d) = &result {
            tracing::info!(
                app,
                replicas = d.replicas_removed,
                deployments = d.deployments,
                history_kept = keep_history,
                "app deleted"
            );
        }
        result
    }

    async fn finish_stop(
        &self,
        app: &str,
        replicas: &[Replica],
        drain: Duration,
        grace: Duration,
    ) -> Result<(), DeployError> {
        for r in replicas {
            run::wait_drained(&self.inner, app, &r.container_id, drain).await;
        }
        {
            let mut st = self.inner.state.locked();
            if let Some(a) = st.apps.get_mut(app) {
                a.replicas.clear();
                a.hosts = None;
                a.adopted = None;
            }
            if let Err(e) = self.inner.publish_app(&st, app) {
                self.inner
                    .warn(format!("app {app}: removing routes failed: {e}"));
            }
        }
        for r in replicas {
            self.inner.rt.stop(&r.container_id, grace).await?;
            self.inner.rt.remove(&r.container_id).await?;
        }
        Ok(())
    }

    /// `GET /v1/apps/{app}/logs`: log lines of every replica, prefixed with the container
    /// name; `follow` keeps the stream open.
    pub fn logs(
        &self,
        app: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<BoxStream<'static, Result<String, RuntimeError>>, DeployError> {
        let st = self.inner.state.locked();
        let mut members: Vec<(String, String)> = st
            .apps
            .get(app)
            .map(|a| {
                a.replicas
                    .iter()
                    .map(|r| (r.container_id.clone(), r.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        members.extend(
            st.discovered
                .values()
                .filter(|d| d.labels.app == app)
                .map(|d| (d.replica.container_id.clone(), d.replica.name.clone())),
        );
        if members.is_empty() {
            return Err(DeployError::AppNotFound(app.to_string()));
        }
        let streams = members.into_iter().map(|(id, name)| {
            self.inner
                .rt
                .logs(&id, follow, tail)
                .map(move |l| l.map(|l| format!("[{name}] {l}")))
                .boxed()
        });
        Ok(futures_util::stream::select_all(streams).boxed())
    }

    /// Warnings about unusable labels of hand-started containers (each once).
    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings.locked().clone()
    }
}
