//! ACME against a real CA: Debian's `pebble` with `pebble-challtestsrv` as its DNS (every
//! name resolves to 127.0.0.1), both started and stopped here. Covers HTTP-01 issuance for two
//! domains, SNI with pebble's root, renewal of 1-minute certificates under a bounded loop of
//! handshakes (zero failures allowed), TLS-ALPN-01 issuance, a failing order surfacing in the
//! status list, challenge passthrough for unknown tokens, and the redirect; and a certificate
//! revoked at the CA replaced through `POST /v1/certificates/{domain}/retry` (pebble 2.4 has no
//! renewalInfo, so it cannot tell Berth about the revocation itself) with zero failed
//! handshakes. Runs only with BERTH_SYSTEM_TESTS=1.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::*;
use berth::daemon;
use berth::model::config::{AcmeChallenge, AcmeConfig, Config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

fn daemon_config(
    data_dir: &Path,
    http_port: u16,
    https_port: u16,
    domains: &[&str],
    backend: SocketAddr,
    acme: AcmeConfig,
) -> Config {
    let mut c = Config::default();
    c.http.listen = SocketAddr::from(([127, 0, 0, 1], http_port));
    c.api.listen = "127.0.0.1:0".parse().expect("addr");
    c.tls.enabled = Some(true);
    c.tls.listen = SocketAddr::from(([127, 0, 0, 1], https_port));
    c.tls.acme = Some(acme);
    c.data_dir = data_dir.to_path_buf();
    c.log.access_log = false;
    let routes: Vec<serde_json::Value> = domains
        .iter()
        .map(
            |d| serde_json::json!({"domains": [d], "backends": [{"address": backend.to_string()}]}),
        )
        .collect();
    c.routes = serde_json::from_value(serde_json::Value::Array(routes)).expect("routes");
    c
}

/// Waits until the ACME status of `domain` shows a certificate (or an error, when `want_error`).
async fn wait_status(
    store: &berth::tls::CertStore,
    domain: &str,
    want_error: bool,
    deadline: Duration,
) -> berth::tls::CertStatus {
    let matches = |s: &berth::tls::CertStatus| {
        if want_error {
            s.last_error.is_some()
        } else {
            s.not_after.is_some()
        }
    };
    wait_cert_status(store, domain, matches, deadline).await
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn pebble_issue_renew_alpn_and_failures() {
    if system_tests_off("pebble") {
        return;
    }
    let started = Instant::now();
    init_info_logs();
    let backend = backend().await;
    // Daemon 1 answers HTTP-01 (pebble's httpPort), daemon 2 TLS-ALPN-01 (pebble's tlsPort).
    let (http1, https1, http2, https2) = (free_port(), free_port(), free_port(), free_port());
    // One-minute certificates: renewal is due after 40 s (it was 2 minutes and 80 s: the same
    // renewal, 40 s sooner).
    let pebble = start_pebble(http1, https2, Some(60)).await;
    let data1 = tempfile::tempdir().expect("tmp");
    let data2 = tempfile::tempdir().expect("tmp");
    let data3 = tempfile::tempdir().expect("tmp");

    let config1 = || {
        daemon_config(
            data1.path(),
            http1,
            https1,
            &["a.berth.test", "b.berth.test"],
            backend,
            pebble.acme(AcmeChallenge::Http01),
        )
    };
    let d1 = daemon::start(config1(), None).await.expect("daemon 1");
    let d2 = daemon::start(
        daemon_config(
            data2.path(),
            http2,
            https2,
            &["c.berth.test"],
            backend,
            pebble.acme(AcmeChallenge::TlsAlpn01),
        ),
        None,
    )
    .await
    .expect("daemon 2");
    // Daemon 3 uses HTTP-01 but pebble validates on daemon 1's port, which does not own the
    // token (and has no route for d.berth.test): the order fails and the failure is visible.
    let d3 = daemon::start(
        daemon_config(
            data3.path(),
            0,
            0,
            &["d.berth.test"],
            backend,
            pebble.acme(AcmeChallenge::Http01),
        ),
        None,
    )
    .await
    .expect("daemon 3");

    let store1 = d1.certs.clone().expect("store 1");
    let store2 = d2.certs.clone().expect("store 2");
    let store3 = d3.certs.clone().expect("store 3");
    let issue_started = Instant::now();
    let a = wait_status(&store1, "a.berth.test", false, Duration::from_secs(60)).await;
    let b = wait_status(&store1, "b.berth.test", false, Duration::from_secs(60)).await;
    let c = wait_status(&store2, "c.berth.test", false, Duration::from_secs(60)).await;
    let issued_in = issue_started.elapsed();
    for s in [&a, &b, &c] {
        assert!(
            s.issuer.as_deref().unwrap_or("").contains("Pebble"),
            "{s:?}"
        );
        assert!(s.next_renewal.is_some() && s.last_error.is_none(), "{s:?}");
    }
    let d = wait_status(&store3, "d.berth.test", true, Duration::from_secs(60)).await;
    let err = d.last_error.clone().unwrap_or_default();
    // The CA's own problem detail reaches the status list.
    assert!(
        err.contains("ACME order for d.berth.test") && err.contains("acme-challenge"),
        "{err}"
    );
    assert!(d.next_renewal.is_some(), "a retry is scheduled: {d:?}");

    // Files: account key and certificate keys are 0600.
    let acme_dir = data1.path().join("certs").join("acme");
    assert_eq!(mode(&acme_dir.join("account.key")), 0o600);
    assert_eq!(mode(&acme_dir.join("a.berth.test").join("key.pem")), 0o600);

    // SNI: each name gets its own certificate, verified against pebble's root.
    let client = client_config(pebble.root().await);
    let https_1 = d1.https_addr.expect("https 1");
    for name in ["a.berth.test", "b.berth.test"] {
        let (resp, leaf) = tls_get(https_1, client.clone(), name, "/x")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((resp.status, resp.body.as_str()), (200, "backend /x"));
        assert_eq!(names_of(&leaf), vec![name.to_string()]);
    }
    let (resp, leaf) = tls_get(
        d2.https_addr.expect("https 2"),
        client.clone(),
        "c.berth.test",
        "/alpn",
    )
    .await
    .expect("TLS-ALPN-01 certificate served");
    assert_eq!(resp.body, "backend /alpn");
    assert_eq!(names_of(&leaf), vec!["c.berth.test"]);

    // Redirect now that a.berth.test has a certificate; unknown challenge tokens pass through.
    let r = http_get(d1.http_addr, "a.berth.test", "/r")
        .await
        .expect("http");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://a.berth.test:{https1}/r"))
    );
    let r = http_get(
        d1.http_addr,
        "a.berth.test",
        "/.well-known/acme-challenge/zzz",
    )
    .await
    .expect("http");
    assert_eq!(r.body, "backend /.well-known/acme-challenge/zzz");

    // Renewal: 60 s certificates renew after 40 s. Handshake + request continuously until the
    // served certificate changes, then a little longer; no handshake may fail.
    let first = serial_of(
        &tls_get(https_1, client.clone(), "a.berth.test", "/")
            .await
            .expect("tls")
            .1,
    );
    let loop_start = Instant::now();
    let (mut ok, mut failed, mut renewed_at) = (0u32, Vec::new(), None);
    for _ in 0..3000 {
        if loop_start.elapsed() > Duration::from_secs(150) {
            break;
        }
        match tls_get(https_1, client.clone(), "a.berth.test", "/loop").await {
            Ok((resp, leaf)) if resp.status == 200 => {
                ok += 1;
                let serial = serial_of(&leaf);
                if renewed_at.is_none() && serial != first {
                    renewed_at = Some((loop_start.elapsed(), serial));
                }
            }
            Ok((resp, _)) => failed.push(format!("status {}", resp.status)),
            Err(e) => failed.push(e),
        }
        if renewed_at
            .as_ref()
            .is_some_and(|(t, _)| loop_start.elapsed() > *t + Duration::from_secs(3))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (renewed_at, latest) = renewed_at.unwrap_or_else(|| {
        panic!(
            "certificate not renewed within 150 s ({ok} ok, status {:?})",
            store1.status()
        )
    });
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let after = wait_status(&store1, "a.berth.test", false, Duration::from_secs(5)).await;
    assert_ne!(
        after.not_after, a.not_after,
        "status shows the new certificate"
    );

    // Restart: the certificate and the account key come from disk; nothing is re-ordered
    // while the certificate is not due (40 s after the renewal: a loaded host can get here
    // later, and then a new order is right).
    let account_key = std::fs::read(acme_dir.join("account.key")).expect("account key");
    let due = after
        .next_renewal
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .expect("next renewal of the renewed certificate");
    d1.shutdown().await;
    let restarted_at = std::time::SystemTime::now();
    let d1 = daemon::start(config1(), None)
        .await
        .expect("daemon 1 again");
    let (_, leaf) = tls_get(https_1, client.clone(), "a.berth.test", "/")
        .await
        .expect("served right after restart");
    assert_eq!(serial_of(&leaf), latest, "the stored certificate is served");
    let store1 = d1.certs.clone().expect("store");
    let again = wait_status(&store1, "a.berth.test", false, Duration::from_secs(5)).await;
    // A margin for the status read after the start.
    if restarted_at + Duration::from_secs(5) < due {
        assert_eq!(
            again.not_after, after.not_after,
            "no new order after restart"
        );
    } else {
        println!(
            "restarted after the renewal was due ({:?}): not checked",
            after.next_renewal
        );
    }
    assert_eq!(
        std::fs::read(acme_dir.join("account.key")).expect("key"),
        account_key
    );

    println!(
        "pebble: issued 3 certs in {issued_in:?}; renewal seen after {renewed_at:?} of looping, \
         {ok} TLS requests, 0 failed; whole test {:?}",
        started.elapsed()
    );
    d1.shutdown().await;
    d2.shutdown().await;
    d3.shutdown().await;
}

/// Pebble's view of a certificate (`GET /cert-status-by-serial/<hex>` on its management port):
/// "Valid" or "Revoked".
async fn ca_status(pebble: &Pebble, serial: &str) -> String {
    let (resp, _) = tls_get(
        pebble.mgmt,
        client_config(pebble.ca.roots()),
        "localhost",
        // serial_of gives colon-separated hex; pebble wants plain hex.
        &format!("/cert-status-by-serial/{}", serial.replace(':', "")),
    )
    .await
    .expect("pebble management");
    assert_eq!(resp.status, 200, "cert-status-by-serial/{serial}: {resp:?}");
    let v: serde_json::Value = serde_json::from_str(&resp.body).expect("JSON");
    v["Status"].as_str().unwrap_or("?").to_string()
}

/// Revokes `leaf` at pebble with the account Berth created (its key is in the data dir).
async fn revoke_at_ca(pebble: &Pebble, data_dir: &Path, leaf: &CertificateDer<'static>) {
    use instant_acme::{Account, Key, RevocationReason, RevocationRequest};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let pem = std::fs::read(data_dir.join("certs/acme/account.key")).expect("account key");
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).expect("PKCS#8");
    let key = Key::from_pkcs8_der(der.clone_key()).expect("key");
    let (account, _) = Account::builder_with_root(&pebble.ca_pem)
        .expect("builder")
        .create_from_key((key, PrivateKeyDer::Pkcs8(der)), pebble.directory.clone())
        .await
        .expect("account from Berth's key");
    account
        .revoke(&RevocationRequest {
            certificate: leaf,
            reason: Some(RevocationReason::Superseded),
        })
        .await
        .expect("revocation accepted by pebble");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn pebble_revoked_certificate_replaced_on_request() {
    if system_tests_off("pebble") {
        return;
    }
    let started = Instant::now();
    init_info_logs();
    let backend = backend().await;
    let (http, https_port) = (free_port(), free_port());
    // One-hour certificates: nothing renews by itself during the test.
    let pebble = start_pebble(http, free_port(), Some(3600)).await;
    let data = tempfile::tempdir().expect("tmp");
    let domain = "r.berth.test";
    let d = daemon::start(
        daemon_config(
            data.path(),
            http,
            https_port,
            &[domain],
            backend,
            pebble.acme(AcmeChallenge::Http01),
        ),
        None,
    )
    .await
    .expect("daemon");
    let store = d.certs.clone().expect("store");
    wait_status(&store, domain, false, Duration::from_secs(60)).await;
    let client = client_config(pebble.root().await);
    let https = d.https_addr.expect("https");
    let (_, leaf) = tls_get(https, client.clone(), domain, "/")
        .await
        .expect("served");
    let revoked = serial_of(&leaf);
    assert_eq!(ca_status(&pebble, &revoked).await, "Valid");

    revoke_at_ca(&pebble, data.path(), &leaf).await;
    assert_eq!(ca_status(&pebble, &revoked).await, "Revoked");

    let (_, token) = d.registry.store().create_token("ops").expect("token");
    let auth = format!("Bearer {token}");
    let api = d.api_addr;
    let post = |path: String| {
        let auth = auth.clone();
        async move {
            http_request(api, "POST", &path, &[("authorization", &auth)], None)
                .await
                .expect("API")
        }
    };
    // Not a domain Berth orders certificates for: 404 with a JSON error.
    let r = post("/v1/certificates/unknown.berth.test/retry".into()).await;
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.body.contains("unknown.berth.test"), "{}", r.body);
    // Without a token: 401.
    let r = http_request(
        api,
        "POST",
        &format!("/v1/certificates/{domain}/retry"),
        &[],
        None,
    )
    .await
    .expect("API");
    assert_eq!(r.status, 401);

    // A bounded loop of full handshakes runs while the certificate is replaced.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let looper = {
        let client = client.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed, mut serials) = (0u32, Vec::new(), Vec::<String>::new());
            let t0 = Instant::now();
            for _ in 0..2000 {
                if *stop_rx.borrow() || t0.elapsed() > Duration::from_secs(60) {
                    break;
                }
                match tls_get(https, client.clone(), domain, "/loop").await {
                    Ok((resp, leaf)) if resp.status == 200 => {
                        ok += 1;
                        let s = serial_of(&leaf);
                        if serials.last() != Some(&s) {
                            serials.push(s);
                        }
                    }
                    Ok((resp, _)) => failed.push(format!("status {}", resp.status)),
                    Err(e) => failed.push(e),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed, serials)
        })
    };

    let asked = Instant::now();
    let r = post(format!("/v1/certificates/{}/retry", domain.to_uppercase())).await;
    assert_eq!(r.status, 202, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(v, serde_json::json!({"domain": domain, "status": "queued"}));
    // While the order runs, another request is refused with 409 (it would order twice).
    // Asked until seen or the new certificate is served, whichever comes first.
    let mut conflict = None;
    let deadline = asked + Duration::from_secs(30);
    let new_serial = loop {
        assert!(
            Instant::now() < deadline,
            "not replaced within 30 s: {:?}",
            store.status()
        );
        if let Ok((_, leaf)) = tls_get(https, client.clone(), domain, "/").await {
            let s = serial_of(&leaf);
            if s != revoked {
                break s;
            }
        }
        if conflict.is_none() {
            let r = post(format!("/v1/certificates/{domain}/retry")).await;
            if r.status == 409 {
                assert!(r.body.contains("order_in_progress"), "{}", r.body);
                conflict = Some(asked.elapsed());
            } else {
                assert_eq!(r.status, 202, "{r:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let replaced_in = asked.elapsed();
    // Let the loop see the new certificate for a moment, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    let (ok, failed, serials) = looper.await.expect("loop");
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        conflict.is_some(),
        "a second request during the order should get 409"
    );
    assert_eq!(
        serials.first(),
        Some(&revoked),
        "loop started on the old cert"
    );
    assert_eq!(
        serials.last(),
        Some(&new_serial),
        "the loop ends on the new certificate: {serials:?}"
    );
    assert_eq!(ca_status(&pebble, &new_serial).await, "Valid");
    let st = wait_status(&store, domain, false, Duration::from_secs(5)).await;
    assert!(st.last_error.is_none(), "{st:?}");
    assert_ne!(st.not_after, None);
    println!(
        "revocation: retry → new certificate served after {replaced_in:?} (409 seen after \
         {conflict:?}); {ok} TLS requests during the swap, 0 failed; whole test {:?}",
        started.elapsed()
    );
    d.shutdown().await;
}
