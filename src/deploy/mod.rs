//! The deploy engine: runs `model::deploy::plan` through a `ContainerRuntime` and a
//! `RoutePublisher`, one deploy per app at a time, with progress events per deployment,
//! history in a `DeploymentStore`, rollback, label discovery and reconcile-on-start.
//!
//! Invariants: a deployment is inserted (persisted) before its task starts and its outcome is
//! committed before old containers are removed; routes of one app (or one discovered app) are
//! replaced as a whole in one `set_routes` call, made while holding the state lock so two
//! publishes never reorder; a new replica enters a route only after its health gate passed.
//! Each API endpoint of issue 4 is one method of `Engine`.
//!
//! Files: `engine.rs` (start, deploy, rollback, stop, delete), `state.rs` (in-memory state
//! and how it becomes routes), `events.rs` (progress events), `status.rs` (what the API
//! reports); `run.rs` runs one deployment, `reconcile.rs` repairs after start,
//! `discovery.rs` routes hand-started containers, `handover.rs` passes deploys across an
//! upgrade, `failure.rs` says why a step failed (`StepError`, stored as the reason),
//! `traffic.rs` pause/maintenance, `versions.rs` versions side
//! by side (A/B), `health.rs` the deploy gate's checks.

pub mod canary;
mod discovery;
mod engine;
mod events;
mod failure;
mod handover;
pub mod health;
mod reconcile;
mod run;
mod state;
mod status;
mod traffic;
mod versions;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::model::deploy::SpecError;
use crate::model::route::{RouteSpec, ServerState};
use crate::runtime::{ByteStream, RegistryCreds, RuntimeError};
use crate::store::deployments::DeploymentStoreError;
use crate::store::registry::ChangeError;

pub use crate::model::api::{
    AppDeleted, AppStatus, DeployEvent, ReplicaStatus, Stage, VersionStatus,
};
pub use engine::Engine;
pub(crate) use events::replayed;
pub use handover::HandoverError;
pub use health::HealthProbe;
pub use state::{app_route_name, discovered_route_name, DELETING, RECONCILING, STOPPING};
pub(crate) use state::{now_ms, AppHosts, AppState, Discovered, Inner, LockExt, Replica, State};

/// What a drain sees of one replica: [`RoutePublisher::draining`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draining {
    /// Requests and connections in flight to the replica (its route and its pools).
    pub inflight: u64,
    /// Every pool that holds the replica holds it in the drain's state or a more closed one.
    pub settled: bool,
}

impl Draining {
    /// Nothing in flight, and nothing can start any more through a pool that lags behind.
    pub fn done(&self) -> bool {
        self.inflight == 0 && self.settled
    }
}

/// Where the route changes of the engine go. Implemented over the proxy's `Tables` by the
/// daemon (see `daemon/engine.rs`); of the proxy the engine uses only its one health prober,
/// through the [`HealthProbe`] half of this interface.
pub trait RoutePublisher: HealthProbe {
    /// Replaces every route published under `key` (`app/NAME`, `discovered/NAME`) in one
    /// atomic table swap. An empty list removes them. An error changes nothing.
    fn set_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), ChangeError>;
    /// Whether `set_routes(key, routes)` would be refused (a domain another route serves),
    /// changing nothing. The engine asks before it accepts a deploy.
    fn check_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), ChangeError>;
    /// Requests in flight to backend `backend_id` of route `route`, if that backend is
    /// in the current table.
    fn inflight(&self, route: &str, backend_id: &str) -> Option<u64>;
    /// What a drain of replica `backend_id` (a container id) waits for: everything in flight
    /// to it through route `route` and through every pool that holds it (pools that follow
    /// the app, fed by [`RoutePublisher::set_replicas`]: HTTP frontends' requests and TCP
    /// connections), and whether every such pool already holds it in `state` or a more
    /// closed one (a pool republished later could still open new connections to it).
    fn draining(&self, route: &str, backend_id: &str, state: ServerState) -> Draining;
    /// The proxy's own health of that backend (active and passive checks), if it is in the
    /// current table: what status reports, so it never says healthy while the route is down.
    fn healthy(&self, route: &str, backend_id: &str) -> Option<bool>;
    /// The replicas of `app` now (every deployment's), for pools that follow the app.
    fn set_replicas(&self, _app: &str, _replicas: Vec<crate::model::pool::AppReplica>) {}
    /// What the proxy counted for that backend so far (requests, 5xx + upstream failures,
    /// latency), if it is in the current table: canary analysis sums it per version.
    /// (No default: a publisher that wraps another once forgot this and answered `None`.)
    fn counts(&self, route: &str, backend_id: &str) -> Option<crate::model::canary::VersionCounts>;
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
    /// 409: promote, abort or a traffic split asked of an app that runs no canary.
    #[error(
        "app {0} has no canary in progress (deploy with strategy: canary to run two versions)"
    )]
    NoCanary(String),
    /// 409: a version change the app's versions do not allow (removing its only or current
    /// version, a canary while several versions run).
    #[error("{0}")]
    Versions(String),
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
