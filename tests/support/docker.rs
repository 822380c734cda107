//! Shared harness of the Docker system tests: gate on BERTH_SYSTEM_TESTS=1, make sure dockerd
//! runs, build the tiny busybox test images locally (never pulled), start the real proxy
//! in-process with the daemon's own route publisher (its registry), and remove every container and the network a
//! test created (all carry the label `berth.test.run=<run id>`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use berth::daemon::engine::RegistryRoutes;
use berth::daemon::Running;
use berth::deploy::{Engine, EngineConfig, ImageSource};
use berth::model::config::Config;
use berth::model::deploy::AppSpec;
use berth::runtime::DockerRuntime;
use berth::store::deployments::DeployState;
use berth::store::deployments::SqliteDeployments;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const IMG_V1: &str = "berth-test-demo:v1";
pub const IMG_V2: &str = "berth-test-demo:v2";
/// Serves `/` but not `/health`, and prints a line at start (checked in the abort reason).
pub const IMG_BAD: &str = "berth-test-demo:bad";

/// True (after printing the skip line) when system tests are off.
pub fn skip() -> bool {
    super::system_tests_off("")
}

/// The start of a Docker system test: false (after the skip line) when system tests are off;
/// otherwise dockerd runs and the test images exist ([`prepare`]).
pub fn docker_ready() -> bool {
    if skip() {
        return false;
    }
    prepare();
    true
}

/// The config of an in-process daemon that deploys with Docker: HTTP and API on loopback
/// ports the kernel picks, data in `data_dir`, no access log, deploys required on `network`,
/// 2 s stop grace.
pub fn deploy_config(data_dir: &std::path::Path, network: &str) -> Config {
    let mut c = Config {
        data_dir: data_dir.to_path_buf(),
        ..Default::default()
    };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.log.access_log = false;
    c.deploy.enabled = berth::model::config::DeployEnabled::Required;
    c.deploy.network = network.to_string();
    c.deploy.stop_grace = Duration::from_secs(2);
    c
}

/// Runs `cmd` with `sh -c`: (success, stdout + stderr).
pub fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("sh runs");
    let (code, text) = super::cli::text(out);
    (code == 0, text)
}

fn docker_up() -> bool {
    sh("docker info >/dev/null 2>&1").0
}

