//! TCP mode end to end with real sockets: frontends and pools through the config file and the
//! API, balancing (source hash), drain/maint, connection limits, health checks, PROXY v2,
//! stats, bad input, and listeners handed over across `berthd upgrade` (long-lived streams and
//! a new-connection load). Members are loopback echo servers started by the test.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::berthd::BerthdProcess;
use crate::support::BERTHD;

// ---------------------------------------------------------------- members

/// A loopback member: greets each connection with `ID\n` (unless silent), then echoes. With
/// `proxy_v2`, it first reads a PROXY v2 header and records it.
struct Member {
    addr: SocketAddr,
    id: String,
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    headers: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Member {
    fn start(id: &str, greet: bool, proxy_v2: bool) -> Member {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let (s, o, h, name) = (stop.clone(), open.clone(), headers.clone(), id.to_string());
        thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (o, h, name, s) = (o.clone(), h.clone(), name.clone(), s.clone());
                        o.fetch_add(1, Ordering::Relaxed);
                        thread::spawn(move || {
                            let _ = serve_member(c, &name, greet, proxy_v2, &h, &s);
                            o.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        });
        Member {
            addr,
            id: id.to_string(),
            stop,
            open,
            headers,
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_member(
    mut c: TcpStream,
    id: &str,
    greet: bool,
    proxy_v2: bool,
    headers: &Mutex<Vec<Vec<u8>>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    c.set_nodelay(true)?;
    if proxy_v2 {
        let mut h = [0u8; 16];
        c.read_exact(&mut h)?;
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        let mut rest = vec![0u8; len];
        c.read_exact(&mut rest)?;
        let mut all = h.to_vec();
        all.extend(rest);
        headers.lock().unwrap().push(all);
    }
    if greet {
        c.write_all(format!("{id}\n").as_bytes())?;
    }
    c.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut buf = [0u8; 65536];
    loop {
        match c.read(&mut buf) {
            Ok(0) => {
                let _ = c.shutdown(Shutdown::Write);
                return Ok(());
            }
            Ok(n) => c.write_all(&buf[..n])?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Connects (optionally from `source`), reads the member's greeting line.
fn hello(frontend: SocketAddr, source: Option<IpAddr>) -> std::io::Result<(TcpStream, String)> {
    let c = match source {
        Some(ip) => {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::new(ip, 0).into())?;
            s.connect_timeout(&frontend.into(), Duration::from_secs(5))?;
            TcpStream::from(s)
        }
        None => TcpStream::connect_timeout(&frontend, Duration::from_secs(5))?,
    };
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(c.try_clone()?).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "closed before greeting",
        ));
    }
    Ok((c, line.trim().to_string()))
}

// ---------------------------------------------------------------- API client

pub(crate) struct Api {
    pub(crate) addr: SocketAddr,
    pub(crate) token: String,
}

impl Api {
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        // No retry: a connection that reaches the old process's API as it drains is still
        // answered (with `Connection: close`), never dropped (issue 19).
        let r = (|| -> std::io::Result<Vec<u8>> {
            let mut c = TcpStream::connect(self.addr)?;
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            write!(
                c,
                "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                self.addr,
                self.token,
                body.len()
            )?;
            let mut raw = Vec::new();
            c.read_to_end(&mut raw)?;
            if raw.len() < 12 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "no response"));
            }
            Ok(raw)
        })();
        let raw = r.unwrap_or_else(|e| panic!("API {method} {path}: {e}"));
        let text = String::from_utf8_lossy(&raw).to_string();
        let status: u16 = text[9..12].parse().unwrap();
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        // Bodies here are small and not chunked, or chunked in one piece.
        let body = if text
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body.split_once("\r\n")
                .map(|x| x.1)
                .and_then(|b| b.rsplit_once("\r\n0\r\n"))
                .map(|x| x.0)
                .unwrap_or("")
                .to_string()
        } else {
            body.to_string()
        };
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub(crate) fn raw(&self, path: &str) -> String {
        let mut c = TcpStream::connect(self.addr).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\nconnection: close\r\n\r\n",
            self.addr, self.token
        )
        .unwrap();
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    }

    pub(crate) fn frontend_addr(&self, name: &str) -> SocketAddr {
        let (s, v) = self.call("GET", &format!("/v1/frontends/{name}"), None);
        assert_eq!(s, 200, "{v}");
        v["listening"][0].as_str().unwrap().parse().unwrap()
    }
}

