//! App traffic policy against a real dockerd through the real proxy (run with
//! BERTH_SYSTEM_TESTS=1): a `sticky_cookie` app (indirect) across a rolling deploy keeps every
//! client pinned and every request answered, and hand-started labelled containers are
//! health-checked continuously like deployed ones.
//!
//! The test images (`berth-test-who-app:*`) are built with support's image builder: a CGI
//! script answers `<version> <container hostname> [<Cookie header the app received>]`, so a
//! test can tell replicas apart and see what reached the app.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::docker::*;
use berth::store::deployments::DeployState;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

// Not `berth-test-who:*`: images of that name built before the CGI moved to `/cgi-bin/app`
// may still be on the host, and existing images are not rebuilt.
const WHO_V1: &str = "berth-test-who-app:v1";
const WHO_V2: &str = "berth-test-who-app:v2";
const WAIT: Duration = Duration::from_secs(120);

/// Builds a `who` image (busybox httpd + the CGI at `/cgi-bin/app`) unless it exists.
fn build_who(tag: &str, version: &str) {
    let cgi = format!(
        "echo 'Content-Type: text/plain'\necho\necho \"{version} $(cat /etc/hostname) [$HTTP_COOKIE]\"\n"
    );
    build_cgi_image(tag, &format!("{version}\n"), &cgi);
}

/// One answer of the `who` CGI: (version, replica hostname, cookie header the app saw).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Who {
    version: String,
    replica: String,
    app_cookie: String,
}

/// A client with a one-cookie jar (the proxy's sticky cookie) plus a cookie of its own.
struct Client {
    jar: Option<String>,
    /// Set-Cookie values received.
    pins: u32,
}

/// GET /cgi-bin/app (the `who` CGI) with the client's cookies; remembers a new pin.
async fn who(env: &Env, host: &str, c: &mut Client, cookie_name: &str) -> Result<Who, String> {
    let mut cookie = "c=1".to_string();
    if let Some(j) = &c.jar {
        cookie = format!("{cookie}; {j}");
    }
    let a = env.request(host, "/cgi-bin/app", Some(&cookie)).await?;
    if let Some(set) = &a.set_cookie {
        let pair = set.split(';').next().unwrap_or_default().to_string();
        assert!(pair.starts_with(&format!("{cookie_name}=")), "{set}");
        c.jar = Some(pair);
        c.pins += 1;
    }
    let (status, text) = (a.status, a.body);
    if status != 200 {
        return Err(format!("{status} {text}"));
    }
    let (head, rest) = text
        .split_once(" [")
        .ok_or_else(|| format!("odd body {text:?}"))?;
    let (version, replica) = head
        .split_once(' ')
        .ok_or_else(|| format!("odd body {text:?}"))?;
    Ok(Who {
        version: version.into(),
        replica: replica.into(),
        app_cookie: rest.trim_end_matches(']').into(),
    })
}

