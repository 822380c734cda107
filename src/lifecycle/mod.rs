//! Listeners and process lifecycle. Every listener has a name (`http`, `https`, `api`,
//! `control`) and is taken, in this order, from systemd socket activation (`LISTEN_FDS` +
//! `LISTEN_FDNAMES`), from the previous process during an upgrade (the versioned handoff), or
//! bound fresh (house rule 6). Inherited descriptors are collected once, before any thread
//! starts, and each one is claimed at most once; unclaimed ones are closed.

pub mod conns;
pub mod control;
pub mod notify;
pub mod upgrade;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

pub use upgrade::{Handoff, HandoffError, Phase, HANDOFF_ENV, HANDOFF_VERSION};

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("cannot listen on {addr} ({name}): {source}")]
    Bind {
        name: String,
        addr: String,
        source: std::io::Error,
    },
    #[error("inherited descriptor {fd} for {name:?} is unusable: {source}")]
    Inherited {
        name: String,
        fd: RawFd,
        source: std::io::Error,
    },
    #[error("invalid upgrade handoff ({env}): {source}")]
    Handoff {
        env: &'static str,
        source: HandoffError,
    },
}

impl ListenError {
    fn inherited(name: &str, fd: RawFd, source: std::io::Error) -> Self {
        Self::Inherited {
            name: name.into(),
            fd,
            source,
        }
    }
}

/// Where a listener came from (reported in logs and STATUS=).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Systemd,
    Upgrade,
    Bound,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Systemd => "systemd",
            Origin::Upgrade => "previous process",
            Origin::Bound => "bound",
        })
    }
}

/// Descriptors this process was started with, by name.
#[derive(Debug, Default)]
pub struct Inherited {
    fds: HashMap<String, (OwnedFd, Origin)>,
    /// Present when this process was started by `berthd upgrade`.
    pub handoff: Option<Handoff>,
    /// The socket on which the previous process hands over client connections
    /// ([`conns`]), until the plain-HTTP listener takes it ([`Inherited::take_conns`]).
    conns: Option<OwnedFd>,
}

impl Inherited {
    /// Collects systemd and upgrade descriptors and removes the variables that carried them,
    /// so children do not misread them.
    ///
    /// # Safety
    /// Must run before any other thread exists (it edits the environment).
    pub unsafe fn collect() -> Result<Self, ListenError> {
        let mut me = Inherited::default();
        // SAFETY: caller guarantees single-threaded; the crate only touches env + fcntl.
        let sd = unsafe { sd_notify::listen_fds_with_names_and_unset_env() };
        match sd {
            Ok(iter) => {
                for (fd, name) in iter {
                    // SAFETY: systemd passed us this descriptor; nothing else owns it.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    if me.fds.contains_key(&name) {
                        tracing::debug!(%name, fd, "duplicate inherited descriptor closed");
                        continue;
                    }
                    me.fds.insert(name, (owned, Origin::Systemd));
                }
            }
            Err(e) => tracing::warn!(error = %e, "ignoring invalid LISTEN_FDS"),
        }
        if let Some(raw) = std::env::var_os(HANDOFF_ENV) {
            // SAFETY: single-threaded, see above.
            unsafe { std::env::remove_var(HANDOFF_ENV) };
            let mut handoff =
                Handoff::parse(&raw.to_string_lossy()).map_err(|source| ListenError::Handoff {
                    env: HANDOFF_ENV,
                    source,
                })?;
            // SAFETY: single-threaded, see above.
            unsafe { upgrade::detach_if_asked(&handoff) };
            for (name, fd) in &handoff.fds {
                if !fd_is_open(*fd) {
                    return Err(ListenError::Handoff {
                        env: HANDOFF_ENV,
                        source: HandoffError::NotOpen {
                            name: name.clone(),
                            fd: *fd,
                        },
                    });
                }
                // SAFETY: the previous process cleared CLOEXEC on exactly these descriptors
                // for us and named them in the handoff; we take ownership once.
                let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
                set_cloexec(owned.as_raw_fd(), true);
                if !me.fds.contains_key(name) {
                    me.fds.insert(name.clone(), (owned, Origin::Upgrade));
                }
            }
            if let Some(fd) = handoff.ready_fd {
                set_cloexec(fd, true);
            }
            if let Some(fd) = handoff.conns_fd {
                if fd_is_open(fd) {
                    // SAFETY: as above: named in the handoff for us, taken once.
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    set_cloexec(owned.as_raw_fd(), true);
                    me.conns = Some(owned);
                } else {
                    handoff.conns_fd = None;
                }
            }
            me.handoff = Some(handoff);
        }
        Ok(me)
    }

    /// The previous process's connection socket, once ([`conns`]). A successor that does
    /// not take it (or fails to) drops it, and the previous process drains instead.
    pub fn take_conns(&mut self) -> Option<OwnedFd> {
        self.conns.take()
    }

    /// Takes a TCP listener by name, or binds `addr` when none was inherited.
    pub fn tcp(
        &mut self,
        name: &str,
        addr: SocketAddr,
    ) -> Result<(std::net::TcpListener, Origin), ListenError> {
        if let Some((fd, origin)) = self.fds.remove(name) {
            let raw = fd.as_raw_fd();
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)
                .map_err(|source| ListenError::inherited(name, raw, source))?;
            l.local_addr()
                .map_err(|source| ListenError::inherited(name, raw, source))?;
            return Ok((l, origin));
        }
        Ok((bind_tcp(name, addr)?, Origin::Bound))
    }

    /// Takes a Unix listener by name, or binds `path` (replacing a stale socket file).
    pub fn unix(
        &mut self,
        name: &str,
        path: &Path,
    ) -> Result<(std::os::unix::net::UnixListener, Origin), ListenError> {
        if let Some((fd, origin)) = self.fds.remove(name) {
            let raw = fd.as_raw_fd();
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)
                .map_err(|source| ListenError::inherited(name, raw, source))?;
            return Ok((l, origin));
        }
        let wrap = |source| ListenError::Bind {
            name: name.into(),
            addr: path.display().to_string(),
            source,
        };
        if path.exists() {
            // A live daemon answers; a stale file from a crash does not.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(wrap(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another berthd is running (its control socket answers)",
                )));
            }
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(wrap)?;
        }
        let l = std::os::unix::net::UnixListener::bind(path).map_err(wrap)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(wrap)?;
        l.set_nonblocking(true).map_err(wrap)?;
        Ok((l, Origin::Bound))
    }

    /// Takes every inherited descriptor whose name starts with `prefix` (frontend listeners,
    /// `frontend.NAME.I`), to be claimed by name later through [`FrontendSockets`].
    pub fn take_prefix(&mut self, prefix: &str) -> FrontendSockets {
        let names: Vec<String> = self
            .fds
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        let mut fds = HashMap::new();
        for n in names {
            if let Some(v) = self.fds.remove(&n) {
                fds.insert(n, v);
            }
        }
        FrontendSockets {
            fds: std::sync::Mutex::new(fds),
        }
    }

    /// Closes the descriptors nobody claimed (systemd keeps its own copies listening) and
    /// returns their names.
    pub fn close_unclaimed(&mut self) -> Vec<String> {
        // A connection socket nobody took: closed, and "ready" will not offer to take any.
        if self.conns.take().is_some() {
            if let Some(h) = self.handoff.as_mut() {
                h.conns_fd = None;
            }
        }
        self.fds.drain().map(|(name, _)| name).collect()
    }
}

