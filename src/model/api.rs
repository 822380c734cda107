//! The REST API's contract: every request and response body of `/v1/*`, as plain serde types
//! shared by the server (`api/`, which serialises them) and the `berth` CLI (`client/`, which
//! deserialises them). Nothing here does I/O; the types carry no axum or tokio.
//!
//! One type per body, named after what it is (`App`, `AppList`, `DeployAccepted`), with the
//! wire names as field names: renaming a field here renames it on both ends, and
//! `tests/api/contract.rs` checks every type against the schema of its operation in
//! `src/api/openapi.json` (both directions), so a rename that misses the document fails a test.
//!
//! Adding an endpoint's types:
//! 1. Define its request and response bodies here (`#[derive(Serialize, Deserialize)]`;
//!    `#[serde(deny_unknown_fields)]` on request bodies), or `pub use` the model type the body
//!    is (`route::RouteSpec`, `traffic::AppGate`). A list answers `{"<plural>": [...]}`.
//! 2. The handler returns `Json<ThatType>` (never `serde_json::json!`), the client reads
//!    `api.get::<ThatType>(..)` / `api.json::<ThatType, _>(..)` and prints its fields.
//! 3. Describe it in `openapi.json` (`components/schemas/<TypeName>`) and add a sample of the
//!    type to `tests/api/contract.rs`, which validates it against the operation's schema.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::access::Scopes;
use super::deploy::{AppSpec, RegistryAuth};
use super::route::{BackendSpec, RouteSpec, ServerState};
use super::traffic::AppGate;

pub use super::canary::{CanaryStatus, LiveFigures, VersionSplit};

/// `PUT /v1/apps/{app}/traffic`: version (deployment id or image tag) → whole percent.
pub type TrafficWeights = BTreeMap<String, u32>;

/// The API version (`GET /v1/version` → `api`): the daemon speaks it, the `berth` CLI refuses a
/// daemon that speaks another.
pub const API_VERSION: u64 = 1;

// ---------------------------------------------------------------------------------------
// Public endpoints

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthz {
    /// Always `ok`.
    pub status: String,
}

/// `GET /v1/version`: the API version this daemon speaks and its own version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub api: u64,
    pub berthd: String,
}

/// `GET /v1/token`: the token the request authenticated with, and its scopes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The token's id (none for a status-page session).
    pub id: Option<i64>,
    pub name: Option<String>,
    /// True for a status-page session.
    pub session: bool,
    /// `read`, `deploy:PATTERN`, `admin`.
    pub scopes: Scopes,
}

/// Every error answer: `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

impl ErrorBody {
    /// An error with a code and a message only.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: None,
                required_scope: None,
                host: None,
                deployment: None,
            },
        }
    }
}

/// What went wrong; `code` is stable, `message` is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// The request field at fault (422, some 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// 403: the scope the request needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<String>,
    /// 421: the host the API does not answer for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// 409 `deploy_in_progress`: the running deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// `POST /ui/login` and `GET /ui/session` (the status page): the session's CSRF token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Sent back in the CSRF header of every changing request.
    pub csrf_token: String,
    /// Seconds until the session ends.
    pub expires_in_s: u64,
    /// The session token's scopes (`GET /ui/session` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Scopes>,
}

// ---------------------------------------------------------------------------------------
// Routes and backends

/// Where a route came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// Static route from the configuration file: read-only at run time.
    Config,
    /// Created through the REST API.
    Api,
    /// Published by the deploy orchestrator.
    Deploy,
}

impl RouteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Config => "config",
            RouteSource::Api => "api",
            RouteSource::Deploy => "deploy",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "config" => Some(RouteSource::Config),
            "api" => Some(RouteSource::Api),
            "deploy" => Some(RouteSource::Deploy),
            _ => None,
        }
    }
}

