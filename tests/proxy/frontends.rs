//! HTTP frontends end to end with real sockets: a `mode: http` frontend's ordered rules choose
//! the pool (first match wins) and apply their actions (redirect, header changes, prefix strip,
//! the pool's Host override); keep-alive modes as seen on the wire from both sides; a frontend
//! put through the API serves at once, survives `berthd upgrade`, and is gone after DELETE
//! while an in-flight request finishes; bad input is a 422 naming the field and leaves the
//! running frontend as it was. Members are `support::proxy::TestBackend`s, run by
//! `BlockingBackend` (`/headers` echoes the request head they received).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use super::tcp::{kill_all, pool_yaml as pool, InProc, Proc};
use crate::support::proxy::{BlockingBackend, TestBackend};

/// One response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, Vec<String>>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// Writes one HTTP/1.1 request on `c` and reads its response (Content-Length framed, as both
/// the test backends' and the proxy's own answers are).
fn exchange(
    c: &mut TcpStream,
    method: &str,
    path: &str,
    host: &str,
    extra: &[(&str, &str)],
) -> Resp {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).unwrap();
    read_response(c).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn read_response(c: &mut TcpStream) -> std::io::Result<Resp> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed in the head",
            ));
        }
        buf.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("")[9..12].parse().unwrap_or(0);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        if let Some((k, v)) = l.split_once(':') {
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.first())
        .and_then(|v| v.parse().ok())
        .expect("a content-length framed response");
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

/// One request on a new connection.
fn get(fe: SocketAddr, method: &str, path: &str, host: &str, extra: &[(&str, &str)]) -> Resp {
    let mut c = TcpStream::connect_timeout(&fe, Duration::from_secs(5)).unwrap();
    exchange(&mut c, method, path, host, extra)
}

/// Whether the peer closed `c` (EOF within a second).
fn closed_by_peer(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut b = [0u8; 1];
    matches!(c.read(&mut b), Ok(0))
        || matches!(c.read(&mut b), Err(e) if e.kind() == ErrorKind::ConnectionReset)
}

