//! Runtime API, end to end and in-process: a real daemon (proxy + API on 127.0.0.1:0, data
//! dir in a tempdir) in front of real HTTP backends on loopback. Covers auth (401s),
//! validation (400/422 naming the field), conflicts (409), routing through API-made routes,
//! state changes, persistence across a restart, stats/SSE/metrics, the OpenAPI document, and
//! 200 route updates under load with zero failed requests.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use berth::daemon::Running;

use crate::support::TestBackend;
use berth::model::config::Config;
use berth::model::route::RouteSpec;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A test backend (`support::proxy::TestBackend`) that answers every request with its name.
async fn backend(name: &'static str) -> TestBackend {
    let b = TestBackend::start(name).await;
    b.state.name_only.store(true, Ordering::SeqCst);
    b
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

fn config(dir: &Path, statics: &str) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.http.listen = "127.0.0.1:0".parse().unwrap();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.api.max_body_size = berth::model::config::ByteSize(64 << 10);
    c.log.access_log = false;
    c.proxy.timeouts.drain = Duration::from_millis(500);
    c.routes = serde_json::from_str::<Vec<RouteSpec>>(statics).expect("static routes parse");
    c
}

struct Daemon {
    running: Running,
    token: String,
    client: HttpClient,
}

impl Daemon {
    async fn start(dir: &Path, statics: &str) -> Daemon {
        Daemon::start_with(config(dir, statics)).await
    }

    async fn start_with(config: Config) -> Daemon {
        let running = berth::daemon::start(config, None)
            .await
            .expect("daemon starts");
        let (_, token) = running
            .registry
            .store()
            .create_token("test")
            .expect("token created");
        Daemon {
            running,
            token,
            client: client(),
        }
    }

    async fn stop(self) {
        drop(self.client);
        tokio::time::timeout(Duration::from_secs(10), self.running.shutdown())
            .await
            .expect("daemon stops within 10 s");
    }

    /// An API call with this daemon's token. Returns status and parsed JSON (Null if empty).
    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.api_raw(
            method,
            path,
            Some(&self.token.clone()),
            body.map(|b| b.to_string()),
        )
        .await
    }

    async fn api_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.running.api_addr));
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request builds");
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .expect("API answers within 10 s")
            .expect("API request succeeds");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("API body")
            .to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    /// GET through the proxy with `Host: host`; returns status and body text.
    async fn proxy_get(&self, host: &str) -> Result<(StatusCode, String), String> {
        proxy_get(&self.client, self.running.http_addr, host).await
    }
}