fn token_for(dir: &Path) -> String {
    let store = berth::store::Store::open(dir).unwrap();
    store.create_token("test").unwrap().1
}

// ---------------------------------------------------------------- in-process daemon

pub(crate) struct InProc {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) running: Option<berth::daemon::Running>,
    pub(crate) api: Api,
    _dir: tempfile::TempDir,
}

impl InProc {
    pub(crate) fn start(yaml: &str) -> InProc {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "http:\n  listen: 127.0.0.1:0\napi:\n  listen: 127.0.0.1:0\ndata_dir: {}\nlog:\n  access_log: false\nproxy:\n  timeouts:\n    drain: 1s\n{yaml}",
            dir.path().display()
        );
        let path = dir.path().join("berthd.yaml");
        std::fs::write(&path, text).unwrap();
        let config = berth::config::load(&path, false).expect("config loads");
        let token = token_for(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = rt
            .block_on(berth::daemon::start(config, None))
            .expect("daemon starts");
        let api = Api {
            addr: running.api_addr,
            token,
        };
        InProc {
            rt,
            running: Some(running),
            api,
            _dir: dir,
        }
    }
}

impl Drop for InProc {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), r.shutdown()).await
            });
        }
    }
}

/// A member of a pool in the config file: this file's TCP `Member`s, `frontends.rs`'s HTTP
/// backends.
pub(crate) trait PoolMember {
    fn id(&self) -> &str;
    fn addr(&self) -> SocketAddr;
}