#[test]
fn rules_choose_the_pool_in_order_and_apply_their_actions() {
    let a = BlockingBackend::start("a");
    let b = BlockingBackend::start("b");
    let c = BlockingBackend::start("c");
    let d = InProc::start(&format!(
        "pools:\n{}{}{}frontends:\n  - name: web\n    mode: http\n    bind: 127.0.0.1:0\n    pool: pa\n    rules:\n{}",
        pool("pa", &[&a], "    host: internal.a\n"),
        pool("pb", &[&b], ""),
        pool("pc", &[&c], ""),
        [
            "      - {path: {prefix: /old}, redirect: {status: 301, location: 'https://{host}/new{uri}'}}",
            "      - path: {prefix: /api}\n        strip_prefix: /api\n        pool: pb\n        request_headers: {set: {x-rule: api}, remove: [x-secret]}\n        response_headers: {add: {x-rule-resp: one}, set: {x-backend: hidden}}",
            "      - {header: {name: x-canary, equals: '1'}, pool: pc}",
            "      - {method: [DELETE, PATCH], pool: pc}",
            "      - {client: [10.0.0.0/8], pool: pb}",
            "      - {path: {regex: '^/img/.*\\.png$'}, pool: pc}",
            "      - {host: '*.b.test', pool: pb}",
            "      - {url: {regex: 'debug=1'}, pool: pb}",
            "      - {path: {prefix: /api/v2}, pool: pc}",
        ]
        .join("\n")
            + "\n"
    ));
    let fe = d.api.frontend_addr("web");
    // Redirect with the location template.
    let r = get(fe, "GET", "/old/x?q=1", "shop.test", &[]);
    assert_eq!(r.status, 301, "{r:?}");
    assert_eq!(
        r.header("location"),
        Some("https://shop.test/new/old/x?q=1")
    );
    // Prefix strip, request headers set/removed, response headers added/replaced.
    let r = get(
        fe,
        "GET",
        "/api/headers",
        "shop.test",
        &[("x-secret", "s3")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with("GET /headers "), "{}", r.body);
    assert!(r.body.contains("x-rule: api"), "{}", r.body);
    assert!(!r.body.contains("x-secret"), "{}", r.body);
    assert_eq!(r.header("x-rule-resp"), Some("one"));
    assert_eq!(r.header("x-backend"), Some("hidden"));
    // First match wins: /api/v2 is caught by the /api rule, never by the later one.
    let r = get(fe, "GET", "/api/v2/x", "shop.test", &[]);
    assert_eq!(r.body, "b /v2/x\n");
    // Header, method, regex path, wildcard host, URL.
    assert_eq!(
        get(fe, "GET", "/", "shop.test", &[("x-canary", "1")]).header("x-backend"),
        Some("c")
    );
    assert_eq!(
        get(fe, "GET", "/", "shop.test", &[("x-canary", "2")]).header("x-backend"),
        Some("a")
    );
    assert_eq!(
        get(fe, "DELETE", "/", "shop.test", &[]).header("x-backend"),
        Some("c")
    );
    assert_eq!(
        get(fe, "GET", "/img/a.png", "shop.test", &[]).header("x-backend"),
        Some("c")
    );
    assert_eq!(
        get(fe, "GET", "/img/a.jpg", "shop.test", &[]).header("x-backend"),
        Some("a")
    );
    assert_eq!(
        get(fe, "GET", "/", "www.b.test", &[]).header("x-backend"),
        Some("b")
    );
    assert_eq!(
        get(fe, "GET", "/", "b.test", &[]).header("x-backend"),
        Some("a")
    );
    assert_eq!(
        get(fe, "GET", "/p?debug=1", "shop.test", &[]).header("x-backend"),
        Some("b")
    );
    // The client CIDR rule (10/8) does not match loopback; the default pool's Host override.
    let r = get(fe, "GET", "/headers", "shop.test", &[]);
    assert_eq!(r.header("x-backend"), Some("a"));
    assert!(r.body.contains("host: internal.a"), "{}", r.body);
    assert!(r.body.contains("x-forwarded-host: shop.test"), "{}", r.body);
    // The default listener knows nothing of frontend pools.
}

#[test]
fn keepalive_modes_as_seen_by_client_and_member() {
    let ka = BlockingBackend::start("ka");
    let cl = BlockingBackend::start("cl");
    let sc = BlockingBackend::start("sc");
    let d = InProc::start(&format!(
        "pools:\n{}{}{}frontends:\n  - {{name: ka, mode: http, bind: 127.0.0.1:0, pool: ka}}\n  - {{name: cl, mode: http, bind: 127.0.0.1:0, pool: cl, keepalive: close}}\n  - {{name: sc, mode: http, bind: 127.0.0.1:0, pool: sc, keepalive: server-close}}\n",
        pool("ka", &[&ka], ""),
        pool("cl", &[&cl], ""),
        pool("sc", &[&sc], ""),
    ));
    // default: one client connection, three requests, one member connection.
    let mut c = TcpStream::connect(d.api.frontend_addr("ka")).unwrap();
    for _ in 0..3 {
        let r = exchange(&mut c, "GET", "/headers", "x.test", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "{r:?}");
        assert!(!r.body.contains("connection: close"), "{}", r.body);
    }
    assert_eq!(ka.accepted(), 1, "default keeps the member connection");
    // Pool members are counted like route backends in /v1/stats.
    let (_, stats) = d.api.call("GET", "/v1/stats", None);
    let ka_stats = stats["http_pools"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "ka"))
        .unwrap_or_else(|| panic!("{stats}"));
    assert_eq!(ka_stats["source"], "config", "{stats}");
    assert_eq!(ka_stats["backends"][0]["requests"], 3, "{stats}");
    assert_eq!(ka_stats["backends"][0]["responses"]["2xx"], 3, "{stats}");
    // ... and in /metrics, per pool member, by the routes' own renderer.
    let metrics = d.api.raw("/metrics");
    for want in [
        "berth_pool_member_requests_total{pool=\"ka\",member=\"ka\"} 3",
        "berth_pool_member_responses_total{pool=\"ka\",member=\"ka\",code=\"2xx\"} 3",
        "berth_pool_member_up{pool=\"ka\",member=\"ka\"} 1",
        "berth_pool_member_latency_seconds_count{pool=\"ka\",member=\"ka\"} 3",
    ] {
        assert!(metrics.contains(want), "missing {want}\n{metrics}");
    }
    // close: the answer says so and the proxy closes; the member is asked to close too.
    let fe = d.api.frontend_addr("cl");
    for i in 1..=3 {
        let mut c = TcpStream::connect(fe).unwrap();
        let r = exchange(&mut c, "GET", "/headers", "x.test", &[]);
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
        assert!(r.body.contains("connection: close"), "{}", r.body);
        assert!(closed_by_peer(&mut c), "the proxy closes after one request");
        assert_eq!(cl.accepted(), i, "a new member connection per request");
    }
    // server-close: the client keeps its connection; each request is a new member connection.
    let mut c = TcpStream::connect(d.api.frontend_addr("sc")).unwrap();
    for i in 1..=3 {
        let r = exchange(&mut c, "GET", "/headers", "x.test", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "{r:?}");
        assert!(r.body.contains("connection: close"), "{}", r.body);
        assert_eq!(sc.accepted(), i, "a new member connection per request");
    }
}

