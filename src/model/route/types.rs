//! The value types of a route: domains, backend addresses, path prefixes, alias modes and
//! backend states, each parsed (never half-valid) from its string form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::host::{parse_domain, DomainError};

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
