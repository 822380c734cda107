//! Client connections handed to the successor during an upgrade (issue 23). The previous
//! process sends each plain-HTTP/1 keep-alive connection it would otherwise close, at a
//! request boundary, over a `SOCK_SEQPACKET` socket pair created for the upgrade: one
//! message per connection, carrying the connection's descriptor (`SCM_RIGHTS`) and the name
//! of the listener that accepted it. The successor serves what arrives as if it had accepted
//! it; the client sees nothing but its next answer coming from the new process.
//!
//! An idle upstream connection (the direct path's, plain TCP with nothing read ahead) may go
//! just before a client connection, named `upstream HOST:PORT`: the successor adds it to its
//! pool, so the client's next request finds it there instead of connecting.
//!
//! Message: `conn 1 <name>` (no newline), one descriptor. Anything else is refused and any
//! descriptor that came with it is closed.
//!
//! The other way, before it says `ready`, the successor names the listeners beyond the main
//! one it takes connections for (`takes 1 <name>`, no descriptor; today an HTTP frontend's,
//! `frontend NAME`): the previous process hands over a frontend's connections only when its
//! successor named that frontend (an older successor names none, and one that lacks the
//! frontend would have nowhere to serve them), and drains the rest as before.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;

const PREFIX: &[u8] = b"conn 1 ";
const TAKES: &[u8] = b"takes 1 ";
/// The longest name a message may carry (a listener's, or `upstream HOST:PORT`).
const MAX_NAME: usize = 300;

/// A connected `SOCK_SEQPACKET` pair, both ends close-on-exec: `(ours, theirs)`.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into the array on success.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The previous process's end: sends connections.
#[derive(Debug)]
pub struct ConnSender {
    sock: OwnedFd,
    /// The listeners beyond the main one the successor named (`takes 1 <name>`).
    takes: std::collections::HashSet<String>,
}

impl ConnSender {
    /// Our end, once the successor said `ready`: what it named before that is read now.
    pub fn new(sock: OwnedFd) -> Self {
        let mut takes = std::collections::HashSet::new();
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); TAKES.len() + MAX_NAME + 1];
        // Bounded: the successor sends one message per listener it names.
        while takes.len() < 10_000 {
            let got = socket2::SockRef::from(&sock).recv_with_flags(&mut buf, libc::MSG_DONTWAIT);
            let Ok(n) = got else { break };
            if n == 0 {
                break;
            }
            if n == buf.len() {
                // Longer than any name: cut off by the buffer, skipped.
                continue;
            }
            // SAFETY: `recv` initialised the first `n` bytes.
            let msg = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            match msg.strip_prefix(TAKES).map(std::str::from_utf8) {
                Some(Ok(name)) => {
                    takes.insert(name.to_string());
                }
                _ => tracing::debug!("unknown message from the successor skipped"),
            }
        }
        ConnSender { sock, takes }
    }

    /// Whether the successor takes connections of `listener` (beyond the main one).
    pub fn takes(&self, listener: &str) -> bool {
        self.takes.contains(listener)
    }

    /// Sends `conn` (accepted by `listener`) without blocking. On success the successor has a
    /// copy of the descriptor in its queue and this process may close its own; on error
    /// (queue full, successor gone) nothing was sent and the caller keeps serving it.
    pub fn send(&self, listener: &str, conn: BorrowedFd<'_>) -> io::Result<()> {
        if listener.len() > MAX_NAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "listener name too long",
            ));
        }
        let mut payload = [0u8; PREFIX.len() + MAX_NAME];
        payload[..PREFIX.len()].copy_from_slice(PREFIX);
        payload[PREFIX.len()..PREFIX.len() + listener.len()].copy_from_slice(listener.as_bytes());
        let len = PREFIX.len() + listener.len();
        let mut iov = iovec(&mut payload[..len]);
        let mut control = Control::new();
        let msg = control.header(&mut iov);
        // SAFETY: `msg_control` points at a buffer of CMSG_SPACE(sizeof(int)) aligned bytes,
        // so the first header and its data fit; the descriptor is borrowed for the call (the
        // kernel takes its own reference).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), conn.as_raw_fd());
        }
        // SAFETY: `msg` is fully initialised above.
        let n = unsafe {
            libc::sendmsg(
                self.sock.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The successor names `listener` as one it takes connections for (see the module's text),
/// on its end of the pair, before it says `ready`.
pub fn announce(sock: BorrowedFd<'_>, listener: &str) -> io::Result<()> {
    if listener.len() > MAX_NAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "listener name too long",
        ));
    }
    let msg = [TAKES, listener.as_bytes()].concat();
    socket2::SockRef::from(&sock).send_with_flags(&msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)?;
    Ok(())
}

/// Aligned room for one `SCM_RIGHTS` header with one descriptor.
struct Control {
    buf: [u64; 4],
}

impl Control {
    fn new() -> Self {
        Control { buf: [0; 4] }
    }
    fn space(&self) -> usize {
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let need = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        debug_assert!(need <= std::mem::size_of_val(&self.buf));
        need
    }

