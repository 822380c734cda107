//! Checks a set of route specs as a whole. A problem is found as a [`RouteFault`] (route
//! index, backend index, field) and reported as a [`RouteError`] naming the absolute field
//! (`routes[1].domains[0]`); callers that know what the routes are (the route registry) read
//! the fault's position instead of parsing the string. [`HostClaims`] is the one check that
//! no (host, path prefix) is served twice, for `validate_routes` and the registry alike.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use thiserror::Error;

use super::spec::{RouteSpec, MAX_RETRIES};
use super::types::PathPrefix;

/// A problem with a set of routes, naming the field it is about (`routes[1].domains[0]`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct RouteError {
    pub field: String,
    pub message: String,
}

impl RouteError {
    pub(super) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A problem with route `index` of a list: in backend `backend` of it when set, at `field`
/// relative to that backend (or to the route; empty = the backend itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteFault {
    pub index: usize,
    pub backend: Option<usize>,
    pub field: String,
    pub message: String,
}

impl RouteFault {
    fn route(index: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        RouteFault {
            index,
            backend: None,
            field: field.into(),
            message: message.into(),
        }
    }

    pub(super) fn backend(
        index: usize,
        backend: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        RouteFault {
            index,
            backend: Some(backend),
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field relative to the route spec (`backends[0].weight`, `domains[1]`).
    pub fn in_route(&self) -> String {
        match (self.backend, self.field.as_str()) {
            (None, f) => f.to_string(),
            (Some(k), "") => format!("backends[{k}]"),
            (Some(k), f) => format!("backends[{k}].{f}"),
        }
    }

    /// The error naming the absolute field, for a list called `prefix` (`routes`).
    pub fn into_error(self, prefix: &str) -> RouteError {
        let at = format!("{prefix}[{}]", self.index);
        let field = match self.in_route() {
            f if f.is_empty() => at,
            f => format!("{at}.{f}"),
        };
        RouteError::new(field, self.message)
    }
}

/// Which host of a route: `domains[k]` or `aliases[k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostField {
    Domain(usize),
    Alias(usize),
}

impl fmt::Display for HostField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostField::Domain(k) => write!(f, "domains[{k}]"),
            HostField::Alias(k) => write!(f, "aliases[{k}]"),
        }
    }
}

/// A (host, path prefix) that route `index` claims at `field`, already claimed by route
/// `owner` (which may be the same route) at `owner_field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub index: usize,
    pub field: HostField,
    pub owner: usize,
    pub owner_field: HostField,
    pub host: String,
    /// `/` when the route has no path prefix.
    pub prefix: String,
}

impl Claimed {
    /// ` with path prefix "/api"`, or nothing for the root prefix.
    pub fn on(&self) -> String {
        if self.prefix == "/" {
            String::new()
        } else {
            format!(" with path prefix {:?}", self.prefix)
        }
    }
}

/// The hosts (with path prefix) claimed so far by a list of routes.
#[derive(Debug, Default)]
pub struct HostClaims(HashMap<(String, String), (usize, HostField)>);

impl HostClaims {
    /// Claims every domain and alias of route `index`, in order; the first one already
    /// claimed (by an earlier route, or earlier in this one) is returned.
    pub fn claim(&mut self, index: usize, spec: &RouteSpec) -> Result<(), Claimed> {
        let prefix = spec
            .path_prefix
            .clone()
            .unwrap_or_else(PathPrefix::root)
            .as_str()
            .to_string();
        let hosts = spec
            .domains
            .iter()
            .enumerate()
            .map(|(k, d)| (HostField::Domain(k), d))
            .chain(
                spec.aliases
                    .iter()
                    .enumerate()
                    .map(|(k, d)| (HostField::Alias(k), d)),
            );
        for (field, d) in hosts {
            let key = (d.to_string(), prefix.clone());
            if let Some(&(owner, owner_field)) = self.0.get(&key) {
                return Err(Claimed {
                    index,
                    field,
                    owner,
                    owner_field,
                    host: d.to_string(),
                    prefix,
                });
            }
            self.0.insert(key, (index, field));
        }
        Ok(())
    }
}

