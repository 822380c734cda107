//! Fuzz targets, run on stable Rust by a small mutation fuzzer of our own (no nightly, no
//! sanitizer flags): the upstream response parser (the direct path's head parser + body
//! decoder, with the framing rule both upstream paths share), host normalisation, and Docker
//! label parsing.
//!
//! Each target starts from a seed corpus, mutates inputs (byte flips, inserts of
//! HTTP-significant bytes and tokens, deletions, duplications, splices) and keeps an input
//! in the corpus when it produces an outcome signature not seen before (behaviour-guided,
//! since stable Rust gives no coverage feedback). Every execution checks properties, not
//! just "no panic": see each target. A failure prints the seed and the input (hex) and
//! writes it to `target/fuzz-findings/`.
//!
//! `cargo test --test fuzz` runs each target for `BERTH_FUZZ_SECS` seconds (default 2, or 15
//! when `CI` is set, as in `.ci/run`). Long runs: `fuzz/run.sh 600` (one target at a time,
//! niced). Reproduce a finding with `BERTH_FUZZ_SEED=<seed>` and the same duration.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use berth::model::host::{is_valid_host_chars, normalize_host, normalize_host_cow, parse_domain};
use berth::model::labels;
use berth::proxy::upstream::direct::fuzz_parse_response;

/// Bytes that matter to HTTP framing, favoured by the mutator.
const INTERESTING: &[u8] = b"\r\n:; \t,=\"0123456789abcdefxX+-.[]\0\x7f\x80\xff";
/// Tokens the mutator splices in.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"\r",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.0 ",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"Content-Length: ",
    b"content-length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"transfer-encoding: ",
    b"chunked",
    b"gzip, ",
    b"Connection: close\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b";ext=\"v\"",
    b"ffffffffffffffff",
    b"18446744073709551616",
    b" 204 ",
    b" 304 ",
    b"x-t: 1\r\n",
    b"[::1]",
    b":8080",
    b"berth.",
    b"\xc4\xb0",
    b"\xe2\x80\xae",
];

struct Stats {
    execs: u64,
    corpus: usize,
}

/// Runs `exec` on mutated inputs for the configured time. `exec` returns an outcome
/// signature (for corpus growth) and panics on a property violation.
fn fuzz(name: &str, seeds: &[Vec<u8>], mut exec: impl FnMut(&[u8]) -> String) -> Stats {
    // A short run by default; longer in CI (`CI` is set there).
    let secs: u64 = std::env::var("BERTH_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if std::env::var_os("CI").is_some() {
            15
        } else {
            2
        });
    let seed: u64 = std::env::var("BERTH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut corpus: Vec<Vec<u8>> = seeds.to_vec();
    let mut seen: HashSet<String> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut execs = 0u64;
    let run = |input: &[u8], exec: &mut dyn FnMut(&[u8]) -> String| {
        catch_unwind(AssertUnwindSafe(|| exec(input))).map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            msg
        })
    };
    for s in seeds {
        match run(s, &mut exec) {
            Ok(sig) => {
                seen.insert(sig);
            }
            Err(msg) => report(name, seed, s, &msg),
        }
    }
    // Check the clock every 256 executions.
    while !execs.is_multiple_of(256) || Instant::now() < deadline {
        let mut input = corpus[rng.random_range(0..corpus.len())].clone();
        let rounds = rng.random_range(1..=8);
        for _ in 0..rounds {
            mutate(&mut rng, &mut input, &corpus);
        }
        input.truncate(4096);
        execs += 1;
        match run(&input, &mut exec) {
            Ok(sig) => {
                if seen.insert(sig) && corpus.len() < 50_000 {
                    corpus.push(input);
                }
            }
            Err(msg) => report(name, seed, &input, &msg),
        }
    }
    println!(
        "fuzz {name}: {execs} execs in {secs} s ({:.0}/s), corpus {} (from {} seeds), {} outcome signatures, seed {seed}, no property violated",
        execs as f64 / secs.max(1) as f64,
        corpus.len(),
        seeds.len(),
        seen.len()
    );
    Stats {
        execs,
        corpus: corpus.len(),
    }
}

