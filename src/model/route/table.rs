//! The immutable `RouteTable` snapshot the proxy reads once per request: build (which
//! validates), host/path lookup, and the balancer's pick over one route's backends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::model::balance::{
    cookie_value, least_loaded, rendezvous, source_hash, sticky_token, RoundRobin,
};
use crate::model::health::{slowstart_weight, unix_ms, BackendHealth};
use crate::model::host::normalize_host;
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

/// One route inside a table snapshot.
#[derive(Debug)]
pub struct Route {
    pub name: String,
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

    /// Chooses a backend for a request: the version first when the route splits traffic
    /// between versions (a version without a usable backend falls back to any), then a
    /// backend with the route's balancer.
    pub fn pick_for(
        &self,
        ctx: &PickContext<'_>,
        exclude: Option<usize>,
    ) -> Result<Pick, PickError> {
        let Some(choice) = self.versions.as_ref().and_then(|v| v.choose(ctx.cookie)) else {
            return self.pick_in(ctx, exclude, None);
        };
        match self.pick_in(ctx, exclude, Some(choice.version)) {
            Ok(p) => Ok(Pick {
                version_cookie: choice.set_cookie,
                ..p
            }),
            Err(_) => self.pick_in(ctx, exclude, None),
        }
    }

    /// The balancer's pick among the backends of `version` (all backends when `None`).
    fn pick_in(
        &self,
        ctx: &PickContext<'_>,
        exclude: Option<usize>,
        version: Option<usize>,
    ) -> Result<Pick, PickError> {
        if self.backends.is_empty() {
            return Err(PickError::NoBackends);
        }
        let in_version = |i: usize| match (version, &self.versions) {
            (Some(v), Some(vp)) => vp.member(i, v),
            _ => true,
        };
        let usable = |i: usize| Some(i) != exclude && self.backends[i].eligible() && in_version(i);
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
                        Some(*i) != exclude && self.backends[*i].accepts_pinned() && in_version(*i)
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

#[derive(Debug, Default)]
struct HostEntry {
    /// Sorted by prefix length, longest first.
    routes: Vec<(usize, bool)>,
}

/// Immutable routing snapshot. Build a new one for every change and swap it in.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    hosts: HashMap<String, HostEntry>,
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
        Self::build(&specs, Some(self))
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
            let name = spec.name();
            let prev = previous.and_then(|p| p.route(&name));
            let mut backends = Vec::with_capacity(spec.backends.len());
            let mut ramping = false;
            for (k, b) in spec.backends.iter().enumerate() {
                let id = b.id();
                let authority: http::uri::Authority =
                    b.address.to_string().parse().map_err(|_| {
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
                        Arc::new(BackendHealth::new_up(if previous.is_some() {
                            now_ms
                        } else {
                            0
                        }))
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
        Ok(RouteTable { routes, hosts })
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

    /// Whether any route has a backend in slow start.
    pub fn ramping(&self) -> bool {
        self.routes.iter().any(|r| r.ramping)
    }
}
