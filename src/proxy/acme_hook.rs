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

    /// Called once the ClientHello of an HTTPS connection is read (never for `acme-tls/1`):
    /// a future to await before the handshake goes on, when `server_name` has no certificate
    /// yet and on-demand TLS may obtain one. It bounds its own wait. Default: none.
    fn before_handshake(&self, _server_name: &str) -> Option<HandshakeWait> {
        None
    }
}

/// What [`TlsHooks::before_handshake`] returns.
pub type HandshakeWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};

use super::response::ResponseBody;
use super::Proxy;
use crate::model::host::normalize_host;
use crate::model::route::{Lookup, Route};

/// Marks a response the proxy generated itself (errors, alias redirects) so that HSTS can be
/// added to it after the fact (see [`Proxy::add_hsts_generated`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Generated;

/// Where an HTTPS request was addressed (cheap clones: `Uri` and `HeaderValue` share their
/// bytes), kept so a generated answer can find the route's HSTS setting.
pub(crate) struct HstsProbe {
    uri: Uri,
    host: Option<HeaderValue>,
}

impl HstsProbe {
    /// `Some` only for HTTPS: HSTS is never sent over plain HTTP (RFC 6797 §7.2).
    pub(crate) fn capture<B>(scheme: &str, req: &Request<B>) -> Option<Self> {
        (scheme == "https").then(|| HstsProbe {
            uri: req.uri().clone(),
            host: req.headers().get(header::HOST).cloned(),
        })
    }
}

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

    /// HSTS on a response the proxy generated for an HTTPS request (502/503/504, 413, alias
    /// redirect…), per the route the request was addressed to (an alias in redirect mode:
    /// the route of its canonical host). Proxied responses already got it in `add_hsts`; only
    /// generated ones (rare) pay for the second table lookup.
    pub(crate) fn add_hsts_generated(
        &self,
        probe: Option<HstsProbe>,
        resp: &mut Response<ResponseBody>,
    ) {
        let Some(probe) = probe else {
            return;
        };
        if resp.extensions().get::<Generated>().is_none()
            || resp
                .headers()
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
        {
            return;
        }
        let raw = match probe.uri.authority() {
            Some(a) => a.as_str(),
            None => match probe.host.as_ref().and_then(|h| h.to_str().ok()) {
                Some(h) => h,
                None => return,
            },
        };
        let Some(host) = normalize_host(raw) else {
            return;
        };
        let path = probe.uri.path();
        let table = self.tables.load();
        let route = match table.lookup_normalized(&host, path) {
            Lookup::Route(r) => r,
            Lookup::Redirect(canonical) => match table.lookup_normalized(canonical, path) {
                Lookup::Route(r) => r,
                _ => return,
            },
            Lookup::NotFound => return,
        };
        self.add_hsts("https", route, resp.headers_mut());
    }
}
