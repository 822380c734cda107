//! Who may use the API (issue 18 items 5 and 7), against a real daemon on loopback: the
//! listener answers only its own names (421 for a rebound DNS name, also on `/metrics` and in
//! absolute-form requests), token scopes are enforced on every route of the OpenAPI document
//! (walked, each operation with `read`, `deploy:` and `admin` tokens), the document states each
//! operation's scope and it agrees with the router's rule table, status-page sessions get
//! their token's scopes, and `berthd token create --scope` / `token list` show them.

use std::path::Path;
use std::time::Duration;

use berth::model::access::{rule_for, Need, Rule, Scopes};
use berth::model::config::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config(dir: &Path) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.log.access_log = false;
    // No Docker needed: the deploy endpoints answer 503 once past the scope check.
    c.deploy.enabled = berth::model::config::DeployEnabled::Off;
    c.routes = serde_json::from_value(json!([
        {"name": "static", "domains": ["static.test"], "backends": [{"id": "s1", "address": "127.0.0.1:9"}]}
    ]))
    .unwrap();
    c
}

/// Sends one raw HTTP/1.1 request and returns (status, body). Lets a test set any `Host`
/// and use the absolute form, which ordinary clients will not.
async fn raw(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_only_its_own_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.api.allowed_hosts = vec!["ops.internal".into()];
    let running = berth::daemon::start(c, None).await.expect("daemon starts");
    let addr = running.api_addr;
    let port = addr.port();
    let (_, token) = running.registry.store().create_token("t").unwrap();

    let get = |host: String, path: &'static str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    // A DNS-rebinding page: its own name, resolved to 127.0.0.1. Refused everywhere, before
    // authentication (metrics is public by default).
    for path in [
        "/metrics",
        "/healthz",
        "/v1/routes",
        "/ui/",
        "/v1/openapi.json",
    ] {
        for host in [
            "evil.test".to_string(),
            format!("evil.test:{port}"),
            "127.0.0.1.evil.test".to_string(),
            "localhost.evil.test".to_string(),
        ] {
            let (s, body) = raw(addr, &get(host.clone(), path)).await;
            assert_eq!(s, 421, "{host} {path}: {body}");
            let v: Value = serde_json::from_str(&body).expect("JSON error body");
            assert_eq!(v["error"]["code"], "misdirected_request", "{body}");
            assert_eq!(v["error"]["host"], host.as_str(), "{body}");
        }
    }
    // Its own names: loopback names and addresses with any port (an SSH tunnel's
    // 127.0.0.1:9922), and api.allowed_hosts.
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1:9922".to_string(),
        "localhost".to_string(),
        format!("localhost:{port}"),
        "[::1]:9922".to_string(),
        "ops.internal".to_string(),
        "OPS.internal.:9922".to_string(),
    ] {
        let (s, body) = raw(addr, &get(host.clone(), "/metrics")).await;
        assert_eq!(s, 200, "{host}: {body}");
    }
    // Absolute form: the authority must be ours too, whatever Host says.
    let (s, body) = raw(
        addr,
        "GET http://evil.test/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(s, 421, "{body}");
    let (s, _) = raw(
        addr,
        &format!(
            "GET http://127.0.0.1:{port}/healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(s, 200);
    // No Host at all (HTTP/1.0): refused.
    let (s, _) = raw(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(s, 421);
    // A token does not change that.
    let (s, _) = raw(
        addr,
        &format!(
            "GET /v1/routes HTTP/1.1\r\nHost: evil.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(s, 421);
    // The CLI, through a tunnel-like address.
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/v1/routes"))
        .header("host", "127.0.0.1:9922")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    running.shutdown().await;
}

/// The keys of an OpenAPI path item that are operations.
const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

/// Sample path for a documented route template.
fn fill(path: &str, app: &str) -> String {
    path.replace("{app}", app)
        .replace("{name}", "static")
        .replace("{id}", "s1")
        .replace("{domain}", "static.test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_enforced_on_every_documented_operation() {
    let dir = tempfile::tempdir().unwrap();
    let running = berth::daemon::start(config(dir.path()), None)
        .await
        .expect("daemon starts");
    let store = running.registry.store().clone();
    let mk = |s: &[&str]| {
        let scopes = Scopes::parse(s).unwrap();
        let (_, t) = store.create_token_scoped("t", &scopes).unwrap();
        (scopes, t)
    };
    let tokens = [
        mk(&["read"]),
        mk(&["deploy:web"]),
        mk(&["deploy:shop-*"]),
        mk(&["read", "deploy:web"]),
        mk(&["admin"]),
    ];
    let http = reqwest::Client::new();
    let base = format!("http://{}", running.api_addr);
    let doc: Value = http
        .get(format!("{base}/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let m = method.to_uppercase();
            let rule = rule_for(&m, path).unwrap_or_else(|| panic!("{m} {path}: no rule"));
            if matches!(rule, Rule::Public | Rule::Authenticated)
                || path == "/metrics"
                || path == "/v1/stats/stream"
            {
                continue;
            }
            for app in ["web", "shop-eu", "api"] {
                let url = format!("{base}{}", fill(path, app));
                let need = match rule {
                    Rule::Read => Need::Read,
                    Rule::Admin => Need::Admin,
                    Rule::AppRead => Need::AppRead(app.into()),
                    Rule::AppWrite => Need::AppWrite(app.into()),
                    // Without an engine there is no deployment to look up: `read` or the
                    // handler's 503 (a deploy-only token gets through to it).
                    Rule::DeploymentRead => Need::Public,
                    Rule::Public | Rule::Authenticated => unreachable!(),
                };
                for (scopes, token) in &tokens {
                    let mut req = http
                        .request(m.parse().unwrap(), &url)
                        .bearer_auth(token)
                        .timeout(Duration::from_secs(10));
                    if m != "GET" && m != "DELETE" {
                        req = req.json(&json!({}));
                    }
                    let resp = req.send().await.unwrap();
                    let status = resp.status().as_u16();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    assert!(status < 500 || status == 503, "{m} {url} {scopes}: {body}");
                    match scopes.allow(&need) {
                        Ok(()) => {
                            assert_ne!(status, 403, "{m} {url} with {scopes}: {body}")
                        }
                        Err(missing) => {
                            assert_eq!(status, 403, "{m} {url} with {scopes}: {body}");
                            assert_eq!(body["error"]["code"], "forbidden");
                            assert_eq!(body["error"]["required_scope"], missing.as_str());
                            let msg = body["error"]["message"].as_str().unwrap();
                            assert!(msg.contains(&scopes.to_string()), "{msg}");
                        }
                    }
                    checked += 1;
                }
            }
            assert!(op.get("x-berth-scope").is_some());
        }
    }
    assert!(checked > 100, "{checked}");
    // Any token may ask who it is.
    for (scopes, token) in &tokens {
        let v: Value = http
            .get(format!("{base}/v1/token"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["name"], "t");
        assert_eq!(v["scopes"], serde_json::to_value(scopes).unwrap());
    }
    // Spot checks of what a CI token can do, in the words of the issue.
    let ci = &tokens[1].1;
    let status = |m: reqwest::Method, p: &str| {
        let r = http
            .request(m, format!("{base}{p}"))
            .bearer_auth(ci)
            .json(&json!({"image": "x", "domains": ["web.test"]}));
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status(reqwest::Method::POST, "/v1/apps/web/deploy").await,
        503
    );
    assert_eq!(
        status(reqwest::Method::POST, "/v1/apps/api/deploy").await,
        403
    );
    assert_eq!(status(reqwest::Method::GET, "/v1/routes").await, 403);
    assert_eq!(
        status(reqwest::Method::DELETE, "/v1/routes/static").await,
        403
    );
    // Its idle keep-alive connection would hold the drain for the whole timeout (30 s).
    drop(http);
    running.shutdown().await;
}

#[test]
fn the_document_states_each_operations_scope_like_the_router() {
    let doc: Value = serde_json::from_str(berth::api::OPENAPI_JSON).unwrap();
    let mut seen = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            let m = method.to_uppercase();
            let rule = rule_for(&m, path)
                .unwrap_or_else(|| panic!("{m} {path} is documented but has no scope rule"));
            assert_eq!(
                op["x-berth-scope"].as_str(),
                Some(rule.doc()),
                "{m} {path}: x-berth-scope"
            );
            let responses = &op["responses"];
            assert!(responses.get("421").is_some(), "{m} {path}: no 421");
            if !matches!(rule, Rule::Public | Rule::Authenticated) {
                assert!(responses.get("403").is_some(), "{m} {path}: no 403");
            }
            seen.push((m, path.clone()));
        }
    }
    for (m, p, _) in berth::model::access::ROUTE_RULES {
        assert!(
            seen.iter().any(|(sm, sp)| sm == m && sp == p),
            "{m} {p} has a rule but is not documented"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_page_session_has_its_tokens_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let running = berth::daemon::start(config(dir.path()), None)
        .await
        .expect("daemon starts");
    let (_, token) = running
        .registry
        .store()
        .create_token_scoped("viewer", &Scopes::parse(&["read"]).unwrap())
        .unwrap();
    let base = format!("http://{}", running.api_addr);
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{base}/ui/login"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let v: Value = login.json().await.unwrap();
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    let session: Value = http
        .get(format!("{base}/ui/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["scopes"], json!(["read"]));
    // Reading works; the page's actions (backend state, rollback, certificate retry) do not.
    let r = http
        .get(format!("{base}/v1/routes"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for (path, scope) in [
        ("/v1/routes/static/backends/s1/state", "admin"),
        ("/v1/apps/web/rollback", "deploy:web"),
        ("/v1/certificates/static.test/retry", "admin"),
    ] {
        let m = if path.ends_with("/state") {
            reqwest::Method::PUT
        } else {
            reqwest::Method::POST
        };
        let r = http
            .request(m, format!("{base}{path}"))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .json(&json!({"state": "drain"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["required_scope"], scope, "{path}");
    }
    // Its idle keep-alive connection would hold the drain for the whole timeout (30 s).
    drop(http);
    running.shutdown().await;
}

#[test]
fn berthd_token_create_with_scopes_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("berthd.yaml");
    std::fs::write(
        &cfg,
        format!("data_dir: {}\n", dir.path().join("data").display()),
    )
    .unwrap();
    let berthd = env!("CARGO_BIN_EXE_berthd");
    let run = |args: &[&str]| {
        std::process::Command::new(berthd)
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "deploy:web",
        "--scope",
        "read",
    ]);
    assert!(out.status.success(), "{out:?}");
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("berth_"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("scopes deploy:web,read"));
    let out = run(&["token", "create", "--name", "x", "--scope", "write"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--scope") && err.contains("\"write\""),
        "{err}"
    );
    let out = run(&["token", "create", "--name", "ops"]);
    assert!(out.status.success());
    let list = String::from_utf8(run(&["token", "list"]).stdout).unwrap();
    assert!(list.lines().next().unwrap().contains("SCOPES"), "{list}");
    assert!(
        list.lines()
            .any(|l| l.contains("ci") && l.contains("deploy:web,read")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.contains("ops") && l.contains("admin")),
        "{list}"
    );
    let store = berth::store::Store::open(&dir.path().join("data")).unwrap();
    assert_eq!(
        store.authenticate(&secret).unwrap().unwrap().scopes,
        Scopes::parse(&["deploy:web", "read"]).unwrap()
    );
}

#[test]
fn berthd_init_creates_the_secrets_key_or_uses_the_systemd_credential() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("berthd.yaml");
    std::fs::write(&cfg, format!("data_dir: {}\n", data.display())).unwrap();
    let init = |creds: Option<&Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"));
        cmd.arg("--config").arg(&cfg).arg("init");
        match creds {
            Some(c) => cmd.env("CREDENTIALS_DIRECTORY", c),
            None => cmd.env_remove("CREDENTIALS_DIRECTORY"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A systemd credential wins over the data dir; a malformed one is a clear error.
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("berth-secrets-key"), "not a key\n").unwrap();
    let (ok, err) = init(Some(&creds));
    assert!(!ok, "{err}");
    assert!(
        err.contains("berth-secrets-key") && err.contains("64 hex digits"),
        "{err}"
    );
    std::fs::write(
        creds.join("berth-secrets-key"),
        format!("{}\n", "0f".repeat(32)),
    )
    .unwrap();
    let (ok, err) = init(Some(&creds));
    assert!(ok, "{err}");
    assert!(err.contains("creds/berth-secrets-key exists"), "{err}");
    assert!(!data.join("secrets.key").exists());
    // Without one: init creates <data_dir>/secrets.key, 0600, once.
    let (ok, err) = init(None);
    assert!(ok, "{err}");
    assert!(err.contains("created the secrets key"), "{err}");
    let key = data.join("secrets.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read_to_string(&key).unwrap();
    assert_eq!(first.trim().len(), 64);
    let (ok, err) = init(None);
    assert!(ok && err.contains("exists; keeping it"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first);
}

/// Forwards every connection on a loopback port to `to`, like `ssh -L`: the client's `Host`
/// names the forwarder's port, not the API's.
async fn tunnel(to: std::net::SocketAddr) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_works_through_a_tunnel_and_metrics_auth_needs_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.api.metrics_auth = true;
    let running = berth::daemon::start(c, None).await.expect("daemon starts");
    let store = running.registry.store().clone();
    let (_, ci) = store
        .create_token_scoped("ci", &Scopes::parse(&["deploy:web"]).unwrap())
        .unwrap();
    let (_, reader) = store
        .create_token_scoped("reader", &Scopes::parse(&["read"]).unwrap())
        .unwrap();
    let (fwd, task) = tunnel(running.api_addr).await;
    let cli_cfg = dir.path().join("cli.yaml");
    let berth = |args: Vec<String>| {
        let cfg = cli_cfg.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let cwd = std::env::current_dir().unwrap();
            let out = crate::support::cli::command(&cfg, &cwd, &args)
                .output()
                .unwrap();
            let (code, text) = crate::support::cli::text(out);
            (code == 0, text)
        })
    };
    for (name, url, token) in [
        ("t1", format!("http://127.0.0.1:{}", fwd.port()), &reader),
        ("t2", format!("http://localhost:{}", fwd.port()), &ci),
    ] {
        let (ok, out) = berth(vec![
            "server".into(),
            "add".into(),
            name.into(),
            url,
            "--token".into(),
            token.clone(),
        ])
        .await
        .unwrap();
        assert!(ok, "{out}");
        assert!(out.contains("token scopes:"), "{out}");
    }
    let (ok, out) = berth(vec![
        "--server".into(),
        "t1".into(),
        "routes".into(),
        "list".into(),
    ])
    .await
    .unwrap();
    assert!(ok && out.contains("static"), "{out}");
    // The deploy-only token is refused the route table, with the scope named.
    let (ok, out) = berth(vec![
        "--server".into(),
        "t2".into(),
        "routes".into(),
        "list".into(),
    ])
    .await
    .unwrap();
    assert!(!ok && out.contains("read"), "{out}");
    // api.metrics_auth: /metrics is a read like any other.
    let http = reqwest::Client::new();
    for (token, want) in [(&reader, 200), (&ci, 403)] {
        let r = http
            .get(format!("http://{fwd}/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want);
    }
    task.abort();
    // Its idle keep-alive connection would hold the drain for the whole timeout (30 s).
    drop(http);
    running.shutdown().await;
}