impl PoolMember for Member {
    fn id(&self) -> &str {
        &self.id
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl PoolMember for crate::support::proxy::BlockingBackend {
    fn id(&self) -> &str {
        &self.name
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// One entry of `pools:` (`extra`: more keys of the pool, indented by four spaces).
pub(crate) fn pool_yaml<M: PoolMember>(name: &str, members: &[&M], extra: &str) -> String {
    let mut s = format!("  - name: {name}\n{extra}    members:\n");
    for m in members {
        s.push_str(&format!(
            "      - id: {}\n        address: {}\n",
            m.id(),
            m.addr()
        ));
    }
    s
}

// ---------------------------------------------------------------- tests

#[test]
fn config_frontend_balances_and_counts_bytes() {
    let a = Member::start("a", true, false);
    let b = Member::start("b", true, false);
    let d = InProc::start(&format!(
        "pools:\n{}frontends:\n  - name: echo\n    bind: 127.0.0.1:0\n    pool: p\n",
        pool_yaml("p", &[&a, &b], "")
    ));
    let fe = d.api.frontend_addr("echo");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let (mut c, id) = hello(fe, None).unwrap();
        *seen.entry(id).or_insert(0) += 1;
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }
    assert_eq!(seen.get("a"), Some(&5), "round robin: {seen:?}");
    assert_eq!(seen.get("b"), Some(&5), "round robin: {seen:?}");
    crate::support::wait_until_named(Duration::from_secs(5), "stats", || {
        let (_, v) = d.api.call("GET", "/v1/stats", None);
        v["tcp"]["frontends"]["echo"]["connections_total"] == 10
            && v["tcp"]["frontends"]["echo"]["bytes_in"] == 40
            && v["tcp"]["frontends"]["echo"]["connections_active"] == 0
    });
    let (_, v) = d.api.call("GET", "/v1/stats", None);
    // Greeting "a\n" (2 bytes) + echo (4 bytes) per connection.
    assert_eq!(v["tcp"]["frontends"]["echo"]["bytes_out"], 60, "{v}");
    assert_eq!(v["tcp"]["pools"]["p"]["a"]["connections_total"], 5, "{v}");
    let metrics = d.api.raw("/metrics");
    assert!(
        metrics.contains("berth_tcp_frontend_connections_total{frontend=\"echo\"} 10"),
        "{metrics}"
    );
    // Pool members are one family whatever the frontend's mode: connections count as
    // requests, bytes both ways.
    for want in [
        "berth_pool_member_received_bytes_total{pool=\"p\",member=\"a\"} 20",
        "berth_pool_member_sent_bytes_total{pool=\"p\",member=\"a\"} 30",
        "berth_pool_member_requests_total{pool=\"p\",member=\"a\"} 5",
        "berth_pool_member_up{pool=\"p\",member=\"a\"} 1",
    ] {
        assert!(metrics.contains(want), "missing {want}\n{metrics}");
    }
    assert!(!metrics.contains("berth_tcp_member_"), "{metrics}");
    // Config objects are read-only through the API.
    let (s, v) = d.api.call("DELETE", "/v1/frontends/echo", None);
    assert_eq!(s, 409, "{v}");
    let (s, v) = d.api.call("DELETE", "/v1/pools/p", None);
    assert_eq!(s, 409, "{v}");
}

#[test]
fn api_frontend_binds_at_once_and_delete_closes_the_port_and_drains() {
    let a = Member::start("a", true, false);
    let d = InProc::start("");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/pools/web",
        Some(json!({"members": [{"id": "a", "address": a.addr.to_string()}]})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/web",
        Some(json!({"mode": "tcp", "bind": "127.0.0.1:0", "pool": "web"})),
    );
    assert_eq!(s, 201, "{v}");
    let fe: SocketAddr = v["listening"][0].as_str().unwrap().parse().unwrap();
    let (mut open, id) = hello(fe, None).expect("serves at once");
    assert_eq!(id, "a");
    // Deleting a pool in use is refused.
    let (s, v) = d.api.call("DELETE", "/v1/pools/web", None);
    assert_eq!(s, 409, "{v}");
    let (s, _) = d.api.call("DELETE", "/v1/frontends/web", None);
    assert_eq!(s, 204);
    // The port is closed at once...
    assert_eq!(
        TcpStream::connect(fe).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    // ...while the open connection keeps working until it ends or the drain timeout (1s).
    open.write_all(b"still").unwrap();
    let mut buf = [0u8; 5];
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still");
    // After the drain timeout it is closed.
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = Vec::new();
    let t = Instant::now();
    let _ = open.read_to_end(&mut rest);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "closed after the drain timeout"
    );
    let (s, _) = d.api.call("GET", "/v1/frontends/web", None);
    assert_eq!(s, 404);
    let (s, _) = d.api.call("DELETE", "/v1/pools/web", None);
    assert_eq!(s, 204);
}

#[test]
fn bad_input_is_422_naming_the_field_and_changes_nothing() {
    let a = Member::start("a", true, false);
    let d = InProc::start(&format!(
        "pools:\n{}frontends:\n  - name: one\n    bind: 127.0.0.1:0\n    pool: p\n",
        pool_yaml("p", &[&a], "")
    ));
    let one = d.api.frontend_addr("one");
    let http = d.running.as_ref().unwrap().http_addr;
    let before_f = d.api.call("GET", "/v1/frontends", None).1;
    let before_p = d.api.call("GET", "/v1/pools", None).1;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        // Overlaps another frontend's bind.
        (
            "/v1/frontends/two",
            json!({"bind": one.to_string(), "pool": "p"}),
            422,
            "bind[0]",
        ),
        // Overlaps berthd's own HTTP listener (wildcard address, same port).
        (
            "/v1/frontends/two",
            json!({"bind": format!("*:{}", http.port()), "pool": "p"}),
            422,
            "bind[0]",
        ),
        // Two binds of one frontend overlap.
        (
            "/v1/frontends/two",
            json!({"bind": "127.0.0.1:41999,0.0.0.0:41999", "pool": "p"}),
            422,
            "bind[1]",
        ),
        (
            "/v1/frontends/two",
            json!({"bind": "nowhere:80", "pool": "p"}),
            422,
            "bind[0]",
        ),
        // Unknown pool, as default and in a rule.
        (
            "/v1/frontends/two",
            json!({"bind": "127.0.0.1:0", "pool": "nope"}),
            422,
            "pool",
        ),
        (
            "/v1/frontends/two",
            json!({"bind": "127.0.0.1:0", "pool": "p", "rules": [{"client": ["10.0.0.0/8"], "pool": "nope"}]}),
            422,
            "rules[0].pool",
        ),
        // An HTTP-only rule on a TCP frontend.
        (
            "/v1/frontends/two",
            json!({"bind": "127.0.0.1:0", "pool": "p", "rules": [{"path": "/api", "pool": "p"}]}),
            422,
            "rules[0].path",
        ),
        (
            "/v1/frontends/two",
            json!({"bind": "127.0.0.1:0", "pool": "p", "rules": [{"header": {"name": "x"}, "pool": "p"}]}),
            422,
            "rules[0].header",
        ),
        (
            "/v1/frontends/two",
            json!({"bind": "127.0.0.1:0", "pool": "p", "mode": "udp"}),
            422,
            "mode",
        ),
        // Member addresses that do not parse.
        (
            "/v1/pools/q",
            json!({"members": [{"address": "db.local:5432"}]}),
            422,
            "members[0].address",
        ),
        (
            "/v1/pools/q",
            json!({"members": [{"address": "127.0.0.1:1"}, {"address": "127.0.0.1"}]}),
            422,
            "members[1].address",
        ),
        (
            "/v1/pools/q",
            json!({"members": [], "balance": "random"}),
            422,
            "balance",
        ),
        ("/v1/pools/Q", json!({"members": []}), 422, "name"),
        // A member has one health: an HTTP check or a TCP check, not both.
        (
            "/v1/pools/q",
            json!({"members": [], "http_check": {"path": "/health"}, "health_check": {"interval": "1s"}}),
            422,
            "http_check",
        ),
        (
            "/v1/pools/q",
            json!({"name": "other", "members": []}),
            422,
            "name",
        ),
    ];
    for (path, body, status, field) in cases {
        let (s, v) = d.api.call("PUT", path, Some(body.clone()));
        assert_eq!(s, status, "{path} {body}: {v}");
        assert_eq!(
            v["error"]["field"].as_str().unwrap_or(""),
            field,
            "{path} {body}: {v}"
        );
    }
    // A port another process holds: 409 naming the address.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/two",
        Some(json!({"bind": format!("127.0.0.1:0,{taken_addr}"), "pool": "p"})),
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["field"], "bind[1]", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&taken_addr.to_string()));
    // Nothing changed: same listing, the existing frontend serves.
    assert_eq!(d.api.call("GET", "/v1/frontends", None).1, before_f);
    assert_eq!(d.api.call("GET", "/v1/pools", None).1, before_p);
    assert_eq!(hello(one, None).unwrap().1, "a");
}

