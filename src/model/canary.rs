//! Canary and A/B by version, the pure part: the `canary:` block of an app spec (steps,
//! analysis thresholds, stickiness) and its validation, the analysis decision over per-version
//! counts, and the weighted split of one app's traffic between versions (deployment ids) that
//! the proxy applies before the app's own balancer picks a replica.
//!
//! Invariants: a split's weights are whole percents summing to 100 and name each version
//! once; a version with weight 0 gets no new request (it drains). The split pick is
//! deterministic: a smooth weighted round-robin schedule (exact shares over every 100
//! requests), or, when sticky, the version a client's cookie names while that version still
//! has weight, so one client stays on one version.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::balance::{cookie_value, hash64, RoundRobin};
use super::deploy::SpecError;
use super::histogram::HistogramSnapshot;

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        message: message.into(),
    }
}

/// A percentage in hundredths of a percent (`5%` = 500, `0.5%` = 50), written as a number
/// (`5`, `0.5`) or a string with `%` (`"5%"`). Range checks are the caller's (so an
/// out-of-range value is refused with the field named, not as a parse error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "PercentRepr", into = "String")]
pub struct Percent(pub u32);

#[derive(Deserialize)]
#[serde(untagged)]
enum PercentRepr {
    N(f64),
    S(String),
}

impl Percent {
    /// Whole percents.
    pub fn whole(p: u32) -> Self {
        Percent(p.saturating_mul(100))
    }

    /// As a fraction (0.0-1.0 for 0-100%).
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }

    /// Whole percents, if this is one (`5%` yes, `5.5%` no).
    pub fn as_whole(self) -> Option<u32> {
        self.0.is_multiple_of(100).then_some(self.0 / 100)
    }
}

impl TryFrom<PercentRepr> for Percent {
    type Error = String;
    fn try_from(r: PercentRepr) -> Result<Self, String> {
        let n = match r {
            PercentRepr::N(n) => n,
            PercentRepr::S(s) => {
                let t = s.trim();
                t.strip_suffix('%')
                    .unwrap_or(t)
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{s:?} is not a percentage (e.g. 5% or 0.5%)"))?
            }
        };
        if !n.is_finite() || n < 0.0 {
            return Err(format!("{n} is not a percentage (0% or more)"));
        }
        if n > 1_000_000.0 {
            return Err(format!("{n}% is out of range"));
        }
        Ok(Percent((n * 100.0).round() as u32))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(100) {
            write!(f, "{}%", self.0 / 100)
        } else {
            let s = format!("{}.{:02}", self.0 / 100, self.0 % 100);
            write!(f, "{}%", s.trim_end_matches('0'))
        }
    }
}

impl From<Percent> for String {
    fn from(p: Percent) -> String {
        p.to_string()
    }
}

/// One canary step: send `weight` of the app's traffic to the new version for `hold`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    pub weight: Percent,
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
}

fn default_min_requests() -> u64 {
    100
}

/// The thresholds a canary step must stay under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// Highest share of the canary's requests that may fail (5xx answers and upstream
    /// failures), e.g. `1%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<Percent>,
    /// Highest 99th-percentile latency of the canary's requests, e.g. `500ms`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_p99: Option<Duration>,
    /// Requests the canary must have served in a step before it is judged (default 100).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            max_error_rate: None,
            max_p99: None,
            min_requests: default_min_requests(),
        }
    }
}

/// `canary:` of an app spec (with `strategy: canary`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// e.g. `[{weight: 5%, hold: 2m}, {weight: 25%, hold: 5m}, {weight: 50%, hold: 5m}]`;
    /// after the last step the new version is promoted.
    pub steps: Vec<CanaryStep>,
    #[serde(default)]
    pub analysis: Analysis,
    /// One client stays on one version (a cookie names it).
    #[serde(default)]
    pub sticky: bool,
}

/// Most steps a canary may have.
pub const MAX_STEPS: usize = 20;
/// Longest hold of one step.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// Shortest hold of one step.
pub const MIN_HOLD: Duration = Duration::from_millis(500);

