//! The response body sent to the client: the upstream's (`upstream::UpstreamBody`, which
//! hands its connection back to the pool itself) or a local one. It counts the bytes, and
//! writes the access-log line and releases in-flight counters when it is dropped, i.e. when
//! the response is finished or the client went away. Nothing is buffered whole.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::model::stats::BackendStats;

use super::body::BoxError;
use super::server::ConnState;
use super::upstream::UpstreamBody;

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

impl Completion {
    /// The response ends its connection ([`ConnState::last_response`]).
    pub fn last_response(&self) {
        if let Some(c) = &self.conn {
            c.last_response();
        }
    }
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
    /// The upstream's body (it returns its connection to the pool itself).
    Upstream(UpstreamBody),
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
    pub fn upstream(mut body: UpstreamBody, reuse: bool) -> Self {
        if !reuse {
            body.no_reuse();
        }
        Self {
            inner: Inner::Upstream(body),
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
            Inner::Upstream(b) => match Pin::new(b).poll_frame(cx) {
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
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Full(d) => d.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map(|d| d.len() as u64).unwrap_or(0)),
        }
    }
}