#[test]
fn source_hash_moves_only_the_clients_of_a_leaving_member() {
    let members: Vec<Member> = (0..5)
        .map(|i| Member::start(&format!("m{i}"), true, false))
        .collect();
    let refs: Vec<&Member> = members.iter().collect();
    let d = InProc::start("");
    let body = |ms: &[&Member]| json!({"balance": "source", "members": ms.iter().map(|m| json!({"id": m.id, "address": m.addr.to_string()})).collect::<Vec<_>>()});
    assert_eq!(d.api.call("PUT", "/v1/pools/h", Some(body(&refs))).0, 201);
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/h",
        Some(json!({"bind": "127.0.0.1:0", "pool": "h"})),
    );
    assert_eq!(s, 201, "{v}");
    let fe: SocketAddr = v["listening"][0].as_str().unwrap().parse().unwrap();
    let clients: Vec<IpAddr> = (0..500u32)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 1 + (i / 250) as u8, (i % 250) as u8, 7)))
        .collect();
    let pick = |ip: IpAddr| hello(fe, Some(ip)).expect("connects").1;
    let before: Vec<String> = clients.iter().map(|ip| pick(*ip)).collect();
    // Stable: the same client gets the same member again.
    assert_eq!(pick(clients[0]), before[0]);
    // m2 leaves.
    let four: Vec<&Member> = refs.iter().copied().filter(|m| m.id != "m2").collect();
    assert_eq!(d.api.call("PUT", "/v1/pools/h", Some(body(&four))).0, 200);
    let after: Vec<String> = clients.iter().map(|ip| pick(*ip)).collect();
    let mut moved = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            assert_eq!(b, "m2", "a client of a staying member moved ({b} → {a})");
            moved += 1;
        }
    }
    let on_m2 = before.iter().filter(|m| *m == "m2").count();
    assert_eq!(moved, on_m2, "every client of m2 moved");
    let frac = moved as f64 / clients.len() as f64;
    eprintln!(
        "source hash: {moved} of {} client addresses moved ({frac:.3}); all were on the leaving member",
        clients.len()
    );
    assert!(frac <= 0.25, "moved {frac}");
}

