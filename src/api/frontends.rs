//! `/v1/frontends/...` and `/v1/pools/...`: TCP frontends (listeners as data) and the pools
//! they send to. Every write goes through `proxy::tcp` (validate → bind → persist → publish);
//! the persist step writes the store here. Names come from the path; a body may repeat them but
//! must then agree. Config-file frontends and pools are listed with `read_only: true`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::model::frontend::FrontendSpec;
use crate::model::pool::PoolSpec;
use crate::proxy::tcp::{ChangeError, TcpError};
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
        .route("/v1/pools", get(list_pools))
        .route(
            "/v1/pools/{name}",
            get(get_pool).put(put_pool).delete(delete_pool),
        )
}

impl From<TcpError> for ApiError {
    fn from(e: TcpError) -> Self {
        match e {
            TcpError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            TcpError::ReadOnly { .. } => ApiError::Conflict {
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

async fn list_frontends(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let frontends = state.tcp.frontends().await;
    Ok(Json(json!({ "frontends": to_value(&frontends)? })))
}

async fn get_frontend(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let f = state
        .tcp
        .frontends()
        .await
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("frontend {name:?} does not exist")))?;
    Ok(Json(to_value(&f)?))
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
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(to_value(&view)?)).into_response())
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
    let p = state
        .tcp
        .pools()
        .await
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ApiError::NotFound(format!("pool {name:?} does not exist")))?;
    Ok(Json(to_value(&p)?))
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
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(to_value(&view)?)).into_response())
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

/// The TCP counters in Prometheus text form (appended to `/metrics`).
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
        let name = format!("berth_tcp_member_{suffix}");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (pool, members) in &stats.pools {
            for (id, c) in members {
                let _ = writeln!(
                    out,
                    "{name}{{pool=\"{}\",member=\"{}\"}} {}",
                    escape(pool),
                    escape(id),
                    pick(c)
                );
            }
        }
    }
    let name = "berth_tcp_member_up";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when the member passes its health check.\n# TYPE {name} gauge"
    );
    for (pool, members) in &stats.pools {
        for (id, c) in members {
            let up = u8::from(c.up.unwrap_or(true));
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",member=\"{}\"}} {up}",
                escape(pool),
                escape(id)
            );
        }
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
