//! The client's request body on its way upstream. `RequestBody` forwards it, fails once it
//! exceeds the size limit, wraps the client's body errors as `ClientBodyError` (so they are
//! told apart from the backend's by type) and records its progress for the request timers.
//! Nothing is buffered whole. A leaf module: the upstream paths (`upstream/`) use it, and it
//! uses none of them (the response side lives in `response.rs`).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
