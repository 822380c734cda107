//! The API contract (issue 20 item 2): every request and response type of `model::api` (and
//! the model types the API answers with) checked against the schema its operation has in
//! `src/api/openapi.json`, in both directions. A sample of each type, with every optional field
//! filled, is serialised and validated: a field the type writes that the document does not
//! describe fails, a field the document requires that the type does not write fails, and a
//! field the document describes that no sample ever writes fails (the document still names a
//! field the type renamed or dropped). Free-form objects (`{"type": "object"}` without
//! `properties`) fail too: they would let any rename through.
//!
//! Together with the types being shared by the server and the CLI, this makes a rename either
//! a compile error (a struct literal here, in `api/` or in `client/`) or a failure here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth::api::stats::{
    BackendStatsView, LatencyView, RouteStats, StatsDoc, StatusClasses, StoreState,
};
use berth::model::access::Scopes;
use berth::model::api::*;
use berth::model::deploy::{AppSpec, Secret};
use berth::model::route::{BackendSpec, RouteSpec, ServerState};
use berth::model::traffic::{AppGate, Maintenance, Pause};
use berth::proxy::tcp::{CounterView, TcpStats};
use serde::Serialize;
use serde_json::{json, Value};

/// Validates JSON values against the document's schemas and records which documented
/// properties the values used.
struct Contract {
    doc: Value,
    /// (schema location, property) pairs seen in some sample.
    seen: BTreeSet<(String, String)>,
    /// Every object schema a sample reached, by location, with its properties.
    reached: BTreeMap<String, Vec<String>>,
    errors: Vec<String>,
}

impl Contract {
    fn load() -> Self {
        Contract {
            doc: serde_json::from_str(berth::api::OPENAPI_JSON).expect("openapi.json parses"),
            seen: BTreeSet::new(),
            reached: BTreeMap::new(),
            errors: Vec::new(),
        }
    }

    /// The schema at a JSON pointer of the document (`#/components/...`).
    fn at(&self, pointer: &str) -> Value {
        self.doc
            .pointer(pointer.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("openapi.json has no {pointer}"))
            .clone()
    }

    /// The JSON schema of an operation's answer (or of its request body, `status` = "request").
    fn operation(&self, method: &str, path: &str, status: &str) -> (String, Value) {
        let op = format!(
            "/paths/{}/{method}",
            path.replace('~', "~0").replace('/', "~1")
        );
        let loc = if status == "request" {
            format!("#{op}/requestBody/content/application~1json/schema")
        } else {
            format!("#{op}/responses/{status}/content/application~1json/schema")
        };
        let schema = self.at(&loc);
        (loc, schema)
    }

    /// Checks one sample of a type against the operation's schema.
    fn check_op<T: Serialize>(
        &mut self,
        what: &str,
        method: &str,
        path: &str,
        status: &str,
        v: &T,
    ) {
        let (loc, schema) = self.operation(method, path, status);
        let value = serde_json::to_value(v).expect("sample serialises");
        let label = format!("{what} ({} {path} {status})", method.to_uppercase());
        self.check(&loc, &schema, &value, &label);
    }

    /// Checks one sample against a component schema.
    fn check_schema<T: Serialize>(&mut self, what: &str, name: &str, v: &T) {
        let loc = format!("#/components/schemas/{name}");
        let schema = self.at(&loc);
        let value = serde_json::to_value(v).expect("sample serialises");
        self.check(&loc, &schema, &value, what);
    }

    fn check(&mut self, loc: &str, schema: &Value, value: &Value, path: &str) {
        let mut errors = Vec::new();
        self.walk(loc, schema, value, path, &mut errors, true);
        self.errors.extend(errors);
    }

