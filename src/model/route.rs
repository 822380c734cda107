//! Route specifications (what an operator asks for) and the immutable `RouteTable` snapshot the
//! proxy reads once per request. Building a table validates the whole set of routes; a table
//! that exists is consistent (no domain+prefix claimed twice, every backend address parsed).
//! Per-backend counters and runtime health carry over from the previous table by (route name,
//! backend id); balancer choice (`Route::pick_for`) reads only the snapshot and atomics.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::balance::{
    cookie_value, least_loaded, rendezvous, source_hash, sticky_token, RoundRobin,
};
use super::health::{slowstart_weight, unix_ms, BackendHealth};
use super::host::{normalize_host, parse_domain, DomainError};
use super::stats::BackendStats;

/// A validated, normalised domain name. May be a one-label wildcard (`*.example.com`): such a
/// route serves every name one label below, unless an exact domain claims it, and its
/// certificate is a wildcard one (DNS-01).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Domain(String);

impl Domain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Domain {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_domain(&s, true)
            .map(Domain)
            .map_err(|e: DomainError| format!("invalid host name {s:?}: it {e}"))
    }
}

impl From<Domain> for String {
    fn from(d: Domain) -> String {
        d.0
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `host:port` of an upstream server. The host is an IP literal or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackendAddr {
    host: String,
    port: u16,
}

impl BackendAddr {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
        }
    }
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for BackendAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let end = rest
                .find(']')
                .ok_or_else(|| format!("invalid address {s:?}: unclosed '['"))?;
            let ip = &rest[..end];
            ip.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("invalid address {s:?}: {ip:?} is not an IPv6 address"))?;
            let port = rest[end + 1..].strip_prefix(':').ok_or_else(|| {
                format!("invalid address {s:?}: expected host:port, the port is missing")
            })?;
            (format!("[{ip}]"), port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(|| {
                format!("invalid address {s:?}: expected host:port, the port is missing")
            })?;
            if host.parse::<std::net::Ipv4Addr>().is_err() {
                parse_domain(host, false)
                    .map_err(|e| format!("invalid address {s:?}: host name {e}"))?;
            }
            (host.to_ascii_lowercase(), port)
        };
        let port: u16 = match port.parse::<u32>() {
            Ok(p) if (1..=65535).contains(&p) => p as u16,
            Ok(p) => {
                return Err(format!(
                    "invalid address {s:?}: port {p} is out of range (1-65535)"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "invalid address {s:?}: port {port:?} is not a number"
                ))
            }
        };
        Ok(Self { host, port })
    }
}

/// Parses a listen address (`IP:port`, `[IPv6]:port`) with a message that says what is wrong.
pub fn parse_listen_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let a: BackendAddr = s.parse()?;
    let ip = a.host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("invalid address {s:?}: {ip:?} is not an IP address"))?;
    Ok(std::net::SocketAddr::new(ip, a.port))
}

impl TryFrom<String> for BackendAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<BackendAddr> for String {
    fn from(a: BackendAddr) -> String {
        a.to_string()
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A URL path prefix: starts with '/', no trailing '/' (except the root itself), no query.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn root() -> Self {
        PathPrefix("/".into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Segment-aware match: `/api` matches `/api`, `/api/x`, not `/apix`.
    pub fn matches(&self, path: &str) -> bool {
        let p = self.0.as_str();
        if p == "/" {
            return true;
        }
        match path.strip_prefix(p) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

impl TryFrom<String> for PathPrefix {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("invalid path prefix {s:?}: it must start with '/'"));
        }
        if s.contains(['?', '#', ' ']) {
            return Err(format!(
                "invalid path prefix {s:?}: it must not contain '?', '#' or spaces"
            ));
        }
        let trimmed = s.trim_end_matches('/');
        Ok(PathPrefix(if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.into()
        }))
    }
}

impl From<PathPrefix> for String {
    fn from(p: PathPrefix) -> String {
        p.0
    }
}

/// What an alias does: answer 301 to the canonical (first) domain, or serve the same route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AliasMode {
    #[default]
    Redirect,
    Serve,
}

/// Administrative state of a backend (HAProxy's server states).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Takes traffic.
    #[default]
    Ready,
    /// No new requests; in-flight ones and open tunnels finish.
    Drain,
    /// No traffic at all.
    Maint,
}

/// What `uri_hash` hashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The path only (`/a/b`).
    #[default]
    Path,
    /// Path and query (`/a/b?c=d`).
    Uri,
}

/// Default name of the sticky-session cookie.
pub const DEFAULT_STICKY_COOKIE: &str = "BERTH_SERVER";

/// How a route spreads requests over its backends (`balancer:` in a route).
///
/// Two spellings are accepted. A bare name uses the defaults:
/// `balancer: round_robin` | `sticky_cookie` | `uri_hash` | `least_connections`.
/// The tagged form sets options: `balancer: {kind: sticky_cookie, cookie: SESSION_PIN}`
/// (cookie name, default `BERTH_SERVER`), `balancer: {kind: uri_hash, key: uri}` (`path`, the
/// default, or `uri` = path and query). Serialised back in the shortest form that says it all.
///
/// - `round_robin`: smooth weighted round robin (the default).
/// - `sticky_cookie`: like round robin, but the first response sets
///   `NAME=<opaque backend token>; Path=/; HttpOnly; SameSite=Lax`, and later requests carrying a
///   valid token go to that backend while it is up and `ready` or `drain` (HAProxy lets pinned
///   requests into a draining server). A pin to a down, `maint` or removed backend is
///   re-balanced and the cookie rewritten.
/// - `uri_hash`: weighted rendezvous hashing of the key, so adding or removing one of N
///   backends moves about 1/N of keys.
/// - `least_connections`: fewest in-flight requests per unit of weight.
/// - `source_ip`: consistent (rendezvous) hash of the client address: a client stays on one
///   backend, and when one of N backends leaves only its clients move (about 1/N).
///
/// `sticky_cookie` takes `indirect: true` (HAProxy's `cookie NAME insert indirect`): the
/// proxy removes its cookie from the request before it reaches the app.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BalancerKind {
    #[default]
    RoundRobin,
    StickyCookie {
        cookie: String,
        /// Remove the cookie from requests before they reach the backend.
        indirect: bool,
    },
    UriHash {
        key: HashKey,
    },
    LeastConnections,
    SourceIp,
}

