//! Host names: normalising the `Host` a client sent, and validating the domains an operator
//! configures. Pure functions; the route table only ever stores normalised names.

use thiserror::Error;

/// Why a configured domain is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 253 characters")]
    TooLong,
    #[error("has an empty label (two dots in a row, or a leading dot)")]
    EmptyLabel,
    #[error("has a label longer than 63 characters")]
    LabelTooLong,
    #[error("contains the character {0:?}; only letters, digits, '-' and '.' are allowed")]
    BadChar(char),
    #[error("has a label that starts or ends with '-'")]
    Hyphen,
    #[error("uses a wildcard other than one leading '*.' label")]
    BadWildcard,
}

/// Normalises a `Host` header (or URI authority) for lookup: strips the port, lower-cases,
/// drops one trailing dot. Returns `None` when nothing usable is left.
///
/// IPv6 literals keep their brackets (`[::1]:80` → `[::1]`), so they never collide with names.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let host = if raw.starts_with('[') {
        // IPv6 literal: keep up to and including the closing bracket; after it only a port
        // may follow (`[::1]x` is not `[::1]`: found by the host fuzz target).
        let end = raw.find(']')?;
        let rest = &raw[end + 1..];
        if !rest.is_empty()
            && !rest
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        &raw[..=end]
    } else {
        match raw.rfind(':') {
            Some(i) if raw[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &raw[..i],
            Some(_) => return None,
            None => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // Nothing of a port or of whitespace may be left inside the name (`a:b:` is not `a:b`,
    // `a\r:` is not `a\r`; found by the host fuzz target).
    let bracketed = host.starts_with('[');
    // `a..` is no name either (and would not normalise to itself).
    if host.is_empty()
        || host.ends_with('.')
        || host
            .chars()
            .any(|c| (c == ':' && !bracketed) || c.is_whitespace() || c.is_control())
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// `normalize_host`, without an allocation when the name is already normal (lower case, no
/// port, no trailing dot), as it almost always is on the request path.
pub fn normalize_host_cow(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let plain = !raw.is_empty()
        && !raw.ends_with('.')
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
    if plain {
        Some(std::borrow::Cow::Borrowed(raw))
    } else {
        normalize_host(raw).map(std::borrow::Cow::Owned)
    }
}

/// RFC 9112 §3.2: a Host that is not a plausible name or IP literal is a 400, not a 404.
pub fn is_valid_host_chars(host: &str) -> bool {
    host.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':'))
}

/// Validates and normalises a domain an operator configured. Accepts one leading `*.` label
/// (a wildcard) when `allow_wildcard` is set.
pub fn parse_domain(raw: &str, allow_wildcard: bool) -> Result<String, DomainError> {
    let name = raw.trim();
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return Err(DomainError::Empty);
    }
    if name.len() > 253 {
        return Err(DomainError::TooLong);
    }
    let (check, wildcard) = match name.strip_prefix("*.") {
        Some(rest) if allow_wildcard => (rest, true),
        _ => (name.as_str(), false),
    };
    if check.contains('*') {
        return Err(DomainError::BadWildcard);
    }
    for label in check.split('.') {
        if label.is_empty() {
            return Err(DomainError::EmptyLabel);
        }
        if label.len() > 63 {
            return Err(DomainError::LabelTooLong);
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(DomainError::BadChar(c));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(DomainError::Hyphen);
        }
    }
    let _ = wildcard;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_host_cow_matches_normalize_host() {
        for raw in [
            "bench.test",
            "Bench.Test",
            "example.com.",
            "example.com:8080",
            "[::1]:80",
            " a.b ",
            "",
            ".",
            "a:b",
            "x-y.z9",
            "UPPER",
            "a..b",
        ] {
            assert_eq!(
                normalize_host_cow(raw).map(std::borrow::Cow::into_owned),
                normalize_host(raw),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn normalize_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("example.com", Some("example.com")),
            ("Example.COM", Some("example.com")),
            ("example.com:8080", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("EXAMPLE.com.:443", Some("example.com")),
            ("[::1]x", None),
            ("[::1]:x", None),
            ("[::1]:", Some("[::1]")),
            ("a:b:", None),
            ("DM:x\r:", None),
            ("a\r:", None),
            ("a b", None),
            ("a..", None),
            ("a\u{202f}.", None),
            ("  a.b  ", Some("a.b")),
            ("[::1]:80", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("", None),
            (":80", None),
            (".", None),
            ("a:b", None),
            ("[::1", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalize_host(input).as_deref(),
                *want,
                "normalize_host({input:?})"
            );
        }
    }

    #[test]
    fn parse_domain_table() {
        let ok: &[(&str, bool, &str)] = &[
            ("Example.com", false, "example.com"),
            ("app.example.com.", false, "app.example.com"),
            ("*.example.com", true, "*.example.com"),
            ("localhost", false, "localhost"),
            ("a-b.c", false, "a-b.c"),
        ];
        for (input, wc, want) in ok {
            assert_eq!(parse_domain(input, *wc).as_deref(), Ok(*want), "{input}");
        }
        let bad: &[(&str, bool, DomainError)] = &[
            ("", false, DomainError::Empty),
            ("a..b", false, DomainError::EmptyLabel),
            (".a", false, DomainError::EmptyLabel),
            ("a b.com", false, DomainError::BadChar(' ')),
            ("exa/mple.com", false, DomainError::BadChar('/')),
            ("-a.com", false, DomainError::Hyphen),
            ("*.example.com", false, DomainError::BadWildcard),
            ("a.*.example.com", true, DomainError::BadWildcard),
            ("example.com:80", false, DomainError::BadChar(':')),
        ];
        for (input, wc, want) in bad {
            assert_eq!(parse_domain(input, *wc).as_ref(), Err(want), "{input}");
        }
        assert_eq!(
            parse_domain(&format!("{}.com", "a".repeat(64)), false),
            Err(DomainError::LabelTooLong)
        );
    }
}