impl CanarySpec {
    /// Checks the fields; names them under `at` (`canary`).
    pub fn validate(&self, at: &str) -> Result<(), SpecError> {
        if self.steps.is_empty() {
            return Err(err(
                format!("{at}.steps"),
                "needs at least one step ({weight: 10%, hold: 1m})",
            ));
        }
        if self.steps.len() > MAX_STEPS {
            return Err(err(
                format!("{at}.steps"),
                format!("at most {MAX_STEPS} steps"),
            ));
        }
        for (i, s) in self.steps.iter().enumerate() {
            match s.weight.as_whole() {
                Some(w) if (1..=100).contains(&w) => {}
                _ => {
                    return Err(err(
                        format!("{at}.steps[{i}].weight"),
                        format!("{} must be a whole percent between 1% and 100%", s.weight),
                    ))
                }
            }
            if s.hold < MIN_HOLD || s.hold > MAX_HOLD {
                return Err(err(
                    format!("{at}.steps[{i}].hold"),
                    "must be between 500ms and 24h",
                ));
            }
        }
        let a = &self.analysis;
        if let Some(r) = a.max_error_rate {
            if r.0 > 10_000 {
                return Err(err(
                    format!("{at}.analysis.max_error_rate"),
                    format!("{r} must be between 0 and 100%"),
                ));
            }
        }
        if let Some(p) = a.max_p99 {
            if p.is_zero() || p > Duration::from_secs(3600) {
                return Err(err(
                    format!("{at}.analysis.max_p99"),
                    "must be between 1ms and 1h",
                ));
            }
        }
        if a.min_requests > 1_000_000_000 {
            return Err(err(
                format!("{at}.analysis.min_requests"),
                "must be at most 1000000000",
            ));
        }
        Ok(())
    }
}

/// What the proxy counted for one version over some interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionCounts {
    /// Requests sent to the version's replicas.
    pub requests: u64,
    /// 5xx answers plus upstream failures (connect errors, resets, timeouts).
    pub errors: u64,
    /// Request durations.
    pub latency: HistogramSnapshot,
}

impl Default for VersionCounts {
    fn default() -> Self {
        VersionCounts {
            requests: 0,
            errors: 0,
            latency: HistogramSnapshot::empty(),
        }
    }
}

impl VersionCounts {
    /// What the proxy counted for one backend: requests sent, 5xx answers plus upstream
    /// failures, latencies. A failure answered to the client as 502/504 is in both counters
    /// and counts once.
    pub fn of(stats: &super::stats::BackendStats) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        VersionCounts {
            requests: stats.requests.load(Relaxed),
            errors: (stats.responses_5xx.load(Relaxed) + stats.failures.load(Relaxed))
                .saturating_sub(stats.failures_answered.load(Relaxed)),
            latency: stats.latency.snapshot(),
        }
    }

    /// Adds another replica's counts.
    pub fn add(&mut self, other: &VersionCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.add(&other.latency);
    }

    /// What was counted after `earlier` (counters only grow; saturating against races).
    pub fn since(&self, earlier: &VersionCounts) -> VersionCounts {
        VersionCounts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
        }
    }

    /// Errors per request, 0.0-1.0 (0 without requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            (self.errors.min(self.requests)) as f64 / self.requests as f64
        }
    }

    pub fn p99(&self) -> Option<Duration> {
        self.latency.quantile(0.99)
    }

    /// `12.3% errors (41 of 333), p99 120ms`.
    pub fn summary(&self) -> String {
        format!(
            "{:.1}% errors ({} of {}), p99 {}",
            self.error_rate() * 100.0,
            self.errors.min(self.requests),
            self.requests,
            self.p99().map_or("-".to_string(), fmt_ms)
        )
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// One version's figures over the current step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveFigures {
    pub requests: u64,
    /// 5xx answers plus upstream failures, in percent of `requests`.
    pub error_rate: f64,
    /// 99th-percentile latency in milliseconds (none without requests).
    pub p99_ms: Option<u64>,
}

// `error_rate` is always a finite number (never NaN), so equality is an equivalence.
impl Eq for LiveFigures {}
impl Eq for CanaryStatus {}

impl LiveFigures {
    pub fn of(c: &VersionCounts) -> Self {
        LiveFigures {
            requests: c.requests,
            error_rate: (c.error_rate() * 10_000.0).round() / 100.0,
            p99_ms: c.p99().map(|d| d.as_millis() as u64),
        }
    }
}

/// A canary in progress, as `GET /v1/apps/{app}` and the status page show it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// The canary's deployment id.
    pub deployment: String,
    /// The stable deployment id.
    pub stable: String,
    /// `starting`, `step`, `manual` (a split set by hand), `promoting`, `aborting`.
    pub phase: String,
    /// 1-based step in force (0 while the canary's replicas start).
    pub step: usize,
    pub steps: usize,
    /// Version → percent of new requests.
    pub split: BTreeMap<String, u32>,
    pub sticky: bool,
    /// Figures since the current step (or manual split) began.
    pub stable_live: LiveFigures,
    pub canary_live: LiveFigures,
}

/// The analysis of one step so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Fewer than `min_requests` canary requests: nothing to judge yet.
    TooFew { requests: u64, min: u64 },
    /// Within every threshold.
    Healthy,
    /// A threshold broken; the message has the numbers (canary and stable).
    Breach(String),
}

