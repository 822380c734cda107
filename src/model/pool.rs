//! Pools: a named set of members (address, weight, admin state, connection limit), the
//! balancer that picks one, an optional active check (TCP `health_check` or HTTP
//! `http_check`, one of them) and the optional PROXY protocol header sent to members. Pure types, parsing and validation; no I/O. A pool is referenced by
//! name from frontends (and their rules); `frontend::validate_set` checks those references.
//!
//! Invariant: a `PoolSpec` that passed [`PoolSpec::validate`] has unique member ids and every
//! member address parses as `ip:port`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::route::{
    BackendAddr, BackendSpec, BalancerKind, Domain, PathPrefix, RouteError, RouteSpec, ServerState,
};

/// Names of pools and frontends: 1-63 of `[a-z0-9_-]`, starting with a letter or digit.
pub fn check_name(field: &str, name: &str) -> Result<(), RouteError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{name:?} is not a valid name (1-63 of a-z, 0-9, '-', '_', starting with a letter or digit)"),
        ))
    }
}

/// `rest` under the field path `at` (`pools[2]` + `name`; an API body's `at` is empty).
pub(crate) fn field_at(at: &str, rest: &str) -> String {
    if at.is_empty() {
        rest.to_string()
    } else {
        format!("{at}.{rest}")
    }
}

pub(crate) fn err(field: impl Into<String>, message: impl Into<String>) -> RouteError {
    RouteError {
        field: field.into(),
        message: message.into(),
    }
}

/// How a pool picks a member for a new connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolBalance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Fewest open connections per unit of weight.
    LeastConnections,
    /// Consistent hash of the client IP address: a client keeps its member while that member
    /// is usable; when one of N members leaves, only the clients it had (about 1/N) move.
    Source,
}

/// PROXY protocol header sent to members before the client's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    #[default]
    None,
    /// The binary version 2 header (HAProxy's `send-proxy-v2`).
    V2,
}

fn default_weight() -> u32 {
    1
}

/// One member of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// Stable identifier within the pool; defaults to the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `ip:port` (`[v6]:port`).
    pub address: String,
    /// Relative share, 0-1000 (0: no new connections).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// ready | drain (open connections finish, new go elsewhere) | maint (open connections
    /// are closed after `proxy.timeouts.drain`).
    #[serde(default)]
    pub state: ServerState,
    /// Most open connections at once; a full member gets no new ones (0 or absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl MemberSpec {
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.address.clone())
    }
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_rise() -> u32 {
    super::health::DEFAULT_RISE
}
fn default_fall() -> u32 {
    super::health::DEFAULT_FALL
}

/// Active health check by TCP connect; with `send`, those bytes are written after connecting;
/// with `expect`, the member must answer bytes containing that text within `timeout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckSpec {
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

/// A pool as configured (config file `pools:` and `PUT /v1/pools/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Unique name (the path names it in the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub members: Vec<MemberSpec>,
    #[serde(default)]
    pub balance: PoolBalance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<TcpCheckSpec>,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// HTTP frontends: the `Host` header members see (default: the client's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The active HTTP check of members (as a route's `health_check`: path, interval,
    /// timeout, rise, fall, expect, method); with it, failed HTTP requests count against a
    /// member too (passive health). A pool has this or `health_check`, not both: a member has
    /// one health, which HTTP and TCP frontends share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_check: Option<super::route::HealthCheckSpec>,
    /// Follow a deployed app: the members are its replicas (kept current by the deploy
    /// engine), `members` stays empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// With `app`: only the replicas of this deployment (`POST /v1/pools/{name}/version`
    /// switches; the old members drain). Without: every replica of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// One replica of a deployed app, as the pools that follow the app see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppReplica {
    /// Container id (the member id).
    pub id: String,
    /// The deployment (version) it belongs to.
    pub deployment: String,
    /// `ip:port` on the app network.
    pub address: String,
    pub state: ServerState,
}

/// Replicas by app name.
pub type AppReplicas = std::collections::BTreeMap<String, Vec<AppReplica>>;

/// The domain of the routes that carry pools for HTTP frontends. Such a route is never looked
/// up by host (a frontend's rules name its pool); a route spec needs a domain, and `.invalid`
/// (RFC 2606) can never be a real one.
pub const POOL_ROUTE_DOMAIN: &str = "pools.berth.invalid";

