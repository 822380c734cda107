//! The `berth` CLI: servers/contexts, the app file, and one command per API resource.
//! Every command prints a human table (colour only on a TTY, `NO_COLOR` honoured) or, with
//! `--json`, the daemon's JSON; errors are one clear line on stderr with a distinct exit code.

pub mod api;
pub mod appfile;
pub mod commands;
pub mod output;
pub mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

/// Exit codes (documented in README).
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const UNAUTHORIZED: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const VERSION: u8 = 6;
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no server selected: add one with `berth server add NAME URL --token ...` or set BERTH_SERVER")]
    NoServer,
    #[error("unknown server {0:?} (see `berth server list`)")]
    UnknownServer(String),
    #[error("{path}: {message}")]
    Settings { path: PathBuf, message: String },
    #[error("bad server URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot reach berthd at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("authentication failed: {0} (check the token with `berth server add`)")]
    Unauthorized(String),
    #[error("client speaks API v{client}, daemon speaks API v{server}: upgrade the older side")]
    VersionMismatch { client: u64, server: String },
    #[error("{}", app_file_message(.path, *.line, .key, .message))]
    AppFile {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
    #[error("{}", api_message(*.status, .message, .field))]
    Api {
        status: u16,
        message: String,
        field: Option<String>,
        /// The daemon's error body, when it sent one.
        detail: Option<Box<crate::model::api::ErrorDetail>>,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Other(String),
}

fn app_file_message(
    path: &std::path::Path,
    line: Option<usize>,
    key: &str,
    message: &str,
) -> String {
    let loc = match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    };
    if key.is_empty() {
        format!("{loc}: {message}")
    } else {
        format!("{loc}: {key}: {message}")
    }
}

