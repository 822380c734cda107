//! Frontends: named listeners with a mode, the addresses they bind, a default pool and ordered
//! rules. Pure types, bind parsing and whole-set validation (overlapping binds, unknown pools,
//! rules a mode cannot evaluate); no I/O.
//!
//! Invariant: a set that passed [`validate_set`] has unique names, no two binds that the kernel
//! would refuse to hold at once (same port on the same or a wildcard address, also against the
//! daemon's own listeners), and every pool named by a frontend or rule exists.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pool::{check_name, err, field_at, PoolSpec};
use super::route::RouteError;

/// What a frontend carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Byte streams: each connection goes to one pool member, both directions copied.
    #[default]
    Tcp,
    /// HTTP requests routed by rules.
    Http,
}

/// Connection reuse of an HTTP frontend (Aqueduct's and HAProxy's `option` of the same
/// names). HTTP/1 only: an HTTP/2 client connection is multiplexed and stays open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeepAlive {
    /// Both sides keep connections open (upstream connections are pooled).
    #[default]
    Default,
    /// One request per connection on both sides: `Connection: close` to the client and to the
    /// member, a new upstream connection per request.
    Close,
    /// Clients keep their connection; every request goes upstream on a new connection that
    /// closes after the response.
    ServerClose,
}

impl KeepAlive {
    fn is_default(&self) -> bool {
        *self == KeepAlive::Default
    }
}

/// The binds of a frontend: `"10.2.2.2:80,*:8080"` or a list; `*` (or an empty host) means
/// every address (`[::]`, which takes IPv4 clients too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Binds {
    One(String),
    Many(Vec<String>),
}

impl Binds {
    /// Every bind address, trimmed, in order.
    pub fn items(&self) -> Vec<String> {
        let raw: Vec<&str> = match self {
            Binds::One(s) => s.split(',').collect(),
            Binds::Many(v) => v.iter().flat_map(|s| s.split(',')).collect(),
        };
        raw.into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// Parses one bind: `ip:port`, `[v6]:port`, `*:port` or `:port`.
pub fn parse_bind(raw: &str) -> Result<SocketAddr, String> {
    let s = raw.trim();
    if let Some(port) = s.strip_prefix("*:").or_else(|| s.strip_prefix(':')) {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{raw:?}: the port is not a number 0-65535"))?;
        return Ok(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
    }
    s.parse()
        .map_err(|_| format!("{raw:?} is not an address (ip:port, [v6]:port or *:port)"))
}

/// True when the kernel would refuse to hold both binds at once (port 0 never conflicts: the
/// kernel picks a free port).
pub fn binds_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || b.port() == 0 || a.port() != b.port() {
        return false;
    }
    let wild = |ip: IpAddr| ip.is_unspecified();
    let v4 = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    if wild(a.ip()) || wild(b.ip()) {
        // `[::]` (dual stack) covers everything; `0.0.0.0` covers IPv4 only.
        let covers = |w: IpAddr, o: IpAddr| w.is_ipv6() || v4(o).is_some() || o == w;
        return (wild(a.ip()) && covers(a.ip(), b.ip()))
            || (wild(b.ip()) && covers(b.ip(), a.ip()));
    }
    a.ip() == b.ip() || (v4(a.ip()).is_some() && v4(a.ip()) == v4(b.ip()))
}

pub use super::rules::RuleSpec;
use super::rules::RuleTable;

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}

/// Timeouts of a TCP frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpTimeouts {
    /// Connecting to a member (then the next usable member is tried).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle: Duration,
}

impl Default for TcpTimeouts {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            idle: default_idle_timeout(),
        }
    }
}

/// A frontend as configured (config file `frontends:` and `PUT /v1/frontends/{name}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontendSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    pub bind: Binds,
    /// Where connections go when no rule matches. Empty (and left out) only in the listing
    /// of the default frontends `http` and `https`, which answer 404 instead.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pool: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub timeouts: TcpTimeouts,
    /// HTTP frontends: connection reuse towards clients and members.
    #[serde(default, skip_serializing_if = "KeepAlive::is_default")]
    pub keepalive: KeepAlive,
}

