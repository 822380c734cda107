//! TCP mode wiring: the frontend listener source (inherited sockets by name, else a fresh
//! bind; each kept in systemd's fd store while it lives) and the start of `proxy::tcp` with the
//! configuration's and the store's frontends and pools.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::sync::watch;

use super::DaemonError;
use crate::lifecycle::{notify, Inherited, ListenError};
use crate::model::config::Config;
use crate::store::registry::RouteRegistry;
use crate::store::StoreError;

/// Frontend listeners come from the inherited set (upgrade, socket activation, fd store) or
/// a fresh bind, and are kept in systemd's fd store while they live.
struct FrontendListeners(crate::lifecycle::FrontendSockets);

impl crate::proxy::tcp::ListenerSource for FrontendListeners {
    fn listen(&self, name: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let (l, origin) = self.0.listen(name, addr).map_err(|e| match e {
            ListenError::Bind { source, .. } | ListenError::Inherited { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })?;
        tracing::info!(%name, %addr, from = %origin, "frontend listener");
        notify::store_fd(name, l.as_fd());
        Ok(l)
    }

    fn released(&self, name: &str) {
        notify::remove_fd(name);
    }
}

/// Starts TCP mode: the configuration's frontends and pools plus the stored ones, listening
/// on inherited sockets where present.
pub(super) async fn start_tcp(
    config: &Config,
    registry: &Arc<RouteRegistry>,
    inherited: &mut Inherited,
    stop_rx: &watch::Receiver<bool>,
    own: [Option<(&'static str, SocketAddr)>; 3],
    http: &Arc<crate::proxy::Proxy>,
    apps: watch::Receiver<Arc<crate::model::pool::AppReplicas>>,
) -> Result<Arc<crate::proxy::tcp::TcpProxy>, DaemonError> {
    let sockets = Arc::new(FrontendListeners(inherited.take_prefix("frontend.")));
    let tcp = crate::proxy::tcp::TcpProxy::new(
        sockets.clone(),
        own.into_iter().flatten().collect(),
        config.proxy.timeouts.drain,
        stop_rx.clone(),
        http.clone(),
        apps,
    );
    let store = registry.store().clone();
    let stored = tokio::task::spawn_blocking(move || {
        Ok::<_, StoreError>((store.load_frontends()?, store.load_pools()?))
    })
    .await
    .map_err(std::io::Error::other)?;
    let stored = stored.unwrap_or_else(|e| {
        tracing::error!(error = %e, "stored frontends and pools cannot be read; serving the configured ones");
        (Vec::new(), Vec::new())
    });
    tcp.load((config.frontends.clone(), config.pools.clone()), stored)
        .await?;
    for name in sockets.0.close_unclaimed() {
        tracing::warn!(%name, "inherited frontend listener not used by this configuration; closed");
        notify::remove_fd(&name);
    }
    Ok(tcp)
}
