//! The runtime REST API (axum): routes, backends, states, stats, Prometheus metrics, the
//! OpenAPI document and a health probe. `/v1/*` needs a bearer token (see `auth`); `/healthz`,
//! `/v1/version` and `/v1/openapi.json` never do; `/metrics` does only when `api.metrics_auth` is set
//! (default off: the API listens on loopback and Prometheus scrapers rarely carry tokens).
//! Every request, public ones included, must name the API itself in `Host` (421 otherwise,
//! see `host_check`); every authenticated one must hold the scope its route needs
//! (`model::access::ROUTE_RULES`, enforced in `auth`).
//!
//! Adding endpoints (deploys, apps): write a module with `pub fn router() -> Router<ApiState>`,
//! put any handle it needs into `ApiState`, merge it in `router()` below under `protected`, and
//! describe it in `openapi.json` (the tests check that every documented path is served).
//! Errors go through `ApiError`; request bodies through `ApiJson` (size limit, field names).

pub mod apps;
pub mod auth;
pub mod canary;
pub mod certs;
pub mod error;
pub mod frontends;
pub mod ratelimit;
pub mod routes;
pub mod stats;
pub mod traffic;
pub mod ui;

use std::sync::Arc;

use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::model::access::ApiHosts;
use crate::model::api::{Healthz, Version};
use crate::model::config::ApiConfig;
use crate::proxy::server::{
    accept_loop, supervise, Accepted, ConnBuilder, ConnLimits, ConnState, Scheme,
};
use crate::store::registry::RouteRegistry;

use error::{ApiError, BodyLimit};

/// The OpenAPI 3 description of every endpoint, served at `/v1/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Settings taken from `api:` in the configuration.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub max_body_size: usize,
    pub metrics_auth: bool,
    pub auth_failures_per_minute: u32,
    pub auth_limit_loopback: bool,
    /// apps: largest image tar of a multipart deploy (`deploy.max_upload_size`).
    pub max_upload_size: u64,
    /// Set when the proxy serves the API on `api.domain`: the secret it sends in
    /// `API_PROXY_HEADER`. A loopback peer with this secret is the proxy, and its `X-Real-IP`
    /// is the client the failed-authentication limit counts (see `auth`).
    pub proxy_secret: Option<String>,
    /// The `Host` names the listener answers (others: 421).
    pub hosts: ApiHosts,
}

impl ApiSettings {
    pub fn from_config(c: &ApiConfig) -> Self {
        let mut names: Vec<String> = c.allowed_hosts.clone();
        if let Some(d) = &c.domain {
            names.push(d.to_string());
        }
        Self {
            hosts: ApiHosts::new(Some(c.listen.ip()), &names),
            max_body_size: usize::try_from(c.max_body_size.0).unwrap_or(usize::MAX),
            metrics_auth: c.metrics_auth,
            auth_failures_per_minute: c.auth_failures_per_minute,
            auth_limit_loopback: c.auth_limit_loopback,
            max_upload_size: 10 << 30,
            proxy_secret: None,
        }
    }
}

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Arc<RouteRegistry>,
    pub settings: Arc<ApiSettings>,
    /// Becomes `true` when the daemon stops (ends event streams).
    pub stop: watch::Receiver<bool>,
    /// apps: the deploy engine, if it runs (else the deploy endpoints answer 503).
    pub engine: Option<Arc<crate::deploy::Engine>>,
    /// apps: the certificate store, if TLS runs (`GET /v1/certificates`).
    pub certs: Option<Arc<crate::tls::CertStore>>,
    /// certs: the ACME issuer, if configured (`POST /v1/certificates/{domain}/retry`).
    pub acme: Option<Arc<crate::tls::AcmeManager>>,
    /// frontends: TCP frontends and pools.
    pub tcp: Arc<crate::proxy::tcp::TcpProxy>,
    /// Why `berth.db` takes no changes (read-only or unopenable data dir, failed integrity
    /// check), for `/v1/stats` (the status page) and `/metrics`.
    pub store_problem: Option<String>,
}

/// The complete router.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/token", get(auth::whoami))
        .merge(routes::router())
        .merge(stats::router())
        .merge(apps::router())
        .merge(traffic::router())
        .merge(canary::router())
        .merge(certs::router())
        .merge(frontends::router());
    let metrics = Router::new().route("/metrics", get(stats::metrics));
    let (protected, metrics) = if state.settings.metrics_auth {
        (protected.merge(metrics), Router::new())
    } else {
        (protected, metrics)
    };
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/version", get(version))
        .route("/v1/openapi.json", get(openapi))
        .merge(metrics)
        .merge(protected)
        // ui: the status page at /ui/; its session table is read by `auth` too.
        .merge(ui::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(BodyLimit(state.settings.max_body_size)))
        .layer(Extension(Arc::new(ratelimit::AuthLimiter::new(
            state.settings.auth_failures_per_minute,
            state.settings.auth_limit_loopback,
        ))))
        // ui: `true` once the API listener serves TLS (Secure cookies).
        .layer(Extension(auth::session::Sessions::new(false)))
        // Outermost: a request for a foreign name is answered before anything else runs.
        .layer(middleware::from_fn_with_state(state.clone(), host_check))
        .with_state(state)
}

