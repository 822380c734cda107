//! Berth's Docker labels ⇄ what they mean. `parse` never panics: a container without
//! `berth.app`/`berth.role=app` is not ours, one with bad labels yields a single warning line
//! that names the container and the label; `to_labels` writes the same set for containers
//! Berth starts itself (plus `berth.managed=true`, which hand-started ones lack).

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use super::deploy::TrafficPolicy;
use super::route::{BalancerKind, CheckMethod, Domain, HashKey, PathPrefix, StatusPattern};

pub const APP: &str = "berth.app";
pub const DEPLOYMENT: &str = "berth.deployment";
pub const ROLE: &str = "berth.role";
pub const PORT: &str = "berth.port";
pub const HEALTH_PATH: &str = "berth.health.path";
pub const HEALTH_INTERVAL: &str = "berth.health.interval";
pub const HEALTH_TIMEOUT: &str = "berth.health.timeout";
pub const HEALTH_FALL: &str = "berth.health.fall";
pub const HEALTH_RISE: &str = "berth.health.rise";
pub const HEALTH_METHOD: &str = "berth.health.method";
/// Comma-separated statuses (`200,3xx`).
pub const HEALTH_EXPECT: &str = "berth.health.expect";
/// `round_robin` | `least_connections` | `sticky_cookie` | `uri_hash` | `source_ip`.
pub const BALANCER: &str = "berth.balancer";
pub const BALANCER_COOKIE: &str = "berth.balancer.cookie";
pub const BALANCER_INDIRECT: &str = "berth.balancer.indirect";
pub const BALANCER_KEY: &str = "berth.balancer.key";
pub const SLOWSTART: &str = "berth.slowstart";
pub const PATH_PREFIX: &str = "berth.path_prefix";
pub const RETRIES: &str = "berth.retries";
/// Set on containers Berth created; discovery leaves those to the deploy engine.
pub const MANAGED: &str = "berth.managed";
/// Replica slot of a managed container (diagnostics only).
pub const SLOT: &str = "berth.slot";
/// On one-off hook containers (`hooks.pre_deploy`): the app. They carry no `berth.app` or
/// `berth.deployment`, so discovery and reconcile never take them for replicas.
pub const HOOK: &str = "berth.hook";
/// On hook containers: the deployment that ran them.
pub const HOOK_DEPLOYMENT: &str = "berth.hook.deployment";
pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_HEALTH_PATH: &str = "/";

/// What the labels of one container say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSpec {
    pub app: String,
    pub deployment: Option<String>,
    /// `berth.domain.N` in N order.
    pub domains: Vec<Domain>,
    /// `berth.domain.N.alias.M`, in N then M order.
    pub aliases: Vec<Domain>,
    pub port: u16,
    /// Balancer, health check (checked continuously once routed), slow start, path prefix
    /// and retries, from `berth.balancer*`, `berth.health.*`, `berth.slowstart`,
    /// `berth.path_prefix`, `berth.retries`.
    pub traffic: TrafficPolicy,
    pub managed: bool,
}

/// Outcome of reading a container's labels.
// Built once per container event and consumed at once; boxing the spec buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No `berth.app`, or `berth.role` is not `app`: not a Berth app container.
    NotOurs,
    Ok(LabelSpec),
    /// Berth labels that cannot be used; the string is the one warning to log.
    Invalid(String),
}

