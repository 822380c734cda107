//! Balancing and health integration tests: the failover drill, sticky pinning and re-pinning,
//! drain, slow start, uri_hash stickiness, and on_down: shutdown_sessions, with real
//! backends on loopback and the daemon in-process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use futures_util::{SinkExt, StreamExt};
use http::Request;

use berth::model::route::RouteTable;

const CHECK: &str =
    r#""health_check":{"path":"/health","interval":"100ms","timeout":"200ms","fall":3,"rise":2}"#;

fn is_up(d: &berth::daemon::Running, route: &str, id: &str) -> bool {
    d.tables
        .load()
        .route(route)
        .and_then(|r| r.backends.iter().find(|b| b.id == id))
        .map(|b| b.health.is_up())
        .unwrap_or(false)
}

/// Restarts a stopped backend on the same port (the old listener closes asynchronously).
async fn restart(old: &TestBackend) -> TestBackend {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TestBackend::start_on(&old.name, old.addr, old.state.clone()).await {
            Ok(b) => return b,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot rebind {}: {e}", old.addr),
        }
    }
}

/// When a GET started, and its (status, backend) or error.
type Outcome = (Instant, Result<(u16, String), String>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drill_zero_failed_gets() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let d = start(config(&format!(
        r#"[{{"name":"app","domains":["app.test"],{CHECK},
        "backends":[{{"id":"b1","address":"{}"}},{{"id":"b2","address":"{}"}}]}}]"#,
        b1.addr, b2.addr
    )))
    .await;
    let c = client();
    let mut failed = Vec::new();
    let count = |c: &HttpClient, addr: SocketAddr| {
        let c = c.clone();
        async move { fetch(&c, addr, "app.test", "/").await }
    };

    // Phase 1: both healthy, both serve.
    let mut seen = [0usize; 2];
    for _ in 0..40 {
        match count(&c, d.http_addr).await {
            Ok((200, b, _)) => seen[(b == "b2") as usize] += 1,
            other => failed.push(format!("phase 1: {other:?}")),
        }
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");

    // Phase 2: kill b1 under a bounded stream of GETs from 4 concurrent clients (requests
    // that take a few ms, so some are in flight on b1 when it dies).
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (c, stop, log, addr) = (client(), stop.clone(), log.clone(), d.http_addr);
        workers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let r = fetch(&c, addr, "app.test", "/sleep?ms=3")
                    .await
                    .map(|(s, b, _)| (s, b));
                log.lock().unwrap().push((t, r));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    b1.stop();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || !is_up(&d, "app", "b1")).await,
        "b1 never marked down"
    );
    let t_down = Instant::now();
    let down_after = t_down - killed;
    println!("b1 marked down {down_after:?} after the kill");
    // fall × interval, plus one check timeout and scheduling slack.
    assert!(
        down_after <= Duration::from_millis(300 + 200 + 300),
        "marked down after {down_after:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Phase 3: restart b1 on the same port; it rejoins after `rise` good checks.
    let t_restart = Instant::now();
    let b1 = restart(&b1).await;
    assert!(
        eventually(Duration::from_secs(3), || is_up(&d, "app", "b1")).await,
        "b1 did not rejoin"
    );
    let t_up = Instant::now();
    let up_after = t_up - t_restart;
    println!("b1 rejoined {up_after:?} after the restart");
    assert!(
        up_after <= Duration::from_millis(2 * 100 + 400),
        "rejoined after {up_after:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    let (mut while_down, mut after_up) = (Vec::new(), Vec::new());
    for (t, r) in log.iter() {
        match r {
            Ok((200, b)) => {
                if *t > t_down && *t < t_restart {
                    while_down.push(b.clone());
                }
                if *t > t_up {
                    after_up.push(b.clone());
                }
            }
            other => failed.push(format!("{other:?}")),
        }
    }
    println!(
        "{} GETs during the drill, {} while b1 was down, {} after it rejoined",
        log.len(),
        while_down.len(),
        after_up.len()
    );
    assert!(while_down.len() >= 50, "too few requests while down");
    assert!(
        while_down.iter().all(|b| b == "b2"),
        "only the survivor serves while b1 is down"
    );
    assert!(
        after_up.iter().filter(|b| *b == "b1").count() >= after_up.len() / 4,
        "b1 takes traffic again after rejoining"
    );
    assert!(b1.requests() > 0);
    assert!(failed.is_empty(), "failed GETs: {failed:?}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_mark_down_without_traffic_and_shutdown_sessions() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let d = start(config(&format!(
        r#"[{{"name":"cut","domains":["cut.test"],{CHECK},"on_down":"shutdown_sessions",
           "backends":[{{"id":"b1","address":"{}"}}]}},
          {{"name":"keep","domains":["keep.test"],{CHECK},
           "backends":[{{"id":"b1","address":"{}"}}]}},
          {{"name":"other","domains":["other.test"],{CHECK},
           "backends":[{{"id":"b2","address":"{}"}}]}}]"#,
        b1.addr, b1.addr, b2.addr
    )))
    .await;
    use tokio_tungstenite::tungstenite::Message;
    let mut cut = {
        let s = tokio::net::TcpStream::connect(d.http_addr).await.unwrap();
        tokio_tungstenite::client_async("ws://cut.test/ws", s)
            .await
            .unwrap()
            .0
    };
    let mut keep = {
        let s = tokio::net::TcpStream::connect(d.http_addr).await.unwrap();
        tokio_tungstenite::client_async("ws://keep.test/ws", s)
            .await
            .unwrap()
            .0
    };
    for ws in [&mut cut, &mut keep] {
        ws.send(Message::text("hi")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(3), ws.next()).await;
        assert!(matches!(got, Ok(Some(Ok(Message::Text(_))))), "{got:?}");
    }

    // b1's health endpoint fails: no traffic needed to notice.
    let t0 = Instant::now();
    b1.state.unhealthy.store(true, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(3), || !is_up(&d, "cut", "b1")).await);
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_millis(300 + 100 + 300),
        "down after {took:?}"
    );
    assert!(is_up(&d, "other", "b2"), "unrelated backend stays up");

    // on_down: shutdown_sessions closes the tunnel promptly; the other route's stays open.
    let end = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match cut.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "tunnel of a down backend not shut");
    assert!(eventually(Duration::from_secs(3), || !is_up(&d, "keep", "b1")).await);
    keep.send(Message::text("still")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), keep.next()).await;
    assert!(
        matches!(&got, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "b1: still"),
        "{got:?}"
    );

    // A down route answers 503; recovery brings it back.
    let (s, _, _) = fetch(&client(), d.http_addr, "cut.test", "/")
        .await
        .unwrap();
    assert_eq!(s, 503);
    b1.state.unhealthy.store(false, Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(3), || is_up(&d, "cut", "b1")).await);
    let (s, _, _) = fetch(&client(), d.http_addr, "cut.test", "/")
        .await
        .unwrap();
    assert_eq!(s, 200);
    d.shutdown().await;
}

