//! Ports for tests: a free one for a server the test starts later, a closed one to connect to,
//! and waiting until something listens. One HTTP/1.1 response read off a raw connection.

use std::net::SocketAddr;
use std::time::Duration;

/// A port on 127.0.0.1 that was free just now, for a server that binds it later (pebble,
/// a child berthd). Taken from 20000-31999, below Linux's ephemeral range, and handed out once
/// per process: a `bind(0)` port comes from the ephemeral range, where any outgoing connection
/// of this or another process may take it as its source port before the daemon binds it
/// (seen once as `AddrInUse` in tls_pebble).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT.compare_exchange(0, seed % SPAN + 1, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// A port on 127.0.0.1 nobody listens on (bound once, then closed).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// Waits (20 s at most) until something listens on `addr`.
pub async fn wait_port(addr: SocketAddr, what: &str) {
    let ok = super::poll::wait_for(Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await;
    assert!(ok.is_some(), "{what} did not start listening on {addr}");
}

/// One HTTP/1.1 response read by [`read_raw_response`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// The server said `Connection: close`.
    pub close: bool,
    pub body: String,
}

/// How far [`read_raw_response`] got; callers word it (some count one kind as a clean refusal).
#[derive(Debug)]
pub enum RawReadError {
    /// Nothing of the response arrived: end of stream (`None`) or this error.
    NoResponse(Option<std::io::Error>),
    BadStatus(String),
    Head(std::io::Error),
    Body(std::io::Error),
}

/// Reads one HTTP/1.1 response with a Content-Length body (or none) from `r`.
pub fn read_raw_response(r: &mut impl std::io::BufRead) -> Result<RawResponse, RawReadError> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => return Err(RawReadError::NoResponse(None)),
        Err(e) => return Err(RawReadError::NoResponse(Some(e))),
        Ok(_) => {}
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RawReadError::BadStatus(line.clone()))?;
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        r.read_line(&mut line).map_err(RawReadError::Head)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if l.starts_with("connection:") && l.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(RawReadError::Body)?;
    Ok(RawResponse {
        status,
        close,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
