//! Balancing decisions over an immutable backend list: weighted round robin, sticky-cookie
//! tokens, rendezvous (consistent) hashing for `uri_hash`, and least connections. The only
//! mutable state is atomics that live inside the route-table snapshot (or in the shared
//! per-backend stats), so picking a backend never takes a lock.

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

    /// Moves the cursor one step (for balancers that only use it to rotate ties).
    pub fn advance(&self) {
        self.cursor.fetch_add(1, Ordering::Relaxed);
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

/// 64-bit FNV-1a over `data`, seeded, finished with a murmur3 mix so nearby inputs spread.
pub fn hash64(seed: u64, data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The opaque value a sticky cookie carries for a backend: a short hash of route name and
/// backend id (never the address), stable across restarts and table rebuilds.
pub fn sticky_token(route: &str, backend_id: &str) -> String {
    let h = hash64(0x5eed, format!("{route}\0{backend_id}").as_bytes());
    format!("{h:016x}")
}

/// The value of cookie `name` in a `Cookie` header value (`a=1; b=2`), if present.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// A `Cookie` header value without cookie `name` (sticky_cookie `indirect`: the app never sees
/// the proxy's cookie). `None` when nothing else is left, so the header can be dropped.
pub fn without_cookie(header: &str, name: &str) -> Option<String> {
    let rest: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').is_none_or(|(k, _)| k.trim() != name))
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

/// Weighted rendezvous (highest random weight) hashing: every candidate scores
/// `-weight / ln(u)` with `u` uniform in (0,1) from hash(key, id); the highest wins. Adding or
/// removing one of N equal backends moves only the keys that it wins or won, about 1/N.
/// `candidates` yields (index, stable id, weight > 0).
pub fn rendezvous<'a>(
    key: &[u8],
    candidates: impl Iterator<Item = (usize, &'a str, u32)>,
) -> Option<usize> {
    let kh = hash64(0, key);
    let mut best: Option<(f64, usize)> = None;
    for (i, id, w) in candidates {
        if w == 0 {
            continue;
        }
        let h = hash64(kh, id.as_bytes());
        // 53 random bits → u in (0, 1].
        let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let score = -f64::from(w) / u.ln();
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, i));
        }
    }
    best.map(|(_, i)| i)
}

/// The bytes `source_ip` hashes for a client address: the 4 octets of an IPv4 address (an
/// IPv4-mapped IPv6 address counts as its IPv4 form, so dual-stack listeners agree), the 16
/// of an IPv6 one.
pub fn source_key(ip: std::net::IpAddr) -> ([u8; 16], usize) {
    let mut buf = [0u8; 16];
    match ip {
        std::net::IpAddr::V4(v4) => {
            buf[..4].copy_from_slice(&v4.octets());
            (buf, 4)
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                buf[..4].copy_from_slice(&v4.octets());
                (buf, 4)
            }
            None => {
                buf.copy_from_slice(&v6.octets());
                (buf, 16)
            }
        },
    }
}

/// `source_ip` balancing: a consistent hash of the client address over the candidates
/// (weighted rendezvous, seeded apart from `uri_hash` so the two do not correlate). A client
/// stays on one member while the member set is unchanged; when one of N members leaves, only
/// the clients that were on it move (about 1/N of them); when one joins, only clients that
/// now prefer it move. `candidates` yields (index, stable id, weight > 0).
pub fn source_hash<'a>(
    ip: std::net::IpAddr,
    candidates: impl Iterator<Item = (usize, &'a str, u32)>,
) -> Option<usize> {
    let (buf, n) = source_key(ip);
    let mut key = [0u8; 17];
    key[0] = b'S';
    key[1..=n].copy_from_slice(&buf[..n]);
    rendezvous(&key[..=n], candidates)
}

