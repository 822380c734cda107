//! Upstream connection pool: per backend address, a lock-free bounded queue of idle HTTP/1.1
//! connections (`hyper::client::conn::http1::SendRequest` handles, each driven by its own
//! task). A request pops an idle connection (or connects), and its response body hands the
//! connection back when the upstream body has ended; a connection that errored, closed, asked
//! for `Connection: close`, carried an upgrade, or whose body was abandoned is never returned.
//! Invariants: no lock anywhere (an `ArcSwap` map of hosts, read once per request, plus
//! `crossbeam_queue::ArrayQueue` per host); at most `max_idle_per_host` idle connections per
//! address (a full queue drops the surplus, which closes it); idle connections older than
//! `idle_timeout` are closed by a sweeper task and never handed out. A request whose pooled
//! connection turns out dead is retried once on a fresh connection when hyper proves it was
//! not sent. Bodiless GET/HEAD/OPTIONS requests take the direct path instead (`direct.rs`:
//! the request's own task writes and reads the socket); their idle connections live in a
//! second queue per host, swept the same way.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::RequestBody;
use super::direct::{self, DirectBody, DirectConn};
use super::framing::{self, FramingError};
use super::net::SendStream;

type Sender = http1::SendRequest<RequestBody>;

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/1.1 handshake with {addr} failed: {source}")]
    Handshake {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The upstream's response head has no trustworthy framing (see `framing.rs`).
    #[error("upstream {addr}: {source}")]
    Framing {
        addr: String,
        #[source]
        source: FramingError,
    },
    #[error("upstream {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

impl UpstreamError {
    /// Whether the failure happened before a connection existed (connect, resolve).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::ConnectTimeout(_) | UpstreamError::Connect { .. }
        )
    }
    pub fn is_connect_timeout(&self) -> bool {
        matches!(self, UpstreamError::ConnectTimeout(_))
    }
}

/// FxHash (the rustc hasher): the key is a short backend address, hashed once per request;
/// SipHash's DoS resistance buys nothing for keys that come from our own configuration.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.write(&[b]);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type HostMap = HashMap<Box<str>, Arc<HostPool>, BuildHasherDefault<FxHasher>>;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

/// An idle connection (a hyper sender or a direct-path socket) and since when it is idle.
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Keeps the entries of `q` that `keep` accepts (one pass, lock-free); returns how many are
/// left.
fn sweep_queue<C>(q: &ArrayQueue<Idle<C>>, mut keep: impl FnMut(&mut Idle<C>) -> bool) -> usize {
    for _ in 0..q.len() {
        let Some(mut idle) = q.pop() else { break };
        if keep(&mut idle) {
            let _ = q.push(idle);
        }
    }
    q.len()
}

/// An upstream response body: from a hyper client connection (with the connection to hand
/// back when it ends) or from the direct path (which hands its own connection back).
pub enum UpstreamBody {
    Hyper(Incoming, Option<PooledConn>),
    Direct(DirectBody),
}

/// The idle connections to one backend address.
pub struct HostPool {
    authority: Box<str>,
    /// `authority` parsed as a socket address when it is an IP literal (no resolver then).
    addr: Option<SocketAddr>,
    /// `None` when pooling is off (`max_idle_per_host: 0`).
    idle: Option<ArrayQueue<Idle<Sender>>>,
    /// Idle connections of the direct path (`None` when pooling is off).
    direct_idle: Option<ArrayQueue<Idle<DirectConn>>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Set on every checkout; the sweeper forgets hosts that stayed unused and empty.
    used: AtomicBool,
}

impl HostPool {
    fn new(authority: &str, settings: &PoolSettings) -> Self {
        Self {
            authority: authority.into(),
            addr: authority.parse().ok(),
            idle: (settings.max_idle_per_host > 0)
                .then(|| ArrayQueue::new(settings.max_idle_per_host)),
            direct_idle: (settings.max_idle_per_host > 0)
                .then(|| ArrayQueue::new(settings.max_idle_per_host)),
            idle_timeout: settings.idle_timeout,
            connect_timeout: settings.connect_timeout,
            used: AtomicBool::new(true),
        }
    }

    /// A live idle connection, if there is one (closed or expired ones are dropped).
    async fn pop(&self) -> Option<Sender> {
        let q = self.idle.as_ref()?;
        while let Some(mut idle) = q.pop() {
            if idle.conn.is_closed() || idle.since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Returned right after its response body ended, the connection task may not yet
            // have gone back to idle: wait for it (immediate in the common case). An error
            // means it closed meanwhile.
            if idle.conn.ready().await.is_ok() {
                return Some(idle.conn);
            }
        }
        None
    }

