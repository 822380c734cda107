//! The deploy endpoints of the REST API (issue 4 item 2): deploy (JSON spec with an image
//! reference, or multipart spec + streamed image tar), deployment status and its event stream
//! (SSE), apps, history, rollback, stop, logs (SSE), and the certificate list. Each handler is
//! a thin mapping onto one `deploy::Engine` method; without a running engine they answer 503.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::auth::TokenId;
use super::error::{parse_json, ApiError, ApiJson, ApiPath};
use super::ApiState;
use crate::deploy::{DeployError, DeployEvent, Engine, ImageSource};
use crate::model::api::{
    App, AppDeleted, AppList, AppStopped, CertificateList, DeployAccepted, DeploymentList,
    ErrorBody, ErrorDetail, LogLine, RollbackInput, Stage, StreamError,
};
use crate::model::deploy::AppSpec;
use crate::model::tar::{TarCheck, TarError};
use crate::runtime::{RegistryCreds, RuntimeError};
use crate::store::deployments::{DeployState, DeploymentRecord};

/// Longest deployment history returned at once.
const MAX_HISTORY: usize = 500;

pub fn router() -> Router<ApiState> {
    Router::new()
        .route(
            "/v1/apps/{app}/deploy",
            // The image tar is bounded by `deploy.max_upload_size` instead (see `deploy`).
            post(deploy).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}", get(get_app).delete(delete_app))
        .route("/v1/apps/{app}/deployments", get(list_deployments))
        .route("/v1/apps/{app}/rollback", post(rollback))
        .route("/v1/apps/{app}/stop", post(stop))
        .route("/v1/apps/{app}/logs", get(logs))
        .route("/v1/deployments/{id}", get(get_deployment))
        .route("/v1/deployments/{id}/events", get(events))
        .route("/v1/certificates", get(certificates))
}

/// An error answer of these endpoints: the API's usual error, or one with extra fields.
pub enum AppsError {
    Api(ApiError),
    /// 409 `deploy_in_progress` with the running deployment's id.
    InProgress {
        message: String,
        deployment: String,
    },
    /// 503: the engine does not run.
    Unavailable,
    /// 502: Docker refused or failed.
    Docker(String),
    /// 503: the process is handing its deploys to its successor (upgrade).
    Upgrading(String),
}

impl From<ApiError> for AppsError {
    fn from(e: ApiError) -> Self {
        AppsError::Api(e)
    }
}

impl From<DeployError> for AppsError {
    fn from(e: DeployError) -> Self {
        match e {
            DeployError::Conflict { ref running, .. } => AppsError::InProgress {
                message: e.to_string(),
                deployment: running.clone(),
            },
            DeployError::Invalid(s) => AppsError::Api(ApiError::Invalid {
                field: s.field,
                message: s.message,
            }),
            DeployError::AppNotFound(_) | DeployError::DeploymentNotFound(_) => {
                AppsError::Api(ApiError::NotFound(e.to_string()))
            }
            DeployError::DomainTaken(message) => AppsError::Api(ApiError::Conflict {
                code: "domain_taken",
                field: Some("domains".into()),
                message,
            }),
            DeployError::NoRollbackTarget(_) => AppsError::Api(ApiError::Conflict {
                code: "no_rollback_target",
                field: None,
                message: e.to_string(),
            }),
            DeployError::Store(s) => AppsError::Api(ApiError::Internal(s.to_string())),
            DeployError::Runtime(RuntimeError::NotFound { .. }) => {
                AppsError::Api(ApiError::NotFound(e.to_string()))
            }
            DeployError::Runtime(r) => AppsError::Docker(r.to_string()),
            DeployError::Secrets(m) => AppsError::Api(ApiError::Conflict {
                code: "secrets_unavailable",
                field: Some("secrets".into()),
                message: m,
            }),
            DeployError::Upgrading => AppsError::Upgrading(e.to_string()),
            DeployError::NoCanary(_) => AppsError::Api(ApiError::Conflict {
                code: "no_canary",
                field: None,
                message: e.to_string(),
            }),
            DeployError::Versions(message) => AppsError::Api(ApiError::Conflict {
                code: "versions",
                field: None,
                message,
            }),
        }
    }
}

