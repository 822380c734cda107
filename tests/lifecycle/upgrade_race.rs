//! The upgrade drill of `tests/deploy/upgrade_deploy.rs` without Docker: a real `berthd` in
//! front of a static backend (tests/support), keep-alive and new-connection clients — reqwest
//! ones as in the drill, and raw TCP ones that say where a request failed (written, then EOF
//! or reset; and from which local port, to find the connection in berthd's debug log) — and
//! many `berthd upgrade`s. Every failure is counted; none is allowed.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::berthd::BerthdProcess;
use crate::support::{self, BlockingBackend, TestBackend};

/// berthd (a child process on fixed loopback ports, which the clients keep using across
/// upgrades) routing `app.test` to `backend`; `proxy_timeouts` is YAML for `proxy.timeouts`
/// (indented by four spaces per line).
fn start_berthd(backend: SocketAddr, proxy_timeouts: &str) -> BerthdProcess {
    let mut d = BerthdProcess::new(&format!(
        "proxy:\n  timeouts:\n{proxy_timeouts}\nroutes:\n  - domains: [app.test]\n    \
         backends:\n      - address: {backend}\n"
    ));
    d.start();
    d
}

/// Failures of a bounded load loop, by client kind.
#[derive(Default)]
pub(crate) struct Tally {
    pub ok: AtomicU64,
    pub failed: Mutex<Vec<String>>,
}

impl Tally {
    pub fn fail(&self, what: String) {
        self.failed.lock().unwrap().push(what);
    }
    pub fn failures(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }
}

/// One raw HTTP/1.1 exchange on `conn`: writes the request, reads one response (content-length
/// bodies). Errors say how far it got.
fn raw_exchange(conn: &mut BufReader<TcpStream>, close: bool) -> Result<(u16, bool), String> {
    let req = if close {
        "GET / HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n"
    } else {
        "GET / HTTP/1.1\r\nhost: app.test\r\n\r\n"
    };
    conn.get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    use crate::support::RawReadError as E;
    match crate::support::read_raw_response(conn) {
        Ok(resp) => Ok((resp.status, resp.close)),
        Err(E::NoResponse(None)) => {
            Err("request written, then EOF before any response byte".into())
        }
        Err(E::NoResponse(Some(e))) => Err(format!(
            "request written, then {e} before any response byte"
        )),
        Err(E::BadStatus(line)) => Err(format!("bad status line {line:?}")),
        Err(E::Head(e)) => Err(format!("head: {e}")),
        Err(E::Body(e)) => Err(format!("body: {e}")),
    }
}

/// How often a reqwest keep-alive client sends two requests at once (longer than the drain
/// timeout of the upgrade test, so the second pooled connection is idle past it at a drain).
const PAIR_EVERY: Duration = Duration::from_millis(1500);

