//! `/v1/frontends/...` and `/v1/pools/...`: TCP frontends (listeners as data) and the pools
//! they send to. Every write goes through `proxy::tcp` (validate → bind → persist → publish);
//! the persist step writes the store here. Names come from the path; a body may repeat them but
//! must then agree. Config-file frontends and pools are listed with `read_only: true`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::model::frontend::{Binds, FrontendSpec, KeepAlive, Mode, TcpTimeouts};
use crate::model::pool::PoolSpec;
use crate::model::route::{route_rules, RouteSpec, HTTPS_FRONTEND, HTTP_FRONTEND};
use crate::proxy::tcp::{ChangeError, FrontendView, TcpError};
use crate::store::{blocking, StoreError};

use super::error::{ApiError, ApiJson, ApiPath};
use super::ApiState;

/// The routes of this module (all behind the token check).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/frontends", get(list_frontends))
        .route(
            "/v1/frontends/{name}",
            get(get_frontend).put(put_frontend).delete(delete_frontend),
        )
        .route("/v1/config", get(effective_config))
        .route("/v1/pools", get(list_pools))
        .route(
            "/v1/pools/{name}",
            get(get_pool).put(put_pool).delete(delete_pool),
        )
        .route("/v1/pools/{name}/version", post(set_version))
}

impl From<TcpError> for ApiError {
    fn from(e: TcpError) -> Self {
        match e {
            TcpError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            TcpError::ReadOnly { .. } | TcpError::DefaultFrontend { .. } => ApiError::Conflict {
                code: "read_only",
                field: None,
                message: e.to_string(),
            },
            TcpError::InUse { .. } => ApiError::Conflict {
                code: "in_use",
                field: None,
                message: e.to_string(),
            },
            TcpError::Invalid(r) => ApiError::Invalid {
                field: r.field,
                message: r.message,
            },
            TcpError::Bind {
                ref field,
                addr,
                ref source,
            } => {
                let message = format!("cannot listen on {addr}: {source}");
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    ApiError::Conflict {
                        code: "address_in_use",
                        field: Some(field.clone()),
                        message,
                    }
                } else {
                    ApiError::Invalid {
                        field: field.clone(),
                        message,
                    }
                }
            }
        }
    }
}

impl From<ChangeError<StoreError>> for ApiError {
    fn from(e: ChangeError<StoreError>) -> Self {
        match e {
            ChangeError::Tcp(t) => t.into(),
            ChangeError::Persist(s) => s.into(),
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::Internal(format!("serialising: {e}")))
}

/// The body's name must be absent or agree with the path.
fn check_name(path: &str, body: &mut Option<String>) -> Result<(), ApiError> {
    match body {
        Some(n) if n != path => Err(ApiError::Invalid {
            field: "name".into(),
            message: format!("the body names {n:?} but the path names {path:?}"),
        }),
        _ => {
            *body = Some(path.to_string());
            Ok(())
        }
    }
}

/// The default frontends as the API lists them: `http` on berthd's HTTP listener and `https`
/// on its HTTPS one (when it runs), read-only, their rules the routes in force
/// (`model::route::route_rules`), no default pool (no match → 404).
fn default_frontends(state: &ApiState) -> Vec<FrontendView> {
    let routes: Vec<RouteSpec> = state
        .registry
        .routes()
        .iter()
        .map(|r| r.spec.clone())
        .collect();
    let rules = route_rules(&routes);
    [HTTP_FRONTEND, HTTPS_FRONTEND]
        .into_iter()
        .filter_map(|name| {
            let (_, addr) = state.tcp.reserved().iter().find(|(n, _)| *n == name)?;
            Some(FrontendView {
                name: name.to_string(),
                read_only: true,
                spec: FrontendSpec {
                    name: Some(name.to_string()),
                    mode: Mode::Http,
                    bind: Binds::One(addr.to_string()),
                    pool: String::new(),
                    rules: rules.clone(),
                    timeouts: TcpTimeouts::default(),
                    keepalive: KeepAlive::Default,
                },
                listening: vec![*addr],
            })
        })
        .collect()
}

/// Every frontend: the default ones first, then the configured and API-made ones.
async fn all_frontends(state: &ApiState) -> Vec<FrontendView> {
    let mut all = default_frontends(state);
    all.extend(state.tcp.frontends().await);
    all
}

async fn list_frontends(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let frontends = all_frontends(&state).await;
    Ok(Json(json!({ "frontends": to_value(&frontends)? })))
}

/// The view named `name` of `views` (404 naming `what` when there is none).
fn named<T: serde::Serialize>(
    views: Vec<T>,
    name_of: fn(&T) -> &str,
    what: &str,
    name: &str,
) -> Result<Json<Value>, ApiError> {
    let v = views
        .into_iter()
        .find(|v| name_of(v) == name)
        .ok_or_else(|| ApiError::NotFound(format!("{what} {name:?} does not exist")))?;
    Ok(Json(to_value(&v)?))
}

/// A PUT's answer: 201 with the view when created, 200 when replaced.
fn put_answer<T: serde::Serialize>(created: bool, view: Option<T>) -> Result<Response, ApiError> {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(to_value(&view)?)).into_response())
}

async fn get_frontend(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    named(all_frontends(&state).await, |f| &f.name, "frontend", &name)
}

async fn put_frontend(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(mut spec): ApiJson<FrontendSpec>,
) -> Result<Response, ApiError> {
    check_name(&name, &mut spec.name)?;
    let store = state.registry.store().clone();
    let (created, _) = state
        .tcp
        .put_frontend(spec, |s| blocking(|| store.put_frontend(s)))
        .await?;
    let view = state
        .tcp
        .frontends()
        .await
        .into_iter()
        .find(|f| f.name == name);
    put_answer(created, view)
}