async fn proxy_get(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
) -> Result<(StatusCode, String), String> {
    let req = Request::builder()
        .uri(format!("http://{addr}/"))
        .header(header::HOST, host)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Which backends answered `n` requests for `host` (name → count); non-200s under "<status>".
async fn spread(d: &Daemon, host: &str, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let (status, body) = d.proxy_get(host).await.expect("proxy answers");
        let key = if status == StatusCode::OK {
            body
        } else {
            format!("<{}>", status.as_u16())
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

async fn set_state(d: &Daemon, route: &str, id: &str, st: &str) {
    let path = format!("/v1/routes/{route}/backends/{id}/state");
    let (s, v) = d
        .api(Method::PUT, &path, Some(json!({ "state": st })))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], st);
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn error_field(v: &Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("")
}

const STATIC: &str = r#"[{"name":"static","domains":["static.test"],
    "backends":[{"id":"s1","address":"127.0.0.1:9"}]}]"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_revoked_tokens_get_401() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;

    let (s, v) = d.api_raw(Method::GET, "/v1/routes", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&v), "missing_token", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("Bearer"));

    let (s, v) = d
        .api_raw(Method::GET, "/v1/routes", Some("berth_0000"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&v), "invalid_token");

    // A token with one character changed is refused too.
    let mut almost = d.token.clone();
    let last = if almost.ends_with('0') { "1" } else { "0" };
    almost.replace_range(almost.len() - 1.., last);
    let (s, _) = d
        .api_raw(Method::GET, "/v1/routes", Some(&almost), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Writes are protected too, and a refused write changes nothing.
    let (s, _) = d
        .api_raw(
            Method::PUT,
            "/v1/routes/x",
            None,
            Some(r#"{"domains":["x.test"]}"#.into()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(d.running.registry.route("x").is_none());

    // A second token works until revoked; revocation takes effect immediately.
    let store = d.running.registry.store().clone();
    let (info, other) = store.create_token("other").unwrap();
    let (s, _) = d
        .api_raw(Method::GET, "/v1/stats", Some(&other), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    store.revoke_token(info.id).unwrap();
    let (s, v) = d
        .api_raw(Method::GET, "/v1/stats", Some(&other), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&v), "invalid_token");

    // Unauthenticated endpoints.
    let (s, v) = d.api_raw(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"status": "ok"})));
    let (s, v) = d.api_raw(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["openapi"].as_str().unwrap().starts_with("3."));
    let (s, _) = d.api_raw(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_400_or_422_naming_the_field() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;
    let tok = d.token.clone();
    let raw = |body: &str| Some(body.to_string());

    /// method, path, body, status, error code, error field
    type Case = (
        &'static str,
        &'static str,
        Option<String>,
        StatusCode,
        &'static str,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            "PUT",
            "/v1/routes/web",
            raw("{"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(""),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw("{}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "domains",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(r#"{"domains":["bad host"]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "domains[0]",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(r#"{"domains":[]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "domains",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(r#"{"domains":["w.test"],"backends":[{"address":"127.0.0.1"}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "backends[0].address",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(r#"{"domains":["w.test"],"backends":[{"address":"127.0.0.1:1","weight":5000}]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "backends[0].weight",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(
                r#"{"domains":["w.test"],"backends":[{"address":"127.0.0.1:1"},{"address":"127.0.0.1:1"}]}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "backends[1]",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(r#"{"domains":["w.test"],"colour":"red"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "colour",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(r#"{"name":"other","domains":["w.test"]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            "PUT",
            "/v1/routes/web",
            raw(r#"{"domains":["w.test"],"path_prefix":"api"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "path_prefix",
        ),
        (
            "PUT",
            "/v1/routes/we%20b",
            raw(r#"{"domains":["w.test"]}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "name",
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(format!(
                r#"{{"domains":["w.test"],"aliases":[{}]}}"#,
                vec!["\"a.test\""; 8000].join(",")
            )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "",
        ),
        (
            "PUT",
            "/v1/routes/%FF",
            raw(r#"{"domains":["w.test"]}"#),
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "",
        ),
        (
            "POST",
            "/v1/routes",
            raw("{}"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "",
        ),
        (
            "GET",
            "/v1/nothing",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            "",
        ),
    ];
    for (method, path, body, status, code, field) in cases {
        let (s, v) = d
            .api_raw(method.parse().unwrap(), path, Some(&tok), body.clone())
            .await;
        assert_eq!(s, *status, "{method} {path}: {v}");
        assert_eq!(error_code(&v), *code, "{method} {path}: {v}");
        assert_eq!(error_field(&v), *field, "{method} {path}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    assert_eq!(d.running.registry.routes().len(), 1, "nothing was created");

    // Backend and state bodies.
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/web",
            Some(json!({"domains": ["w.test"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let cases: &[(&str, Value, StatusCode, &str)] = &[
        (
            "/v1/routes/web/backends/a",
            json!({"address": "127.0.0.1:1", "weight": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weight",
        ),
        (
            "/v1/routes/web/backends/a",
            json!({"address": "127.0.0.1:1", "weight": 1001}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weight",
        ),
        (
            "/v1/routes/web/backends/a",
            json!({"address": "127.0.0.1:99999"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "address",
        ),
        (
            "/v1/routes/web/backends/a",
            json!({"weight": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "address",
        ),
        (
            "/v1/routes/web/backends/a",
            json!({"id": "b", "address": "127.0.0.1:1"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
        (
            "/v1/routes/nope/backends/a",
            json!({"address": "127.0.0.1:1"}),
            StatusCode::NOT_FOUND,
            "",
        ),
        (
            "/v1/routes/web/backends/a/state",
            json!({"state": "off"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "state",
        ),
        (
            "/v1/routes/web/backends/a/state",
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "state",
        ),
        (
            "/v1/routes/web/backends/a/state",
            json!({"state": "drain"}),
            StatusCode::NOT_FOUND,
            "",
        ),
    ];
    for (path, body, status, field) in cases {
        let (s, v) = d.api(Method::PUT, path, Some(body.clone())).await;
        assert_eq!(s, *status, "{path} {body}: {v}");
        assert_eq!(error_field(&v), *field, "{path} {body}: {v}");
    }
    let (_, v) = d.api(Method::GET, "/v1/routes/web/backends", None).await;
    assert_eq!(v, json!({"backends": []}));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_read_only_static_routes_get_409() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;

    let (s, v) = d.api(Method::GET, "/v1/routes/static", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["source"], "config");
    assert_eq!(v["read_only"], true);
    assert_eq!(v["spec"]["backends"][0]["id"], "s1");

    // A domain owned by the static route.
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/web",
            Some(json!({"domains": ["web.test"], "aliases": ["STATIC.test."]})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(error_code(&v), "conflict");
    assert_eq!(error_field(&v), "aliases[0]");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("\"static\"") && msg.contains("config"),
        "{msg}"
    );

    // A domain owned by another API route; the same domain under another prefix is fine.
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/one",
            Some(json!({"domains": ["one.test"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/two",
            Some(json!({"domains": ["x.test", "one.test"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(error_field(&v), "domains[1]");
    assert!(v["error"]["message"].as_str().unwrap().contains("\"one\""));
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/two",
            Some(json!({"domains": ["one.test"], "path_prefix": "/two"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    // Static routes are read-only, except backend states.
    for (method, path, body) in [
        (
            Method::PUT,
            "/v1/routes/static",
            Some(json!({"domains": ["static.test"]})),
        ),
        (Method::DELETE, "/v1/routes/static", None),
        (
            Method::PUT,
            "/v1/routes/static/backends/s2",
            Some(json!({"address": "127.0.0.1:1"})),
        ),
        (Method::DELETE, "/v1/routes/static/backends/s1", None),
    ] {
        let (s, v) = d.api(method.clone(), path, body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{method} {path}");
        assert_eq!(error_code(&v), "read_only");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("configuration file"));
    }
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/static/backends/s1/state",
            Some(json!({"state": "maint"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "maint");

    // Names may hold '/', percent-encoded in the path (default names of prefix routes).
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/one%2Fv2",
            Some(json!({"domains": ["one.test"], "path_prefix": "/v2"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "one/v2");
    let (s, _) = d.api(Method::DELETE, "/v1/routes/one%2Fv2", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // 404s.
    for (method, path) in [
        (Method::GET, "/v1/routes/nope"),
        (Method::DELETE, "/v1/routes/nope"),
        (Method::GET, "/v1/routes/nope/backends"),
        (Method::GET, "/v1/routes/one/backends/nope"),
        (Method::DELETE, "/v1/routes/one/backends/nope"),
    ] {
        let (s, v) = d.api(method.clone(), path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(error_code(&v), "not_found");
    }
    let (s, _) = d.api(Method::DELETE, "/v1/routes/two", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = d.api(Method::GET, "/v1/routes", None).await;
    let names: Vec<&str> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["static", "one"]);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_routes_serve_traffic_and_states_steer_it() {
    let (a, b) = (backend("a").await, backend("b").await);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;

    let (s, _) = d.proxy_get("web.test").await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND, "no route yet");
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/web",
            Some(json!({"domains": ["web.test"], "backends": [
                {"id": "a", "address": a.addr.to_string()},
                {"id": "b", "address": b.addr.to_string()}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "web");
    assert_eq!(v["source"], "api");
    assert_eq!(v["read_only"], false);
    assert_eq!(v["spec"]["backends"][1]["state"], "ready");

    let seen = spread(&d, "web.test", 20).await;
    assert_eq!(seen, HashMap::from([("a".into(), 10), ("b".into(), 10)]));

    set_state(&d, "web", "a", "drain").await;
    assert_eq!(
        spread(&d, "web.test", 10).await,
        HashMap::from([("b".into(), 10)])
    );
    set_state(&d, "web", "a", "ready").await;
    set_state(&d, "web", "b", "maint").await;
    assert_eq!(
        spread(&d, "web.test", 10).await,
        HashMap::from([("a".into(), 10)])
    );
    set_state(&d, "web", "a", "maint").await;
    assert_eq!(
        spread(&d, "web.test", 3).await,
        HashMap::from([("<503>".into(), 3)])
    );
    set_state(&d, "web", "a", "ready").await;
    set_state(&d, "web", "b", "ready").await;

    // Weights, via the backend resource.
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/web/backends/b",
            Some(json!({"address": b.addr.to_string(), "weight": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"id": "b", "address": b.addr.to_string(), "weight": 3, "state": "ready", "health": "up"})
    );
    assert_eq!(
        spread(&d, "web.test", 40).await,
        HashMap::from([("a".into(), 10), ("b".into(), 30)])
    );
    // Remove a, add it back as a new backend id.
    let (s, _) = d
        .api(Method::DELETE, "/v1/routes/web/backends/a", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        spread(&d, "web.test", 5).await,
        HashMap::from([("b".into(), 5)])
    );
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/web/backends/a2",
            Some(json!({"address": a.addr.to_string(), "weight": 3})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        spread(&d, "web.test", 60).await,
        HashMap::from([("a".into(), 30), ("b".into(), 30)])
    );

    // Stats reflect the traffic.
    let (s, v) = d.api(Method::GET, "/v1/stats", None).await;
    assert_eq!(s, StatusCode::OK);
    let web = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "web")
        .expect("web in stats")
        .clone();
    assert_eq!(web["source"], "api");
    let b_stats = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "b")
        .unwrap();
    // b served 10 + 10 + 30 + 5 + 30 = 85 requests (10 in the first round, 10 after a drained).
    assert_eq!(b_stats["requests"], 85, "{b_stats}");
    assert_eq!(b_stats["responses"]["2xx"], 85);
    assert_eq!(b_stats["weight"], 3);
    let (s, text) = d.api_raw(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let text = text.as_str().expect("metrics are text");
    assert!(
        text.contains(r#"berth_backend_requests_total{route="web",backend="b"} 85"#),
        "{text}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_weights_and_states_survive_a_restart() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let tmp = tempfile::tempdir().unwrap();
    let statics = format!(
        r#"[{{"name":"static","domains":["static.test"],
            "backends":[{{"id":"s1","address":"{}"}},{{"id":"s2","address":"{}"}}]}}]"#,
        a.addr, b.addr
    );
    let d = Daemon::start(tmp.path(), &statics).await;
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/web",
            Some(
                json!({"domains": ["web.test"], "aliases": ["www.web.test"], "backends": [
                {"id": "a", "address": a.addr.to_string(), "weight": 3},
                {"id": "b", "address": b.addr.to_string(), "state": "drain"},
                {"id": "c", "address": c.addr.to_string(), "weight": 1}]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/api/backends/x",
            Some(json!({"address": c.addr.to_string()})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/api",
            Some(
                json!({"domains": ["web.test"], "path_prefix": "/api", "backends": [
                {"id": "x", "address": c.addr.to_string()}]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/static/backends/s1/state",
            Some(json!({"state": "maint"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Balancer options, health checks and slow start are stored and served back as given.
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/sticky",
            Some(json!({"domains": ["sticky.test"],
                "balancer": {"kind": "sticky_cookie", "cookie": "PIN"},
                "health_check": {"path": "/up", "interval": "2s", "fall": 2},
                "slowstart": "10s", "on_down": "shutdown_sessions",
                "backends": [{"id": "a", "address": a.addr.to_string()}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        v["spec"]["balancer"],
        json!({"kind": "sticky_cookie", "cookie": "PIN"})
    );
    assert_eq!(v["spec"]["health_check"]["interval"], "2s");
    assert_eq!(v["spec"]["health_check"]["rise"], 2);
    assert_eq!(v["spec"]["slowstart"], "10s");
    let (s, v) = d
        .api(
            Method::PUT,
            "/v1/routes/bad",
            Some(json!({"domains": ["bad.test"], "health_check": {"interval": "0s"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(error_field(&v), "health_check.interval");
    let (_, before) = d.api(Method::GET, "/v1/routes", None).await;
    let web_before = spread(&d, "web.test", 40).await;
    assert_eq!(
        web_before,
        HashMap::from([("a".into(), 30), ("c".into(), 10)])
    );
    let static_before = spread(&d, "static.test", 10).await;
    assert_eq!(static_before, HashMap::from([("b".into(), 10)]));
    d.stop().await;

    // Same data dir, same config file: the same routes, weights and states are served.
    let d = Daemon::start(tmp.path(), &statics).await;
    let (_, after) = d.api(Method::GET, "/v1/routes", None).await;
    assert_eq!(before, after);
    assert_eq!(spread(&d, "web.test", 40).await, web_before);
    assert_eq!(spread(&d, "static.test", 10).await, static_before);
    // The prefix route came back too.
    let req = Request::builder()
        .uri(format!("http://{}/api/x", d.running.http_addr))
        .header(header::HOST, "web.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = d.client.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"c");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_stream_sends_an_event_every_second() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;
    let req = Request::builder()
        .uri(format!("http://{}/v1/stats/stream", d.running.api_addr))
        .header(header::AUTHORIZATION, format!("Bearer {}", d.token))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = d.client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body();
    let started = Instant::now();
    let mut text = String::new();
    let mut events = Vec::new();
    while events.len() < 3 {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("stream open")
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if event.starts_with("event: stats") {
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .expect("data line");
                let v: Value = serde_json::from_str(data).expect("event data is JSON");
                assert_eq!(v["routes"][0]["name"], "static");
                events.push(started.elapsed());
            }
        }
    }
    // First event at once, then about one per second.
    assert!(events[0] < Duration::from_millis(900), "{events:?}");
    assert!(events[2] >= Duration::from_millis(1800), "{events:?}");
    // Stopping the daemon ends open streams (shutdown does not hang on them).
    let stopper = tokio::spawn(d.stop());
    loop {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(_))) => continue,
            Err(_) => panic!("the event stream did not end when the daemon stopped"),
        }
    }
    stopper.await.expect("daemon stopped");
}

/// Every documented operation is served (no 404 "no such endpoint", no 405), and answers
/// with a status the document lists for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_router() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;
    let (_, doc) = d.api_raw(Method::GET, "/v1/openapi.json", None, None).await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            ops += 1;
            let concrete = path
                .replace("{name}", "static")
                .replace("{id}", "s1")
                .replace("{app}", "nosuchapp")
                .replace("{version}", "v9");
            let body = op.get("requestBody").map(|_| {
                json!({"state": "ready", "domains": ["x.test"], "address": "127.0.0.1:1"})
                    .to_string()
            });
            let m: Method = method.to_uppercase().parse().unwrap();
            let status = if path.ends_with("/stream") {
                // Only look at the head of the endless stream.
                let req = Request::builder()
                    .uri(format!("http://{}{concrete}", d.running.api_addr))
                    .header(header::AUTHORIZATION, format!("Bearer {}", d.token))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                d.client.request(req).await.unwrap().status()
            } else {
                let (s, v) = d.api_raw(m.clone(), &concrete, Some(&d.token), body).await;
                assert_ne!(error_code(&v), "method_not_allowed", "{m} {concrete}");
                assert!(
                    !v["error"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("no such endpoint"),
                    "{m} {concrete}"
                );
                s
            };
            let documented = op["responses"]
                .as_object()
                .unwrap()
                .contains_key(status.as_str());
            assert!(
                documented,
                "{m} {concrete} answered {status}, not documented"
            );
        }
    }
    // main's 27 + GET /v1/token (issue 18 item 7) + 8 frontend/pool ops (issue 22) + the app
    // gate: GET gate, POST pause, POST resume, PUT/DELETE maintenance (issue 21 item 4) + GET
    // /v1/config and POST /v1/pools/{name}/version (issue 22) + POST promote, POST abort,
    // GET/PUT traffic (issue 21 items 2 and 3) + DELETE /v1/apps/{app}/versions/{version}
    // (issue 21 item 3: removing a kept version).
    assert_eq!(ops, 48);
    d.stop().await;
}

/// 200 route updates (weights and backend sets alternating) while GETs flow through the
/// proxy for ~10 s: not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_updates_under_load_fail_no_request() {
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/web",
            Some(json!({"domains": ["web.test"], "backends": [
                {"id": "a", "address": a.addr.to_string()},
                {"id": "b", "address": b.addr.to_string()}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    const UPDATES: usize = 200;
    const MAX_REQUESTS_PER_WORKER: u64 = 50_000;
    let hard_stop = Instant::now() + Duration::from_secs(30);
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let addr = d.running.http_addr;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (ok, failures, finished) = (ok.clone(), failures.clone(), finished.clone());
        let c = client();
        workers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            for _ in 0..MAX_REQUESTS_PER_WORKER {
                if finished.load(Ordering::Relaxed) || Instant::now() > hard_stop {
                    break;
                }
                match proxy_get(&c, addr, "web.test").await {
                    Ok((StatusCode::OK, body)) => {
                        seen.insert(body);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => {
                        failures.lock().unwrap().push(format!("{status}: {body}"))
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
            seen
        }));
    }

    // ~10 s of updates: 200 changes, one every 50 ms.
    let started = Instant::now();
    for i in 0..UPDATES {
        let (path, body) = match i % 4 {
            0 => (
                "/v1/routes/web".to_string(),
                json!({"domains": ["web.test"], "backends": [
                    {"id": "a", "address": a.addr.to_string(), "weight": 1},
                    {"id": "b", "address": b.addr.to_string(), "weight": 3}]}),
            ),
            1 => (
                "/v1/routes/web/backends/b".to_string(),
                json!({"address": b.addr.to_string(), "weight": 1 + (i % 7) as u32}),
            ),
            2 => (
                "/v1/routes/web".to_string(),
                json!({"domains": ["web.test"], "backends": [
                    {"id": "b", "address": b.addr.to_string(), "weight": 2},
                    {"id": "c", "address": c.addr.to_string(), "weight": 1}]}),
            ),
            _ => (
                "/v1/routes/web/backends/b/state".to_string(),
                json!({"state": if i % 8 == 3 { "drain" } else { "ready" }}),
            ),
        };
        let (s, v) = d.api(Method::PUT, &path, Some(body)).await;
        assert!(s.is_success(), "update {i} {path}: {s} {v}");
        // Paced to one update per 50 ms (no extra wait when an update itself took longer).
        tokio::time::sleep_until((started + Duration::from_millis(50) * (i as u32 + 1)).into())
            .await;
    }
    let update_time = started.elapsed();
    finished.store(true, Ordering::Relaxed);
    let mut seen = HashSet::new();
    for w in workers {
        seen.extend(w.await.expect("load worker"));
    }
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    eprintln!(
        "updates: {UPDATES} in {update_time:?}; requests: {ok} ok, {} failed; backends seen: {seen:?}",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 200, "the load loop ran ({ok} requests)");
    assert_eq!(seen, HashSet::from(["a".into(), "b".into(), "c".into()]));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path(), STATIC);
    c.api.metrics_auth = true;
    let d = Daemon::start_with(c).await;
    let (s, v) = d.api_raw(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&v), "missing_token");
    let tok = d.token.clone();
    let (s, v) = d.api_raw(Method::GET, "/metrics", Some(&tok), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v.as_str()
            .unwrap()
            .contains("berth_routes{source=\"config\"} 1"),
        "{v}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_route_that_collides_with_a_new_config_route_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;
    let (s, _) = d
        .api(
            Method::PUT,
            "/v1/routes/web",
            Some(json!({"domains": ["web.test"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    d.stop().await;
    // The config file now claims the same domain: refuse to start, naming both routes.
    let clash = r#"[{"name":"cfg","domains":["web.test"]}]"#;
    let err = match berth::daemon::start(config(tmp.path(), clash), None).await {
        Ok(_) => panic!("start must fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"web\"") && err.contains("\"cfg\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentication_is_rate_limited_per_client_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path(), STATIC);
    c.api.auth_failures_per_minute = 3;
    c.api.auth_limit_loopback = true;
    let d = Daemon::start_with(c).await;
    for i in 0..3 {
        let (s, _) = d
            .api_raw(Method::GET, "/v1/routes", Some("berth_guess"), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // Blocked now, even with the right token, until the minute is over.
    let (s, v) = d.api(Method::GET, "/v1/routes", None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(error_code(&v), "too_many_auth_failures", "{v}");
    // Unauthenticated endpoints still answer.
    let (s, _) = d.api_raw(Method::GET, "/healthz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    d.stop().await;

    // Default: loopback clients (SSH tunnels) are not limited.
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), STATIC).await;
    for _ in 0..15 {
        let (s, _) = d
            .api_raw(Method::GET, "/v1/routes", Some("berth_guess"), None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, _) = d.api(Method::GET, "/v1/routes", None).await;
    assert_eq!(s, StatusCode::OK);
    d.stop().await;
}
