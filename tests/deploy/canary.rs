//! Canary and A/B by version against a real dockerd through the real proxy, under real load
//! (run with BERTH_SYSTEM_TESTS=1): a canary v1→v2 through steps of 10% and 50% (observed v2
//! share per hold, 0 failed requests, promotion), a canary that answers 500 to 20% aborted at
//! its first analysis (traffic back on v1 within a second of the decision, clients' failures
//! printed against the bound), and a 90/10 A/B split over 10,000 requests plus sticky mode.
//!
//! Clients: keep-alive ones (the shared pooled client) and ones that open a new connection
//! per request (`Connection: close`); every load loop is bounded in count and time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::docker::*;
use berth::deploy::DeployError;
use berth::model::deploy::AppSpec;
use berth::store::deployments::DeployState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const V1: &str = "berth-test-canary:v1";
pub(crate) const V2: &str = "berth-test-canary:v2";
const V2_BAD: &str = "berth-test-canary:v2bad";
pub(crate) const WAIT: Duration = Duration::from_secs(180);

pub(crate) fn images() {
    let ok = |v: &str| format!("printf 'Content-Type: text/plain\\r\\n\\r\\n{v}\\n'\n");
    build_cgi_image(V1, "v1\n", &ok("v1"));
    build_cgi_image(V2, "v2\n", &ok("v2"));
    // One request in five answers 500.
    build_cgi_image(
        V2_BAD,
        "v2\n",
        "if [ $((RANDOM % 5)) -eq 0 ]; then printf 'HTTP/1.1 500 Internal Server Error\\r\\n\
         Content-Type: text/plain\\r\\n\\r\\nv2 failed\\n'; else printf 'Content-Type: \
         text/plain\\r\\n\\r\\nv2\\n'; fi\n",
    );
}

pub(crate) fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn spec(
    image: &str,
    host: &str,
    replicas: u32,
    canary: Option<serde_json::Value>,
) -> AppSpec {
    let mut v = serde_json::json!({
        "image": image,
        "domains": [host],
        "replicas": replicas,
        "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
        "drain_timeout": "3s",
        "deploy_timeout": "20s",
    });
    if let Some(c) = canary {
        v["strategy"] = "canary".into();
        v["canary"] = c;
    }
    let s: AppSpec = serde_json::from_value(v).expect("spec");
    s.validate().expect("valid spec");
    s
}

/// One answer: when the request was sent (unix ms) and the version, or the failure.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) at: i64,
    pub(crate) answer: Result<String, String>,
}

/// GET /cgi-bin/app on a new connection, `Connection: close`: (status, body).
pub(crate) async fn get_new_connection(env: &Env, host: &str) -> Result<(u16, String), String> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(env.http_addr())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET /cgi-bin/app HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| "timeout".to_string())??;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("odd answer {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    // Chunked or not: the body line is the version (a chunk size line may come first).
    let line = body
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('v'))
        .unwrap_or("")
        .to_string();
    Ok((status, line))
}

/// GET /cgi-bin/app through the shared keep-alive client, with an optional cookie; returns
/// (status, body, Set-Cookie pair).
pub(crate) async fn get_keepalive(
    env: &Env,
    host: &str,
    cookie: Option<&str>,
) -> Result<(u16, String, Option<String>), String> {
    let a = env.request(host, "/cgi-bin/app", cookie).await?;
    let pin = a
        .set_cookie
        .map(|s| s.split(';').next().unwrap_or_default().to_string());
    Ok((a.status, a.body, pin))
}

