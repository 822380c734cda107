//! The proxy's narrow view of TLS: who answers ACME HTTP-01 challenges and which hosts have a
//! certificate (HTTP→HTTPS redirect). Implemented outside the proxy (the daemon adapts the
//! certificate store), so the proxy never imports `tls`.

/// Answers for the plain-HTTP side of TLS.
pub trait TlsHooks: Send + Sync {
    /// The key authorization for an HTTP-01 `token` Berth is waiting on; `None` means the
    /// token is not ours and the request goes to the app like any other.
    fn http01(&self, token: &str) -> Option<String>;

    /// Where HTTPS for `host` lives (`host` or `host:port`) if `host` has a certificate and
    /// redirects are on; `None` leaves the request on HTTP.
    fn https_authority(&self, host: &str) -> Option<String>;
}

/// Path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Uri};

use super::body::ResponseBody;
use super::Proxy;
use crate::model::route::Route;

fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Proxy {
    /// Answers an HTTP-01 challenge Berth owns; anything else (other paths, unknown tokens,
    /// HTTPS) returns `None` and is routed normally.
    pub(crate) fn answer_http01(&self, scheme: &str, uri: &Uri) -> Option<Response<ResponseBody>> {
        if scheme != "http" {
            return None;
        }
        let token = uri.path().strip_prefix(CHALLENGE_PREFIX)?;
        let key_auth = self.tls_hooks.get()?.http01(token)?;
        Some(text(StatusCode::OK, key_auth))
    }

    /// 308 to HTTPS for a plain-HTTP request whose host has a certificate, unless the route
    /// opted out. ACME challenges never get here (answered or passed through before).
    pub(crate) fn https_redirect(
        &self,
        scheme: &str,
        route: &Route,
        host: &str,
        uri: &Uri,
    ) -> Option<Response<ResponseBody>> {
        if scheme != "http"
            || !route.spec.https_redirect
            || uri.path().starts_with(CHALLENGE_PREFIX)
        {
            return None;
        }
        let authority = self.tls_hooks.get()?.https_authority(host)?;
        let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let location = HeaderValue::from_str(&format!("https://{authority}{pq}")).ok()?;
        let mut r = text(StatusCode::PERMANENT_REDIRECT, "moved to HTTPS\n".into());
        r.headers_mut().insert(header::LOCATION, location);
        Some(r)
    }

    /// `Strict-Transport-Security` on HTTPS responses of routes that ask for it.
    pub(crate) fn add_hsts(&self, scheme: &str, route: &Route, headers: &mut http::HeaderMap) {
        if scheme != "https" {
            return;
        }
        if let Some(age) = route.spec.hsts_max_age {
            if let Ok(v) = HeaderValue::from_str(&format!("max-age={}", age.as_secs())) {
                headers.insert(header::STRICT_TRANSPORT_SECURITY, v);
            }
        }
    }
}
