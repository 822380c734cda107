//! sd_notify messages to systemd (no-ops when `NOTIFY_SOCKET` is unset): READY/STATUS,
//! RELOADING with MONOTONIC_USEC, STOPPING, MAINPID during upgrades, WATCHDOG pings, and
//! storing listening sockets in the fd store so a plain restart keeps them open.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Whether a service manager is listening.
pub fn enabled() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Listeners live and state restored.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A successor announces itself as the new main process, then readiness.
pub fn ready_as_main(status: &str) {
    send(&[
        NotifyState::MainPid(std::process::id()),
        NotifyState::Ready,
        NotifyState::Status(status),
    ]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// Start of a reload (`Type=notify-reload` needs MONOTONIC_USEC with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading configuration"),
        ]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining connections"),
    ]);
}

/// Hands a listening socket to systemd's fd store under `name`.
pub fn store_fd(name: &str, fd: BorrowedFd<'_>) {
    if !enabled() {
        return;
    }
    if let Err(e) =
        sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
    {
        tracing::debug!(error = %e, %name, "fd store not available");
    }
}

/// Removes the descriptors named `name` from systemd's fd store (a listener closed for good).
pub fn remove_fd(name: &str) {
    if !enabled() {
        return;
    }
    if let Err(e) = sd_notify::notify(&[NotifyState::FdStoreRemove, NotifyState::FdName(name)]) {
        tracing::debug!(error = %e, %name, "fd store not available");
    }
}

/// Watchdog interval requested by systemd for this process, if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Pings the watchdog at half the requested interval until `stop` turns true.
pub async fn watchdog(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    // Debug aid for the watchdog test: a "hung" daemon stops pinging.
    let hang = std::env::var_os("BERTH_DEBUG_WATCHDOG_HANG").is_some();
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if !hang {
                    send(&[NotifyState::Watchdog]);
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}
