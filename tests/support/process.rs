//! `berthd` as a child process: spawned with its log lines collected, and process checks.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

/// The berthd binary the process tests run: `BERTH_TEST_BERTHD` when set (e.g. a release build,
/// to measure what the debug build is too slow to show), else the one cargo built.
pub fn berthd_bin() -> std::ffi::OsString {
    std::env::var_os("BERTH_TEST_BERTHD").unwrap_or_else(|| BERTHD.into())
}

/// Spawns `berthd --config CONFIG --log-format json` without the caller's `NOTIFY_SOCKET`,
/// `LISTEN_FDS`, `JOURNAL_STREAM` (logs go to stderr, not journald) and
/// `CREDENTIALS_DIRECTORY` (unless `credentials` sets it, like systemd's `LoadCredential=`);
/// its stderr lines are appended to `logs` (for assertions and failure messages) by the
/// returned thread, which ends when every process holding the pipe has exited. Returns once
/// the process is spawned, not when it serves.
pub fn spawn_berthd(
    config: &Path,
    logs: &Arc<Mutex<Vec<String>>>,
    credentials: Option<&Path>,
) -> (Child, JoinHandle<()>) {
    let mut cmd = Command::new(berthd_bin());
    cmd.arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .env_remove("JOURNAL_STREAM")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(dir) = credentials {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    let mut child = cmd.spawn().expect("berthd starts");
    let stderr = child.stderr.take().expect("berthd stderr");
    let logs = logs.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            logs.lock().unwrap().push(line);
        }
    });
    (child, reader)
}

/// The path of `systemd-socket-activate`, or `None` (after printing the skip line) when it is
/// not installed; with `BERTH_SYSTEM_TESTS` set, a missing tool fails the test instead.
pub fn socket_activate_tool() -> Option<String> {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("systemd-socket-activate"))
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("BERTH_SYSTEM_TESTS").is_some() {
            panic!("systemd-socket-activate not installed (apt-get install systemd)");
        }
        eprintln!("skipped: set BERTH_SYSTEM_TESTS=1 (needs systemd-socket-activate)");
    }
    found.map(|p| p.to_string_lossy().into_owned())
}

/// True while process `pid` runs (a zombie or a dead one, which may still have /proc/PID,
/// counts as gone). The state is the first field after the command name's last `)`.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
        Err(_) => false,
    }
}
