//! What an operator writes: `RouteSpec`, `BackendSpec`, the balancer and health-check specs,
//! their serde forms and defaults.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::types::{AliasMode, BackendAddr, Domain, HashKey, PathPrefix, ServerState};

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
    crate::model::health::DEFAULT_FALL
}
fn default_rise() -> u32 {
    crate::model::health::DEFAULT_RISE
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
    pub gate: Option<crate::model::traffic::AppGate>,
    /// Split of a deployed app's traffic between its versions (canary, A/B; see
    /// `model::canary`). Set by the deploy engine, never part of a route document.
    #[serde(skip)]
    pub split: Option<crate::model::canary::RouteSplit>,
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
