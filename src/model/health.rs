//! Backend health: the pure rise/fall state machine, the slow-start weight ramp, and
//! `BackendHealth`, the lock-free cell that holds one backend's runtime health.
//!
//! Invariant: runtime health is not part of any spec. A `BackendHealth` is created when a
//! backend first appears in a table and is carried into every later table that has the same
//! (route name, backend id, address), exactly like `BackendStats`; so a table rebuilt by any
//! writer (config reload, API, prober) keeps the backend's up/down state and its `since`.
//! The request path only reads and CAS-updates its atomic word; it never locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Default consecutive failures that take an up backend down.
pub const DEFAULT_FALL: u32 = 3;
/// Default consecutive successes that bring a down backend up.
pub const DEFAULT_RISE: u32 = 2;

/// A change of a backend's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    WentDown,
    WentUp,
}

/// The rise/fall machine (HAProxy's `rise`/`fall`): an up backend goes down after `fall`
/// consecutive failures, a down one comes up after `rise` consecutive successes. A result
/// of the other kind resets the streak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    pub up: bool,
    /// Consecutive results that point away from the current state.
    pub streak: u32,
}

impl HealthState {
    pub fn new(up: bool) -> Self {
        Self { up, streak: 0 }
    }

    /// Applies one check result; returns the transition it caused, if any.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        let (needed, flips_to) = if self.up {
            (fall.max(1), Transition::WentDown)
        } else {
            (rise.max(1), Transition::WentUp)
        };
        // A success while up (or a failure while down) confirms the state.
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        if self.streak >= needed {
            self.up = !self.up;
            self.streak = 0;
            return Some(flips_to);
        }
        None
    }

    fn pack(self) -> u64 {
        (u64::from(self.up) << 32) | u64::from(self.streak)
    }

    fn unpack(w: u64) -> Self {
        Self {
            up: (w >> 32) & 1 == 1,
            streak: w as u32,
        }
    }
}

/// Effective weight of a backend `elapsed` after it came up, ramping linearly from 1 to
/// `weight` over `slowstart` (HAProxy's `slowstart`). Weight 0 stays 0; no slow start, or a
/// ramp that has finished, gives the full weight.
pub fn slowstart_weight(weight: u32, elapsed: Duration, slowstart: Option<Duration>) -> u32 {
    let Some(ramp) = slowstart.filter(|d| !d.is_zero()) else {
        return weight;
    };
    if weight == 0 || elapsed >= ramp {
        return weight;
    }
    let w = (u128::from(weight) * elapsed.as_millis()) / ramp.as_millis();
    (w as u32).clamp(1, weight)
}

/// Bit of the packed state: the current streak holds at least one active-check result.
const ACTIVE_STREAK: u64 = 1 << 33;

/// Runtime health of one backend, shared by every table snapshot that holds it.
#[derive(Debug)]
pub struct BackendHealth {
    /// `HealthState` packed: bit 32 = up, low 32 bits = streak, bit 33 = the streak holds an
    /// active-check result (so a request's success does not cancel failing checks).
    state: AtomicU64,
    /// Unix milliseconds of the last transition (or of creation); drives slow start.
    since_ms: AtomicU64,
}

impl BackendHealth {
    /// A backend that is up since `since_ms` (unix ms; 0 = long ago, no slow start).
    pub fn new_up(since_ms: u64) -> Self {
        Self {
            state: AtomicU64::new(HealthState::new(true).pack()),
            since_ms: AtomicU64::new(since_ms),
        }
    }

    pub fn state(&self) -> HealthState {
        HealthState::unpack(self.state.load(Ordering::Acquire))
    }

    pub fn is_up(&self) -> bool {
        self.state().up
    }

    /// Unix ms of the last up/down change.
    pub fn since_ms(&self) -> u64 {
        self.since_ms.load(Ordering::Acquire)
    }

    /// A request's good response. On an up backend with no failure streak it changes
    /// nothing: one load, no clock read (the request path calls this for every good
    /// response). It clears a streak of passive failures, but not one that holds failed
    /// active checks: an app whose health endpoint fails must leave the route even while
    /// its other pages answer (before, steady traffic kept resetting the check's streak and
    /// a failing check took seconds, or forever, to take the backend out).
    pub fn record_success(&self, rise: u32, fall: u32) -> Option<Transition> {
        let cur = self.state.load(Ordering::Acquire);
        if cur == HealthState::new(true).pack() || cur & ACTIVE_STREAK != 0 {
            return None;
        }
        self.record(true, rise, fall, unix_ms())
    }

    /// Feeds one passive result (a request's transport failure) into the machine, atomically.
    pub fn record(&self, ok: bool, rise: u32, fall: u32, now_ms: u64) -> Option<Transition> {
        self.record_from(ok, rise, fall, now_ms, false)
    }

    /// Feeds one active health-check result into the machine, atomically.
    pub fn record_check(&self, ok: bool, rise: u32, fall: u32, now_ms: u64) -> Option<Transition> {
        self.record_from(ok, rise, fall, now_ms, true)
    }

