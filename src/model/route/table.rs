//! The immutable `RouteTable` snapshot the proxy reads once per request: build (which
//! validates), host/path lookup, and the balancer's pick over one route's backends.
//!
//! One table holds both kinds of backend set: routes (looked up by host and path on the
//! default listeners) and pools (`model::pool`, named by frontends and their rules, never
//! looked up by host). Both are [`Route`]s, so one prober, one balancer and one set of
//! counters serve them; the two halves have different writers (the route registry, the
//! frontends' control plane), so each is replaced on its own ([`RouteTable::with_routes_of`],
//! [`RouteTable::with_pools`]) and the other is carried over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::model::balance::{
    cookie_value, least_loaded, rendezvous, source_hash, sticky_token, RoundRobin,
};
use crate::model::health::{slowstart_weight, unix_ms, BackendHealth};
use crate::model::host::normalize_host;
use crate::model::pool::{PoolSpec, ProxyProtocol, TcpCheckSpec};
use crate::model::stats::BackendStats;

use super::spec::{BalancerKind, RouteSpec};
use super::types::{AliasMode, BackendAddr, HashKey, PathPrefix, ServerState};
use super::validate::{check_routes, RouteError, RouteFault};

/// One backend inside a table snapshot.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    pub address: BackendAddr,
    /// `address` as a URI authority, parsed once at build time.
    pub authority: http::uri::Authority,
    /// `address` as a socket address when its host is an IP literal (every pool member's is):
    /// what a TCP frontend connects to.
    pub socket: Option<std::net::SocketAddr>,
    /// Configured weight.
    pub weight: u32,
    /// Weight in force in this snapshot: `weight`, or less while slow start ramps.
    pub effective_weight: u32,
    pub state: ServerState,
    /// Sticky-cookie value for this backend (opaque; derived from route name and id).
    pub token: String,
    /// Counters shared by every snapshot that contains this backend.
    pub stats: Arc<BackendStats>,
    /// Runtime health shared by every snapshot that contains this backend (see
    /// `model::health` for the carry-over invariant).
    pub health: Arc<BackendHealth>,
}

impl Backend {
    /// Whether new, unpinned requests may go here.
    pub fn eligible(&self) -> bool {
        self.state == ServerState::Ready && self.effective_weight > 0 && self.health.is_up()
    }

    /// Whether a request pinned here (sticky cookie) may still come: up, and `ready` or
    /// `drain` (not `maint`).
    pub fn accepts_pinned(&self) -> bool {
        self.state != ServerState::Maint && self.health.is_up()
    }
}

/// What a [`Route`] of the table is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// A route: looked up by host and path.
    Route,
    /// A pool: named by frontends; checked by its HTTP check (`spec.health_check`) or by
    /// this TCP check. What only TCP frontends read rides along: the PROXY protocol header
    /// and each member's connection limit (by backend index, 0 = none).
    Pool {
        tcp_check: Option<TcpCheckSpec>,
        proxy_protocol: ProxyProtocol,
        max_connections: Vec<u32>,
    },
}

/// One route (or pool) inside a table snapshot.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub kind: RouteKind,
    pub canonical: String,
    pub alias_mode: AliasMode,
    pub path_prefix: PathPrefix,
    pub balancer: BalancerKind,
    pub backends: Vec<Backend>,
    pub spec: RouteSpec,
    rr: RoundRobin,
    /// Whether some backend's effective weight is still ramping (slow start).
    ramping: bool,
    /// The version split, when the route carries one: a version is chosen first, then a
    /// backend of that version by the balancer.
    pub versions: Option<crate::model::canary::VersionPicker>,
}

/// Why a route could not pick a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickError {
    /// The route has no backends at all.
    NoBackends,
    /// Backends exist but none is eligible (down, draining, maint, weight 0).
    AllDown,
}

/// What a balancer may look at in a request.
#[derive(Debug, Default, Clone, Copy)]
pub struct PickContext<'a> {
    /// The `Cookie` header (joined), if any.
    pub cookie: Option<&'a str>,
    /// The request path.
    pub path: &'a str,
    /// Path and query.
    pub path_and_query: &'a str,
    /// The client's address (for `source_ip`).
    pub client: Option<std::net::IpAddr>,
}

