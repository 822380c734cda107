//! Client-side connections: the accept loop, HTTP/1.1 + h2c (prior knowledge) per connection,
//! and a per-connection supervisor that enforces the header-read (slowloris) and idle
//! timeouts and drains without racing keep-alive clients (house rule 7): while draining,
//! HTTP/1 responses carry `Connection: close`, HTTP/2 gets GOAWAY, and only connections idle
//! for the drain timeout since the drain began are closed. An idle HTTP/1 connection is closed only between
//! requests: the reader hands hyper an end-of-stream only when the socket has nothing for it
//! at that instant (bytes of a next request that already arrived are served instead), then
//! the socket is half-closed and read until the client closes too, so a request sent in the
//! same instant meets a clean close, never a reset. An HTTP/1 connection idle between
//! requests for [`PARK_AFTER`] is parked through the same kind of hand-off: hyper's connection
//! ends without closing the socket and is dropped with its buffers, and the next bytes build a
//! new one (bytes hyper had read of a next head are handed over). The proxy and the API use
//! the same supervisor ([`supervise`]).
//!
//! During an upgrade whose successor takes connections ([`hand_over_to`]), the drain first
//! tries the same hand-off once more: a plain-HTTP/1 connection of the main listener is parked
//! at its next request boundary and its socket sent to the successor
//! ([`crate::lifecycle::conns`]), which serves it as if it had accepted it (its accept loop
//! takes them, [`accept_loop_until`]). Until then its answers stay keep-alive; if it is never
//! between requests within [`HANDOVER_WAIT_MS`], or cannot be sent, it drains as above.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
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

use super::drain::DrainRx;
use super::net::TailWrites;
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
/// Park states (same field, [`PARK_AFTER`]): asked (the next read that finds the socket empty,
/// with no write blocked, hands hyper an end of stream); committed (handed out: hyper ends
/// without shutting the socket down, and its connection is taken apart).
const PARK_ASKED: u8 = 3;
const PARK_COMMITTED: u8 = 4;
/// Hand-over asked (draining with a successor that takes connections, [`hand_over_to`]): like
/// `PARK_ASKED`, but it stays asked across requests until the reader finds the connection
/// between requests (then `PARK_COMMITTED`, and the parked connection is sent).
const HANDOVER_ASKED: u8 = 5;
/// How long a connection may stay asked for the hand-over (never between requests at a read:
/// a client pipelining without pause) before it is drained the old way instead.
const HANDOVER_WAIT_MS: u64 = 1000;
/// How often the supervisor wakes the reader of a connection asked for the hand-over.
const HANDOVER_POKE_MS: u64 = 100;

/// The successor that takes this process's keep-alive connections while it drains (set once,
/// when an upgrade succeeded with a successor that takes them).
static HANDOVER: OnceLock<crate::lifecycle::conns::ConnSender> = OnceLock::new();

/// From now on, draining plain-HTTP/1 connections of the main listener (and of the HTTP
/// frontends the successor named, [`crate::lifecycle::conns`]) are sent to the successor at
/// their next request boundary instead of being answered `Connection: close` (issue 23: their
/// clients would otherwise all reconnect at once). A connection that cannot be sent is
/// drained as before.
pub fn hand_over_to(sender: crate::lifecycle::conns::ConnSender) {
    let _ = HANDOVER.set(sender);
}

/// Listener name of the main plain-HTTP listener in hand-over messages.
const HANDOVER_LISTENER: &str = "http";
/// Prefix of an HTTP frontend's name in hand-over messages (`frontend NAME`).
const HANDOVER_FRONTEND: &str = "frontend ";

/// The name a connection goes by in hand-over messages: the main listener's, or its HTTP
/// frontend's (allocated only while draining).
fn handover_name(state: &ConnState) -> std::borrow::Cow<'static, str> {
    match &state.frontend {
        None => HANDOVER_LISTENER.into(),
        Some(fc) => frontend_handover_name(&fc.name).into(),
    }
}

/// HTTP frontend `name`'s name in hand-over messages (`frontend NAME`).
fn frontend_handover_name(name: &str) -> String {
    format!("{HANDOVER_FRONTEND}{name}")
}

/// In a successor, until the previous process closes its connection socket: each HTTP
/// frontend's inbox, by its name in hand-over messages, for the connections handed over to it
/// (the main listener's loop receives them all and passes these on). `None` in a process
/// started without a previous one, and once the socket closed (the frontends' loops then stop
/// waiting for more).
static FRONTEND_INBOX: std::sync::Mutex<Option<HashMap<String, FrontendInbox>>> =
    std::sync::Mutex::new(None);

type FrontendInbox = tokio::sync::mpsc::UnboundedSender<(tokio::net::TcpStream, SocketAddr)>;

/// Runs `f` on the frontends' inboxes (`None` if the lock was poisoned).
fn with_inboxes<R>(f: impl FnOnce(&mut Option<HashMap<String, FrontendInbox>>) -> R) -> Option<R> {
    FRONTEND_INBOX
        .lock()
        .ok()
        .map(|mut inboxes| f(&mut inboxes))
}

/// A successor opens the frontends' inboxes before it starts its frontends (see
/// [`FRONTEND_INBOX`]).
pub fn open_frontend_inboxes() {
    with_inboxes(|i| *i = Some(HashMap::new()));
}

/// The previous process's socket closed: no frontend connection comes any more.
fn close_frontend_inboxes() {
    with_inboxes(|i| *i = None);
}

