//! The local control socket (`control_socket`, mode 0600): one command per connection
//! (`upgrade`, `reload`, `status`), answered with progress lines and a final `ok ...` or
//! `error ...` line. `berthd upgrade` and `berthd reload` are its clients.

use std::path::Path;

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

/// A command plus where to send the final answer (`Ok(message)` or `Err(reason)`).
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<String, String>>,
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
                        let _ = w.write_all(format!("error unknown command {:?} (expected upgrade, reload or status)\n", line.trim()).as_bytes()).await;
                        return;
                    };
                    let (reply, rx) = oneshot::channel();
                    if tx.send(Request { command, reply }).await.is_err() {
                        let _ = w.write_all(b"error daemon is shutting down\n").await;
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
                                    Err(_) => "error daemon stopped before answering\n".to_string(),
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
pub fn call(path: &Path, command: &str) -> Result<String, String> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        format!(
            "cannot reach berthd at {} ({e}); is it running, and is control_socket the same?",
            path.display()
        )
    })?;
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let reader = std::io::BufReader::new(stream);
    for line in reader.lines() {
        let line = line.map_err(|e| e.to_string())?;
        if let Some(rest) = line.strip_prefix("ok") {
            return Ok(rest.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("error") {
            return Err(rest.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("phase ") {
            eprintln!("berthd: {rest}");
        }
    }
    Err("berthd closed the control connection without an answer".into())
}
