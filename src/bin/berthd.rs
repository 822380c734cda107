//! `berthd`: the Berth daemon. Thin: parse flags, load config, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth::model::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "berthd",
    version,
    about = "Berth daemon: reverse proxy and deploy target"
)]
struct Cli {
    /// Configuration file (default /etc/berth/berthd.yaml; missing default file = defaults).
    #[arg(long, short, global = true, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr (ignored under systemd, where logs go to journald).
    #[arg(long, global = true, value_parser = ["human", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate a configuration file and exit.
    CheckConfig {
        /// File to check (default: --config or /etc/berth/berthd.yaml).
        path: Option<PathBuf>,
    },
    /// Manage API tokens (stored hashed in the data dir's berth.db).
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once on stdout (only its hash is stored).
    Create {
        /// A label to recognise the token by in `token list`.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id; it stops working at once, also in a running daemon.
    Revoke { id: i64 },
}

fn rfc3339(ts: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ts.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn token_command(cmd: TokenCommand, config: Option<PathBuf>) -> ExitCode {
    let (path, required) = match config {
        Some(p) => (p, true),
        None => (PathBuf::from(berth::config::DEFAULT_PATH), false),
    };
    let config = match berth::config::load(&path, required) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match berth::store::Store::open(&config.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd {
        TokenCommand::Create { name } => store.create_token(&name).map(|(info, secret)| {
            println!("{secret}");
            eprintln!(
                "created token {} ({:?}); it is shown only this once: store it now",
                info.id, info.name
            );
        }),
        TokenCommand::List => store.list_tokens().map(|tokens| {
            println!("{:<6} {:<24} {:<22} STATUS", "ID", "NAME", "CREATED");
            for t in tokens {
                let status = match t.revoked_at {
                    Some(r) => format!("revoked {}", rfc3339(r)),
                    None => "active".into(),
                };
                println!(
                    "{:<6} {:<24} {:<22} {status}",
                    t.id,
                    t.name,
                    rfc3339(t.created_at)
                );
            }
        }),
        TokenCommand::Revoke { id } => store.revoke_token(id).map(|t| {
            eprintln!("revoked token {} ({:?})", t.id, t.name);
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Token(cmd) => token_command(cmd, cli.config),
        Command::CheckConfig { path } => {
            let path = path
                .or(cli.config)
                .unwrap_or_else(|| PathBuf::from(berth::config::DEFAULT_PATH));
            match berth::config::load(&path, true) {
                Ok(c) => {
                    println!(
                        "{}: ok ({} static route{})",
                        path.display(),
                        c.routes.len(),
                        if c.routes.len() == 1 { "" } else { "s" }
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("berthd: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Run => {
            let (path, required) = match cli.config {
                Some(p) => (p, true),
                None => (PathBuf::from(berth::config::DEFAULT_PATH), false),
            };
            let config = match berth::config::load(&path, required) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("berthd: {e}");
                    return ExitCode::from(2);
                }
            };
            let format = match cli.log_format.as_deref() {
                Some("json") => LogFormat::Json,
                Some(_) => LogFormat::Human,
                None => config.log.format,
            };
            berth::logging::init(&config.log.level, format);
            let workers = if config.proxy.workers == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            } else {
                config.proxy.workers
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("berthd: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(berth::daemon::run(
                config,
                Some(path).filter(|p| p.exists()),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "berthd failed");
                    eprintln!("berthd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
