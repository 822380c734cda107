//! Typed daemon configuration and its cross-field validation. Values are parsed into their
//! final types while deserialising (addresses, durations, sizes, domains), so a `Config` that
//! exists is usable; `Config::validate` checks what spans several fields.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::host::parse_domain;
use super::route::{validate_routes, Domain, RouteError, RouteSpec};

/// A byte count, written as a number or with a unit: `512`, `64KiB`, `10MB`, `1g`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "u64")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    N(u64),
    S(String),
}

impl TryFrom<SizeRepr> for ByteSize {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::N(n) => Ok(ByteSize(n)),
            SizeRepr::S(s) => s.parse(),
        }
    }
}

impl From<ByteSize> for u64 {
    fn from(b: ByteSize) -> u64 {
        b.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!(
                "invalid size {s:?}: expected a number with an optional unit such as 64KiB or 10MB"
            )
        })?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {s:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

/// `IP:port` with errors that name the problem (port range, not an IP).
pub mod listen_addr {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::net::SocketAddr;

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a);
        }
        crate::model::route::parse_listen_addr(&s).map_err(serde::de::Error::custom)
    }
}

/// Log output format on stderr (under systemd logs go to journald instead).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directive, e.g. `info` or `berth=debug`.
    pub level: String,
    pub format: LogFormat,
    /// One line per proxied request.
    pub access_log: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Human,
            access_log: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Where the plain-HTTP proxy listens.
    #[serde(with = "listen_addr")]
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 80)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Where the REST API listens (loopback unless a domain is set).
    #[serde(with = "listen_addr")]
    pub listen: SocketAddr,
    /// Largest API request body accepted (→ 413).
    pub max_body_size: ByteSize,
    /// Whether `GET /metrics` needs an API token too (default: no, like most exporters).
    pub metrics_auth: bool,
    /// Failed token checks per client address per minute before it gets 429 (0: no limit).
    pub auth_failures_per_minute: u32,
    /// Apply that limit to loopback clients too (off: SSH tunnels all arrive from loopback).
    /// Requests that came through the proxy (`domain`) are limited by their real client
    /// address regardless.
    pub auth_limit_loopback: bool,
    /// Public host name for the API: the proxy then serves the API and the status page on
    /// `https://DOMAIN/` with a certificate like any app (ACME or `tls.certs`); plain HTTP
    /// on that name is redirected (only ACME challenges are answered there). Needs TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<Domain>,
    /// More `Host` names (or IP addresses) the API listener answers to, besides loopback
    /// names and addresses, its own listen address and `domain`; any other `Host` gets 421
    /// (DNS-rebinding defence). E.g. the name of an SSH jump host or a VPN address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9922)),
            max_body_size: ByteSize(1 << 20),
            metrics_auth: false,
            auth_failures_per_minute: 10,
            auth_limit_loopback: false,
            domain: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Proxy timeouts. Each one ends a request with a specific status (see README).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP connect to a backend (→ 504).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From the end of the request (its body fully sent) to receiving the backend's response
    /// headers (→ 504).
    #[serde(with = "humantime_serde")]
    pub response_header: Duration,
    /// Longest wait for the next piece of a request body from the client (→ 408); a slow but
    /// steady upload is never cut.
    #[serde(with = "humantime_serde")]
    pub client_body: Duration,
    /// A client must send a complete request head within this (slowloris; connection cut).
    #[serde(with = "humantime_serde")]
    pub client_header: Duration,
    /// An idle keep-alive client connection is closed after this.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// How long in-flight requests and tunnels get when a backend or the process drains.
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(60),
            client_body: Duration::from_secs(30),
            client_header: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

/// Upstream connection pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle upstream connections are closed after this.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most idle connections kept per backend.
    pub max_idle_per_host: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(90),
            max_idle_per_host: 256,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Tokio worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Largest request body accepted (→ 413).
    pub max_body_size: ByteSize,
    /// Largest request head accepted (→ 431).
    pub max_header_size: ByteSize,
    pub timeouts: Timeouts,
    pub pool: PoolConfig,
    /// Peers whose `X-Forwarded-*` headers are believed (CIDRs).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// HTTP and HTTPS listeners (and `mode: http` frontends) take a new connection only once
    /// its client has sent something, or after about this long (`TCP_DEFER_ACCEPT`, like
    /// nginx's `deferred` and HAProxy's `defer-accept`); `0s` = off. Whole seconds (a part of
    /// a second counts as one), at most `MAX_DEFER_ACCEPT`. Never on `mode: tcp` frontends,
    /// where the server may speak first.
    #[serde(with = "humantime_serde")]
    pub defer_accept: Duration,
}

/// Longest `proxy.defer_accept`: a silent client is accepted after about this long anyway.
pub const MAX_DEFER_ACCEPT: Duration = Duration::from_secs(60);

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            max_body_size: ByteSize(100 << 20),
            max_header_size: ByteSize(64 << 10),
            timeouts: Timeouts::default(),
            pool: PoolConfig::default(),
            trusted_proxies: Vec::new(),
            defer_accept: Duration::from_secs(1),
        }
    }
}

