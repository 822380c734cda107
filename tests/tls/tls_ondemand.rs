//! On-demand TLS against a real CA (pebble + challtestsrv, HTTP-01): a wildcard route
//! `*.custom.test` (no wildcard certificate without DNS-01) serves customer names whose
//! certificates are ordered during their first handshake, after a tiny ask server started here
//! allows them (`yes*` names: 200, others: 403). Covers: the held handshake succeeding with the
//! new certificate, refused names never ordered (and cached: not asked twice), concurrent
//! handshakes for one name asking once, the global hourly limit refusing before asking, and a
//! restart serving on-demand certificates from disk without asking again. Runs only with
//! BERTH_SYSTEM_TESTS=1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use berth::daemon;
use berth::model::config::{AcmeChallenge, Config, OnDemandConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ask endpoint: records every `domain=` it is asked about; 200 for names starting with
/// `yes`, 403 otherwise.
async fn ask_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind ask");
    let addr = l.local_addr().expect("addr");
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let domain = target
                    .split_once("domain=")
                    .map(|(_, d)| d.split('&').next().unwrap_or("").to_string())
                    .unwrap_or_default();
                log.lock().expect("log").push(domain.clone());
                let status = if target.starts_with("/check?") && domain.starts_with("yes") {
                    "200 OK"
                } else {
                    "403 Forbidden"
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, asked)
}

