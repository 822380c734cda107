//! One proxied TCP connection: pick a member (trying the next usable one when a connect fails
//! or times out), send the optional PROXY v2 header, then copy both directions until both
//! have ended, one fails, the connection is idle past the idle timeout, or its frontend or
//! member is closed (maint, frontend removed, process drain timeout).
//!
//! Invariant: a member's open-connection count is raised before connecting and lowered when
//! the connection ends (a guard), so `max_connections` holds under concurrent accepts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{FrontendShared, Member, PoolRt};
use crate::model::frontend::FrontendSpec;
use crate::model::pool::{pick_least, pick_source, Candidate, PoolBalance, ProxyProtocol};
use crate::model::stats::BackendStats;

/// Copy buffer per direction: small at first (short connections pay little to zero it),
/// grown once a read fills it (streams move big chunks with few system calls).
const BUF_START: usize = 8 * 1024;
const BUF_MAX: usize = 64 * 1024;

/// Lowers a member's open count (its backend's `inflight`) when the connection ends.
struct OpenGuard(Arc<BackendStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PoolRt {
    /// Picks a usable member not in `tried` and reserves a connection slot on it.
    fn reserve(&self, client: std::net::IpAddr, tried: &[usize]) -> Option<(usize, OpenGuard)> {
        // A member that became full between the pick and the reservation is skipped; bounded
        // by the member count.
        let mut skip: Vec<usize> = tried.to_vec();
        for _ in 0..=self.members.len() {
            let usable = |i: usize| !skip.contains(&i) && self.members[i].usable();
            let idx = match self.balance {
                PoolBalance::RoundRobin => self.rr.pick(usable),
                PoolBalance::LeastConnections | PoolBalance::Source => {
                    let cands: Vec<Candidate<'_>> = self
                        .members
                        .iter()
                        .enumerate()
                        .map(|(i, m)| Candidate {
                            id: &m.id,
                            weight: m.weight,
                            usable: usable(i),
                            open: m.stats.inflight.load(Ordering::Relaxed),
                        })
                        .collect();
                    if self.balance == PoolBalance::Source {
                        pick_source(client, &cands)
                    } else {
                        let start = self.rr.position();
                        self.rr.advance();
                        pick_least(start, &cands)
                    }
                }
            }?;
            let m = &self.members[idx];
            let now = m.stats.inflight.fetch_add(1, Ordering::AcqRel) + 1;
            let guard = OpenGuard(m.stats.clone());
            if m.max_connections > 0 && now > u64::from(m.max_connections) {
                drop(guard);
                skip.push(idx);
                continue;
            }
            return Some((idx, guard));
        }
        None
    }
}

impl Member {
    fn usable(&self) -> bool {
        self.state == crate::model::route::ServerState::Ready
            && self.weight > 0
            && self.health.is_up()
            && (self.max_connections == 0
                || self.stats.inflight.load(Ordering::Relaxed) < u64::from(self.max_connections))
    }
}

/// Serves one accepted connection to the end.
pub(super) async fn serve(
    pools: Arc<std::collections::HashMap<String, Arc<PoolRt>>>,
    spec: Arc<FrontendSpec>,
    fe: Arc<FrontendShared>,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let stats = &fe.stats;
    stats.total.fetch_add(1, Ordering::Relaxed);
    let Some(pool) = pools.get(spec.pool_for(peer.ip())).cloned() else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut fe_kill = fe.kill.subscribe();
    let mut tried = Vec::new();
    let (member, _guard, mut upstream) = loop {
        let Some((idx, guard)) = pool.reserve(peer.ip(), &tried) else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(frontend = %spec.name(), %peer, "no usable member; connection closed");
            return;
        };
        tried.push(idx);
        let m = &pool.members[idx];
        match tokio::time::timeout(spec.timeouts.connect, TcpStream::connect(m.addr)).await {
            Ok(Ok(s)) => break (m.clone(), guard, s),
            Ok(Err(e)) => {
                m.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(member = %m.addr, error = %e, "connect failed; trying the next member");
            }
            Err(_) => {
                m.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(member = %m.addr, "connect timed out; trying the next member");
            }
        }
    };
    let ms = member.stats.clone();
    ms.requests.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if pool.proxy_protocol == ProxyProtocol::V2 {
        let h = super::proxy_v2::header(peer, local);
        if upstream.write_all(&h).await.is_err() {
            stats.active.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    }
    let mut member_kill = member.shared.kill.subscribe();
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let idle = spec.timeouts.idle;
    {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        let (in_c, out_c) = (
            [&stats.bytes_in, &ms.bytes_in],
            [&stats.bytes_out, &ms.bytes_out],
        );
        let up = pipe(&mut cr, &mut uw, &in_c, &last, start);
        let down = pipe(&mut ur, &mut cw, &out_c, &last, start);
        let both = async { tokio::try_join!(up, down) };
        tokio::select! {
            _ = both => {}
            _ = idle_watch(&last, start, idle) => {
                tracing::debug!(%peer, "idle timeout; connection closed");
            }
            _ = fe_kill.changed() => {}
            _ = member_kill.changed() => {}
        }
    }
    stats.active.fetch_sub(1, Ordering::Relaxed);
}

/// Copies `r` to `w` until EOF (then half-closes `w`), counting bytes and noting activity.
async fn pipe<R, W>(
    r: &mut R,
    w: &mut W,
    counters: &[&AtomicU64],
    last: &AtomicU64,
    start: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_START];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        if n == buf.len() && buf.len() < BUF_MAX {
            buf.resize(BUF_MAX, 0);
        }
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Resolves once no byte moved in either direction for `idle`.
async fn idle_watch(last: &AtomicU64, start: Instant, idle: Duration) {
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = start + since + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}
