//! `berthd` as a child process: spawned with its log lines collected, and process checks.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

pub const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

/// The berthd binary the process tests run: `BERTH_TEST_BERTHD` when set (e.g. a release build,
/// to measure what the debug build is too slow to show), else the one cargo built.
pub fn berthd_bin() -> std::ffi::OsString {
    std::env::var_os("BERTH_TEST_BERTHD").unwrap_or_else(|| BERTHD.into())
}

/// Spawns `berthd --config CONFIG --log-format json` without the caller's `NOTIFY_SOCKET` and
/// `LISTEN_FDS`; its stderr lines are appended to `logs` (for assertions and failure messages).
/// Returns once the process is spawned, not when it serves.
pub fn spawn_berthd(config: &Path, logs: &Arc<Mutex<Vec<String>>>) -> Child {
    let mut child = Command::new(berthd_bin())
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("LISTEN_FDS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berthd starts");
    let stderr = child.stderr.take().expect("berthd stderr");
    let logs = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            logs.lock().unwrap().push(line);
        }
    });
    child
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