#[test]
fn drain_maint_limits_health_and_proxy_protocol() {
    let a = Member::start("a", true, false);
    let b = Member::start("b", true, false);
    let d = InProc::start("");
    let pool = |a_state: &str, a_max: u32| {
        json!({"balance": "least_connections", "members": [
            {"id": "a", "address": a.addr.to_string(), "state": a_state, "max_connections": a_max},
            {"id": "b", "address": b.addr.to_string()},
        ]})
    };
    assert_eq!(
        d.api.call("PUT", "/v1/pools/p", Some(pool("ready", 1))).0,
        201
    );
    let (_, v) = d.api.call(
        "PUT",
        "/v1/frontends/f",
        Some(json!({"bind": "127.0.0.1:0", "pool": "p"})),
    );
    let fe: SocketAddr = v["listening"][0].as_str().unwrap().parse().unwrap();
    // Connection limit: a takes one, the rest go to b.
    let c1 = hello(fe, None).unwrap();
    let others: Vec<_> = (0..4).map(|_| hello(fe, None).unwrap()).collect();
    let on_a = std::iter::once(&c1)
        .chain(others.iter())
        .filter(|(_, id)| id == "a")
        .count();
    assert_eq!(on_a, 1, "max_connections 1 on a");
    drop(others);
    let (mut on_a_conn, _) = if c1.1 == "a" {
        c1
    } else {
        panic!(
            "first connection went to {} (least connections starts at a)",
            c1.1
        )
    };
    // Drain: the open connection to a keeps working, new ones go to b.
    assert_eq!(
        d.api.call("PUT", "/v1/pools/p", Some(pool("drain", 0))).0,
        200
    );
    for _ in 0..4 {
        assert_eq!(hello(fe, None).unwrap().1, "b");
    }
    on_a_conn.write_all(b"x").unwrap();
    let mut one = [0u8; 1];
    on_a_conn.read_exact(&mut one).unwrap();
    // Maint: the open connection is closed after the drain timeout (1s).
    assert_eq!(
        d.api.call("PUT", "/v1/pools/p", Some(pool("maint", 0))).0,
        200
    );
    let t = Instant::now();
    on_a_conn
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = on_a_conn.read_to_end(&mut rest);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "maint closed after {waited:?}"
    );
    crate::support::wait_until_named(Duration::from_secs(3), "a has no open connection", || {
        a.open.load(Ordering::Relaxed) == 0
    });

    // Health: a TCP check with send/expect; a member that stops listening goes down, new
    // connections avoid it without a single failure.
    let c = Member::start("c", false, false);
    let hc = json!({"interval": "200ms", "timeout": "500ms", "send": "hi", "expect": "hi", "rise": 1, "fall": 1});
    let body = json!({"members": [
        {"id": "b", "address": b.addr.to_string()},
        {"id": "c", "address": c.addr.to_string()},
    ], "health_check": hc});
    assert_eq!(d.api.call("PUT", "/v1/pools/p", Some(body)).0, 200);
    let c_addr = c.addr;
    drop(c);
    crate::support::wait_until_named(Duration::from_secs(5), "c marked down", || {
        let (_, v) = d.api.call("GET", "/v1/pools/p", None);
        v["health"]["c"] == "down"
    });
    let _ = c_addr;
    for _ in 0..6 {
        assert_eq!(hello(fe, None).unwrap().1, "b");
    }

    // PROXY protocol v2 towards members.
    let pp = Member::start("pp", true, true);
    let body =
        json!({"proxy_protocol": "v2", "members": [{"id": "pp", "address": pp.addr.to_string()}]});
    assert_eq!(d.api.call("PUT", "/v1/pools/p", Some(body)).0, 200);
    let (c, id) = hello(fe, None).unwrap();
    assert_eq!(id, "pp");
    let h = pp.headers.lock().unwrap()[0].clone();
    assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(h[13], 0x11, "TCP over IPv4");
    let client_port = u16::from_be_bytes([h[24], h[25]]);
    assert_eq!(client_port, c.local_addr().unwrap().port());
    assert_eq!(u16::from_be_bytes([h[26], h[27]]), fe.port());
}

