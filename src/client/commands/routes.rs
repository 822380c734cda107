//! `berth routes` and `berth backends`: manual routes and their backends.

use std::io::Read;
use std::path::Path;

use reqwest::Method;
use serde_json::{json, Value};

use super::{connect, list, seg};
use crate::client::output::{field, Out};
use crate::client::{BackendsCmd, ClientError, RoutesCmd};

pub(super) async fn routes(
    servers: &[String],
    cmd: RoutesCmd,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    match cmd {
        RoutesCmd::List => {
            let v: Value = api.json(Method::GET, "/v1/routes", None).await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = list(&v, "routes")
                    .iter()
                    .map(|r| {
                        let backends = r
                            .get("backends")
                            .or_else(|| r.get("spec").and_then(|s| s.get("backends")))
                            .and_then(Value::as_array)
                            .map(|b| b.len().to_string())
                            .unwrap_or_else(|| "-".into());
                        vec![
                            field(r, &["name"]),
                            field(r, &["domains", "spec.domains"]),
                            field(r, &["path_prefix", "spec.path_prefix"]),
                            field(r, &["balancer", "spec.balancer"]),
                            backends,
                            field(r, &["source"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "name", "domains", "prefix", "balancer", "backends", "source",
                    ],
                    rows,
                );
            }
        }
        RoutesCmd::Get { name } => {
            let v: Value = api
                .json(Method::GET, &format!("/v1/routes/{}", seg(&name)), None)
                .await?;
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
            let body: Value = serde_yaml::from_str(&text).map_err(|e| ClientError::AppFile {
                path: file.clone(),
                line: e.location().map(|l| l.line()),
                key: String::new(),
                message: e.to_string(),
            })?;
            let v: Value = api
                .json(
                    Method::PUT,
                    &format!("/v1/routes/{}", seg(&name)),
                    Some(&body),
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!("route {name} saved"));
            }
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
            let v: Value = api.json(Method::GET, &base, None).await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = list(&v, "backends")
                    .iter()
                    .map(|b| {
                        vec![
                            field(b, &["id"]),
                            field(b, &["address"]),
                            field(b, &["weight"]),
                            out.state(&field(b, &["state"])),
                            out.state(&field(b, &["health"])),
                        ]
                    })
                    .collect();
                out.table(&["id", "address", "weight", "state", "health"], rows);
            }
            return Ok(0);
        }
        BackendsCmd::Drain { id } => (id, "drain"),
        BackendsCmd::Ready { id } => (id, "ready"),
        BackendsCmd::Maint { id } => (id, "maint"),
        BackendsCmd::Weight { id, weight } => {
            let path = format!("{base}/{}", seg(id));
            let mut b: Value = api.json(Method::GET, &path, None).await?;
            b["weight"] = json!(weight);
            if let Some(o) = b.as_object_mut() {
                o.retain(|k, _| matches!(k.as_str(), "address" | "weight" | "state"));
            }
            let v: Value = api.json(Method::PUT, &path, Some(&b)).await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!("{route}/{id}: weight {weight}"));
            }
            return Ok(0);
        }
    };
    let v: Value = api
        .json(
            Method::PUT,
            &format!("{base}/{}/state", seg(id)),
            Some(&json!({ "state": state })),
        )
        .await?;
    if out.json {
        out.json(&v);
    } else {
        out.line(&format!("{route}/{id}: {}", out.state(state)));
    }
    Ok(0)
}
