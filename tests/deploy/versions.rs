//! Versions side by side (A/B by version, issue 21 item 3) against a real dockerd through the
//! real proxy, under real load (run with BERTH_SYSTEM_TESTS=1): three versions deployed with
//! `strategy: side_by_side`, split 30/30/40 by image tag over 6,000 requests (shares within
//! ±2 pp, 0 failed), bad splits refused with the key named and nothing applied, v1 removed under
//! load (0 failed, its containers gone), a restart keeps the versions and the split, and a
//! plain deploy afterwards replaces them all.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::canary::{
    deploy_and_wait, get_keepalive, images, load, load_in_background, spec, unix_ms, Seen, V1, V2,
};
use crate::support::docker::*;
use berth::deploy::DeployError;
use berth::model::deploy::{AppSpec, Strategy};
use berth::store::deployments::DeployState;

const V3: &str = "berth-test-canary:v3";

fn beside(image: &str, host: &str) -> AppSpec {
    let mut s = spec(image, host, 1, None);
    s.strategy = Strategy::SideBySide;
    s.validate().expect("valid spec");
    s
}

/// Requests per version among `seen`, and the failures.
fn tally(seen: &[Seen]) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut n = BTreeMap::new();
    let mut failed = Vec::new();
    for s in seen {
        match &s.answer {
            Ok(v) => *n.entry(v.clone()).or_insert(0) += 1,
            Err(e) => failed.push(e.clone()),
        }
    }
    (n, failed)
}

fn share(n: &BTreeMap<String, usize>, v: &str) -> f64 {
    let total: usize = n.values().sum();
    n.get(v).copied().unwrap_or(0) as f64 * 100.0 / total.max(1) as f64
}

