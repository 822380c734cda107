//! The reverse proxy: hyper server on the client side (`server`, `https`), the request's
//! phases (`forward`), pooled HTTP/1.1 upstream connections (`upstream`) on the other, and the route table as an `ArcSwap` snapshot between them. A request does
//! one `load()` of the table and touches only atomics; writers publish whole new tables
//! (`publish`), and the health task re-publishes with compare-and-swap (`refresh`) so it
//! never overwrites a newer table.

pub mod acme_hook;
pub mod body;
pub mod conn_memory;
pub mod drain;
pub mod forward;
pub mod framing;
pub mod frontends;
mod gate;
pub mod headers;
pub mod health;
pub mod https;
pub mod net;
pub mod response;
pub mod server;
pub mod tcp;
pub mod upstream;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Notify};

use crate::model::config::{ProxyConfig, Timeouts};
use crate::model::pool::PoolSpec;
use crate::model::route::{RouteError, RouteTable};

use server::ConnTracker;
use upstream::{Pool, PoolSettings};

/// Proxy settings derived from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_size: u64,
    pub max_header_size: usize,
    pub timeouts: Timeouts,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub access_log: bool,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// `TCP_DEFER_ACCEPT` seconds for client-speaks-first listeners (0 = off).
    pub defer_accept_secs: u32,
    /// The API's own route on `api.domain`, when the daemon serves it (see [`ApiRoute`]).
    pub api_route: Option<ApiRoute>,
}

/// How the proxy treats the route that serves berthd's own API on `api.domain`: HTTPS only
/// (plain HTTP is redirected when the host has a certificate, refused otherwise), its own body
/// limit and response timeout (image uploads are answered only once they are complete), and
/// a per-process secret in the `API_PROXY_HEADER` header that tells the API the request came
/// through this proxy, so it may believe `X-Real-IP`. The header is removed from every
/// incoming request first, so no client can forge it.
#[derive(Debug, Clone)]
pub struct ApiRoute {
    /// Route name (`model::config::API_ROUTE_NAME`).
    pub route: String,
    /// Marked sensitive (never printed by `Debug`).
    pub secret: http::HeaderValue,
    pub max_body_size: u64,
    pub response_header: Duration,
}

/// The header carrying [`ApiRoute::secret`].
pub const API_PROXY_HEADER: http::HeaderName =
    http::HeaderName::from_static(crate::model::config::API_PROXY_HEADER);

impl Settings {
    pub fn from_config(p: &ProxyConfig, access_log: bool) -> Self {
        Self {
            max_body_size: p.max_body_size.0,
            max_header_size: p.max_header_size.0 as usize,
            timeouts: p.timeouts.clone(),
            trusted_proxies: p.trusted_proxies.clone(),
            access_log,
            pool_idle_timeout: p.pool.idle_timeout,
            pool_max_idle_per_host: p.pool.max_idle_per_host,
            defer_accept_secs: p.defer_accept_secs(),
            api_route: None,
        }
    }
}

/// The current route table (routes and pools, see `model::route::RouteTable`) plus a
/// generation counter that open tunnels watch. Two writers replace one half each: the route
/// registry the routes (`publish`), the frontends' control plane the pools
/// (`publish_pools`); each carries the other half over with compare-and-swap, so neither
/// overwrites the other's newer half.
pub struct Tables {
    current: ArcSwap<RouteTable>,
    generation: watch::Sender<u64>,
    /// Poked from the request path when a passive failure changed a backend's health; the
    /// health task answers with a `refresh()`.
    passive: Notify,
    /// Serialises [`Self::settle`]: each run marks from the table current when it holds it.
    marking: std::sync::Mutex<()>,
}

impl Tables {
    pub fn new(table: RouteTable) -> Self {
        Self {
            current: ArcSwap::from_pointee(table),
            generation: watch::Sender::new(0),
            passive: Notify::new(),
            marking: std::sync::Mutex::new(()),
        }
    }

    /// The snapshot to read. Cheap; never blocks.
    pub fn load(&self) -> arc_swap::Guard<Arc<RouteTable>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<RouteTable> {
        self.current.load_full()
    }

    /// Swaps in the routes of `table` atomically (the current pools stay).
    pub fn publish(&self, table: RouteTable) {
        let previous = self.current.rcu(|cur| Arc::new(table.with_routes_of(cur)));
        self.settle(&previous);
    }

    /// After a swap away from `previous`: the backends' `retired` flags from the table now
    /// current (before the publisher returns, so a drain that waits next sees them), then
    /// the generation watchers.
    fn settle(&self, previous: &RouteTable) {
        {
            let _one = self.marking.lock().unwrap_or_else(|e| e.into_inner());
            self.current.load().mark_retired(previous);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Swaps in `pools` (validated) as the table's pools, carrying members' counters and
    /// health over; the routes stay. Changes nothing on an error.
    pub fn publish_pools(&self, pools: &[PoolSpec]) -> Result<(), RouteError> {
        let mut failed = None;
        let previous = self.current.rcu(|cur| match cur.with_pools(pools) {
            Ok(t) => {
                failed = None;
                Arc::new(t)
            }
            Err(e) => {
                failed = Some(e);
                cur.clone()
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        self.settle(&previous);
        Ok(())
    }

    /// Rebuilds the current table from its own specs (new slow-start weights, health changes
    /// visible to watchers) and swaps it in with compare-and-swap: if another writer
    /// published meanwhile, the rebuild is redone on top of theirs, never over it.
    pub fn refresh(&self) {
        let previous = self.current.rcu(|cur| match cur.rebuild() {
            Ok(t) => Arc::new(t),
            Err(e) => {
                tracing::error!(error = %e, "rebuilding the current route table failed");
                cur.clone()
            }
        });
        self.settle(&previous);
    }

    /// Notified after every publish.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Called by the request path when a passive failure took a backend down.
    pub fn passive_changed(&self) {
        self.passive.notify_one();
    }

    /// Resolves after `passive_changed` (one waiter: the health task).
    pub async fn passive_change(&self) {
        self.passive.notified().await
    }
}

impl Proxy {
    /// The upstream connection pool (the upgrade's hand-over takes and adopts idle ones).
    pub(crate) fn upstream(&self) -> &Pool {
        &self.pool
    }
}

/// Everything a request needs: settings, the table, the upstream pool.
pub struct Proxy {
    pub settings: Settings,
    pub tables: Arc<Tables>,
    pool: Pool,
    /// Open upgrade tunnels (a draining process waits for them, bounded by the drain timeout).
    pub tunnels: Arc<ConnTracker>,
    /// ACME HTTP-01 answers and HTTPS redirects; set once when TLS is configured.
    pub tls_hooks: OnceLock<Arc<dyn acme_hook::TlsHooks>>,
    /// HTTP frontends: their rule tables and pools (`frontends.rs`).
    pub frontends: frontends::HttpFrontends,
}

impl Proxy {
    pub fn new(settings: Settings, tables: Arc<Tables>) -> Self {
        let pool_settings = PoolSettings {
            connect_timeout: settings.timeouts.connect,
            idle_timeout: settings.pool_idle_timeout,
            max_idle_per_host: settings.pool_max_idle_per_host,
        };
        let pool = Pool::new(pool_settings.clone());
        Self {
            frontends: frontends::HttpFrontends::new(&pool_settings),
            settings,
            tables,
            pool,
            tunnels: Arc::new(ConnTracker::default()),
            tls_hooks: OnceLock::new(),
        }
    }
}