impl FrontendSpec {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The parsed bind addresses (call after validation; unparsable ones are skipped).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.bind
            .items()
            .iter()
            .filter_map(|b| parse_bind(b).ok())
            .collect()
    }

    /// The pool for a client: the first rule whose conditions match, else the default.
    pub fn pool_for(&self, client: IpAddr) -> &str {
        self.rules
            .iter()
            .find(|r| r.matches_client(client))
            .and_then(|r| r.pool.as_deref())
            .unwrap_or(&self.pool)
    }

    /// Checks one frontend on its own; `at` is its field path.
    pub fn validate(&self, at: &str) -> Result<(), RouteError> {
        let f = |rest: &str| field_at(at, rest);
        check_name(&f("name"), self.name())?;
        if super::route::is_default_frontend(self.name()) {
            return Err(err(
                f("name"),
                format!(
                    "{:?} is berthd's default frontend on its own listener (its rules are the routes); choose another name",
                    self.name()
                ),
            ));
        }
        let items = self.bind.items();
        if items.is_empty() {
            return Err(err(f("bind"), "at least one address to listen on"));
        }
        let mut seen: Vec<SocketAddr> = Vec::new();
        for (i, b) in items.iter().enumerate() {
            let a = parse_bind(b).map_err(|m| err(f(&format!("bind[{i}]")), m))?;
            if seen.iter().any(|s| binds_overlap(*s, a)) {
                return Err(err(
                    f(&format!("bind[{i}]")),
                    format!("{b} overlaps another bind of this frontend"),
                ));
            }
            seen.push(a);
        }
        if self.timeouts.connect.is_zero() || self.timeouts.idle.is_zero() {
            return Err(err(f("timeouts"), "connect and idle must be more than 0"));
        }
        if self.mode == Mode::Http {
            // Rules are compiled (regexes, templates, pools) by `validate_set`.
            return Ok(());
        }
        if !self.keepalive.is_default() {
            return Err(err(
                f("keepalive"),
                "keepalive is HTTP only; a tcp frontend copies bytes and never closes early",
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if let Some(cond) = r.http_only_field() {
                return Err(err(
                    f(&format!("rules[{i}].{cond}")),
                    format!("{cond} is HTTP only; a tcp frontend's rules match on client and name a pool"),
                ));
            }
            if r.pool.is_none() {
                return Err(err(f(&format!("rules[{i}].pool")), "name a pool"));
            }
        }
        Ok(())
    }
}

/// Validates the whole set: each pool and frontend, unique names, pool references, and binds
/// that overlap each other or `reserved` (the daemon's own listeners, by name). `frontends`
/// and `pools` carry their field-path prefix (`frontends[0]` for the file, `` for an API body).
pub fn validate_set(
    frontends: &[(String, &FrontendSpec)],
    pools: &[(String, &PoolSpec)],
    reserved: &[(&str, SocketAddr)],
) -> Result<(), RouteError> {
    let mut pool_names = BTreeMap::new();
    for (at, p) in pools {
        p.validate(at)?;
        if pool_names.insert(p.name(), at).is_some() {
            return Err(err(
                join(at, "name"),
                format!("pool {:?} is defined twice", p.name()),
            ));
        }
    }
    let mut names = BTreeMap::new();
    let mut binds: Vec<(SocketAddr, String)> = Vec::new();
    for (at, fe) in frontends {
        fe.validate(at)?;
        if names.insert(fe.name(), at).is_some() {
            return Err(err(
                join(at, "name"),
                format!("frontend {:?} is defined twice", fe.name()),
            ));
        }
        if !pool_names.contains_key(fe.pool.as_str()) {
            return Err(err(
                join(at, "pool"),
                format!("no pool named {:?}", fe.pool),
            ));
        }
        for (i, r) in fe.rules.iter().enumerate() {
            let Some(pool) = r.pool.as_deref() else {
                continue;
            };
            if !pool_names.contains_key(pool) {
                return Err(err(
                    join(at, &format!("rules[{i}].pool")),
                    format!("no pool named {pool:?}"),
                ));
            }
        }
        if fe.mode == Mode::Http {
            // Compiles every regex and template: a bad one names its rule.
            RuleTable::build(at, &fe.rules, &fe.pool, |p| pool_names.contains_key(p))?;
            let used = |name: &str| {
                fe.pool == name || fe.rules.iter().any(|r| r.pool.as_deref() == Some(name))
            };
            if let Some((_, p)) = pools.iter().find(|(_, p)| {
                used(p.name()) && p.proxy_protocol != super::pool::ProxyProtocol::None
            }) {
                return Err(err(
                    join(at, "pool"),
                    format!(
                        "pool {:?} sends PROXY protocol headers, which only tcp frontends do",
                        p.name()
                    ),
                ));
            }
        }
        for (i, b) in fe.addrs().into_iter().enumerate() {
            let field = join(at, &format!("bind[{i}]"));
            if let Some((_, owner)) = binds.iter().find(|(o, _)| binds_overlap(*o, b)) {
                return Err(err(
                    field,
                    format!("{b} overlaps a bind of frontend {owner:?}"),
                ));
            }
            if let Some((owner, _)) = reserved.iter().find(|(_, o)| binds_overlap(*o, b)) {
                return Err(err(
                    field,
                    format!("{b} overlaps berthd's {owner} listener"),
                ));
            }
            binds.push((b, fe.name().to_string()));
        }
    }
    Ok(())
}

fn join(at: &str, rest: &str) -> String {
    if at.is_empty() {
        rest.to_string()
    } else {
        format!("{at}.{rest}")
    }
}

/// The fd name a frontend's `i`-th listener carries across upgrades and in the systemd fd
/// store (`FileDescriptorName=` of a socket unit for socket activation).
pub fn listener_name(frontend: &str, i: usize) -> String {
    format!("frontend.{frontend}.{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fe(yaml: &str) -> FrontendSpec {
        serde_yaml::from_str(yaml).unwrap()
    }
    fn pool(name: &str) -> PoolSpec {
        serde_yaml::from_str(&format!("name: {name}\n")).unwrap()
    }
    fn set(
        fes: &[FrontendSpec],
        pools: &[PoolSpec],
        reserved: &[(&str, SocketAddr)],
    ) -> Result<(), RouteError> {
        let f: Vec<(String, &FrontendSpec)> = fes
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("frontends[{i}]"), f))
            .collect();
        let p: Vec<(String, &PoolSpec)> = pools
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("pools[{i}]"), p))
            .collect();
        validate_set(&f, &p, reserved)
    }

    #[test]
    fn binds_parse_in_both_spellings() {
        let f = fe("name: db\nbind: '10.2.2.2:80, *:8080'\npool: p\n");
        assert_eq!(
            f.addrs(),
            vec![
                "10.2.2.2:80".parse().unwrap(),
                "[::]:8080".parse::<SocketAddr>().unwrap()
            ]
        );
        let f = fe("name: db\nbind: ['127.0.0.1:1', ':2']\npool: p\n");
        assert_eq!(f.addrs().len(), 2);
        assert_eq!(f.mode, Mode::Tcp);
        assert!(parse_bind("nope:80").is_err());
        assert!(parse_bind("*:99999").is_err());
    }

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(binds_overlap(a("127.0.0.1:80"), a("127.0.0.1:80")));
        assert!(binds_overlap(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(binds_overlap(a("[::]:80"), a("10.0.0.1:80")));
        assert!(binds_overlap(a("[::1]:80"), a("[::]:80")));
        assert!(!binds_overlap(a("0.0.0.0:80"), a("[::1]:80")));
        assert!(!binds_overlap(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!binds_overlap(a("127.0.0.1:80"), a("127.0.0.1:81")));
        assert!(!binds_overlap(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }

    #[test]
    fn set_validation_names_the_field() {
        let p = [pool("a")];
        let f1 = fe("name: one\nbind: 127.0.0.1:7000\npool: a\n");
        let f2 = fe("name: two\nbind: '127.0.0.2:1,*:7000'\npool: a\n");
        let e = set(&[f1.clone(), f2], &p, &[]).unwrap_err();
        assert_eq!(e.field, "frontends[1].bind[1]");
        assert!(e.message.contains("\"one\""), "{e}");

        let e = set(
            std::slice::from_ref(&f1),
            &p,
            &[("http", "0.0.0.0:7000".parse().unwrap())],
        )
        .unwrap_err();
        assert_eq!(e.field, "frontends[0].bind[0]");
        assert!(e.message.contains("http"));

        let f3 = fe("name: three\nbind: 127.0.0.1:7001\npool: nope\n");
        assert_eq!(set(&[f3], &p, &[]).unwrap_err().field, "frontends[0].pool");

        let f4 = fe("name: four\nbind: 127.0.0.1:7002\npool: a\nrules:\n  - client: [10.0.0.0/8]\n    pool: b\n");
        assert_eq!(
            set(&[f4], &p, &[]).unwrap_err().field,
            "frontends[0].rules[0].pool"
        );

        let f5 =
            fe("name: five\nbind: 127.0.0.1:7003\npool: a\nrules:\n  - path: {prefix: /api}\n    pool: a\n");
        let e = set(&[f5], &p, &[]).unwrap_err();
        assert_eq!(e.field, "frontends[0].rules[0].path");

        let dup = fe("name: one\nbind: 127.0.0.1:7004\npool: a\n");
        assert_eq!(
            set(&[f1.clone(), dup], &p, &[]).unwrap_err().field,
            "frontends[1].name"
        );
        let http = fe("name: h\nmode: http\nbind: 127.0.0.1:7005\npool: a\nkeepalive: server-close\nrules:\n  - {path: {prefix: /x}, strip_prefix: /x, pool: a}\n");
        assert!(set(std::slice::from_ref(&http), &p, &[]).is_ok());
        assert_eq!(http.keepalive, KeepAlive::ServerClose);
        let tcp_ka = fe("name: t\nbind: 127.0.0.1:7006\npool: a\nkeepalive: close\n");
        assert_eq!(
            set(&[tcp_ka], &p, &[]).unwrap_err().field,
            "frontends[0].keepalive"
        );
        assert!(set(&[f1], &p, &[]).is_ok());
        // The default frontends' names are taken: their rules are the routes.
        for name in ["http", "https"] {
            let f = fe(&format!(
                "name: {name}\nmode: http\nbind: 127.0.0.1:7007\npool: a\n"
            ));
            let e = set(&[f], &p, &[]).unwrap_err();
            assert_eq!(e.field, "frontends[0].name");
            assert!(e.message.contains("routes"), "{e}");
        }
    }

    #[test]
    fn http_frontend_rules_compile_when_the_set_is_validated() {
        let p = [pool("a"), pool("b")];
        let bad_re = fe("name: h\nmode: http\nbind: 127.0.0.1:7010\npool: a\nrules:\n  - {host: x.test, pool: b}\n  - {method: GET, pool: a}\n  - {path: {regex: '(open'}, pool: b}\n");
        let e = set(&[bad_re], &p, &[]).unwrap_err();
        assert_eq!(e.field, "frontends[0].rules[2].path.regex");
        let unknown = fe("name: h\nmode: http\nbind: 127.0.0.1:7010\npool: a\nrules:\n  - {header: {name: x, present: true}, pool: zz}\n");
        assert_eq!(
            set(&[unknown], &p, &[]).unwrap_err().field,
            "frontends[0].rules[0].pool"
        );
        let v2: PoolSpec = serde_yaml::from_str("name: pp\nproxy_protocol: v2\n").unwrap();
        let to_v2 = fe("name: h\nmode: http\nbind: 127.0.0.1:7010\npool: a\nrules:\n  - {path: {prefix: /p}, pool: pp}\n");
        assert_eq!(
            set(&[to_v2], &[pool("a"), v2], &[]).unwrap_err().field,
            "frontends[0].pool"
        );
        let redirect_only = fe("name: h\nmode: http\nbind: 127.0.0.1:7010\npool: a\nrules:\n  - {redirect: {location: 'https://{host}{uri}'}}\n");
        assert!(set(&[redirect_only], &p, &[]).is_ok());
    }

    #[test]
    fn client_rules_pick_the_pool_in_order() {
        let f = fe("name: x\nbind: ':1'\npool: default\nrules:\n  - client: [10.1.0.0/16]\n    pool: near\n  - client: [10.0.0.0/8, '::1/128']\n    pool: far\n");
        assert_eq!(f.pool_for("10.1.2.3".parse().unwrap()), "near");
        assert_eq!(f.pool_for("10.2.2.3".parse().unwrap()), "far");
        assert_eq!(f.pool_for("::ffff:10.1.0.1".parse().unwrap()), "near");
        assert_eq!(f.pool_for("::1".parse().unwrap()), "far");
        assert_eq!(f.pool_for("192.168.0.1".parse().unwrap()), "default");
    }
}
