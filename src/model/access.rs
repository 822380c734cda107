//! Who may use the API, as pure decisions: the `Host` names the API listener answers (DNS
//! rebinding defence), token scopes (`read`, `deploy:APP` with `*` globs, `admin`), and the
//! one table saying what each route needs. The API's middleware applies these; the tests walk
//! the OpenAPI document against [`ROUTE_RULES`] so that no route is left without a rule.
//!
//! Invariants: a (method, route) missing from the table needs `admin` (fail closed); `HEAD`
//! is judged like `GET`; a scope list is never empty.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::host::normalize_host;

/// One permission of an API token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every `GET` (and `HEAD`): routes, stats, metrics, apps, deployments, logs, certificates.
    Read,
    /// Deploy, roll back, stop, delete, read status, history and logs of the apps whose name
    /// matches the pattern (`web`, `web-*`, `*`).
    Deploy(String),
    /// Everything.
    Admin,
}

/// A scope string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scope {scope:?}: {message}")]
pub struct ScopeError {
    pub scope: String,
    pub message: String,
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;
    fn from_str(raw: &str) -> Result<Self, ScopeError> {
        let s = raw.trim();
        let bad = |message: &str| ScopeError {
            scope: raw.to_string(),
            message: message.to_string(),
        };
        match s {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            _ => {
                let Some(pattern) = s.strip_prefix("deploy:") else {
                    return Err(bad("must be read, admin or deploy:APP (APP may use '*')"));
                };
                let ok = !pattern.is_empty()
                    && pattern.len() <= 63
                    && pattern.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '*'
                    });
                if ok {
                    Ok(Scope::Deploy(pattern.to_string()))
                } else {
                    Err(bad(
                        "the app pattern after deploy: is 1-63 characters of a-z, 0-9, '-' and '*'",
                    ))
                }
            }
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Read => f.write_str("read"),
            Scope::Admin => f.write_str("admin"),
            Scope::Deploy(p) => write!(f, "deploy:{p}"),
        }
    }
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters (also none).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0, 0);
    // Position of the last `*` seen and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The scopes of one token: never empty. Stored and shown comma-separated (`read,deploy:web`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Full access (every token made before scopes existed).
    pub fn admin() -> Self {
        Scopes(vec![Scope::Admin])
    }

    /// Parses a list of scopes; each item may itself be comma-separated. Duplicates are
    /// dropped; an empty list is an error.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ScopeError> {
        let mut out: Vec<Scope> = Vec::new();
        for item in items {
            for part in item.as_ref().split(',') {
                if part.trim().is_empty() {
                    continue;
                }
                let s: Scope = part.parse()?;
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        if out.is_empty() {
            return Err(ScopeError {
                scope: String::new(),
                message: "a token needs at least one scope (read, deploy:APP or admin)".into(),
            });
        }
        Ok(Scopes(out))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    fn has(&self, s: &Scope) -> bool {
        self.0.contains(s)
    }

    fn deploys(&self, app: &str) -> bool {
        self.0
            .iter()
            .any(|s| matches!(s, Scope::Deploy(p) if glob_match(p, app)))
    }

    /// Whether any `deploy:` scope is held (such a token may look up its own deployments).
    pub fn has_deploy(&self) -> bool {
        self.0.iter().any(|s| matches!(s, Scope::Deploy(_)))
    }

    /// `Ok` when these scopes allow `need`; otherwise the scope that is missing.
    pub fn allow(&self, need: &Need) -> Result<(), String> {
        if self.has(&Scope::Admin) {
            return Ok(());
        }
        let ok = match need {
            Need::Public => true,
            Need::Read => self.has(&Scope::Read),
            Need::AppRead(app) => self.has(&Scope::Read) || self.deploys(app),
            Need::AppWrite(app) => self.deploys(app),
            Need::Admin => false,
        };
        if ok {
            Ok(())
        } else {
            Err(need.scope_name())
        }
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|s| s.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|x| x.to_string()))
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        Scopes::parse(&v).map_err(serde::de::Error::custom)
    }
}

/// What one request needs, once the route's rule is applied to its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    Public,
    Read,
    /// Reading one app's data: `read`, or `deploy:` matching the app.
    AppRead(String),
    /// Changing one app: `deploy:` matching the app.
    AppWrite(String),
    Admin,
}

