//! The deploy engine inside the daemon: started per `deploy.enabled`, its history in the
//! daemon's one `Store`, its routes published through the route registry (`RegistryRoutes`,
//! wrapped by `DaemonPublisher`, which also feeds app replicas to pools that follow an app). The registry builds one whole
//! `RouteTable` from config, stored and engine routes on every change: one atomic swap,
//! counters carried over. A change that does not validate (a domain already taken) is refused
//! and changes nothing.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::DaemonError;
use crate::deploy::{Draining, HealthProbe, RoutePublisher};
use crate::model::config::Config;
use crate::model::health::ProbeError;
use crate::model::pool::{AppReplica, AppReplicas};
use crate::model::route::{HealthCheckSpec, RouteSpec, RouteTable, ServerState};
use crate::store::registry::RouteRegistry;

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
    #[error("docker: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Deploy(#[from] crate::deploy::DeployError),
}

/// `RoutePublisher` over the daemon's route registry: the engine's routes become one more
/// input of the registry's table build, next to config and API routes (see
/// `store::registry`), so neither side overwrites the other and a config reload keeps them.
pub struct RegistryRoutes(pub Arc<crate::store::registry::RouteRegistry>);

/// The deploy gate's health check is the proxy's one prober.
impl HealthProbe for RegistryRoutes {
    fn probe<'a>(
        &'a self,
        authority: &'a str,
        host: &'a str,
        check: &'a HealthCheckSpec,
    ) -> BoxFuture<'a, Result<u16, ProbeError>> {
        Box::pin(crate::proxy::health::probe_once(authority, host, check))
    }
}

impl RoutePublisher for RegistryRoutes {
    fn set_routes(
        &self,
        key: &str,
        routes: Vec<RouteSpec>,
    ) -> Result<(), crate::store::registry::ChangeError> {
        self.0.set_dynamic(key, routes)
    }

    fn check_routes(
        &self,
        key: &str,
        routes: Vec<RouteSpec>,
    ) -> Result<(), crate::store::registry::ChangeError> {
        self.0.check_dynamic(key, routes)
    }

