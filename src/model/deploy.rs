//! The app spec a deploy asks for, its validation (errors name the field), and the pure deploy
//! plan: `plan(current, desired) -> Vec<Step>`. Rolling plans touch exactly one replica at a
//! time (start new → healthy → route it → drain one old → wait in-flight → stop it); replace
//! plans stop every old replica before starting new ones. No I/O here: `deploy/` executes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::route::{
    BackendSpec, BalancerKind, CheckMethod, Domain, HealthCheckSpec, PathPrefix, RouteSpec,
    StatusPattern, DEFAULT_RETRIES, MAX_RETRIES,
};

/// How the old version is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// One replica at a time, never fewer healthy replicas routed than before (default).
    #[default]
    Rolling,
    /// Stop all old replicas, then start all new ones: downtime accepted.
    Replace,
    /// Start the new version next to the stable one and shift traffic to it in `canary.steps`,
    /// judged by `canary.analysis` between steps (see `model::canary`); promote or abort.
    Canary,
    /// Start the new version next to the running ones and keep them all (A/B by version):
    /// the new version joins the app's split with weight 0; `berth traffic` moves traffic,
    /// `berth version rm` drains and removes a version. A first deploy runs as rolling.
    SideBySide,
}

/// The app's HTTP health check. One check, two uses: the deploy gate runs it against each
/// new replica before it is routed (until one success), and the proxy's prober runs it
/// continuously against every routed replica (`fall` failures in a row take a replica out,
/// `rise` successes bring it back). Both go through the same probe (`proxy::health`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "RawHealthSpec")]
pub struct HealthSpec {
    /// Path requested; an `expect`ed status (default 2xx or 3xx) is healthy.
    pub path: String,
    /// Whether the spec named `path` (a worker must not: it has no HTTP check). Stored specs
    /// keep it: `path` is written only when it was given.
    pub path_given: bool,
    /// Pause between two checks.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Longest one check may take.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failures that take a routed replica out (1-100).
    pub fall: u32,
    /// Consecutive successes that bring it back (1-100).
    pub rise: u32,
    /// Accepted statuses: codes (`204`) or classes (`2xx`).
    pub expect: Vec<StatusPattern>,
    /// `GET` (default) or `HEAD`.
    pub method: CheckMethod,
}

fn is_default_fall(v: &u32) -> bool {
    *v == super::health::DEFAULT_FALL
}
fn is_default_rise(v: &u32) -> bool {
    *v == super::health::DEFAULT_RISE
}
fn is_default_expect(v: &[StatusPattern]) -> bool {
    v == HealthCheckSpec::default().expect.as_slice()
}
fn is_default_method(m: &CheckMethod) -> bool {
    *m == CheckMethod::Get
}

impl Serialize for HealthSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            path: Option<&'a str>,
            #[serde(with = "humantime_serde")]
            interval: Duration,
            #[serde(with = "humantime_serde")]
            timeout: Duration,
            #[serde(skip_serializing_if = "is_default_fall")]
            fall: u32,
            #[serde(skip_serializing_if = "is_default_rise")]
            rise: u32,
            #[serde(skip_serializing_if = "is_default_expect")]
            expect: &'a [StatusPattern],
            #[serde(skip_serializing_if = "is_default_method")]
            method: CheckMethod,
        }
        Written {
            path: self.path_given.then_some(self.path.as_str()),
            interval: self.interval,
            timeout: self.timeout,
            fall: self.fall,
            rise: self.rise,
            expect: &self.expect,
            method: self.method,
        }
        .serialize(s)
    }
}

/// `HealthSpec` as written, to know whether `path` was given.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthSpec {
    path: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    fall: Option<u32>,
    rise: Option<u32>,
    expect: Option<Vec<StatusPattern>>,
    method: Option<CheckMethod>,
}

impl From<RawHealthSpec> for HealthSpec {
    fn from(r: RawHealthSpec) -> Self {
        let d = HealthSpec::default();
        HealthSpec {
            path_given: r.path.is_some(),
            path: r.path.unwrap_or(d.path),
            interval: r.interval.unwrap_or(d.interval),
            timeout: r.timeout.unwrap_or(d.timeout),
            fall: r.fall.unwrap_or(d.fall),
            rise: r.rise.unwrap_or(d.rise),
            expect: r.expect.unwrap_or(d.expect),
            method: r.method.unwrap_or(d.method),
        }
    }
}

impl Default for HealthSpec {
    fn default() -> Self {
        Self {
            path_given: false,
            path: "/".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            fall: super::health::DEFAULT_FALL,
            rise: super::health::DEFAULT_RISE,
            expect: HealthCheckSpec::default().expect,
            method: CheckMethod::Get,
        }
    }
}

impl HealthSpec {
    /// The check as the prober runs it (the deploy gate and the routing prober alike).
    pub fn check(&self) -> HealthCheckSpec {
        HealthCheckSpec {
            path: self.path.clone(),
            interval: self.interval,
            timeout: self.timeout,
            fall: self.fall,
            rise: self.rise,
            expect: self.expect.clone(),
            method: self.method,
        }
    }

    /// Checks the fields; `at` prefixes the field names (`health`).
    pub fn validate(&self, at: &str) -> Result<(), SpecError> {
        let f = |n: &str| format!("{at}.{n}");
        if !self.path.starts_with('/')
            || self
                .path
                .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(err(
                f("path"),
                format!("{:?} must start with '/' and contain no spaces", self.path),
            ));
        }
        if self.interval < Duration::from_millis(50) {
            return Err(err(f("interval"), "must be at least 50ms"));
        }
        if self.interval > Duration::from_secs(3600) {
            return Err(err(f("interval"), "must be at most 1h"));
        }
        if self.timeout < Duration::from_millis(50) {
            return Err(err(f("timeout"), "must be at least 50ms"));
        }
        if self.timeout > Duration::from_secs(300) {
            return Err(err(f("timeout"), "must be at most 5m"));
        }
        for (n, v) in [("fall", self.fall), ("rise", self.rise)] {
            if v < 1 {
                return Err(err(f(n), "must be ≥ 1"));
            }
            if v > 100 {
                return Err(err(f(n), format!("{v} is out of range (1-100)")));
            }
        }
        if self.expect.is_empty() {
            return Err(err(f("expect"), "needs at least one status"));
        }
        Ok(())
    }
}

/// How an app's traffic reaches its replicas, beyond domains: what a route has. Everything
/// here is optional in the spec; the defaults are round robin, no slow start, no prefix, one
/// retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficPolicy {
    pub balancer: BalancerKind,
    pub health: HealthSpec,
    pub slowstart: Option<Duration>,
    pub path_prefix: Option<PathPrefix>,
    pub retries: u32,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        Self {
            balancer: BalancerKind::default(),
            health: HealthSpec::default(),
            slowstart: None,
            path_prefix: None,
            retries: DEFAULT_RETRIES,
        }
    }
}