// ---------------------------------------------------------------- upgrades (berthd processes)

/// `berthd` as a child process (the shared [`BerthdProcess`]) with the API client of these
/// tests.
pub(crate) struct Proc {
    d: BerthdProcess,
    pub(crate) api: Api,
}

impl Proc {
    /// Drain and upgrade timeouts are long: connections must outlive every upgrade of a test
    /// even on a loaded machine (the drain bound would close them on purpose).
    pub(crate) fn start(yaml: &str) -> Proc {
        let mut d = BerthdProcess::new(&format!(
            "lifecycle:\n  upgrade_timeout: 120s\nproxy:\n  timeouts:\n    drain: 300s\n{yaml}"
        ));
        d.new_token();
        d.start_within(Duration::from_secs(30));
        let api = Api {
            addr: d.api,
            token: d.token.clone(),
        };
        Proc { d, api }
    }

    /// `berthd upgrade`; returns the new pid.
    pub(crate) fn upgrade(&self) -> u32 {
        self.d.upgrade()
    }

    /// The pid `berthd status` reports as serving.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.d.current_pid()
    }
}

pub(crate) fn kill_all(pids: &[u32]) {
    for p in pids {
        // SAFETY: plain kill(2) on pids of berthd processes this test started.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
}

fn fnv(acc: u64, data: &[u8]) -> u64 {
    data.iter().fold(acc, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn a_frontend_takes_its_socket_from_systemd_socket_activation_by_name() {
    let Some(wrapper) = crate::support::socket_activate_tool() else {
        return;
    };
    let a = Member::start("a", true, false);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fe: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berthd.yaml");
    std::fs::write(
        &config,
        format!(
            "http:\n  listen: 127.0.0.1:0\napi:\n  listen: 127.0.0.1:0\ndata_dir: {}\nlog:\n  access_log: false\npools:\n{}frontends:\n  - name: sa\n    bind: {fe}\n    pool: p\n",
            dir.path().display(),
            pool_yaml("p", &[&a], "")
        ),
    )
    .unwrap();
    let mut child = Command::new(wrapper)
        .arg("-l")
        .arg(fe.to_string())
        .arg("--fdname=frontend.sa.0")
        .arg(BERTHD)
        .arg("--config")
        .arg(&config)
        .arg("--log-format")
        .arg("json")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let l2 = logs.clone();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            l2.lock().unwrap().push(line);
        }
    });
    // The wrapper listens and starts berthd on the first connection; that very connection
    // waits in the inherited socket's backlog and is served by the frontend.
    let mut result = Err(std::io::Error::other("not tried"));
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        result = hello(fe, None);
        if result.is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let from_systemd = logs.lock().unwrap().iter().any(|l| {
        l.contains("frontend listener") && l.contains("frontend.sa.0") && l.contains("systemd")
    });
    let logs_copy = logs.lock().unwrap().clone();
    let _ = child.kill();
    let _ = child.wait();
    // berthd was exec'd by the wrapper (same pid): killing the child stopped it.
    assert_eq!(result.expect("served through the activated socket").1, "a");
    assert!(from_systemd, "{logs_copy:#?}");
}