/// Bounded load against `addr` (Host `app.test`): `n` reqwest keep-alive clients, `n` reqwest
/// new-connection clients, `n` raw keep-alive and `n` raw new-connection clients. Runs until
/// `stop`, `max` requests or `max_time`.
pub(crate) fn load(
    addr: SocketAddr,
    n: usize,
    max: u64,
    max_time: Duration,
    stop: Arc<AtomicBool>,
) -> (Arc<Tally>, Vec<std::thread::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + max_time;
    let go = {
        let (stop, sent) = (stop.clone(), sent.clone());
        move || {
            !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && sent.fetch_add(1, Ordering::Relaxed) < max
        }
    };
    let mut handles = Vec::new();
    for i in 0..n * 2 {
        let (tally, go) = (tally.clone(), go.clone());
        let keep_alive = i % 2 == 0;
        handles.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = if keep_alive {
                reqwest::Client::new()
            } else {
                reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap()
            };
            let kind = if keep_alive {
                "reqwest keep-alive"
            } else {
                "reqwest new-connection"
            };
            let one = |client: reqwest::Client, tally: Arc<Tally>| async move {
                let res = client
                    .get(format!("http://{addr}/"))
                    .header("host", "app.test")
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(_) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tally.fail(format!("{kind}: body: {e:?}")),
                    },
                    Ok(r) => tally.fail(format!("{kind}: status {}", r.status())),
                    Err(e) => tally.fail(format!("{kind}: {e:?}")),
                }
            };
            rt.block_on(async move {
                let mut pair_at = Instant::now();
                while go() {
                    if keep_alive && pair_at.elapsed() >= PAIR_EVERY {
                        pair_at = Instant::now();
                        // Now and then two at once, as browsers and API clients do: the pool
                        // then holds a second connection that mostly sits idle (the pool
                        // hands out the most recently used one) until the first one closes.
                        tokio::join!(
                            one(client.clone(), tally.clone()),
                            one(client.clone(), tally.clone())
                        );
                    } else {
                        one(client.clone(), tally.clone()).await;
                    }
                }
            });
        }));
    }
    for i in 0..n * 2 {
        let (tally, go) = (tally.clone(), go.clone());
        let keep_alive = i % 2 == 0;
        handles.push(std::thread::spawn(move || {
            let mut conn: Option<(BufReader<TcpStream>, u16, u32)> = None;
            while go() {
                if conn.is_none() {
                    match TcpStream::connect(addr) {
                        Ok(c) => {
                            c.set_read_timeout(Some(Duration::from_secs(10))).ok();
                            let port = c.local_addr().map(|a| a.port()).unwrap_or(0);
                            conn = Some((BufReader::new(c), port, 0));
                        }
                        Err(e) => {
                            tally.fail(format!("raw connect: {e}"));
                            continue;
                        }
                    }
                }
                let Some((c, port, used)) = conn.as_mut() else {
                    continue;
                };
                let res = raw_exchange(c, !keep_alive);
                *used += 1;
                match res {
                    Ok((200, close)) => {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        if close || !keep_alive {
                            conn = None;
                        }
                    }
                    Ok((s, _)) => {
                        tally.fail(format!("raw from port {port}: status {s}"));
                        conn = None;
                    }
                    Err(e) => {
                        let kind = if keep_alive {
                            "raw keep-alive"
                        } else {
                            "raw new-connection"
                        };
                        tally.fail(format!(
                            "{kind} from port {port}, request {used} on it: {e}"
                        ));
                        conn = None;
                    }
                }
            }
        }));
    }
    (tally, handles)
}

