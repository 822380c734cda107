//! Pure renewal decisions: when a certificate should be renewed (ACME Renewal Information
//! window when the CA offers one, else when less than min(30 days, 1/3 of the lifetime)
//! remains), and how long to wait after a failed attempt. Times are `SystemTime`; callers pass
//! `now` and the random fraction so the functions stay deterministic.

use std::time::{Duration, SystemTime};

/// The longest margin ever kept before expiry: 30 days.
pub const MAX_MARGIN: Duration = Duration::from_secs(30 * 24 * 3600);

/// A suggested renewal window from the CA (RFC 9773 §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AriWindow {
    pub start: SystemTime,
    pub end: SystemTime,
}

/// What to do with one certificate now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Order a new certificate now.
    RenewNow,
    /// Nothing to do before this instant.
    WaitUntil(SystemTime),
}

/// Which rule produced the renewal time (reported in the status list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    Lifetime,
    Ari,
}

/// The instant at which a certificate valid over `[not_before, not_after]` should be renewed.
///
/// With a usable ARI window (end after start) the time is `start + jitter·(end − start)`,
/// `jitter` ∈ [0, 1) chosen once by the caller (RFC 9773 asks for a uniformly random point so
/// that clients spread out). Otherwise renewal is due when less than
/// min(30 days, lifetime / 3) remains: a 90-day certificate renews with 30 days left, a 45-day
/// one with 15, a 2-minute test certificate after 80 s.
pub fn renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    ari: Option<AriWindow>,
    jitter: f64,
) -> (SystemTime, Basis) {
    if let Some(w) = ari {
        if let Ok(span) = w.end.duration_since(w.start) {
            if !span.is_zero() {
                let j = if jitter.is_finite() {
                    jitter.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                return (w.start + span.mul_f64(j), Basis::Ari);
            }
        }
    }
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let margin = (lifetime / 3).min(MAX_MARGIN);
    (
        not_after.checked_sub(margin).unwrap_or(not_before),
        Basis::Lifetime,
    )
}

/// Whether to renew now or wait, given `now`.
pub fn decide(
    now: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    ari: Option<AriWindow>,
    jitter: f64,
) -> Decision {
    let (at, _) = renewal_time(not_before, not_after, ari, jitter);
    if now >= at {
        Decision::RenewNow
    } else {
        Decision::WaitUntil(at)
    }
}

/// Delay before retry number `failures` (1 = after the first failure): 10 s doubling up to
/// `max`. Never zero, so a broken CA is not hammered.
pub fn retry_delay(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(10);
    let exp = failures.saturating_sub(1).min(20);
    base.saturating_mul(1u32 << exp)
        .min(max)
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn decision_table() {
        struct Case {
            name: &'static str,
            not_before: u64,
            not_after: u64,
            ari: Option<(u64, u64)>,
            jitter: f64,
            now: u64,
            want: Decision,
            basis: Basis,
        }
        let cases = [
            Case {
                name: "90-day cert, day 59: wait until 30 days remain",
                not_before: 0,
                not_after: 90 * DAY,
                ari: None,
                jitter: 0.0,
                now: 59 * DAY,
                want: Decision::WaitUntil(t(60 * DAY)),
                basis: Basis::Lifetime,
            },
            Case {
                name: "90-day cert, day 60: renew",
                not_before: 0,
                not_after: 90 * DAY,
                ari: None,
                jitter: 0.0,
                now: 60 * DAY,
                want: Decision::RenewNow,
                basis: Basis::Lifetime,
            },
            Case {
                name: "45-day cert keeps a third (15 days), not 30",
                not_before: 0,
                not_after: 45 * DAY,
                ari: None,
                jitter: 0.0,
                now: 20 * DAY,
                want: Decision::WaitUntil(t(30 * DAY)),
                basis: Basis::Lifetime,
            },
            Case {
                name: "1-year cert: margin capped at 30 days",
                not_before: 0,
                not_after: 365 * DAY,
                ari: None,
                jitter: 0.0,
                now: 100 * DAY,
                want: Decision::WaitUntil(t(335 * DAY)),
                basis: Basis::Lifetime,
            },
            Case {
                name: "2-minute cert renews after 80 s",
                not_before: 0,
                not_after: 120,
                ari: None,
                jitter: 0.0,
                now: 79,
                want: Decision::WaitUntil(t(80)),
                basis: Basis::Lifetime,
            },
            Case {
                name: "2-minute cert at 80 s",
                not_before: 0,
                not_after: 120,
                ari: None,
                jitter: 0.0,
                now: 80,
                want: Decision::RenewNow,
                basis: Basis::Lifetime,
            },
            Case {
                name: "expired cert: renew",
                not_before: 0,
                not_after: 90 * DAY,
                ari: None,
                jitter: 0.0,
                now: 100 * DAY,
                want: Decision::RenewNow,
                basis: Basis::Lifetime,
            },
            Case {
                name: "ARI window overrides lifetime (earlier, e.g. revocation)",
                not_before: 0,
                not_after: 90 * DAY,
                ari: Some((10 * DAY, 11 * DAY)),
                jitter: 0.5,
                now: 5 * DAY,
                want: Decision::WaitUntil(t(10 * DAY + DAY / 2)),
                basis: Basis::Ari,
            },
            Case {
                name: "ARI window passed: renew now",
                not_before: 0,
                not_after: 90 * DAY,
                ari: Some((10 * DAY, 11 * DAY)),
                jitter: 0.5,
                now: 12 * DAY,
                want: Decision::RenewNow,
                basis: Basis::Ari,
            },
            Case {
                name: "ARI window later than lifetime rule is still followed",
                not_before: 0,
                not_after: 90 * DAY,
                ari: Some((70 * DAY, 72 * DAY)),
                jitter: 0.0,
                now: 65 * DAY,
                want: Decision::WaitUntil(t(70 * DAY)),
                basis: Basis::Ari,
            },
            Case {
                name: "ARI jitter out of range is clamped",
                not_before: 0,
                not_after: 90 * DAY,
                ari: Some((10 * DAY, 12 * DAY)),
                jitter: 7.0,
                now: 0,
                want: Decision::WaitUntil(t(12 * DAY)),
                basis: Basis::Ari,
            },
            Case {
                name: "empty ARI window is ignored",
                not_before: 0,
                not_after: 90 * DAY,
                ari: Some((10 * DAY, 10 * DAY)),
                jitter: 0.5,
                now: 0,
                want: Decision::WaitUntil(t(60 * DAY)),
                basis: Basis::Lifetime,
            },
            Case {
                name: "inverted ARI window is ignored",
                not_before: 0,
                not_after: 90 * DAY,
                ari: Some((11 * DAY, 10 * DAY)),
                jitter: 0.5,
                now: 0,
                want: Decision::WaitUntil(t(60 * DAY)),
                basis: Basis::Lifetime,
            },
            Case {
                name: "not_after before not_before: renew now",
                not_before: 100,
                not_after: 50,
                ari: None,
                jitter: 0.0,
                now: 60,
                want: Decision::RenewNow,
                basis: Basis::Lifetime,
            },
        ];
        for c in cases {
            let ari = c.ari.map(|(s, e)| AriWindow {
                start: t(s),
                end: t(e),
            });
            let got = decide(t(c.now), t(c.not_before), t(c.not_after), ari, c.jitter);
            assert_eq!(got, c.want, "{}", c.name);
            let (_, basis) = renewal_time(t(c.not_before), t(c.not_after), ari, c.jitter);
            assert_eq!(basis, c.basis, "{}", c.name);
        }
    }

    #[test]
    fn retry_backoff() {
        let max = Duration::from_secs(3600);
        assert_eq!(retry_delay(0, max), Duration::from_secs(10));
        assert_eq!(retry_delay(1, max), Duration::from_secs(10));
        assert_eq!(retry_delay(2, max), Duration::from_secs(20));
        assert_eq!(retry_delay(4, max), Duration::from_secs(80));
        assert_eq!(retry_delay(30, max), max);
        assert_eq!(
            retry_delay(3, Duration::from_secs(15)),
            Duration::from_secs(15)
        );
    }
}
