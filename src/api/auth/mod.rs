//! Bearer-token authentication for `/v1/*`. Tokens are created with `berthd token create`;
//! the store keeps only their SHA-256 and compares in constant time. The token table is read
//! on every request, so a token created or revoked by another process works (or stops
//! working) at once. Missing or wrong tokens get a 401 JSON error. An authenticated request
//! (token or status-page session, which has its token's scopes) then needs the scope its
//! route's rule asks for (`model::access`): 403 naming the missing scope otherwise. A route
//! without a rule needs `admin`, so a new route cannot be left open by mistake.

pub mod session;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::ApiState;
use crate::model::access::{rule_for, Need, Rule, Scopes};

/// The id of the token a request was authenticated with (a request extension; absent for a
/// status-page session). The deploy endpoints record its name as who deployed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenId(pub i64);

/// Longest `Authorization` value looked at (a real token is 70 bytes).
const MAX_TOKEN_LEN: usize = 512;

/// The token in `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(req: &Request) -> Result<&str, ApiError> {
    let missing = || ApiError::Unauthorized {
        code: "missing_token",
        message: "send an API token as 'Authorization: Bearer <token>' (create one with \
                  'berthd token create')"
            .into(),
    };
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?;
    let value = value.to_str().map_err(|_| ApiError::Unauthorized {
        code: "invalid_token",
        message: "the Authorization header is not valid text".into(),
    })?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthorized {
            code: "missing_token",
            message: format!(
                "the Authorization scheme must be Bearer, not {:?}",
                scheme.chars().take(20).collect::<String>()
            ),
        });
    }
    Ok(token.trim())
}

/// The real client of a request that came through this daemon's own proxy: the peer is
/// loopback and the request carries the proxy's per-process secret (which the proxy strips
/// from what clients send). Then `X-Real-IP` (set by the proxy) is believed; if it is missing
/// or unreadable the peer address stands in, still counted as proxied. `None`: a direct
/// client, whose forwarded headers mean nothing.
pub fn proxied_client(
    settings: &super::ApiSettings,
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
) -> Option<std::net::IpAddr> {
    use subtle::ConstantTimeEq;
    let secret = settings.proxy_secret.as_deref()?;
    if !peer.is_loopback() {
        return None;
    }
    let sent = headers.get(crate::model::config::API_PROXY_HEADER)?;
    if !bool::from(sent.as_bytes().ct_eq(secret.as_bytes())) {
        return None;
    }
    let real = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok());
    Some(real.unwrap_or(peer))
}

/// The failed-authentication limit as it applies to one request: who the client is (through
/// our own proxy, the forwarded address, never exempt; else the peer) and the shared limiter.
/// Used by the token middleware and by the status page's login.
pub struct AuthGate {
    client: Option<std::net::IpAddr>,
    proxied: bool,
    limiter: Option<std::sync::Arc<super::ratelimit::AuthLimiter>>,
    now: std::time::Instant,
}

impl AuthGate {
    pub fn new(
        state: &ApiState,
        peer: Option<std::net::IpAddr>,
        limiter: Option<std::sync::Arc<super::ratelimit::AuthLimiter>>,
        headers: &axum::http::HeaderMap,
    ) -> Self {
        // Through our own proxy (api.domain) the peer is loopback; the client is in
        // X-Real-IP, and the loopback exemption does not apply to it.
        let (client, proxied) = match peer {
            Some(ip) => match proxied_client(&state.settings, ip, headers) {
                Some(real) => (Some(real), true),
                None => (Some(ip), false),
            },
            None => (None, false),
        };
        Self {
            client,
            proxied,
            limiter,
            now: std::time::Instant::now(),
        }
    }

    /// The 429 answer when this client is blocked right now.
    pub fn blocked(&self) -> Option<Response> {
        let (Some(ip), Some(l)) = (self.client, &self.limiter) else {
            return None;
        };
        let wait = l.blocked(ip, self.proxied, self.now)?;
        let mut resp = (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            axum::Json(crate::model::api::ErrorBody::new(
                "too_many_auth_failures",
                format!(
                    "too many failed authentications from {ip}; retry in {} s",
                    wait.as_secs().max(1)
                ),
            )),
        )
            .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        Some(resp)
    }

    /// Counts one failed authentication.
    pub fn failed(&self) {
        if let (Some(ip), Some(l)) = (self.client, &self.limiter) {
            l.failed(ip, self.proxied, self.now);
        }
    }
}

