//! HTTPS for the daemon: the certificate store, the HTTPS listener, the manual-certificate
//! reload task, ACME (with the set of domains to certify following every table publish), and
//! the hooks through which the proxy sees the store (the proxy does not import `tls`).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::DaemonError;
use crate::lifecycle::Inherited;
use crate::model::config::Config;
use crate::model::route::RouteTable;
use crate::proxy::{Proxy, Tables};
use crate::tls::{AcmeManager, CertStore, ManualCerts};

/// The proxy's view of the certificate store (the proxy does not import `tls`).
struct TlsHooksAdapter {
    store: Arc<CertStore>,
    redirect: bool,
    https_port: u16,
    acme: Option<Arc<AcmeManager>>,
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

    fn before_handshake(&self, name: &str) -> Option<crate::proxy::acme_hook::HandshakeWait> {
        let acme = self.acme.as_ref().filter(|a| a.wants_on_demand(name))?;
        Some(Box::pin(acme.clone().obtain_on_demand(name.to_string())))
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

pub(super) type TlsParts = (
    Option<SocketAddr>,
    Option<Arc<CertStore>>,
    Option<Arc<AcmeManager>>,
);

/// Loads certificates, binds the HTTPS listener, and starts the reload and ACME tasks.
pub(super) async fn start_tls(
    config: &Config,
    proxy: &Arc<Proxy>,
    tables: &Arc<Tables>,
    stop_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
    inherited: &mut Inherited,
    listener_fds: &mut Vec<(String, RawFd)>,
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
    let (std_listener, origin) = inherited.tcp("https", config.tls.listen)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let https_addr = listener.local_addr()?;
    listener_fds.push(("https".to_string(), listener.as_raw_fd()));
    tracing::info!(https = %https_addr, from = %origin, "listening");
    let acme = config.tls.acme.as_ref().map(|cfg| {
        Arc::new(
            AcmeManager::new(cfg.clone(), &config.data_dir, store.clone())
                .with_on_demand(config.tls.on_demand.clone()),
        )
    });
    let _ = proxy.tls_hooks.set(Arc::new(TlsHooksAdapter {
        store: store.clone(),
        redirect: config.tls.redirect,
        https_port: https_addr.port(),
        acme: acme.clone(),
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