fn count(asked: &Arc<Mutex<Vec<String>>>, name: &str) -> usize {
    asked
        .lock()
        .expect("log")
        .iter()
        .filter(|n| n.as_str() == name)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn on_demand_asks_orders_limits_and_restarts() {
    if system_tests_off("pebble") {
        return;
    }
    let started = Instant::now();
    init_info_logs();
    let backend = backend().await;
    let (ask, asked) = ask_server().await;
    let (http_port, https_port) = (free_port(), free_port());
    // Pebble validates HTTP-01 on the daemon's HTTP port, TLS-ALPN-01 on its HTTPS port.
    let pebble = start_pebble(http_port, https_port, None).await;
    let data = tempfile::tempdir().expect("tmp");
    let config = |data: &std::path::Path, challenge: AcmeChallenge| {
        let mut c = Config::default();
        c.http.listen = SocketAddr::from(([127, 0, 0, 1], http_port));
        c.api.listen = "127.0.0.1:0".parse().expect("addr");
        c.tls.enabled = Some(true);
        c.tls.listen = SocketAddr::from(([127, 0, 0, 1], https_port));
        c.tls.acme = Some(pebble.acme(challenge));
        c.tls.on_demand = Some(OnDemandConfig {
            ask: format!("http://{ask}/check"),
            name_interval: Duration::from_secs(600),
            max_per_hour: 2,
            refused_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        });
        c.data_dir = data.to_path_buf();
        c.log.access_log = false;
        c.routes = serde_json::from_value(serde_json::json!([
            {"name": "customers", "domains": ["*.custom.test"],
             "backends": [{"address": backend.to_string()}]},
            {"name": "routed", "domains": ["routed.custom.test"],
             "backends": [{"address": backend.to_string()}]}
        ]))
        .expect("routes");
        c
    };
    let d = daemon::start(config(data.path(), AcmeChallenge::Http01), None)
        .await
        .expect("daemon");
    let https = d.https_addr.expect("https");
    let client = client_config(pebble.root().await);

    // An allowed name: the first handshake is held until the certificate is there.
    let t = Instant::now();
    let (resp, leaf) = tls_get(https, client.clone(), "yes1.custom.test", "/x")
        .await
        .expect("on-demand handshake");
    let first_handshake = t.elapsed();
    assert_eq!((resp.status, resp.body.as_str()), (200, "backend /x"));
    assert_eq!(names_of(&leaf), vec!["yes1.custom.test"]);
    assert_eq!(count(&asked, "yes1.custom.test"), 1);
    let yes1_serial = serial_of(&leaf);
    // The next handshake is served at once, without asking.
    let (_, leaf) = tls_get(https, client.clone(), "yes1.custom.test", "/")
        .await
        .expect("second handshake");
    assert_eq!(serial_of(&leaf), yes1_serial);
    assert_eq!(count(&asked, "yes1.custom.test"), 1);

    // A refused name: no certificate (no default either: the handshake is refused), and it is
    // not asked about again while the refusal is cached.
    for _ in 0..3 {
        let r = tls_get(https, client.clone(), "no.custom.test", "/").await;
        assert!(r.is_err(), "refused name got a certificate: {r:?}");
    }
    assert_eq!(count(&asked, "no.custom.test"), 1, "{:?}", asked.lock());

    // Concurrent first handshakes for one allowed name: one ask, one order, all succeed.
    let mut joins = Vec::new();
    for _ in 0..3 {
        let client = client.clone();
        joins.push(tokio::spawn(async move {
            tls_get(https, client, "yes2.custom.test", "/c").await
        }));
    }
    for j in joins {
        let (resp, leaf) = j.await.expect("join").expect("concurrent handshake");
        assert_eq!(resp.body, "backend /c");
        assert_eq!(names_of(&leaf), vec!["yes2.custom.test"]);
    }
    assert_eq!(count(&asked, "yes2.custom.test"), 1);

    // The hourly limit (2) is reached: a third allowed name is refused before asking.
    let r = tls_get(https, client.clone(), "yes3.custom.test", "/").await;
    assert!(r.is_err(), "over the limit: {r:?}");
    assert_eq!(count(&asked, "yes3.custom.test"), 0);

    // A routed name is ordered by the renewal loop: its handshakes never ask.
    let routed = wait_for(Duration::from_secs(30), || {
        let client = client.clone();
        async move { tls_get(https, client, "routed.custom.test", "/").await.ok() }
    })
    .await
    .expect("routed name certified");
    assert_eq!(names_of(&routed.1), vec!["routed.custom.test"]);
    assert_eq!(count(&asked, "routed.custom.test"), 0);

    let store = d.certs.clone().expect("store");
    let st = store.status();
    for n in ["yes1.custom.test", "yes2.custom.test"] {
        assert!(
            st.iter()
                .any(|s| s.domain == n && s.not_after.is_some() && s.next_renewal.is_some()),
            "{n} listed and scheduled for renewal: {st:?}"
        );
    }
    assert!(!st.iter().any(|s| s.domain.starts_with("no.")), "{st:?}");
    // The wildcard route itself cannot get a certificate over HTTP-01; the status says why.
    assert!(
        st.iter().any(|s| s.domain == "*.custom.test"
            && s.last_error.as_deref().unwrap_or("").contains("DNS-01")),
        "{st:?}"
    );

    // Restart: on-demand certificates come from disk and stay managed; nothing is asked.
    let asks_before = asked.lock().expect("log").len();
    d.shutdown().await;
    let d = daemon::start(config(data.path(), AcmeChallenge::Http01), None)
        .await
        .expect("daemon again");
    let (_, leaf) = tls_get(https, client.clone(), "yes1.custom.test", "/")
        .await
        .expect("served after restart");
    assert_eq!(serial_of(&leaf), yes1_serial);
    let store = d.certs.clone().expect("store");
    let listed = wait_for(Duration::from_secs(10), || async {
        store
            .status()
            .into_iter()
            .find(|s| s.domain == "yes2.custom.test" && s.next_renewal.is_some())
    })
    .await;
    assert!(
        listed.is_some(),
        "yes2 renewed after restart: {:?}",
        store.status()
    );
    assert_eq!(asked.lock().expect("log").len(), asks_before);

    // TLS-ALPN-01: the CA's validation handshake (SNI = the name, ALPN acme-tls/1) must not
    // wait for the on-demand order it belongs to.
    d.shutdown().await;
    let data2 = tempfile::tempdir().expect("tmp");
    let d = daemon::start(config(data2.path(), AcmeChallenge::TlsAlpn01), None)
        .await
        .expect("daemon with TLS-ALPN-01");
    let t = Instant::now();
    let (resp, leaf) = tls_get(https, client.clone(), "yes-alpn.custom.test", "/alpn")
        .await
        .expect("on-demand handshake with TLS-ALPN-01");
    let alpn_handshake = t.elapsed();
    assert_eq!(resp.body, "backend /alpn");
    assert_eq!(names_of(&leaf), vec!["yes-alpn.custom.test"]);
    assert!(
        alpn_handshake < Duration::from_secs(15),
        "{alpn_handshake:?}"
    );

    println!(
        "on-demand: TLS-ALPN-01 first handshake {alpn_handshake:?}; first handshake for a new name took {first_handshake:?} (ask + order + \
         HTTP-01 + issue); asks {:?}; whole test {:?}",
        asked.lock().expect("log"),
        started.elapsed()
    );
    d.shutdown().await;
}
