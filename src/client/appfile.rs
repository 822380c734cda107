//! `berth.yaml`, the app file: what to deploy and where. Parsed strictly (unknown keys are
//! errors) and every error names the file, the line and the key. Secrets are read from the
//! local environment (or a secrets file) at deploy time and sent only in the request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::deploy::{
    default_port, default_replicas, AppSpec, HealthSpec, RegistryAuth, Secret, Strategy,
};
use crate::model::route::{Domain, PathPrefix};

use super::ClientError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    #[serde(default = "default_context")]
    pub context: PathBuf,
    #[serde(default = "default_dockerfile")]
    pub dockerfile: PathBuf,
}

fn default_context() -> PathBuf {
    PathBuf::from(".")
}
fn default_dockerfile() -> PathBuf {
    PathBuf::from("Dockerfile")
}

/// The app file as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Empty or absent: a background worker (no route, no HTTP health check).
    #[serde(default)]
    pub domains: Vec<Domain>,
    #[serde(default)]
    pub aliases: Vec<Domain>,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub strategy: Strategy,
    /// `strategy: canary`: `{steps: [{weight: 10%, hold: 1m}], analysis: {max_error_rate: 1%,
    /// max_p99: 500ms, min_requests: 100}, sticky: true}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<crate::model::canary::CanarySpec>,
    /// The daemon's own health-check type: same keys, same defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    /// `round_robin` (default) | `least_connections` | `source_ip` |
    /// `{kind: sticky_cookie, cookie: NAME, indirect: true}` | `{kind: uri_hash, key: uri}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<crate::model::route::BalancerKind>,
    /// A replica that comes up ramps its share of traffic over this long.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub slowstart: Option<Duration>,
    /// Serve only this path prefix of the domains (several apps on one domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Times a failed bodiless GET/HEAD/OPTIONS is retried on another replica (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Names of secrets, read from the local environment or `secrets_file` at deploy time.
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_file: Option<PathBuf>,
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Longest wait for one new replica to become healthy (server default 2m).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub deploy_timeout: Option<Duration>,
    /// Longest wait for a draining replica's in-flight requests (server default 30s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain_timeout: Option<Duration>,
    /// A new replica must stay healthy this long after its first good check.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_ready: Option<Duration>,
    /// Signal that stops a replica (SIGTERM when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long a replica may take to stop before it is killed (server's `deploy.stop_grace`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_timeout: Option<Duration>,
    /// Replaces the image's CMD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's ENTRYPOINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// `{memory: 256MiB, cpus: 0.5}` per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::model::deploy::Resources>,
    /// `missing` (default), `always` (moving tags like `:latest`), `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<crate::model::deploy::PullPolicy>,
    /// `{pre_deploy: {command: [...], timeout: 5m}}`: e.g. migrations before replicas change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<crate::model::deploy::Hooks>,
    /// Private registry login for `image`: the password is read from the environment
    /// variable `password_env` at deploy time and sent with that request only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryLogin>,
    /// Servers (names from `berth server list`) to deploy to.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// `registry:` in berth.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryLogin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub username: String,
    /// Name of the environment variable holding the password.
    pub password_env: String,
}

fn invalid(path: &Path, line: Option<usize>, key: &str, message: impl Into<String>) -> ClientError {
    ClientError::AppFile {
        path: path.to_path_buf(),
        line,
        key: key.to_string(),
        message: message.into(),
    }
}

/// Line (1-based) where `key:` first appears at the start of a line, for semantic errors.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| l.trim_start().starts_with(&format!("{key}:")))
        .map(|i| i + 1)
}

/// Line (1-based) of a dotted key (`health.fall`): each segment is looked for after the line
/// of the one before it and indented deeper; falls back to the deepest segment found.
fn line_of_path(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut from = 0usize;
    let mut min_indent = 0usize;
    let mut found = None;
    for (depth, seg) in path.split('.').enumerate() {
        let seg = seg.split('[').next().unwrap_or(seg);
        let hit = lines.iter().enumerate().skip(from).find(|(_, l)| {
            let t = l.trim_start().trim_start_matches("- ");
            (depth == 0 || indent(l) >= min_indent) && t.starts_with(&format!("{seg}:"))
        });
        match hit {
            Some((i, l)) => {
                found = Some(i + 1);
                from = i + 1;
                min_indent = indent(l) + 1;
            }
            None => break,
        }
    }
    found
}

