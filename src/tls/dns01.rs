//! ACME DNS-01 through RFC 2136 dynamic updates signed with TSIG: adds the `_acme-challenge`
//! TXT record (or its CNAME-delegated target) on the configured primary server, waits until
//! that server answers with it, and deletes exactly that value afterwards. Wire format and
//! signing live in `model::dns`; this file only does sockets (UDP, TCP when truncated).
//!
//! The TSIG secret is read when an order starts (a rotated `secret_file` takes effect without
//! a restart) and never appears in logs or error messages; errors name the server, zone, key
//! and record.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::model::config::DnsUpdateConfig;
use crate::model::dns::{self, Answer, TsigAlgorithm, TsigKey, TxtChange};

/// How long one UDP attempt or one TCP exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// UDP attempts before giving up (each waits `EXCHANGE_TIMEOUT`).
const UDP_ATTEMPTS: usize = 3;
/// Allowed clock difference for TSIG (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

/// Writes and removes DNS-01 records for one configured server and zone.
pub struct DnsUpdater {
    cfg: DnsUpdateConfig,
}

fn random_id() -> u16 {
    rand::random()
}

/// Reads the base64 secret from a file: the bare secret, or `ALGORITHM:NAME:SECRET`.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("tls.acme.dns.tsig.secret_file {}: {e}", path.display()))?;
    let t = text.trim();
    Ok(t.rsplit(':').next().unwrap_or(t).trim().to_string())
}

impl DnsUpdater {
    pub fn new(cfg: DnsUpdateConfig) -> Self {
        Self { cfg }
    }

    /// The zone records are written in.
    pub fn zone(&self) -> &str {
        &self.cfg.zone
    }

    fn who(&self) -> String {
        format!(
            "DNS server {} (zone {}, TSIG key {})",
            self.cfg.server, self.cfg.zone, self.cfg.tsig.name
        )
    }

    /// The TSIG key, with the secret read now (from the file, if configured that way).
    pub fn key(&self) -> Result<TsigKey, String> {
        let t = &self.cfg.tsig;
        let algorithm = TsigAlgorithm::parse(&t.algorithm).ok_or_else(|| {
            format!(
                "tls.acme.dns.tsig.algorithm {:?} is unsupported",
                t.algorithm
            )
        })?;
        let (b64, field) = match (&t.secret, &t.secret_file) {
            (Some(s), _) => (
                s.0.trim().to_string(),
                "tls.acme.dns.tsig.secret".to_string(),
            ),
            (None, Some(p)) => (
                read_secret_file(p)?,
                format!("tls.acme.dns.tsig.secret_file {}", p.display()),
            ),
            (None, None) => return Err("tls.acme.dns.tsig has no secret".into()),
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("{field}: the secret is not base64"))?;
        Ok(TsigKey {
            name: t.name.trim().trim_end_matches('.').to_ascii_lowercase(),
            algorithm,
            secret,
        })
    }

    /// Where the TXT record for `domain` (a name or `*.name`) is written: `_acme-challenge.`
    /// + the name, or its `delegate` / `delegate_all` target (see `model::dns::record_name`).
    pub fn record_name(&self, domain: &str) -> Result<String, String> {
        dns::record_name(
            domain,
            &self.cfg.zone,
            &self.cfg.delegate,
            self.cfg.delegate_all.as_deref(),
        )
    }