impl TrafficPolicy {
    /// The route that serves an app: its hosts, this policy, the given backends, with the
    /// app's health check run continuously by the proxy's prober.
    pub fn route(
        &self,
        name: String,
        domains: Vec<Domain>,
        aliases: Vec<Domain>,
        backends: Vec<BackendSpec>,
    ) -> RouteSpec {
        RouteSpec {
            name: Some(name),
            domains,
            aliases,
            path_prefix: self.path_prefix.clone(),
            balancer: self.balancer.clone(),
            backends,
            health_check: Some(self.health.check()),
            slowstart: self.slowstart,
            retries: self.retries,
            ..RouteSpec::default()
        }
    }
}

fn is_default_balancer(b: &BalancerKind) -> bool {
    *b == BalancerKind::RoundRobin
}
fn default_retries() -> u32 {
    DEFAULT_RETRIES
}
fn is_default_retries(r: &u32) -> bool {
    *r == DEFAULT_RETRIES
}

/// `port` when a spec does not say.
pub fn default_port() -> u16 {
    8080
}
/// `replicas` when a spec does not say.
pub fn default_replicas() -> u32 {
    1
}
fn default_drain() -> Duration {
    Duration::from_secs(30)
}
fn default_deploy_timeout() -> Duration {
    Duration::from_secs(120)
}

/// What an operator asks to run for one app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Image reference (`name:tag`) or image id (`sha256:…`).
    pub image: String,
    /// Where the app answers. Empty: a worker (no route; healthy once its container runs
    /// steadily, see `AppSpec::is_worker`).
    #[serde(default)]
    pub domains: Vec<Domain>,
    #[serde(default)]
    pub aliases: Vec<Domain>,
    /// Port the app listens on inside the container.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    #[serde(default)]
    pub strategy: Strategy,
    /// Steps, analysis thresholds and stickiness of `strategy: canary`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<super::canary::CanarySpec>,
    #[serde(default)]
    pub health: HealthSpec,
    /// How requests are spread over the replicas (see `route::BalancerKind`): `round_robin`
    /// (default), `least_connections`, `sticky_cookie` (`cookie`, `indirect`), `uri_hash`
    /// (`key`), `source_ip`.
    #[serde(default, skip_serializing_if = "is_default_balancer")]
    pub balancer: BalancerKind,
    /// A replica that comes up ramps its weight from ~0 over this long (at most 1h).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub slowstart: Option<Duration>,
    /// Serve only this path prefix of the domains (several apps on one domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<PathPrefix>,
    /// Times a bodiless GET/HEAD/OPTIONS whose replica failed before answering is sent to
    /// another replica (0-5, default 1).
    #[serde(
        default = "default_retries",
        skip_serializing_if = "is_default_retries"
    )]
    pub retries: u32,
    /// A new replica must stay healthy this long after its first good check.
    #[serde(default, with = "humantime_serde")]
    pub min_ready: Duration,
    /// Longest wait for a draining replica's in-flight requests.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Longest wait for one new replica to become healthy before the deploy aborts.
    #[serde(default = "default_deploy_timeout", with = "humantime_serde")]
    pub deploy_timeout: Duration,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables (see [`Secret`]): values in clear only in a deploy
    /// request; serialised as a list of `{name, fingerprint}`, never with the value.
    #[serde(
        default,
        with = "secret_list",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub secrets: BTreeMap<String, Secret>,
    /// Docker bind/volume specs (`name:/path`, `/host:/path:ro`).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Signal that asks a replica to stop (`SIGTERM` when unset). Apps that ignore SIGTERM as
    /// PID 1 often stop on `SIGQUIT` or `SIGINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long a replica may take to stop before it is killed (`deploy.stop_grace` when
    /// unset).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_timeout: Option<Duration>,
    /// Replaces the image's `CMD` (e.g. `["./worker", "--queue", "mail"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's `ENTRYPOINT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Memory and CPU limits of each replica.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// When the image reference is pulled (`missing`: only when not present, the default;
    /// `always`: on every deploy, for moving tags like `:latest`; `never`).
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull: PullPolicy,
    /// Commands run around a deploy (`pre_deploy`: migrations before any replica changes).
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// Credentials for pulling `image` from a private registry. The password travels in the
    /// deploy request only: it is never stored or shown (rollbacks and repairs use the local
    /// image by id and need no pull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryAuth>,
}

/// `registry: {server, username, password}` of a deploy request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// Registry host (`registry.example.com`, `127.0.0.1:5000`); unset: the image's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    pub username: String,
    /// Only ever deserialised: a stored or listed spec has no password.
    #[serde(default, skip_serializing)]
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Deploy hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Runs once in a one-off container of the new image, with the app's env and network,
    /// after the image is there and before any replica changes; a non-zero exit aborts the
    /// deploy with nothing changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_deploy: Option<Hook>,
}

impl Hooks {
    fn is_empty(&self) -> bool {
        self.pre_deploy.is_none()
    }
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(300)
}

/// One hook: a command (replacing the image's CMD) and how long it may run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub command: Vec<String>,
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// When a deploy pulls its image reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    #[default]
    Missing,
    Always,
    Never,
}

impl PullPolicy {
    fn is_default(&self) -> bool {
        *self == PullPolicy::Missing
    }

    /// The policy a deploy runs with: the app's, lowered to the daemon's `deploy.pull`
    /// ceiling (`never` < `missing` < `always`). Under a `never` ceiling no deploy contacts a
    /// registry: the image must be on the server (uploaded, built, or loaded before).
    pub fn under(self, ceiling: PullPolicy) -> PullPolicy {
        fn rank(p: PullPolicy) -> u8 {
            match p {
                PullPolicy::Never => 0,
                PullPolicy::Missing => 1,
                PullPolicy::Always => 2,
            }
        }
        if rank(self) <= rank(ceiling) {
            self
        } else {
            ceiling
        }
    }
}

/// Per-replica limits. `memory` is a size (`256MiB`), `cpus` a number of CPUs (`0.5`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<super::config::ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
}

impl Resources {
    fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none()
    }
}

/// A CPU limit in thousandths of a CPU, written as a number (`0.5`, `2`) or a string (`"1.5"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "CpusRepr", into = "f64")]
pub struct Cpus(pub u64);

