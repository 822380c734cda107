//! Client-side connections: the accept loop, HTTP/1.1 + h2c (prior knowledge) per connection,
//! and a per-connection supervisor that enforces the header-read (slowloris) and idle
//! timeouts and drains without racing keep-alive clients (house rule 7): while draining,
//! HTTP/1 responses carry `Connection: close`, HTTP/2 gets GOAWAY, and only connections idle
//! for the drain timeout since the drain began are closed. An idle HTTP/1 connection is closed only between
//! requests: the reader hands hyper an end-of-stream only when the socket has nothing for it
//! at that instant (bytes of a next request that already arrived are served instead), then
//! the socket is half-closed and read until the client closes too, so a request sent in the
//! same instant meets a clean close, never a reset. The proxy and the API use the same
//! supervisor ([`supervise`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use super::Proxy;

fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds since process start (never 0, so 0 can mean "unset").
fn now_ms() -> u64 {
    clock_base().elapsed().as_millis() as u64 + 1
}

const PROTO_UNKNOWN: u8 = 0;
/// Idle close states (`ConnState::closing`): not asked; asked (the next read that finds the
/// socket empty ends the connection); committed (end-of-stream handed out, lingering).
const CLOSE_NONE: u8 = 0;
const CLOSE_ASKED: u8 = 1;
const CLOSE_COMMITTED: u8 = 2;
/// How long a connection closed for idleness is read (and discarded) after our FIN, waiting
/// for the client's, before it is dropped.
const LINGER: Duration = Duration::from_secs(1);

/// Whether a keep-alive connection idle when the drain begins gets the whole drain timeout for
/// a next request (see [`supervise`]). That grace is for an upgrade: the successor serves new
/// connections, and the old process's `Connection: close` answers send clients to their other
/// pooled connections. A stop with no successor turns it off ([`no_idle_grace`]): nobody will
/// serve what those clients do next, so waiting would only hold the stop up for the drain
/// timeout (30 s by default) whenever one client keeps an idle connection.
static IDLE_GRACE: AtomicBool = AtomicBool::new(true);

/// This process stops with no successor: idle connections close as soon as the drain begins
/// (between requests only, as always); requests in flight still get the drain timeout.
pub fn no_idle_grace() {
    IDLE_GRACE.store(false, Ordering::Relaxed);
}
const PROTO_H1: u8 = 1;
const PROTO_H2: u8 = 2;

/// Shared state of one client connection, updated by the IO wrapper and the request handler.
#[derive(Debug)]
pub struct ConnState {
    inflight: AtomicU32,
    last_active: AtomicU64,
    head_started: AtomicU64,
    draining: AtomicBool,
    timed_out: AtomicBool,
    proto: AtomicU8,
    /// Idle close in progress (`CLOSE_*`).
    closing: AtomicU8,
    read_waker: AtomicWaker,
    /// The client's IP as a header value, formatted once per connection (forwarded headers).
    pub peer_ip: Option<http::HeaderValue>,
    /// Set when the connection was accepted by an HTTP frontend (routed by its rules).
    pub frontend: Option<Arc<super::frontends::FrontendConn>>,
}

impl ConnState {
    fn new(peer: SocketAddr, frontend: Option<Arc<super::frontends::FrontendConn>>) -> Self {
        Self {
            frontend,
            peer_ip: super::headers::peer_header_value(peer.ip()),
            inflight: AtomicU32::new(0),
            last_active: AtomicU64::new(now_ms()),
            head_started: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            proto: AtomicU8::new(PROTO_UNKNOWN),
            closing: AtomicU8::new(CLOSE_NONE),
            read_waker: AtomicWaker::new(),
        }
    }

    /// A request head was parsed and handed to the service.
    pub fn request_started(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
    }

    /// The response (body included) is finished or abandoned.
    pub fn request_done(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether responses should ask the client to close (process draining).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// One request per connection (`keepalive: close` of an HTTP frontend).
    pub fn closes_after_response(&self) -> bool {
        self.frontend
            .as_ref()
            .is_some_and(|f| f.keepalive == crate::model::frontend::KeepAlive::Close)
    }
}

/// IO wrapper that notes when a request head starts arriving, and answers 408 then EOF when
/// the supervisor says the head took too long.
///
/// `ahead` holds the bytes the protocol detection ([`TrackedIo::poll_sniff`]) read before
/// hyper's connection existed; hyper's first reads get them before the socket is read again.
/// Nothing is parsed or changed here: the same bytes arrive in the same order.
struct TrackedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    first: bool,
    /// Bytes the detection read and hyper has not yet been handed.
    ahead: Option<bytes::Bytes>,
    /// Our write side is shut down (idle close: now reading until the client's FIN).
    shut: bool,
}

