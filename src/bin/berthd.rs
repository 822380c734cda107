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
    /// Hand the listening sockets to the binary now on disk, without dropping a connection.
    Upgrade,
    /// Re-read the configuration file in place (like SIGHUP).
    Reload,
    /// Show the daemon's state (pid, upgrade phase, listeners).
    Status,
    /// Validate a configuration file and exit.
    CheckConfig {
        /// File to check (default: --config or /etc/berth/berthd.yaml).
        path: Option<PathBuf>,
    },
}

fn load_or_exit(
    path: Option<PathBuf>,
) -> Result<(PathBuf, berth::model::config::Config), ExitCode> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (PathBuf::from(berth::config::DEFAULT_PATH), false),
    };
    match berth::config::load(&path, required) {
        Ok(c) => Ok((path, c)),
        Err(e) => {
            eprintln!("berthd: {e}");
            Err(ExitCode::from(2))
        }
    }
}

fn control(path: Option<PathBuf>, command: &str) -> ExitCode {
    let socket = match load_or_exit(path) {
        Ok((_, c)) => c.control_socket(),
        // A broken file must still reach the daemon on `reload`, so that it rejects it, logs
        // it and reports it as STATUS= (the error above is printed too). The daemon's own
        // socket path then comes from the defaults.
        Err(_) if command == "reload" => berth::model::config::Config::default().control_socket(),
        Err(code) => return code,
    };
    match berth::lifecycle::control::call(&socket, command) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berthd {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Inherited sockets (systemd, previous process) are collected before any thread exists.
    // SAFETY: nothing has spawned a thread yet; this is the first thing main does.
    let inherited = match unsafe { berth::lifecycle::Inherited::collect() } {
        Ok(i) => i,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Upgrade => control(cli.config, "upgrade"),
        Command::Reload => control(cli.config, "reload"),
        Command::Status => control(cli.config, "status"),
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
            let (path, config) = match load_or_exit(cli.config) {
                Ok(pc) => pc,
                Err(code) => return code,
            };
            if inherited.handoff.is_some() && std::env::var_os("BERTH_DEBUG_FAIL_UPGRADE").is_some()
            {
                // Test hook: a successor that dies before it is ready.
                eprintln!("berthd: BERTH_DEBUG_FAIL_UPGRADE set; exiting before ready");
                return ExitCode::from(3);
            }
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
                inherited,
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