impl BalancerKind {
    /// Builds a balancer from the tagged form's parts; the message names the option at fault.
    pub fn from_parts(
        kind: &str,
        cookie: Option<String>,
        key: Option<HashKey>,
        indirect: Option<bool>,
    ) -> Result<Self, String> {
        let kinds = "round_robin, sticky_cookie, uri_hash, least_connections, source_ip";
        if indirect.is_some() && kind != "sticky_cookie" {
            return Err("`indirect` only applies to sticky_cookie".into());
        }
        let b = match kind {
            "round_robin" => BalancerKind::RoundRobin,
            "least_connections" => BalancerKind::LeastConnections,
            "source_ip" => BalancerKind::SourceIp,
            "sticky_cookie" => {
                let cookie = cookie.unwrap_or_else(|| DEFAULT_STICKY_COOKIE.to_string());
                if cookie.is_empty()
                    || cookie.len() > 64
                    || !cookie
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(format!(
                        "invalid cookie name {cookie:?}: use 1-64 letters, digits, '-', '_' or '.'"
                    ));
                }
                return match key {
                    Some(_) => Err("`key` only applies to uri_hash".into()),
                    None => Ok(BalancerKind::StickyCookie {
                        cookie,
                        indirect: indirect.unwrap_or(false),
                    }),
                };
            }
            "uri_hash" => {
                return match cookie {
                    Some(_) => Err("`cookie` only applies to sticky_cookie".into()),
                    None => Ok(BalancerKind::UriHash {
                        key: key.unwrap_or_default(),
                    }),
                }
            }
            other => {
                return Err(format!(
                    "unknown balancer {other:?} (expected one of {kinds})"
                ))
            }
        };
        if cookie.is_some() {
            return Err("`cookie` only applies to sticky_cookie".into());
        }
        if key.is_some() {
            return Err("`key` only applies to uri_hash".into());
        }
        Ok(b)
    }
}

impl Serialize for BalancerKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            BalancerKind::RoundRobin => s.serialize_str("round_robin"),
            BalancerKind::LeastConnections => s.serialize_str("least_connections"),
            BalancerKind::SourceIp => s.serialize_str("source_ip"),
            BalancerKind::StickyCookie { cookie, indirect } => {
                let mut m = s.serialize_map(Some(if *indirect { 3 } else { 2 }))?;
                m.serialize_entry("kind", "sticky_cookie")?;
                m.serialize_entry("cookie", cookie)?;
                if *indirect {
                    m.serialize_entry("indirect", &true)?;
                }
                m.end()
            }
            BalancerKind::UriHash { key } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("kind", "uri_hash")?;
                m.serialize_entry("key", key)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for BalancerKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = BalancerKind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a balancer name or {kind: NAME, cookie: .., key: ..}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BalancerKind, E> {
                BalancerKind::from_parts(v, None, None, None).map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<BalancerKind, A::Error> {
                use serde::de::Error;
                let (mut kind, mut cookie, mut key, mut indirect) =
                    (None::<String>, None, None, None);
                while let Some(k) = map.next_key::<String>()? {
                    match k.as_str() {
                        "kind" => kind = Some(map.next_value()?),
                        "cookie" => cookie = Some(map.next_value()?),
                        "key" => key = Some(map.next_value()?),
                        "indirect" => indirect = Some(map.next_value()?),
                        other => {
                            return Err(A::Error::custom(format!(
                                "unknown field `{other}`, expected `kind`, `cookie`, `key` or `indirect`"
                            )))
                        }
                    }
                }
                let kind = kind.ok_or_else(|| A::Error::missing_field("kind"))?;
                BalancerKind::from_parts(&kind, cookie, key, indirect).map_err(A::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// What to do with a backend's open tunnels when health checks mark it down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnDown {
    /// Leave them; they end on their own (or when the backend is removed and drained).
    #[default]
    None,
    /// Close them at once (HAProxy's `on-marked-down shutdown-sessions`).
    ShutdownSessions,
}

fn default_check_path() -> String {
    "/".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_fall() -> u32 {
    super::health::DEFAULT_FALL
}
fn default_rise() -> u32 {
    super::health::DEFAULT_RISE
}
fn default_expect() -> Vec<StatusPattern> {
    vec![StatusPattern::Class(2), StatusPattern::Class(3)]
}

/// The HTTP method of a health check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckMethod {
    #[default]
    Get,
    Head,
}

impl CheckMethod {
    pub fn as_http(self) -> http::Method {
        match self {
            CheckMethod::Get => http::Method::GET,
            CheckMethod::Head => http::Method::HEAD,
        }
    }
    fn is_default(&self) -> bool {
        *self == CheckMethod::Get
    }
}

/// An accepted health-check status: an exact code (`204`) or a class (`2xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StatusPattern {
    Exact(u16),
    Class(u16),
}

impl StatusPattern {
    pub fn matches(&self, status: u16) -> bool {
        match self {
            StatusPattern::Exact(c) => status == *c,
            StatusPattern::Class(c) => status / 100 == *c,
        }
    }
}

impl TryFrom<String> for StatusPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        let bad =
            || format!("invalid status {s:?}: expected a code such as 200 or a class such as 2xx");
        if let Some(c) = t.strip_suffix("xx") {
            let c: u16 = c.parse().map_err(|_| bad())?;
            return if (1..=5).contains(&c) {
                Ok(StatusPattern::Class(c))
            } else {
                Err(bad())
            };
        }
        let c: u16 = t.parse().map_err(|_| bad())?;
        if (100..=599).contains(&c) {
            Ok(StatusPattern::Exact(c))
        } else {
            Err(bad())
        }
    }
}

impl From<StatusPattern> for String {
    fn from(p: StatusPattern) -> String {
        match p {
            StatusPattern::Exact(c) => c.to_string(),
            StatusPattern::Class(c) => format!("{c}xx"),
        }
    }
}

/// Active health check of every backend of a route: `GET path` every `interval`, a response
/// with an `expect`ed status within `timeout` is a success. `fall` consecutive failures mark
/// an up backend down, `rise` consecutive successes bring it back. Backends start up.
/// Without a `health_check`, backends are assumed up and never marked down (passive failures
/// still trigger the retry, but nothing would ever bring a backend back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default = "default_check_path")]
    pub path: String,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_fall")]
    pub fall: u32,
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Accepted statuses (default `[2xx, 3xx]`).
    #[serde(default = "default_expect")]
    pub expect: Vec<StatusPattern>,
    /// `GET` (default) or `HEAD`.
    #[serde(default, skip_serializing_if = "CheckMethod::is_default")]
    pub method: CheckMethod,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            path: default_check_path(),
            interval: default_interval(),
            timeout: default_check_timeout(),
            fall: default_fall(),
            rise: default_rise(),
            expect: default_expect(),
            method: CheckMethod::Get,
        }
    }
}

impl HealthCheckSpec {
    pub fn accepts(&self, status: u16) -> bool {
        self.expect.iter().any(|p| p.matches(status))
    }
}

fn default_weight() -> u32 {
    1
}

/// One upstream server of a route, as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Stable identifier within the route; defaults to the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub address: BackendAddr,
    /// Relative share of traffic, 0-1000 (0: no new traffic).
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub state: ServerState,
}

impl BackendSpec {
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.address.to_string())
    }
}