fn set_cookie(parts: &http::response::Parts) -> Option<String> {
    parts
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_and_repins_after_death() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let backends = [&b1, &b2];
    let d = start(config(&format!(
        r#"[{{"name":"app","domains":["app.test"],"balancer":"sticky_cookie",{CHECK},
        "backends":[{{"id":"b1","address":"{}"}},{{"id":"b2","address":"{}"}}]}}]"#,
        b1.addr, b2.addr
    )))
    .await;
    let c = client();
    let req = |cookie: Option<&str>| {
        let mut r = Request::get(format!("http://{}/", d.http_addr)).header("host", "app.test");
        if let Some(c) = cookie {
            r = r.header("cookie", format!("theme=dark; {c}"));
        }
        r.body(empty()).unwrap()
    };

    let (parts, _) = send(&c, req(None)).await.unwrap();
    let sc = set_cookie(&parts).expect("first response sets the cookie");
    assert!(sc.starts_with("BERTH_SERVER="), "{sc}");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(sc.contains(attr), "{sc}");
    }
    let pin = sc.split(';').next().unwrap().to_string();
    assert!(
        !pin.contains("127.0.0.1"),
        "the cookie must not leak the address: {pin}"
    );
    let pinned = parts.headers["x-backend"].to_str().unwrap().to_string();
    for _ in 0..20 {
        let (parts, _) = send(&c, req(Some(&pin))).await.unwrap();
        assert_eq!(parts.headers["x-backend"], pinned.as_str());
        assert!(set_cookie(&parts).is_none(), "valid pin is not rewritten");
    }

    // The pinned backend dies: requests re-pin to the survivor, cookie rewritten, no failure.
    let dead = backends.iter().find(|b| b.name == pinned).unwrap();
    let survivor = if pinned == "b1" { "b2" } else { "b1" };
    dead.stop();
    let (parts, _) = send(&c, req(Some(&pin))).await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-backend"], survivor);
    let sc = set_cookie(&parts).expect("re-pin rewrites the cookie");
    let new_pin = sc.split(';').next().unwrap().to_string();
    assert_ne!(new_pin, pin);
    // Still the old cookie while the dead one is being marked down: never a failure.
    for _ in 0..20 {
        let (parts, _) = send(&c, req(Some(&pin))).await.unwrap();
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-backend"], survivor);
    }
    for _ in 0..20 {
        let (parts, _) = send(&c, req(Some(&new_pin))).await.unwrap();
        assert_eq!(parts.headers["x-backend"], survivor);
        assert!(set_cookie(&parts).is_none());
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_in_flight_finish_and_avoids_new() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let route = |state: &str| {
        routes(&format!(
            r#"[{{"name":"app","domains":["app.test"],
            "backends":[{{"id":"b1","address":"{}","state":"{state}"}},{{"id":"b2","address":"{}"}}]}}]"#,
            b1.addr, b2.addr
        ))
    };
    let mut cfg = config("[]");
    cfg.routes = routes(&format!(
        r#"[{{"name":"app","domains":["app.test"],"backends":[{{"id":"b1","address":"{}"}}]}}]"#,
        b1.addr
    ));
    let d = start(cfg).await;
    let c = client();
    let slow = {
        let c = c.clone();
        let addr = d.http_addr;
        tokio::spawn(async move { fetch(&c, addr, "app.test", "/sleep?ms=1500").await })
    };
    assert!(
        eventually(Duration::from_secs(2), || b1
            .state
            .inflight
            .load(Ordering::SeqCst)
            == 1)
        .await
    );

    let t = RouteTable::build(&route("drain"), Some(&d.tables.load_full())).unwrap();
    d.tables.publish(t);
    let before = b1.requests();
    for _ in 0..30 {
        let (s, b, _) = fetch(&c, d.http_addr, "app.test", "/").await.unwrap();
        assert_eq!((s, b.as_str()), (200, "b2"));
    }
    assert_eq!(
        b1.requests(),
        before,
        "no new request reached the drained backend"
    );
    let (s, b, body) = slow.await.unwrap().unwrap();
    assert_eq!((s, b.as_str()), (200, "b1"), "{body}");
    assert!(body.contains("slept 1500"));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_observed_share() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let spec = |with_b2: bool| {
        let extra = if with_b2 {
            format!(r#",{{"id":"b2","address":"{}","weight":100}}"#, b2.addr)
        } else {
            String::new()
        };
        routes(&format!(
            r#"[{{"name":"app","domains":["app.test"],"slowstart":"2s",
            "backends":[{{"id":"b1","address":"{}","weight":100}}{extra}]}}]"#,
            b1.addr
        ))
    };
    let mut cfg = config("[]");
    cfg.routes = spec(false);
    let d = start(cfg).await;
    let c = client();
    let t = RouteTable::build(&spec(true), Some(&d.tables.load_full())).unwrap();
    d.tables.publish(t);
    let t0 = Instant::now();
    // Share of b2 per 500 ms window over 3 s, at most 2,000 requests per window (bounded:
    // 12,000 requests; a window that has its 2,000 waits for the next). A total cap ended an
    // optimised build's loop after ~1.5 s, leaving the last windows empty.
    const PER_WINDOW: usize = 2_000;
    let mut windows = [[0usize; 2]; 6];
    loop {
        let el = t0.elapsed();
        if el >= Duration::from_secs(3) {
            break;
        }
        let w = ((el.as_millis() / 500) as usize).min(5);
        if windows[w][0] + windows[w][1] >= PER_WINDOW {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let (s, b, _) = fetch(&c, d.http_addr, "app.test", "/").await.unwrap();
        assert_eq!(s, 200);
        windows[w][(b == "b2") as usize] += 1;
    }
    let share: Vec<f64> = windows
        .iter()
        .map(|[a, b]| *b as f64 / (*a + *b).max(1) as f64)
        .collect();
    println!("b2 share per 500 ms window: {share:?}");
    assert!(windows.iter().all(|[a, b]| a + b >= 20), "{windows:?}");
    assert!(share[0] < 0.2, "starts low: {share:?}");
    assert!(
        share[0] < share[2] && share[2] < share[4],
        "ramps: {share:?}"
    );
    assert!(share[5] > 0.4, "reaches its full share: {share:?}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_hash_keeps_each_path_on_one_backend() {
    let bs = [
        TestBackend::start("b1").await,
        TestBackend::start("b2").await,
        TestBackend::start("b3").await,
    ];
    let spec = |n: usize| {
        let list: Vec<String> = bs[..n]
            .iter()
            .map(|b| format!(r#"{{"id":"{}","address":"{}"}}"#, b.name, b.addr))
            .collect();
        routes(&format!(
            r#"[{{"name":"app","domains":["app.test"],"balancer":"uri_hash","backends":[{}]}}]"#,
            list.join(",")
        ))
    };
    let mut cfg = config("[]");
    cfg.routes = spec(3);
    let d = start(cfg).await;
    let c = client();
    let mut owner = Vec::new();
    for p in 0..60 {
        let path = format!("/item/{p}");
        let (_, first, _) = fetch(&c, d.http_addr, "app.test", &path).await.unwrap();
        for q in 0..4 {
            // The query is not part of the default key.
            let (_, b, _) = fetch(&c, d.http_addr, "app.test", &format!("{path}?v={q}"))
                .await
                .unwrap();
            assert_eq!(b, first, "{path}");
        }
        owner.push(first);
    }
    for b in &bs {
        assert!(owner.contains(&b.name), "{} owns no path", b.name);
    }
    // Remove b3: paths owned by b1/b2 stay where they were.
    let t = RouteTable::build(&spec(2), Some(&d.tables.load_full())).unwrap();
    d.tables.publish(t);
    for (p, o) in owner.iter().enumerate() {
        let (_, b, _) = fetch(&c, d.http_addr, "app.test", &format!("/item/{p}"))
            .await
            .unwrap();
        if o != "b3" {
            assert_eq!(&b, o, "/item/{p} moved although its backend stayed");
        } else {
            assert_ne!(b, "b3");
        }
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_pins_still_reach_a_draining_backend_but_not_maint() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let spec = |state: &str| {
        routes(&format!(
            r#"[{{"name":"app","domains":["app.test"],"balancer":{{"kind":"sticky_cookie","cookie":"PIN"}},
            "backends":[{{"id":"b1","address":"{}","state":"{state}"}},{{"id":"b2","address":"{}"}}]}}]"#,
            b1.addr, b2.addr
        ))
    };
    let mut cfg = config("[]");
    cfg.routes = spec("ready");
    let d = start(cfg).await;
    let c = client();
    let token = d.tables.load().route("app").unwrap().backends[0]
        .token
        .clone();
    let req = |cookie: Option<&str>| {
        let mut r = Request::get(format!("http://{}/", d.http_addr)).header("host", "app.test");
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.body(empty()).unwrap()
    };
    let pin = format!("PIN={token}");

    let t = RouteTable::build(&spec("drain"), Some(&d.tables.load_full())).unwrap();
    d.tables.publish(t);
    for _ in 0..10 {
        let (parts, _) = send(&c, req(Some(&pin))).await.unwrap();
        assert_eq!(
            parts.headers["x-backend"], "b1",
            "pinned requests enter a draining backend"
        );
        assert!(set_cookie(&parts).is_none());
        let (parts, _) = send(&c, req(None)).await.unwrap();
        assert_eq!(parts.headers["x-backend"], "b2", "unpinned ones avoid it");
        assert!(set_cookie(&parts).unwrap().starts_with("PIN="));
    }
    let t = RouteTable::build(&spec("maint"), Some(&d.tables.load_full())).unwrap();
    d.tables.publish(t);
    let (parts, _) = send(&c, req(Some(&pin))).await.unwrap();
    assert_eq!(
        parts.headers["x-backend"], "b2",
        "maint takes no traffic at all"
    );
    assert!(set_cookie(&parts).is_some(), "and the pin is rewritten");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_backend() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let d = start(config(&format!(
        r#"[{{"name":"app","domains":["app.test"],"balancer":"least_connections",
        "backends":[{{"id":"b1","address":"{}"}},{{"id":"b2","address":"{}"}}]}}]"#,
        b1.addr, b2.addr
    )))
    .await;
    let c = client();
    // Three slow requests: they spread 2/1 or so; wait until all three are in flight.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let (c, addr) = (c.clone(), d.http_addr);
        slow.push(tokio::spawn(async move {
            fetch(&c, addr, "app.test", "/sleep?ms=1500").await
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let busy = |b: &TestBackend| b.state.inflight.load(Ordering::SeqCst);
    assert!(eventually(Duration::from_secs(2), || busy(&b1) + busy(&b2) == 3).await);
    let (more, less) = if busy(&b1) > busy(&b2) {
        ("b1", "b2")
    } else {
        ("b2", "b1")
    };
    assert_ne!(busy(&b1), busy(&b2), "3 requests cannot split evenly");
    // Quick requests go to the less loaded backend while the slow ones run.
    for _ in 0..10 {
        let (s, b, _) = fetch(&c, d.http_addr, "app.test", "/").await.unwrap();
        assert_eq!((s, b.as_str()), (200, less), "{more} has more in flight");
    }
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().0, 200);
    }
    d.shutdown().await;
}

