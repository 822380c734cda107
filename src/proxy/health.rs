//! Active health checks and table refreshes. One task (see `spawn`) checks every backend of
//! every route that has a `health_check` and every member of every pool with a check (HTTP
//! `http_check`, or TCP connect/send/expect `health_check`; HTTP and TCP frontends share the
//! member's one health cell), concurrently up to a bound, feeds the results into
//! each backend's rise/fall cell (`model::health::BackendHealth`), and re-publishes the table
//! whenever a backend goes up or down (passive failures on the request path only poke this
//! task), and every 500 ms while a slow start is ramping. Re-publishing is a compare-and-swap
//! rebuild of the current table (`Tables::refresh`), so it never overwrites a newer table
//! from another writer, and the request path never waits for any of it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::model::health::{unix_ms, Transition};
use crate::model::pool::TcpCheckSpec;
use crate::model::route::{HealthCheckSpec, Route, RouteKind, ServerState};

pub use crate::model::health::ProbeError;

use super::Tables;

/// How often a ramping slow start re-publishes the table.
pub const SLOWSTART_REFRESH: Duration = Duration::from_millis(500);

/// Prober settings.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Most checks in flight at once.
    pub max_concurrent: usize,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self { max_concurrent: 64 }
    }
}

/// One backend to check: route (or pool) name, backend id, address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    pool: bool,
    route: String,
    backend: String,
    address: String,
}

/// The active check of a route or pool.
#[derive(Clone, Copy)]
enum Check<'a> {
    Http(&'a HealthCheckSpec),
    Tcp(&'a TcpCheckSpec),
}

impl Check<'_> {
    /// A route's HTTP check; a pool's HTTP check, else its TCP check (validation allows one).
    fn of(route: &Route) -> Option<Check<'_>> {
        match (&route.spec.health_check, &route.kind) {
            (Some(h), _) => Some(Check::Http(h)),
            (
                None,
                RouteKind::Pool {
                    tcp_check: Some(t), ..
                },
            ) => Some(Check::Tcp(t)),
            _ => None,
        }
    }

    fn interval(&self) -> Duration {
        match self {
            Check::Http(h) => h.interval,
            Check::Tcp(t) => t.interval,
        }
    }

    fn rise_fall(&self) -> (u32, u32) {
        match self {
            Check::Http(h) => (h.rise, h.fall),
            Check::Tcp(t) => (t.rise, t.fall),
        }
    }
}

/// Starts the prober; it ends when `stop` turns true.
pub fn spawn(
    tables: Arc<Tables>,
    settings: HealthSettings,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(run(tables, settings, stop))
}