impl IntoResponse for AppsError {
    fn into_response(self) -> Response {
        let (status, code, message, extra) = match self {
            AppsError::Api(e) => return e.into_response(),
            AppsError::InProgress {
                message,
                deployment,
            } => (
                StatusCode::CONFLICT,
                "deploy_in_progress",
                message,
                Some(deployment),
            ),
            AppsError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "deploy_unavailable",
                "the deploy engine is not running on this server (Docker was not reachable at \
                 start, or deploy.enabled is off); see the berthd log"
                    .to_string(),
                None,
            ),
            AppsError::Docker(m) => (StatusCode::BAD_GATEWAY, "docker_error", m, None),
            AppsError::Upgrading(m) => (StatusCode::SERVICE_UNAVAILABLE, "upgrading", m, None),
        };
        let error = ErrorDetail {
            code: code.to_string(),
            message,
            field: None,
            required_scope: None,
            host: None,
            deployment: extra,
        };
        (status, Json(ErrorBody { error })).into_response()
    }
}

pub(super) fn engine(state: &ApiState) -> Result<&Arc<Engine>, AppsError> {
    state.engine.as_ref().ok_or(AppsError::Unavailable)
}

/// The token's name (recorded as who deployed), `session` for a status-page login.
async fn who(state: &ApiState, token: Option<TokenId>) -> String {
    let Some(TokenId(id)) = token else {
        return "session".into();
    };
    let store = state.registry.store().clone();
    let name = tokio::task::spawn_blocking(move || store.list_tokens())
        .await
        .ok()
        .and_then(|r| r.ok())
        .and_then(|ts| ts.into_iter().find(|t| t.id == id).map(|t| t.name));
    name.unwrap_or_else(|| format!("token {id}"))
}

fn accepted(id: String, app: &str) -> Response {
    let body = DeployAccepted {
        id,
        app: app.to_string(),
        state: DeployState::Running,
    };
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// `POST /v1/apps/{app}/deploy`: `application/json` (an `AppSpec`; its image is used if local,
/// else pulled) or `multipart/form-data` with a part `spec` (JSON) followed by a part `image`
/// (a `docker save` tar, streamed to Docker as it arrives). Answers 202 with the deployment id
/// (for uploads, once the tar is received); progress is on `/v1/deployments/{id}/events`.
async fn deploy(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    req: Request,
) -> Result<Response, AppsError> {
    let engine = engine(&state)?.clone();
    let token = req.extensions().get::<TokenId>().copied();
    let who = who(&state, token).await;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("multipart/form-data") {
        let max_spec = state.settings.max_body_size;
        let max_image = state.settings.max_upload_size;
        let mp = Multipart::from_request(req, &state)
            .await
            .map_err(|e| bad_multipart(e.body_text()))?;
        return deploy_upload(engine, app, mp, max_spec, max_image, who).await;
    }
    if !content_type.is_empty() && !content_type.starts_with("application/json") {
        return Err(ApiError::BadRequest {
            code: "unsupported_media_type",
            message: format!(
                "Content-Type {content_type:?}: send application/json (an app spec) or \
                 multipart/form-data (parts `spec` and `image`)"
            ),
        }
        .into());
    }
    let ApiJson(mut spec) = ApiJson::<AppSpec>::from_request(req, &state).await?;
    let reference = spec.image.clone();
    // The registry password is used for this pull only: it leaves the spec here.
    let creds = spec
        .registry_login()
        .map_err(|e| ApiError::Invalid {
            field: e.field,
            message: e.message,
        })?
        .map(|(server, username, password)| RegistryCreds {
            username,
            password,
            server,
        });
    if let Some(r) = spec.registry.as_mut() {
        r.password = None;
    }
    let id = engine
        .deploy(
            &app,
            spec,
            ImageSource::Reference { reference, creds },
            &who,
        )
        .await?;
    Ok(accepted(id, &app))
}

/// 422 naming the `image` part: it is not a whole tar archive.
fn image_invalid(e: TarError) -> AppsError {
    ApiError::Invalid {
        field: "image".into(),
        message: format!("the image part {e}"),
    }
    .into()
}

fn bad_multipart(message: String) -> AppsError {
    ApiError::BadRequest {
        code: "invalid_multipart",
        message,
    }
    .into()
}

/// The next part of a multipart deploy, which must be called `name`.
async fn next_part<'a>(
    mp: &'a mut Multipart,
    name: &str,
    missing: &str,
    wrong: &str,
) -> Result<axum::extract::multipart::Field<'a>, AppsError> {
    let field = mp
        .next_field()
        .await
        .map_err(|e| bad_multipart(e.body_text()))?
        .ok_or_else(|| bad_multipart(missing.into()))?;
    if field.name() != Some(name) {
        return Err(bad_multipart(format!(
            "{wrong}, not {:?}",
            field.name().unwrap_or("")
        )));
    }
    Ok(field)
}