impl ProxyConfig {
    /// `defer_accept` in the whole seconds `TCP_DEFER_ACCEPT` takes (rounded up; 0 = off).
    pub fn defer_accept_secs(&self) -> u32 {
        let d = self.defer_accept.min(MAX_DEFER_ACCEPT);
        let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        u32::try_from(whole).unwrap_or(u32::MAX)
    }
}

/// Process lifecycle: control socket and upgrades.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// Unix socket for `berthd upgrade|reload` (default `<data_dir>/control.sock`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<PathBuf>,
    /// How long a new binary gets to become ready during `berthd upgrade`.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            control_socket: None,
            upgrade_timeout: Duration::from_secs(30),
        }
    }
}

/// One certificate + key pair given as PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How the ACME CA checks that we control a domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcmeChallenge {
    /// `http://DOMAIN/.well-known/acme-challenge/TOKEN` on the HTTP listener.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// The `acme-tls/1` ALPN protocol on the HTTPS listener (for hosts whose port 80 is closed).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// A TXT record at `_acme-challenge.DOMAIN`, written by RFC 2136 update (`tls.acme.dns`).
    /// The only challenge that can prove a wildcard name.
    #[serde(rename = "dns-01")]
    Dns01,
}

/// A secret given in the config file. Never printed by `Debug` (logs, error dumps).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// The TSIG key that signs DNS updates (`tls.acme.dns.tsig`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TsigConfig {
    /// The key's name as the DNS server knows it (`key:` in Knot, `key "NAME"` in BIND).
    pub name: String,
    /// `hmac-sha256` (default) or `hmac-sha512`.
    #[serde(default = "default_tsig_algorithm")]
    pub algorithm: String,
    /// The base64 secret itself (prefer `secret_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// A file holding the base64 secret (`ALGORITHM:NAME:SECRET`, as `knsupdate -k` reads, is
    /// accepted too). Read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".into()
}

/// Where DNS-01 records are written: an authoritative server that accepts TSIG-signed
/// RFC 2136 updates (BIND, Knot, PowerDNS, providers' RFC 2136 endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsUpdateConfig {
    /// `HOST:PORT` (or `HOST`, port 53) of the primary server; updates go there by UDP, TCP
    /// when the answer is truncated, and the record is checked there before the CA is told.
    pub server: String,
    /// The zone the records are written in (the UPDATE's zone section). Every challenge name
    /// (or its `delegate` target) must be inside it.
    pub zone: String,
    pub tsig: TsigConfig,
    /// TTL of the TXT records.
    #[serde(default = "default_dns_ttl")]
    pub ttl: u32,
    /// How long to wait for the record to be served before telling the CA anyway.
    #[serde(default = "default_propagation_timeout", with = "humantime_serde")]
    pub propagation_timeout: Duration,
    /// CNAME delegation (the acme-dns pattern): `_acme-challenge.DOMAIN` → the name Berth
    /// writes the TXT record at instead. The operator creates the CNAME once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub delegate: BTreeMap<String, String>,
    /// CNAME delegation for every domain not in `delegate`: `_acme-challenge.DOMAIN` →
    /// `DOMAIN.<delegate_all>` (inside `zone`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate_all: Option<String>,
}

fn default_dns_ttl() -> u32 {
    60
}

fn default_propagation_timeout() -> Duration {
    Duration::from_secs(60)
}

/// External account binding (some CAs, e.g. ZeroSSL, require it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EabConfig {
    /// Key identifier given by the CA.
    pub kid: String,
    /// HMAC key, base64url as given by the CA.
    pub hmac_key: String,
}

/// Automatic certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// ACME directory URL (Let's Encrypt production by default).
    pub directory: String,
    /// Contact address given to the CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eab: Option<EabConfig>,
    /// PEM root that signs the CA's own HTTPS endpoint (private CAs such as pebble).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_root: Option<PathBuf>,
    /// The challenge for every domain (`http-01`, `tls-alpn-01` or `dns-01`). Wildcard domains
    /// and those in `dns_domains` always use DNS-01.
    pub challenge: AcmeChallenge,
    /// DNS-01 settings; needed when any domain uses DNS-01.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsUpdateConfig>,
    /// Domains that use DNS-01 whatever `challenge` says (e.g. hosts behind a private network).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_domains: Vec<String>,
    /// How often certificates are checked for renewal (also checked at start).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Longest wait between retries of a failing order.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
}

impl AcmeConfig {
    /// The challenge used for `domain`: DNS-01 for wildcards and `dns_domains`, else
    /// `challenge`.
    pub fn challenge_for(&self, domain: &str) -> AcmeChallenge {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        if d.starts_with("*.")
            || self
                .dns_domains
                .iter()
                .any(|x| x.trim_end_matches('.').eq_ignore_ascii_case(&d))
        {
            AcmeChallenge::Dns01
        } else {
            self.challenge
        }
    }

