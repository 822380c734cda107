//! The HTTPS listener: accept, TLS handshake (rustls; TLS 1.2 + 1.3, ALPN h2 / http/1.1, the
//! certificate chosen by a resolver handed in from outside), then the same per-connection
//! serving as plain HTTP. Connections that negotiated `acme-tls/1` exist only for a CA's
//! TLS-ALPN-01 validation and are closed right after the handshake.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::ResolvesServerCert;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;

use super::server::{accept_loop, connection_builder, serve_connection, Scheme};
use super::Proxy;

/// ALPN id of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Builds the server config: secure defaults of rustls with the ring provider, TLS 1.2 and
/// 1.3 only, no client auth, session tickets on.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(cfg))
}

/// The handshake: read the ClientHello, let the on-demand hook (if any) obtain a certificate
/// for an unknown name, then finish with `config`. The ClientHello and the rest of the
/// handshake each get `timeout`; the hook bounds its own wait.
async fn accept_tls(
    stream: tokio::net::TcpStream,
    config: &Arc<ServerConfig>,
    hooks: Option<Arc<dyn super::acme_hook::TlsHooks>>,
    timeout: Duration,
) -> Result<Result<TlsStream<super::net::ClientStream>, std::io::Error>, ()> {
    let lazy = LazyConfigAcceptor::new(
        rustls::server::Acceptor::default(),
        super::net::ClientStream::new(stream),
    );
    let start = match tokio::time::timeout(timeout, lazy).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => return Ok(Err(e)),
        Err(_) => return Err(()),
    };
    let hello = start.client_hello();
    let challenge = hello
        .alpn()
        .is_some_and(|mut p| p.any(|x| x == ACME_TLS_ALPN));
    let wait = match (hello.server_name(), hooks) {
        (Some(name), Some(h)) if !challenge => h.before_handshake(name),
        _ => None,
    };
    if let Some(wait) = wait {
        wait.await;
    }
    tokio::time::timeout(timeout, start.into_stream(config.clone()))
        .await
        .map_err(|_| ())
}

/// Serves TLS on `listener` until `stop` turns true, then drains (the accept loop is
/// `server::accept_loop`, shared with plain HTTP).
pub async fn serve_https(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    config: Arc<ServerConfig>,
    stop: watch::Receiver<bool>,
) {
    // The ClientHello's ACK rides on the server's first flight, a request's on its response;
    // the connection is accepted with its ClientHello.
    super::server::prepare_client_first_listener(&listener, &proxy.settings);
    let builder = Arc::new(connection_builder(&proxy));
    let drain = proxy.settings.timeouts.drain;
    // A handshake must finish within the client header timeout (slowloris on TLS).
    let handshake_timeout = proxy.settings.timeouts.client_header;
    accept_loop(
        listener,
        stop,
        drain,
        "TLS connections",
        move |stream, peer, drain_rx| {
            let proxy = proxy.clone();
            let builder = builder.clone();
            let config = config.clone();
            async move {
                let hooks = proxy.tls_hooks.get().cloned();
                let tls = match accept_tls(stream, &config, hooks, handshake_timeout).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                    let mut tls = tls;
                    let _ = tls.shutdown().await;
                    return;
                }
                serve_connection(proxy, builder, tls, peer, Scheme::Https, drain_rx).await;
            }
        },
    )
    .await;
}