/// Judges the canary's counts of one step against `analysis`, with the stable version's
/// counts of the same interval for comparison in the message.
pub fn analyse(analysis: &Analysis, canary: &VersionCounts, stable: &VersionCounts) -> Verdict {
    if canary.requests < analysis.min_requests || canary.requests == 0 {
        return Verdict::TooFew {
            requests: canary.requests,
            min: analysis.min_requests,
        };
    }
    if let Some(max) = analysis.max_error_rate {
        let rate = canary.error_rate();
        // Compared in hundredths of a percent, as the threshold is written.
        if rate * 10_000.0 > f64::from(max.0) + 1e-9 {
            return Verdict::Breach(format!(
                "canary error rate {:.2}% ({} of {} requests failed) is above max_error_rate {max}; \
                 stable: {}",
                rate * 100.0,
                canary.errors.min(canary.requests),
                canary.requests,
                stable.summary()
            ));
        }
    }
    if let (Some(max), Some(p99)) = (analysis.max_p99, canary.p99()) {
        if p99 > max {
            return Verdict::Breach(format!(
                "canary p99 latency {} over {} requests is above max_p99 {}; stable: {}",
                fmt_ms(p99),
                canary.requests,
                fmt_ms(max),
                stable.summary()
            ));
        }
    }
    Verdict::Healthy
}

/// What a canary does next, given the step's verdict and whether its hold is over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepAction {
    /// Keep the step's weight and look again.
    Wait,
    /// Go to the next step (or promote after the last).
    Advance,
    /// Traffic back to stable at once; the deployment fails with this reason.
    Abort(String),
}

/// The step decision: a breach aborts at once (even mid-hold: the numbers are already
/// there); a healthy step advances when its hold is over; a step short of `min_requests`
/// waits past its hold until `overtime` is over, then aborts (not enough traffic to judge).
pub fn step_action(verdict: &Verdict, hold_over: bool, overtime_over: bool) -> StepAction {
    match verdict {
        Verdict::Breach(why) => StepAction::Abort(why.clone()),
        Verdict::Healthy if hold_over => StepAction::Advance,
        Verdict::Healthy => StepAction::Wait,
        Verdict::TooFew { requests, min } if overtime_over => StepAction::Abort(format!(
            "only {requests} requests reached the canary (analysis.min_requests is {min}): \
             not enough traffic to judge it"
        )),
        Verdict::TooFew { .. } => StepAction::Wait,
    }
}

/// How one app's traffic is split between its versions (deployment ids), by whole percents.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionSplit {
    /// Version → weight (0-100; all sum to 100).
    pub weights: BTreeMap<String, u32>,
    /// Keep each client on one version (a cookie names it).
    #[serde(default)]
    pub sticky: bool,
}

/// A refused split, naming the key (`weights.v3`) or the whole (`weights`).
pub type SplitError = SpecError;

impl VersionSplit {
    /// Two versions: `canary` gets `weight`%, `stable` the rest.
    pub fn canary(stable: &str, canary: &str, weight: u32, sticky: bool) -> Self {
        let w = weight.min(100);
        let mut weights = BTreeMap::new();
        weights.insert(stable.to_string(), 100 - w);
        weights.insert(canary.to_string(), w);
        VersionSplit { weights, sticky }
    }

    /// Checks a split against the versions that run: each named version runs, weights are
    /// 0-100 and sum to 100.
    pub fn validate(&self, running: &[&str]) -> Result<(), SplitError> {
        if self.weights.is_empty() {
            return Err(err("weights", "name at least one version"));
        }
        for (v, w) in &self.weights {
            if !running.contains(&v.as_str()) {
                return Err(err(
                    format!("weights.{v}"),
                    format!(
                        "{v:?} is not a running version of this app (running: {})",
                        running.join(", ")
                    ),
                ));
            }
            if *w > 100 {
                return Err(err(
                    format!("weights.{v}"),
                    format!("{w} is out of range (0-100)"),
                ));
            }
        }
        let sum: u32 = self.weights.values().sum();
        if sum != 100 {
            return Err(err("weights", format!("weights sum to {sum}, not 100")));
        }
        Ok(())
    }

    /// The split after a side-by-side deploy: `new` joins with weight 0, the versions of
    /// `base` keep theirs (no split yet: `current` had every request).
    pub fn joined(base: Option<&VersionSplit>, current: &str, new: &str) -> Self {
        let mut s = base.cloned().unwrap_or_else(|| {
            let mut weights = BTreeMap::new();
            weights.insert(current.to_string(), 100);
            VersionSplit {
                weights,
                sticky: false,
            }
        });
        s.weights.insert(new.to_string(), 0);
        s
    }