    /// Why `domain` cannot be ordered with these settings: it needs DNS-01 (a wildcard, or
    /// listed in `dns_domains`) and `tls.acme.dns` is not configured.
    pub fn dns01_missing(&self, domain: &str) -> Option<String> {
        if self.challenge_for(domain) != AcmeChallenge::Dns01 || self.dns.is_some() {
            return None;
        }
        Some(if domain.starts_with("*.") {
            "a wildcard certificate can only be validated with DNS-01: configure tls.acme.dns \
             (server, zone, tsig), or route the names one by one"
                .into()
        } else {
            "DNS-01 is chosen for this domain but tls.acme.dns is not configured".into()
        })
    }

    /// Checks the DNS-01 settings (field names in errors).
    fn validate_dns(&self) -> Result<(), RouteError> {
        let err = |field: &str, message: String| RouteError {
            field: format!("tls.acme.{field}"),
            message,
        };
        for (i, d) in self.dns_domains.iter().enumerate() {
            parse_domain(d, true)
                .map_err(|e| err(&format!("dns_domains[{i}]"), format!("{d:?}: it {e}")))?;
        }
        let Some(dns) = &self.dns else {
            if self.challenge == AcmeChallenge::Dns01 || !self.dns_domains.is_empty() {
                return Err(err(
                    "dns",
                    "is missing: DNS-01 needs a server, zone and TSIG key to write records with"
                        .into(),
                ));
            }
            return Ok(());
        };
        if dns.server.trim().is_empty() {
            return Err(err("dns.server", "must not be empty".into()));
        }
        crate::model::dns::parse_server(&dns.server).map_err(|m| err("dns.server", m))?;
        parse_domain(&dns.zone, false)
            .map_err(|e| err("dns.zone", format!("{:?}: it {e}", dns.zone)))?;
        if dns.tsig.name.trim().is_empty() {
            return Err(err("dns.tsig.name", "must not be empty".into()));
        }
        if crate::model::dns::TsigAlgorithm::parse(&dns.tsig.algorithm).is_none() {
            return Err(err(
                "dns.tsig.algorithm",
                format!(
                    "{:?} is not supported (hmac-sha256 or hmac-sha512)",
                    dns.tsig.algorithm
                ),
            ));
        }
        match (&dns.tsig.secret, &dns.tsig.secret_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "dns.tsig.secret",
                    "give secret or secret_file, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "dns.tsig.secret_file",
                    "is missing (or give secret)".into(),
                ))
            }
            (Some(s), None) => {
                use base64::Engine;
                let ok = base64::engine::general_purpose::STANDARD
                    .decode(s.0.trim())
                    .is_ok_and(|b| !b.is_empty());
                if !ok {
                    // The value is a secret: never echo it.
                    return Err(err("dns.tsig.secret", "is not base64".into()));
                }
            }
            (None, Some(_)) => {}
        }
        if dns.propagation_timeout.is_zero() {
            return Err(err(
                "dns.propagation_timeout",
                "must be greater than zero".into(),
            ));
        }
        if let Some(all) = &dns.delegate_all {
            let a = parse_domain(all, false)
                .map_err(|e| err("dns.delegate_all", format!("{all:?}: it {e}")))?;
            if !crate::model::dns::in_zone(&a, &dns.zone) {
                return Err(err(
                    "dns.delegate_all",
                    format!("{all:?} is outside tls.acme.dns.zone {:?}", dns.zone),
                ));
            }
        }
        for (from, to) in &dns.delegate {
            let field = format!("dns.delegate.{from:?}");
            let f =
                parse_domain(from, false).map_err(|e| err(&field, format!("{from:?}: it {e}")))?;
            if !f.starts_with("_acme-challenge.") {
                return Err(err(
                    &field,
                    format!("{from:?} must be a challenge name, _acme-challenge.DOMAIN"),
                ));
            }
            let t = parse_domain(to, false)
                .map_err(|e| err(&field, format!("target {to:?}: it {e}")))?;
            if !crate::model::dns::in_zone(&t, &dns.zone) {
                return Err(err(
                    &field,
                    format!("target {to:?} is outside tls.acme.dns.zone {:?}", dns.zone),
                ));
            }
        }
        Ok(())
    }
}

pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            directory: LETS_ENCRYPT_DIRECTORY.into(),
            email: None,
            eab: None,
            ca_root: None,
            challenge: AcmeChallenge::Http01,
            dns: None,
            dns_domains: Vec::new(),
            check_interval: Duration::from_secs(3600),
            max_retry_delay: Duration::from_secs(6 * 3600),
        }
    }
}

/// HTTPS termination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Whether the HTTPS listener runs. Unset: on as soon as `acme`, `certs` or
    /// `default_cert` is given (see `TlsConfig::is_enabled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Where the HTTPS proxy listens.
    #[serde(with = "listen_addr")]
    pub listen: SocketAddr,
    /// HTTP requests for a host that has a certificate get 308 to HTTPS (routes may opt out).
    pub redirect: bool,
    /// Certificates issued automatically for every routed domain; absent: no ACME.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeConfig>,
    /// Bring-your-own certificates (also: `NAME.crt` + `NAME.key` in `<data_dir>/certs/manual/`).
    pub certs: Vec<CertFiles>,
    /// Served when no certificate matches the SNI name; absent: the handshake is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_cert: Option<CertFiles>,
    /// How often manual certificate files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// On-demand TLS: certificates for names no route lists, ordered during the first
    /// handshake when the `ask` endpoint allows the name. Needs `tls.acme`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<OnDemandConfig>,
}

