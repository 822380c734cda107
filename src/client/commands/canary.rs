//! `berth promote APP`, `berth abort APP`, `berth traffic APP [v1=90 v2=10] [--sticky]`,
//! `berth version rm APP VERSION`: thin
//! calls of the canary endpoints; the server validates (a split naming an unknown version or
//! not summing to 100 is refused with the version named) and nothing is half-applied.

use reqwest::Method;

use crate::model::api::{CanaryStatus, TrafficWeights, VersionSplit};

use super::super::output::Out;
use super::super::{ClientError, Command, VersionCmd};
use super::{connect, seg};

/// `v1=90` → ("v1", 90).
fn parse_weight(arg: &str) -> Result<(String, u32), ClientError> {
    let bad = || {
        ClientError::Usage(format!(
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

fn split_line(v: &VersionSplit) -> String {
    let mut line = v
        .weights
        .iter()
        .map(|(k, w)| format!("{k}={w}%"))
        .collect::<Vec<_>>()
        .join(" ");
    if v.sticky {
        line.push_str(" (sticky)");
    }
    line
}

/// `POST /v1/apps/{app}/promote|abort`.
async fn act(servers: &[String], app: &str, what: &str) -> Result<CanaryStatus, ClientError> {
    let (_, api) = connect(servers).await?;
    api.json::<_, ()>(Method::POST, &format!("/v1/apps/{}/{what}", seg(app)), None)
        .await
}

/// Runs one of the canary commands.
pub async fn run(servers: &[String], cmd: Command, out: &Out) -> Result<u8, ClientError> {
    match cmd {
        Command::Promote { app } => {
            let c = act(servers, &app, "promote").await?;
            out.answer(&c, || {
                format!(
                    "{app}: canary {} is being promoted (follow: berth status {app})",
                    c.deployment
                )
            });
        }
        Command::Abort { app } => {
            let c = act(servers, &app, "abort").await?;
            out.answer(&c, || {
                format!(
                    "{app}: canary {} aborted; traffic is back on {}",
                    c.deployment, c.stable
                )
            });
        }
        Command::Traffic { app, split, sticky } => {
            let (_, api) = connect(servers).await?;
            let path = format!("/v1/apps/{}/traffic", seg(&app));
            let v: VersionSplit = if split.is_empty() {
                api.get(&path).await?
            } else {
                let mut weights = TrafficWeights::new();
                for s in &split {
                    let (k, w) = parse_weight(s)?;
                    if weights.insert(k.clone(), w).is_some() {
                        return Err(ClientError::Usage(format!("{k} is named twice")));
                    }
                }
                let path = if sticky {
                    format!("{path}?sticky=true")
                } else {
                    path
                };
                api.json(Method::PUT, &path, Some(&weights)).await?
            };
            out.answer(&v, || format!("{app}: traffic split {}", split_line(&v)));
        }
        Command::Version(VersionCmd::Rm { app, version }) => {
            let (_, api) = connect(servers).await?;
            let path = format!("/v1/apps/{}/versions/{}", seg(&app), seg(&version));
            let v: VersionSplit = api.json::<_, ()>(Method::DELETE, &path, None).await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!(
                    "{app}: version {version} drains and is removed (follow: berth status {app}); \
                     traffic split {}",
                    split_line(&v)
                ));
            }
        }
        other => {
            return Err(ClientError::Other(format!(
                "internal: {other:?} is not a canary command"
            )))
        }
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
