//! The one helper module of the integration tests, compiled into each test binary with
//! `mod support;`. Everything a test starts here stops when its handle is dropped.
//!
//! - `proxy`: in-process daemons (`start`, `config`), the one HTTP test backend (`TestBackend`:
//!   HTTP/1.1 and h2c, counters, `/sleep`, `/stream`, `/upload`, `/status`, WebSocket echo,
//!   switchable health; `BlockingBackend` runs it for tests without a runtime), a silent
//!   backend, HTTP clients (`client`, `fetch`, `send`, `raw_exchange`).
//! - `berthd`: `berthd` as a child process on fixed ports across restarts and upgrades
//!   (`BerthdProcess`: config, control commands, tokens, a credentials directory, logs and
//!   waiting for a log message, stop/kill/terminate).
//! - `process`: spawning `berthd` with its log lines collected; `pid_alive`;
//!   `socket_activate_tool` (systemd-socket-activate, or the skip).
//! - `cli`: the one runner of the `berth` CLI.
//! - `net`: free and closed ports, waiting for a listener, one HTTP/1.1 response off a raw
//!   connection (`read_raw_response`). `poll`: bounded polling.
//! - `tls`: a throwaway CA, raw HTTP/1.1 over TLS or TCP, pebble + challtestsrv, Knot.
//! - `docker`: the Docker system-test harness (`docker_ready`, images built locally incl. CGI
//!   ones, `deploy_config` for an in-process daemon, `Env` and `Env::request`, `Cleanup`,
//!   `load`/`Loader` and any bounded loop as a `Background` task, containers of an app).
//!
//! Kept apart on purpose: `tests/proxy/proxy.rs::ScriptedBackend` writes hand-made response
//! bytes (close-delimited bodies, 103 before 200, CL+TE, garbage, a keep-alive connection closed
//! behind the proxy's back) that a real HTTP server such as `TestBackend` (hyper) cannot send;
//! it only serves that file's direct-path framing tests. `tests/lifecycle/lifecycle.rs::Daemon`
//! runs berthd the way systemd does (under `systemd-socket-activate`, with `NOTIFY_SOCKET`,
//! `LISTEN_FDS` and a port-0 listener read back from the log) for the socket-activation and
//! sd-notify tests; `BerthdProcess` runs it on fixed ports that survive restarts and upgrades.
//! `tests/proxy/tcp.rs::InProc` is `proxy::start` with its own runtime, for the blocking TCP and
//! frontend tests (as `BlockingBackend` is `TestBackend` with its own runtime).

#![allow(dead_code, unused_imports)]

pub mod berthd;
pub mod cli;
pub mod docker;
pub mod net;
pub mod poll;
pub mod process;
pub mod proxy;
pub mod tls;

pub use net::*;
pub use poll::*;
pub use process::*;
pub use proxy::*;
pub use tls::*;

/// True (after printing the skip line, naming what the test needs) when system tests are off:
/// `BERTH_SYSTEM_TESTS=1` is not set when the test runs.
pub fn system_tests_off(needs: &str) -> bool {
    if std::env::var("BERTH_SYSTEM_TESTS").as_deref() != Ok("1") {
        if needs.is_empty() {
            println!("skipped: set BERTH_SYSTEM_TESTS=1");
        } else {
            println!("skipped: set BERTH_SYSTEM_TESTS=1 (needs {needs})");
        }
        return true;
    }
    false
}
