//! Live statistics: `GET /v1/stats` (JSON), `GET /v1/stats/stream` (the same document as a
//! Server-Sent Event every second), and `GET /metrics` (Prometheus text format 0.0.4). All are
//! read from the served route table's atomics; nothing here locks the request path. Counters
//! are cumulative since the backend entered the table (they survive table swaps); latency
//! quantiles come from the backend's log-bucket histogram (upper bucket bound, ≤12.5% high).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use serde::Serialize;

use crate::model::histogram::HistogramSnapshot;
use crate::model::route::{Route, RouteTable, ServerState};
use crate::store::RouteSource;

use super::ApiState;

/// The token-protected stats routes.
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/v1/stats", get(stats))
        .route("/v1/stats/stream", get(stream))
}

/// `GET /v1/stats` body.
#[derive(Serialize)]
pub struct StatsDoc {
    /// Unix time in milliseconds when the snapshot was taken.
    pub timestamp_ms: u64,
    pub routes: Vec<RouteStats>,
    /// frontends: TCP frontends and pool members (connections, bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<crate::proxy::tcp::TcpStats>,
    /// The pools of HTTP frontends, counted like routes (requests per member, statuses,
    /// latency); `source`: `config` for the file's pools, `api` for the others.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_pools: Vec<RouteStats>,
    /// Whether `berth.db` takes changes (the status page shows a banner when not).
    pub store: StoreState,
}

/// The store's state, as `berthd status`, the status page and `/metrics` report it.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StoreState {
    /// False when the data dir is read-only or unopenable, or the database is damaged:
    /// changes are refused (503), reconcile, self-healing and deploys are off.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl StoreState {
    pub fn of(problem: Option<&str>) -> Self {
        StoreState {
            ok: problem.is_none(),
            problem: problem.map(str::to_string),
        }
    }
}

#[derive(Serialize)]
pub struct RouteStats {
    pub name: String,
    pub source: RouteSource,
    pub requests: u64,
    pub inflight: u64,
    pub backends: Vec<BackendStatsView>,
}

#[derive(Serialize)]
pub struct BackendStatsView {
    pub id: String,
    pub address: String,
    pub state: ServerState,
    /// Active health: `up` or `down` (always `up` without a health check).
    pub health: &'static str,
    pub weight: u32,
    /// Weight in force now (below `weight` while slow start ramps).
    pub effective_weight: u32,
    pub inflight: u64,
    pub requests: u64,
    pub responses: StatusClasses,
    pub failures: u64,
    pub bytes_out: u64,
    pub tunnels: u64,
    pub latency: LatencyView,
}

#[derive(Serialize)]
pub struct StatusClasses {
    #[serde(rename = "2xx")]
    pub s2xx: u64,
    #[serde(rename = "3xx")]
    pub s3xx: u64,
    #[serde(rename = "4xx")]
    pub s4xx: u64,
    #[serde(rename = "5xx")]
    pub s5xx: u64,
}

#[derive(Serialize)]
pub struct LatencyView {
    /// Observations recorded.
    pub count: u64,
    /// Median request duration through the proxy (until the response body ended), in ms
    /// (`null` before the first request).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0)
}

/// Takes a stats snapshot of `table`'s routes; `sources` says where each route came from.
pub fn snapshot(table: &RouteTable, sources: &HashMap<String, RouteSource>) -> StatsDoc {
    StatsDoc {
        timestamp_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        routes: route_stats(table.routes(), sources),
        tcp: None,
        http_pools: Vec::new(),
        store: StoreState::of(None),
    }
}