/// Deployments of the app's containers (running or not), sorted. One `docker ps` (no
/// inspect: a container removed between listing and inspecting is not an error here).
fn deployments_running(env: &Env, app: &str) -> Vec<String> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-a", "--filter"])
        .arg(format!("label=berth.test.run={}", env.run))
        .args(["--filter"])
        .arg(format!("label=berth.app={app}"))
        .args(["--format", "{{.Label \"berth.deployment\"}}"])
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "{out:?}");
    let mut d: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    d.sort();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn three_versions_side_by_side_split_remove_and_restart() {
    if !docker_ready() {
        return;
    }
    images();
    build_cgi_image(
        V3,
        "v3\n",
        "printf 'Content-Type: text/plain\\r\\n\\r\\nv3\\n'\n",
    );
    let env = Arc::new(Env::new("abthree").await);
    let engine = env.engine().await;
    let (host, app) = ("abthree.test", "abthree");
    let (d1, r1) = deploy_and_wait(&engine, app, spec(V1, host, 1, None), V1).await;
    assert_eq!(r1.state, DeployState::Succeeded, "{:?}", r1.reason);
    // v2 and v3 start next to it, each with weight 0: v1 keeps every request.
    let (d2, r2) = deploy_and_wait(&engine, app, beside(V2, host), V2).await;
    assert_eq!(r2.state, DeployState::Succeeded, "{:?}", r2.reason);
    let (d3, r3) = deploy_and_wait(&engine, app, beside(V3, host), V3).await;
    assert_eq!(r3.state, DeployState::Succeeded, "{:?}", r3.reason);
    let t = engine.traffic(app).unwrap();
    assert_eq!(
        t.weights,
        [(d1.clone(), 100), (d2.clone(), 0), (d3.clone(), 0)].into()
    );
    for _ in 0..30 {
        assert_eq!(get_keepalive(&env, host, None).await.unwrap().1, "v1");
    }
    let status = engine.app(app).await.unwrap();
    assert_eq!(status.versions.len(), 3, "{:?}", status.versions);
    assert_eq!(
        status.current.as_ref().map(|c| c.id.clone()),
        Some(d3.clone())
    );
    // Bad splits: refused with the key named, nothing applied.
    let bad: Vec<(BTreeMap<String, u32>, &str)> = vec![
        (
            [("v1".into(), 30), ("v2".into(), 30), ("v9".into(), 40)].into(),
            "weights.v9",
        ),
        ([("v1".into(), 30), ("v2".into(), 30)].into(), "weights"),
        ([("v1".into(), 130)].into(), "weights.v1"),
    ];
    for (w, field) in bad {
        match engine.set_traffic(app, &w, None) {
            Err(DeployError::Invalid(e)) => assert_eq!(e.field, field, "{w:?}: {e:?}"),
            other => panic!("{w:?}: {other:?}"),
        }
        assert_eq!(engine.traffic(app).unwrap().weights[&d1], 100, "{w:?}");
    }
    // 30/30/40 by image tag.
    let w: BTreeMap<String, u32> = [("v1".into(), 30), ("v2".into(), 30), ("v3".into(), 40)].into();
    let split = engine.set_traffic(app, &w, None).unwrap();
    assert_eq!(
        split.weights,
        [(d1.clone(), 30), (d2.clone(), 30), (d3.clone(), 40)].into()
    );
    let t0 = Instant::now();
    let seen = load(
        env.clone(),
        host,
        (4, 2),
        6_000,
        Duration::from_secs(240),
        Arc::new(AtomicBool::new(false)),
    )
    .await;
    let (n, failed) = tally(&seen);
    let total: usize = n.values().sum();
    println!(
        "side by side 30/30/40: {total} ok, {} failed in {:?}: v1 {:.2}%, v2 {:.2}%, v3 {:.2}%",
        failed.len(),
        t0.elapsed(),
        share(&n, "v1"),
        share(&n, "v2"),
        share(&n, "v3")
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(total >= 6_000, "{total} requests");
    for (v, want) in [("v1", 30.0), ("v2", 30.0), ("v3", 40.0)] {
        let got = share(&n, v);
        assert!((got - want).abs() <= 2.0, "{v}: {got:.2}% vs {want}%");
    }
    // Remove v1 under load: its weight goes to v2 and v3, it drains, its container goes.
    let loader = load_in_background(&env, host, 20_000, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let removed_at = unix_ms();
    let rest = engine.remove_version(app, "v1").unwrap();
    assert_eq!(rest.weights, [(d2.clone(), 43), (d3.clone(), 57)].into());
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while deployments_running(&env, app).contains(&d1) {
        assert!(Instant::now() < deadline, "v1's container removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone_in = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = loader.finish().await;
    let (n, failed) = tally(&seen);
    let late_v1 = seen
        .iter()
        .filter(|s| s.at > removed_at + 200 && s.answer.as_deref() == Ok("v1"))
        .count();
    let after: Vec<Seen> = seen
        .iter()
        .filter(|s| s.at > removed_at + 200)
        .cloned()
        .collect();
    let (n_after, _) = tally(&after);
    println!(
        "remove v1 under load: {} requests ({n:?}), {} failed; v1 container gone {gone_in:?} \
         after the call; sent later than 200 ms after it: v2 {:.2}%, v3 {:.2}%, v1 {late_v1}",
        seen.len(),
        failed.len(),
        share(&n_after, "v2"),
        share(&n_after, "v3"),
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(late_v1, 0, "v1 got requests after its removal");
    assert_eq!(deployments_running(&env, app), {
        let mut v = vec![d2.clone(), d3.clone()];
        v.sort();
        v
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.running(app).is_some() {
        assert!(Instant::now() < deadline, "removal done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The newest version is the current one: not removable this way.
    assert!(matches!(
        engine.remove_version(app, "v3"),
        Err(DeployError::Versions(_))
    ));
    // Restart (the process dies, no cleanup): the two versions and the split are back at once.
    drop(engine);
    let engine = env.engine_with(env.engine_config()).await;
    let mut first = HashMap::new();
    for _ in 0..100 {
        let (s, body, _) = get_keepalive(&env, host, None).await.unwrap();
        assert_eq!(s, 200);
        *first.entry(body).or_insert(0) += 1;
    }
    println!("restart with v2/v3 at 43/57: first 100 requests after the restart {first:?}");
    assert_eq!((first.get("v2"), first.get("v3")), (Some(&43), Some(&57)));
    engine.reconciled().await;
    assert_eq!(
        engine.traffic(app).unwrap().weights,
        [(d2.clone(), 43), (d3.clone(), 57)].into()
    );
    let status = engine.app(app).await.unwrap();
    let versions: Vec<(String, u32, Option<u32>)> = status
        .versions
        .iter()
        .map(|v| (v.label.clone(), v.ready, v.weight))
        .collect();
    assert_eq!(
        versions,
        vec![("v2".into(), 1, Some(43)), ("v3".into(), 1, Some(57))]
    );
    assert_eq!(
        deployments_running(&env, app).len(),
        2,
        "reconcile kept both"
    );
    // A canary needs one stable version.
    let canary = serde_json::json!({"steps": [{"weight": "10%", "hold": "1m"}]});
    assert!(matches!(
        engine
            .deploy(app, spec(V1, host, 1, Some(canary)), reference(V1), "test")
            .await,
        Err(DeployError::Versions(_))
    ));
    // A plain deploy replaces every version.
    let (d4, r4) = deploy_and_wait(&engine, app, spec(V1, host, 1, None), V1).await;
    assert_eq!(r4.state, DeployState::Succeeded, "{:?}", r4.reason);
    assert_eq!(deployments_running(&env, app), vec![d4.clone()]);
    assert_eq!(
        engine.traffic(app).unwrap().weights,
        [(d4.clone(), 100)].into()
    );
    for _ in 0..20 {
        assert_eq!(get_keepalive(&env, host, None).await.unwrap().1, "v1");
    }
}