/// How much the detection's first read asks for: a typical request head fits, so hyper's
/// parser gets it whole in its first read.
const SNIFF_READ: usize = 4096;

/// The HTTP/2 connection preface (RFC 9113 §3.4): h2c with prior knowledge, or h2 over TLS.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    /// HTTP/1, and also an end of stream before the preface was complete: hyper's HTTP/1
    /// side then ends the connection as it always has (the idle close's shutdown and linger
    /// included).
    Http1,
    Http2,
}

impl<T: AsyncRead + AsyncWrite + Unpin> TrackedIo<T> {
    fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            first: true,
            ahead: None,
            shut: false,
        }
    }

    /// Reads from the detection's bytes first, then from the socket.
    fn read_inner(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(ahead) = &mut self.ahead {
            let n = ahead.len().min(buf.remaining());
            buf.put_slice(&ahead.split_to(n));
            if ahead.is_empty() {
                self.ahead = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }

    /// Protocol detection: reads the connection's first bytes (through this wrapper's own
    /// `poll_read`, so the header timeout and idle close see them) and keeps them in `ahead`.
    /// One read of up to `SNIFF_READ` bytes decides, unless what arrived is a strict prefix of
    /// the HTTP/2 preface; then it reads on (collecting into `prefix`) until the bytes match
    /// the preface, differ from it, or the stream ends (what was read, maybe nothing, goes to
    /// HTTP/1, which treats it as any truncated head or end of stream).
    fn poll_sniff(
        &mut self,
        cx: &mut Context<'_>,
        prefix: &mut Vec<u8>,
    ) -> Poll<std::io::Result<Sniffed>> {
        loop {
            let mut store = [std::mem::MaybeUninit::<u8>::uninit(); SNIFF_READ];
            let mut chunk = ReadBuf::uninit(&mut store);
            std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut chunk))?;
            let got = chunk.filled();
            if got.is_empty() {
                if !prefix.is_empty() {
                    self.ahead = Some(bytes::Bytes::from(std::mem::take(prefix)));
                }
                return Poll::Ready(Ok(Sniffed::Http1));
            }
            let seen = if prefix.is_empty() {
                bytes::Bytes::copy_from_slice(got)
            } else {
                prefix.extend_from_slice(got);
                bytes::Bytes::from(std::mem::take(prefix))
            };
            if seen.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&seen) {
                // The preface may be arriving in pieces (clients send it whole; rare).
                prefix.extend_from_slice(&seen);
                continue;
            }
            let version = if seen.starts_with(H2_PREFACE) {
                Sniffed::Http2
            } else {
                Sniffed::Http1
            };
            self.ahead = Some(seen);
            return Poll::Ready(Ok(version));
        }
    }
}