impl Need {
    /// The scope named in a 403 (the narrowest one that would do).
    pub fn scope_name(&self) -> String {
        match self {
            Need::Public => String::new(),
            Need::Read => "read".into(),
            Need::AppRead(app) | Need::AppWrite(app) => format!("deploy:{app}"),
            Need::Admin => "admin".into(),
        }
    }
}

/// The rule of one route, before the path's parameters are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// No token needed.
    Public,
    /// Any valid token, whatever its scopes (`GET /v1/token`: who am I).
    Authenticated,
    /// `read`.
    Read,
    /// `read`, or `deploy:` matching the `{app}` path parameter.
    AppRead,
    /// `deploy:` matching the `{app}` path parameter.
    AppWrite,
    /// `read`, or `deploy:` matching the app the `{id}` deployment belongs to.
    DeploymentRead,
    /// `admin`.
    Admin,
}

impl Rule {
    /// How the OpenAPI document states this rule (`x-berth-scope`).
    pub fn doc(self) -> &'static str {
        match self {
            Rule::Public => "none",
            Rule::Authenticated => "any",
            Rule::Read => "read",
            Rule::AppRead => "read or deploy:{app}",
            Rule::AppWrite => "deploy:{app}",
            Rule::DeploymentRead => "read or deploy:{app of the deployment}",
            Rule::Admin => "admin",
        }
    }
}

/// Every API route: (method, path template as the router and the OpenAPI document write it,
/// rule). `admin` always passes; a route not listed needs `admin`.
pub const ROUTE_RULES: &[(&str, &str, Rule)] = &[
    ("GET", "/healthz", Rule::Public),
    ("GET", "/v1/version", Rule::Public),
    ("GET", "/v1/openapi.json", Rule::Public),
    ("GET", "/v1/token", Rule::Authenticated),
    // Public unless `api.metrics_auth` is set; then it sits behind the token check.
    ("GET", "/metrics", Rule::Read),
    ("GET", "/v1/routes", Rule::Read),
    ("GET", "/v1/routes/{name}", Rule::Read),
    ("PUT", "/v1/routes/{name}", Rule::Admin),
    ("DELETE", "/v1/routes/{name}", Rule::Admin),
    ("GET", "/v1/routes/{name}/backends", Rule::Read),
    ("GET", "/v1/routes/{name}/backends/{id}", Rule::Read),
    ("PUT", "/v1/routes/{name}/backends/{id}", Rule::Admin),
    ("DELETE", "/v1/routes/{name}/backends/{id}", Rule::Admin),
    ("PUT", "/v1/routes/{name}/backends/{id}/state", Rule::Admin),
    ("GET", "/v1/frontends", Rule::Read),
    ("GET", "/v1/frontends/{name}", Rule::Read),
    ("PUT", "/v1/frontends/{name}", Rule::Admin),
    ("DELETE", "/v1/frontends/{name}", Rule::Admin),
    ("GET", "/v1/config", Rule::Read),
    ("GET", "/v1/pools", Rule::Read),
    ("GET", "/v1/pools/{name}", Rule::Read),
    ("PUT", "/v1/pools/{name}", Rule::Admin),
    ("DELETE", "/v1/pools/{name}", Rule::Admin),
    ("POST", "/v1/pools/{name}/version", Rule::Admin),
    ("GET", "/v1/stats", Rule::Read),
    ("GET", "/v1/stats/stream", Rule::Read),
    ("POST", "/v1/apps/{app}/deploy", Rule::AppWrite),
    ("GET", "/v1/apps", Rule::Read),
    ("GET", "/v1/apps/{app}", Rule::AppRead),
    // Deleting an app (review apps: a `deploy:pr-*` pipeline removes what it made).
    ("DELETE", "/v1/apps/{app}", Rule::AppWrite),
    ("GET", "/v1/apps/{app}/deployments", Rule::AppRead),
    ("POST", "/v1/apps/{app}/rollback", Rule::AppWrite),
    ("POST", "/v1/apps/{app}/stop", Rule::AppWrite),
    ("GET", "/v1/apps/{app}/logs", Rule::AppRead),
    ("GET", "/v1/apps/{app}/gate", Rule::AppRead),
    ("POST", "/v1/apps/{app}/pause", Rule::AppWrite),
    ("POST", "/v1/apps/{app}/resume", Rule::AppWrite),
    ("PUT", "/v1/apps/{app}/maintenance", Rule::AppWrite),
    ("DELETE", "/v1/apps/{app}/maintenance", Rule::AppWrite),
    ("POST", "/v1/apps/{app}/promote", Rule::AppWrite),
    ("POST", "/v1/apps/{app}/abort", Rule::AppWrite),
    ("GET", "/v1/apps/{app}/traffic", Rule::AppRead),
    ("PUT", "/v1/apps/{app}/traffic", Rule::AppWrite),
    (
        "DELETE",
        "/v1/apps/{app}/versions/{version}",
        Rule::AppWrite,
    ),
    ("GET", "/v1/deployments/{id}", Rule::DeploymentRead),
    ("GET", "/v1/deployments/{id}/events", Rule::DeploymentRead),
    ("GET", "/v1/certificates", Rule::Read),
    ("POST", "/v1/certificates/{domain}/retry", Rule::Admin),
];

