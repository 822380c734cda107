//! Hitless binary upgrade. The running process starts the binary now on disk with its
//! listening sockets inherited (CLOEXEC cleared on exactly those descriptors) and a small
//! versioned handoff message in `BERTH_HANDOFF`, then waits on a pipe for the successor's
//! "ready". Only then does it stop accepting and drain; if the successor exits, says
//! something else, or is not ready in time, it is killed and this process carries on. The
//! successor detaches itself (its parent becomes init) so systemd can supervise it as
//! MAINPID: see [`spawn_successor`] and [`detach_if_asked`].

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
    /// Our end of the socket on which the previous process hands over client connections
    /// ([`super::conns`]). Absent from a previous process that does not hand any over; a
    /// successor that does not know the field ignores it and answers a plain `ready`, so the
    /// previous process then hands nothing over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conns_fd: Option<RawFd>,
    /// Asks the successor to detach itself first thing ([`detach_if_asked`]): it forks, the
    /// intermediate exits, the child writes `pid N` on the readiness pipe. Absent (false) from a
    /// previous process that detaches the successor by forking twice itself; a successor
    /// that does not know the field does not detach and answers `ready` as the first line,
    /// which [`spawn_successor`] accepts (it is then this process's child).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detach: bool,
}

/// Why the handoff from the previous process cannot be used (the successor then exits
/// before "ready", and the previous process carries on).
#[derive(Debug, Error)]
pub enum HandoffError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("handoff version {found} is not supported (this binary speaks {HANDOFF_VERSION})")]
    Version { found: u32 },
    #[error("descriptor {fd} for {name:?} is not open")]
    NotOpen { name: String, fd: RawFd },
}

impl Handoff {
    pub fn parse(raw: &str) -> Result<Self, HandoffError> {
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_str(raw)?;
        if probe.version != HANDOFF_VERSION {
            return Err(HandoffError::Version {
                found: probe.version,
            });
        }
        Ok(serde_json::from_str(raw)?)
    }

