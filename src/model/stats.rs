//! Per-backend counters and a latency histogram. Plain atomics, shared by every table snapshot
//! that holds the backend, so a table swap never resets them and the request path never locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters for one backend of one route.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Requests (and tunnels) currently being served.
    pub inflight: AtomicU64,
    /// Requests sent to this backend.
    pub requests: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    /// Failed attempts: connect errors, resets, timeouts.
    pub failures: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Open WebSocket (upgrade) tunnels.
    pub tunnels: AtomicU64,
    /// Request durations (until the response body ended), for p50/p99.
    pub latency: LatencyHistogram,
}

const SUB: u32 = 4;
const LINEAR: u64 = 16;
const BUCKETS: usize = 16 + 4 * 60;

/// Lock-free latency histogram in microseconds: exact below 16 µs, then four buckets per
/// power of two (quantiles are reported as a bucket's upper bound: at most ~19% high).
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.count())
            .finish()
    }
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // floor(log2), >= 4
    let sub = (us >> (e - 2)) & u64::from(SUB - 1);
    (LINEAR as usize + (e as usize - 4) * SUB as usize + sub as usize).min(BUCKETS - 1)
}

/// Largest value (µs) that falls into bucket `i`.
fn bucket_upper(i: usize) -> u64 {
    if (i as u64) < LINEAR {
        return i as u64;
    }
    let k = i - LINEAR as usize;
    let e = (k / SUB as usize) as u32 + 4;
    let sub = (k % SUB as usize) as u64;
    let step = 1u64 << (e - 2);
    (1u64 << e) + (sub + 1) * step - 1
}

impl LatencyHistogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `q` quantile (0.0-1.0), or `None` before the first sample.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_upper(i)));
            }
        }
        None
    }
}

impl BackendStats {
    /// Counts a response status.
    pub fn record_status(&self, status: u16) {
        let c = match status {
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Decrements an in-flight counter when dropped, however the request ends.
#[derive(Debug)]
pub struct InflightGuard<'a>(&'a AtomicU64);

impl<'a> InflightGuard<'a> {
    pub fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_and_guard() {
        let s = BackendStats::default();
        for code in [200, 204, 301, 404, 499, 500, 503] {
            s.record_status(code);
        }
        assert_eq!(s.responses_2xx.load(Ordering::Relaxed), 2);
        assert_eq!(s.responses_3xx.load(Ordering::Relaxed), 1);
        assert_eq!(s.responses_4xx.load(Ordering::Relaxed), 2);
        assert_eq!(s.responses_5xx.load(Ordering::Relaxed), 2);
        {
            let _g = InflightGuard::new(&s.inflight);
            assert_eq!(s.inflight.load(Ordering::Relaxed), 1);
        }
        assert_eq!(s.inflight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        // Every value lands in a bucket whose upper bound is >= it and not far above.
        for us in [
            0u64, 1, 15, 16, 17, 31, 32, 100, 999, 1000, 12_345, 1_000_000, 60_000_000,
        ] {
            let b = bucket_of(us);
            assert!(bucket_upper(b) >= us, "{us}");
            assert!(
                bucket_upper(b) as f64 <= us as f64 * 1.25 + 1.0,
                "{us}: {}",
                bucket_upper(b)
            );
            if b > 0 {
                assert!(bucket_upper(b - 1) < us, "{us}");
            }
        }
        let h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((50_000.0..=50_000.0 * 1.25).contains(&p50), "p50 {p50}");
        assert!((99_000.0..=99_000.0 * 1.25).contains(&p99), "p99 {p99}");
    }
}