async fn deploy_upload(
    engine: Arc<Engine>,
    app: String,
    mut mp: Multipart,
    max_spec: usize,
    max_image: u64,
    who: String,
) -> Result<Response, AppsError> {
    let mut spec_field = next_part(
        &mut mp,
        "spec",
        "the form is empty; send a part `spec`, then `image`",
        "the first part must be `spec` (the app spec as JSON)",
    )
    .await?;
    let mut raw = Vec::new();
    while let Some(chunk) = spec_field
        .chunk()
        .await
        .map_err(|e| bad_multipart(e.body_text()))?
    {
        if raw.len() + chunk.len() > max_spec {
            return Err(ApiError::TooLarge { limit: max_spec }.into());
        }
        raw.extend_from_slice(&chunk);
    }
    drop(spec_field);
    let spec: AppSpec = parse_json(&raw).map_err(|e| match e {
        ApiError::Invalid { field, message } => ApiError::Invalid {
            field: format!("spec.{field}"),
            message,
        },
        other => other,
    })?;
    spec.validate().map_err(|e| ApiError::Invalid {
        field: e.field,
        message: e.message,
    })?;
    if let Some(running) = engine.running(&app) {
        // Refused before the image is read: the client learns it at once, not after its upload.
        return Err(DeployError::Conflict { app, running }.into());
    }
    let mut image = next_part(
        &mut mp,
        "image",
        "missing part `image` (a `docker save` tar) after `spec`",
        "the second part must be `image` (a `docker save` tar)",
    )
    .await?;
    // Before any deployment exists: the part must start like a tar (not empty, first header's
    // checksum right), so "not a tar" is a 422 that leaves nothing behind.
    let mut tar = TarCheck::new();
    let mut head: Vec<Bytes> = Vec::new();
    while tar.bytes() < 512 {
        match image.chunk().await {
            Ok(Some(chunk)) => {
                tar.update(&chunk).map_err(image_invalid)?;
                head.push(chunk);
            }
            Ok(None) => {
                tar.finish().map_err(image_invalid)?;
                break;
            }
            Err(e) => return Err(bad_multipart(e.body_text())),
        }
    }
    // Small bounded channel: the upload advances only as fast as Docker loads it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let id = engine
        .deploy(&app, spec, ImageSource::Tar(stream), &who)
        .await?;
    let mut total: u64 = 0;
    let mut head = head.into_iter();
    loop {
        // The head chunks were checked above; the rest are checked as they arrive.
        let (next, fresh) = match head.next() {
            Some(chunk) => (Ok(Some(chunk)), false),
            None => (image.chunk().await, true),
        };
        match next {
            Ok(Some(chunk)) => {
                if fresh {
                    if let Err(e) = tar.update(&chunk) {
                        let _ = tx
                            .send(Err(std::io::Error::other(format!("image part {e}"))))
                            .await;
                        return Err(image_invalid(e));
                    }
                }
                total += chunk.len() as u64;
                if total > max_image {
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "image upload larger than deploy.max_upload_size ({max_image} bytes)"
                        ))))
                        .await;
                    return Err(ApiError::TooLarge {
                        limit: usize::try_from(max_image).unwrap_or(usize::MAX),
                    }
                    .into());
                }
                if tx.send(Ok(chunk)).await.is_err() {
                    // The engine stopped reading (load failed); its events say why.
                    break;
                }
            }
            Ok(None) => {
                if let Err(e) = tar.finish() {
                    let _ = tx
                        .send(Err(std::io::Error::other(format!("image part {e}"))))
                        .await;
                    return Err(image_invalid(e));
                }
                break;
            }
            Err(e) => {
                let msg = e.body_text();
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "image upload interrupted: {msg}"
                    ))))
                    .await;
                return Err(bad_multipart(format!(
                    "image upload interrupted (deployment {id} fails): {msg}"
                )));
            }
        }
    }
    drop(tx);
    tracing::info!(%app, deployment = %id, bytes = total, "image tar received");
    Ok(accepted(id, &app))
}