const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 16\r\n\r\nrequest timeout\n";

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.state.timed_out.load(Ordering::Relaxed) {
            if this.state.proto.load(Ordering::Relaxed) == PROTO_H1 {
                // Best effort: the socket is idle on our side, so this small write fits.
                let _ = Pin::new(&mut this.inner).poll_write(cx, RESPONSE_408);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let closing = this.state.closing.load(Ordering::Acquire);
        if closing == CLOSE_COMMITTED {
            return Poll::Ready(Ok(()));
        }
        let res = this.read_inner(cx, buf);
        if closing == CLOSE_ASKED {
            match &res {
                // Nothing of a next request has arrived: end the connection here. A request
                // sent from now on meets our FIN (and the linger below), not a reset.
                Poll::Pending => {
                    this.state.closing.store(CLOSE_COMMITTED, Ordering::Release);
                    return Poll::Ready(Ok(()));
                }
                // A next request arrived in time: it is served as usual.
                _ => this.state.closing.store(CLOSE_NONE, Ordering::Release),
            }
        }
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                let now = now_ms();
                if this.first {
                    this.first = false;
                    let proto = if buf.filled()[before..].starts_with(b"PRI * HTTP/2.0") {
                        PROTO_H2
                    } else {
                        PROTO_H1
                    };
                    this.state.proto.store(proto, Ordering::Relaxed);
                }
                this.state.last_active.store(now, Ordering::Relaxed);
                if this.state.inflight.load(Ordering::Relaxed) == 0
                    && this.state.head_started.load(Ordering::Relaxed) == 0
                {
                    this.state.head_started.store(now, Ordering::Relaxed);
                }
            }
            Poll::Pending => this.state.read_waker.register(cx.waker()),
            _ => {}
        }
        res
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if !this.shut {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.shut = true;
        }
        if this.state.closing.load(Ordering::Acquire) != CLOSE_COMMITTED {
            return Poll::Ready(Ok(()));
        }
        // Idle close: read until the client's FIN (bounded by the supervisor, `LINGER`), so
        // bytes it sent before seeing ours are discarded instead of answered with a reset.
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
        loop {
            let mut tmp = ReadBuf::uninit(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut tmp) {
                Poll::Ready(Ok(())) if !tmp.filled().is_empty() => continue,
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Counts live connections so a draining server knows when it is done.
#[derive(Debug, Default)]
pub struct ConnTracker {
    live: AtomicUsize,
    idle: Notify,
}

impl ConnTracker {
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
    /// Counts one more live connection until the guard drops.
    pub fn enter(self: &Arc<Self>) -> ConnGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }
    /// Waits until no connection is left.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Releases one live connection when dropped.
pub struct ConnGuard(Arc<ConnTracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// hyper's HTTP/1 and HTTP/2 connection builders, made once per listener. Which of the two
/// serves a connection its first bytes decide ([`supervise`]).
pub struct ConnBuilder {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

impl ConnBuilder {
    /// hyper's defaults for both protocols (the API listener).
    pub fn new() -> Self {
        ConnBuilder {
            h1: http1::Builder::new(),
            h2: http2::Builder::new(TokioExecutor::new()),
        }
    }
}

impl Default for ConnBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the proxy's connection builders once per listener.
pub fn connection_builder(proxy: &Proxy) -> ConnBuilder {
    let s = &proxy.settings;
    let mut b = ConnBuilder::new();
    // No hyper header-read timeout: `serve_connection`'s supervisor enforces the client
    // header timeout (and answers 408); hyper's would arm a boxed timer on every request.
    b.h1.timer(TokioTimer::new())
        .header_read_timeout(None::<Duration>)
        .keep_alive(true)
        .max_buf_size(s.max_header_size.max(8192))
        .writev(true);
    b.h2.timer(TokioTimer::new())
        .max_header_list_size(s.max_header_size as u32)
        .max_concurrent_streams(256);
    b
}

type ConnIo<T> = TokioIo<TrackedIo<T>>;

/// One client connection's hyper side: first the protocol detection, then hyper's HTTP/1
/// (with upgrades) or HTTP/2 connection.
///
/// Why not hyper-util's `auto` connection: it reads 24 bytes to tell the versions apart and
/// hands them back through a rewind wrapper, so hyper's HTTP/1 parser saw those 24 bytes alone,
/// found the head incomplete and grew its 8 KiB read buffer to 16 KiB (a realloc and an 8 KiB
/// copy per connection, and 16 KiB kept by every idle keep-alive connection); its state also
/// reserves room for an HTTP/2 connection inside every HTTP/1 one. Here the detection reads
/// once, up to `SNIFF_READ` bytes, and hyper's parser gets them all in its first read. The
/// HTTP/1 connection lives inline (it is `Unpin`), the rare HTTP/2 one in a box.
// The large variant is the one a connection spends its life in; boxing it would add an
// allocation per connection and save nothing (the sniffing state lasts one read).
#[allow(clippy::large_enum_variant)]
enum Serving<'b, T, S>
where
    S: hyper::service::HttpService<Incoming>,
{
    Sniffing {
        builder: &'b ConnBuilder,
        parts: Option<(TrackedIo<T>, S)>,
        prefix: Vec<u8>,
    },
    Http1(http1::UpgradeableConnection<ConnIo<T>, S>),
    Http2(Pin<Box<http2::Connection<ConnIo<T>, S, TokioExecutor>>>),
    Ended,
}

impl<'b, T, S, B> Serving<'b, T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn new(builder: &'b ConnBuilder, io: TrackedIo<T>, service: S) -> Self {
        Serving::Sniffing {
            builder,
            parts: Some((io, service)),
            prefix: Vec::new(),
        }
    }

    /// HTTP/1: close after the response in progress, if any; HTTP/2: GOAWAY. A connection
    /// still being sniffed has sent no complete request: it just ends.
    fn graceful_shutdown(&mut self) {
        match self {
            Serving::Http1(c) => Pin::new(c).graceful_shutdown(),
            Serving::Http2(c) => c.as_mut().graceful_shutdown(),
            Serving::Sniffing { .. } => *self = Serving::Ended,
            Serving::Ended => {}
        }
    }
}

impl<T, S, B> std::future::Future for Serving<'_, T, S>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Output = Result<(), Box<dyn std::error::Error + Send + Sync>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match this {
                Serving::Sniffing {
                    builder,
                    parts,
                    prefix,
                } => {
                    let builder: &ConnBuilder = builder;
                    let Some((io, _)) = parts.as_mut() else {
                        *this = Serving::Ended;
                        continue;
                    };
                    let sniffed = match std::task::ready!(io.poll_sniff(cx, prefix)) {
                        Ok(v) => v,
                        Err(e) => {
                            *this = Serving::Ended;
                            return Poll::Ready(Err(e.into()));
                        }
                    };
                    let Some((io, service)) = parts.take() else {
                        continue;
                    };
                    *this = match sniffed {
                        Sniffed::Http1 => Serving::Http1(
                            builder
                                .h1
                                .serve_connection(TokioIo::new(io), service)
                                .with_upgrades(),
                        ),
                        Sniffed::Http2 => {
                            io.state.proto.store(PROTO_H2, Ordering::Relaxed);
                            Serving::Http2(Box::pin(
                                builder.h2.serve_connection(TokioIo::new(io), service),
                            ))
                        }
                    };
                }
                Serving::Http1(c) => return Pin::new(c).poll(cx).map_err(Into::into),
                Serving::Http2(c) => return c.as_mut().poll(cx).map_err(Into::into),
                Serving::Ended => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Serves one accepted client connection until it ends, is timed out, or drained.
pub async fn serve_connection<T>(
    proxy: Arc<Proxy>,
    builder: Arc<ConnBuilder>,
    io: T,
    peer: SocketAddr,
    scheme: &'static str,
    drain: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_on(proxy, builder, io, peer, scheme, drain, None).await
}

/// [`serve_connection`] for a connection accepted by an HTTP frontend (`frontend` set).
pub async fn serve_connection_on<T>(
    proxy: Arc<Proxy>,
    builder: Arc<ConnBuilder>,
    io: T,
    peer: SocketAddr,
    scheme: &'static str,
    drain: watch::Receiver<bool>,
    frontend: Option<Arc<super::frontends::FrontendConn>>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ConnLimits::of(&proxy.settings.timeouts);
    let accepted = Accepted { peer, frontend };
    supervise(&builder, io, accepted, limits, drain, move |state| {
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let proxy = proxy.clone();
            let conn = state.clone();
            conn.request_started();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer, scheme, conn).await) }
        })
    })
    .await;
}