async fn delete_frontend(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.registry.store().clone();
    state
        .tcp
        .delete_frontend(&name, |n| blocking(|| store.delete_frontend(n)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_pools(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let pools = state.tcp.pools().await;
    Ok(Json(json!({ "pools": to_value(&pools)? })))
}

async fn get_pool(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    named(state.tcp.pools().await, |p| &p.name, "pool", &name)
}

async fn put_pool(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(mut spec): ApiJson<PoolSpec>,
) -> Result<Response, ApiError> {
    check_name(&name, &mut spec.name)?;
    let store = state.registry.store().clone();
    let created = state
        .tcp
        .put_pool(spec, |s| blocking(|| store.put_pool(s)))
        .await?;
    let view = state.tcp.pools().await.into_iter().find(|p| p.name == name);
    put_answer(created, view)
}

/// Switches a pool that follows an app to another deployment of it.
async fn set_version(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<crate::model::api::PoolVersionInput>,
) -> Result<Json<Value>, ApiError> {
    let store = state.registry.store().clone();
    state
        .tcp
        .set_version(&name, body.version, |s| blocking(|| store.put_pool(s)))
        .await?;
    let view = state.tcp.pools().await.into_iter().find(|p| p.name == name);
    Ok(Json(to_value(&view)?))
}

async fn delete_pool(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.registry.store().clone();
    state
        .tcp
        .delete_pool(&name, |n| blocking(|| store.delete_pool(n)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The effective configuration: what `GET /v1/config` answers.
#[derive(serde::Serialize)]
struct Effective {
    http: Listen,
    api: Listen,
    /// The HTTPS listener, when it runs (its certificates are the configuration file's).
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls>,
    routes: Vec<crate::model::route::RouteSpec>,
    frontends: Vec<FrontendSpec>,
    pools: Vec<PoolSpec>,
}

#[derive(serde::Serialize)]
struct Listen {
    listen: std::net::SocketAddr,
}

#[derive(serde::Serialize)]
struct Tls {
    enabled: bool,
    listen: std::net::SocketAddr,
}

/// `GET /v1/config`: the routes (config file, API, deployed apps; not the API's own route,
/// which `api.domain` makes), frontends and pools in force, with the HTTP, API and HTTPS
/// listen addresses (binds are checked against them; all as bound, so a port-0 listener or
/// frontend shows its real port), as YAML that `berthd check-config` accepts.
async fn effective_config(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let find = |name: &str| {
        state
            .tcp
            .reserved()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    };
    let addr =
        |name: &str| find(name).ok_or_else(|| ApiError::Internal(format!("no {name} listener")));
    let doc = Effective {
        http: Listen {
            listen: addr("http")?,
        },
        api: Listen {
            listen: addr("api")?,
        },
        tls: find("https").map(|listen| Tls {
            enabled: true,
            listen,
        }),
        routes: state
            .registry
            .routes()
            .iter()
            .filter(|r| r.name() != crate::model::config::API_ROUTE_NAME)
            .map(|r| r.spec.clone())
            .collect(),
        frontends: state.tcp.running_frontends().await,
        pools: state
            .tcp
            .pools()
            .await
            .into_iter()
            .map(|p| p.spec)
            .collect(),
    };
    let yaml =
        serde_yaml::to_string(&doc).map_err(|e| ApiError::Internal(format!("serialising: {e}")))?;
    // The default frontends are the listeners above with the routes as rules: shown as a
    // comment, since the file declares them through `http`, `tls` and `routes`.
    let mut defaults = String::new();
    for fe in default_frontends(&state) {
        defaults.push_str(&format!(
            "#   {}: mode http, bind {}, no default pool (no match: 404), rules:\n",
            fe.name, fe.listening[0]
        ));
        for r in &fe.spec.rules {
            let rule = serde_json::to_string(r)
                .map_err(|e| ApiError::Internal(format!("serialising: {e}")))?;
            defaults.push_str(&format!("#     - {rule}\n"));
        }
    }
    let text = format!(
        "# berthd's effective routes, frontends and pools (GET /v1/config); \
         `berthd check-config FILE` accepts this file.\n{yaml}\
         # The default frontends (read-only; GET /v1/frontends lists them): berthd's own \
         listeners, whose rules are\n# the routes (those above, and the API's own on \
         api.domain), exact hosts first, longest prefix first:\n{defaults}"
    );
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/yaml; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// The TCP frontends' counters in Prometheus text form (appended to `/metrics`). Pool members
/// are not here: they are `berth_pool_member_*` (`api::stats`), whatever the frontend's mode.
pub fn prometheus(stats: &crate::proxy::tcp::TcpStats) -> String {
    use crate::proxy::tcp::CounterView;
    use std::fmt::Write;
    let mut out = String::new();
    type Pick = fn(&CounterView) -> u64;
    let metrics: &[(&str, &str, &str, Pick)] = &[
        (
            "connections_total",
            "counter",
            "TCP connections accepted.",
            |c| c.connections_total,
        ),
        (
            "connections_active",
            "gauge",
            "TCP connections open now.",
            |c| c.connections_active,
        ),
        (
            "connections_failed_total",
            "counter",
            "TCP connections that found no usable or reachable member.",
            |c| c.connections_failed,
        ),
        (
            "received_bytes_total",
            "counter",
            "Bytes from clients to members.",
            |c| c.bytes_in,
        ),
        (
            "sent_bytes_total",
            "counter",
            "Bytes from members to clients.",
            |c| c.bytes_out,
        ),
    ];
    for (suffix, kind, help, pick) in metrics {
        let name = format!("berth_tcp_frontend_{suffix}");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (fe, c) in &stats.frontends {
            let _ = writeln!(out, "{name}{{frontend=\"{}\"}} {}", escape(fe), pick(c));
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
