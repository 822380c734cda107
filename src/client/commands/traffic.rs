//! `berth pause`, `berth resume`, `berth maintenance APP on|off`: thin calls of the app gate
//! endpoints (`/v1/apps/{app}/pause|resume|maintenance`); the server validates and names the
//! field at fault.

use reqwest::Method;

use crate::model::traffic::{AppGate, Maintenance, Pause};

use super::super::output::Out;
use super::super::{ClientError, Command};
use super::{connect, seg};

/// Runs one of the gate commands.
pub async fn run(servers: &[String], cmd: Command, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let (app, v, line): (String, AppGate, String) = match cmd {
        Command::Pause { app, timeout } => {
            let v = api
                .json(
                    Method::POST,
                    &format!("/v1/apps/{}/pause", seg(&app)),
                    Some(&Pause { timeout }),
                )
                .await?;
            let line = format!(
                "{app} paused: new requests are held (up to {} each) until `berth resume {app}`",
                humantime::format_duration(timeout)
            );
            (app, v, line)
        }
        Command::Resume { app } => {
            let v = api
                .json::<_, ()>(
                    Method::POST,
                    &format!("/v1/apps/{}/resume", seg(&app)),
                    None,
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
                let v = api.json::<_, ()>(Method::DELETE, &path, None).await?;
                let line = format!("{app}: maintenance off, traffic restored");
                (app, v, line)
            } else {
                let d = Maintenance::default();
                let body = Maintenance {
                    message,
                    retry_after: retry_after.unwrap_or(d.retry_after),
                    allow,
                };
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
    out.answer(&v, || line);
    Ok(0)
}