/// Reads the Berth labels of container `name`.
pub fn parse(name: &str, labels: &HashMap<String, String>) -> Parsed {
    let Some(app) = labels.get(APP).map(|s| s.trim()) else {
        return Parsed::NotOurs;
    };
    if labels.get(ROLE).map(|s| s.trim()) != Some("app") {
        return Parsed::NotOurs;
    }
    let bad = |label: &str, why: String| {
        Parsed::Invalid(format!(
            "container {name}: label {label} {why}; container skipped (not routed)"
        ))
    };
    if app.is_empty() {
        return bad(APP, "is empty".into());
    }
    if let Err(e) = super::deploy::validate_app_name(app) {
        return bad(APP, e.message);
    }
    let port = match labels.get(PORT) {
        None => DEFAULT_PORT,
        Some(p) => match p.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return bad(PORT, format!("= {p:?} is not a port number (1-65535)")),
        },
    };
    if let Some(p) = labels.get(HEALTH_PATH) {
        if !p.starts_with('/') || p.contains(char::is_whitespace) {
            return bad(HEALTH_PATH, format!("= {p:?} must start with '/'"));
        }
    }
    let traffic = match traffic_policy(labels) {
        Ok(t) => t,
        Err((label, why)) => return bad(label, why),
    };
    // berth.domain.N and berth.domain.N.alias.M, ordered numerically.
    let mut domains: BTreeMap<u32, Domain> = BTreeMap::new();
    let mut aliases: BTreeMap<(u32, u32), Domain> = BTreeMap::new();
    for (k, v) in labels {
        let Some(rest) = k.strip_prefix("berth.domain.") else {
            continue;
        };
        let parse_domain = |v: &str| Domain::try_from(v.trim().to_string());
        let mut parts = rest.split('.');
        let n = parts.next().and_then(|n| n.parse::<u32>().ok());
        match (n, parts.next(), parts.next(), parts.next()) {
            (Some(n), None, None, None) => match parse_domain(v) {
                Ok(d) => {
                    domains.insert(n, d);
                }
                Err(e) => return bad(k, e),
            },
            (Some(n), Some("alias"), Some(m), None) => {
                let Ok(m) = m.parse::<u32>() else {
                    return bad(k, "is not berth.domain.N.alias.M with numbers N, M".into());
                };
                match parse_domain(v) {
                    Ok(d) => {
                        aliases.insert((n, m), d);
                    }
                    Err(e) => return bad(k, e),
                }
            }
            _ => {
                return bad(
                    k,
                    "is not berth.domain.N or berth.domain.N.alias.M with numbers N, M".into(),
                )
            }
        }
    }
    let managed = labels.get(MANAGED).map(String::as_str) == Some("true");
    // A worker Berth started has no domain; a hand-started container needs one to be routed.
    if domains.is_empty() && !managed {
        return bad("berth.domain.0", "is missing: an app needs a domain".into());
    }
    if let Some(((n, _), _)) = aliases.iter().find(|((n, _), _)| !domains.contains_key(n)) {
        return bad(
            &format!("berth.domain.{n}.alias.*"),
            format!("refers to berth.domain.{n}, which is not set"),
        );
    }
    Parsed::Ok(LabelSpec {
        app: app.to_string(),
        deployment: labels.get(DEPLOYMENT).cloned(),
        domains: domains.into_values().collect(),
        aliases: aliases.into_values().collect(),
        port,
        traffic,
        managed,
    })
}

