//! The built-in status page at `/ui/`: embedded static assets (`ui/` in the repository, compiled
//! in with `include_str!`) and the login/logout endpoints that exchange an API token for a
//! session cookie. The sessions themselves (table, cookie, CSRF and origin checks) live in
//! `auth::session`, next to the middleware that reads them. Every `/ui/` response carries a
//! strict Content-Security-Policy (no inline script or style) and anti-framing headers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::auth::session::{
    check_csrf, cookie_value, forbidden, same_origin, session_of, unauthorized, via_https_proxy,
    Sessions,
};
use super::error::{ApiError, ApiJson};
use super::ApiState;
use crate::model::api::SessionInfo;

/// Longest token accepted by the login form (a real one is 70 bytes).
const MAX_TOKEN_LEN: usize = 512;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const STYLE_CSS: &str = include_str!("../../ui/style.css");
const FAVICON_SVG: &str = include_str!("../../ui/favicon.svg");

/// The policy sent with every `/ui/` response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/ui/...` routes. Public (the login page must load); the session endpoints check the
/// session themselves.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/index.html", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/style.css", get(style_css))
        .route("/ui/favicon.svg", get(favicon))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/session", get(session))
        .layer(middleware::from_fn(security_headers))
}

/// Adds the CSP and anti-framing headers to every `/ui/` response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidate so an upgraded daemon's assets are picked up at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn favicon() -> Response {
    asset("image/svg+xml", FAVICON_SVG)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    token: String,
}

fn session_json(csrf: &str, expires_in: Duration) -> Json<SessionInfo> {
    Json(SessionInfo {
        csrf_token: csrf.to_string(),
        expires_in_s: expires_in.as_secs(),
        scopes: None,
    })
}

/// `POST /ui/login` `{"token": "..."}` → session cookie + `{"csrf_token", "expires_in_s"}`.
async fn login(
    State(state): State<ApiState>,
    Extension(sessions): Extension<Sessions>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    limiter: Option<Extension<Arc<super::ratelimit::AuthLimiter>>>,
    uri: Uri,
    headers: HeaderMap,
    ApiJson(body): ApiJson<LoginBody>,
) -> Response {
    if !same_origin(&headers, &uri) {
        return forbidden("cross_origin", "the request comes from another origin").into_response();
    }
    // The same failed-authentication limit as bearer tokens.
    let gate = super::auth::AuthGate::new(
        &state,
        peer.map(|Extension(c)| c.0.ip()),
        limiter.map(|Extension(l)| l),
        &headers,
    );
    if let Some(resp) = gate.blocked() {
        return resp;
    }
    let token = body.token.trim().to_string();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        gate.failed();
        return unauthorized(
            "invalid_token",
            "the API token is not valid (unknown or revoked)",
        )
        .into_response();
    }
    let store = state.registry.store().clone();
    let id = match tokio::task::spawn_blocking(move || store.verify_token(&token)).await {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) => {
            gate.failed();
            return unauthorized(
                "invalid_token",
                "the API token is not valid (unknown or revoked)",
            )
            .into_response();
        }
        Ok(Err(e)) => return ApiError::from(e).into_response(),
        Err(e) => {
            return ApiError::Internal(format!("token check task: {e}")).into_response();
        }
    };
    // Replace any session this browser already had.
    let tls = via_https_proxy(&state, &headers);
    if let Some(old) = cookie_value(&headers, sessions.cookie_name(tls)) {
        sessions.remove(old);
    }
    let (sid, csrf) = match sessions.create(id) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    tracing::info!(token = id, "status page login");
    let mut resp = session_json(&csrf, sessions.ttl).into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        sessions.cookie(&sid, sessions.ttl.as_secs(), tls),
    );
    resp
}

/// `GET /ui/session`: the current session's CSRF token (the page calls this on load), or 401.
async fn session(
    State(state): State<ApiState>,
    Extension(sessions): Extension<Sessions>,
    headers: HeaderMap,
) -> Response {
    match session_of(&state, &sessions, &headers).await {
        Ok(Some((_, info, scopes))) => {
            let mut body = session_json(&info.csrf, info.expires_in);
            body.0.scopes = Some(scopes);
            body.into_response()
        }
        Ok(None) => unauthorized("no_session", "not logged in").into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /ui/logout` (needs the CSRF header): ends the session and clears the cookie.
async fn logout(
    State(state): State<ApiState>,
    Extension(sessions): Extension<Sessions>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let (sid, info, _) = match session_of(&state, &sessions, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return unauthorized("no_session", "not logged in").into_response(),
        Err(e) => return e.into_response(),
    };
    if let Err(f) = check_csrf(&method, &uri, &headers, &info) {
        return f.into_response();
    }
    sessions.remove(&sid);
    let tls = via_https_proxy(&state, &headers);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, sessions.cookie("", 0, tls));
    resp
}
