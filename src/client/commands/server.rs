//! `berth server`: the saved servers (contexts) in the client's settings file.

use std::io::Read;

use serde::Serialize;

use crate::client::api::{check_url, Api};
use crate::client::output::Out;
use crate::client::settings::{Server, Settings};
use crate::client::{ClientError, ServerCmd};
use crate::model::api::{RouteList, TokenInfo};

pub(super) async fn server(cmd: ServerCmd, out: &Out) -> Result<u8, ClientError> {
    let mut settings = Settings::load()?;
    match cmd {
        ServerCmd::Add {
            name,
            url,
            token,
            token_stdin,
            no_check,
            ca_cert,
        } => {
            check_url(&url)?;
            let token = match (token, token_stdin) {
                (Some(t), false) => t,
                (None, true) => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s).map_err(|e| {
                        ClientError::Usage(format!("reading the token from stdin: {e}"))
                    })?;
                    s.trim().to_string()
                }
                (None, false) => std::env::var("BERTH_TOKEN").map_err(|_| {
                    ClientError::Usage(
                        "give the token with --token, --token-stdin or BERTH_TOKEN".into(),
                    )
                })?,
                (Some(_), true) => {
                    return Err(ClientError::Usage(
                        "use either --token or --token-stdin, not both".into(),
                    ))
                }
            };
            if token.is_empty() {
                return Err(ClientError::Usage("the token is empty".into()));
            }
            // Stored absolute, so later commands work from any directory.
            let ca_cert = ca_cert.map(|p| std::path::absolute(&p).unwrap_or(p));
            let server = Server {
                url: url.trim_end_matches('/').to_string(),
                token,
                ca_cert,
            };
            if !no_check {
                let api = Api::new(&server)?;
                let v = api.check_version().await?;
                // An authenticated call any token may make proves the token works (a daemon
                // from before token scopes has no /v1/token: then any read will do).
                let scopes = match api.get::<TokenInfo>("/v1/token").await {
                    Ok(t) => t.scopes.to_string(),
                    Err(ClientError::Api { status: 404, .. }) => {
                        let _: RouteList = api.get("/v1/routes").await?;
                        "admin".into()
                    }
                    Err(e) => return Err(e),
                };
                out.line(&format!(
                    "connected to berthd {} at {} (token scopes: {scopes})",
                    v.berthd, server.url
                ));
            }
            settings.servers.insert(name.clone(), server);
            if settings.current.is_none() {
                settings.current = Some(name.clone());
            }
            settings.save()?;
            out.line(&format!("server {name} saved"));
            Ok(0)
        }
        ServerCmd::List => {
            if out.json {
                let list: Vec<ServerLine> = settings
                    .servers
                    .iter()
                    .map(|(n, s)| ServerLine {
                        current: settings.current.as_deref() == Some(n),
                        name: n,
                        url: &s.url,
                    })
                    .collect();
                out.json(&list);
            } else {
                let rows = settings
                    .servers
                    .iter()
                    .map(|(n, s)| {
                        let cur = if settings.current.as_deref() == Some(n) {
                            "*"
                        } else {
                            ""
                        };
                        vec![cur.to_string(), n.clone(), s.url.clone()]
                    })
                    .collect();
                out.table(&["", "name", "url"], rows);
            }
            Ok(0)
        }
        ServerCmd::Remove { name } => {
            if settings.servers.remove(&name).is_none() {
                return Err(ClientError::UnknownServer(name));
            }
            if settings.current.as_deref() == Some(name.as_str()) {
                settings.current = settings.servers.keys().next().cloned();
            }
            settings.save()?;
            out.line(&format!("server {name} removed"));
            Ok(0)
        }
        ServerCmd::Use { name } => {
            if !settings.servers.contains_key(&name) {
                return Err(ClientError::UnknownServer(name));
            }
            settings.current = Some(name.clone());
            settings.save()?;
            out.line(&format!("now using {name}"));
            Ok(0)
        }
    }
}

/// One line of `berth server list --json`.
#[derive(Serialize)]
struct ServerLine<'a> {
    current: bool,
    name: &'a str,
    url: &'a str,
}