/// The traffic policy the labels give; the error names the label and says why.
fn traffic_policy(
    labels: &HashMap<String, String>,
) -> Result<TrafficPolicy, (&'static str, String)> {
    let get = |k: &str| labels.get(k).map(|v| v.trim());
    let dur = |k: &'static str| -> Result<Option<Duration>, (&'static str, String)> {
        get(k)
            .map(|v| {
                humantime::parse_duration(v).map_err(|e| {
                    (
                        k,
                        format!("= {v:?} is not a duration (e.g. 500ms, 10s): {e}"),
                    )
                })
            })
            .transpose()
    };
    let num = |k: &'static str| -> Result<Option<u32>, (&'static str, String)> {
        get(k)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| (k, format!("= {v:?} is not a whole number")))
            })
            .transpose()
    };
    let mut t = TrafficPolicy::default();
    if let Some(p) = get(HEALTH_PATH) {
        t.health.path = p.to_string();
        t.health.path_given = true;
    }
    if let Some(d) = dur(HEALTH_INTERVAL)? {
        t.health.interval = d;
    }
    if let Some(d) = dur(HEALTH_TIMEOUT)? {
        t.health.timeout = d;
    }
    if let Some(n) = num(HEALTH_FALL)? {
        t.health.fall = n;
    }
    if let Some(n) = num(HEALTH_RISE)? {
        t.health.rise = n;
    }
    if let Some(m) = get(HEALTH_METHOD) {
        t.health.method = match m.to_ascii_uppercase().as_str() {
            "GET" => CheckMethod::Get,
            "HEAD" => CheckMethod::Head,
            _ => return Err((HEALTH_METHOD, format!("= {m:?} is not GET or HEAD"))),
        };
    }
    if let Some(e) = get(HEALTH_EXPECT) {
        t.health.expect = e
            .split(',')
            .map(|p| StatusPattern::try_from(p.trim().to_string()))
            .collect::<Result<_, _>>()
            .map_err(|m| (HEALTH_EXPECT, m))?;
    }
    if let Err(e) = t.health.validate("berth.health") {
        let label = match e.field.as_str() {
            "berth.health.path" => HEALTH_PATH,
            "berth.health.interval" => HEALTH_INTERVAL,
            "berth.health.timeout" => HEALTH_TIMEOUT,
            "berth.health.fall" => HEALTH_FALL,
            "berth.health.rise" => HEALTH_RISE,
            _ => HEALTH_EXPECT,
        };
        return Err((label, e.message));
    }
    if let Some(kind) = get(BALANCER) {
        let key = get(BALANCER_KEY)
            .map(|k| match k {
                "path" => Ok(HashKey::Path),
                "uri" => Ok(HashKey::Uri),
                other => Err((BALANCER_KEY, format!("= {other:?} is not path or uri"))),
            })
            .transpose()?;
        let indirect = get(BALANCER_INDIRECT)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err((
                    BALANCER_INDIRECT,
                    format!("= {other:?} is not true or false"),
                )),
            })
            .transpose()?;
        t.balancer = BalancerKind::from_parts(
            kind,
            get(BALANCER_COOKIE).map(str::to_string),
            key,
            indirect,
        )
        .map_err(|m| (BALANCER, m))?;
    } else if let Some(k) = [BALANCER_COOKIE, BALANCER_INDIRECT, BALANCER_KEY]
        .into_iter()
        .find(|k| labels.contains_key(*k))
    {
        return Err((k, "needs berth.balancer".into()));
    }
    if let Some(d) = dur(SLOWSTART)? {
        if d > Duration::from_secs(3600) {
            return Err((SLOWSTART, "must be at most 1h".into()));
        }
        t.slowstart = Some(d);
    }
    if let Some(p) = get(PATH_PREFIX) {
        t.path_prefix = Some(PathPrefix::try_from(p.to_string()).map_err(|m| (PATH_PREFIX, m))?);
    }
    if let Some(n) = num(RETRIES)? {
        if n > super::route::MAX_RETRIES {
            return Err((
                RETRIES,
                format!("= {n} is out of range (0-{})", super::route::MAX_RETRIES),
            ));
        }
        t.retries = n;
    }
    Ok(t)
}