/// A balancer's choice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Index into `Route::backends`.
    pub index: usize,
    /// For `sticky_cookie`: the `Set-Cookie` value to send, when the request had no valid pin.
    pub set_cookie: Option<String>,
    /// A sticky version split's `Set-Cookie` value, when the request named no usable version.
    pub version_cookie: Option<String>,
}

impl Route {
    /// Chooses a backend for a new request, skipping any in `exclude` (used for retries).
    pub fn pick(&self, exclude: Option<usize>) -> Result<usize, PickError> {
        self.pick_for(&PickContext::default(), exclude)
            .map(|p| p.index)
    }

    /// Chooses a backend for a new TCP connection (or any caller with its own conditions):
    /// the balancer's pick among the eligible backends `allowed` accepts.
    pub fn pick_where(
        &self,
        ctx: &PickContext<'_>,
        allowed: impl Fn(usize) -> bool,
    ) -> Result<Pick, PickError> {
        self.pick_in(ctx, allowed, None)
    }

    /// Chooses a backend for a request: the version first when the route splits traffic
    /// between versions (a version without a usable backend falls back to any), then a
    /// backend with the route's balancer.
    pub fn pick_for(
        &self,
        ctx: &PickContext<'_>,
        exclude: Option<usize>,
    ) -> Result<Pick, PickError> {
        let allowed = |i: usize| Some(i) != exclude;
        let Some(choice) = self.versions.as_ref().and_then(|v| v.choose(ctx.cookie)) else {
            return self.pick_in(ctx, allowed, None);
        };
        match self.pick_in(ctx, allowed, Some(choice.version)) {
            Ok(p) => Ok(Pick {
                version_cookie: choice.set_cookie,
                ..p
            }),
            Err(_) => self.pick_in(ctx, allowed, None),
        }
    }

    /// The balancer's pick among the backends of `version` (all backends when `None`) that
    /// `allowed` accepts.
    fn pick_in(
        &self,
        ctx: &PickContext<'_>,
        allowed: impl Fn(usize) -> bool,
        version: Option<usize>,
    ) -> Result<Pick, PickError> {
        if self.backends.is_empty() {
            return Err(PickError::NoBackends);
        }
        let in_version = |i: usize| match (version, &self.versions) {
            (Some(v), Some(vp)) => vp.member(i, v),
            _ => true,
        };
        let usable = |i: usize| allowed(i) && self.backends[i].eligible() && in_version(i);
        let plain = |index: usize| Pick {
            index,
            set_cookie: None,
            version_cookie: None,
        };
        // Within a version, its own cursor: its replicas share its traffic evenly.
        let rr = match (version, &self.versions) {
            (Some(v), Some(vp)) => vp.round_robin(v).unwrap_or(&self.rr),
            _ => &self.rr,
        };
        let index = match &self.balancer {
            BalancerKind::RoundRobin => rr.pick(usable).map(plain),
            BalancerKind::StickyCookie { cookie, .. } => {
                let pinned = ctx
                    .cookie
                    .and_then(|h| cookie_value(h, cookie))
                    .and_then(|tok| self.backends.iter().position(|b| b.token == tok))
                    .filter(|i| {
                        allowed(*i) && self.backends[*i].accepts_pinned() && in_version(*i)
                    });
                match pinned {
                    Some(i) => Some(plain(i)),
                    None => rr.pick(usable).map(|i| Pick {
                        index: i,
                        set_cookie: Some(format!(
                            "{cookie}={}; Path=/; HttpOnly; SameSite=Lax",
                            self.backends[i].token
                        )),
                        version_cookie: None,
                    }),
                }
            }
            BalancerKind::UriHash { key } => {
                let k = match key {
                    HashKey::Path => ctx.path,
                    HashKey::Uri => ctx.path_and_query,
                };
                rendezvous(
                    k.as_bytes(),
                    self.backends
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| usable(*i))
                        .map(|(i, b)| (i, b.id.as_str(), b.effective_weight)),
                )
                .map(plain)
            }
            BalancerKind::SourceIp => match ctx.client {
                Some(ip) => source_hash(
                    ip,
                    self.backends
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| usable(*i))
                        .map(|(i, b)| (i, b.id.as_str(), b.effective_weight)),
                )
                .map(plain),
                // No client address (internal callers): spread like round robin.
                None => rr.pick(usable).map(plain),
            },
            BalancerKind::LeastConnections => {
                let start = rr.position();
                rr.advance();
                least_loaded(
                    start,
                    self.backends
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| usable(*i))
                        .map(|(i, b)| {
                            (
                                i,
                                b.stats.inflight.load(std::sync::atomic::Ordering::Relaxed),
                                b.effective_weight,
                            )
                        }),
                )
                .map(plain)
            }
        };
        index.ok_or(PickError::AllDown)
    }

    /// Whether a backend's slow start is still ramping (the table needs re-publishing).
    pub fn ramping(&self) -> bool {
        self.ramping
    }
}

