//! `api.domain`: a real berthd (in-process, manual certificate from a throwaway CA) serves its
//! API through the proxy on `https://api.berth.test`; the real `berth` binary talks to it with
//! `--ca-cert` (and `BERTH_RESOLVE` in place of DNS); plain HTTP on that name never reaches
//! the API; failed authentication through the proxy is limited per forwarded client address,
//! and a local client cannot borrow that trust by sending forwarded headers itself.

use crate::support;
use crate::support::cli::berth;

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::TestCa;
use berth::model::config::{CertFiles, Config};

const DOMAIN: &str = "api.berth.test";

struct World {
    running: berth::daemon::Running,
    token: String,
    dir: tempfile::TempDir,
    ca_path: std::path::PathBuf,
    _echo: support::TestBackend,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("berth test CA");
        let (cert, key) = ca.leaf(&[DOMAIN], false);
        let (cert_path, key_path) = (dir.path().join("api.crt"), dir.path().join("api.key"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        // An ordinary app route too, to see what the proxy forwards to apps.
        let echo = support::TestBackend::start("echo").await;
        let mut c: Config = support::config(&format!(
            r#"[{{"name":"echo","domains":["echo.berth.test"],
                 "backends":[{{"address":"{}"}}]}}]"#,
            echo.addr
        ));
        c.data_dir = dir.path().join("data");
        c.deploy.enabled = berth::model::config::DeployEnabled::Off;
        c.tls.enabled = Some(true);
        c.tls.listen = "127.0.0.1:0".parse().unwrap();
        c.tls.certs = vec![CertFiles {
            cert: cert_path,
            key: key_path,
        }];
        c.api.domain = Some(DOMAIN.to_string().try_into().unwrap());
        c.api.auth_failures_per_minute = 3;
        // The test client plays several remote clients by sending X-Forwarded-For, which the
        // proxy believes only from a trusted peer.
        c.proxy.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        c.validate().expect("valid config");
        let running = support::start(c).await;
        let (_, token) = running.registry.store().create_token("laptop").unwrap();
        World {
            running,
            token,
            dir,
            ca_path,
            _echo: echo,
        }
    }

    fn https(&self) -> SocketAddr {
        self.running.https_addr.expect("https runs")
    }

    fn url(&self) -> String {
        format!("https://{DOMAIN}:{}", self.https().port())
    }

    /// An HTTPS client that trusts the test CA and finds `DOMAIN` on 127.0.0.1.
    fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.ca_path).unwrap();
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .resolve(DOMAIN, "127.0.0.1:0".parse().unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// `GET /v1/routes` through the proxy as client `xff` (None: the test's own address).
    async fn via_proxy(&self, token: &str, xff: Option<&str>) -> (u16, String) {
        let mut r = self
            .client()
            .get(format!("{}/v1/routes", self.url()))
            .bearer_auth(token);
        if let Some(ip) = xff {
            r = r.header("x-forwarded-for", ip);
        }
        let resp = r.send().await.expect("request through the proxy");
        let s = resp.status().as_u16();
        (s, resp.text().await.unwrap_or_default())
    }

    /// `GET /v1/routes` straight to the API listener with extra headers.
    async fn direct(&self, token: &str, headers: &[(&str, &str)]) -> u16 {
        let mut r = reqwest::Client::new()
            .get(format!("http://{}/v1/routes", self.running.api_addr))
            .bearer_auth(token);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.expect("direct request").status().as_u16()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berth_talks_to_the_api_over_https_on_api_domain() {
    let w = World::start().await;
    let cfg = w.dir.path().join("cli.yaml");
    let cwd = w.dir.path();
    let resolve = format!("{DOMAIN}=127.0.0.1");
    let env = [("BERTH_RESOLVE", resolve.as_str())];
    let url = w.url();
    let ca = w.ca_path.to_str().unwrap();

    // Without the private CA the certificate is not trusted: unreachable (3), nothing saved.
    let (code, out) = berth(
        &cfg,
        cwd,
        &env,
        &["server", "add", "prod", &url, "--token", &w.token],
    )
    .await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("certificate") || out.contains("Unknown"),
        "{out}"
    );
    assert!(!cfg.exists(), "a failed check saves nothing");

    // With --ca-cert: the version handshake and an authenticated call go through the proxy.
    let (code, out) = berth(
        &cfg,
        cwd,
        &env,
        &[
            "server",
            "add",
            "prod",
            &url,
            "--token",
            &w.token,
            "--ca-cert",
            ca,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    // Real values from the typed answers (this line printed `berthd -` while the CLI read
    // a `version` field the daemon never sent).
    assert!(
        out.contains(&format!(
            "connected to berthd {} at {url} (token scopes: admin)",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    let saved = std::fs::read_to_string(&cfg).unwrap();
    assert!(saved.contains("ca_cert:"), "{saved}");

    // Every command works through https://api.berth.test; the API's own route is listed,
    // read-only, pointing at the API listener on loopback.
    let (code, out) = berth(&cfg, cwd, &env, &["--server", "prod", "routes", "list"]).await;
    assert_eq!(code, 0, "{out}");
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with("berth-api "))
        .unwrap_or_else(|| panic!("no berth-api row: {out}"))
        .split_whitespace()
        .collect();
    // name, domains, prefix (none: `-`), balancer, backends, source.
    assert_eq!(
        row,
        ["berth-api", DOMAIN, "-", "round_robin", "1", "config"],
        "{out}"
    );
    let (code, out) = berth(
        &cfg,
        cwd,
        &env,
        &["--server", "prod", "backends", "berth-api", "list"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let api_addr = w.running.api_addr.to_string();
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no backend row: {out}"))
        .split_whitespace()
        .collect();
    // id, address, weight, state, health: every column a value.
    assert_eq!(row.len(), 5, "{out}");
    assert_eq!(&row[1..], [api_addr.as_str(), "1", "ready", "up"], "{out}");
    let (code, out) = berth(
        &cfg,
        cwd,
        &env,
        &["--server", "prod", "routes", "get", "berth-api", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["source"], "config", "{v}");
    let api_port = w.running.api_addr.port().to_string();
    assert!(
        v.to_string().contains(&format!("127.0.0.1:{api_port}")),
        "{v}"
    );
    let (code, out) = berth(
        &cfg,
        cwd,
        &env,
        &["--server", "prod", "routes", "delete", "berth-api"],
    )
    .await;
    assert_ne!(code, 0, "the API route is read-only: {out}");

    // The env-only mode (CI without a settings file): BERTH_URL + BERTH_TOKEN +
    // BERTH_CA_CERT.
    let (code, out) = berth(
        &cwd.join("no-such-settings.yaml"),
        cwd,
        &[
            ("BERTH_RESOLVE", resolve.as_str()),
            ("BERTH_URL", url.as_str()),
            ("BERTH_TOKEN", w.token.as_str()),
            ("BERTH_CA_CERT", ca),
        ],
        &["routes", "list", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("berth-api"), "{out}");

    // A wrong token through the proxy: 401 → exit code 4.
    let (code, out) = berth(
        &cfg,
        cwd,
        &[
            ("BERTH_RESOLVE", resolve.as_str()),
            ("BERTH_TOKEN", "berth_nope"),
        ],
        &["--server", "prod", "routes", "list"],
    )
    .await;
    assert_eq!(code, 4, "{out}");

    let World { running, .. } = w;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_api_domain_never_reaches_the_api() {
    let w = World::start().await;
    let http = w.running.http_addr;
    // The host has a certificate: 308 to HTTPS (method and body kept), nothing proxied.
    let raw = support::raw_exchange(
        http,
        format!("GET /v1/version HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 308"), "{raw}");
    let want = format!("location: https://{DOMAIN}:{}/v1/version", w.https().port());
    assert!(raw.to_ascii_lowercase().contains(&want), "{raw}");
    assert!(!raw.contains("\"api\""), "{raw}");
    // Over HTTPS the same request is answered by the API.
    let resp = w
        .client()
        .get(format!("{}/v1/version", w.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let hsts = resp.headers().get("strict-transport-security").cloned();
    assert_eq!(hsts.unwrap(), "max-age=31536000", "HSTS on the API's name");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["api"], 1, "{v}");
    // The status page is there too.
    let resp = w
        .client()
        .get(format!("{}/ui/", w.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Apps never see the proxy's secret header, even when a client sends one.
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/headers"))
        .header("host", "echo.berth.test")
        .header("x-berth-proxy-secret", "forged")
        .send()
        .await
        .unwrap();
    let head = resp.text().await.unwrap().to_ascii_lowercase();
    assert!(head.contains("x-real-ip"), "{head}");
    assert!(!head.contains("x-berth-proxy-secret"), "{head}");

    let World { running, .. } = w;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auth_through_the_proxy_is_limited_per_forwarded_address() {
    let w = World::start().await;
    let (a, b) = (Some("203.0.113.7"), Some("203.0.113.8"));

    // Client A fails 3 times (the limit), then is refused even with the right token.
    for i in 0..3 {
        let (s, body) = w.via_proxy("berth_wrong", a).await;
        assert_eq!(s, 401, "attempt {i}: {body}");
    }
    let (s, body) = w.via_proxy(&w.token, a).await;
    assert_eq!(s, 429, "{body}");
    assert!(body.contains("203.0.113.7"), "names the client: {body}");
    // Client B is another address: unaffected.
    let (s, body) = w.via_proxy("berth_wrong", b).await;
    assert_eq!(s, 401, "{body}");
    let (s, body) = w.via_proxy(&w.token, b).await;
    assert_eq!(s, 200, "{body}");

    // A client whose real address is loopback, but who came through the proxy, is counted
    // too (the loopback exemption is for direct local clients and SSH tunnels).
    for _ in 0..3 {
        let (s, body) = w.via_proxy("berth_wrong", None).await;
        assert_eq!(s, 401, "{body}");
    }
    let (s, body) = w.via_proxy(&w.token, None).await;
    assert_eq!(s, 429, "{body}");
    assert!(body.contains("127.0.0.1"), "{body}");

    // Direct local clients stay exempt, and cannot pose as proxied clients: forwarded headers
    // and a guessed secret are ignored without the proxy's real secret.
    for _ in 0..6 {
        let s = w
            .direct(
                "berth_wrong",
                &[
                    ("x-real-ip", "203.0.113.9"),
                    ("x-forwarded-for", "203.0.113.9"),
                    ("x-berth-proxy-secret", "guess"),
                ],
            )
            .await;
        assert_eq!(s, 401);
    }
    assert_eq!(w.direct(&w.token, &[]).await, 200, "direct loopback exempt");
    // None of those counted against 203.0.113.9.
    let (s, body) = w.via_proxy(&w.token, Some("203.0.113.9")).await;
    assert_eq!(s, 200, "{body}");
    // A client's own copy of the secret header does not survive the proxy either: sending
    // one through the proxy changes nothing about who is counted.
    let resp = w
        .client()
        .get(format!("{}/v1/routes", w.url()))
        .bearer_auth(&w.token)
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-berth-proxy-secret", "guess")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "still client A, still blocked");

    // The status page's login (public on api.domain) counts against the same limit.
    let login = |token: String| {
        w.client()
            .post(format!("{}/ui/login", w.url()))
            .header("x-forwarded-for", "203.0.113.20")
            .json(&serde_json::json!({ "token": token }))
            .send()
    };
    for i in 0..3 {
        let r = login("berth_wrong".into()).await.unwrap();
        assert_eq!(r.status(), 401, "login attempt {i}");
    }
    let r = login(w.token.clone()).await.unwrap();
    assert_eq!(r.status(), 429, "login blocked after 3 failures");
    let (s, body) = w.via_proxy(&w.token, Some("203.0.113.20")).await;
    assert_eq!(s, 429, "and so is the API for that client: {body}");

    let World { running, .. } = w;
    running.shutdown().await;
}

#[test]
fn config_errors_name_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let check_env = |yaml: &str, env: &[(&str, &str)]| {
        let path = dir.path().join("berthd.yaml");
        std::fs::write(&path, yaml).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"));
        cmd.arg("check-config").arg(&path);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("berthd runs");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text, path)
    };
    let check = |yaml: &str| check_env(yaml, &[]);
    let tls = "tls:\n  certs:\n    - {cert: /x.crt, key: /x.key}\n";
    let (ok, text, path) = check(&format!(
        "api:\n  domain: www.example.com\n{tls}routes:\n  - name: web\n    domains: [www.example.com]\n    backends: [{{address: 127.0.0.1:8080}}]\n"
    ));
    assert!(!ok, "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(
        text.contains("api.domain") && text.contains("routes[0].domains[0]"),
        "{text}"
    );
    let (ok, text, _) = check(&format!("api:\n  domain: not_a host\n{tls}"));
    assert!(!ok, "{text}");
    assert!(
        text.contains("api.domain") && text.contains("invalid host name"),
        "{text}"
    );
    let (ok, text, _) = check("api:\n  domain: berth.example.com\n");
    assert!(!ok, "{text}");
    assert!(text.contains("needs HTTPS"), "{text}");
    let (ok, text, _) = check(&format!("api:\n  domain: berth.example.com\n{tls}"));
    assert!(ok, "{text}");
    // The same keys from the environment (BERTH_API__DOMAIN, BERTH_DEPLOY__...).
    let (ok, text, _) = check_env(tls, &[("BERTH_API__DOMAIN", "192.0.2.1")]);
    assert!(
        !ok && text.contains("api.domain") && text.contains("IP address"),
        "{text}"
    );
    let (ok, text, _) = check_env(tls, &[("BERTH_DEPLOY__ENABLED", "sometimes")]);
    assert!(!ok && text.contains("deploy.enabled"), "{text}");
}

/// `berthd init` with `api.domain` prints an https:// `berth server add` line and no tunnel.
#[test]
fn berthd_init_prints_the_https_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("berthd.yaml");
    std::fs::write(
        &path,
        format!(
            "data_dir: {}\napi:\n  domain: berth.example.com\n\
             tls:\n  certs:\n    - {{cert: /x.crt, key: /x.key}}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["init", "--config"])
        .arg(&path)
        .output()
        .expect("berthd runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("berth server add production https://berth.example.com --token berth_"),
        "{stdout}"
    );
    assert!(!stderr.contains("ssh -N"), "{stderr}");
}

/// The status page on api.domain is HTTPS (through the proxy): its session cookie is Secure
/// and `__Host-` prefixed there, and works for the API; a direct local login (plain HTTP on
/// loopback, e.g. an SSH tunnel) gets the plain cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_cookie_is_secure_on_api_domain() {
    let w = World::start().await;
    let resp = w
        .client()
        .post(format!("{}/ui/login", w.url()))
        .json(&serde_json::json!({ "token": w.token }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        set.starts_with("__Host-berth_session=") && set.ends_with("; Secure"),
        "{set}"
    );
    let pair = set.split(';').next().unwrap().to_string();
    let stats = w
        .client()
        .get(format!("{}/v1/stats", w.url()))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200, "the session works through the proxy");

    let direct = reqwest::Client::new()
        .post(format!("http://{}/ui/login", w.running.api_addr))
        .json(&serde_json::json!({ "token": w.token }))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 200);
    let set = direct
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        set.starts_with("berth_session=") && !set.contains("Secure"),
        "{set}"
    );
    let World { running, .. } = w;
    running.shutdown().await;
}
