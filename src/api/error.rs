//! The API's one error type and its HTTP mapping, plus the extractors that turn malformed
//! input into it (JSON bodies with a size limit and field paths, path parameters). Every error
//! response is `{"error": {"code": "...", "message": "...", "field": "..."}}` (`field` only when
//! one field is at fault). Internal details are logged, never sent.

use crate::model::api::{ErrorBody, ErrorDetail};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::store::registry::ChangeError;
use crate::store::StoreError;

/// Default largest request body (overridden by `api.max_body_size`).
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// How much of an oversized body is read and dropped before answering 413, and for how long.
const DRAIN_MAX: usize = 8 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The request-body limit in force, put in request extensions by the router.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

#[derive(Debug)]
pub enum ApiError {
    /// 401: no usable bearer token.
    Unauthorized { code: &'static str, message: String },
    /// 404.
    NotFound(String),
    /// 405.
    MethodNotAllowed,
    /// 400: the request is not well-formed (bad JSON syntax, empty body, bad path encoding).
    BadRequest { code: &'static str, message: String },
    /// 422: well-formed, but a field has a bad value.
    Invalid { field: String, message: String },
    /// 409: the change conflicts with the current state.
    Conflict {
        code: &'static str,
        field: Option<String>,
        message: String,
    },
    /// 413.
    TooLarge { limit: usize },
    /// 403: the token (or the session's token) lacks a scope; `required_scope` names it.
    Forbidden {
        required_scope: String,
        message: String,
    },
    /// 421: the API does not answer for this `Host` (DNS-rebinding defence).
    Misdirected { host: String },
    /// 503: the store takes no changes (read-only or unopenable data dir, damaged database);
    /// the message names the cause.
    StoreUnavailable(String),
    /// 507: the disk is full; the change was not made.
    DiskFull(String),
    /// 500: details are logged, not sent.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let too_large;
        let misdirected;
        let (mut required_scope, mut host) = (None, None);
        let (code, message, field): (&str, &str, Option<&str>) = match &self {
            ApiError::Unauthorized { code, message } => (code, message, None),
            ApiError::NotFound(m) => ("not_found", m, None),
            ApiError::MethodNotAllowed => (
                "method_not_allowed",
                "this endpoint does not support that method",
                None,
            ),
            ApiError::BadRequest { code, message } => (code, message, None),
            ApiError::Invalid { field, message } => {
                ("validation_failed", message, Some(field.as_str()))
            }
            ApiError::Conflict {
                code,
                field,
                message,
            } => (code, message, field.as_deref()),
            ApiError::TooLarge { limit } => {
                too_large = format!("request body is larger than {limit} bytes");
                ("payload_too_large", too_large.as_str(), None)
            }
            ApiError::Forbidden {
                required_scope: scope,
                message,
            } => {
                required_scope = Some(scope.as_str());
                ("forbidden", message.as_str(), None)
            }
            ApiError::Misdirected { host: h } => {
                host = Some(h.as_str());
                misdirected = format!(
                    "this API does not answer for host {h:?}; it answers for loopback names \
                     and addresses, api.domain and api.allowed_hosts"
                );
                ("misdirected_request", misdirected.as_str(), None)
            }
            ApiError::StoreUnavailable(m) => ("store_unavailable", m.as_str(), None),
            ApiError::DiskFull(m) => ("disk_full", m.as_str(), None),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "API request failed");
                (
                    "internal",
                    "internal error; the daemon log has the details",
                    None,
                )
            }
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: code.to_string(),
                    message: message.to_string(),
                    field: field.map(str::to_string),
                    required_scope: required_scope.map(str::to_string),
                    host: host.map(str::to_string),
                    deployment: None,
                },
            }),
        )
            .into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: do not reuse the connection.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"berth\""),
            );
        }
        resp
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> Self {
        match e {
            ChangeError::RouteNotFound(_) | ChangeError::BackendNotFound { .. } => {
                ApiError::NotFound(e.to_string())
            }
            ChangeError::ReadOnly(_) => ApiError::Conflict {
                code: "read_only",
                field: None,
                message: e.to_string(),
            },
            ChangeError::Invalid { field, message } => ApiError::Invalid { field, message },
            ChangeError::Conflict { field, message } => ApiError::Conflict {
                code: "conflict",
                field: Some(field),
                message,
            },
            ChangeError::Store(s) => ApiError::from(s),
            ChangeError::Internal(s) => ApiError::Internal(s),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::StoreUnavailable(e.to_string()),
            StoreError::DiskFull(_) => ApiError::DiskFull(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// A JSON request body: size-limited, and every error names the field.
/// Syntax errors → 400 `invalid_json`; type or value errors → 422 `validation_failed`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(DEFAULT_MAX_BODY);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = req.into_body();
        let mut buf = BytesMut::new();
        let mut total: usize = declared
            .filter(|n| *n > limit as u64)
            .map(|_| limit + 1)
            .unwrap_or(0);
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if total > limit && drain_until.is_none() {
                drain_until = Some(tokio::time::Instant::now() + DRAIN_TIME);
            }
            let next = match drain_until {
                // Over the limit: keep reading (and dropping) for a moment so the client
                // finishes sending and sees the 413 instead of a connection reset.
                Some(deadline) => match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(f) => f,
                    Err(_) => break,
                },
                None => body.frame().await,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    return Err(ApiError::BadRequest {
                        code: "invalid_body",
                        message: format!("could not read the request body: {e}"),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        total = total.saturating_add(data.len());
                        if total > DRAIN_MAX {
                            break;
                        }
                        if total <= limit {
                            buf.extend_from_slice(&data);
                        }
                    }
                }
            }
        }
        if total > limit {
            return Err(ApiError::TooLarge { limit });
        }
        let bytes = buf.freeze();
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document, naming the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::BadRequest {
            code: "invalid_json",
            message: "the request body is empty; a JSON object is required".into(),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            return Err(json_error(&path, inner));
        }
    };
    de.end().map_err(|e| json_error(".", e))?;
    Ok(value)
}

