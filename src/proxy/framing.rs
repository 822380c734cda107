//! The one framing rule for upstream responses (RFC 9112 §6.1-§6.3), shared by both upstream
//! paths: the direct path (`direct.rs`) frames its body with it, the hyper path (`pool.rs`)
//! checks hyper's parsed head against it, so neither path forwards what the other refuses.
//! Invariants: `Transfer-Encoding` wins over `Content-Length` and the `Content-Length` is
//! removed before anything is forwarded (a client must never see both); a `Content-Length`
//! is only ever `1*DIGIT` (optionally a list of equal values), so `+2`, `0x5`, ` ` or `2 2`
//! are framing errors (502), never forwarded. Pure and allocation-free.

use http::header::{self, HeaderMap};
use http::{StatusCode, Version};

/// How an upstream response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (HEAD, 204, 304, `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Read until the upstream closes (no framing header, or a non-chunked coding).
    Close,
}

/// The framing decision for one response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFraming {
    pub body: BodyFraming,
    /// The head carried both `Transfer-Encoding` and `Content-Length`: the `Content-Length`
    /// must be removed before forwarding and the connection must not be reused (RFC 9112
    /// §6.3: such a message may be a smuggling or splitting attempt).
    pub strip_content_length: bool,
    /// A valid `Content-Length` written in a non-canonical way (a list `5, 5`, several
    /// lines, spaces): forwarded as the single value.
    pub canonical_length: Option<u64>,
}

/// Why a response head has no trustworthy framing (answered 502, connection closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid upstream Content-Length")]
    InvalidContentLength,
    #[error("conflicting upstream Content-Length values")]
    ConflictingContentLength,
    #[error("upstream HTTP/1.0 response with Transfer-Encoding")]
    TransferEncodingInHttp10,
    #[error("invalid upstream Transfer-Encoding")]
    InvalidTransferEncoding,
    #[error("invalid upstream chunk-size line")]
    InvalidChunkSize,
    #[error("upstream switched protocols, but no upgrade was asked for")]
    UnrequestedUpgrade,
}

/// Decides how the final response to a request is framed. `head_request`: the request was
/// HEAD (its response never has a body, whatever the headers say); `upgrade_requested`: the
/// request asked for a protocol upgrade (otherwise a 101 is an error).
///
/// Stricter than RFC 9112 where HAProxy 2.6 is (the conformance suite checks Berth is never
/// more lenient): a `Transfer-Encoding` whose final coding is not `chunked` is refused
/// rather than read until close, and a `Content-Length` is validated on every response.
pub fn response_framing(
    version: Version,
    status: StatusCode,
    head_request: bool,
    upgrade_requested: bool,
    headers: &HeaderMap,
) -> Result<ResponseFraming, FramingError> {
    if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade_requested {
        return Err(FramingError::UnrequestedUpgrade);
    }
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let mut lines = headers.get_all(header::CONTENT_LENGTH).iter();
    let (has_cl, cl_plain) = match (lines.next(), lines.next()) {
        (None, _) => (false, true),
        (Some(v), None) => (true, parse_digits(v.as_bytes()).is_some()),
        (Some(_), Some(_)) => (true, false),
    };
    let strip_content_length = has_te && has_cl;
    let length = if has_cl && !has_te {
        Some(content_length(headers)?)
    } else {
        None
    };
    let canonical_length = length.filter(|_| !cl_plain);
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if no_body {
        BodyFraming::Empty
    } else if has_te {
        if version == Version::HTTP_10 {
            // RFC 9112 §6.1: treat the framing as faulty.
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if !transfer_encoding_is_chunked(headers)? {
            return Err(FramingError::InvalidTransferEncoding);
        }
        BodyFraming::Chunked
    } else {
        match length {
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::Close,
        }
    };
    Ok(ResponseFraming {
        body,
        strip_content_length,
        canonical_length,
    })
}

/// Whether the codings of every `Transfer-Encoding` line end in `chunked`. Every coding must
/// be a token; `chunked` may appear once and only last.
pub fn transfer_encoding_is_chunked(headers: &HeaderMap) -> Result<bool, FramingError> {
    let mut chunked_seen = false;
    let mut last_is_chunked = false;
    for line in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in line.as_bytes().split(|&b| b == b',') {
            let coding = trim_ows(coding);
            if coding.is_empty() {
                // An empty list element is allowed and ignored (RFC 9110 §5.6.1).
                continue;
            }
            // Parameters (`;q=...`) are not allowed on chunked and never used by others.
            if !coding.iter().all(|&b| is_tchar(b)) {
                return Err(FramingError::InvalidTransferEncoding);
            }
            if chunked_seen {
                // Something after chunked (or chunked twice): no valid framing.
                return Err(FramingError::InvalidTransferEncoding);
            }
            last_is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            chunked_seen = last_is_chunked;
        }
    }
    Ok(last_is_chunked)
}