/// `tls.on_demand`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandConfig {
    /// `GET ASK?domain=NAME` must answer 200 for a certificate to be ordered for NAME.
    pub ask: String,
    /// At most one order attempt per name in this interval.
    #[serde(default = "default_name_interval", with = "humantime_serde")]
    pub name_interval: Duration,
    /// At most this many order attempts per hour, all names together.
    #[serde(default = "default_max_per_hour")]
    pub max_per_hour: u32,
    /// A name the ask endpoint refused is refused without asking for this long.
    #[serde(default = "default_refused_ttl", with = "humantime_serde")]
    pub refused_ttl: Duration,
    /// How long a handshake waits for the certificate before it is refused (the order goes
    /// on; the next handshake gets the certificate).
    #[serde(default = "default_on_demand_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_name_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_max_per_hour() -> u32 {
    20
}
fn default_refused_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_on_demand_timeout() -> Duration {
    Duration::from_secs(30)
}

impl OnDemandConfig {
    pub fn limits(&self) -> crate::model::ondemand::Limits {
        crate::model::ondemand::Limits {
            name_interval: self.name_interval,
            max_per_hour: self.max_per_hour,
            refused_ttl: self.refused_ttl,
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 443)),
            redirect: true,
            acme: None,
            certs: Vec::new(),
            default_cert: None,
            reload_interval: Duration::from_secs(10),
            on_demand: None,
        }
    }
}

impl TlsConfig {
    /// Whether anything TLS is configured at all.
    pub fn has_settings(&self) -> bool {
        self.acme.is_some() || !self.certs.is_empty() || self.default_cert.is_some()
    }

    /// Whether the HTTPS listener runs: `enabled` when set, else whether TLS is configured.
    pub fn is_enabled(&self) -> bool {
        self.enabled.unwrap_or_else(|| self.has_settings())
    }
}

/// Whether the Docker deploy engine runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployEnabled {
    /// Runs when Docker answers; otherwise one warning and no deploy endpoints (503).
    #[default]
    Auto,
    /// Docker must answer, else berthd does not start.
    Required,
    /// Never connects to Docker.
    Off,
}

/// `deploy:` — the Docker deploy engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    pub enabled: DeployEnabled,
    /// Docker network the app containers join (created if missing).
    pub network: String,
    /// Images of this many most recent deployments per app are kept.
    pub keep_images: usize,
    /// Largest image tar accepted by `POST /v1/apps/{app}/deploy` (multipart upload).
    pub max_upload_size: ByteSize,
    /// Grace period of `docker stop` for old replicas.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Whether app specs may bind-mount host paths (`/srv/x:/x`). Off by default: a token
    /// allowed to deploy an app must not be able to mount `/` or the Docker socket.
    pub allow_host_mounts: bool,
    /// Ceiling over every app's `pull` policy (`never` < `missing` < `always`): `never` keeps
    /// deploys off registries entirely (offline hosts, CI), `missing` stops `pull: always`.
    pub pull: crate::model::deploy::PullPolicy,
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            enabled: DeployEnabled::Auto,
            network: "berth".into(),
            keep_images: 5,
            max_upload_size: ByteSize(10 << 30),
            stop_grace: Duration::from_secs(10),
            allow_host_mounts: false,
            pull: crate::model::deploy::PullPolicy::Always,
        }
    }
}

/// The whole daemon configuration (`/etc/berth/berthd.yaml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub http: HttpConfig,
    pub api: ApiConfig,
    pub proxy: ProxyConfig,
    pub log: LogConfig,
    pub lifecycle: LifecycleConfig,
    /// State directory: `berth.db`, `certs/`.
    pub data_dir: PathBuf,
    /// Static routes (read-only through the API).
    pub routes: Vec<RouteSpec>,
    pub tls: TlsConfig,
    pub deploy: DeployConfig,
    /// Extra listeners (`mode: tcp`) and the pools they send to (read-only through the API).
    pub frontends: Vec<crate::model::frontend::FrontendSpec>,
    pub pools: Vec<crate::model::pool::PoolSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: HttpConfig::default(),
            api: ApiConfig::default(),
            proxy: ProxyConfig::default(),
            log: LogConfig::default(),
            lifecycle: LifecycleConfig::default(),
            data_dir: PathBuf::from("/var/lib/berth"),
            routes: Vec::new(),
            tls: TlsConfig::default(),
            deploy: DeployConfig::default(),
            frontends: Vec::new(),
            pools: Vec::new(),
        }
    }
}

