//! Wires the daemon together: configuration + store → route registry → route table → proxy
//! and API listeners, plus signal handling (SIGTERM/SIGINT drain and exit, SIGHUP reload). The
//! one module that may use all others.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, ApiSettings, ApiState};
use crate::config::{self, ConfigError};
use crate::lifecycle::{self, ListenError};
use crate::model::config::Config;
use crate::model::route::{RouteError, RouteTable};
use crate::proxy::{server, Proxy, Settings, Tables};
use crate::store::registry::{ChangeError, RouteRegistry, TablePublisher};
use crate::store::{Store, StoreError};

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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("routes: {0}")]
    Registry(#[from] ChangeError),
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

/// A started daemon: its bound addresses and the handles to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub tables: Arc<Tables>,
    /// Config + stored routes and the one write path that changes them.
    pub registry: Arc<RouteRegistry>,
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

    /// Re-reads the config file and swaps in its routes (stored routes stay). An invalid file
    /// changes nothing.
    pub async fn reload(&self) -> Result<(), DaemonError> {
        let Some(path) = &self.config_path else {
            return Ok(());
        };
        let cfg = config::load(path, true)?;
        self.registry.replace_statics(cfg.routes.clone()).await?;
        tracing::info!(path = %path.display(), routes = cfg.routes.len(), "configuration reloaded");
        Ok(())
    }
}

/// Starts the proxy for `config` on the current tokio runtime.
pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Running, DaemonError> {
    // Nothing is served until the registry has published config + stored routes.
    let tables = Arc::new(Tables::new(RouteTable::default()));
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&data_dir))
        .await
        .map_err(std::io::Error::other)??;
    tracing::info!(db = %store.path().display(), "store opened");
    let registry = Arc::new(
        RouteRegistry::open(Arc::new(store), config.routes.clone(), tables.clone()).await?,
    );
    let settings = Settings::from_config(&config.proxy, config.log.access_log);
    let proxy = Arc::new(Proxy::new(settings, tables.clone()));

    let std_listener = lifecycle::bind_tcp("http", config.http.listen)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let http_addr = listener.local_addr()?;
    let api_listener =
        tokio::net::TcpListener::from_std(lifecycle::bind_tcp("api", config.api.listen)?)?;
    let api_addr = api_listener.local_addr()?;
    tracing::info!(http = %http_addr, api = %api_addr, routes = registry.routes().len(), "listening");

    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(server::serve_http(proxy.clone(), listener, stop_rx.clone()));
    let api_state = ApiState {
        registry: registry.clone(),
        settings: Arc::new(ApiSettings::from_config(&config.api)),
        stop: stop_rx,
    };
    let api_task = tokio::spawn(api::serve(api_listener, api_state));
    Ok(Running {
        http_addr,
        api_addr,
        tables,
        registry,
        proxy,
        stop,
        tasks: vec![task, api_task],
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
                if let Err(e) = running.reload().await {
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