/// Starts dockerd (`--iptables=false`, as ENVIRONMENT.md says) if it is not running.
fn ensure_dockerd() {
    if docker_up() {
        return;
    }
    let (ok, out) = sh(
        "command -v dockerd >/dev/null || { echo 'dockerd missing: apt-get install docker.io'; exit 1; }
         (setsid dockerd --iptables=false >/tmp/berth-test-dockerd.log 2>&1 &)",
    );
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !docker_up() {
        assert!(
            Instant::now() < deadline,
            "dockerd did not come up; see /tmp/berth-test-dockerd.log"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Builds one image from a busybox rootfs with `docker import`, unless it exists.
fn build_image(tag: &str, index: &str, health: bool, banner: Option<&str>) {
    build_image_with(tag, index, health, banner, None)
}

/// A test image whose `/cgi-bin/app` runs `cgi` (a busybox `sh` script that prints the CGI
/// answer; `$RANDOM` works), with `/health`; built locally unless it exists.
pub fn build_cgi_image(tag: &str, index: &str, cgi: &str) {
    build_image_with(tag, index, true, None, Some(cgi))
}

fn build_image_with(tag: &str, index: &str, health: bool, banner: Option<&str>, cgi: Option<&str>) {
    if sh(&format!("docker image inspect {tag} >/dev/null 2>&1")).0 {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let r = root.as_path();
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::create_dir_all(r.join("www")).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox-static installed (apt-get install busybox-static)");
    std::fs::copy(busybox, r.join("bin/busybox")).unwrap();
    // `rm` and `cp`: tests turn a replica's health check off and on with `docker exec`.
    for l in ["sh", "httpd", "echo", "kill", "sleep", "cat", "rm", "cp"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(l)).unwrap();
    }
    if let Some(cgi) = cgi {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(r.join("www/cgi-bin")).unwrap();
        let path = r.join("www/cgi-bin/app");
        std::fs::write(&path, format!("#!/bin/sh\n{cgi}")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(r.join("www/index.html"), index).unwrap();
    if health {
        std::fs::write(r.join("www/health"), "ok\n").unwrap();
    }
    // httpd as a child of sh so SIGTERM ends it (PID 1 ignores unhandled signals).
    let banner = banner.map(|b| format!("echo {b}; ")).unwrap_or_default();
    let script = format!(
        "{banner}trap 'kill $P; exit 0' TERM; /bin/httpd -f -p 8080 -h /www & P=$!; wait $P"
    );
    let cmd = serde_json::to_string(&["/bin/sh", "-c", &script]).unwrap();
    let tar = dir.path().join("rootfs.tar");
    let (ok, out) = sh(&format!("tar -C {} -cf {} .", r.display(), tar.display()));
    assert!(ok, "tar: {out}");
    let o = Command::new("docker")
        .arg("import")
        .arg("-c")
        .arg(format!("CMD {cmd}"))
        .arg("-c")
        .arg("LABEL berth.test=1")
        .arg(&tar)
        .arg(tag)
        .output()
        .expect("docker runs");
    let (ok, out) = (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(ok, "docker import {tag}: {out}");
}

/// dockerd running and the three test images present (once per process).
pub fn prepare() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        ensure_dockerd();
        build_image(IMG_V1, "v1\n", true, None);
        build_image(IMG_V2, "v2\n", true, None);
        build_image(IMG_BAD, "bad\n", false, Some("bad-build-starting"));
    });
}

/// One answer through the proxy ([`Env::request`]).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The body, trimmed.
    pub body: String,
    /// The whole `Set-Cookie` header, if any.
    pub set_cookie: Option<String>,
}

/// One test's world: its own network, database, proxy and cleanup label.
pub struct Env {
    pub run: String,
    pub network: String,
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub daemon: Option<Running>,
    pub publisher: Arc<RegistryRoutes>,
    pub rt: Arc<DockerRuntime>,
    pub http: Client<HttpConnector, Empty<Bytes>>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Env {
    pub async fn new(name: &str) -> Env {
        prepare();
        let run = format!(
            "{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let network = format!("berth-test-{run}");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("berth.db");
        let mut cfg = Config::default();
        cfg.http.listen = "127.0.0.1:0".parse().unwrap();
        // Own API port and berth.db per test daemon (not 9922 and /var/lib/berth).
        cfg.api.listen = "127.0.0.1:0".parse().unwrap();
        cfg.data_dir = dir.path().to_path_buf();
        cfg.log.access_log = false;
        let daemon = berth::daemon::start(cfg, None).await.expect("proxy starts");
        let publisher = Arc::new(RegistryRoutes(daemon.registry.clone()));
        let rt = Arc::new(
            DockerRuntime::connect(&network)
                .await
                .expect("docker connects"),
        );
        // Label the network for cleanup: create it here with the test label.
        let (ok, out) = sh(&format!(
            "docker network create --label berth.test.run={run} {network}"
        ));
        assert!(ok, "{out}");
        let mut http = Client::builder(TokioExecutor::new());
        http.pool_idle_timeout(Duration::from_secs(5));
        Env {
            run,
            network,
            dir,
            db,
            daemon: Some(daemon),
            publisher,
            rt,
            http: http.build_http(),
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.daemon.as_ref().unwrap().http_addr
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            stop_grace: Duration::from_secs(5),
            extra_labels: HashMap::from([("berth.test.run".to_string(), self.run.clone())]),
            discovery_health_timeout: Duration::from_secs(20),
            ..EngineConfig::default()
        }
    }

    /// A new engine on this test's database (what a restarted berthd does), once its
    /// background reconcile is done.
    pub async fn engine(&self) -> Engine {
        let e = self.engine_with(self.engine_config()).await;
        e.reconciled().await;
        e
    }

    /// A new engine as `Engine::start` returns it: routes published, reconcile running.
    pub async fn engine_with(&self, cfg: EngineConfig) -> Engine {
        let store = Arc::new(SqliteDeployments::open(&self.db).expect("db opens"));
        Engine::start(self.rt.clone(), store, self.publisher.clone(), cfg)
            .await
            .expect("engine starts")
    }

    pub fn spec(&self, image: &str, replicas: u32, domain: &str) -> AppSpec {
        serde_json::from_value(serde_json::json!({
            "image": image,
            "domains": [domain],
            "replicas": replicas,
            "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
            "drain_timeout": "5s",
            "deploy_timeout": "20s",
        }))
        .expect("spec")
    }

    /// Deploys `replicas` of `image` as `app` on `host` (the spec of [`Env::spec`]) and waits,
    /// 120 s at most, until it succeeded; returns the deployment id.
    pub async fn deploy_ok(
        &self,
        engine: &Engine,
        app: &str,
        image: &str,
        replicas: u32,
        host: &str,
    ) -> String {
        let spec = self.spec(image, replicas, host);
        let id = engine
            .deploy(app, spec, reference(image), "test")
            .await
            .unwrap_or_else(|e| panic!("deploy {app} {image}: {e}"));
        let r = tokio::time::timeout(Duration::from_secs(120), engine.wait(&id))
            .await
            .unwrap_or_else(|_| panic!("deploy {id} of {app} did not finish within 120 s"))
            .unwrap();
        assert_eq!(r.state, DeployState::Succeeded, "{:?}", r.reason);
        id
    }

    /// GET through the proxy: (status, body) or the transport error.
    pub async fn get(&self, host: &str) -> Result<(u16, String), String> {
        let a = self.request(host, "/", None).await?;
        Ok((a.status, a.body))
    }

    /// GET `path` for `host` through the proxy with the shared keep-alive client and an
    /// optional Cookie header; 10 s at most. Errors: "timeout" or the transport's text.
    pub async fn request(
        &self,
        host: &str,
        path: &str,
        cookie: Option<&str>,
    ) -> Result<Answer, String> {
        let mut req = http::Request::get(format!("http://{}{path}", self.http_addr()))
            .header(http::header::HOST, host);
        if let Some(c) = cookie {
            req = req.header(http::header::COOKIE, c);
        }
        let req = req.body(Empty::<Bytes>::new()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), self.http.request(req))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let set_cookie = resp
            .headers()
            .get(http::header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
            set_cookie,
        })
    }

    /// Polls `host` until the body is `want` (status 200) or the deadline passes.
    pub async fn wait_body(&self, host: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.get(host).await;
            if matches!(&got, Ok((200, b)) if b == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: waited for {want:?}, last {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Containers of this test (running or not): (name, labels, running).
    pub fn containers(&self, app: &str) -> Vec<(String, HashMap<String, String>, bool)> {
        // `ps` then `inspect` races with a removal (self-healing, a deploy's cleanup): a
        // container gone in between fails the inspect with "No such object"; list again.
        let mut tries = 0;
        let out = loop {
            let (ok, out) = sh(&format!(
                "docker ps -aq --filter label=berth.test.run={} --filter label=berth.app={app} | xargs -r docker inspect",
                self.run
            ));
            if ok {
                break out;
            }
            tries += 1;
            assert!(tries < 10 && out.contains("No such object"), "{out}");
        };
        let v: serde_json::Value = if out.trim().is_empty() {
            serde_json::json!([])
        } else {
            serde_json::from_str(&out).expect("docker inspect json")
        };
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let labels: HashMap<String, String> =
                    serde_json::from_value(c["Config"]["Labels"].clone()).unwrap_or_default();
                (
                    c["Name"].as_str().unwrap_or("").to_string(),
                    labels,
                    c["State"]["Running"].as_bool().unwrap_or(false),
                )
            })
            .collect()
    }

    /// Runs a docker CLI command (hand-started containers).
    pub fn docker(&self, args: &str) -> String {
        let (ok, out) = sh(&format!("docker {args}"));
        assert!(ok, "docker {args}: {out}");
        out.trim().to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "docker ps -aq --filter label=berth.test.run={} | xargs -r docker rm -f >/dev/null 2>&1; docker network rm {} >/dev/null 2>&1",
            self.run, self.network
        ));
    }
}

/// A local test image by reference (no registry credentials).
pub fn reference(image: &str) -> ImageSource {
    ImageSource::Reference {
        reference: image.to_string(),
        creds: None,
    }
}

/// Containers of `app` (label `berth.app`, running or not), for tests with a berthd of their
/// own: (id, `berth.deployment` label, running). One listing: `ps` then `inspect` would race
/// with a container's removal.
pub fn app_containers(app: &str) -> Vec<(String, String, bool)> {
    let (ok, out) = sh(&format!(
        "docker ps -a --no-trunc --filter label=berth.app={app} \
         --format '{{{{.ID}}}} {{{{.Label \"berth.deployment\"}}}} {{{{.State}}}}'"
    ));
    assert!(ok, "{out}");
    out.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.to_string(),
                p.next()?.to_string(),
                p.next()? == "running",
            ))
        })
        .collect()
}