/// The value of every `Content-Length` line: each a list of `1*DIGIT` elements, all equal.
pub fn content_length(headers: &HeaderMap) -> Result<u64, FramingError> {
    let mut found: Option<u64> = None;
    for line in headers.get_all(header::CONTENT_LENGTH) {
        for element in line.as_bytes().split(|&b| b == b',') {
            let n = parse_digits(trim_ows(element)).ok_or(FramingError::InvalidContentLength)?;
            match found {
                Some(prev) if prev != n => return Err(FramingError::ConflictingContentLength),
                _ => found = Some(n),
            }
        }
    }
    found.ok_or(FramingError::InvalidContentLength)
}

/// `1*DIGIT` as a u64 (no sign, no spaces, no overflow).
pub fn parse_digits(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    let mut n = 0u64;
    for &d in b {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a chunk-size line without its CRLF (RFC 9112 §7.1): 1-15 hex digits, then only
/// chunk extensions (`BWS ";" BWS name [BWS "=" BWS (token / quoted-string)]`). No bare CR or
/// LF, no sign, no `0x`, no trailing garbage.
pub fn parse_chunk_size_line(line: &[u8]) -> Result<u64, FramingError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(FramingError::InvalidChunkSize);
    }
    let mut size = 0u64;
    for &d in &line[..digits] {
        let v = (d as char)
            .to_digit(16)
            .ok_or(FramingError::InvalidChunkSize)?;
        size = size * 16 + u64::from(v);
    }
    if chunk_extensions_valid(&line[digits..]) {
        Ok(size)
    } else {
        Err(FramingError::InvalidChunkSize)
    }
}

fn chunk_extensions_valid(mut rest: &[u8]) -> bool {
    fn skip_bws(b: &[u8]) -> &[u8] {
        let n = b.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
        &b[n..]
    }
    fn token(b: &[u8]) -> Option<&[u8]> {
        let n = b.iter().take_while(|&&c| is_tchar(c)).count();
        (n > 0).then(|| &b[n..])
    }
    loop {
        rest = skip_bws(rest);
        if rest.is_empty() {
            return true;
        }
        let [b';', tail @ ..] = rest else {
            return false;
        };
        let Some(tail) = token(skip_bws(tail)) else {
            return false;
        };
        let after = skip_bws(tail);
        rest = if let [b'=', value @ ..] = after {
            let value = skip_bws(value);
            if let [b'"', q @ ..] = value {
                // quoted-string: qdtext or quoted-pair, no CR/LF/NUL.
                let mut i = 0;
                loop {
                    match q.get(i) {
                        None => return false,
                        Some(b'"') => break,
                        Some(b'\\') => match q.get(i + 1) {
                            Some(&c) if c == b'\t' || (0x20..0x7f).contains(&c) || c >= 0x80 => {
                                i += 2
                            }
                            _ => return false,
                        },
                        Some(&c)
                            if c == b'\t'
                                || c == b' '
                                || c == 0x21
                                || (0x23..0x7f).contains(&c)
                                || c >= 0x80 =>
                        {
                            i += 1
                        }
                        Some(_) => return false,
                    }
                }
                &q[i + 1..]
            } else {
                match token(value) {
                    Some(t) => t,
                    None => return false,
                }
            }
        } else {
            tail
        };
    }
}

/// Applies a framing decision to headers about to be forwarded.
pub fn sanitize(framing: &ResponseFraming, headers: &mut HeaderMap) {
    if framing.strip_content_length {
        headers.remove(header::CONTENT_LENGTH);
    } else if let Some(n) = framing.canonical_length {
        headers.insert(header::CONTENT_LENGTH, http::HeaderValue::from(n));
    }
}