#[test]
fn api_frontend_serves_at_once_refuses_bad_input_and_delete_drains() {
    let (a, b) = (BlockingBackend::start("a"), BlockingBackend::start("b"));
    // A berthd process of its own (see tcp::api_frontend_binds_at_once_and_delete_closes_the_
    // port_and_drains): a child spawned by another test would hold this process's listeners.
    let d = Proc::start_draining("1s", "");
    for (name, m) in [("pa", &a), ("pb", &b)] {
        let (s, v) = d.api.call(
            "PUT",
            &format!("/v1/pools/{name}"),
            Some(json!({"members": [{"id": m.name, "address": m.addr.to_string()}]})),
        );
        assert_eq!(s, 201, "{v}");
    }
    let good = json!({"mode": "http", "bind": "127.0.0.1:0", "pool": "pa",
        "rules": [{"path": {"prefix": "/b"}, "pool": "pb"}]});
    let (s, v) = d.api.call("PUT", "/v1/frontends/web", Some(good.clone()));
    assert_eq!(s, 201, "{v}");
    let fe: SocketAddr = v["listening"][0].as_str().unwrap().parse().unwrap();
    assert_eq!(
        get(fe, "GET", "/b", "x.test", &[]).header("x-backend"),
        Some("b")
    );
    assert_eq!(
        get(fe, "GET", "/", "x.test", &[]).header("x-backend"),
        Some("a")
    );
    let before = d.api.call("GET", "/v1/frontends/web", None).1;

    // Bad input: 422 naming the field; nothing changes.
    let with_rules = |rules: serde_json::Value| json!({"mode": "http", "bind": fe.to_string(), "pool": "pa", "rules": rules});
    let bad: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "/v1/frontends/web",
            with_rules(
                json!([{"pool": "pb"}, {"pool": "pb"}, {"path": {"regex": "(open"}, "pool": "pb"}]),
            ),
            "rules[2].path.regex",
        ),
        (
            "/v1/frontends/web",
            with_rules(json!([{"header": {"name": "x", "present": true}, "pool": "nope"}])),
            "rules[0].pool",
        ),
        (
            "/v1/frontends/web",
            with_rules(json!([{"redirect": {"status": 200, "location": "/"}}])),
            "rules[0].redirect.status",
        ),
        (
            "/v1/frontends/other",
            json!({"mode": "http", "bind": fe.to_string(), "pool": "pa"}),
            "bind[0]",
        ),
        (
            "/v1/frontends/web",
            json!({"mode": "tcp", "bind": fe.to_string(), "pool": "pa"}),
            "mode",
        ),
        (
            "/v1/frontends/tcp1",
            json!({"mode": "tcp", "bind": "127.0.0.1:0", "pool": "pa", "rules": [{"path": {"prefix": "/"}, "pool": "pb"}]}),
            "rules[0].path",
        ),
        (
            "/v1/frontends/tcp2",
            json!({"bind": "127.0.0.1:0", "pool": "pa", "keepalive": "close"}),
            "keepalive",
        ),
        (
            "/v1/pools/pa",
            json!({"members": [{"address": "not-an-address"}]}),
            "members[0].address",
        ),
        (
            "/v1/pools/pa",
            json!({"host": "a b", "members": []}),
            "host",
        ),
    ];
    for (path, body, field) in bad {
        let (s, v) = d.api.call("PUT", path, Some(body));
        assert_eq!(s, 422, "{path}: {v}");
        assert_eq!(v["error"]["field"], field, "{path}: {v}");
    }
    assert_eq!(d.api.call("GET", "/v1/frontends/web", None).1, before);
    for p in [
        "/v1/frontends/other",
        "/v1/frontends/tcp1",
        "/v1/frontends/tcp2",
    ] {
        assert_eq!(d.api.call("GET", p, None).0, 404, "{p}");
    }
    assert_eq!(
        get(fe, "GET", "/b", "x.test", &[]).header("x-backend"),
        Some("b")
    );
    assert_eq!(
        get(fe, "GET", "/", "x.test", &[]).header("x-backend"),
        Some("a")
    );

    // A rule change applies to a connection that is already open.
    let mut open = TcpStream::connect(fe).unwrap();
    assert_eq!(
        exchange(&mut open, "GET", "/", "x.test", &[]).header("x-backend"),
        Some("a")
    );
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/web",
        Some(json!({"mode": "http", "bind": fe.to_string(), "pool": "pb"})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        exchange(&mut open, "GET", "/", "x.test", &[]).header("x-backend"),
        Some("b")
    );

    // DELETE while a request is in flight: the port closes at once, the request finishes.
    let slow = std::thread::spawn(move || {
        let t = Instant::now();
        let r = get(fe, "GET", "/sleep?ms=700", "x.test", &[]);
        (r, t.elapsed())
    });
    crate::support::wait_until_named(Duration::from_secs(5), "request in flight", || {
        b.state.inflight.load(std::sync::atomic::Ordering::SeqCst) == 1
    });
    let (s, _) = d.api.call("DELETE", "/v1/frontends/web", None);
    assert_eq!(s, 204);
    assert_eq!(
        TcpStream::connect(fe).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    let (r, took) = slow.join().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "b slept 700\n");
    assert!(took >= Duration::from_millis(700));
    assert_eq!(d.api.call("GET", "/v1/frontends/web", None).0, 404);
}