impl PoolSpec {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// Checks one pool; `at` is its field path (`pools[2]`, or `` for an API body).
    pub fn validate(&self, at: &str) -> Result<(), RouteError> {
        let f = |rest: &str| field_at(at, rest);
        check_name(&f("name"), self.name())?;
        let mut ids = BTreeSet::new();
        for (i, m) in self.members.iter().enumerate() {
            let mf = f(&format!("members[{i}]"));
            parse_member_address(&m.address).map_err(|msg| err(format!("{mf}.address"), msg))?;
            if m.weight > 1000 {
                return Err(err(format!("{mf}.weight"), "must be 0-1000"));
            }
            let id = m.id();
            if id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()) {
                return Err(err(
                    format!("{mf}.id"),
                    "must be 1-200 printable characters",
                ));
            }
            if !ids.insert(id.clone()) {
                return Err(err(format!("{mf}.id"), format!("duplicate member {id:?}")));
            }
        }
        if let Some(h) = &self.host {
            if h.is_empty() || h.len() > 255 || !h.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err(
                    f("host"),
                    format!("{h:?} is not a host (1-255 visible ASCII characters, no spaces)"),
                ));
            }
        }
        if self.http_check.is_some() && self.health_check.is_some() {
            // A member has one health, fed by one check (HTTP and TCP frontends share it).
            return Err(err(
                f("http_check"),
                "a pool has one active check: `http_check` (an HTTP request) or `health_check` (a TCP connect, optionally send/expect), not both",
            ));
        }
        if self.http_check.is_some() {
            // The checks of a route: reported under this pool's own field path.
            let route = self.route_spec().map_err(|e| err(f(&e.field), e.message))?;
            super::route::validate_routes("r", &[route]).map_err(|e| {
                let rest = e.field.strip_prefix("r[0].health_check").unwrap_or("");
                err(f(&format!("http_check{rest}")), e.message)
            })?;
        }
        match (&self.app, &self.version) {
            (None, Some(_)) => return Err(err(f("version"), "a version needs an app")),
            (Some(app), version) => {
                check_name(&f("app"), app)?;
                if !self.members.is_empty() {
                    return Err(err(
                        f("members"),
                        "a pool that follows an app takes its members from the app's replicas",
                    ));
                }
                if let Some(v) = version {
                    if v.is_empty() || v.len() > 200 || v.chars().any(|c| c.is_control()) {
                        return Err(err(f("version"), "must be 1-200 printable characters"));
                    }
                }
            }
            (None, None) => {}
        }
        if let Some(h) = &self.health_check {
            if h.interval < Duration::from_millis(100) {
                return Err(err(f("health_check.interval"), "must be at least 100ms"));
            }
            if h.timeout.is_zero() {
                return Err(err(f("health_check.timeout"), "must be more than 0"));
            }
            if h.rise == 0 || h.fall == 0 {
                return Err(err(
                    f("health_check.rise"),
                    "rise and fall must be at least 1",
                ));
            }
            if h.expect.as_deref().is_some_and(str::is_empty) {
                return Err(err(f("health_check.expect"), "must not be empty"));
            }
        }
        Ok(())
    }
}

