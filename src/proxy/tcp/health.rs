//! Active TCP health checks for pool members: connect within the timeout, optionally write
//! `send` and read until `expect` appears. One task ticks every 100ms and starts the checks
//! that are due; results feed the shared rise/fall state (`model::health`), which the
//! balancer reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Pools;
use crate::model::health::{unix_ms, Transition};
use crate::model::pool::TcpCheckSpec;

pub(super) async fn run(pools: Arc<ArcSwap<Pools>>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    return;
                }
            }
        }
        let now = unix_ms();
        for pool in pools.load().values() {
            let Some(check) = &pool.check else { continue };
            for m in &pool.members {
                let due = m.shared.next_check_ms.load(Ordering::Relaxed);
                if due > now {
                    continue;
                }
                let next = now + check.interval.as_millis() as u64;
                if m.shared
                    .next_check_ms
                    .compare_exchange(due, next, Ordering::AcqRel, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let (m, check, pool) = (m.clone(), check.clone(), pool.name.clone());
                tokio::spawn(async move {
                    let ok = probe(m.addr, &check).await;
                    let t = m
                        .shared
                        .health
                        .record(ok, check.rise, check.fall, unix_ms());
                    match t {
                        Some(Transition::WentDown) => {
                            tracing::warn!(%pool, member = %m.id, addr = %m.addr, "tcp member down")
                        }
                        Some(Transition::WentUp) => {
                            tracing::info!(%pool, member = %m.id, addr = %m.addr, "tcp member up")
                        }
                        None => {}
                    }
                });
            }
        }
    }
}

/// One check: connect, optionally send, optionally expect; all within `check.timeout`.
async fn probe(addr: std::net::SocketAddr, check: &TcpCheckSpec) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        if let Some(send) = &check.send {
            s.write_all(send.as_bytes()).await.ok()?;
        }
        if let Some(expect) = &check.expect {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while got.len() < 64 * 1024 {
                let n = s.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                got.extend_from_slice(&buf[..n]);
                if got.windows(expect.len()).any(|w| w == expect.as_bytes()) {
                    return Some(());
                }
            }
            return None;
        }
        Some(())
    };
    matches!(
        tokio::time::timeout(check.timeout, attempt).await,
        Ok(Some(()))
    )
}