#[test]
fn api_frontend_survives_an_upgrade_and_delete_closes_it() {
    let a = BlockingBackend::start("a");
    let d = Proc::start("");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/pools/p",
        Some(
            json!({"members": [{"id": "a", "address": a.addr.to_string()}], "host": "inner.test"}),
        ),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/web",
        Some(json!({"mode": "http", "bind": "127.0.0.1:0", "pool": "p", "rules": [{"path": {"prefix": "/x"}, "strip_prefix": "/x", "pool": "p"}]})),
    );
    assert_eq!(s, 201, "{v}");
    let fe: SocketAddr = v["listening"][0].as_str().unwrap().parse().unwrap();
    let r = get(fe, "GET", "/x/headers", "outer.test", &[]);
    assert!(
        r.body.starts_with("GET /headers ") && r.body.contains("host: inner.test"),
        "{}",
        r.body
    );
    // A keep-alive connection open across the upgrade.
    let mut open = TcpStream::connect(fe).unwrap();
    assert_eq!(
        exchange(&mut open, "GET", "/", "outer.test", &[]).status,
        200
    );
    let old = d.pid().unwrap();
    let new = d.upgrade();
    assert_ne!(old, new);
    assert_eq!(d.api.frontend_addr("web"), fe, "the socket was handed over");
    for _ in 0..5 {
        let r = get(fe, "GET", "/x/headers", "outer.test", &[]);
        assert!(
            r.body.starts_with("GET /headers ") && r.body.contains("host: inner.test"),
            "{}",
            r.body
        );
    }
    // The open connection moved to the new process with the upgrade (the new process named
    // the frontend as one it takes, issue 23): answered keep-alive, and it goes on serving.
    for _ in 0..2 {
        let r = exchange(&mut open, "GET", "/", "outer.test", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None, "{r:?}");
    }
    let (s, _) = d.api.call("DELETE", "/v1/frontends/web", None);
    assert_eq!(s, 204);
    assert_eq!(
        TcpStream::connect(fe).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    d.upgrade();
    assert_eq!(d.api.call("GET", "/v1/frontends/web", None).0, 404);
    assert!(TcpStream::connect(fe).is_err());
    kill_all(&[old]);
}

#[test]
fn effective_config_passes_check_config_and_round_trips() {
    let a = BlockingBackend::start("a");
    let d = InProc::start(&format!(
        "tls:\n  enabled: true\n  listen: 127.0.0.1:0\nroutes:\n  - domains: [static.test]\n    backends: [{{address: '{}'}}]\npools:\n{}frontends:\n  - {{name: cfg-http, mode: http, bind: 127.0.0.1:0, pool: pa, keepalive: server-close, rules: [{{path: {{regex: '^/x'}}, pool: pa, strip_prefix: /x}}]}}\n",
        a.addr,
        pool("pa", &[&a], "    host: inner.test\n"),
    ));
    // Plus some made through the API.
    let (s, v) = d.api.call(
        "PUT",
        "/v1/routes/api-made",
        Some(json!({"domains": ["api.test"], "backends": [{"address": a.addr.to_string()}]})),
    );
    assert!(s == 200 || s == 201, "{v}");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/pools/pb",
        Some(json!({"balance": "source", "members": [{"id": "m", "address": a.addr.to_string(), "weight": 7}]})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/api-tcp",
        Some(json!({"bind": "127.0.0.1:0", "pool": "pb", "rules": [{"client": ["10.0.0.0/8"], "pool": "pa"}]})),
    );
    assert_eq!(s, 201, "{v}");
    let raw = d.api.raw("/v1/config");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/yaml"),
        "{head}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("effective.yaml");
    std::fs::write(&file, body).unwrap();
    let out = std::process::Command::new(crate::support::BERTHD)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = berth::config::load(&file, true).unwrap();
    let running = d.running.as_ref().unwrap();
    let routes: Vec<_> = running
        .registry
        .routes()
        .iter()
        .map(|r| r.spec.clone())
        .collect();
    let (frontends, pools) =
        d.rt.block_on(async { (running.tcp.frontends().await, running.tcp.pools().await) });
    assert_eq!(parsed.routes, routes);
    assert_eq!(parsed.routes.len(), 2);
    // The frontends as they run: each port-0 bind names the port it listens on.
    assert!(!body.contains(":0\n") && !body.contains(":0'"), "{body}");
    let running_specs: Vec<_> = frontends
        .into_iter()
        .map(|f| {
            assert_eq!(f.listening.len(), 1);
            berth::model::frontend::FrontendSpec {
                bind: berth::model::frontend::Binds::One(f.listening[0].to_string()),
                ..f.spec
            }
        })
        .collect();
    assert_eq!(parsed.frontends, running_specs);
    assert_eq!(parsed.frontends.len(), 2);
    assert_eq!(
        parsed.pools,
        pools.into_iter().map(|p| p.spec).collect::<Vec<_>>()
    );
    assert_eq!(parsed.pools.len(), 2);
    assert_eq!(parsed.http.listen, running.http_addr);
    assert_eq!(parsed.api.listen, running.api_addr);
    // The HTTPS listener, at its bound port.
    assert!(parsed.tls.is_enabled());
    assert_eq!(Some(parsed.tls.listen), running.https_addr);
    assert_ne!(parsed.tls.listen.port(), 0);
}

/// Frontend listeners bound on demand (what the daemon's inherited-or-bind source does when
/// nothing is inherited).
struct Bind;

impl berth::proxy::tcp::ListenerSource for Bind {
    fn listen(&self, _name: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    }
    fn released(&self, _name: &str) {}
}

