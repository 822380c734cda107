//! Issue 19 drills with a real `berthd` process and a real dockerd (BERTH_SYSTEM_TESTS=1):
//! - the store loses its last commits (`kill -9`, then the `-wal` file deleted): what runs is
//!   kept and routed (adopted, reported at ERROR), nothing is removed or recreated;
//! - `berthd backup` while berthd runs, and the copy is a consistent database;
//! - an unhealthy replica present at start: a healthy app is served within a second of the
//!   process start, status follows the proxy's health, reconcile replaces the bad replica.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::berthd::BerthdProcess;
use crate::support::docker::{app_containers as containers, prepare, sh, skip, Cleanup};
use crate::support::docker::{IMG_V1, IMG_V2};

/// A berthd process on fixed loopback ports (the same across restarts) deploying on
/// `network`, with a token; the apps' containers are removed after berthd is killed.
fn world(apps: &[&str], network: &str) -> BerthdProcess {
    prepare();
    let mut w = BerthdProcess::new(&format!(
        "deploy:\n  enabled: required\n  network: {network}\n  stop_grace: 2s\n"
    ));
    w.new_token();
    w.cleanup = apps
        .iter()
        .map(|a| Cleanup {
            app: a.to_string(),
            network: network.to_string(),
        })
        .collect();
    w
}

