//! Hitless binary upgrade. The running process starts the binary now on disk with its
//! listening sockets inherited (CLOEXEC cleared on exactly those descriptors) and a small
//! versioned handoff message in `BERTH_HANDOFF`, then waits on a pipe for the successor's
//! "ready". Only then does it stop accepting and drain; if the successor exits, says
//! something else, or is not ready in time, it is killed and this process carries on.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::set_cloexec;

pub const HANDOFF_ENV: &str = "BERTH_HANDOFF";
pub const HANDOFF_VERSION: u32 = 1;

/// What the previous process hands the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub version: u32,
    /// Listener name → descriptor number in the new process.
    pub fds: BTreeMap<String, RawFd>,
    /// Write end of the readiness pipe.
    pub ready_fd: Option<RawFd>,
    /// The process handing over.
    pub parent_pid: u32,
}

impl Handoff {
    pub fn parse(raw: &str) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        if probe.version != HANDOFF_VERSION {
            return Err(format!(
                "handoff version {} is not supported (this binary speaks {HANDOFF_VERSION})",
                probe.version
            ));
        }
        serde_json::from_str(raw).map_err(|e| e.to_string())
    }

    /// Tells the previous process we are serving. Consumes the pipe.
    pub fn signal_ready(&mut self) {
        if let Some(fd) = self.ready_fd.take() {
            use std::io::Write;
            use std::os::fd::FromRawFd;
            // SAFETY: the handoff named this descriptor as our end of the readiness pipe and
            // nothing else in this process uses it; it is closed when `f` drops.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let _ = writeln!(f, "ready {}", std::process::id());
        }
    }
}

/// The upgrade state machine, published on a `watch` channel and reported to the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Serving; no upgrade in progress.
    Serving,
    /// Successor being started; waiting for its "ready".
    StartingSuccessor,
    /// Successor is serving; this process stopped accepting and drains.
    Draining { successor: u32 },
    /// Last upgrade failed; still serving.
    Failed { reason: String },
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Serving => write!(f, "serving"),
            Phase::StartingSuccessor => write!(f, "starting the new process"),
            Phase::Draining { successor } => {
                write!(f, "handed over to process {successor}; draining")
            }
            Phase::Failed { reason } => write!(f, "upgrade failed: {reason}; still serving"),
        }
    }
}

#[derive(Debug, Error)]
pub enum UpgradeError {
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("new process {pid} exited before it was ready ({status})")]
    Exited { pid: u32, status: String },
    #[error("new process {pid} was not ready within {timeout:?}; killed it")]
    Timeout { pid: u32, timeout: Duration },
    #[error("new process {pid} sent an unexpected readiness message {msg:?}")]
    Protocol { pid: u32, msg: String },
    #[error("an upgrade is already in progress")]
    Busy,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The binary to start: the path this process was started from (the file now at that path,
/// which a package upgrade has replaced), not `/proc/self/exe` (the old inode).
pub fn current_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(stripped) => PathBuf::from(stripped),
        None => exe,
    })
}

/// Starts the successor and waits until it is ready. Returns its pid on success; on failure
/// the successor is killed and reaped.
pub async fn spawn_successor(
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    listeners: Vec<(String, RawFd)>,
    timeout: Duration,
) -> Result<u32, UpgradeError> {
    let (mut reader, writer) = std::io::pipe()?;
    let handoff = Handoff {
        version: HANDOFF_VERSION,
        fds: listeners.iter().cloned().collect(),
        ready_fd: Some(writer.as_raw_fd()),
        parent_pid: std::process::id(),
    };
    let payload = serde_json::to_string(&handoff).map_err(std::io::Error::other)?;
    let mut cmd = Command::new(&exe);
    cmd.args(&args)
        .env(HANDOFF_ENV, payload)
        // systemd's variables describe this process, not the successor.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_PID");
    // Clear CLOEXEC on exactly the descriptors we hand over, spawn, then restore. Only the
    // upgrade path spawns processes, and it runs one at a time.
    let inheritable: Vec<RawFd> = listeners
        .iter()
        .map(|(_, fd)| *fd)
        .chain(std::iter::once(writer.as_raw_fd()))
        .collect();
    for fd in &inheritable {
        set_cloexec(*fd, false);
    }
    let spawned = cmd.spawn();
    for fd in &inheritable {
        set_cloexec(*fd, true);
    }
    drop(writer);
    let mut child: Child = spawned.map_err(|source| UpgradeError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    let pid = child.id();
    tracing::info!(pid, exe = %exe.display(), "started new process; waiting for it to be ready");

    // The read ends with a line (ready) or EOF (the child exited or closed the pipe).
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while buf.len() < 256 {
            match reader.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => buf.push(byte[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let outcome = tokio::time::timeout(timeout, read).await;
    let fail = |child: &mut Child| {
        let _ = child.kill();
        child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string())
    };
    match outcome {
        Ok(Ok(line)) if line == format!("ready {pid}") => {
            // Not waited for: it is the main process now and outlives us (init reaps it).
            drop(child);
            Ok(pid)
        }
        Ok(Ok(line)) if line.is_empty() => {
            let status = match child.try_wait() {
                Ok(Some(s)) => s.to_string(),
                _ => fail(&mut child),
            };
            Err(UpgradeError::Exited { pid, status })
        }
        Ok(Ok(line)) => {
            fail(&mut child);
            Err(UpgradeError::Protocol { pid, msg: line })
        }
        Ok(Err(e)) => {
            fail(&mut child);
            Err(UpgradeError::Io(std::io::Error::other(e)))
        }
        Err(_) => {
            fail(&mut child);
            Err(UpgradeError::Timeout { pid, timeout })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handoff_roundtrip_and_version_check() {
        let h = Handoff {
            version: HANDOFF_VERSION,
            fds: [("http".to_string(), 3)].into_iter().collect(),
            ready_fd: Some(7),
            parent_pid: 42,
        };
        let s = serde_json::to_string(&h).unwrap();
        assert_eq!(Handoff::parse(&s).unwrap(), h);
        let future = s.replace("\"version\":1", "\"version\":2");
        assert!(Handoff::parse(&future).unwrap_err().contains("version 2"));
        assert!(Handoff::parse("not json").is_err());
    }
}