fn sticky_spec(image: &str, host: &str) -> berth::model::deploy::AppSpec {
    let spec: berth::model::deploy::AppSpec = serde_json::from_value(serde_json::json!({
        "image": image,
        "domains": [host],
        "replicas": 3,
        "balancer": {"kind": "sticky_cookie", "cookie": "PIN", "indirect": true},
        "health": {"path": "/health", "interval": "100ms", "timeout": "1s", "fall": 2, "rise": 1},
        "drain_timeout": "3s",
        "deploy_timeout": "20s",
    }))
    .expect("spec");
    spec.validate().expect("valid spec");
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn sticky_cookie_app_across_a_rolling_deploy() {
    if !docker_ready() {
        return;
    }
    build_who(WHO_V1, "v1");
    build_who(WHO_V2, "v2");
    let env = Arc::new(Env::new("sticky").await);
    let engine = env.engine().await;
    let host = "sticky.test";
    let app = "sticky";
    let d1 = engine
        .deploy(app, sticky_spec(WHO_V1, host), reference(WHO_V1), "test")
        .await
        .unwrap();
    let r1 = tokio::time::timeout(WAIT, engine.wait(&d1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r1.state, DeployState::Succeeded, "{:?}", r1.reason);

    // 6 clients, each with its own jar; keep-alive connections through the shared client.
    const CLIENTS: usize = 6;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..CLIENTS {
        let (env, stop) = (env.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut c = Client { jar: None, pins: 0 };
            let mut seen: Vec<Who> = Vec::new();
            let mut failed: Vec<String> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(100);
            // Bounded: stop flag, 20,000 requests per client, 100 s.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match who(&env, host, &mut c, "PIN").await {
                    Ok(w) => seen.push(w),
                    Err(e) => failed.push(e),
                }
            }
            (c, seen, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let d2 = engine
        .deploy(app, sticky_spec(WHO_V2, host), reference(WHO_V2), "test")
        .await
        .unwrap();
    let r2 = tokio::time::timeout(WAIT, engine.wait(&d2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);
    // Pinned clients kept each old replica busy while it drained; every drain still ended
    // with nothing in flight before its container stopped (it once hit its timeout with
    // pinned requests in flight, and the stop cut them: 200 with an empty body).
    let drains: Vec<String> = engine
        .stored_events(&d2)
        .expect("events")
        .into_iter()
        .filter(|e| e.stage.as_str() == "drained")
        .map(|e| e.message)
        .collect();
    assert_eq!(drains.len(), 3, "{drains:?}");
    assert!(
        drains
            .iter()
            .all(|m| m.ends_with("has no requests in flight")),
        "{drains:?}"
    );
    // Let every client run on the new replicas for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    // Container hostnames are the first 12 characters of their ids.
    let v2_replicas: HashSet<String> = sh(&format!(
        "docker ps -q --no-trunc --filter label=berth.test.run={} --filter label=berth.app={app}",
        env.run
    ))
    .1
    .lines()
    .map(|id| id[..12].to_string())
    .collect();
    assert_eq!(v2_replicas.len(), 3, "three v2 replicas run");
    let mut total = 0usize;
    let mut per_replica: HashMap<String, usize> = HashMap::new();
    for w in workers {
        let (mut c, seen, failed) = w.await.unwrap();
        total += seen.len() + failed.len();
        assert!(
            failed.is_empty(),
            "a client saw failures: {:?}",
            &failed[..failed.len().min(5)]
        );
        // The app never sees the proxy's cookie (indirect), only the client's own.
        assert!(
            seen.iter().all(|w| w.app_cookie == "c=1"),
            "the app saw {:?}",
            seen.iter().find(|w| w.app_cookie != "c=1")
        );
        // Pinned: between two re-pins the replica never changes, so the number of replica
        // changes is below the number of pins (first pin, then one per replaced replica).
        let changes = seen
            .windows(2)
            .filter(|p| p[0].replica != p[1].replica)
            .count();
        assert!(
            changes < c.pins as usize,
            "{changes} replica changes with {} pins",
            c.pins
        );
        // Afterwards: pinned to a replacement (v2) replica, and it stays there.
        let last = seen.last().expect("requests answered").clone();
        assert_eq!(last.version, "v2");
        assert!(
            v2_replicas.contains(&last.replica),
            "{last:?} not a v2 replica"
        );
        for _ in 0..20 {
            let w = who(&env, host, &mut c, "PIN").await.unwrap();
            assert_eq!(w.replica, last.replica, "client left its pinned replica");
        }
        *per_replica.entry(last.replica).or_default() += 1;
        println!(
            "client: {} requests, {} pins, {changes} replica changes, pinned to {}",
            seen.len(),
            c.pins,
            seen.last().unwrap().replica
        );
    }
    println!("sticky across rolling deploy: {total} requests from {CLIENTS} clients, 0 failed; clients per v2 replica {per_replica:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn labelled_containers_are_health_checked_continuously() {
    if !docker_ready() {
        return;
    }
    build_who(WHO_V1, "v1");
    let env = Env::new("labelhealth").await;
    let engine = env.engine().await;
    let app = format!("lh-{}", std::process::id());
    let (run, net) = (env.run.clone(), env.network.clone());
    let start = || {
        env.docker(&format!(
            "run -d --network {net} --label berth.test.run={run} --label berth.app={app} --label berth.role=app \
             --label berth.domain.0=lh.test --label berth.health.path=/health --label berth.health.interval=100ms \
             --label berth.health.fall=2 --label berth.health.rise=1 --label berth.balancer=source_ip {WHO_V1}"
        ))
    };
    let a = start();
    let b = start();
    let mut c = Client { jar: None, pins: 0 };
    // Both discovered (each passed the gate), then routed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine
        .app(&app)
        .await
        .map(|s| s.discovered.len())
        .unwrap_or(0)
        < 2
    {
        assert!(Instant::now() < deadline, "both containers discovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while who(&env, "lh.test", &mut c, "x").await.is_err() {
        assert!(Instant::now() < deadline, "routed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // source_ip: one client address (127.0.0.1) always lands on one container.
    let first = who(&env, "lh.test", &mut c, "x").await.unwrap().replica;
    for _ in 0..20 {
        assert_eq!(
            who(&env, "lh.test", &mut c, "x").await.unwrap().replica,
            first
        );
    }
    let (pinned, other) = if a.starts_with(&first) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // Its health check starts failing while the container keeps running: the prober takes it
    // out (fall 2 × 100 ms), the client moves to the other container.
    let t0 = Instant::now();
    env.docker(&format!("exec {pinned} rm /www/health"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = who(&env, "lh.test", &mut c, "x").await.unwrap();
        if other.starts_with(&w.replica) {
            break;
        }
        if Instant::now() > deadline {
            let t = env.daemon.as_ref().unwrap().tables.load_full();
            for r in t.routes() {
                println!("route {} check {:?}", r.name, r.spec.health_check);
                for b in &r.backends {
                    println!("  {} {} up={}", b.id, b.address, b.health.is_up());
                }
            }
            panic!("still on the failing container {pinned}, first {first}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left_after = t0.elapsed();
    println!("labelled container with failing /health left the route after {left_after:?}");
    // interval 100 ms × fall 2, under steady traffic to the same container (which once kept
    // resetting the check's failure streak: 7.8 s, or never).
    assert!(left_after < Duration::from_secs(2), "{left_after:?}");
    // Healthy again: it comes back (rise 1) and, source_ip being consistent, takes its client back.
    env.docker(&format!("exec {pinned} cp /www/index.html /www/health"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = who(&env, "lh.test", &mut c, "x").await.unwrap();
        if pinned.starts_with(&w.replica) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the recovered container was not routed again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request through the proxy: (status, Retry-After present, body) or a transport error.
async fn probe_req(
    env: &Env,
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Empty<Bytes>,
    >,
    host: &str,
    accept: Option<&str>,
) -> Result<(u16, bool, String), String> {
    let mut req =
        http::Request::get(format!("http://{}/", env.http_addr())).header(http::header::HOST, host);
    if let Some(a) = accept {
        req = req.header(http::header::ACCEPT, a);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let retry_after = resp.headers().contains_key(http::header::RETRY_AFTER);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((
        status,
        retry_after,
        String::from_utf8_lossy(&body).trim().to_string(),
    ))
}

/// What a bounded load loop saw.
#[derive(Debug, Default)]
struct Seen {
    ok: HashMap<String, u64>,
    maintenance: u64,
    other: Vec<String>,
}

/// `workers` tasks (half on keep-alive connections, half on a new connection per request)
/// until `stop`, at most `max` requests in all and `max_time`.
async fn gate_load(
    env: Arc<Env>,
    host: &'static str,
    workers: usize,
    max: u64,
    max_time: Duration,
    stop: Arc<AtomicBool>,
) -> Seen {
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = Instant::now() + max_time;
    let mut handles = Vec::new();
    for w in 0..workers {
        let (env, stop, sent) = (env.clone(), stop.clone(), sent.clone());
        handles.push(tokio::spawn(async move {
            let mut b =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
            if w % 2 == 1 {
                b.pool_max_idle_per_host(0);
            }
            let client = b.build_http();
            let mut s = Seen::default();
            while !stop.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && sent.fetch_add(1, Ordering::Relaxed) < max
            {
                match probe_req(&env, &client, host, None).await {
                    Ok((200, _, body)) => *s.ok.entry(body).or_default() += 1,
                    Ok((503, true, _)) => s.maintenance += 1,
                    other => s.other.push(format!("{other:?}")),
                }
            }
            s
        }));
    }
    let mut all = Seen::default();
    for h in handles {
        let s = h.await.expect("load worker");
        for (k, v) in s.ok {
            *all.ok.entry(k).or_default() += v;
        }
        all.maintenance += s.maintenance;
        all.other.extend(s.other);
    }
    all
}

fn one_replica(image: &str, host: &str) -> berth::model::deploy::AppSpec {
    serde_json::from_value(serde_json::json!({
        "image": image,
        "domains": [host],
        "replicas": 1,
        "strategy": "replace",
        "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
        "drain_timeout": "3s",
        "deploy_timeout": "20s",
    }))
    .expect("spec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn replace_deploy_of_one_replica_fails_no_request() {
    if !docker_ready() {
        return;
    }
    let env = Arc::new(Env::new("hold").await);
    let engine = env.engine().await;
    let host = "hold.test";
    let d1 = engine
        .deploy("hold", one_replica(IMG_V1, host), reference(IMG_V1), "test")
        .await
        .unwrap();
    let r1 = tokio::time::timeout(WAIT, engine.wait(&d1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r1.state, DeployState::Succeeded, "{:?}", r1.reason);
    env.wait_body(host, "v1", Duration::from_secs(10)).await;

    let loader = Background::start(|stop| {
        gate_load(env.clone(), host, 4, 100_000, Duration::from_secs(90), stop)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let d2 = engine
        .deploy("hold", one_replica(IMG_V2, host), reference(IMG_V2), "test")
        .await
        .unwrap();
    let r2 = tokio::time::timeout(WAIT, engine.wait(&d2))
        .await
        .unwrap()
        .unwrap();
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = loader.finish().await;
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);
    println!(
        "replace deploy of a 1-replica app under load (4 workers, 2 keep-alive, 2 new connection per request): \
         deploy took {took:?}; answered {:?}, 503 {}, failed {}",
        seen.ok,
        seen.maintenance,
        seen.other.len()
    );
    assert!(
        seen.other.is_empty() && seen.maintenance == 0,
        "failed requests: {:?}",
        &seen.other[..seen.other.len().min(5)]
    );
    assert!(seen.ok.get("v1").copied().unwrap_or(0) > 0);
    assert!(seen.ok.get("v2").copied().unwrap_or(0) > 0);
    assert!(engine.gate("hold").unwrap().is_empty(), "the hold ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn maintenance_and_pause_under_load_and_across_a_restart() {
    if !docker_ready() {
        return;
    }
    let env = Arc::new(Env::new("maint").await);
    let engine = env.engine().await;
    let host = "maint.test";
    let mut spec = one_replica(IMG_V1, host);
    spec.replicas = 2;
    spec.strategy = berth::model::deploy::Strategy::Rolling;
    let d1 = engine
        .deploy("maint", spec, reference(IMG_V1), "test")
        .await
        .unwrap();
    let r1 = tokio::time::timeout(WAIT, engine.wait(&d1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r1.state, DeployState::Succeeded, "{:?}", r1.reason);
    env.wait_body(host, "v1", Duration::from_secs(10)).await;

    // Bad input: 422-style errors naming the field, nothing applied.
    let bad = engine
        .maintenance(
            "maint",
            Some(berth::model::traffic::Maintenance {
                retry_after: 0,
                ..Default::default()
            }),
        )
        .unwrap_err();
    assert!(bad.to_string().contains("retry_after"), "{bad}");
    assert!(engine.gate("maint").unwrap().is_empty());
    assert!(engine.pause("nosuch", Default::default()).is_err());

    // Maintenance on and off under load: only 200 v1 or 503 with Retry-After, no errors.
    let loader = Background::start(|stop| {
        gate_load(env.clone(), host, 4, 100_000, Duration::from_secs(60), stop)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    engine
        .maintenance(
            "maint",
            Some(berth::model::traffic::Maintenance {
                message: Some("Back at 10:00".into()),
                retry_after: 90,
                allow: vec![],
            }),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Pages while it is on.
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let (s, ra, html) = probe_req(&env, &c, host, Some("text/html,*/*"))
        .await
        .unwrap();
    assert_eq!((s, ra), (503, true));
    assert!(
        html.contains("Back at 10:00") && html.contains("<html"),
        "{html}"
    );
    let (s, _, json) = probe_req(&env, &c, host, Some("application/json"))
        .await
        .unwrap();
    assert_eq!(s, 503);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["retry_after"], 90);
    engine.maintenance("maint", None).unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let seen = loader.finish().await;
    println!(
        "maintenance on/off under load (4 workers): 200 {:?}, 503+Retry-After {}, other {}",
        seen.ok,
        seen.maintenance,
        seen.other.len()
    );
    assert!(
        seen.other.is_empty(),
        "{:?}",
        &seen.other[..seen.other.len().min(5)]
    );
    assert!(seen.maintenance > 0 && seen.ok.get("v1").copied().unwrap_or(0) > 0);

    // Pause: a request is held, not refused, and goes on at resume.
    engine
        .pause(
            "maint",
            berth::model::traffic::Pause {
                timeout: Duration::from_secs(20),
            },
        )
        .unwrap();
    let held = {
        let env = env.clone();
        tokio::spawn(async move {
            let c =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let t = Instant::now();
            (probe_req(&env, &c, host, None).await, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!held.is_finished(), "the request was held");
    engine.resume("maint").unwrap();
    let (got, waited) = held.await.unwrap();
    assert_eq!(got.unwrap().0, 200);
    println!("held request answered 200 after {waited:?} (resumed at ~800ms)");
    assert!(waited >= Duration::from_millis(700));
    // A pause with a short timeout: 503 after it.
    engine
        .pause(
            "maint",
            berth::model::traffic::Pause {
                timeout: Duration::from_millis(300),
            },
        )
        .unwrap();
    let t = Instant::now();
    assert_eq!(probe_req(&env, &c, host, None).await.unwrap().0, 503);
    assert!(t.elapsed() >= Duration::from_millis(250));

    // Both persist: a new engine on the same database (a restart) restores them.
    engine
        .maintenance("maint", Some(Default::default()))
        .unwrap();
    drop(engine);
    let engine = env.engine().await;
    let gate = engine.gate("maint").unwrap();
    assert!(
        gate.paused.is_some() && gate.maintenance.is_some(),
        "{gate:?}"
    );
    let (s, ra, _) = probe_req(&env, &c, host, None).await.unwrap();
    assert_eq!((s, ra), (503, true), "maintenance after the restart");
    engine.maintenance("maint", None).unwrap();
    engine.resume("maint").unwrap();
    env.wait_body(host, "v1", Duration::from_secs(5)).await;
}
