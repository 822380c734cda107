//! The upstream side of the proxy: per backend address, pooled HTTP/1.1 connections and two
//! ways of sending a request on them.
//!
//! - `direct.rs`: replayable requests (bodiless GET/HEAD/OPTIONS, no upgrade) are written and
//!   their responses read by the request's own task, no connection task in between;
//! - `client.rs`: everything else (bodies, upgrades) on hyper's client connections;
//! - `pool.rs`: what both pool with (an `Endpoint` to connect to, `IdleQueue`s of idle
//!   connections); a leaf that knows neither path.
//!
//! One rule decides both which path a request takes and whether it may be sent again
//! ([`Exchange::of`]); one framing rule (`proxy::framing`) holds both paths' responses.
//! The layering is one-way: `forward` → `upstream` → `pool`/`body`/`framing`/`net`.
//! Invariants: no lock on the request path (an `ArcSwap` map of hosts, read once per
//! request, lock-free queues); idle connections past `idle_timeout` are closed by a sweeper
//! task and never handed out; hosts unused for a sweep and with nothing idle are forgotten.

pub mod client;
pub mod direct;
mod error;
pub mod pool;

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::body::{BoxError, RequestBody};
use client::{HyperBody, Sender};
use direct::{DirectBody, DirectConn};
pub use error::UpstreamError;
pub use pool::PoolSettings;
use pool::{Endpoint, FxHasher, IdleQueue};

/// What kind of exchange a request is; decided once per request from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Bodiless GET/HEAD/OPTIONS without an upgrade: takes the direct path, and may be sent
    /// again if its backend failed before answering (on a new connection to the same
    /// backend when a pooled one turned out dead, on another backend when the backend
    /// failed).
    Replayable,
    /// A request with a body (or another method): hyper's client, sent once.
    Streaming,
    /// An upgrade (`Connection: upgrade`): a fresh hyper connection, never pooled.
    Upgrade,
}

impl Exchange {
    /// The one rule: `body_ended` is the client body's `is_end_stream()`.
    pub fn of(method: &Method, upgrade: bool, body_ended: bool) -> Self {
        if upgrade {
            Exchange::Upgrade
        } else if body_ended && matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            Exchange::Replayable
        } else {
            Exchange::Streaming
        }
    }
}

type HostMap = HashMap<Box<str>, Arc<HostPool>, BuildHasherDefault<FxHasher>>;

/// The idle connections to one backend address, one queue per path.
pub struct HostPool {
    endpoint: Endpoint,
    hyper: Arc<IdleQueue<Sender>>,
    direct: Arc<IdleQueue<DirectConn>>,
    /// Set on every checkout; the sweeper forgets hosts that stayed unused and empty.
    used: AtomicBool,
}

impl HostPool {
    fn new(authority: &str, settings: &PoolSettings) -> Self {
        Self {
            endpoint: Endpoint::new(authority, settings),
            hyper: Arc::new(IdleQueue::new(settings)),
            direct: Arc::new(IdleQueue::new(settings)),
            used: AtomicBool::new(true),
        }
    }

    /// The backend address this pool connects to.
    pub fn authority(&self) -> &str {
        self.endpoint.authority()
    }

    /// Drops idle connections that are closed or past the idle timeout. Returns how many
    /// are left.
    fn sweep(&self) -> usize {
        self.hyper.sweep() + self.direct.sweep()
    }
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

    /// Sends `req` to `host` by the path its `exchange` kind takes. Each path replaces a
    /// pooled connection found dead before the request went out by a fresh one, once.
    pub async fn send(
        &self,
        host: &HostPool,
        req: Request<RequestBody>,
        exchange: Exchange,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match exchange {
            Exchange::Replayable => Ok(direct::send(&host.endpoint, &host.direct, &req)
                .await?
                .map(UpstreamBody::Direct)),
            // Boxed: hyper's client path would otherwise size every request's future (it
            // sits in hyper's per-connection slot and is copied into it per request); these
            // requests carry a body or an upgrade and allocate anyway.
            Exchange::Streaming | Exchange::Upgrade => Ok(Box::pin(client::send(
                &host.endpoint,
                &host.hyper,
                req,
                exchange == Exchange::Upgrade,
            ))
            .await?
            .map(UpstreamBody::Hyper)),
        }
    }

    /// One idle connection of the direct path, with its backend address (for the hand-over
    /// to a successor: it goes along with a client connection, so the successor's first
    /// request on it finds a pooled upstream connection instead of connecting).
    pub fn take_idle_direct(&self) -> Option<(Box<str>, DirectConn)> {
        let hosts = self.hosts.load();
        hosts
            .iter()
            .find_map(|(authority, h)| h.direct.pop().map(|c| (authority.clone(), c)))
    }

    /// An idle connection to `authority` from the previous process joins this pool.
    pub fn adopt_direct(&self, authority: &str, stream: tokio::net::TcpStream) {
        self.host(authority)
            .direct
            .push(DirectConn::new(crate::proxy::net::SendStream::new(stream)));
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

/// An upstream response body: from a hyper client connection or from the direct path. Each
/// hands its own connection back to its idle queue when it ended cleanly.
pub enum UpstreamBody {
    Hyper(HyperBody),
    Direct(DirectBody),
}

impl UpstreamBody {
    /// The connection is not to be reused (the proxy saw `Connection: close` or HTTP/1.0).
    pub fn no_reuse(&mut self) {
        match self {
            UpstreamBody::Hyper(b) => b.no_reuse(),
            UpstreamBody::Direct(b) => b.no_reuse(),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            UpstreamBody::Direct(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Direct(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Direct(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Pool::send`'s future is part of every request's future, which hyper keeps per
    /// connection and moves into place per request: hyper's client path (bodies, upgrades)
    /// is boxed, so the direct path's requests do not carry its size.
    #[test]
    fn send_future_does_not_hold_the_client_path() {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_idle_per_host: 4,
        };
        let pool = Pool::new(settings.clone());
        let host = HostPool::new("127.0.0.1:9", &settings);
        let send = pool.send(
            &host,
            Request::new(RequestBody::empty()),
            Exchange::Replayable,
        );
        let client = client::send(
            &host.endpoint,
            &host.hyper,
            Request::new(RequestBody::empty()),
            false,
        );
        let (send, client) = (std::mem::size_of_val(&send), std::mem::size_of_val(&client));
        assert!(
            send < client,
            "Pool::send's future ({send} bytes) holds hyper's client path ({client} bytes)"
        );
    }

    #[test]
    fn one_rule_for_path_and_replay() {
        assert_eq!(
            Exchange::of(&Method::GET, false, true),
            Exchange::Replayable
        );
        assert_eq!(
            Exchange::of(&Method::HEAD, false, true),
            Exchange::Replayable
        );
        assert_eq!(
            Exchange::of(&Method::OPTIONS, false, true),
            Exchange::Replayable
        );
        assert_eq!(Exchange::of(&Method::GET, true, true), Exchange::Upgrade);
        assert_eq!(
            Exchange::of(&Method::GET, false, false),
            Exchange::Streaming
        );
        assert_eq!(
            Exchange::of(&Method::POST, false, true),
            Exchange::Streaming
        );
        assert_eq!(
            Exchange::of(&Method::DELETE, false, true),
            Exchange::Streaming
        );
    }
}
