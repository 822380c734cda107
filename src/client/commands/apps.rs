//! `berth apps`, `status`, `deployments`, `rollback`, `stop`, `logs`: one deployed app.

use reqwest::Method;
use serde_json::{json, Value};

use super::deploy::follow_deployment;
use super::{connect, list, seg, when};
use crate::client::output::{field, Out};
use crate::client::ClientError;

pub(super) async fn delete(
    servers: &[String],
    app: String,
    keep_history: bool,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let history = if keep_history { "keep" } else { "remove" };
    let v: Value = api
        .json(
            Method::DELETE,
            &format!("/v1/apps/{}?history={history}", seg(&app)),
            None,
        )
        .await?;
    if out.json {
        out.json(&v);
    } else {
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.line(&format!(
            "{app} deleted: {} replicas removed, {} deployments {}",
            n("replicas_removed"),
            n("deployments"),
            if keep_history { "kept" } else { "removed" }
        ));
    }
    Ok(0)
}

pub(super) async fn list_apps(servers: &[String], out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let v: Value = api.json(Method::GET, "/v1/apps", None).await?;
    if out.json {
        out.json(&v);
    } else {
        out.table(
            &["app", "replicas", "health", "deployment", "domains"],
            app_rows(&v, out),
        );
    }
    Ok(0)
}

pub(super) async fn deployments(
    servers: &[String],
    app: String,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let v: Value = api
        .json(
            Method::GET,
            &format!("/v1/apps/{}/deployments", seg(&app)),
            None,
        )
        .await?;
    if out.json {
        out.json(&v);
    } else {
        let rows = list(&v, "deployments")
            .iter()
            .map(|d| {
                vec![
                    field(d, &["id"]),
                    out.state(&field(d, &["state", "status"])),
                    field(d, &["image", "spec.image"]),
                    when(&field(d, &["created_at", "started_at"])),
                    when(&field(d, &["finished_at"])),
                    field(d, &["error", "reason"]),
                ]
            })
            .collect();
        out.table(
            &["id", "state", "image", "started", "finished", "reason"],
            rows,
        );
    }
    Ok(0)
}

pub(super) async fn rollback(
    servers: &[String],
    app: String,
    deployment: Option<String>,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let body = match &deployment {
        Some(d) => json!({ "deployment": d }),
        None => json!({}),
    };
    let v: Value = api
        .json(
            Method::POST,
            &format!("/v1/apps/{}/rollback", seg(&app)),
            Some(&body),
        )
        .await?;
    let id = field(&v, &["id", "deployment", "deployment_id"]);
    if out.json {
        out.json(&v);
        return Ok(0);
    }
    out.line(&format!("rolling back {app}: deployment {id}"));
    follow_deployment(&api, &id, out, None).await
}

pub(super) async fn stop(servers: &[String], app: String, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let v: Value = api
        .json(
            Method::POST,
            &format!("/v1/apps/{}/stop", seg(&app)),
            Some(&json!({})),
        )
        .await?;
    if out.json {
        out.json(&v);
    } else {
        out.line(&format!("{app} stopped"));
    }
    Ok(0)
}

pub(super) async fn logs(
    servers: &[String],
    app: String,
    follow: bool,
    tail: u32,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let path = format!("/v1/apps/{}/logs?follow={follow}&tail={tail}", seg(&app));
    api.sse(&path, |_, data| {
        if out.json {
            out.line(data);
        } else {
            match serde_json::from_str::<Value>(data) {
                Ok(v) if v.get("line").is_some() => out.line(&format!(
                    "{} {}",
                    field(&v, &["container", "replica"]),
                    field(&v, &["line"])
                )),
                _ => out.line(data),
            }
        }
        true
    })
    .await?;
    Ok(0)
}

fn app_rows(v: &Value, out: &Out) -> Vec<Vec<String>> {
    list(v, "apps")
        .iter()
        .map(|a| {
            vec![
                field(a, &["name", "app"]),
                field(a, &["ready", "replicas"]),
                out.state(&field(a, &["health", "state"])),
                field(a, &["current.id", "current_deployment", "deployment"]),
                field(a, &["domains"]),
            ]
        })
        .collect()
}

pub(super) async fn status(
    servers: &[String],
    app: Option<String>,
    out: &Out,
) -> Result<u8, ClientError> {
    let (name, api) = connect(servers).await?;
    let apps: Value = match &app {
        Some(a) => {
            let one: Value = api
                .json(Method::GET, &format!("/v1/apps/{}", seg(a)), None)
                .await?;
            Value::Array(vec![one])
        }
        None => api.json(Method::GET, "/v1/apps", None).await?,
    };
    let certs: Value = api
        .json(Method::GET, "/v1/certificates", None)
        .await
        .unwrap_or(Value::Null);
    if out.json {
        out.json(&json!({ "server": name, "apps": apps, "certificates": certs }));
        return Ok(0);
    }
    out.line(&format!("server: {name}"));
    out.table(
        &["app", "replicas", "health", "deployment", "domains"],
        app_rows(&apps, out),
    );
    // Secrets: names and fingerprints only (the server never sends a value).
    for a in list(&apps, "apps") {
        let shown: Vec<String> = a
            .pointer("/current/spec/secrets")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|s| format!("{} ({})", field(s, &["name"]), field(s, &["fingerprint"])))
                    .collect()
            })
            .unwrap_or_default();
        if !shown.is_empty() {
            out.line(&format!(
                "{} secrets: {}",
                field(a, &["name", "app"]),
                shown.join(", ")
            ));
        }
    }
    // Pause / maintenance (issue 21): one line per app that has either on.
    for a in list(&apps, "apps") {
        let name = field(a, &["name", "app"]);
        if let Some(m) = a.pointer("/gate/maintenance") {
            out.line(&format!(
                "{name}: maintenance on (503, Retry-After {}s)",
                field(m, &["retry_after"])
            ));
        }
        if let Some(p) = a.pointer("/gate/paused") {
            out.line(&format!(
                "{name}: paused (requests held up to {})",
                field(p, &["timeout"])
            ));
        }
    }
    // A canary in progress (issue 21): its step, the split, both versions' live figures.
    for a in list(&apps, "apps") {
        let name = field(a, &["name", "app"]);
        if let Some(c) = a.get("canary") {
            let live = |k: &str| {
                let l = &c[k];
                format!(
                    "{} req, {}% errors, p99 {}",
                    l["requests"],
                    l["error_rate"],
                    l["p99_ms"]
                        .as_u64()
                        .map_or("-".to_string(), |ms| format!("{ms}ms"))
                )
            };
            let split = c["split"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, w)| format!("{k}={w}%"))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            out.line(&format!(
                "{name}: canary {} ({} step {}/{}), split {split}{}; stable: {}; canary: {}",
                field(c, &["deployment"]),
                field(c, &["phase"]),
                c["step"],
                c["steps"],
                if c["sticky"].as_bool() == Some(true) {
                    " (sticky)"
                } else {
                    ""
                },
                live("stable_live"),
                live("canary_live")
            ));
        }
    }
    let cert_rows: Vec<Vec<String>> = list(&certs, "certificates")
        .iter()
        .map(|c| {
            vec![
                field(c, &["domain"]),
                field(c, &["issuer"]),
                field(c, &["not_after"]),
                field(c, &["next_renewal"]),
                field(c, &["last_error"]),
            ]
        })
        .collect();
    if !cert_rows.is_empty() {
        out.line("");
        out.table(
            &["domain", "issuer", "expires", "renews", "last error"],
            cert_rows,
        );
    }
    Ok(0)
}