impl PoolSpec {
    /// The pool with its members in force: as configured, or for a pool that follows an
    /// app, that app's replicas of its version (replicas whose address is not `ip:port` are
    /// left out).
    pub fn resolved(&self, apps: &AppReplicas) -> PoolSpec {
        let Some(app) = &self.app else {
            return self.clone();
        };
        let members = apps
            .get(app)
            .map(|rs| {
                rs.iter()
                    .filter(|r| self.version.as_ref().is_none_or(|v| *v == r.deployment))
                    .filter(|r| parse_member_address(&r.address).is_ok())
                    .map(|r| MemberSpec {
                        id: Some(r.id.clone()),
                        address: r.address.clone(),
                        weight: default_weight(),
                        state: r.state,
                        max_connections: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        PoolSpec {
            members,
            ..self.clone()
        }
    }

    /// The route an HTTP frontend sends this pool's requests through (members as backends,
    /// the pool's balancer), so HTTP frontends share the request path, retries, passive
    /// health and stats of routes. Call after [`PoolSpec::validate`].
    pub fn route_spec(&self) -> Result<RouteSpec, RouteError> {
        let bad = |f: String, m: String| err(f, m);
        let mut backends = Vec::with_capacity(self.members.len());
        for (i, m) in self.members.iter().enumerate() {
            let address: BackendAddr = m
                .address
                .trim()
                .parse()
                .map_err(|e: String| bad(format!("members[{i}].address"), e))?;
            backends.push(BackendSpec {
                id: Some(m.id()),
                address,
                weight: m.weight,
                state: m.state,
            });
        }
        let domain =
            Domain::try_from(POOL_ROUTE_DOMAIN.to_string()).map_err(|e| bad("name".into(), e))?;
        let prefix =
            PathPrefix::try_from(format!("/{}", self.name())).map_err(|e| bad("name".into(), e))?;
        Ok(RouteSpec {
            name: Some(self.name().to_string()),
            domains: vec![domain],
            path_prefix: Some(prefix),
            balancer: match self.balance {
                PoolBalance::RoundRobin => BalancerKind::RoundRobin,
                PoolBalance::LeastConnections => BalancerKind::LeastConnections,
                PoolBalance::Source => BalancerKind::SourceIp,
            },
            backends,
            health_check: self.http_check.clone(),
            https_redirect: false,
            ..RouteSpec::default()
        })
    }
}

/// Parses a member address: `ip:port` or `[ipv6]:port`, port 1-65535.
pub fn parse_member_address(raw: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = raw
        .trim()
        .parse()
        .map_err(|_| format!("{raw:?} is not an ip:port address"))?;
    if addr.port() == 0 {
        return Err(format!("{raw:?}: port must be 1-65535"));
    }
    if addr.ip().is_unspecified() {
        return Err(format!("{raw:?}: cannot connect to an unspecified address"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::Ordering;

    fn pool(yaml: &str) -> PoolSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn parses_and_validates_a_pool() {
        let p = pool(
            "name: db\nbalance: source\nproxy_protocol: v2\nmembers:\n  - address: 10.0.0.1:5432\n    max_connections: 100\n  - id: b\n    address: '[::1]:5432'\n    state: drain\nhealth_check:\n  interval: 1s\n  send: PING\n  expect: PONG\n",
        );
        p.validate("pools[0]").unwrap();
        assert_eq!(p.balance, PoolBalance::Source);
        assert_eq!(p.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(p.members[0].id(), "10.0.0.1:5432");
        assert_eq!(p.members[1].state, ServerState::Drain);
        assert_eq!(
            p.health_check.as_ref().unwrap().interval,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn a_pool_becomes_a_route_for_http_frontends() {
        let p = pool("name: web_1\nbalance: source\nhost: app.internal\nmembers:\n  - address: 127.0.0.1:8080\n    weight: 3\n  - id: b\n    address: '[::1]:8081'\n    state: drain\n");
        p.validate("").unwrap();
        let r = p.route_spec().unwrap();
        assert_eq!(r.name(), "web_1");
        assert_eq!(r.balancer, BalancerKind::SourceIp);
        assert_eq!(r.backends.len(), 2);
        assert_eq!(r.backends[0].id(), "127.0.0.1:8080");
        assert_eq!(r.backends[0].weight, 3);
        assert_eq!(r.backends[1].state, ServerState::Drain);
        assert!(!r.https_redirect);
        // Every pool's route fits in one table (unique names and prefixes).
        let q = pool("name: web\nmembers:\n  - address: 127.0.0.1:1\n");
        crate::model::route::RouteTable::build(&[r, q.route_spec().unwrap()], None).unwrap();
        let bad = pool("name: x\nhost: 'a b'\n");
        assert_eq!(bad.validate("").unwrap_err().field, "host");
        let checked = pool("name: x\nhttp_check: {path: /health, interval: 1s, fall: 2}\n");
        checked.validate("").unwrap();
        assert_eq!(
            checked.route_spec().unwrap().health_check.unwrap().path,
            "/health"
        );
        let bad = pool("name: x\nhttp_check: {path: health}\n");
        assert_eq!(
            bad.validate("pools[1]").unwrap_err().field,
            "pools[1].http_check.path"
        );
        let bad = pool("name: x\nhttp_check: {fall: 0}\n");
        assert_eq!(bad.validate("").unwrap_err().field, "http_check.fall");
        let both = pool("name: x\nhttp_check: {path: /health}\nhealth_check: {interval: 1s}\n");
        assert_eq!(
            both.validate("pools[0]").unwrap_err().field,
            "pools[0].http_check"
        );
    }

    #[test]
    fn a_pool_that_follows_an_app_takes_the_replicas_of_its_version() {
        let r = |id: &str, dep: &str, addr: &str| AppReplica {
            id: id.into(),
            deployment: dep.into(),
            address: addr.into(),
            state: ServerState::Ready,
        };
        let mut apps = AppReplicas::new();
        apps.insert(
            "shop".into(),
            vec![
                r("c1", "d1", "10.0.0.1:80"),
                r("c2", "d2", "10.0.0.2:80"),
                r("c3", "d2", "10.0.0.3:80"),
                r("c4", "d2", "shop-4:80"),
            ],
        );
        let p = pool("name: web\napp: shop\nversion: d2\n");
        p.validate("").unwrap();
        let ids: Vec<String> = p.resolved(&apps).members.iter().map(|m| m.id()).collect();
        assert_eq!(ids, ["c2", "c3"]);
        let all = pool("name: web\napp: shop\n");
        assert_eq!(all.resolved(&apps).members.len(), 3);
        let none = pool("name: web\napp: other\n");
        assert!(none.resolved(&apps).members.is_empty());
        let plain = pool("name: web\nmembers:\n  - address: 10.0.0.9:1\n");
        assert_eq!(plain.resolved(&apps), plain);
        let bad = pool("name: web\nversion: d2\n");
        assert_eq!(bad.validate("").unwrap_err().field, "version");
        let bad = pool("name: web\napp: shop\nmembers:\n  - address: 10.0.0.9:1\n");
        assert_eq!(bad.validate("").unwrap_err().field, "members");
        let bad = pool("name: web\napp: Shop!\n");
        assert_eq!(bad.validate("").unwrap_err().field, "app");
    }

    #[test]
    fn bad_member_address_names_the_field() {
        let p = pool("name: db\nmembers:\n  - address: 10.0.0.1:5432\n  - address: db.local\n");
        let e = p.validate("pools[3]").unwrap_err();
        assert_eq!(e.field, "pools[3].members[1].address");
        let p = pool("name: db\nmembers:\n  - address: 10.0.0.1:0\n");
        assert_eq!(p.validate("").unwrap_err().field, "members[0].address");
        let p = pool("name: db\nmembers:\n  - address: 0.0.0.0:80\n");
        assert_eq!(p.validate("").unwrap_err().field, "members[0].address");
    }

    #[test]
    fn duplicate_ids_names_and_checks_are_rejected() {
        let p = pool("name: db\nmembers:\n  - address: 10.0.0.1:1\n  - address: 10.0.0.1:1\n");
        assert_eq!(p.validate("").unwrap_err().field, "members[1].id");
        let p = pool("name: Bad Name\n");
        assert_eq!(p.validate("").unwrap_err().field, "name");
        let p = pool("name: db\nhealth_check:\n  interval: 1ms\n");
        assert_eq!(p.validate("").unwrap_err().field, "health_check.interval");
        assert!(serde_yaml::from_str::<PoolSpec>("name: db\nbalance: random\n").is_err());
        assert!(serde_yaml::from_str::<PoolSpec>("name: db\nmembers: []\ntypo: 1\n").is_err());
    }

    /// A pool of `n` members in a table, as TCP and HTTP frontends pick from it.
    fn table(n: usize, balance: &str) -> crate::model::route::RouteTable {
        let members: Vec<String> = (0..n)
            .map(|i| format!("{{id: m{i}, address: '10.0.0.{i}:80'}}"))
            .collect();
        let p = pool(&format!(
            "name: p\nbalance: {balance}\nmembers: [{}]\n",
            members.join(", ")
        ));
        crate::model::route::RouteTable::default()
            .with_pools(&[p])
            .unwrap()
    }

    fn pick(t: &crate::model::route::RouteTable, ip: IpAddr) -> Option<usize> {
        let ctx = crate::model::route::PickContext {
            client: Some(ip),
            ..Default::default()
        };
        t.pool("p")?
            .pick_where(&ctx, |_| true)
            .ok()
            .map(|p| p.index)
    }

    #[test]
    fn source_hash_moves_only_the_clients_of_a_leaving_member() {
        let t = table(5, "source");
        let (n, ips) = (
            10_000u32,
            (0..10_000u32).map(|k| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k * 7919))),
        );
        let before: Vec<usize> = ips.clone().map(|ip| pick(&t, ip).unwrap()).collect();
        // Member 2 leaves (its check fails).
        t.pool("p").unwrap().backends[2]
            .health
            .record_check(false, 1, 1, 1);
        let mut moved = 0;
        for (ip, b) in ips.zip(before) {
            let after = pick(&t, ip).unwrap();
            if after != b {
                assert_eq!(b, 2, "a client of a staying member moved");
                moved += 1;
            }
        }
        let frac = f64::from(moved) / f64::from(n);
        assert!((0.15..0.25).contains(&frac), "moved {frac}");
    }

    #[test]
    fn least_connections_skips_unusable_and_busy_members() {
        let t = table(3, "least_connections");
        let p = t.pool("p").unwrap();
        let open = |i: usize, n: u64| p.backends[i].stats.inflight.store(n, Ordering::Relaxed);
        open(0, 5);
        open(1, 1);
        open(2, 0);
        p.backends[2].health.record_check(false, 1, 1, 1);
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(pick(&t, ip), Some(1));
        p.backends[1].health.record_check(false, 1, 1, 1);
        assert_eq!(pick(&t, ip), Some(0));
        p.backends[0].health.record_check(false, 1, 1, 1);
        assert_eq!(pick(&t, ip), None);
    }
}