/// The drill minus Docker: 30 upgrades under keep-alive and new-connection load (reqwest and
/// raw; reqwest keep-alive clients now and then send two requests at once, so their pool holds
/// a connection that sits idle), drain timeout 1 s. 0 failed requests.
#[test]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
fn thirty_upgrades_under_reqwest_and_raw_load_fail_nothing() {
    let upgrades: usize = std::env::var("BERTH_RACE_UPGRADES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let backend = BlockingBackend::start("b");
    let d = start_berthd(backend.addr, "    drain: 1s");
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let (tally, handles) = load(d.http, 3, 1_000_000, Duration::from_secs(300), stop.clone());
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![d.current_pid().expect("status")];
    for i in 0..upgrades {
        pids.push(d.upgrade());
        // Vary the moment: some upgrades land while the previous process still drains, most
        // after keep-alive clients have had a pooled connection idle past the drain timeout.
        std::thread::sleep(Duration::from_millis(300 + (i as u64 * 337) % 1500));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failures();
    eprintln!(
        "{upgrades} upgrades under load: {} requests, {} failed, {:.1}s",
        ok + failed.len() as u64,
        failed.len(),
        t0.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        for f in &failed {
            if let Some(port) = f
                .split("port ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            {
                for l in d.log_lines(&format!(":{port}")) {
                    eprintln!("  {l}");
                }
            }
        }
    }
    assert!(failed.is_empty(), "failed requests: {failed:#?}");
    assert!(ok > 1000, "too few requests ({ok})");
    let old = pids[..pids.len() - 1].to_vec();
    support::wait_until_named(Duration::from_secs(30), "old processes exit", || {
        old.iter().all(|p| !support::pid_alive(*p))
    });
}

/// How a keep-alive client's next request, sent at a chosen moment around the server's idle
/// (or drain) close, ended.
#[derive(Debug, Default)]
struct Boundary {
    /// Answered (200).
    served: usize,
    /// Closed cleanly before any byte of a response (EOF; the request was never processed).
    closed: usize,
    /// Anything else: a reset, a broken pipe, a wrong answer. Must stay empty.
    bad: Vec<String>,
}

/// For each offset: a raw keep-alive client sends `GET /first`, reads the answer, waits
/// `base + offset` after it, then sends `GET /second` on the same connection (clients run in
/// parallel). `before_second` runs once every first answer is in (e.g. to start a drain).
fn race_the_close(
    addr: SocketAddr,
    base: Duration,
    offsets_ms: std::ops::RangeInclusive<i64>,
    before_second: impl FnOnce(),
) -> Boundary {
    let result = Arc::new(Mutex::new(Boundary::default()));
    let firsts = Arc::new(std::sync::Barrier::new(offsets_ms.clone().count() + 1));
    let mut handles = Vec::new();
    for offset in offsets_ms {
        let (result, firsts) = (result.clone(), firsts.clone());
        handles.push(std::thread::spawn(move || {
            let c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut conn = BufReader::new(c);
            let first = raw_exchange(&mut conn, false);
            let answered = Instant::now();
            firsts.wait();
            if !matches!(first, Ok((200, false))) {
                result
                    .lock()
                    .unwrap()
                    .bad
                    .push(format!("first request: {first:?}"));
                return;
            }
            let at = if offset >= 0 {
                answered + base + Duration::from_millis(offset as u64)
            } else {
                answered + base - Duration::from_millis(offset.unsigned_abs())
            };
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let second = raw_exchange(&mut conn, false);
            let mut r = result.lock().unwrap();
            match second {
                Ok((200, _)) => r.served += 1,
                Err(e) if e == "request written, then EOF before any response byte" => {
                    r.closed += 1
                }
                other => r.bad.push(format!("offset {offset} ms: {other:?}")),
            }
        }));
    }
    firsts.wait();
    before_second();
    for h in handles {
        h.join().unwrap();
    }
    Arc::into_inner(result).unwrap().into_inner().unwrap()
}

fn race_config(
    backend: SocketAddr,
    idle: Duration,
    drain: Duration,
) -> berth::model::config::Config {
    let mut c = support::config(&format!(
        r#"[{{"domains": ["app.test"], "backends": [{{"address": "{backend}"}}]}}]"#
    ));
    c.proxy.timeouts.idle = idle;
    c.proxy.timeouts.drain = drain;
    c
}

/// Rounds of each boundary test (each a few hundred ms): the race is timing-dependent, so one
/// round of the old code showed a reset only about every other time.
const ROUNDS: usize = 5;

/// A keep-alive client that sends its next request exactly when the idle timer fires gets an
/// answer, or a clean close before any byte of its request was processed; never a reset, and
/// never a request that reached the backend without its answer coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_as_the_idle_timer_fires_is_answered_or_cleanly_refused() {
    let backend = TestBackend::start("b").await;
    let idle = Duration::from_millis(300);
    let running = support::start(race_config(backend.addr, idle, Duration::from_secs(2))).await;
    let addr = running.http_addr;
    let mut all = Boundary::default();
    for _ in 0..ROUNDS {
        let seen = tokio::task::spawn_blocking(move || race_the_close(addr, idle, -40..=40, || {}))
            .await
            .unwrap();
        all.served += seen.served;
        all.closed += seen.closed;
        all.bad.extend(seen.bad);
    }
    eprintln!(
        "idle close race, {ROUNDS} rounds: {} answered, {} closed cleanly, {} bad",
        all.served,
        all.closed,
        all.bad.len()
    );
    assert!(all.bad.is_empty(), "{:#?}", all.bad);
    // Every request the backend saw was answered: 81 first requests a round + the seconds
    // that were answered.
    assert_eq!(backend.requests(), 81 * ROUNDS + all.served);
    running.shutdown().await;
}

/// The same at the drain: a keep-alive connection idle since before the drain began gets the
/// drain timeout (from the drain's start) for a next request, answered with `Connection:
/// close`; it is then closed only between requests, and a request sent in the instant of that
/// close meets a clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sent_as_the_drain_closes_an_idle_connection_is_answered_or_cleanly_refused() {
    let backend = TestBackend::start("b").await;
    let drain = Duration::from_millis(300);
    let mut all = Boundary::default();
    for _ in 0..ROUNDS {
        let running =
            support::start(race_config(backend.addr, Duration::from_secs(60), drain)).await;
        let addr = running.http_addr;
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let seen = tokio::task::spawn_blocking(move || {
            race_the_close(addr, drain, -40..=40, move || {
                // Drain now: the seconds go out around `drain` after the firsts' answers.
                rt.spawn(async move {
                    running.shutdown().await;
                    let _ = tx.send(());
                });
            })
        })
        .await
        .unwrap();
        let _ = rx.await;
        all.served += seen.served;
        all.closed += seen.closed;
        all.bad.extend(seen.bad);
    }
    eprintln!(
        "drain close race, {ROUNDS} rounds: {} answered, {} closed cleanly, {} bad",
        all.served,
        all.closed,
        all.bad.len()
    );
    assert!(all.bad.is_empty(), "{:#?}", all.bad);
    assert_eq!(backend.requests(), 81 * ROUNDS + all.served);
}
