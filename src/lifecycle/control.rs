//! The local control socket (`control_socket`, mode 0600): one command per connection
//! (`upgrade`, `reload`, `status`), answered with progress lines and a final `ok ...` or
//! `error ...` line. `berthd upgrade` and `berthd reload` are its clients.

use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};

/// A command received on the control socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Upgrade,
    Reload,
    Status,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "upgrade" => Some(Command::Upgrade),
            "reload" => Some(Command::Reload),
            "status" => Some(Command::Status),
            _ => None,
        }
    }
}

/// Why the daemon refused or failed a command: the text after `error ` on the wire (and
/// what `berthd upgrade`/`reload` print), word for word.
#[derive(Debug, Error)]
pub enum CommandError {
    #[error("unknown command {0:?} (expected upgrade, reload or status)")]
    Unknown(String),
    #[error("daemon is shutting down")]
    ShuttingDown,
    #[error("daemon stopped before answering")]
    NoAnswer,
    /// The new configuration was rejected; the previous one stays in force. The daemon's
    /// error (boxed: `lifecycle/` does not import the daemon).
    #[error("{0}")]
    ReloadRejected(Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot find the berthd binary: {0}")]
    NoBinary(std::io::Error),
    /// In-flight deploys did not pause in time, so no successor was started (the deploy
    /// engine's error, boxed like `ReloadRejected`).
    #[error("{0}")]
    NotStarted(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Upgrade(#[from] super::upgrade::UpgradeError),
}

/// A command plus where to send the final answer (`Ok(message)` or the error).
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<String, CommandError>>,
}

/// Why `call` got no `ok` answer.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error(
        "cannot reach berthd at {} ({source}); is it running, and is control_socket the same?",
        path.display()
    )]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The daemon's `error ...` line: its text, as sent (a `CommandError` on the other side).
    #[error("{0}")]
    Refused(String),
    #[error("berthd closed the control connection without an answer")]
    Closed,
}

/// Accepts control connections until `stop` turns true; forwards commands to `tx`.
/// `progress` lines (e.g. upgrade phases) are streamed to the client while it waits.
pub async fn serve(
    listener: UnixListener,
    tx: mpsc::Sender<Request>,
    progress: watch::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) {
    // Connection tasks are kept so that answers already decided (e.g. "ok new process N is
    // serving" right before this process hands over and exits) are written before we return.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let tx = tx.clone();
                let mut progress = progress.clone();
                conns.spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut line = String::new();
                    let mut r = BufReader::new(r);
                    if r.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let Some(command) = Command::parse(&line) else {
                        let e = CommandError::Unknown(line.trim().to_string());
                        let _ = w.write_all(format!("error {e}\n").as_bytes()).await;
                        return;
                    };
                    let (reply, rx) = oneshot::channel();
                    if tx.send(Request { command, reply }).await.is_err() {
                        let _ = w.write_all(format!("error {}\n", CommandError::ShuttingDown).as_bytes()).await;
                        return;
                    }
                    progress.mark_unchanged();
                    tokio::pin!(rx);
                    loop {
                        tokio::select! {
                            answer = &mut rx => {
                                let text = match answer {
                                    Ok(Ok(m)) => format!("ok {m}\n"),
                                    Ok(Err(e)) => format!("error {e}\n"),
                                    Err(_) => format!("error {}\n", CommandError::NoAnswer),
                                };
                                let _ = w.write_all(text.as_bytes()).await;
                                return;
                            }
                            changed = progress.changed() => {
                                if changed.is_err() { continue; }
                                let p = progress.borrow_and_update().clone();
                                let _ = w.write_all(format!("phase {p}\n").as_bytes()).await;
                            }
                        }
                    }
                });
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let finish = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(2), finish)
        .await
        .is_err()
    {
        conns.abort_all();
    }
}

/// Client side: sends `command`, prints progress lines to stderr, returns the final answer.
pub fn call(path: &Path, command: &str) -> Result<String, ControlError> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        ControlError::Unreachable {
            path: path.to_path_buf(),
            source,
        }
    })?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let reader = std::io::BufReader::new(stream);
    for line in reader.lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("ok") {
            return Ok(rest.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("error") {
            return Err(ControlError::Refused(rest.trim().to_string()));
        }
        if let Some(rest) = line.strip_prefix("phase ") {
            eprintln!("berthd: {rest}");
        }
    }
    Err(ControlError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire text is what `berthd upgrade`/`reload` print: a real socket, `serve` and
    /// `call`, one refused command and one failed upgrade.
    #[tokio::test]
    async fn errors_reach_the_client_as_their_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<Request>(1);
        let (_progress_tx, progress) = watch::channel(String::new());
        let (stop_tx, stop) = watch::channel(false);
        let server = tokio::spawn(serve(listener, tx, progress, stop));
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let e = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
                let _ = req.reply.send(Err(CommandError::NoBinary(e)));
            }
        });
        let call_on = |command: &'static str| {
            let path = path.clone();
            tokio::task::spawn_blocking(move || call(&path, command))
        };
        let unknown = call_on("bogus").await.unwrap().unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "unknown command \"bogus\" (expected upgrade, reload or status)"
        );
        let failed = call_on("upgrade").await.unwrap().unwrap_err();
        assert!(matches!(failed, ControlError::Refused(_)), "{failed:?}");
        assert_eq!(failed.to_string(), "cannot find the berthd binary: gone");
        stop_tx.send(true).unwrap();
        server.await.unwrap();
        let gone = call(&path, "status").unwrap_err();
        assert!(
            gone.to_string()
                .starts_with(&format!("cannot reach berthd at {} (", path.display())),
            "{gone}"
        );
    }
}