    fn push(&self, sender: Sender) {
        if let Some(q) = &self.idle {
            if !sender.is_closed() {
                // Full: the surplus connection is dropped, which closes it.
                let _ = q.push(Idle {
                    conn: sender,
                    since: Instant::now(),
                });
            }
        }
    }

    /// The backend address this pool connects to.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// A usable idle connection of the direct path, if there is one.
    pub(super) fn pop_direct(&self) -> Option<DirectConn> {
        let q = self.direct_idle.as_ref()?;
        while let Some(mut idle) = q.pop() {
            if idle.since.elapsed() < self.idle_timeout && idle.conn.idle_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Back to the direct path's idle queue (a full queue closes the surplus).
    pub(super) fn push_direct(&self, conn: DirectConn) {
        if let Some(q) = &self.direct_idle {
            let _ = q.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A new connection for the direct path.
    pub(super) async fn connect_direct(&self) -> Result<DirectConn, UpstreamError> {
        Ok(DirectConn::new(self.open().await?))
    }

    /// Drops idle connections that are closed or past the idle timeout. Returns how many
    /// are left.
    fn sweep(&self) -> usize {
        let fresh = |since: Instant| since.elapsed() < self.idle_timeout;
        let hyper = self.idle.as_ref().map_or(0, |q| {
            sweep_queue(q, |i| !i.conn.is_closed() && fresh(i.since))
        });
        let direct = self.direct_idle.as_ref().map_or(0, |q| {
            sweep_queue(q, |i| fresh(i.since) && i.conn.idle_usable())
        });
        hyper + direct
    }

    /// A new TCP connection to the backend (connect timeout, `TCP_NODELAY`), writing with
    /// `send`.
    async fn open(&self) -> Result<SendStream, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.tcp_connect())
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.authority.to_string()))??;
        let _ = stream.set_nodelay(true);
        Ok(SendStream::new(stream))
    }

    async fn connect(&self, upgrades: bool) -> Result<Sender, UpstreamError> {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(self.open().await?))
            .await
            .map_err(|source| UpstreamError::Handshake {
                addr: self.authority.to_string(),
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

    async fn tcp_connect(&self) -> Result<TcpStream, UpstreamError> {
        let err = |source| UpstreamError::Connect {
            addr: self.authority.to_string(),
            source,
        };
        if let Some(addr) = self.addr {
            return TcpStream::connect(addr).await.map_err(err);
        }
        // A name: every address it resolves to, in order, until one accepts.
        let mut last = None;
        for addr in tokio::net::lookup_host(&*self.authority)
            .await
            .map_err(err)?
        {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolved to no address",
            )
        })))
    }
}

/// A connection checked out for one request; `release` hands it back to its host's queue.
pub struct PooledConn {
    sender: Sender,
    host: Arc<HostPool>,
}

impl PooledConn {
    /// Back to the idle queue (the response body has ended).
    pub fn release(self) {
        self.host.push(self.sender);
    }
}

/// Holds a response hyper parsed to the framing rule the direct path uses (`framing.rs`): a
/// head that rule refuses is a framing error (its connection is dropped, never pooled); a
/// head with both `Transfer-Encoding` and `Content-Length` loses the `Content-Length` and
/// its connection is not reused.
fn checked(
    host: &HostPool,
    resp: Response<Incoming>,
    head_request: bool,
    upgrade: bool,
    mut conn: Option<PooledConn>,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let (mut parts, body) = resp.into_parts();
    let decided = framing::response_framing(
        parts.version,
        parts.status,
        head_request,
        upgrade,
        &parts.headers,
    )
    .map_err(|source| UpstreamError::Framing {
        addr: host.authority.to_string(),
        source,
    })?;
    if decided.rewrites_headers() {
        framing::sanitize(&decided, &mut parts.headers);
    }
    if decided.strip_content_length {
        conn = None;
    }
    Ok(Response::from_parts(parts, UpstreamBody::Hyper(body, conn)))
}