/// A route as configured: which hosts (and optional path prefix) go to which backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name; defaults to the first domain (plus the prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub domains: Vec<Domain>,
    #[serde(default)]
    pub aliases: Vec<Domain>,
    #[serde(default)]
    pub alias_mode: AliasMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<PathPrefix>,
    /// See [`BalancerKind`] for both spellings.
    #[serde(default)]
    pub balancer: BalancerKind,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
    /// Active health checks; none means backends are assumed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// A backend that comes back up (or is added to a running table) ramps its effective
    /// weight linearly from ~0 to its weight over this duration (e.g. `30s`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub slowstart: Option<Duration>,
    /// What happens to open tunnels of a backend that is marked down.
    #[serde(default)]
    pub on_down: OnDown,
    /// How many times a bodiless GET/HEAD/OPTIONS whose backend failed before answering is
    /// sent again, each time to another backend (0-5, default 1).
    #[serde(
        default = "default_retries",
        skip_serializing_if = "is_default_retries"
    )]
    pub retries: u32,
    /// HTTP requests get 308 to HTTPS when the host has a certificate (tls.redirect on).
    #[serde(default = "default_true")]
    pub https_redirect: bool,
    /// `Strict-Transport-Security: max-age=…` on HTTPS responses when set.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub hsts_max_age: Option<std::time::Duration>,
    /// Pause / maintenance of a deployed app (see `model::traffic`). Set by the deploy
    /// engine from its own persisted state, never read from or written to a route document.
    #[serde(skip)]
    pub gate: Option<super::traffic::AppGate>,
    /// Split of a deployed app's traffic between its versions (canary, A/B; see
    /// `model::canary`). Set by the deploy engine, never part of a route document.
    #[serde(skip)]
    pub split: Option<super::canary::RouteSplit>,
}

fn default_true() -> bool {
    true
}

/// Default `retries` of a route.
pub const DEFAULT_RETRIES: u32 = 1;
/// Largest accepted `retries`.
pub const MAX_RETRIES: u32 = 5;

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn is_default_retries(r: &u32) -> bool {
    *r == DEFAULT_RETRIES
}

impl Default for RouteSpec {
    /// An empty route (no domains yet): the base for building one in code.
    fn default() -> Self {
        Self {
            name: None,
            domains: Vec::new(),
            aliases: Vec::new(),
            alias_mode: AliasMode::default(),
            path_prefix: None,
            balancer: BalancerKind::default(),
            backends: Vec::new(),
            health_check: None,
            slowstart: None,
            on_down: OnDown::default(),
            retries: DEFAULT_RETRIES,
            https_redirect: true,
            hsts_max_age: None,
            gate: None,
            split: None,
        }
    }
}

impl RouteSpec {
    pub fn name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        // Names are URL path segments of the API: `*.example.com` → `wildcard.example.com`.
        let base = self
            .domains
            .first()
            .map(|d| match d.as_str().strip_prefix("*.") {
                Some(rest) => format!("wildcard.{rest}"),
                None => d.to_string(),
            })
            .unwrap_or_default();
        match &self.path_prefix {
            Some(p) if p.as_str() != "/" => format!("{base}{}", p.as_str()),
            _ => base,
        }
    }
}

/// A problem with a set of routes, naming the field it is about (`routes[1].domains[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct RouteError {
    pub field: String,
    pub message: String,
}

impl RouteError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 1000;

/// Checks a whole set of routes for consistency. `prefix` names the list (e.g. `routes`).
pub fn validate_routes(prefix: &str, routes: &[RouteSpec]) -> Result<(), RouteError> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut claims: HashMap<(String, String), (usize, String)> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        let name = r.name();
        if name.is_empty() {
            return Err(RouteError::new(
                format!("{at}.domains"),
                "a route needs at least one domain",
            ));
        }
        if r.domains.is_empty() {
            return Err(RouteError::new(
                format!("{at}.domains"),
                "a route needs at least one domain",
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            return Err(RouteError::new(
                format!("{at}.name"),
                format!("{name:?} may only contain letters, digits, '-', '_', '.' and '/'"),
            ));
        }
        let pfx = r
            .path_prefix
            .clone()
            .unwrap_or_else(PathPrefix::root)
            .as_str()
            .to_string();
        let hosts = r
            .domains
            .iter()
            .enumerate()
            .map(|(k, d)| (format!("{at}.domains[{k}]"), d))
            .chain(
                r.aliases
                    .iter()
                    .enumerate()
                    .map(|(k, d)| (format!("{at}.aliases[{k}]"), d)),
            );
        for (field, d) in hosts {
            let key = (d.to_string(), pfx.clone());
            if let Some((_, other)) = claims.get(&key) {
                let what = if pfx == "/" {
                    format!("duplicate domain \"{d}\": already used by {other}")
                } else {
                    format!("duplicate domain \"{d}\" with path prefix {pfx:?}: already used by {other}")
                };
                return Err(RouteError::new(field, what));
            }
            claims.insert(key, (i, field));
        }
        if let Some(j) = names.insert(name.clone(), i) {
            return Err(RouteError::new(
                format!("{at}.name"),
                format!("route name {name:?} is already used by {prefix}[{j}]"),
            ));
        }
        if let Some(h) = &r.health_check {
            let f = |n: &str| format!("{at}.health_check.{n}");
            if !h.path.starts_with('/')
                || h.path
                    .contains(|c: char| c.is_whitespace() || c.is_control())
            {
                return Err(RouteError::new(
                    f("path"),
                    format!("{:?} must start with '/' and contain no spaces", h.path),
                ));
            }
            if h.interval < Duration::from_millis(10) || h.interval > Duration::from_secs(3600) {
                return Err(RouteError::new(
                    f("interval"),
                    "must be between 10ms and 1h",
                ));
            }
            if h.timeout.is_zero() || h.timeout > Duration::from_secs(300) {
                return Err(RouteError::new(
                    f("timeout"),
                    "must be greater than zero and at most 5m",
                ));
            }
            for (n, v) in [("fall", h.fall), ("rise", h.rise)] {
                if !(1..=100).contains(&v) {
                    return Err(RouteError::new(
                        f(n),
                        format!("{v} is out of range (1-100)"),
                    ));
                }
            }
            if h.expect.is_empty() {
                return Err(RouteError::new(f("expect"), "needs at least one status"));
            }
        }
        if r.retries > MAX_RETRIES {
            return Err(RouteError::new(
                format!("{at}.retries"),
                format!("{} is out of range (0-{MAX_RETRIES})", r.retries),
            ));
        }
        if r.slowstart.is_some_and(|d| d > Duration::from_secs(3600)) {
            return Err(RouteError::new(
                format!("{at}.slowstart"),
                "must be at most 1h",
            ));
        }
        let mut ids = HashSet::new();
        for (k, b) in r.backends.iter().enumerate() {
            if b.weight > MAX_WEIGHT {
                return Err(RouteError::new(
                    format!("{at}.backends[{k}].weight"),
                    format!("{} is out of range (0-{MAX_WEIGHT})", b.weight),
                ));
            }
            let id = b.id();
            if id.is_empty() {
                return Err(RouteError::new(
                    format!("{at}.backends[{k}].id"),
                    "must not be empty",
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(RouteError::new(
                    format!("{at}.backends[{k}]"),
                    format!("backend id {id:?} appears twice in this route"),
                ));
            }
        }
    }
    Ok(())
}

/// One backend inside a table snapshot.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    pub address: BackendAddr,
    /// `address` as a URI authority, parsed once at build time.
    pub authority: http::uri::Authority,
    /// Configured weight.
    pub weight: u32,
    /// Weight in force in this snapshot: `weight`, or less while slow start ramps.
    pub effective_weight: u32,
    pub state: ServerState,
    /// Sticky-cookie value for this backend (opaque; derived from route name and id).
    pub token: String,
    /// Counters shared by every snapshot that contains this backend.
    pub stats: Arc<BackendStats>,
    /// Runtime health shared by every snapshot that contains this backend (see
    /// `model::health` for the carry-over invariant).
    pub health: Arc<BackendHealth>,
}

impl Backend {
    /// Whether new, unpinned requests may go here.
    pub fn eligible(&self) -> bool {
        self.state == ServerState::Ready && self.effective_weight > 0 && self.health.is_up()
    }

    /// Whether a request pinned here (sticky cookie) may still come: up, and `ready` or
    /// `drain` (not `maint`).
    pub fn accepts_pinned(&self) -> bool {
        self.state != ServerState::Maint && self.health.is_up()
    }
}

/// One route inside a table snapshot.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub canonical: String,
    pub alias_mode: AliasMode,
    pub path_prefix: PathPrefix,
    pub balancer: BalancerKind,
    pub backends: Vec<Backend>,
    pub spec: RouteSpec,
    rr: RoundRobin,
    /// Whether some backend's effective weight is still ramping (slow start).
    ramping: bool,
    /// The version split, when the route carries one: a version is chosen first, then a
    /// backend of that version by the balancer.
    pub versions: Option<super::canary::VersionPicker>,
}