fn json_error(path: &str, e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => {
            let msg = friendly(&e.to_string());
            // Missing fields are reported at their parent; name the field itself.
            let missing = msg
                .strip_prefix("missing field `")
                .and_then(|r| r.split('`').next());
            let base = if path == "." { "" } else { path };
            let field = match missing {
                Some(m) if base.is_empty() => m.to_string(),
                Some(m) => format!("{base}.{m}"),
                None if base.is_empty() => "body".to_string(),
                None => base.to_string(),
            };
            ApiError::Invalid {
                field,
                message: msg,
            }
        }
        Category::Syntax | Category::Eof | Category::Io => ApiError::BadRequest {
            code: "invalid_json",
            message: format!("the request body is not valid JSON: {e}"),
        },
    }
}

/// serde names Rust types ("expected struct RouteSpec"); clients know JSON.
fn friendly(msg: &str) -> String {
    match msg.find("expected struct ") {
        Some(i) => {
            let rest = &msg[i + "expected struct ".len()..];
            let end = rest.find(' ').unwrap_or(rest.len());
            format!("{}expected a JSON object{}", &msg[..i], &rest[end..])
        }
        None => msg.to_string(),
    }
}

/// Path parameters; a malformed one (bad percent-encoding) is a 400 JSON error.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(t)) => Ok(ApiPath(t)),
            Err(e) => Err(ApiError::BadRequest {
                code: "invalid_path",
                message: e.body_text(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::RouteSpec;

    fn field_of(json: &str) -> (StatusCode, Option<String>) {
        match parse_json::<RouteSpec>(json.as_bytes()) {
            Ok(_) => (StatusCode::OK, None),
            Err(e) => {
                let f = match &e {
                    ApiError::Invalid { field, .. } => Some(field.clone()),
                    _ => None,
                };
                (e.status(), f)
            }
        }
    }

    #[test]
    fn store_faults_are_503_and_507_with_their_cause() {
        let e = ApiError::from(StoreError::Unavailable("data dir is read-only".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(matches!(&e, ApiError::StoreUnavailable(m) if m.contains("read-only")));
        let e = ApiError::from(ChangeError::Store(StoreError::DiskFull(
            "SQLITE_FULL".into(),
        )));
        assert_eq!(e.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(matches!(&e, ApiError::DiskFull(m) if m.contains("disk full")));
        let e = ApiError::from(StoreError::Poisoned);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn json_errors_name_the_field() {
        let cases: &[(&str, StatusCode, Option<&str>)] = &[
            (r#"{"domains":["a.test"]}"#, StatusCode::OK, None),
            ("", StatusCode::BAD_REQUEST, None),
            ("{", StatusCode::BAD_REQUEST, None),
            (r#"{"domains":["a.test"]} x"#, StatusCode::BAD_REQUEST, None),
            ("{}", StatusCode::UNPROCESSABLE_ENTITY, Some("domains")),
            ("[]", StatusCode::UNPROCESSABLE_ENTITY, Some("body")),
            ("7", StatusCode::UNPROCESSABLE_ENTITY, Some("body")),
            (
                r#"{"domains":["a b"]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("domains[0]"),
            ),
            (
                r#"{"domains":["a.test"],"backends":[{"address":"x"}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("backends[0].address"),
            ),
            (
                r#"{"domains":["a.test"],"backends":[{"weight":1}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("backends[0].address"),
            ),
            (
                r#"{"domains":["a.test"],"colour":"red"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("colour"),
            ),
            (
                r#"{"domains":["a.test"],"backends":[{"address":"1.2.3.4:5","state":"off"}]}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("backends[0].state"),
            ),
        ];
        let msg = match parse_json::<RouteSpec>(b"7") {
            Err(ApiError::Invalid { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        assert!(msg.contains("expected a JSON object"), "{msg}");
        assert!(!msg.contains("RouteSpec"), "{msg}");
        for (json, status, field) in cases {
            let (s, f) = field_of(json);
            assert_eq!(s, *status, "{json}");
            assert_eq!(f.as_deref(), *field, "{json}");
        }
    }
}
