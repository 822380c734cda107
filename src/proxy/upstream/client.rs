//! The hyper upstream path: requests with a body, and upgrades. Each connection is a
//! `hyper::client::conn::http1::SendRequest` handle driven by its own task; a request pops an
//! idle one (or connects), and its response body ([`HyperBody`]) hands the connection back
//! when the upstream body has ended. A connection that errored, closed, asked for
//! `Connection: close`, carried an upgrade, or whose body was abandoned is never returned.
//! A request whose pooled connection turns out dead is sent again once on a fresh
//! connection, when hyper proves it was not sent. Responses are held to the framing rule the
//! direct path uses (`framing.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::error::UpstreamError;
use super::pool::{Endpoint, IdleQueue, Reusable};
use crate::proxy::body::{BoxError, RequestBody};
use crate::proxy::framing;

pub type Sender = http1::SendRequest<RequestBody>;

impl Reusable for Sender {
    fn usable(&mut self) -> bool {
        !self.is_closed()
    }
}

/// A live idle connection, if there is one.
async fn pop_ready(idle: &IdleQueue<Sender>) -> Option<Sender> {
    while let Some(mut sender) = idle.pop() {
        // Returned right after its response body ended, the connection task may not yet
        // have gone back to idle: wait for it (immediate in the common case). An error
        // means it closed meanwhile.
        if sender.ready().await.is_ok() {
            return Some(sender);
        }
    }
    None
}

/// A new hyper client connection (its connection task spawned).
async fn connect(endpoint: &Endpoint, upgrades: bool) -> Result<Sender, UpstreamError> {
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(endpoint.open().await?))
        .await
        .map_err(|source| UpstreamError::Handshake {
            addr: endpoint.authority().to_string(),
            source,
        })?;
    if upgrades {
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
    } else {
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
    }
    Ok(sender)
}

/// A connection checked out for one request; `release` hands it back to its idle queue.
pub struct PooledConn {
    sender: Sender,
    idle: Arc<IdleQueue<Sender>>,
}

impl PooledConn {
    /// Back to the idle queue (the response body has ended).
    fn release(self) {
        if !self.sender.is_closed() {
            self.idle.push(self.sender);
        }
    }
}

/// Sends `req` on an idle connection if there is one, else on a new one; a pooled
/// connection found dead before the request went out is replaced once. With `upgrade`, a
/// fresh connection that supports protocol upgrades is used and never pooled.
pub async fn send(
    endpoint: &Endpoint,
    idle: &Arc<IdleQueue<Sender>>,
    mut req: Request<RequestBody>,
    upgrade: bool,
) -> Result<Response<HyperBody>, UpstreamError> {
    let head_request = req.method() == http::Method::HEAD;
    if !upgrade {
        if let Some(mut sender) = pop_ready(idle).await {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let conn = PooledConn {
                        sender,
                        idle: idle.clone(),
                    };
                    return checked(endpoint, resp, head_request, upgrade, Some(conn));
                }
                Err(mut e) => {
                    if let Some(r) = e.take_message() {
                        tracing::debug!(upstream = %endpoint.authority(), error = %e.error(), "pooled connection was dead; request not sent, retrying on a new connection");
                        req = r;
                    } else {
                        return Err(UpstreamError::Http(e.into_error()));
                    }
                }
            }
        }
    }
    let mut sender = connect(endpoint, upgrade).await?;
    let resp = sender
        .try_send_request(req)
        .await
        .map_err(|e| UpstreamError::Http(e.into_error()))?;
    let pooled = (!upgrade).then(|| PooledConn {
        sender,
        idle: idle.clone(),
    });
    checked(endpoint, resp, head_request, upgrade, pooled)
}

/// Holds a response hyper parsed to the framing rule the direct path uses (`framing.rs`): a
/// head that rule refuses is a framing error (its connection is dropped, never pooled); a
/// head with both `Transfer-Encoding` and `Content-Length` loses the `Content-Length` and
/// its connection is not reused.
fn checked(
    endpoint: &Endpoint,
    resp: Response<Incoming>,
    head_request: bool,
    upgrade: bool,
    mut conn: Option<PooledConn>,
) -> Result<Response<HyperBody>, UpstreamError> {
    let (mut parts, body) = resp.into_parts();
    let decided = framing::response_framing(
        parts.version,
        parts.status,
        head_request,
        upgrade,
        &parts.headers,
    )
    .map_err(|source| UpstreamError::Framing {
        addr: endpoint.authority().to_string(),
        source,
    })?;
    if decided.rewrites_headers() {
        framing::sanitize(&decided, &mut parts.headers);
    }
    if decided.strip_content_length {
        conn = None;
    }
    Ok(Response::from_parts(parts, HyperBody { body, conn }))
}

/// A hyper-path response body and, until it has ended, the connection it arrives on (handed
/// back when the body ends; dropped, closing it, when the body fails or is abandoned).
pub struct HyperBody {
    body: Incoming,
    conn: Option<PooledConn>,
}

impl HyperBody {
    /// The connection is not to be reused (the proxy saw `Connection: close` or HTTP/1.0).
    pub fn no_reuse(&mut self) {
        self.conn = None;
    }

    fn release(&mut self) {
        if let Some(c) = self.conn.take() {
            c.release();
        }
    }
}

impl Drop for HyperBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so (known length): the body ended.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

impl Body for HyperBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if this.body.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken body: its connection is not reused.
                this.conn = None;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