impl Cpus {
    /// Docker's `NanoCpus`.
    pub fn nano(self) -> i64 {
        i64::try_from(self.0.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CpusRepr {
    N(f64),
    S(String),
}

impl TryFrom<CpusRepr> for Cpus {
    type Error = String;
    fn try_from(r: CpusRepr) -> Result<Self, String> {
        let n = match r {
            CpusRepr::N(n) => n,
            CpusRepr::S(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("{s:?} is not a number of CPUs (e.g. 0.5)"))?,
        };
        if !(0.001..=1024.0).contains(&n) {
            return Err(format!("{n} is out of range (0.001 to 1024 CPUs)"));
        }
        Ok(Cpus((n * 1000.0).round() as u64))
    }
}

impl From<Cpus> for f64 {
    fn from(c: Cpus) -> f64 {
        c.0 as f64 / 1000.0
    }
}

/// Smallest memory limit Docker accepts.
pub const MIN_MEMORY: u64 = 6 << 20;

/// Longest `stop_timeout` an app may ask for.
pub const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(600);

/// Signal names Docker accepts for `stop_signal` (with or without the `SIG` prefix).
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "WINCH", "PWR", "STOP",
];

fn valid_signal(s: &str) -> bool {
    let name = s.strip_prefix("SIG").unwrap_or(s);
    SIGNALS.contains(&name) || name.parse::<u8>().is_ok_and(|n| (1..=64).contains(&n))
}

/// One secret of an app. Its value exists in clear only between the deploy request and
/// sealing, and while a container is created; the store keeps it sealed (encrypted with the
/// server's secrets key, see `store::secrets`) next to a keyed fingerprint, and everything
/// that shows a spec shows the name and the fingerprint only. `Debug` never prints the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    plain: Option<String>,
    sealed: Option<String>,
    fingerprint: Option<String>,
}

impl Secret {
    /// A value as a client sent it.
    pub fn plain(value: impl Into<String>) -> Self {
        Secret {
            plain: Some(value.into()),
            ..Secret::default()
        }
    }

    /// A stored secret: its sealed form and fingerprint.
    pub fn sealed(sealed: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        Secret {
            plain: None,
            sealed: Some(sealed.into()),
            fingerprint: Some(fingerprint.into()),
        }
    }

    /// The value in clear, if this secret came from a request and is not yet sealed.
    pub fn value(&self) -> Option<&str> {
        self.plain.as_deref()
    }

    /// The sealed form (what the store keeps).
    pub fn sealed_value(&self) -> Option<&str> {
        self.sealed.as_deref()
    }

    /// `sha256:` + hex of a keyed hash of the value: equal values show equal fingerprints.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Keeps the sealed form only (the value in clear is dropped).
    pub fn seal(&mut self, sealed: String, fingerprint: String) {
        self.plain = None;
        self.sealed = Some(sealed);
        self.fingerprint = Some(fingerprint);
    }

    /// Keeps the fingerprint only (what a listing read back from JSON carries).
    fn redacted(fingerprint: Option<String>) -> Self {
        Secret {
            plain: None,
            sealed: None,
            fingerprint,
        }
    }

    /// Sets the sealed form of a secret read back from its redacted JSON.
    pub fn set_sealed(&mut self, sealed: String) {
        self.sealed = Some(sealed);
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret({})",
            self.fingerprint.as_deref().unwrap_or("unsealed, redacted")
        )
    }
}

/// Serde of `AppSpec::secrets`. Out: `[{"name": N, "fingerprint": F}]`, never a value or its
/// sealed form. In: `{"NAME": "value"}` (a deploy request) or the list form (a spec read back,
/// carrying no values).
mod secret_list {
    use super::Secret;
    use serde::de::{self, MapAccess, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shown {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fingerprint: Option<String>,
    }

    pub fn serialize<S: Serializer>(m: &BTreeMap<String, Secret>, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(m.len()))?;
        for (name, secret) in m {
            seq.serialize_element(&Shown {
                name: name.clone(),
                fingerprint: secret.fingerprint.clone(),
            })?;
        }
        seq.end()
    }

    struct V;

    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, Secret>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of NAME: value strings")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = a.next_entry::<String, String>()? {
                if out.insert(k.clone(), Secret::plain(v)).is_some() {
                    return Err(de::Error::custom(format!("secret {k} appears twice")));
                }
            }
            Ok(out)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(s) = a.next_element::<Shown>()? {
                out.insert(s.name, Secret::redacted(s.fingerprint));
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Secret>, D::Error> {
        d.deserialize_any(V)
    }
}

/// A spec problem, naming the field (`replicas`, `env.FOO`, `volumes[1]`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// Most replicas one app may ask for.
pub const MAX_REPLICAS: u32 = 64;

/// Checks an app name: 1-63 chars of `a-z0-9-`, starting with a letter or digit.
pub fn validate_app_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(
            "app",
            format!("{name:?} must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'"),
        ))
    }
}

/// How long a worker's container must run without restarting to pass its gate when the
/// spec sets no `min_ready`.
pub const WORKER_STEADY: Duration = Duration::from_secs(3);

impl AppSpec {
    /// A spec of `image` with every other field at the default a request that omits it
    /// gets (the same defaults serde applies): what `berth deploy` starts from.
    pub fn new(image: impl Into<String>) -> AppSpec {
        AppSpec {
            image: image.into(),
            domains: Vec::new(),
            aliases: Vec::new(),
            port: default_port(),
            replicas: default_replicas(),
            strategy: Strategy::default(),
            canary: None,
            health: HealthSpec::default(),
            balancer: BalancerKind::default(),
            slowstart: None,
            path_prefix: None,
            retries: default_retries(),
            min_ready: Duration::ZERO,
            drain_timeout: default_drain(),
            deploy_timeout: default_deploy_timeout(),
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            volumes: Vec::new(),
            stop_signal: None,
            stop_timeout: None,
            command: None,
            entrypoint: None,
            resources: Resources::default(),
            pull: PullPolicy::default(),
            hooks: Hooks::default(),
            registry: None,
        }
    }

    /// An app without domains: a background worker (no route, no HTTP health check).
    pub fn is_worker(&self) -> bool {
        self.domains.is_empty()
    }

    /// The Host header of HTTP health checks (workers have none).
    pub fn health_host(&self) -> String {
        self.domains
            .first()
            .map_or_else(|| "localhost".to_string(), |d| d.to_string())
    }

    /// A worker's gate: how long its container must run without restarting.
    pub fn worker_steady(&self) -> Duration {
        if self.min_ready.is_zero() {
            WORKER_STEADY
        } else {
            self.min_ready
        }
    }