fn api_message(status: u16, message: &str, field: &Option<String>) -> String {
    let what = match status {
        400 | 422 => "invalid request",
        404 => "not found",
        409 => "conflict",
        _ => "berthd answered",
    };
    match field {
        Some(f) => format!("{what} ({status}): {f}: {message}"),
        None => format!("{what} ({status}): {message}"),
    }
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NoServer
            | ClientError::UnknownServer(_)
            | ClientError::Settings { .. }
            | ClientError::BadUrl { .. }
            | ClientError::AppFile { .. }
            | ClientError::Usage(_) => exit::USAGE,
            ClientError::Unreachable { .. } => exit::UNREACHABLE,
            ClientError::Unauthorized(_) => exit::UNAUTHORIZED,
            ClientError::VersionMismatch { .. } => exit::VERSION,
            ClientError::Api { status: 409, .. } => exit::CONFLICT,
            ClientError::Api { .. } | ClientError::Other(_) => exit::FAILURE,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version,
    about = "Deploy apps to a Berth server and manage its routes",
    after_help = "Quick start: `berth server add prod https://berth.example.com --token-stdin`, `berth init`, `berth deploy`."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Server to talk to (a name from `berth server list`); repeat on `deploy` for several.
    #[arg(long, short = 's', global = true)]
    pub server: Vec<String>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum VersionCmd {
    /// Drain and remove one version (deployment id or image tag) of an app that runs several.
    Rm { app: String, version: String },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the servers this CLI knows (URL + token).
    #[command(subcommand)]
    Server(ServerCmd),
    /// Write a commented starter berth.yaml in the current directory.
    Init {
        /// App name (default: the directory name).
        #[arg(long)]
        name: Option<String>,
        /// Overwrite an existing berth.yaml.
        #[arg(long)]
        force: bool,
    },
    /// Deploy the app described by berth.yaml.
    Deploy {
        /// App file.
        #[arg(long, short = 'f', default_value = "berth.yaml")]
        file: PathBuf,
        /// Upload this image tarball (from `docker save`) instead of building or pulling.
        #[arg(long)]
        image_tar: Option<PathBuf>,
        /// Return once the deployment is accepted instead of following it.
        #[arg(long)]
        detach: bool,
        /// Keep the running versions: the new one starts next to them with weight 0
        /// (`strategy: side_by_side`); move traffic with `berth traffic`.
        #[arg(long)]
        keep: bool,
    },
    /// Apps, replicas, health, version, domains and certificates.
    Status { app: Option<String> },
    /// List apps (default), or delete one.
    Apps {
        #[command(subcommand)]
        action: Option<AppsCmd>,
    },
    /// An app's deployment history.
    Deployments { app: String },
    /// Roll an app back to the previous (or a given) deployment.
    Rollback {
        app: String,
        deployment: Option<String>,
    },
    /// Stop an app's containers and remove its routes.
    Stop { app: String },
    /// Hold new requests to an app (queued, not refused) until `berth resume` or the timeout
    /// (then 503).
    Pause {
        app: String,
        /// Longest one request is held (e.g. 30s; at most 10m).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Let held and new requests through to a paused app.
    Resume { app: String },
    /// Answer every request to an app with a 503 maintenance page (`on`), or stop (`off`).
    Maintenance {
        app: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Text shown on the page.
        #[arg(long)]
        message: Option<String>,
        /// Seconds sent as Retry-After.
        #[arg(long)]
        retry_after: Option<u32>,
        /// Client networks (CIDR) that still reach the app; repeatable.
        #[arg(long)]
        allow: Vec<ipnet::IpNet>,
    },
    /// Promote an app's running canary now: it takes all traffic, the stable replicas drain.
    Promote { app: String },
    /// Abort an app's running canary now: traffic back on stable, the canary removed.
    Abort { app: String },
    /// Show, or set by hand, how an app's traffic is split between its running versions
    /// (A/B: versions deployed side by side, or a canary): `berth traffic APP v1=90 v2=10`.
    Traffic {
        app: String,
        /// VERSION=PERCENT pairs summing to 100 (VERSION: deployment id or image tag).
        split: Vec<String>,
        /// Keep each client on one version (a cookie names it).
        #[arg(long)]
        sticky: bool,
    },
    /// Versions an app runs side by side: `berth version rm APP VERSION` drains and removes
    /// one (its weight goes to the others).
    #[command(subcommand)]
    Version(VersionCmd),
    /// Show an app's logs.
    Logs {
        app: String,
        /// Keep following new lines.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Lines from the end to show first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Routes of the runtime API.
    #[command(subcommand)]
    Routes(RoutesCmd),
    /// Backends of a route: list, drain, ready, maint, weight.
    Backends {
        route: String,
        #[command(subcommand)]
        action: BackendsCmd,
    },
    /// Certificates: list them (default), or order one now.
    Certs {
        #[command(subcommand)]
        action: Option<CertsCmd>,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServerCmd {
    /// Add (or replace) a server. The token comes from --token, --token-stdin or BERTH_TOKEN.
    Add {
        name: String,
        url: String,
        /// The API token (ends up in shell history; prefer --token-stdin or BERTH_TOKEN).
        #[arg(long)]
        token: Option<String>,
        /// Read the token from standard input.
        #[arg(long)]
        token_stdin: bool,
        /// Do not contact the server to check the token and API version.
        #[arg(long)]
        no_check: bool,
        /// Also trust the CA certificate(s) in this PEM file for the server's HTTPS (a
        /// private or self-hosted CA); stored with the server.
        #[arg(long, value_name = "FILE")]
        ca_cert: Option<PathBuf>,
    },
    /// List servers (the current one is marked).
    List,
    /// Forget a server.
    Remove { name: String },
    /// Make a server the default.
    Use { name: String },
}

#[derive(Debug, Subcommand)]
pub enum RoutesCmd {
    /// List routes.
    List,
    /// Show one route.
    Get { name: String },
    /// Create or replace a route from a JSON or YAML file ("-" for stdin).
    Put { name: String, file: PathBuf },
    /// Delete a route.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    /// List apps: replicas, health, deployment, domains.
    List,
    /// Delete APP: drain, stop and remove its replicas and route, and forget it.
    ///
    /// Removes its deployment history and Berth's image tags too, unless --keep-history.
    /// Hand-started containers with the app's labels are left alone.
    Delete {
        app: String,
        /// Keep its deployments readable by id (`berth deployments` shows them again after
        /// the app's next deploy).
        #[arg(long)]
        keep_history: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// List certificates: issuer, expiry, next renewal, last error.
    List,
    /// Order a certificate for DOMAIN now (retry a failure, or renew early).
    ///
    /// A failed order is retried without waiting for its backoff; a healthy certificate is
    /// renewed early (e.g. after a revocation at the CA).
    Retry { domain: String },
}

#[derive(Debug, Subcommand)]
pub enum BackendsCmd {
    /// List the route's backends.
    List,
    /// Stop sending new requests to a backend (in-flight ones finish).
    Drain { id: String },
    /// Put a backend back into rotation.
    Ready { id: String },
    /// Take a backend out of all traffic.
    Maint { id: String },
    /// Change a backend's weight (0-1000).
    Weight { id: String, weight: u32 },
}

/// Entry point used by `src/bin/berth.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = output::Out::detect(cli.global.json);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("berth: cannot start: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli, &out)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            out.error(&e.to_string());
            ExitCode::from(e.exit_code())
        }
    }
}
