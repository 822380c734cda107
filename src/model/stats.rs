//! Per-backend counters and a latency histogram. Plain atomics, shared by every table snapshot
//! that holds the backend, so a table swap never resets them and the request path never locks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
    /// Failed attempts the proxy answered itself (502/504, not retried): counted in both
    /// `failures` and `responses_5xx`, so per-request error rates subtract them once.
    pub failures_answered: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Bytes from clients to the backend (TCP frontends; HTTP requests do not count them).
    pub bytes_in: AtomicU64,
    /// Open WebSocket (upgrade) tunnels.
    pub tunnels: AtomicU64,
    /// Request durations (until the response body ended), for p50/p99.
    pub latency: super::histogram::LatencyHistogram,
    /// Set once the current table no longer sends anything here (the backend is gone from
    /// its route, or in `maint`). A request that picked this backend from an older snapshot
    /// counts itself in `inflight` first and reads this flag second (both `SeqCst`); the
    /// drain waits the other way round (flag published, then `inflight` read), so either
    /// the request sees the flag and picks again from the current table, or the drain sees
    /// the request: nothing starts on a backend after its drain saw zero.
    pub retired: AtomicBool,
}

impl BackendStats {
    /// Counts a failed attempt the proxy answers itself with `status` (502, 504).
    pub fn record_answered_failure(&self, status: u16) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.failures_answered.fetch_add(1, Ordering::Relaxed);
        self.record_status(status);
    }

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
}
