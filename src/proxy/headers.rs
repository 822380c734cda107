//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 §7.6.1) and the
//! forwarded headers (`X-Forwarded-For/-Proto/-Host`, `X-Real-IP`). Only peers inside
//! `trusted_proxies` may pass their own forwarded headers through.

use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether the request asks for a protocol upgrade (WebSocket and friends).
pub fn is_upgrade_request(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Removes hop-by-hop headers. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay
/// (the upgrade handshake itself must reach the other side). Returns whether `Connection`
/// said `close` (the sender will close its connection after this message).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    // One scan of the names notes which fixed hop-by-hop headers are present; most messages
    // carry none (the map is left untouched) or only `Connection: keep-alive` (one remove):
    // each `remove` hashes the name, so only present ones are removed.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present |= 1 << i;
        }
    }
    if present == 0 && !keep_upgrade {
        return false;
    }
    let mut close = false;
    if present & 1 != 0 {
        // Headers named by Connection are hop-by-hop too (the fixed ones go below).
        let mut named: Vec<HeaderName> = Vec::new();
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
        {
            if token.eq_ignore_ascii_case("close") {
                close = true;
            } else if token.eq_ignore_ascii_case("keep-alive")
                || token.eq_ignore_ascii_case("upgrade")
            {
                // Fixed hop-by-hop names, handled below (`upgrade` survives `keep_upgrade`).
            } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if !HOP_BY_HOP.contains(&name) {
                    named.push(name);
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        let keep = keep_upgrade && (*name == header::CONNECTION || *name == header::UPGRADE);
        if present & (1 << i) != 0 && !keep {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    close
}

/// The fixed hop-by-hop headers (RFC 9110 §7.6.1 plus `Proxy-Connection`); `Connection`
/// first (bit 0 of the presence mask in `strip_hop_by_hop`).
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::UPGRADE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// Where `name` is in `HOP_BY_HOP`, if it is one of them: one `match` on the name's text
/// (the compiler switches on its length first) instead of nine `HeaderName` comparisons per
/// header, twice per request (request and response; ~1,700 instructions of a ~28,000
/// instruction keep-alive request, callgrind).
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "upgrade" => 1,
        "te" => 2,
        "trailer" => 3,
        "transfer-encoding" => 4,
        "proxy-authenticate" => 5,
        "proxy-authorization" => 6,
        "keep-alive" => 7,
        "proxy-connection" => 8,
        _ => return None,
    })
}

/// How many peer addresses each thread keeps formatted ([`peer_header_value`]).
const PEER_VALUES: usize = 64;

thread_local! {
    /// Recently seen peers' header values, by a hash of the address (direct-mapped).
    static PEER_VALUE_CACHE: RefCell<[Option<(IpAddr, HeaderValue)>; PEER_VALUES]> =
        const { RefCell::new([const { None }; PEER_VALUES]) };
}

/// The peer address as a header value, once per client connection.
///
/// Connections from the same address share one value: clients open several connections
/// each, and behind a load balancer or NAT many connections come from few addresses. A new
/// value costs every idle connection two allocations for its whole life (the text, and the
/// shared header `Bytes` makes of it when the value is first cloned into a request: 16 + 24
/// bytes, issue 23's memory target); a value from this thread's cache costs none (a clone
/// is a reference count). The cache holds [`PEER_VALUES`] addresses per thread, a newer one
/// replacing the one in its slot.
pub fn peer_header_value(peer: IpAddr) -> Option<HeaderValue> {
    let ip = canonical_ip(peer);
    let slot = peer_slot(ip);
    let cached = PEER_VALUE_CACHE.try_with(|c| match &c.borrow()[slot] {
        Some((at, v)) if *at == ip => Some(v.clone()),
        _ => None,
    });
    if let Ok(Some(v)) = cached {
        return Some(v);
    }
    let v = format_peer(ip)?;
    let _ = PEER_VALUE_CACHE.try_with(|c| c.borrow_mut()[slot] = Some((ip, v.clone())));
    Some(v)
}

/// The cache slot of an address: a multiplicative hash of its last 8 bytes.
fn peer_slot(ip: IpAddr) -> usize {
    let low = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) as u64 ^ (u128::from(v6) >> 64) as u64,
    };
    (low.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % PEER_VALUES
}