/// Who a supervised connection is with.
pub struct Accepted {
    pub peer: SocketAddr,
    /// Set when an HTTP frontend accepted it (routed by its rules).
    pub frontend: Option<Arc<super::frontends::FrontendConn>>,
}

/// The timeouts a supervised connection obeys.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A request head must arrive within this once it started (then 408).
    pub client_header: Duration,
    /// A connection idle this long is closed (between requests only).
    pub idle: Duration,
    /// Once draining, a connection idle this long since the drain began (or since its last
    /// request, if later) is closed; the idle timeout still applies if it comes first.
    pub drain: Duration,
}

impl ConnLimits {
    pub fn of(t: &crate::model::config::Timeouts) -> Self {
        ConnLimits {
            client_header: t.client_header,
            idle: t.idle,
            drain: t.drain,
        }
    }
}

/// Runs one HTTP/1.1 or h2c connection with the service `make_service` builds from the
/// connection's shared state, until it ends, is timed out or drained. The service must call
/// [`ConnState::request_started`] for each request and [`ConnState::request_done`] when its
/// response ends, and add `Connection: close` to HTTP/1 responses while
/// [`ConnState::draining`].
pub async fn supervise<T, S, B>(
    builder: &ConnBuilder,
    io: T,
    accepted: Accepted,
    limits: ConnLimits,
    mut drain: watch::Receiver<bool>,
    make_service: impl FnOnce(Arc<ConnState>) -> S,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + Unpin
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Accepted { peer, frontend } = accepted;
    let state = Arc::new(ConnState::new(peer, frontend));
    let service = make_service(state.clone());
    let mut conn = Serving::new(builder, TrackedIo::new(io, state.clone()), service);

    let header_ms = limits.client_header.as_millis() as u64;
    let idle_ms = limits.idle.as_millis() as u64;
    let drain_ms = limits.drain.as_millis() as u64;
    let linger_ms = LINGER.as_millis() as u64;
    // When the drain began (0: not draining). A connection idle at that moment gets the whole
    // drain timeout from then for a next request (answered with `Connection: close`): closing
    // it at once would race the very clients the drain's `Connection: close` answers just
    // sent to their other pooled connections.
    let mut drain_started = if *drain.borrow() { now_ms() } else { 0 };
    let mut drain_open = true;
    let mut shutdown_sent = false;
    // When an idle close was asked of the reader (0: not asked).
    let mut close_asked = 0u64;
    if drain_started != 0 {
        state.draining.store(true, Ordering::Relaxed);
    }
    // When a connection last active at `last` is closed for idleness.
    let idle_deadline = |last: u64, drain_started: u64| {
        if drain_started == 0 {
            last + idle_ms
        } else if IDLE_GRACE.load(Ordering::Relaxed) {
            (last + idle_ms).min(last.max(drain_started) + drain_ms)
        } else {
            (last + idle_ms).min(last.max(drain_started))
        }
    };
    loop {
        // Next moment something may be due; re-evaluated whenever the timer fires.
        let now = now_ms();
        let due = {
            let hs = state.head_started.load(Ordering::Relaxed);
            let last = state.last_active.load(Ordering::Relaxed);
            let mut due = idle_deadline(last, drain_started);
            if state.proto.load(Ordering::Relaxed) != PROTO_H2 {
                // A head may start arriving at any moment without waking this loop, so
                // without one in progress re-check within one header timeout.
                due = due.min(if hs != 0 {
                    hs + header_ms
                } else {
                    now + header_ms
                });
            }
            if close_asked != 0 {
                due = due.min(close_asked + linger_ms);
            }
            due.max(now + 5)
        };
        let sleep = tokio::time::sleep(Duration::from_millis(due - now));
        // Biased: the connection first, so bytes that arrived together with a timer are
        // read (and seen by the checks below) before the timer is acted on.
        tokio::select! {
            biased;
            res = &mut conn => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            changed = drain.changed(), if drain_open => {
                if changed.is_err() {
                    drain_open = false;
                }
                if (*drain.borrow() || changed.is_err()) && drain_started == 0 {
                    drain_started = now_ms();
                    state.draining.store(true, Ordering::Relaxed);
                    if state.proto.load(Ordering::Relaxed) == PROTO_H2 && !shutdown_sent {
                        shutdown_sent = true;
                        conn.graceful_shutdown();
                    }
                }
            }
            _ = sleep => {
                let now = now_ms();
                if close_asked != 0 {
                    if state.closing.load(Ordering::Acquire) != CLOSE_NONE {
                        // Closing (or lingering for the client's FIN): bounded.
                        if now >= close_asked + linger_ms {
                            tracing::debug!(%peer, "idle connection closed (linger over)");
                            return;
                        }
                        continue;
                    }
                    // A next request arrived before the close: it is being served.
                    close_asked = 0;
                }
                if state.inflight.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                let hs = state.head_started.load(Ordering::Relaxed);
                let h2 = state.proto.load(Ordering::Relaxed) == PROTO_H2;
                if hs != 0 && !h2 {
                    if now >= hs + header_ms {
                        tracing::debug!(%peer, "request head not received in time; 408");
                        state.timed_out.store(true, Ordering::Relaxed);
                        state.read_waker.wake();
                        // Let hyper observe EOF and finish; bounded in case it does not.
                        let _ = tokio::time::timeout(Duration::from_secs(1), &mut conn).await;
                        return;
                    }
                    continue;
                }
                let last = state.last_active.load(Ordering::Relaxed);
                if now >= idle_deadline(last, drain_started) {
                    if h2 {
                        if !shutdown_sent {
                            shutdown_sent = true;
                            conn.graceful_shutdown();
                            continue;
                        }
                        tracing::debug!(%peer, "closing idle connection");
                        return;
                    }
                    // HTTP/1: never close under a request that may be arriving; the reader
                    // ends the connection only if the socket is empty when it next looks.
                    tracing::debug!(%peer, "closing idle connection");
                    state.closing.store(CLOSE_ASKED, Ordering::Release);
                    state.read_waker.wake();
                    close_asked = now;
                }
            }
        }
    }
}

