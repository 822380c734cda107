//! Shared helpers of the TLS integration tests: a throwaway CA (rcgen), a tiny backend that
//! echoes the request path, a raw HTTP/1.1 client over TLS (rustls) or TCP, free ports.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::net::{free_port, wait_port};
use super::poll::wait_for;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("ca key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A leaf for `names`; `expired` makes it valid only in 2020.
    pub fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = if expired {
            rcgen::date_time_ymd(2020, 6, 1)
        } else {
            rcgen::date_time_ymd(2099, 1, 1)
        };
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    pub fn roots(&self) -> rustls::RootCertStore {
        let mut r = rustls::RootCertStore::empty();
        r.add(self.der()).expect("root");
        r
    }
}

/// A backend answering every request with `backend <path>` and closing.
pub async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("?").to_string();
                let body = format!("backend {path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A parsed response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn parse(raw: &[u8]) -> Result<Resp, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no response head in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    Ok(Resp {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
) -> Result<Resp, String> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after a Connection: close response.
    let _ = s.read_to_end(&mut raw).await;
    parse(&raw)
}

/// Plain HTTP request with extra headers and an optional JSON body (the API's tests).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<Resp, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let body = body.unwrap_or("");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("content-type: application/json\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        parse(&raw)
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// Plain HTTP GET.
pub async fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<Resp, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        exchange(&mut s, host, path).await
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

pub fn client_config(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Every handshake is a full one, so the certificate seen is the one served now.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// Handshake with `sni`, verify against the roots in `cfg`, GET `path`. Returns the response
/// and the leaf certificate the server presented.
pub async fn tls_get(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    sni: &str,
    path: &str,
) -> Result<(Resp, CertificateDer<'static>), String> {
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .ok_or("no peer certificate")?;
        let resp = exchange(&mut tls, sni, path).await?;
        Ok((resp, leaf))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// DNS names of a certificate.
pub fn names_of(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, x)) = X509Certificate::from_der(der.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::DNSName(n) = gn {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// Serial number (hex) of a certificate.
pub fn serial_of(der: &CertificateDer<'_>) -> String {
    use x509_parser::prelude::*;
    X509Certificate::from_der(der.as_ref())
        .map(|(_, x)| x.raw_serial_as_string())
        .unwrap_or_default()
}

/// pebble + challtestsrv started by a test, killed on drop.
pub struct Pebble {
    pub children: Vec<std::process::Child>,
    pub directory: String,
    pub mgmt: SocketAddr,
    pub ca_pem: std::path::PathBuf,
    pub ca: TestCa,
    pub _dir: tempfile::TempDir,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pebble {
    /// Pebble's issuing root as PEM (new on every start), from its management port.
    pub async fn root_pem(&self) -> String {
        let (resp, _) = tls_get(
            self.mgmt,
            client_config(self.ca.roots()),
            "localhost",
            "/roots/0",
        )
        .await
        .expect("fetch pebble root");
        assert_eq!(resp.status, 200, "{resp:?}");
        resp.body
    }

    /// Pebble's issuing root, to verify the certificates it issues.
    pub async fn root(&self) -> rustls::RootCertStore {
        use rustls::pki_types::pem::PemObject;
        let pem = self.root_pem().await;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("root PEM");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).expect("root");
        roots
    }

    /// Berth's ACME settings for this pebble: its directory, the CA of its HTTPS, `challenge`.
    pub fn acme(
        &self,
        challenge: berth::model::config::AcmeChallenge,
    ) -> berth::model::config::AcmeConfig {
        berth::model::config::AcmeConfig {
            directory: self.directory.clone(),
            email: Some("ops@berth.test".into()),
            ca_root: Some(self.ca_pem.clone()),
            challenge,
            ..Default::default()
        }
    }
}

/// Logs berth's `info` lines into the test's output (the timeline of an ACME test).
pub fn init_info_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("berth=info")
        .with_test_writer()
        .try_init();
}

/// Waits until a certificate status of `domain` matches `f`; panics with the whole list when
/// `deadline` passes.
pub async fn wait_cert_status(
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

/// Starts challtestsrv + pebble validating HTTP-01 on `http_port`, TLS-ALPN-01 on `tls_port`;
/// `validity_secs` shortens the certificates pebble issues.
pub async fn start_pebble(http_port: u16, tls_port: u16, validity_secs: Option<u64>) -> Pebble {
    start_pebble_with_dns(http_port, tls_port, validity_secs, None).await
}

/// Like `start_pebble`; with `dns` set, pebble resolves (and checks DNS-01 records) through
/// that server instead of a challtestsrv of its own.
pub async fn start_pebble_with_dns(
    http_port: u16,
    tls_port: u16,
    validity_secs: Option<u64>,
    dns_server: Option<SocketAddr>,
) -> Pebble {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tmp");
    let ca = TestCa::new("Pebble WFE test CA");
    let (wfe_cert, wfe_key) = ca.leaf(&["localhost", "127.0.0.1"], false);
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).expect("ca");
    std::fs::write(dir.path().join("wfe.pem"), wfe_cert).expect("wfe");
    std::fs::write(dir.path().join("wfe.key"), wfe_key).expect("wfe key");
    let (acme, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
    let mut config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt}"),
        "certificate": dir.path().join("wfe.pem"),
        "privateKey": dir.path().join("wfe.key"),
        "httpPort": http_port, "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": false,
    }});
    if let Some(secs) = validity_secs {
        config["pebble"]["certificateValidityPeriod"] = secs.into();
    }
    let cfg_path = dir.path().join("pebble-config.json");
    std::fs::write(&cfg_path, config.to_string()).expect("config");
    let mut children = Vec::new();
    let resolver = dns_server.map_or(format!("127.0.0.1:{dns}"), |a| a.to_string());
    if dns_server.is_none() {
        children.push(spawn(
            Command::new("pebble-challtestsrv").args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
            ]),
            &dir.path().join("challtestsrv.log"),
        ));
    }
    children.push(spawn(
        Command::new("pebble")
            .arg("-config")
            .arg(&cfg_path)
            .args(["-dnsserver", &resolver])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0"),
        &dir.path().join("pebble.log"),
    ));
    let p = Pebble {
        children,
        directory: format!("https://127.0.0.1:{acme}/dir"),
        mgmt: SocketAddr::from(([127, 0, 0, 1], mgmt)),
        ca_pem,
        ca,
        _dir: dir,
    };
    if dns_server.is_none() {
        wait_port(SocketAddr::from(([127, 0, 0, 1], dns_mgmt)), "challtestsrv").await;
    }
    wait_port(SocketAddr::from(([127, 0, 0, 1], acme)), "pebble").await;
    wait_port(p.mgmt, "pebble management").await;
    p
}