/// A pool that follows an app (`app` + `version`): its members are the replicas of that
/// deployment as the deploy engine reports them (here the engine's feed is driven by the test:
/// the seam the daemon wires to `deploy::RoutePublisher::set_replicas`), a new replica joins
/// when the feed says so, and `set_version` switches to another deployment while a request on
/// an old member finishes.
#[test]
fn a_pool_that_follows_an_app_takes_its_version_and_switches_with_a_drain() {
    use berth::model::pool::{AppReplica, AppReplicas};
    use berth::model::route::ServerState;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (old1, new1, new2) = (
            TestBackend::start("old1").await,
            TestBackend::start("new1").await,
            TestBackend::start("new2").await,
        );
        let replica = |b: &TestBackend, dep: &str| AppReplica {
            id: b.name.clone(),
            deployment: dep.into(),
            address: b.addr.to_string(),
            state: ServerState::Ready,
        };
        let mut apps = AppReplicas::new();
        apps.insert(
            "shop".into(),
            vec![replica(&old1, "d1"), replica(&new1, "d2")],
        );
        let (feed, apps_rx) = tokio::sync::watch::channel(std::sync::Arc::new(apps.clone()));
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let settings = berth::proxy::Settings::from_config(&Default::default(), false);
        let tables = std::sync::Arc::new(berth::proxy::Tables::new(Default::default()));
        let http = std::sync::Arc::new(berth::proxy::Proxy::new(settings, tables));
        let tcp = berth::proxy::tcp::TcpProxy::new(
            std::sync::Arc::new(Bind),
            Vec::new(),
            Duration::from_secs(1),
            stop,
            http,
            apps_rx,
        );
        let pool: berth::model::pool::PoolSpec =
            serde_yaml::from_str("name: web\napp: shop\nversion: d1\n").unwrap();
        let fe: berth::model::frontend::FrontendSpec =
            serde_yaml::from_str("name: web\nmode: http\nbind: 127.0.0.1:0\npool: web\n").unwrap();
        tcp.load((vec![], vec![]), (vec![fe], vec![pool]))
            .await
            .unwrap();
        let addr = tcp.frontends().await[0].listening[0];
        let client = crate::support::proxy::client();
        let backend = |path: &'static str| {
            let client = client.clone();
            async move {
                crate::support::proxy::fetch(&client, addr, "shop.test", path)
                    .await
                    .unwrap()
                    .1
            }
        };
        for _ in 0..4 {
            assert_eq!(backend("/").await, "old1");
        }
        // A request in flight on the old version while the pool switches.
        let slow = {
            let client = client.clone();
            tokio::spawn(async move {
                crate::support::proxy::fetch(&client, addr, "shop.test", "/sleep?ms=600").await
            })
        };
        let t = Instant::now();
        while old1
            .state
            .inflight
            .load(std::sync::atomic::Ordering::SeqCst)
            != 1
        {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the slow request never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let spec = tcp
            .set_version(
                "web",
                "d2".into(),
                |_| Ok::<_, std::convert::Infallible>(()),
            )
            .await
            .unwrap();
        assert_eq!(spec.version.as_deref(), Some("d2"));
        for _ in 0..4 {
            assert_eq!(backend("/").await, "new1");
        }
        let (status, by, body) = slow.await.unwrap().unwrap();
        assert_eq!(
            (status, by.as_str(), body.as_str()),
            (200, "old1", "old1 slept 600\n")
        );
        // The engine reports a new replica of d2: it joins; one of d1 would not.
        apps.insert(
            "shop".into(),
            vec![
                replica(&old1, "d1"),
                replica(&new1, "d2"),
                replica(&new2, "d2"),
            ],
        );
        feed.send(std::sync::Arc::new(apps)).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let t = Instant::now();
        while seen.len() < 2 && t.elapsed() < Duration::from_secs(5) {
            seen.insert(backend("/").await);
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["new1", "new2"],
            "both replicas of d2, never old1"
        );
        // Bad input: a pool that follows no app has no version; an unknown pool is 404.
        let plain: berth::model::pool::PoolSpec = serde_yaml::from_str(&format!(
            "name: plain\nmembers:\n  - address: {}\n",
            old1.addr
        ))
        .unwrap();
        tcp.put_pool(plain, |_| Ok::<_, std::convert::Infallible>(()))
            .await
            .unwrap();
        match tcp
            .set_version("plain", "d2".into(), |_| {
                Ok::<_, std::convert::Infallible>(())
            })
            .await
        {
            Err(berth::proxy::tcp::ChangeError::Tcp(berth::proxy::tcp::TcpError::Invalid(e))) => {
                assert_eq!(e.field, "version")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            tcp.set_version("nope", "d2".into(), |_| Ok::<_, std::convert::Infallible>(
                ()
            ))
            .await,
            Err(berth::proxy::tcp::ChangeError::Tcp(
                berth::proxy::tcp::TcpError::NotFound { .. }
            ))
        ));
        assert!(backend("/").await.starts_with("new"));
    });
}

