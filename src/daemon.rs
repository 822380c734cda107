//! Wires the daemon together: configuration → route table → proxy → listeners, plus signal
//! handling (SIGTERM/SIGINT drain and exit, SIGHUP reload). The one module that may use all
//! others.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, ConfigError};
use crate::lifecycle::{self, ListenError};
use crate::model::config::Config;
use crate::model::route::{RouteError, RouteTable};
use crate::proxy::health::{self, HealthSettings};
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
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    config_path: Option<PathBuf>,
}

impl Running {
    /// Stops accepting, drains, and waits until every listener task has finished.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Re-reads the config file and swaps in its routes. An invalid file changes nothing.
    pub fn reload(&self) -> Result<(), DaemonError> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        let cfg = config::load(path, true)?;
        let current = self.tables.load_full();
        let table = RouteTable::build(&cfg.routes, Some(&current))?;
        self.tables.publish(table);
        tracing::info!(path = %path.display(), routes = cfg.routes.len(), "configuration reloaded");
        Ok(())
    }
}

/// Starts the proxy for `config` on the current tokio runtime.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, DaemonError> {
    let table = RouteTable::build(&config.routes, None)?;
    let tables = Arc::new(Tables::new(table));
    let settings = Settings::from_config(&config.proxy, config.log.access_log);
    let proxy = Arc::new(Proxy::new(settings, tables.clone()));

    let std_listener = lifecycle::bind_tcp("http", config.http.listen)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let http_addr = listener.local_addr()?;
    tracing::info!(http = %http_addr, routes = config.routes.len(), "listening");

    let (stop, stop_rx) = watch::channel(false);
    let prober = health::spawn(tables.clone(), HealthSettings::default(), stop_rx.clone());
    let task = tokio::spawn(server::serve_http(proxy.clone(), listener, stop_rx));
    Ok(Running {
        http_addr,
        tables,
        proxy,
        stop,
        tasks: vec![task, prober],
        config_path,
    })
}

/// Runs until SIGTERM/SIGINT, reloading on SIGHUP.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let running = start(config, config_path).await?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Err(e) = running.reload() {
                    tracing::error!(error = %e, "reload rejected; the previous configuration stays in force");
                }
            }
        }
    }
    tracing::info!("stopping: draining connections");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
