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
use crate::proxy::{server, Proxy, Settings, Tables};
use crate::tls::{AcmeManager, CertStore, ManualCerts, TlsError};

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
}

/// A started daemon: its bound addresses and the handles to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub tables: Arc<Tables>,
    pub proxy: Arc<Proxy>,
    /// Set when `tls.enabled`.
    pub https_addr: Option<SocketAddr>,
    /// The SNI certificate store (status list for `GET /v1/certificates`).
    pub certs: Option<Arc<CertStore>>,
    /// The ACME issuer, when `tls.acme` is configured.
    pub acme: Option<Arc<AcmeManager>>,
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
    let mut tasks = Vec::new();
    let (https_addr, certs, acme) = if config.tls.enabled {
        let tls = start_tls(&config, &proxy, &tables, &stop_rx, &mut tasks).await;
        match tls {
            Ok(t) => t,
            Err(e) => {
                let _ = stop.send(true);
                for t in tasks {
                    let _ = t.await;
                }
                return Err(e);
            }
        }
    } else {
        (None, None, None)
    };
    tasks.push(tokio::spawn(server::serve_http(
        proxy.clone(),
        listener,
        stop_rx,
    )));
    Ok(Running {
        http_addr,
        tables,
        proxy,
        https_addr,
        certs,
        acme,
        stop,
        tasks,
        config_path,
    })
}

/// The proxy's view of the certificate store (the proxy does not import `tls`).
struct TlsHooksAdapter {
    store: Arc<CertStore>,
    redirect: bool,
    https_port: u16,
}

impl crate::proxy::acme_hook::TlsHooks for TlsHooksAdapter {
    fn http01(&self, token: &str) -> Option<String> {
        self.store.http01(token)
    }

    fn https_authority(&self, host: &str) -> Option<String> {
        if !self.redirect || !self.store.has_certificate(host) {
            return None;
        }
        Some(if self.https_port == 443 {
            host.to_string()
        } else {
            format!("{host}:{}", self.https_port)
        })
    }
}

/// Domains of a route table that a public CA could certify (names with a dot, not
/// `localhost`).
pub fn certifiable_domains(table: &RouteTable) -> std::collections::BTreeSet<String> {
    table
        .routes()
        .iter()
        .flat_map(|r| r.spec.domains.iter().chain(r.spec.aliases.iter()))
        .map(|d| d.as_str().to_string())
        .filter(|d| d.contains('.') && d != "localhost" && !d.ends_with(".localhost"))
        .collect()
}

type TlsParts = (
    Option<SocketAddr>,
    Option<Arc<CertStore>>,
    Option<Arc<AcmeManager>>,
);

/// Loads certificates, binds the HTTPS listener, and starts the reload and ACME tasks.
async fn start_tls(
    config: &Config,
    proxy: &Arc<Proxy>,
    tables: &Arc<Tables>,
    stop_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<TlsParts, DaemonError> {
    // Another provider compiled in by some dependency must not make rustls ambiguous.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = Arc::new(CertStore::new());
    let manual = {
        let (store, cfg, dir) = (store.clone(), config.tls.clone(), config.data_dir.clone());
        tokio::task::spawn_blocking(move || ManualCerts::load(store, &cfg, &dir))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??
    };
    let server_config = crate::proxy::https::server_config(store.clone())?;
    let std_listener = lifecycle::bind_tcp("https", config.tls.listen)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let https_addr = listener.local_addr()?;
    tracing::info!(https = %https_addr, "listening");
    let _ = proxy.tls_hooks.set(Arc::new(TlsHooksAdapter {
        store: store.clone(),
        redirect: config.tls.redirect,
        https_port: https_addr.port(),
    }));
    tasks.push(tokio::spawn(crate::proxy::https::serve_https(
        proxy.clone(),
        listener,
        server_config,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(
        manual.run(config.tls.reload_interval, stop_rx.clone()),
    ));
    let acme = config.tls.acme.as_ref().map(|cfg| {
        Arc::new(AcmeManager::new(
            cfg.clone(),
            &config.data_dir,
            store.clone(),
        ))
    });
    if let Some(acme) = &acme {
        acme.set_domains(certifiable_domains(&tables.load()));
        tasks.push(tokio::spawn(acme.clone().run(stop_rx.clone())));
        // Every publish (config reload, deploys) updates the set of domains to certify.
        let (acme, tables, mut stop) = (acme.clone(), tables.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            let mut generation = tables.subscribe();
            loop {
                tokio::select! {
                    r = generation.changed() => {
                        if r.is_err() {
                            return;
                        }
                        acme.set_domains(certifiable_domains(&tables.load()));
                    }
                    r = stop.changed() => {
                        if r.is_err() || *stop.borrow() {
                            return;
                        }
                    }
                }
            }
        }));
    }
    Ok((Some(https_addr), Some(store), acme))
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
