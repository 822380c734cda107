//! Issue 19.4 drills with real `berthd` processes, the real `berth` CLI and a real dockerd
//! (BERTH_SYSTEM_TESTS=1):
//! - ten `berthd upgrade`s (the last one twice in a row), each in the middle of a rolling
//!   deploy followed by `berth deploy`,
//!   under a bounded request loop (keep-alive and new connections): no request fails, every
//!   deploy is handed over, resumed by the new process and `succeeded`, `berth deploy` follows
//!   it across the upgrade and exits 0, the app ends at its replica count with no orphans;
//! - `kill -9` of berthd mid-deploy, then a start: the deploy is rolled back cleanly, `berth
//!   deploy` reconnects and exits with its real outcome, nothing is left over.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::berthd::BerthdProcess;
use crate::support::docker::{app_containers as containers, prepare, skip, Cleanup};
use crate::support::docker::{IMG_V1, IMG_V2};
use crate::support::pid_alive;

/// A berthd on fixed loopback ports (the app's containers are removed after it is killed), a
/// `berth` CLI configured for it, an app file.
struct World {
    d: BerthdProcess,
    app: String,
}

impl std::ops::Deref for World {
    type Target = BerthdProcess;
    fn deref(&self) -> &BerthdProcess {
        &self.d
    }
}

impl std::ops::DerefMut for World {
    fn deref_mut(&mut self) -> &mut BerthdProcess {
        &mut self.d
    }
}

impl World {
    fn new(app: &str) -> World {
        prepare();
        let network = format!("berth-test-{app}-{}", std::process::id());
        let mut d = BerthdProcess::new(&format!(
            "proxy:\n  timeouts:\n    drain: 3s\ndeploy:\n  enabled: required\n  network: \
             {network}\n  stop_grace: 2s\n"
        ));
        d.api_timeout = Duration::from_secs(10);
        d.new_token();
        d.cleanup.push(Cleanup {
            app: app.to_string(),
            network,
        });
        World {
            d,
            app: app.to_string(),
        }
    }

    /// A started daemon (see [`World::new`]) with the app's first deploy (v1) done.
    fn with_v1(app: &str) -> World {
        let mut w = World::new(app);
        w.start();
        w.write_app_file(IMG_V1);
        let out = w.berth().arg("deploy").output().unwrap();
        assert!(out.status.success(), "first deploy: {out:?}");
        w
    }

    fn host(&self) -> String {
        format!("{}.test", self.app)
    }

    fn berth(&self) -> Command {
        support::cli::command(&self.dir.path().join("cli.toml"), self.dir.path(), &[])
    }

    /// A rolling deploy of `image` with 2 replicas and a 1 s `min_ready` per replica (so an
    /// upgrade has a deploy to land in the middle of).
    fn write_app_file(&self, image: &str) {
        std::fs::write(
            self.dir.path().join("berth.yaml"),
            format!(
                "name: {}\nimage: {image}\ndomains: [{}]\nport: 8080\nreplicas: 2\n\
                 strategy: rolling\nmin_ready: 1s\ndrain_timeout: 2s\ndeploy_timeout: 30s\n\
                 health:\n  path: /health\n  interval: 100ms\n  timeout: 3s\n",
                self.app,
                self.host()
            ),
        )
        .unwrap();
    }

    fn start(&mut self) {
        self.d.start();
        if !self.dir.path().join("cli.toml").exists() {
            // `berth server add` checks that berthd answers.
            let out = self
                .berth()
                .args(["server", "add", "local", &format!("http://{}", self.api)])
                .args(["--token", &self.token])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    }

    async fn api_get(&self, path: &str) -> serde_json::Value {
        self.api_call(reqwest::Method::GET, path, None).await.1
    }

    /// Starts `berth deploy` in the background; its output lines go to the returned channel.
    fn spawn_deploy(&self) -> (Child, std::sync::mpsc::Receiver<String>) {
        let mut child = self
            .berth()
            .arg("deploy")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        (child, rx)
    }

    async fn get(&self, client: &reqwest::Client) -> Result<(u16, String), String> {
        self.d
            .get(client, &self.host(), Duration::from_secs(10))
            .await
    }
}

/// Waits for a line containing `needle` from a `berth deploy`; returns the lines read.
fn wait_line(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(needle);
                lines.push(l);
                if hit {
                    return lines;
                }
            }
            Err(_) => panic!("no {needle:?} from berth deploy within {within:?}: {lines:#?}"),
        }
    }
}

