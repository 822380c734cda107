//! The app gate on the request path (pause and maintenance, `model::traffic`). `forward` calls
//! `admit` only when the route it loaded carries a gate, so ungated routes pay one branch.
//! A held request waits for the next table generations (no polling, no lock) and looks its
//! route up again in each: it goes on as soon as a table without the pause is published
//! (`resume`, or a replace deploy's cut-over), or gets 503 after the pause's timeout.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;

use crate::model::route::{Lookup, Route};
use crate::model::traffic::{wants_json, Admit, Maintenance};

use super::response::ResponseBody;
use super::Tables;

/// Lets the request through (with the route to use, possibly a newer one), or answers it.
pub(super) async fn admit(
    tables: &Tables,
    route: Arc<Route>,
    host: &str,
    path: &str,
    client: IpAddr,
    headers: &HeaderMap,
) -> Result<Arc<Route>, Response<ResponseBody>> {
    let Some(gate) = &route.spec.gate else {
        return Ok(route);
    };
    let hold = match gate.admit(client) {
        Admit::Pass => return Ok(route),
        Admit::Maintenance(m) => return Err(maintenance(m, headers)),
        Admit::Hold(t) => t,
    };
    let deadline = Instant::now() + hold;
    // Subscribe before looking again, so a table published in between is not missed.
    let mut generation = tables.subscribe();
    loop {
        let current = match tables.load().lookup_normalized(host, path) {
            Lookup::Route(r) => r.clone(),
            _ => return Err(unavailable("the app is no longer routed\n")),
        };
        match current.spec.gate.as_ref().map(|g| g.admit(client)) {
            None | Some(Admit::Pass) => return Ok(current),
            Some(Admit::Maintenance(m)) => return Err(maintenance(m, headers)),
            Some(Admit::Hold(_)) => {}
        }
        match tokio::time::timeout_at(deadline, generation.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => {
                return Err(unavailable(
                    "the app is paused; request held until the pause timeout\n",
                ))
            }
        }
    }
}

fn unavailable(msg: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from_static(msg.as_bytes())));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.extensions_mut().insert(super::acme_hook::Generated);
    r
}

/// The maintenance page: 503, `Retry-After`, HTML or JSON by `Accept`, never cached.
fn maintenance(m: &Maintenance, headers: &HeaderMap) -> Response<ResponseBody> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = m.page(wants_json(accept));
    let mut r = Response::new(ResponseBody::full(Bytes::from(body)));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::RETRY_AFTER, HeaderValue::from(m.retry_after));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.extensions_mut().insert(super::acme_hook::Generated);
    r
}
