//! `berth promote APP`, `berth abort APP`, `berth traffic APP [v1=90 v2=10] [--sticky]`: thin
//! calls of the canary endpoints; the server validates (a split naming an unknown version or
//! not summing to 100 is refused with the version named) and nothing is half-applied.

use std::collections::BTreeMap;

use reqwest::Method;
use serde_json::{json, Value};

use super::super::output::Out;
use super::super::{ClientError, Command};
use super::{connect, seg};

/// `v1=90` → ("v1", 90).
fn parse_weight(arg: &str) -> Result<(String, u32), ClientError> {
    let bad = || {
        ClientError::Other(format!(
            "{arg:?}: a split is VERSION=PERCENT (e.g. v1=90 v2=10), VERSION a deployment id \
             or image tag"
        ))
    };
    let (v, w) = arg.split_once('=').ok_or_else(bad)?;
    let w = w
        .trim()
        .trim_end_matches('%')
        .parse::<u32>()
        .map_err(|_| bad())?;
    if v.trim().is_empty() {
        return Err(bad());
    }
    Ok((v.trim().to_string(), w))
}

fn split_line(v: &Value) -> String {
    v.get("weights")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, w)| format!("{k}={w}%"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Runs one of the canary commands.
pub async fn run(servers: &[String], cmd: Command, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let (v, line) = match cmd {
        Command::Promote { app } => {
            let v: Value = api
                .json(
                    Method::POST,
                    &format!("/v1/apps/{}/promote", seg(&app)),
                    Some(&json!({})),
                )
                .await?;
            let line = format!(
                "{app}: canary {} is being promoted (follow: berth status {app})",
                v.get("deployment").and_then(Value::as_str).unwrap_or("?")
            );
            (v, line)
        }
        Command::Abort { app } => {
            let v: Value = api
                .json(
                    Method::POST,
                    &format!("/v1/apps/{}/abort", seg(&app)),
                    Some(&json!({})),
                )
                .await?;
            let line = format!(
                "{app}: canary {} aborted; traffic is back on {}",
                v.get("deployment").and_then(Value::as_str).unwrap_or("?"),
                v.get("stable").and_then(Value::as_str).unwrap_or("stable")
            );
            (v, line)
        }
        Command::Traffic { app, split, sticky } => {
            let path = format!("/v1/apps/{}/traffic", seg(&app));
            if split.is_empty() {
                let v: Value = api.json(Method::GET, &path, None).await?;
                let line = format!("{app}: {}", split_line(&v));
                (v, line)
            } else {
                let mut weights = BTreeMap::new();
                for s in &split {
                    let (k, w) = parse_weight(s)?;
                    if weights.insert(k.clone(), w).is_some() {
                        return Err(ClientError::Other(format!("{k} is named twice")));
                    }
                }
                let path = if sticky {
                    format!("{path}?sticky=true")
                } else {
                    path
                };
                let v: Value = api.json(Method::PUT, &path, Some(&json!(weights))).await?;
                let line = format!("{app}: traffic split {}", split_line(&v));
                (v, line)
            }
        }
        other => {
            return Err(ClientError::Other(format!(
                "internal: {other:?} is not a canary command"
            )))
        }
    };
    if out.json {
        out.json(&v);
    } else {
        out.line(&line);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse() {
        assert_eq!(parse_weight("v1=90").unwrap(), ("v1".into(), 90));
        assert_eq!(parse_weight("d1abc=10%").unwrap(), ("d1abc".into(), 10));
        for bad in ["v1", "=5", "v1=x", "v1=-3"] {
            assert!(parse_weight(bad).is_err(), "{bad}");
        }
    }
}