    /// Checks everything serde cannot: the first problem found, naming its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let image = self.image.trim();
        if image.is_empty() {
            return Err(err("image", "must not be empty"));
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("image", format!("{image:?} contains whitespace")));
        }
        if self.is_worker() {
            if !self.aliases.is_empty() {
                return Err(err(
                    "aliases",
                    "an app without domains (a worker) has no route, so no aliases",
                ));
            }
            if self.health.path_given {
                return Err(err(
                    "health.path",
                    "an app without domains (a worker) gets no HTTP health check: it is healthy \
                     once its container has run without restarting for min_ready (default \
                     3s), or when its Docker HEALTHCHECK says so; remove health.path or add \
                     domains",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            if !seen.insert(d.as_str()) {
                return Err(err(format!("domains[{i}]"), format!("{d} appears twice")));
            }
        }
        for (i, d) in self.aliases.iter().enumerate() {
            if !seen.insert(d.as_str()) {
                return Err(err(
                    format!("aliases[{i}]"),
                    format!("{d} is already a domain or alias of this app"),
                ));
            }
        }
        if self.port == 0 {
            return Err(err("port", "must be 1-65535"));
        }
        if self.replicas == 0 || self.replicas > MAX_REPLICAS {
            return Err(err(
                "replicas",
                format!("{} is out of range (1-{MAX_REPLICAS})", self.replicas),
            ));
        }
        self.health.validate("health")?;
        match (&self.canary, self.strategy) {
            (Some(c), Strategy::Canary) => {
                if self.is_worker() {
                    return Err(err(
                        "strategy",
                        "canary needs domains: a worker has no traffic to split",
                    ));
                }
                c.validate("canary")?;
            }
            (None, Strategy::SideBySide) if self.is_worker() => {
                return Err(err(
                    "strategy",
                    "side_by_side needs domains: a worker has no traffic to split",
                ))
            }
            (None, Strategy::Canary) => {
                return Err(err(
                    "canary",
                    "strategy: canary needs canary.steps (e.g. [{weight: 10%, hold: 1m}])",
                ))
            }
            (Some(_), _) => {
                return Err(err(
                    "canary",
                    "only used with strategy: canary (remove it or set the strategy)",
                ))
            }
            (None, _) => {}
        }
        if self
            .slowstart
            .is_some_and(|d| d > Duration::from_secs(3600))
        {
            return Err(err("slowstart", "must be at most 1h"));
        }
        if self.retries > MAX_RETRIES {
            return Err(err(
                "retries",
                format!("{} is out of range (0-{MAX_RETRIES})", self.retries),
            ));
        }
        if self.deploy_timeout < self.health.timeout {
            return Err(err(
                "deploy_timeout",
                "must be at least as long as health.timeout",
            ));
        }
        let env_name_ok = |k: &str| {
            !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        for k in self.env.keys() {
            if !env_name_ok(k) {
                return Err(err(
                    format!("env.{k}"),
                    "variable names are letters, digits and '_', not starting with a digit",
                ));
            }
        }
        for (k, s) in &self.secrets {
            if !env_name_ok(k) {
                return Err(err(
                    format!("secrets.{k}"),
                    "variable names are letters, digits and '_', not starting with a digit",
                ));
            }
            if self.env.contains_key(k) {
                return Err(err(
                    format!("secrets.{k}"),
                    "is also set in env; a variable is either plain or secret",
                ));
            }
            if s.value().is_none() && s.sealed_value().is_none() {
                return Err(err(
                    format!("secrets.{k}"),
                    "has no value (send secrets as an object of NAME: value)",
                ));
            }
            if s.value().is_some_and(|v| v.contains('\0')) {
                return Err(err(format!("secrets.{k}"), "contains a NUL byte"));
            }
        }
        for (k, v) in &self.env {
            if v.contains('\0') {
                return Err(err(
                    format!("env.{k}"),
                    "contains a NUL byte, which no process environment can hold",
                ));
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            parse_volume(v).map_err(|m| err(format!("volumes[{i}]"), m))?;
        }
        if let Some(sig) = &self.stop_signal {
            if !valid_signal(sig) {
                return Err(err(
                    "stop_signal",
                    format!("{sig:?} is not a signal name (SIGTERM, SIGQUIT, SIGINT, ...)"),
                ));
            }
        }
        if let Some(t) = self.stop_timeout {
            if t > MAX_STOP_TIMEOUT {
                return Err(err("stop_timeout", "must be at most 10m"));
            }
        }
        for (field, argv) in [("command", &self.command), ("entrypoint", &self.entrypoint)] {
            if let Some(argv) = argv {
                if argv.is_empty() {
                    return Err(err(
                        field,
                        "must not be empty (leave it out for the image's)",
                    ));
                }
                if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
                    return Err(err(format!("{field}[{i}]"), "contains a NUL byte"));
                }
            }
        }
        if let Some(r) = &self.registry {
            if r.username.trim().is_empty() {
                return Err(err("registry.username", "must not be empty"));
            }
            if let Some(server) = &r.server {
                if server.is_empty() || server.chars().any(|c| c.is_whitespace() || c == '/') {
                    return Err(err(
                        "registry.server",
                        format!("{server:?} must be a host or host:port"),
                    ));
                }
            }
        }
        if let Some(h) = &self.hooks.pre_deploy {
            if h.command.is_empty() {
                return Err(err("hooks.pre_deploy.command", "must not be empty"));
            }
            if let Some(i) = h.command.iter().position(|a| a.contains('\0')) {
                return Err(err(
                    format!("hooks.pre_deploy.command[{i}]"),
                    "contains a NUL byte",
                ));
            }
            if h.timeout.is_zero() || h.timeout > Duration::from_secs(6 * 3600) {
                return Err(err("hooks.pre_deploy.timeout", "must be between 1s and 6h"));
            }
        }
        if let Some(m) = self.resources.memory {
            if m.0 < MIN_MEMORY {
                return Err(err(
                    "resources.memory",
                    format!("{} is below Docker's minimum of 6MiB", m.0),
                ));
            }
        }
        Ok(())
    }

    /// The app's traffic policy (balancer, health, slow start, prefix, retries).
    pub fn traffic(&self) -> TrafficPolicy {
        TrafficPolicy {
            balancer: self.balancer.clone(),
            health: self.health.clone(),
            slowstart: self.slowstart,
            path_prefix: self.path_prefix.clone(),
            retries: self.retries,
        }
    }

    /// The registry credentials of a deploy request that pulls: `None` without `registry`; an
    /// error naming `registry.password` when it is missing (stored specs never have it, which
    /// is fine: rollbacks use the local image by id).
    pub fn registry_login(&self) -> Result<Option<(Option<String>, String, String)>, SpecError> {
        let Some(r) = &self.registry else {
            return Ok(None);
        };
        match r.password.as_deref() {
            Some(p) if !p.is_empty() => Ok(Some((r.server.clone(), r.username.clone(), p.into()))),
            _ => Err(err(
                "registry.password",
                "missing (in berth.yaml, password_env names the environment variable that \
                 holds it)",
            )),
        }
    }

    /// The host paths this spec bind-mounts (`/host/path:/path`), with their index in
    /// `volumes`. Named volumes are not host paths. Call after [`AppSpec::validate`].
    pub fn host_mounts(&self) -> impl Iterator<Item = (usize, &str)> {
        self.volumes.iter().enumerate().filter_map(|(i, v)| {
            parse_volume(v)
                .ok()
                .and_then(|m| m.host_path().map(|p| (i, p)))
        })
    }

    /// Refuses host bind mounts unless the daemon allows them (`deploy.allow_host_mounts`):
    /// a token that may deploy one app must not be able to mount `/` or the Docker socket.
    pub fn check_host_mounts(&self, allowed: bool) -> Result<(), SpecError> {
        if allowed {
            return Ok(());
        }
        match self.host_mounts().next() {
            Some((i, path)) => Err(err(
                format!("volumes[{i}]"),
                format!(
                    "{path:?} is a host path; bind mounts of host paths are refused unless the \
                     daemon sets deploy.allow_host_mounts: true (use a named volume, NAME:/path)"
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Where a volume spec's data comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSource<'a> {
    /// A Docker named volume (`data:/var/lib/app`).
    Named(&'a str),
    /// A host path bind-mounted into the container (`/srv/data:/data`).
    HostPath(&'a str),
}

/// One parsed `volumes` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeMount<'a> {
    pub source: VolumeSource<'a>,
    pub target: &'a str,
    pub read_only: bool,
}

impl<'a> VolumeMount<'a> {
    pub fn host_path(&self) -> Option<&'a str> {
        match self.source {
            VolumeSource::HostPath(p) => Some(p),
            VolumeSource::Named(_) => None,
        }
    }
}

/// True for a Docker volume name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*` (Docker's own rule).
fn is_volume_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// An absolute path without `.`/`..` segments and without NUL: what Docker mounts as given.
fn is_clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !p.contains('\0') && p.split('/').all(|seg| seg != "." && seg != "..")
}

/// Parses `NAME:/path`, `/host/path:/path` and either with `:ro`/`:rw` (plus SELinux `z`/`Z`).
/// A relative host path (`./x`, `../x`) is neither a volume name nor a host path: refused,
/// because Docker would resolve it against its own working directory, not the app's.
pub fn parse_volume(v: &str) -> Result<VolumeMount<'_>, String> {
    let shape = || format!("{v:?} must look like NAME:/path, /host/path:/path or …:/path:ro");
    let parts: Vec<&str> = v.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(shape());
    }
    let source = if parts[0].starts_with('/') {
        if !is_clean_absolute(parts[0]) {
            return Err(format!(
                "{v:?}: host path {:?} must be absolute without '.' or '..' segments",
                parts[0]
            ));
        }
        VolumeSource::HostPath(parts[0])
    } else if is_volume_name(parts[0]) {
        VolumeSource::Named(parts[0])
    } else {
        return Err(format!(
            "{v:?}: {:?} is neither a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*) nor an absolute \
             host path",
            parts[0]
        ));
    };
    if !is_clean_absolute(parts[1]) {
        return Err(format!(
            "{v:?}: container path {:?} must be absolute without '.' or '..' segments",
            parts[1]
        ));
    }
    let mut read_only = false;
    if let Some(opts) = parts.get(2) {
        for o in opts.split(',') {
            match o {
                "ro" => read_only = true,
                "rw" | "z" | "Z" => {}
                _ => return Err(shape()),
            }
        }
    }
    Ok(VolumeMount {
        source,
        target: parts[1],
        read_only,
    })
}

/// One old replica, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldReplica {
    pub container_id: String,
}

/// One action of a deploy. New replicas are numbered by slot (0..replicas).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create and start new replica `slot`.
    StartNew { slot: u32 },
    /// Wait until new replica `slot` answers its health check (then `min_ready`).
    WaitHealthy { slot: u32 },
    /// Add new replica `slot` to the app's route.
    RouteNew { slot: u32 },
    /// Set an old replica to drain: no new requests.
    DrainOld { container_id: String },
    /// Wait until a draining replica has no in-flight requests (bounded by `drain_timeout`).
    WaitDrained { container_id: String },
    /// Stop an old replica (it is removed once the deploy succeeds).
    StopOld { container_id: String },
}

/// The steps that turn `current` (replicas of the running version) into `desired`.
pub fn plan(current: &[OldReplica], desired: &AppSpec) -> Vec<Step> {
    let new = desired.replicas;
    let mut steps = Vec::new();
    match desired.strategy {
        // A canary runs its own steps (`deploy::canary`); this plan is its fallback when
        // there is no stable version to compare with (a first deploy).
        // Side by side too: it starts its replicas next to the running ones itself
        // (`deploy::versions`); this plan is its first deploy.
        Strategy::Rolling | Strategy::Canary | Strategy::SideBySide => {
            let rounds = (new as usize).max(current.len());
            for i in 0..rounds {
                if i < new as usize {
                    let slot = i as u32;
                    steps.push(Step::StartNew { slot });
                    steps.push(Step::WaitHealthy { slot });
                    steps.push(Step::RouteNew { slot });
                }
                if let Some(old) = current.get(i) {
                    let id = old.container_id.clone();
                    steps.push(Step::DrainOld {
                        container_id: id.clone(),
                    });
                    steps.push(Step::WaitDrained {
                        container_id: id.clone(),
                    });
                    steps.push(Step::StopOld { container_id: id });
                }
            }
        }
        Strategy::Replace => {
            for old in current {
                steps.push(Step::DrainOld {
                    container_id: old.container_id.clone(),
                });
            }
            for old in current {
                steps.push(Step::WaitDrained {
                    container_id: old.container_id.clone(),
                });
                steps.push(Step::StopOld {
                    container_id: old.container_id.clone(),
                });
            }
            for slot in 0..new {
                steps.push(Step::StartNew { slot });
            }
            for slot in 0..new {
                steps.push(Step::WaitHealthy { slot });
                steps.push(Step::RouteNew { slot });
            }
        }
    }
    steps
}

/// A past deployment, as image pruning sees it (newest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUse {
    pub image_id: String,
    pub succeeded: bool,
}

/// Image ids to delete: everything not used by one of the `keep` newest succeeded deployments
/// nor listed in `in_use`. `history` is newest first.
pub fn images_to_prune(history: &[ImageUse], keep: usize, in_use: &[String]) -> Vec<String> {
    let mut kept: BTreeSet<&str> = in_use.iter().map(String::as_str).collect();
    for h in history.iter().filter(|h| h.succeeded).take(keep) {
        kept.insert(&h.image_id);
    }
    let mut out = Vec::new();
    for h in history {
        if !h.image_id.is_empty()
            && !kept.contains(h.image_id.as_str())
            && !out.contains(&h.image_id)
        {
            out.push(h.image_id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> AppSpec {
        serde_json::from_str(json).expect("test spec parses")
    }

    fn base() -> AppSpec {
        spec(r#"{"image":"demo:v1","domains":["a.example.com"]}"#)
    }

    #[test]
    fn new_is_what_an_omitted_field_means() {
        assert_eq!(AppSpec::new("demo:v1"), spec(r#"{"image":"demo:v1"}"#));
        // And it survives the trip through its own JSON (what `berth deploy` sends).
        let s = AppSpec::new("demo:v1");
        let back: AppSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn defaults() {
        let s = base();
        assert_eq!(s.port, 8080);
        assert_eq!(s.replicas, 1);
        assert_eq!(s.strategy, Strategy::Rolling);
        assert_eq!(s.health.path, "/");
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
        s.validate().unwrap();
        let s = spec(
            r#"{"image":"x","domains":["a.com"],"health":{"path":"/up","interval":"1s","timeout":"300ms"},"min_ready":"2s","strategy":"replace"}"#,
        );
        assert_eq!(s.health.interval, Duration::from_secs(1));
        assert_eq!(s.health.timeout, Duration::from_millis(300));
        assert_eq!(s.min_ready, Duration::from_secs(2));
        assert_eq!(s.strategy, Strategy::Replace);
    }

    #[test]
    fn secrets_come_in_clear_and_go_out_as_fingerprints() {
        let mut s = spec(
            r#"{"image":"x","domains":["a.com"],"env":{"MODE":"prod"},"secrets":{"DB_PASSWORD":"hunter2"}}"#,
        );
        s.validate().unwrap();
        assert_eq!(s.secrets["DB_PASSWORD"].value(), Some("hunter2"));
        // Neither Debug nor JSON carries the value, sealed or not.
        assert!(!format!("{s:?}").contains("hunter2"));
        let out = serde_json::to_string(&s).unwrap();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(
            out.contains(r#""secrets":[{"name":"DB_PASSWORD"}]"#),
            "{out}"
        );
        s.secrets
            .get_mut("DB_PASSWORD")
            .unwrap()
            .seal("v1:sealed".into(), "sha256:00112233".into());
        s.validate().unwrap();
        let out = serde_json::to_string(&s).unwrap();
        assert!(
            out.contains(r#""secrets":[{"name":"DB_PASSWORD","fingerprint":"sha256:00112233"}]"#),
            "{out}"
        );
        assert!(!out.contains("v1:sealed"), "{out}");
        assert_eq!(
            format!("{:?}", s.secrets["DB_PASSWORD"]),
            "Secret(sha256:00112233)"
        );
        // Read back: the fingerprint, no value; validation wants a value or a sealed form.
        let back: AppSpec = serde_json::from_str(&out).unwrap();
        assert_eq!(
            back.secrets["DB_PASSWORD"].fingerprint(),
            Some("sha256:00112233")
        );
        assert_eq!(back.secrets["DB_PASSWORD"].value(), None);
        assert_eq!(back.validate().unwrap_err().field, "secrets.DB_PASSWORD");
        // No secrets: the field is left out (specs stored before secrets existed read back).
        assert!(!serde_json::to_string(&base()).unwrap().contains("secrets"));
    }

    #[test]
    fn env_values_and_volume_paths_are_checked_before_anything_runs() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"image":"x","domains":["a.com"],"env":{"A":"x\u0000y"}}"#,
                "env.A",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["../x:/y"]}"#,
                "volumes[0]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["./x:/y"]}"#,
                "volumes[0]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["d:/y","/a/../b:/y"]}"#,
                "volumes[1]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["d:relative"]}"#,
                "volumes[0]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["d:/y/../z"]}"#,
                "volumes[0]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["d:/y:rx"]}"#,
                "volumes[0]",
            ),
        ];
        for (json, field) in cases {
            let e = spec(json).validate().unwrap_err();
            assert_eq!(&e.field, field, "{json}: {e}");
        }
        let ok = spec(
            r#"{"image":"x","domains":["a.com"],"volumes":["data:/var/lib/x","my_vol.2:/d:ro","/srv/a:/a:ro,z"]}"#,
        );
        ok.validate().unwrap();
        let mounts: Vec<_> = ok
            .volumes
            .iter()
            .map(|v| parse_volume(v).unwrap())
            .collect();
        assert_eq!(mounts[0].source, VolumeSource::Named("data"));
        assert!(mounts[1].read_only);
        assert_eq!(mounts[2].host_path(), Some("/srv/a"));
    }

    #[test]
    fn stop_signal_and_timeout() {
        let s = spec(
            r#"{"image":"x","domains":["a.com"],"stop_signal":"SIGQUIT","stop_timeout":"3s"}"#,
        );
        s.validate().unwrap();
        assert_eq!(s.stop_timeout, Some(Duration::from_secs(3)));
        assert!(base().stop_signal.is_none() && base().stop_timeout.is_none());
        // Unset fields stay out of stored specs (older rows and newer rows read alike).
        let stored = serde_json::to_value(base()).unwrap();
        assert!(stored.get("stop_signal").is_none() && stored.get("stop_timeout").is_none());
        for (json, field) in [
            (
                r#"{"image":"x","domains":["a.com"],"stop_signal":"SIGFOO"}"#,
                "stop_signal",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"stop_signal":"99"}"#,
                "stop_signal",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"stop_timeout":"11m"}"#,
                "stop_timeout",
            ),
        ] {
            assert_eq!(spec(json).validate().unwrap_err().field, field, "{json}");
        }
        for ok in ["TERM", "SIGINT", "9"] {
            assert!(valid_signal(ok), "{ok}");
        }
    }

    #[test]
    fn command_entrypoint_resources_and_pull() {
        let s = spec(
            r#"{"image":"x","domains":["a.com"],"command":["./w","--q","mail"],"entrypoint":["/bin/sh","-c"],"resources":{"memory":"256MiB","cpus":0.5},"pull":"always"}"#,
        );
        s.validate().unwrap();
        assert_eq!(s.resources.memory.unwrap().0, 256 << 20);
        assert_eq!(s.resources.cpus.unwrap().nano(), 500_000_000);
        assert_eq!(s.pull, PullPolicy::Always);
        let again: AppSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(again, s, "stored specs read back the same");
        assert_eq!(
            spec(r#"{"image":"x","domains":["a.com"],"resources":{"cpus":"1.5"}}"#)
                .resources
                .cpus,
            Some(Cpus(1500))
        );
        // Unset fields stay out of stored specs.
        let stored = serde_json::to_value(base()).unwrap();
        for k in ["command", "entrypoint", "resources", "pull", "hooks"] {
            assert!(stored.get(k).is_none(), "{k}");
        }
        for (json, field) in [
            (
                r#"{"image":"x","domains":["a.com"],"command":[]}"#,
                "command",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"hooks":{"pre_deploy":{"command":[]}}}"#,
                "hooks.pre_deploy.command",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"hooks":{"pre_deploy":{"command":["m"],"timeout":"0s"}}}"#,
                "hooks.pre_deploy.timeout",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"entrypoint":["a\u0000"]}"#,
                "entrypoint[0]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"resources":{"memory":"1MiB"}}"#,
                "resources.memory",
            ),
        ] {
            assert_eq!(spec(json).validate().unwrap_err().field, field, "{json}");
        }
        for bad in [
            r#"{"image":"x","domains":["a.com"],"resources":{"cpus":0}}"#,
            r#"{"image":"x","domains":["a.com"],"resources":{"cpus":"lots"}}"#,
            r#"{"image":"x","domains":["a.com"],"resources":{"gpus":1}}"#,
            r#"{"image":"x","domains":["a.com"],"pull":"sometimes"}"#,
        ] {
            assert!(serde_json::from_str::<AppSpec>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_password_is_never_serialised_or_printed() {
        let s = spec(
            r#"{"image":"r.test/x:1","domains":["a.com"],"registry":{"server":"r.test","username":"ci","password":"hunter2"}}"#,
        );
        s.validate().unwrap();
        let stored = serde_json::to_string(&s).unwrap();
        assert!(!stored.contains("hunter2"), "{stored}");
        assert!(stored.contains(r#""username":"ci""#), "{stored}");
        assert!(!format!("{s:?}").contains("hunter2"));
        // What was stored reads back without a password (and is not re-validated as a request).
        let back: AppSpec = serde_json::from_str(&stored).unwrap();
        assert!(back.registry.unwrap().password.is_none());
        assert_eq!(
            spec(r#"{"image":"x","domains":["a.com"],"registry":{"username":"ci"}}"#)
                .registry_login()
                .unwrap_err()
                .field,
            "registry.password"
        );
        let (server, user, pass) = s.registry_login().unwrap().unwrap();
        assert_eq!(
            (server.as_deref(), user.as_str(), pass.as_str()),
            (Some("r.test"), "ci", "hunter2")
        );
        for (json, field) in [
            (
                r#"{"image":"x","domains":["a.com"],"registry":{"username":" ","password":"p"}}"#,
                "registry.username",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"registry":{"server":"a/b","username":"u","password":"p"}}"#,
                "registry.server",
            ),
        ] {
            assert_eq!(spec(json).validate().unwrap_err().field, field, "{json}");
        }
    }

    #[test]
    fn host_mounts_need_the_daemons_permission() {
        for v in [
            "/:/host",
            "/var/run/docker.sock:/var/run/docker.sock",
            "/etc:/e:ro",
        ] {
            let s = spec(&format!(
                r#"{{"image":"x","domains":["a.com"],"volumes":["data:/d",{v:?}]}}"#
            ));
            s.validate().unwrap();
            let e = s.check_host_mounts(false).unwrap_err();
            assert_eq!(e.field, "volumes[1]", "{v}");
            assert!(e.message.contains("deploy.allow_host_mounts"), "{e}");
            s.check_host_mounts(true).unwrap();
        }
        let named = spec(r#"{"image":"x","domains":["a.com"],"volumes":["data:/d"]}"#);
        named.check_host_mounts(false).unwrap();
    }

    #[test]
    fn workers_have_no_domains_and_keep_their_health_spec_path_free() {
        let w = spec(r#"{"image":"x","replicas":2,"health":{"interval":"1s"}}"#);
        assert!(w.is_worker());
        w.validate().unwrap();
        assert_eq!(w.worker_steady(), WORKER_STEADY);
        assert_eq!(w.health_host(), "localhost");
        // Stored and read back (rollback validates again): still without a path.
        let back: AppSpec = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back, w);
        back.validate().unwrap();
        let slow = spec(r#"{"image":"x","domains":[],"min_ready":"7s"}"#);
        assert_eq!(slow.worker_steady(), Duration::from_secs(7));
        // A web app's given path survives the round trip; a defaulted one stays defaulted.
        let web = spec(r#"{"image":"x","domains":["a.com"],"health":{"path":"/up"}}"#);
        let back: AppSpec = serde_json::from_str(&serde_json::to_string(&web).unwrap()).unwrap();
        assert_eq!(
            (back.health.path.as_str(), back.health.path_given),
            ("/up", true)
        );
        let plain = spec(r#"{"image":"x","domains":["a.com"]}"#);
        assert_eq!(
            (plain.health.path.as_str(), plain.health.path_given),
            ("/", false)
        );
        assert!(!plain.is_worker());
    }

    #[test]
    fn validation_names_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"image":" ","domains":["a.com"]}"#, "image"),
            (r#"{"image":"a b","domains":["a.com"]}"#, "image"),
            // No domains: a worker, which has no HTTP check and no route.
            (
                r#"{"image":"x","domains":[],"health":{"path":"/up"}}"#,
                "health.path",
            ),
            (r#"{"image":"x","health":{"path":"/"}}"#, "health.path"),
            (r#"{"image":"x","aliases":["a.com"]}"#, "aliases"),
            (r#"{"image":"x","domains":["a.com","a.com"]}"#, "domains[1]"),
            (
                r#"{"image":"x","domains":["a.com"],"aliases":["a.com"]}"#,
                "aliases[0]",
            ),
            (r#"{"image":"x","domains":["a.com"],"port":0}"#, "port"),
            (
                r#"{"image":"x","domains":["a.com"],"replicas":0}"#,
                "replicas",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"replicas":65}"#,
                "replicas",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"health":{"path":"up"}}"#,
                "health.path",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"health":{"interval":"1ms"}}"#,
                "health.interval",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"health":{"fall":0}}"#,
                "health.fall",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"health":{"rise":101}}"#,
                "health.rise",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"health":{"expect":[]}}"#,
                "health.expect",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"health":{"timeout":"10m"},"deploy_timeout":"1h"}"#,
                "health.timeout",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"slowstart":"2h"}"#,
                "slowstart",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"retries":6}"#,
                "retries",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"health":{"timeout":"5s"},"deploy_timeout":"1s"}"#,
                "deploy_timeout",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"env":{"1X":"y"}}"#,
                "env.1X",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"env":{"A-B":"y"}}"#,
                "env.A-B",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"secrets":{"A-B":"y"}}"#,
                "secrets.A-B",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"env":{"K":"1"},"secrets":{"K":"2"}}"#,
                "secrets.K",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"secrets":[{"name":"K"}]}"#,
                "secrets.K",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["data:/d","nopath"]}"#,
                "volumes[1]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"volumes":["data:/d:rx"]}"#,
                "volumes[0]",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"strategy":"canary"}"#,
                "canary",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"canary":{"steps":[{"weight":5,"hold":"1m"}]}}"#,
                "canary",
            ),
            (
                r#"{"image":"x","strategy":"canary","canary":{"steps":[{"weight":5,"hold":"1m"}]}}"#,
                "strategy",
            ),
            (
                r#"{"image":"x","domains":["a.com"],"strategy":"canary","canary":{"steps":[{"weight":5,"hold":"1m"}],"analysis":{"max_error_rate":"101%"}}}"#,
                "canary.analysis.max_error_rate",
            ),
        ];
        for (json, field) in cases {
            let e = spec(json).validate().expect_err(json);
            assert_eq!(e.field, *field, "{json}: {e}");
        }
        // serde-level errors name the field too.
        let e = serde_json::from_str::<AppSpec>(r#"{"image":"x","domains":["a b"]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid host name"), "{e}");
        let e = serde_json::from_str::<AppSpec>(r#"{"image":"x","domains":["a.com"],"bogus":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
        spec(r#"{"image":"x","domains":["a.com"],"volumes":["/srv/x:/x:ro","v:/y"],"env":{"A_1":"b"}}"#)
            .validate()
            .unwrap();
        assert!(validate_app_name("web-1").is_ok());
        for bad in ["", "-a", "Web", "a_b", &"a".repeat(64)] {
            assert_eq!(validate_app_name(bad).unwrap_err().field, "app", "{bad}");
        }
    }

    fn olds(n: usize) -> Vec<OldReplica> {
        (0..n)
            .map(|i| OldReplica {
                container_id: format!("o{i}"),
            })
            .collect()
    }

    /// Compact rendering of a plan, for table-driven tests.
    fn render(steps: &[Step]) -> String {
        steps
            .iter()
            .map(|s| match s {
                Step::StartNew { slot } => format!("start{slot}"),
                Step::WaitHealthy { slot } => format!("healthy{slot}"),
                Step::RouteNew { slot } => format!("route{slot}"),
                Step::DrainOld { container_id } => format!("drain:{container_id}"),
                Step::WaitDrained { container_id } => format!("drained:{container_id}"),
                Step::StopOld { container_id } => format!("stop:{container_id}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn plans() {
        let cases: &[(Strategy, usize, u32, &str)] = &[
            (
                Strategy::Rolling,
                0,
                2,
                "start0 healthy0 route0 start1 healthy1 route1",
            ),
            (
                Strategy::Rolling,
                2,
                2,
                "start0 healthy0 route0 drain:o0 drained:o0 stop:o0 \
                 start1 healthy1 route1 drain:o1 drained:o1 stop:o1",
            ),
            (
                Strategy::Rolling,
                3,
                1,
                "start0 healthy0 route0 drain:o0 drained:o0 stop:o0 \
                 drain:o1 drained:o1 stop:o1 drain:o2 drained:o2 stop:o2",
            ),
            (
                Strategy::Rolling,
                1,
                2,
                "start0 healthy0 route0 drain:o0 drained:o0 stop:o0 start1 healthy1 route1",
            ),
            (
                Strategy::Replace,
                2,
                2,
                "drain:o0 drain:o1 drained:o0 stop:o0 drained:o1 stop:o1 \
                 start0 start1 healthy0 route0 healthy1 route1",
            ),
            (Strategy::Replace, 0, 1, "start0 healthy0 route0"),
        ];
        for (strategy, old, new, want) in cases {
            let mut s = base();
            s.strategy = *strategy;
            s.replicas = *new;
            let got = render(&plan(&olds(*old), &s));
            let want = want.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(got, want, "{strategy:?} {old}→{new}");
        }
    }

    /// Invariant of rolling plans: routed healthy replicas never drop below min(old, new)
    /// once the first new one is routed, and at most one extra replica runs at a time.
    #[test]
    fn rolling_keeps_capacity() {
        for old in 0..5usize {
            for new in 1..5u32 {
                let mut s = base();
                s.replicas = new;
                let steps = plan(&olds(old), &s);
                let (mut routed, mut running) = (old as i64, old as i64);
                let floor = old.min(new as usize) as i64;
                let mut peak = running;
                for st in &steps {
                    match st {
                        Step::StartNew { .. } => running += 1,
                        Step::RouteNew { .. } => routed += 1,
                        Step::DrainOld { .. } => {
                            routed -= 1;
                            assert!(routed >= floor, "{old}→{new}: {steps:?}");
                        }
                        Step::StopOld { .. } => running -= 1,
                        _ => {}
                    }
                    peak = peak.max(running);
                }
                assert!(peak <= old.max(new as usize) as i64 + 1, "{old}→{new}");
                assert_eq!(routed, new as i64);
                assert_eq!(running, new as i64);
            }
        }
    }

    #[test]
    fn prune_keeps_last_n_succeeded_and_in_use() {
        let h = |id: &str, ok: bool| ImageUse {
            image_id: id.into(),
            succeeded: ok,
        };
        let history = vec![
            h("i6", true),
            h("i5", false),
            h("i4", true),
            h("i3", true),
            h("i2", true),
            h("i1", true),
            h("i4", true),
        ];
        assert_eq!(
            images_to_prune(&history, 2, &[]),
            vec!["i5", "i3", "i2", "i1"]
        );
        assert_eq!(
            images_to_prune(&history, 2, &["i1".to_string()]),
            vec!["i5", "i3", "i2"]
        );
        assert_eq!(images_to_prune(&history, 10, &[]), vec!["i5"]);
        assert!(images_to_prune(&[], 5, &[]).is_empty());
    }

    #[test]
    fn traffic_policy_builds_the_app_route() {
        use crate::model::route::{BalancerKind, CheckMethod, StatusPattern};
        let s = spec(
            r#"{"image":"x","domains":["a.com"],"balancer":{"kind":"sticky_cookie","indirect":true},
            "health":{"path":"/up","fall":5,"rise":1,"expect":["204"],"method":"HEAD","interval":"1s"},
            "slowstart":"10s","path_prefix":"/api","retries":0}"#,
        );
        s.validate().unwrap();
        let r = s.traffic().route(
            "app/web".into(),
            s.domains.clone(),
            vec![],
            vec![crate::model::route::BackendSpec {
                id: Some("c1".into()),
                address: "10.0.0.2:8080".parse().unwrap(),
                weight: 1,
                state: Default::default(),
            }],
        );
        assert_eq!(
            r.balancer,
            BalancerKind::StickyCookie {
                cookie: "BERTH_SERVER".into(),
                indirect: true
            }
        );
        let h = r.health_check.as_ref().unwrap();
        assert_eq!((h.path.as_str(), h.fall, h.rise), ("/up", 5, 1));
        assert_eq!(h.expect, vec![StatusPattern::Exact(204)]);
        assert_eq!(h.method, CheckMethod::Head);
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(r.slowstart, Some(Duration::from_secs(10)));
        assert_eq!(r.path_prefix.as_ref().unwrap().as_str(), "/api");
        assert_eq!(r.retries, 0);
        crate::model::route::validate_routes("routes", std::slice::from_ref(&r)).unwrap();
        // Defaults: the stored JSON of an old spec does not change.
        let plain = spec(r#"{"image":"x","domains":["a.com"]}"#);
        let json = serde_json::to_string(&plain).unwrap();
        for k in [
            "balancer",
            "slowstart",
            "path_prefix",
            "retries",
            "fall",
            "expect",
            "method",
        ] {
            assert!(!json.contains(k), "{k} in {json}");
        }
        assert_eq!(plain.health.fall, 3);
        // Two apps on one domain under different prefixes are two valid routes.
        let a = spec(r#"{"image":"x","domains":["a.com"],"path_prefix":"/a"}"#);
        let b = spec(r#"{"image":"x","domains":["a.com"],"path_prefix":"/b"}"#);
        let routes = [
            a.traffic()
                .route("app/a".into(), a.domains.clone(), vec![], vec![]),
            b.traffic()
                .route("app/b".into(), b.domains.clone(), vec![], vec![]),
        ];
        crate::model::route::validate_routes("routes", &routes).unwrap();
    }

    #[test]
    fn pull_ceiling_only_lowers() {
        use PullPolicy::*;
        // (app, daemon ceiling) -> effective
        for (app, ceiling, want) in [
            (Always, Always, Always),
            (Missing, Always, Missing),
            (Never, Always, Never),
            (Always, Missing, Missing),
            (Missing, Missing, Missing),
            (Never, Missing, Never),
            (Always, Never, Never),
            (Missing, Never, Never),
            (Never, Never, Never),
        ] {
            assert_eq!(app.under(ceiling), want, "{app:?} under {ceiling:?}");
        }
    }
}
