//! One proxied TCP connection: pick a member of the pool in the proxy's one route table
//! (trying the next usable one when a connect fails or times out), send the optional PROXY v2
//! header, then copy both directions until both have ended, one fails, the connection is idle
//! past the idle timeout, or its frontend or member is closed (maint for the drain timeout,
//! frontend removed, process drain timeout).
//!
//! Invariant: a member's open-connection count (its backend's `inflight`) is raised before
//! connecting and lowered when the connection ends (a guard), so `max_connections` holds under
//! concurrent accepts.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::FrontendShared;
use crate::model::frontend::FrontendSpec;
use crate::model::pool::ProxyProtocol;
use crate::model::route::{PickContext, Route, RouteKind, ServerState};
use crate::model::stats::BackendStats;
use crate::proxy::Tables;

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

/// Picks a usable member of `pool` not in `tried` (the pool's balancer, over the members
/// below their connection limit, `limits` by backend index) and reserves a connection slot.
fn reserve(
    pool: &Route,
    limits: &[u32],
    client: IpAddr,
    tried: &[usize],
) -> Option<(usize, OpenGuard)> {
    let limit = |i: usize| u64::from(limits.get(i).copied().unwrap_or(0));
    let ctx = PickContext {
        client: Some(client),
        ..PickContext::default()
    };
    // A member that became full between the pick and the reservation is skipped; bounded by
    // the member count.
    let mut skip: Vec<usize> = tried.to_vec();
    for _ in 0..=pool.backends.len() {
        let under = |i: usize| {
            limit(i) == 0 || pool.backends[i].stats.inflight.load(Ordering::Relaxed) < limit(i)
        };
        let idx = pool
            .pick_where(&ctx, |i| !skip.contains(&i) && under(i))
            .ok()?
            .index;
        let b = &pool.backends[idx];
        // Counted first, the flag read second (see `BackendStats::retired`): a member that a
        // newer table took out (or put in maint) after this snapshot was loaded gets nothing
        // new, so a deploy's drain that saw its count at zero is not reopened.
        let now = b.stats.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        let guard = OpenGuard(b.stats.clone());
        if (limit(idx) > 0 && now > limit(idx)) || b.stats.retired.load(Ordering::SeqCst) {
            drop(guard);
            skip.push(idx);
            continue;
        }
        return Some((idx, guard));
    }
    None
}

/// Serves one accepted connection to the end. `drain`: how long a member stays in maint
/// before its open connections are closed.
pub(super) async fn serve(
    tables: Arc<Tables>,
    spec: Arc<FrontendSpec>,
    fe: Arc<FrontendShared>,
    mut client: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    drain: Duration,
) {
    let stats = &fe.stats;
    stats.total.fetch_add(1, Ordering::Relaxed);
    let pool = tables.load().pool(spec.pool_for(peer.ip())).cloned();
    let Some((pool, proxy_protocol, limits)) = pool.as_ref().and_then(|p| match &p.kind {
        RouteKind::Pool {
            proxy_protocol,
            max_connections,
            ..
        } => Some((p, *proxy_protocol, max_connections)),
        RouteKind::Route => None,
    }) else {
        stats.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut fe_kill = fe.kill.subscribe();
    let mut tried = Vec::new();
    let (idx, _guard, mut upstream) = loop {
        let Some((idx, guard)) = reserve(pool, limits, peer.ip(), &tried) else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(frontend = %spec.name(), %peer, "no usable member; connection closed");
            return;
        };
        tried.push(idx);
        let m = &pool.backends[idx];
        let Some(addr) = m.socket else {
            // Validation admits only ip:port members; never connect to a name.
            m.stats.failures.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match tokio::time::timeout(spec.timeouts.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => break (idx, guard, s),
            Ok(Err(e)) => {
                m.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(member = %addr, error = %e, "connect failed; trying the next member");
            }
            Err(_) => {
                m.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(member = %addr, "connect timed out; trying the next member");
            }
        }
    };
    let member = &pool.backends[idx];
    let ms = member.stats.clone();
    ms.requests.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    if proxy_protocol == ProxyProtocol::V2 {
        let h = super::proxy_v2::header(peer, local);
        if upstream.write_all(&h).await.is_err() {
            stats.active.fetch_sub(1, Ordering::Relaxed);
            return;
        }
    }
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
            _ = maint_cut(&tables, &pool.name, &member.id, member.socket, drain) => {
                tracing::info!(pool = %pool.name, member = %member.id, "maint: connection closed after the drain timeout");
            }
        }
    }
    stats.active.fetch_sub(1, Ordering::Relaxed);
}

/// Resolves once the member (pool `pool`, id `id`, same address) has been in maint for
/// `drain`: maint closes open connections after the drain timeout, drain lets them finish.
/// Every change of the member is a table publish, so the table's generation watch wakes this.
async fn maint_cut(
    tables: &Tables,
    pool: &str,
    id: &str,
    addr: Option<SocketAddr>,
    drain: Duration,
) {
    let mut rx = tables.subscribe();
    let in_maint = || {
        tables.load().pool(pool).is_some_and(|p| {
            p.backends
                .iter()
                .any(|b| b.id == id && b.socket == addr && b.state == ServerState::Maint)
        })
    };
    loop {
        if in_maint() {
            tokio::time::sleep(drain).await;
            if in_maint() {
                return;
            }
        }
        if rx.changed().await.is_err() {
            // Publisher gone: nothing will change the member again.
            std::future::pending::<()>().await;
        }
    }
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
