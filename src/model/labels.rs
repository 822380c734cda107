//! Berth's Docker labels ⇄ what they mean. `parse` never panics: a container without
//! `berth.app`/`berth.role=app` is not ours, one with bad labels yields a single warning line
//! that names the container and the label; `to_labels` writes the same set for containers
//! Berth starts itself (plus `berth.managed=true`, which hand-started ones lack).

use std::collections::{BTreeMap, HashMap};

use super::route::Domain;

pub const APP: &str = "berth.app";
pub const DEPLOYMENT: &str = "berth.deployment";
pub const ROLE: &str = "berth.role";
pub const PORT: &str = "berth.port";
pub const HEALTH_PATH: &str = "berth.health.path";
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
    pub health_path: String,
    pub managed: bool,
}

/// Outcome of reading a container's labels.
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
    let health_path = match labels.get(HEALTH_PATH) {
        None => DEFAULT_HEALTH_PATH.to_string(),
        Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => p.clone(),
        Some(p) => return bad(HEALTH_PATH, format!("= {p:?} must start with '/'")),
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
        health_path,
        managed,
    })
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
    l.insert(HEALTH_PATH.to_string(), spec.health_path.clone());
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
                health_path: "/".into(),
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
            health_path: "/up".into(),
            managed: true,
        };
        assert_eq!(parse("c", &to_labels(&spec)), Parsed::Ok(spec));
    }
}