/// A pool's `http_check` runs on the routes' prober: a member whose check fails gets no
/// requests until it passes again.
#[test]
fn a_failing_http_check_takes_a_member_out_until_it_passes() {
    let (a, b) = (BlockingBackend::start("a"), BlockingBackend::start("b"));
    let d = InProc::start(&format!(
        "pools:\n{}frontends:\n  - {{name: web, mode: http, bind: 127.0.0.1:0, pool: p}}\n",
        pool(
            "p",
            &[&a, &b],
            "    http_check: {path: /health, interval: 50ms, timeout: 1s, fall: 1, rise: 1}\n"
        ),
    ));
    let fe = d.api.frontend_addr("web");
    let spread = |n: usize| {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let r = get(fe, "GET", "/", "x.test", &[]);
            *seen
                .entry(r.header("x-backend").unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
        seen
    };
    let both = spread(10);
    assert_eq!(
        (both.get("a"), both.get("b")),
        (Some(&5), Some(&5)),
        "{both:?}"
    );
    crate::support::wait_until_named(Duration::from_secs(5), "checks ran", || {
        a.state
            .health_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    });
    a.state
        .unhealthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    crate::support::wait_until_named(Duration::from_secs(5), "a marked down", || {
        !spread(4).contains_key("a")
    });
    assert_eq!(spread(10).get("b"), Some(&10));
    a.state
        .unhealthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    crate::support::wait_until_named(Duration::from_secs(5), "a back", || {
        spread(4).contains_key("a")
    });
}

/// One table, one prober, one stats model: a pool's TCP `health_check` feeds the one health
/// cell of each member, so an HTTP frontend on the pool stops sending to a member whose
/// port is closed (before, only TCP frontends saw TCP checks, and HTTP requests went on
/// hitting the dead member), and `/v1/stats` shows the same member down in `http_pools` and
/// in `tcp.pools`, with the HTTP requests counted once for both.
#[test]
fn a_pools_tcp_check_and_counters_are_shared_by_http_and_tcp_frontends() {
    let a = BlockingBackend::start("a");
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let d = InProc::start(&format!(
        "pools:\n  - name: p\n    health_check: {{interval: 100ms, timeout: 500ms, fall: 1, rise: 1}}\n    members:\n      - {{id: a, address: '{}'}}\n      - {{id: dead, address: '{dead}'}}\nfrontends:\n  - {{name: web, mode: http, bind: 127.0.0.1:0, pool: p}}\n  - {{name: raw, mode: tcp, bind: 127.0.0.1:0, pool: p}}\n",
        a.addr
    ));
    let health = |v: &serde_json::Value| {
        let http = v["http_pools"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"] == "p"))
            .and_then(|p| p["backends"].as_array())
            .and_then(|b| b.iter().find(|b| b["id"] == "dead"))
            .map(|b| b["health"].clone());
        (http, v["tcp"]["pools"]["p"]["dead"]["up"].clone())
    };
    crate::support::wait_until_named(Duration::from_secs(5), "dead member down", || {
        let (_, v) = d.api.call("GET", "/v1/stats", None);
        health(&v) == (Some(json!("down")), json!(false))
    });
    let fe = d.api.frontend_addr("web");
    for _ in 0..6 {
        let r = get(fe, "GET", "/", "x.test", &[]);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("a"));
    }
    // One member, one set of counters: the TCP view counts the HTTP requests too.
    let (_, v) = d.api.call("GET", "/v1/stats", None);
    let http_a = v["http_pools"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "p"))
        .and_then(|p| p["backends"].as_array())
        .and_then(|b| b.iter().find(|b| b["id"] == "a"))
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(http_a["requests"], 6, "{v}");
    assert_eq!(v["tcp"]["pools"]["p"]["a"]["connections_total"], 6, "{v}");
    assert_eq!(
        v["tcp"]["pools"]["p"]["dead"]["connections_total"], 0,
        "{v}"
    );
    // The TCP frontend skips the dead member as well.
    let raw = d.api.frontend_addr("raw");
    for _ in 0..3 {
        let mut c = TcpStream::connect(raw).unwrap();
        let r = exchange(&mut c, "GET", "/", "x.test", &[]);
        assert_eq!(r.header("x-backend"), Some("a"));
    }
}

/// A WebSocket through an HTTP frontend lives in its pool's table: it stays open past the drain
/// timeout while its member stays, and is cut once the member left the pool and the drain
/// timeout (1 s here) passed.
#[test]
fn a_websocket_through_a_frontend_follows_its_pool() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (a, b) = (BlockingBackend::start("a"), BlockingBackend::start("b"));
    let d = InProc::start("");
    let put_pool = |members: &[&BlockingBackend]| {
        let members: Vec<_> = members
            .iter()
            .map(|m| json!({"id": m.name, "address": m.addr.to_string()}))
            .collect();
        let (s, v) = d
            .api
            .call("PUT", "/v1/pools/p", Some(json!({ "members": members })));
        assert!(s == 200 || s == 201, "{v}");
    };
    put_pool(&[&a]);
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/web",
        Some(json!({"mode": "http", "bind": "127.0.0.1:0", "pool": "p"})),
    );
    assert_eq!(s, 201, "{v}");
    let fe = d.api.frontend_addr("web");
    let mut ws = d.rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(fe).await.unwrap();
        tokio_tungstenite::client_async("ws://app.test/ws", stream)
            .await
            .expect("websocket handshake through the frontend")
            .0
    });
    let mut echo = |msg: &str| {
        d.rt.block_on(async {
            ws.send(Message::text(msg)).await.ok()?;
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => Some(t.as_str().to_string()),
                _ => None,
            }
        })
    };
    assert_eq!(echo("one").as_deref(), Some("a: one"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        echo("two").as_deref(),
        Some("a: two"),
        "past the drain timeout, member kept"
    );
    put_pool(&[&b]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        echo("three"),
        None,
        "cut after the member left and the drain passed"
    );
}