/// The rule of (method, route template); `None` when the table does not list it (the caller
/// then requires `admin`).
pub fn rule_for(method: &str, route: &str) -> Option<Rule> {
    let method = if method.eq_ignore_ascii_case("HEAD") {
        "GET"
    } else {
        method
    };
    ROUTE_RULES
        .iter()
        .find(|(m, r, _)| m.eq_ignore_ascii_case(method) && *r == route)
        .map(|(_, _, rule)| *rule)
}

/// The names the API listener answers to (`Host` header or absolute-form authority):
/// loopback names and addresses, the listen address itself when it is a specific address,
/// `api.domain` and `api.allowed_hosts`. Anything else gets 421, so a DNS-rebinding page
/// (a foreign name resolving to 127.0.0.1) cannot read the API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiHosts {
    /// Normalised names (lowercase, no trailing dot) and IP literals in canonical form.
    names: Vec<String>,
}

impl ApiHosts {
    /// `listen`: the API's listen address (allowed when neither loopback nor unspecified, as
    /// a client that typed the address itself reaches it). `extra`: `api.domain` and
    /// `api.allowed_hosts`.
    pub fn new<S: AsRef<str>>(listen: Option<IpAddr>, extra: &[S]) -> Self {
        let mut names: Vec<String> = Vec::new();
        if let Some(ip) = listen.filter(|ip| !ip.is_unspecified() && !ip.is_loopback()) {
            names.push(ip.to_string());
        }
        for e in extra {
            if let Some(n) = canonical(e.as_ref()) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
        }
        ApiHosts { names }
    }

    /// Whether a request whose `Host` (or authority) is `raw` may be answered.
    pub fn allows(&self, raw: &str) -> bool {
        let Some(host) = canonical(raw) else {
            return false;
        };
        if host == "localhost" {
            return true;
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            if ip.is_loopback() {
                return true;
            }
        }
        self.names.contains(&host)
    }
}

