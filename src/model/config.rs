//! Typed daemon configuration and its cross-field validation. Values are parsed into their
//! final types while deserialising (addresses, durations, sizes, domains), so a `Config` that
//! exists is usable; `Config::validate` checks what spans several fields.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            max_body_size: ByteSize(100 << 20),
            max_header_size: ByteSize(64 << 10),
            timeouts: Timeouts::default(),
            pool: PoolConfig::default(),
            trusted_proxies: Vec::new(),
        }
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
    pub challenge: AcmeChallenge,
    /// How often certificates are checked for renewal (also checked at start).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// Longest wait between retries of a failing order.
    #[serde(with = "humantime_serde")]
    pub max_retry_delay: Duration,
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
            if let Some(eab) = &acme.eab {
                if eab.kid.is_empty() {
                    return Err(err("tls.acme.eab.kid", "must not be empty".into()));
                }
                if eab.hmac_key.is_empty() {
                    return Err(err("tls.acme.eab.hmac_key", "must not be empty".into()));
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
        self.validate_api_domain()
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
    fn defaults_validate_and_limits_are_checked() {
        Config::default().validate().expect("defaults are valid");
        let mut c = Config::default();
        c.proxy.workers = 5000;
        assert_eq!(c.validate().unwrap_err().field, "proxy.workers");
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
}