/// All upstream connections of one proxy.
pub struct Pool {
    hosts: Arc<ArcSwap<HostMap>>,
    settings: PoolSettings,
    sweeper: AtomicBool,
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            hosts: Arc::new(ArcSwap::from_pointee(HostMap::default())),
            settings,
            sweeper: AtomicBool::new(false),
        }
    }

    /// The pool of one backend address (created on first use).
    pub fn host(&self, authority: &str) -> Arc<HostPool> {
        if let Some(h) = self.hosts.load().get(authority) {
            // Written only when the sweeper cleared it: no shared-cache-line store per request.
            if !h.used.load(Ordering::Relaxed) {
                h.used.store(true, Ordering::Relaxed);
            }
            return h.clone();
        }
        self.start_sweeper();
        let mut created = None;
        self.hosts.rcu(|map| {
            if map.contains_key(authority) {
                return map.clone();
            }
            let mut m = HostMap::clone(map);
            let h = created
                .get_or_insert_with(|| Arc::new(HostPool::new(authority, &self.settings)))
                .clone();
            m.insert(authority.into(), h);
            Arc::new(m)
        });
        self.hosts
            .load()
            .get(authority)
            .cloned()
            .unwrap_or_else(|| Arc::new(HostPool::new(authority, &self.settings)))
    }

    /// Sends `req` to `host`. Bodiless GET/HEAD/OPTIONS go the direct path (which replaces
    /// a dead pooled connection by a fresh one itself). Others go on an idle hyper connection
    /// if there is one, else on a new one; a pooled connection found dead before the request
    /// went out is replaced once. With `upgrade`, a fresh connection that supports protocol
    /// upgrades is used and never pooled.
    pub async fn send(
        &self,
        host: &Arc<HostPool>,
        req: Request<RequestBody>,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if direct::eligible(req.method(), upgrade, req.body()) {
            return Ok(direct::send(host, &req).await?.map(UpstreamBody::Direct));
        }
        let head_request = req.method() == http::Method::HEAD;
        let mut req = req;
        if !upgrade {
            if let Some(mut sender) = host.pop().await {
                match sender.try_send_request(req).await {
                    Ok(resp) => {
                        let conn = PooledConn {
                            sender,
                            host: host.clone(),
                        };
                        return checked(host, resp, head_request, upgrade, Some(conn));
                    }
                    Err(mut e) => {
                        if let Some(r) = e.take_message() {
                            tracing::debug!(upstream = %host.authority, error = %e.error(), "pooled connection was dead; request not sent, retrying on a new connection");
                            req = r;
                        } else {
                            return Err(UpstreamError::Http(e.into_error()));
                        }
                    }
                }
            }
        }
        let mut sender = host.connect(upgrade).await?;
        let resp = sender
            .try_send_request(req)
            .await
            .map_err(|e| UpstreamError::Http(e.into_error()))?;
        let pooled = (!upgrade).then(|| PooledConn {
            sender,
            host: host.clone(),
        });
        checked(host, resp, head_request, upgrade, pooled)
    }

    /// Starts the idle sweeper once (lazily: the pool may be built outside a runtime).
    fn start_sweeper(&self) {
        if self.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let hosts: Weak<ArcSwap<HostMap>> = Arc::downgrade(&self.hosts);
        let every = (self.settings.idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(hosts) = hosts.upgrade() else { return };
                let mut forget = Vec::new();
                for (k, h) in hosts.load().iter() {
                    let left = h.sweep();
                    // Unused since the last sweep and nothing idle: forget the address (a
                    // backend that left the table), unless a request holds it right now.
                    if left == 0
                        && !h.used.swap(false, Ordering::Relaxed)
                        && Arc::strong_count(h) == 1
                    {
                        forget.push(k.clone());
                    }
                }
                if !forget.is_empty() {
                    hosts.rcu(|map| {
                        let mut m = HostMap::clone(map);
                        for k in &forget {
                            m.remove(k);
                        }
                        Arc::new(m)
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn fx_hash_spreads_addresses() {
        let b = BuildHasherDefault::<FxHasher>::default();
        let mut seen = std::collections::HashSet::new();
        for port in 8000..8100u16 {
            let key = format!("127.0.0.1:{port}");
            seen.insert(b.hash_one(key.as_str()));
        }
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn host_pool_parses_ip_literals_only() {
        let s = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_host: 0,
        };
        assert!(HostPool::new("127.0.0.1:80", &s).addr.is_some());
        assert!(HostPool::new("[::1]:80", &s).addr.is_some());
        assert!(HostPool::new("app.internal:80", &s).addr.is_none());
        assert!(HostPool::new("127.0.0.1:80", &s).idle.is_none());
    }
}