    /// Validates `value` against `schema` (at `loc`); `record` says whether to count the
    /// properties seen (not while trying the alternatives of a `oneOf`).
    fn walk(
        &mut self,
        loc: &str,
        schema: &Value,
        value: &Value,
        path: &str,
        errors: &mut Vec<String>,
        record: bool,
    ) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let target = self.at(r);
            return self.walk(r, &target, value, path, errors, record);
        }
        if value.is_null() {
            if schema.get("nullable") != Some(&Value::Bool(true)) {
                errors.push(format!("{path}: null, but {loc} is not nullable"));
            }
            return;
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for (i, s) in all.iter().enumerate() {
                self.walk(&format!("{loc}/allOf/{i}"), s, value, path, errors, record);
            }
        }
        if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
            let mut matched = None;
            for (i, s) in alts.iter().enumerate() {
                let mut e = Vec::new();
                self.walk(&format!("{loc}/oneOf/{i}"), s, value, path, &mut e, false);
                if e.is_empty() {
                    matched = Some(i);
                    break;
                }
            }
            match matched {
                Some(i) if record => {
                    let s = alts[i].clone();
                    self.walk(&format!("{loc}/oneOf/{i}"), &s, value, path, errors, true);
                }
                Some(_) => {}
                None => errors.push(format!("{path}: {value} matches no alternative of {loc}")),
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!(
                    "{path}: {value} is not one of {loc}'s enum {allowed:?}"
                ));
            }
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let ok = match ty {
            None => true,
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => value.is_i64() || value.is_u64(),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            Some(other) => {
                errors.push(format!("{loc}: unknown type {other}"));
                true
            }
        };
        if !ok {
            errors.push(format!("{path}: {value} is not of type {ty:?} ({loc})"));
            return;
        }
        if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
            for (i, v) in list.iter().enumerate() {
                self.walk(
                    &format!("{loc}/items"),
                    items,
                    v,
                    &format!("{path}[{i}]"),
                    errors,
                    record,
                );
            }
        }
        let Some(obj) = value.as_object() else {
            return;
        };
        if ty != Some("object") && schema.get("properties").is_none() {
            return;
        }
        let props = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties");
        if props.is_none() && extra.is_none() {
            errors.push(format!(
                "{path}: {loc} is a free-form object; describe its properties (it lets a \
                 renamed field through)"
            ));
            return;
        }
        if record {
            if let Some(p) = props {
                self.reached
                    .entry(loc.to_string())
                    .or_insert_with(|| p.keys().cloned().collect());
            }
        }
        for (k, v) in obj {
            let here = format!("{path}.{k}");
            match props.and_then(|p| p.get(k)) {
                Some(s) => {
                    if record {
                        self.seen.insert((loc.to_string(), k.clone()));
                    }
                    let s = s.clone();
                    self.walk(
                        &format!("{loc}/properties/{k}"),
                        &s,
                        v,
                        &here,
                        errors,
                        record,
                    );
                }
                None => match extra {
                    Some(Value::Bool(true)) => {}
                    Some(s @ Value::Object(_)) => {
                        let s = s.clone();
                        self.walk(
                            &format!("{loc}/additionalProperties"),
                            &s,
                            v,
                            &here,
                            errors,
                            record,
                        );
                    }
                    _ => errors.push(format!(
                        "{here}: the type writes `{k}`, which {loc} does not describe"
                    )),
                },
            }
        }
        if let Some(req) = schema.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    errors.push(format!(
                        "{path}: {loc} requires `{r}`, which the type does not write"
                    ));
                }
            }
        }
    }

    /// Documented properties of reached schemas that no sample wrote.
    fn unused(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (loc, props) in &self.reached {
            for p in props {
                if !self.seen.contains(&(loc.clone(), p.clone())) {
                    out.push(format!("{loc}: `{p}` is documented, but no type writes it"));
                }
            }
        }
        out
    }
}

