//! `deploy.pull` (issue 19): the daemon's ceiling over every app's pull policy, with a real
//! dockerd. Under `never`, an app asking `pull: always` deploys the image already on the
//! server without contacting a registry (its events say the policy was lowered), and an app
//! whose image is absent fails at once with a reason naming `deploy.pull` — never a pull.

use std::time::{Duration, Instant};

use berth::deploy::{EngineConfig, ImageSource};
use berth::model::deploy::PullPolicy;
use berth::store::deployments::DeployState;

use crate::support::docker::{skip, Env, IMG_V1};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn a_never_ceiling_keeps_pull_always_off_the_registry() {
    if skip() {
        return;
    }
    let env = Env::new("pullcap").await;
    let engine = env
        .engine_with(EngineConfig {
            pull_ceiling: PullPolicy::Never,
            ..env.engine_config()
        })
        .await;
    engine.reconciled().await;
    let by_ref = |r: &str| ImageSource::Reference {
        reference: r.into(),
        creds: None,
    };

    // The image is on the server: deployed as is, and the deploy says why nothing was pulled.
    let mut spec = env.spec(IMG_V1, 1, "pullcap.test");
    spec.pull = PullPolicy::Always;
    let id = engine
        .deploy("pullcap", spec, by_ref(IMG_V1), "t")
        .await
        .unwrap();
    let rec = engine.wait(&id).await.unwrap();
    assert_eq!(rec.state, DeployState::Succeeded, "{:?}", rec.reason);
    let (events, _) = engine.subscribe(&id).unwrap();
    assert!(
        events.iter().any(|e| e
            .message
            .contains("pull: always lowered to never by the server's deploy.pull")),
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e.message.starts_with("pulling")),
        "{events:#?}"
    );
    env.wait_body("pullcap.test", "v1", Duration::from_secs(10))
        .await;

    // Absent image, on a registry that would refuse the connection if it were contacted:
    // the deploy fails at once naming deploy.pull, not with a registry error.
    let absent = "127.0.0.1:9/berth-test-absent:v1";
    let mut spec = env.spec(absent, 1, "pullcap2.test");
    spec.pull = PullPolicy::Always;
    let t0 = Instant::now();
    let id = engine
        .deploy("pullcap2", spec, by_ref(absent), "t")
        .await
        .unwrap();
    let rec = engine.wait(&id).await.unwrap();
    assert_eq!(rec.state, DeployState::Failed);
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.contains("not present on the server") && reason.contains("deploy.pull is never"),
        "{reason}"
    );
    assert!(!reason.contains("connection refused"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(env.containers("pullcap2").is_empty());
}
