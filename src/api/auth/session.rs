//! Status-page sessions, checked by the API's auth middleware: the in-memory session table,
//! the session cookie, and the CSRF and origin checks for unsafe requests made with a session.
//! `/ui/` (login, logout) creates and ends them; `auth` only reads them, so nothing here
//! imports `ui`.
//!
//! Invariants: sessions live in memory only (a daemon restart logs everyone out) and expire
//! [`SESSION_TTL`] after login; a session stays bound to the token that opened it and dies when
//! that token is revoked. Session ids are 256-bit OS-random values; only their SHA-256 is kept.
//! Every unsafe request (not GET/HEAD/OPTIONS) made with a session cookie must carry the
//! session's CSRF token in `X-CSRF-Token` (synchronizer token, compared in constant time) and,
//! when the browser sends `Origin`, come from the API's own origin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::TryRngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::error::ApiError;
use crate::api::ApiState;
use crate::model::access::Scopes;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "berth_session";
/// Its name over TLS: the `__Host-` prefix makes browsers refuse it unless it is Secure,
/// host-only and `Path=/`, so no sibling subdomain can plant or overwrite it.
pub const SESSION_COOKIE_TLS: &str = "__Host-berth_session";
/// Header that must carry the session's CSRF token on unsafe requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session ends this long after login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once; logging in beyond it evicts the one closest to expiry.
const MAX_SESSIONS: usize = 1024;
struct Session {
    token_id: i64,
    csrf: String,
    expires: Instant,
}

/// The server-side session table (in memory). Cheap to clone; put into the router as an
/// `Extension` so both the `/ui/` handlers and the API's auth middleware see it.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Mutex<HashMap<[u8; 32], Session>>>,
    /// Mark cookies `Secure` (set when the API listener serves TLS).
    secure_cookies: bool,
    pub(crate) ttl: Duration,
}

fn random_hex() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ApiError::Internal(format!("OS random number generator: {e}")))?;
    Ok(hex::encode(bytes))
}

fn key_of(session_id: &str) -> [u8; 32] {
    Sha256::digest(session_id.as_bytes()).into()
}

/// What a valid session yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub token_id: i64,
    pub csrf: String,
    pub expires_in: Duration,
}

impl Sessions {
    pub fn new(secure_cookies: bool) -> Self {
        Self::with_ttl(secure_cookies, SESSION_TTL)
    }

    pub fn with_ttl(secure_cookies: bool, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(HashMap::new())),
            secure_cookies,
            ttl,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // A panic while holding the lock cannot leave a half-written entry; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `token_id`; returns (session id, CSRF token).
    pub fn create(&self, token_id: i64) -> Result<(String, String), ApiError> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let now = Instant::now();
        let mut t = self.table();
        t.retain(|_, s| s.expires > now);
        if t.len() >= MAX_SESSIONS {
            if let Some(k) = t.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k) {
                t.remove(&k);
            }
        }
        t.insert(
            key_of(&id),
            Session {
                token_id,
                csrf: csrf.clone(),
                expires: now + self.ttl,
            },
        );
        Ok((id, csrf))
    }

    /// The live session with this id, if any (an expired one is removed).
    pub fn get(&self, session_id: &str) -> Option<SessionInfo> {
        let key = key_of(session_id);
        let now = Instant::now();
        let mut t = self.table();
        match t.get(&key) {
            Some(s) if s.expires > now => Some(SessionInfo {
                token_id: s.token_id,
                csrf: s.csrf.clone(),
                expires_in: s.expires - now,
            }),
            Some(_) => {
                t.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, session_id: &str) {
        self.table().remove(&key_of(session_id));
    }

    pub fn len(&self) -> usize {
        self.table().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The session cookie's name; `tls`: this request reached the API over HTTPS (through
    /// the proxy on `api.domain`), so the cookie is Secure and `__Host-` prefixed.
    pub fn cookie_name(&self, tls: bool) -> &'static str {
        if self.secure_cookies || tls {
            SESSION_COOKIE_TLS
        } else {
            SESSION_COOKIE
        }
    }

    pub(crate) fn cookie(&self, value: &str, max_age: u64, tls: bool) -> HeaderValue {
        let secure = if self.secure_cookies || tls {
            "; Secure"
        } else {
            ""
        };
        let v = format!(
            "{}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}",
            self.cookie_name(tls)
        );
        // Session ids are hex, so the value is always a valid header.
        HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

pub(crate) fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::Unauthorized {
        code,
        message: message.into(),
    }
}

/// 403 for a request that fails the CSRF or origin check.
#[derive(Debug)]
pub struct Forbidden {
    code: &'static str,
    message: &'static str,
}

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            Json(crate::model::api::ErrorBody::new(self.code, self.message)),
        )
            .into_response()
    }
}

