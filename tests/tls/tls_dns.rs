//! ACME DNS-01 against real parts: Debian's `knotd`, authoritative for `example.test` and
//! accepting TSIG-signed RFC 2136 updates of TXT records at `_acme-challenge` and at one
//! delegation target, and `pebble` resolving through that knotd. Covers a wildcard route
//! (`*.example.test`) getting one wildcard certificate served for two subdomains, CNAME
//! delegation (`_acme-challenge.app.example.test CNAME app.acme.example.test.`, an in-zone
//! target: pebble does not follow CNAMEs into another zone), removal of the TXT records after
//! validation, renewal of 60-second certificates under a bounded handshake loop on both
//! subdomains with zero failures, an update outside the server's ACL (BADKEY), and a refused
//! update (wrong TSIG secret) that shows BADSIG in the status list while the old certificate
//! keeps being served. Runs only with
//! BERTH_SYSTEM_TESTS=1.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use berth::daemon;
use berth::model::config::{AcmeChallenge, AcmeConfig, Config, DnsUpdateConfig, TsigConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const ZONE: &str = "example.test";

async fn pebble_root(pebble: &Pebble) -> rustls::RootCertStore {
    let (resp, _) = tls_get(
        pebble.mgmt,
        client_config(pebble.ca.roots()),
        "localhost",
        "/roots/0",
    )
    .await
    .expect("fetch pebble root");
    assert_eq!(resp.status, 200, "{resp:?}");
    let der = CertificateDer::from_pem_slice(resp.body.as_bytes()).expect("root PEM");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    roots
}

fn daemon_config(
    data_dir: &Path,
    pebble: &Pebble,
    knot: &Knot,
    secret_file: &Path,
    backend: SocketAddr,
) -> Config {
    let mut c = Config::default();
    c.http.listen = "127.0.0.1:0".parse().expect("addr");
    c.api.listen = "127.0.0.1:0".parse().expect("addr");
    c.tls.enabled = Some(true);
    c.tls.listen = "127.0.0.1:0".parse().expect("addr");
    c.tls.acme = Some(AcmeConfig {
        directory: pebble.directory.clone(),
        email: Some("ops@berth.test".into()),
        ca_root: Some(pebble.ca_pem.clone()),
        challenge: AcmeChallenge::Dns01,
        dns: Some(DnsUpdateConfig {
            server: knot.addr.to_string(),
            zone: ZONE.into(),
            tsig: TsigConfig {
                name: knot.key_name.clone(),
                algorithm: "hmac-sha256".into(),
                secret: None,
                secret_file: Some(secret_file.to_path_buf()),
            },
            ttl: 60,
            propagation_timeout: Duration::from_secs(10),
            delegate: [(
                "_acme-challenge.app.example.test".to_string(),
                "app.acme.example.test".to_string(),
            )]
            .into_iter()
            .collect(),
            delegate_all: None,
        }),
        ..AcmeConfig::default()
    });
    c.data_dir = data_dir.to_path_buf();
    c.log.access_log = false;
    c.routes = serde_json::from_value(serde_json::json!([
        {"name": "wild", "domains": ["*.example.test"], "backends": [{"address": backend.to_string()}]},
        {"name": "app", "domains": ["app.example.test"], "backends": [{"address": backend.to_string()}]},
        // Its challenge owner is outside knot's update ACL: every order is refused (BADKEY).
        {"name": "denied", "domains": ["denied.example.test"], "backends": [{"address": backend.to_string()}]},
    ]))
    .expect("routes");
    c
}

async fn wait_status(
    store: &berth::tls::CertStore,
    domain: &str,
    f: impl Fn(&berth::tls::CertStatus) -> bool,
    deadline: Duration,
) -> berth::tls::CertStatus {
    let found = wait_for(deadline, || async {
        store
            .status()
            .into_iter()
            .find(|s| s.domain == domain && f(s))
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "no matching status for {domain} in time: {:?}",
            store.status()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn dns01_wildcard_delegation_renewal_and_bad_key() {
    if std::env::var("BERTH_SYSTEM_TESTS").as_deref() != Ok("1") {
        println!("skipped: set BERTH_SYSTEM_TESTS=1 (needs knotd, kdig and pebble)");
        return;
    }
    let started = Instant::now();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("berth=info")
        .with_test_writer()
        .try_init();
    let knot = start_knot(
        ZONE,
        &["_acme-challenge.app 60 CNAME app.acme.example.test."],
        &["_acme-challenge", "app.acme"],
    )
    .await;
    // 60-second certificates: renewal is due after 40 s.
    let pebble = start_pebble_with_dns(free_port(), free_port(), Some(60), Some(knot.addr)).await;
    let backend = backend().await;
    let data = tempfile::tempdir().expect("tmp");
    let secret_file = data.path().join("acme-key.tsig");
    std::fs::write(
        &secret_file,
        format!("hmac-sha256:acme-key:{}\n", knot.secret),
    )
    .expect("secret file");

    let d = daemon::start(
        daemon_config(data.path(), &pebble, &knot, &secret_file, backend),
        None,
    )
    .await
    .expect("daemon");
    let store = d.certs.clone().expect("store");
    let issue_started = Instant::now();
    let issued = |s: &berth::tls::CertStatus| s.not_after.is_some();
    let wild = wait_status(&store, "*.example.test", issued, Duration::from_secs(90)).await;
    let app = wait_status(&store, "app.example.test", issued, Duration::from_secs(90)).await;
    let issued_in = issue_started.elapsed();
    assert_eq!(wild.names, vec!["*.example.test"], "{wild:?}");
    assert_eq!(app.names, vec!["app.example.test"], "{app:?}");
    for s in [&wild, &app] {
        assert!(
            s.issuer.as_deref().unwrap_or("").contains("Pebble"),
            "{s:?}"
        );
        assert!(s.last_error.is_none(), "{s:?}");
    }
    // An update outside the server's ACL: BADKEY, named with the record, no certificate.
    let denied = wait_status(
        &store,
        "denied.example.test",
        |s| s.last_error.is_some(),
        Duration::from_secs(30),
    )
    .await;
    let e = denied.last_error.clone().unwrap_or_default();
    assert!(
        e.contains("BADKEY")
            && e.contains("_acme-challenge.denied.example.test")
            && e.contains("ACL"),
        "{e}"
    );
    assert!(denied.not_after.is_none(), "{denied:?}");
    // Records are gone once validation is over (delegated one at its target).
    let gone = wait_for(Duration::from_secs(10), || async {
        (knot.txt("_acme-challenge.example.test").is_empty()
            && knot.txt("app.acme.example.test").is_empty())
        .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "TXT records left: {:?} {:?}",
        knot.txt("_acme-challenge.example.test"),
        knot.txt("app.acme.example.test")
    );

    // One wildcard certificate serves two different subdomains, routed by the wildcard route.
    let client = client_config(pebble_root(&pebble).await);
    let https = d.https_addr.expect("https");
    let mut serials = Vec::new();
    for name in ["one.example.test", "two.example.test"] {
        let (resp, leaf) = tls_get(https, client.clone(), name, "/x")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (200, "backend /x"),
            "{name}"
        );
        assert_eq!(names_of(&leaf), vec!["*.example.test"], "{name}");
        serials.push(serial_of(&leaf));
    }
    assert_eq!(serials[0], serials[1], "the same certificate");
    let (resp, app_leaf) = tls_get(https, client.clone(), "app.example.test", "/a")
        .await
        .expect("app.example.test");
    assert_eq!(resp.body, "backend /a");
    assert_eq!(names_of(&app_leaf), vec!["app.example.test"]);
    let app_serial = serial_of(&app_leaf);

    // Renewal under load: handshakes alternate between the two subdomains until the wildcard
    // certificate changes, then a little longer. None may fail.
    let first = serials[0].clone();
    let loop_start = Instant::now();
    let (mut ok, mut failed, mut renewed_at) = (0u32, Vec::new(), None);
    for i in 0..4000u32 {
        if loop_start.elapsed() > Duration::from_secs(120) {
            break;
        }
        let name = if i % 2 == 0 {
            "one.example.test"
        } else {
            "two.example.test"
        };
        match tls_get(https, client.clone(), name, "/loop").await {
            Ok((resp, leaf)) if resp.status == 200 => {
                ok += 1;
                let serial = serial_of(&leaf);
                if renewed_at.is_none() && serial != first {
                    renewed_at = Some(loop_start.elapsed());
                }
            }
            Ok((resp, _)) => failed.push(format!("{name}: status {}", resp.status)),
            Err(e) => failed.push(format!("{name}: {e}")),
        }
        if renewed_at.is_some_and(|t| loop_start.elapsed() > t + Duration::from_secs(3)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let renewed_at = renewed_at.unwrap_or_else(|| {
        panic!(
            "wildcard certificate not renewed within 120 s ({ok} ok): {:?}",
            store.status()
        )
    });
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );

    // A refused update: the key file now holds a wrong secret. The retry fails with BADSIG,
    // naming server, zone and key, and the certificate already issued keeps being served.
    let current_app = serial_of(
        &tls_get(https, client.clone(), "app.example.test", "/")
            .await
            .expect("app")
            .1,
    );
    std::fs::write(
        &secret_file,
        "hmac-sha256:acme-key:JgIfzgbt33KTHrHX7sQDWkt6DP93qvb6UgKSq5FVMOQ=\n",
    )
    .expect("wrong secret");
    let (_, token) = d.registry.store().create_token("ops").expect("token");
    // 409 while a scheduled renewal of app.example.test runs (it read the good key): ask again.
    let mut r = None;
    for _ in 0..60 {
        let resp = http_request(
            d.api_addr,
            "POST",
            "/v1/certificates/app.example.test/retry",
            &[("authorization", &format!("Bearer {token}"))],
            Some("{}"),
        )
        .await
        .expect("API");
        if resp.status != 409 {
            r = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let r = r.expect("retry accepted within 30 s");
    assert_eq!(r.status, 202, "{r:?}");
    let refused = wait_status(
        &store,
        "app.example.test",
        |s| s.last_error.is_some(),
        Duration::from_secs(30),
    )
    .await;
    let err = refused.last_error.clone().unwrap_or_default();
    for part in [
        "BADSIG",
        &knot.addr.to_string(),
        "zone example.test",
        "TSIG key acme-key",
        "app.acme.example.test",
    ] {
        assert!(err.contains(part), "{part:?} missing from {err}");
    }
    assert!(
        refused.not_after.is_some(),
        "the old certificate stays listed: {refused:?}"
    );
    assert!(
        refused.next_renewal.is_some(),
        "a retry is scheduled: {refused:?}"
    );
    let (resp, leaf) = tls_get(https, client.clone(), "app.example.test", "/still")
        .await
        .expect("still served");
    assert_eq!(resp.body, "backend /still");
    assert_eq!(
        serial_of(&leaf),
        current_app,
        "the old certificate is served"
    );
    // The status list (what GET /v1/certificates returns) never holds a secret.
    let listed = http_request(
        d.api_addr,
        "GET",
        "/v1/certificates",
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await
    .expect("API");
    assert!(listed.body.contains("BADSIG"), "{}", listed.body);
    assert!(
        !listed.body.contains(&knot.secret) && !listed.body.contains("JgIfzgbt33"),
        "secret leaked: {}",
        listed.body
    );

    println!(
        "dns-01: 2 certificates (wildcard + delegated) in {issued_in:?}; wildcard renewal seen \
         after {renewed_at:?} of looping, {ok} TLS requests on 2 names, 0 failed; app serial \
         {app_serial} kept through BADSIG; whole test {:?}",
        started.elapsed()
    );
    d.shutdown().await;
}

/// The update client on its own against knotd: add, see, delete; an answer too big for UDP
/// (no EDNS: 512 bytes) is fetched again over TCP; a wrong key name (BADKEY) and a zone the
/// server does not serve (NOTAUTH) give errors naming server, zone and key.
#[tokio::test]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn dns_update_client_tcp_fallback_and_refusals() {
    use berth::model::config::Secret;
    use berth::tls::dns01::DnsUpdater;
    if std::env::var("BERTH_SYSTEM_TESTS").as_deref() != Ok("1") {
        println!("skipped: set BERTH_SYSTEM_TESTS=1 (needs knotd and kdig)");
        return;
    }
    // 12 TXT values of 60 bytes at `big`: about 900 bytes, more than a plain UDP answer holds.
    let big: Vec<String> = (0..12)
        .map(|i| format!("big 60 TXT \"{i:02}{}\"", "x".repeat(58)))
        .collect();
    let big_refs: Vec<&str> = big.iter().map(String::as_str).collect();
    let knot = start_knot(ZONE, &big_refs, &["_acme-challenge"]).await;
    let cfg = |zone: &str, key: &str| DnsUpdateConfig {
        server: knot.addr.to_string(),
        zone: zone.into(),
        tsig: TsigConfig {
            name: key.into(),
            algorithm: "hmac-sha256".into(),
            secret: Some(Secret(knot.secret.clone())),
            secret_file: None,
        },
        ttl: 60,
        propagation_timeout: Duration::from_secs(5),
        delegate: Default::default(),
        delegate_all: None,
    };
    let u = DnsUpdater::new(cfg(ZONE, "acme-key"));
    let key = u.key().expect("key");
    let name = u.record_name("*.example.test").expect("name");
    assert_eq!(name, "_acme-challenge.example.test");
    u.add_txt(&key, &name, "value-1").await.expect("add");
    u.add_txt(&key, &name, "value-2")
        .await
        .expect("add a second value");
    assert!(u.serves(&name, "value-1").await.expect("query"));
    assert_eq!(knot.txt(&name).len(), 2, "{:?}", knot.txt(&name));
    u.remove_txt(&key, &name, "value-1").await.expect("delete");
    assert_eq!(
        knot.txt(&name),
        vec!["value-2".to_string()],
        "only that value went"
    );
    u.remove_txt(&key, &name, "value-2").await.expect("delete");
    assert!(!u.serves(&name, "value-2").await.expect("query"));

    // Truncated over UDP: the answer comes over TCP.
    let last = format!("11{}", "x".repeat(58));
    assert!(
        u.serves("big.example.test", &last)
            .await
            .expect("TCP fallback"),
        "the 12th value is in the TCP answer"
    );

    let unknown = DnsUpdater::new(cfg(ZONE, "other-key"));
    let e = unknown
        .add_txt(&unknown.key().expect("key"), &name, "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("BADKEY") && e.contains("TSIG key other-key"),
        "{e}"
    );
    let elsewhere = DnsUpdater::new(cfg("elsewhere.test", "acme-key"));
    let e = elsewhere
        .add_txt(&key, "_acme-challenge.elsewhere.test", "v")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("NOTAUTH")
            && e.contains("zone elsewhere.test")
            && e.contains(&knot.addr.to_string()),
        "{e}"
    );
    assert!(!e.contains(&knot.secret), "{e}");
    // A name outside the zone is refused before anything is sent.
    let e = u.record_name("shop.example.org").unwrap_err().to_string();
    assert!(
        e.contains("outside tls.acme.dns.zone") && e.contains("delegate"),
        "{e}"
    );
}

/// `delegate_all`: every challenge name is delegated to `DOMAIN.<delegate_all>` (the operator's
/// CNAMEs point there); the certificate is issued and the TXT record at the target removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn dns01_delegate_all() {
    if std::env::var("BERTH_SYSTEM_TESTS").as_deref() != Ok("1") {
        println!("skipped: set BERTH_SYSTEM_TESTS=1 (needs knotd, kdig and pebble)");
        return;
    }
    let knot = start_knot(
        ZONE,
        &["_acme-challenge.shop 60 CNAME shop.example.test.acme.example.test."],
        &["shop.example.test.acme"],
    )
    .await;
    let pebble = start_pebble_with_dns(free_port(), free_port(), None, Some(knot.addr)).await;
    let backend = backend().await;
    let data = tempfile::tempdir().expect("tmp");
    let secret_file = data.path().join("acme-key.tsig");
    std::fs::write(&secret_file, &knot.secret).expect("secret file");
    let mut cfg = daemon_config(data.path(), &pebble, &knot, &secret_file, backend);
    if let Some(dns) = cfg.tls.acme.as_mut().and_then(|a| a.dns.as_mut()) {
        dns.delegate.clear();
        dns.delegate_all = Some("acme.example.test".into());
    }
    cfg.routes = serde_json::from_value(serde_json::json!([
        {"name": "shop", "domains": ["shop.example.test"], "backends": [{"address": backend.to_string()}]},
    ]))
    .expect("routes");
    let d = daemon::start(cfg, None).await.expect("daemon");
    let store = d.certs.clone().expect("store");
    let st = wait_status(
        &store,
        "shop.example.test",
        |s| s.not_after.is_some() || s.last_error.is_some(),
        Duration::from_secs(60),
    )
    .await;
    assert!(st.last_error.is_none() && st.not_after.is_some(), "{st:?}");
    assert!(knot.txt("shop.example.test.acme.example.test").is_empty());
    let client = client_config(pebble_root(&pebble).await);
    let (resp, leaf) = tls_get(
        d.https_addr.expect("https"),
        client,
        "shop.example.test",
        "/s",
    )
    .await
    .expect("served");
    assert_eq!(resp.body, "backend /s");
    assert_eq!(names_of(&leaf), vec!["shop.example.test"]);
    d.shutdown().await;
}