/// `GET /v1/routes/{name}` (and the answer of `PUT`): a route as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub name: String,
    pub source: RouteSource,
    pub read_only: bool,
    /// The route without `name` (the `PUT` body that would recreate it); every backend has
    /// its `id`.
    pub spec: RouteSpec,
}

/// `GET /v1/routes`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteList {
    pub routes: Vec<RouteView>,
}

/// Live health of a served backend, as the proxy routes by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendHealth {
    Up,
    Down,
}

impl BackendHealth {
    pub fn of(up: bool) -> Self {
        if up {
            BackendHealth::Up
        } else {
            BackendHealth::Down
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendHealth::Up => "up",
            BackendHealth::Down => "down",
        }
    }
}

/// `GET /v1/routes/{name}/backends/{id}`: a backend with its id always set, and its live
/// health when the route is served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendView {
    #[serde(flatten)]
    pub spec: BackendSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<BackendHealth>,
}

/// `GET /v1/routes/{name}/backends`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendList {
    pub backends: Vec<BackendView>,
}

/// `PUT /v1/routes/{name}/backends/{id}/state` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateInput {
    pub state: ServerState,
}

// ---------------------------------------------------------------------------------------
// Frontends and pools

/// `POST /v1/pools/{name}/version` body: the deployment a pool that follows an app switches to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolVersionInput {
    pub version: String,
}

// ---------------------------------------------------------------------------------------
// Deployments

/// Lifecycle of a deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    Running,
    Succeeded,
    Failed,
}

impl DeployState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployState::Running => "running",
            DeployState::Succeeded => "succeeded",
            DeployState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => DeployState::Running,
            "succeeded" => DeployState::Succeeded,
            "failed" => DeployState::Failed,
            _ => return None,
        })
    }
}

/// One deployment as stored (`GET /v1/deployments/{id}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub app: String,
    pub spec: AppSpec,
    /// Resolved image id (`sha256:…`), once known.
    pub image_id: Option<String>,
    pub state: DeployState,
    /// Why it failed.
    pub reason: Option<String>,
    /// Who asked (token name, `rollback`, `reconcile`).
    pub created_by: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The deployment this one rolls back to.
    pub rollback_of: Option<String>,
}

/// `GET /v1/apps/{app}/deployments`: newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentList {
    pub deployments: Vec<DeploymentRecord>,
}

/// The body of `POST /v1/apps/{app}/deploy` (as JSON, or the `spec` part of a multipart
/// upload): an [`AppSpec`] whose secrets carry their values and whose registry login carries
/// its password. Both travel only in this request: a serialised `AppSpec` never holds them
/// (secrets show as name + fingerprint, the password not at all), so they are written here.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct DeployRequest {
    /// The spec without secrets and registry (those are the fields below).
    #[serde(flatten)]
    spec: AppSpec,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    registry: Option<RegistryLogin>,
}

/// `registry` of a deploy request, password included.
#[derive(Clone, PartialEq, Eq, Serialize)]
struct RegistryLogin {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    username: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("server", &self.server)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for DeployRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeployRequest")
            .field("spec", &self.spec)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("registry", &self.registry)
            .finish()
    }
}

impl DeployRequest {
    /// The request for `spec`: its secrets' values (`Secret::plain`) and its registry
    /// password are moved into the request's own fields. A secret without a value in clear
    /// (read back from a listing) is sent without one and refused by the server.
    pub fn new(mut spec: AppSpec) -> Self {
        let secrets = std::mem::take(&mut spec.secrets)
            .into_iter()
            .map(|(name, s)| {
                let value = s.value().unwrap_or_default().to_string();
                (name, value)
            })
            .collect();
        let registry = spec.registry.take().map(|r: RegistryAuth| RegistryLogin {
            server: r.server,
            username: r.username,
            password: r.password,
        });
        DeployRequest {
            spec,
            secrets,
            registry,
        }
    }
}

