//! Active TCP health checks for pool members: connect within the timeout, optionally write
//! `send` and read until `expect` appears. One task ticks every 100ms and starts the checks
//! that are due; results feed the shared rise/fall state (`model::health`), which the
//! balancer reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
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
                    let ok = crate::proxy::health::probe_tcp(m.addr, &check).await;
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
