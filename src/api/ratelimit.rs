//! Failed-authentication rate limit per client address: after `per_minute` failed token
//! checks within a minute, that address gets 429 (with `Retry-After`) until the minute is over,
//! even with a valid token, so a token cannot be guessed by brute force. Loopback clients are
//! exempt unless `api.auth_limit_loopback` is set (they are local users, and SSH tunnels
//! arrive from loopback as one address for everyone). Requests that came through the
//! daemon's own proxy (`api.domain`) are counted by their real client address and are never
//! exempt, whatever that address is.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Bound on tracked addresses; the oldest windows are dropped first.
const MAX_TRACKED: usize = 10_000;

/// Shared limiter (an axum `Extension`).
#[derive(Debug)]
pub struct AuthLimiter {
    per_minute: u32,
    loopback: bool,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthLimiter {
    pub fn new(per_minute: u32, loopback: bool) -> Self {
        Self {
            per_minute,
            loopback,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn applies(&self, ip: IpAddr, proxied: bool) -> bool {
        self.per_minute > 0 && (proxied || self.loopback || !ip.is_loopback())
    }

    /// `Some(retry_after)` when `ip` is blocked right now (`proxied`: `ip` is the real client
    /// of a request that came through our own proxy).
    pub fn blocked(&self, ip: IpAddr, proxied: bool, now: Instant) -> Option<Duration> {
        if !self.applies(ip, proxied) {
            return None;
        }
        let map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&ip) {
            Some((start, n)) if now.duration_since(*start) < WINDOW && *n >= self.per_minute => {
                Some(WINDOW - now.duration_since(*start))
            }
            _ => None,
        }
    }

    /// Records one failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr, proxied: bool, now: Instant) {
        if !self.applies(ip, proxied) {
            return;
        }
        let mut map = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if map.len() >= MAX_TRACKED {
                if let Some(oldest) = map.iter().min_by_key(|(_, (s, _))| *s).map(|(k, _)| *k) {
                    map.remove(&oldest);
                }
            }
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_until_the_window_ends() {
        let l = AuthLimiter::new(3, false);
        let remote: IpAddr = "203.0.113.7".parse().unwrap();
        let other: IpAddr = "203.0.113.8".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(l.blocked(remote, false, t0), None, "attempt {i}");
            l.failed(remote, false, t0);
        }
        let wait = l
            .blocked(remote, false, t0 + Duration::from_secs(10))
            .expect("blocked");
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(l.blocked(other, false, t0), None, "per address");
        assert_eq!(l.blocked(remote, false, t0 + WINDOW), None, "window over");
        for _ in 0..10 {
            l.failed(local, false, t0);
        }
        assert_eq!(
            l.blocked(local, false, t0),
            None,
            "loopback exempt by default"
        );
        let strict = AuthLimiter::new(1, true);
        strict.failed(local, false, t0);
        assert!(strict.blocked(local, false, t0).is_some());
        assert_eq!(
            AuthLimiter::new(0, true).blocked(local, true, t0),
            None,
            "0 disables"
        );
        // Through our own proxy, even a loopback client address is counted.
        let l = AuthLimiter::new(2, false);
        l.failed(local, true, t0);
        l.failed(local, true, t0);
        assert!(l.blocked(local, true, t0).is_some(), "proxied: not exempt");
        assert_eq!(
            l.blocked(local, false, t0),
            None,
            "direct loopback still exempt"
        );
    }
}
