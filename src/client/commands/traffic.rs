//! `berth pause`, `berth resume`, `berth maintenance APP on|off`: thin calls of the app gate
//! endpoints (`/v1/apps/{app}/pause|resume|maintenance`); the server validates and names the
//! field at fault.

use reqwest::Method;
use serde_json::{json, Value};

use super::super::output::Out;
use super::super::{ClientError, Command};
use super::{connect, seg};

/// Runs one of the gate commands.
pub async fn run(servers: &[String], cmd: Command, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let (app, v, line): (String, Value, String) = match cmd {
        Command::Pause { app, timeout } => {
            let v = api
                .json(
                    Method::POST,
                    &format!("/v1/apps/{}/pause", seg(&app)),
                    Some(&json!({ "timeout": timeout })),
                )
                .await?;
            let line = format!("{app} paused: new requests are held (up to {timeout} each) until `berth resume {app}`");
            (app, v, line)
        }
        Command::Resume { app } => {
            let v = api
                .json(
                    Method::POST,
                    &format!("/v1/apps/{}/resume", seg(&app)),
                    Some(&json!({})),
                )
                .await?;
            let line = format!("{app} resumed");
            (app, v, line)
        }
        Command::Maintenance {
            app,
            state,
            message,
            retry_after,
            allow,
        } => {
            let path = format!("/v1/apps/{}/maintenance", seg(&app));
            if state == "off" {
                let v = api.json(Method::DELETE, &path, None).await?;
                let line = format!("{app}: maintenance off, traffic restored");
                (app, v, line)
            } else {
                let mut body = json!({});
                if let Some(m) = message {
                    body["message"] = json!(m);
                }
                if let Some(r) = retry_after {
                    body["retry_after"] = json!(r);
                }
                if !allow.is_empty() {
                    body["allow"] = json!(allow);
                }
                let v = api.json(Method::PUT, &path, Some(&body)).await?;
                let line = format!("{app}: maintenance on (503 with Retry-After)");
                (app, v, line)
            }
        }
        other => {
            return Err(ClientError::Other(format!(
                "internal: {other:?} is not a traffic command"
            )))
        }
    };
    let _ = app;
    if out.json {
        out.json(&v);
    } else {
        out.line(&line);
    }
    Ok(0)
}
