//! `api.domain` with a real ACME CA (Debian's `pebble`, `pebble-challtestsrv` as its DNS: every
//! name is 127.0.0.1) and real dockerd: berthd gets a certificate for the API's name like for
//! any app, the `berth` CLI trusts pebble's root with `--ca-cert`, and a whole deploy (image
//! upload through the proxy, event stream) runs over `https://api.berth.test`, with the
//! proxy's own body limit set far below the image size (the API route has its own).
//! Runs only with BERTH_SYSTEM_TESTS=1.

use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{free_port, start_pebble, wait_for};
use berth::model::config::{AcmeChallenge, ByteSize, Config};

const DOMAIN: &str = "api.berth.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn deploy_over_https_on_api_domain_with_an_acme_certificate() {
    if support::docker::skip() {
        return;
    }
    support::docker::prepare();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http_port = free_port();
    let pebble = start_pebble(http_port, free_port(), None).await;
    let data = tempfile::tempdir().unwrap();
    let app = format!("apidomain-{}", std::process::id());
    let network = format!("berth-t-{app}");
    let _cleanup = support::docker::Cleanup {
        app: app.clone(),
        network: network.clone(),
    };

    let mut c = Config::default();
    c.http.listen = SocketAddr::from(([127, 0, 0, 1], http_port));
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.api.domain = Some(DOMAIN.to_string().try_into().unwrap());
    c.tls.enabled = Some(true);
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.acme = Some(pebble.acme(AcmeChallenge::Http01));
    // Far below the image tar: uploads on the API route must not be held to it.
    c.proxy.max_body_size = ByteSize(64 << 10);
    c.data_dir = data.path().to_path_buf();
    c.log.access_log = false;
    c.deploy.enabled = berth::model::config::DeployEnabled::Required;
    c.deploy.network = network;
    c.deploy.stop_grace = Duration::from_secs(2);
    c.validate().expect("valid config");
    let running = berth::daemon::start(c, None).await.expect("daemon starts");
    let https = running.https_addr.expect("https");
    let (_, token) = running.registry.store().create_token("laptop").unwrap();

    // The API's name is certified like any app's.
    let t = Instant::now();
    let store = running.certs.clone().expect("cert store");
    let issued = wait_for(Duration::from_secs(60), || {
        let store = store.clone();
        async move {
            store
                .status()
                .into_iter()
                .find(|s| s.domain == DOMAIN && s.not_after.is_some())
        }
    })
    .await;
    assert!(
        issued.is_some(),
        "no certificate for {DOMAIN}: {:?}",
        store.status()
    );
    println!(
        "cli_api_pebble: certificate for {DOMAIN} in {:?}",
        t.elapsed()
    );

    // The CLI trusts pebble's root (new on every pebble start) through --ca-cert.
    let root_pem = pebble.root_pem().await;
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("pebble-root.pem");
    std::fs::write(&root, &root_pem).unwrap();
    let cfg = work.path().join("cli.yaml");
    let url = format!("https://{DOMAIN}:{}", https.port());
    let (code, out) = berth(
        &cfg,
        work.path(),
        &[
            "server",
            "add",
            "prod",
            &url,
            "--token",
            &token,
            "--ca-cert",
            root.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");

    // A whole deploy through the proxy: upload (bigger than proxy.max_body_size), events.
    let tar = work.path().join("v1.tar");
    let st = Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg(support::docker::IMG_V1)
        .status()
        .unwrap();
    assert!(st.success());
    let size = std::fs::metadata(&tar).unwrap().len();
    assert!(size > 64 << 10, "{size}");
    let image = format!("image: {}", support::docker::IMG_V1);
    let host = format!("{app}.test");
    support::docker::write_app_file(work.path(), &app, &image, &host, 1, "");
    let t = Instant::now();
    let (code, out) = berth(
        &cfg,
        work.path(),
        &["deploy", "--image-tar", tar.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("uploaded {size} bytes")) && out.contains("succeeded"),
        "{out}"
    );
    println!(
        "cli_api_pebble: berth deploy of {size} bytes over https://{DOMAIN} in {:?}",
        t.elapsed()
    );
    let (code, out) = berth(&cfg, work.path(), &["status", &app]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("healthy"), "{out}");
    // The app itself got a certificate too and serves over HTTPS.
    let app_host = format!("{app}.test");
    let app_cert = wait_for(Duration::from_secs(60), || {
        let (store, host) = (store.clone(), app_host.clone());
        async move {
            store
                .status()
                .into_iter()
                .find(|s| s.domain == host && s.not_after.is_some())
        }
    })
    .await;
    assert!(app_cert.is_some(), "{:?}", store.status());

    let (code, out) = berth(&cfg, work.path(), &["stop", &app]).await;
    assert_eq!(code, 0, "{out}");
    running.shutdown().await;
    drop(pebble);
}

/// `berth ARGS` resolving the API's domain to loopback.
async fn berth(cfg: &Path, cwd: &Path, args: &[&str]) -> (i32, String) {
    let resolve = format!("{DOMAIN}=127.0.0.1");
    support::cli::berth(cfg, cwd, &[("BERTH_RESOLVE", resolve.as_str())], args).await
}