/// Formats the (canonical) peer address. IPv4 is written digit by digit into a stack buffer:
/// `Ipv4Addr`'s `Display` goes through `core::fmt` and a `String` (~1,300 instructions of a
/// ~47,000-instruction new-connection request, callgrind).
fn format_peer(ip: IpAddr) -> Option<HeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[n] = b'.';
                    n += 1;
                }
                for div in [100, 10, 1] {
                    if div == 1 || octet >= div {
                        out[n] = b'0' + octet / div % 10;
                        n += 1;
                    }
                }
            }
            HeaderValue::from_bytes(&out[..n]).ok()
        }
        v6 => HeaderValue::from_str(&v6.to_string()).ok(),
    }
}

/// Strips IPv4-mapped IPv6 (`::ffff:1.2.3.4`) down to IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// `set_forwarded` with the peer's address already formatted (`peer_value`, from
/// `peer_header_value`): an untrusted peer's chain is just itself, so nothing is parsed or
/// formatted per request. A trusted peer takes the general path.
pub fn set_forwarded_cached(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_value: Option<&HeaderValue>,
    scheme: &'static str,
    host: &HeaderValue,
    trusted: &[ipnet::IpNet],
) {
    let untrusted = trusted.is_empty() || !trusted.iter().any(|n| n.contains(&canonical_ip(peer)));
    match peer_value {
        Some(v) if untrusted => {
            // One growth of the map for the four: hyper sizes it for the parsed headers, and
            // inserting one by one grew it twice for a two-header request (~3,000
            // instructions, callgrind). Without room the inserts below grow it as before.
            let _ = headers.try_reserve(4);
            headers.insert(X_FORWARDED_FOR, v.clone());
            headers.insert(X_REAL_IP, v.clone());
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        _ => set_forwarded(
            headers,
            peer,
            scheme,
            host.to_str().unwrap_or_default(),
            trusted,
        ),
    }
}

/// Sets the forwarded headers for a request from `peer` that arrived over `scheme` for `host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    scheme: &'static str,
    host: &str,
    trusted: &[ipnet::IpNet],
) {
    let peer = canonical_ip(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer_trusted = is_trusted(&peer);

    // The chain the client claims, only believed from a trusted peer.
    let mut chain: Vec<String> = if peer_trusted {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    chain.push(peer.to_string());

    // Real client: the rightmost address that is not one of our trusted proxies.
    let real = chain
        .iter()
        .rev()
        .find(|s| match s.parse::<IpAddr>() {
            Ok(ip) => !is_trusted(&canonical_ip(ip)),
            Err(_) => true,
        })
        .cloned()
        .unwrap_or_else(|| chain[0].clone());

    let set = |h: &mut HeaderMap, name: HeaderName, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(headers, X_FORWARDED_FOR, &chain.join(", "));
    set(headers, X_REAL_IP, &real);
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        set(headers, X_FORWARDED_PROTO, scheme);
    }
    if !(peer_trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        set(headers, X_FORWARDED_HOST, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        for other in [
            "host",
            "x-connection",
            "tee",
            "trailers",
            "keep-alive-x",
            "content-length",
        ] {
            let name = HeaderName::from_static(other);
            assert_eq!(hop_by_hop_index(&name), None, "{other}");
        }
    }

    #[test]
    fn peer_value_is_the_canonical_address() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "9.99.100.109",
            "10.0.100.9",
            "127.0.0.1",
            "192.168.10.255",
            "255.255.255.255",
            "::1",
            "2001:db8::42",
            "::ffff:203.0.113.7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let want = canonical_ip(ip).to_string();
            assert_eq!(peer_header_value(ip).unwrap(), want.as_str(), "{ip}");
            // The second time from the cache: same text.
            assert_eq!(peer_header_value(ip).unwrap(), want.as_str(), "{ip}");
        }
    }

    /// Connections from one address share one value (no allocation of their own); addresses
    /// that meet in a slot replace each other and still format right.
    #[test]
    fn peer_values_are_shared_per_address() {
        let a: IpAddr = "198.51.100.7".parse().unwrap();
        let first = peer_header_value(a).unwrap();
        let second = peer_header_value(a).unwrap();
        assert_eq!(first.as_bytes().as_ptr(), second.as_bytes().as_ptr());
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(
            peer_header_value(mapped).unwrap().as_bytes().as_ptr(),
            first.as_bytes().as_ptr()
        );
        // More addresses than slots: every answer is still the address itself.
        for i in 0..(4 * PEER_VALUES as u32) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i * 7919));
            assert_eq!(peer_header_value(ip).unwrap(), ip.to_string().as_str());
        }
        let again = peer_header_value(a).unwrap();
        assert_eq!(again, "198.51.100.7");
    }

    #[test]
    fn hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-keep", "yes"),
        ]);
        assert!(!strip_hop_by_hop(&mut h, false));
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-keep"]);
        let mut h = map(&[("connection", "Close"), ("x-keep", "yes")]);
        assert!(strip_hop_by_hop(&mut h, false));
        assert_eq!(h.len(), 1);

        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade_request(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn hop_by_hop_only_present_names_and_named_ones() {
        // The usual upstream response: only `Connection: keep-alive`.
        let mut h = map(&[("content-length", "3"), ("connection", "keep-alive")]);
        assert!(!strip_hop_by_hop(&mut h, false));
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["content-length"]
        );
        // Named headers go, `close` is reported, names repeated across values are fine.
        let mut h = map(&[
            ("connection", "close, X-A"),
            ("connection", "x-b, te"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("te", "trailers"),
            ("x-c", "3"),
        ]);
        assert!(strip_hop_by_hop(&mut h, false));
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["x-c"]
        );
        // Upgrade kept, with Connection rewritten to exactly `upgrade`.
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade, x-a"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
            ("keep-alive", "5"),
        ]);
        assert!(!strip_hop_by_hop(&mut h, true));
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(
            h.get_all("connection").iter().collect::<Vec<_>>(),
            vec!["upgrade"]
        );
        assert!(h.get("x-a").is_none() && h.get("keep-alive").is_none());
    }

    #[test]
    fn hop_by_hop_fast_path_leaves_plain_headers() {
        let mut h = map(&[("host", "a"), ("accept", "*/*"), ("x-keep-alive", "1")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert_eq!(h.len(), before.len() + 1);
    }

    #[test]
    fn forwarded_cached_matches_general() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let incoming: &[(&str, &str)] = &[
            ("x-forwarded-for", "5.5.5.5, 10.0.0.9"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-real-ip", "7.7.7.7"),
        ];
        for peer in [
            "1.2.3.4",
            "10.0.0.1",
            "::ffff:1.2.3.4",
            "::1",
            "::ffff:10.0.0.2",
        ] {
            for trusted in [&trusted[..], &[][..]] {
                let ip: IpAddr = peer.parse().unwrap();
                let mut a = map(incoming);
                let mut b = map(incoming);
                set_forwarded(&mut a, ip, "https", "example.com", trusted);
                let v = peer_header_value(ip);
                let host = HeaderValue::from_static("example.com");
                set_forwarded_cached(&mut b, ip, v.as_ref(), "https", &host, trusted);
                assert_eq!(a, b, "peer {peer}, trusted {trusted:?}");
            }
        }
    }

    #[test]
    fn forwarded_table() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // (peer, incoming headers, want xff, want real ip, want proto)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str, &'a str);
        let cases: &[Case] = &[
            ("1.2.3.4", &[], "1.2.3.4", "1.2.3.4", "http"),
            // Untrusted peers cannot inject a chain.
            (
                "1.2.3.4",
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-proto", "https"),
                ],
                "1.2.3.4",
                "1.2.3.4",
                "http",
            ),
            // A trusted proxy's chain is kept and appended to.
            (
                "10.0.0.1",
                &[
                    ("x-forwarded-for", "5.5.5.5, 10.0.0.9"),
                    ("x-forwarded-proto", "https"),
                ],
                "5.5.5.5, 10.0.0.9, 10.0.0.1",
                "5.5.5.5",
                "https",
            ),
            ("::ffff:1.2.3.4", &[], "1.2.3.4", "1.2.3.4", "http"),
        ];
        for (peer, incoming, xff, real, proto) in cases {
            let mut h = map(incoming);
            set_forwarded(
                &mut h,
                peer.parse().unwrap(),
                "http",
                "example.com",
                &trusted,
            );
            assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), xff, "peer {peer}");
            assert_eq!(h.get(&X_REAL_IP).unwrap(), real, "peer {peer}");
            assert_eq!(h.get(&X_FORWARDED_PROTO).unwrap(), proto, "peer {peer}");
            assert_eq!(h.get(&X_FORWARDED_HOST).unwrap(), "example.com");
        }
    }
}
