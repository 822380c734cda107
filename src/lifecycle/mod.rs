//! Listeners and process lifecycle. Every listener has a name (`http`, `https`, `api`) so it
//! can later be taken from systemd socket activation or a previous process instead of bound.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds a fresh TCP listener (SO_REUSEADDR, non-blocking, backlog 4096).
pub fn bind_tcp(name: &str, addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    let wrap = |source| ListenError::Bind {
        name: name.to_string(),
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(wrap)?;
    socket.set_reuse_address(true).map_err(wrap)?;
    if addr.is_ipv6() {
        // `[::]:80` should also take IPv4 clients, as operators expect.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into()).map_err(wrap)?;
    socket.listen(4096).map_err(wrap)?;
    socket.set_nonblocking(true).map_err(wrap)?;
    Ok(socket.into())
}
