//! A lock-free latency histogram: fixed log-scale buckets of `AtomicU64`, so recording from the
//! request path is two relaxed atomic adds and never allocates or locks. Values are kept in
//! microseconds; each power-of-two octave is split into `SUB` linear sub-buckets, which bounds
//! the relative error of a reported quantile by 1/SUB (12.5%). Snapshots are not atomic across
//! buckets (a concurrent `record` may be half seen), which is fine for statistics.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per octave (a power of two).
const SUB: u64 = 8;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Largest octave kept: 2^MAX_EXP µs ≈ 19 hours. Longer values land in the last bucket.
const MAX_EXP: u32 = 36;
/// Total buckets: exact values below `SUB`, then `SUB` per octave from 2^SUB_BITS to 2^MAX_EXP.
pub const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

/// Index of the bucket holding `us` microseconds.
fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= SUB_BITS
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let sub = (us >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + sub) as usize
}

/// Exclusive upper bound of bucket `i`, in microseconds.
pub fn bucket_upper_us(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i + 1;
    }
    let k = i - SUB;
    let exp = k / SUB + u64::from(SUB_BITS);
    let sub = k % SUB;
    (SUB + sub + 1) << (exp - u64::from(SUB_BITS))
}

/// Latency histogram for one backend. `Default` is empty.
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot();
        f.debug_struct("LatencyHistogram")
            .field("count", &s.count())
            .field("p50", &s.quantile(0.5))
            .field("p99", &s.quantile(0.99))
            .finish()
    }
}

impl LatencyHistogram {
    /// Records one observation. Lock-free; safe to call from any number of threads.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// A copy of the counters for reporting.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A point-in-time copy of a histogram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    counts: Vec<u64>,
    sum_us: u64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of all observations.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us)
    }

    /// The `q`-quantile (0.0..=1.0), reported as the upper bound of the bucket that holds it
    /// (an over-estimate by at most one bucket width). `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
        // Rank of the wanted observation, 1-based: ceil(q * total), at least 1.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_upper_us(i)));
            }
        }
        Some(Duration::from_micros(bucket_upper_us(BUCKETS - 1)))
    }

    /// An empty snapshot (the neutral element of [`HistogramSnapshot::add`]).
    pub fn empty() -> Self {
        HistogramSnapshot {
            counts: vec![0; BUCKETS],
            sum_us: 0,
        }
    }

    /// Adds `other`'s observations (several backends of one app version, summed).
    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
        self.sum_us += other.sum_us;
    }

    /// The observations made after `earlier` (a snapshot of the same histogram): what one
    /// canary step saw. Saturating, so a racy snapshot never underflows.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
        }
    }

    /// Observations strictly below `upper_us` microseconds. Exact when `upper_us` is a bucket
    /// boundary (every power of two is one), which is what Prometheus `le` labels use.
    pub fn count_below_us(&self, upper_us: u64) -> u64 {
        self.counts
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_upper_us(*i) <= upper_us)
            .map(|(_, c)| c)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut lower = 0;
        for i in 0..BUCKETS {
            let upper = bucket_upper_us(i);
            assert!(upper > lower, "bucket {i}: {lower}..{upper}");
            assert_eq!(bucket_of(lower), i, "lower bound of bucket {i}");
            assert_eq!(bucket_of(upper - 1), i, "last value of bucket {i}");
            // Width is at most 1/SUB of the lower bound (relative error bound).
            if lower >= SUB {
                assert!((upper - lower) * SUB <= lower, "bucket {i} too wide");
            }
            lower = upper;
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        for e in 3..=MAX_EXP {
            // Powers of two are boundaries, so Prometheus buckets are exact.
            let p = 1u64 << e;
            assert_eq!(bucket_upper_us(bucket_of(p - 1)), p);
        }
    }

    #[test]
    fn quantiles_table() {
        let cases: &[(&[u64], f64, Option<u64>)] = &[
            (&[], 0.5, None),
            (&[5], 0.5, Some(6)),
            (&[5], 0.99, Some(6)),
            (&[1, 2, 3, 4], 0.5, Some(3)),
            (&[1, 2, 3, 4], 1.0, Some(5)),
            (&[1, 2, 3, 4], 0.0, Some(2)),
        ];
        for (values, q, want) in cases {
            let h = LatencyHistogram::default();
            for v in *values {
                h.record(Duration::from_micros(*v));
            }
            let got = h.snapshot().quantile(*q).map(|d| d.as_micros() as u64);
            assert_eq!(got, *want, "{values:?} q={q}");
        }
    }

    #[test]
    fn quantiles_within_relative_error() {
        let h = LatencyHistogram::default();
        // 1..=10_000 ms in 1 ms steps: p50 ≈ 5 s, p99 ≈ 9.9 s.
        for ms in 1..=10_000u64 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 10_000);
        assert_eq!(s.sum(), Duration::from_millis(10_000 * 10_001 / 2));
        for (q, exact_ms) in [(0.5, 5_000.0), (0.99, 9_900.0), (0.999, 9_990.0)] {
            let got = s.quantile(q).unwrap().as_secs_f64() * 1000.0;
            assert!(
                got >= exact_ms && got <= exact_ms * (1.0 + 1.0 / SUB as f64) + 0.001,
                "q={q}: {got} ms vs {exact_ms} ms"
            );
        }
        assert_eq!(s.count_below_us(1 << 20), 1048); // values < 1.048576 s
        assert_eq!(s.count_below_us(u64::MAX), 10_000);
    }

    #[test]
    fn snapshots_add_and_subtract() {
        let a = LatencyHistogram::default();
        let b = LatencyHistogram::default();
        for ms in [1u64, 2, 3] {
            a.record(Duration::from_millis(ms));
        }
        let early = a.snapshot();
        a.record(Duration::from_millis(900));
        b.record(Duration::from_millis(5));
        let step = a.snapshot().since(&early);
        assert_eq!(step.count(), 1);
        assert_eq!(step.sum(), Duration::from_millis(900));
        let mut sum = HistogramSnapshot::empty();
        sum.add(&a.snapshot());
        sum.add(&b.snapshot());
        assert_eq!(sum.count(), 5);
        assert!(sum.quantile(1.0).unwrap() >= Duration::from_millis(900));
        // A snapshot older than `earlier` (a race) gives zeros, never wraps.
        assert_eq!(early.since(&a.snapshot()).count(), 0);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let h = std::sync::Arc::new(LatencyHistogram::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        h.record(Duration::from_micros(i * (t + 1)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("recorder thread");
        }
        assert_eq!(h.snapshot().count(), 40_000);
    }
}
