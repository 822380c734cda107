//! Wires the daemon together: configuration → route table → proxy → listeners, and the
//! lifecycle around them: READY only after listeners are live and state is restored,
//! SIGHUP/`reload` swaps the configuration in place, SIGUSR2/`upgrade` hands the listeners to
//! the binary now on disk, SIGTERM/SIGINT drain and exit 0. The one module that may use all
//! others.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{self, ConfigError};
use crate::lifecycle::control::{self, Command};
use crate::lifecycle::upgrade::{self, Phase};
use crate::lifecycle::{notify, Inherited, ListenError};
use crate::model::config::Config;
use crate::model::route::{RouteError, RouteTable};
use crate::proxy::{server, Proxy, Settings, Tables};

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
}

/// A started daemon: its bound addresses and the handles to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub tables: Arc<Tables>,
    pub proxy: Arc<Proxy>,
    pub config: Config,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    config_path: Option<PathBuf>,
    /// Listening descriptors by name, handed to a successor on upgrade.
    listener_fds: Vec<(String, RawFd)>,
}

impl Running {
    /// Stops accepting, drains (bounded by the drain timeout), and waits for every listener
    /// task and open tunnel.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let drain = self.proxy.settings.timeouts.drain;
        let _ = tokio::time::timeout(drain, self.proxy.tunnels.wait_idle()).await;
    }

    /// Re-reads the config file and swaps in its routes. An invalid file changes nothing.
    pub fn reload(&mut self) -> Result<String, DaemonError> {
        let Some(path) = &self.config_path else {
            return Ok("no configuration file; nothing to reload".into());
        };
        let cfg = config::load(path, true)?;
        let current = self.tables.load_full();
        let table = RouteTable::build(&cfg.routes, Some(&current))?;
        let mut restart_needed = Vec::new();
        if cfg.http != self.config.http {
            restart_needed.push("http");
        }
        if cfg.api != self.config.api {
            restart_needed.push("api");
        }
        if cfg.proxy != self.config.proxy {
            restart_needed.push("proxy");
        }
        self.tables.publish(table);
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
    let table = RouteTable::build(&config.routes, None)?;
    let tables = Arc::new(Tables::new(table));
    let settings = Settings::from_config(&config.proxy, config.log.access_log);
    let proxy = Arc::new(Proxy::new(settings, tables.clone()));

    let (std_listener, origin) = inherited.tcp("http", config.http.listen)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let http_addr = listener.local_addr()?;
    let listener_fds = vec![("http".to_string(), listener.as_raw_fd())];
    tracing::info!(http = %http_addr, from = %origin, routes = config.routes.len(), "listening");

    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(server::serve_http(proxy.clone(), listener, stop_rx));
    Ok(Running {
        http_addr,
        tables,
        proxy,
        config,
        stop,
        tasks: vec![task],
        config_path,
        listener_fds,
    })
}

/// Runs until SIGTERM/SIGINT or a successful upgrade; reloads on SIGHUP, upgrades on SIGUSR2
/// or a control-socket request.
pub async fn run(
    config: Config,
    config_path: Option<PathBuf>,
    mut inherited: Inherited,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;

    let control_path = config.control_socket();
    let upgrade_timeout = config.lifecycle.upgrade_timeout;
    notify::status("starting");
    let mut running = start_with(config, config_path, &mut inherited).await?;
    let (control_listener, control_origin) = inherited.unix("control", &control_path)?;
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
        notify::store_fd("control", control_listener_fd(control_fd).as_fd());
    }

    let status = format!("serving on {}", running.http_addr);
    match inherited.handoff.as_mut() {
        Some(handoff) => {
            notify::ready_as_main(&status);
            handoff.signal_ready();
            tracing::info!(
                previous = handoff.parent_pid,
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
                let _ = reload(&mut running);
                continue;
            }
            _ = usr2.recv() => {}
            req = ctl_rx.recv() => {
                let Some(req) = req else { continue };
                match req.command {
                    Command::Reload => {
                        let _ = req.reply.send(reload(&mut running));
                        continue;
                    }
                    Command::Status => {
                        let phase = phase_tx.borrow().clone();
                        let _ = req.reply.send(Ok(format!(
                            "pid {} {}; http {}",
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
                let reason = format!("cannot find the berthd binary: {e}");
                set_phase(Phase::Failed {
                    reason: reason.clone(),
                });
                if let Some(r) = upgrade_reply {
                    let _ = r.send(Err(reason));
                }
                continue;
            }
        };
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        set_phase(Phase::StartingSuccessor);
        match upgrade::spawn_successor(exe, args, running.listener_fds.clone(), upgrade_timeout)
            .await
        {
            Ok(pid) => {
                set_phase(Phase::Draining { successor: pid });
                if let Some(r) = upgrade_reply {
                    let _ = r.send(Ok(format!("new process {pid} is serving")));
                }
                handed_over = true;
                break;
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(error = %reason, "upgrade failed; this process keeps serving");
                set_phase(Phase::Failed {
                    reason: reason.clone(),
                });
                notify::status(&format!("upgrade failed: {reason}; {status}"));
                if let Some(r) = upgrade_reply {
                    let _ = r.send(Err(reason));
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
        if control_origin == crate::lifecycle::Origin::Bound {
            let _ = std::fs::remove_file(&control_path);
        }
    }
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

fn reload(running: &mut Running) -> Result<String, String> {
    notify::reloading();
    let result = running.reload().map_err(|e| e.to_string());
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