    fn record_from(
        &self,
        ok: bool,
        rise: u32,
        fall: u32,
        now_ms: u64,
        active: bool,
    ) -> Option<Transition> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let mut s = HealthState::unpack(cur);
            let before = s.streak;
            let t = s.record(ok, rise, fall);
            let mut next = s.pack();
            // The mark survives while the streak goes on, and is set by an active result.
            if s.streak > 0 && (active || (cur & ACTIVE_STREAK != 0 && s.streak > before)) {
                next |= ACTIVE_STREAK;
            }
            if next == cur {
                return t;
            }
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if t.is_some() {
                        self.since_ms.store(now_ms, Ordering::Release);
                    }
                    return t;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Wall-clock unix milliseconds: the one clock read of the model, kept here so callers that
/// want determinism (tests) can pass their own `now` to the `_at` functions instead.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why one health check failed (one line, for deploy events and logs).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{method} {target}: connect: {source}")]
    Connect {
        method: http::Method,
        target: String,
        source: std::io::Error,
    },
    #[error("{method} {target}: {message}")]
    Http {
        method: http::Method,
        target: String,
        message: String,
    },
    #[error("{method} {target}: no answer within {timeout:?}")]
    Timeout {
        method: http::Method,
        target: String,
        timeout: Duration,
    },
    #[error("{method} {target}: answered {status}, expected {expect}")]
    Status {
        method: http::Method,
        target: String,
        status: u16,
        expect: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_fall_table() {
        use Transition::*;
        // (start up?, rise, fall, results, transitions expected after each result, final up)
        type Case = (
            bool,
            u32,
            u32,
            &'static str,
            &'static [Option<Transition>],
            bool,
        );
        let cases: &[Case] = &[
            (true, 2, 3, "fff", &[None, None, Some(WentDown)], false),
            (true, 2, 3, "ffsff", &[None, None, None, None, None], true),
            (
                true,
                2,
                3,
                "fffs",
                &[None, None, Some(WentDown), None],
                false,
            ),
            (
                true,
                2,
                3,
                "fffss",
                &[None, None, Some(WentDown), None, Some(WentUp)],
                true,
            ),
            (false, 2, 3, "sfss", &[None, None, None, Some(WentUp)], true),
            (true, 1, 1, "fs", &[Some(WentDown), Some(WentUp)], true),
            // rise/fall of 0 act as 1.
            (true, 0, 0, "f", &[Some(WentDown)], false),
            (true, 2, 3, "ssss", &[None, None, None, None], true),
        ];
        for (up, rise, fall, seq, want, final_up) in cases {
            let mut s = HealthState::new(*up);
            let got: Vec<_> = seq
                .chars()
                .map(|c| s.record(c == 's', *rise, *fall))
                .collect();
            assert_eq!(
                &got, want,
                "start up={up} rise={rise} fall={fall} seq={seq}"
            );
            assert_eq!(s.up, *final_up, "{seq}");
        }
    }

    #[test]
    fn atomic_cell_matches_machine_and_stamps_since() {
        let h = BackendHealth::new_up(0);
        assert_eq!(h.record(false, 2, 3, 10), None);
        assert_eq!(h.record(false, 2, 3, 20), None);
        assert_eq!(h.since_ms(), 0);
        assert_eq!(h.record(false, 2, 3, 30), Some(Transition::WentDown));
        assert!(!h.is_up());
        assert_eq!(h.since_ms(), 30);
        assert_eq!(h.record(true, 2, 3, 40), None);
        assert_eq!(h.record(true, 2, 3, 50), Some(Transition::WentUp));
        assert!(h.is_up());
        assert_eq!(h.since_ms(), 50);
        // A success clears a failure streak.
        assert_eq!(h.record(false, 2, 3, 60), None);
        assert_eq!(h.state().streak, 1);
        assert_eq!(h.record_success(2, 3), None);
        assert_eq!(h.state(), HealthState::new(true));
        assert_eq!(h.since_ms(), 50);
    }

    #[test]
    fn request_successes_do_not_cancel_failing_checks() {
        // fall 2: one failed check, then request successes, then a second failed check.
        let h = BackendHealth::new_up(0);
        assert_eq!(h.record_check(false, 2, 2, 10), None);
        for _ in 0..100 {
            assert_eq!(h.record_success(2, 2), None);
        }
        assert_eq!(h.state().streak, 1, "the check's failure streak stands");
        assert_eq!(h.record_check(false, 2, 2, 20), Some(Transition::WentDown));
        // A passing check clears the streak (and the mark).
        let h = BackendHealth::new_up(0);
        h.record_check(false, 2, 3, 10);
        assert_eq!(h.record_check(true, 2, 3, 11), None);
        assert_eq!(h.state(), HealthState::new(true));
        // Passive failures alone are still cleared by a good response.
        let h = BackendHealth::new_up(0);
        h.record(false, 2, 3, 10);
        h.record(false, 2, 3, 11);
        assert_eq!(h.record_success(2, 3), None);
        assert_eq!(h.state(), HealthState::new(true));
        // A passive failure joining a check's streak keeps the mark.
        let h = BackendHealth::new_up(0);
        h.record_check(false, 2, 3, 10);
        h.record(false, 2, 3, 11);
        h.record_success(2, 3);
        assert_eq!(h.state().streak, 2);
        assert_eq!(h.record(false, 2, 3, 12), Some(Transition::WentDown));
    }

    #[test]
    fn slowstart_table() {
        let s = |ms| Duration::from_millis(ms);
        let cases: &[(u32, u64, Option<u64>, u32)] = &[
            (100, 0, Some(10_000), 1),
            (100, 1_000, Some(10_000), 10),
            (100, 5_000, Some(10_000), 50),
            (100, 9_999, Some(10_000), 99),
            (100, 10_000, Some(10_000), 100),
            (100, 60_000, Some(10_000), 100),
            (100, 0, None, 100),
            (100, 0, Some(0), 100),
            (0, 5_000, Some(10_000), 0),
            (1, 100, Some(10_000), 1),
            (1000, 2_500, Some(10_000), 250),
        ];
        for (w, elapsed, ramp, want) in cases {
            assert_eq!(
                slowstart_weight(*w, s(*elapsed), ramp.map(s)),
                *want,
                "weight {w} elapsed {elapsed} ramp {ramp:?}"
            );
        }
    }
}