/// `202` of `POST /v1/apps/{app}/deploy` and `POST /v1/apps/{app}/rollback`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployAccepted {
    /// The deployment; its events are at `/v1/deployments/{id}/events`.
    pub id: String,
    pub app: String,
    pub state: DeployState,
}

/// `POST /v1/apps/{app}/rollback` body (empty: the previous successful deployment).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
}

/// What a deploy event reports. The wire name is the snake_case variant name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The deployment was recorded (first event).
    Accepted,
    /// The image is being pulled or loaded, or is there.
    Image,
    /// A deploy hook ran (its output lines, its exit).
    Hook,
    /// A new replica was created and started.
    Start,
    /// A new replica passed its health gate.
    Healthy,
    /// A new replica takes traffic.
    Routed,
    /// An old replica stopped taking new requests.
    Drain,
    /// An old replica finished its in-flight requests.
    Drained,
    /// An old replica is being stopped.
    Stopping,
    /// An old replica stopped.
    Stopped,
    /// A step failed; the old replicas are being routed again.
    Aborting,
    /// The old replicas serve again after an abort.
    Restored,
    /// A new replica was removed after an abort.
    Removed,
    /// Old images were untagged.
    Pruned,
    /// Self-healing replaced a replica that stopped outside a deploy.
    Heal,
    /// Self-healing brought the app back to its replica count.
    Healed,
    /// The deploy was paused for, or handed to, the next berthd process (upgrade).
    Handover,
    /// The deploy paused at a step boundary (upgrade).
    Paused,
    /// A paused or handed-over deploy continues.
    Resumed,
    /// The replayed outcome of a deployment an earlier berthd left running (interrupted).
    Running,
    /// A canary step began: its weight and hold.
    Step,
    /// A canary step was judged (the figures of both versions).
    Analysis,
    /// The split between the versions was set by hand (or restored after a restart).
    Split,
    /// A canary is promoted: it takes all traffic, the stable replicas drain.
    Promote,
    /// A canary was aborted: traffic is back on the stable version.
    Rollback,
    /// Last event: the deployment succeeded.
    Succeeded,
    /// Last event: the deployment failed (the old version serves).
    Failed,
}

impl Stage {
    /// Every stage (for tests and documentation).
    pub const ALL: [Stage; 27] = [
        Stage::Accepted,
        Stage::Image,
        Stage::Hook,
        Stage::Start,
        Stage::Healthy,
        Stage::Routed,
        Stage::Drain,
        Stage::Drained,
        Stage::Stopping,
        Stage::Stopped,
        Stage::Aborting,
        Stage::Restored,
        Stage::Removed,
        Stage::Pruned,
        Stage::Heal,
        Stage::Healed,
        Stage::Handover,
        Stage::Paused,
        Stage::Resumed,
        Stage::Running,
        Stage::Step,
        Stage::Analysis,
        Stage::Split,
        Stage::Promote,
        Stage::Rollback,
        Stage::Succeeded,
        Stage::Failed,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Accepted => "accepted",
            Stage::Image => "image",
            Stage::Hook => "hook",
            Stage::Start => "start",
            Stage::Healthy => "healthy",
            Stage::Routed => "routed",
            Stage::Drain => "drain",
            Stage::Drained => "drained",
            Stage::Stopping => "stopping",
            Stage::Stopped => "stopped",
            Stage::Aborting => "aborting",
            Stage::Restored => "restored",
            Stage::Removed => "removed",
            Stage::Pruned => "pruned",
            Stage::Heal => "heal",
            Stage::Healed => "healed",
            Stage::Handover => "handover",
            Stage::Paused => "paused",
            Stage::Resumed => "resumed",
            Stage::Running => "running",
            Stage::Step => "step",
            Stage::Analysis => "analysis",
            Stage::Split => "split",
            Stage::Promote => "promote",
            Stage::Rollback => "rollback",
            Stage::Succeeded => "succeeded",
            Stage::Failed => "failed",
        }
    }

    /// The stage of a wire name (a stored event log, written by any version).
    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The deployment's state once this event happened.
    pub fn state(self) -> DeployState {
        match self {
            Stage::Succeeded => DeployState::Succeeded,
            Stage::Failed => DeployState::Failed,
            _ => DeployState::Running,
        }
    }

    /// True for the last event of a deployment.
    pub fn is_terminal(self) -> bool {
        matches!(self, Stage::Succeeded | Stage::Failed)
    }

    /// The stage that reports a recorded outcome.
    pub fn of_state(state: DeployState) -> Stage {
        match state {
            DeployState::Running => Stage::Running,
            DeployState::Succeeded => Stage::Succeeded,
            DeployState::Failed => Stage::Failed,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One progress event of a deployment (the SSE stream of `GET /v1/deployments/{id}/events`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    pub deployment: String,
    /// Unix milliseconds.
    pub at: i64,
    pub stage: Stage,
    pub message: String,
    /// `running` until the last event, then `succeeded` or `failed` (what clients stop on).
    pub state: DeployState,
    /// True on the last event.
    pub done: bool,
}

impl DeployEvent {
    /// An event of `stage`; `succeeded` and `failed` end the stream.
    pub fn new(deployment: &str, at: i64, stage: Stage, message: String) -> Self {
        DeployEvent {
            deployment: deployment.to_string(),
            at,
            stage,
            message,
            state: stage.state(),
            done: stage.is_terminal(),
        }
    }
}

/// One line of `GET /v1/apps/{app}/logs` (an SSE event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The replica's container name.
    pub container: String,
    pub line: String,
}

/// The data of an `error` event on a stream (`GET /v1/apps/{app}/logs`): the stream ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamError {
    pub message: String,
}

