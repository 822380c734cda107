//! Wires the daemon together: configuration + store → route registry → route table → proxy
//! and API listeners, and the
//! lifecycle around them: READY only after listeners are live and state is restored,
//! SIGHUP/`reload` swaps the configuration in place, SIGUSR2/`upgrade` hands the listeners to
//! the binary now on disk, SIGTERM/SIGINT drain and exit 0. The one module that may use all
//! others: `engine.rs` starts the deploy engine and holds the one `RoutePublisher`, `tls.rs`
//! the HTTPS listener, certificates and ACME, `cli.rs` + `admin.rs` are `berthd`'s command
//! line (`src/bin/berthd.rs` only calls [`main`]).

mod admin;
mod cli;
pub mod engine;
mod tcp;
mod tls;

pub use cli::main;

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::{self, ApiSettings, ApiState};
use crate::config::{self, ConfigError};
use crate::lifecycle::control::{self, Command, CommandError};
use crate::lifecycle::upgrade::{self, Phase};
use crate::lifecycle::{notify, Inherited, ListenError};
use crate::model::config::Config;
use crate::model::route::{RouteError, RouteTable};
use crate::proxy::health::{self, HealthSettings};
use crate::proxy::{server, Proxy, Settings, Tables};
use crate::store::registry::{ChangeError, RouteRegistry, TablePublisher};
use crate::store::{Store, StoreError};
use crate::tls::{AcmeManager, CertStore, TlsError};

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("routes: {0}")]
    Routes(#[from] RouteError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("routes: {0}")]
    Registry(#[from] ChangeError),
    #[error("deploy engine (deploy.enabled: required): {0}")]
    Deploy(#[from] engine::EngineStartError),
    #[error(transparent)]
    Secrets(#[from] crate::store::secrets::SecretsError),
    #[error("frontends: {0}")]
    Tcp(#[from] crate::proxy::tcp::TcpError),
}

/// The registry publishes into the proxy's table holder.
impl TablePublisher for Tables {
    fn current(&self) -> Arc<RouteTable> {
        self.load_full()
    }
    fn publish(&self, table: RouteTable) {
        Tables::publish(self, table)
    }
}

/// A start that fails half-way stops the tasks it already spawned, then returns `e`.
async fn unwind<T>(
    stop: &watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    e: DaemonError,
) -> Result<T, DaemonError> {
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Err(e)
}

/// A started daemon: its bound addresses and the handles to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub tables: Arc<Tables>,
    /// Config + stored routes and the one write path that changes them.
    pub registry: Arc<RouteRegistry>,
    pub proxy: Arc<Proxy>,
    pub config: Config,
    /// Set when HTTPS runs (`tls.enabled`, or any TLS setting given).
    pub https_addr: Option<SocketAddr>,
    /// The SNI certificate store (status list for `GET /v1/certificates`).
    pub certs: Option<Arc<CertStore>>,
    /// The ACME issuer, when `tls.acme` is configured.
    pub acme: Option<Arc<AcmeManager>>,
    /// The Docker deploy engine; `None` when `deploy.enabled` is `off`, or `auto` and Docker
    /// did not answer (the deploy endpoints then answer 503).
    pub engine: Option<Arc<crate::deploy::Engine>>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    config_path: Option<PathBuf>,
    /// Listening descriptors by name, handed to a successor on upgrade.
    listener_fds: Vec<(String, RawFd)>,
    /// Why the store is damaged or takes no writes (`berthd status` says it).
    pub store_problem: Option<String>,
    /// TCP frontends and pools.
    pub tcp: Arc<crate::proxy::tcp::TcpProxy>,
}

impl Running {
    /// Stops accepting, drains (bounded by the drain timeout), and waits for every listener
    /// task and open tunnel.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.tcp.stopped().await;
        let drain = self.proxy.settings.timeouts.drain;
        let idle = async {
            tokio::join!(self.proxy.tunnels.wait_idle(), self.tcp.conns.wait_idle());
        };
        if tokio::time::timeout(drain, idle).await.is_err() {
            tracing::info!(
                tcp = self.tcp.conns.live(),
                "drain timeout: closing the connections still open"
            );
            self.tcp.close_all().await;
        }
        // Before the runtime goes: its teardown would fail the engine's Docker calls one by
        // one under a reconcile or deploy still running.
        if let Some(engine) = &self.engine {
            engine.shutdown().await;
        }
    }

    /// Re-reads the config file and swaps in its routes (routes stored through the API stay).
    /// An invalid file changes nothing.
    pub async fn reload(&mut self) -> Result<String, DaemonError> {
        let Some(path) = &self.config_path else {
            return Ok("no configuration file; nothing to reload".into());
        };
        let cfg = config::load(path, true)?;
        let old = &self.config;
        // Config-file frontends and pools are bound at start; the API changes them live.
        let restart_needed: Vec<&str> = [
            ("http", cfg.http != old.http),
            ("api", cfg.api != old.api),
            ("proxy", cfg.proxy != old.proxy),
            ("tls", cfg.tls != old.tls),
            ("frontends", cfg.frontends != old.frontends),
            ("pools", cfg.pools != old.pools),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect();
        self.registry.replace_statics(cfg.routes.clone()).await?;
        let mut msg = format!(
            "configuration reloaded from {} ({} static routes)",
            path.display(),
            cfg.routes.len()
        );
        if !restart_needed.is_empty() {
            msg.push_str(&format!(
                "; changes to {} take effect on the next `berthd upgrade`",
                restart_needed.join(", ")
            ));
        }
        self.config.routes = cfg.routes;
        tracing::info!("{msg}");
        Ok(msg)
    }
}

/// Starts the proxy for `config` on the current tokio runtime, binding fresh listeners.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, DaemonError> {
    start_with(config, config_path, &mut Inherited::default()).await
}

/// Starts the proxy, taking listeners from `inherited` where present.
pub async fn start_with(
    config: Config,
    config_path: Option<PathBuf>,
    inherited: &mut Inherited,
) -> Result<Running, DaemonError> {
    // Nothing is served until the registry has published config + stored routes.
    let tables = Arc::new(Tables::new(RouteTable::default()));
    let data_dir = config.data_dir.clone();
    // Every start checks, a successor started by `berthd upgrade` too: the file may have
    // changed under the running process (a restore, a disk fault), and reconcile acting on
    // damaged state could destroy what runs.
    let (store, damaged) = tokio::task::spawn_blocking(move || match Store::open(&data_dir) {
        Ok(store) => {
            // A check that cannot even run (SQLITE_CORRUPT on a damaged page) is damage too:
            // it stops reconcile, not the proxy.
            let damaged = store.quick_check().unwrap_or_else(|e| Some(e.to_string()));
            Ok::<_, StoreError>((store, damaged))
        }
        // An unopenable or read-only data dir stops changes, not the routes: serve the
        // config routes and whatever of the store is readable.
        Err(e) => {
            let cause = e.to_string();
            tracing::error!(
                error = %cause,
                "the store cannot be opened for writing: serving the configured routes and \
                 the last readable state; changes through the API are refused (503) and \
                 reconcile, self-healing and deploys are off until the data dir is fixed and \
                 berthd restarted (`berthd status` shows this)"
            );
            // Only an in-memory SQLite that cannot open (no memory) fails here.
            Store::open_degraded(&data_dir, &cause).map(|store| (store, Some(cause)))
        }
    })
    .await
    .map_err(std::io::Error::other)??;
    let store_problem = damaged.clone();
    // A damaged store stops reconcile (it could destroy what runs on wrong data), not the
    // proxy: routes load from what is readable and the engine routes what runs.
    if store.degraded().is_some() {
        // Logged above.
    } else if let Some(problem) = &damaged {
        tracing::error!(
            db = %store.path().display(),
            %problem,
            "the store failed its integrity check (PRAGMA quick_check): reconcile, \
             self-healing and deploys are off until it is repaired. Recover: stop berthd, move \
             {db} (and {db}-wal, {db}-shm) aside, copy your latest `berthd backup` file to \
             {db}, start berthd (README, \"Backup and restore\")",
            db = store.path().display(),
        );
    } else {
        tracing::info!(db = %store.path().display(), "store opened (quick_check ok)");
    }
    let registry = Arc::new(
        RouteRegistry::open(Arc::new(store), config.routes.clone(), tables.clone()).await?,
    );
    let mut settings = Settings::from_config(&config.proxy, config.log.access_log);
    // api.domain: the proxy serves the API too, and vouches for it with a fresh secret.
    let proxy_secret = config.api.domain.as_ref().map(|_| {
        let secret = hex::encode(rand::random::<[u8; 32]>());
        settings.api_route = api_route_settings(&config, &secret);
        secret
    });
    let proxy = Arc::new(Proxy::new(settings, tables.clone()));
    // Serve first: the engine publishes what runs (one Docker listing, no health gate) and
    // reconciles in the background; nothing here waits for a health check.
    // Deployed apps' replicas, for pools that follow an app (engine → `proxy::tcp`).
    let (apps_tx, apps_rx) = watch::channel(Arc::new(crate::model::pool::AppReplicas::new()));
    let engine = engine::start(&config, &registry, damaged, apps_tx).await?;

    let (std_listener, origin) = inherited.tcp("http", config.http.listen)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let http_addr = listener.local_addr()?;
    let (api_std, api_origin) = inherited.tcp("api", config.api.listen)?;
    let api_listener = tokio::net::TcpListener::from_std(api_std)?;
    let api_addr = api_listener.local_addr()?;
    let mut listener_fds = vec![
        ("http".to_string(), listener.as_raw_fd()),
        ("api".to_string(), api_listener.as_raw_fd()),
    ];
    tracing::info!(http = %http_addr, from = %origin, routes = registry.routes().len(), "listening");
    tracing::info!(api = %api_addr, from = %api_origin, "API listening");
    if let Some(domain) = &config.api.domain {
        registry
            .pin_static(api_route_spec(domain, api_addr)?)
            .await?;
        tracing::info!(%domain, "API also served by the proxy on https://{domain}/");
    }

    let (stop, stop_rx) = watch::channel(false);
    // One prober: routes' backends and every pool's members (HTTP and TCP checks).
    let mut tasks = vec![health::spawn(
        tables.clone(),
        HealthSettings::default(),
        stop_rx.clone(),
    )];
    let (https_addr, certs, acme) = if config.tls.is_enabled() {
        let tls = tls::start_tls(
            &config,
            &proxy,
            &tables,
            &stop_rx,
            &mut tasks,
            inherited,
            &mut listener_fds,
        )
        .await;
        match tls {
            Ok(t) => t,
            Err(e) => return unwind(&stop, tasks, e).await,
        }
    } else {
        (None, None, None)
    };
    let conns = inherited.take_conns();
    // A copy of the connection socket to name, before `ready`, the HTTP frontends whose
    // connections this process takes too (`lifecycle::conns`).
    let announce = conns.as_ref().and_then(|fd| fd.try_clone().ok());
    if announce.is_some() {
        server::open_frontend_inboxes();
    }
    tasks.push(tokio::spawn(server::serve_http(
        proxy.clone(),
        listener,
        stop_rx.clone(),
        conns,
    )));
    let tcp = tcp::start_tcp(
        &config,
        &registry,
        inherited,
        &stop_rx,
        [
            Some(("http", http_addr)),
            Some(("api", api_addr)),
            https_addr.map(|a| ("https", a)),
        ],
        &proxy,
        apps_rx,
    )
    .await;
    let tcp = match tcp {
        Ok(t) => t,
        Err(e) => return unwind(&stop, tasks, e).await,
    };
    // The HTTP frontends are listening (each with its inbox): named to the previous process
    // before `ready`, which it reads with the `ready`.
    if let Some(sock) = &announce {
        for name in server::frontend_inbox_names() {
            if let Err(e) = crate::lifecycle::conns::announce(sock.as_fd(), &name) {
                tracing::warn!(error = %e, %name, "cannot take this frontend's connections; the previous process drains them");
            }
        }
    }
    drop(announce);
    let mut api_settings = ApiSettings::from_config(&config.api);
    api_settings.max_upload_size = config.deploy.max_upload_size.0;
    api_settings.proxy_secret = proxy_secret;
    let api_state = ApiState {
        registry: registry.clone(),
        settings: Arc::new(api_settings),
        stop: stop_rx,
        engine: engine.clone(),
        certs: certs.clone(),
        acme: acme.clone(),
        tcp: tcp.clone(),
        store_problem: store_problem.clone(),
    };
    tasks.push(tokio::spawn(api::serve(
        api_listener,
        api_state,
        server::ConnLimits::of(&config.proxy.timeouts),
    )));
    Ok(Running {
        http_addr,
        api_addr,
        tables,
        registry,
        proxy,
        config,
        https_addr,
        certs,
        acme,
        engine,
        stop,
        tasks,
        config_path,
        listener_fds,
        store_problem,
        tcp,
    })
}

/// The proxy's treatment of the API route (see `proxy::ApiRoute`): image uploads may be as
/// large as `deploy.max_upload_size` and are answered only once complete, so that route gets
/// a longer response timeout than apps.
fn api_route_settings(config: &Config, secret: &str) -> Option<crate::proxy::ApiRoute> {
    let mut value = http::HeaderValue::from_str(secret).ok()?;
    value.set_sensitive(true);
    Some(crate::proxy::ApiRoute {
        route: crate::model::config::API_ROUTE_NAME.into(),
        secret: value,
        max_body_size: config
            .deploy
            .max_upload_size
            .0
            .max(config.api.max_body_size.0),
        response_header: API_RESPONSE_TIMEOUT,
    })
}

/// How long the proxy waits for the API's answer on `api.domain` (an upload is answered
/// after its last byte).
const API_RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

/// The read-only route that sends `api.domain` to the API listener over loopback.
fn api_route_spec(
    domain: &crate::model::route::Domain,
    api_addr: SocketAddr,
) -> Result<crate::model::route::RouteSpec, DaemonError> {
    let ip = match api_addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let spec = serde_json::json!({
        "name": crate::model::config::API_ROUTE_NAME,
        "domains": [domain.as_str()],
        "backends": [{"id": "api", "address": SocketAddr::new(ip, api_addr.port()).to_string()}],
        // The name exists for the API only: browsers (the status page) stay on HTTPS.
        "hsts_max_age": "365days",
    });
    serde_json::from_value(spec).map_err(|e| {
        DaemonError::Routes(RouteError {
            field: "api.domain".into(),
            message: e.to_string(),
        })
    })
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM/SIGINT: stopped and drained.
    Shutdown,
    /// A successor took over and this process drained: nothing of it is needed any more.
    HandedOver,
}

/// Runs until SIGTERM/SIGINT or a successful upgrade; reloads on SIGHUP, upgrades on SIGUSR2
/// or a control-socket request.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    mut inherited: Inherited,
) -> Result<Stopped, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;

    let control_path = config.control_socket();
    let upgrade_timeout = config.lifecycle.upgrade_timeout;
    notify::status("starting");
    let mut running = start_with(config, config_path, &mut inherited).await?;
    let (control_listener, control_origin) = match inherited.unix("control", &control_path) {
        Ok(c) => c,
        Err(e) if running.store_problem.is_some() => {
            // The control socket lives in the data dir by default: when that is unusable,
            // keep serving instead of exiting (set lifecycle.control_socket elsewhere).
            let fallback = std::env::temp_dir().join(format!("berthd-{}.sock", std::process::id()));
            tracing::error!(error = %e, path = %control_path.display(), fallback = %fallback.display(), "control socket unavailable in the data dir; listening on the fallback path instead (`berthd -c FILE status` reaches it with lifecycle.control_socket set to it); serving anyway");
            inherited.unix("control", &fallback)?
        }
        Err(e) => return Err(e.into()),
    };
    let control_fd = control_listener.as_raw_fd();
    running.listener_fds.push(("control".into(), control_fd));
    let control_listener = tokio::net::UnixListener::from_std(control_listener)?;
    tracing::info!(path = %control_path.display(), from = %control_origin, "control socket ready");
    for name in inherited.close_unclaimed() {
        tracing::warn!(%name, "inherited descriptor not used by this configuration; closed");
    }

    let (phase_tx, _) = watch::channel(Phase::Serving);
    let (progress_tx, progress_rx) = watch::channel(String::new());
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<control::Request>(8);
    let (ctl_stop, ctl_stop_rx) = watch::channel(false);
    let control_task = tokio::spawn(control::serve(
        control_listener,
        ctl_tx,
        progress_rx,
        ctl_stop_rx,
    ));
    let (wd_stop, wd_stop_rx) = watch::channel(false);
    tokio::spawn(notify::watchdog(wd_stop_rx));

    // Keep the sockets open across a plain `systemctl restart` (FileDescriptorStoreMax=).
    if notify::enabled() {
        let http_fd = running.proxy_listener_fd();
        // SAFETY: the descriptor stays open while `running` serves; borrowed only for this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(http_fd) };
        notify::store_fd("http", fd);
        if let Some((_, https_fd)) = running.listener_fds.iter().find(|(n, _)| n == "https") {
            // SAFETY: as above; the HTTPS listener lives as long as `running`.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*https_fd) };
            notify::store_fd("https", fd);
        }
        notify::store_fd("control", control_listener_fd(control_fd).as_fd());
    }

    let status = format!("serving on {}", running.http_addr);
    match inherited.handoff.as_mut() {
        Some(handoff) => {
            // The parent systemd sees when it reads MAINPID: not the previous process once
            // this process has detached itself (`upgrade::detach_if_asked`).
            let parent = std::os::unix::process::parent_id();
            notify::ready_as_main(&status);
            handoff.signal_ready();
            tracing::info!(
                previous = handoff.parent_pid,
                parent,
                "took over from the previous process"
            );
        }
        None => notify::ready(&status),
    }

    let mut handed_over = false;
    loop {
        let mut upgrade_reply = None;
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = reload(&mut running).await;
                continue;
            }
            _ = usr2.recv() => {}
            req = ctl_rx.recv() => {
                let Some(req) = req else { continue };
                match req.command {
                    Command::Reload => {
                        let answer = reload(&mut running).await;
                        let _ = req.reply.send(answer.map_err(|e| CommandError::ReloadRejected(Box::new(e))));
                        continue;
                    }
                    Command::Status => {
                        let phase = phase_tx.borrow().clone();
                        let store = match &running.store_problem {
                            Some(p) => format!("; store: DEGRADED: {p}"),
                            None => "; store: ok".to_string(),
                        };
                        let _ = req.reply.send(Ok(format!(
                            "pid {} {}; http {}{store}",
                            std::process::id(),
                            phase,
                            running.http_addr
                        )));
                        continue;
                    }
                    Command::Upgrade => upgrade_reply = Some(req.reply),
                }
            }
        }
        // Upgrade: only reached from SIGUSR2 or an `upgrade` command.
        let set_phase = |p: Phase| {
            tracing::info!(phase = %p, "upgrade");
            // Once handed over, the successor is the unit's main process and owns STATUS=
            // (NotifyAccess=all would let this process overwrite it).
            if !matches!(p, Phase::Draining { .. }) {
                notify::status(&p.to_string());
            }
            let _ = progress_tx.send(p.to_string());
            phase_tx.send_replace(p);
        };
        let exe = match upgrade::current_binary() {
            Ok(e) => e,
            Err(e) => {
                let e = CommandError::NoBinary(e);
                set_phase(Phase::Failed {
                    reason: e.to_string(),
                });
                if let Some(r) = upgrade_reply {
                    let _ = r.send(Err(e));
                }
                continue;
            }
        };
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        set_phase(Phase::StartingSuccessor);
        // Deploy ownership (deploy::handover): in-flight deploys pause at a step boundary
        // before the successor starts, and are its once it is serving.
        if let Some(engine) = &running.engine {
            if let Err(e) = engine.pause_for_upgrade(upgrade_timeout).await {
                let reason = e.to_string();
                tracing::error!(error = %reason, "upgrade not started; this process keeps serving");
                set_phase(Phase::Failed { reason });
                if let Some(r) = upgrade_reply {
                    let _ = r.send(Err(CommandError::NotStarted(Box::new(e))));
                }
                continue;
            }
        }
        // Frontend listeners as duplicates, held open until the successor has them.
        let frontend_fds = running.tcp.listener_fds().await;
        let mut fds = running.listener_fds.clone();
        fds.extend(
            frontend_fds
                .iter()
                .map(|(n, fd)| (n.clone(), fd.as_raw_fd())),
        );
        let spawned = upgrade::spawn_successor(exe, args, fds, upgrade_timeout).await;
        drop(frontend_fds);
        match spawned {
            Ok(upgrade::Successor { pid, conns }) => {
                // Keep-alive clients of the plain-HTTP listener go to the successor at their
                // next request boundary instead of being asked to reconnect (issue 23).
                if let Some(conns) = conns {
                    crate::proxy::server::hand_over_to(conns);
                }
                if let Some(engine) = &running.engine {
                    engine.hand_over(pid);
                }
                set_phase(Phase::Draining { successor: pid });
                if let Some(r) = upgrade_reply {
                    let _ = r.send(Ok(format!("new process {pid} is serving")));
                }
                handed_over = true;
                break;
            }
            Err(e) => {
                if let Some(engine) = &running.engine {
                    engine.resume_after_failed_upgrade();
                }
                let reason = e.to_string();
                tracing::error!(error = %reason, "upgrade failed; this process keeps serving");
                set_phase(Phase::Failed {
                    reason: reason.clone(),
                });
                notify::status(&format!("upgrade failed: {reason}; {status}"));
                if let Some(r) = upgrade_reply {
                    let _ = r.send(Err(CommandError::Upgrade(e)));
                }
            }
        }
    }

    // Stop taking control commands; the successor (if any) owns the socket now.
    let _ = ctl_stop.send(true);
    let _ = control_task.await;
    let _ = wd_stop.send(true);
    if handed_over {
        // Not the main process any more: no STOPPING=1 (systemd would stop the unit).
        tracing::info!("handed over; draining in-flight requests and tunnels");
    } else {
        notify::stopping();
        tracing::info!("stopping: draining connections");
        crate::proxy::server::no_idle_grace();
        if control_origin == crate::lifecycle::Origin::Bound {
            let _ = std::fs::remove_file(&control_path);
        }
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(if handed_over {
        Stopped::HandedOver
    } else {
        Stopped::Shutdown
    })
}

async fn reload(running: &mut Running) -> Result<String, DaemonError> {
    notify::reloading();
    let result = running.reload().await;
    let status = format!("serving on {}", running.http_addr);
    match &result {
        Ok(_) => notify::ready(&status),
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; the previous configuration stays in force");
            notify::ready(&format!("reload rejected: {e}; {status}"));
        }
    }
    result
}

impl Running {
    fn proxy_listener_fd(&self) -> RawFd {
        self.listener_fds
            .iter()
            .find(|(n, _)| n == "http")
            .map(|(_, fd)| *fd)
            .unwrap_or(-1)
    }
}

/// Borrow helper for a descriptor owned by a live tokio listener.
fn control_listener_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the control listener lives until `run` returns, after the fd-store call.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}
