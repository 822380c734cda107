//! Canary and A/B endpoints of deployed apps (issue 21 items 2 and 3): promote or abort the
//! running canary by hand, read and set the split between the app's versions. Thin mappings
//! onto `deploy::Engine`, which validates (422 naming the version), persists, then applies.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;

use super::apps::{engine, AppsError};
use super::error::{parse_json, ApiError, ApiPath};
use super::ApiState;
use crate::deploy::canary::CanaryStatus;
use crate::model::canary::VersionSplit;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/apps/{app}/promote", post(promote))
        .route("/v1/apps/{app}/abort", post(abort))
        .route("/v1/apps/{app}/traffic", get(traffic).put(set_traffic))
        .route("/v1/apps/{app}/versions/{version}", delete(remove_version))
}

/// `POST /v1/apps/{app}/promote`: the canary takes all traffic now (202-like: the
/// promotion runs in the deployment; follow its events).
async fn promote(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<CanaryStatus>, AppsError> {
    Ok(Json(engine(&state)?.promote(&app)?))
}

/// `POST /v1/apps/{app}/abort`: traffic back on stable now, the canary removed.
async fn abort(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<CanaryStatus>, AppsError> {
    Ok(Json(engine(&state)?.abort(&app)?))
}

/// `GET /v1/apps/{app}/traffic`: `{weights: {version: percent}, sticky}`.
async fn traffic(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<VersionSplit>, AppsError> {
    Ok(Json(engine(&state)?.traffic(&app)?))
}

#[derive(Deserialize)]
struct TrafficQuery {
    sticky: Option<bool>,
}

/// `PUT /v1/apps/{app}/traffic?sticky=true` with `{"<deployment id or image tag>": percent}`.
async fn set_traffic(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Result<Json<VersionSplit>, AppsError> {
    let q: TrafficQuery = axum::extract::Query::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest {
            code: "invalid_query",
            message: e.body_text(),
        })?;
    let weights: BTreeMap<String, u32> = parse_json(&body)?;
    Ok(Json(engine(&state)?.set_traffic(&app, &weights, q.sticky)?))
}

/// `DELETE /v1/apps/{app}/versions/{version}` (deployment id or image tag): 202 with the
/// split in force; the version drains and its containers go in the background.
async fn remove_version(
    State(state): State<ApiState>,
    ApiPath((app, version)): ApiPath<(String, String)>,
) -> Result<(StatusCode, Json<VersionSplit>), AppsError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(engine(&state)?.remove_version(&app, &version)?),
    ))
}