/// Deploys and waits for the outcome; returns the deployment id.
async fn deploy(w: &BerthdProcess, app: &str, image: &str, replicas: u32) -> String {
    let spec = serde_json::json!({
        "image": image, "domains": [format!("{app}.test")], "replicas": replicas,
        "health": {"path": "/health", "interval": "200ms", "timeout": "1s"},
        "drain_timeout": "2s", "deploy_timeout": "20s",
    });
    // Right after a start, an app the store knows takes deploys once it is reconciled
    // (409 `reconcile after start` until then).
    let deadline = Instant::now() + Duration::from_secs(60);
    let v = loop {
        let (status, v) = w
            .api_call(
                reqwest::Method::POST,
                &format!("/v1/apps/{app}/deploy"),
                Some(spec.clone()),
            )
            .await;
        if status == 409 && v["error"]["deployment"] == "reconcile after start" {
            assert!(Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        assert_eq!(status, 202, "{v}");
        break v;
    };
    let id = v["deployment"]
        .as_str()
        .or_else(|| v["id"].as_str())
        .unwrap_or_else(|| panic!("deployment id in {v}"))
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, d) = w
            .api_call(reqwest::Method::GET, &format!("/v1/deployments/{id}"), None)
            .await;
        match d["state"].as_str() {
            Some("succeeded") => return id,
            Some("failed") => panic!("deploy {id} failed: {d}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "deploy {id} did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// berthd's log messages as `+MS message` lines, MS since `since`: where a start spent its time.
fn timeline(w: &BerthdProcess, since: std::time::SystemTime) -> String {
    let logs = w.logs.lock().unwrap();
    let lines = logs.iter().filter_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let at = humantime::parse_rfc3339(v["timestamp"].as_str()?).ok()?;
        let ms = at.duration_since(since).map_or(0, |d| d.as_millis());
        Some(format!(
            "+{ms}ms {}",
            v["fields"]["message"].as_str().unwrap_or("")
        ))
    });
    lines.collect::<Vec<_>>().join("\n")
}

/// GET `/` for `host` through the proxy (a new client, 5 s).
async fn get(w: &BerthdProcess, host: &str) -> Result<(u16, String), String> {
    w.get(&reqwest::Client::new(), host, Duration::from_secs(5))
        .await
}

/// Polls `host` until it answers 200 with `want`, within `within`.
async fn wait_body(w: &BerthdProcess, host: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = get(w, host).await;
        if matches!(&got, Ok((200, b)) if b == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host}: waited for {want:?}, last {got:?}; logs: {:?}",
            w.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn remove_wal(data: &Path) {
    for ext in ["-wal", "-shm"] {
        let p = data.join(format!("berth.db{ext}"));
        if p.exists() {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// The drill of issue 19.1: deploy v1 (checkpointed by a clean stop), then v2 of app A and a
/// new app B; `kill -9`; delete `berth.db-wal`; start. Before the fix, reconcile removed the
/// v2 containers and recreated v1, and B answered 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn wal_loss_after_kill_9_keeps_and_routes_what_runs() {
    if skip() {
        return;
    }
    let pid = std::process::id();
    let (a, b) = (format!("wala{pid}"), format!("walb{pid}"));
    let network = format!("berth-t-wal{pid}");
    let mut w = world(&[&a, &b], &network);
    w.start();
    let v1 = deploy(&w, &a, IMG_V1, 2).await;
    wait_body(&w, &format!("{a}.test"), "v1", Duration::from_secs(10)).await;
    w.terminate();
    // With berthd stopped, the last connection to close checkpoints the WAL into berth.db:
    // v1 is in the main file from now on (as after any SQLite auto-checkpoint).
    drop(berth::store::Store::open(&w.data()).unwrap());
    assert!(!w.data().join("berth.db-wal").exists());
    w.start();
    wait_body(&w, &format!("{a}.test"), "v1", Duration::from_secs(20)).await;

    // `berthd backup` while berthd runs: a consistent copy that knows v1.
    let backup = w.dir.path().join("backup.db");
    let (ok, out) = w.ctl(&["backup", backup.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("quick_check ok"), "{out}");
    {
        use berth::store::deployments::DeploymentStore;
        let copy = berth::store::deployments::SqliteDeployments::open(&backup).unwrap();
        assert_eq!(copy.current(&a).unwrap().unwrap().id, v1);
    }

    let v2 = deploy(&w, &a, IMG_V2, 2).await;
    let b1 = deploy(&w, &b, IMG_V1, 1).await;
    wait_body(&w, &format!("{a}.test"), "v2", Duration::from_secs(10)).await;
    wait_body(&w, &format!("{b}.test"), "v1", Duration::from_secs(10)).await;
    let v2_ids: Vec<String> = containers(&a)
        .into_iter()
        .filter(|c| c.1 == v2 && c.2)
        .map(|c| c.0)
        .collect();
    assert_eq!(v2_ids.len(), 2);

    w.kill_9();
    assert!(
        w.data().join("berth.db-wal").exists(),
        "the last commits are in the WAL"
    );
    remove_wal(&w.data());
    w.start();
    // The token lived in the lost commits too (it was created before the first start, so
    // it survived); make sure we can talk to the API either way.
    w.new_token();
    wait_body(&w, &format!("{a}.test"), "v2", Duration::from_secs(5)).await;
    wait_body(&w, &format!("{b}.test"), "v1", Duration::from_secs(5)).await;
    // Reconcile done: still v2, nothing of A removed or recreated, B still routed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.logged("reconcile done").is_none() {
        assert!(Instant::now() < deadline, "{:?}", w.logs.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = containers(&a);
    assert_eq!(
        now.iter()
            .filter(|c| c.2)
            .map(|c| c.0.clone())
            .collect::<Vec<_>>()
            .len(),
        2,
        "{now:?}"
    );
    for id in &v2_ids {
        assert!(
            now.iter().any(|c| &c.0 == id && c.2),
            "v2 {id} kept: {now:?}"
        );
    }
    assert!(!now.iter().any(|c| c.1 == v1), "v1 not recreated: {now:?}");
    for _ in 0..20 {
        assert_eq!(get(&w, &format!("{a}.test")).await, Ok((200, "v2".into())));
        assert_eq!(get(&w, &format!("{b}.test")).await, Ok((200, "v1".into())));
    }
    let line = w.logged("store is behind").expect("loud log line");
    assert!(line.contains("\"ERROR\""), "{line}");
    assert!(line.contains(&v2) || w.logged(&v2).is_some(), "{line}");
    assert!(w.logged(&b1).is_some());
    let (_, app) = w
        .api_call(reqwest::Method::GET, &format!("/v1/apps/{a}"), None)
        .await;
    assert!(app["adopted"].is_string(), "{app}");

    // A deploy makes the store current again.
    let v3 = deploy(&w, &a, IMG_V1, 2).await;
    wait_body(&w, &format!("{a}.test"), "v1", Duration::from_secs(10)).await;
    // The replaced containers are removed right after the outcome is stored.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = containers(&a);
        if now.iter().all(|c| c.1 == v3) {
            break;
        }
        assert!(Instant::now() < deadline, "{now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.terminate();
}

/// Issue 19.2: with an unhealthy replica present, a restarted berthd serves a healthy app
/// within a second of the process start; status reports the proxy's health; reconcile
/// replaces the unhealthy replica in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn start_serves_within_a_second_with_an_unhealthy_replica() {
    if skip() {
        return;
    }
    let pid = std::process::id();
    let (h, g) = (format!("sick{pid}"), format!("fine{pid}"));
    let network = format!("berth-t-sick{pid}");
    let mut w = world(&[&h, &g], &network);
    w.start();
    let dh = deploy(&w, &h, IMG_V1, 2).await;
    deploy(&w, &g, IMG_V2, 1).await;
    w.terminate();
    // One replica of `sick` fails its health check from now on (it still serves `/`).
    let sick: Vec<(String, String, bool)> = containers(&h);
    let bad = sick.iter().find(|c| c.1 == dh).unwrap().0.clone();
    let (ok, out) = sh(&format!("docker exec {bad} /bin/busybox rm /www/health"));
    assert!(ok, "{out}");

    let spawned_at = std::time::SystemTime::now();
    let t0 = w.spawn();
    let served = loop {
        if let Ok((200, body)) = get(&w, &format!("{g}.test")).await {
            assert_eq!(body, "v2");
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{:?}",
            w.logs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let phases = timeline(&w, spawned_at);
    println!("start to first served request: {served:?}; berthd's log since the spawn:\n{phases}");
    assert!(
        served < Duration::from_secs(1),
        "took {served:?}:\n{phases}"
    );
    // `sick` serves too (its healthy replica) at once.
    wait_body(&w, &format!("{h}.test"), "v1", Duration::from_secs(1)).await;

    // Status follows the proxy: never 2/2 while a replica fails its checks; then reconcile
    // replaces the bad replica and it is 2/2 again, with the bad container gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, app) = w
            .api_call(reqwest::Method::GET, &format!("/v1/apps/{h}"), None)
            .await;
        let bad_routed = app["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["container_id"].as_str() == Some(bad.as_str()) && r["routed"] == true);
        let bad_unhealthy = app["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["container_id"].as_str() == Some(bad.as_str()) && r["healthy"] == false);
        assert!(!(bad_routed && bad_unhealthy), "{app}");
        let gone = !containers(&h).iter().any(|c| c.0 == bad);
        if gone && app["ready"] == "2/2" {
            break;
        }
        assert!(Instant::now() < deadline, "not replaced: {app}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.terminate();
}

/// SIGTERM while reconcile still health-gates a replica: berthd exits 0 and leaves what runs as
/// it runs. The engine's tasks end before the runtime's teardown; before, they ran into it:
/// every Docker call and health probe failed ("... replacing it") and the next timer panicked
/// ("A Tokio 1.x context was found, but it is being shutdown"; seen in the secrets test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn a_stop_during_reconcile_exits_cleanly_and_keeps_what_runs() {
    if skip() {
        return;
    }
    let pid = std::process::id();
    let app = format!("stopmid{pid}");
    let network = format!("berth-t-stopmid{pid}");
    let mut w = world(&[&app], &network);
    w.start();
    let d = deploy(&w, &app, IMG_V1, 1).await;
    w.terminate();
    let replica = containers(&app).into_iter().find(|c| c.1 == d).unwrap().0;
    // Its health check fails from now on: reconcile gates it for the deploy timeout (20 s).
    let (ok, out) = sh(&format!(
        "docker exec {replica} /bin/busybox rm /www/health"
    ));
    assert!(ok, "{out}");

    // Its own berthd (stderr to a file: complete once the process has exited), killed by
    // `w` if the test fails first.
    let log = w.dir.path().join("stop.log");
    let child = std::process::Command::new(crate::support::BERTHD)
        .arg("--config")
        .arg(&w.config)
        .args(["--log-format", "json"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    w.child = Some(child);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text().contains("control socket ready") {
        assert!(
            Instant::now() < deadline,
            "berthd did not start:\n{}",
            text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !text().contains("reconcile done"),
        "stopped too late:\n{}",
        text()
    );
    // SAFETY: kill(2) on our own child, not yet waited for.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = w.child.as_mut().unwrap().wait().unwrap();
    w.child = None;
    let text = text();
    assert!(status.success(), "{status}:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("replacing it"), "{text}");
    let now = containers(&app);
    assert!(
        now.iter().any(|c| c.0 == replica && c.2),
        "the replica runs on: {now:?}\n{text}"
    );
}

/// Issue 19.3: a data dir that cannot be opened (here: it is a file) stops changes, not the
/// routes. Runs always (no Docker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unopenable_data_dir_still_serves_config_routes() {
    use berth::store::registry::{ChangeError, RouteChange};
    use berth::store::{RouteSource, StoreError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = backend.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nstatic",
                    )
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(&data, "a file where the data dir should be").unwrap();
    let mut cfg = berth::model::config::Config {
        data_dir: data,
        ..Default::default()
    };
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.api.listen = "127.0.0.1:0".parse().unwrap();
    cfg.log.access_log = false;
    // `auto`: with Docker the engine starts in its degraded mode (no secrets key, no
    // deploys), without it berthd runs without an engine; either way the routes serve.
    cfg.deploy.enabled = berth::model::config::DeployEnabled::Auto;
    cfg.routes = vec![serde_json::from_value(serde_json::json!({
        "name": "static", "domains": ["static.test"],
        "backends": [{"address": backend_addr.to_string()}],
    }))
    .unwrap()];
    let running = berth::daemon::start(cfg, None)
        .await
        .expect("berthd starts without a usable data dir");
    let problem = running
        .store_problem
        .clone()
        .expect("the problem is reported");
    assert!(problem.contains("data dir"), "{problem}");
    let resp = reqwest::Client::new()
        .get(format!("http://{}/", running.http_addr))
        .header("host", "static.test")
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.unwrap(), "static");
    let err = running
        .registry
        .apply(RouteChange::PutRoute {
            name: "new".into(),
            source: RouteSource::Api,
            spec: serde_json::from_value(serde_json::json!({"domains": ["new.test"]})).unwrap(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChangeError::Store(StoreError::Unavailable(m)) if m.contains("data dir")),
        "{err}"
    );
    assert!(
        running.registry.route("new").is_none(),
        "nothing half-applied"
    );
    // `/metrics` says so (no token needed by default): the gauge and the reason.
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", running.api_addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("\nberth_store_up 0\n"), "{metrics}");
    let reason = metrics
        .lines()
        .find(|l| l.starts_with("berth_store_problem{reason=\""))
        .unwrap_or_else(|| panic!("no berth_store_problem in {metrics}"));
    assert!(
        reason.contains("data dir") && reason.ends_with("} 1"),
        "{reason}"
    );
    running.shutdown().await;
}

/// Issue 19.3: a store that takes no writes but whose last state is readable (here the
/// `-shm` file cannot be created): the status page's data (`/v1/stats`, with a token from
/// that state) and `/metrics` report it, `berthd status` too; a healthy store says `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_store_shows_on_the_status_page_and_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = {
        let store = berth::store::Store::open(&data).unwrap();
        store.create_token("ops").unwrap().1
    };
    let start = |data: PathBuf| async move {
        let mut cfg = berth::model::config::Config {
            data_dir: data,
            ..Default::default()
        };
        cfg.http.listen = "127.0.0.1:0".parse().unwrap();
        cfg.api.listen = "127.0.0.1:0".parse().unwrap();
        cfg.log.access_log = false;
        cfg.deploy.enabled = berth::model::config::DeployEnabled::Off;
        berth::daemon::start(cfg, None)
            .await
            .expect("berthd starts")
    };
    let get = |addr: SocketAddr, path: &'static str, token: String| async move {
        let resp = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp.text().await.unwrap()
    };

    // Healthy first: ok, and the gauge is 1.
    let running = start(data.clone()).await;
    assert_eq!(running.store_problem, None);
    let stats: serde_json::Value =
        serde_json::from_str(&get(running.api_addr, "/v1/stats", token.clone()).await).unwrap();
    assert_eq!(stats["store"], serde_json::json!({"ok": true}), "{stats}");
    let metrics = get(running.api_addr, "/metrics", token.clone()).await;
    assert!(metrics.contains("\nberth_store_up 1\n"), "{metrics}");
    assert!(!metrics.contains("berth_store_problem{"), "{metrics}");
    running.shutdown().await;

    // Then the database cannot be opened for writing.
    std::fs::create_dir(data.join("berth.db-shm")).unwrap();
    let running = start(data.clone()).await;
    let problem = running.store_problem.clone().expect("reported");
    let stats: serde_json::Value =
        serde_json::from_str(&get(running.api_addr, "/v1/stats", token.clone()).await).unwrap();
    assert_eq!(stats["store"]["ok"], false, "{stats}");
    assert_eq!(stats["store"]["problem"], problem.as_str(), "{stats}");
    let metrics = get(running.api_addr, "/metrics", token.clone()).await;
    assert!(metrics.contains("\nberth_store_up 0\n"), "{metrics}");
    assert!(
        metrics.contains("berth_store_problem{reason=\""),
        "{metrics}"
    );
    // The status page renders that field as its banner.
    let js = get(running.api_addr, "/ui/app.js", token.clone()).await;
    assert!(
        js.contains("store-banner") && js.contains("Store DEGRADED"),
        "app.js"
    );
    running.shutdown().await;
}