/// `TCP_NODELAY` for accepted connections without a `setsockopt` per connection: Linux
/// copies the option from the listening socket to every socket `accept` returns, so it is set
/// once on the listener. Whether it carried over is checked on the first connection (one
/// `getsockopt`); where it did not, every connection gets its own `setsockopt` as before.
enum NoDelay {
    /// Not known yet (no connection accepted).
    Unchecked,
    /// Accepted sockets come with it.
    Inherited,
    /// Set on each accepted socket.
    PerConnection,
}

impl NoDelay {
    fn on_listener(listener: &TcpListener) -> Self {
        match socket2::SockRef::from(listener).set_nodelay(true) {
            Ok(()) => NoDelay::Unchecked,
            Err(_) => NoDelay::PerConnection,
        }
    }

    fn accepted(&mut self, stream: &tokio::net::TcpStream) {
        match self {
            NoDelay::Inherited => {}
            NoDelay::PerConnection => {
                let _ = stream.set_nodelay(true);
            }
            NoDelay::Unchecked => {
                if stream.nodelay().unwrap_or(false) {
                    *self = NoDelay::Inherited;
                } else {
                    let _ = stream.set_nodelay(true);
                    *self = NoDelay::PerConnection;
                }
            }
        }
    }
}

/// Delayed ACKs on HTTP connections from their first request on: `TCP_QUICKACK` off on the
/// listening socket, which Linux copies to every socket `accept` returns (as HAProxy does
/// for its HTTP listeners).
///
/// Why: a new connection starts in quick-ACK mode, so the kernel acknowledges the request
/// at once with a segment of its own, although the response (or, on TLS, the next handshake
/// flight) follows as soon as the backend answers and would carry the ACK. On the loopback
/// bench that was one pure ACK more per new connection than HAProxy (`tcpdump`: 1.99 vs 1.02
/// from the proxy per connection), sent and received on the load generator's CPU. Cost: a
/// client that sends two small writes with Nagle on may see its second wait for the delayed
/// ACK once (the kernel leaves this mode when the delayed-ACK timer fires). Best effort: a
/// listener that refuses the option keeps quick ACKs.
pub fn delay_acks(listener: &TcpListener) {
    if let Err(e) = socket2::SockRef::from(listener).set_quickack(false) {
        tracing::debug!(error = %e, "TCP_QUICKACK off refused on a listener");
    }
}