impl AppFile {
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                path,
                None,
                "",
                format!("cannot read: {e} (run `berth init` to create one)"),
            )
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ClientError> {
        let app: AppFile = serde_yaml::from_str(text).map_err(|e| {
            let line = e.location().map(|l| l.line());
            let msg = e.to_string();
            // serde_yaml prefixes the key path: "domains[0]: invalid ... at line 3 column 5".
            let (key, rest) = match msg.split_once(": ") {
                Some((k, r)) if !k.contains(' ') => (k.to_string(), r.to_string()),
                _ => (String::new(), msg.clone()),
            };
            let rest = match rest.find(" at line ") {
                Some(i) => rest[..i].to_string(),
                None => rest,
            };
            // An unknown key is named in the message itself.
            let key = match (key.is_empty(), rest.strip_prefix("unknown field `")) {
                (true, Some(r)) => r.split('`').next().unwrap_or_default().to_string(),
                _ => key,
            };

            invalid(path, line, &key, rest)
        })?;
        let name_ok = !app.name.is_empty()
            && app.name.len() <= 63
            && app
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !app.name.starts_with('-');
        if !name_ok {
            return Err(invalid(
                path,
                line_of(text, "name"),
                "name",
                format!(
                    "{:?} must be 1-63 lowercase letters, digits or '-'",
                    app.name
                ),
            ));
        }
        match (&app.image, &app.build) {
            (None, None) => {
                return Err(invalid(
                    path,
                    None,
                    "image",
                    "set `image:` (a reference) or `build:` (a Dockerfile to build locally)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    path,
                    line_of(text, "build"),
                    "build",
                    "set either `image:` or `build:`, not both",
                ))
            }
            _ => {}
        }
        if app.domains.is_empty() && app.health.as_ref().is_some_and(|h| h.path_given) {
            return Err(invalid(
                path,
                line_of(text, "path"),
                "health.path",
                "an app without domains (a worker) gets no HTTP health check: it is healthy \
                 once its container has run without restarting for min_ready (default 3s), or \
                 when its Docker HEALTHCHECK says so; remove health.path or add domains",
            ));
        }
        if app.port == 0 {
            return Err(invalid(
                path,
                line_of(text, "port"),
                "port",
                "must be 1-65535",
            ));
        }
        if app.replicas == 0 || app.replicas > 100 {
            return Err(invalid(
                path,
                line_of(text, "replicas"),
                "replicas",
                format!("{} is out of range (1-100)", app.replicas),
            ));
        }
        if let Some(h) = &app.health {
            if h.path_given && !h.path.starts_with('/') {
                return Err(invalid(
                    path,
                    line_of(text, "path"),
                    "health.path",
                    "must start with '/'",
                ));
            }
        }
        if let Some(p) = &app.path_prefix {
            if let Err(m) = PathPrefix::try_from(p.clone()) {
                return Err(invalid(
                    path,
                    line_of(text, "path_prefix"),
                    "path_prefix",
                    m,
                ));
            }
        }
        // Everything else is checked by the daemon's own rules (the app spec's validation),
        // here already, so a bad berth.yaml fails before anything is built or uploaded.
        if let Err(e) = app.to_spec("berth-check", &BTreeMap::new())?.validate() {
            return Err(invalid(
                path,
                line_of_path(text, &e.field),
                &e.field,
                e.message,
            ));
        }
        Ok(app)
    }

    /// Reads each secret from the environment, then `secrets_file` (KEY=VALUE lines).
    pub fn resolve_secrets(&self, base: &Path) -> Result<BTreeMap<String, String>, ClientError> {
        let mut from_file = BTreeMap::new();
        if let Some(f) = &self.secrets_file {
            let p = base.join(f);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| invalid(&p, None, "secrets_file", e.to_string()))?;
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some((k, v)) = line.split_once('=') {
                    from_file.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        let mut out = BTreeMap::new();
        for name in &self.secrets {
            let v = std::env::var(name)
                .ok()
                .or_else(|| from_file.get(name).cloned())
                .ok_or_else(|| {
                    invalid(
                        base,
                        None,
                        "secrets",
                        format!("secret {name} is not set in the environment or the secrets file"),
                    )
                })?;
            out.insert(name.clone(), v);
        }
        Ok(out)
    }

    /// The registry password from the environment variable `registry.password_env`.
    pub fn registry_password(&self, base: &Path) -> Result<Option<String>, ClientError> {
        let Some(r) = &self.registry else {
            return Ok(None);
        };
        match std::env::var(&r.password_env) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            _ => Err(invalid(
                base,
                None,
                "registry.password_env",
                format!("environment variable {} is not set", r.password_env),
            )),
        }
    }

    /// The daemon's app spec for this file: `AppSpec::new` (the defaults a request that
    /// omits a field gets) with what the file sets. Secrets travel in their own field, never
    /// merged into `env`: the daemon stores them encrypted and shows only fingerprints. The
    /// registry password is not set here (only a pull needs it, see `registry_password`).
    pub fn to_spec(
        &self,
        image: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<AppSpec, ClientError> {
        let mut spec = AppSpec::new(image);
        spec.domains = self.domains.clone();
        spec.aliases = self.aliases.clone();
        spec.port = self.port;
        spec.replicas = self.replicas;
        spec.strategy = self.strategy;
        spec.canary = self.canary.clone();
        spec.env = self.env.clone();
        spec.volumes = self.volumes.clone();
        if let Some(h) = &self.health {
            spec.health = h.clone();
        }
        if let Some(b) = &self.balancer {
            spec.balancer = b.clone();
        }
        spec.slowstart = self.slowstart;
        spec.path_prefix = match &self.path_prefix {
            Some(p) => Some(
                PathPrefix::try_from(p.clone())
                    .map_err(|m| ClientError::Usage(format!("path_prefix: {m}")))?,
            ),
            None => None,
        };
        if let Some(r) = self.retries {
            spec.retries = r;
        }
        if let Some(d) = self.deploy_timeout {
            spec.deploy_timeout = d;
        }
        if let Some(d) = self.drain_timeout {
            spec.drain_timeout = d;
        }
        if let Some(d) = self.min_ready {
            spec.min_ready = d;
        }
        spec.stop_timeout = self.stop_timeout;
        spec.stop_signal = self.stop_signal.clone();
        spec.command = self.command.clone();
        spec.entrypoint = self.entrypoint.clone();
        if let Some(r) = &self.resources {
            spec.resources = r.clone();
        }
        if let Some(p) = self.pull {
            spec.pull = p;
        }
        if let Some(h) = &self.hooks {
            spec.hooks = h.clone();
        }
        spec.registry = self.registry.as_ref().map(|r| RegistryAuth {
            server: r.server.clone(),
            username: r.username.clone(),
            password: None,
        });
        spec.secrets = secrets
            .iter()
            .map(|(name, value)| (name.clone(), Secret::plain(value)))
            .collect();
        Ok(spec)
    }
}

