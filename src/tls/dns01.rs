//! ACME DNS-01 through RFC 2136 dynamic updates signed with TSIG: adds the `_acme-challenge`
//! TXT record (or its CNAME-delegated target) on the configured primary server, waits until
//! that server answers with it, and deletes exactly that value afterwards. Wire format and
//! signing live in `model::dns`; this file only does sockets (UDP, TCP when truncated).
//!
//! The TSIG secret is read when an order starts (a rotated `secret_file` takes effect without
//! a restart) and never appears in logs or error messages; errors name the server, zone, key
//! and record.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::model::config::DnsUpdateConfig;
use crate::model::dns::{self, Answer, DnsError, TsigAlgorithm, TsigKey, TxtChange};

/// How long one UDP attempt or one TCP exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// UDP attempts before giving up (each waits `EXCHANGE_TIMEOUT`).
const UDP_ATTEMPTS: usize = 3;
/// Allowed clock difference for TSIG (RFC 8945 recommends 300 s).
const FUDGE: u16 = 300;

/// Why a DNS-01 record could not be written, removed or checked. `who` names the server, zone
/// and key (never the secret); `what` adds the operation and record (`adding TXT NAME`).
#[derive(Debug, Error)]
pub enum DnsUpdateError {
    #[error("tls.acme.dns.tsig.secret_file {}: {source}", path.display())]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tls.acme.dns.tsig.algorithm {0:?} is unsupported")]
    Algorithm(String),
    #[error("tls.acme.dns.tsig has no secret")]
    NoSecret,
    /// `field` names where the secret came from (the key or the file).
    #[error("{field}: the secret is not base64")]
    NotBase64 { field: String },
    /// A configured name the wire format refuses (the parsing helpers' own message).
    #[error("{0}")]
    Config(String),
    #[error("{who}: cannot resolve: {source}")]
    Resolve { who: String, source: std::io::Error },
    #[error("{who}: the name has no address")]
    NoAddress { who: String },
    #[error("{who}: UDP socket: {source}")]
    Socket { who: String, source: std::io::Error },
    #[error("{who}: {source}")]
    Connect { who: String, source: std::io::Error },
    /// Every UDP attempt failed; `last` says how the last one did.
    #[error("{who}: {last}")]
    NoAnswer { who: String, last: String },
    #[error("{who} over TCP: {source}")]
    Tcp { who: String, source: std::io::Error },
    #[error("{who} over TCP: no answer within {EXCHANGE_TIMEOUT:?}")]
    TcpTimeout { who: String },
    #[error(transparent)]
    Query(DnsError),
    #[error("{what}: {source}")]
    Message { what: String, source: DnsError },
    #[error(
        "{what}: refused with {}{}{}",
        dns::rcode_name(*code),
        if dns::rcode_hint(*code).is_empty() { "" } else { ": " },
        dns::rcode_hint(*code)
    )]
    Refused { what: String, code: u16 },
    #[error("{what}: the server said NOERROR but {why}")]
    Unverified { what: String, why: &'static str },
}

/// Writes and removes DNS-01 records for one configured server and zone.
pub struct DnsUpdater {
    cfg: DnsUpdateConfig,
}

fn random_id() -> u16 {
    rand::random()
}