/// Writes `dir/berth.yaml` for `app`: `source` (an `image: ...` or `build: ...` line), the one
/// domain `host`, port 8080, `replicas`, the test images' health check (`/health` every 100 ms,
/// 1 s timeout), then `extra` (more YAML lines, each ending in a newline).
pub fn write_app_file(
    dir: &std::path::Path,
    app: &str,
    source: &str,
    host: &str,
    replicas: u32,
    extra: &str,
) {
    std::fs::write(
        dir.join("berth.yaml"),
        format!(
            "name: {app}\n{source}\ndomains: [{host}]\nport: 8080\nreplicas: {replicas}\n\
             health:\n  path: /health\n  interval: 100ms\n  timeout: 1s\n{extra}"
        ),
    )
    .expect("write berth.yaml");
}

/// For tests that run the real `berth` CLI against a daemon of their own (whose containers
/// carry `berth.app=<app>`, not the run label): removes the app's containers, the network and
/// images built under the app's name, also when an assertion fails.
pub struct Cleanup {
    pub app: String,
    pub network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "docker ps -aq --filter label=berth.app={0} | xargs -r docker rm -f >/dev/null 2>&1; \
             docker network rm {1} >/dev/null 2>&1; \
             docker images -q {0} | xargs -r docker rmi -f >/dev/null 2>&1",
            self.app, self.network
        ));
    }
}