/// Load from `keepalive` + `fresh` workers until `stop`, at most `max` requests in all and
/// `max_time`; every answer with its send time.
pub(crate) async fn load(
    env: Arc<Env>,
    host: &'static str,
    (keepalive, fresh): (usize, usize),
    max: u64,
    max_time: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Seen> {
    let sent = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + max_time;
    let mut handles = Vec::new();
    for w in 0..keepalive + fresh {
        let (env, stop, sent) = (env.clone(), stop.clone(), sent.clone());
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && sent.fetch_add(1, Ordering::Relaxed) < max
            {
                let at = unix_ms();
                let r = if w < keepalive {
                    get_keepalive(&env, host, None)
                        .await
                        .map(|(s, b, _)| (s, b))
                } else {
                    get_new_connection(&env, host).await
                };
                let answer = match r {
                    Ok((200, body)) => Ok(body),
                    Ok((s, body)) => Err(format!("{s} {body}")),
                    Err(e) => Err(e),
                };
                seen.push(Seen { at, answer });
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.expect("load worker"));
    }
    all.sort_by_key(|s| s.at);
    all
}

/// [`load`] from 4 keep-alive and 2 new-connection workers as a [`Background`] task.
pub(crate) fn load_in_background(
    env: &Arc<Env>,
    host: &'static str,
    max: u64,
    max_time: Duration,
) -> Background<Vec<Seen>> {
    Background::start(|stop| load(env.clone(), host, (4, 2), max, max_time, stop))
}

/// The stored events of a deployment: (unix ms, stage, message).
fn events(engine: &berth::deploy::Engine, id: &str) -> Vec<(i64, String, String)> {
    engine
        .stored_events(id)
        .expect("events")
        .into_iter()
        .map(|e| (e.at, e.stage.as_str().to_string(), e.message))
        .collect()
}

/// Shares of "v2" among successful answers sent in [from, to).
fn v2_share(seen: &[Seen], from: i64, to: i64) -> (f64, usize) {
    let ok: Vec<&String> = seen
        .iter()
        .filter(|s| s.at >= from && s.at < to)
        .filter_map(|s| s.answer.as_ref().ok())
        .collect();
    let v2 = ok.iter().filter(|b| b.as_str() == "v2").count();
    (
        if ok.is_empty() {
            0.0
        } else {
            v2 as f64 * 100.0 / ok.len() as f64
        },
        ok.len(),
    )
}

pub(crate) async fn deploy_and_wait(
    engine: &berth::deploy::Engine,
    app: &str,
    s: AppSpec,
    image: &str,
) -> (String, berth::store::deployments::DeploymentRecord) {
    let id = engine
        .deploy(app, s, reference(image), "test")
        .await
        .expect("deploy accepted");
    let rec = tokio::time::timeout(WAIT, engine.wait(&id))
        .await
        .expect("deploy ends")
        .expect("record");
    (id, rec)
}

/// A test world with `app` running v1 on two replicas; returns v1's deployment id.
async fn v1_with_two_replicas(
    app: &'static str,
    host: &'static str,
) -> (Arc<Env>, berth::deploy::Engine, String) {
    prepare();
    images();
    let env = Arc::new(Env::new(app).await);
    let engine = env.engine().await;
    let (d1, r1) = deploy_and_wait(&engine, app, spec(V1, host, 2, None), V1).await;
    assert_eq!(r1.state, DeployState::Succeeded, "{:?}", r1.reason);
    (env, engine, d1)
}

/// Deploys v2 as a canary whose one 50% step holds for 10 minutes and never has enough
/// requests to be judged: v2 runs next to v1 until the test acts. Returns its id once the
/// step is in force.
async fn held_canary(
    engine: &berth::deploy::Engine,
    app: &str,
    host: &str,
    replicas: u32,
) -> String {
    let canary = serde_json::json!({
        "steps": [{"weight": "50%", "hold": "10m"}],
        "analysis": {"min_requests": 1000000},
    });
    let d2 = engine
        .deploy(
            app,
            spec(V2, host, replicas, Some(canary)),
            reference(V2),
            "test",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while engine
        .app(app)
        .await
        .ok()
        .and_then(|a| a.canary)
        .is_none_or(|c| c.phase != "step")
    {
        assert!(Instant::now() < deadline, "canary reaches its step");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn canary_steps_follow_their_weights_and_promote() {
    if skip() {
        return;
    }
    let (host, app) = ("canary.test", "canary");
    let (env, engine, _) = v1_with_two_replicas(app, host).await;
    let loader = load_in_background(&env, host, 200_000, Duration::from_secs(150));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let canary = serde_json::json!({
        "steps": [{"weight": "10%", "hold": "5s"}, {"weight": "50%", "hold": "5s"}],
        "analysis": {"max_error_rate": "1%", "max_p99": "2s", "min_requests": 20},
    });
    let t0 = Instant::now();
    let (d2, r2) = deploy_and_wait(&engine, app, spec(V2, host, 2, Some(canary)), V2).await;
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = loader.finish().await;
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);

    let ev = events(&engine, &d2);
    let at = |stage: &str, nth: usize| {
        ev.iter()
            .filter(|(_, s, _)| s == stage)
            .nth(nth)
            .map(|(at, _, _)| *at)
            .unwrap_or_else(|| panic!("no {stage} #{nth} event in {ev:#?}"))
    };
    let (step1, step2, promote) = (at("step", 0), at("step", 1), at("promote", 0));
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.answer.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    // In each hold, the observed v2 share is the step's weight ±3 points.
    for (name, from, to, want) in [
        ("step 1 (10%)", step1, step2, 10.0),
        ("step 2 (50%)", step2, promote, 50.0),
    ] {
        let (share, n) = v2_share(&seen, from, to);
        println!(
            "canary {name}: v2 share {share:.2}% of {n} requests over {} ms",
            to - from
        );
        assert!(n >= 200, "{name}: only {n} requests");
        assert!(
            (share - want).abs() <= 3.0,
            "{name}: v2 share {share:.2}%, want {want}% ±3"
        );
    }
    let (before, _) = v2_share(&seen, 0, step1);
    assert_eq!(before, 0.0, "no v2 before the first step");
    let last: Vec<&Seen> = seen.iter().rev().take(50).collect();
    assert!(
        last.iter().all(|s| s.answer.as_deref() == Ok("v2")),
        "after promotion every answer is v2"
    );
    let running: Vec<String> = env
        .containers(app)
        .into_iter()
        .filter(|(_, _, running)| *running)
        .map(|(_, labels, _)| labels.get("berth.deployment").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        running,
        vec![d2.clone(), d2.clone()],
        "only v2 replicas remain"
    );
    assert!(engine.app(app).await.unwrap().canary.is_none());
    println!(
        "canary v1→v2 promoted in {:.1} s: {} requests (4 keep-alive + 2 new-connection clients), 0 failed",
        took.as_secs_f64(),
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn failing_canary_is_aborted_at_its_first_analysis() {
    if skip() {
        return;
    }
    let (host, app) = ("canarybad.test", "canarybad");
    let (env, engine, d1) = v1_with_two_replicas(app, host).await;
    let loader = load_in_background(&env, host, 200_000, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let min_requests = 50u64;
    let weight = 20u64;
    let canary = serde_json::json!({
        "steps": [{"weight": format!("{weight}%"), "hold": "30s"}, {"weight": "50%", "hold": "30s"}],
        "analysis": {"max_error_rate": "5%", "min_requests": min_requests},
    });
    let (d2, r2) = deploy_and_wait(&engine, app, spec(V2_BAD, host, 2, Some(canary)), V2_BAD).await;
    // Keep the load on a little after the abort: everything goes to v1.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = loader.finish().await;
    assert_eq!(r2.state, DeployState::Failed);
    let reason = r2.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("step 1/2") && reason.contains("max_error_rate 5%"),
        "{reason}"
    );
    let ev = events(&engine, &d2);
    assert_eq!(
        ev.iter().filter(|(_, s, _)| s == "step").count(),
        1,
        "aborted in the first step: {ev:#?}"
    );
    let decision = ev
        .iter()
        .find(|(_, s, _)| s == "rollback")
        .map(|(at, _, _)| *at)
        .expect("rollback event");
    // The last request that v2 answered was sent before the decision + 1 s.
    let last_v2 = seen
        .iter()
        .filter(|s| match &s.answer {
            Ok(b) => b == "v2",
            Err(e) => e.contains("v2 failed"),
        })
        .map(|s| s.at)
        .max()
        .expect("v2 answered some requests");
    let after = seen.iter().filter(|s| s.at > decision + 1000).count();
    println!(
        "failing canary: last request answered by v2 sent {} ms after the abort decision; {after} requests after decision+1s all v1",
        last_v2 - decision
    );
    assert!(
        last_v2 <= decision + 1000,
        "v2 still served {} ms after the decision",
        last_v2 - decision
    );
    assert!(after > 0, "load ran past the decision");
    assert!(seen
        .iter()
        .filter(|s| s.at > decision + 1000)
        .all(|s| s.answer.as_deref() == Ok("v1")));
    let failures = seen.iter().filter(|s| s.answer.is_err()).count() as u64;
    let other: Vec<&Seen> = seen
        .iter()
        .filter(|s| matches!(&s.answer, Err(e) if !e.starts_with("500")))
        .collect();
    assert!(other.is_empty(), "only the canary's 500s fail: {other:?}");
    // The analysis needs min_requests canary requests; at 20% errors that is ~10 failures,
    // plus what one 100 ms analysis tick lets through.
    // (`min_requests` counts the canary's own requests, so the step weight is already in it.)
    let expected = min_requests * 20 / 100;
    let bound = expected * 2;
    println!(
        "failing canary: clients saw {failures} failures (500 from v2) of {} requests at a {weight}% \
         step; expected at the first judgement: min_requests {min_requests} × 20% errors = {expected}, \
         bound {bound}; reason: {reason}",
        seen.len()
    );
    assert!(failures <= bound, "{failures} failures > bound {bound}");
    // The canary's containers are gone; v1 serves on.
    let deployments: Vec<String> = env
        .containers(app)
        .into_iter()
        .map(|(_, labels, _)| labels.get("berth.deployment").cloned().unwrap_or_default())
        .collect();
    assert!(
        deployments.iter().all(|d| *d == d1),
        "only v1 containers remain: {deployments:?}"
    );
    assert_eq!(
        engine.app(app).await.unwrap().current.map(|c| c.id),
        Some(d1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn ab_split_by_version_and_sticky_clients() {
    if skip() {
        return;
    }
    let (host, app) = ("ab.test", "ab");
    let (env, engine, d1) = v1_with_two_replicas(app, host).await;
    // v2 next to v1: a canary whose first step holds long; the split is then set by hand.
    let d2 = held_canary(&engine, app, host, 1).await;
    // Refused splits change nothing (422 naming the version or `weights`).
    for (w, field) in [
        (vec![("v1", 90), ("v3", 10)], "weights.v3"),
        (vec![("v1", 90), ("v2", 20)], "weights"),
    ] {
        let weights: BTreeMap<String, u32> = w.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        match engine.set_traffic(app, &weights, None) {
            Err(DeployError::Invalid(e)) => assert_eq!(e.field, field, "{e}"),
            other => panic!("{weights:?}: {other:?}"),
        }
        assert_eq!(engine.traffic(app).unwrap().weights[&d2], 50);
    }
    // 90/10 by image tag.
    let weights: BTreeMap<String, u32> = [("v1".to_string(), 90), ("v2".to_string(), 10)].into();
    let split = engine.set_traffic(app, &weights, None).unwrap();
    assert_eq!((split.weights[&d1], split.weights[&d2]), (90, 10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.app(app).await.unwrap().canary.unwrap().phase != "manual" {
        assert!(Instant::now() < deadline, "split applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let seen = load(
        env.clone(),
        host,
        (4, 2),
        10_000,
        Duration::from_secs(120),
        stop,
    )
    .await;
    let failed = seen.iter().filter(|s| s.answer.is_err()).count();
    let (share, n) = v2_share(&seen, 0, i64::MAX);
    println!("A/B 90/10: v2 share {share:.2}% of {n} requests ({failed} failed)");
    assert_eq!(failed, 0);
    assert_eq!(n, 10_000);
    assert!((share - 10.0).abs() <= 2.0, "v2 share {share:.2}%");

    // Sticky: each client keeps its version (its cookie names it).
    let weights: BTreeMap<String, u32> = [("v1".to_string(), 50), ("v2".to_string(), 50)].into();
    engine.set_traffic(app, &weights, Some(true)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.app(app).await.unwrap().canary.unwrap().sticky
        || engine.traffic(app).unwrap().weights[&d2] != 50
    {
        assert!(Instant::now() < deadline, "sticky split applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut per_version: HashMap<String, usize> = HashMap::new();
    for c in 0..40 {
        let (s, first, set) = get_keepalive(&env, host, Some("own=1")).await.unwrap();
        assert_eq!(s, 200);
        let pair = set.unwrap_or_else(|| panic!("client {c}: a version cookie"));
        assert!(pair.starts_with("BERTH_VERSION_"), "{pair}");
        for _ in 0..10 {
            let (s, body, set) = get_keepalive(&env, host, Some(&format!("own=1; {pair}")))
                .await
                .unwrap();
            assert_eq!(
                (s, body.as_str(), set),
                (200, first.as_str(), None),
                "client {c}"
            );
        }
        *per_version.entry(first).or_default() += 1;
    }
    println!("A/B sticky 50/50: 40 clients × 11 requests each stayed on one version; clients per version {per_version:?}");
    assert_eq!(per_version.values().sum::<usize>(), 40);
    assert_eq!(per_version.len(), 2, "both versions got clients");

    // Abort: v2 removed, the split (and its stored row) gone, v1 serves.
    engine.abort(app).unwrap();
    let r2 = tokio::time::timeout(WAIT, engine.wait(&d2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r2.state, DeployState::Failed);
    assert!(r2.reason.unwrap_or_default().contains("by hand"));
    for _ in 0..20 {
        assert_eq!(get_keepalive(&env, host, None).await.unwrap().1, "v1");
    }
    let conn = rusqlite::Connection::open(&env.db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM app_traffic", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "the split went with the canary");
    assert!(matches!(engine.promote(app), Err(DeployError::NoCanary(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn a_restart_mid_canary_leaves_traffic_on_stable_and_aborts_it() {
    if skip() {
        return;
    }
    let (host, app) = ("canarykill.test", "canarykill");
    let (env, engine, d1) = v1_with_two_replicas(app, host).await;
    let d2 = held_canary(&engine, app, host, 2).await;
    let mut both = HashMap::new();
    for _ in 0..40 {
        let (_, body, _) = get_keepalive(&env, host, None).await.unwrap();
        *both.entry(body).or_insert(0) += 1;
    }
    assert_eq!(
        both.len(),
        2,
        "both versions serve during the step: {both:?}"
    );
    // The process dies (tasks aborted, no cleanup: what kill -9 leaves).
    drop(engine);
    let t = Instant::now();
    let engine = env.engine_with(env.engine_config()).await;
    let served_in = t.elapsed();
    // What the restarted engine serves at once: stable only.
    for _ in 0..40 {
        let (s, body, _) = get_keepalive(&env, host, None).await.unwrap();
        assert_eq!((s, body.as_str()), (200, "v1"));
    }
    engine.reconciled().await;
    let r2 = engine.deployment(&d2).unwrap();
    assert_eq!(r2.state, DeployState::Failed);
    let reason = r2.reason.unwrap_or_default();
    assert!(reason.contains("during the canary"), "{reason}");
    let left: Vec<String> = env
        .containers(app)
        .into_iter()
        .map(|(_, labels, _)| labels.get("berth.deployment").cloned().unwrap_or_default())
        .collect();
    assert!(
        left.iter().all(|d| *d == d1),
        "canary containers removed: {left:?}"
    );
    assert_eq!(
        engine.app(app).await.unwrap().current.map(|c| c.id),
        Some(d1)
    );
    println!(
        "restart mid-canary: the restarted engine routed stable only after {served_in:?}; canary {d2} failed: {reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn a_split_set_by_hand_survives_a_restart() {
    if !docker_ready() {
        return;
    }
    images();
    let env = Arc::new(Env::new("abkill").await);
    let engine = env.engine().await;
    let (host, app) = ("abkill.test", "abkill");
    let (d1, r1) = deploy_and_wait(&engine, app, spec(V1, host, 1, None), V1).await;
    assert_eq!(r1.state, DeployState::Succeeded, "{:?}", r1.reason);
    let d2 = held_canary(&engine, app, host, 1).await;
    let weights: BTreeMap<String, u32> = [(d1.clone(), 80), (d2.clone(), 20)].into();
    engine.set_traffic(app, &weights, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.app(app).await.unwrap().canary.unwrap().phase != "manual" {
        assert!(Instant::now() < deadline, "split applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(engine);
    let engine = env.engine_with(env.engine_config()).await;
    // Served as split at once, before reconcile is done.
    let mut n = HashMap::new();
    for _ in 0..100 {
        let (s, body, _) = get_keepalive(&env, host, None).await.unwrap();
        assert_eq!(s, 200);
        *n.entry(body).or_insert(0) += 1;
    }
    println!("restart with an 80/20 split set by hand: first 100 requests after the restart {n:?}");
    assert_eq!((n.get("v1"), n.get("v2")), (Some(&80), Some(&20)));
    engine.reconciled().await;
    let c = engine
        .app(app)
        .await
        .unwrap()
        .canary
        .expect("canary resumed");
    assert_eq!((c.phase.as_str(), c.split[&d2]), ("manual", 20));
    engine.promote(app).unwrap();
    let r2 = tokio::time::timeout(WAIT, engine.wait(&d2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);
    for _ in 0..20 {
        assert_eq!(get_keepalive(&env, host, None).await.unwrap().1, "v2");
    }
    let left: Vec<String> = env
        .containers(app)
        .into_iter()
        .map(|(_, labels, _)| labels.get("berth.deployment").cloned().unwrap_or_default())
        .collect();
    assert_eq!(left, vec![d2.clone()], "only the promoted version remains");
}

/// Issue 21: a `berthd upgrade` mid-canary hands the canary over instead of aborting it. The
/// engine's own upgrade steps (pause at a boundary, hand over to the successor's pid, the
/// predecessor dies, a new engine on the same store and proxy takes over) under load: the
/// split stays as it was, the successor walks on from the same step and promotes, no request
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn an_upgrade_mid_canary_hands_it_over_and_it_walks_on() {
    if skip() {
        return;
    }
    let (host, app) = ("canaryup.test", "canaryup");
    let (env, engine, d1) = v1_with_two_replicas(app, host).await;
    let loader = load_in_background(&env, host, 60_000, Duration::from_secs(150));
    let canary = serde_json::json!({
        "steps": [{"weight": "20%", "hold": "4s"}, {"weight": "60%", "hold": "3s"}],
        "analysis": {"max_error_rate": "5%", "min_requests": 20},
    });
    let d2 = engine
        .deploy(app, spec(V2, host, 2, Some(canary)), reference(V2), "test")
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while engine
        .app(app)
        .await
        .ok()
        .and_then(|a| a.canary)
        .is_none_or(|c| c.phase != "step")
    {
        assert!(Instant::now() < deadline, "canary reaches its first step");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The upgrade: pause, hand over to the successor (this process's pid, as the successor
    // runs in it), the predecessor dies, the successor starts on the same store.
    let upgrade_at = unix_ms();
    let paused = engine
        .pause_for_upgrade(Duration::from_secs(10))
        .await
        .expect("the canary parks");
    assert_eq!(paused, 1);
    engine.hand_over(std::process::id());
    drop(engine);
    let engine = env.engine_with(env.engine_config()).await;
    let carried_at = unix_ms();
    let r2 = tokio::time::timeout(WAIT, engine.wait(&d2))
        .await
        .expect("canary ends")
        .expect("record");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = loader.finish().await;
    let ev = events(&engine, &d2);
    for (at, stage, msg) in &ev {
        println!("{at} {stage}: {msg}");
    }
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);
    let failed: Vec<&String> = seen
        .iter()
        .filter_map(|s| s.answer.as_ref().err())
        .collect();
    // The rest of step 1 after the upgrade, then step 2 (from their events).
    let step2_at = ev
        .iter()
        .find(|(_, st, m)| st == "step" && m.starts_with("step 2/2"))
        .map(|e| e.0)
        .expect("step 2 in the successor");
    let promoted_at = ev
        .iter()
        .find(|(_, st, _)| st == "promote")
        .map(|e| e.0)
        .expect("promoted");
    let (across, n_across) = v2_share(&seen, upgrade_at, step2_at);
    let (step2, n_step2) = v2_share(&seen, step2_at + 300, promoted_at);
    println!(
        "upgrade mid-canary: {} requests, {} failed; v2 share from the upgrade to step 2: \
         {across:.1}% of {n_across} (step 20%); during step 2: {step2:.1}% of {n_step2} (step \
         60%); the successor carried on {} ms after the upgrade began",
        seen.len(),
        failed.len(),
        carried_at - upgrade_at
    );
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(ev.iter().any(|(_, st, _)| st == "handover"), "handed over");
    assert!(
        ev.iter()
            .any(|(_, _, m)| m.contains("carries on after the upgrade at step 1/2")),
        "the successor walks on from step 1"
    );
    assert!(
        !ev.iter()
            .any(|(_, st, _)| st == "aborting" || st == "rollback"),
        "not aborted"
    );
    assert!(
        (across - 20.0).abs() <= 5.0,
        "v2 share across the upgrade {across:.1}%"
    );
    assert!(
        (step2 - 60.0).abs() <= 5.0,
        "v2 share in step 2 {step2:.1}%"
    );
    let left: Vec<String> = env
        .containers(app)
        .into_iter()
        .map(|(_, labels, _)| labels.get("berth.deployment").cloned().unwrap_or_default())
        .collect();
    assert!(
        left.len() == 2 && left.iter().all(|d| *d == d2),
        "only the promoted canary runs ({d1} gone): {left:?}"
    );
}