/// Inherited frontend listeners (upgrade hand-over, socket activation, fd store), claimed by
/// name when the frontend starts; a name with no inherited socket, or one listening on another
/// address than the frontend now wants, is bound fresh.
#[derive(Debug, Default)]
pub struct FrontendSockets {
    fds: std::sync::Mutex<HashMap<String, (OwnedFd, Origin)>>,
}

impl FrontendSockets {
    /// The inherited socket named `name` if it listens on `addr` (port 0: any port), else a
    /// fresh bind of `addr`.
    pub fn listen(
        &self,
        name: &str,
        addr: SocketAddr,
    ) -> Result<(std::net::TcpListener, Origin), ListenError> {
        let taken = self.fds.lock().ok().and_then(|mut m| m.remove(name));
        if let Some((fd, origin)) = taken {
            let l = std::net::TcpListener::from(fd);
            let matches = l.local_addr().is_ok_and(|local| {
                local.ip() == addr.ip() && (addr.port() == 0 || local.port() == addr.port())
            });
            if matches && l.set_nonblocking(true).is_ok() {
                return Ok((l, origin));
            }
            tracing::info!(%name, %addr, "inherited listener is for another address; binding anew");
        }
        Ok((bind_tcp(name, addr)?, Origin::Bound))
    }

    /// Closes what nobody claimed and returns the names.
    pub fn close_unclaimed(&self) -> Vec<String> {
        self.fds
            .lock()
            .map(|mut m| m.drain().map(|(n, _)| n).collect())
            .unwrap_or_default()
    }
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Sets or clears FD_CLOEXEC. Clearing is how listeners survive `exec` into the new binary.
pub fn set_cloexec(fd: RawFd, on: bool) -> bool {
    // SAFETY: fcntl on a descriptor we own; only the FD_CLOEXEC flag changes.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return false;
        }
        let new = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        libc::fcntl(fd, libc::F_SETFD, new) >= 0
    }
}

/// Sets `TCP_DEFER_ACCEPT` on a listening socket (`secs` = 0 turns it off): the kernel
/// queues a connection for `accept` only once data arrived on it, or after about `secs` of
/// silence. Neither socket2 nor std has a setter for this option. The listener is ours
/// (bound here, inherited from systemd or handed over by the previous process).
pub fn set_defer_accept(listener: std::os::fd::BorrowedFd<'_>, secs: u32) -> std::io::Result<()> {
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt on a descriptor borrowed for this call, reading one c_int that lives
    // on this stack frame for the call; the length passed is that int's size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds a fresh TCP listener (SO_REUSEADDR, non-blocking, backlog 4096).
pub fn bind_tcp(name: &str, addr: SocketAddr) -> Result<std::net::TcpListener, ListenError> {
    let wrap = |source| ListenError::Bind {
        name: name.to_string(),
        addr: addr.to_string(),
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