/// A bounded loop (a test's load: its own bounds in count and time) running as a task until
/// [`Background::finish`] sets its stop flag and collects what it returned.
pub struct Background<T> {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<T>,
}

impl<T: Send + 'static> Background<T> {
    /// Spawns `run(stop)`; the loop checks `stop` between requests.
    pub fn start<F, Fut>(run: F) -> Background<T>
    where
        F: FnOnce(Arc<std::sync::atomic::AtomicBool>) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
    {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(run(stop.clone()));
        Background { stop, task }
    }

    /// Stops the loop and returns what it saw.
    pub async fn finish(self) -> T {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("load loop")
    }
}

/// A bounded load loop ([`load`]) running in the background until [`Loader::finish`].
pub struct Loader(Background<Load>);

impl Loader {
    /// Starts [`load`] against `host`: `workers` tasks, at most `max` requests and `max_time`.
    pub fn start(
        env: &Arc<Env>,
        host: &'static str,
        workers: usize,
        max: u64,
        max_time: Duration,
    ) -> Loader {
        Loader(Background::start(|stop| {
            load(env.clone(), host, workers, max, max_time, stop)
        }))
    }

    /// Stops the loop and returns what it saw.
    pub async fn finish(self) -> Load {
        self.0.finish().await
    }
}

/// Result of a bounded load loop.
#[derive(Debug, Default)]
pub struct Load {
    pub ok: HashMap<String, u64>,
    pub failed: Vec<String>,
}

/// Sends requests from `workers` tasks until `stop` is set, at most `max` requests in all
/// and at most `max_time`.
pub async fn load(
    env: Arc<Env>,
    host: &'static str,
    workers: usize,
    max: u64,
    max_time: Duration,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Load {
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + max_time;
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (env, stop, sent) = (env.clone(), stop.clone(), sent.clone());
        handles.push(tokio::spawn(async move {
            let mut l = Load::default();
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && sent.fetch_add(1, Ordering::Relaxed) < max
            {
                match env.get(host).await {
                    Ok((200, body)) => *l.ok.entry(body).or_default() += 1,
                    other => l.failed.push(format!("{other:?}")),
                }
            }
            l
        }));
    }
    let mut all = Load::default();
    for h in handles {
        let l = h.await.expect("load worker");
        for (k, v) in l.ok {
            *all.ok.entry(k).or_default() += v;
        }
        all.failed.extend(l.failed);
    }
    all
}