/// Largest accepted backend weight.
pub const MAX_WEIGHT: u32 = 1000;

/// Checks a whole set of routes for consistency. `prefix` names the list (e.g. `routes`).
pub fn validate_routes(prefix: &str, routes: &[RouteSpec]) -> Result<(), RouteError> {
    check_routes(prefix, routes).map_err(|f| f.into_error(prefix))
}

/// [`validate_routes`], with the fault's position. `prefix` names the list in messages that
/// point at another route (`already used by routes[0].domains[0]`).
pub fn check_routes(prefix: &str, routes: &[RouteSpec]) -> Result<(), RouteFault> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut claims = HostClaims::default();
    for (i, r) in routes.iter().enumerate() {
        let name = r.name();
        if name.is_empty() {
            return Err(RouteFault::route(
                i,
                "domains",
                "a route needs at least one domain",
            ));
        }
        if r.domains.is_empty() {
            return Err(RouteFault::route(
                i,
                "domains",
                "a route needs at least one domain",
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        {
            return Err(RouteFault::route(
                i,
                "name",
                format!("{name:?} may only contain letters, digits, '-', '_', '.' and '/'"),
            ));
        }
        claims.claim(i, r).map_err(|c| {
            let on = c.on();
            RouteFault::route(
                i,
                c.field.to_string(),
                format!(
                    "duplicate domain \"{}\"{on}: already used by {prefix}[{}].{}",
                    c.host, c.owner, c.owner_field
                ),
            )
        })?;
        if let Some(j) = names.insert(name.clone(), i) {
            return Err(RouteFault::route(
                i,
                "name",
                format!("route name {name:?} is already used by {prefix}[{j}]"),
            ));
        }
        if let Some(h) = &r.health_check {
            let f = |n: &str| format!("health_check.{n}");
            if !h.path.starts_with('/')
                || h.path
                    .contains(|c: char| c.is_whitespace() || c.is_control())
            {
                return Err(RouteFault::route(
                    i,
                    f("path"),
                    format!("{:?} must start with '/' and contain no spaces", h.path),
                ));
            }
            if h.interval < Duration::from_millis(10) || h.interval > Duration::from_secs(3600) {
                return Err(RouteFault::route(
                    i,
                    f("interval"),
                    "must be between 10ms and 1h",
                ));
            }
            if h.timeout.is_zero() || h.timeout > Duration::from_secs(300) {
                return Err(RouteFault::route(
                    i,
                    f("timeout"),
                    "must be greater than zero and at most 5m",
                ));
            }
            for (n, v) in [("fall", h.fall), ("rise", h.rise)] {
                if !(1..=100).contains(&v) {
                    return Err(RouteFault::route(
                        i,
                        f(n),
                        format!("{v} is out of range (1-100)"),
                    ));
                }
            }
            if h.expect.is_empty() {
                return Err(RouteFault::route(
                    i,
                    f("expect"),
                    "needs at least one status",
                ));
            }
        }
        if r.retries > MAX_RETRIES {
            return Err(RouteFault::route(
                i,
                "retries",
                format!("{} is out of range (0-{MAX_RETRIES})", r.retries),
            ));
        }
        if r.slowstart.is_some_and(|d| d > Duration::from_secs(3600)) {
            return Err(RouteFault::route(i, "slowstart", "must be at most 1h"));
        }
        let mut ids = HashSet::new();
        for (k, b) in r.backends.iter().enumerate() {
            if b.weight > MAX_WEIGHT {
                return Err(RouteFault::backend(
                    i,
                    k,
                    "weight",
                    format!("{} is out of range (0-{MAX_WEIGHT})", b.weight),
                ));
            }
            let id = b.id();
            if id.is_empty() {
                return Err(RouteFault::backend(i, k, "id", "must not be empty"));
            }
            if !ids.insert(id.clone()) {
                return Err(RouteFault::backend(
                    i,
                    k,
                    "",
                    format!("backend id {id:?} appears twice in this route"),
                ));
            }
        }
    }
    Ok(())
}