/// Reads the base64 secret from a file: the bare secret, or `ALGORITHM:NAME:SECRET`.
fn read_secret_file(path: &Path) -> Result<String, DnsUpdateError> {
    let text = std::fs::read_to_string(path).map_err(|source| DnsUpdateError::SecretFile {
        path: path.to_path_buf(),
        source,
    })?;
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
    pub fn key(&self) -> Result<TsigKey, DnsUpdateError> {
        let t = &self.cfg.tsig;
        let algorithm = TsigAlgorithm::parse(&t.algorithm)
            .ok_or_else(|| DnsUpdateError::Algorithm(t.algorithm.clone()))?;
        let (b64, field) = match (&t.secret, &t.secret_file) {
            (Some(s), _) => (
                s.0.trim().to_string(),
                "tls.acme.dns.tsig.secret".to_string(),
            ),
            (None, Some(p)) => (
                read_secret_file(p)?,
                format!("tls.acme.dns.tsig.secret_file {}", p.display()),
            ),
            (None, None) => return Err(DnsUpdateError::NoSecret),
        };
        let secret = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(DnsUpdateError::NotBase64 { field })?;
        Ok(TsigKey {
            name: t.name.trim().trim_end_matches('.').to_ascii_lowercase(),
            algorithm,
            secret,
        })
    }

    /// Where the TXT record for `domain` (a name or `*.name`) is written: `_acme-challenge.`
    /// + the name, or its `delegate` / `delegate_all` target (see `model::dns::record_name`).
    pub fn record_name(&self, domain: &str) -> Result<String, DnsUpdateError> {
        dns::record_name(
            domain,
            &self.cfg.zone,
            &self.cfg.delegate,
            self.cfg.delegate_all.as_deref(),
        )
        .map_err(DnsUpdateError::Config)
    }

    async fn server_addr(&self) -> Result<SocketAddr, DnsUpdateError> {
        let (host, port) = dns::parse_server(&self.cfg.server).map_err(DnsUpdateError::Config)?;
        let mut addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|source| DnsUpdateError::Resolve {
                who: self.who(),
                source,
            })?;
        addrs
            .next()
            .ok_or_else(|| DnsUpdateError::NoAddress { who: self.who() })
    }

    /// Sends `msg`, returns the raw response (UDP, then TCP if the answer was truncated).
    async fn exchange(&self, msg: &[u8]) -> Result<Vec<u8>, DnsUpdateError> {
        let addr = self.server_addr().await?;
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let bind = if addr.is_ipv4() {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        };
        let sock = UdpSocket::bind(bind)
            .await
            .map_err(|source| DnsUpdateError::Socket {
                who: self.who(),
                source,
            })?;
        sock.connect(addr)
            .await
            .map_err(|source| DnsUpdateError::Connect {
                who: self.who(),
                source,
            })?;
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
        Err(DnsUpdateError::NoAnswer {
            who: self.who(),
            last,
        })
    }

    async fn exchange_tcp(&self, addr: SocketAddr, msg: &[u8]) -> Result<Vec<u8>, DnsUpdateError> {
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
            Ok(Err(source)) => Err(DnsUpdateError::Tcp {
                who: self.who(),
                source,
            }),
            Err(_) => Err(DnsUpdateError::TcpTimeout { who: self.who() }),
        }
    }

    /// Sends one signed UPDATE and checks the answer (rcode, TSIG error, response MAC).
    async fn update(
        &self,
        key: &TsigKey,
        name: &str,
        change: TxtChange,
    ) -> Result<(), DnsUpdateError> {
        let op = match &change {
            TxtChange::Add { .. } => "adding",
            TxtChange::Delete { .. } => "deleting",
        };
        let what = || format!("{}: {op} TXT {name}", self.who());
        let message = |source| DnsUpdateError::Message {
            what: what(),
            source,
        };
        let msg = dns::update_txt(random_id(), &self.cfg.zone, name, &change).map_err(message)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (signed, mac) = dns::sign(&msg, key, now, FUDGE).map_err(message)?;
        let raw = self.exchange(&signed).await?;
        let resp = dns::parse_response(&raw).map_err(message)?;
        let tsig_error = resp.tsig.as_ref().map_or(0, |t| t.error);
        let code = if tsig_error != 0 {
            tsig_error
        } else {
            resp.rcode
        };
        if code != 0 {
            return Err(DnsUpdateError::Refused { what: what(), code });
        }
        dns::verify_response(&raw, &resp, key, &mac)
            .map_err(|why| DnsUpdateError::Unverified { what: what(), why })
    }

    /// Adds the TXT record `value` at `name`.
    pub async fn add_txt(
        &self,
        key: &TsigKey,
        name: &str,
        value: &str,
    ) -> Result<(), DnsUpdateError> {
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
    pub async fn remove_txt(
        &self,
        key: &TsigKey,
        name: &str,
        value: &str,
    ) -> Result<(), DnsUpdateError> {
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
    pub async fn serves(&self, name: &str, value: &str) -> Result<bool, DnsUpdateError> {
        let msg = dns::query_txt(random_id(), name).map_err(DnsUpdateError::Query)?;
        let raw = self.exchange(&msg).await?;
        let resp = dns::parse_response(&raw).map_err(|source| DnsUpdateError::Message {
            what: self.who(),
            source,
        })?;
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