/// Waits for the CLI to exit; returns (exit code, remaining output).
fn finish(
    mut child: Child,
    rx: &std::sync::mpsc::Receiver<String>,
    within: Duration,
) -> (i32, Vec<String>) {
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let rest: Vec<String> = rx.try_iter().collect();
            panic!("berth deploy did not finish within {within:?}: {rest:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(100));
    (code, rx.try_iter().collect())
}

/// Result of the bounded load loop.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

/// `workers` keep-alive clients and `workers` new-connection-per-request clients, until
/// `stop`, at most `max` requests and `max_time`.
fn load(
    w: &Arc<World>,
    workers: usize,
    max: u64,
    max_time: Duration,
    stop: Arc<AtomicBool>,
) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let stats = Arc::new(Load::default());
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + max_time;
    let mut handles = Vec::new();
    for i in 0..workers * 2 {
        let client = if i % 2 == 0 {
            reqwest::Client::new()
        } else {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap()
        };
        let (w, stop, sent, stats) = (w.clone(), stop.clone(), sent.clone(), stats.clone());
        handles.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && sent.fetch_add(1, Ordering::Relaxed) < max
            {
                match w.get(&client).await {
                    Ok((200, b)) if b == "v1" || b == "v2" => {
                        stats.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        let at = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64());
                        stats
                            .failed
                            .lock()
                            .unwrap()
                            .push(format!("at {at:.3}: {other:?}"))
                    }
                }
            }
        }));
    }
    (stats, handles)
}