/// The counters of `routes` (routes or pools: one model) and their backends.
pub fn route_stats(
    routes: &[Arc<Route>],
    sources: &HashMap<String, RouteSource>,
) -> Vec<RouteStats> {
    routes
        .iter()
        .map(|r| {
            let backends: Vec<BackendStatsView> = r
                .backends
                .iter()
                .map(|b| {
                    let s = &b.stats;
                    let h: HistogramSnapshot = s.latency.snapshot();
                    BackendStatsView {
                        id: b.id.clone(),
                        address: b.address.to_string(),
                        state: b.state,
                        health: if b.health.is_up() { "up" } else { "down" },
                        weight: b.weight,
                        effective_weight: b.effective_weight,
                        inflight: s.inflight.load(Ordering::Relaxed),
                        requests: s.requests.load(Ordering::Relaxed),
                        responses: StatusClasses {
                            s2xx: s.responses_2xx.load(Ordering::Relaxed),
                            s3xx: s.responses_3xx.load(Ordering::Relaxed),
                            s4xx: s.responses_4xx.load(Ordering::Relaxed),
                            s5xx: s.responses_5xx.load(Ordering::Relaxed),
                        },
                        failures: s.failures.load(Ordering::Relaxed),
                        bytes_out: s.bytes_out.load(Ordering::Relaxed),
                        tunnels: s.tunnels.load(Ordering::Relaxed),
                        latency: LatencyView {
                            count: h.count(),
                            p50_ms: ms(h.quantile(0.5)),
                            p99_ms: ms(h.quantile(0.99)),
                        },
                    }
                })
                .collect();
            RouteStats {
                name: r.name.clone(),
                // A route published a moment before the listing was updated is new: not config.
                source: sources.get(&r.name).copied().unwrap_or(RouteSource::Api),
                requests: backends.iter().map(|b| b.requests).sum(),
                inflight: backends.iter().map(|b| b.inflight).sum(),
                backends,
            }
        })
        .collect()
}

fn current(state: &ApiState) -> StatsDoc {
    doc_of(state, &state.registry.table())
}

/// The stats document of `table` (routes and HTTP pools), the TCP counters and the store.
fn doc_of(state: &ApiState, table: &RouteTable) -> StatsDoc {
    let sources: HashMap<String, RouteSource> = state
        .registry
        .routes()
        .iter()
        .map(|e| (e.name(), e.source))
        .collect();
    let mut doc = snapshot(table, &sources);
    doc.tcp = Some(state.tcp.stats());
    doc.http_pools = route_stats(table.pools(), &state.tcp.pool_sources());
    doc.store = StoreState::of(state.store_problem.as_deref());
    doc
}

async fn stats(State(state): State<ApiState>) -> Json<StatsDoc> {
    Json(current(&state))
}

/// One `stats` event immediately, then one per second, until the client goes away or the
/// daemon stops.
async fn stream(
    State(state): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let stop = state.stop.clone();
    let s = futures_util::stream::unfold(
        (state, interval, stop),
        |(state, mut interval, mut stop)| async move {
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
            let doc = current(&state);
            let event = Event::default()
                .event("stats")
                .json_data(&doc)
                .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            Some((Ok(event), (state, interval, stop)))
        },
    );
    Sse::new(s).keep_alive(KeepAlive::default())
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Histogram `le` bounds: powers of two from 128 µs to ~33.5 s (exact bucket boundaries).
const LE_EXPONENTS: std::ops::RangeInclusive<u32> = 7..=25;

/// Renders the Prometheus text exposition: routes' backends (`berth_backend_*{route,
/// backend}`), pools' members (`berth_pool_member_*{pool, member}`, the same counters: pools
/// are routes of the same table; one family whatever the frontends' mode, a TCP connection
/// counts as a request and its bytes both ways), the route count and the store's state.
pub fn prometheus(doc: &StatsDoc, table: &RouteTable) -> String {
    let mut out = String::with_capacity(4096);
    let routes = Family {
        prefix: "berth_backend",
        group: "route",
        member: "backend",
        mode_help: "",
    };
    backend_metrics(&mut out, &routes, &doc.routes, table.routes());
    let pools = Family {
        prefix: "berth_pool_member",
        group: "pool",
        member: "member",
        mode_help: " TCP frontends' connections count as requests.",
    };
    backend_metrics(&mut out, &pools, &doc.http_pools, table.pools());
    // Bytes from clients: counted for TCP connections only (an HTTP request's are not).
    let name = "berth_pool_member_received_bytes_total";
    let _ = writeln!(
        out,
        "# HELP {name} Bytes from clients to the member over TCP frontends.\n# TYPE {name} counter"
    );
    for p in table.pools() {
        for b in &p.backends {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",member=\"{}\"}} {}",
                label(&p.name),
                label(&b.id),
                b.stats.bytes_in.load(Ordering::Relaxed)
            );
        }
    }
    let name = "berth_routes";
    let _ = writeln!(
        out,
        "# HELP {name} Routes served, by source.\n# TYPE {name} gauge"
    );
    for src in [RouteSource::Config, RouteSource::Api, RouteSource::Deploy] {
        let n = doc.routes.iter().filter(|r| r.source == src).count();
        let _ = writeln!(out, "{name}{{source=\"{}\"}} {n}", src.as_str());
    }
    let name = "berth_store_up";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when berth.db takes changes; 0 when the data dir is read-only or \
         unopenable or the database is damaged (see berth_store_problem).\n# TYPE {name} gauge\n\
         {name} {}",
        u8::from(doc.store.ok)
    );
    if let Some(problem) = &doc.store.problem {
        let name = "berth_store_problem";
        let _ = writeln!(
            out,
            "# HELP {name} Why berth.db takes no changes (the reason label), while it does \
             not.\n# TYPE {name} gauge\n{name}{{reason=\"{}\"}} 1",
            label(problem)
        );
    }
    out
}