// ---------------------------------------------------------------------------------------
// Apps

/// A replica as `GET /v1/apps/{app}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

impl ReplicaStatus {
    /// Whether the replica serves: routed as ready, and not known to have stopped.
    pub fn serves(&self) -> bool {
        self.routing == ServerState::Ready && self.routed && self.running != Some(false)
    }
}

/// What the deploy engine knows of one app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "AppGate::is_empty")]
    pub gate: AppGate,
    /// The canary in progress: step, split, both versions' live figures (omitted otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// Each version (deployment) with replicas in the route, when there are several
    /// (versions side by side, a canary, a deploy in progress); omitted otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionStatus>,
}

/// One version of an app in `AppStatus.versions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionStatus {
    /// The deployment id.
    pub deployment: String,
    /// The image tag (`web:v2` → `v2`), which `berth traffic` accepts too; empty without one.
    pub label: String,
    /// Replicas that serve (routed, healthy, not draining).
    pub ready: u32,
    /// Replicas its deployment asks for.
    pub desired: u32,
    /// Replicas draining (leaving the route).
    pub draining: u32,
    /// Percent of new requests, when a split is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl VersionStatus {
    /// `1/1 v2 (10%)`: ready/desired, label (or short id), weight.
    pub fn summary(&self) -> String {
        let name = if self.label.is_empty() {
            self.deployment.clone()
        } else {
            self.label.clone()
        };
        match self.weight {
            Some(w) => format!("{}/{} {name} ({w}%)", self.ready, self.desired),
            None => format!("{}/{} {name}", self.ready, self.desired),
        }
    }
}

/// An app's health in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppHealth {
    /// A deployment is in progress.
    Deploying,
    /// Nothing should run (never deployed, or stopped) and nothing hand-started runs.
    Stopped,
    /// At least as many replicas serve as the current deployment asks for.
    Healthy,
    /// Some, but fewer than asked for, serve.
    Degraded,
    /// None serves.
    Down,
}

impl AppHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            AppHealth::Deploying => "deploying",
            AppHealth::Stopped => "stopped",
            AppHealth::Healthy => "healthy",
            AppHealth::Degraded => "degraded",
            AppHealth::Down => "down",
        }
    }
}