pub(crate) fn forbidden(code: &'static str, message: &'static str) -> Forbidden {
    Forbidden { code, message }
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// When the browser says where a request comes from, it must be this server's own origin
/// (`Host` as the browser addressed it). Requests without `Origin` pass (non-browser clients,
/// and browsers omit it on some same-origin requests); the CSRF token still guards them.
pub(crate) fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    // HTTP/1.1 sends `Host`; HTTP/2 carries the authority in the URI instead.
    let host = match headers.get(header::HOST) {
        Some(h) => h.to_str().ok(),
        None => uri.authority().map(|a| a.as_str()),
    };
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// The scopes of the token that opened a session, if it is still active (read on every
/// request, so a session has exactly its token's scopes).
async fn token_scopes(state: &ApiState, token_id: i64) -> Result<Option<Scopes>, ApiError> {
    let store = state.registry.store().clone();
    match tokio::task::spawn_blocking(move || store.active_token_scopes(token_id)).await {
        Ok(Ok(scopes)) => Ok(scopes),
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(ApiError::Internal(format!("token check task: {e}"))),
    }
}

/// The session a request carries, checked: live, token not revoked; with the token's scopes.
/// `Ok(None)` when the request has no session cookie at all.
pub(crate) async fn session_of(
    state: &ApiState,
    sessions: &Sessions,
    headers: &HeaderMap,
) -> Result<Option<(String, SessionInfo, Scopes)>, ApiError> {
    let tls = via_https_proxy(state, headers);
    let Some(id) = cookie_value(headers, sessions.cookie_name(tls)) else {
        return Ok(None);
    };
    let expired = || unauthorized("session_expired", "the session has expired; log in again");
    let info = sessions.get(id).ok_or_else(expired)?;
    let Some(scopes) = token_scopes(state, info.token_id).await? else {
        sessions.remove(id);
        return Err(expired());
    };
    Ok(Some((id.to_string(), info, scopes)))
}

/// The request came through this daemon's own proxy on `api.domain`, which serves the API over
/// HTTPS only: it carries the proxy's per-process secret (stripped from what clients send).
pub(crate) fn via_https_proxy(state: &ApiState, headers: &HeaderMap) -> bool {
    let Some(secret) = state.settings.proxy_secret.as_deref() else {
        return false;
    };
    headers
        .get(crate::model::config::API_PROXY_HEADER)
        .is_some_and(|v| bool::from(v.as_bytes().ct_eq(secret.as_bytes())))
}

/// Checks the CSRF header and origin of an unsafe request made with session `info`.
pub(crate) fn check_csrf(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    info: &SessionInfo,
) -> Result<(), Forbidden> {
    if is_safe(method) {
        return Ok(());
    }
    if !same_origin(headers, uri) {
        return Err(forbidden(
            "cross_origin",
            "the request comes from another origin",
        ));
    }
    let presented = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if presented.is_empty() || !bool::from(presented.ct_eq(info.csrf.as_bytes())) {
        return Err(forbidden(
            "csrf_token_invalid",
            "requests that change state need the session's X-CSRF-Token header",
        ));
    }
    Ok(())
}

/// Used by the API's auth middleware for requests without an `Authorization` header:
/// `None` when there is no session cookie (the caller reports the missing token), otherwise
/// whether the session (and, for unsafe methods, its CSRF token) lets the request through,
/// and with which scopes (its token's).
pub async fn session_auth(
    state: &ApiState,
    sessions: Option<&Sessions>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Result<Scopes, Response>> {
    match session_of(state, sessions?, headers).await {
        Ok(None) => None,
        Ok(Some((_, info, scopes))) => Some(
            check_csrf(method, uri, headers, &info)
                .map(|()| scopes)
                .map_err(|f| f.into_response()),
        ),
        Err(e) => Some(Err(e.into_response())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; berth_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("x=y"));
        assert_eq!(cookie_value(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie_value(&h, "x"), Some("y"));
        assert_eq!(cookie_value(&h, "berth"), None);
        assert_eq!(cookie_value(&HeaderMap::new(), SESSION_COOKIE), None);
    }

    #[test]
    fn sessions_expire_and_are_removed() {
        let s = Sessions::with_ttl(false, Duration::from_millis(50));
        let (id, csrf) = s.create(7).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        let info = s.get(&id).unwrap();
        assert_eq!((info.token_id, info.csrf.as_str()), (7, csrf.as_str()));
        assert!(s.get("nope").is_none());
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.get(&id).is_none());
        assert!(s.is_empty());
        let (id2, _) = s.create(7).unwrap();
        s.remove(&id2);
        assert!(s.get(&id2).is_none());
    }

    #[test]
    fn session_table_is_bounded() {
        let s = Sessions::new(false);
        for _ in 0..MAX_SESSIONS + 10 {
            s.create(1).unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
    }

    #[test]
    fn cookie_attributes() {
        let plain = Sessions::new(false).cookie("ab", 60, false);
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = Sessions::new(true).cookie("ab", 60, false);
        let tls = tls.to_str().unwrap();
        assert!(tls.starts_with("__Host-berth_session=ab; Path=/;") && tls.ends_with("; Secure"));
        // Reached over HTTPS through the proxy (api.domain): the same, per request.
        let proxied = Sessions::new(false).cookie("ab", 60, true);
        assert_eq!(proxied.to_str().unwrap(), tls);
    }

    #[test]
    fn csrf_and_origin_checks() {
        let info = SessionInfo {
            token_id: 1,
            csrf: "tok".into(),
            expires_in: Duration::from_secs(1),
        };
        let u = Uri::from_static("/v1/routes");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9922"));
        assert!(check_csrf(&Method::GET, &u, &h, &info).is_ok());
        assert!(check_csrf(&Method::PUT, &u, &h, &info).is_err());
        h.insert(CSRF_HEADER, HeaderValue::from_static("tok2"));
        assert!(check_csrf(&Method::PUT, &u, &h, &info).is_err());
        h.insert(CSRF_HEADER, HeaderValue::from_static("tok"));
        assert!(check_csrf(&Method::PUT, &u, &h, &info).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9922"),
        );
        assert!(check_csrf(&Method::POST, &u, &h, &info).is_ok());
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.test"));
        assert!(check_csrf(&Method::POST, &u, &h, &info).is_err());
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(check_csrf(&Method::DELETE, &u, &h, &info).is_err());
        // HTTP/2: no Host header, the authority is in the URI.
        h.remove(header::HOST);
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://berth.example:9922"),
        );
        let h2 = Uri::from_static("https://berth.example:9922/v1/routes");
        assert!(check_csrf(&Method::PUT, &h2, &h, &info).is_ok());
        assert!(check_csrf(&Method::PUT, &u, &h, &info).is_err());
    }
}