fn app_spec() -> AppSpec {
    let mut s: AppSpec = serde_json::from_value(json!({
        "image": "web:2", "domains": ["web.test"], "aliases": ["www.web.test"], "port": 8080,
        "replicas": 2, "strategy": "canary",
        "canary": {"steps": [{"weight": "10%", "hold": "1m"}],
                   "analysis": {"max_error_rate": "1%", "max_p99": "500ms", "min_requests": 50},
                   "sticky": true},
        "health": {"path": "/up", "interval": "1s", "timeout": "2s", "fall": 2, "rise": 3,
                   "expect": ["204"], "method": "HEAD"},
        "balancer": {"kind": "sticky_cookie", "cookie": "PIN", "indirect": true},
        "slowstart": "10s", "path_prefix": "/api", "retries": 2, "min_ready": "3s",
        "drain_timeout": "30s", "deploy_timeout": "2m", "env": {"MODE": "prod"},
        "volumes": ["data:/data"], "stop_signal": "SIGQUIT", "stop_timeout": "20s",
        "command": ["./web"], "entrypoint": ["/bin/sh", "-c"],
        "resources": {"memory": "256MiB", "cpus": 0.5}, "pull": "always",
        "hooks": {"pre_deploy": {"command": ["./migrate"], "timeout": "5m"}},
        "registry": {"server": "reg.test", "username": "u", "password": "pw"}
    }))
    .expect("sample spec parses");
    s.secrets.insert("DB".into(), Secret::plain("hunter2"));
    s
}

/// The spec as the server stores and shows it (secrets sealed: name + fingerprint).
fn stored_spec() -> AppSpec {
    let mut s = app_spec();
    for secret in s.secrets.values_mut() {
        secret.seal("v1:sealed".into(), "sha256:0123456789abcdef".into());
    }
    s
}

fn deployment() -> DeploymentRecord {
    DeploymentRecord {
        id: "d1".into(),
        app: "web".into(),
        spec: stored_spec(),
        image_id: Some("sha256:abc".into()),
        state: DeployState::Failed,
        reason: Some("health gate".into()),
        created_by: "ci".into(),
        created_at: 1_700_000_000_000,
        finished_at: Some(1_700_000_001_000),
        rollback_of: Some("d0".into()),
    }
}

fn replica() -> ReplicaStatus {
    ReplicaStatus {
        container_id: "c1".into(),
        name: "web-d1-1".into(),
        address: "172.18.0.2:8080".into(),
        deployment: Some("d1".into()),
        routing: ServerState::Ready,
        routed: true,
        healthy: Some(true),
        running: Some(true),
        docker_health: Some("healthy".into()),
        inflight: Some(0),
    }
}

fn gate() -> AppGate {
    AppGate {
        paused: Some(Pause {
            timeout: Duration::from_secs(30),
        }),
        maintenance: Some(Maintenance {
            message: Some("back soon".into()),
            retry_after: 120,
            allow: vec!["10.0.0.0/8".parse().unwrap()],
        }),
    }
}

fn app() -> App {
    App::of(AppStatus {
        name: "web".into(),
        replicas: vec![replica()],
        discovered: vec![replica()],
        current: Some(deployment()),
        previous: Some(deployment()),
        deploying: Some("d2".into()),
        heal: Some("replacing web-d1-2".into()),
        adopted: Some("runs containers of d9".into()),
        gate: gate(),
        canary: Some(canary_status()),
        versions: vec![VersionStatus {
            deployment: "d1".into(),
            label: "v1".into(),
            ready: 1,
            desired: 1,
            draining: 0,
            weight: Some(90),
        }],
    })
}

fn canary_status() -> CanaryStatus {
    let live = LiveFigures {
        requests: 120,
        error_rate: 1.25,
        p99_ms: Some(42),
    };
    CanaryStatus {
        deployment: "d2".into(),
        stable: "d1".into(),
        phase: "step".into(),
        step: 1,
        steps: 2,
        split: [("d1".to_string(), 90), ("d2".to_string(), 10)].into(),
        sticky: true,
        stable_live: live.clone(),
        canary_live: live,
    }
}

