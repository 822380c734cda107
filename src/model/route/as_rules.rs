//! Routes as frontend rules: berthd's default listeners are the HTTP frontends `http` and
//! `https`, and their ordered rules are the routes, one host + path-prefix rule per domain and
//! alias (→ the route's backends, its pool; a redirect alias → 301 to the canonical domain).
//! A request no rule matches gets 404: the default frontends have no default pool.
//!
//! The proxy evaluates these rules through their compiled form, the table's host index
//! (`RouteTable::lookup_normalized`): an index is an implementation of first-match host
//! rules (exact hosts are disjoint, so only the order within one host matters, and that is
//! longest prefix first). [`route_rules`] writes the same rules in the operator frontends'
//! rule language, which is what `GET /v1/frontends` shows; the unit tests evaluate both forms
//! side by side and require the same answer.

use super::spec::RouteSpec;
use super::types::{AliasMode, PathPrefix};
use crate::model::rules::{Redirect, RuleSpec, StrMatch};

/// The name of the default frontend on berthd's HTTP listener (`http.listen`).
pub const HTTP_FRONTEND: &str = "http";
/// The name of the default frontend on berthd's HTTPS listener (`tls.listen`).
pub const HTTPS_FRONTEND: &str = "https";

/// Whether `name` is one of the default frontends (read-only: their rules are the routes).
pub fn is_default_frontend(name: &str) -> bool {
    name == HTTP_FRONTEND || name == HTTPS_FRONTEND
}

/// Escapes `s` for a regex (every character the regex syntax gives a meaning to).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The path condition of a route's prefix: a prefix ends at a segment boundary (`/api`
/// matches `/api` and `/api/x`, not `/apix`); `/` matches everything (no condition).
fn path_condition(prefix: &PathPrefix) -> Option<StrMatch> {
    let p = prefix.as_str();
    (p != "/").then(|| StrMatch::Regex(format!("^{}(/|$)", regex_escape(p))))
}

/// The host conditions of a route's domain: an exact host, or for `*.example.com` exactly one
/// label below (as a wildcard certificate covers), which the rule language's `*.` (one or more
/// labels) narrows with a URL condition on the host part.
fn host_condition(domain: &str) -> (String, Option<StrMatch>) {
    match domain.strip_prefix("*.") {
        Some(base) => (
            domain.to_string(),
            Some(StrMatch::Regex(format!(
                "^[a-z][a-z0-9+.-]*://[^./:]+\\.{}(:[0-9]+)?[/?]",
                regex_escape(base)
            ))),
        ),
        None => (domain.to_string(), None),
    }
}