/// `Host` without port, lowercase, trailing dot dropped; IP literals (`[::1]` included) in
/// their canonical text form. `None` for something that is no host at all.
fn canonical(raw: &str) -> Option<String> {
    let raw = raw.trim();
    // Bracketed IPv6, with or without a port.
    if let Some(rest) = raw.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside.parse::<std::net::Ipv6Addr>().ok().map(|ip| {
            // An IPv4-mapped loopback is loopback too.
            match ip.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => ip.to_string(),
            }
        });
    }
    // A bare IPv6 literal (only in configuration; a Host header always brackets it).
    if let Ok(ip) = raw.parse::<std::net::Ipv6Addr>() {
        return Some(ip.to_string());
    }
    let host = match raw.rsplit_once(':') {
        Some((h, port)) if is_port(port) => h,
        Some(_) => return None,
        None => raw,
    };
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Some(ip.to_string());
    }
    normalize_host(host).filter(|h| !h.is_empty())
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        let s = Scopes::parse(&["read,deploy:web", " deploy:api-* ", "read"]).unwrap();
        assert_eq!(s.to_string(), "read,deploy:web,deploy:api-*");
        assert_eq!(Scopes::admin().to_string(), "admin");
        for bad in [
            "",
            " , ",
            "write",
            "deploy:",
            "deploy:Web",
            "deploy:a b",
            "admin,x",
        ] {
            assert!(Scopes::parse(&[bad]).is_err(), "{bad:?}");
        }
        let e = Scopes::parse(&["deploy"]).unwrap_err().to_string();
        assert!(e.contains("read, admin or deploy:APP"), "{e}");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"["read","deploy:web","deploy:api-*"]"#);
        assert_eq!(serde_json::from_str::<Scopes>(&json).unwrap(), s);
    }

    #[test]
    fn globs() {
        let cases = [
            ("web", "web", true),
            ("web", "web2", false),
            ("web-*", "web-eu", true),
            ("web-*", "web-", true),
            ("web-*", "web", false),
            ("*", "anything", true),
            ("*-prod", "shop-prod", true),
            ("*-prod", "shop-staging", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn what_each_scope_allows() {
        let read = Scopes::parse(&["read"]).unwrap();
        let ci = Scopes::parse(&["deploy:web"]).unwrap();
        let many = Scopes::parse(&["deploy:shop-*"]).unwrap();
        let admin = Scopes::admin();
        let app = |a: &str| a.to_string();
        let cases: Vec<(Need, [Result<(), String>; 4])> = vec![
            (Need::Public, [Ok(()), Ok(()), Ok(()), Ok(())]),
            (
                Need::Read,
                [Ok(()), Err("read".into()), Err("read".into()), Ok(())],
            ),
            (
                Need::AppRead(app("web")),
                [Ok(()), Ok(()), Err("deploy:web".into()), Ok(())],
            ),
            (
                Need::AppWrite(app("web")),
                [
                    Err("deploy:web".into()),
                    Ok(()),
                    Err("deploy:web".into()),
                    Ok(()),
                ],
            ),
            (
                Need::AppWrite(app("shop-eu")),
                [
                    Err("deploy:shop-eu".into()),
                    Err("deploy:shop-eu".into()),
                    Ok(()),
                    Ok(()),
                ],
            ),
            (
                Need::Admin,
                [
                    Err("admin".into()),
                    Err("admin".into()),
                    Err("admin".into()),
                    Ok(()),
                ],
            ),
        ];
        for (need, want) in cases {
            for (scopes, w) in [&read, &ci, &many, &admin].into_iter().zip(want) {
                assert_eq!(scopes.allow(&need), w, "{scopes} for {need:?}");
            }
        }
    }

    #[test]
    fn route_rules() {
        assert_eq!(rule_for("GET", "/v1/routes"), Some(Rule::Read));
        assert_eq!(rule_for("HEAD", "/v1/routes"), Some(Rule::Read));
        assert_eq!(rule_for("PUT", "/v1/routes/{name}"), Some(Rule::Admin));
        assert_eq!(
            rule_for("POST", "/v1/apps/{app}/deploy"),
            Some(Rule::AppWrite)
        );
        assert_eq!(rule_for("PATCH", "/v1/routes/{name}"), None);
        assert_eq!(rule_for("GET", "/v1/unknown"), None);
        // Every (method, route) is listed once.
        for (i, (m, r, _)) in ROUTE_RULES.iter().enumerate() {
            assert!(
                !ROUTE_RULES[i + 1..]
                    .iter()
                    .any(|(m2, r2, _)| m2 == m && r2 == r),
                "{m} {r} listed twice"
            );
        }
    }

    #[test]
    fn api_hosts() {
        let h = ApiHosts::new(
            Some("127.0.0.1".parse().unwrap()),
            &["Berth.Example.com.", "ops.internal", "10.0.0.5", "fd00::1"],
        );
        for ok in [
            "localhost",
            "LOCALHOST:9922",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:9922",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:9922",
            "[::ffff:127.0.0.1]:1",
            "berth.example.com",
            "berth.example.com:443",
            "BERTH.example.com.",
            "ops.internal:9922",
            "10.0.0.5:9922",
            "[fd00::1]:9922",
        ] {
            assert!(h.allows(ok), "{ok} should pass");
        }
        for bad in [
            "",
            "evil.test",
            "evil.test:9922",
            "localhost.evil.test",
            "berth.example.com.evil.test",
            "127.0.0.1.nip.io",
            "10.0.0.6",
            "[::2]",
            "[::1",
            "127.0.0.1:http",
            "127.0.0.1:99999999",
            "a b",
        ] {
            assert!(!h.allows(bad), "{bad} should be refused");
        }
        // A specific, non-loopback listen address is the API's own name.
        let lan = ApiHosts::new(Some("192.0.2.7".parse().unwrap()), &[] as &[&str]);
        assert!(lan.allows("192.0.2.7:9922"));
        assert!(!lan.allows("192.0.2.8:9922"));
        let any = ApiHosts::new(Some("0.0.0.0".parse().unwrap()), &[] as &[&str]);
        assert!(!any.allows("0.0.0.0"));
        assert!(any.allows("127.0.0.1:9922"));
    }
}