impl std::fmt::Display for AppHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Replicas serving and asked for, and the health they make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppSummary {
    pub health: AppHealth,
    /// Replicas of the current deployment that serve (see [`ReplicaStatus::serves`]).
    pub ready: usize,
    /// Replicas the current deployment asks for (0 without one).
    pub desired: usize,
}

impl AppSummary {
    /// The one rule for an app's health (the API, `berth status` and the status page show
    /// what it returns).
    pub fn of(a: &AppStatus) -> AppSummary {
        // Several versions: the current deployment's replicas against what it asks for (the
        // others are shown per version, see `App::of`).
        let current = a.current.as_ref().map(|c| c.id.as_str());
        let ready = a
            .replicas
            .iter()
            .filter(|r| r.serves())
            .filter(|r| a.versions.len() < 2 || r.deployment.as_deref() == current)
            .count();
        let desired = a.current.as_ref().map_or(0, |c| c.spec.replicas as usize);
        let health = if a.deploying.is_some() {
            AppHealth::Deploying
        } else if a.current.is_none() && a.discovered.is_empty() {
            AppHealth::Stopped
        } else if ready >= desired {
            AppHealth::Healthy
        } else if ready > 0 {
            AppHealth::Degraded
        } else {
            AppHealth::Down
        };
        AppSummary {
            health,
            ready,
            desired,
        }
    }
}

/// `GET /v1/apps/{app}`: the engine's status of the app plus a summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    #[serde(flatten)]
    pub status: AppStatus,
    /// Domains, then aliases, of the current deployment.
    pub domains: Vec<String>,
    pub health: AppHealth,
    /// `READY/DESIRED` replicas (see [`AppSummary`]).
    pub ready: String,
}

impl App {
    pub fn of(status: AppStatus) -> App {
        let summary = AppSummary::of(&status);
        let domains = status
            .current
            .as_ref()
            .map(|c| {
                c.spec
                    .domains
                    .iter()
                    .chain(c.spec.aliases.iter())
                    .map(|d| d.to_string())
                    .collect()
            })
            .unwrap_or_default();
        App {
            domains,
            health: summary.health,
            ready: if status.versions.len() > 1 {
                // One `ready/desired` per version (a canary's "2/1" was both versions
                // counted against the stable one's count).
                status
                    .versions
                    .iter()
                    .map(VersionStatus::summary)
                    .collect::<Vec<_>>()
                    .join(" + ")
            } else {
                format!("{}/{}", summary.ready, summary.desired)
            },
            status,
        }
    }
}

/// `GET /v1/apps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppList {
    pub apps: Vec<App>,
}

/// What `DELETE /v1/apps/{app}` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// `POST /v1/apps/{app}/stop`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStopped {
    pub app: String,
    /// Always `stopped`.
    pub state: String,
}

// ---------------------------------------------------------------------------------------
// Certificates

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertSource {
    Acme,
    Manual,
    Default,
}

/// One line of `GET /v1/certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// The domain (ACME) or the first name of the certificate (manual).
    pub domain: String,
    pub names: Vec<String>,
    pub source: CertSource,
    /// Where the certificate file lives (manual) or will live (ACME).
    pub path: String,
    pub issuer: Option<String>,
    /// RFC 3339.
    pub not_after: Option<String>,
    /// RFC 3339; when the next renewal (or retry) is due. ACME only.
    pub next_renewal: Option<String>,
    pub last_error: Option<String>,
}

/// `GET /v1/certificates`: every certificate served (empty when TLS is off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateList {
    pub certificates: Vec<CertStatus>,
}