/// Names of one metric family of backends: `{prefix}_requests_total{{group}="..",{member}=".."}`.
struct Family {
    prefix: &'static str,
    group: &'static str,
    member: &'static str,
    /// Appended to the help of the counters whose meaning the frontend's mode refines.
    mode_help: &'static str,
}

/// The per-backend metrics of `stats` (counters) and `routes` (latency histograms).
fn backend_metrics(out: &mut String, f: &Family, stats: &[RouteStats], routes: &[Arc<Route>]) {
    type Metric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&BackendStatsView) -> u64,
    );
    let counters: &[Metric] = &[
        (
            "requests_total",
            "counter",
            "Requests sent to the backend.",
            |b| b.requests,
        ),
        (
            "failures_total",
            "counter",
            "Failed attempts (connect errors, resets, timeouts).",
            |b| b.failures,
        ),
        (
            "sent_bytes_total",
            "counter",
            "Response body bytes sent to clients.",
            |b| b.bytes_out,
        ),
        ("inflight", "gauge", "Requests being served now.", |b| {
            b.inflight
        }),
        (
            "tunnels",
            "gauge",
            "Open upgrade (WebSocket) tunnels.",
            |b| b.tunnels,
        ),
        ("weight", "gauge", "Configured weight.", |b| {
            u64::from(b.weight)
        }),
        (
            "effective_weight",
            "gauge",
            "Weight in force (lower while slow start ramps).",
            |b| u64::from(b.effective_weight),
        ),
        (
            "up",
            "gauge",
            "1 if health checks consider the backend up.",
            |b| u64::from(b.health == "up"),
        ),
    ];
    let labels =
        |r: &str, b: &str| format!("{}=\"{}\",{}=\"{}\"", f.group, label(r), f.member, label(b));
    for (suffix, kind, help, get) in counters {
        let name = format!("{}_{suffix}", f.prefix);
        let help = match *suffix {
            "requests_total" | "failures_total" | "sent_bytes_total" | "inflight" => {
                format!("{}{}", help, f.mode_help)
            }
            _ => help.to_string(),
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in stats {
            for b in &r.backends {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(&r.name, &b.id), get(b));
            }
        }
    }
    // Series split by one more label: status class, administrative state.
    type Split = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        fn(&BackendStatsView) -> Vec<(&'static str, u64)>,
    );
    let splits: &[Split] = &[
        (
            "responses_total",
            "counter",
            "Responses by status class.",
            "code",
            |b| {
                vec![
                    ("2xx", b.responses.s2xx),
                    ("3xx", b.responses.s3xx),
                    ("4xx", b.responses.s4xx),
                    ("5xx", b.responses.s5xx),
                ]
            },
        ),
        (
            "state",
            "gauge",
            "Administrative state (1 for the current one).",
            "state",
            |b| {
                [
                    ("ready", ServerState::Ready),
                    ("drain", ServerState::Drain),
                    ("maint", ServerState::Maint),
                ]
                .into_iter()
                .map(|(s, v)| (s, u64::from(b.state == v)))
                .collect()
            },
        ),
    ];
    for (suffix, kind, help, key, values) in splits {
        let name = format!("{}_{suffix}", f.prefix);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for r in stats {
            for b in &r.backends {
                for (k, v) in values(b) {
                    let _ = writeln!(
                        out,
                        "{name}{{{},{key}=\"{k}\"}} {v}",
                        labels(&r.name, &b.id)
                    );
                }
            }
        }
    }
    let name = format!("{}_latency_seconds", f.prefix);
    let _ = writeln!(
        out,
        "# HELP {name} Request duration through the proxy, until the response body ended.\n# TYPE {name} histogram"
    );
    for r in routes {
        for b in &r.backends {
            let h = b.stats.latency.snapshot();
            let labels = labels(&r.name, &b.id);
            for e in LE_EXPONENTS {
                let us = 1u64 << e;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {}",
                    us as f64 / 1e6,
                    h.count_below_us(us)
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}",
                h.count(),
                h.sum().as_secs_f64(),
                h.count()
            );
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    let table = state.registry.table();
    let doc = doc_of(&state, &table);
    let tcp = doc
        .tcp
        .as_ref()
        .map(super::frontends::prometheus)
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        prometheus(&doc, &table) + &tcp,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::RouteSpec;

    #[test]
    fn prometheus_text_is_well_formed() {
        let specs: Vec<RouteSpec> = serde_json::from_str(
            r#"[{"name":"web","domains":["a.test"],"backends":[
                {"id":"a\"1","address":"127.0.0.1:1","weight":3},
                {"id":"b","address":"127.0.0.1:2","state":"drain"}]}]"#,
        )
        .unwrap();
        let table = RouteTable::build(&specs, None).unwrap();
        let b = &table.routes()[0].backends[0].stats;
        b.requests.fetch_add(5, Ordering::Relaxed);
        b.record_status(200);
        b.record_status(503);
        b.latency.record(Duration::from_millis(3));
        b.latency.record(Duration::from_millis(40));
        let doc = snapshot(&table, &HashMap::new());
        let text = prometheus(&doc, &table);
        for want in [
            r#"berth_backend_requests_total{route="web",backend="a\"1"} 5"#,
            r#"berth_backend_responses_total{route="web",backend="a\"1",code="5xx"} 1"#,
            r#"berth_backend_weight{route="web",backend="a\"1"} 3"#,
            r#"berth_backend_state{route="web",backend="b",state="drain"} 1"#,
            r#"berth_backend_state{route="web",backend="b",state="ready"} 0"#,
            r#"berth_backend_latency_seconds_bucket{route="web",backend="a\"1",le="0.004096"} 1"#,
            r#"berth_backend_latency_seconds_bucket{route="web",backend="a\"1",le="+Inf"} 2"#,
            r#"berth_backend_latency_seconds_count{route="web",backend="a\"1"} 2"#,
            r#"berth_routes{source="api"} 1"#,
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        // Every sample line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').expect("sample has a value");
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
        let a = &doc.routes[0].backends[0];
        assert_eq!(a.latency.count, 2);
        assert!(a.latency.p50_ms.unwrap() >= 3.0 && a.latency.p50_ms.unwrap() < 3.5);
        assert!(a.latency.p99_ms.unwrap() >= 40.0 && a.latency.p99_ms.unwrap() < 45.0);
        assert_eq!(doc.routes[0].requests, 5);
    }

    #[test]
    fn http_pools_get_per_member_metrics_like_route_backends() {
        let specs: Vec<RouteSpec> = serde_json::from_str(
            r#"[{"name":"web","domains":["a.test"],"backends":[{"id":"r","address":"127.0.0.1:1"}]}]"#,
        )
        .unwrap();
        let pools: Vec<crate::model::pool::PoolSpec> = serde_yaml::from_str(
            "- name: web\n  members: [{id: m1, address: '127.0.0.1:2'}, {id: m2, address: '127.0.0.1:3', state: drain}]\n",
        )
        .unwrap();
        let table = RouteTable::build(&specs, None)
            .unwrap()
            .with_pools(&pools)
            .unwrap();
        let m1 = &table.pools()[0].backends[0].stats;
        m1.requests.fetch_add(4, Ordering::Relaxed);
        m1.bytes_in.fetch_add(11, Ordering::Relaxed);
        m1.record_status(200);
        m1.latency.record(Duration::from_millis(3));
        table.pools()[0].backends[1]
            .health
            .record_check(false, 1, 1, 1);
        let mut doc = snapshot(&table, &HashMap::new());
        doc.http_pools = route_stats(table.pools(), &HashMap::new());
        assert_eq!(doc.http_pools[0].requests, 4);
        let text = prometheus(&doc, &table);
        for want in [
            r#"berth_pool_member_requests_total{pool="web",member="m1"} 4"#,
            r#"berth_pool_member_responses_total{pool="web",member="m1",code="2xx"} 1"#,
            r#"berth_pool_member_up{pool="web",member="m2"} 0"#,
            r#"berth_pool_member_state{pool="web",member="m2",state="drain"} 1"#,
            r#"berth_pool_member_latency_seconds_count{pool="web",member="m1"} 1"#,
            r#"berth_pool_member_received_bytes_total{pool="web",member="m1"} 11"#,
            // The route of the same name is its own series.
            r#"berth_backend_requests_total{route="web",backend="r"} 0"#,
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        assert!(!text.contains(r#"route="web",backend="m1""#), "{text}");
    }
}
