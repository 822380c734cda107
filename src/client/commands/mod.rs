//! One function per CLI command, one file per command group. Each talks to the API through
//! `Api`, prints through `Out`, and returns the process exit code (0 only when the thing asked
//! for happened). `run` is the only dispatch; a new command group is a new file here plus one
//! arm below.

mod apps;
mod canary;
mod certs;
mod deploy;
mod init;
mod routes;
mod server;
mod traffic;

pub use deploy::follow_deployment;

use super::api::Api;
use super::output::Out;
use super::settings::Settings;
use super::{AppsCmd, CertsCmd, Cli, ClientError, Command};

fn seg(s: &str) -> String {
    // Path segments are names/ids; percent-encode anything unusual.
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn connect(cli_servers: &[String]) -> Result<(String, Api), ClientError> {
    let settings = Settings::load()?;
    let (name, server) = settings.resolve(cli_servers.first().map(String::as_str))?;
    let api = Api::new(&server)?;
    api.check_version().await?;
    Ok((name, api))
}

pub async fn run(cli: Cli, out: &Out) -> Result<u8, ClientError> {
    let g = cli.global;
    match cli.command {
        Command::Server(cmd) => server::server(cmd, out).await,
        Command::Init { name, force } => init::init(name, force, out),
        Command::Completions { shell } => init::completions(&shell),
        Command::Deploy {
            file,
            image_tar,
            detach,
            keep,
        } => deploy::deploy(&g.server, &file, image_tar, detach, keep, out).await,
        Command::Apps {
            action: Some(AppsCmd::Delete { app, keep_history }),
        } => apps::delete(&g.server, app, keep_history, out).await,
        Command::Apps {
            action: None | Some(AppsCmd::List),
        } => apps::list_apps(&g.server, out).await,
        Command::Status { app } => apps::status(&g.server, app, out).await,
        Command::Deployments { app } => apps::deployments(&g.server, app, out).await,
        Command::Rollback { app, deployment } => {
            apps::rollback(&g.server, app, deployment, out).await
        }
        Command::Stop { app } => apps::stop(&g.server, app, out).await,
        cmd @ (Command::Pause { .. } | Command::Resume { .. } | Command::Maintenance { .. }) => {
            traffic::run(&g.server, cmd, out).await
        }
        cmd @ (Command::Promote { .. }
        | Command::Abort { .. }
        | Command::Traffic { .. }
        | Command::Version(_)) => canary::run(&g.server, cmd, out).await,
        Command::Logs { app, follow, tail } => apps::logs(&g.server, app, follow, tail, out).await,
        Command::Routes(cmd) => routes::routes(&g.server, cmd, out).await,
        Command::Backends { route, action } => {
            routes::backends(&g.server, &route, action, out).await
        }
        Command::Certs { action } => {
            certs::certs(&g.server, action.unwrap_or(CertsCmd::List), out).await
        }
    }
}

/// Unix milliseconds from the API as an RFC 3339 time (seconds precision).
pub(super) fn when(ms: i64) -> String {
    let secs = u64::try_from(ms / 1000).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
