//! Checks a set of route specs as a whole; errors name the field (`routes[1].domains[0]`).

use std::collections::{HashMap, HashSet};
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