/// Starts `cmd` with stdout and stderr going to `log`.
pub fn spawn(cmd: &mut std::process::Command, log: &std::path::Path) -> std::process::Child {
    use std::process::Stdio;
    let out = std::fs::File::create(log).expect("log file");
    let err = out.try_clone().expect("log file");
    cmd.stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// A Knot DNS server (Debian's `knotd`) started by a test, authoritative for `zone` on
/// 127.0.0.1:`port` (UDP and TCP), accepting TXT updates signed with one TSIG key at the
/// owners listed; killed on drop.
pub struct Knot {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub zone: String,
    pub key_name: String,
    /// Base64 TSIG secret (hmac-sha256).
    pub secret: String,
    pub dir: tempfile::TempDir,
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Knot {
    /// `kdig +short TXT name` against this server (the values, quotes stripped).
    pub fn txt(&self, name: &str) -> Vec<String> {
        let out = std::process::Command::new("kdig")
            .args([
                &format!("@{}", self.addr.ip()),
                "-p",
                &self.addr.port().to_string(),
                "+short",
                "TXT",
                name,
            ])
            .output()
            .expect("run kdig");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

/// Starts knotd for `zone` with `extra_records` (zone-file lines) and an update ACL for TXT
/// records at `update_owners` (names relative to the zone) signed with key `acme-key`.
pub async fn start_knot(zone: &str, extra_records: &[&str], update_owners: &[&str]) -> Knot {
    use base64::Engine;
    let dir = tempfile::tempdir().expect("tmp");
    let secret = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let port = free_port();
    let d = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("run")).expect("run dir");
    std::fs::create_dir_all(dir.path().join("storage")).expect("storage dir");
    let owners = update_owners.join(", ");
    let conf = format!(
        "server:\n    rundir: \"{d}/run\"\n    listen: 127.0.0.1@{port}\n\
         database:\n    storage: \"{d}/storage\"\n\
         log:\n  - target: stdout\n    any: info\n\
         key:\n  - id: acme-key\n    algorithm: hmac-sha256\n    secret: {secret}\n\
         acl:\n  - id: acme-update\n    key: acme-key\n    action: update\n\
         \x20   update-type: [TXT]\n    update-owner: name\n    update-owner-match: equal\n\
         \x20   update-owner-name: [{owners}]\n\
         template:\n  - id: default\n    storage: \"{d}\"\n    file: \"%s.zone\"\n    acl: acme-update\n\
         zone:\n  - domain: {zone}\n"
    );
    std::fs::write(dir.path().join("knot.conf"), conf).expect("knot.conf");
    let mut records = format!(
        "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n\
         @ NS ns1.{zone}.\nns1 A 127.0.0.1\n@ A 127.0.0.1\n* A 127.0.0.1\n"
    );
    for r in extra_records {
        records.push_str(r);
        records.push('\n');
    }
    std::fs::write(dir.path().join(format!("{zone}.zone")), records).expect("zone file");
    let child = spawn(
        std::process::Command::new("knotd")
            .arg("-c")
            .arg(dir.path().join("knot.conf")),
        &dir.path().join("knotd.log"),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let knot = Knot {
        child,
        addr,
        zone: zone.to_string(),
        key_name: "acme-key".into(),
        secret,
        dir,
    };
    wait_port(addr, "knotd").await;
    // Serving the zone (not just listening): the apex A record answers.
    let ok = wait_for(Duration::from_secs(10), || async {
        let out = std::process::Command::new("kdig")
            .args(["@127.0.0.1", "-p", &port.to_string(), "+short", "A", zone])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .contains("127.0.0.1")
            .then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "knotd does not serve {zone}: {}",
        std::fs::read_to_string(knot.dir.path().join("knotd.log")).unwrap_or_default()
    );
    knot
}