/// Least connections: the candidate with the fewest in-flight requests per unit of weight.
/// Ties go to the first candidate at or after `start` (a rotating cursor), so equal backends
/// share idle traffic. `candidates` yields (index, in-flight, weight > 0).
pub fn least_loaded(
    start: usize,
    candidates: impl Iterator<Item = (usize, u64, u32)>,
) -> Option<usize> {
    let all: Vec<(usize, u64, u32)> = candidates.filter(|c| c.2 > 0).collect();
    if all.is_empty() {
        return None;
    }
    let n = all.len();
    let mut best = all[start % n];
    for k in 1..n {
        let c = all[(start + k) % n];
        // c.inflight / c.weight < best.inflight / best.weight, without division.
        if u128::from(c.1) * u128::from(best.2) < u128::from(best.1) * u128::from(c.2) {
            best = c;
        }
    }
    Some(best.0)
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

    #[test]
    fn cookie_parsing() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("BERTH_SERVER=abc", "BERTH_SERVER", Some("abc")),
            ("a=1; BERTH_SERVER=abc; b=2", "BERTH_SERVER", Some("abc")),
            ("a=1;BERTH_SERVER=\"abc\"", "BERTH_SERVER", Some("abc")),
            ("XBERTH_SERVER=abc", "BERTH_SERVER", None),
            ("a=1", "BERTH_SERVER", None),
            ("garbage", "BERTH_SERVER", None),
            ("", "BERTH_SERVER", None),
        ];
        for (h, name, want) in cases {
            assert_eq!(cookie_value(h, name), *want, "{h}");
        }
    }

    #[test]
    fn indirect_cookie_removal() {
        let cases: &[(&str, Option<&str>)] = &[
            ("BERTH_SERVER=abc", None),
            ("a=1; BERTH_SERVER=abc; b=2", Some("a=1; b=2")),
            ("a=1;BERTH_SERVER=abc", Some("a=1")),
            ("XBERTH_SERVER=abc; a=1", Some("XBERTH_SERVER=abc; a=1")),
            ("a=1", Some("a=1")),
            ("", None),
        ];
        for (h, want) in cases {
            assert_eq!(without_cookie(h, "BERTH_SERVER").as_deref(), *want, "{h:?}");
        }
    }

    #[test]
    fn sticky_tokens_are_opaque_and_distinct() {
        let a = sticky_token("web", "127.0.0.1:8080");
        assert_eq!(a, sticky_token("web", "127.0.0.1:8080"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("127"));
        assert_ne!(a, sticky_token("web", "127.0.0.1:8081"));
        assert_ne!(a, sticky_token("api", "127.0.0.1:8080"));
    }

    fn owners(ids: &[String], keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                let key = format!("/item/{k}");
                let i = rendezvous(
                    key.as_bytes(),
                    ids.iter().enumerate().map(|(i, id)| (i, id.as_str(), 1)),
                )
                .unwrap();
                ids[i].clone()
            })
            .collect()
    }

    #[test]
    fn uri_hash_moves_about_one_nth_of_keys() {
        const KEYS: usize = 10_000;
        for n in [3usize, 5, 10] {
            let ids: Vec<String> = (0..n).map(|i| format!("10.0.0.{i}:80")).collect();
            let before = owners(&ids, KEYS);
            // Balanced: each backend owns about 1/N.
            for id in &ids {
                let share = before.iter().filter(|o| *o == id).count() as f64 / KEYS as f64;
                assert!(
                    (share - 1.0 / n as f64).abs() < 0.35 / n as f64,
                    "n={n} {id} {share}"
                );
            }
            // Add one: only keys that move go to the new backend, about 1/(N+1) of them.
            let mut grown = ids.clone();
            grown.push("10.0.0.99:80".into());
            let after = owners(&grown, KEYS);
            let moved: Vec<_> = (0..KEYS).filter(|k| before[*k] != after[*k]).collect();
            assert!(moved.iter().all(|k| after[*k] == "10.0.0.99:80"), "n={n}");
            let frac = moved.len() as f64 / KEYS as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (frac - ideal).abs() < 0.3 * ideal,
                "add to {n}: moved {frac}, ideal {ideal}"
            );
            // Remove one: only the removed backend's keys move.
            let shrunk: Vec<String> = ids[1..].to_vec();
            let after = owners(&shrunk, KEYS);
            let moved = (0..KEYS).filter(|k| before[*k] != after[*k]).count();
            let owned = before.iter().filter(|o| **o == ids[0]).count();
            assert_eq!(
                moved, owned,
                "remove from {n}: only the removed backend's keys move"
            );
            let frac = moved as f64 / KEYS as f64;
            let ideal = 1.0 / n as f64;
            assert!(
                (frac - ideal).abs() < 0.3 * ideal,
                "remove from {n}: moved {frac}"
            );
        }
    }

    #[test]
    fn rendezvous_honours_weights_and_skips_zero() {
        let ids = ["a", "b"];
        let mut c = [0usize; 2];
        for k in 0..10_000 {
            let key = format!("k{k}");
            let w = [3u32, 1u32];
            let i = rendezvous(
                key.as_bytes(),
                ids.iter().enumerate().map(|(i, id)| (i, *id, w[i])),
            )
            .unwrap();
            c[i] += 1;
        }
        let share = c[0] as f64 / 10_000.0;
        assert!((share - 0.75).abs() < 0.03, "weighted share {share}");
        assert_eq!(
            rendezvous(b"x", [(0, "a", 0), (1, "b", 2)].into_iter()),
            Some(1)
        );
        assert_eq!(rendezvous(b"x", std::iter::empty()), None);
    }

    fn source_owners(ids: &[String], clients: &[std::net::IpAddr]) -> Vec<String> {
        clients
            .iter()
            .map(|ip| {
                let i = source_hash(
                    *ip,
                    ids.iter().enumerate().map(|(i, id)| (i, id.as_str(), 1)),
                )
                .unwrap();
                ids[i].clone()
            })
            .collect()
    }

    #[test]
    fn source_hash_moves_only_the_leaving_members_clients() {
        use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        // 10,000 client addresses: IPv4 across several /16s plus some IPv6.
        let clients: Vec<IpAddr> = (0..10_000u32)
            .map(|k| {
                if k % 10 == 0 {
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, k as u16, 0, 0, 0, 1))
                } else {
                    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k * 7919))
                }
            })
            .collect();
        let ids: Vec<String> = (0..5).map(|i| format!("10.1.0.{i}:5432")).collect();
        let before = source_owners(&ids, &clients);
        for id in &ids {
            let share = before.iter().filter(|o| *o == id).count() as f64 / 10_000.0;
            eprintln!("source hash: {id} owns {share:.4} of 10,000 clients");
            assert!((share - 0.2).abs() < 0.04, "{id} owns {share}");
        }
        // Deterministic: the same client always lands on the same member.
        assert_eq!(before, source_owners(&ids, &clients));
        for leaving in 0..5 {
            let rest: Vec<String> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != leaving)
                .map(|(_, id)| id.clone())
                .collect();
            let after = source_owners(&rest, &clients);
            let moved: Vec<usize> = (0..clients.len())
                .filter(|k| before[*k] != after[*k])
                .collect();
            // Only clients that were on the leaving member move ...
            assert!(
                moved.iter().all(|k| before[*k] == ids[leaving]),
                "member {leaving} left: a client of another member moved"
            );
            // ... all of them, and that is about 1/5 of all clients.
            let owned = before.iter().filter(|o| **o == ids[leaving]).count();
            assert_eq!(moved.len(), owned);
            let frac = moved.len() as f64 / clients.len() as f64;
            eprintln!("source hash: member {leaving} left, {frac:.4} of clients moved");
            assert!(
                frac <= 0.25,
                "member {leaving} left: {frac} of clients moved"
            );
        }
        // IPv4-mapped IPv6 is the same client as its IPv4 form.
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(source_owners(&ids, &[v4]), source_owners(&ids, &[mapped]));
        assert_eq!(source_hash(v4, std::iter::empty()), None);
    }

    #[test]
    fn least_loaded_table() {
        // (start, candidates (index, inflight, weight), want)
        type Case = (usize, &'static [(usize, u64, u32)], Option<usize>);
        let cases: &[Case] = &[
            (0, &[(0, 5, 1), (1, 2, 1), (2, 9, 1)], Some(1)),
            (0, &[(0, 0, 1), (1, 0, 1)], Some(0)),
            (1, &[(0, 0, 1), (1, 0, 1)], Some(1)),
            (0, &[(0, 4, 4), (1, 2, 1)], Some(0)), // 1/unit vs 2/unit
            (0, &[(0, 0, 0), (1, 7, 1)], Some(1)), // weight 0 never chosen
            (0, &[], None),
        ];
        for (start, cands, want) in cases {
            assert_eq!(
                least_loaded(*start, cands.iter().copied()),
                *want,
                "{cands:?}"
            );
        }
    }
}