/// Answers 421 to a request whose `Host` (or absolute-form authority) is not one of the API's
/// own names, so a page on a rebound DNS name cannot read the API or `/metrics`. Both the
/// authority and `Host`, when present, must pass; a request with neither is refused too.
async fn host_check(
    axum::extract::State(state): axum::extract::State<ApiState>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let hosts = &state.settings.hosts;
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let header = req
        .headers()
        .get(header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
    let mut seen = false;
    for h in [authority, header].into_iter().flatten() {
        seen = true;
        if !hosts.allows(&h) {
            let host: String = h.chars().take(100).collect();
            tracing::debug!(%host, "API request for a foreign host refused (421)");
            return ApiError::Misdirected { host }.into_response();
        }
    }
    if !seen {
        return ApiError::Misdirected {
            host: String::new(),
        }
        .into_response();
    }
    next.run(req).await
}

async fn healthz() -> Json<Healthz> {
    Json(Healthz {
        status: "ok".into(),
    })
}

/// API version this daemon speaks; the `berth` CLI refuses to talk to a different one.
pub use crate::model::api::API_VERSION;

async fn version() -> Json<Version> {
    Json(Version {
        api: API_VERSION,
        berthd: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see /v1/openapi.json".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Serves the API on `listener` until `stop` becomes true, then drains like the proxy
/// (house rule 7, `proxy::server::supervise`): each connection's next HTTP/1 response carries
/// `Connection: close`, a keep-alive connection is closed only between requests (never under
/// a request that has begun to arrive), and what is still open after the drain timeout is
/// closed. A client whose idle connection meets that close retries on a new one (the `berth`
/// CLI does; see `client::api`).
pub async fn serve(listener: TcpListener, state: ApiState, limits: ConnLimits) {
    let stop = state.stop.clone();
    let app = Arc::new(LazyRouter {
        state,
        app: std::sync::OnceLock::new(),
    });
    let builder = Arc::new(ConnBuilder::new());
    accept_loop(
        listener,
        stop,
        limits.drain,
        "API connections",
        move |stream, peer, drain| {
            let (app, builder) = (app.router(), builder.clone());
            async move {
                let accepted = Accepted {
                    peer,
                    scheme: Scheme::Http,
                    frontend: None,
                };
                supervise(&builder, stream, accepted, limits, drain, move |conn| {
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        api_request(app.clone(), conn.clone(), peer, req)
                    })
                })
                .await;
            }
        },
    )
    .await;
}

/// The router, built when the API accepts its first connection instead of at start. Building
/// it is the largest part of a daemon's start in instructions (~1.6 M of ~4.8 M, most of it
/// axum's route tree; measured with callgrind, bench/README.md, issue 23), paid again by
/// every successor `berthd upgrade` starts, and a successor seldom serves an API request
/// before the next upgrade. Nothing in it has side effects: the same router is built, later.
struct LazyRouter {
    state: ApiState,
    app: std::sync::OnceLock<Router>,
}

impl LazyRouter {
    /// The router (a cheap clone of the one built on the first call).
    fn router(&self) -> Router {
        self.app.get_or_init(|| router(self.state.clone())).clone()
    }
}

/// One API request on a supervised connection: counted in flight until its response body
/// ends (or is dropped), `Connection: close` on HTTP/1 while draining.
async fn api_request(
    mut app: Router,
    conn: Arc<ConnState>,
    peer: std::net::SocketAddr,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<InflightBody>, std::convert::Infallible> {
    conn.request_started();
    let guard = Inflight(conn.clone());
    let close = conn.draining() && req.version() != http::Version::HTTP_2;
    let mut req = req.map(axum::body::Body::new);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    // Router is always ready (its poll_ready returns Ready), so `call` needs no poll_ready.
    let mut resp = match tower_service::Service::call(&mut app, req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if close {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    Ok(resp.map(|body| InflightBody {
        body,
        _guard: guard,
    }))
}

/// Marks the request done on its connection when dropped.
struct Inflight(Arc<ConnState>);

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// An API response body that keeps its request counted in flight until it ends.
struct InflightBody {
    body: axum::body::Body,
    _guard: Inflight,
}

impl http_body::Body for InflightBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