    /// Tells the previous process we are serving (and, when it gave us a connection socket,
    /// that we take connections on it: `ready PID conns`). Consumes the pipe.
    pub fn signal_ready(&mut self) {
        if let Some(fd) = self.ready_fd.take() {
            use std::io::Write;
            use std::os::fd::FromRawFd;
            // SAFETY: the handoff named this descriptor as our end of the readiness pipe and
            // nothing else in this process uses it; it is closed when `f` drops.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            let conns = if self.conns_fd.is_some() {
                " conns"
            } else {
                ""
            };
            // One write: the line arrives whole.
            let line = format!("ready {}{conns}\n", std::process::id());
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Detaches this process from the previous one when its handoff asks for it (`detach`):
/// forks; the parent (the intermediate, the previous process's own child) exits at once, so
/// the child's parent becomes init (under systemd, the service manager itself). The child
/// writes `pid N` (its own pid) on the readiness pipe, waits until it has been re-parented
/// (at most a second; it is, as soon as the intermediate has exited) so that it is not the
/// intermediate's child when it tells systemd it is the main process, and returns to start
/// up. Nothing happens without a handoff or without `detach`, or when
/// `BERTH_DEBUG_NO_DETACH` is set (the tests' stand-in for an older binary).
///
/// Why here and not in the previous process: forking the serving process copies its page
/// tables (twice, with the intermediate) and write-protects its memory, so it takes a
/// copy-on-write fault on every page it writes afterwards; the previous process now starts
/// us with `posix_spawn` and this fork copies a process that has barely started. The child
/// writes the `pid` line itself so that it always comes before its `ready`.
///
/// # Safety
/// Must run before any other thread exists (`fork` of a multi-threaded process leaves the
/// child with only the calling thread).
pub unsafe fn detach_if_asked(handoff: &Handoff) {
    if !handoff.detach || std::env::var_os("BERTH_DEBUG_NO_DETACH").is_some() {
        return;
    }
    let Some(ready) = handoff.ready_fd else {
        return;
    };
    let intermediate = std::process::id();
    // SAFETY: the caller guarantees this process is single-threaded, so the child is a full
    // copy; the parent only calls `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // Not detached: the previous process sees `ready` first and keeps us as its child
        // (as with an older binary).
        eprintln!(
            "berthd: cannot detach from the previous process: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if pid > 0 {
        // SAFETY: ends the intermediate without running anything of the copy it is.
        unsafe { libc::_exit(0) };
    }
    let mut buf = [0u8; 32];
    let n = pid_line(&mut buf, std::process::id() as libc::pid_t);
    // SAFETY: `ready` is the readiness pipe the handoff names; a short write to a pipe of
    // at most 32 bytes is atomic.
    unsafe { libc::write(ready, buf.as_ptr().cast(), n) };
    let until = std::time::Instant::now() + Duration::from_secs(1);
    while std::os::unix::process::parent_id() == intermediate && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_micros(100));
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

/// Reads one `\n`-terminated line (at most 256 bytes); empty at EOF.
fn read_line(reader: &mut impl Read) -> String {
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
}

/// Formats `pid N\n` into `buf` without allocating.
fn pid_line(buf: &mut [u8; 32], pid: libc::pid_t) -> usize {
    let mut digits = [0u8; 20];
    let mut n = pid.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf[..4].copy_from_slice(b"pid ");
    for i in 0..len {
        buf[4 + i] = digits[len - 1 - i];
    }
    buf[4 + len] = b'\n';
    5 + len
}

/// A successor that is serving.
#[derive(Debug)]
pub struct Successor {
    pub pid: u32,
    /// Our end of the connection socket, when the successor takes connections on it
    /// (it answered `ready PID conns`; see [`super::conns`]).
    pub conns: Option<super::conns::ConnSender>,
}

/// Starts the successor and waits until it is ready. Returns its pid on success; on failure
/// the successor is killed.
///
/// The successor is detached: systemd treats a `MAINPID=` that is not its own child as
/// "alien": it cannot wait for it, and `systemctl stop`/`restart` then skips the SIGTERM drain
/// and sends SIGKILL at once. It is started with `posix_spawn` (no copy of this serving
/// process's page tables, no copy-on-write faults in it afterwards) and asked to detach itself
/// ([`detach_if_asked`]): its first act is a fork whose parent, our child, exits at once, so
/// the successor's parent becomes init; the successor reports its pid on the readiness pipe
/// (`pid N`), then `ready N` when it serves. A successor that does not know the request (an older
/// binary) answers `ready N` as the first line: it is accepted and stays this process's child
/// until this process exits.
pub async fn spawn_successor(
    exe: PathBuf,
    args: Vec<std::ffi::OsString>,
    listeners: Vec<(String, RawFd)>,
    timeout: Duration,
) -> Result<Successor, UpgradeError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (reader, writer) = std::io::pipe()?;
    // The connection socket is best effort: without it the successor starts as before and
    // this process drains its keep-alive clients the old way.
    let conns = match super::conns::pair() {
        Ok(pair) => Some(pair),
        Err(e) => {
            tracing::warn!(error = %e, "no socket for handing connections over; they will be drained");
            None
        }
    };
    let handoff = Handoff {
        version: HANDOFF_VERSION,
        fds: listeners.iter().cloned().collect(),
        ready_fd: Some(writer.as_raw_fd()),
        parent_pid: std::process::id(),
        conns_fd: conns.as_ref().map(|(_, theirs)| theirs.as_raw_fd()),
        detach: true,
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
    // upgrade path spawns processes, and it runs one at a time. The spawn blocks until the
    // successor has exec'd: it runs on a blocking thread, so the runtime's workers go on
    // serving meanwhile (with `proxy.workers: 1`, the only one would otherwise stall every
    // connection for it). No `pre_exec`, so std uses `posix_spawn` (vfork-like: the serving
    // process is not copied).
    let inheritable: Vec<RawFd> = listeners
        .iter()
        .map(|(_, fd)| *fd)
        .chain(std::iter::once(writer.as_raw_fd()))
        .chain(handoff.conns_fd)
        .collect();
    let spawn_exe = exe.clone();
    let child: Child = tokio::task::spawn_blocking(move || {
        let began = std::time::Instant::now();
        for fd in &inheritable {
            set_cloexec(*fd, false);
        }
        let spawned = cmd.spawn();
        for fd in &inheritable {
            set_cloexec(*fd, true);
        }
        drop(writer);
        tracing::debug!(
            took_us = began.elapsed().as_micros() as u64,
            "successor spawned"
        );
        spawned.map_err(|source| UpgradeError::Spawn {
            exe: spawn_exe,
            source,
        })
    })
    .await
    .map_err(|e| UpgradeError::Io(std::io::Error::other(e)))??;
    // The successor has its copy; ours would keep the socket open after it exits.
    let conns = conns.map(|(ours, _theirs)| ours);
    let child_pid = child.id();

    // Lines are read on a blocking thread; each read ends with a line or at EOF (the
    // successor exited or closed the pipe).
    let mut reader = Some(reader);
    let mut next_line = async || -> Result<Option<String>, UpgradeError> {
        let Some(mut r) = reader.take() else {
            return Ok(None);
        };
        let read = tokio::task::spawn_blocking(move || (read_line(&mut r), r));
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok((line, r))) => {
                reader = Some(r);
                Ok(Some(line))
            }
            Ok(Err(e)) => Err(UpgradeError::Io(std::io::Error::other(e))),
            Err(_) => Ok(None),
        }
    };
    let first = next_line().await;
    let reap = |mut child: Child| async move {
        tokio::task::spawn_blocking(move || child.wait().map(|s| s.to_string()))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| "unknown status".into())
    };
    let (pid, line) = match first {
        Ok(Some(line)) if line.starts_with("pid ") => {
            // Our child was the intermediate: it exits right after its fork.
            let status = reap(child).await;
            let Some(pid) = line
                .strip_prefix("pid ")
                .and_then(|p| p.parse::<u32>().ok())
            else {
                return Err(UpgradeError::Protocol {
                    pid: child_pid,
                    msg: format!("{line} (intermediate: {status})"),
                });
            };
            tracing::info!(pid, exe = %exe.display(), "started new process; waiting for it to be ready");
            (pid, next_line().await)
        }
        Ok(Some(line)) if line.starts_with("ready ") => {
            // An older binary, which does not detach itself: it stays our child.
            tracing::warn!(
                pid = child_pid,
                "the new binary did not detach itself; it stays this process's child until this process exits"
            );
            (child_pid, Ok(Some(line)))
        }
        Ok(Some(line)) if line.is_empty() => {
            let status = reap(child).await;
            return Err(UpgradeError::Exited {
                pid: child_pid,
                status,
            });
        }
        other => {
            // SAFETY: plain kill(2) of our own child, reaped just below.
            unsafe { libc::kill(child_pid as libc::pid_t, libc::SIGKILL) };
            let _ = reap(child).await;
            return Err(match other {
                Ok(Some(msg)) => UpgradeError::Protocol {
                    pid: child_pid,
                    msg,
                },
                Ok(None) => UpgradeError::Timeout {
                    pid: child_pid,
                    timeout,
                },
                Err(e) => e,
            });
        }
    };
    // Not our child when it detached itself (init reaps it): kill by pid.
    let kill = || {
        // SAFETY: plain kill(2) on the pid the successor reported (or our child's, for an
        // older binary that did not detach).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    };
    match line {
        Ok(Some(line)) if line == format!("ready {pid}") => Ok(Successor { pid, conns: None }),
        Ok(Some(line)) if line == format!("ready {pid} conns") && conns.is_some() => {
            Ok(Successor {
                pid,
                conns: conns.map(super::conns::ConnSender::new),
            })
        }
        Ok(Some(line)) if line.is_empty() => Err(UpgradeError::Exited {
            pid,
            status: "see its log; it is init's child, not ours".into(),
        }),
        Ok(Some(line)) => {
            kill();
            Err(UpgradeError::Protocol { pid, msg: line })
        }
        Ok(None) => {
            kill();
            Err(UpgradeError::Timeout { pid, timeout })
        }
        Err(e) => {
            kill();
            Err(e)
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
            conns_fd: None,
            detach: false,
        };
        let s = serde_json::to_string(&h).unwrap();
        assert_eq!(Handoff::parse(&s).unwrap(), h);
        let future = s.replace("\"version\":1", "\"version\":2");
        let err = Handoff::parse(&future).unwrap_err();
        assert!(matches!(err, HandoffError::Version { found: 2 }), "{err:?}");
        assert!(err.to_string().contains("version 2"), "{err}");
        assert!(matches!(
            Handoff::parse("not json"),
            Err(HandoffError::Json(_))
        ));
        // A previous process that hands no connections over leaves the field out; a
        // successor that does not know it ignores it (no `deny_unknown_fields`).
        assert_eq!(h.conns_fd, None);
        assert!(!s.contains("conns_fd"), "{s}");
        let with = Handoff {
            conns_fd: Some(9),
            ..h.clone()
        };
        let s = serde_json::to_string(&with).unwrap();
        assert_eq!(Handoff::parse(&s).unwrap().conns_fd, Some(9));
        // The same for `detach`: left out when false (what an older previous process sends),
        // parsed when true.
        assert!(!s.contains("detach"), "{s}");
        let detach = Handoff {
            detach: true,
            ..h.clone()
        };
        let s = serde_json::to_string(&detach).unwrap();
        assert!(Handoff::parse(&s).unwrap().detach, "{s}");
    }

    #[test]
    fn pid_line_formats_without_allocating() {
        let mut buf = [0u8; 32];
        let n = pid_line(&mut buf, 4_194_304);
        assert_eq!(&buf[..n], b"pid 4194304\n");
        let n = pid_line(&mut buf, 7);
        assert_eq!(&buf[..n], b"pid 7\n");
    }
}