/// Serves plain HTTP on `listener` until `stop` turns true, then drains (see
/// [`accept_loop`]).
pub async fn serve_http(proxy: Arc<Proxy>, listener: TcpListener, stop: watch::Receiver<bool>) {
    delay_acks(&listener);
    let builder = Arc::new(connection_builder(&proxy));
    let drain = proxy.settings.timeouts.drain;
    accept_loop(
        listener,
        stop,
        drain,
        "connections",
        move |stream, peer, drain_rx| {
            serve_connection(
                proxy.clone(),
                builder.clone(),
                super::net::SendStream::new(stream),
                peer,
                "http",
                drain_rx,
            )
        },
    )
    .await;
}

/// The accept loop every listener runs (HTTP, HTTPS, and any other frontend): accepts until
/// `stop` turns true, gives every connection `TCP_NODELAY` ([`NoDelay`]), runs `serve` for
/// each connection in its own task (handing it a receiver that turns true when the listener
/// drains), backs off briefly when accept fails (EMFILE and friends) instead of spinning.
/// After `stop`: closes the listener, tells the connections to drain and waits for them,
/// bounded by `drain` (+ `LINGER` + 1 s).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    drain: Duration,
    what: &'static str,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept_loop_until(listener, stop, drain, what, serve, None).await
}

