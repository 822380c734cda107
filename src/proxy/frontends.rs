//! HTTP frontends (`mode: http`): connections accepted on a frontend's own addresses are served
//! by the same request path as the default listeners (`server`, `forward`), which are the
//! default frontends `http` and `https` (their rules are the routes, `model::route::route_rules`).
//! Phase 2 (`Proxy::choose`) asks the connection's frontend for a [`Decision`]: an operator
//! frontend's ordered rules (`model::rules`) choose a pool or answer with a redirect, and the
//! rule's actions (header changes, prefix strip) and the pool's Host override ride along to
//! the later phases in [`FrontendChoice`]; the default frontends decide through the routes'
//! compiled form, the table's host index ([`Decision::by_routes`]).
//!
//! Invariant: the request path reads one `ArcSwap` of the compiled rule tables and the route
//! table, never a lock. Pools live in the proxy's one route table next to the routes
//! (`RouteTable::pools`, built by `PoolSpec::route_spec`), so balancing, retries, health,
//! stats and upgrade tunnels are the routes' own. Writers (`proxy::tcp`, under its
//! control-plane mutex) publish the pools (`Tables::publish_pools`), then the rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};
use hyper::body::Incoming;

use crate::model::frontend::{FrontendSpec, KeepAlive, Mode};
use crate::model::pool::PoolSpec;
use crate::model::route::{Lookup, Route, RouteError, RouteTable};
use crate::model::rules::{Action, HeaderOps, RequestView, RuleTable};

use super::upstream::{Pool, PoolSettings};
use super::Proxy;