/// The commented starter file `berth init` writes.
pub fn starter(name: &str) -> String {
    format!(
        r#"# berth.yaml: how Berth deploys this app. Reference: README.md ("App file").
name: {name}

# Either an image reference the server can pull...
image: {name}:latest
# ...or build locally with Docker and upload the image (remove `image:` then):
# build:
#   context: .
#   dockerfile: Dockerfile

domains:
  - {name}.example.com
# aliases answer 301 to the first domain:
# aliases: [www.{name}.example.com]

port: 8080          # the port your app listens on inside the container
replicas: 2
strategy: rolling   # rolling (no downtime) or replace (stop all, then start all)

health:
  path: /           # must answer 2xx/3xx before traffic moves
  interval: 2s
  timeout: 2s

env:
  RUST_LOG: info
# Secrets come from your local environment (or secrets_file) at deploy time:
# secrets: [DATABASE_URL]
# secrets_file: .env.secrets
# volumes: ["{name}-data:/data"]

# Servers to deploy to (see `berth server list`); default: the current server.
# targets: [production]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::api::DeployRequest;

    #[test]
    fn starter_parses() {
        let app = AppFile::parse(Path::new("berth.yaml"), &starter("shop")).unwrap();
        assert_eq!(app.name, "shop");
        assert_eq!(app.replicas, 2);
        let health = app.health.as_ref().unwrap();
        assert!(health.path_given);
        assert_eq!(health.path, "/");
    }

    #[test]
    fn secrets_are_sent_apart_from_env() {
        let app = AppFile::parse(
            Path::new("berth.yaml"),
            "name: a\nimage: x\ndomains: [a.com]\nenv: {MODE: prod}\nsecrets: [DB]\n",
        )
        .unwrap();
        let secrets = BTreeMap::from([("DB".to_string(), "hunter2".to_string())]);
        let spec = app.to_spec("x", &secrets).unwrap();
        let sent = serde_json::to_value(DeployRequest::new(spec)).unwrap();
        assert_eq!(sent["env"], serde_json::json!({"MODE": "prod"}));
        assert_eq!(sent["secrets"], serde_json::json!({"DB": "hunter2"}));
        // What the daemon parses: a secret, not an env var.
        let parsed: AppSpec = serde_json::from_value(sent).unwrap();
        assert!(!parsed.env.contains_key("DB"));
        assert_eq!(parsed.secrets["DB"].value(), Some("hunter2"));
        let none = serde_json::to_value(DeployRequest::new(
            app.to_spec("x", &BTreeMap::new()).unwrap(),
        ));
        assert!(none.unwrap().get("secrets").is_none());
    }

    #[test]
    fn timeouts_and_stop_signal_reach_the_spec() {
        let text = "name: a\nimage: x\ndomains: [a.com]\ndeploy_timeout: 5m\ndrain_timeout: 10s\n\
                    min_ready: 2s\nstop_timeout: 3s\nstop_signal: SIGQUIT\n\
                    command: [./worker, --queue, mail]\nentrypoint: [/bin/sh, -c]\n\
                    resources: {memory: 128MiB, cpus: 0.25}\npull: always\n\
                    hooks: {pre_deploy: {command: [./migrate], timeout: 2m}}\n";
        let app = AppFile::parse(Path::new("berth.yaml"), text).unwrap();
        let spec = serde_json::to_value(DeployRequest::new(
            app.to_spec("x:1", &BTreeMap::new()).unwrap(),
        ))
        .unwrap();
        let parsed: AppSpec = serde_json::from_value(spec.clone()).unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.deploy_timeout, Duration::from_secs(300), "{spec}");
        assert_eq!(parsed.drain_timeout, Duration::from_secs(10));
        assert_eq!(parsed.min_ready, Duration::from_secs(2));
        assert_eq!(parsed.stop_timeout, Some(Duration::from_secs(3)));
        assert_eq!(parsed.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(parsed.command.as_deref().unwrap()[2], "mail");
        assert_eq!(parsed.entrypoint.as_deref().unwrap()[0], "/bin/sh");
        assert_eq!(parsed.resources.memory.unwrap().0, 128 << 20);
        assert_eq!(parsed.resources.cpus.unwrap().nano(), 250_000_000);
        assert_eq!(parsed.pull, crate::model::deploy::PullPolicy::Always);
        let hook = parsed.hooks.pre_deploy.unwrap();
        assert_eq!(hook.command, ["./migrate"]);
        assert_eq!(hook.timeout, Duration::from_secs(120));
        // Unset: the spec the daemon builds for a request that omits the field.
        let plain = AppFile::parse(
            Path::new("berth.yaml"),
            "name: a\nimage: x\ndomains: [a.com]\n",
        )
        .unwrap()
        .to_spec("x:1", &BTreeMap::new())
        .unwrap();
        let omitted: AppSpec =
            serde_json::from_str(r#"{"image":"x:1","domains":["a.com"]}"#).unwrap();
        assert_eq!(plain, omitted);
        let sent = serde_json::to_value(DeployRequest::new(plain)).unwrap();
        assert!(sent.get("stop_signal").is_none() && sent.get("stop_timeout").is_none());
    }

    #[test]
    fn traffic_policy_reaches_the_spec() {
        let app = AppFile::parse(
            Path::new("berth.yaml"),
            "name: a\nimage: x\ndomains: [a.com]\nbalancer:\n  kind: sticky_cookie\n  cookie: PIN\n  indirect: true\nhealth:\n  path: /up\n  fall: 2\n  rise: 4\n  expect: [204]\n  method: HEAD\n  interval: 1s\nslowstart: 20s\npath_prefix: /api/\nretries: 2\n",
        )
        .unwrap();
        let sent = serde_json::to_value(DeployRequest::new(
            app.to_spec("x:1", &BTreeMap::new()).unwrap(),
        ));
        let spec: AppSpec = serde_json::from_value(sent.unwrap()).unwrap();
        spec.validate().unwrap();
        assert_eq!(
            spec.balancer,
            crate::model::route::BalancerKind::StickyCookie {
                cookie: "PIN".into(),
                indirect: true
            }
        );
        assert_eq!((spec.health.fall, spec.health.rise), (2, 4));
        assert_eq!(spec.health.method, crate::model::route::CheckMethod::Head);
        assert_eq!(spec.health.interval, Duration::from_secs(1));
        assert_eq!(spec.slowstart, Some(Duration::from_secs(20)));
        assert_eq!(spec.path_prefix.as_ref().map(|p| p.as_str()), Some("/api"));
        assert_eq!(spec.retries, 2);
        let route = spec
            .traffic()
            .route("app/a".into(), spec.domains.clone(), vec![], vec![]);
        let check = route.health_check.unwrap();
        assert_eq!((check.fall, check.rise, check.path.as_str()), (2, 4, "/up"));
    }

    #[test]
    fn canary_reaches_the_spec() {
        let app = AppFile::parse(
            Path::new("berth.yaml"),
            "name: a\nimage: x\ndomains: [a.com]\nstrategy: canary\ncanary:\n  steps:\n    - {weight: 10%, hold: 30s}\n    - {weight: 50%, hold: 1m}\n  analysis: {max_error_rate: 1%, max_p99: 300ms, min_requests: 50}\n  sticky: true\n",
        )
        .unwrap();
        let spec = app.to_spec("x", &BTreeMap::new()).unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.strategy, Strategy::Canary);
        let c = spec.canary.unwrap();
        assert_eq!(c.steps.len(), 2);
        assert_eq!(c.steps[1].weight, crate::model::canary::Percent::whole(50));
        assert_eq!(c.analysis.min_requests, 50);
        assert!(c.sticky);
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let cases: &[(&str, &str, Option<usize>)] = &[
            (
                "name: a\nimage: x\ndomains: [a.com]\nreplicas: many\n",
                "replicas",
                Some(4),
            ),
            (
                "name: a\nimage: x\ndomains: [\"bad host\"]\n",
                "domains",
                Some(3),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nport: 0\n",
                "port",
                Some(4),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nfoo: 1\n",
                "foo",
                Some(4),
            ),
            ("name: A_B\nimage: x\ndomains: [a.com]\n", "name", Some(1)),
            ("name: a\ndomains: [a.com]\n", "image", None),
            // No domains: a worker, which has no HTTP health check.
            (
                "name: a\nimage: x\ndomains: []\nhealth:\n  path: /up\n",
                "health.path",
                Some(5),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nport: 3000\nhealth:\n  path: /up\n  fall: 0\n",
                "health.fall",
                Some(7),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nhealth:\n  path: /up\n  rise: 101\n",
                "health.rise",
                Some(6),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nhealth:\n  expect: [200, 7xx]\n",
                "health.expect",
                Some(5),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nbalancer: random\n",
                "balancer",
                Some(4),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nbalancer:\n  kind: uri_hash\n  indirect: true\n",
                "balancer",
                Some(5),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nretries: 9\n",
                "retries",
                Some(4),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nslowstart: 2h\n",
                "slowstart",
                Some(4),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\npath_prefix: api\n",
                "path_prefix",
                Some(4),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nstrategy: canary\ncanary:\n  steps: [{weight: 5%, hold: 2m}]\n  analysis:\n    max_error_rate: 150%\n",
                "canary.analysis.max_error_rate",
                Some(8),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nstrategy: canary\ncanary:\n  steps:\n    - weight: 0%\n      hold: 1m\n",
                "canary.steps[0].weight",
                Some(7),
            ),
            (
                "name: a\nimage: x\ndomains: [a.com]\nstrategy: canary\n",
                "canary",
                None,
            ),
        ];
        for (text, key, line) in cases {
            match AppFile::parse(Path::new("berth.yaml"), text) {
                Err(ClientError::AppFile {
                    path,
                    line: l,
                    key: k,
                    message,
                }) => {
                    assert_eq!(path, Path::new("berth.yaml"));
                    assert_eq!(&k, key, "{text}: {message}");
                    assert_eq!(&l, line, "{text}: {message}");
                }
                other => panic!("{text}: expected an app file error, got {other:?}"),
            }
        }
    }
}