/// Checks the app runs exactly `replicas` containers, all of deployment `id`, and nothing
/// else (no orphans).
fn assert_runs_only(app: &str, id: &str, replicas: usize) {
    // Old replicas are removed right after the outcome is recorded: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cs = containers(app);
        let ok = cs.len() == replicas && cs.iter().all(|(_, d, running)| d == id && *running);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "app {app} should run {replicas} replicas of {id} and nothing else: {cs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn deployment_id(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        l.split(|c: char| !c.is_ascii_alphanumeric())
            .find(|t| t.len() == 17 && t.starts_with('d'))
            .map(str::to_string)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn ten_upgrades_mid_rolling_deploy_under_load() {
    if skip() {
        return;
    }
    let w = World::with_v1("upgmid");
    let w = Arc::new(w);

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let (stats, handles) = load(&w, 3, 400_000, Duration::from_secs(600), stop.clone());
    let mut pids = vec![w.current_pid().expect("status")];
    let mut succeeded = 0;
    for i in 0..10 {
        let image = if i % 2 == 0 { IMG_V2 } else { IMG_V1 };
        w.write_app_file(image);
        let (child, rx) = w.spawn_deploy();
        // Mid-deploy: the first new replica takes traffic, the old ones are still there.
        let mut lines = wait_line(&rx, "routed", Duration::from_secs(60));
        let (ok, out) = w.ctl(&["upgrade"]);
        assert!(ok, "upgrade {i}: {out}");
        let pid: u32 = out
            .split_whitespace()
            .nth(2)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("upgrade {i}: {out}"));
        pids.push(pid);
        if i == 9 {
            // The last one twice in a row: the new process is upgraded again while it still
            // waits for its predecessor to exit; it passes the deploy on untouched.
            let (ok, out) = w.ctl(&["upgrade"]);
            assert!(ok, "second upgrade {i}: {out}");
            pids.push(
                out.split_whitespace()
                    .nth(2)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("upgrade {i}: {out}")),
            );
        }
        let (code, rest) = finish(child, &rx, Duration::from_secs(120));
        lines.extend(rest);
        let text = lines.join("\n");
        assert_eq!(code, 0, "deploy {i} across upgrade {i}: {text}");
        for needle in ["handover", "resumed", "succeeded"] {
            assert!(text.contains(needle), "deploy {i}: no {needle:?}: {text}");
        }
        let id = deployment_id(&lines).unwrap_or_else(|| panic!("deployment id in {text}"));
        let d = w.api_get(&format!("/v1/deployments/{id}")).await;
        assert_eq!(d["state"], "succeeded", "{d}");
        succeeded += 1;
        assert_runs_only(&w.app, &id, 2);
        let app = w.api_get(&format!("/v1/apps/{}", w.app)).await;
        assert_eq!(app["current"]["id"], id.as_str(), "{app}");
        assert_eq!(app["replicas"].as_array().map(Vec::len), Some(2), "{app}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let elapsed = t0.elapsed();
    let ok = stats.ok.load(Ordering::Relaxed);
    let failed = stats.failed.lock().unwrap().clone();
    eprintln!(
        "{} upgrades mid rolling deploy: {} requests, {} failed, {succeeded}/10 deploys \
         succeeded, {:.1}s",
        pids.len() - 1,
        ok + failed.len() as u64,
        failed.len(),
        elapsed.as_secs_f64()
    );
    if !failed.is_empty() {
        // berthd's log (every process writes to the same pipe) for the post-mortem.
        let path = std::env::temp_dir().join(format!("upgmid-{}.log", std::process::id()));
        let _ = std::fs::write(&path, w.logs.lock().unwrap().join("\n"));
        eprintln!("berthd log: {}", path.display());
    }
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 1000, "too few requests ({ok})");
    // Every predecessor drained and exited on its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids[..pids.len() - 1].iter().any(|p| pid_alive(*p)) {
        assert!(Instant::now() < deadline, "old berthd processes still run");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn kill_9_of_berthd_mid_deploy_rolls_back_cleanly() {
    if skip() {
        return;
    }
    let mut w = World::with_v1("kill9d");
    let v1 = containers(&w.app)[0].1.clone();

    w.write_app_file(IMG_V2);
    let (child, rx) = w.spawn_deploy();
    let mut lines = wait_line(&rx, "routed", Duration::from_secs(60));
    let t0 = Instant::now();
    w.kill_9();
    w.start();
    let (code, rest) = finish(child, &rx, Duration::from_secs(120));
    lines.extend(rest);
    let text = lines.join("\n");
    let id = deployment_id(&lines).unwrap_or_else(|| panic!("deployment id in {text}"));
    let d = w.api_get(&format!("/v1/deployments/{id}")).await;
    eprintln!(
        "kill -9 mid deploy: berth deploy exited {code} after {:.1}s; deployment {}: {}",
        t0.elapsed().as_secs_f64(),
        d["state"],
        d["reason"]
    );
    // The deploy's real outcome: rolled back (it was interrupted mid-plan), and the CLI
    // followed it to that end through the restart and says so.
    assert_eq!(d["state"], "failed", "{d}");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("connection to berthd lost"), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert_runs_only(&w.app, &v1, 2);
    let client = reqwest::Client::new();
    for _ in 0..10 {
        assert_eq!(w.get(&client).await, Ok((200, "v1".to_string())));
    }
}

/// Issue 21: `berthd upgrade` in the middle of a canary step hands the canary over (it is not
/// aborted): the successor serves the split from its first table, walks on from the same step
/// and promotes; `berth deploy` follows it across the upgrade; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn an_upgrade_mid_canary_hands_the_canary_over() {
    if skip() {
        return;
    }
    let w = World::with_v1("upgcanary");
    std::fs::write(
        w.dir.path().join("berth.yaml"),
        format!(
            "name: {}\nimage: {IMG_V2}\ndomains: [{}]\nport: 8080\nreplicas: 2\n\
             strategy: canary\ncanary:\n  steps: [{{weight: 20%, hold: 5s}}, {{weight: 60%, \
             hold: 2s}}]\n  analysis: {{max_error_rate: 5%, min_requests: 10}}\n\
             drain_timeout: 2s\ndeploy_timeout: 30s\n\
             health:\n  path: /health\n  interval: 100ms\n  timeout: 3s\n",
            w.app,
            w.host()
        ),
    )
    .unwrap();
    let w = Arc::new(w);
    let stop = Arc::new(AtomicBool::new(false));
    let (stats, handles) = load(&w, 2, 100_000, Duration::from_secs(180), stop.clone());
    let before = w.current_pid().expect("status");
    let (child, rx) = w.spawn_deploy();
    let mut lines = wait_line(&rx, "step 1/2", Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    let (ok, out) = w.ctl(&["upgrade"]);
    assert!(ok, "upgrade: {out}");
    let upgrade_took = t.elapsed();
    lines.extend(wait_line(
        &rx,
        "carries on after the upgrade",
        Duration::from_secs(30),
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let traffic = w.api_get(&format!("/v1/apps/{}/traffic", w.app)).await;
    let app = w.api_get(&format!("/v1/apps/{}", w.app)).await;
    eprintln!(
        "successor mid-step: traffic {traffic}\ncanary {}",
        app["canary"]
    );
    // The successor's analysis sees the proxy's counts (a daemon publisher that did not pass
    // them on made every canary of a real berthd look unvisited).
    assert!(
        app["canary"]["canary_live"]["requests"].as_u64() > Some(0),
        "{}",
        app["canary"]
    );
    let (code, rest) = finish(child, &rx, Duration::from_secs(120));
    lines.extend(rest);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let text = lines.join("\n");
    let failed = stats.failed.lock().unwrap().clone();
    let ok = stats.ok.load(Ordering::Relaxed);
    eprintln!(
        "upgrade mid-canary (berthd {before} -> {:?}, upgrade took {upgrade_took:?}): {} \
         requests, {} failed\n{text}",
        w.current_pid(),
        ok + failed.len() as u64,
        failed.len()
    );
    if code != 0 || !failed.is_empty() {
        let path = std::env::temp_dir().join(format!("upgcanary-{}.log", std::process::id()));
        let _ = std::fs::write(&path, w.logs.lock().unwrap().join("\n"));
        eprintln!("berthd log: {}", path.display());
    }
    assert_eq!(code, 0, "canary across the upgrade: {text}");
    for needle in [
        "handover",
        "carries on after the upgrade at step 1/2",
        "step 2/2",
        "succeeded",
    ] {
        assert!(text.contains(needle), "no {needle:?}: {text}");
    }
    assert!(!text.contains("aborted"), "{text}");
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let id = deployment_id(&lines).unwrap_or_else(|| panic!("deployment id in {text}"));
    assert_runs_only(&w.app, &id, 2);
}