/// Issue 18 item 1: the client's body errors are the client's. 1,000 requests whose body is
/// malformed (`0x5` chunk size) or cut off halfway reach the backend through the hyper path,
/// get a 400 (or nothing, for a client that left), count no failure against the backend and
/// leave it UP (active checks are slow here, so only passive health could mark it down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_body_errors_never_mark_a_backend_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = TestBackend::start("b1").await;
    let d = start(config(&format!(
        r#"[{{"name":"app","domains":["app.test"],"backends":[{{"id":"b1","address":"{}"}}],
            "health_check":{{"path":"/health","interval":"60s","timeout":"1s","fall":3,"rise":1}}}}]"#,
        b.addr
    )))
    .await;
    let addr = d.http_addr;
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..125 {
                    let malformed = (w + i) % 2 == 0;
                    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                    if malformed {
                        s.write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n").await.unwrap();
                    } else {
                        // Half the declared body, then the client stops sending.
                        s.write_all(b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789").await.unwrap();
                        let _ = s.shutdown().await;
                    }
                    let mut out = Vec::new();
                    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
                    let text = String::from_utf8_lossy(&out).into_owned();
                    statuses.push((malformed, text.get(..12).unwrap_or(&text).to_string()));
                }
                statuses
            })
        })
        .collect();
    let mut results = Vec::new();
    for w in workers {
        results.extend(w.await.unwrap());
    }
    assert_eq!(results.len(), 1000);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded in time"
    );
    for (malformed, head) in &results {
        if *malformed {
            assert_eq!(head, "HTTP/1.1 400", "a malformed client body is a 400");
        } else {
            assert!(
                head.is_empty() || head == "HTTP/1.1 400",
                "aborted upload: {head:?}"
            );
        }
    }
    assert!(
        is_up(&d, "app", "b1"),
        "client body errors marked the backend down"
    );
    let route = d.tables.load().route("app").unwrap().clone();
    assert_eq!(
        route.backends[0].stats.failures.load(Ordering::Relaxed),
        0,
        "no failure counted against the backend"
    );
    let (status, backend, _) = fetch(&client(), addr, "app.test", "/").await.unwrap();
    assert_eq!((status, backend.as_str()), (200, "b1"));
    d.shutdown().await;
}