/// Why a route could not pick a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// The route has no backends at all.
    NoBackends,
    /// Backends exist but none is eligible (down, draining, maint, weight 0).
    AllDown,
}

/// What a balancer may look at in a request.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    /// The `Cookie` header (joined), if any.
    pub cookie: Option<&'a str>,
    /// The request path.
    pub path: &'a str,
    /// Path and query.
    pub path_and_query: &'a str,
    /// The client's address (for `source_ip`).
    pub client: Option<std::net::IpAddr>,
}

/// A balancer's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Index into `Route::backends`.
    pub index: usize,
    /// For `sticky_cookie`: the `Set-Cookie` value to send, when the request had no valid pin.
    pub set_cookie: Option<String>,
    /// A sticky version split's `Set-Cookie` value, when the request named no usable version.
    pub version_cookie: Option<String>,
}

impl Route {
    /// Chooses a backend for a new request, skipping any in `exclude` (used for retries).
    pub fn pick(&self, exclude: Option<usize>) -> Result<usize, PickError> {
        self.pick_for(&PickContext::default(), exclude)
            .map(|p| p.index)
    }

    /// Chooses a backend for a request: the version first when the route splits traffic
    /// between versions (a version without a usable backend falls back to any), then a
    /// backend with the route's balancer.
    pub fn pick_for(
        &self,
        ctx: &PickContext<'_>,
        exclude: Option<usize>,
    ) -> Result<Pick, PickError> {
        let Some(choice) = self.versions.as_ref().and_then(|v| v.choose(ctx.cookie)) else {
            return self.pick_in(ctx, exclude, None);
        };
        match self.pick_in(ctx, exclude, Some(choice.version)) {
            Ok(p) => Ok(Pick {
                version_cookie: choice.set_cookie,
                ..p
            }),
            Err(_) => self.pick_in(ctx, exclude, None),
        }
    }

    /// The balancer's pick among the backends of `version` (all backends when `None`).
    fn pick_in(
        &self,
        ctx: &PickContext<'_>,
        exclude: Option<usize>,
        version: Option<usize>,
    ) -> Result<Pick, PickError> {
        if self.backends.is_empty() {
            return Err(PickError::NoBackends);
        }
        let in_version = |i: usize| match (version, &self.versions) {
            (Some(v), Some(vp)) => vp.member(i, v),
            _ => true,
        };
        let usable = |i: usize| Some(i) != exclude && self.backends[i].eligible() && in_version(i);
        let plain = |index: usize| Pick {
            index,
            set_cookie: None,
            version_cookie: None,
        };
        // Within a version, its own cursor: its replicas share its traffic evenly.
        let rr = match (version, &self.versions) {
            (Some(v), Some(vp)) => vp.round_robin(v).unwrap_or(&self.rr),
            _ => &self.rr,
        };
        let index = match &self.balancer {
            BalancerKind::RoundRobin => rr.pick(usable).map(plain),
            BalancerKind::StickyCookie { cookie, .. } => {
                let pinned = ctx
                    .cookie
                    .and_then(|h| cookie_value(h, cookie))
                    .and_then(|tok| self.backends.iter().position(|b| b.token == tok))
                    .filter(|i| {
                        Some(*i) != exclude && self.backends[*i].accepts_pinned() && in_version(*i)
                    });
                match pinned {
                    Some(i) => Some(plain(i)),
                    None => rr.pick(usable).map(|i| Pick {
                        index: i,
                        set_cookie: Some(format!(
                            "{cookie}={}; Path=/; HttpOnly; SameSite=Lax",
                            self.backends[i].token
                        )),
                        version_cookie: None,
                    }),
                }
            }
            BalancerKind::UriHash { key } => {
                let k = match key {
                    HashKey::Path => ctx.path,
                    HashKey::Uri => ctx.path_and_query,
                };
                rendezvous(
                    k.as_bytes(),
                    self.backends
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| usable(*i))
                        .map(|(i, b)| (i, b.id.as_str(), b.effective_weight)),
                )
                .map(plain)
            }
            BalancerKind::SourceIp => match ctx.client {
                Some(ip) => source_hash(
                    ip,
                    self.backends
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| usable(*i))
                        .map(|(i, b)| (i, b.id.as_str(), b.effective_weight)),
                )
                .map(plain),
                // No client address (internal callers): spread like round robin.
                None => rr.pick(usable).map(plain),
            },
            BalancerKind::LeastConnections => {
                let start = rr.position();
                rr.advance();
                least_loaded(
                    start,
                    self.backends
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| usable(*i))
                        .map(|(i, b)| {
                            (
                                i,
                                b.stats.inflight.load(std::sync::atomic::Ordering::Relaxed),
                                b.effective_weight,
                            )
                        }),
                )
                .map(plain)
            }
        };
        index.ok_or(PickError::AllDown)
    }

    /// Whether a backend's slow start is still ramping (the table needs re-publishing).
    pub fn ramping(&self) -> bool {
        self.ramping
    }
}

/// The outcome of looking a request up in the table.
#[derive(Debug)]
pub enum Lookup<'a> {
    Route(&'a Arc<Route>),
    /// An alias in redirect mode: answer 301 to this host.
    Redirect(&'a str),
    NotFound,
}

#[derive(Debug, Default)]
struct HostEntry {
    /// Sorted by prefix length, longest first.
    routes: Vec<(usize, bool)>,
}

/// Immutable routing snapshot. Build a new one for every change and swap it in.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    hosts: HashMap<String, HostEntry>,
}