    /// The split without `version` (removed, draining): its weight goes to the others in
    /// proportion to theirs (largest remainders get the odd percents, ties by name); when
    /// the others all have 0, it is spread evenly. The result still sums to 100 (or is
    /// empty when no version is left).
    pub fn without(&self, version: &str) -> Self {
        let rest: Vec<(&String, u32)> = self
            .weights
            .iter()
            .filter(|(v, _)| v.as_str() != version)
            .map(|(v, w)| (v, *w))
            .collect();
        let sticky = self.sticky;
        if rest.is_empty() {
            return VersionSplit {
                weights: BTreeMap::new(),
                sticky,
            };
        }
        let total: u32 = rest.iter().map(|(_, w)| *w).sum();
        // Each version's share of 100 as a fraction total/denominator, floored; the percents
        // still missing go to the largest remainders.
        let n = rest.len() as u32;
        let (mut given, mut parts): (u32, Vec<(&String, u32, u32)>) = (0, Vec::new());
        for (v, w) in &rest {
            let (num, den) = if total == 0 { (1, n) } else { (*w, total) };
            let floor = 100 * num / den;
            let rem = 100 * num % den;
            given += floor;
            parts.push((v, floor, rem));
        }
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.sort_by(|a, b| parts[*b].2.cmp(&parts[*a].2).then(a.cmp(b)));
        for i in order.into_iter().take((100 - given) as usize) {
            parts[i].1 += 1;
        }
        VersionSplit {
            weights: parts.into_iter().map(|(v, w, _)| (v.clone(), w)).collect(),
            sticky,
        }
    }

    /// The version with the most weight (ties: the first by name).
    pub fn heaviest(&self) -> Option<&str> {
        self.weights
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(v, _)| v.as_str())
    }
}

/// A split as a route carries it: the weights, and the version (deployment id) of each
/// backend, by backend id. A backend in no version is used only when no version can serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSplit {
    pub split: VersionSplit,
    pub members: BTreeMap<String, String>,
}

/// The sticky cookie of route `route`'s version split (one per route, so two apps under
/// different prefixes of one domain do not overwrite each other's).
pub fn version_cookie_name(route: &str) -> String {
    format!(
        "BERTH_VERSION_{:08x}",
        hash64(0x7e51, route.as_bytes()) as u32
    )
}

/// A split inside a route-table snapshot: the versions, which version each backend belongs
/// to, and the weighted schedule. Built once per table; picking is an atomic add.
#[derive(Debug)]
pub struct VersionPicker {
    versions: Vec<String>,
    weights: Vec<u32>,
    /// Version index of each backend of the route (`None`: in no version, never chosen by
    /// a split but usable as a fallback).
    of_backend: Vec<Option<usize>>,
    rr: RoundRobin,
    /// Per version: a round robin over its own backends (the balancer's cursor within the
    /// version, so its replicas share its traffic evenly).
    within: Vec<RoundRobin>,
    /// Sticky: the cookie's name.
    cookie: Option<String>,
}

/// The version chosen for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionChoice {
    pub version: usize,
    /// Sticky: the `Set-Cookie` value to send (the request had no valid one).
    pub set_cookie: Option<String>,
}

impl VersionPicker {
    /// `backend_versions` gives each backend's version and its round-robin weight (0: not
    /// in the schedule), in the route's backend order.
    pub fn new<'a>(
        route: &str,
        split: &VersionSplit,
        backend_versions: impl Iterator<Item = (Option<&'a str>, u32)>,
    ) -> Self {
        let versions: Vec<String> = split.weights.keys().cloned().collect();
        let weights: Vec<u32> = split.weights.values().copied().collect();
        let (of_backend, backend_weights): (Vec<Option<usize>>, Vec<u32>) = backend_versions
            .map(|(v, w)| (v.and_then(|v| versions.iter().position(|x| x == v)), w))
            .unzip();
        let within = (0..versions.len())
            .map(|v| {
                let masked: Vec<u32> = backend_weights
                    .iter()
                    .zip(&of_backend)
                    .map(|(w, of)| if *of == Some(v) { *w } else { 0 })
                    .collect();
                RoundRobin::new(&masked)
            })
            .collect();
        VersionPicker {
            rr: RoundRobin::new(&weights),
            within,
            versions,
            weights,
            of_backend,
            cookie: split.sticky.then(|| version_cookie_name(route)),
        }
    }

    /// The round robin over version `v`'s backends.
    pub fn round_robin(&self, v: usize) -> Option<&RoundRobin> {
        self.within.get(v)
    }

    pub fn versions(&self) -> &[String] {
        &self.versions
    }

