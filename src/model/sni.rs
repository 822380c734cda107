//! Pure SNI certificate selection: exact name first, then a one-label `*.` wildcard, then the
//! default certificate, else refuse the handshake. Keys of the map are lower-case names without
//! a trailing dot (`example.com`, `*.example.com`); callers normalise on insert.

use std::collections::HashMap;

/// How a server name was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
    Default,
}

/// The outcome of choosing a certificate for a ClientHello.
#[derive(Debug, PartialEq, Eq)]
pub enum Selection<'a, V> {
    Found(&'a V, MatchKind),
    /// Nothing matches and there is no default: the handshake is refused.
    Refuse,
}

/// Lower-cases a server name and drops one trailing dot. Returns `None` for names that cannot
/// be DNS host names (empty, empty labels, over-long).
pub fn normalize_server_name(name: &str) -> Option<String> {
    let n = name.strip_suffix('.').unwrap_or(name);
    if n.is_empty() || n.len() > 253 || n.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return None;
    }
    Some(n.to_ascii_lowercase())
}

/// The wildcard key that would cover `name` (`a.example.com` → `*.example.com`). A wildcard
/// replaces exactly one label and never stands for a whole registrable-looking name: `a.com`
/// has no wildcard key (`*.com` is never accepted).
pub fn wildcard_key(name: &str) -> Option<String> {
    let (first, rest) = name.split_once('.')?;
    if first.is_empty() || first == "*" || !rest.contains('.') {
        return None;
    }
    Some(format!("*.{rest}"))
}

/// Whether a certificate name (`example.com` or `*.example.com`) covers host `name`.
/// Both are compared case-insensitively.
pub fn covers(pattern: &str, name: &str) -> bool {
    let (Some(p), Some(n)) = (normalize_server_name(pattern), normalize_server_name(name)) else {
        return false;
    };
    if p == n {
        return true;
    }
    p.starts_with("*.") && wildcard_key(&n).as_deref() == Some(p.as_str())
}

/// Chooses the certificate for `sni` (absent when the client sent no SNI, e.g. an IP literal).
pub fn select<'a, V>(
    map: &'a HashMap<String, V>,
    default: Option<&'a V>,
    sni: Option<&str>,
) -> Selection<'a, V> {
    if let Some(name) = sni.and_then(normalize_server_name) {
        if let Some(v) = map.get(&name) {
            return Selection::Found(v, MatchKind::Exact);
        }
        if let Some(v) = wildcard_key(&name).and_then(|k| map.get(&k)) {
            return Selection::Found(v, MatchKind::Wildcard);
        }
    }
    match default {
        Some(v) => Selection::Found(v, MatchKind::Default),
        None => Selection::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_table() {
        let map: HashMap<String, &str> = [
            ("example.com", "apex"),
            ("*.example.com", "wild"),
            ("api.example.com", "api"),
            ("*.b.example.com", "deep-wild"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let d = "default";
        // (sni, with default, without default)
        type Want<'a> = Option<(&'a str, MatchKind)>;
        let table: &[(Option<&str>, Want, Want)] = &[
            // exact beats wildcard
            (
                Some("api.example.com"),
                Some(("api", MatchKind::Exact)),
                Some(("api", MatchKind::Exact)),
            ),
            (
                Some("example.com"),
                Some(("apex", MatchKind::Exact)),
                Some(("apex", MatchKind::Exact)),
            ),
            // wildcard covers exactly one label
            (
                Some("www.example.com"),
                Some(("wild", MatchKind::Wildcard)),
                Some(("wild", MatchKind::Wildcard)),
            ),
            (
                Some("x.b.example.com"),
                Some(("deep-wild", MatchKind::Wildcard)),
                Some(("deep-wild", MatchKind::Wildcard)),
            ),
            (Some("x.y.example.com"), Some((d, MatchKind::Default)), None),
            (
                Some("x.y.z.example.com"),
                Some((d, MatchKind::Default)),
                None,
            ),
            // case-insensitive, trailing dot
            (
                Some("WWW.Example.COM"),
                Some(("wild", MatchKind::Wildcard)),
                Some(("wild", MatchKind::Wildcard)),
            ),
            (
                Some("API.EXAMPLE.COM."),
                Some(("api", MatchKind::Exact)),
                Some(("api", MatchKind::Exact)),
            ),
            // unknown → default or refused
            (Some("other.org"), Some((d, MatchKind::Default)), None),
            (Some("example.org"), Some((d, MatchKind::Default)), None),
            (None, Some((d, MatchKind::Default)), None),
            // malformed names never match a wildcard
            (Some(".example.com"), Some((d, MatchKind::Default)), None),
            (Some("a..example.com"), Some((d, MatchKind::Default)), None),
            (Some(""), Some((d, MatchKind::Default)), None),
        ];
        for (sni, with, without) in table {
            let got = select(&map, Some(&d), *sni);
            let want = match with {
                Some((v, k)) => Selection::Found(v, *k),
                None => Selection::Refuse,
            };
            assert_eq!(got, want, "with default: {sni:?}");
            let got = select(&map, None, *sni);
            let want = match without {
                Some((v, k)) => Selection::Found(v, *k),
                None => Selection::Refuse,
            };
            assert_eq!(got, want, "without default: {sni:?}");
        }
    }

    #[test]
    fn wildcard_keys_and_coverage() {
        assert_eq!(
            wildcard_key("a.example.com").as_deref(),
            Some("*.example.com")
        );
        assert_eq!(wildcard_key("example.com"), None, "*.com is never a key");
        assert_eq!(wildcard_key("com"), None);
        assert!(covers("*.example.com", "a.EXAMPLE.com"));
        assert!(covers("Example.com", "example.com."));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("example.com", "a.example.com"));
    }
}
