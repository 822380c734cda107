//! Berth's request/response framing conformance suite (RFC 9110 / 9112): the same raw bytes
//! through Berth's two upstream paths (the direct path: bodiless GET/HEAD; the hyper path:
//! requests with a body) and, with BERTH_SYSTEM_TESTS=1, through HAProxy 2.6 configured the
//! same way, against the same scripted raw backend.
//!
//! Each case states Berth's expected outcome (asserted always) and, when HAProxy runs, checks
//! that Berth is never more lenient: it never forwards a request HAProxy refuses, and never
//! passes on a response HAProxy refuses, or passes on complete what HAProxy cuts short.
//! The table in docs/conformance.md is this test's output (`BERTH_CONFORMANCE_OUT=FILE`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the backend answers to a request-side case.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

/// Cases named `late/...` send the head, wait 300 ms, then the rest: a streaming proxy has
/// passed the head on before the bad bytes exist, so both proxies can only cut the message
/// short (the same bytes arriving with the head let HAProxy answer 400/502 instead).
const LATE: Duration = Duration::from_millis(300);

/// Writes `raw`; for a `late/` case the head first, then the rest after `LATE`.
async fn write_maybe_late(s: &mut tokio::net::TcpStream, raw: &[u8], late: bool) {
    let split = if late {
        raw.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(raw.len(), |i| i + 4)
    } else {
        raw.len()
    };
    let _ = s.write_all(&raw[..split]).await;
    if split < raw.len() {
        tokio::time::sleep(LATE).await;
        let _ = s.write_all(&raw[split..]).await;
    }
}

/// A request case: raw client bytes (the path names the case: `/r/NAME`), and the outcome
/// Berth must have.
struct ReqCase {
    name: &'static str,
    raw: &'static [u8],
    berth: &'static str,
}

/// A response case: the raw bytes the backend answers to `/s/NAME`, and Berth's outcome on
/// the direct path (GET, or HEAD with `head`) and the hyper path (POST with a body).
struct RespCase {
    name: &'static str,
    raw: &'static [u8],
    head: bool,
    direct: &'static str,
    hyper: &'static str,
}