async fn list_apps(State(state): State<ApiState>) -> Result<Json<AppList>, AppsError> {
    let apps = engine(&state)?.apps().await?;
    Ok(Json(AppList {
        apps: apps.into_iter().map(App::of).collect(),
    }))
}

async fn get_app(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<App>, AppsError> {
    Ok(Json(App::of(engine(&state)?.app(&app).await?)))
}

/// Query string parsing that answers a JSON 400 (axum's `Query` rejection is plain text).
fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::BadRequest {
            code: "invalid_query",
            message: e.body_text(),
        })
}

#[derive(Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn list_deployments(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    uri: axum::http::Uri,
) -> Result<Json<DeploymentList>, AppsError> {
    let q: HistoryQuery = query(&uri)?;
    let engine = engine(&state)?;
    let list = engine.deployments(&app, q.limit.unwrap_or(50).min(MAX_HISTORY))?;
    if list.is_empty() {
        // Distinguish "no such app" from an empty page.
        engine.app(&app).await?;
    }
    Ok(Json(DeploymentList { deployments: list }))
}

async fn get_deployment(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DeploymentRecord>, AppsError> {
    Ok(Json(engine(&state)?.deployment(&id)?))
}

async fn rollback(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    req: Request,
) -> Result<Response, AppsError> {
    let engine = engine(&state)?.clone();
    let token = req.extensions().get::<TokenId>().copied();
    let who = who(&state, token).await;
    let body = Bytes::from_request(req, &state)
        .await
        .map_err(|e| ApiError::BadRequest {
            code: "invalid_body",
            message: e.body_text(),
        })?;
    let body: RollbackInput = if body.iter().all(|b| b.is_ascii_whitespace()) {
        RollbackInput::default()
    } else {
        parse_json(&body)?
    };
    let id = engine
        .rollback(&app, body.deployment.as_deref(), &who)
        .await?;
    Ok(accepted(id, &app))
}

/// `?history=keep|remove` of `DELETE /v1/apps/{app}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    history: HistoryChoice,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum HistoryChoice {
    Keep,
    #[default]
    Remove,
}

/// `DELETE /v1/apps/{app}`: drain, stop and remove its replicas and route, and forget the app
/// (`?history=keep` keeps its deployments readable by id; the default removes them).
async fn delete_app(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    uri: axum::http::Uri,
) -> Result<Json<AppDeleted>, AppsError> {
    let q: DeleteQuery = query(&uri)?;
    let done = engine(&state)?
        .delete(&app, q.history == HistoryChoice::Keep)
        .await?;
    Ok(Json(done))
}