fn report(name: &str, seed: u64, input: &[u8], msg: &str) -> ! {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}-{seed}.bin"));
    let _ = std::fs::write(&file, input);
    panic!(
        "fuzz {name}: property violated (seed {seed}, input saved to {}): {msg}\ninput: {:?}",
        file.display(),
        String::from_utf8_lossy(input)
    );
}

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    let len = input.len();
    match rng.random_range(0..8) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let i = rng.random_range(0..=len);
            input.insert(i, INTERESTING[rng.random_range(0..INTERESTING.len())]);
        }
        2 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        3 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=16)).min(len);
            input.drain(a..b);
        }
        4 if len > 0 => {
            let a = rng.random_range(0..len);
            let b = (a + rng.random_range(1..=32)).min(len);
            let piece = input[a..b].to_vec();
            let at = rng.random_range(0..=len);
            input.splice(at..at, piece);
        }
        5 => {
            let t = TOKENS[rng.random_range(0..TOKENS.len())];
            let at = rng.random_range(0..=len);
            input.splice(at..at, t.iter().copied());
        }
        6 => {
            // Splice: our prefix, another input's suffix.
            let other = &corpus[rng.random_range(0..corpus.len())];
            let a = rng.random_range(0..=len);
            let b = rng.random_range(0..=other.len());
            input.truncate(a);
            input.extend_from_slice(&other[b..]);
        }
        _ => {
            let i = rng.random_range(0..=len);
            input.insert(i, rng.random());
        }
    }
}

