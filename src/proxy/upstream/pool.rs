//! The pieces both upstream paths pool with: an [`Endpoint`] (one backend address and how to
//! connect to it) and an [`IdleQueue`] of idle connections of one kind. A leaf module: it
//! knows nothing of the connections it holds beyond [`Reusable`].
//! Invariants: no lock anywhere (`crossbeam_queue::ArrayQueue`); at most
//! `max_idle_per_host` idle connections per queue (a full queue drops the surplus, which
//! closes it); a connection idle for `idle_timeout` or more is never handed out, and the
//! sweeper (`upstream::Pool`) closes it.

use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use tokio::net::TcpStream;

use super::error::UpstreamError;
use crate::proxy::net::SendStream;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

/// An idle connection that can tell, without blocking, whether it may carry a request.
pub trait Reusable {
    /// Not closed by the peer, nothing unexpected waiting on it.
    fn usable(&mut self) -> bool;
}

/// An idle connection and since when it is idle.
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// The idle connections of one kind to one backend address (`None` inside when pooling is
/// off: `max_idle_per_host: 0`).
pub struct IdleQueue<C> {
    q: Option<ArrayQueue<Idle<C>>>,
    idle_timeout: Duration,
}

impl<C: Reusable> IdleQueue<C> {
    pub fn new(settings: &PoolSettings) -> Self {
        Self {
            q: (settings.max_idle_per_host > 0)
                .then(|| ArrayQueue::new(settings.max_idle_per_host)),
            idle_timeout: settings.idle_timeout,
        }
    }

    /// A fresh, usable idle connection, if there is one (stale ones are dropped, closing
    /// them).
    pub fn pop(&self) -> Option<C> {
        let q = self.q.as_ref()?;
        while let Some(mut idle) = q.pop() {
            if idle.since.elapsed() < self.idle_timeout && idle.conn.usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Back to the queue (a full queue, or pooling off, drops and so closes it).
    pub fn push(&self, conn: C) {
        if let Some(q) = &self.q {
            let _ = q.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Drops the connections that are stale or no longer usable (one lock-free pass);
    /// returns how many are left.
    pub fn sweep(&self) -> usize {
        let Some(q) = &self.q else { return 0 };
        for _ in 0..q.len() {
            let Some(mut idle) = q.pop() else { break };
            if idle.since.elapsed() < self.idle_timeout && idle.conn.usable() {
                let _ = q.push(idle);
            }
        }
        q.len()
    }
}

/// One backend address and how to connect to it.
pub struct Endpoint {
    authority: Box<str>,
    /// `authority` parsed as a socket address when it is an IP literal (no resolver then).
    addr: Option<SocketAddr>,
    connect_timeout: Duration,
}

impl Endpoint {
    pub fn new(authority: &str, settings: &PoolSettings) -> Self {
        Self {
            authority: authority.into(),
            addr: authority.parse().ok(),
            connect_timeout: settings.connect_timeout,
        }
    }

    /// The backend address (`host:port`).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// A new TCP connection to the backend (connect timeout, `TCP_NODELAY`), writing with
    /// `send`.
    pub async fn open(&self) -> Result<SendStream, UpstreamError> {
        let stream = tokio::time::timeout(self.connect_timeout, self.tcp_connect())
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(self.authority.to_string()))??;
        let _ = stream.set_nodelay(true);
        Ok(SendStream::new(stream))
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

/// FxHash (the rustc hasher): the key is a short backend address, hashed once per request;
/// SipHash's DoS resistance buys nothing for keys that come from our own configuration.
#[derive(Default)]
pub struct FxHasher(u64);

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, BuildHasherDefault};

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

    struct Conn(bool);
    impl Reusable for Conn {
        fn usable(&mut self) -> bool {
            self.0
        }
    }

    fn settings(max_idle_per_host: usize) -> PoolSettings {
        PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host,
        }
    }

    #[test]
    fn endpoint_parses_ip_literals_only() {
        let s = settings(0);
        assert!(Endpoint::new("127.0.0.1:80", &s).addr.is_some());
        assert!(Endpoint::new("[::1]:80", &s).addr.is_some());
        assert!(Endpoint::new("app.internal:80", &s).addr.is_none());
    }

    #[test]
    fn idle_queue_is_bounded_and_skips_unusable() {
        let off = IdleQueue::<Conn>::new(&settings(0));
        off.push(Conn(true));
        assert!(off.pop().is_none());
        let q = IdleQueue::new(&settings(2));
        q.push(Conn(false));
        q.push(Conn(true));
        q.push(Conn(true)); // full: dropped
        assert_eq!(q.sweep(), 1);
        assert!(q.pop().is_some());
        assert!(q.pop().is_none());
    }
}