    fn inflight(&self, route: &str, backend_id: &str) -> Option<u64> {
        let t = self.0.table();
        t.route(route)?
            .backends
            .iter()
            .find(|b| b.id == backend_id)
            // After the caller's publish (which set `retired`), `SeqCst`: see `BackendStats::retired`.
            .map(|b| b.stats.inflight.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn draining(&self, route: &str, backend_id: &str, state: ServerState) -> Draining {
        use std::sync::atomic::Ordering::SeqCst;
        // How closed a state is: a pool copy less closed than the drain's still takes new work.
        let closed = |s: ServerState| match s {
            ServerState::Ready => 0,
            ServerState::Drain => 1,
            ServerState::Maint => 2,
        };
        let t = self.0.table();
        let own = t.route(route).into_iter();
        let mut d = Draining {
            inflight: 0,
            settled: true,
        };
        for b in own.flat_map(|r| r.backends.iter()) {
            if b.id == backend_id {
                // After the caller's publish, `SeqCst`: see `BackendStats::retired`.
                d.inflight += b.stats.inflight.load(SeqCst);
            }
        }
        for b in t.pools().iter().flat_map(|p| p.backends.iter()) {
            if b.id == backend_id {
                d.inflight += b.stats.inflight.load(SeqCst);
                d.settled &= closed(b.state) >= closed(state);
            }
        }
        d
    }

    fn healthy(&self, route: &str, backend_id: &str) -> Option<bool> {
        backend_healthy(&self.0.table(), route, backend_id)
    }

    fn counts(&self, route: &str, backend_id: &str) -> Option<crate::model::canary::VersionCounts> {
        let t = self.0.table();
        t.route(route)?
            .backends
            .iter()
            .find(|b| b.id == backend_id)
            .map(|b| crate::model::canary::VersionCounts::of(&b.stats))
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

/// [`start_engine_with_registry`] that also feeds every app's replicas to `apps`.
async fn start_engine_with_feed(
    registry: Arc<crate::store::registry::RouteRegistry>,
    network: &str,
    cfg: crate::deploy::EngineConfig,
    apps: watch::Sender<Arc<AppReplicas>>,
) -> Result<crate::deploy::Engine, EngineStartError> {
    let store = registry.store().clone();
    let rt = crate::runtime::DockerRuntime::connect(network).await?;
    let publisher = Arc::new(DaemonPublisher {
        routes: RegistryRoutes(registry),
        apps,
    });
    Ok(crate::deploy::Engine::start(Arc::new(rt), store, publisher, cfg).await?)
}

/// The daemon's publisher: routes into the registry, and every app's replicas into the feed
/// that pools following an app read (`proxy::tcp`).
struct DaemonPublisher {
    routes: RegistryRoutes,
    apps: watch::Sender<Arc<AppReplicas>>,
}

impl HealthProbe for DaemonPublisher {
    fn probe<'a>(
        &'a self,
        authority: &'a str,
        host: &'a str,
        check: &'a HealthCheckSpec,
    ) -> BoxFuture<'a, Result<u16, ProbeError>> {
        self.routes.probe(authority, host, check)
    }
}

impl RoutePublisher for DaemonPublisher {
    fn set_routes(
        &self,
        key: &str,
        routes: Vec<RouteSpec>,
    ) -> Result<(), crate::store::registry::ChangeError> {
        self.routes.set_routes(key, routes)
    }
    fn check_routes(
        &self,
        key: &str,
        routes: Vec<RouteSpec>,
    ) -> Result<(), crate::store::registry::ChangeError> {
        self.routes.check_routes(key, routes)
    }
    fn inflight(&self, route: &str, backend_id: &str) -> Option<u64> {
        self.routes.inflight(route, backend_id)
    }
    fn draining(&self, route: &str, backend_id: &str, state: ServerState) -> Draining {
        self.routes.draining(route, backend_id, state)
    }
    fn healthy(&self, route: &str, backend_id: &str) -> Option<bool> {
        self.routes.healthy(route, backend_id)
    }
    fn counts(&self, route: &str, backend_id: &str) -> Option<crate::model::canary::VersionCounts> {
        self.routes.counts(route, backend_id)
    }
    fn set_replicas(&self, app: &str, replicas: Vec<AppReplica>) {
        self.apps.send_if_modified(|m| {
            let now = m.get(app).map_or(&[][..], Vec::as_slice);
            if now == replicas.as_slice() {
                return false;
            }
            let mut next = AppReplicas::clone(m);
            if replicas.is_empty() {
                next.remove(app);
            } else {
                next.insert(app.to_string(), replicas);
            }
            *m = Arc::new(next);
            true
        });
    }
}

/// Starts the deploy engine per `deploy.enabled`: `off` → none; `auto` → none with one
/// warning when Docker does not answer; `required` → that is an error.
pub(super) async fn start(
    config: &Config,
    registry: &Arc<RouteRegistry>,
    store_damaged: Option<String>,
    apps: watch::Sender<Arc<AppReplicas>>,
) -> Result<Option<Arc<crate::deploy::Engine>>, DaemonError> {
    use crate::model::config::DeployEnabled;
    let d = &config.deploy;
    if d.enabled == DeployEnabled::Off {
        tracing::info!("deploy engine off (deploy.enabled: off)");
        return Ok(None);
    }
    // api: app secrets are sealed with this key (created here, logged, when missing).
    let secrets = match crate::store::secrets::SecretsKey::load_or_create(&config.data_dir) {
        Ok((key, _)) => Some(Arc::new(key)),
        // A degraded store refuses deploys anyway: route what runs without the key.
        Err(e) if store_damaged.is_some() => {
            tracing::error!(error = %e, "secrets key unavailable (the data dir is unusable)");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let cfg = crate::deploy::EngineConfig {
        keep_images: d.keep_images,
        stop_grace: d.stop_grace,
        store_damaged,
        secrets,
        allow_host_mounts: d.allow_host_mounts,
        pull_ceiling: d.pull,
        ..Default::default()
    };
    match start_engine_with_feed(registry.clone(), &d.network, cfg, apps).await {
        Ok(engine) => {
            tracing::info!(network = %d.network, "deploy engine ready");
            Ok(Some(Arc::new(engine)))
        }
        Err(e) if d.enabled == DeployEnabled::Auto => {
            tracing::warn!(
                error = %e,
                "deploy engine not started (Docker unavailable); proxy and API run without \
                 deploys; set deploy.enabled: required to make this fatal, or off to silence it"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::Tables;

    /// The daemon's publisher answers the engine's questions as the registry does. `counts`
    /// was missing here and fell to the trait's `None`: in berthd, canary analysis saw no
    /// requests (tests that publish through `RegistryRoutes` directly did not notice).
    #[tokio::test]
    async fn daemon_publisher_answers_like_the_registry() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(tmp.path()).unwrap());
        let web: RouteSpec = serde_json::from_str(
            r#"{"name":"web","domains":["web.test"],"backends":[{"id":"b1","address":"127.0.0.1:1"}]}"#,
        )
        .unwrap();
        let tables = Arc::new(Tables::new(RouteTable::default()));
        let registry = Arc::new(RouteRegistry::open(store, vec![web], tables).await.unwrap());
        let direct = RegistryRoutes(registry.clone());
        let (apps, _) = watch::channel(Arc::new(AppReplicas::default()));
        let daemon = DaemonPublisher {
            routes: RegistryRoutes(registry),
            apps,
        };
        assert!(direct.counts("web", "b1").is_some());
        assert_eq!(daemon.counts("web", "b1"), direct.counts("web", "b1"));
        assert_eq!(daemon.inflight("web", "b1"), direct.inflight("web", "b1"));
        assert_eq!(daemon.healthy("web", "b1"), direct.healthy("web", "b1"));
        assert_eq!(daemon.counts("web", "nope"), None);
    }

    /// A drain counts what goes to the replica through pools that hold it (TCP connections,
    /// HTTP frontends' requests), and is not done while such a pool still holds it in a
    /// state less closed than the drain's (the pools follow the replica feed a moment later).
    #[tokio::test]
    async fn draining_counts_the_pools_that_hold_the_replica() {
        use std::sync::atomic::Ordering::SeqCst;
        let tmp = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(tmp.path()).unwrap());
        let web: RouteSpec = serde_json::from_str(
            r#"{"name":"web","domains":["web.test"],"backends":[{"id":"c1","address":"127.0.0.1:1","state":"drain"},{"id":"c2","address":"127.0.0.1:2"}]}"#,
        )
        .unwrap();
        let tables = Arc::new(Tables::new(RouteTable::default()));
        let registry = Arc::new(
            RouteRegistry::open(store, vec![web], tables.clone())
                .await
                .unwrap(),
        );
        let (apps, _) = watch::channel(Arc::new(AppReplicas::default()));
        let daemon = DaemonPublisher {
            routes: RegistryRoutes(registry),
            apps,
        };
        let pool = |state: &str| -> crate::model::pool::PoolSpec {
            serde_yaml::from_str(&format!(
                "name: db\nmembers:\n  - id: c1\n    address: 127.0.0.1:1\n    state: {state}\n  - id: c2\n    address: 127.0.0.1:2\n"
            ))
            .unwrap()
        };
        let view = |state| daemon.draining("web", "c1", state);
        // No pool holds it: the route alone.
        assert!(view(ServerState::Drain).done());
        tables.publish_pools(&[pool("ready")]).unwrap();
        let t = tables.load();
        let (route_c1, pool_c1, pool_c2) = (
            t.route("web").unwrap().backends[0].stats.clone(),
            t.pools()[0].backends[0].stats.clone(),
            t.pools()[0].backends[1].stats.clone(),
        );
        // The pool still holds it ready: not done, whatever is in flight.
        assert_eq!(
            view(ServerState::Drain),
            Draining {
                inflight: 0,
                settled: false
            }
        );
        tables.publish_pools(&[pool("drain")]).unwrap();
        assert!(view(ServerState::Drain).done());
        assert!(
            !view(ServerState::Maint).done(),
            "drain is less closed than maint"
        );
        // A connection through the pool and a request through the route both count; another
        // replica's do not.
        pool_c1.inflight.fetch_add(1, SeqCst);
        route_c1.inflight.fetch_add(2, SeqCst);
        pool_c2.inflight.fetch_add(5, SeqCst);
        assert_eq!(view(ServerState::Drain).inflight, 3);
        pool_c1.inflight.fetch_sub(1, SeqCst);
        route_c1.inflight.fetch_sub(2, SeqCst);
        tables.publish_pools(&[pool("maint")]).unwrap();
        assert!(view(ServerState::Maint).done());
        // The wrapper answers like the registry.
        assert_eq!(
            daemon.draining("web", "c2", ServerState::Drain),
            RegistryRoutes(daemon.routes.0.clone()).draining("web", "c2", ServerState::Drain)
        );
    }
}
