//! `berth routes` and `berth backends`: manual routes and their backends.

use std::io::Read;
use std::path::Path;

use reqwest::Method;

use super::{connect, seg};
use crate::client::output::{or_dash, Out};
use crate::client::{BackendsCmd, ClientError, RoutesCmd};
use crate::model::api::{BackendList, BackendView, RouteList, RouteView, StateInput};
use crate::model::route::{BackendSpec, BalancerKind, RouteSpec, ServerState};

pub(super) async fn routes(
    servers: &[String],
    cmd: RoutesCmd,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    match cmd {
        RoutesCmd::List => {
            let v: RouteList = api.get("/v1/routes").await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = v.routes.iter().map(route_row).collect();
                out.table(
                    &[
                        "name", "domains", "prefix", "balancer", "backends", "source",
                    ],
                    rows,
                );
            }
        }
        RoutesCmd::Get { name } => {
            let v: RouteView = api.get(&format!("/v1/routes/{}", seg(&name))).await?;
            out.json(&v);
        }
        RoutesCmd::Put { name, file } => {
            let text = if file == Path::new("-") {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| ClientError::Usage(e.to_string()))?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| ClientError::Usage(format!("{}: {e}", file.display())))?
            };
            // Parsed with the daemon's own type: a typo is named here, with its line.
            let body: RouteSpec =
                serde_yaml::from_str(&text).map_err(|e| ClientError::AppFile {
                    path: file.clone(),
                    line: e.location().map(|l| l.line()),
                    key: String::new(),
                    message: e.to_string(),
                })?;
            let v: RouteView = api
                .json(
                    Method::PUT,
                    &format!("/v1/routes/{}", seg(&name)),
                    Some(&body),
                )
                .await?;
            out.answer(&v, || format!("route {name} saved"));
        }
        RoutesCmd::Delete { name } => {
            api.send(api.request(Method::DELETE, &format!("/v1/routes/{}", seg(&name))))
                .await?;
            out.line(&format!("route {name} deleted"));
        }
    }
    Ok(0)
}

pub(super) async fn backends(
    servers: &[String],
    route: &str,
    action: BackendsCmd,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let base = format!("/v1/routes/{}/backends", seg(route));
    let (id, state) = match &action {
        BackendsCmd::List => {
            let v: BackendList = api.get(&base).await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = v
                    .backends
                    .iter()
                    .map(|b| {
                        vec![
                            b.spec.id(),
                            b.spec.address.to_string(),
                            b.spec.weight.to_string(),
                            out.state(state_name(b.spec.state)),
                            out.state(&or_dash(b.health.map(|h| h.as_str()))),
                        ]
                    })
                    .collect();
                out.table(&["id", "address", "weight", "state", "health"], rows);
            }
            return Ok(0);
        }
        BackendsCmd::Drain { id } => (id, ServerState::Drain),
        BackendsCmd::Ready { id } => (id, ServerState::Ready),
        BackendsCmd::Maint { id } => (id, ServerState::Maint),
        BackendsCmd::Weight { id, weight } => {
            let path = format!("{base}/{}", seg(id));
            let b: BackendView = api.get(&path).await?;
            // The backend as it is, with the new weight (the id comes from the path).
            let body = BackendSpec {
                id: None,
                weight: *weight,
                ..b.spec
            };
            let v: BackendView = api.json(Method::PUT, &path, Some(&body)).await?;
            out.answer(&v, || format!("{route}/{id}: weight {weight}"));
            return Ok(0);
        }
    };
    let v: BackendView = api
        .json(
            Method::PUT,
            &format!("{base}/{}/state", seg(id)),
            Some(&StateInput { state }),
        )
        .await?;
    if out.json {
        out.json(&v);
    } else {
        out.line(&format!("{route}/{id}: {}", out.state(state_name(state))));
    }
    Ok(0)
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Ready => "ready",
        ServerState::Drain => "drain",
        ServerState::Maint => "maint",
    }
}

/// A balancer as the API writes it: `round_robin`, or the tagged form as JSON.
fn balancer_name(b: &BalancerKind) -> String {
    let text = serde_json::to_string(b).unwrap_or_default();
    match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(name) => name.to_string(),
        None => text,
    }
}

/// `berth routes list`: name, domains, prefix, balancer, backends, source.
fn route_row(r: &RouteView) -> Vec<String> {
    let s = &r.spec;
    let domains: Vec<String> = s.domains.iter().map(|d| d.to_string()).collect();
    vec![
        r.name.clone(),
        domains.join(","),
        or_dash(s.path_prefix.as_ref().map(|p| p.as_str())),
        balancer_name(&s.balancer),
        s.backends.len().to_string(),
        r.source.as_str().to_string(),
    ]
}