impl ResponseFraming {
    /// Whether `sanitize` has anything to change.
    pub fn rewrites_headers(&self) -> bool {
        self.strip_content_length || self.canonical_length.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn f(
        v: Version,
        status: u16,
        head: bool,
        pairs: &[(&str, &str)],
    ) -> Result<ResponseFraming, FramingError> {
        let r = response_framing(
            v,
            StatusCode::from_u16(status).unwrap(),
            head,
            false,
            &h(pairs),
        );
        // The table below does not look at the canonical length.
        r.map(|f| ResponseFraming {
            canonical_length: None,
            ..f
        })
    }

    #[test]
    fn table() {
        use BodyFraming::*;
        use FramingError::*;
        let v11 = Version::HTTP_11;
        let ok = |body, strip| {
            Ok(ResponseFraming {
                body,
                strip_content_length: strip,
                canonical_length: None,
            })
        };
        type Case<'a> = (
            Version,
            u16,
            bool,
            &'a [(&'a str, &'a str)],
            Result<ResponseFraming, FramingError>,
        );
        let cases: &[Case] = &[
            (
                v11,
                200,
                false,
                &[("content-length", "5")],
                ok(Length(5), false),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "0")],
                ok(Empty, false),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "5, 5")],
                ok(Length(5), false),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "5"), ("content-length", "5")],
                ok(Length(5), false),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "5"), ("content-length", "6")],
                Err(ConflictingContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "+2")],
                Err(InvalidContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "-1")],
                Err(InvalidContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "0x5")],
                Err(InvalidContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "2 2")],
                Err(InvalidContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "")],
                Err(InvalidContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "5,")],
                Err(InvalidContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("content-length", "99999999999999999999")],
                Err(InvalidContentLength),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "chunked")],
                ok(Chunked, false),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "Chunked")],
                ok(Chunked, false),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "gzip, chunked")],
                ok(Chunked, false),
            ),
            (
                v11,
                200,
                false,
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                ok(Chunked, false),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
                ok(Chunked, true),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "chunked"), ("content-length", "+2")],
                ok(Chunked, true),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "gzip")],
                Err(InvalidTransferEncoding),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "chunked, gzip")],
                Err(InvalidTransferEncoding),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "chunked, chunked")],
                Err(InvalidTransferEncoding),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "chunked;a=b")],
                Err(InvalidTransferEncoding),
            ),
            (
                v11,
                200,
                false,
                &[("transfer-encoding", "\"chunked\"")],
                Err(InvalidTransferEncoding),
            ),
            (
                Version::HTTP_10,
                200,
                false,
                &[("transfer-encoding", "chunked")],
                Err(TransferEncodingInHttp10),
            ),
            (v11, 200, false, &[], ok(Close, false)),
            (v11, 200, true, &[("content-length", "5")], ok(Empty, false)),
            (
                v11,
                204,
                false,
                &[("content-length", "5")],
                ok(Empty, false),
            ),
            (
                v11,
                304,
                false,
                &[("content-length", "5")],
                ok(Empty, false),
            ),
            (
                v11,
                304,
                false,
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
                ok(Empty, true),
            ),
        ];
        for (v, s, head, pairs, want) in cases {
            assert_eq!(
                &f(*v, *s, *head, pairs),
                want,
                "{v:?} {s} head={head} {pairs:?}"
            );
        }
    }

    #[test]
    fn chunk_size_lines() {
        for (line, want) in [
            (&b"5"[..], Some(5)),
            (b"000a", Some(10)),
            (b"A", Some(10)),
            (b"5;ext", Some(5)),
            (b"5 ; ext = val", Some(5)),
            (b"5;a=b;c=\"q \\\" x\"", Some(5)),
            (b"0", Some(0)),
            (b"fffffffffffffff", Some(0xfff_ffff_ffff_ffff)),
            (b"1000000000000000", None),
            (b"0x5", None),
            (b"+5", None),
            (b"-5", None),
            (b"", None),
            (b" 5", None),
            (b"5 x", None),
            (b"5;", None),
            (b"5;a=", None),
            (b"5;a=\"unterminated", None),
            (b"5\n", None),
            (b"5\r", None),
            (b"5;a\rb", None),
        ] {
            assert_eq!(
                parse_chunk_size_line(line).ok(),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn canonical_length_and_unrequested_upgrade() {
        for (pairs, want) in [
            (&[("content-length", "5")][..], None),
            (&[("content-length", "5, 5")][..], Some(5)),
            (
                &[("content-length", "5"), ("content-length", "5")][..],
                Some(5),
            ),
            (&[("content-length", " 5")][..], Some(5)),
        ] {
            let fr = response_framing(Version::HTTP_11, StatusCode::OK, false, false, &h(pairs))
                .unwrap();
            assert_eq!(fr.canonical_length, want, "{pairs:?}");
            let mut m = h(pairs);
            sanitize(&fr, &mut m);
            assert_eq!(m.get_all(header::CONTENT_LENGTH).iter().count(), 1);
            assert_eq!(m[header::CONTENT_LENGTH].as_bytes().trim_ascii(), b"5");
        }
        let s101 = StatusCode::SWITCHING_PROTOCOLS;
        assert_eq!(
            response_framing(Version::HTTP_11, s101, false, false, &HeaderMap::new()),
            Err(FramingError::UnrequestedUpgrade)
        );
        assert!(response_framing(Version::HTTP_11, s101, false, true, &HeaderMap::new()).is_ok());
    }

    #[test]
    fn sanitize_removes_content_length_only_when_told() {
        let mut m = h(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
        let fr = response_framing(Version::HTTP_11, StatusCode::OK, false, false, &m).unwrap();
        sanitize(&fr, &mut m);
        assert!(!m.contains_key(header::CONTENT_LENGTH));
        let mut m = h(&[("content-length", "5")]);
        let fr = response_framing(Version::HTTP_11, StatusCode::OK, false, false, &m).unwrap();
        sanitize(&fr, &mut m);
        assert!(m.contains_key(header::CONTENT_LENGTH));
    }
}
