//! Streaming bodies. `RequestBody` forwards the client's body to the upstream, fails once it
//! exceeds the size limit, wraps the client's body errors as `ClientBodyError` (so they are
//! told apart from the backend's by type) and records its progress for the request timers;
//! `ResponseBody` forwards the upstream's (or a local) body, counts the
//! bytes, and writes the access-log line and releases in-flight counters when it is dropped,
//! i.e. when the response is finished or the client went away. Nothing is buffered whole.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::model::stats::BackendStats;

use super::direct::DirectBody;
use super::pool::{PooledConn, UpstreamBody};
use super::server::ConnState;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past `proxy.max_body_size`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// The client's body failed: the client's fault, never the backend's (passive health does
/// not see it). Found in an upstream error's source chain by type, not by message.
#[derive(Debug, thiserror::Error)]
#[error("client request body: {kind:?}: {source}")]
pub struct ClientBodyError {
    pub kind: ClientBodyFault,
    #[source]
    pub source: hyper::Error,
}

/// What went wrong with a client's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFault {
    /// Bad framing (e.g. an invalid chunk size): 400.
    Malformed,
    /// The client went away or reset the stream before the end: 400 (it will not read it).
    Aborted,
}

impl ClientBodyFault {
    /// Classifies an error of the client's `Incoming` body by the I/O error kind inside it
    /// (hyper reports bad chunked framing as `InvalidInput`/`InvalidData`, an early end as
    /// `UnexpectedEof`, a dead connection without an I/O cause).
    fn of(e: &hyper::Error) -> Self {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                        ClientBodyFault::Malformed
                    }
                    _ => ClientBodyFault::Aborted,
                };
            }
            cur = err.source();
        }
        ClientBodyFault::Aborted
    }
}

/// Where a streaming request body is: shared by the body (writer) and the request's task
/// (reader), which runs the client-body idle timer while the body waits for the client, and
/// starts the response-header timer only once the body has been sent completely.
pub struct BodyProgress {
    origin: Instant,
    /// Microseconds after `origin` when `phase` last changed (or a frame went through).
    since_us: AtomicU64,
    phase: AtomicU8,
    /// Signalled once when the body has ended.
    done: tokio::sync::Notify,
}

/// Phases of [`BodyProgress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPhase {
    /// The body waits for the client's next bytes.
    WaitingForClient,
    /// A frame was handed to the upstream connection, which has not asked for more yet.
    WaitingForUpstream,
    /// The whole body has been handed over.
    Sent,
}

impl BodyProgress {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            since_us: AtomicU64::new(0),
            // Until the upstream connection first asks for the body (connecting has its own
            // timeout), the wait is not the client's.
            phase: AtomicU8::new(BodyPhase::WaitingForUpstream as u8),
            done: tokio::sync::Notify::new(),
        }
    }

    fn set(&self, phase: BodyPhase) {
        let us = self.origin.elapsed().as_micros() as u64;
        self.since_us.store(us, Ordering::Relaxed);
        if self.phase.swap(phase as u8, Ordering::Release) != BodyPhase::Sent as u8
            && phase == BodyPhase::Sent
        {
            self.done.notify_one();
        }
    }

    /// The current phase and when it began.
    pub fn phase(&self) -> (BodyPhase, Instant) {
        let phase = match self.phase.load(Ordering::Acquire) {
            0 => BodyPhase::WaitingForClient,
            1 => BodyPhase::WaitingForUpstream,
            _ => BodyPhase::Sent,
        };
        let since =
            self.origin + std::time::Duration::from_micros(self.since_us.load(Ordering::Relaxed));
        (phase, since)
    }

    /// Resolves when the body has been sent completely (at once if it has).
    pub async fn sent(&self) {
        if self.phase().0 != BodyPhase::Sent {
            self.done.notified().await;
        }
    }
}

