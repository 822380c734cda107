//! The one runner of the `berth` CLI binary: a clean environment (no `BERTH_SERVER`,
//! `BERTH_TOKEN`, `BERTH_URL`, `BERTH_CA_CERT` from the caller, `NO_COLOR`), its own settings
//! file and working directory; output is stdout followed by stderr.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// The command, not yet run: `cfg` is the CLI's settings file (`BERTH_CLI_CONFIG`).
pub fn command(cfg: &Path, cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BERTH);
    cmd.args(args)
        .current_dir(cwd)
        .env("BERTH_CLI_CONFIG", cfg)
        .env("NO_COLOR", "1")
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_URL")
        .env_remove("BERTH_CA_CERT");
    cmd
}

/// (exit code, stdout + stderr) of a finished run (-1 when a signal ended it).
pub fn text(out: Output) -> (i32, String) {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `cmd` off the async workers; (exit code, stdout + stderr).
pub async fn run(mut cmd: Command) -> (i32, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("berth runs"))
        .await
        .expect("berth runner task");
    text(out)
}

/// `berth ARGS` with extra environment `env`, from async tests.
pub async fn berth(cfg: &Path, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String) {
    let mut cmd = command(cfg, cwd, args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd).await
}

/// `berth ARGS` from a blocking context.
pub fn berth_blocking(cfg: &Path, cwd: &Path, args: &[&str]) -> (i32, String) {
    text(command(cfg, cwd, args).output().expect("berth runs"))
}

/// One user of the CLI: a settings file and a working directory kept across runs.
pub struct Cli {
    pub cfg: PathBuf,
    pub dir: PathBuf,
}

impl Cli {
    /// Settings in `dir/cli.toml`, working directory `dir`.
    pub fn in_dir(dir: &Path) -> Cli {
        Cli {
            cfg: dir.join("cli.toml"),
            dir: dir.to_path_buf(),
        }
    }

    /// `berth ARGS` (off the async workers): (exit code, stdout + stderr).
    pub async fn run(&self, args: &[&str]) -> (i32, String) {
        berth(&self.cfg, &self.dir, &[], args).await
    }
}
