//! Balancing decisions over an immutable backend list. The only mutable state is atomics that
//! live inside the route-table snapshot, so picking a backend never takes a lock.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Greatest common divisor, used to shrink weighted schedules.
fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Builds a smooth weighted round-robin schedule (the interleaving nginx's algorithm produces):
/// for weights 5,1,1 it yields `a a b a c a a` rather than `a a a a a b c`. `weights[i] == 0`
/// means the backend is not eligible. The result holds indexes into `weights`.
pub fn smooth_wrr_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1);
    let w: Vec<i64> = weights.iter().map(|w| i64::from(*w / g)).collect();
    let total: i64 = w.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for i in 0..w.len() {
            if w[i] == 0 {
                continue;
            }
            current[i] += w[i];
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// A weighted round-robin picker: a precomputed schedule and one atomic cursor.
#[derive(Debug, Default)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    /// `weights[i] == 0` excludes backend `i`.
    pub fn new(weights: &[u32]) -> Self {
        Self {
            schedule: smooth_wrr_schedule(weights),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Starts the cursor at `start` (so consecutive table builds do not all begin at index 0).
    pub fn with_start(weights: &[u32], start: usize) -> Self {
        let rr = Self::new(weights);
        rr.cursor.store(start, Ordering::Relaxed);
        rr
    }

    /// Current cursor, so a rebuilt table can continue where this one was.
    pub fn position(&self) -> usize {
        self.cursor.load(Ordering::Relaxed)
    }

    /// Next backend index, skipping those for which `usable` says no (at most one full turn).
    pub fn pick(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let idx = self.schedule[(start.wrapping_add(k)) % n] as usize;
            if usable(idx) {
                return Some(idx);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(weights: &[u32], picks: usize) -> Vec<usize> {
        let rr = RoundRobin::new(weights);
        let mut c = vec![0; weights.len()];
        for _ in 0..picks {
            c[rr.pick(|_| true).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn weighted_distribution_table() {
        let cases: &[(&[u32], usize, &[usize])] = &[
            (&[1], 10, &[10]),
            (&[1, 1], 10, &[5, 5]),
            (&[1, 1, 1], 300, &[100, 100, 100]),
            (&[3, 1], 400, &[300, 100]),
            (&[5, 1, 1], 700, &[500, 100, 100]),
            (&[2, 0, 2], 10, &[5, 0, 5]),
            (&[100, 50], 300, &[200, 100]),
        ];
        for (weights, picks, want) in cases {
            assert_eq!(counts(weights, *picks), *want, "weights {weights:?}");
        }
    }

    #[test]
    fn schedule_is_smooth() {
        // nginx's example: weights 5,1,1 interleave the heavy backend.
        assert_eq!(smooth_wrr_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        // Common factors are divided out, keeping the schedule short.
        assert_eq!(smooth_wrr_schedule(&[100, 100]).len(), 2);
    }

    #[test]
    fn empty_and_skips() {
        assert_eq!(RoundRobin::new(&[]).pick(|_| true), None);
        assert_eq!(RoundRobin::new(&[0, 0]).pick(|_| true), None);
        let rr = RoundRobin::new(&[1, 1, 1]);
        for _ in 0..10 {
            assert_eq!(rr.pick(|i| i == 2), Some(2));
        }
        assert_eq!(rr.pick(|_| false), None);
    }
}