/// [`accept_loop`] that says on `closed` when the listening socket is closed (before the
/// connections drain): a removed frontend's port is free at that moment.
pub async fn accept_loop_until<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    what: &'static str,
    serve: F,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tracker = Arc::new(ConnTracker::default());
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut nodelay = NoDelay::on_listener(&listener);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        nodelay.accepted(&stream);
                        let guard = tracker.enter();
                        let conn = serve(stream, peer, drain_rx.clone());
                        tokio::spawn(async move {
                            conn.await;
                            drop(guard);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    if let Some(c) = closed {
        let _ = c.send(());
    }
    let _ = drain_tx.send(true);
    // Idle connections close at the drain timeout, then linger for the client's FIN.
    if tokio::time::timeout(drain + LINGER + Duration::from_secs(1), tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.live(),
            "drain timeout passed; closing remaining {what}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// With [`delay_acks`] on the listener, accepted sockets start without quick ACKs (the
    /// request's ACK rides on the response); without it they start with them.
    #[tokio::test]
    async fn accepted_sockets_delay_acks() {
        for delayed in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            if delayed {
                delay_acks(&listener);
            }
            let addr = listener.local_addr().unwrap();
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let quick = socket2::SockRef::from(&stream).quickack().unwrap();
            assert_eq!(quick, !delayed, "delayed ACKs on the listener: {delayed}");
        }
    }

    /// Every accepted socket has `TCP_NODELAY`: the first is checked (inherited from the
    /// listener on Linux), the rest take the same way without a syscall of their own.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut nodelay = NoDelay::on_listener(&listener);
        for i in 0..3 {
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            nodelay.accepted(&stream);
            assert!(stream.nodelay().unwrap(), "connection {i}");
            assert!(!matches!(nodelay, NoDelay::Unchecked), "connection {i}");
        }
        // Where the option does not carry over, each connection gets it set.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut nodelay = NoDelay::PerConnection;
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        nodelay.accepted(&stream);
        assert!(stream.nodelay().unwrap());
    }

    /// The detection keeps exactly the bytes the client sent, in order, whatever hyper's read
    /// sizes afterwards, and tells the HTTP/2 preface (whole or in pieces) from HTTP/1, a
    /// near-miss of the preface, a truncated preface and an empty stream.
    #[tokio::test]
    async fn sniffing_keeps_bytes_and_order() {
        let h1: Vec<u8> = b"GET /a HTTP/1.1\r\nhost: app.test\r\nx-long: "
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'x', 5000))
            .chain(*b"\r\n\r\n")
            .collect();
        let h2: Vec<u8> = H2_PREFACE.iter().copied().chain(*b"\0\0\0\x04").collect();
        let cases: [(&[u8], &[usize], Sniffed); 7] = [
            (&h1, &[usize::MAX], Sniffed::Http1),
            (&h1, &[2, usize::MAX], Sniffed::Http1),
            (&h2, &[usize::MAX], Sniffed::Http2),
            (&h2, &[3, 9, 1, usize::MAX], Sniffed::Http2),
            (b"PRI * HTTP/1.1\r\n\r\n", &[usize::MAX], Sniffed::Http1),
            (b"PRI * HTT", &[4, usize::MAX], Sniffed::Http1),
            (b"", &[], Sniffed::Http1),
        ];
        for (input, pieces, want) in cases {
            for sizes in [[24usize, 8192], [1, 3], [9000, 9000]] {
                let (mut client, server) = tokio::io::duplex(64 * 1024);
                let (sent, pieces) = (input.to_vec(), pieces.to_vec());
                let writer = tokio::spawn(async move {
                    let mut at = 0;
                    for p in pieces {
                        let end = at + p.min(sent.len() - at);
                        client.write_all(&sent[at..end]).await.unwrap();
                        at = end;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    // Dropping `client` ends the stream.
                });
                let state = Arc::new(ConnState::new("127.0.0.1:1".parse().unwrap(), None));
                let mut io = TrackedIo::new(server, state);
                let mut prefix = Vec::new();
                let got_version = std::future::poll_fn(|cx| io.poll_sniff(cx, &mut prefix))
                    .await
                    .unwrap();
                let shown = String::from_utf8_lossy(&input[..input.len().min(20)]).into_owned();
                assert_eq!(got_version, want, "{shown:?}");
                writer.await.unwrap();
                let mut got = Vec::new();
                let mut i = 0;
                loop {
                    let mut buf = vec![0u8; sizes[i % 2]];
                    i += 1;
                    let n = io.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                assert_eq!(got, input, "{shown:?}, read sizes {sizes:?}");
            }
        }
    }
}