/// Header changes of one rule, parsed once when the table is published.
#[derive(Debug, Default)]
struct Ops {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Ops {
    /// `None` when a name or value does not parse (validation refuses those first).
    fn compile(o: &HeaderOps) -> Option<Ops> {
        let pair = |(k, v): (&String, &String)| {
            Some((
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        };
        Some(Ops {
            set: o.set.iter().map(pair).collect::<Option<_>>()?,
            add: o.add.iter().map(pair).collect::<Option<_>>()?,
            remove: o
                .remove
                .iter()
                .map(|k| HeaderName::from_bytes(k.as_bytes()).ok())
                .collect::<Option<_>>()?,
        })
    }

    /// Removes, then sets (replacing every value), then appends.
    fn apply(&self, headers: &mut http::HeaderMap) {
        for n in &self.remove {
            headers.remove(n);
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
    }
}

/// One HTTP frontend, compiled.
#[derive(Debug)]
pub struct HttpFrontend {
    rules: RuleTable,
    /// Per rule: (request, response) header changes.
    ops: Vec<(Option<Ops>, Option<Ops>)>,
}

/// The compiled rules of one frontend as its connections read them: replaced on every
/// publish; a removed frontend's connections keep the last rules while they drain.
pub type RulesCell = ArcSwapOption<HttpFrontend>;

/// Runtime of every HTTP frontend.
pub struct HttpFrontends {
    /// Control plane only (publish, listener start): never touched by a request.
    cells: Mutex<HashMap<String, Arc<RulesCell>>>,
    /// Host overrides by pool name.
    hosts: ArcSwap<HashMap<String, HeaderValue>>,
    /// Upstream connections that are never reused (`keepalive: close | server-close`).
    fresh: Pool,
}

impl HttpFrontends {
    pub fn new(settings: &PoolSettings) -> Self {
        Self {
            cells: Mutex::new(HashMap::new()),
            hosts: ArcSwap::from_pointee(HashMap::new()),
            fresh: Pool::new(PoolSettings {
                max_idle_per_host: 0,
                ..settings.clone()
            }),
        }
    }

    /// Compiles and swaps in the rule tables of the HTTP frontends in `frontends` and the Host
    /// overrides of `pools` (published in the route table first). The set was validated
    /// (`frontend::validate_set`); should a frontend still not compile, it is left out (its
    /// requests get 503) and the error is returned for the log.
    pub fn publish<'a>(
        &self,
        frontends: impl Iterator<Item = &'a FrontendSpec>,
        pools: impl Iterator<Item = &'a PoolSpec>,
    ) -> Result<(), RouteError> {
        let pools: Vec<&PoolSpec> = pools.collect();
        let mut first_err = None;
        let mut hosts = HashMap::new();
        for p in &pools {
            if let Some(h) = p
                .host
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
            {
                hosts.insert(p.name().to_string(), h);
            }
        }
        let known = |n: &str| pools.iter().any(|p| p.name() == n);
        let mut compiled: HashMap<String, Option<Arc<HttpFrontend>>> = HashMap::new();
        for f in frontends.filter(|f| f.mode == Mode::Http) {
            match RuleTable::build("", &f.rules, &f.pool, known) {
                Ok(rules) => {
                    let ops = f
                        .rules
                        .iter()
                        .map(|r| {
                            (
                                r.request_headers.as_ref().and_then(Ops::compile),
                                r.response_headers.as_ref().and_then(Ops::compile),
                            )
                        })
                        .collect();
                    compiled.insert(
                        f.name().to_string(),
                        Some(Arc::new(HttpFrontend { rules, ops })),
                    );
                }
                Err(e) => {
                    compiled.insert(f.name().to_string(), None);
                    first_err.get_or_insert(e);
                }
            }
        }
        self.hosts.store(Arc::new(hosts));
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.retain(|name, _| compiled.contains_key(name));
        for (name, fe) in compiled {
            cells.entry(name).or_default().store(fe);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The rules cell of a frontend (created empty if new; `publish` fills it).
    pub fn cell(&self, name: &str) -> Arc<RulesCell> {
        let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        cells.entry(name.to_string()).or_default().clone()
    }
}

/// What a connection accepted on an HTTP frontend carries.
#[derive(Debug)]
pub struct FrontendConn {
    pub name: Arc<str>,
    pub rules: Arc<RulesCell>,
    /// The frontend's mode when the connection was accepted.
    pub keepalive: KeepAlive,
}

/// What a frontend's rules decided for one request, applied by the later phases.
pub struct FrontendChoice {
    name: Arc<str>,
    fe: Arc<HttpFrontend>,
    rule: Option<usize>,
    /// The path without the stripped prefix.
    path: Option<String>,
    host: Option<HeaderValue>,
    keepalive: KeepAlive,
}

impl FrontendChoice {
    /// The operator frontend whose rule chose (for the access log).
    pub fn frontend_name(&self) -> &str {
        &self.name
    }

    /// Upstream connections for this request are new and closed after it.
    pub fn fresh_upstream(&self) -> bool {
        self.keepalive != KeepAlive::Default
    }

    /// Phase 3: the stripped path, the pool's Host, the rule's request headers, and
    /// `Connection: close` when the member's connection must not be reused.
    pub fn apply_request(&self, headers: &mut http::HeaderMap, pq: &mut PathAndQuery) {
        if let Some(path) = &self.path {
            let joined = match pq.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            };
            if let Ok(p) = PathAndQuery::try_from(joined) {
                *pq = p;
            }
        }
        if let Some(h) = &self.host {
            headers.insert(header::HOST, h.clone());
        }
        if let Some((Some(ops), _)) = self.rule.and_then(|i| self.fe.ops.get(i)) {
            ops.apply(headers);
        }
        if self.fresh_upstream() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }

    /// Phase 5: the rule's response headers.
    pub fn apply_response(&self, headers: &mut http::HeaderMap) {
        if let Some((_, Some(ops))) = self.rule.and_then(|i| self.fe.ops.get(i)) {
            ops.apply(headers);
        }
    }

    /// The upstream connections to use instead of the shared pooled ones, if any.
    pub fn upstream<'p>(&self, proxy: &'p Proxy) -> Option<&'p Pool> {
        self.fresh_upstream().then_some(&proxy.frontends.fresh)
    }
}

/// What a frontend's rules decided for one request (phase 2, `Proxy::choose`).
pub(super) enum Decision {
    /// Send to this route or pool, with an operator rule's actions.
    Forward(Arc<Route>, Option<Box<FrontendChoice>>),
    /// Answer with a redirect to `location`.
    Redirect {
        status: StatusCode,
        location: String,
        body: &'static str,
    },
    /// Answer with this status and text.
    Answer(StatusCode, &'static str),
}

impl Decision {
    /// The default frontends' rules (the routes: host + path prefix → route, redirect
    /// aliases → 301 to the canonical domain, no match → 404), in their compiled form: the
    /// table's host index is an implementation of first-match host rules.
    pub(super) fn by_routes(table: &RouteTable, uri: &Uri, scheme: &str, host: &str) -> Self {
        match table.lookup_normalized(host, uri.path()) {
            Lookup::Route(r) => Decision::Forward(r.clone(), None),
            Lookup::Redirect(to) => {
                let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                Decision::Redirect {
                    status: StatusCode::MOVED_PERMANENTLY,
                    location: format!("{scheme}://{to}{pq}"),
                    body: "moved permanently\n",
                }
            }
            Lookup::NotFound => Decision::Answer(StatusCode::NOT_FOUND, "no route for this host\n"),
        }
    }
}

impl Proxy {
    /// An operator frontend's rules: the first matching rule picks the pool (or answers with
    /// its redirect); no rule → the frontend's default pool.
    pub(super) fn decide_by_rules(
        &self,
        fc: &FrontendConn,
        table: &RouteTable,
        req: &Request<Incoming>,
        scheme: &'static str,
        host: &str,
        peer: SocketAddr,
    ) -> Decision {
        let Some(fe) = fc.rules.load_full() else {
            return Decision::Answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "this frontend is not serving\n",
            );
        };
        let headers: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(n, v)| v.to_str().ok().map(|v| (n.as_str(), v)))
            .collect();
        let view = RequestView {
            scheme,
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method().as_str(),
            client: peer.ip(),
            headers: &headers,
        };
        let (pool, rule, path) = match fe.rules.evaluate(&view) {
            Action::Redirect {
                status, location, ..
            } => {
                return Decision::Redirect {
                    status: StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND),
                    location,
                    body: "redirect\n",
                }
            }
            Action::Forward {
                pool, rule, path, ..
            } => (pool.to_string(), rule, path),
        };
        let Some(route) = table.pool(&pool).cloned() else {
            return Decision::Answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend available for this host\n",
            );
        };
        Decision::Forward(
            route,
            Some(Box::new(FrontendChoice {
                name: fc.name.clone(),
                host: self.frontends.hosts.load().get(&pool).cloned(),
                fe,
                rule,
                path,
                keepalive: fc.keepalive,
            })),
        )
    }
}
