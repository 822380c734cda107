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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
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
