//! `berth apps`, `status`, `deployments`, `rollback`, `stop`, `logs`: one deployed app.

use reqwest::Method;
use serde::Serialize;

use super::deploy::follow_deployment;
use super::{connect, seg, when};
use crate::client::output::{or_dash, Out};
use crate::client::ClientError;
use crate::model::api::{
    App, AppDeleted, AppList, AppStopped, CertStatus, CertificateList, DeployAccepted,
    DeploymentList, LogLine, RollbackInput,
};

pub(super) async fn delete(
    servers: &[String],
    app: String,
    keep_history: bool,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let history = if keep_history { "keep" } else { "remove" };
    let v: AppDeleted = api
        .json::<_, ()>(
            Method::DELETE,
            &format!("/v1/apps/{}?history={history}", seg(&app)),
            None,
        )
        .await?;
    out.answer(&v, || {
        format!(
            "{app} deleted: {} replicas removed, {} deployments {}",
            v.replicas_removed,
            v.deployments,
            if keep_history { "kept" } else { "removed" }
        )
    });
    Ok(0)
}

pub(super) async fn list_apps(servers: &[String], out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let v: AppList = api.get("/v1/apps").await?;
    if out.json {
        out.json(&v);
    } else {
        out.table(
            &["app", "replicas", "health", "deployment", "domains"],
            app_rows(&v.apps, out),
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
    let v: DeploymentList = api
        .get(&format!("/v1/apps/{}/deployments", seg(&app)))
        .await?;
    if out.json {
        out.json(&v);
    } else {
        let rows = v
            .deployments
            .iter()
            .map(|d| {
                vec![
                    d.id.clone(),
                    out.state(d.state.as_str()),
                    d.spec.image.clone(),
                    when(d.created_at),
                    or_dash(d.finished_at.map(when)),
                    or_dash(d.reason.as_deref()),
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
    let body = RollbackInput { deployment };
    let v: DeployAccepted = api
        .json(
            Method::POST,
            &format!("/v1/apps/{}/rollback", seg(&app)),
            Some(&body),
        )
        .await?;
    if out.json {
        out.json(&v);
        return Ok(0);
    }
    out.line(&format!("rolling back {app}: deployment {}", v.id));
    follow_deployment(&api, &v.id, out, None).await
}

pub(super) async fn stop(servers: &[String], app: String, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let v: AppStopped = api
        .json::<_, ()>(Method::POST, &format!("/v1/apps/{}/stop", seg(&app)), None)
        .await?;
    out.answer(&v, || format!("{app} stopped"));
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
            match serde_json::from_str::<LogLine>(data) {
                Ok(l) => out.line(&format!("{} {}", l.container, l.line)),
                // An `error` event: its message as sent.
                Err(_) => out.line(data),
            }
        }
        true
    })
    .await?;
    Ok(0)
}

fn app_rows(apps: &[App], out: &Out) -> Vec<Vec<String>> {
    apps.iter()
        .map(|a| {
            vec![
                a.status.name.clone(),
                a.ready.clone(),
                out.state(a.health.as_str()),
                or_dash(a.status.current.as_ref().map(|c| &c.id)),
                a.domains.join(","),
            ]
        })
        .collect()
}

/// `berth status --json`.
#[derive(Serialize)]
struct StatusReport {
    server: String,
    apps: Vec<App>,
    /// Empty when the token may not read them.
    certificates: Vec<CertStatus>,
}

pub(super) async fn status(
    servers: &[String],
    app: Option<String>,
    out: &Out,
) -> Result<u8, ClientError> {
    let (name, api) = connect(servers).await?;
    let apps: Vec<App> = match &app {
        Some(a) => vec![api.get(&format!("/v1/apps/{}", seg(a))).await?],
        None => api.get::<AppList>("/v1/apps").await?.apps,
    };
    // A deploy-scoped token may not read the certificates: the apps still show.
    let certificates = api
        .get::<CertificateList>("/v1/certificates")
        .await
        .map(|l| l.certificates)
        .unwrap_or_default();
    if out.json {
        out.json(&StatusReport {
            server: name,
            apps,
            certificates,
        });
        return Ok(0);
    }
    out.line(&format!("server: {name}"));
    out.table(
        &["app", "replicas", "health", "deployment", "domains"],
        app_rows(&apps, out),
    );
    // Secrets: names and fingerprints only (the server never sends a value).
    for a in &apps {
        let shown: Vec<String> = a
            .status
            .current
            .iter()
            .flat_map(|c| c.spec.secrets.iter())
            .map(|(name, s)| format!("{name} ({})", or_dash(s.fingerprint())))
            .collect();
        if !shown.is_empty() {
            out.line(&format!("{} secrets: {}", a.status.name, shown.join(", ")));
        }
    }
    // Pause / maintenance (issue 21): one line per app that has either on.
    for a in &apps {
        let name = &a.status.name;
        if let Some(m) = &a.status.gate.maintenance {
            out.line(&format!(
                "{name}: maintenance on (503, Retry-After {}s)",
                m.retry_after
            ));
        }
        if let Some(p) = &a.status.gate.paused {
            out.line(&format!(
                "{name}: paused (requests held up to {})",
                humantime::format_duration(p.timeout)
            ));
        }
    }
    // A canary in progress (issue 21): its step, the split, both versions' live figures.
    for a in &apps {
        if let Some(c) = &a.status.canary {
            let live = |l: &crate::model::canary::LiveFigures| {
                format!(
                    "{} req, {}% errors, p99 {}",
                    l.requests,
                    l.error_rate,
                    l.p99_ms.map_or("-".to_string(), |ms| format!("{ms}ms"))
                )
            };
            let split = c
                .split
                .iter()
                .map(|(k, w)| format!("{k}={w}%"))
                .collect::<Vec<_>>()
                .join(" ");
            out.line(&format!(
                "{}: canary {} ({} step {}/{}), split {split}{}; stable: {}; canary: {}",
                a.status.name,
                c.deployment,
                c.phase,
                c.step,
                c.steps,
                if c.sticky { " (sticky)" } else { "" },
                live(&c.stable_live),
                live(&c.canary_live)
            ));
        }
    }
    let cert_rows: Vec<Vec<String>> = certificates
        .iter()
        .map(|c| {
            vec![
                c.domain.clone(),
                or_dash(c.issuer.as_deref()),
                or_dash(c.not_after.as_deref()),
                or_dash(c.next_renewal.as_deref()),
                or_dash(c.last_error.as_deref()),
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