impl RouteTable {
    /// Builds a table from validated specs. Counters of backends that also exist in
    /// `previous` (same route name and backend id) carry over, as do round-robin cursors.
    ///
    /// Runtime health carries over the same way (when the address is unchanged too); a
    /// backend new to a running table (`previous` is some) starts up but ramps through slow
    /// start, one in the first table starts at full weight.
    pub fn build(
        specs: &[RouteSpec],
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, RouteError> {
        Self::build_at(specs, previous, unix_ms())
    }

    /// Rebuilds this table from its own specs (to re-evaluate slow-start weights and let
    /// watchers see health changes).
    pub fn rebuild(&self) -> Result<RouteTable, RouteError> {
        let specs: Vec<RouteSpec> = self.routes.iter().map(|r| r.spec.clone()).collect();
        Self::build(&specs, Some(self))
    }

    /// `build` with an explicit clock (unix milliseconds) for slow-start weights.
    pub fn build_at(
        specs: &[RouteSpec],
        previous: Option<&RouteTable>,
        now_ms: u64,
    ) -> Result<RouteTable, RouteError> {
        validate_routes("routes", specs)?;
        let mut routes = Vec::with_capacity(specs.len());
        let mut hosts: HashMap<String, HostEntry> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let name = spec.name();
            let prev = previous.and_then(|p| p.route(&name));
            let mut backends = Vec::with_capacity(spec.backends.len());
            let mut ramping = false;
            for (k, b) in spec.backends.iter().enumerate() {
                let id = b.id();
                let authority: http::uri::Authority =
                    b.address.to_string().parse().map_err(|_| {
                        RouteError::new(
                            format!("routes[{i}].backends[{k}].address"),
                            format!("{} is not a valid URI authority", b.address),
                        )
                    })?;
                let old = prev.and_then(|p| p.backends.iter().find(|x| x.id == id));
                let stats = old.map(|x| x.stats.clone()).unwrap_or_default();
                let health = old
                    .filter(|x| x.address == b.address)
                    .map(|x| x.health.clone())
                    .unwrap_or_else(|| {
                        // New to a running table: ramp (slow start); at boot: full weight.
                        Arc::new(BackendHealth::new_up(if previous.is_some() {
                            now_ms
                        } else {
                            0
                        }))
                    });
                let elapsed = Duration::from_millis(now_ms.saturating_sub(health.since_ms()));
                let effective_weight = slowstart_weight(b.weight, elapsed, spec.slowstart);
                if health.is_up() && b.state != ServerState::Maint && effective_weight < b.weight {
                    ramping = true;
                }
                backends.push(Backend {
                    token: sticky_token(&name, &id),
                    id,
                    address: b.address.clone(),
                    authority,
                    weight: b.weight,
                    effective_weight,
                    state: b.state,
                    stats,
                    health,
                });
            }
            // Down backends are skipped at pick time (health is read live), so the schedule
            // only needs admin state and weights.
            let weights: Vec<u32> = backends
                .iter()
                .map(|b| {
                    if b.state == ServerState::Ready {
                        b.effective_weight
                    } else {
                        0
                    }
                })
                .collect();
            let rr = RoundRobin::with_start(&weights, prev.map(|p| p.rr.position()).unwrap_or(0));
            let prefix = spec.path_prefix.clone().unwrap_or_else(PathPrefix::root);
            let versions = spec.split.as_ref().map(|s| {
                super::canary::VersionPicker::new(
                    &name,
                    &s.split,
                    backends
                        .iter()
                        .zip(&weights)
                        .map(|(b, w)| (s.members.get(&b.id).map(String::as_str), *w)),
                )
            });
            let route = Arc::new(Route {
                name,
                canonical: spec.domains[0].to_string(),
                alias_mode: spec.alias_mode,
                path_prefix: prefix,
                balancer: spec.balancer.clone(),
                backends,
                spec: spec.clone(),
                rr,
                ramping,
                versions,
            });
            for d in &spec.domains {
                hosts
                    .entry(d.to_string())
                    .or_default()
                    .routes
                    .push((i, false));
            }
            for d in &spec.aliases {
                hosts
                    .entry(d.to_string())
                    .or_default()
                    .routes
                    .push((i, true));
            }
            routes.push(route);
        }
        for entry in hosts.values_mut() {
            entry
                .routes
                .sort_by_key(|(i, _)| std::cmp::Reverse(routes[*i].path_prefix.as_str().len()));
        }
        Ok(RouteTable { routes, hosts })
    }

