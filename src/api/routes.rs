//! `/v1/routes/...`: routes and their backends. Reads come from the registry's listing
//! snapshot; every write is one `RouteChange` through the registry (validate → persist →
//! publish). Route and backend names come from the path; a body may repeat them but must
//! then agree. Config routes are listed with `read_only: true`; changing them is a 409, except
//! a backend's runtime state.

use crate::model::api::{
    BackendHealth, BackendList, BackendView, RouteList, RouteView, StateInput,
};
use crate::model::route::{BackendSpec, RouteSpec};
use crate::store::registry::{Outcome, RouteChange, RouteEntry};
use crate::store::RouteSource;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};

use super::error::{ApiError, ApiJson, ApiPath};
use super::ApiState;

/// The routes of this module (all behind the token check).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/routes", get(list_routes))
        .route(
            "/v1/routes/{name}",
            get(get_route).put(put_route).delete(delete_route),
        )
        .route("/v1/routes/{name}/backends", get(list_backends))
        .route(
            "/v1/routes/{name}/backends/{id}",
            get(get_backend).put(put_backend).delete(delete_backend),
        )
        .route("/v1/routes/{name}/backends/{id}/state", put(put_state))
}

/// A backend with its id always present, and its live health (`up`/`down`) when served.
fn backend_view(state: &ApiState, route: &str, b: &BackendSpec) -> BackendView {
    let mut spec = b.clone();
    let id = spec.id();
    let table = state.registry.table();
    let health = table
        .route(route)
        .and_then(|r| r.backends.iter().find(|x| x.id == id))
        .map(|x| BackendHealth::of(x.health.is_up()));
    spec.id = Some(id);
    BackendView { spec, health }
}

fn route_view(e: &RouteEntry) -> RouteView {
    let mut spec = e.spec.clone();
    spec.name = None;
    for b in &mut spec.backends {
        b.id = Some(b.id());
    }
    RouteView {
        name: e.name(),
        source: e.source,
        read_only: e.read_only(),
        spec,
    }
}

fn find_route(state: &ApiState, name: &str) -> Result<RouteEntry, ApiError> {
    state
        .registry
        .route(name)
        .ok_or_else(|| ApiError::NotFound(format!("route {name:?} does not exist")))
}

fn find_backend(entry: &RouteEntry, id: &str) -> Result<BackendSpec, ApiError> {
    entry
        .spec
        .backends
        .iter()
        .find(|b| b.id() == id)
        .cloned()
        .ok_or_else(|| {
            ApiError::NotFound(format!("route {:?} has no backend {id:?}", entry.name()))
        })
}

fn status_of(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Created => StatusCode::CREATED,
        Outcome::Updated => StatusCode::OK,
        Outcome::Deleted => StatusCode::NO_CONTENT,
    }
}

async fn list_routes(State(state): State<ApiState>) -> Json<RouteList> {
    let routes = state.registry.routes().iter().map(route_view).collect();
    Json(RouteList { routes })
}

async fn get_route(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RouteView>, ApiError> {
    Ok(Json(route_view(&find_route(&state, &name)?)))
}

async fn put_route(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(spec): ApiJson<RouteSpec>,
) -> Result<Response, ApiError> {
    let outcome = state
        .registry
        .apply(RouteChange::PutRoute {
            name: name.clone(),
            source: RouteSource::Api,
            spec,
        })
        .await?;
    let view = route_view(&find_route(&state, &name)?);
    Ok((status_of(outcome), Json(view)).into_response())
}

async fn delete_route(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .apply(RouteChange::DeleteRoute { name })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_backends(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<BackendList>, ApiError> {
    let entry = find_route(&state, &name)?;
    let backends = entry
        .spec
        .backends
        .iter()
        .map(|b| backend_view(&state, &name, b))
        .collect();
    Ok(Json(BackendList { backends }))
}

async fn get_backend(
    State(state): State<ApiState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<Json<BackendView>, ApiError> {
    let entry = find_route(&state, &name)?;
    Ok(Json(backend_view(
        &state,
        &name,
        &find_backend(&entry, &id)?,
    )))
}

async fn put_backend(
    State(state): State<ApiState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ApiJson(backend): ApiJson<BackendSpec>,
) -> Result<Response, ApiError> {
    let outcome = state
        .registry
        .apply(RouteChange::PutBackend {
            route: name.clone(),
            id: id.clone(),
            backend,
        })
        .await?;
    let entry = find_route(&state, &name)?;
    let view = backend_view(&state, &name, &find_backend(&entry, &id)?);
    Ok((status_of(outcome), Json(view)).into_response())
}

async fn delete_backend(
    State(state): State<ApiState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .registry
        .apply(RouteChange::DeleteBackend { route: name, id })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_state(
    State(state): State<ApiState>,
    ApiPath((name, id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<StateInput>,
) -> Result<Json<BackendView>, ApiError> {
    state
        .registry
        .apply(RouteChange::SetState {
            route: name.clone(),
            backend: id.clone(),
            state: body.state,
        })
        .await?;
    let entry = find_route(&state, &name)?;
    Ok(Json(backend_view(
        &state,
        &name,
        &find_backend(&entry, &id)?,
    )))
}