/// The outcome of looking a request up in the table.
#[derive(Debug)]
pub enum Lookup<'a> {
    Route(&'a Arc<Route>),
    /// An alias in redirect mode: answer 301 to this host.
    Redirect(&'a str),
    NotFound,
}

#[derive(Debug, Default, Clone)]
struct HostEntry {
    /// Sorted by prefix length, longest first.
    routes: Vec<(usize, bool)>,
}

/// Immutable routing snapshot. Build a new one for every change and swap it in.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    hosts: HashMap<String, HostEntry>,
    /// The pools, by name order of their specs (unique names).
    pools: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds a table from validated specs. Counters of backends that also exist in
    /// `previous` (same route name and backend id) carry over, as do round-robin cursors.
    ///
    /// Runtime health carries over the same way (when the address is unchanged too); a
    /// backend new to a running table (`previous` is some) starts up but ramps through slow
    /// start, one in the first table starts at full weight.
    pub fn build(
        specs: &[RouteSpec],
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, RouteError> {
        Self::build_at(specs, previous, unix_ms())
    }

    /// Rebuilds this table from its own specs (to re-evaluate slow-start weights and let
    /// watchers see health changes).
    pub fn rebuild(&self) -> Result<RouteTable, RouteError> {
        let specs: Vec<RouteSpec> = self.routes.iter().map(|r| r.spec.clone()).collect();
        let mut next = Self::build(&specs, Some(self))?;
        next.pools = self.build_pools(
            self.pools.iter().map(|p| (p.spec.clone(), p.kind.clone())),
            unix_ms(),
        )?;
        Ok(next)
    }

    /// This table's routes with the pools of `other` (the routes' writer publishes over
    /// whatever pools are current).
    pub fn with_routes_of(&self, other: &RouteTable) -> RouteTable {
        RouteTable {
            routes: self.routes.clone(),
            hosts: self.hosts.clone(),
            pools: other.pools.clone(),
        }
    }

    /// This table's routes with `pools` (validated: `PoolSpec::validate`, unique names) as
    /// its pools. Counters and health of members that were already in this table's pools
    /// (same pool, id and address) carry over.
    pub fn with_pools(&self, pools: &[PoolSpec]) -> Result<RouteTable, RouteError> {
        let mut specs = Vec::with_capacity(pools.len());
        for (i, p) in pools.iter().enumerate() {
            let spec = p.route_spec().map_err(|e| RouteError {
                field: format!("pools[{i}].{}", e.field),
                message: e.message,
            })?;
            specs.push((
                spec,
                RouteKind::Pool {
                    tcp_check: p.health_check.clone(),
                    proxy_protocol: p.proxy_protocol,
                    max_connections: p
                        .members
                        .iter()
                        .map(|m| m.max_connections.unwrap_or(0))
                        .collect(),
                },
            ));
        }
        let built: Vec<RouteSpec> = specs.iter().map(|(s, _)| s.clone()).collect();
        check_routes("pools", &built).map_err(|f| f.into_error("pools"))?;
        Ok(RouteTable {
            routes: self.routes.clone(),
            hosts: self.hosts.clone(),
            pools: self.build_pools(specs.into_iter(), unix_ms())?,
        })
    }

    /// Builds pool routes carrying runtime state over from this table's pools.
    fn build_pools(
        &self,
        specs: impl Iterator<Item = (RouteSpec, RouteKind)>,
        now_ms: u64,
    ) -> Result<Vec<Arc<Route>>, RouteError> {
        specs
            .enumerate()
            .map(|(i, (spec, kind))| {
                let name = spec.name();
                let prev = self.pool(&name);
                build_route(i, &spec, kind, prev, true, now_ms).map_err(|f| f.into_error("pools"))
            })
            .collect()
    }

    /// `build` with an explicit clock (unix milliseconds) for slow-start weights.
    pub fn build_at(
        specs: &[RouteSpec],
        previous: Option<&RouteTable>,
        now_ms: u64,
    ) -> Result<RouteTable, RouteError> {
        Self::try_build_at(specs, previous, now_ms).map_err(|f| f.into_error("routes"))
    }

    /// `build`, with the position of a problem (route and backend index) rather than its
    /// field name: for callers that report it relative to what they changed.
    pub fn try_build(
        specs: &[RouteSpec],
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, RouteFault> {
        Self::try_build_at(specs, previous, unix_ms())
    }

    fn try_build_at(
        specs: &[RouteSpec],
        previous: Option<&RouteTable>,
        now_ms: u64,
    ) -> Result<RouteTable, RouteFault> {
        check_routes("routes", specs)?;
        let mut routes = Vec::with_capacity(specs.len());
        let mut hosts: HashMap<String, HostEntry> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let prev = previous.and_then(|p| p.route(&spec.name()));
            let route = build_route(i, spec, RouteKind::Route, prev, previous.is_some(), now_ms)?;
            for d in &spec.domains {
                hosts
                    .entry(d.to_string())
                    .or_default()
                    .routes
                    .push((i, false));
            }
            for d in &spec.aliases {
                hosts
                    .entry(d.to_string())
                    .or_default()
                    .routes
                    .push((i, true));
            }
            routes.push(route);
        }
        for entry in hosts.values_mut() {
            entry
                .routes
                .sort_by_key(|(i, _)| std::cmp::Reverse(routes[*i].path_prefix.as_str().len()));
        }
        Ok(RouteTable {
            routes,
            hosts,
            pools: Vec::new(),
        })
    }

    /// Looks up a raw `Host` value and a request path.
    pub fn lookup(&self, raw_host: &str, path: &str) -> Lookup<'_> {
        let Some(host) = normalize_host(raw_host) else {
            return Lookup::NotFound;
        };
        self.lookup_normalized(&host, path)
    }

    /// Looks up an already normalised host.
    /// An exact domain is tried first, then a `*.` wildcard one label up.
    pub fn lookup_normalized(&self, host: &str, path: &str) -> Lookup<'_> {
        if let Some(found) = self.lookup_entry(host, path) {
            return found;
        }
        match crate::model::sni::wildcard_key(host) {
            Some(w) if self.hosts.contains_key(&w) => {
                self.lookup_entry(&w, path).unwrap_or(Lookup::NotFound)
            }
            _ => Lookup::NotFound,
        }
    }

    fn lookup_entry(&self, host: &str, path: &str) -> Option<Lookup<'_>> {
        let entry = self.hosts.get(host)?;
        for (i, is_alias) in &entry.routes {
            let route = &self.routes[*i];
            if route.path_prefix.matches(path) {
                if *is_alias && route.alias_mode == AliasMode::Redirect {
                    return Some(Lookup::Redirect(&route.canonical));
                }
                return Some(Lookup::Route(route));
            }
        }
        None
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The pools (routes named by frontends).
    pub fn pools(&self) -> &[Arc<Route>] {
        &self.pools
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Route>> {
        self.pools.iter().find(|r| r.name == name)
    }

    /// The route or pool of this table that is `r`'s counterpart (same kind and name).
    pub fn same(&self, r: &Route) -> Option<&Arc<Route>> {
        match r.kind {
            RouteKind::Route => self.route(&r.name),
            RouteKind::Pool { .. } => self.pool(&r.name),
        }
    }

    /// Every route and every pool.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter().chain(&self.pools)
    }

    /// Sets every backend's `retired` flag (see `BackendStats::retired`) from this table,
    /// the one now served: set for a backend of `previous` that this table no longer holds
    /// (its counters are not carried over) and for one in `maint`, cleared otherwise. Called
    /// after each swap, with the table current at that moment, so the flags end as the
    /// newest table says whatever order concurrent swaps finish in.
    pub fn mark_retired(&self, previous: &RouteTable) {
        use std::sync::atomic::Ordering::SeqCst;
        let held: std::collections::HashSet<*const crate::model::stats::BackendStats> = self
            .all()
            .flat_map(|r| r.backends.iter().map(|b| Arc::as_ptr(&b.stats)))
            .collect();
        for b in previous.all().flat_map(|r| r.backends.iter()) {
            if !held.contains(&Arc::as_ptr(&b.stats)) {
                b.stats.retired.store(true, SeqCst);
            }
        }
        for b in self.all().flat_map(|r| r.backends.iter()) {
            b.stats.retired.store(b.state == ServerState::Maint, SeqCst);
        }
    }

    /// Whether any route has a backend in slow start.
    pub fn ramping(&self) -> bool {
        self.all().any(|r| r.ramping)
    }
}