    /// Looks up a raw `Host` value and a request path.
    pub fn lookup(&self, raw_host: &str, path: &str) -> Lookup<'_> {
        let Some(host) = normalize_host(raw_host) else {
            return Lookup::NotFound;
        };
        self.lookup_normalized(&host, path)
    }

    /// Looks up an already normalised host.
    /// An exact domain is tried first, then a `*.` wildcard one label up.
    pub fn lookup_normalized(&self, host: &str, path: &str) -> Lookup<'_> {
        if let Some(found) = self.lookup_entry(host, path) {
            return found;
        }
        match super::sni::wildcard_key(host) {
            Some(w) if self.hosts.contains_key(&w) => {
                self.lookup_entry(&w, path).unwrap_or(Lookup::NotFound)
            }
            _ => Lookup::NotFound,
        }
    }

    fn lookup_entry(&self, host: &str, path: &str) -> Option<Lookup<'_>> {
        let entry = self.hosts.get(host)?;
        for (i, is_alias) in &entry.routes {
            let route = &self.routes[*i];
            if route.path_prefix.matches(path) {
                if *is_alias && route.alias_mode == AliasMode::Redirect {
                    return Some(Lookup::Redirect(&route.canonical));
                }
                return Some(Lookup::Route(route));
            }
        }
        None
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// Whether any route has a backend in slow start.
    pub fn ramping(&self) -> bool {
        self.routes.iter().any(|r| r.ramping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> Vec<RouteSpec> {
        serde_json::from_str(yaml).expect("test spec parses")
    }

    fn table() -> RouteTable {
        RouteTable::build(
            &spec(
                r#"[
            {"name":"web","domains":["example.com"],"aliases":["www.example.com"],
             "backends":[{"address":"127.0.0.1:1"}]},
            {"name":"api","domains":["example.com"],"path_prefix":"/api",
             "backends":[{"address":"127.0.0.1:2"}]},
            {"name":"api-v2","domains":["example.com"],"path_prefix":"/api/v2/",
             "backends":[{"address":"127.0.0.1:3"}]},
            {"name":"blog","domains":["blog.example.com"],"aliases":["b.example.com"],
             "alias_mode":"serve","backends":[{"address":"127.0.0.1:4"}]},
            {"name":"docs","domains":["docs.example.com"],"path_prefix":"/docs",
             "backends":[{"address":"127.0.0.1:5"}]}
        ]"#,
            ),
            None,
        )
        .expect("valid table")
    }

    #[test]
    fn lookup_table() {
        let t = table();
        #[derive(Debug, PartialEq)]
        enum Want {
            R(&'static str),
            Redirect(&'static str),
            NotFound,
        }
        let cases: &[(&str, &str, Want)] = &[
            ("example.com", "/", Want::R("web")),
            ("EXAMPLE.com:8080", "/x", Want::R("web")),
            ("example.com.", "/", Want::R("web")),
            ("example.com", "/api", Want::R("api")),
            ("example.com", "/api/users", Want::R("api")),
            ("example.com", "/apix", Want::R("web")),
            ("example.com", "/api/v2", Want::R("api-v2")),
            ("example.com", "/api/v2/x", Want::R("api-v2")),
            ("example.com", "/api/v3", Want::R("api")),
            (
                "www.example.com",
                "/anything",
                Want::Redirect("example.com"),
            ),
            ("blog.example.com", "/", Want::R("blog")),
            ("b.example.com", "/", Want::R("blog")),
            ("docs.example.com", "/docs/a", Want::R("docs")),
            ("docs.example.com", "/", Want::NotFound),
            ("other.com", "/", Want::NotFound),
            ("", "/", Want::NotFound),
        ];
        for (host, path, want) in cases {
            let got = match t.lookup(host, path) {
                Lookup::Route(r) => match r.name.as_str() {
                    "web" => Want::R("web"),
                    "api" => Want::R("api"),
                    "api-v2" => Want::R("api-v2"),
                    "blog" => Want::R("blog"),
                    "docs" => Want::R("docs"),
                    other => panic!("unexpected route {other}"),
                },
                Lookup::Redirect(to) => {
                    assert_eq!(to, "example.com");
                    Want::Redirect("example.com")
                }
                Lookup::NotFound => Want::NotFound,
            };
            assert_eq!(&got, want, "lookup({host:?}, {path:?})");
        }
    }

    #[test]
    fn wildcard_domains_serve_one_label_below() {
        let t = RouteTable::build(
            &spec(
                r#"[
            {"name":"wild","domains":["*.Apps.example.com"],"backends":[{"address":"127.0.0.1:1"}]},
            {"name":"one","domains":["one.apps.example.com"],"path_prefix":"/x",
             "backends":[{"address":"127.0.0.1:2"}]}
        ]"#,
            ),
            None,
        )
        .expect("valid table");
        let name = |host: &str, path: &str| match t.lookup(host, path) {
            Lookup::Route(r) => Some(r.name.clone()),
            _ => None,
        };
        assert_eq!(name("a.apps.example.com", "/").as_deref(), Some("wild"));
        assert_eq!(name("B.APPS.example.com:443", "/").as_deref(), Some("wild"));
        // Exact first; a path the exact domain does not serve falls to the wildcard.
        assert_eq!(name("one.apps.example.com", "/x").as_deref(), Some("one"));
        assert_eq!(name("one.apps.example.com", "/y").as_deref(), Some("wild"));
        assert_eq!(name("apps.example.com", "/"), None, "not the apex");
        assert_eq!(name("a.b.apps.example.com", "/"), None, "exactly one label");
        let unnamed = spec(r#"[{"domains":["*.b.example.com"],"backends":[]}]"#);
        assert_eq!(unnamed[0].name(), "wildcard.b.example.com");
        RouteTable::build(&unnamed, None).expect("a wildcard route without a name is valid");
        let bad: Result<Vec<RouteSpec>, _> =
            serde_json::from_str(r#"[{"domains":["a.*.example.com"],"backends":[]}]"#);
        assert!(bad.is_err());
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                r#"[{"domains":["a.com"],"backends":[]},{"name":"b","domains":["A.com."],"backends":[]}]"#,
                "routes[1].domains[0]",
                "duplicate domain",
            ),
            (
                r#"[{"domains":["a.com"],"aliases":["a.com"],"backends":[]}]"#,
                "routes[0].aliases[0]",
                "duplicate domain",
            ),
            (
                r#"[{"name":"x","domains":[],"backends":[]}]"#,
                "routes[0].domains",
                "at least one domain",
            ),
            (
                r#"[{"name":"x","domains":["a.com"]},{"name":"x","domains":["b.com"]}]"#,
                "routes[1].name",
                "already used",
            ),
            (
                r#"[{"domains":["a.com"],"backends":[{"address":"1.2.3.4:5","weight":5000}]}]"#,
                "routes[0].backends[0].weight",
                "out of range",
            ),
            (
                r#"[{"domains":["a.com"],"backends":[{"address":"1.2.3.4:5"},{"address":"1.2.3.4:5"}]}]"#,
                "routes[0].backends[1]",
                "appears twice",
            ),
            (
                r#"[{"domains":["a.com"],"retries":6}]"#,
                "routes[0].retries",
                "out of range (0-5)",
            ),
        ];
        for (json, field, msg) in cases {
            let err = validate_routes("routes", &spec(json)).expect_err(json);
            assert_eq!(err.field, *field, "{json}");
            assert!(err.message.contains(msg), "{json}: {}", err.message);
        }
        // Same domain under different prefixes is fine.
        validate_routes(
            "routes",
            &spec(r#"[{"domains":["a.com"]},{"name":"b","domains":["a.com"],"path_prefix":"/b"}]"#),
        )
        .expect("prefixes may share a domain");
    }

    #[test]
    fn parse_errors() {
        for (json, msg) in [
            (r#""1.2.3.4""#, "port is missing"),
            (r#""1.2.3.4:99999""#, "out of range"),
            (r#""1.2.3.4:0""#, "out of range"),
            (r#""1.2.3.4:http""#, "not a number"),
            (r#""bad host:80""#, "host name"),
        ] {
            let err = serde_json::from_str::<BackendAddr>(json).expect_err(json);
            assert!(err.to_string().contains(msg), "{json}: {err}");
        }
        let a: BackendAddr = serde_json::from_str(r#""[::1]:8080""#).unwrap();
        assert_eq!(a.to_string(), "[::1]:8080");
        let err = serde_json::from_str::<Domain>(r#""exa mple.com""#).unwrap_err();
        assert!(err.to_string().contains("invalid host name"), "{err}");
        assert!(serde_json::from_str::<PathPrefix>(r#""api""#).is_err());
    }

    #[test]
    fn pick_skips_ineligible_and_keeps_stats() {
        let specs = spec(
            r#"[{"name":"w","domains":["a.com"],"backends":[
            {"id":"a","address":"127.0.0.1:1","weight":2},
            {"id":"b","address":"127.0.0.1:2","state":"drain"},
            {"id":"c","address":"127.0.0.1:3","state":"maint"},
            {"id":"d","address":"127.0.0.1:4","weight":0}]}]"#,
        );
        let t = RouteTable::build(&specs, None).unwrap();
        let r = t.route("w").unwrap();
        for _ in 0..10 {
            assert_eq!(r.pick(None), Ok(0));
        }
        assert_eq!(r.pick(Some(0)), Err(PickError::AllDown));
        r.backends[0]
            .stats
            .requests
            .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        let t2 = RouteTable::build(&specs, Some(&t)).unwrap();
        assert_eq!(
            t2.route("w").unwrap().backends[0]
                .stats
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            7
        );
        let empty =
            RouteTable::build(&spec(r#"[{"name":"e","domains":["e.com"]}]"#), None).unwrap();
        assert_eq!(
            empty.route("e").unwrap().pick(None),
            Err(PickError::NoBackends)
        );
    }

    #[test]
    fn balancer_spellings() {
        let ok: &[(&str, BalancerKind)] = &[
            (r#""round_robin""#, BalancerKind::RoundRobin),
            (r#""least_connections""#, BalancerKind::LeastConnections),
            (
                r#""sticky_cookie""#,
                BalancerKind::StickyCookie {
                    cookie: "BERTH_SERVER".into(),
                    indirect: false,
                },
            ),
            (
                r#"{"kind":"sticky_cookie","cookie":"PIN"}"#,
                BalancerKind::StickyCookie {
                    cookie: "PIN".into(),
                    indirect: false,
                },
            ),
            (
                r#"{"kind":"sticky_cookie","cookie":"PIN","indirect":true}"#,
                BalancerKind::StickyCookie {
                    cookie: "PIN".into(),
                    indirect: true,
                },
            ),
            (r#""source_ip""#, BalancerKind::SourceIp),
            (
                r#""uri_hash""#,
                BalancerKind::UriHash { key: HashKey::Path },
            ),
            (
                r#"{"kind":"uri_hash","key":"uri"}"#,
                BalancerKind::UriHash { key: HashKey::Uri },
            ),
            (r#"{"kind":"round_robin"}"#, BalancerKind::RoundRobin),
        ];
        for (json, want) in ok {
            let got: BalancerKind = serde_json::from_str(json).expect(json);
            assert_eq!(&got, want, "{json}");
            // Round trip.
            let again: BalancerKind =
                serde_json::from_str(&serde_json::to_string(&got).unwrap()).unwrap();
            assert_eq!(&again, want);
        }
        assert_eq!(
            serde_json::to_string(&BalancerKind::RoundRobin).unwrap(),
            r#""round_robin""#
        );
        for (json, msg) in [
            (r#""random""#, "unknown balancer"),
            (
                r#"{"kind":"sticky_cookie","cookie":"a b"}"#,
                "invalid cookie name",
            ),
            (
                r#"{"kind":"round_robin","cookie":"X"}"#,
                "only applies to sticky_cookie",
            ),
            (
                r#"{"kind":"uri_hash","indirect":true}"#,
                "`indirect` only applies to sticky_cookie",
            ),
            (
                r#"{"kind":"sticky_cookie","key":"path"}"#,
                "only applies to uri_hash",
            ),
            (r#"{"cookie":"X"}"#, "missing field `kind`"),
            (r#"{"kind":"uri_hash","key":"host"}"#, "unknown variant"),
            (r#"{"kind":"uri_hash","salt":"x"}"#, "unknown field"),
        ] {
            let err = serde_json::from_str::<BalancerKind>(json).expect_err(json);
            assert!(err.to_string().contains(msg), "{json}: {err}");
        }
    }

    #[test]
    fn health_check_spec_defaults_and_validation() {
        let r = spec(
            r#"[{"domains":["a.com"],"health_check":{},"slowstart":"10s","on_down":"shutdown_sessions"}]"#,
        );
        let h = r[0].health_check.as_ref().unwrap();
        assert_eq!(h, &HealthCheckSpec::default());
        assert_eq!((h.path.as_str(), h.fall, h.rise), ("/", 3, 2));
        assert_eq!(h.interval, Duration::from_secs(15));
        assert_eq!(h.timeout, Duration::from_secs(5));
        assert!(h.accepts(200) && h.accepts(302) && !h.accepts(404) && !h.accepts(500));
        assert_eq!(r[0].slowstart, Some(Duration::from_secs(10)));
        assert_eq!(r[0].on_down, OnDown::ShutdownSessions);
        let h: HealthCheckSpec = serde_json::from_str(r#"{"expect":["204","4xx"]}"#).unwrap();
        assert!(h.accepts(204) && h.accepts(404) && !h.accepts(200));
        for (json, field) in [
            (r#"{"path":"health"}"#, "routes[0].health_check.path"),
            (r#"{"interval":"1ms"}"#, "routes[0].health_check.interval"),
            (r#"{"fall":0}"#, "routes[0].health_check.fall"),
            (r#"{"rise":1000}"#, "routes[0].health_check.rise"),
            (r#"{"expect":[]}"#, "routes[0].health_check.expect"),
        ] {
            let r = spec(&format!(
                r#"[{{"domains":["a.com"],"health_check":{json}}}]"#
            ));
            assert_eq!(
                validate_routes("routes", &r).unwrap_err().field,
                field,
                "{json}"
            );
        }
        for bad in [
            r#"{"expect":["6xx"]}"#,
            r#"{"expect":["abc"]}"#,
            r#"{"bogus":1}"#,
        ] {
            assert!(
                serde_json::from_str::<HealthCheckSpec>(bad).is_err(),
                "{bad}"
            );
        }
    }

    fn sticky_table() -> RouteTable {
        RouteTable::build(
            &spec(
                r#"[{"name":"s","domains":["a.com"],"balancer":{"kind":"sticky_cookie","cookie":"PIN"},
                "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"},
                {"id":"c","address":"127.0.0.1:3"}]}]"#,
            ),
            None,
        )
        .unwrap()
    }

    #[test]
    fn sticky_cookie_pins_and_repins() {
        let t = sticky_table();
        let r = t.route("s").unwrap();
        let ctx = |c: &'static str| PickContext {
            cookie: Some(c),
            path: "/",
            path_and_query: "/",
            client: None,
        };
        // No cookie: balanced, and a cookie to set.
        let first = r.pick_for(&PickContext::default(), None).unwrap();
        let set = first.set_cookie.clone().unwrap();
        let tok = &r.backends[first.index].token;
        assert_eq!(set, format!("PIN={tok}; Path=/; HttpOnly; SameSite=Lax"));
        // With the cookie: always that backend, nothing to set.
        let cookie: &'static str = Box::leak(format!("x=1; PIN={tok}").into_boxed_str());
        for _ in 0..10 {
            assert_eq!(
                r.pick_for(&ctx(cookie), None).unwrap(),
                Pick {
                    index: first.index,
                    set_cookie: None,
                    version_cookie: None,
                }
            );
        }
        // Unknown token: re-balanced and rewritten.
        let p = r.pick_for(&ctx("PIN=0000"), None).unwrap();
        assert!(p.set_cookie.is_some());

        // Pinned backend b: drain still accepts pins, maint and down do not.
        let tok_b: &'static str =
            Box::leak(format!("PIN={}", r.backends[1].token).into_boxed_str());
        let base = r#"[{"name":"s","domains":["a.com"],"balancer":{"kind":"sticky_cookie","cookie":"PIN"},
                "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2","state":"STATE"},
                {"id":"c","address":"127.0.0.1:3"}]}]"#;
        let t2 = RouteTable::build(&spec(&base.replace("STATE", "drain")), Some(&t)).unwrap();
        let r2 = t2.route("s").unwrap();
        assert_eq!(r2.pick_for(&ctx(tok_b), None).unwrap().index, 1);
        for _ in 0..10 {
            assert_ne!(r2.pick(None).unwrap(), 1, "drained: no unpinned traffic");
        }
        let t3 = RouteTable::build(&spec(&base.replace("STATE", "maint")), Some(&t)).unwrap();
        let p = t3.route("s").unwrap().pick_for(&ctx(tok_b), None).unwrap();
        assert_ne!(p.index, 1);
        assert!(p.set_cookie.unwrap().starts_with("PIN="));
        // Down.
        for _ in 0..3 {
            r.backends[1].health.record(false, 2, 3, 1);
        }
        let p = r.pick_for(&ctx(tok_b), None).unwrap();
        assert_ne!(p.index, 1);
        assert!(p.set_cookie.is_some());
        // Removed.
        let t4 = RouteTable::build(
            &spec(r#"[{"name":"s","domains":["a.com"],"balancer":"sticky_cookie","backends":[{"id":"a","address":"127.0.0.1:1"}]}]"#),
            Some(&t),
        )
        .unwrap();
        let p = t4
            .route("s")
            .unwrap()
            .pick_for(
                &PickContext {
                    cookie: Some("BERTH_SERVER=ffff"),
                    ..Default::default()
                },
                None,
            )
            .unwrap();
        assert_eq!(p.index, 0);
        assert!(p.set_cookie.unwrap().starts_with("BERTH_SERVER="));
    }

    #[test]
    fn health_survives_rebuilds_and_slowstart_ramps() {
        let json = r#"[{"name":"w","domains":["a.com"],"slowstart":"10s","health_check":{},
            "backends":[{"id":"a","address":"127.0.0.1:1","weight":100},{"id":"b","address":"127.0.0.1:2","weight":100}]}]"#;
        let t0 = RouteTable::build_at(&spec(json), None, 1_000_000).unwrap();
        let r = t0.route("w").unwrap();
        assert_eq!(
            r.backends[0].effective_weight, 100,
            "boot: full weight at once"
        );
        assert!(!t0.ramping());
        for _ in 0..3 {
            r.backends[1].health.record(false, 2, 3, 1_000_000);
        }
        // Another writer rebuilds from specs: b stays down.
        let t1 = RouteTable::build_at(&spec(json), Some(&t0), 1_001_000).unwrap();
        let b = &t1.route("w").unwrap().backends[1];
        assert!(!b.health.is_up() && !b.eligible());
        for _ in 0..10 {
            assert_eq!(t1.route("w").unwrap().pick(None), Ok(0));
        }
        // It recovers at t=1_002_000 and ramps over 10 s.
        b.health.record(true, 2, 3, 1_002_000);
        b.health.record(true, 2, 3, 1_002_000);
        let mut last = 0;
        for (at, want) in [
            (1_002_000, 1),
            (1_004_500, 25),
            (1_007_000, 50),
            (1_012_000, 100),
        ] {
            let t = RouteTable::build_at(&spec(json), Some(&t1), at).unwrap();
            let w = t.route("w").unwrap().backends[1].effective_weight;
            assert_eq!(w, want, "at {at}");
            assert!(w >= last);
            last = w;
            assert_eq!(t.ramping(), want < 100);
        }
        // A backend added to a running table ramps too; an address change resets health.
        let json2 = json.replace("127.0.0.1:2", "127.0.0.1:9").replace(
            r#"]}]"#,
            r#",{"id":"c","address":"127.0.0.1:3","weight":100}]}]"#,
        );
        let t2 = RouteTable::build_at(&spec(&json2), Some(&t1), 2_000_000).unwrap();
        let r2 = t2.route("w").unwrap();
        assert_eq!(r2.backends[2].effective_weight, 1);
        assert!(r2.backends[1].health.is_up(), "new address, fresh health");
        assert!(t2.ramping());
    }

    #[test]
    fn least_connections_and_uri_hash_pick() {
        let t = RouteTable::build(
            &spec(
                r#"[{"name":"l","domains":["l.com"],"balancer":"least_connections",
                "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"}]},
                {"name":"h","domains":["h.com"],"balancer":{"kind":"uri_hash","key":"uri"},
                "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"},
                {"id":"c","address":"127.0.0.1:3","state":"drain"}]}]"#,
            ),
            None,
        )
        .unwrap();
        let l = t.route("l").unwrap();
        l.backends[0]
            .stats
            .inflight
            .store(5, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..5 {
            assert_eq!(l.pick(None), Ok(1));
        }
        assert_eq!(l.pick(Some(1)), Ok(0), "retry excludes the failed one");
        let h = t.route("h").unwrap();
        let mut seen = HashSet::new();
        for k in 0..200 {
            let pq = format!("/p?x={k}");
            let ctx = PickContext {
                cookie: None,
                path: "/p",
                path_and_query: &pq,
                client: None,
            };
            let i = h.pick_for(&ctx, None).unwrap().index;
            assert_eq!(h.pick_for(&ctx, None).unwrap().index, i, "stable");
            assert_ne!(i, 2, "drained backend gets no hashed traffic");
            seen.insert(i);
        }
        assert_eq!(seen.len(), 2, "whole-URI keys spread over both");
    }

    #[test]
    fn source_ip_pins_clients_and_skips_down_backends() {
        let t = RouteTable::build(
            &spec(
                r#"[{"name":"s","domains":["s.com"],"balancer":"source_ip",
                "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"},
                {"id":"c","address":"127.0.0.1:3"}]}]"#,
            ),
            None,
        )
        .unwrap();
        let r = t.route("s").unwrap();
        let at = |ip: std::net::IpAddr| {
            r.pick_for(
                &PickContext {
                    client: Some(ip),
                    ..Default::default()
                },
                None,
            )
            .unwrap()
            .index
        };
        let mut owners = Vec::new();
        for k in 0..300u32 {
            let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + k));
            let i = at(ip);
            assert_eq!(at(ip), i, "a client stays on its backend");
            owners.push((ip, i));
        }
        let used: HashSet<usize> = owners.iter().map(|o| o.1).collect();
        assert_eq!(used.len(), 3, "clients spread over all backends");
        // b goes down: only b's clients move.
        for _ in 0..3 {
            r.backends[1].health.record(false, 2, 3, 1);
        }
        assert!(!r.backends[1].health.is_up());
        for (ip, i) in &owners {
            let now = at(*ip);
            if *i == 1 {
                assert_ne!(now, 1);
            } else {
                assert_eq!(now, *i, "{ip} moved although its backend is up");
            }
        }
    }

    #[test]
    fn retries_and_check_method_round_trip() {
        let r = &spec(
            r#"[{"domains":["a.com"],"retries":3,"health_check":{"path":"/up","method":"HEAD"}}]"#,
        )[0];
        assert_eq!(r.retries, 3);
        assert_eq!(r.health_check.as_ref().unwrap().method, CheckMethod::Head);
        let d = &spec(r#"[{"domains":["a.com"],"health_check":{}}]"#)[0];
        assert_eq!(d.retries, DEFAULT_RETRIES);
        assert_eq!(d.health_check.as_ref().unwrap().method, CheckMethod::Get);
        let json = serde_json::to_string(d).unwrap();
        assert!(
            !json.contains("retries") && !json.contains("method"),
            "{json}"
        );
        assert!(serde_json::from_str::<RouteSpec>(
            r#"{"domains":["a.com"],"health_check":{"method":"POST"}}"#
        )
        .is_err());
    }
}