async fn stop(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
) -> Result<Json<AppStopped>, AppsError> {
    engine(&state)?.stop(&app).await?;
    Ok(Json(AppStopped {
        app,
        state: "stopped".into(),
    }))
}

fn sse_json(v: &impl serde::Serialize) -> Event {
    Event::default()
        .json_data(v)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// `GET /v1/deployments/{id}/events`: past events first, then live ones; ends after the
/// terminal event. A deployment from an earlier run of berthd gets one event with its outcome.
async fn events(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppsError> {
    let engine = engine(&state)?;
    let rec = engine.deployment(&id)?;
    let (past, rx) = match engine.subscribe(&id) {
        Some((past, rx)) => (past, Some(rx)),
        None => {
            // Not in this process's memory: replay the stored log, and close it with the
            // recorded outcome when the log does not end with one.
            let mut past = engine.stored_events(&id)?;
            if !past.last().is_some_and(|e| e.done) {
                let state = rec.state;
                let message = rec.reason.clone().unwrap_or_else(|| {
                    if past.is_empty() {
                        "recorded by an earlier run of berthd; no event log kept".into()
                    } else {
                        "interrupted when an earlier run of berthd stopped".into()
                    }
                });
                past.push(DeployEvent {
                    deployment: id.clone(),
                    at: rec.finished_at.unwrap_or(rec.created_at),
                    stage: Stage::of_state(state),
                    message,
                    state,
                    done: state != DeployState::Running,
                });
            }
            (past, None)
        }
    };
    let finished = past.last().is_some_and(|e| e.done);
    let stop = state.stop.clone();
    let replay = futures_util::stream::iter(past.into_iter().map(|e| Ok(sse_json(&e))));
    let live = futures_util::stream::unfold(
        (rx.filter(|_| !finished), stop),
        |(rx, mut stop)| async move {
            let mut rx = rx?;
            loop {
                let got = tokio::select! {
                    r = rx.recv() => r,
                    _ = stop.wait_for(|s| *s) => return None,
                };
                match got {
                    Ok(e) => {
                        let next = (!e.done).then_some(rx);
                        return Some((Ok(sse_json(&e)), (next, stop)));
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(replay.chain(live)).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct LogsQuery {
    follow: Option<bool>,
    tail: Option<usize>,
}

/// `GET /v1/apps/{app}/logs`: one SSE event per line, `{"container": NAME, "line": TEXT}`.
async fn logs(
    State(state): State<ApiState>,
    ApiPath(app): ApiPath<String>,
    uri: axum::http::Uri,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppsError> {
    let q: LogsQuery = query(&uri)?;
    let lines = engine(&state)?.logs(&app, q.follow.unwrap_or(false), q.tail)?;
    let mut stop = state.stop.clone();
    let lines = lines.take_until(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let events = lines.map(|l| {
        Ok(match l {
            Ok(l) => {
                // The engine prefixes each line with `[container] `.
                let (container, line) = l
                    .strip_prefix('[')
                    .and_then(|r| r.split_once("] "))
                    .map(|(c, l)| (c.to_string(), l.to_string()))
                    .unwrap_or_else(|| (String::new(), l.clone()));
                sse_json(&LogLine { container, line })
            }
            Err(e) => Event::default()
                .event("error")
                .json_data(StreamError {
                    message: e.to_string(),
                })
                .unwrap_or_else(|_| Event::default().event("error")),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `GET /v1/certificates`: every certificate served (empty when TLS is off).
async fn certificates(State(state): State<ApiState>) -> Json<CertificateList> {
    let list = state
        .certs
        .as_ref()
        .map(|c| {
            let mut l = c.status();
            l.sort_by(|a, b| a.domain.cmp(&b.domain));
            l
        })
        .unwrap_or_default();
    Json(CertificateList { certificates: list })
}