/// Builds route `i` of a list (a route or a pool), carrying counters, health and the
/// round-robin cursor over from `prev`; `running` says whether a table is being served
/// (backends new to it ramp through slow start; at boot they start at full weight).
fn build_route(
    i: usize,
    spec: &RouteSpec,
    kind: RouteKind,
    prev: Option<&Arc<Route>>,
    running: bool,
    now_ms: u64,
) -> Result<Arc<Route>, RouteFault> {
    let name = spec.name();
    let mut backends = Vec::with_capacity(spec.backends.len());
    let mut ramping = false;
    for (k, b) in spec.backends.iter().enumerate() {
        let id = b.id();
        let authority: http::uri::Authority = b.address.to_string().parse().map_err(|_| {
            RouteFault::backend(
                i,
                k,
                "address",
                format!("{} is not a valid URI authority", b.address),
            )
        })?;
        let old = prev.and_then(|p| p.backends.iter().find(|x| x.id == id));
        let stats = old.map(|x| x.stats.clone()).unwrap_or_default();
        let health = old
            .filter(|x| x.address == b.address)
            .map(|x| x.health.clone())
            .unwrap_or_else(|| {
                // New to a running table: ramp (slow start); at boot: full weight.
                Arc::new(BackendHealth::new_up(if running { now_ms } else { 0 }))
            });
        let elapsed = Duration::from_millis(now_ms.saturating_sub(health.since_ms()));
        let effective_weight = slowstart_weight(b.weight, elapsed, spec.slowstart);
        if health.is_up() && b.state != ServerState::Maint && effective_weight < b.weight {
            ramping = true;
        }
        backends.push(Backend {
            token: sticky_token(&name, &id),
            id,
            address: b.address.clone(),
            socket: authority.as_str().parse().ok(),
            authority,
            weight: b.weight,
            effective_weight,
            state: b.state,
            stats,
            health,
        });
    }
    // Down backends are skipped at pick time (health is read live), so the schedule
    // only needs admin state and weights.
    let weights: Vec<u32> = backends
        .iter()
        .map(|b| {
            if b.state == ServerState::Ready {
                b.effective_weight
            } else {
                0
            }
        })
        .collect();
    let rr = RoundRobin::with_start(&weights, prev.map(|p| p.rr.position()).unwrap_or(0));
    let prefix = spec.path_prefix.clone().unwrap_or_else(PathPrefix::root);
    let versions = spec.split.as_ref().map(|s| {
        crate::model::canary::VersionPicker::new(
            &name,
            &s.split,
            backends
                .iter()
                .zip(&weights)
                .map(|(b, w)| (s.members.get(&b.id).map(String::as_str), *w)),
        )
    });
    let route = Arc::new(Route {
        name,
        kind,
        canonical: spec.domains[0].to_string(),
        alias_mode: spec.alias_mode,
        path_prefix: prefix,
        balancer: spec.balancer.clone(),
        backends,
        spec: spec.clone(),
        rr,
        ramping,
        versions,
    });
    Ok(route)
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn routes(yaml: &str) -> Vec<RouteSpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn pools(yaml: &str) -> Vec<PoolSpec> {
        serde_yaml::from_str(yaml).unwrap()
    }

    const ROUTES: &str =
        "- name: web\n  domains: [a.test]\n  backends: [{address: '127.0.0.1:1'}]\n";
    const POOLS: &str = "- name: web\n  members: [{address: '127.0.0.1:2'}, {id: b, address: '127.0.0.1:3'}]\n  health_check: {interval: 1s, send: PING}\n- name: db\n  http_check: {path: /health}\n  members: [{address: '127.0.0.1:4'}]\n";

    #[test]
    fn routes_and_pools_live_in_one_table_and_each_half_is_replaced_alone() {
        let t = RouteTable::build(&routes(ROUTES), None).unwrap();
        let t = t.with_pools(&pools(POOLS)).unwrap();
        assert_eq!(t.routes().len(), 1);
        assert_eq!(t.pools().len(), 2);
        // A pool is never found by host; a route and a pool may share a name.
        assert!(matches!(
            t.lookup("pools.berth.invalid", "/web"),
            Lookup::NotFound
        ));
        let pool = t.pool("web").unwrap();
        let route = t.route("web").unwrap();
        assert!(Arc::ptr_eq(t.same(pool).unwrap(), pool));
        assert!(Arc::ptr_eq(t.same(route).unwrap(), route));
        assert_eq!(route.kind, RouteKind::Route);
        assert!(
            matches!(&pool.kind, RouteKind::Pool { tcp_check: Some(c), .. } if c.send.as_deref() == Some("PING"))
        );
        assert_eq!(t.all().count(), 3);

        // Pool members keep their counters and health across a pools publish.
        pool.backends[1]
            .stats
            .requests
            .fetch_add(7, Ordering::Relaxed);
        pool.backends[1].health.record_check(false, 1, 1, 5);
        let t2 = t.with_pools(&pools(POOLS)).unwrap();
        let b = &t2.pool("web").unwrap().backends[1];
        assert!(Arc::ptr_eq(&b.stats, &pool.backends[1].stats));
        assert!(!b.health.is_up());
        // The routes of t2 are t's (same Arcs).
        assert!(Arc::ptr_eq(&t2.routes()[0], route));

        // A routes publish carries the current pools over; a rebuild keeps both halves.
        let r = RouteTable::build(&routes(ROUTES), Some(&t2)).unwrap();
        assert!(r.pools().is_empty());
        let merged = r.with_routes_of(&t2);
        assert_eq!(merged.pools().len(), 2);
        assert!(Arc::ptr_eq(&merged.pools()[0], &t2.pools()[0]));
        let re = merged.rebuild().unwrap();
        assert_eq!(re.pools().len(), 2);
        assert_eq!(re.pool("web").unwrap().kind, pool.kind);
        assert!(Arc::ptr_eq(
            &re.pool("web").unwrap().backends[1].health,
            &pool.backends[1].health
        ));
        assert!(re.pool("db").unwrap().spec.health_check.is_some());

        // A member whose address changed starts with fresh health (same id, other member).
        let moved = pools(&POOLS.replace("127.0.0.1:3", "127.0.0.1:9"));
        let t3 = t2.with_pools(&moved).unwrap();
        assert!(t3.pool("web").unwrap().backends[1].health.is_up());
        // Removing every pool empties that half only.
        let t4 = t3.with_pools(&[]).unwrap();
        assert!(t4.pools().is_empty());
        assert_eq!(t4.routes().len(), 1);
    }

    #[test]
    fn pools_with_one_name_twice_are_refused() {
        let twice = pools("- name: a\n- name: a\n");
        let e = RouteTable::default().with_pools(&twice).unwrap_err();
        assert!(e.field.starts_with("pools"), "{e:?}");
    }
}
