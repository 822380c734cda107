//! Pulls from a real private registry (Debian's `docker-registry`, htpasswd auth) started by
//! the test on loopback, gated on BERTH_SYSTEM_TESTS=1: `pull: always` picks up a moving
//! `:latest` tag on every deploy, `pull: missing` (the default) keeps the local image, a
//! missing or wrong password is a clear failure that changes nothing, and the password is
//! used for the pull only (never stored or shown).

mod docker_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use docker_support::{prepare, skip, Cleanup, IMG_V1, IMG_V2};
use serde_json::{json, Value};

/// A `docker-registry serve` process with htpasswd auth (user `berth`, password `s3cret`),
/// and a private `DOCKER_CONFIG` for the CLI's login and push.
struct Registry {
    child: Child,
    addr: String,
    docker_config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", "berth", "s3cret"])
            .output()
            .expect("htpasswd (apache2-utils) installed");
        assert!(htpasswd.status.success());
        std::fs::write(d.join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(
            d.join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n\
                 http:\n  addr: {addr}\n  secret: test\nauth:\n  htpasswd: {{realm: berth, path: {}}}\n",
                d.join("data").display(),
                d.join("htpasswd").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", &d.join("config.yml").display().to_string()])
            .stdout(std::fs::File::create(d.join("registry.log")).unwrap())
            .stderr(std::fs::File::create(d.join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry installed (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let docker_config = d.join("docker-config");
        std::fs::create_dir_all(&docker_config).unwrap();
        let r = Registry {
            child,
            addr,
            docker_config,
            _dir: dir,
        };
        r.docker(
            &["login", &r.addr, "-u", "berth", "--password-stdin"],
            Some("s3cret"),
        );
        r
    }

    fn docker(&self, args: &[&str], stdin: Option<&str>) {
        use std::io::Write;
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pushes local image `src` as `REGISTRY/repo:tag` and removes the pushed tag locally.
    fn push(&self, src: &str, reference: &str) {
        self.docker(&["tag", src, reference], None);
        self.docker(&["push", "-q", reference], None);
    }
}

struct World {
    running: berth::daemon::Running,
    token: String,
    app: String,
    http: reqwest::Client,
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(name: &str) -> World {
        prepare();
        let dir = tempfile::tempdir().unwrap();
        let app = format!("{name}-{}", std::process::id());
        let network = format!("berth-r-{app}");
        let mut c = berth::model::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        c.http.listen = "127.0.0.1:0".parse().unwrap();
        c.api.listen = "127.0.0.1:0".parse().unwrap();
        c.log.access_log = false;
        c.deploy.enabled = berth::model::config::DeployEnabled::Required;
        c.deploy.network = network.clone();
        c.deploy.stop_grace = Duration::from_secs(2);
        let running = berth::daemon::start(c, None).await.expect("daemon starts");
        let (_, token) = running.registry.store().create_token("ci").unwrap();
        World {
            running,
            token,
            _cleanup: Cleanup {
                app: app.clone(),
                network,
            },
            app,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.api_addr)
    }

    /// Deploys and waits for the end; returns the final record.
    async fn deploy(&self, spec: Value) -> Value {
        let resp = self
            .http
            .post(self.url(&format!("/v1/apps/{}/deploy", self.app)))
            .bearer_auth(&self.token)
            .json(&spec)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v: Value = self
                .http
                .get(self.url(&format!("/v1/deployments/{id}")))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            // Done when the record says so and the app takes the next deploy (the engine
            // clears its claim after removing old replicas and pruning, a moment later).
            let app: Value = self
                .http
                .get(self.url(&format!("/v1/apps/{}", self.app)))
                .bearer_auth(&self.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v["state"] != "running" && app["deploying"].is_null() {
                return v;
            }
            assert!(Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn body(&self) -> String {
        self.http
            .get(format!("http://{}/", self.running.http_addr))
            .header("host", format!("{}.test", self.app))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .trim()
            .to_string()
    }

    fn spec(&self, image: &str, extra: Value) -> Value {
        let mut s = json!({
            "image": image,
            "domains": [format!("{}.test", self.app)],
            "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
            "drain_timeout": "2s",
            "deploy_timeout": "30s",
        });
        if let (Value::Object(s), Value::Object(e)) = (&mut s, extra) {
            s.extend(e);
        }
        s
    }
}

fn rmi(reference: &str) {
    let _ = Command::new("docker").args(["rmi", reference]).output();
}

fn local_id(reference: &str) -> Option<String> {
    let o = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", reference])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// What the daemon's Docker has under `reference` must be what the registry served last.
fn assert_path_exists(p: &Path) {
    assert!(p.exists(), "{}", p.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_always_follows_a_moving_tag() {
    if skip() {
        return;
    }
    let reg = Registry::start();
    assert_path_exists(&reg.docker_config.join("config.json"));
    let w = World::start("pullalways").await;
    let latest = format!("{}/{}:latest", reg.addr, w.app);
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            rmi(&self.0);
        }
    }
    let _untag = Untag(latest.clone());
    // :latest is v1 in the registry and locally (the daemon's Docker is the CLI's).
    reg.push(IMG_V1, &latest);
    let v1 = w.deploy(w.spec(&latest, json!({}))).await;
    assert_eq!(v1["state"], "succeeded", "{v1}");
    assert_eq!(w.body().await, "v1");
    // The tag moves to v2 in the registry; the local :latest still names v1.
    reg.push(IMG_V2, &latest);
    reg.docker(&["tag", IMG_V1, &latest], None);
    assert_eq!(local_id(&latest), local_id(IMG_V1));
    // pull: missing (the default) keeps what is local...
    let kept = w.deploy(w.spec(&latest, json!({}))).await;
    assert_eq!(kept["state"], "succeeded", "{kept}");
    assert_eq!(w.body().await, "v1", "pull: missing uses the local image");
    // ...pull: always asks the registry; without credentials it is refused, clearly.
    let refused = w.deploy(w.spec(&latest, json!({"pull": "always"}))).await;
    assert_eq!(refused["state"], "failed", "{refused}");
    let reason = refused["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("auth") || reason.contains("unauthorized"),
        "the reason names the missing credentials: {reason}"
    );
    assert_eq!(w.body().await, "v1", "a refused pull changes nothing");
    // A wrong password: refused by the registry, named in the reason; nothing changes.
    let login = |password: &str| json!({"pull": "always", "registry": {"server": reg.addr, "username": "berth", "password": password}});
    let wrong = w.deploy(w.spec(&latest, login("not-the-password"))).await;
    assert_eq!(wrong["state"], "failed", "{wrong}");
    let reason = wrong["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("unauthorized") || reason.contains("authentication"),
        "{reason}"
    );
    assert_eq!(w.body().await, "v1");
    // The right one: the registry's current :latest (v2) is pulled and served.
    let pulled = w.deploy(w.spec(&latest, login("s3cret"))).await;
    assert_eq!(pulled["state"], "succeeded", "{pulled}");
    assert_eq!(w.body().await, "v2", "pull: always got the moved tag");
    assert_eq!(local_id(&latest), local_id(IMG_V2));
    // The password is used for the pull only: not stored, not shown.
    let listing = w
        .http
        .get(w.url(&format!("/v1/apps/{}/deployments", w.app)))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains(r#""username":"berth""#), "{listing}");
    assert!(!listing.contains("s3cret") && !listing.contains("not-the-password"));
    for f in ["berth.db", "berth.db-wal"] {
        let bytes = std::fs::read(w._dir.path().join(f)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("s3cret"), "{f} holds the registry password");
    }
}
