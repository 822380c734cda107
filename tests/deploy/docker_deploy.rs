//! Deploys against a real dockerd through the real proxy (run with BERTH_SYSTEM_TESTS=1):
//! rolling v1→v2 under load with zero failed requests, timing split, rollback; a failing
//! health gate aborts with v1 untouched and no leftovers; replace strategy from an image tar;
//! hand-started labelled containers are routed and unrouted; an engine killed mid-deploy is
//! reconciled by a new engine on the same database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::docker::*;
use berth::deploy::{DeployError, DeployEvent, EngineConfig, ImageSource, Stage};
use berth::store::deployments::DeployState;
use futures_util::StreamExt;

const WAIT: Duration = Duration::from_secs(120);

/// Deployment ids by app label, for the containers of this test.
fn deployments_running(env: &Env, app: &str) -> Vec<String> {
    let mut v: Vec<String> = env
        .containers(app)
        .into_iter()
        .filter(|(_, _, running)| *running)
        .map(|(_, l, _)| l.get("berth.deployment").cloned().unwrap_or_default())
        .collect();
    v.sort();
    v
}

fn at(events: &[DeployEvent], stage: &str) -> Vec<i64> {
    events
        .iter()
        .filter(|e| e.stage.as_str() == stage)
        .map(|e| e.at)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn rolling_deploy_under_load_then_rollback() {
    if skip() {
        return;
    }
    let env = Arc::new(Env::new("rolling").await);
    let engine = env.engine().await;
    let host = "rolling.test";
    let app = "rolling";

    let d1 = env.deploy_ok(&engine, app, IMG_V1, 3, host).await;
    let r1 = engine.wait(&d1).await.unwrap();
    env.wait_body(host, "v1", Duration::from_secs(5)).await;
    assert_eq!(deployments_running(&env, app), vec![d1.clone(); 3]);

    // One deploy per app at a time: a second one gets Conflict with the running id.
    let loader = Loader::start(&env, "rolling.test", 4, 200_000, Duration::from_secs(90));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let d2 = engine
        .deploy(app, env.spec(IMG_V2, 3, host), reference(IMG_V2), "test")
        .await
        .unwrap();
    match engine
        .deploy(app, env.spec(IMG_V2, 3, host), reference(IMG_V2), "test")
        .await
    {
        Err(DeployError::Conflict { running, .. }) => assert_eq!(running, d2),
        other => panic!("second deploy: {other:?}"),
    }
    let (events_so_far, mut rx) = engine.subscribe(&d2).unwrap();
    let r2 = tokio::time::timeout(WAIT, engine.wait(&d2))
        .await
        .unwrap()
        .unwrap();
    let total = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let l = loader.finish().await;
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);

    let mut events = events_so_far;
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    assert!(events.last().unwrap().done, "{events:?}");

    println!("load during v1→v2: {:?}, failed {}", l.ok, l.failed.len());
    // Nothing crashes here: a rolling deploy drains before it stops, so every request
    // succeeds.
    assert!(
        l.failed.is_empty(),
        "failed requests: {:?}",
        &l.failed[..l.failed.len().min(5)]
    );
    assert!(l.ok.keys().all(|b| b == "v1" || b == "v2"), "{:?}", l.ok);
    assert!(l.ok.get("v1").copied().unwrap_or(0) > 0 && l.ok.get("v2").copied().unwrap_or(0) > 0);
    for _ in 0..30 {
        assert_eq!(env.get(host).await.unwrap(), (200, "v2".to_string()));
    }
    assert_eq!(deployments_running(&env, app), vec![d2.clone(); 3]);
    assert_eq!(env.containers(app).len(), 3, "old containers removed");

    // Rolling order: every drain comes after a routed new replica, one at a time.
    let stages: Vec<&str> = events
        .iter()
        .map(|e| e.stage.as_str())
        .filter(|s| ["start", "healthy", "routed", "drain", "drained", "stopped"].contains(s))
        .collect();
    assert_eq!(
        stages.join(" "),
        ["start healthy routed drain drained stopped"; 3].join(" "),
        "{events:?}"
    );

    // Timing: call → last old replica set to drain (from then on 100% of new requests go to
    // v2), split into Docker create/start, the app's health time, and Berth's own time.
    let accepted = at(&events, "accepted")[0];
    let last_drain = *at(&events, "drain").last().unwrap();
    let starts = at(&events, "start");
    let healthy = at(&events, "healthy");
    let app_health: i64 = starts.iter().zip(&healthy).map(|(s, h)| h - s).sum();
    // "start" is emitted after create+start+inspect; each replica's docker time is from the
    // previous step's event to its "start" event.
    let mut docker_ms = 0;
    for s in &starts {
        let prev = events
            .iter()
            .filter(|e| e.at <= *s && e.stage != Stage::Start)
            .map(|e| e.at)
            .max()
            .unwrap();
        docker_ms += s - prev;
    }
    for e in &events {
        println!(
            "  +{:5} ms {:9} {}",
            e.at - accepted,
            e.stage,
            e.message.lines().next().unwrap_or("")
        );
    }
    let to_full = last_drain - accepted;
    let berth = to_full - app_health - docker_ms;
    println!(
        "DEPLOY-TIMING 3 replicas rolling: call→100% v2 traffic {to_full} ms = docker create/start {docker_ms} ms + app health {app_health} ms + berth {berth} ms; call→done {} ms",
        total.as_millis()
    );

    // Rollback: a rolling deploy of d1's stored spec and image.
    let rb = engine.rollback(app, None, "test").await.unwrap();
    let r3 = tokio::time::timeout(WAIT, engine.wait(&rb))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r3.state, DeployState::Succeeded, "{:?}", r3.reason);
    assert_eq!(r3.rollback_of.as_deref(), Some(d1.as_str()));
    assert_eq!(r3.image_id, r1.image_id);
    for _ in 0..10 {
        assert_eq!(env.get(host).await.unwrap(), (200, "v1".to_string()));
    }
    assert_eq!(deployments_running(&env, app), vec![rb.clone(); 3]);
    let status = engine.app(app).await.unwrap();
    assert_eq!(status.current.unwrap().id, rb);
    assert_eq!(status.previous.unwrap().id, d2);
    assert_eq!(status.replicas.len(), 3);
    assert!(status.replicas.iter().all(|r| r.running == Some(true)));
    let hist: Vec<String> = engine
        .deployments(app, 10)
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(hist, vec![rb.clone(), d2.clone(), d1.clone()]);

    // Logs of the app (busybox httpd logs nothing; the stream must end without error).
    let lines: Vec<_> = engine.logs(app, false, Some(5)).unwrap().collect().await;
    assert!(lines.iter().all(|l| l.is_ok()), "{lines:?}");

    // Stop: drained, stopped, removed; the route is gone.
    engine.stop(app).await.unwrap();
    assert!(env.containers(app).is_empty());
    let (status, _) = env.get(host).await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn failing_health_check_aborts_and_v1_keeps_serving() {
    if skip() {
        return;
    }
    let env = Arc::new(Env::new("abort").await);
    let engine = env.engine().await;
    let (app, host) = ("abort", "abort.test");
    let d1 = env.deploy_ok(&engine, app, IMG_V1, 2, host).await;

    let loader = Loader::start(&env, "abort.test", 2, 100_000, Duration::from_secs(60));
    let mut bad = env.spec(IMG_BAD, 2, host);
    bad.deploy_timeout = Duration::from_secs(3);
    let d2 = engine
        .deploy(app, bad, reference(IMG_BAD), "test")
        .await
        .unwrap();
    let r2 = tokio::time::timeout(WAIT, engine.wait(&d2))
        .await
        .unwrap()
        .unwrap();
    let l = loader.finish().await;

    assert_eq!(r2.state, DeployState::Failed);
    let reason = r2.reason.unwrap();
    assert!(reason.contains("did not become healthy"), "{reason}");
    assert!(
        reason.contains("404"),
        "last health error in reason: {reason}"
    );
    assert!(
        reason.contains("bad-build-starting"),
        "last log lines in reason: {reason}"
    );
    assert!(l.failed.is_empty(), "{:?}", l.failed);
    assert_eq!(
        l.ok.keys().cloned().collect::<Vec<_>>(),
        vec!["v1".to_string()]
    );
    assert_eq!(deployments_running(&env, app), vec![d1.clone(); 2]);
    assert_eq!(
        env.containers(app).len(),
        2,
        "no leftovers of the failed deploy"
    );
    assert_eq!(engine.app(app).await.unwrap().current.unwrap().id, d1);
    // The app accepts the next deploy (the lock was released).
    let (events, _) = engine.subscribe(&d2).unwrap();
    assert_eq!(events.last().unwrap().stage, Stage::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn replace_strategy_from_an_image_tar() {
    if skip() {
        return;
    }
    let env = Env::new("replace").await;
    let engine = env.engine().await;
    let (app, host) = ("replace", "replace.test");
    let mut s1 = env.spec(IMG_V1, 2, host);
    s1.strategy = berth::model::deploy::Strategy::Replace;
    let d1 = engine
        .deploy(app, s1.clone(), reference(IMG_V1), "test")
        .await
        .unwrap();
    assert_eq!(
        engine.wait(&d1).await.unwrap().state,
        DeployState::Succeeded
    );
    env.wait_body(host, "v1", Duration::from_secs(5)).await;

    // v2 arrives as a `docker save` tar streamed into load_image.
    let out = std::process::Command::new("docker")
        .args(["save", IMG_V2])
        .output()
        .unwrap();
    assert!(out.status.success());
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = out
        .stdout
        .chunks(64 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let tar = futures_util::stream::iter(chunks).boxed();
    let mut s2 = env.spec("uploaded", 2, host);
    s2.strategy = berth::model::deploy::Strategy::Replace;
    let d2 = engine
        .deploy(app, s2, ImageSource::Tar(tar), "test")
        .await
        .unwrap();
    let r2 = engine.wait(&d2).await.unwrap();
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);
    let v2_id = env.docker(&format!("image inspect -f '{{{{.Id}}}}' {IMG_V2}"));
    assert_eq!(r2.image_id.as_deref(), Some(v2_id.as_str()));
    let (events, _) = engine.subscribe(&d2).unwrap();
    let stages: Vec<&str> = events.iter().map(|e| e.stage.as_str()).collect();
    let first_start = stages.iter().position(|s| *s == "start").unwrap();
    let last_stop = stages.iter().rposition(|s| *s == "stopped").unwrap();
    assert!(
        last_stop < first_start,
        "replace stops all old before starting new: {stages:?}"
    );
    for _ in 0..10 {
        assert_eq!(env.get(host).await.unwrap(), (200, "v2".to_string()));
    }
    assert_eq!(deployments_running(&env, app), vec![d2.clone(); 2]);
    assert_eq!(env.containers(app).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn hand_started_labelled_container_is_routed_then_unrouted() {
    if skip() {
        return;
    }
    let env = Env::new("discover").await;
    let engine = env.engine().await;
    let app = format!("hand-{}", std::process::id());
    let run = env.run.clone();
    let net = env.network.clone();
    let id = env.docker(&format!(
        "run -d --network {net} --label berth.test.run={run} --label berth.app={app} --label berth.role=app \
         --label berth.domain.0=hand.test --label berth.domain.0.alias.0=www.hand.test --label berth.health.path=/health {IMG_V1}"
    ));
    // Bad labels: skipped with one warning, no crash.
    let bad = env.docker(&format!(
        "run -d --network {net} --label berth.test.run={run} --label berth.app={app}-bad --label berth.role=app \
         --label berth.domain.0=bad.test --label berth.port=http {IMG_V1}"
    ));
    env.wait_body("hand.test", "v1", Duration::from_secs(20))
        .await;
    let (status, _) = env.get("www.hand.test").await.unwrap();
    assert_eq!(status, 301, "alias redirects to the canonical domain");
    let status = engine.app(&app).await.unwrap();
    assert_eq!(status.discovered.len(), 1);
    assert_eq!(status.discovered[0].container_id, id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine
        .warnings()
        .iter()
        .any(|w| w.contains("berth.port") && w.contains("\"http\""))
    {
        assert!(
            Instant::now() < deadline,
            "no warning for bad labels: {:?}",
            engine.warnings()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(env.get("bad.test").await.unwrap().0, 404);

    // A second instance joins the same route; stopping one keeps the other routed.
    let id2 = env.docker(&format!(
        "run -d --network {net} --label berth.test.run={run} --label berth.app={app} --label berth.role=app \
         --label berth.domain.0=hand.test --label berth.health.path=/health {IMG_V2}"
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.app(&app).await.unwrap().discovered.len() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.docker(&format!("stop -t 1 {id}"));
    env.wait_body("hand.test", "v2", Duration::from_secs(10))
        .await;
    for _ in 0..10 {
        assert_eq!(env.get("hand.test").await.unwrap(), (200, "v2".to_string()));
    }
    env.docker(&format!("stop -t 1 {id2}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = env.get("hand.test").await.unwrap();
        if got.0 == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "still routed: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        engine.app(&app).await.is_err(),
        "no discovered replicas left"
    );
    let _ = bad;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn engine_killed_mid_deploy_is_reconciled_on_restart() {
    if skip() {
        return;
    }
    let env = Env::new("reconcile").await;
    let (app, host) = ("recon", "recon.test");
    let d1;
    let d2;
    {
        let engine = env.engine().await;
        d1 = env.deploy_ok(&engine, app, IMG_V1, 3, host).await;
        d2 = engine
            .deploy(app, env.spec(IMG_V2, 3, host), reference(IMG_V2), "test")
            .await
            .unwrap();
        let (seen, mut rx) = engine.subscribe(&d2).unwrap();
        let mut stopped = seen.iter().filter(|e| e.stage == Stage::Stopped).count();
        // Kill after the first old replica was stopped and the second new one started:
        // one v2 routed, one v2 unrouted, one v1 stopped, two v1 serving.
        let mut started = seen.iter().filter(|e| e.stage == Stage::Start).count();
        while !(stopped >= 1 && started >= 2) {
            let ev = tokio::time::timeout(WAIT, rx.recv())
                .await
                .unwrap()
                .unwrap();
            stopped += (ev.stage == Stage::Stopped) as usize;
            started += (ev.stage == Stage::Start) as usize;
        }
        engine.kill();
        // Simulated kill -9: the engine's tasks are aborted, nothing is cleaned up.
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = env.containers(app);
    assert!(
        before.len() >= 4,
        "mid-deploy state has old and new containers: {before:?}"
    );

    let engine = env.engine().await; // reconciles before returning (READY)
    let r2 = engine.deployment(&d2).unwrap();
    assert_eq!(r2.state, DeployState::Failed);
    assert!(
        r2.reason.as_deref().unwrap_or("").contains("interrupted"),
        "{:?}",
        r2.reason
    );
    assert_eq!(deployments_running(&env, app), vec![d1.clone(); 3]);
    assert_eq!(
        env.containers(app).len(),
        3,
        "nothing orphaned: {:?}",
        env.containers(app)
    );
    for _ in 0..10 {
        assert_eq!(env.get(host).await.unwrap(), (200, "v1".to_string()));
    }
    let status = engine.app(app).await.unwrap();
    assert_eq!(status.replicas.len(), 3);
    assert_eq!(status.current.unwrap().id, d1);
    // And the app deploys normally afterwards.
    let d3 = env.deploy_ok(&engine, app, IMG_V2, 3, host).await;
    env.wait_body(host, "v2", Duration::from_secs(5)).await;
    assert_eq!(deployments_running(&env, app), vec![d3.clone(); 3]);
}

/// The child side of `kill_9_mid_deploy_then_restart`: runs an engine in its own process and
/// deploys v1 then v2, printing progress, until the parent kills it with SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of kill_9_mid_deploy_then_restart"]
async fn child_deployer_process() {
    let (Ok(db), Ok(network), Ok(run)) = (
        std::env::var("BERTH_CHILD_DB"),
        std::env::var("BERTH_CHILD_NETWORK"),
        std::env::var("BERTH_CHILD_RUN"),
    ) else {
        return;
    };
    let tables = Arc::new(berth::proxy::Tables::new(Default::default()));
    let cfg = berth::deploy::EngineConfig {
        extra_labels: [("berth.test.run".to_string(), run)].into(),
        ..Default::default()
    };
    // What berthd does: one store for the data dir, the route registry over the proxy's
    // tables, the engine on both.
    let data_dir = std::path::Path::new(&db).parent().unwrap();
    let store = berth::store::Store::open(data_dir).unwrap();
    let registry = berth::store::registry::RouteRegistry::open(Arc::new(store), vec![], tables)
        .await
        .unwrap();
    let engine =
        berth::daemon::engine::start_engine_with_registry(Arc::new(registry), &network, cfg)
            .await
            .unwrap();
    let spec = |img: &str| -> berth::model::deploy::AppSpec {
        serde_json::from_value(serde_json::json!({
            "image": img, "domains": ["kill.test"], "replicas": 3,
            "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
            "deploy_timeout": "20s", "drain_timeout": "5s",
        }))
        .unwrap()
    };
    let d1 = engine
        .deploy("killed", spec(IMG_V1), reference(IMG_V1), "child")
        .await
        .unwrap();
    engine.wait(&d1).await.unwrap();
    println!("CHILD D1={d1}");
    let d2 = engine
        .deploy("killed", spec(IMG_V2), reference(IMG_V2), "child")
        .await
        .unwrap();
    println!("CHILD D2={d2}");
    let (seen, mut rx) = engine.subscribe(&d2).unwrap();
    for e in seen {
        println!("CHILD EV {}", e.stage);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Ok(e)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        println!("CHILD EV {}", e.stage);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn kill_9_mid_deploy_then_restart() {
    if skip() {
        return;
    }
    use std::io::BufRead;
    let env = Env::new("kill9").await;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "docker_deploy::child_deployer_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BERTH_CHILD_DB", &env.db)
        .env("BERTH_CHILD_NETWORK", &env.network)
        .env("BERTH_CHILD_RUN", &env.run)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Read the child's progress on a thread; kill -9 once one old replica was stopped and
    // the second new one started (mid-plan: v1 and v2 containers both exist).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut d1, mut d2) = (String::new(), String::new());
    let (mut stopped, mut started) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(stopped >= 1 && started >= 2) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect(
                "child progress (the child test process ended early: does its --exact name match?)",
            );
        // libtest may print "test NAME ... " in front of the first line.
        let line = match line.find("CHILD ") {
            Some(i) => line[i..].to_string(),
            None => continue,
        };
        println!("child: {line}");
        if let Some(v) = line.strip_prefix("CHILD D1=") {
            d1 = v.to_string();
        } else if let Some(v) = line.strip_prefix("CHILD D2=") {
            d2 = v.to_string();
        } else if line == "CHILD EV stopped" {
            stopped += 1;
        } else if line == "CHILD EV start" {
            started += 1;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!d1.is_empty() && !d2.is_empty());
    let before = env.containers("killed");
    assert!(
        before.len() >= 4,
        "mid-deploy: old and new containers: {before:?}"
    );

    // Restart: a new engine on the same database and dockerd reconciles before returning.
    let engine = env.engine().await;
    let r2 = engine.deployment(&d2).unwrap();
    assert_eq!(r2.state, DeployState::Failed);
    assert!(
        r2.reason.as_deref().unwrap_or("").contains("interrupted"),
        "{:?}",
        r2.reason
    );
    assert_eq!(
        engine.deployment(&d1).unwrap().state,
        DeployState::Succeeded
    );
    assert_eq!(deployments_running(&env, "killed"), vec![d1.clone(); 3]);
    assert_eq!(
        env.containers("killed").len(),
        3,
        "nothing orphaned: {:?}",
        env.containers("killed")
    );
    for _ in 0..10 {
        assert_eq!(env.get("kill.test").await.unwrap(), (200, "v1".to_string()));
    }
}

/// A replica whose process crashes (kill -9 of the container's main process, not `docker
/// kill`, which Docker counts as a manual stop): out of the route at once, restarted by
/// Docker's unless-stopped policy, routed again after its health check; requests under load
/// meanwhile succeed, except one the process was answering when it died.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn crashed_replica_leaves_the_route_and_comes_back() {
    if skip() {
        return;
    }
    let env = Arc::new(Env::new("crash").await);
    let engine = env.engine().await;
    let (app, host) = ("crash", "crash.test");
    env.deploy_ok(&engine, app, IMG_V1, 2, host).await;
    env.wait_body(host, "v1", Duration::from_secs(5)).await;
    let victim = engine.app(app).await.unwrap().replicas[0]
        .container_id
        .clone();

    let loader = Loader::start(&env, host, 2, 50_000, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = env.docker(&format!("inspect -f '{{{{.State.Pid}}}}' {victim}"));
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap();
    assert!(killed.success(), "kill -9 {pid}");
    let t0 = Instant::now();
    let mut saw_out = false;
    let back = loop {
        let st = engine.app(app).await.unwrap();
        let r = st
            .replicas
            .iter()
            .find(|r| r.container_id == victim)
            .expect("the crashed replica stays the app's");
        saw_out |= !r.routed;
        let restarts = env.docker(&format!("inspect -f '{{{{.RestartCount}}}}' {victim}"));
        // (Whether this poll catches the short time out of the route depends on timing; the
        // engine test `a_replica_that_stops_leaves_the_route...` checks that step exactly.)
        if r.routed && r.running == Some(true) && restarts != "0" {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not back in the route after 30 s: {r:?}, restarts {restarts}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = loader.finish().await;
    let ok: u64 = l.ok.values().sum();
    println!(
        "crashed replica back in the route after {back:?} (seen out of it: {saw_out}); \
         {ok} requests ok, {} failed",
        l.failed.len()
    );
    // The one request the process was answering when it died: its head had reached the
    // client, so its body breaks off (no proxy can retry a response it has begun to send).
    // Anything else (a refused connection, a 502/503, a second failure) fails the test.
    assert!(
        l.failed.len() <= 1 && l.failed.iter().all(|f| f.contains("body")),
        "failed requests: {:?}",
        &l.failed[..l.failed.len().min(5)]
    );
    assert!(ok > 0);
    assert_eq!(engine.app(app).await.unwrap().replicas.len(), 2);
}

/// Issue 19: at least 20 consecutive rolling deploys under load, with zero failed requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn twenty_rolling_deploys_under_load_fail_no_request() {
    if skip() {
        return;
    }
    const DEPLOYS: usize = 20;
    let env = Arc::new(Env::new("roll20").await);
    let engine = env.engine().await;
    let (app, host) = ("roll20", "roll20.test");
    env.deploy_ok(&engine, app, IMG_V1, 2, host).await;
    env.wait_body(host, "v1", Duration::from_secs(5)).await;

    let loader = Loader::start(&env, host, 4, 1_000_000, Duration::from_secs(600));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    for i in 0..DEPLOYS {
        let img = if i % 2 == 0 { IMG_V2 } else { IMG_V1 };
        let d = engine
            .deploy(app, env.spec(img, 2, host), reference(img), "test")
            .await
            .unwrap();
        let r = tokio::time::timeout(WAIT, engine.wait(&d))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r.state,
            DeployState::Succeeded,
            "deploy {i}: {:?}",
            r.reason
        );
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let l = loader.finish().await;
    let ok: u64 = l.ok.values().sum();
    println!(
        "ROLL20 {DEPLOYS} rolling deploys in {took:?}: {ok} requests ok {:?}, failed {}",
        l.ok,
        l.failed.len()
    );
    assert!(
        l.failed.is_empty(),
        "failed requests ({}): {:?}",
        l.failed.len(),
        &l.failed[..l.failed.len().min(10)]
    );
    assert!(ok > 1000, "the load ran: {ok}");
    assert_eq!(env.containers(app).len(), 2, "old containers removed");
}

/// Issue 19.5 with real containers: `docker kill` and `docker rm -f` of replicas are
/// repaired by the self-healing loop; `stop` is not undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn self_healing_after_docker_kill_and_rm() {
    if skip() {
        return;
    }
    let env = Arc::new(Env::new("heal").await);
    let engine = env
        .engine_with(EngineConfig {
            heal_interval: Duration::from_millis(500),
            ..env.engine_config()
        })
        .await;
    engine.reconciled().await;
    let (app, host) = ("heal", "heal.test");
    let d = env.deploy_ok(&engine, app, IMG_V1, 2, host).await;
    env.wait_body(host, "v1", Duration::from_secs(5)).await;
    let names: Vec<String> = env.containers(app).into_iter().map(|c| c.0).collect();
    assert_eq!(names.len(), 2);
    let running = |env: &Env| env.containers(app).iter().filter(|c| c.2).count();

    // Both replicas killed: 0/2, then restored by starting them again.
    env.docker(&format!(
        "kill {} {}",
        names[0].trim_start_matches('/'),
        names[1].trim_start_matches('/')
    ));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let st = engine.app(app).await.unwrap();
        let routed = st.replicas.iter().filter(|r| r.routed).count();
        if running(&env) == 2 && routed == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not restored: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "HEAL docker kill of 2/2 replicas: capacity back in {:?}",
        t0.elapsed()
    );
    env.wait_body(host, "v1", Duration::from_secs(5)).await;
    let stages: Vec<String> = engine
        .stored_events(&d)
        .unwrap()
        .into_iter()
        .map(|e| e.stage.as_str().to_string())
        .collect();
    assert!(stages.iter().any(|s| s == "heal"), "{stages:?}");

    // One replica removed for good: replaced from the deployment's image.
    env.docker(&format!("rm -f {}", names[0].trim_start_matches('/')));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = engine.app(app).await.unwrap();
        let routed = st.replicas.iter().filter(|r| r.routed).count();
        if running(&env) == 2 && routed == 2 && st.heal.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "not replaced: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_body(host, "v1", Duration::from_secs(5)).await;

    // An intentional stop stays a stop.
    engine.stop(app).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.containers(app).is_empty());
    assert_eq!(env.get(host).await.unwrap().0, 404);
}

/// Issue 19.8: a worker (an app without domains): deployed, gated by "running without a
/// restart for min_ready" instead of HTTP, never routed; rolling and replace deploys; self-
/// healing brings a killed replica back; a crash-looping worker fails its gate; a worker with
/// `health.path` is refused naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn worker_without_domains_deploys_heals_and_is_never_routed() {
    if skip() {
        return;
    }
    let env = Arc::new(Env::new("worker").await);
    let engine = env
        .engine_with(EngineConfig {
            heal_interval: Duration::from_millis(500),
            ..env.engine_config()
        })
        .await;
    engine.reconciled().await;
    let app = "worker";
    let worker = |image: &str, strategy: &str, cmd: &str| -> berth::model::deploy::AppSpec {
        serde_json::from_value(serde_json::json!({
            "image": image,
            "replicas": 2,
            "strategy": strategy,
            "min_ready": "1s",
            "deploy_timeout": "20s",
            "stop_timeout": "3s",
            "command": ["/bin/sh", "-c", cmd],
        }))
        .expect("worker spec")
    };
    let steady = "trap 'exit 0' TERM; while true; do sleep 1; done";
    let tables_have_route = |env: &Env| {
        env.daemon
            .as_ref()
            .unwrap()
            .tables
            .load()
            .routes()
            .iter()
            .any(|r| r.name == format!("app/{app}"))
    };

    // A worker with an HTTP health path: refused before anything runs, naming the field.
    let mut bad = worker(IMG_V1, "rolling", steady);
    bad.health = serde_json::from_value(serde_json::json!({"path": "/health"})).unwrap();
    match engine.deploy(app, bad, reference(IMG_V1), "test").await {
        Err(DeployError::Invalid(e)) => assert_eq!(e.field, "health.path"),
        other => panic!("a worker with health.path must be refused: {other:?}"),
    }
    assert!(env.containers(app).is_empty());

    for (image, strategy) in [
        (IMG_V1, "rolling"),
        (IMG_V2, "rolling"),
        (IMG_V1, "replace"),
    ] {
        let t0 = Instant::now();
        let d = engine
            .deploy(
                app,
                worker(image, strategy, steady),
                reference(image),
                "test",
            )
            .await
            .unwrap();
        let r = tokio::time::timeout(WAIT, engine.wait(&d))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            r.state,
            DeployState::Succeeded,
            "{strategy}: {:?}",
            r.reason
        );
        // Gated by running steadily for min_ready (1 s) per new replica.
        assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(deployments_running(&env, app), vec![d.clone(); 2]);
        assert_eq!(env.containers(app).len(), 2, "{strategy}: no leftovers");
        assert!(!tables_have_route(&env), "a worker is never routed");
        let st = engine.app(app).await.unwrap();
        assert_eq!(st.replicas.len(), 2, "{st:?}");
        assert!(
            st.replicas.iter().all(|r| r.running == Some(true)),
            "{st:?}"
        );
        assert_eq!(st.current.as_ref().map(|c| c.id.as_str()), Some(d.as_str()));
    }

    // Self-healing: a killed replica is started again; a removed one is replaced.
    let names: Vec<String> = env.containers(app).into_iter().map(|c| c.0).collect();
    let running = |env: &Env| env.containers(app).iter().filter(|c| c.2).count();
    env.docker(&format!("kill {}", names[0].trim_start_matches('/')));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(30);
    while running(&env) < 2 {
        assert!(Instant::now() < deadline, "worker replica not restored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "HEAL worker: docker kill of 1/2 replicas, running again in {:?}",
        t0.elapsed()
    );
    env.docker(&format!("rm -f {}", names[1].trim_start_matches('/')));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(30);
    loop {
        let st = engine.app(app).await.unwrap();
        if running(&env) == 2 && env.containers(app).len() == 2 && st.heal.is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker replica not replaced: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "HEAL worker: docker rm -f of 1/2 replicas, replaced in {:?}",
        t0.elapsed()
    );
    assert!(!tables_have_route(&env));

    // A worker that exits after half a second never passes its gate: the deploy fails and
    // the running version stays.
    let before = deployments_running(&env, app);
    let d = engine
        .deploy(
            app,
            worker(IMG_V2, "rolling", "sleep 0.5; exit 3"),
            reference(IMG_V2),
            "test",
        )
        .await
        .unwrap();
    let r = tokio::time::timeout(WAIT, engine.wait(&d))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.state, DeployState::Failed);
    assert!(
        r.reason.as_deref().unwrap_or("").contains("not running")
            || r.reason.as_deref().unwrap_or("").contains("restarted"),
        "{:?}",
        r.reason
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while deployments_running(&env, app) != before || env.containers(app).len() != 2 {
        assert!(
            Instant::now() < deadline,
            "the old worker replicas keep running: {:?}",
            env.containers(app)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine.stop(app).await.unwrap();
    assert!(env.containers(app).is_empty());
}