/// `202` of `POST /v1/certificates/{domain}/retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRetryQueued {
    /// The domain the order is for.
    pub domain: String,
    /// Always `queued`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::deploy::Secret;
    use crate::model::route::Domain;

    fn replica(routing: ServerState, routed: bool, running: Option<bool>) -> ReplicaStatus {
        ReplicaStatus {
            container_id: "c".into(),
            name: "web-1".into(),
            address: "10.0.0.2:8080".into(),
            deployment: Some("d1".into()),
            routing,
            routed,
            healthy: Some(routed),
            running,
            docker_health: None,
            inflight: None,
        }
    }

    fn spec(replicas: u32) -> AppSpec {
        let mut s: AppSpec =
            serde_json::from_str(r#"{"image":"web:1","domains":["web.test"]}"#).unwrap();
        s.replicas = replicas;
        s
    }

    fn record(replicas: u32) -> DeploymentRecord {
        DeploymentRecord {
            id: "d1".into(),
            app: "web".into(),
            spec: spec(replicas),
            image_id: None,
            state: DeployState::Succeeded,
            reason: None,
            created_by: "t".into(),
            created_at: 1,
            finished_at: Some(2),
            rollback_of: None,
        }
    }

    fn status(
        current: Option<u32>,
        replicas: Vec<ReplicaStatus>,
        discovered: usize,
        deploying: bool,
    ) -> AppStatus {
        AppStatus {
            name: "web".into(),
            replicas,
            discovered: (0..discovered)
                .map(|_| replica(ServerState::Ready, true, Some(true)))
                .collect(),
            current: current.map(record),
            previous: None,
            deploying: deploying.then(|| "d2".to_string()),
            heal: None,
            adopted: None,
            gate: AppGate::default(),
            canary: None,
            versions: vec![],
        }
    }

    #[test]
    fn several_versions_count_per_version() {
        // A canary (or versions side by side): stable d1 with 1 replica, d2 with 1. Before,
        // the replicas column read "2/1" (both versions against the stable one's count).
        let on = |d: &str| ReplicaStatus {
            deployment: Some(d.into()),
            ..replica(ServerState::Ready, true, Some(true))
        };
        let version = |d: &str, label: &str, ready, weight| VersionStatus {
            deployment: d.into(),
            label: label.into(),
            ready,
            desired: 1,
            draining: 0,
            weight,
        };
        let mut s = status(Some(1), vec![on("d1"), on("d2")], 0, false);
        s.versions = vec![
            version("d1", "v1", 1, Some(90)),
            version("d2", "", 1, Some(10)),
        ];
        let sum = AppSummary::of(&s);
        assert_eq!(
            (sum.health, sum.ready, sum.desired),
            (AppHealth::Healthy, 1, 1)
        );
        assert_eq!(App::of(s.clone()).ready, "1/1 v1 (90%) + 1/1 d2 (10%)");
        // The current version short of replicas: degraded, whatever the other runs.
        s.replicas = vec![on("d2")];
        s.versions = vec![version("d1", "v1", 0, None), version("d2", "v2", 1, None)];
        assert_eq!(AppSummary::of(&s).health, AppHealth::Down);
        assert_eq!(App::of(s).ready, "0/1 v1 + 1/1 v2");
    }

    #[test]
    fn app_health_table() {
        use AppHealth::*;
        use ServerState::{Drain, Ready};
        let up = || replica(Ready, true, Some(true));
        // (current replicas, replicas, discovered, deploying) → (health, ready, desired)
        let cases: Vec<(AppStatus, AppHealth, usize, usize)> = vec![
            (status(Some(2), vec![up(), up()], 0, false), Healthy, 2, 2),
            (status(Some(2), vec![up(), up()], 0, true), Deploying, 2, 2),
            (status(Some(2), vec![up()], 0, false), Degraded, 1, 2),
            (status(Some(2), vec![], 0, false), Down, 0, 2),
            (status(None, vec![], 0, false), Stopped, 0, 0),
            // Hand-started containers keep an app without a deployment alive.
            (status(None, vec![], 1, false), Healthy, 0, 0),
            // Draining, unrouted (health checks failing) and stopped replicas do not serve.
            (
                status(
                    Some(3),
                    vec![up(), replica(Drain, true, Some(true))],
                    0,
                    false,
                ),
                Degraded,
                1,
                3,
            ),
            (
                status(Some(1), vec![replica(Ready, false, Some(true))], 0, false),
                Down,
                0,
                1,
            ),
            (
                status(Some(1), vec![replica(Ready, true, Some(false))], 0, false),
                Down,
                0,
                1,
            ),
            // Docker's state unknown (inspect failed): routed and ready still serves.
            (
                status(Some(1), vec![replica(Ready, true, None)], 0, false),
                Healthy,
                1,
                1,
            ),
        ];
        for (i, (s, health, ready, desired)) in cases.into_iter().enumerate() {
            let got = AppSummary::of(&s);
            assert_eq!(
                got,
                AppSummary {
                    health,
                    ready,
                    desired
                },
                "case {i}"
            );
            let app = App::of(s);
            assert_eq!(app.ready, format!("{ready}/{desired}"), "case {i}");
            assert_eq!(app.health, health, "case {i}");
        }
    }

    #[test]
    fn app_view_round_trips_and_lists_domains() {
        let mut s = status(
            Some(1),
            vec![replica(ServerState::Ready, true, None)],
            0,
            false,
        );
        if let Some(c) = &mut s.current {
            c.spec.aliases = vec![Domain::try_from("www.web.test".to_string()).unwrap()];
        }
        let app = App::of(s);
        assert_eq!(app.domains, ["web.test", "www.web.test"]);
        let v = serde_json::to_value(&app).unwrap();
        // The summary sits next to the engine's fields, as before the types existed.
        assert_eq!(v["health"], "healthy");
        assert_eq!(v["ready"], "1/1");
        assert_eq!(v["name"], "web");
        assert!(v.get("gate").is_none());
        let back: App = serde_json::from_value(v).unwrap();
        assert_eq!(back, app);
    }

    #[test]
    fn stage_wire_names() {
        for st in Stage::ALL {
            let v = serde_json::to_value(st).unwrap();
            assert_eq!(v, st.as_str());
            assert_eq!(Stage::parse(st.as_str()), Some(st));
            assert_eq!(serde_json::from_value::<Stage>(v).unwrap(), st);
        }
        assert_eq!(Stage::parse("nope"), None);
        let e = DeployEvent::new("d1", 5, Stage::Failed, "boom".into());
        assert!(e.done);
        assert_eq!(e.state, DeployState::Failed);
        let e = DeployEvent::new("d1", 5, Stage::Routed, "x".into());
        assert!(!e.done);
        assert_eq!(e.state, DeployState::Running);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"deployment": "d1", "at": 5, "stage": "routed", "message": "x",
                               "state": "running", "done": false})
        );
        for s in [
            DeployState::Running,
            DeployState::Succeeded,
            DeployState::Failed,
        ] {
            assert_eq!(Stage::of_state(s).state(), s);
            assert_eq!(DeployState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn deploy_request_carries_secret_values_and_the_registry_password() {
        let mut s = spec(2);
        s.secrets.insert("DB".into(), Secret::plain("hunter2"));
        s.registry = Some(RegistryAuth {
            server: Some("reg.test".into()),
            username: "u".into(),
            password: Some("pw".into()),
        });
        let req = DeployRequest::new(s.clone());
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["secrets"], serde_json::json!({"DB": "hunter2"}));
        assert_eq!(
            v["registry"],
            serde_json::json!({"server": "reg.test", "username": "u", "password": "pw"})
        );
        // What the server parses is the spec the client built.
        let back: AppSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        let debug = format!("{req:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("\"pw\""),
            "{debug}"
        );
        // Without secrets and registry: neither key.
        let v = serde_json::to_value(DeployRequest::new(spec(1))).unwrap();
        assert!(v.get("secrets").is_none() && v.get("registry").is_none());
    }
}