/// Client body on its way upstream, with a size limit and progress tracking.
pub struct RequestBody {
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    /// `None` for a body that is empty from the start (no timers needed).
    progress: Option<Arc<BodyProgress>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, limit: u64) -> Self {
        let progress = (!inner.is_end_stream()).then(|| Arc::new(BodyProgress::new()));
        Self {
            inner: Some(inner),
            seen: 0,
            limit,
            progress,
        }
    }
    pub fn empty() -> Self {
        Self {
            inner: None,
            seen: 0,
            limit: 0,
            progress: None,
        }
    }

    /// The progress of a body that has something to send.
    pub fn progress(&self) -> Option<Arc<BodyProgress>> {
        self.progress.clone()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(this.limit)))));
                    }
                }
                if let Some(p) = &this.progress {
                    p.set(if inner.is_end_stream() {
                        BodyPhase::Sent
                    } else {
                        BodyPhase::WaitingForUpstream
                    });
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.inner = None;
                Poll::Ready(Some(Err(Box::new(ClientBodyError {
                    kind: ClientBodyFault::of(&e),
                    source: e,
                }))))
            }
            Poll::Ready(None) => {
                if let Some(p) = &this.progress {
                    p.set(BodyPhase::Sent);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(p) = &this.progress {
                    if p.phase.load(Ordering::Relaxed) != BodyPhase::WaitingForClient as u8 {
                        p.set(BodyPhase::WaitingForClient);
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .map(|b| b.is_end_stream())
            .unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

/// What the access log needs to know about a finished request.
pub struct AccessLog {
    pub start: Instant,
    pub client: std::net::SocketAddr,
    pub host: String,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub route: Option<String>,
    pub upstream: Option<String>,
}

/// Counters released when the response ends.
pub struct Completion {
    /// When the request arrived (feeds the backend's latency histogram).
    pub start: Instant,
    pub log: Option<Box<AccessLog>>,
    pub backend: Option<Arc<BackendStats>>,
    pub conn: Option<Arc<ConnState>>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(b) = &self.backend {
            b.inflight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            b.latency.record(self.start.elapsed());
        }
        if let Some(c) = &self.conn {
            c.request_done();
        }
    }
}

enum Inner {
    /// The upstream's body and, until it has ended, the connection it arrives on.
    Upstream(Incoming, Option<PooledConn>),
    /// A direct-path body (it returns its connection itself).
    Direct(DirectBody),
    Full(Option<Bytes>),
}

/// Response body sent to the client.
pub struct ResponseBody {
    inner: Inner,
    bytes: u64,
    done: Option<Completion>,
}

impl ResponseBody {
    /// The upstream's body; its connection goes back to the pool once the body has ended
    /// and `reuse` allows it (and is dropped, closing it, if the body is abandoned before).
    pub fn upstream(body: UpstreamBody, reuse: bool) -> Self {
        let inner = match body {
            UpstreamBody::Hyper(b, conn) => Inner::Upstream(b, conn.filter(|_| reuse)),
            UpstreamBody::Direct(mut d) => {
                if !reuse {
                    d.no_reuse();
                }
                Inner::Direct(d)
            }
        };
        Self {
            inner,
            bytes: 0,
            done: None,
        }
    }

    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            inner: Inner::Full((!data.is_empty()).then_some(data)),
            bytes: 0,
            done: None,
        }
    }

    /// Attaches the completion (log line, counters) to a locally generated body.
    pub fn with_completion(mut self, done: Completion) -> Self {
        self.done = Some(done);
        self
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so (known length): the body ended.
        if let Inner::Upstream(b, conn) = &mut self.inner {
            if b.is_end_stream() {
                if let Some(c) = conn.take() {
                    c.release();
                }
            }
        }
        if let Some(done) = &mut self.done {
            if let Some(log) = done.log.take() {
                if let Some(b) = &done.backend {
                    b.bytes_out
                        .fetch_add(self.bytes, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(
                    target: "berth::access",
                    client = %log.client,
                    host = %log.host,
                    method = %log.method,
                    path = %log.path,
                    status = log.status,
                    bytes = self.bytes,
                    duration_ms = log.start.elapsed().as_secs_f64() * 1000.0,
                    route = log.route.as_deref().unwrap_or("-"),
                    upstream = log.upstream.as_deref().unwrap_or("-"),
                    "request"
                );
            } else if let Some(b) = &done.backend {
                b.bytes_out
                    .fetch_add(self.bytes, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = match &mut this.inner {
            Inner::Upstream(b, conn) => match Pin::new(&mut *b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if b.is_end_stream() {
                        if let Some(c) = conn.take() {
                            c.release();
                        }
                    }
                    Poll::Ready(Some(Ok(f)))
                }
                Poll::Ready(Some(Err(e))) => {
                    // A broken body: its connection is not reused.
                    conn.take();
                    Poll::Ready(Some(Err(Box::new(e) as BoxError)))
                }
                Poll::Ready(None) => {
                    if let Some(c) = conn.take() {
                        c.release();
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => return Poll::Pending,
            },
            Inner::Direct(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                r => r,
            },
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        if let Poll::Ready(Some(Ok(f))) = &res {
            if let Some(d) = f.data_ref() {
                this.bytes += d.len() as u64;
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b, _) => b.is_end_stream(),
            Inner::Direct(b) => b.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b, _) => b.size_hint(),
            Inner::Direct(b) => b.size_hint(),
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map(|d| d.len() as u64).unwrap_or(0)),
        }
    }
}