/// The default frontends' rules, in evaluation order: exact hosts before `*.` wildcards,
/// longest path prefix first within each host (first match wins; no match → 404). Each
/// names its route as the pool (the default frontends' pools are the routes).
pub fn route_rules(routes: &[RouteSpec]) -> Vec<RuleSpec> {
    // (wildcard, prefix length, rule)
    let mut rules: Vec<(bool, usize, RuleSpec)> = Vec::new();
    for spec in routes {
        let name = spec.name();
        let prefix = spec.path_prefix.clone().unwrap_or_else(PathPrefix::root);
        let canonical = spec.domains.first().map(|d| d.to_string());
        let hosts = spec
            .domains
            .iter()
            .map(|d| (d, false))
            .chain(spec.aliases.iter().map(|d| (d, true)));
        for (domain, alias) in hosts {
            let domain = domain.to_string();
            let (host, url) = host_condition(&domain);
            let redirect = (alias && spec.alias_mode == AliasMode::Redirect)
                .then_some(canonical.as_ref())
                .flatten()
                .map(|to| Redirect {
                    status: 301,
                    location: format!("{{scheme}}://{to}{{uri}}"),
                });
            let rule = RuleSpec {
                path: path_condition(&prefix),
                url,
                pool: redirect.is_none().then(|| name.clone()),
                redirect,
                host: Some(host),
                ..RuleSpec::default()
            };
            rules.push((domain.starts_with("*."), prefix.as_str().len(), rule));
        }
    }
    // Stable: routes of one host and prefix keep their order (validation refuses such pairs).
    rules.sort_by_key(|(wild, len, _)| (*wild, std::cmp::Reverse(*len)));
    rules.into_iter().map(|(_, _, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::{Lookup, RouteTable};
    use crate::model::rules::{Action, RequestView, RuleTable};

    /// What a request gets from the host index: a route's name, a redirect, or 404.
    fn by_index(t: &RouteTable, host: &str, path: &str, query: Option<&str>) -> String {
        match t.lookup_normalized(host, path) {
            Lookup::Route(r) => r.name.clone(),
            Lookup::Redirect(to) => match query {
                Some(q) => format!("301 http://{to}{path}?{q}"),
                None => format!("301 http://{to}{path}"),
            },
            Lookup::NotFound => "404".into(),
        }
    }

    /// The same from the rules, evaluated by the operator frontends' rule engine.
    fn by_rules(t: &RuleTable, host: &str, path: &str, query: Option<&str>) -> String {
        let view = RequestView {
            scheme: "http",
            host,
            path,
            query,
            method: "GET",
            client: "127.0.0.1".parse().unwrap(),
            headers: &[],
        };
        match t.evaluate(&view) {
            Action::Forward { rule: None, .. } => "404".into(),
            Action::Forward { pool, .. } => pool.to_string(),
            Action::Redirect {
                status, location, ..
            } => format!("{status} {location}"),
        }
    }

    const ROUTES: &str = "
- name: site
  domains: [example.com, www.example.com]
  aliases: [example.net]
- name: api
  domains: [example.com]
  path_prefix: /api
- name: api-v2
  domains: [example.com]
  path_prefix: /api/v2
- name: wild
  domains: ['*.example.com']
- name: wild-admin
  domains: ['*.example.com']
  path_prefix: /admin
- name: served
  domains: [shop.test]
  aliases: [shop.example.org]
  alias_mode: serve
- name: dots
  domains: [a.test]
  path_prefix: /v1.0
- name: only-v1
  domains: [v1.example.com]
  path_prefix: /v1
";

    #[test]
    fn routes_read_as_rules_decide_like_the_host_index() {
        let specs: Vec<RouteSpec> = serde_yaml::from_str(ROUTES).unwrap();
        let index = RouteTable::build(&specs, None).unwrap();
        let rules = route_rules(&specs);
        // One rule per domain and alias.
        assert_eq!(rules.len(), 11);
        let names: Vec<String> = specs.iter().map(|s| s.name()).collect();
        let table = RuleTable::build("", &rules, "-", |p| {
            p == "-" || names.iter().any(|n| n == p)
        })
        .unwrap();
        let cases = [
            ("example.com", "/", None, "site"),
            ("example.com", "/about", None, "site"),
            ("example.com", "/api", None, "api"),
            ("example.com", "/api/x", Some("a=1"), "api"),
            ("example.com", "/apix", None, "site"),
            ("example.com", "/api/v2", None, "api-v2"),
            ("example.com", "/api/v2/users", None, "api-v2"),
            ("example.com", "/api/v20", None, "api"),
            ("www.example.com", "/api", None, "site"),
            (
                "example.net",
                "/a",
                Some("b=c"),
                "301 http://example.com/a?b=c",
            ),
            ("example.net", "/", None, "301 http://example.com/"),
            ("shop.example.org", "/", None, "served"),
            ("shop.test", "/cart", None, "served"),
            ("x.example.com", "/", None, "wild"),
            ("x.example.com", "/admin/users", None, "wild-admin"),
            ("x.example.com", "/administer", None, "wild"),
            ("x.example.com:8080", "/admin", None, "wild-admin"),
            // An exact domain wins over the wildcard ...
            ("www.example.com", "/admin", None, "site"),
            ("v1.example.com", "/v1/x", None, "only-v1"),
            // ... and a path none of its routes takes falls through to the wildcard.
            ("v1.example.com", "/other", None, "wild"),
            // A wildcard is one label deep.
            ("a.b.example.com", "/", None, "404"),
            ("example.org", "/", None, "404"),
            ("a.test", "/v1.0/x", None, "dots"),
            ("a.test", "/v1x0/x", None, "404"),
            ("a.test", "/", None, "404"),
        ];
        for (host, path, query, want) in cases {
            let bare = host.split(':').next().unwrap();
            assert_eq!(
                by_index(&index, bare, path, query),
                want,
                "index: {host}{path}"
            );
            assert_eq!(
                by_rules(&table, host, path, query),
                want,
                "rules: {host}{path}"
            );
        }
    }

    #[test]
    fn the_rule_list_is_ordered_exact_hosts_first_then_longest_prefix() {
        let specs: Vec<RouteSpec> = serde_yaml::from_str(ROUTES).unwrap();
        let rules = route_rules(&specs);
        let shown: Vec<(String, Option<String>)> = rules
            .iter()
            .map(|r| {
                (
                    r.host.clone().unwrap_or_default(),
                    r.pool
                        .clone()
                        .or_else(|| r.redirect.as_ref().map(|d| d.location.clone())),
                )
            })
            .collect();
        // Within one host, the longest prefix first (across hosts the order cannot matter).
        let example: Vec<&str> = shown
            .iter()
            .filter(|(h, _)| h == "example.com")
            .filter_map(|(_, p)| p.as_deref())
            .collect();
        assert_eq!(example, ["api-v2", "api", "site"]);
        assert!(shown[..9].iter().all(|(h, _)| !h.starts_with("*.")));
        assert_eq!(
            shown[9],
            ("*.example.com".into(), Some("wild-admin".into()))
        );
        assert_eq!(shown[10], ("*.example.com".into(), Some("wild".into())));
        let alias = rules
            .iter()
            .find(|r| r.host.as_deref() == Some("example.net"))
            .unwrap();
        assert_eq!(
            alias.redirect,
            Some(Redirect {
                status: 301,
                location: "{scheme}://example.com{uri}".into()
            })
        );
        assert_eq!(alias.pool, None);
        assert!(is_default_frontend("http") && is_default_frontend("https"));
        assert!(!is_default_frontend("api"));
    }
}