    /// Whether backend `i` belongs to version `v`.
    pub fn member(&self, backend: usize, version: usize) -> bool {
        self.of_backend.get(backend).copied().flatten() == Some(version)
    }

    /// The sticky cookie's name, if the split is sticky (the proxy reads `Cookie` then).
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Chooses the version of a request: the one its sticky cookie names while that version
    /// has weight, else the next in the weighted schedule (with a cookie to set when
    /// sticky). `None` when no version has weight.
    pub fn choose(&self, cookie_header: Option<&str>) -> Option<VersionChoice> {
        if let (Some(name), Some(h)) = (&self.cookie, cookie_header) {
            if let Some(v) = cookie_value(h, name)
                .and_then(|val| self.versions.iter().position(|x| x == val))
                .filter(|v| self.weights[*v] > 0)
            {
                return Some(VersionChoice {
                    version: v,
                    set_cookie: None,
                });
            }
        }
        let version = self.rr.pick(|_| true)?;
        Some(VersionChoice {
            version,
            set_cookie: self.cookie.as_ref().map(|name| {
                format!(
                    "{name}={}; Path=/; HttpOnly; SameSite=Lax",
                    self.versions[version]
                )
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::histogram::LatencyHistogram;

    fn canary(json: &str) -> CanarySpec {
        serde_json::from_str(json).expect("test spec parses")
    }

    #[test]
    fn percent_forms() {
        for (json, hundredths) in [
            ("5", 500),
            ("\"5%\"", 500),
            ("\"0.5%\"", 50),
            ("0.25", 25),
            ("\" 12 % \"", 1200),
            ("150", 15000),
        ] {
            let p: Percent = serde_json::from_str(json).expect(json);
            assert_eq!(p.0, hundredths, "{json}");
        }
        for bad in ["-1", "\"x%\"", "\"\"", "true"] {
            assert!(serde_json::from_str::<Percent>(bad).is_err(), "{bad}");
        }
        assert_eq!(Percent(500).to_string(), "5%");
        assert_eq!(Percent(50).to_string(), "0.5%");
        assert_eq!(Percent(1234).to_string(), "12.34%");
        // Stored and read back the same.
        let p: Percent =
            serde_json::from_str(&serde_json::to_string(&Percent(50)).unwrap()).unwrap();
        assert_eq!(p, Percent(50));
    }

    #[test]
    fn spec_parses_with_defaults_and_validates() {
        let c = canary(
            r#"{"steps":[{"weight":"5%","hold":"2m"},{"weight":25,"hold":"5m"}],
                "analysis":{"max_error_rate":"1%","max_p99":"500ms"},"sticky":true}"#,
        );
        c.validate("canary").unwrap();
        assert_eq!(c.steps[0].weight, Percent::whole(5));
        assert_eq!(c.steps[1].hold, Duration::from_secs(300));
        assert_eq!(c.analysis.min_requests, 100);
        assert_eq!(c.analysis.max_p99, Some(Duration::from_millis(500)));
        assert!(c.sticky);
        let again: CanarySpec = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
        let cases: &[(&str, &str)] = &[
            (r#"{"steps":[]}"#, "canary.steps"),
            (
                r#"{"steps":[{"weight":"0%","hold":"1m"}]}"#,
                "canary.steps[0].weight",
            ),
            (
                r#"{"steps":[{"weight":5,"hold":"1m"},{"weight":"101%","hold":"1m"}]}"#,
                "canary.steps[1].weight",
            ),
            (
                r#"{"steps":[{"weight":"2.5%","hold":"1m"}]}"#,
                "canary.steps[0].weight",
            ),
            (
                r#"{"steps":[{"weight":5,"hold":"10ms"}]}"#,
                "canary.steps[0].hold",
            ),
            (
                r#"{"steps":[{"weight":5,"hold":"1m"}],"analysis":{"max_error_rate":"150%"}}"#,
                "canary.analysis.max_error_rate",
            ),
            (
                r#"{"steps":[{"weight":5,"hold":"1m"}],"analysis":{"max_p99":"0s"}}"#,
                "canary.analysis.max_p99",
            ),
        ];
        for (json, field) in cases {
            let e = canary(json).validate("canary").expect_err(json);
            assert_eq!(e.field, *field, "{json}: {e}");
        }
        assert_eq!(
            canary(r#"{"steps":[{"weight":5,"hold":"1m"}],"analysis":{"max_error_rate":"150%"}}"#)
                .validate("canary")
                .unwrap_err()
                .to_string(),
            "canary.analysis.max_error_rate: 150% must be between 0 and 100%"
        );
        for bad in [
            r#"{"steps":[{"weight":5,"hold":"1m","extra":1}]}"#,
            r#"{"steps":[{"weight":5}]}"#,
            r#"{"steps":[{"weight":5,"hold":"1m"}],"analysis":{"max_error_rate":"-1%"}}"#,
        ] {
            assert!(serde_json::from_str::<CanarySpec>(bad).is_err(), "{bad}");
        }
    }

    fn counts(requests: u64, errors: u64, latencies_ms: &[u64]) -> VersionCounts {
        let h = LatencyHistogram::default();
        for ms in latencies_ms {
            h.record(Duration::from_millis(*ms));
        }
        VersionCounts {
            requests,
            errors,
            latency: h.snapshot(),
        }
    }

    #[test]
    fn analysis_decisions() {
        let a = Analysis {
            max_error_rate: Some(Percent::whole(5)),
            max_p99: Some(Duration::from_millis(200)),
            min_requests: 100,
        };
        let stable = counts(900, 1, &[10; 50]);
        let fast = [10u64; 100];
        assert_eq!(
            analyse(&a, &counts(99, 50, &fast), &stable),
            Verdict::TooFew {
                requests: 99,
                min: 100
            }
        );
        assert_eq!(
            analyse(&a, &counts(100, 5, &fast), &stable),
            Verdict::Healthy
        );
        match analyse(&a, &counts(200, 41, &fast), &stable) {
            Verdict::Breach(m) => {
                assert!(m.contains("20.50%"), "{m}");
                assert!(m.contains("41 of 200"), "{m}");
                assert!(m.contains("max_error_rate 5%"), "{m}");
                assert!(m.contains("stable: 0.1% errors (1 of 900)"), "{m}");
            }
            v => panic!("{v:?}"),
        }
        let mut slow = vec![10u64; 97];
        slow.extend([900, 900, 900]);
        match analyse(&a, &counts(100, 0, &slow), &stable) {
            Verdict::Breach(m) => assert!(m.contains("above max_p99 200ms"), "{m}"),
            v => panic!("{v:?}"),
        }
        // No thresholds: any traffic past min_requests is healthy.
        let none = Analysis {
            min_requests: 0,
            ..Analysis::default()
        };
        assert_eq!(
            analyse(&none, &counts(1, 1, &[]), &stable),
            Verdict::Healthy
        );
        // Error rate is counted in hundredths of a percent: 0.5% allows 1 in 200.
        let half = Analysis {
            max_error_rate: Some(Percent(50)),
            max_p99: None,
            min_requests: 1,
        };
        assert_eq!(
            analyse(&half, &counts(200, 1, &[]), &stable),
            Verdict::Healthy
        );
        assert!(matches!(
            analyse(&half, &counts(200, 2, &[]), &stable),
            Verdict::Breach(_)
        ));
    }

    #[test]
    fn step_actions() {
        let too_few = Verdict::TooFew {
            requests: 3,
            min: 10,
        };
        let breach = Verdict::Breach("x".into());
        assert_eq!(
            step_action(&Verdict::Healthy, false, false),
            StepAction::Wait
        );
        assert_eq!(
            step_action(&Verdict::Healthy, true, false),
            StepAction::Advance
        );
        assert_eq!(
            step_action(&breach, false, false),
            StepAction::Abort("x".into())
        );
        assert_eq!(step_action(&too_few, true, false), StepAction::Wait);
        match step_action(&too_few, true, true) {
            StepAction::Abort(m) => assert!(m.contains("only 3 requests"), "{m}"),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn counts_add_and_subtract() {
        let mut total = counts(10, 1, &[5, 5]);
        total.add(&counts(5, 2, &[50]));
        assert_eq!((total.requests, total.errors), (15, 3));
        assert_eq!(total.latency.count(), 3);
        let later = VersionCounts {
            requests: 25,
            errors: 4,
            latency: total.latency.clone(),
        };
        let step = later.since(&total);
        assert_eq!(
            (step.requests, step.errors, step.latency.count()),
            (10, 1, 0)
        );
        assert_eq!(VersionCounts::default().error_rate(), 0.0);
    }

    #[test]
    fn split_validation_names_the_version() {
        let running = ["d1", "d2"];
        let split = |pairs: &[(&str, u32)]| VersionSplit {
            weights: pairs.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
            sticky: false,
        };
        split(&[("d1", 90), ("d2", 10)]).validate(&running).unwrap();
        split(&[("d1", 100)]).validate(&running).unwrap();
        let cases: &[(&[(&str, u32)], &str)] = &[
            (&[("d1", 90), ("d2", 20)], "weights"),
            (&[("d1", 50)], "weights"),
            (&[("d1", 90), ("d3", 10)], "weights.d3"),
            (&[("d1", 200)], "weights.d1"),
            (&[], "weights"),
        ];
        for (pairs, field) in cases {
            let e = split(pairs).validate(&running).unwrap_err();
            assert_eq!(e.field, *field, "{pairs:?}: {e}");
        }
        assert!(split(&[("d1", 90), ("d2", 20)])
            .validate(&running)
            .unwrap_err()
            .message
            .contains("sum to 110"));
        assert_eq!(VersionSplit::canary("a", "b", 10, false).weights["a"], 90);
        assert_eq!(split(&[("d1", 10), ("d2", 90)]).heaviest(), Some("d2"));
    }

    #[test]
    fn weighted_pick_is_exact_over_every_hundred() {
        let s = VersionSplit::canary("d1", "d2", 10, false);
        let p = VersionPicker::new(
            "app/web",
            &s,
            [Some("d1"), Some("d1"), Some("d2"), None]
                .into_iter()
                .map(|v| (v, 1)),
        );
        assert!(p.member(0, 0) && p.member(2, 1) && !p.member(3, 0) && !p.member(3, 1));
        for round in 0..3 {
            let mut seen = [0u32; 2];
            let mut max_run = 0;
            let mut run = 0;
            for _ in 0..100 {
                let c = p.choose(None).unwrap();
                assert!(c.set_cookie.is_none());
                seen[c.version] += 1;
                if c.version == 1 {
                    max_run = max_run.max(run);
                    run = 0;
                } else {
                    run += 1;
                }
            }
            assert_eq!(seen, [90, 10], "round {round}");
            // Interleaved, not 90 then 10.
            assert!(max_run <= 10, "{max_run}");
        }
        // A version with weight 0 is never chosen; no weight at all: no choice.
        let zero = VersionSplit::canary("d1", "d2", 0, false);
        let p = VersionPicker::new("r", &zero, std::iter::empty());
        assert!((0..50).all(|_| p.choose(None).unwrap().version == 0));
        let mut empty = VersionSplit::default();
        empty.weights.insert("d1".into(), 0);
        assert!(VersionPicker::new("r", &empty, std::iter::empty())
            .choose(None)
            .is_none());
    }

    fn split_route(b_state: &str, sticky: bool) -> crate::model::route::RouteTable {
        use crate::model::route::{RouteSpec, RouteTable};
        let mut spec: RouteSpec = serde_json::from_str(&format!(
            r#"{{"name":"app/web","domains":["a.com"],"backends":[
                {{"id":"a1","address":"127.0.0.1:1"}},{{"id":"a2","address":"127.0.0.1:2"}},
                {{"id":"b1","address":"127.0.0.1:3","state":"{b_state}"}}]}}"#
        ))
        .unwrap();
        spec.split = Some(RouteSplit {
            split: VersionSplit::canary("d1", "d2", 10, sticky),
            members: [("a1", "d1"), ("a2", "d1"), ("b1", "d2")]
                .iter()
                .map(|(b, v)| (b.to_string(), v.to_string()))
                .collect(),
        });
        RouteTable::build(&[spec], None).unwrap()
    }

    #[test]
    fn route_picks_the_version_then_a_backend() {
        use crate::model::route::PickContext;
        let t = split_route("ready", false);
        let r = t.route("app/web").unwrap();
        let mut n = [0u32; 3];
        for _ in 0..1000 {
            let p = r.pick_for(&PickContext::default(), None).unwrap();
            assert!(p.version_cookie.is_none());
            n[p.index] += 1;
        }
        assert_eq!(n, [450, 450, 100], "stable's two replicas share 90%");
        // The canary's only replica is out (maint): its share goes to stable, no 503.
        let t = split_route("maint", false);
        let r = t.route("app/web").unwrap();
        for _ in 0..50 {
            assert_ne!(r.pick_for(&PickContext::default(), None).unwrap().index, 2);
        }
        // Sticky: the cookie names the version; a client keeps it.
        let t = split_route("ready", true);
        let r = t.route("app/web").unwrap();
        let name = version_cookie_name("app/web");
        let cookie = format!("{name}=d2");
        for _ in 0..20 {
            let p = r
                .pick_for(
                    &PickContext {
                        cookie: Some(&cookie),
                        ..PickContext::default()
                    },
                    None,
                )
                .unwrap();
            assert_eq!((p.index, p.version_cookie.as_deref()), (2, None));
        }
        let fresh = r.pick_for(&PickContext::default(), None).unwrap();
        assert!(fresh
            .version_cookie
            .unwrap()
            .starts_with(&format!("{name}=d")));
    }

    #[test]
    fn sticky_pick_keeps_a_client_on_its_version() {
        let s = VersionSplit::canary("d1", "d2", 30, true);
        let p = VersionPicker::new("app/web", &s, std::iter::empty());
        let name = version_cookie_name("app/web");
        assert_ne!(name, version_cookie_name("app/other"));
        assert_eq!(p.cookie(), Some(name.as_str()));
        // A new client gets a cookie naming the chosen version...
        let first = p.choose(Some("other=1")).unwrap();
        let set = first.set_cookie.clone().expect("sticky sets a cookie");
        let value = set.split(';').next().unwrap().to_string();
        assert_eq!(value, format!("{name}={}", p.versions()[first.version]));
        // ...and stays there, whatever the schedule does.
        for _ in 0..200 {
            let c = p.choose(Some(&format!("a=b; {value}"))).unwrap();
            assert_eq!(c.version, first.version);
            assert!(c.set_cookie.is_none());
        }
        // New clients spread by weight.
        let mut on_canary = 0;
        for _ in 0..1000 {
            if p.choose(None).unwrap().version == 1 {
                on_canary += 1;
            }
        }
        assert_eq!(on_canary, 300);
        // A cookie naming a version without weight (aborted canary) or unknown is re-picked.
        let back = VersionSplit::canary("d1", "d2", 0, true);
        let p = VersionPicker::new("app/web", &back, std::iter::empty());
        for cookie in [format!("{name}=d2"), format!("{name}=nope")] {
            let c = p.choose(Some(&cookie)).unwrap();
            assert_eq!(c.version, 0);
            assert!(c.set_cookie.unwrap().starts_with(&format!("{name}=d1;")));
        }
    }

    fn split(pairs: &[(&str, u32)]) -> VersionSplit {
        VersionSplit {
            weights: pairs.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
            sticky: false,
        }
    }

    #[test]
    fn side_by_side_joins_at_zero_and_removal_spreads_the_weight() {
        // The first kept deploy: the running version had every request.
        assert_eq!(
            VersionSplit::joined(None, "d1", "d2"),
            split(&[("d1", 100), ("d2", 0)])
        );
        let s = split(&[("d1", 30), ("d2", 70)]);
        let three = VersionSplit::joined(Some(&s), "d2", "d3");
        assert_eq!(three, split(&[("d1", 30), ("d2", 70), ("d3", 0)]));
        assert!(three.validate(&["d1", "d2", "d3"]).is_ok());
        // Removing a version: its weight goes to the others in proportion to theirs.
        let s = split(&[("d1", 30), ("d2", 30), ("d3", 40)]);
        assert_eq!(s.without("d1"), split(&[("d2", 43), ("d3", 57)]));
        assert_eq!(s.without("d3"), split(&[("d1", 50), ("d2", 50)]));
        // The others all at 0: spread evenly, odd percents to the first by name.
        let s = split(&[("d1", 100), ("d2", 0), ("d3", 0), ("d4", 0)]);
        assert_eq!(
            s.without("d1"),
            split(&[("d2", 34), ("d3", 33), ("d4", 33)])
        );
        // A version without weight leaves the others as they are.
        assert_eq!(
            split(&[("d1", 90), ("d2", 10), ("d3", 0)]).without("d3"),
            split(&[("d1", 90), ("d2", 10)])
        );
        // Unknown version: nothing changes; the last one: nothing left.
        assert_eq!(
            split(&[("d1", 90), ("d2", 10)]).without("d9"),
            split(&[("d1", 90), ("d2", 10)])
        );
        assert!(split(&[("d1", 100)]).without("d1").weights.is_empty());
        // Every result sums to 100.
        for ws in [[1u32, 1, 98], [33, 33, 34], [0, 50, 50], [7, 0, 93]] {
            let s = split(&[("a", ws[0]), ("b", ws[1]), ("c", ws[2])]);
            for v in ["a", "b", "c"] {
                assert_eq!(
                    s.without(v).weights.values().sum::<u32>(),
                    100,
                    "{ws:?} - {v}"
                );
            }
        }
    }

    #[test]
    fn an_answered_failure_counts_once() {
        use std::sync::atomic::Ordering::Relaxed;
        let b = crate::model::stats::BackendStats::default();
        b.requests.store(5, Relaxed);
        // An app's 500, a connect failure answered 502, a timeout answered 504, one
        // failure retried on another backend (not answered from here).
        b.record_status(500);
        b.record_answered_failure(502);
        b.record_answered_failure(504);
        b.failures.fetch_add(1, Relaxed);
        b.record_status(200);
        let c = VersionCounts::of(&b);
        // Before: 3 (5xx) + 3 (failures) = 6 errors of 5 requests.
        assert_eq!((c.requests, c.errors), (5, 4));
    }
}