/// Labels for a container Berth starts: all aliases are attached to `berth.domain.0`.
pub fn to_labels(spec: &LabelSpec) -> HashMap<String, String> {
    let mut l = HashMap::new();
    l.insert(APP.to_string(), spec.app.clone());
    l.insert(ROLE.to_string(), "app".to_string());
    if let Some(d) = &spec.deployment {
        l.insert(DEPLOYMENT.to_string(), d.clone());
    }
    for (n, d) in spec.domains.iter().enumerate() {
        l.insert(format!("berth.domain.{n}"), d.to_string());
    }
    for (m, a) in spec.aliases.iter().enumerate() {
        l.insert(format!("berth.domain.0.alias.{m}"), a.to_string());
    }
    l.insert(PORT.to_string(), spec.port.to_string());
    let t = &spec.traffic;
    let h = &t.health;
    let fmt_d = |d: Duration| humantime::format_duration(d).to_string();
    // Written only when it was given, so a label round trip keeps `path_given` (workers have
    // no HTTP health path; a web app without one uses the default).
    if h.path_given {
        l.insert(HEALTH_PATH.to_string(), h.path.clone());
    }
    l.insert(HEALTH_INTERVAL.to_string(), fmt_d(h.interval));
    l.insert(HEALTH_TIMEOUT.to_string(), fmt_d(h.timeout));
    l.insert(HEALTH_FALL.to_string(), h.fall.to_string());
    l.insert(HEALTH_RISE.to_string(), h.rise.to_string());
    l.insert(
        HEALTH_METHOD.to_string(),
        h.method.as_http().as_str().to_string(),
    );
    l.insert(
        HEALTH_EXPECT.to_string(),
        h.expect
            .iter()
            .map(|p| String::from(*p))
            .collect::<Vec<_>>()
            .join(","),
    );
    match &t.balancer {
        BalancerKind::RoundRobin => {}
        BalancerKind::LeastConnections => {
            l.insert(BALANCER.to_string(), "least_connections".to_string());
        }
        BalancerKind::SourceIp => {
            l.insert(BALANCER.to_string(), "source_ip".to_string());
        }
        BalancerKind::StickyCookie { cookie, indirect } => {
            l.insert(BALANCER.to_string(), "sticky_cookie".to_string());
            l.insert(BALANCER_COOKIE.to_string(), cookie.clone());
            l.insert(BALANCER_INDIRECT.to_string(), indirect.to_string());
        }
        BalancerKind::UriHash { key } => {
            l.insert(BALANCER.to_string(), "uri_hash".to_string());
            let k = match key {
                HashKey::Path => "path",
                HashKey::Uri => "uri",
            };
            l.insert(BALANCER_KEY.to_string(), k.to_string());
        }
    }
    if let Some(d) = t.slowstart {
        l.insert(SLOWSTART.to_string(), fmt_d(d));
    }
    if let Some(p) = &t.path_prefix {
        l.insert(PATH_PREFIX.to_string(), p.as_str().to_string());
    }
    l.insert(RETRIES.to_string(), t.retries.to_string());
    if spec.managed {
        l.insert(MANAGED.to_string(), "true".to_string());
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn d(s: &str) -> Domain {
        Domain::try_from(s.to_string()).unwrap()
    }

    #[test]
    fn parses_and_defaults() {
        let got = parse(
            "c1",
            &labels(&[
                ("berth.app", "web"),
                ("berth.role", "app"),
                ("berth.domain.1", "b.example.com"),
                ("berth.domain.0", "A.example.com"),
                ("berth.domain.0.alias.1", "www2.example.com"),
                ("berth.domain.0.alias.0", "www.example.com"),
                ("berth.domain.1.alias.0", "bb.example.com"),
                ("other", "x"),
            ]),
        );
        assert_eq!(
            got,
            Parsed::Ok(LabelSpec {
                app: "web".into(),
                deployment: None,
                domains: vec![d("a.example.com"), d("b.example.com")],
                aliases: vec![
                    d("www.example.com"),
                    d("www2.example.com"),
                    d("bb.example.com")
                ],
                port: 8080,
                traffic: TrafficPolicy::default(),
                managed: false,
            })
        );
    }

    #[test]
    fn table() {
        // (labels, expected: "ours" | "not" | substring of the warning)
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "not"),
            (&[("berth.app", "web")], "not"),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "db"),
                    ("berth.domain.0", "a.com"),
                ],
                "not",
            ),
            (
                &[("berth.app", "web"), ("berth.role", "app")],
                "berth.domain.0 is missing",
            ),
            (
                &[
                    ("berth.app", "My App"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                ],
                "label berth.app \"My App\" must be",
            ),
            (
                &[
                    ("berth.app", " "),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                ],
                "berth.app is empty",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.port", "http"),
                ],
                "label berth.port = \"http\" is not a port number",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.port", "0"),
                ],
                "berth.port",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.port", "70000"),
                ],
                "berth.port",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a b"),
                ],
                "label berth.domain.0 invalid host name",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.x", "a.com"),
                ],
                "berth.domain.x is not",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.domain.0.alias.q", "b.com"),
                ],
                "berth.domain.0.alias.q is not",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.domain.3.alias.0", "b.com"),
                ],
                "berth.domain.3, which is not set",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.health.path", "up"),
                ],
                "berth.health.path",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.health.fall", "0"),
                ],
                "label berth.health.fall must be ≥ 1",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.health.interval", "soon"),
                ],
                "label berth.health.interval = \"soon\" is not a duration",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.balancer", "random"),
                ],
                "label berth.balancer unknown balancer",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.balancer.cookie", "X"),
                ],
                "label berth.balancer.cookie needs berth.balancer",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.retries", "9"),
                ],
                "label berth.retries = 9 is out of range",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.path_prefix", "api"),
                ],
                "label berth.path_prefix invalid path prefix",
            ),
            (
                &[
                    ("berth.app", "web"),
                    ("berth.role", "app"),
                    ("berth.domain.0", "a.com"),
                    ("berth.port", "3000"),
                    ("berth.health.path", "/up"),
                ],
                "ours",
            ),
        ];
        for (l, want) in cases {
            let got = parse("c9", &labels(l));
            match (*want, &got) {
                ("not", Parsed::NotOurs) | ("ours", Parsed::Ok(_)) => {}
                (w, Parsed::Invalid(msg)) if w != "not" && w != "ours" => {
                    assert!(msg.contains(w), "{l:?}: {msg}");
                    assert!(msg.starts_with("container c9: "), "{msg}");
                }
                _ => panic!("{l:?}: want {want}, got {got:?}"),
            }
        }
    }

    #[test]
    fn round_trip() {
        let spec = LabelSpec {
            app: "web".into(),
            deployment: Some("d-1".into()),
            domains: vec![d("a.com"), d("b.com")],
            aliases: vec![d("www.a.com")],
            port: 3000,
            traffic: TrafficPolicy {
                balancer: BalancerKind::StickyCookie {
                    cookie: "PIN".into(),
                    indirect: true,
                },
                health: crate::model::deploy::HealthSpec {
                    path: "/up".into(),
                    path_given: true,
                    interval: Duration::from_secs(2),
                    timeout: Duration::from_millis(700),
                    fall: 5,
                    rise: 1,
                    expect: vec![StatusPattern::Exact(204)],
                    method: CheckMethod::Head,
                },
                slowstart: Some(Duration::from_secs(30)),
                path_prefix: Some(PathPrefix::try_from("/api".to_string()).unwrap()),
                retries: 0,
            },
            managed: true,
        };
        assert_eq!(parse("c", &to_labels(&spec)), Parsed::Ok(spec));
        // A hand-started container with only health labels gets them, defaults elsewhere.
        let Parsed::Ok(got) = parse(
            "c",
            &labels(&[
                ("berth.app", "web"),
                ("berth.role", "app"),
                ("berth.domain.0", "a.com"),
                ("berth.health.path", "/health"),
                ("berth.health.fall", "2"),
                ("berth.balancer", "source_ip"),
            ]),
        ) else {
            panic!("labels parse");
        };
        assert_eq!(got.traffic.health.path, "/health");
        assert_eq!(got.traffic.health.fall, 2);
        assert_eq!(got.traffic.balancer, BalancerKind::SourceIp);
    }
}