#[test]
fn hundred_streams_survive_twenty_upgrades_without_losing_a_byte() {
    let m = Member::start("m", false, false);
    let d = Proc::start(&format!(
        "pools:\n{}frontends:\n  - name: stream\n    bind: 127.0.0.1:0\n    pool: p\n",
        pool_yaml("p", &[&m], "")
    ));
    let fe = d.api.frontend_addr("stream");
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for i in 0..100u64 {
        let c = TcpStream::connect(fe).unwrap();
        c.set_nodelay(true).unwrap();
        let (stop, total) = (stop.clone(), total.clone());
        handles.push(thread::spawn(move || {
            let mut reader = c.try_clone().unwrap();
            reader
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let rd = thread::spawn(move || {
                let (mut sum, mut n) = (0xcbf2_9ce4_8422_2325u64, 0u64);
                let mut buf = [0u8; 16384];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return Ok((sum, n)),
                        Ok(k) => {
                            sum = fnv(sum, &buf[..k]);
                            n += k as u64;
                        }
                        Err(e) => return Err(format!("read after {n} bytes: {e}")),
                    }
                }
            });
            let mut w = c;
            let (mut sum, mut n, mut seq) = (0xcbf2_9ce4_8422_2325u64, 0u64, 0u64);
            let end = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                // 1-4 KiB chunks whose bytes depend on connection and sequence number.
                let len = 1024 + ((i * 7 + seq * 13) % 3072) as usize;
                let chunk: Vec<u8> = (0..len)
                    .map(|k| ((k as u64 * 31 + seq * 17 + i) % 256) as u8)
                    .collect();
                if let Err(e) = w.write_all(&chunk) {
                    return Err(format!("conn {i}: write after {n} bytes: {e}"));
                }
                sum = fnv(sum, &chunk);
                n += len as u64;
                seq += 1;
                thread::sleep(Duration::from_millis(5));
            }
            w.shutdown(Shutdown::Write).unwrap();
            let (rsum, rn) = rd.join().unwrap().map_err(|e| format!("conn {i}: {e}"))?;
            total.fetch_add(n, Ordering::Relaxed);
            if (rsum, rn) != (sum, n) {
                return Err(format!(
                    "conn {i}: sent {n} bytes (sum {sum:x}), got back {rn} (sum {rsum:x})"
                ));
            }
            Ok(n)
        }));
    }
    thread::sleep(Duration::from_millis(300));
    let mut pids = vec![d.pid().unwrap()];
    for _ in 0..20 {
        pids.push(d.upgrade());
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    let mut per_conn = Vec::new();
    for h in handles {
        match h.join().unwrap() {
            Ok(n) => per_conn.push(n),
            Err(e) => errors.push(e),
        }
    }
    let old = pids[..pids.len() - 1].to_vec();
    let exited = {
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end && old.iter().any(|p| crate::support::pid_alive(*p)) {
            thread::sleep(Duration::from_millis(50));
        }
        old.iter().all(|p| !crate::support::pid_alive(*p))
    };
    kill_all(&old);
    eprintln!(
        "100 streams through 20 upgrades: {} bytes each way in total, per connection {}..{} bytes, {} errors",
        total.load(Ordering::Relaxed),
        per_conn.iter().min().unwrap_or(&0),
        per_conn.iter().max().unwrap_or(&0),
        errors.len()
    );
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(per_conn.len(), 100);
    assert!(exited, "old processes exit once their connections end");
}

