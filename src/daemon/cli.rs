//! `berthd`'s command line: flags, the admin commands (`init`, `token`, `backup`,
//! `check-config`, and `upgrade`/`reload`/`status` through the control socket) and `run`, which
//! builds the tokio runtime and hands over to [`super::run`]. `src/bin/berthd.rs` only calls
//! [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::admin;
use crate::model::config::LogFormat;

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
    /// First run on a server (idempotent): write a commented config if there is none, create
    /// the data dir and the secrets key, create an admin API token, print the `berth server
    /// add` line for your laptop.
    Init {
        /// Name the laptop will know this server by.
        #[arg(long, default_value = "production")]
        server_name: String,
        /// Create a new token even if an `init` token exists already.
        #[arg(long)]
        new_token: bool,
    },
    /// Manage API tokens (stored hashed in the data dir's berth.db).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Copy the data dir's berth.db to FILE with SQLite's online backup (safe while berthd
    /// runs) and check the copy. Restore: stop berthd, remove berth.db-wal and berth.db-shm,
    /// copy FILE to the data dir as berth.db, start berthd.
    Backup {
        /// Where to write the backup (replaced atomically if it exists).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Create a token and print it once on stdout (only its hash is stored).
    Create {
        /// A label to recognise the token by in `token list`.
        #[arg(long, default_value = "default")]
        name: String,
        /// What the token may do (repeat, or comma-separate): `read` (every GET),
        /// `deploy:APP` (deploy, roll back, stop, status and logs of APP; `*` globs, e.g.
        /// `deploy:shop-*`), `admin` (everything). Default: admin.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id; it stops working at once, also in a running daemon.
    Revoke { id: i64 },
}
/// `berthd`'s `main`: must run before any thread is spawned (it collects inherited sockets).
pub fn main() -> ExitCode {
    // Inherited sockets (systemd, previous process) are collected before any thread exists.
    // SAFETY: nothing has spawned a thread yet; this is the first thing main does.
    let inherited = match unsafe { crate::lifecycle::Inherited::collect() } {
        Ok(i) => i,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Upgrade => admin::control(cli.config, "upgrade"),
        Command::Reload => admin::control(cli.config, "reload"),
        Command::Status => admin::control(cli.config, "status"),
        Command::Token(cmd) => admin::token_command(cmd, cli.config),
        Command::Backup { file } => admin::backup_command(cli.config, &file),
        Command::Init {
            server_name,
            new_token,
        } => admin::init_command(cli.config, &server_name, new_token),
        Command::CheckConfig { path } => {
            let path = path
                .or(cli.config)
                .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
            match crate::config::load(&path, true) {
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
            let (path, config) = match admin::load_or_exit(cli.config) {
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
            crate::logging::init(&config.log.level, format);
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
            match runtime.block_on(crate::daemon::run(
                config,
                Some(path).filter(|p| p.exists()),
                inherited,
            )) {
                Ok(crate::daemon::Stopped::HandedOver) => {
                    // Handed over and drained: exit without tearing the runtime down (joining
                    // its threads, freeing every task and buffer one by one) on the core the
                    // successor now serves from; the kernel frees it all at exit anyway. What
                    // matters is already done: every change was committed to SQLite
                    // (synchronous=FULL) before it was acted on, `shutdown` closed every
                    // connection and task, and logs are written synchronously.
                    std::mem::forget(runtime);
                    ExitCode::SUCCESS
                }
                Ok(crate::daemon::Stopped::Shutdown) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "berthd failed");
                    eprintln!("berthd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
