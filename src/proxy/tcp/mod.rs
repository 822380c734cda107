//! TCP mode: frontends that listen on their own addresses and send each connection to a member
//! of a pool (`model::frontend`, `model::pool`). Listeners are data: a frontend put at runtime
//! binds at once (a bind error changes nothing), a removed one stops accepting and its open
//! connections drain (closed after `proxy.timeouts.drain`). Every listener is named
//! (`frontend.NAME.I`) so the daemon can hand it to a successor or the systemd fd store.
//!
//! The accept path reads one `ArcSwap` of its frontend's spec and the proxy's one route table
//! (`Tables::load`), where the pools live (`Tables::publish_pools`): a member is a backend of
//! its pool there, with its health (checked by the one prober, `proxy::health`), counters,
//! balancer cursor and admin state, so HTTP and TCP frontends, `/v1/stats` and `/metrics` see
//! one member and a pool change is one publish. Changes are serialised by one control-plane
//! mutex and follow validate → bind → persist → publish; the caller supplies the persist step
//! (this module does not know the store).

mod conn;
pub mod proxy_v2;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::server::ConnTracker;
use crate::model::frontend::{listener_name, parse_bind, validate_set, Binds, FrontendSpec};
use crate::model::pool::{AppReplicas, PoolSpec};
use crate::model::route::{is_default_frontend, RouteError};