    /// A message header for one buffer (`iov`) and this room for the descriptor; both must
    /// outlive the header's use in `sendmsg`/`recvmsg`.
    fn header(&mut self, iov: &mut libc::iovec) -> libc::msghdr {
        // SAFETY: a zeroed msghdr is valid (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        msg.msg_controllen = self.space();
        msg.msg_control = self.buf.as_mut_ptr().cast();
        msg
    }
}

/// One buffer for `sendmsg`/`recvmsg` (it must outlive the call).
fn iovec(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

/// The successor's end: receives connections. (tokio's `UnixDatagram` only for its readiness:
/// the socket is a `SOCK_SEQPACKET` one, read with `recvmsg` below.)
#[derive(Debug)]
pub struct ConnReceiver(tokio::net::UnixDatagram);

/// One connection handed over.
#[derive(Debug)]
pub struct Handed {
    pub listener: String,
    pub conn: OwnedFd,
}

impl ConnReceiver {
    /// Wraps the successor's end (made non-blocking here). Needs a tokio runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let sock = std::os::unix::net::UnixDatagram::from(fd);
        sock.set_nonblocking(true)?;
        Ok(ConnReceiver(tokio::net::UnixDatagram::from_std(sock)?))
    }

    /// The next connection; `None` once the previous process closed its end. A malformed
    /// message is skipped (its descriptor, if any, closed) with a warning.
    pub async fn recv(&self) -> io::Result<Option<Handed>> {
        loop {
            self.0.readable().await?;
            let sock = self.0.as_raw_fd();
            match self.0.try_io(Interest::READABLE, || recv_one(sock)) {
                Ok(Received::Conn(h)) => return Ok(Some(h)),
                Ok(Received::End) => return Ok(None),
                Ok(Received::Refused(why)) => {
                    tracing::warn!(why, "handed-over connection refused");
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

enum Received {
    Conn(Handed),
    End,
    Refused(&'static str),
}

fn recv_one(sock: RawFd) -> io::Result<Received> {
    let mut payload = [0u8; PREFIX.len() + MAX_NAME + 1];
    let mut iov = iovec(&mut payload);
    let mut control = Control::new();
    let mut msg = control.header(&mut iov);
    // SAFETY: `msg` points at live buffers of the sizes it states. MSG_CMSG_CLOEXEC: a
    // received descriptor never leaks into a process we start.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // Take ownership of every descriptor that arrived before looking at anything else, so
    // each is closed on every refusal below.
    let mut conn = None;
    // SAFETY: walking the control messages the kernel wrote, within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    // SAFETY (inner): the kernel installed this descriptor for us.
                    let owned = OwnedFd::from_raw_fd(fd);
                    if conn.is_none() {
                        conn = Some(owned);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 && conn.is_none() {
        return Ok(Received::End);
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Ok(Received::Refused("message truncated"));
    }
    let Some(conn) = conn else {
        return Ok(Received::Refused("no descriptor in the message"));
    };
    let Some(name) = payload[..n as usize].strip_prefix(PREFIX) else {
        return Ok(Received::Refused("unknown message"));
    };
    let Ok(listener) = std::str::from_utf8(name) else {
        return Ok(Received::Refused("listener name is not UTF-8"));
    };
    Ok(Received::Conn(Handed {
        listener: listener.to_string(),
        conn,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A TCP connection sent over the pair arrives as a working descriptor of the same
    /// socket: bytes the client sends before and after the hand-over are read on the new
    /// side, and its answers reach the client.
    #[tokio::test]
    async fn a_connection_crosses_the_pair_and_keeps_working() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        client.write_all(b"before ").unwrap();
        let (ours, theirs) = pair().unwrap();
        let tx = ConnSender::new(ours);
        let rx = ConnReceiver::new(theirs).unwrap();
        tx.send("http", std::os::fd::AsFd::as_fd(&server)).unwrap();
        drop(server);
        client.write_all(b"after").unwrap();
        let handed = rx.recv().await.unwrap().unwrap();
        assert_eq!(handed.listener, "http");
        let mut stream = std::net::TcpStream::from(handed.conn);
        assert_eq!(stream.peer_addr().unwrap(), peer);
        let mut got = [0u8; 12];
        stream.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"before after");
        stream.write_all(b"answer").unwrap();
        drop(stream);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"answer");
        // The sender's end closed: the receiver sees the end.
        drop(tx);
        assert!(rx.recv().await.unwrap().is_none());
    }

    /// A message that is not a connection is refused (and skipped), the next one still
    /// arrives.
    #[tokio::test]
    async fn malformed_messages_are_skipped() {
        let (ours, theirs) = pair().unwrap();
        let rx = ConnReceiver::new(theirs).unwrap();
        let raw = std::os::unix::net::UnixDatagram::from(ours.try_clone().unwrap());
        raw.send(b"conn 1 http").unwrap(); // no descriptor
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let tx = ConnSender::new(ours);
        tx.send("http", std::os::fd::AsFd::as_fd(&server)).unwrap();
        let handed = rx.recv().await.unwrap().unwrap();
        assert_eq!(handed.listener, "http");
        assert!(tx
            .send(&"x".repeat(MAX_NAME + 1), std::os::fd::AsFd::as_fd(&server))
            .is_err());
    }
}
