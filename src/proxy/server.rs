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
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
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
/// Read-ahead (plain TCP only): hyper's version detection (`auto`, h1 or h2c prior knowledge)
/// first reads just 24 bytes, then the h1 parser reads the rest of the head: two `recvfrom`
/// per new connection. The first read therefore asks the socket for up to `READ_AHEAD` bytes
/// and keeps what the caller had no room for in `ahead`, served by the next reads without a
/// syscall. Nothing is parsed or changed here: the same bytes arrive in the same order.
struct TrackedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    first: bool,
    /// The first read has yet to happen and should read ahead.
    read_ahead: bool,
    /// Bytes read ahead and not yet handed out.
    ahead: Option<bytes::Bytes>,
    /// Our write side is shut down (idle close: now reading until the client's FIN).
    shut: bool,
}

/// How much the first read of a plain-TCP connection asks for (a typical request head fits).
const READ_AHEAD: usize = 4096;

impl<T: AsyncRead + Unpin> TrackedIo<T> {
    fn new(inner: T, state: Arc<ConnState>, read_ahead: bool) -> Self {
        Self {
            inner,
            state,
            first: true,
            read_ahead,
            ahead: None,
            shut: false,
        }
    }

    /// Reads from the read-ahead bytes first, then from the socket.
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
        if self.read_ahead && buf.remaining() < READ_AHEAD {
            let mut store = [std::mem::MaybeUninit::<u8>::uninit(); READ_AHEAD];
            let mut tmp = ReadBuf::uninit(&mut store);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut tmp))?;
            self.read_ahead = false;
            let got = tmp.filled();
            let n = got.len().min(buf.remaining());
            buf.put_slice(&got[..n]);
            if got.len() > n {
                self.ahead = Some(bytes::Bytes::copy_from_slice(&got[n..]));
            }
            return Poll::Ready(Ok(()));
        }
        self.read_ahead = false;
        Pin::new(&mut self.inner).poll_read(cx, buf)
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

/// Builds the hyper connection builder once per listener.
pub fn connection_builder(proxy: &Proxy) -> auto::Builder<TokioExecutor> {
    let s = &proxy.settings;
    let mut b = auto::Builder::new(TokioExecutor::new());
    // No hyper header-read timeout: `serve_connection`'s supervisor enforces the client
    // header timeout (and answers 408); hyper's would arm a boxed timer on every request.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(s.max_header_size.max(8192))
        .writev(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(s.max_header_size as u32)
        .max_concurrent_streams(256);
    b
}

/// Serves one accepted client connection until it ends, is timed out, or drained.
pub async fn serve_connection<T>(
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
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
    builder: Arc<auto::Builder<TokioExecutor>>,
    io: T,
    peer: SocketAddr,
    scheme: &'static str,
    drain: watch::Receiver<bool>,
    frontend: Option<Arc<super::frontends::FrontendConn>>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ConnLimits::of(&proxy.settings.timeouts);
    // A TLS stream already hands out decrypted records from its own buffer.
    let read_ahead = scheme == "http";
    let accepted = Accepted {
        peer,
        frontend,
        read_ahead,
    };
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
    /// Read ahead on the first read (plain TCP; a TLS stream buffers records itself).
    pub read_ahead: bool,
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
    builder: &auto::Builder<TokioExecutor>,
    io: T,
    accepted: Accepted,
    limits: ConnLimits,
    mut drain: watch::Receiver<bool>,
    make_service: impl FnOnce(Arc<ConnState>) -> S,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Accepted {
        peer,
        frontend,
        read_ahead,
    } = accepted;
    let state = Arc::new(ConnState::new(peer, frontend));
    let io = TokioIo::new(TrackedIo::new(io, state.clone(), read_ahead));
    let service = make_service(state.clone());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

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
            res = conn.as_mut() => {
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
                        conn.as_mut().graceful_shutdown();
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
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.as_mut()).await;
                        return;
                    }
                    continue;
                }
                let last = state.last_active.load(Ordering::Relaxed);
                if now >= idle_deadline(last, drain_started) {
                    if h2 {
                        if !shutdown_sent {
                            shutdown_sent = true;
                            conn.as_mut().graceful_shutdown();
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

/// Serves plain HTTP on `listener` until `stop` turns true, then drains (see
/// [`accept_loop`]).
pub async fn serve_http(proxy: Arc<Proxy>, listener: TcpListener, stop: watch::Receiver<bool>) {
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
/// `stop` turns true, sets `TCP_NODELAY`, runs `serve` for each connection in its own task
/// (handing it a receiver that turns true when the listener drains), backs off briefly when
/// accept fails (EMFILE and friends) instead of spinning. After `stop`: closes the listener,
/// tells the connections to drain and waits for them, bounded by `drain` (+ `LINGER` + 1 s).
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
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
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

    /// Read-ahead hands out exactly the bytes the socket delivered, in order, whatever the
    /// callers' buffer sizes (hyper's 24-byte version probe, then its parser's reads).
    #[tokio::test]
    async fn read_ahead_keeps_bytes_and_order() {
        let head: Vec<u8> = b"GET /a HTTP/1.1\r\nhost: app.test\r\nx-long: "
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'x', 5000))
            .chain(*b"\r\n\r\n")
            .collect();
        for sizes in [[24usize, 8192], [1, 3], [4096, 7], [9000, 9000]] {
            let (mut client, server) = tokio::io::duplex(64 * 1024);
            client.write_all(&head).await.unwrap();
            drop(client);
            let state = Arc::new(ConnState::new("127.0.0.1:1".parse().unwrap(), None));
            let mut io = TrackedIo::new(server, state, true);
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
            assert_eq!(got, head, "read sizes {sizes:?}");
        }
    }
}