    async fn server_addr(&self) -> Result<SocketAddr, String> {
        let (host, port) = dns::parse_server(&self.cfg.server)?;
        let mut addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("{}: cannot resolve: {e}", self.who()))?;
        addrs
            .next()
            .ok_or_else(|| format!("{}: the name has no address", self.who()))
    }

    /// Sends `msg`, returns the raw response (UDP, then TCP if the answer was truncated).
    async fn exchange(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let addr = self.server_addr().await?;
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().map_err(|_| "bind address")?
        } else {
            "[::]:0".parse().map_err(|_| "bind address")?
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|e| format!("{}: UDP socket: {e}", self.who()))?;
        sock.connect(addr)
            .await
            .map_err(|e| format!("{}: {e}", self.who()))?;
        let mut last = String::from("no answer");
        for _ in 0..UDP_ATTEMPTS {
            if let Err(e) = sock.send(msg).await {
                last = e.to_string();
                continue;
            }
            let mut buf = vec![0u8; 65535];
            let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
            loop {
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Err(_) => {
                        last = format!("no answer within {EXCHANGE_TIMEOUT:?}");
                        break;
                    }
                    Ok(Err(e)) => {
                        last = e.to_string();
                        break;
                    }
                    // Stray datagrams (an earlier attempt's late answer) are skipped.
                    Ok(Ok(n)) if n < 12 || buf[..2] != id.to_be_bytes() => continue,
                    Ok(Ok(n)) => {
                        buf.truncate(n);
                        if buf[2] & 0x02 != 0 {
                            return self.exchange_tcp(addr, msg).await;
                        }
                        return Ok(buf);
                    }
                }
            }
        }
        Err(format!("{}: {last}", self.who()))
    }

    async fn exchange_tcp(&self, addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, String> {
        let fut = async {
            let mut s = TcpStream::connect(addr).await?;
            let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(msg);
            s.write_all(&framed).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, fut).await {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => Err(format!("{} over TCP: {e}", self.who())),
            Err(_) => Err(format!(
                "{} over TCP: no answer within {EXCHANGE_TIMEOUT:?}",
                self.who()
            )),
        }
    }

    /// Sends one signed UPDATE and checks the answer (rcode, TSIG error, response MAC).
    async fn update(&self, key: &TsigKey, name: &str, change: TxtChange) -> Result<(), String> {
        let what = match &change {
            TxtChange::Add { .. } => "adding",
            TxtChange::Delete { .. } => "deleting",
        };
        let ctx = || format!("{}: {what} TXT {name}", self.who());
        let msg = dns::update_txt(random_id(), &self.cfg.zone, name, &change)
            .map_err(|e| format!("{}: {e}", ctx()))?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (signed, mac) =
            dns::sign(&msg, key, now, FUDGE).map_err(|e| format!("{}: {e}", ctx()))?;
        let raw = self.exchange(&signed).await?;
        let resp = dns::parse_response(&raw).map_err(|e| format!("{}: {e}", ctx()))?;
        let tsig_error = resp.tsig.as_ref().map_or(0, |t| t.error);
        let code = if tsig_error != 0 {
            tsig_error
        } else {
            resp.rcode
        };
        if code != 0 {
            let hint = dns::rcode_hint(code);
            return Err(format!(
                "{}: refused with {}{}{hint}",
                ctx(),
                dns::rcode_name(code),
                if hint.is_empty() { "" } else { ": " }
            ));
        }
        dns::verify_response(&raw, &resp, key, &mac)
            .map_err(|e| format!("{}: the server said NOERROR but {e}", ctx()))
    }

    /// Adds the TXT record `value` at `name`.
    pub async fn add_txt(&self, key: &TsigKey, name: &str, value: &str) -> Result<(), String> {
        self.update(
            key,
            name,
            TxtChange::Add {
                ttl: self.cfg.ttl,
                value: value.to_string(),
            },
        )
        .await
    }

    /// Deletes the TXT record `value` at `name` (other values there stay).
    pub async fn remove_txt(&self, key: &TsigKey, name: &str, value: &str) -> Result<(), String> {
        self.update(
            key,
            name,
            TxtChange::Delete {
                value: value.to_string(),
            },
        )
        .await
    }

    /// Whether the server answers a TXT query for `name` with `value` now.
    pub async fn serves(&self, name: &str, value: &str) -> Result<bool, String> {
        let msg = dns::query_txt(random_id(), name).map_err(|e| e.to_string())?;
        let raw = self.exchange(&msg).await?;
        let resp = dns::parse_response(&raw).map_err(|e| format!("{}: {e}", self.who()))?;
        Ok(resp
            .answers
            .iter()
            .any(|a| matches!(a, Answer::Txt { value: v, .. } if v == value)))
    }

    /// Waits (at most `propagation_timeout`) until the server serves `value` at `name`.
    /// Returns whether it did; the caller tells the CA either way (a secondary may still
    /// lag, and the CA's own retries are the final check).
    pub async fn wait_served(&self, name: &str, value: &str) -> bool {
        let start = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.serves(name, value).await {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => tracing::debug!(%name, error = %e, "TXT query failed"),
            }
            if start.elapsed() + delay > self.cfg.propagation_timeout {
                return false;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}