/// The inbox of HTTP frontend `name` in a successor (its first listener's accept loop takes
/// what arrives there); `None` when inboxes are not open or the frontend has one already.
pub fn frontend_inbox(name: &str) -> Option<Handed> {
    with_inboxes(|i| {
        let inboxes = i.as_mut()?;
        let key = frontend_handover_name(name);
        if inboxes.contains_key(&key) {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        inboxes.insert(key, tx);
        Some(Handed::Inbox(rx))
    })
    .flatten()
}

/// The names, as hand-over messages give them, of the HTTP frontends with an inbox: what a
/// successor tells the previous process it takes ([`crate::lifecycle::conns::announce`]).
pub fn frontend_inbox_names() -> Vec<String> {
    with_inboxes(|i| i.iter().flat_map(|m| m.keys().cloned()).collect()).unwrap_or_default()
}

/// Prefix of an idle upstream connection's name in hand-over messages (`upstream ADDR`).
const HANDOVER_UPSTREAM: &str = "upstream ";

/// The main listener's proxy, whose idle upstream connections go along with the client
/// connections handed over (set by [`serve_http`]).
static UPSTREAM_DONOR: OnceLock<std::sync::Weak<Proxy>> = OnceLock::new();

/// Sends one idle upstream connection ahead of a client connection: the successor adds it to
/// its pool before it serves the client, whose next request then finds it there instead of
/// connecting (the backend sees no new connection either). Best effort: one that cannot be
/// sent is closed, as it would have been at this process's exit.
fn send_upstream_along(sender: &crate::lifecycle::conns::ConnSender) {
    let Some(proxy) = UPSTREAM_DONOR.get().and_then(std::sync::Weak::upgrade) else {
        return;
    };
    let Some((authority, conn)) = proxy.upstream().take_idle_direct() else {
        return;
    };
    let Some(fd) = conn.idle_fd() else { return };
    let name = format!("{HANDOVER_UPSTREAM}{authority}");
    if let Err(e) = sender.send(&name, fd) {
        tracing::debug!(error = %e, %authority, "idle upstream connection not handed over");
    }
}
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

/// How a client connection reached the proxy (forwarded headers, routing by scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Shared state of one client connection, updated by the IO wrapper and the request handler.
#[derive(Debug)]
pub struct ConnState {
    inflight: AtomicU32,
    last_active: AtomicU64,
    head_started: AtomicU64,
    /// When the drain began (`now_ms`; 0: not draining). Kept here rather than in the
    /// supervisor loop, whose state every idle connection's task holds.
    drain_started: AtomicU64,
    timed_out: AtomicBool,
    /// The response in flight is the connection's last: the request asked to close, or the
    /// response says so (draining). Its bytes go out with the FIN once its body has ended.
    last_response: AtomicBool,
    proto: AtomicU8,
    /// Idle close or park in progress (`CLOSE_*`, `PARK_*`).
    closing: AtomicU8,
    /// How many times the connection was parked ([`PARK_AFTER`]).
    parks: AtomicU32,
    /// The connection may be handed to a successor (plain TCP on the main HTTP listener, no
    /// tunnel asked for: cleared for good by an upgrade or CONNECT request).
    portable: AtomicBool,
    read_waker: AtomicWaker,
    /// The client's IP as a header value, formatted once per connection (forwarded headers).
    pub peer_ip: Option<http::HeaderValue>,
    /// The client's address and port: here, not in the connection's task or its service
    /// (`peer_addr`; issue 23: each idle connection's task fits a smaller size class).
    peer_host: IpAddr,
    peer_port: u16,
    /// How the client reached us (`scheme`).
    scheme: Scheme,
    /// Set when the connection was accepted by an HTTP frontend (routed by its rules).
    pub frontend: Option<Arc<super::frontends::FrontendConn>>,
}

impl ConnState {
    fn new(
        peer: SocketAddr,
        scheme: Scheme,
        frontend: Option<Arc<super::frontends::FrontendConn>>,
    ) -> Self {
        Self {
            frontend,
            peer_ip: super::headers::peer_header_value(peer.ip()),
            peer_host: peer.ip(),
            peer_port: peer.port(),
            scheme,
            inflight: AtomicU32::new(0),
            last_active: AtomicU64::new(now_ms()),
            head_started: AtomicU64::new(0),
            drain_started: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            last_response: AtomicBool::new(false),
            proto: AtomicU8::new(PROTO_UNKNOWN),
            closing: AtomicU8::new(CLOSE_NONE),
            parks: AtomicU32::new(0),
            portable: AtomicBool::new(false),
            read_waker: AtomicWaker::new(),
        }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> SocketAddr {
        SocketAddr::new(self.peer_host, self.peer_port)
    }

    /// `https` for a connection accepted over TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        self.scheme.as_str()
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
        if self.closing.load(Ordering::Relaxed) == HANDOVER_ASKED {
            // hyper may have looked for the next request before this: look again, now that
            // the connection is between requests.
            self.read_waker.wake();
        }
    }

    /// The request may turn the connection into a tunnel (an upgrade, CONNECT): it is never
    /// handed to a successor (its reader must never hand anyone an end of stream).
    pub fn may_tunnel(&self) {
        self.portable.store(false, Ordering::Relaxed);
        self.withdraw_hand_over();
    }

    /// A hand-over asked of the reader is withdrawn (any other close or park state stays).
    fn withdraw_hand_over(&self) {
        let _ = self.closing.compare_exchange(
            HANDOVER_ASKED,
            CLOSE_NONE,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    /// The response to the request in flight ends the connection (hyper closes it once the
    /// response is written: the request said `Connection: close`, or the response will). Call
    /// only when that is certain: its last bytes wait for the shutdown.
    pub fn last_response(&self) {
        self.last_response.store(true, Ordering::Relaxed);
    }

    /// Whether what is written now are the connection's last bytes: its last response, whose
    /// body has ended (so the shutdown follows the write, nothing else is awaited).
    fn writing_tail(&self) -> bool {
        self.last_response.load(Ordering::Relaxed) && self.inflight.load(Ordering::Relaxed) == 0
    }

    /// Whether responses should ask the client to close (process draining).
    pub fn draining(&self) -> bool {
        self.drain_started.load(Ordering::Relaxed) != 0
    }

    /// The drain began now.
    fn start_drain(&self) {
        self.drain_started.store(now_ms(), Ordering::Relaxed);
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
    /// The last write or flush found the socket full: hyper may hold unsent bytes, so the
    /// connection is not parked.
    write_blocked: bool,
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

impl<T: AsyncRead + AsyncWrite + TailWrites + Unpin> TrackedIo<T> {
    fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            first: true,
            ahead: None,
            shut: false,
            write_blocked: false,
        }
    }

    /// Tells the transport whether what is written now are the connection's last bytes
    /// ([`ConnState::writing_tail`]).
    fn mark_tail(&mut self) {
        let tail = self.state.writing_tail();
        self.inner.tail_writes(tail);
    }

    /// One read of up to `SNIFF_READ` bytes into a stack buffer (so nothing is held while
    /// waiting), through this wrapper's own `poll_read` (the header timeout and idle close see
    /// it); `None`: end of stream.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<Option<bytes::Bytes>>> {
        let mut store = [std::mem::MaybeUninit::<u8>::uninit(); SNIFF_READ];
        let mut chunk = ReadBuf::uninit(&mut store);
        std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut chunk))?;
        let got = chunk.filled();
        Poll::Ready(Ok(
            (!got.is_empty()).then(|| bytes::Bytes::copy_from_slice(got))
        ))
    }

    /// A parked connection's wait: one [`Self::poll_chunk`]; what arrived goes to `ahead` for
    /// the next hyper connection. `false`: end of stream (the client's, or the idle close's
    /// hand-off).
    fn poll_unpark(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let got = std::task::ready!(self.poll_chunk(cx))?;
        let more = got.is_some();
        self.ahead = got;
        Poll::Ready(Ok(more))
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
            let Some(got) = std::task::ready!(self.poll_chunk(cx))? else {
                if !prefix.is_empty() {
                    self.ahead = Some(bytes::Bytes::from(std::mem::take(prefix)));
                }
                return Poll::Ready(Ok(Sniffed::Http1));
            };
            let seen = if prefix.is_empty() {
                got
            } else {
                prefix.extend_from_slice(&got);
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

impl<T: AsyncRead + AsyncWrite + TailWrites + Unpin> AsyncRead for TrackedIo<T> {
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
        if closing == CLOSE_COMMITTED || closing == PARK_COMMITTED {
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
        } else if closing == PARK_ASKED || closing == HANDOVER_ASKED {
            match &res {
                // Nothing has arrived, nothing is in flight or waiting to be sent: hyper gets
                // an end of stream and ends between requests, leaving the socket open
                // (`poll_shutdown`); the supervisor takes its connection apart. Bytes sent
                // from now on wait in the socket for the parked connection's read.
                Poll::Pending
                    if !this.write_blocked
                        && this.state.inflight.load(Ordering::Relaxed) == 0
                        && this.state.head_started.load(Ordering::Relaxed) == 0 =>
                {
                    this.state.closing.store(PARK_COMMITTED, Ordering::Release);
                    return Poll::Ready(Ok(()));
                }
                // Bytes arrived, or hyper is not between requests: not now (a hand-over stays
                // asked for the next boundary).
                _ if closing == PARK_ASKED => {
                    this.state.closing.store(CLOSE_NONE, Ordering::Release)
                }
                _ => {}
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

impl<T: AsyncRead + AsyncWrite + TailWrites + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.mark_tail();
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.write_blocked = res.is_pending();
        res
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.mark_tail();
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.write_blocked = res.is_pending();
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A TLS stream writes its pending records here.
        self.mark_tail();
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        self.write_blocked = res.is_pending();
        res
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.state.closing.load(Ordering::Acquire) == PARK_COMMITTED {
            // hyper ending for a park (everything flushed): the socket stays open.
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.shut {
            // A TLS stream writes its close_notify here, before the FIN.
            this.mark_tail();
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
    /// Counts one more live connection until the guard drops. Its memory comes and goes:
    /// noted for the allocator's housekeeping ([`super::conn_memory`]), as is its end.
    pub fn enter(self: &Arc<Self>) -> ConnGuard {
        super::conn_memory::note_activity();
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
        super::conn_memory::note_activity();
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

/// How long an HTTP/1 connection waits between requests (nothing in flight, no head arriving,
/// the response flushed) before it is parked: hyper's connection is ended without closing the
/// socket and dropped with everything it holds (its 8 KiB read and write buffers, the slot for
/// the request future), and the connection waits for its next bytes holding no buffer
/// ([`Stage::Parked`]). hyper 1.x keeps those buffers for the whole life of an idle keep-alive
/// connection and cannot be told to let them go. Half a second: a client that sends a request
/// more often than twice a second never parks (a hot keep-alive connection pays nothing: the
/// supervisor looks at most twice a second), and a parked connection's next request pays only
/// a new hyper connection (a few allocations), small beside the half second it waited.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(500);

/// One client connection's hyper side: first the protocol detection, then hyper's HTTP/1
/// (with upgrades) or HTTP/2 connection; an idle HTTP/1 connection is parked between requests
/// ([`PARK_AFTER`]).
///
/// Why not hyper-util's `auto` connection: it reads 24 bytes to tell the versions apart and
/// hands them back through a rewind wrapper, so hyper's HTTP/1 parser saw those 24 bytes alone,
/// found the head incomplete and grew its 8 KiB read buffer to 16 KiB (a realloc and an 8 KiB
/// copy per connection, and 16 KiB kept by every idle keep-alive connection); its state also
/// reserves room for an HTTP/2 connection inside every HTTP/1 one. Here the detection reads
/// once, up to `SNIFF_READ` bytes, and hyper's parser gets them all in its first read.
/// hyper's connection (either version) lives in a box, so a parked connection's task keeps
/// only the socket, the service and the supervisor's state.
struct Serving<T, S>
where
    S: hyper::service::HttpService<Incoming>,
{
    builder: Arc<ConnBuilder>,
    state: Arc<ConnState>,
    stage: Stage<T, S>,
}

enum Stage<T, S>
where
    S: hyper::service::HttpService<Incoming>,
{
    Sniffing {
        parts: Option<(TrackedIo<T>, S)>,
        prefix: Vec<u8>,
    },
    Http1(Box<http1::UpgradeableConnection<ConnIo<T>, S>>),
    Http2(Pin<Box<http2::Connection<ConnIo<T>, S, TokioExecutor>>>),
    /// HTTP/1 between requests with no hyper connection: the next bytes (read into a stack
    /// buffer, then handed to a new hyper HTTP/1 connection, never re-sniffed) unpark it; an
    /// end of stream (the client's, or the idle close's hand-off) closes it.
    Parked(Option<(TrackedIo<T>, S)>),
    /// Parked connection ending: our FIN, then (idle close) the linger for the client's.
    Closing(TrackedIo<T>),
    Ended,
}

impl<T, S, B> Serving<T, S>
where
    T: AsyncRead + AsyncWrite + TailWrites + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn new(builder: Arc<ConnBuilder>, state: Arc<ConnState>, io: TrackedIo<T>, service: S) -> Self {
        Serving {
            builder,
            state,
            stage: Stage::Sniffing {
                parts: Some((io, service)),
                prefix: Vec::new(),
            },
        }
    }

    /// HTTP/1: close after the response in progress, if any; HTTP/2: GOAWAY. A connection
    /// still being sniffed has sent no complete request: it just ends.
    fn graceful_shutdown(&mut self) {
        match &mut self.stage {
            Stage::Http1(c) => Pin::new(&mut **c).graceful_shutdown(),
            Stage::Http2(c) => c.as_mut().graceful_shutdown(),
            Stage::Sniffing { .. } => self.stage = Stage::Ended,
            Stage::Parked(_) | Stage::Closing(_) | Stage::Ended => {}
        }
    }

    /// Sends a parked connection to the successor ([`hand_over_to`]). `Ok(true)`: sent, and
    /// this process's copy is closed (the socket lives on in the successor); `Ok(false)`: not
    /// parked (nothing done); `Err`: not sent, the connection stays parked here.
    fn hand_over(&mut self) -> std::io::Result<bool> {
        let Stage::Parked(Some((io, _))) = &self.stage else {
            return Ok(false);
        };
        let Some(sender) = HANDOVER.get() else {
            return Ok(false);
        };
        if io.ahead.is_some() || io.shut {
            return Err(std::io::Error::other(
                "bytes of a request already read, or the connection is closing",
            ));
        }
        let Some(fd) = io.inner.handover_fd() else {
            return Err(std::io::Error::other("transport cannot be handed over"));
        };
        send_upstream_along(sender);
        sender.send(&handover_name(&self.state), fd)?;
        // Our descriptor closes here; the successor's keeps the connection open.
        self.stage = Stage::Ended;
        Ok(true)
    }

    /// Whether hyper's HTTP/1 connection is serving (so it can be parked).
    fn serving_http1(&self) -> bool {
        matches!(self.stage, Stage::Http1(_))
    }

    fn http1(&self, io: TrackedIo<T>, service: S) -> Stage<T, S> {
        Stage::Http1(Box::new(
            self.builder
                .h1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        ))
    }

    /// hyper's HTTP/1 connection ended with `res`. If it ended because the reader handed it
    /// the park's end of stream (`PARK_COMMITTED`), takes back the socket, the service and
    /// the bytes hyper read but did not consume, and parks (or, with such bytes, serves them
    /// at once with a new connection). Returns the connection's outcome otherwise.
    fn http1_ended(&mut self, res: hyper::Result<()>) -> Option<hyper::Result<()>> {
        if self.state.closing.load(Ordering::Acquire) != PARK_COMMITTED {
            self.stage = Stage::Ended;
            return Some(res);
        }
        self.state.closing.store(CLOSE_NONE, Ordering::Release);
        let Stage::Http1(conn) = std::mem::replace(&mut self.stage, Stage::Ended) else {
            return Some(res);
        };
        // `None`: upgraded (the end of stream was not ours to hand back).
        let parts = conn.into_parts()?;
        match res {
            // The end of stream between requests: hyper flushed and "shut down" (a no-op for
            // `PARK_COMMITTED`); its read buffer is empty.
            Ok(()) => {}
            // hyper held the first part of a next (pipelined) head and was reading the rest:
            // it reports an incomplete message and writes nothing (hyper's server answers only
            // parse errors, and the end of stream is not one). The bytes are in `read_buf`.
            Err(e) if e.is_incomplete_message() && !parts.read_buf.is_empty() => {}
            // The end of stream met hyper mid-message (cannot happen: a park is asked with no
            // request in flight and committed only then): end as hyper would have.
            Err(e) => return Some(Err(e)),
        }
        self.state.parks.fetch_add(1, Ordering::Relaxed);
        // hyper's connection was taken apart: its buffers are freed here (issue 23).
        super::conn_memory::note_activity();
        let mut io = parts.io.into_inner();
        if parts.read_buf.is_empty() {
            self.stage = Stage::Parked(Some((io, parts.service)));
        } else {
            io.ahead = Some(parts.read_buf);
            self.stage = self.http1(io, parts.service);
        }
        None
    }
}

/// What the drain did to a connection ([`Supervisor::drain_or_hand_over`]).
enum Drained {
    /// Sent to the successor: this process is done with it.
    HandedOver,
    /// The reader hands hyper an end of stream at the next request boundary; the parked
    /// connection is then sent.
    Asked,
    /// Drained here (`Connection: close`, GOAWAY).
    Draining,
}

/// What [`Serving::poll_serve`] reports.
enum Progress {
    /// The connection ended (hyper's result, or the parked connection's close).
    Ended(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    /// hyper's connection was just built (after the detection, or to unpark): the supervisor
    /// looks at its timers again (the park's among them). Poll on.
    Started,
}

impl<T, S, B> Serving<T, S>
where
    T: AsyncRead + AsyncWrite + TailWrites + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    /// Drives the connection until it ends, or until hyper's connection was (re)built.
    fn poll_serve(&mut self, cx: &mut Context<'_>) -> Poll<Progress> {
        let ended = |res: Result<(), Box<dyn std::error::Error + Send + Sync>>| {
            Poll::Ready(Progress::Ended(res))
        };
        loop {
            match &mut self.stage {
                Stage::Sniffing { parts, prefix } => {
                    let Some((io, _)) = parts.as_mut() else {
                        self.stage = Stage::Ended;
                        continue;
                    };
                    let sniffed = match std::task::ready!(io.poll_sniff(cx, prefix)) {
                        Ok(v) => v,
                        Err(e) => {
                            self.stage = Stage::Ended;
                            return ended(Err(e.into()));
                        }
                    };
                    let Some((io, service)) = parts.take() else {
                        continue;
                    };
                    self.stage = match sniffed {
                        Sniffed::Http1 => self.http1(io, service),
                        Sniffed::Http2 => {
                            io.state.proto.store(PROTO_H2, Ordering::Relaxed);
                            Stage::Http2(Box::pin(
                                self.builder.h2.serve_connection(TokioIo::new(io), service),
                            ))
                        }
                    };
                    return Poll::Ready(Progress::Started);
                }
                Stage::Http1(c) => {
                    let res = std::task::ready!(Pin::new(&mut **c).poll(cx));
                    return match self.http1_ended(res) {
                        Some(res) => ended(res.map_err(Into::into)),
                        None => Poll::Ready(Progress::Started),
                    };
                }
                Stage::Http2(c) => {
                    return c.as_mut().poll(cx).map_err(Into::into).map(Progress::Ended)
                }
                Stage::Parked(parts) => {
                    let Some((io, _)) = parts.as_mut() else {
                        self.stage = Stage::Ended;
                        continue;
                    };
                    let more = match std::task::ready!(io.poll_unpark(cx)) {
                        Ok(more) => more,
                        Err(e) => {
                            self.stage = Stage::Ended;
                            return ended(Err(e.into()));
                        }
                    };
                    let Some((io, service)) = parts.take() else {
                        continue;
                    };
                    if !more {
                        self.stage = Stage::Closing(io);
                        continue;
                    }
                    self.stage = self.http1(io, service);
                    return Poll::Ready(Progress::Started);
                }
                Stage::Closing(io) => {
                    let res = std::task::ready!(Pin::new(io).poll_shutdown(cx));
                    self.stage = Stage::Ended;
                    return ended(res.map_err(Into::into));
                }
                Stage::Ended => return ended(Ok(())),
            }
        }
    }

    /// Drives the connection until it ends.
    async fn until_ended(&mut self) {
        while let Progress::Started = std::future::poll_fn(|cx| self.poll_serve(cx)).await {}
    }
}

/// Serves one accepted client connection until it ends, is timed out, or drained.
///
/// Not an `async fn` (nor is [`serve_connection_on`]): an async fn keeps its arguments in its
/// future beside the future it awaits, so each layer would store the socket and the rest once
/// more for the connection's whole life (issue 23, `connection_future_size`).
pub fn serve_connection<T>(
    proxy: Arc<Proxy>,
    builder: Arc<ConnBuilder>,
    io: T,
    peer: SocketAddr,
    scheme: Scheme,
    drain: DrainRx,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + TailWrites + Unpin + Send + 'static,
{
    serve_connection_on(proxy, builder, io, peer, scheme, drain, None)
}

/// [`serve_connection`] for a connection accepted by an HTTP frontend (`frontend` set).
pub fn serve_connection_on<T>(
    proxy: Arc<Proxy>,
    builder: Arc<ConnBuilder>,
    io: T,
    peer: SocketAddr,
    scheme: Scheme,
    drain: DrainRx,
    frontend: Option<Arc<super::frontends::FrontendConn>>,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + TailWrites + Unpin + Send + 'static,
{
    let limits = ConnLimits::of(&proxy.settings.timeouts);
    let accepted = Accepted {
        peer,
        scheme,
        frontend,
    };
    // The service keeps only what it cannot find in the connection's state: it lives in the
    // task of every idle connection (`connection_future_size`).
    supervise(&builder, io, accepted, limits, drain, move |state| {
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let proxy = proxy.clone();
            let conn = state.clone();
            conn.request_started();
            async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
        })
    })
}

/// Who a supervised connection is with.
pub struct Accepted {
    pub peer: SocketAddr,
    /// How the client reached us ([`ConnState::scheme`]).
    pub scheme: Scheme,
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
///
/// The returned future owns the connection ([`Supervisor`]) and its loop only borrows it:
/// an `async fn` taking the socket and the service would keep them twice for the
/// connection's whole life (its arguments beside the connection built from them).
pub fn supervise<T, S, B>(
    builder: &Arc<ConnBuilder>,
    io: T,
    accepted: Accepted,
    limits: ConnLimits,
    drain: DrainRx,
    make_service: impl FnOnce(Arc<ConnState>) -> S,
) -> impl Future<Output = ()> + Send
where
    T: AsyncRead + AsyncWrite + TailWrites + Unpin + Send + 'static,
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
    let mut supervisor = Supervisor::new(builder, io, accepted, limits, drain, make_service);
    async move { supervisor.run().await }
}

/// [`PARK_AFTER`] and [`LINGER`] in the supervisor's milliseconds.
const PARK_MS: u64 = PARK_AFTER.as_millis() as u64;
const LINGER_MS: u64 = LINGER.as_millis() as u64;

/// When the connection is closed for idleness: its last activity plus the idle timeout, and
/// once draining, no later than the drain's (see [`supervise`]).
fn idle_deadline(state: &ConnState, limits: &LimitsMs) -> u64 {
    let last = state.last_active.load(Ordering::Relaxed);
    let drain_started = state.drain_started.load(Ordering::Relaxed);
    let idle_ms = u64::from(limits.idle);
    if drain_started == 0 {
        last + idle_ms
    } else if IDLE_GRACE.load(Ordering::Relaxed) {
        (last + idle_ms).min(last.max(drain_started) + u64::from(limits.drain))
    } else {
        (last + idle_ms).min(last.max(drain_started))
    }
}

/// One supervised connection: what [`supervise`]'s future owns.
struct Supervisor<T, S>
where
    S: hyper::service::HttpService<Incoming>,
{
    conn: Serving<T, S>,
    drain: DrainRx,
    limits: LimitsMs,
}

/// [`ConnLimits`] in milliseconds, as a connection keeps them for its whole life (12 bytes
/// instead of 48: the task of every idle connection holds them). A limit above `u32::MAX`
/// milliseconds (49.7 days) counts as 49.7 days.
#[derive(Debug, Clone, Copy)]
struct LimitsMs {
    client_header: u32,
    idle: u32,
    drain: u32,
}

impl LimitsMs {
    fn of(l: &ConnLimits) -> Self {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        LimitsMs {
            client_header: ms(l.client_header),
            idle: ms(l.idle),
            drain: ms(l.drain),
        }
    }
}

impl<T, S, B> Supervisor<T, S>
where
    T: AsyncRead + AsyncWrite + TailWrites + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn new(
        builder: &Arc<ConnBuilder>,
        io: T,
        accepted: Accepted,
        limits: ConnLimits,
        drain: DrainRx,
        make_service: impl FnOnce(Arc<ConnState>) -> S,
    ) -> Self {
        let Accepted {
            peer,
            scheme,
            frontend,
        } = accepted;
        // An HTTP frontend's connection too, unless it answers one request per connection
        // (whether the successor takes that frontend's is checked at the hand-over).
        let portable = scheme == Scheme::Http
            && io.handover_fd().is_some()
            && frontend
                .as_ref()
                .is_none_or(|f| f.keepalive != crate::model::frontend::KeepAlive::Close);
        let state = Arc::new(ConnState::new(peer, scheme, frontend));
        state.portable.store(portable, Ordering::Relaxed);
        let service = make_service(state.clone());
        let io = TrackedIo::new(io, state.clone());
        Supervisor {
            conn: Serving::new(builder.clone(), state, io, service),
            drain,
            limits: LimitsMs::of(&limits),
        }
    }

    /// The drain reached this connection: hand it to the successor if one takes connections
    /// and this one can go (sent at once when parked; else asked of the reader, for the next
    /// request boundary), or drain it the old way.
    fn drain_or_hand_over(&mut self) -> Drained {
        let state = &self.conn.state;
        let h2 = state.proto.load(Ordering::Relaxed) == PROTO_H2;
        let taken = |sender: &crate::lifecycle::conns::ConnSender| match &state.frontend {
            None => true,
            Some(_) => sender.takes(&handover_name(state)),
        };
        if state.draining()
            || h2
            || !state.portable.load(Ordering::Relaxed)
            || !HANDOVER.get().is_some_and(taken)
        {
            self.give_up_hand_over();
            return Drained::Draining;
        }
        match self.conn.hand_over() {
            Ok(true) => return Drained::HandedOver,
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(peer = %self.conn.state.peer_addr(), error = %e, "connection not handed over; draining it");
                self.give_up_hand_over();
                return Drained::Draining;
            }
        }
        if self.conn.serving_http1() || matches!(self.conn.stage, Stage::Sniffing { .. }) {
            let closing = &self.conn.state.closing;
            // An idle close in progress goes on (the client is leaving anyway).
            let _ = closing.compare_exchange(
                CLOSE_NONE,
                HANDOVER_ASKED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
            self.conn.state.read_waker.wake();
            return Drained::Asked;
        }
        self.give_up_hand_over();
        Drained::Draining
    }

    /// Drains the old way: `Connection: close` on the next answer (the hand-over withdrawn).
    fn give_up_hand_over(&mut self) {
        self.conn.state.withdraw_hand_over();
        if !self.conn.state.draining() {
            self.conn.state.start_drain();
        }
    }

    /// The supervisor loop (see [`supervise`]).
    async fn run(&mut self) {
        // What lives across the awaits below is kept by every connection for its whole life
        // (idle ones included), so the loop keeps only `self` and reads through it: the peer
        // and when the drain began are in the connection's state, the limits are read where
        // used (no closure or reference keeping them), the constants are constants, the drain
        // wait is a slot, not a future (issue 23, `connection_future_size`).
        // When the drain began. A connection idle at that moment gets the whole drain timeout
        // from then for a next request (answered with `Connection: close`): closing it at once
        // would race the very clients the drain's `Connection: close` answers just sent to
        // their other pooled connections.
        let mut shutdown_sent = false;
        // When the hand-over to the successor was asked (0: not asked).
        let mut handover_asked = 0u64;
        if self.drain.is_draining() {
            match self.drain_or_hand_over() {
                Drained::HandedOver => return,
                Drained::Asked => handover_asked = now_ms(),
                Drained::Draining => {}
            }
        }
        // When an idle close was asked of the reader (0: not asked).
        let mut close_asked = 0u64;
        // When an HTTP/1 connection served by hyper is next looked at for parking.
        let mut park_at = now_ms() + PARK_MS;
        loop {
            let header_ms = u64::from(self.limits.client_header);
            // Next moment something may be due; re-evaluated whenever the timer fires.
            let now = now_ms();
            let due = {
                let hs = self.conn.state.head_started.load(Ordering::Relaxed);
                let mut due = idle_deadline(&self.conn.state, &self.limits);
                if self.conn.state.proto.load(Ordering::Relaxed) != PROTO_H2 {
                    // A head may start arriving at any moment without waking this loop, so
                    // without one in progress re-check within one header timeout.
                    due = due.min(if hs != 0 {
                        hs + header_ms
                    } else {
                        now + header_ms
                    });
                }
                if close_asked != 0 {
                    due = due.min(close_asked + LINGER_MS);
                }
                if self.conn.serving_http1() {
                    due = due.min(park_at);
                }
                if handover_asked != 0 {
                    due = due.min(now + HANDOVER_POKE_MS);
                }
                due.max(now + 5)
            };
            let nap = Duration::from_millis(due - now);
            // Biased: the connection first, so bytes that arrived together with a timer are
            // read (and seen by the checks below) before the timer is acted on.
            tokio::select! {
                biased;
                progress = std::future::poll_fn(|cx| self.conn.poll_serve(cx)) => {
                    match progress {
                        Progress::Started => {
                            park_at = now_ms() + PARK_MS;
                            if handover_asked != 0 {
                                // Parked for the hand-over (or a pipelined request came first).
                                match self.drain_or_hand_over() {
                                    Drained::HandedOver => return,
                                    Drained::Asked => {}
                                    Drained::Draining => handover_asked = 0,
                                }
                            }
                            continue;
                        }
                        Progress::Ended(Err(e)) => {
                            tracing::debug!(peer = %self.conn.state.peer_addr(), error = %e, "client connection ended with an error");
                        }
                        Progress::Ended(Ok(())) => {}
                    }
                    return;
                }
                () = std::future::poll_fn(|cx| self.drain.poll_drain(cx)), if !self.conn.state.draining() && handover_asked == 0 => {
                    match self.drain_or_hand_over() {
                        Drained::HandedOver => return,
                        Drained::Asked => {
                            handover_asked = now_ms();
                            continue;
                        }
                        Drained::Draining => {}
                    }
                    if self.conn.state.proto.load(Ordering::Relaxed) == PROTO_H2 && !shutdown_sent {
                        shutdown_sent = true;
                        self.conn.graceful_shutdown();
                    }
                }
                _ = tokio::time::sleep(nap) => {
                    let now = now_ms();
                    if close_asked != 0 {
                        if self.conn.state.closing.load(Ordering::Acquire) != CLOSE_NONE {
                            // Closing (or lingering for the client's FIN): bounded.
                            if now >= close_asked + LINGER_MS {
                                tracing::debug!(peer = %self.conn.state.peer_addr(), "idle connection closed (linger over)");
                                return;
                            }
                            continue;
                        }
                        // A next request arrived before the close: it is being served.
                        close_asked = 0;
                    }
                    if self.conn.state.closing.load(Ordering::Acquire) == PARK_ASKED {
                        // Not taken up by the reader (cannot happen: asking wakes it): withdrawn,
                        // so it can never meet hyper mid-request.
                        self.conn.state.closing.store(CLOSE_NONE, Ordering::Release);
                    }
                    if handover_asked != 0 {
                        let closing = self.conn.state.closing.load(Ordering::Acquire);
                        if closing == PARK_COMMITTED {
                            // hyper is ending for the hand-over (a flush pending).
                            continue;
                        }
                        if closing == HANDOVER_ASKED && now < handover_asked + HANDOVER_WAIT_MS {
                            self.conn.state.read_waker.wake();
                            continue;
                        }
                        // Never between requests in time, or it became a tunnel: drained the
                        // old way.
                        handover_asked = 0;
                        self.give_up_hand_over();
                    }
                    let busy = self.conn.state.inflight.load(Ordering::Relaxed) != 0;
                    let hs = self.conn.state.head_started.load(Ordering::Relaxed);
                    if self.conn.serving_http1() && now >= park_at && handover_asked == 0 {
                        let last = self.conn.state.last_active.load(Ordering::Relaxed);
                        park_at = if busy || hs != 0 {
                            now + PARK_MS
                        } else if now >= last + PARK_MS {
                            // Idle long enough: the reader hands hyper an end of stream if the
                            // socket is still empty when hyper next reads (right after this).
                            self.conn.state.closing.store(PARK_ASKED, Ordering::Release);
                            self.conn.state.read_waker.wake();
                            now + PARK_MS
                        } else {
                            last + PARK_MS
                        };
                    }
                    if busy {
                        continue;
                    }
                    let h2 = self.conn.state.proto.load(Ordering::Relaxed) == PROTO_H2;
                    if hs != 0 && !h2 {
                        if now >= hs + u64::from(self.limits.client_header) {
                            tracing::debug!(peer = %self.conn.state.peer_addr(), "request head not received in time; 408");
                            self.conn.state.timed_out.store(true, Ordering::Relaxed);
                            self.conn.state.read_waker.wake();
                            // Let hyper observe EOF and finish; bounded in case it does not.
                            let _ = tokio::time::timeout(Duration::from_secs(1), self.conn.until_ended()).await;
                            return;
                        }
                        continue;
                    }
                    if now >= idle_deadline(&self.conn.state, &self.limits) {
                        if h2 {
                            if !shutdown_sent {
                                shutdown_sent = true;
                                self.conn.graceful_shutdown();
                                continue;
                            }
                            tracing::debug!(peer = %self.conn.state.peer_addr(), "closing idle connection");
                            return;
                        }
                        if self.conn.state.closing.load(Ordering::Acquire) == PARK_COMMITTED {
                            // hyper is ending for a park (a flush still pending): close once
                            // parked.
                            continue;
                        }
                        // HTTP/1: never close under a request that may be arriving; the reader
                        // ends the connection only if the socket is empty when it next looks
                        // (hyper's reader, or a parked connection's).
                        tracing::debug!(peer = %self.conn.state.peer_addr(), "closing idle connection");
                        self.conn.state.closing.store(CLOSE_ASKED, Ordering::Release);
                        self.conn.state.read_waker.wake();
                        close_asked = now;
                    }
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

/// Readies a listener whose clients speak first (HTTP, HTTPS, `mode: http` frontends; never
/// `mode: tcp`): [`delay_acks`], and `proxy.defer_accept`.
///
/// Why defer: without it the kernel queues a connection for `accept` when the handshake's last
/// ACK arrives, so the proxy takes it in one event-loop round (accept, register, a wake-up of
/// a sleeping worker) and reads its request in another, or finds nothing yet. With it the
/// connection is queued with its first bytes and taken and read in one round. Measured
/// (`bench/run.sh` close cell, A/B in one run, three runs): proxy CPU per new connection 7-13 %
/// lower (24.3 vs 28.1 us), req/s unchanged within this host's noise (the load side is the
/// limit there). HAProxy's `defer-accept` buys it the same (`bench/README.md`).
/// Cost: a client that connects and stays silent is taken only after about `defer_accept`
/// (its header timeout starts then); the kernel holds it meanwhile. Best effort, like
/// [`delay_acks`]: a listener that refuses the option accepts as before.
pub fn prepare_client_first_listener(listener: &TcpListener, settings: &super::Settings) {
    use std::os::fd::AsFd;
    delay_acks(listener);
    if let Err(e) = crate::lifecycle::set_defer_accept(listener.as_fd(), settings.defer_accept_secs)
    {
        tracing::debug!(error = %e, "TCP_DEFER_ACCEPT refused on a listener");
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
fn delay_acks(listener: &TcpListener) {
    if let Err(e) = socket2::SockRef::from(listener).set_quickack(false) {
        tracing::debug!(error = %e, "TCP_QUICKACK off refused on a listener");
    }
}

/// Serves plain HTTP on `listener` until `stop` turns true, then drains (see
/// [`accept_loop`]).
/// `handed`: the previous process's connection socket (after an upgrade): the connections
/// it hands over are served as if accepted here ([`crate::lifecycle::conns`]).
pub async fn serve_http(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    handed: Option<std::os::fd::OwnedFd>,
) {
    prepare_client_first_listener(&listener, &proxy.settings);
    let _ = UPSTREAM_DONOR.set(Arc::downgrade(&proxy));
    let builder = Arc::new(connection_builder(&proxy));
    let drain = proxy.settings.timeouts.drain;
    let handed = handed.and_then(|fd| match crate::lifecycle::conns::ConnReceiver::new(fd) {
        Ok(rx) => Some(Handed::Socket {
            rx,
            proxy: proxy.clone(),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot take connections from the previous process; it drains them");
            None
        }
    });
    accept_loop_until(
        listener,
        stop,
        drain,
        "connections",
        move |stream, peer, drain_rx| {
            serve_connection(
                proxy.clone(),
                builder.clone(),
                super::net::ClientStream::new(stream),
                peer,
                Scheme::Http,
                drain_rx,
            )
        },
        None,
        handed,
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
    F: Fn(tokio::net::TcpStream, SocketAddr, DrainRx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept_loop_until(listener, stop, drain, what, serve, None, None).await
}

/// What a successor's accept loop takes from the previous process.
pub enum Handed {
    /// The main listener's: the connection socket itself (client connections for the main
    /// listener, idle upstream connections for `proxy`'s pool, HTTP frontends' connections
    /// passed on to their inboxes).
    Socket {
        rx: crate::lifecycle::conns::ConnReceiver,
        proxy: Arc<Proxy>,
    },
    /// An HTTP frontend's: its inbox ([`frontend_inbox`]).
    Inbox(tokio::sync::mpsc::UnboundedReceiver<(tokio::net::TcpStream, SocketAddr)>),
}

/// The next client connection the previous process hands over to this accept loop: on the main
/// HTTP listener's socket, after adding any idle upstream connections sent ahead of it to the
/// pool and passing HTTP frontends' connections on to their inboxes; on a frontend's inbox,
/// what arrives there. `None` when there is no such socket (or inbox) any more.
async fn recv_handed(handed: Option<&mut Handed>) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    let (rx, proxy) = match handed? {
        Handed::Socket { rx, proxy } => (rx, proxy),
        Handed::Inbox(inbox) => return inbox.recv().await,
    };
    loop {
        let got = match rx.recv().await {
            Ok(Some(got)) => got,
            Ok(None) => {
                close_frontend_inboxes();
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection socket from the previous process failed");
                close_frontend_inboxes();
                return None;
            }
        };
        if let Some(authority) = got.listener.strip_prefix(HANDOVER_UPSTREAM) {
            match handed_stream(got.conn) {
                Ok(stream) => proxy.upstream().adopt_direct(authority, stream),
                Err(e) => {
                    tracing::debug!(error = %e, "handed-over upstream connection unusable; closed")
                }
            }
            continue;
        }
        let stream = handed_stream(got.conn).and_then(|stream| {
            let peer = stream.peer_addr()?;
            Ok((stream, peer))
        });
        if got.listener.starts_with(HANDOVER_FRONTEND) {
            let Ok(s) = stream else { continue };
            let inbox = with_inboxes(|i| i.as_ref()?.get(&got.listener).cloned()).flatten();
            // Named by this process, so its inbox is there (a frontend removed meanwhile:
            // the connection is closed, between requests).
            if inbox.is_none_or(|tx| tx.send(s).is_err()) {
                tracing::warn!(frontend = %got.listener, "handed-over connection for a frontend this process no longer has closed");
            }
            continue;
        }
        if got.listener != HANDOVER_LISTENER {
            tracing::warn!(listener = %got.listener, "handed-over connection for an unknown listener closed");
            continue;
        }
        match stream {
            Ok(s) => return Some(s),
            Err(e) => tracing::debug!(error = %e, "handed-over connection unusable; closed"),
        }
    }
}

/// A handed-over TCP socket as this runtime's stream. The socket was non-blocking in the
/// previous process already (the flag belongs to the socket, shared by both descriptors); set
/// again in case.
fn handed_stream(fd: std::os::fd::OwnedFd) -> std::io::Result<tokio::net::TcpStream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::TcpStream::from_std(std)
}

/// A connection's future that releases `guard` when it ends (or is dropped).
///
/// Not `async move { conn.await; drop(guard) }`: such a block keeps `conn` twice, once as
/// captured and once as the future it awaits, so every connection's task was twice the size
/// of its future (issue 23, `connection_future_size`).
fn counted<Fut: Future<Output = ()>>(conn: Fut, guard: ConnGuard) -> impl Future<Output = ()> {
    futures_util::FutureExt::map(conn, move |()| drop(guard))
}

/// [`accept_loop`] that says on `closed` when the listening socket is closed (before the
/// connections drain): a removed frontend's port is free at that moment. Connections that
/// arrive on `handed` (from the previous process, during an upgrade) are served like accepted
/// ones, also after the stop (then drained at once), until the previous process closes it.
pub async fn accept_loop_until<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
    what: &'static str,
    serve: F,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
    mut handed: Option<Handed>,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr, DrainRx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tracker = Arc::new(ConnTracker::default());
    let (drain_tx, drain_rx) = super::drain::channel();
    let mut nodelay = NoDelay::on_listener(&listener);
    // One wait for the stop for the whole loop: a `stop.changed()` made in every turn drew a
    // random branch order and registered (then dropped) a waiter with the channel per accepted
    // connection. A dropped sender stops the loop too.
    let stopped = async {
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(stopped);
    let take = |stream: tokio::net::TcpStream, peer: SocketAddr| {
        let guard = tracker.enter();
        let conn = serve(stream, peer, drain_rx.clone());
        tokio::spawn(counted(conn, guard));
    };
    loop {
        // Biased, accept first: a flood of connections cannot starve the stop, since the
        // listener answers `Pending` once the task's cooperative budget is spent.
        tokio::select! {
            biased;
            got = recv_handed(handed.as_mut()), if handed.is_some() => match got {
                Some((stream, peer)) => take(stream, peer),
                None => handed = None,
            },
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        nodelay.accepted(&stream);
                        take(stream, peer);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    if let Some(c) = closed {
        let _ = c.send(());
    }
    drain_tx.drain();
    // Connections the previous process still hands over (it may be draining yet) are taken
    // until it closes the socket: one left in the socket's queue would be closed unanswered.
    let rest = async {
        while let Some((stream, peer)) = recv_handed(handed.as_mut()).await {
            take(stream, peer);
        }
    };
    let done = async {
        rest.await;
        tracker.wait_idle().await;
    };
    // Idle connections close at the drain timeout, then linger for the client's FIN.
    if tokio::time::timeout(drain + LINGER + Duration::from_secs(1), done)
        .await
        .is_err()
    {
        match tracker.live() {
            // Only the previous process's socket was still open (it drains a tunnel, say):
            // nothing of ours is cut.
            0 => tracing::debug!(
                "drain over; the previous process still holds its connection socket"
            ),
            left => tracing::warn!(left, "drain timeout passed; closing remaining {what}"),
        }
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

    /// A loopback listener readied as `serve_http` readies its own, deferring `secs`.
    async fn client_first_listener(secs: u32) -> TcpListener {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut settings = crate::proxy::Settings::from_config(
            &crate::model::config::ProxyConfig::default(),
            false,
        );
        settings.defer_accept_secs = secs;
        prepare_client_first_listener(&listener, &settings);
        listener
    }

    /// With `proxy.defer_accept` a connection is accepted once its client has sent
    /// something (and its bytes are there at once); with `0s`, as soon as it is connected.
    #[tokio::test]
    async fn deferred_accept_waits_for_the_first_bytes() {
        for secs in [0, 5] {
            let listener = client_first_listener(secs).await;
            let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let silent = Duration::from_millis(300);
            let early = tokio::time::timeout(silent, listener.accept()).await;
            if secs == 0 {
                assert!(
                    early.is_ok(),
                    "not deferred: accepted while the client is silent"
                );
                continue;
            }
            assert!(early.is_err(), "deferred {secs}s: accepted before any byte");
            client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let (stream, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("accepted once the first bytes arrived")
                .unwrap();
            let mut buf = [0u8; 16];
            let n = stream
                .try_read(&mut buf)
                .expect("the request is already there");
            assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        }
    }

    /// A client that connects and stays silent is still taken, after about the deferral (the
    /// kernel's SYN-ACK retransmission, ~1 s, is answered by the client's kernel): the header
    /// timeout then applies to it as to any other.
    #[tokio::test]
    async fn deferred_accept_takes_a_silent_client_after_the_deferral() {
        let listener = client_first_listener(1).await;
        let started = Instant::now();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("a silent client is taken after the deferral")
            .unwrap();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(500),
            "taken after {waited:?}: not deferred"
        );
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

    /// A supervised server on loopback for the park tests: every request is answered with its
    /// path and how many times its connection had been parked before (`/a parks=1`), with
    /// `Connection: close` while draining; an `Upgrade` request switches the connection to an
    /// echo of what the client sends.
    async fn park_server(limits: ConnLimits) -> (SocketAddr, super::super::drain::DrainTx) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (drain_tx, drain_rx) = super::super::drain::channel();
        let builder = Arc::new(ConnBuilder::new());
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (builder, drain) = (builder.clone(), drain_rx.clone());
                tokio::spawn(async move {
                    let accepted = Accepted {
                        peer,
                        scheme: Scheme::Http,
                        frontend: None,
                    };
                    supervise(&builder, stream, accepted, limits, drain, |conn| {
                        hyper::service::service_fn(move |req: http::Request<Incoming>| {
                            conn.request_started();
                            let conn = conn.clone();
                            async move { Ok::<_, Infallible>(park_answer(req, &conn)) }
                        })
                    })
                    .await;
                });
            }
        });
        (addr, drain_tx)
    }

    fn park_answer(
        mut req: http::Request<Incoming>,
        conn: &ConnState,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let parks = conn.parks.load(Ordering::Relaxed);
        let text = format!("{} parks={parks}", req.uri().path());
        let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(text)));
        if req.headers().contains_key(http::header::UPGRADE) {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut up = TokioIo::new(up);
                let mut buf = [0u8; 256];
                while let Ok(n) = up.read(&mut buf).await {
                    if n == 0 || up.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
            h.insert(http::header::UPGRADE, "echo".parse().unwrap());
        } else if conn.draining() {
            let h = resp.headers_mut();
            h.insert(http::header::CONNECTION, "close".parse().unwrap());
        }
        conn.request_done();
        resp
    }

    fn park_limits() -> ConnLimits {
        ConnLimits {
            client_header: Duration::from_secs(5),
            idle: Duration::from_secs(30),
            drain: Duration::from_secs(1),
        }
    }

    /// Reads one response (head, then a `content-length` body) from `s`, keeping what follows
    /// it in `pending`; returns the head (lowercase) and the body. Bounded: 5 s.
    async fn next_response(
        s: &mut tokio::net::TcpStream,
        pending: &mut Vec<u8>,
    ) -> (String, String) {
        let read = async {
            loop {
                if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    if pending.len() >= end + 4 + len {
                        let body = String::from_utf8_lossy(&pending[end + 4..end + 4 + len]);
                        let body = body.into_owned();
                        pending.drain(..end + 4 + len);
                        return (head, body);
                    }
                }
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.expect("read a response");
                assert!(
                    n > 0,
                    "connection closed; got {:?}",
                    String::from_utf8_lossy(pending)
                );
                pending.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("a response within 5 s")
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nhost: park.test\r\n\r\n").into_bytes()
    }

    /// Reads until the server closes; returns what came and how long it took. Bounded: 6 s.
    async fn until_closed(s: &mut tokio::net::TcpStream) -> (String, Duration) {
        let t0 = Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(6), s.read_to_end(&mut out))
            .await
            .expect("closed within 6 s")
            .expect("closed cleanly (FIN, not a reset)");
        (String::from_utf8_lossy(&out).into_owned(), t0.elapsed())
    }

    /// An HTTP/1 connection idle for `PARK_AFTER` is parked (hyper's connection and its
    /// buffers dropped) and serves its next requests as before, on the same socket.
    #[tokio::test]
    async fn idle_http1_connection_parks_and_serves_again() {
        let (addr, _drain) = park_server(park_limits()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut pending = Vec::new();
        s.write_all(&get("/a")).await.unwrap();
        assert_eq!(next_response(&mut s, &mut pending).await.1, "/a parks=0");
        // Keep-alive requests sooner than `PARK_AFTER` apart: never parked.
        for i in 0..3 {
            tokio::time::sleep(PARK_AFTER / 4).await;
            s.write_all(&get(&format!("/hot{i}"))).await.unwrap();
            let body = next_response(&mut s, &mut pending).await.1;
            assert_eq!(body, format!("/hot{i} parks=0"));
        }
        for round in 1..=2 {
            tokio::time::sleep(PARK_AFTER * 2).await;
            s.write_all(&get("/b")).await.unwrap();
            let (head, body) = next_response(&mut s, &mut pending).await;
            assert!(head.starts_with("http/1.1 200"), "{head}");
            assert_eq!(body, format!("/b parks={round}"));
        }
    }

    /// No byte is lost: the first part of a pipelined second head, read by hyper together
    /// with the first request, is still there after the park, and the rest completes it.
    #[tokio::test]
    async fn pipelined_head_split_across_the_park() {
        let (addr, _drain) = park_server(park_limits()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut pending = Vec::new();
        let mut first = get("/one");
        first.extend_from_slice(b"GET /two HTTP/1.1\r\nho");
        s.write_all(&first).await.unwrap();
        assert_eq!(next_response(&mut s, &mut pending).await.1, "/one parks=0");
        tokio::time::sleep(PARK_AFTER * 2).await;
        s.write_all(b"st: park.test\r\n\r\n").await.unwrap();
        // Parked while hyper held "GET /two HTTP/1.1\r\nho": the bytes went to the next
        // connection.
        assert_eq!(next_response(&mut s, &mut pending).await.1, "/two parks=1");
        s.write_all(&get("/three")).await.unwrap();
        assert_eq!(
            next_response(&mut s, &mut pending).await.1,
            "/three parks=1"
        );
        assert!(pending.is_empty());
    }

    /// Requests sent around the moment of the park (before, during, after) are all answered
    /// on their connection, none reset or lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_racing_the_park_are_answered() {
        let (addr, _drain) = park_server(park_limits()).await;
        let mut tasks = Vec::new();
        for i in 0..40u64 {
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let mut pending = Vec::new();
                s.write_all(&get("/first")).await.unwrap();
                assert_eq!(
                    next_response(&mut s, &mut pending).await.1,
                    "/first parks=0"
                );
                let wait = PARK_AFTER - Duration::from_millis(20) + Duration::from_millis(2 * i);
                tokio::time::sleep(wait).await;
                s.write_all(&get("/second")).await.unwrap();
                let (head, body) = next_response(&mut s, &mut pending).await;
                assert!(head.starts_with("http/1.1 200"), "{head}");
                assert!(body.starts_with("/second parks="), "{body}");
                body.ends_with('1')
            }));
        }
        let mut parked = 0;
        for t in tasks {
            parked += usize::from(t.await.unwrap());
        }
        assert!(
            parked >= 1,
            "no connection was parked before its second request"
        );
    }

    /// A connection upgraded (here to an echo) after a park works as on a fresh connection.
    #[tokio::test]
    async fn upgrade_after_a_park() {
        let (addr, _drain) = park_server(park_limits()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut pending = Vec::new();
        s.write_all(&get("/a")).await.unwrap();
        assert_eq!(next_response(&mut s, &mut pending).await.1, "/a parks=0");
        tokio::time::sleep(PARK_AFTER * 2).await;
        s.write_all(
            b"GET /ws HTTP/1.1\r\nhost: park.test\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
        let (head, _) = next_response(&mut s, &mut pending).await;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        s.write_all(b"hello through the tunnel").await.unwrap();
        let mut got = vec![0u8; 24];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello through the tunnel");
    }

    /// A parked connection obeys the supervisor: the idle timeout closes it (our FIN), a head
    /// that starts after the park gets the header timeout (408), and a drain answers its next
    /// request with `Connection: close` and closes it when idle for the drain timeout.
    #[tokio::test]
    async fn parked_connection_keeps_idle_header_and_drain_rules() {
        let limits = ConnLimits {
            client_header: Duration::from_millis(800),
            idle: Duration::from_millis(1500),
            drain: Duration::from_secs(1),
        };
        let (addr, _drain) = park_server(limits).await;
        // Idle timeout.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut pending = Vec::new();
        s.write_all(&get("/a")).await.unwrap();
        assert_eq!(next_response(&mut s, &mut pending).await.1, "/a parks=0");
        let (rest, took) = until_closed(&mut s).await;
        assert_eq!(rest, "");
        assert!(took >= Duration::from_millis(1300), "closed after {took:?}");
        // Header timeout once a head starts after the park.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&get("/a")).await.unwrap();
        assert_eq!(next_response(&mut s, &mut pending).await.1, "/a parks=0");
        tokio::time::sleep(PARK_AFTER * 2).await;
        s.write_all(b"GET /slow HTTP/1.1\r\nho").await.unwrap();
        let (rest, took) = until_closed(&mut s).await;
        assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
        assert!(took >= Duration::from_millis(700), "408 after {took:?}");
        // Drain (idle timeout 30 s): the next request is answered with `Connection: close`; an
        // idle connection closes after the drain timeout (1 s).
        let (addr, drain) = park_server(park_limits()).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        for c in [&mut s, &mut idle] {
            c.write_all(&get("/a")).await.unwrap();
            assert_eq!(next_response(c, &mut pending).await.1, "/a parks=0");
        }
        tokio::time::sleep(PARK_AFTER * 2).await;
        drain.drain();
        let drained = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(&get("/b")).await.unwrap();
        let (head, body) = next_response(&mut s, &mut pending).await;
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(body, "/b parks=1");
        assert_eq!(until_closed(&mut s).await.0, "");
        assert_eq!(until_closed(&mut idle).await.0, "");
        let took = drained.elapsed();
        assert!(
            took >= Duration::from_millis(900),
            "closed {took:?} after the drain"
        );
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
                let state = Arc::new(ConnState::new(
                    "127.0.0.1:1".parse().unwrap(),
                    Scheme::Http,
                    None,
                ));
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

    /// What an idle connection's task holds inline (issue 23, memory), and a guard against
    /// storing it twice: the accept loop's wrapper adds only the guard to the connection's
    /// future ([`counted`]; an `async move { conn.await; .. }` block kept `conn` twice), and
    /// [`supervise`]'s future is its [`Supervisor`] plus the loop's own timer and wait state
    /// (three nested `async fn`s kept the socket and the service once more each). The sizes
    /// are printed for the accounting in bench/README.md (`-- --nocapture`).
    #[tokio::test]
    async fn connection_future_size() {
        let settings = super::super::Settings::from_config(
            &crate::model::config::ProxyConfig::default(),
            false,
        );
        let tables = Arc::new(super::super::Tables::new(
            crate::model::route::RouteTable::default(),
        ));
        let proxy = Arc::new(Proxy::new(settings, tables));
        let builder = Arc::new(connection_builder(&proxy));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_drain_tx, drain_rx) = super::super::drain::channel();
        let tracker = Arc::new(ConnTracker::default());
        let mut clients = Vec::new();
        let mut accept = || {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
            async {
                let (stream, peer) = listener.accept().await.unwrap();
                (super::super::net::ClientStream::new(stream), peer)
            }
        };

        // The proxy's connection future, as `serve_http` spawns it.
        let (stream, peer) = accept().await;
        let conn = serve_connection(
            proxy.clone(),
            builder.clone(),
            stream,
            peer,
            Scheme::Http,
            drain_rx.clone(),
        );
        let future = std::mem::size_of_val(&conn);
        let spawned = std::mem::size_of_val(&counted(conn, tracker.enter()));
        let (stream, peer) = accept().await;
        let conn = serve_connection(
            proxy.clone(),
            builder.clone(),
            stream,
            peer,
            Scheme::Http,
            drain_rx.clone(),
        );
        let guard = tracker.enter();
        let block = std::mem::size_of_val(&async move {
            conn.await;
            drop(guard);
        });

        // `supervise`'s future against the state it owns, with one service type.
        let make_service = |stream, peer| {
            let proxy = proxy.clone();
            let accepted = Accepted {
                peer,
                scheme: Scheme::Http,
                frontend: None,
            };
            let limits = park_limits();
            let service = move |state: Arc<ConnState>| {
                hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let proxy = proxy.clone();
                    let conn = state.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, conn).await) }
                })
            };
            (stream, accepted, limits, service)
        };
        let (stream, peer) = accept().await;
        let (stream, accepted, limits, service) = make_service(stream, peer);
        let owned = std::mem::size_of_val(&Supervisor::new(
            &builder,
            stream,
            accepted,
            limits,
            drain_rx.clone(),
            service,
        ));
        let (stream, peer) = accept().await;
        let (stream, accepted, limits, service) = make_service(stream, peer);
        let supervised = std::mem::size_of_val(&supervise(
            &builder,
            stream,
            accepted,
            limits,
            drain_rx.clone(),
            service,
        ));
        println!(
            "per connection: spawned {spawned} B (with an async block: {block} B), \
             serve_connection {future} B; supervise {supervised} B = Supervisor {owned} B + \
             {} B; ConnState {} B, Sleep {} B, TrackedIo {} B",
            supervised - owned,
            std::mem::size_of::<ConnState>(),
            std::mem::size_of::<tokio::time::Sleep>(),
            std::mem::size_of::<TrackedIo<super::super::net::ClientStream>>(),
        );
        assert!(
            spawned <= future + 16,
            "spawned {spawned} B, future {future} B"
        );
        assert!(
            spawned <= SPAWNED_MAX,
            "spawned {spawned} B: tokio's task cell outgrows 512 B (mimalloc's 512-byte block)"
        );
        assert!(
            supervised <= owned + LOOP_STATE_MAX,
            "supervise {supervised} B, Supervisor {owned} B"
        );
    }

    /// What the supervisor loop may keep beside the [`Supervisor`] it borrows: its timer,
    /// `self`, a few instants, the 408 path's bounded wait (they overlap). Optimized builds
    /// measure 216 B (440 B before the loop stopped keeping a copy of the peer, the limits in
    /// milliseconds and a closure over them; 360 B before the drain wait stopped being a
    /// `watch::Receiver::changed()` future and the loop stopped keeping references to the
    /// supervisor's fields and the state); unoptimized builds keep more temporaries.
    const LOOP_STATE_MAX: usize = if cfg!(debug_assertions) { 1024 } else { 232 };

    /// What the accept loop spawns per connection, at most. tokio's task cell is 128-byte
    /// aligned: header 32 B + scheduler and task id 16 B + stage tag 8 B + this future +
    /// trailer 48 B. With 408 B it is 512 B, a power of two: mimalloc's power-of-two blocks
    /// start on their own alignment, so the cell takes a 512-byte block. Cells of 640 or 768 B
    /// cost a block of the next size class: mimalloc's 640- and 768-byte blocks start after
    /// its page header, not on a 128-byte boundary, so an aligned request is served by
    /// over-allocating (size + 127) from the class above (bpftrace of the live blocks with
    /// 10,000 idle connections: 73 tasks per 64 KiB page with 768-byte cells, i.e. 896-byte
    /// blocks; 85 per page with 640-byte cells, i.e. 768-byte blocks). 17 B more and every
    /// connection's task takes 768 B again (issue 23). Optimized builds measure 392 B (664 B
    /// before the peer, the scheme and the limits moved out of the task, 536 B before the
    /// drain wait became a slot in [`super::super::drain`]).
    const SPAWNED_MAX: usize = if cfg!(debug_assertions) { 1024 } else { 408 };
}