/// Where listening sockets come from: an inherited one by name (upgrade, socket activation,
/// fd store) or a fresh bind. The daemon implements it on top of `lifecycle`.
pub trait ListenerSource: Send + Sync {
    /// A listening, non-blocking socket for `addr`, named `name`.
    fn listen(&self, name: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpListener>;
    /// The socket named `name` is closed for good (the fd store forgets it).
    fn released(&self, name: &str);
}

#[derive(Debug, Error)]
pub enum TcpError {
    #[error("no {what} named {name:?}")]
    NotFound { what: &'static str, name: String },
    #[error("{what} {name:?} comes from the configuration file and is read-only through the API")]
    ReadOnly { what: &'static str, name: String },
    #[error("frontend {name:?} is berthd's {name} listener: its rules are the routes (change them through /v1/routes), and it is read-only through the API")]
    DefaultFrontend { name: String },
    #[error("pool {pool:?} is used by frontend {frontend:?}")]
    InUse { pool: String, frontend: String },
    #[error(transparent)]
    Invalid(#[from] RouteError),
    #[error("{field}: cannot listen on {addr}: {source}")]
    Bind {
        field: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A change failed in this module or in the caller's persist step.
#[derive(Debug)]
pub enum ChangeError<E> {
    Tcp(TcpError),
    Persist(E),
}

impl<E> From<TcpError> for ChangeError<E> {
    fn from(e: TcpError) -> Self {
        ChangeError::Tcp(e)
    }
}

impl<E> From<RouteError> for ChangeError<E> {
    fn from(e: RouteError) -> Self {
        ChangeError::Tcp(TcpError::Invalid(e))
    }
}

/// Connection and byte counters of a frontend.
#[derive(Debug, Default)]
pub struct FrontendStats {
    pub total: AtomicU64,
    pub active: AtomicU64,
    /// Connections closed because no member was usable or reachable.
    pub failed: AtomicU64,
    /// Client → member.
    pub bytes_in: AtomicU64,
    /// Member → client.
    pub bytes_out: AtomicU64,
}

/// Runtime of a frontend shared with its accept tasks and connections.
#[derive(Debug)]
pub struct FrontendShared {
    pub stats: FrontendStats,
    /// Bumped to close every open connection of the frontend.
    kill: watch::Sender<u64>,
}

struct ListenerRt {
    name: String,
    addr: SocketAddr,
    local: SocketAddr,
    fd: std::os::fd::RawFd,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// HTTP listeners: resolves when the socket is closed (their task goes on draining).
    closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl ListenerRt {
    /// Whether this listener already listens on `addr` as bound (configured, or the port the
    /// kernel chose for a port-0 bind).
    fn serves(&self, addr: SocketAddr) -> bool {
        addr.port() != 0 && (self.addr == addr || self.local == addr)
    }
}

struct FrontendEntry {
    spec: FrontendSpec,
    read_only: bool,
    cfg: Arc<ArcSwap<FrontendSpec>>,
    shared: Arc<FrontendShared>,
    listeners: Vec<ListenerRt>,
}

impl FrontendEntry {
    /// The spec as it runs: a port-0 bind names the port the kernel chose.
    fn running_spec(&self) -> FrontendSpec {
        let mut spec = self.spec.clone();
        let items = spec.bind.items();
        if items
            .iter()
            .any(|b| parse_bind(b).is_ok_and(|a| a.port() == 0))
        {
            let resolved: Vec<String> = items
                .into_iter()
                .map(|b| match parse_bind(&b) {
                    Ok(a) if a.port() == 0 => self
                        .listeners
                        .iter()
                        .find(|l| l.addr == a)
                        .map_or(b, |l| l.local.to_string()),
                    _ => b,
                })
                .collect();
            spec.bind = match <[String; 1]>::try_from(resolved) {
                Ok([one]) => Binds::One(one),
                Err(many) => Binds::Many(many),
            };
        }
        spec
    }
}

struct PoolEntry {
    spec: PoolSpec,
    read_only: bool,
}

#[derive(Default)]
struct Control {
    frontends: BTreeMap<String, FrontendEntry>,
    pools: BTreeMap<String, PoolEntry>,
}

impl Control {
    /// The pool `name` if the API may change it: 404 when unknown, read-only when it comes
    /// from the config file.
    fn writable_pool(&self, name: &str) -> Result<&PoolEntry, TcpError> {
        writable(&self.pools, "pool", name, |p| p.read_only)
    }

    /// The frontend `name` if the API may change it (as [`Control::writable_pool`]).
    fn writable_frontend(&self, name: &str) -> Result<&FrontendEntry, TcpError> {
        writable(&self.frontends, "frontend", name, |f| f.read_only)
    }
}

/// Entry `name` of `map`: 404 when unknown, read-only when it comes from the config file.
fn writable<'a, T>(
    map: &'a BTreeMap<String, T>,
    what: &'static str,
    name: &str,
    read_only: fn(&T) -> bool,
) -> Result<&'a T, TcpError> {
    match map.get(name) {
        None => Err(TcpError::NotFound {
            what,
            name: name.into(),
        }),
        Some(e) if read_only(e) => Err(TcpError::ReadOnly {
            what,
            name: name.into(),
        }),
        Some(e) => Ok(e),
    }
}

/// A frontend as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct FrontendView {
    pub name: String,
    pub read_only: bool,
    pub spec: FrontendSpec,
    /// The addresses actually listened on (port 0 resolved).
    pub listening: Vec<SocketAddr>,
}

/// A pool as the API lists it.
#[derive(Debug, Clone, Serialize)]
pub struct PoolView {
    pub name: String,
    pub read_only: bool,
    pub spec: PoolSpec,
    /// Member id → "up" | "down".
    pub health: BTreeMap<String, &'static str>,
}

/// The TCP proxy.
pub struct TcpProxy {
    ctl: tokio::sync::Mutex<Control>,
    source: Arc<dyn ListenerSource>,
    reserved: Vec<(&'static str, SocketAddr)>,
    drain: Duration,
    stop: watch::Receiver<bool>,
    /// Open TCP connections (a draining process waits for them, bounded by the drain timeout).
    pub conns: Arc<ConnTracker>,
    /// Frontend counters by name, for stats readers that must not wait on `ctl`.
    counters: ArcSwap<Vec<(String, Arc<FrontendShared>)>>,
    /// The HTTP proxy that serves `mode: http` frontends.
    http: Arc<super::Proxy>,
    /// Deployed apps' replicas (the deploy engine's feed) for pools that follow an app.
    apps: watch::Receiver<Arc<AppReplicas>>,
    /// Where each pool came from, for stats readers that must not wait on `ctl`.
    pool_sources: ArcSwap<HashMap<String, crate::model::api::RouteSource>>,
}

impl TcpProxy {
    /// A proxy with no frontends. `reserved` are the daemon's own listeners (no frontend may
    /// overlap them); `stop` becoming true stops every accept loop (process drain).
    pub fn new(
        source: Arc<dyn ListenerSource>,
        reserved: Vec<(&'static str, SocketAddr)>,
        drain: Duration,
        stop: watch::Receiver<bool>,
        http: Arc<super::Proxy>,
        apps: watch::Receiver<Arc<AppReplicas>>,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            ctl: tokio::sync::Mutex::new(Control::default()),
            source,
            reserved,
            drain,
            stop: stop.clone(),
            conns: Arc::new(ConnTracker::default()),
            counters: ArcSwap::from_pointee(Vec::new()),
            http,
            apps: apps.clone(),
            pool_sources: ArcSwap::from_pointee(HashMap::new()),
        });
        tokio::spawn(follow_apps(Arc::downgrade(&me), apps, stop));
        me
    }

    /// Loads the configuration's frontends and pools (read-only) and the stored ones, and
    /// starts listening. Fails, binding nothing, when the set is invalid or a bind fails.
    pub async fn load(
        &self,
        config: (Vec<FrontendSpec>, Vec<PoolSpec>),
        stored: (Vec<FrontendSpec>, Vec<PoolSpec>),
    ) -> Result<(), TcpError> {
        let mut ctl = self.ctl.lock().await;
        let mut fes: Vec<(String, FrontendSpec, bool)> = Vec::new();
        let mut pools: Vec<(String, PoolSpec, bool)> = Vec::new();
        for (i, f) in config.0.into_iter().enumerate() {
            fes.push((format!("frontends[{i}]"), f, true));
        }
        for f in stored.0 {
            fes.push((format!("stored frontend {:?}", f.name()), f, false));
        }
        for (i, p) in config.1.into_iter().enumerate() {
            pools.push((format!("pools[{i}]"), p, true));
        }
        for p in stored.1 {
            pools.push((format!("stored pool {:?}", p.name()), p, false));
        }
        {
            let f: Vec<(String, &FrontendSpec)> =
                fes.iter().map(|(at, f, _)| (at.clone(), f)).collect();
            let p: Vec<(String, &PoolSpec)> =
                pools.iter().map(|(at, p, _)| (at.clone(), p)).collect();
            validate_set(&f, &p, &self.reserved)?;
        }
        for (_, p, ro) in pools {
            ctl.pools.insert(
                p.name().to_string(),
                PoolEntry {
                    spec: p,
                    read_only: ro,
                },
            );
        }
        self.publish_pools(&ctl);
        let mut bound = Vec::new();
        for (at, f, _) in &fes {
            match self.bind_all(at, f, None) {
                Ok(l) => bound.push(l),
                Err(e) => {
                    // Nothing listens: close what this load bound.
                    for set in bound {
                        for (name, _, _) in set {
                            self.source.released(&name);
                        }
                    }
                    return Err(e);
                }
            }
        }
        for ((_, f, ro), listeners) in fes.into_iter().zip(bound) {
            self.publish_http(&ctl, Some(&f));
            let entry = self.start_frontend(f, ro, listeners);
            ctl.frontends.insert(entry.spec.name().to_string(), entry);
        }
        self.refresh_counters(&ctl);
        self.publish_http(&ctl, None);
        Ok(())
    }

    /// Binds every address of `f` that `old` does not already listen on. Returns (name,
    /// address, socket) for the new ones.
    fn bind_all(
        &self,
        at: &str,
        f: &FrontendSpec,
        old: Option<&FrontendEntry>,
    ) -> Result<Vec<(String, SocketAddr, std::net::TcpListener)>, TcpError> {
        let mut out = Vec::new();
        for (i, addr) in f.addrs().into_iter().enumerate() {
            if old.is_some_and(|o| o.listeners.iter().any(|l| l.serves(addr))) {
                continue;
            }
            let name = listener_name(f.name(), i);
            match self.source.listen(&name, addr) {
                Ok(l) => out.push((name, addr, l)),
                Err(source) => {
                    for (n, _, _) in &out {
                        self.source.released(n);
                    }
                    return Err(TcpError::Bind {
                        field: crate::model::pool::field_at(at, &format!("bind[{i}]")),
                        addr,
                        source,
                    });
                }
            }
        }
        Ok(out)
    }

    fn spawn_listener(
        &self,
        cfg: &Arc<ArcSwap<FrontendSpec>>,
        shared: &Arc<FrontendShared>,
        name: String,
        addr: SocketAddr,
        std: std::net::TcpListener,
    ) -> Option<ListenerRt> {
        let fd = std.as_raw_fd();
        let listener = match tokio::net::TcpListener::from_std(std) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(%name, error = %e, "cannot register listener");
                return None;
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        let (stop_tx, stop_rx) = watch::channel(false);
        if cfg.load().mode == crate::model::frontend::Mode::Http {
            let (task, closed) = self.spawn_http_listener(cfg, shared, listener, &stop_tx, stop_rx);
            tracing::info!(frontend = %cfg.load().name(), listener = %name, %local, "http frontend listening");
            return Some(ListenerRt {
                name,
                addr,
                local,
                fd,
                stop: stop_tx,
                task,
                closed: Some(closed),
            });
        }
        let task = tokio::spawn(accept_loop(
            listener,
            cfg.clone(),
            shared.clone(),
            self.http.tables.clone(),
            self.conns.clone(),
            (stop_rx, self.stop.clone()),
            self.drain,
        ));
        tracing::info!(frontend = %cfg.load().name(), listener = %name, %local, "tcp frontend listening");
        Some(ListenerRt {
            name,
            addr,
            local,
            fd,
            stop: stop_tx,
            task,
            closed: None,
        })
    }

    /// An HTTP frontend's listener: the proxy's own accept loop and connection handling, each
    /// connection tagged with its frontend (rules route it). Stops on the listener's own
    /// signal or the process's.
    fn spawn_http_listener(
        &self,
        cfg: &Arc<ArcSwap<FrontendSpec>>,
        shared: &Arc<FrontendShared>,
        listener: tokio::net::TcpListener,
        stop_tx: &watch::Sender<bool>,
        stop_rx: watch::Receiver<bool>,
    ) -> (JoinHandle<()>, tokio::sync::oneshot::Receiver<()>) {
        let mut process = self.stop.clone();
        let tx = stop_tx.clone();
        tokio::spawn(async move {
            loop {
                if *process.borrow() {
                    let _ = tx.send(true);
                    return;
                }
                tokio::select! {
                    r = process.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        super::server::prepare_client_first_listener(&listener, &self.http.settings);
        let proxy = self.http.clone();
        let builder = Arc::new(super::server::connection_builder(&proxy));
        let name: Arc<str> = Arc::from(cfg.load().name());
        let inbox = super::server::frontend_inbox(&name);
        let rules = self.http.frontends.cell(&name);
        let (cfg, shared, conns) = (cfg.clone(), shared.clone(), self.conns.clone());
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let serve = move |stream: tokio::net::TcpStream, peer: SocketAddr, drain| {
            let fc = Arc::new(super::frontends::FrontendConn {
                name: name.clone(),
                rules: rules.clone(),
                keepalive: cfg.load().keepalive,
            });
            let (proxy, builder, shared) = (proxy.clone(), builder.clone(), shared.clone());
            let guard = conns.enter();
            async move {
                shared.stats.total.fetch_add(1, Ordering::Relaxed);
                shared.stats.active.fetch_add(1, Ordering::Relaxed);
                super::server::serve_connection_on(
                    proxy,
                    builder,
                    super::net::ClientStream::new(stream),
                    peer,
                    super::server::Scheme::Http,
                    drain,
                    Some(fc),
                )
                .await;
                shared.stats.active.fetch_sub(1, Ordering::Relaxed);
                drop(guard);
            }
        };
        let task = tokio::spawn(super::server::accept_loop_until(
            listener,
            stop_rx,
            self.drain,
            "frontend connections",
            serve,
            Some(closed_tx),
            inbox,
        ));
        (task, closed_rx)
    }

    /// Publishes the pools, then every frontend's rules (after a pool changed).
    fn publish_all(&self, ctl: &Control) {
        self.publish_pools(ctl);
        self.publish_http(ctl, None);
    }

    /// Publishes the HTTP frontends' rule tables and the pools' Host overrides and sources
    /// (with `extra`, a frontend about to start).
    fn publish_http(&self, ctl: &Control, extra: Option<&FrontendSpec>) {
        use crate::model::api::RouteSource;
        self.pool_sources.store(Arc::new(
            ctl.pools
                .iter()
                .map(|(n, p)| {
                    let source = if p.read_only {
                        RouteSource::Config
                    } else {
                        RouteSource::Api
                    };
                    (n.clone(), source)
                })
                .collect(),
        ));
        let apps = self.apps.borrow().clone();
        let pools: Vec<PoolSpec> = ctl.pools.values().map(|p| p.spec.resolved(&apps)).collect();
        let r = self.http.frontends.publish(
            ctl.frontends
                .values()
                .map(|f| &f.spec)
                .filter(|f| extra.is_none_or(|x| x.name() != f.name()))
                .chain(extra),
            pools.iter(),
        );
        if let Err(e) = r {
            tracing::error!(error = %e, "an HTTP frontend or pool could not be compiled; its requests get 503");
        }
    }

    fn start_frontend(
        &self,
        spec: FrontendSpec,
        read_only: bool,
        listeners: Vec<(String, SocketAddr, std::net::TcpListener)>,
    ) -> FrontendEntry {
        let cfg = Arc::new(ArcSwap::from_pointee(spec.clone()));
        let shared = Arc::new(FrontendShared {
            stats: FrontendStats::default(),
            kill: watch::channel(0).0,
        });
        let listeners = listeners
            .into_iter()
            .filter_map(|(n, a, l)| self.spawn_listener(&cfg, &shared, n, a, l))
            .collect();
        FrontendEntry {
            spec,
            read_only,
            cfg,
            shared,
            listeners,
        }
    }

    /// Publishes the pools of `ctl` in the route table (members' counters and health carry
    /// over; a member put in maint has its open TCP connections closed after the drain
    /// timeout, see `conn::maint_cut`).
    fn publish_pools(&self, ctl: &Control) {
        let apps = self.apps.borrow().clone();
        let specs: Vec<PoolSpec> = ctl.pools.values().map(|p| p.spec.resolved(&apps)).collect();
        if let Err(e) = self.http.tables.publish_pools(&specs) {
            // The set was validated; should it still not build, the previous pools stay.
            tracing::error!(error = %e, "the pools could not be published; the previous ones stay");
        }
    }

    /// Every frontend listener, for the upgrade hand-over: (name, duplicated descriptor). The
    /// duplicates keep the sockets open however the frontends change meanwhile.
    pub async fn listener_fds(&self) -> Vec<(String, OwnedFd)> {
        let ctl = self.ctl.lock().await;
        let mut out = Vec::new();
        for fe in ctl.frontends.values() {
            for l in &fe.listeners {
                // SAFETY: the listener task owns the descriptor and is alive while `ctl` is
                // locked (tasks are stopped only under this lock).
                let fd = unsafe { BorrowedFd::borrow_raw(l.fd) };
                if let Ok(dup) = fd.try_clone_to_owned() {
                    out.push((l.name.clone(), dup));
                }
            }
        }
        out
    }

    /// The daemon's own listeners (name, bound address) that no frontend may overlap.
    pub fn reserved(&self) -> &[(&'static str, SocketAddr)] {
        &self.reserved
    }

    /// Where each pool came from (the pools themselves are in the route table).
    pub fn pool_sources(&self) -> HashMap<String, crate::model::api::RouteSource> {
        self.pool_sources.load().as_ref().clone()
    }

    /// Frontends with their live addresses.
    pub async fn frontends(&self) -> Vec<FrontendView> {
        let ctl = self.ctl.lock().await;
        ctl.frontends
            .values()
            .map(|f| FrontendView {
                name: f.spec.name().to_string(),
                read_only: f.read_only,
                spec: f.spec.clone(),
                listening: f.listeners.iter().map(|l| l.local).collect(),
            })
            .collect()
    }

    /// Frontends as they run (`GET /v1/config`): port-0 binds show the bound port.
    pub async fn running_frontends(&self) -> Vec<FrontendSpec> {
        let ctl = self.ctl.lock().await;
        ctl.frontends
            .values()
            .map(FrontendEntry::running_spec)
            .collect()
    }

    /// Pools with their members' health.
    pub async fn pools(&self) -> Vec<PoolView> {
        let ctl = self.ctl.lock().await;
        let table = self.http.tables.load();
        ctl.pools
            .values()
            .map(|p| {
                let health = table
                    .pool(p.spec.name())
                    .map(|r| {
                        r.backends
                            .iter()
                            .map(|b| (b.id.clone(), if b.health.is_up() { "up" } else { "down" }))
                            .collect()
                    })
                    .unwrap_or_default();
                PoolView {
                    name: p.spec.name().to_string(),
                    read_only: p.read_only,
                    spec: p.spec.clone(),
                    health,
                }
            })
            .collect()
    }

    fn refresh_counters(&self, ctl: &Control) {
        self.counters.store(Arc::new(
            ctl.frontends
                .iter()
                .map(|(n, f)| (n.clone(), f.shared.clone()))
                .collect(),
        ));
    }

    /// Counters for `/v1/stats` and `/metrics` (no lock).
    pub fn stats(&self) -> TcpStats {
        let rd = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let frontends = self
            .counters
            .load()
            .iter()
            .map(|(name, f)| {
                let s = &f.stats;
                (
                    name.clone(),
                    CounterView {
                        connections_total: rd(&s.total),
                        connections_active: rd(&s.active),
                        connections_failed: rd(&s.failed),
                        bytes_in: rd(&s.bytes_in),
                        bytes_out: rd(&s.bytes_out),
                        up: None,
                    },
                )
            })
            .collect();
        let pools = self
            .http
            .tables
            .load()
            .pools()
            .iter()
            .map(|p| {
                let members = p
                    .backends
                    .iter()
                    .map(|m| {
                        let s = &m.stats;
                        (
                            m.id.clone(),
                            CounterView {
                                connections_total: rd(&s.requests),
                                connections_active: rd(&s.inflight),
                                connections_failed: rd(&s.failures),
                                bytes_in: rd(&s.bytes_in),
                                bytes_out: rd(&s.bytes_out),
                                up: Some(m.health.is_up()),
                            },
                        )
                    })
                    .collect();
                (p.name.clone(), members)
            })
            .collect();
        TcpStats { frontends, pools }
    }

    /// Creates or replaces a pool: validate → persist → publish.
    pub async fn put_pool<E>(
        &self,
        spec: PoolSpec,
        persist: impl FnOnce(&PoolSpec) -> Result<(), E>,
    ) -> Result<bool, ChangeError<E>> {
        let mut ctl = self.ctl.lock().await;
        let name = spec.name().to_string();
        let existed = match ctl.pools.get(&name) {
            Some(p) if p.read_only => return Err(TcpError::ReadOnly { what: "pool", name }.into()),
            Some(_) => true,
            None => false,
        };
        spec.validate("")?;
        self.check_set(&ctl, None, Some(&spec))?;
        persist(&spec).map_err(ChangeError::Persist)?;
        ctl.pools.insert(
            name,
            PoolEntry {
                spec,
                read_only: false,
            },
        );
        self.publish_all(&ctl);
        Ok(!existed)
    }

    /// Switches a pool that follows an app to another version (deployment): its members
    /// become that deployment's replicas; the old ones get no new traffic and their open
    /// connections and requests finish. Returns the pool's new spec.
    pub async fn set_version<E>(
        &self,
        name: &str,
        version: String,
        persist: impl FnOnce(&PoolSpec) -> Result<(), E>,
    ) -> Result<PoolSpec, ChangeError<E>> {
        let mut ctl = self.ctl.lock().await;
        let entry = ctl.writable_pool(name)?;
        if entry.spec.app.is_none() {
            return Err(TcpError::Invalid(RouteError {
                field: "version".into(),
                message: format!("pool {name:?} does not follow an app (set `app` first)"),
            })
            .into());
        }
        let spec = PoolSpec {
            version: Some(version),
            ..entry.spec.clone()
        };
        spec.validate("")?;
        persist(&spec).map_err(ChangeError::Persist)?;
        ctl.pools.insert(
            name.to_string(),
            PoolEntry {
                spec: spec.clone(),
                read_only: false,
            },
        );
        self.publish_all(&ctl);
        Ok(spec)
    }

    /// Removes a pool no frontend uses.
    pub async fn delete_pool<E>(
        &self,
        name: &str,
        persist: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<(), ChangeError<E>> {
        let mut ctl = self.ctl.lock().await;
        ctl.writable_pool(name)?;
        if let Some(f) = ctl.frontends.values().find(|f| {
            f.spec.pool == name || f.spec.rules.iter().any(|r| r.pool.as_deref() == Some(name))
        }) {
            return Err(TcpError::InUse {
                pool: name.into(),
                frontend: f.spec.name().into(),
            }
            .into());
        }
        persist(name).map_err(ChangeError::Persist)?;
        ctl.pools.remove(name);
        self.publish_all(&ctl);
        Ok(())
    }

    /// Validates the set as it would be with `fe` and/or `pool` put.
    fn check_set(
        &self,
        ctl: &Control,
        fe: Option<&FrontendSpec>,
        pool: Option<&PoolSpec>,
    ) -> Result<(), RouteError> {
        // Running frontends are checked at the addresses they listen on (port 0 resolved).
        let resolved: Vec<FrontendSpec> = ctl
            .frontends
            .values()
            .filter(|x| fe.is_none_or(|n| n.name() != x.spec.name()))
            .map(FrontendEntry::running_spec)
            .collect();
        // The new one last, so a conflict is reported on its fields.
        let mut f: Vec<(String, &FrontendSpec)> = resolved
            .iter()
            .map(|x| (format!("frontend {:?}", x.name()), x))
            .collect();
        if let Some(fe) = fe {
            f.push((String::new(), fe));
        }
        let mut p: Vec<(String, &PoolSpec)> = Vec::new();
        if let Some(pool) = pool {
            p.push((String::new(), pool));
        }
        for x in ctl.pools.values() {
            if pool.is_none_or(|n| n.name() != x.spec.name()) {
                p.push((format!("pool {:?}", x.spec.name()), &x.spec));
            }
        }
        validate_set(&f, &p, &self.reserved)
    }

    /// Creates or replaces a frontend: validate → bind new addresses → persist → start
    /// accepting (and stop listeners for addresses no longer bound). Returns true when
    /// created, plus the addresses it listens on.
    pub async fn put_frontend<E>(
        &self,
        spec: FrontendSpec,
        persist: impl FnOnce(&FrontendSpec) -> Result<(), E>,
    ) -> Result<(bool, Vec<SocketAddr>), ChangeError<E>> {
        let name = spec.name().to_string();
        if is_default_frontend(&name) {
            return Err(TcpError::DefaultFrontend { name }.into());
        }
        let mut ctl = self.ctl.lock().await;
        if ctl.frontends.get(&name).is_some_and(|f| f.read_only) {
            return Err(TcpError::ReadOnly {
                what: "frontend",
                name,
            }
            .into());
        }
        spec.validate("")?;
        if let Some(old) = ctl
            .frontends
            .get(&name)
            .filter(|o| o.spec.mode != spec.mode)
        {
            return Err(TcpError::Invalid(RouteError {
                field: "mode".into(),
                message: format!(
                    "frontend {name:?} is {:?}; delete it to change its mode",
                    old.spec.mode
                ),
            })
            .into());
        }
        self.check_set(&ctl, Some(&spec), None)?;
        let new = self.bind_all("", &spec, ctl.frontends.get(&name))?;
        if let Err(e) = persist(&spec) {
            for (n, _, _) in &new {
                self.source.released(n);
            }
            return Err(ChangeError::Persist(e));
        }
        let addrs = spec.addrs();
        let created = match ctl.frontends.get_mut(&name) {
            None => {
                self.publish_http(&ctl, Some(&spec));
                let entry = self.start_frontend(spec, false, new);
                let listening = entry.listeners.iter().map(|l| l.local).collect();
                ctl.frontends.insert(name, entry);
                self.refresh_counters(&ctl);
                self.publish_http(&ctl, None);
                return Ok((true, listening));
            }
            Some(entry) => {
                entry.cfg.store(Arc::new(spec.clone()));
                entry.spec = spec;
                // Stop listeners whose address is gone.
                let mut kept = Vec::new();
                for mut l in entry.listeners.drain(..) {
                    if let Some(a) = addrs.iter().find(|a| l.serves(**a)) {
                        l.addr = *a;
                        kept.push(l);
                    } else {
                        let _ = l.stop.send(true);
                        self.source.released(&l.name);
                    }
                }
                for (n, a, l) in new {
                    if let Some(rt) = self.spawn_listener(&entry.cfg, &entry.shared, n, a, l) {
                        kept.push(rt);
                    }
                }
                // Names follow the bind order.
                for l in &mut kept {
                    if let Some(i) = addrs.iter().position(|a| *a == l.addr) {
                        l.name = listener_name(&name, i);
                    }
                }
                entry.listeners = kept;
                false
            }
        };
        self.publish_http(&ctl, None);
        let listening = ctl
            .frontends
            .get(&name)
            .map(|e| e.listeners.iter().map(|l| l.local).collect())
            .unwrap_or_default();
        Ok((created, listening))
    }

    /// Removes a frontend: its listeners close at once; open connections drain and are
    /// closed after the drain timeout.
    pub async fn delete_frontend<E>(
        &self,
        name: &str,
        persist: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<(), ChangeError<E>> {
        if is_default_frontend(name) {
            return Err(TcpError::DefaultFrontend { name: name.into() }.into());
        }
        let mut ctl = self.ctl.lock().await;
        ctl.writable_frontend(name)?;
        persist(name).map_err(ChangeError::Persist)?;
        let Some(entry) = ctl.frontends.remove(name) else {
            return Ok(());
        };
        self.refresh_counters(&ctl);
        self.publish_http(&ctl, None);
        let mut tasks = Vec::new();
        for l in entry.listeners {
            let _ = l.stop.send(true);
            self.source.released(&l.name);
            tasks.push((l.task, l.closed));
        }
        // The port is closed when the accept task has dropped its listener (an HTTP
        // listener's task then drains its connections on its own).
        for (t, closed) in tasks {
            match closed {
                Some(c) => {
                    let _ = c.await;
                }
                None => {
                    let _ = t.await;
                }
            }
        }
        let (shared, drain, name) = (entry.shared, self.drain, name.to_string());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + drain;
            while shared.stats.active.load(Ordering::Relaxed) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if shared.stats.active.load(Ordering::Relaxed) > 0 {
                tracing::info!(frontend = %name, "removed frontend: closing connections open past the drain timeout");
                shared.kill.send_modify(|g| *g += 1);
            }
        });
        Ok(())
    }

    /// Waits until every accept loop has stopped (after the process stop signal).
    pub async fn stopped(&self) {
        let mut ctl = self.ctl.lock().await;
        for f in ctl.frontends.values_mut() {
            for l in &mut f.listeners {
                let _ = l.stop.send(true);
                let _ = (&mut l.task).await;
            }
        }
    }

    /// Closes every open connection (the process's drain timeout has passed).
    pub async fn close_all(&self) {
        let ctl = self.ctl.lock().await;
        for f in ctl.frontends.values() {
            f.shared.kill.send_modify(|g| *g += 1);
        }
    }
}

/// One counter set in `/v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct CounterView {
    pub connections_total: u64,
    pub connections_active: u64,
    pub connections_failed: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<bool>,
}

/// TCP counters by frontend and by pool member.
#[derive(Debug, Clone, Serialize)]
pub struct TcpStats {
    pub frontends: BTreeMap<String, CounterView>,
    pub pools: BTreeMap<String, BTreeMap<String, CounterView>>,
}

/// Re-publishes every pool when the deploy engine's replica feed changes (pools that follow an
/// app get its new replicas; members that left drain like removed ones).
async fn follow_apps(
    me: std::sync::Weak<TcpProxy>,
    mut apps: watch::Receiver<Arc<AppReplicas>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = apps.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(me) = me.upgrade() else { return };
        let ctl = me.ctl.lock().await;
        if ctl.pools.values().any(|p| p.spec.app.is_some()) {
            me.publish_all(&ctl);
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    cfg: Arc<ArcSwap<FrontendSpec>>,
    shared: Arc<FrontendShared>,
    tables: Arc<super::Tables>,
    conns: Arc<ConnTracker>,
    (mut stop, mut process_stop): (watch::Receiver<bool>, watch::Receiver<bool>),
    drain: Duration,
) {
    let local = listener.local_addr().ok();
    loop {
        if *stop.borrow() || *process_stop.borrow() {
            break;
        }
        tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let guard = conns.enter();
                    let (spec, tables, shared) = (cfg.load_full(), tables.clone(), shared.clone());
                    let local = sock.local_addr().ok().or(local).unwrap_or(peer);
                    tokio::spawn(async move {
                        conn::serve(tables, spec, shared, sock, peer, local, drain).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "tcp accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            r = stop.changed() => if r.is_err() { break },
            r = process_stop.changed() => if r.is_err() { break },
        }
    }
}
