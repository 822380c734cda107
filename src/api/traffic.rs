//! The traffic-control endpoints of deployed apps (issue 21 item 4): pause / resume (requests
//! held, not refused) and maintenance on / off (503 page with `Retry-After`). Each handler is a
//! thin mapping onto one `deploy::Engine` method; the engine validates (422 naming the field),
//! persists, then publishes.

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;

use super::apps::{engine, AppsError};
use super::error::{parse_json, ApiPath};
use super::ApiState;
use crate::model::traffic::{AppGate, Maintenance, Pause};

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps/{app}/gate", get(gate))
        .route("/v1/apps/{app}/pause", post(pause))
        .route("/v1/apps/{app}/resume", post(resume))
        .route(
            "/v1/apps/{app}/maintenance",
            put(maintenance_on).delete(maintenance_off),
        )
}

/// `GET /v1/apps/{app}/gate`: `{paused?: {timeout}, maintenance?: {...}}`.
async fn gate(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AppGate>, AppsError> {
    Ok(Json(engine(&state)?.gate(&app)?))
}

/// `POST /v1/apps/{app}/pause` with an optional `{"timeout": "30s"}`.
async fn pause(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    body: Bytes,
) -> Result<Json<AppGate>, AppsError> {
    let pause: Pause = if body.iter().all(|b| b.is_ascii_whitespace()) {
        Pause::default()
    } else {
        parse_json(&body)?
    };
    Ok(Json(engine(&state)?.pause(&app, pause)?))
}

/// `POST /v1/apps/{app}/resume`.
async fn resume(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AppGate>, AppsError> {
    Ok(Json(engine(&state)?.resume(&app)?))
}

/// `PUT /v1/apps/{app}/maintenance` with `{"message"?, "retry_after"?, "allow"?: [CIDR]}`.
async fn maintenance_on(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    body: Bytes,
) -> Result<Json<AppGate>, AppsError> {
    let m: Maintenance = if body.iter().all(|b| b.is_ascii_whitespace()) {
        Maintenance::default()
    } else {
        parse_json(&body)?
    };
    Ok(Json(engine(&state)?.maintenance(&app, Some(m))?))
}

/// `DELETE /v1/apps/{app}/maintenance`.
async fn maintenance_off(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AppGate>, AppsError> {
    Ok(Json(engine(&state)?.maintenance(&app, None)?))
}