fn route_spec() -> RouteSpec {
    serde_json::from_value(json!({
        "domains": ["api.test"], "aliases": ["www.api.test"], "alias_mode": "serve",
        "path_prefix": "/v2", "balancer": "least_connections",
        "backends": [{"id": "a", "address": "127.0.0.1:8080", "weight": 3, "state": "drain"}],
        "health_check": {"path": "/up", "interval": "2s", "timeout": "1s", "fall": 3, "rise": 2,
                         "expect": ["2xx"], "method": "HEAD"},
        "slowstart": "20s", "on_down": "shutdown_sessions", "retries": 2,
        "https_redirect": false, "hsts_max_age": "1d"
    }))
    .expect("sample route parses")
}

fn route_view() -> RouteView {
    RouteView {
        name: "api".into(),
        source: RouteSource::Api,
        read_only: false,
        spec: route_spec(),
    }
}

fn backend_view() -> BackendView {
    BackendView {
        spec: BackendSpec {
            id: Some("a".into()),
            address: "127.0.0.1:8080".parse().unwrap(),
            weight: 3,
            state: ServerState::Ready,
        },
        health: Some(BackendHealth::Down),
    }
}

fn cert() -> CertStatus {
    CertStatus {
        domain: "web.test".into(),
        names: vec!["web.test".into()],
        source: CertSource::Acme,
        path: "/var/lib/berth/certs/web.test.pem".into(),
        issuer: Some("Pebble".into()),
        not_after: Some("2026-12-01T00:00:00Z".into()),
        next_renewal: Some("2026-11-01T00:00:00Z".into()),
        last_error: Some("rate limited".into()),
    }
}

fn error_body() -> ErrorBody {
    ErrorBody {
        error: ErrorDetail {
            code: "deploy_in_progress".into(),
            message: "app web already has a deployment in progress".into(),
            field: Some("domains".into()),
            required_scope: Some("deploy:web".into()),
            host: Some("evil.test".into()),
            deployment: Some("d2".into()),
        },
    }
}

fn stats() -> StatsDoc {
    let counters = || CounterView {
        connections_total: 5,
        connections_active: 1,
        connections_failed: 0,
        bytes_in: 10,
        bytes_out: 20,
        up: Some(true),
    };
    let route = || RouteStats {
        name: "api".into(),
        source: RouteSource::Config,
        requests: 3,
        inflight: 0,
        backends: vec![BackendStatsView {
            id: "a".into(),
            address: "127.0.0.1:8080".into(),
            state: ServerState::Ready,
            health: "up",
            weight: 1,
            effective_weight: 1,
            inflight: 0,
            requests: 3,
            responses: StatusClasses {
                s2xx: 3,
                s3xx: 0,
                s4xx: 0,
                s5xx: 0,
            },
            failures: 0,
            bytes_out: 100,
            tunnels: 0,
            latency: LatencyView {
                count: 3,
                p50_ms: Some(1.5),
                p99_ms: Some(9.0),
            },
        }],
    };
    StatsDoc {
        timestamp_ms: 1_700_000_000_000,
        routes: vec![route()],
        http_pools: vec![route()],
        tcp: Some(TcpStats {
            frontends: BTreeMap::from([("pg".to_string(), counters())]),
            pools: BTreeMap::from([(
                "db".to_string(),
                BTreeMap::from([("10.0.0.5:5432".to_string(), counters())]),
            )]),
        }),
        store: StoreState {
            ok: false,
            problem: Some("read-only data dir".into()),
        },
    }
}