/// With the real deploy engine: a pool that follows an app's deployment serves that
/// deployment's replica through an HTTP frontend, and `POST /v1/pools/{name}/version`
/// switches it to the next deployment's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn a_pool_follows_a_deployed_app_and_switches_version() {
    use crate::support::docker::{deploy_config, prepare, skip, Cleanup, IMG_V1, IMG_V2};
    if skip() {
        return;
    }
    prepare();
    let dir = tempfile::tempdir().unwrap();
    let app = format!("fe-{}", std::process::id());
    let network = format!("berth-t-{app}");
    let _cleanup = Cleanup {
        app: app.clone(),
        network: network.clone(),
    };
    let c = deploy_config(dir.path(), &network);
    let running = berth::daemon::start(c, None).await.expect("daemon starts");
    let (_, token) = running.registry.store().create_token("t").unwrap();
    let http = reqwest::Client::new();
    let api = running.api_addr;
    let call = |method: reqwest::Method, path: String, body: Option<serde_json::Value>| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let mut r = http
                .request(method, format!("http://{api}{path}"))
                .bearer_auth(&token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let resp = r.send().await.unwrap();
            let s = resp.status().as_u16();
            (
                s,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let deploy = |image: &'static str| {
        let call = &call;
        let app = app.clone();
        async move {
            let spec = json!({"image": image, "domains": [format!("{app}.test")], "replicas": 1,
                "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
                "drain_timeout": "1s", "deploy_timeout": "30s"});
            let (s, v) = call(
                reqwest::Method::POST,
                format!("/v1/apps/{app}/deploy"),
                Some(spec),
            )
            .await;
            assert_eq!(s, 202, "{v}");
            let id = v["id"].as_str().unwrap().to_string();
            let t = Instant::now();
            loop {
                let (_, d) =
                    call(reqwest::Method::GET, format!("/v1/deployments/{id}"), None).await;
                match d["state"].as_str() {
                    Some("succeeded") => break,
                    Some("running") | None => {}
                    other => panic!("deployment {id}: {other:?} {d}"),
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "deploy {id} did not finish"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            id
        }
    };
    let d1 = deploy(IMG_V1).await;
    let (s, v) = call(
        reqwest::Method::PUT,
        "/v1/pools/shop".into(),
        Some(json!({"app": app, "version": d1})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(
        reqwest::Method::PUT,
        "/v1/frontends/shop".into(),
        Some(json!({"mode": "http", "bind": "127.0.0.1:0", "pool": "shop"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let fe = v["listening"][0].as_str().unwrap().to_string();
    let body = || {
        let http = http.clone();
        let fe = fe.clone();
        async move {
            let r = http.get(format!("http://{fe}/")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(body().await, (200, "v1\n".to_string()));
    let d2 = deploy(IMG_V2).await;
    // d1's replica was replaced by the deploy: the pool following d1 has no member left.
    let t = Instant::now();
    while body().await.0 != 503 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "d1's replica still in the pool"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = call(
        reqwest::Method::POST,
        "/v1/pools/shop/version".into(),
        Some(json!({"version": d2})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["spec"]["version"], d2.as_str(), "{v}");
    assert_eq!(body().await, (200, "v2\n".to_string()));
    // Unknown pool → 404; a body without a version → 422 or 400.
    let (s, _) = call(
        reqwest::Method::POST,
        "/v1/pools/nope/version".into(),
        Some(json!({"version": d2})),
    )
    .await;
    assert_eq!(s, 404);
    // Its idle keep-alive connection would hold the drain for the whole timeout (30 s).
    drop(http);
    running.shutdown().await;
}

/// HTTP/2 (prior knowledge) clients on a frontend are routed by the same rules (`:authority`
/// is the host they see), several streams on one connection.
#[test]
fn h2c_requests_are_routed_by_the_rules() {
    let (a, b) = (BlockingBackend::start("a"), BlockingBackend::start("b"));
    let d = InProc::start(&format!(
        "pools:\n{}{}frontends:\n  - {{name: web, mode: http, bind: 127.0.0.1:0, pool: pa, rules: [{{host: b.test, pool: pb}}, {{path: {{prefix: /b}}, pool: pb}}]}}\n",
        pool("pa", &[&a], ""),
        pool("pb", &[&b], ""),
    ));
    let fe = d.api.frontend_addr("web");
    d.rt.block_on(async {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(fe).await.unwrap());
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .expect("h2c handshake with the frontend");
        tokio::spawn(conn);
        for (host, path, want) in [
            ("a.test", "/", "a"),
            ("b.test", "/", "b"),
            ("a.test", "/b/x", "b"),
            ("a.test", "/c", "a"),
        ] {
            let req = http::Request::builder()
                .uri(format!("http://{host}{path}"))
                .body(crate::support::proxy::empty())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let by = resp
                .headers()
                .get("x-backend")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(
                (resp.status().as_u16(), by.as_deref()),
                (200, Some(want)),
                "{host}{path}"
            );
        }
    });
    assert_eq!(
        a.accepted() + b.accepted(),
        2,
        "one pooled member connection each"
    );
}

/// The default listeners are the frontends `http` and `https`: listed read-only, without a
/// default pool, with the routes as their rules (exact host, longest prefix first; a redirect
/// alias as a 301 rule); a route put through the API is a rule at once; PUT/DELETE on them
/// answer 409 naming them; `GET /v1/config` shows them as a comment; and requests on the
/// listener are decided by those rules (no match → 404).
#[test]
fn the_default_listeners_are_frontends_whose_rules_are_the_routes() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = rt.block_on(TestBackend::start("a"));
    let b = rt.block_on(TestBackend::start("b"));
    let d = InProc::start(&format!(
        "tls:\n  enabled: true\n  listen: 127.0.0.1:0\nroutes:\n  - name: site\n    domains: [site.test]\n    aliases: [old.test]\n    backends: [{{address: '{}'}}]\n  - name: api\n    domains: [site.test]\n    path_prefix: /api\n    backends: [{{address: '{}'}}]\n",
        a.addr, b.addr
    ));
    let running = d.running.as_ref().unwrap();
    let (http_addr, https_addr) = (running.http_addr, running.https_addr.unwrap());
    let (s, v) = d.api.call("GET", "/v1/frontends", None);
    assert_eq!(s, 200, "{v}");
    let list = v["frontends"].as_array().unwrap();
    let names: Vec<&str> = list.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, ["http", "https"], "{v}");
    let http = &list[0];
    assert_eq!(http["read_only"], true);
    assert_eq!(http["spec"]["mode"], "http");
    assert_eq!(http["listening"], json!([http_addr.to_string()]));
    assert_eq!(list[1]["listening"], json!([https_addr.to_string()]));
    assert!(http["spec"].get("pool").is_none(), "{http}");
    assert_eq!(
        http["spec"]["rules"],
        json!([
            {"host": "site.test", "path": {"regex": "^/api(/|$)"}, "pool": "api"},
            {"host": "site.test", "pool": "site"},
            {"host": "old.test", "redirect": {"status": 301, "location": "{scheme}://site.test{uri}"}},
        ])
    );
    assert_eq!(list[1]["spec"]["rules"], http["spec"]["rules"]);
    let (s, one) = d.api.call("GET", "/v1/frontends/https", None);
    assert_eq!((s, &one), (200, &list[1]));

    // Read-only: 409 naming the frontend; nothing changes.
    let body = json!({"bind": "127.0.0.1:0", "mode": "http", "pool": "x"});
    let (s, v) = d.api.call("PUT", "/v1/frontends/http", Some(body));
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains("\\\"http\\\""), "{v}");
    let (s, v) = d.api.call("DELETE", "/v1/frontends/https", None);
    assert_eq!(s, 409, "{v}");
    assert!(v.to_string().contains("\\\"https\\\""), "{v}");

    // Requests on the listener, decided by those rules.
    let r = get(http_addr, "GET", "/api/users", "site.test", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("b")));
    let r = get(http_addr, "GET", "/apix", "site.test", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("a")));
    let r = get(http_addr, "GET", "/p?q=1", "old.test", &[]);
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("http://site.test/p?q=1"));
    let r = get(http_addr, "GET", "/", "nothing.test", &[]);
    assert_eq!(r.status, 404);

    // A route put through the API is a rule of both at once (a wildcard: one label deep).
    let (s, v) = d.api.call(
        "PUT",
        "/v1/routes/wild",
        Some(json!({"domains": ["*.site.test"], "backends": [{"address": b.addr.to_string()}]})),
    );
    assert!(s == 200 || s == 201, "{v}");
    let (_, v) = d.api.call("GET", "/v1/frontends/http", None);
    let rules = v["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4, "{v}");
    assert_eq!(rules[3]["host"], "*.site.test");
    assert_eq!(rules[3]["pool"], "wild");
    assert!(rules[3]["url"]["regex"].is_string(), "{v}");
    let r = get(http_addr, "GET", "/", "x.site.test", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("b")));
    let r = get(http_addr, "GET", "/", "y.x.site.test", &[]);
    assert_eq!(r.status, 404);

    // GET /v1/config lists them as a comment (the file declares them through http, tls, routes).
    let raw = d.api.raw("/v1/config");
    assert!(
        raw.contains(&format!("#   http: mode http, bind {http_addr}")),
        "{raw}"
    );
    assert!(
        raw.contains(&format!("#   https: mode http, bind {https_addr}")),
        "{raw}"
    );
    assert!(raw.contains(r#"#     - {"host":"*.site.test","#), "{raw}");
    drop(d);
    drop(rt);
}