impl Config {
    /// Where the control socket lives.
    pub fn control_socket(&self) -> PathBuf {
        self.lifecycle
            .control_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("control.sock"))
    }

    /// Checks what individual fields cannot: unique domains, sane limits.
    pub fn validate(&self) -> Result<(), RouteError> {
        let err = |field: &str, message: String| RouteError {
            field: field.into(),
            message,
        };
        if self.proxy.workers > 1024 {
            return Err(err(
                "proxy.workers",
                format!(
                    "{} is out of range (0-1024; 0 = one per core)",
                    self.proxy.workers
                ),
            ));
        }
        if self.proxy.defer_accept > MAX_DEFER_ACCEPT {
            return Err(err(
                "proxy.defer_accept",
                format!(
                    "{} is too long (at most {}; 0s = off)",
                    humantime::format_duration(self.proxy.defer_accept),
                    humantime::format_duration(MAX_DEFER_ACCEPT)
                ),
            ));
        }
        if self.proxy.max_header_size.0 < 1024 {
            return Err(err(
                "proxy.max_header_size",
                format!(
                    "{} is too small (at least 1KiB)",
                    self.proxy.max_header_size
                ),
            ));
        }
        if self.proxy.max_header_size.0 > (16 << 20) {
            return Err(err(
                "proxy.max_header_size",
                format!(
                    "{} is too large (at most 16MiB)",
                    self.proxy.max_header_size
                ),
            ));
        }
        if self.api.max_body_size.0 < 1024 || self.api.max_body_size.0 > (64 << 20) {
            return Err(err(
                "api.max_body_size",
                format!("{} is out of range (1KiB-64MiB)", self.api.max_body_size),
            ));
        }
        let t = &self.proxy.timeouts;
        for (name, d) in [
            ("connect", t.connect),
            ("response_header", t.response_header),
            ("client_body", t.client_body),
            ("client_header", t.client_header),
            ("idle", t.idle),
        ] {
            if d.is_zero() {
                return Err(err(
                    &format!("proxy.timeouts.{name}"),
                    "must be greater than zero".into(),
                ));
            }
        }
        if self.tls.enabled == Some(false) && self.tls.has_settings() {
            return Err(err(
                "tls.enabled",
                "is false, but tls.acme, tls.certs or tls.default_cert is set (remove them or \
                 the `enabled: false`)"
                    .into(),
            ));
        }
        if let Some(acme) = &self.tls.acme {
            if !(acme.directory.starts_with("https://") || acme.directory.starts_with("http://")) {
                return Err(err(
                    "tls.acme.directory",
                    format!("{:?} is not an http(s) URL", acme.directory),
                ));
            }
            if acme.check_interval.is_zero() {
                return Err(err(
                    "tls.acme.check_interval",
                    "must be greater than zero".into(),
                ));
            }
            if let Some(email) = &acme.email {
                if !email.contains('@') || email.contains(char::is_whitespace) {
                    return Err(err(
                        "tls.acme.email",
                        format!("{email:?} is not an email address"),
                    ));
                }
            }
            acme.validate_dns()?;
            if let Some(eab) = &acme.eab {
                if eab.kid.is_empty() {
                    return Err(err("tls.acme.eab.kid", "must not be empty".into()));
                }
                if eab.hmac_key.is_empty() {
                    return Err(err("tls.acme.eab.hmac_key", "must not be empty".into()));
                }
            }
        }
        if let Some(od) = &self.tls.on_demand {
            let ok = url::Url::parse(&od.ask)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(err(
                    "tls.on_demand.ask",
                    format!("{:?} is not an http(s) URL", od.ask),
                ));
            }
            if self.tls.acme.is_none() {
                return Err(err(
                    "tls.on_demand",
                    "needs tls.acme (the certificates are ordered through it)".into(),
                ));
            }
            if od.max_per_hour == 0 {
                return Err(err(
                    "tls.on_demand.max_per_hour",
                    "must be at least 1".into(),
                ));
            }
            for (name, d) in [("name_interval", od.name_interval), ("timeout", od.timeout)] {
                if d.is_zero() {
                    return Err(err(
                        &format!("tls.on_demand.{name}"),
                        "must be greater than zero".into(),
                    ));
                }
            }
        }
        if self.tls.reload_interval.is_zero() {
            return Err(err(
                "tls.reload_interval",
                "must be greater than zero".into(),
            ));
        }
        validate_routes("routes", &self.routes)?;
        self.validate_frontends()?;
        self.validate_api_hosts()?;
        self.validate_api_domain()
    }

    /// The daemon's own listeners, which no frontend may overlap.
    pub fn reserved_listeners(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        let mut r = vec![("http", self.http.listen), ("api", self.api.listen)];
        if self.tls.is_enabled() {
            r.push(("https", self.tls.listen));
        }
        r
    }

    /// `frontends` and `pools`: each valid, names unique, pools exist, binds do not overlap.
    fn validate_frontends(&self) -> Result<(), RouteError> {
        let f: Vec<_> = self
            .frontends
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("frontends[{i}]"), f))
            .collect();
        let p: Vec<_> = self
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("pools[{i}]"), p))
            .collect();
        crate::model::frontend::validate_set(&f, &p, &self.reserved_listeners())
    }

    /// `api.allowed_hosts`: host names (no wildcards) or IP addresses.
    fn validate_api_hosts(&self) -> Result<(), RouteError> {
        for (i, h) in self.api.allowed_hosts.iter().enumerate() {
            let ip = h.trim().trim_start_matches('[').trim_end_matches(']');
            if ip.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            if let Err(e) = super::host::parse_domain(h, false) {
                return Err(RouteError {
                    field: format!("api.allowed_hosts[{i}]"),
                    message: format!("{h:?} is neither a host name nor an IP address: it {e}"),
                });
            }
        }
        Ok(())
    }

    /// `api.domain`: a host name (not an IP literal), served over HTTPS, claimed by no route.
    fn validate_api_domain(&self) -> Result<(), RouteError> {
        let Some(domain) = &self.api.domain else {
            return Ok(());
        };
        let err = |message: String| RouteError {
            field: "api.domain".into(),
            message,
        };
        if domain.as_str().starts_with("*.") {
            return Err(err(format!(
                "\"{domain}\" is a wildcard; the API is served on one host name"
            )));
        }
        if domain.as_str().parse::<std::net::IpAddr>().is_ok() {
            return Err(err(format!(
                "\"{domain}\" is an IP address; give a host name (certificates are issued for \
                 names), or leave api.domain unset and reach the API through an SSH tunnel"
            )));
        }
        let listen = self.api.listen.ip();
        if !(listen.is_loopback() || listen.is_unspecified()) {
            return Err(RouteError {
                field: "api.listen".into(),
                message: format!(
                    "{listen} is neither loopback nor unspecified; with api.domain set the \
                     proxy reaches the API over loopback (use 127.0.0.1:PORT)"
                ),
            });
        }
        if !self.tls.is_enabled() {
            return Err(err(format!(
                "\"{domain}\" needs HTTPS (the API is never served on a public name over plain \
                 HTTP): configure tls.acme, or a certificate in tls.certs"
            )));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.name() == API_ROUTE_NAME {
                return Err(RouteError {
                    field: format!("routes[{i}].name"),
                    message: format!(
                        "{API_ROUTE_NAME:?} is the name of the route that serves the API on \
                         api.domain; rename this route"
                    ),
                });
            }
            let hosts = r
                .domains
                .iter()
                .enumerate()
                .map(|(k, d)| (format!("domains[{k}]"), d))
                .chain(
                    r.aliases
                        .iter()
                        .enumerate()
                        .map(|(k, d)| (format!("aliases[{k}]"), d)),
                );
            for (field, d) in hosts {
                if d == domain {
                    return Err(err(format!(
                        "\"{domain}\" is also routes[{i}].{field} (route {:?}); the API needs a \
                         host name of its own",
                        r.name()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Name of the route that serves the API on `api.domain` (read-only, source `config`).
pub const API_ROUTE_NAME: &str = "berth-api";

/// Header the proxy sets, with a per-process secret, on requests it forwards to the API on
/// `api.domain` (and strips from every incoming request): the API believes `X-Real-IP` only
/// from a loopback peer that sent the right secret.
pub const API_PROXY_HEADER: &str = "x-berth-proxy-secret";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("512", 512),
            ("64KiB", 65536),
            ("10MB", 10_000_000),
            ("1 gib", 1 << 30),
            ("2k", 2000),
        ] {
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(want)), "{s}");
        }
        for s in ["", "x", "10 parsecs", "99999999999999999999GiB"] {
            assert!(s.parse::<ByteSize>().is_err(), "{s}");
        }
    }

    #[test]
    fn defer_accept_is_whole_seconds_rounded_up() {
        let mut p = ProxyConfig::default();
        assert_eq!(p.defer_accept_secs(), 1, "on by default");
        for (given, secs) in [
            (0, 0),
            (1, 1),
            (500, 1),
            (1_200, 2),
            (60_000, 60),
            (90_000, 60),
        ] {
            p.defer_accept = Duration::from_millis(given);
            assert_eq!(p.defer_accept_secs(), secs, "{given} ms");
        }
        let off: ProxyConfig = serde_yaml::from_str("defer_accept: 0s").expect("parses");
        assert_eq!(off.defer_accept_secs(), 0);
    }

    #[test]
    fn defaults_validate_and_limits_are_checked() {
        Config::default().validate().expect("defaults are valid");
        let mut c = Config::default();
        c.proxy.workers = 5000;
        assert_eq!(c.validate().unwrap_err().field, "proxy.workers");
        let mut c = Config::default();
        c.proxy.defer_accept = Duration::from_secs(61);
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "proxy.defer_accept");
        assert!(e.message.contains("1m 1s is too long"), "{}", e.message);
        let mut c = Config::default();
        c.proxy.timeouts.connect = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().field, "proxy.timeouts.connect");
        let mut c = Config::default();
        c.proxy.max_header_size = ByteSize(10);
        assert_eq!(c.validate().unwrap_err().field, "proxy.max_header_size");
        let mut c = Config::default();
        assert!(!c.tls.is_enabled(), "no TLS settings: no HTTPS listener");
        c.tls.acme = Some(AcmeConfig::default());
        assert!(c.tls.is_enabled(), "ACME settings turn HTTPS on");
        c.validate().expect("acme with defaults is valid");
        c.tls.enabled = Some(false);
        assert_eq!(c.validate().unwrap_err().field, "tls.enabled");
        let mut c = Config::default();
        c.tls.enabled = Some(true);
        c.tls.acme = Some(AcmeConfig {
            directory: "ftp://x".into(),
            ..AcmeConfig::default()
        });
        assert_eq!(c.validate().unwrap_err().field, "tls.acme.directory");
        let mut c = Config::default();
        c.tls.enabled = Some(true);
        c.tls.acme = Some(AcmeConfig {
            email: Some("nobody".into()),
            ..AcmeConfig::default()
        });
        assert_eq!(c.validate().unwrap_err().field, "tls.acme.email");
    }

    #[test]
    fn api_allowed_hosts_are_names_or_addresses() {
        let parse = |json: &str| serde_json::from_str::<Config>(json).expect("parses");
        let c = parse(r#"{"api":{"allowed_hosts":["ops.internal","10.0.0.5","[fd00::1]"]}}"#);
        assert_eq!(c.api.allowed_hosts.len(), 3);
        c.validate().expect("valid");
        for bad in [r#""a b""#, r#""*.example.com""#, r#""""#] {
            let c = parse(&format!(
                r#"{{"api":{{"allowed_hosts":["ok.test",{bad}]}}}}"#
            ));
            assert_eq!(
                c.validate().unwrap_err().field,
                "api.allowed_hosts[1]",
                "{bad}"
            );
        }
    }

    #[test]
    fn api_domain_is_a_name_served_over_https_and_unique() {
        let parse = |json: &str| serde_json::from_str::<Config>(json);
        let with_tls = r#""tls":{"certs":[{"cert":"/c.pem","key":"/k.pem"}]}"#;
        let c = parse(&format!(
            r#"{{"api":{{"domain":"Berth.Example.COM."}},{with_tls}}}"#
        ))
        .expect("parses");
        assert_eq!(c.api.domain.as_ref().unwrap().as_str(), "berth.example.com");
        c.validate().expect("valid");
        // Not a host name at all: rejected while parsing, naming the value.
        let e = parse(r#"{"api":{"domain":"bad name!"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid host name"), "{e}");
        // An IP literal, no TLS, or a name a route claims: rejected by validate.
        for (json, want) in [
            (
                format!(r#"{{"api":{{"domain":"192.0.2.1"}},{with_tls}}}"#),
                "IP address",
            ),
            (
                r#"{"api":{"domain":"berth.example.com"}}"#.to_string(),
                "needs HTTPS",
            ),
            (
                format!(
                    r#"{{"api":{{"domain":"berth.example.com"}},{with_tls},
                    "routes":[{{"name":"web","domains":["www.example.com"],
                    "aliases":["berth.example.com"],"backends":[]}}]}}"#
                ),
                "routes[0].aliases[0] (route \"web\")",
            ),
        ] {
            let e = parse(&json).expect("parses").validate().unwrap_err();
            assert_eq!(e.field, "api.domain");
            assert!(e.message.contains(want), "{}: {want}", e.message);
        }
    }

    #[test]
    fn tls_section_parses_and_rejects_unknown_fields() {
        let c: Config = serde_json::from_str(
            r#"{"tls":{"enabled":true,"listen":"127.0.0.1:8443","redirect":false,
                "acme":{"directory":"https://127.0.0.1:14000/dir","email":"a@b.c",
                        "challenge":"tls-alpn-01","ca_root":"/tmp/ca.pem"},
                "certs":[{"cert":"/c.pem","key":"/k.pem"}]}}"#,
        )
        .expect("parses");
        assert!(c.tls.is_enabled() && !c.tls.redirect);
        let acme = c.tls.acme.expect("acme set");
        assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(acme.check_interval, Duration::from_secs(3600));
        let e = serde_json::from_str::<Config>(r#"{"tls":{"acme":{"directroy":"x"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("directroy"), "{e}");
    }

    #[test]
    fn dns01_section_parses_validates_and_hides_the_secret() {
        let parse = |dns: &str| -> Config {
            serde_json::from_str(&format!(
                r#"{{"tls":{{"acme":{{"challenge":"dns-01","dns":{dns}}}}}}}"#
            ))
            .expect("parses")
        };
        let good = r#"{"server":"127.0.0.1:15353","zone":"example.test",
            "tsig":{"name":"acme-key","secret":"c2VjcmV0LXZhbHVl"},
            "delegate":{"_acme-challenge.app.example.test":"app.acme.example.test"}}"#;
        let c = parse(good);
        c.validate().expect("valid");
        let acme = c.tls.acme.clone().expect("acme");
        let dns = acme.dns.clone().expect("dns");
        assert_eq!(dns.tsig.algorithm, "hmac-sha256");
        assert_eq!(
            (dns.ttl, dns.propagation_timeout),
            (60, Duration::from_secs(60))
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("c2VjcmV0LXZhbHVl"), "secret in Debug: {dbg}");
        assert_eq!(acme.challenge_for("a.example.test"), AcmeChallenge::Dns01);

        // Wildcards and dns_domains use DNS-01 whatever `challenge` says.
        let mixed = AcmeConfig {
            dns_domains: vec!["Private.Example.test.".into()],
            ..AcmeConfig::default()
        };
        assert_eq!(mixed.challenge_for("*.example.test"), AcmeChallenge::Dns01);
        assert_eq!(
            mixed.challenge_for("private.example.test"),
            AcmeChallenge::Dns01
        );
        assert_eq!(
            mixed.challenge_for("www.example.test"),
            AcmeChallenge::Http01
        );

        let table: &[(&str, &str)] = &[
            (
                r#"{"server":"127.0.0.1:0","zone":"example.test","tsig":{"name":"k","secret":"YQ=="}}"#,
                "tls.acme.dns.server",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"ex ample","tsig":{"name":"k","secret":"YQ=="}}"#,
                "tls.acme.dns.zone",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"","secret":"YQ=="}}"#,
                "tls.acme.dns.tsig.name",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k","algorithm":"hmac-md5","secret":"YQ=="}}"#,
                "tls.acme.dns.tsig.algorithm",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k","secret":"not base64!"}}"#,
                "tls.acme.dns.tsig.secret",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k"}}"#,
                "tls.acme.dns.tsig.secret_file",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k","secret":"YQ==","secret_file":"/k"}}"#,
                "tls.acme.dns.tsig.secret",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k","secret":"YQ=="},"propagation_timeout":"0s"}"#,
                "tls.acme.dns.propagation_timeout",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k","secret":"YQ=="},"delegate_all":"acme.other.test"}"#,
                "tls.acme.dns.delegate_all",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k","secret":"YQ=="},"delegate":{"app.example.test":"t.example.test"}}"#,
                "tls.acme.dns.delegate.\"app.example.test\"",
            ),
            (
                r#"{"server":"127.0.0.1","zone":"example.test","tsig":{"name":"k","secret":"YQ=="},"delegate":{"_acme-challenge.a.example.test":"t.other.test"}}"#,
                "tls.acme.dns.delegate.\"_acme-challenge.a.example.test\"",
            ),
        ];
        for (dns, field) in table {
            let e = parse(dns).validate().expect_err(dns);
            assert_eq!(&e.field, field, "{dns}: {e:?}");
            assert!(!e.message.contains("not base64!"), "secret echoed: {e:?}");
        }
        // DNS-01 without its settings.
        let c: Config =
            serde_json::from_str(r#"{"tls":{"acme":{"challenge":"dns-01"}}}"#).expect("parses");
        assert_eq!(c.validate().unwrap_err().field, "tls.acme.dns");
        let c: Config =
            serde_json::from_str(r#"{"tls":{"acme":{"dns_domains":["a..b"]}}}"#).expect("parses");
        assert_eq!(c.validate().unwrap_err().field, "tls.acme.dns_domains[0]");
        let e = serde_json::from_str::<Config>(
            r#"{"tls":{"acme":{"dns":{"server":"x","zone":"y","tsig":{"name":"k","secert":"a"}}}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("secert"), "{e}");
    }

    #[test]
    fn on_demand_section_parses_and_validates() {
        let c: Config = serde_json::from_str(
            r#"{"tls":{"acme":{},"on_demand":{"ask":"http://127.0.0.1:9/check"}}}"#,
        )
        .expect("parses");
        c.validate().expect("valid");
        let od = c.tls.on_demand.expect("on_demand");
        assert_eq!(
            (
                od.name_interval,
                od.max_per_hour,
                od.refused_ttl,
                od.timeout
            ),
            (
                Duration::from_secs(600),
                20,
                Duration::from_secs(60),
                Duration::from_secs(30)
            )
        );
        for (json, field) in [
            (
                r#"{"tls":{"acme":{},"on_demand":{"ask":"ftp://x/"}}}"#,
                "tls.on_demand.ask",
            ),
            (
                r#"{"tls":{"acme":{},"on_demand":{"ask":"check"}}}"#,
                "tls.on_demand.ask",
            ),
            (
                r#"{"tls":{"certs":[{"cert":"/c","key":"/k"}],"on_demand":{"ask":"http://a/"}}}"#,
                "tls.on_demand",
            ),
            (
                r#"{"tls":{"acme":{},"on_demand":{"ask":"http://a/","max_per_hour":0}}}"#,
                "tls.on_demand.max_per_hour",
            ),
            (
                r#"{"tls":{"acme":{},"on_demand":{"ask":"http://a/","timeout":"0s"}}}"#,
                "tls.on_demand.timeout",
            ),
        ] {
            let c: Config = serde_json::from_str(json).expect(json);
            assert_eq!(c.validate().expect_err(json).field, field, "{json}");
        }
        assert!(serde_json::from_str::<Config>(
            r#"{"tls":{"on_demand":{"ask":"http://a/","rate":1}}}"#
        )
        .is_err());
    }
}