/// Upstream response parser: the same bytes fed whole, byte by byte and in 7-byte pieces give
/// the same result (head, body, completeness, or an error); an accepted head never carries
/// both Content-Length and Transfer-Encoding, every Content-Length it keeps is plain digits
/// and, for a complete length-framed body, matches the body; no 1xx/101 is ever final.
#[test]
fn fuzz_upstream_response_parser() {
    let seeds: Vec<Vec<u8>> = [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 Fine Thanks\r\nX-A: a\r\n b\r\ncontent-length: 0\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect();
    let stats = fuzz("upstream_response", &seeds, |input| {
        let head_request = input.first().is_some_and(|b| b & 1 == 1);
        let whole = fuzz_parse_response(input, head_request, usize::MAX);
        for step in [1, 7] {
            let split = fuzz_parse_response(input, head_request, step);
            assert_eq!(
                whole, split,
                "split into {step}-byte reads changes the result"
            );
        }
        match &whole {
            Err(e) => format!("err:{e}"),
            Ok(r) => {
                assert!(
                    r.status >= 200 || r.status < 100,
                    "final status {}",
                    r.status
                );
                let has = |n: &str| r.headers.iter().any(|(k, _)| k == n);
                assert!(
                    !(has("content-length") && has("transfer-encoding")),
                    "forwarded both framings: {:?}",
                    r.headers
                );
                for (k, v) in &r.headers {
                    if k == "content-length" {
                        assert!(
                            !v.is_empty() && v.iter().all(u8::is_ascii_digit),
                            "non-canonical Content-Length forwarded: {v:?}"
                        );
                        if r.framing == "length" && r.complete {
                            let n: usize = std::str::from_utf8(v).unwrap().parse().unwrap();
                            assert_eq!(n, r.body.len());
                        }
                    }
                }
                if head_request || r.status == 204 || r.status == 304 {
                    assert!(r.body.is_empty(), "a body on a bodiless response");
                }
                format!(
                    "ok:{}:{}:{}:{}:{}",
                    r.status / 100,
                    r.framing,
                    r.complete,
                    r.keep_alive,
                    r.body.len().min(3)
                )
            }
        }
    });
    assert!(stats.execs > 0 && stats.corpus >= seeds.len());
}

/// Host normalisation: never panics; the request path's allocation-free variant agrees with
/// `normalize_host`; the result is lower case, has no trailing dot and is idempotent; what
/// it drops is only surrounding whitespace, one trailing dot and a `:digits` port; a
/// configured domain that `parse_domain` accepts is found again by normalising it as a Host.
#[test]
fn fuzz_host_normalisation() {
    let seeds: Vec<Vec<u8>> = [
        "app.test",
        "App.Test.",
        "app.test:8080",
        "[::1]:80",
        "[::1]",
        " a.b ",
        "a:b",
        "",
        ".",
        "x-y.z9",
        "*.wild.test",
        "a..b",
        "[::1]x",
        "[",
        "]:80",
        "a.b:",
        "İ.test",
        "xn--e1a.test",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let stats = fuzz("host_normalisation", &seeds, |input| {
        let Ok(raw) = std::str::from_utf8(input) else {
            return "not-utf8".into();
        };
        let full = normalize_host(raw);
        let fast = normalize_host_cow(raw).map(|c| c.into_owned());
        assert_eq!(full, fast, "fast path disagrees on {raw:?}");
        let sig = match &full {
            None => "none".to_string(),
            Some(h) => {
                assert!(!h.is_empty());
                assert!(!h.bytes().any(|b| b.is_ascii_uppercase()), "{h:?}");
                assert!(!h.ends_with('.'), "{h:?}");
                assert_eq!(
                    normalize_host(h).as_deref(),
                    Some(h.as_str()),
                    "not idempotent"
                );
                // Only whitespace, one trailing dot and a port were dropped.
                let t = raw.trim();
                let lower = t.to_ascii_lowercase();
                let rest = lower
                    .strip_prefix(h.as_str())
                    .unwrap_or_else(|| panic!("{h:?} is not a prefix of {raw:?} (lower-cased)"));
                let rest = rest.strip_prefix('.').unwrap_or(rest);
                let port_ok = rest.is_empty()
                    || rest
                        .strip_prefix(':')
                        .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
                assert!(port_ok, "{raw:?} → {h:?} dropped {rest:?}");
                format!("some:{}", is_valid_host_chars(h))
            }
        };
        let dom = match parse_domain(raw, true) {
            Ok(d) => {
                assert_eq!(
                    parse_domain(&d, true).as_ref(),
                    Ok(&d),
                    "parse_domain idempotent"
                );
                if !d.starts_with("*.") {
                    assert_eq!(normalize_host(&d).as_deref(), Some(d.as_str()), "{raw:?}");
                    assert!(is_valid_host_chars(&d), "{d:?}");
                }
                "dom-ok".to_string()
            }
            Err(e) => format!("dom-err:{:?}", std::mem::discriminant(&e)),
        };
        format!("{sig}:{dom}")
    });
    assert!(stats.execs > 0);
}

/// Label parsing: never panics; what parses re-parses from `to_labels` to the same spec; a
/// warning names the container.
#[test]
fn fuzz_label_parsing() {
    const KEYS: &[&str] = &[
        labels::APP,
        labels::ROLE,
        labels::DEPLOYMENT,
        labels::PORT,
        labels::HEALTH_PATH,
        labels::MANAGED,
        labels::SLOT,
        "berth.domain.0",
        "berth.domain.1",
        "berth.domain.10",
        "berth.domain.01",
        "berth.domain.-1",
        "berth.domain.x",
        "berth.domain.0.alias.0",
        "berth.domain.0.alias.1",
        "berth.domain.1.alias.0",
        "berth.domain.0.alias.",
        "berth.domain.18446744073709551616",
        "berth.domain.0.alias.99999999999999999999",
        "berth.other",
    ];
    // The input is a list of `key-index value` lines; keys come from KEYS.
    let seeds: Vec<Vec<u8>> = [
        "0 web\n1 app\n7 web.test\n13 www.web.test\n3 3000\n4 /health",
        "0 api\n1 app\n7 api.test\n8 *.api.test\n3 8080\n5 true\n2 d1",
        "0 x\n1 app\n3 0",
        "0 x\n1 app\n3 70000",
        "0 x\n1 worker",
        "0 \n1 app",
        "0 x\n1 app\n7 bad host\n",
        "0 x\n1 app\n9 a.test\n13 b.test",
        "0 x\n1 app\n4 no-slash",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let stats = fuzz("labels", &seeds, |input| {
        let text = String::from_utf8_lossy(input);
        let mut map = HashMap::new();
        for line in text.split('\n') {
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            let key = k
                .parse::<usize>()
                .ok()
                .and_then(|i| KEYS.get(i))
                .map_or_else(|| k.to_string(), |s| s.to_string());
            map.insert(key, v.to_string());
        }
        match labels::parse("c1", &map) {
            labels::Parsed::NotOurs => "not-ours".into(),
            labels::Parsed::Invalid(msg) => {
                assert!(msg.contains("c1"), "{msg}");
                format!("invalid:{}", msg.split(' ').nth(3).unwrap_or(""))
            }
            labels::Parsed::Ok(spec) => {
                let again = labels::parse("c1", &labels::to_labels(&spec));
                assert_eq!(again, labels::Parsed::Ok(spec.clone()), "round trip");
                format!(
                    "ok:{}:{}:{}",
                    spec.domains.len().min(3),
                    spec.aliases.len().min(3),
                    spec.deployment.is_some()
                )
            }
        }
    });
    assert!(stats.execs > 0);
}