/// Runs every sample; returns the errors (empty: the document and the types agree).
fn contract_errors() -> Vec<String> {
    let mut c = Contract::load();
    // Public endpoints and errors.
    c.check_op(
        "Healthz",
        "get",
        "/healthz",
        "200",
        &Healthz {
            status: "ok".into(),
        },
    );
    c.check_op(
        "Version",
        "get",
        "/v1/version",
        "200",
        &Version {
            api: API_VERSION,
            berthd: "1.0.0".into(),
        },
    );
    c.check_op(
        "TokenInfo",
        "get",
        "/v1/token",
        "200",
        &TokenInfo {
            id: Some(3),
            name: Some("ci".into()),
            session: false,
            scopes: Scopes::parse(&["read".to_string(), "deploy:web".to_string()]).unwrap(),
        },
    );
    c.check_schema("ErrorBody", "Error", &error_body());
    // Routes and backends.
    c.check_op(
        "RouteSpec",
        "put",
        "/v1/routes/{name}",
        "request",
        &route_spec(),
    );
    c.check_op(
        "RouteView",
        "get",
        "/v1/routes/{name}",
        "200",
        &route_view(),
    );
    c.check_op(
        "RouteList",
        "get",
        "/v1/routes",
        "200",
        &RouteList {
            routes: vec![route_view()],
        },
    );
    c.check_op(
        "BackendSpec",
        "put",
        "/v1/routes/{name}/backends/{id}",
        "request",
        &backend_view().spec,
    );
    c.check_op(
        "BackendView",
        "get",
        "/v1/routes/{name}/backends/{id}",
        "200",
        &backend_view(),
    );
    c.check_op(
        "BackendList",
        "get",
        "/v1/routes/{name}/backends",
        "200",
        &BackendList {
            backends: vec![backend_view()],
        },
    );
    c.check_op(
        "StateInput",
        "put",
        "/v1/routes/{name}/backends/{id}/state",
        "request",
        &StateInput {
            state: ServerState::Maint,
        },
    );
    c.check_op(
        "BackendView",
        "put",
        "/v1/routes/{name}/backends/{id}/state",
        "200",
        &backend_view(),
    );
    // Deploys.
    c.check_op(
        "DeployRequest",
        "post",
        "/v1/apps/{app}/deploy",
        "request",
        &DeployRequest::new(app_spec()),
    );
    let accepted = DeployAccepted {
        id: "d1".into(),
        app: "web".into(),
        state: DeployState::Running,
    };
    c.check_op(
        "DeployAccepted",
        "post",
        "/v1/apps/{app}/deploy",
        "202",
        &accepted,
    );
    c.check_op(
        "RollbackInput",
        "post",
        "/v1/apps/{app}/rollback",
        "request",
        &RollbackInput {
            deployment: Some("d0".into()),
        },
    );
    c.check_op(
        "DeployAccepted",
        "post",
        "/v1/apps/{app}/rollback",
        "202",
        &accepted,
    );
    c.check_op("App", "get", "/v1/apps/{app}", "200", &app());
    c.check_op(
        "AppList",
        "get",
        "/v1/apps",
        "200",
        &AppList { apps: vec![app()] },
    );
    c.check_op(
        "AppDeleted",
        "delete",
        "/v1/apps/{app}",
        "200",
        &AppDeleted {
            app: "web".into(),
            replicas_removed: 2,
            deployments: 3,
            history_kept: true,
            images_untagged: 0,
        },
    );
    c.check_op(
        "AppStopped",
        "post",
        "/v1/apps/{app}/stop",
        "200",
        &AppStopped {
            app: "web".into(),
            state: "stopped".into(),
        },
    );
    c.check_op(
        "DeploymentRecord",
        "get",
        "/v1/deployments/{id}",
        "200",
        &deployment(),
    );
    c.check_op(
        "DeploymentList",
        "get",
        "/v1/apps/{app}/deployments",
        "200",
        &DeploymentList {
            deployments: vec![deployment()],
        },
    );
    for stage in Stage::ALL {
        c.check_schema(
            "DeployEvent",
            "DeployEvent",
            &DeployEvent::new("d1", 1_700_000_000_000, stage, "replica 1".into()),
        );
    }
    c.check_schema(
        "LogLine",
        "LogLine",
        &LogLine {
            container: "web-d1-1".into(),
            line: "listening".into(),
        },
    );
    c.check_schema(
        "StreamError",
        "StreamError",
        &StreamError {
            message: "container gone".into(),
        },
    );
    // App gates.
    c.check_op("AppGate", "get", "/v1/apps/{app}/gate", "200", &gate());
    c.check_op(
        "Pause",
        "post",
        "/v1/apps/{app}/pause",
        "request",
        &Pause {
            timeout: Duration::from_secs(30),
        },
    );
    c.check_op(
        "Maintenance",
        "put",
        "/v1/apps/{app}/maintenance",
        "request",
        &gate().maintenance.unwrap(),
    );
    // Canary and A/B.
    for what in ["promote", "abort"] {
        c.check_op(
            "CanaryStatus",
            "post",
            &format!("/v1/apps/{{app}}/{what}"),
            "200",
            &canary_status(),
        );
    }
    let split = VersionSplit {
        weights: [("d1".to_string(), 90), ("d2".to_string(), 10)].into(),
        sticky: true,
    };
    c.check_op(
        "VersionSplit",
        "get",
        "/v1/apps/{app}/traffic",
        "200",
        &split,
    );
    c.check_op(
        "VersionSplit",
        "put",
        "/v1/apps/{app}/traffic",
        "200",
        &split,
    );
    c.check_op(
        "VersionSplit",
        "delete",
        "/v1/apps/{app}/versions/{version}",
        "202",
        &split,
    );
    let weights: TrafficWeights = [("v1".to_string(), 90), ("v2".to_string(), 10)].into();
    c.check_op(
        "TrafficWeights",
        "put",
        "/v1/apps/{app}/traffic",
        "request",
        &weights,
    );
    // Pools that follow an app.
    c.check_op(
        "PoolVersionInput",
        "post",
        "/v1/pools/{name}/version",
        "request",
        &PoolVersionInput {
            version: "20261205-1".into(),
        },
    );
    // Certificates.
    c.check_op(
        "CertificateList",
        "get",
        "/v1/certificates",
        "200",
        &CertificateList {
            certificates: vec![cert()],
        },
    );
    c.check_op(
        "CertRetryQueued",
        "post",
        "/v1/certificates/{domain}/retry",
        "202",
        &CertRetryQueued {
            domain: "web.test".into(),
            status: "queued".into(),
        },
    );
    // Statistics (their types live in api::stats and proxy::tcp: serialise-only).
    c.check_op("StatsDoc", "get", "/v1/stats", "200", &stats());
    let mut errors = std::mem::take(&mut c.errors);
    errors.extend(c.unused());
    errors
}

#[test]
fn every_api_type_matches_the_openapi_document_both_ways() {
    let errors = contract_errors();
    assert!(
        errors.is_empty(),
        "the API types and src/api/openapi.json disagree:\n  {}",
        errors.join("\n  ")
    );
}

/// The check itself: a field renamed in a type, a required field the type lacks, and a
/// documented field no type writes are each caught.
#[test]
fn the_contract_check_catches_a_rename() {
    let mut c = Contract::load();
    let mut v = serde_json::to_value(DeployAccepted {
        id: "d1".into(),
        app: "web".into(),
        state: DeployState::Running,
    })
    .unwrap();
    // The type renamed `id` to `deployment`.
    let id = v.as_object_mut().unwrap().remove("id").unwrap();
    v["deployment"] = id;
    let (loc, schema) = c.operation("post", "/v1/apps/{app}/deploy", "202");
    c.check(&loc, &schema, &v, "renamed");
    let text = c.errors.join("\n");
    assert!(
        text.contains("writes `deployment`") && text.contains("requires `id`"),
        "{text}"
    );
    assert!(
        c.unused().iter().any(|u| u.contains("`id`")),
        "{:?}",
        c.unused()
    );
}