async fn run(tables: Arc<Tables>, settings: HealthSettings, mut stop: watch::Receiver<bool>) {
    let sem = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
    let (tx, mut rx) = mpsc::channel::<(Key, bool)>(256);
    let mut next_due: HashMap<Key, Instant> = HashMap::new();
    let mut in_flight: HashSet<Key> = HashSet::new();
    let mut generation = tables.subscribe();
    let mut last_refresh = Instant::now();
    loop {
        // Schedule what is due in the current table.
        let now = Instant::now();
        let table = tables.load_full();
        let mut live = HashSet::new();
        let mut wake = now + SLOWSTART_REFRESH;
        for route in table.all() {
            let Some(check) = Check::of(route) else {
                continue;
            };
            for b in &route.backends {
                if b.state == ServerState::Maint {
                    continue;
                }
                let key = Key {
                    pool: route.kind != RouteKind::Route,
                    route: route.name.clone(),
                    backend: b.id.clone(),
                    address: b.address.to_string(),
                };
                live.insert(key.clone());
                let due = *next_due.entry(key.clone()).or_insert(now);
                if due <= now && !in_flight.contains(&key) {
                    in_flight.insert(key.clone());
                    next_due.insert(key.clone(), now + check.interval());
                    wake = wake.min(now + check.interval());
                    let tx = tx.clone();
                    let sem = sem.clone();
                    let host = route.canonical.clone();
                    let authority = b.authority.clone();
                    let attempt = match check {
                        Check::Http(h) => {
                            let h = h.clone();
                            futures_util::future::Either::Left(async move {
                                probe_once(authority.as_str(), &host, &h).await.is_ok()
                            })
                        }
                        Check::Tcp(t) => {
                            let t = t.clone();
                            futures_util::future::Either::Right(async move {
                                probe_tcp(authority.as_str(), &t).await
                            })
                        }
                    };
                    tokio::spawn(async move {
                        let Ok(_permit) = sem.acquire_owned().await else {
                            return;
                        };
                        let ok = attempt.await;
                        let _ = tx.send((key, ok)).await;
                    });
                } else if due > now {
                    wake = wake.min(due);
                }
            }
        }
        next_due.retain(|k, _| live.contains(k));
        drop(table);

        if tables.load().ramping() && last_refresh.elapsed() >= SLOWSTART_REFRESH {
            tables.refresh();
            last_refresh = Instant::now();
        }

        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            Some((key, ok)) = rx.recv() => {
                in_flight.remove(&key);
                if apply(&tables, &key, ok) {
                    tables.refresh();
                    last_refresh = Instant::now();
                }
            }
            _ = tables.passive_change() => {
                tables.refresh();
                last_refresh = Instant::now();
            }
            changed = generation.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Records one check result; true when the backend changed state.
fn apply(tables: &Tables, key: &Key, ok: bool) -> bool {
    let table = tables.load();
    let route = if key.pool {
        table.pool(&key.route)
    } else {
        table.route(&key.route)
    };
    let Some(route) = route else {
        return false;
    };
    let Some(check) = Check::of(route) else {
        return false;
    };
    let (rise, fall) = check.rise_fall();
    let Some(b) = route
        .backends
        .iter()
        .find(|b| b.id == key.backend && b.address.to_string() == key.address)
    else {
        return false;
    };
    match b.health.record_check(ok, rise, fall, unix_ms()) {
        Some(Transition::WentDown) => {
            tracing::warn!(route = %key.route, pool = key.pool, backend = %key.backend, upstream = %key.address, "backend marked down by health checks");
            true
        }
        Some(Transition::WentUp) => {
            tracing::info!(route = %key.route, pool = key.pool, backend = %key.backend, upstream = %key.address, "backend marked up by health checks");
            true
        }
        None => false,
    }
}

/// THE health check, used by the routing prober below and by the deploy gate
/// (`deploy::health`): a fresh connection to `authority`, `check.method check.path` with
/// `Host: host` (so virtual-hosted apps answer as they would for real traffic) and
/// `Connection: close`, success when the status is one of `check.expect`, all within
/// `check.timeout`. Returns the status.
pub async fn probe_once(
    authority: &str,
    host: &str,
    check: &HealthCheckSpec,
) -> Result<u16, ProbeError> {
    let method = check.method.as_http();
    let target = format!("http://{authority}{}", check.path);
    let http_err = |message: String| ProbeError::Http {
        method: method.clone(),
        target: target.clone(),
        message,
    };
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|source| ProbeError::Connect {
                method: method.clone(),
                target: target.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(TokioIo::new(tcp))
                .await
                .map_err(|e| http_err(error_chain(&e)))?;
        let driver = tokio::spawn(conn);
        let req = Request::builder()
            .method(method.clone())
            .uri(check.path.as_str())
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "berth-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .map_err(|e| http_err(e.to_string()))?;
        let resp = sender.send_request(req).await;
        driver.abort();
        resp.map(|r| r.status().as_u16())
            .map_err(|e| http_err(error_chain(&e)))
    };
    let status = match tokio::time::timeout(check.timeout, attempt).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ProbeError::Timeout {
                method,
                target,
                timeout: check.timeout,
            })
        }
    };
    if check.accepts(status) {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            method,
            target,
            status,
            expect: check
                .expect
                .iter()
                .map(|p| String::from(*p))
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

/// THE TCP check (pools' `health_check`): connect, optionally send, optionally expect; all within `check.timeout`.
pub async fn probe_tcp(addr: &str, check: &TcpCheckSpec) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        if let Some(send) = &check.send {
            s.write_all(send.as_bytes()).await.ok()?;
        }
        if let Some(expect) = &check.expect {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while got.len() < 64 * 1024 {
                let n = s.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                got.extend_from_slice(&buf[..n]);
                if got.windows(expect.len()).any(|w| w == expect.as_bytes()) {
                    return Some(());
                }
            }
            return None;
        }
        Some(())
    };
    matches!(
        tokio::time::timeout(check.timeout, attempt).await,
        Ok(Some(()))
    )
}