const REQ_CASES: &[ReqCase] = &[
    ReqCase { name: "cl-and-te-chunked", raw: b"POST /r/cl-and-te-chunked HTTP/1.1\r\nHost: app.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n", berth: "fwd" },
    ReqCase { name: "chunk-size-0x5", raw: b"POST /r/chunk-size-0x5 HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", berth: "400" },
    ReqCase { name: "chunk-size-plus", raw: b"POST /r/chunk-size-plus HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", berth: "400" },
    ReqCase { name: "chunk-size-overflow", raw: b"POST /r/chunk-size-overflow HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nfffffffffffffffff1\r\nhello\r\n0\r\n\r\n", berth: "400" },
    ReqCase { name: "chunk-ext", raw: b"POST /r/chunk-ext HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n", berth: "fwd body=5" },
    ReqCase { name: "chunk-ext-bare-lf", raw: b"POST /r/chunk-ext-bare-lf HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n", berth: "400" },
    ReqCase { name: "chunk-data-no-crlf", raw: b"POST /r/chunk-data-no-crlf HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhelloXX0\r\n\r\n", berth: "fwd body=5 incomplete" },
    ReqCase { name: "late/chunk-data-no-crlf", raw: b"POST /r/late/chunk-data-no-crlf HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhelloXX0\r\n\r\n", berth: "fwd body=5 incomplete" },
    ReqCase { name: "chunked-trailer", raw: b"POST /r/chunked-trailer HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\n", berth: "fwd body=5" },
    ReqCase { name: "te-gzip-only", raw: b"POST /r/te-gzip-only HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nhello", berth: "400" },
    ReqCase { name: "te-chunked-gzip", raw: b"POST /r/te-chunked-gzip HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n0\r\n\r\n", berth: "400" },
    ReqCase { name: "te-xchunked", raw: b"POST /r/te-xchunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: xchunked\r\nConnection: close\r\n\r\n0\r\n\r\n", berth: "400" },
    ReqCase { name: "te-in-http10", raw: b"POST /r/te-in-http10 HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", berth: "400" },
    ReqCase { name: "cl-plus", raw: b"POST /r/cl-plus HTTP/1.1\r\nHost: app.test\r\nContent-Length: +2\r\nConnection: close\r\n\r\nok", berth: "400" },
    ReqCase { name: "cl-list-equal", raw: b"POST /r/cl-list-equal HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2, 2\r\nConnection: close\r\n\r\nok", berth: "400" },
    ReqCase { name: "cl-two-lines-differ", raw: b"POST /r/cl-two-lines-differ HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok!", berth: "400" },
    ReqCase { name: "cl-truncated", raw: b"POST /r/cl-truncated HTTP/1.1\r\nHost: app.test\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello", berth: "fwd body=5 incomplete" },
    ReqCase { name: "obs-fold", raw: b"GET /r/obs-fold HTTP/1.1\r\nHost: app.test\r\nX-A: a\r\n b\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "bare-lf-head", raw: b"GET /r/bare-lf-head HTTP/1.1\nHost: app.test\nConnection: close\n\n", berth: "fwd" },
    ReqCase { name: "bare-cr-in-value", raw: b"GET /r/bare-cr-in-value HTTP/1.1\r\nHost: app.test\r\nX-A: a\rb\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "nul-in-value", raw: b"GET /r/nul-in-value HTTP/1.1\r\nHost: app.test\r\nX-A: a\0b\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "space-before-colon", raw: b"GET /r/space-before-colon HTTP/1.1\r\nHost : app.test\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "space-in-name", raw: b"GET /r/space-in-name HTTP/1.1\r\nHost: app.test\r\nX A: b\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "duplicate-host", raw: b"GET /r/duplicate-host HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "duplicate-host-same", raw: b"GET /r/duplicate-host-same HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "no-host-http11", raw: b"GET /r/no-host-http11 HTTP/1.1\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "absolute-form-host-differs", raw: b"GET http://app.test/r/absolute-form-host-differs HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "absolute-form-userinfo", raw: b"GET http://u@app.test/r/absolute-form-userinfo HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "host-with-port", raw: b"GET /r/host-with-port HTTP/1.1\r\nHost: app.test:80\r\nConnection: close\r\n\r\n", berth: "fwd host=app.test:80" },
    ReqCase { name: "host-invalid-chars", raw: b"GET /r/host-invalid-chars HTTP/1.1\r\nHost: app.test/x\r\nConnection: close\r\n\r\n", berth: "400" },
    ReqCase { name: "get-with-body", raw: b"GET /r/get-with-body HTTP/1.1\r\nHost: app.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", berth: "fwd body=2" },
];

const RESP_CASES: &[RespCase] = &[
    RespCase { name: "cl-and-te-chunked", raw: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n", head: false, direct: "200 body=20 chunked", hyper: "200 body=20 chunked" },
    RespCase { name: "cl-plus", raw: b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", head: false, direct: "502", hyper: "502" },
    RespCase { name: "cl-list-equal", raw: b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok", head: false, direct: "200 body=2 cl", hyper: "200 body=2 cl" },
    RespCase { name: "cl-two-lines-differ", raw: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!", head: false, direct: "502", hyper: "502" },
    RespCase { name: "cl-space-inside", raw: b"HTTP/1.1 200 OK\r\nContent-Length: 1 0\r\n\r\n0123456789", head: false, direct: "502", hyper: "502" },
    RespCase { name: "chunk-size-0x5", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", head: false, direct: "closed", hyper: "closed" },
    RespCase { name: "chunk-ext", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"b c\"\r\nhello\r\n0\r\n\r\n", head: false, direct: "200 body=5 chunked", hyper: "200 body=5 chunked" },
    RespCase { name: "chunk-size-trailing-garbage", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n", head: false, direct: "closed", hyper: "closed" },
    RespCase { name: "chunk-data-no-crlf", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", head: false, direct: "closed", hyper: "200 body=5 incomplete" },
    RespCase { name: "late/chunk-data-no-crlf", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", head: false, direct: "200 body=5 incomplete", hyper: "200 body=5 incomplete" },
    RespCase { name: "late/chunk-size-0x5", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", head: false, direct: "200 body=0 incomplete", hyper: "200 body=0 incomplete" },
    RespCase { name: "te-chunked-chunked", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", head: false, direct: "502", hyper: "502" },
    RespCase { name: "te-gzip-close-delimited", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello", head: false, direct: "502", hyper: "502" },
    RespCase { name: "te-in-http10", raw: b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", head: false, direct: "502", hyper: "502" },
    RespCase { name: "obs-fold", raw: b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", head: false, direct: "502", hyper: "502" },
    RespCase { name: "bare-lf-head", raw: b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", head: false, direct: "200 body=2 cl", hyper: "200 body=2 cl" },
    RespCase { name: "bare-cr-in-value", raw: b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok", head: false, direct: "502", hyper: "502" },
    RespCase { name: "space-before-colon", raw: b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok", head: false, direct: "502", hyper: "502" },
    RespCase { name: "100-then-200", raw: b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", head: false, direct: "200 body=2 cl", hyper: "200 body=2 cl" },
    RespCase { name: "103-then-200", raw: b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", head: false, direct: "200 body=2 cl", hyper: "200 body=2 cl" },
    RespCase { name: "101-unasked", raw: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", head: false, direct: "502", hyper: "502" },
    RespCase { name: "204-with-body", raw: b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", head: false, direct: "204 body=0", hyper: "204 body=0" },
    RespCase { name: "304-with-te", raw: b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", head: false, direct: "304 body=0", hyper: "304 body=0" },
    RespCase { name: "head-with-cl", raw: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", head: true, direct: "200 body=0", hyper: "-" },
    RespCase { name: "read-until-close", raw: b"HTTP/1.1 200 OK\r\n\r\nhello", head: false, direct: "200 body=5 chunked", hyper: "200 body=5 chunked" },
    RespCase { name: "cl-truncated", raw: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", head: false, direct: "closed", hyper: "200 body=5 incomplete" },
    RespCase { name: "chunked-truncated", raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", head: false, direct: "closed", hyper: "200 body=5 incomplete" },
    RespCase { name: "status-4-digits", raw: b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", head: false, direct: "502", hyper: "502" },
    RespCase { name: "not-http", raw: b"SSH-2.0-OpenSSH\r\n\r\n", head: false, direct: "502", hyper: "502" },
];

/// What a backend saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    host: String,
    body: usize,
    complete: bool,
}

type Log = Arc<Mutex<HashMap<String, Vec<Seen>>>>;

/// The scripted raw backend: reads one request (head, then a body by Content-Length or
/// chunked), records it under its path, answers `/s/NAME` with that case's bytes and anything
/// else with `OK`, then closes.
async fn scripted_backend() -> (SocketAddr, Log, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let l = log.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = l.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), serve_one(&mut s, &log)).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, log, task)
}

async fn serve_one(s: &mut tokio::net::TcpStream, log: &Log) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (path, host, cl, chunked, end) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
            let get = |name: &str| {
                req.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let path = req.path.unwrap_or("").to_string();
            let path = path
                .find("/r/")
                .or_else(|| path.find("/s/"))
                .map_or(path.clone(), |i| path[i..].to_string());
            let cl = get("content-length")
                .split(',')
                .next()
                .and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = get("transfer-encoding")
                .to_ascii_lowercase()
                .contains("chunked");
            break (path, get("host"), cl, chunked, n);
        }
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    buf.drain(..end);
    // The body, as far as it comes within a second.
    let (body, complete) = loop {
        if chunked {
            if let Some((len, done)) = dechunk(&buf) {
                if done {
                    break (len, true);
                }
            }
        } else {
            let want = cl.unwrap_or(0);
            if buf.len() >= want {
                break (want, true);
            }
        }
        // Longer than the proxies' own body timeouts: they cut first.
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => {
                let len = if chunked {
                    dechunk(&buf).map_or(0, |d| d.0)
                } else {
                    buf.len()
                };
                break (len, false);
            }
        }
    };
    log.lock()
        .unwrap()
        .entry(path.clone())
        .or_default()
        .push(Seen {
            host,
            body,
            complete,
        });
    let name = path.strip_prefix("/s/");
    let answer = name
        .and_then(|name| RESP_CASES.iter().find(|c| c.name == name))
        .map_or(OK, |c| c.raw);
    write_maybe_late(s, answer, name.is_some_and(|n| n.starts_with("late/"))).await;
}

/// Decoded length of a chunked body and whether it ended; `None` if malformed.
fn dechunk(mut b: &[u8]) -> Option<(usize, bool)> {
    let mut total = 0;
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return Some((total, false));
        };
        let line = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            // Trailers until an empty line.
            loop {
                let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
                    return Some((total, false));
                };
                b = &b[eol + 2..];
                if eol == 0 {
                    return Some((total, true));
                }
            }
        }
        if b.len() < size + 2 {
            return Some((total + b.len().min(size), false));
        }
        total += size;
        b = &b[size + 2..];
    }
}

/// Sends `raw` to `proxy`, reads until the proxy closes (or 3 s), and sums up the answer:
/// `closed` (nothing), a status alone (`400`, `502`: generated, no body of interest), or
/// `STATUS body=N FRAMING` for a forwarded response, where FRAMING is how the client could
/// delimit it (`cl`, `chunked`, `close`) or `incomplete` when it was cut short.
async fn exchange(proxy: SocketAddr, raw: Vec<u8>, head_request: bool, late: bool) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    write_maybe_late(&mut s, &raw, late).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    describe(&out, head_request)
}

fn describe(mut out: &[u8], head_request: bool) -> String {
    if out.is_empty() {
        return "closed".into();
    }
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        let n = match resp.parse(out) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return "garbage".into(),
        };
        let code = resp.code.unwrap_or(0);
        if (100..200).contains(&code) {
            out = &out[n..];
            continue;
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        let body = &out[n..];
        // The scripted backend never answers with these: the proxy generated them.
        if matches!(code, 400 | 404 | 408 | 413 | 431 | 501 | 502 | 503 | 504) {
            return code.to_string();
        }
        if head_request || code == 204 || code == 304 {
            return format!("{code} body={}", body.len());
        }
        if header("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
            return match dechunk(body) {
                Some((len, true)) => format!("{code} body={len} chunked"),
                Some((len, false)) => format!("{code} body={len} incomplete"),
                None => format!("{code} body=? incomplete"),
            };
        }
        if let Some(cl) = header("content-length") {
            let want: usize = cl.trim().parse().unwrap_or(usize::MAX);
            return if body.len() >= want {
                format!("{code} body={want} cl")
            } else {
                format!("{code} body={} incomplete", body.len())
            };
        }
        return format!("{code} body={} close", body.len());
    }
}

/// What the backend saw for a request case: `fwd` plus details, or the client's answer when
/// nothing was forwarded.
fn request_outcome(client: &str, seen: Option<&Seen>) -> String {
    match seen {
        None => {
            if client.starts_with("200") {
                "200 without backend?".into()
            } else {
                client.to_string()
            }
        }
        Some(s) => {
            let mut o = "fwd".to_string();
            if s.host != "app.test" {
                o.push_str(&format!(" host={}", s.host));
            }
            if s.body > 0 {
                o.push_str(&format!(" body={}", s.body));
            }
            if !s.complete {
                o.push_str(" incomplete");
            }
            o
        }
    }
}

/// How much a proxy let through: 1 when a complete message was passed on (a request the
/// backend received whole, a response the client could read to its end), else 0 (refused,
/// closed, or cut short: the receiving side sees an incomplete message and an aborted
/// connection, which it cannot take for a valid one).
fn leniency(outcome: &str) -> u8 {
    let passed = outcome.starts_with("fwd") || outcome.contains("body=");
    u8::from(passed && !outcome.contains("incomplete"))
}

/// An outcome up to timing: a message cut short shows as `closed` or as `... incomplete`
/// with however many bytes were flushed before the abort.
fn class(outcome: &str) -> &str {
    if outcome == "closed" || outcome.contains("incomplete") {
        "cut short"
    } else {
        outcome
    }
}

/// HAProxy 2.6 in front of `backend`, like Berth: only Host app.test is served.
struct Haproxy {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_haproxy(backend: SocketAddr) -> Haproxy {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "global\n  maxconn 256\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 3s\n  timeout server 3s\n  timeout http-request 3s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  http-request deny deny_status 404 unless {{ req.hdr(host),field(1,:) -i app.test }}\n  default_backend be\n\
         backend be\n  server s1 {backend}\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = std::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("haproxy starts");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "haproxy did not listen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Haproxy {
        addr,
        child,
        _dir: dir,
    }
}

/// One proxy's outcomes: request cases by name, response cases by (name, path).
struct Outcomes {
    requests: HashMap<&'static str, String>,
    responses: HashMap<(&'static str, &'static str), String>,
}

async fn run_all(proxy: SocketAddr, log: &Log) -> Outcomes {
    let mut req_tasks = Vec::new();
    for c in REQ_CASES {
        req_tasks.push((
            c.name,
            tokio::spawn(exchange(
                proxy,
                c.raw.to_vec(),
                false,
                c.name.starts_with("late/"),
            )),
        ));
    }
    let mut resp_tasks = Vec::new();
    for c in RESP_CASES {
        let method = if c.head { "HEAD" } else { "GET" };
        let get = format!(
            "{method} /s/{} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            c.name
        );
        resp_tasks.push((
            c.name,
            "direct",
            tokio::spawn(exchange(proxy, get.into_bytes(), c.head, false)),
        ));
        if !c.head {
            let post = format!(
                "POST /s/{} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
                c.name
            );
            resp_tasks.push((
                c.name,
                "hyper",
                tokio::spawn(exchange(proxy, post.into_bytes(), false, false)),
            ));
        }
    }
    let mut clients = Vec::new();
    for (name, t) in req_tasks {
        clients.push((name, t.await.unwrap()));
    }
    // The backend logs a cut-short request once it sees the proxy close: let it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut requests = HashMap::new();
    for (name, client) in clients {
        let seen = log
            .lock()
            .unwrap()
            .get(&format!("/r/{name}"))
            .and_then(|v| v.first().cloned());
        requests.insert(name, request_outcome(&client, seen.as_ref()));
    }
    let mut responses = HashMap::new();
    for (name, path, t) in resp_tasks {
        responses.insert((name, path), t.await.unwrap());
    }
    Outcomes {
        requests,
        responses,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_conformance_berth_never_more_lenient_than_haproxy() {
    let (backend, log, task) = scripted_backend().await;
    let mut cfg = config(&format!(
        r#"[{{"name":"app","domains":["app.test"],"backends":[{{"address":"{backend}"}}]}}]"#
    ));
    cfg.proxy.timeouts.response_header = Duration::from_secs(2);
    cfg.proxy.timeouts.client_body = Duration::from_secs(1);
    let d = start(cfg).await;
    let berth = run_all(d.http_addr, &log).await;

    let haproxy = if std::env::var_os("BERTH_SYSTEM_TESTS").is_some() {
        let (hb, hlog, htask) = scripted_backend().await;
        let h = start_haproxy(hb).await;
        let out = run_all(h.addr, &hlog).await;
        drop(h);
        htask.abort();
        Some(out)
    } else {
        println!("skipped: HAProxy side of the conformance suite (set BERTH_SYSTEM_TESTS=1; needs the haproxy binary)");
        None
    };

    let mut table = String::from(
        "| case | side | path | Berth | HAProxy 2.6 |\n| --- | --- | --- | --- | --- |\n",
    );
    let mut failures = Vec::new();
    let hap = |key: Option<&String>| key.cloned().unwrap_or_else(|| "(not run)".into());
    for c in REQ_CASES {
        let b = &berth.requests[c.name];
        let h = haproxy.as_ref().map(|o| &o.requests[c.name]);
        table.push_str(&format!(
            "| `{}` | request | both | {b} | {} |\n",
            c.name,
            hap(h)
        ));
        if class(b) != class(c.berth) {
            failures.push(format!(
                "request {}: Berth {b}, expected {}",
                c.name, c.berth
            ));
        }
        if let Some(h) = h {
            if leniency(b) > leniency(h) {
                failures.push(format!(
                    "request {}: Berth ({b}) more lenient than HAProxy ({h})",
                    c.name
                ));
            }
        }
    }
    for c in RESP_CASES {
        for (path, want) in [("direct", c.direct), ("hyper", c.hyper)] {
            let Some(b) = berth.responses.get(&(c.name, path)) else {
                continue;
            };
            let h = haproxy
                .as_ref()
                .and_then(|o| o.responses.get(&(c.name, path)));
            table.push_str(&format!(
                "| `{}` | response | {path} | {b} | {} |\n",
                c.name,
                hap(h)
            ));
            if class(b) != class(want) {
                failures.push(format!(
                    "response {} ({path}): Berth {b}, expected {want}",
                    c.name
                ));
            }
            if let Some(h) = h {
                if leniency(b) > leniency(h) {
                    failures.push(format!(
                        "response {} ({path}): Berth ({b}) more lenient than HAProxy ({h})",
                        c.name
                    ));
                }
            }
        }
    }
    println!("{table}");
    if let Some(path) = std::env::var_os("BERTH_CONFORMANCE_OUT") {
        std::fs::write(path, &table).unwrap();
    }
    d.shutdown().await;
    task.abort();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
