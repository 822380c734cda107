//! Wiring between the deploy engine and the proxy: a
//! `RoutePublisher` over `proxy::Tables`. It keeps the static routes (from the config file)
//! and the engine's routes per key, and on every change builds one whole `RouteTable` from
//! all of them and publishes it: one atomic swap, counters carried over. A change that does
//! not validate (a domain already taken) is refused and changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::deploy::RoutePublisher;
use crate::model::route::{RouteSpec, RouteTable};
use crate::proxy::Tables;

struct Routes {
    base: Vec<RouteSpec>,
    dynamic: BTreeMap<String, Vec<RouteSpec>>,
}

/// `RoutePublisher` over the proxy's tables.
pub struct ProxyRoutes {
    tables: Arc<Tables>,
    routes: Mutex<Routes>,
}

impl ProxyRoutes {
    /// `base`: the configured routes, always kept.
    pub fn new(tables: Arc<Tables>, base: Vec<RouteSpec>) -> Self {
        Self {
            tables,
            routes: Mutex::new(Routes {
                base,
                dynamic: BTreeMap::new(),
            }),
        }
    }

    fn apply(&self, change: impl FnOnce(&mut Routes)) -> Result<(), String> {
        // Writers only (deploy engine, config reload); the request path never takes this lock.
        let mut cur = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Routes {
            base: cur.base.clone(),
            dynamic: cur.dynamic.clone(),
        };
        change(&mut next);
        let all: Vec<RouteSpec> = next
            .base
            .iter()
            .chain(next.dynamic.values().flatten())
            .cloned()
            .collect();
        let previous = self.tables.load_full();
        let table = RouteTable::build(&all, Some(&previous)).map_err(|e| e.to_string())?;
        self.tables.publish(table);
        *cur = next;
        Ok(())
    }

    /// Replaces the configured routes (config reload) keeping the engine's.
    pub fn set_base(&self, base: Vec<RouteSpec>) -> Result<(), String> {
        self.apply(|r| r.base = base)
    }
}

impl RoutePublisher for ProxyRoutes {
    fn set_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), String> {
        self.apply(|r| {
            if routes.is_empty() {
                r.dynamic.remove(key);
            } else {
                r.dynamic.insert(key.to_string(), routes);
            }
        })
    }

    fn inflight(&self, route: &str, backend_id: &str) -> Option<u64> {
        let t = self.tables.load();
        t.route(route)?
            .backends
            .iter()
            .find(|b| b.id == backend_id)
            .map(|b| b.stats.inflight.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn healthy(&self, route: &str, backend_id: &str) -> Option<bool> {
        backend_healthy(&self.tables.load(), route, backend_id)
    }
}

/// The proxy's health of a backend (what it routes by), if the backend is in `table`.
fn backend_healthy(table: &RouteTable, route: &str, backend_id: &str) -> Option<bool> {
    table
        .route(route)?
        .backends
        .iter()
        .find(|b| b.id == backend_id)
        .map(|b| b.health.is_up())
}

/// Why the deploy engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineStartError {
    #[error("deployment store {path}: {source}")]
    Store {
        path: String,
        source: crate::store::deployments::DeploymentStoreError,
    },
    #[error("docker: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Deploy(#[from] crate::deploy::DeployError),
}

/// Starts the deploy engine next to a running proxy: connects to Docker (network `network`),
/// opens the deployment history in `db`, reconciles and publishes every route, starts
/// discovery. Returns once what runs is routed (reconcile continues in the background). Keep the
/// `ProxyRoutes` to apply config reloads (`set_base`) without dropping the engine's routes.
pub async fn start_engine(
    tables: Arc<Tables>,
    base: Vec<RouteSpec>,
    db: &std::path::Path,
    network: &str,
    cfg: crate::deploy::EngineConfig,
) -> Result<(crate::deploy::Engine, Arc<ProxyRoutes>), EngineStartError> {
    let store = crate::store::deployments::SqliteDeployments::open(db).map_err(|source| {
        EngineStartError::Store {
            path: db.display().to_string(),
            source,
        }
    })?;
    let rt = crate::runtime::DockerRuntime::connect(network).await?;
    let publisher = Arc::new(ProxyRoutes::new(tables, base));
    let engine =
        crate::deploy::Engine::start(Arc::new(rt), Arc::new(store), publisher.clone(), cfg).await?;
    Ok((engine, publisher))
}

/// `RoutePublisher` over the daemon's route registry: the engine's routes become one more
/// input of the registry's table build, next to config and API routes (see
/// `store::registry`), so neither side overwrites the other and a config reload keeps them.
pub struct RegistryRoutes(pub Arc<crate::store::registry::RouteRegistry>);

impl RoutePublisher for RegistryRoutes {
    fn set_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), String> {
        self.0.set_dynamic(key, routes).map_err(|e| e.to_string())
    }

    fn check_routes(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), String> {
        self.0.check_dynamic(key, routes).map_err(|e| match e {
            crate::store::registry::ChangeError::Conflict { message, .. } => message,
            other => other.to_string(),
        })
    }

    fn inflight(&self, route: &str, backend_id: &str) -> Option<u64> {
        let t = self.0.table();
        t.route(route)?
            .backends
            .iter()
            .find(|b| b.id == backend_id)
            .map(|b| b.stats.inflight.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn healthy(&self, route: &str, backend_id: &str) -> Option<bool> {
        backend_healthy(&self.0.table(), route, backend_id)
    }
}

/// Starts the deploy engine inside the daemon: history in the daemon's `Store` (the one
/// connection to `berth.db`), routes published through `registry`. Returns as soon as what
/// runs is routed; reconcile continues in the background (`Engine::reconciled`).
pub async fn start_engine_with_registry(
    registry: Arc<crate::store::registry::RouteRegistry>,
    network: &str,
    cfg: crate::deploy::EngineConfig,
) -> Result<crate::deploy::Engine, EngineStartError> {
    let store = registry.store().clone();
    let rt = crate::runtime::DockerRuntime::connect(network).await?;
    let publisher = Arc::new(RegistryRoutes(registry));
    Ok(crate::deploy::Engine::start(Arc::new(rt), store, publisher, cfg).await?)
}
