//! On-demand TLS admission (pure): whether a handshake for an unknown name may ask the
//! operator's `ask` endpoint and order a certificate. Three limits, checked before the ask
//! endpoint is called: a name refused by it recently is refused again without asking; one
//! order attempt per name per `name_interval`; at most `max_per_hour` attempts in any hour.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

const HOUR: Duration = Duration::from_secs(3600);

/// Why a name was not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The ask endpoint refused this name less than `refused_ttl` ago.
    RecentlyRefused,
    /// An attempt for this name was made less than `name_interval` ago.
    NameRateLimited { retry_after: Duration },
    /// `max_per_hour` attempts were made in the last hour.
    GlobalRateLimited { retry_after: Duration },
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RecentlyRefused => f.write_str("refused by the ask endpoint recently"),
            Self::NameRateLimited { retry_after } => write!(
                f,
                "an order for this name was tried recently (next in {}s)",
                retry_after.as_secs()
            ),
            Self::GlobalRateLimited { retry_after } => write!(
                f,
                "the hourly limit of on-demand orders is reached (next in {}s)",
                retry_after.as_secs()
            ),
        }
    }
}

/// The limits (from `tls.on_demand`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub name_interval: Duration,
    pub max_per_hour: u32,
    pub refused_ttl: Duration,
}

/// What has been asked and attempted; the caller keeps one behind a mutex.
#[derive(Debug, Default)]
pub struct Admission {
    attempts: HashMap<String, SystemTime>,
    window: VecDeque<SystemTime>,
    refused: HashMap<String, SystemTime>,
}

fn since(now: SystemTime, t: SystemTime) -> Duration {
    now.duration_since(t).unwrap_or(Duration::ZERO)
}

impl Admission {
    /// Whether `name` may be asked about (and then ordered) now. Does not record anything.
    pub fn check(&mut self, limits: &Limits, name: &str, now: SystemTime) -> Result<(), Denied> {
        self.expire(limits, now);
        if self.refused.contains_key(name) {
            return Err(Denied::RecentlyRefused);
        }
        if let Some(t) = self.attempts.get(name) {
            let age = since(now, *t);
            if age < limits.name_interval {
                return Err(Denied::NameRateLimited {
                    retry_after: limits.name_interval - age,
                });
            }
        }
        if self.window.len() >= limits.max_per_hour as usize {
            let oldest = self.window.front().copied().unwrap_or(now);
            return Err(Denied::GlobalRateLimited {
                retry_after: HOUR.saturating_sub(since(now, oldest)),
            });
        }
        Ok(())
    }

    /// Records that an order for `name` starts (after the ask endpoint allowed it).
    pub fn record_attempt(&mut self, name: &str, now: SystemTime) {
        self.attempts.insert(name.to_string(), now);
        self.window.push_back(now);
    }

    /// Records that the ask endpoint refused `name`.
    pub fn record_refusal(&mut self, name: &str, now: SystemTime) {
        self.refused.insert(name.to_string(), now);
    }

    fn expire(&mut self, limits: &Limits, now: SystemTime) {
        while self.window.front().is_some_and(|t| since(now, *t) >= HOUR) {
            self.window.pop_front();
        }
        self.refused
            .retain(|_, t| since(now, *t) < limits.refused_ttl);
        self.attempts
            .retain(|_, t| since(now, *t) < limits.name_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_name_global_and_refusals() {
        let limits = Limits {
            name_interval: Duration::from_secs(600),
            max_per_hour: 3,
            refused_ttl: Duration::from_secs(60),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut a = Admission::default();
        assert_eq!(a.check(&limits, "a.test", t0), Ok(()));
        a.record_attempt("a.test", t0);
        // Same name within the interval: limited, with the time left.
        assert_eq!(
            a.check(&limits, "a.test", at(100)),
            Err(Denied::NameRateLimited {
                retry_after: Duration::from_secs(500)
            })
        );
        assert_eq!(a.check(&limits, "a.test", at(600)), Ok(()));
        // Refused names are not asked again for refused_ttl.
        a.record_refusal("bad.test", at(10));
        assert_eq!(
            a.check(&limits, "bad.test", at(69)),
            Err(Denied::RecentlyRefused)
        );
        assert_eq!(a.check(&limits, "bad.test", at(70)), Ok(()));
        // Global: three attempts in the hour, the fourth name waits for the oldest to age out.
        a.record_attempt("b.test", at(20));
        a.record_attempt("c.test", at(30));
        assert_eq!(
            a.check(&limits, "d.test", at(40)),
            Err(Denied::GlobalRateLimited {
                retry_after: Duration::from_secs(3560)
            })
        );
        assert_eq!(a.check(&limits, "d.test", at(3600)), Ok(()));
        assert!(Denied::RecentlyRefused.to_string().contains("ask endpoint"));
        // A clock that went backwards does not panic; the hour's window still counts.
        a.record_attempt("e.test", at(3600));
        assert!(a.check(&limits, "f.test", t0).is_err());
    }
}