#[test]
fn new_connections_through_ten_upgrades_per_second_fail_none() {
    let m = Member::start("m", false, false);
    let d = Proc::start(&format!(
        "pools:\n{}frontends:\n  - name: load\n    bind: 127.0.0.1:0\n    pool: p\n",
        pool_yaml("p", &[&m], "")
    ));
    let fe = d.api.frontend_addr("load");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let reset = Arc::new(AtomicU64::new(0));
    let other = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for t in 0..4u8 {
        let (stop, ok, refused, reset, other) = (
            stop.clone(),
            ok.clone(),
            refused.clone(),
            reset.clone(),
            other.clone(),
        );
        handles.push(thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(60);
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end && k < 200_000 {
                k += 1;
                let msg = format!("{t}:{k:08}\n");
                let r = (|| -> std::io::Result<()> {
                    let mut c = TcpStream::connect_timeout(&fe, Duration::from_secs(5))?;
                    c.set_read_timeout(Some(Duration::from_secs(10)))?;
                    c.write_all(msg.as_bytes())?;
                    let mut buf = vec![0u8; msg.len()];
                    c.read_exact(&mut buf)?;
                    if buf != msg.as_bytes() {
                        return Err(std::io::Error::other("wrong echo"));
                    }
                    Ok(())
                })();
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                        ) =>
                    {
                        reset.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        other.lock().unwrap().push(e.to_string());
                        0
                    }
                };
            }
        }));
    }
    thread::sleep(Duration::from_millis(300));
    let mut pids = vec![d.pid().unwrap()];
    let start = Instant::now();
    let mut each = Vec::new();
    let ok_before = ok.load(Ordering::Relaxed);
    for i in 0..30u32 {
        // Paced at 10 per second (an upgrade that takes longer delays the next).
        let due = start + Duration::from_millis(100 * u64::from(i));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let t = Instant::now();
        pids.push(d.upgrade());
        each.push(t.elapsed());
    }
    let took = start.elapsed();
    let during = ok.load(Ordering::Relaxed) - ok_before;
    each.sort();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let old = pids[..pids.len() - 1].to_vec();
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end && old.iter().any(|p| crate::support::pid_alive(*p)) {
        thread::sleep(Duration::from_millis(50));
    }
    kill_all(&old);
    let (ok, refused, reset) = (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        reset.load(Ordering::Relaxed),
    );
    let other = other.lock().unwrap().clone();
    eprintln!(
        "30 upgrades in {took:.1?} ({:.1}/s; one `berthd upgrade` took {:.0?} min, {:.0?} median, {:.0?} max): {ok} connections ok ({during} during the upgrades, {:.0}/s), {refused} refused, {reset} reset, {} other errors",
        30.0 / took.as_secs_f64(),
        each[0],
        each[each.len() / 2],
        each[each.len() - 1],
        during as f64 / took.as_secs_f64(),
        other.len()
    );
    assert_eq!((refused, reset), (0, 0), "other: {other:?}");
    assert!(other.is_empty(), "{other:?}");
    assert!(ok > 1000, "too few connections ({ok})");
}

#[test]
fn api_frontend_survives_an_upgrade_and_delete_closes_it() {
    let a = Member::start("a", true, false);
    let d = Proc::start("");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/pools/p",
        Some(json!({"members": [{"id": "a", "address": a.addr.to_string()}]})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.api.call(
        "PUT",
        "/v1/frontends/new",
        Some(json!({"bind": "127.0.0.1:0", "pool": "p"})),
    );
    assert_eq!(s, 201, "{v}");
    let fe: SocketAddr = v["listening"][0].as_str().unwrap().parse().unwrap();
    assert_eq!(hello(fe, None).unwrap().1, "a");
    // A connection open across the upgrade keeps working.
    let (mut open, _) = hello(fe, None).unwrap();
    let old = d.pid().unwrap();
    let new = d.upgrade();
    assert_ne!(old, new);
    // Same port (the socket was handed over), now served by the new process.
    assert_eq!(d.api.frontend_addr("new"), fe);
    assert_eq!(hello(fe, None).unwrap().1, "a");
    open.write_all(b"across").unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"across");
    // DELETE: the port closes; the open connection (in the old process) is unaffected, and a
    // connection made to the new process drains.
    let (mut in_new, _) = hello(fe, None).unwrap();
    let (s, _) = d.api.call("DELETE", "/v1/frontends/new", None);
    assert_eq!(s, 204);
    assert_eq!(
        TcpStream::connect(fe).unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    in_new.write_all(b"drain").unwrap();
    let mut buf = [0u8; 5];
    in_new.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"drain");
    // After another upgrade it stays gone (the store no longer has it).
    d.upgrade();
    let (s, _) = d.api.call("GET", "/v1/frontends/new", None);
    assert_eq!(s, 404);
    assert!(TcpStream::connect(fe).is_err());
    drop(open);
    drop(in_new);
    kill_all(&[old]);
}
