//! Route specifications (what an operator asks for) and the immutable `RouteTable` snapshot the
//! proxy reads once per request. Building a table validates the whole set of routes; a table
//! that exists is consistent (no domain+prefix claimed twice, every backend address parsed).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::balance::RoundRobin;
use super::host::{normalize_host, parse_domain, DomainError};
use super::stats::BackendStats;

/// A validated, normalised domain name (never a wildcard; wildcards are for certificates).
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
        parse_domain(&s, false)
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

/// How a route spreads requests over its backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Weighted round robin.
    #[default]
    RoundRobin,
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
    #[serde(default)]
    pub balancer: BalancerKind,
    #[serde(default)]
    pub backends: Vec<BackendSpec>,
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
}

fn default_true() -> bool {
    true
}

impl RouteSpec {
    pub fn name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let base = self
            .domains
            .first()
            .map(|d| d.to_string())
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
    pub weight: u32,
    pub state: ServerState,
    /// Counters shared by every snapshot that contains this backend.
    pub stats: Arc<BackendStats>,
}

impl Backend {
    /// Whether new, unpinned requests may go here.
    pub fn eligible(&self) -> bool {
        self.state == ServerState::Ready && self.weight > 0
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
}

/// Why a route could not pick a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// The route has no backends at all.
    NoBackends,
    /// Backends exist but none is eligible (down, draining, maint, weight 0).
    AllDown,
}

impl Route {
    /// Chooses a backend for a new request, skipping any in `exclude` (used for retries).
    pub fn pick(&self, exclude: Option<usize>) -> Result<usize, PickError> {
        if self.backends.is_empty() {
            return Err(PickError::NoBackends);
        }
        match self.balancer {
            BalancerKind::RoundRobin => self
                .rr
                .pick(|i| Some(i) != exclude && self.backends[i].eligible()),
        }
        .ok_or(PickError::AllDown)
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
    pub fn build(
        specs: &[RouteSpec],
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, RouteError> {
        validate_routes("routes", specs)?;
        let mut routes = Vec::with_capacity(specs.len());
        let mut hosts: HashMap<String, HostEntry> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let name = spec.name();
            let prev = previous.and_then(|p| p.route(&name));
            let mut backends = Vec::with_capacity(spec.backends.len());
            for (k, b) in spec.backends.iter().enumerate() {
                let id = b.id();
                let authority: http::uri::Authority =
                    b.address.to_string().parse().map_err(|_| {
                        RouteError::new(
                            format!("routes[{i}].backends[{k}].address"),
                            format!("{} is not a valid URI authority", b.address),
                        )
                    })?;
                let stats = prev
                    .and_then(|p| p.backends.iter().find(|x| x.id == id))
                    .map(|x| x.stats.clone())
                    .unwrap_or_default();
                backends.push(Backend {
                    id,
                    address: b.address.clone(),
                    authority,
                    weight: b.weight,
                    state: b.state,
                    stats,
                });
            }
            let weights: Vec<u32> = backends
                .iter()
                .map(|b| if b.eligible() { b.weight } else { 0 })
                .collect();
            let rr = RoundRobin::with_start(&weights, prev.map(|p| p.rr.position()).unwrap_or(0));
            let prefix = spec.path_prefix.clone().unwrap_or_else(PathPrefix::root);
            let route = Arc::new(Route {
                name,
                canonical: spec.domains[0].to_string(),
                alias_mode: spec.alias_mode,
                path_prefix: prefix,
                balancer: spec.balancer,
                backends,
                spec: spec.clone(),
                rr,
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
    pub fn lookup_normalized(&self, host: &str, path: &str) -> Lookup<'_> {
        let Some(entry) = self.hosts.get(host) else {
            return Lookup::NotFound;
        };
        for (i, is_alias) in &entry.routes {
            let route = &self.routes[*i];
            if route.path_prefix.matches(path) {
                if *is_alias && route.alias_mode == AliasMode::Redirect {
                    return Lookup::Redirect(&route.canonical);
                }
                return Lookup::Route(route);
            }
        }
        Lookup::NotFound
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name == name)
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
}