/// Middleware: lets the request through only with an active token.
pub async fn require_token(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    // ui: without a bearer token, a status-page session cookie (+ CSRF header) may do.
    if req.headers().get(header::AUTHORIZATION).is_none() {
        let sessions = req.extensions().get::<session::Sessions>();
        match session::session_auth(&state, sessions, req.method(), req.uri(), req.headers()).await
        {
            Some(Ok(scopes)) => return authorize(&state, scopes, req, next).await,
            Some(Err(resp)) => return resp,
            None => {}
        }
    }
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let limiter = req
        .extensions()
        .get::<std::sync::Arc<super::ratelimit::AuthLimiter>>()
        .cloned();
    let gate = AuthGate::new(&state, peer, limiter, req.headers());
    if let Some(resp) = gate.blocked() {
        return resp;
    }
    let record_failure = || gate.failed();
    let token = match bearer(&req) {
        Ok(t) => t.to_string(),
        Err(e) => {
            record_failure();
            return e.into_response();
        }
    };
    let invalid = || {
        ApiError::Unauthorized {
            code: "invalid_token",
            message: "the API token is not valid (unknown or revoked)".into(),
        }
        .into_response()
    };
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        record_failure();
        return invalid();
    }
    let store = state.registry.store().clone();
    match tokio::task::spawn_blocking(move || store.authenticate(&token)).await {
        Ok(Ok(Some(auth))) => {
            req.extensions_mut().insert(TokenId(auth.id));
            authorize(&state, auth.scopes, req, next).await
        }
        Ok(Ok(None)) => {
            record_failure();
            invalid()
        }
        Ok(Err(e)) => ApiError::from(e).into_response(),
        Err(e) => ApiError::Internal(format!("token check task: {e}")).into_response(),
    }
}

/// What `req` needs under its route's rule (path parameters filled in). A deployment-id route
/// asked by a token without `read` needs `deploy:` on the deployment's app, looked up here;
/// an unknown deployment goes on to the handler (its 404 tells nothing about other apps).
async fn need_of(state: &ApiState, scopes: &Scopes, req: Request) -> (Need, Request) {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let rule = route
        .and_then(|r| rule_for(req.method().as_str(), &r))
        .unwrap_or(Rule::Admin);
    let (mut parts, body) = req.into_parts();
    let params: Vec<(String, String)> = RawPathParams::from_request_parts(&mut parts, state)
        .await
        .map(|p| {
            p.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let req = Request::from_parts(parts, body);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let need = match rule {
        Rule::Public | Rule::Authenticated => Need::Public,
        Rule::Read => Need::Read,
        Rule::Admin => Need::Admin,
        // Without a readable app name (bad encoding) the handler answers 400; meanwhile
        // only the broader scopes pass.
        Rule::AppRead => param("app").map_or(Need::Read, Need::AppRead),
        Rule::AppWrite => param("app").map_or(Need::Admin, Need::AppWrite),
        Rule::DeploymentRead if scopes.allow(&Need::Read).is_ok() || !scopes.has_deploy() => {
            Need::Read
        }
        Rule::DeploymentRead => {
            let app = param("id").and_then(|id| {
                state
                    .engine
                    .as_ref()
                    .and_then(|e| e.deployment(&id).ok())
                    .map(|d| d.app)
            });
            match app {
                Some(app) => Need::AppRead(app),
                None => Need::Public,
            }
        }
    };
    (need, req)
}

/// Runs the request if `scopes` allow what its route needs; 403 naming the scope otherwise.
async fn authorize(state: &ApiState, scopes: Scopes, req: Request, next: Next) -> Response {
    let (need, mut req) = need_of(state, &scopes, req).await;
    match scopes.allow(&need) {
        Ok(()) => {
            req.extensions_mut().insert(scopes);
            next.run(req).await
        }
        Err(missing) => {
            let path: String = req.uri().path().chars().take(200).collect();
            let alternatives = match &need {
                Need::AppRead(_) => format!("{missing} or read"),
                Need::Admin => missing.clone(),
                _ => format!("{missing} or admin"),
            };
            ApiError::Forbidden {
                message: format!(
                    "this token may not {} {path}: that needs scope {alternatives}; the token \
                     has {scopes}",
                    req.method()
                ),
                required_scope: missing,
            }
            .into_response()
        }
    }
}

/// `GET /v1/token`: the token this request authenticated with (a status-page session: its
/// token) and its scopes. Any valid token may ask; `berth server add` checks a token with it.
pub async fn whoami(
    State(state): State<ApiState>,
    scopes: Option<axum::Extension<Scopes>>,
    token: Option<axum::Extension<TokenId>>,
) -> Result<axum::Json<crate::model::api::TokenInfo>, ApiError> {
    let Some(axum::Extension(scopes)) = scopes else {
        return Err(ApiError::Internal(
            "GET /v1/token reached without the token check".into(),
        ));
    };
    let id = token.map(|t| t.0 .0);
    let name = match id {
        Some(id) => {
            let store = state.registry.store().clone();
            tokio::task::spawn_blocking(move || store.list_tokens())
                .await
                .map_err(|e| ApiError::Internal(format!("token list task: {e}")))??
                .into_iter()
                .find(|t| t.id == id)
                .map(|t| t.name)
        }
        None => None,
    };
    Ok(axum::Json(crate::model::api::TokenInfo {
        id,
        name,
        session: id.is_none(),
        scopes,
    }))
}