/// Item 1, the other side: a backend that really fails (passes its health check, but drops
/// every request's connection without an answer) is still marked down by passive health
/// after `fall` requests, through both upstream paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_still_mark_it_down() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Health probes whose connection the prober has closed (it closes once it has read the
    // answer, just before it applies the result).
    let probes_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = probes_done.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let done = done.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if buf.starts_with(b"GET /health ") {
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = s.shutdown().await;
                    while matches!(s.read(&mut chunk).await, Ok(n) if n > 0) {}
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                // Anything else: closed without an answer.
            });
        }
    });
    let d = start(config(&format!(
        r#"[{{"name":"app","domains":["app.test"],"backends":[{{"id":"b1","address":"{addr}"}}],
            "health_check":{{"path":"/health","interval":"60s","timeout":"1s","fall":3,"rise":1}}}}]"#
    )))
    .await;
    assert!(eventually(Duration::from_secs(5), || is_up(&d, "app", "b1")).await);
    // The first active check runs at start; its success resets a failure streak, so the three
    // failures below must come after it (the next check is 60 s away). Its result is applied
    // right after the prober closes the connection; that step is not observable from outside,
    // hence the short settle. Without waiting, this test failed 2 runs in 30 here.
    assert!(
        eventually(Duration::from_secs(5), || probes_done
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1)
        .await,
        "the first health probe finished"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = client();
    let (s, _, _) = fetch(&c, d.http_addr, "app.test", "/x").await.unwrap();
    assert_eq!(s, 502, "direct path");
    for _ in 0..2 {
        let req = Request::post(format!("http://{}/upload", d.http_addr))
            .header("host", "app.test")
            .body(full("abc"))
            .unwrap();
        let (parts, _) = send(&c, req).await.unwrap();
        assert_eq!(parts.status.as_u16(), 502, "hyper path");
    }
    assert!(
        !is_up(&d, "app", "b1"),
        "three upstream failures mark it down"
    );
    d.shutdown().await;
    server.abort();
}
