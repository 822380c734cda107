//! Unit tests of route specs, validation, the table and picks.

use std::collections::HashSet;
use std::time::Duration;

use super::*;

fn spec(yaml: &str) -> Vec<RouteSpec> {
    serde_json::from_str(yaml).expect("test spec parses")
}

fn table() -> RouteTable {
    RouteTable::build(
        &spec(
            r#"[
        {"name":"web","domains":["example.com"],"aliases":["www.example.com"],
         "backends":[{"address":"127.0.0.1:1"}]},
        {"name":"api","domains":["example.com"],"path_prefix":"/api",
         "backends":[{"address":"127.0.0.1:2"}]},
        {"name":"api-v2","domains":["example.com"],"path_prefix":"/api/v2/",
         "backends":[{"address":"127.0.0.1:3"}]},
        {"name":"blog","domains":["blog.example.com"],"aliases":["b.example.com"],
         "alias_mode":"serve","backends":[{"address":"127.0.0.1:4"}]},
        {"name":"docs","domains":["docs.example.com"],"path_prefix":"/docs",
         "backends":[{"address":"127.0.0.1:5"}]}
    ]"#,
        ),
        None,
    )
    .expect("valid table")
}

#[test]
fn lookup_table() {
    let t = table();
    #[derive(Debug, PartialEq)]
    enum Want {
        R(&'static str),
        Redirect(&'static str),
        NotFound,
    }
    let cases: &[(&str, &str, Want)] = &[
        ("example.com", "/", Want::R("web")),
        ("EXAMPLE.com:8080", "/x", Want::R("web")),
        ("example.com.", "/", Want::R("web")),
        ("example.com", "/api", Want::R("api")),
        ("example.com", "/api/users", Want::R("api")),
        ("example.com", "/apix", Want::R("web")),
        ("example.com", "/api/v2", Want::R("api-v2")),
        ("example.com", "/api/v2/x", Want::R("api-v2")),
        ("example.com", "/api/v3", Want::R("api")),
        (
            "www.example.com",
            "/anything",
            Want::Redirect("example.com"),
        ),
        ("blog.example.com", "/", Want::R("blog")),
        ("b.example.com", "/", Want::R("blog")),
        ("docs.example.com", "/docs/a", Want::R("docs")),
        ("docs.example.com", "/", Want::NotFound),
        ("other.com", "/", Want::NotFound),
        ("", "/", Want::NotFound),
    ];
    for (host, path, want) in cases {
        let got = match t.lookup(host, path) {
            Lookup::Route(r) => match r.name.as_str() {
                "web" => Want::R("web"),
                "api" => Want::R("api"),
                "api-v2" => Want::R("api-v2"),
                "blog" => Want::R("blog"),
                "docs" => Want::R("docs"),
                other => panic!("unexpected route {other}"),
            },
            Lookup::Redirect(to) => {
                assert_eq!(to, "example.com");
                Want::Redirect("example.com")
            }
            Lookup::NotFound => Want::NotFound,
        };
        assert_eq!(&got, want, "lookup({host:?}, {path:?})");
    }
}

#[test]
fn wildcard_domains_serve_one_label_below() {
    let t = RouteTable::build(
        &spec(
            r#"[
        {"name":"wild","domains":["*.Apps.example.com"],"backends":[{"address":"127.0.0.1:1"}]},
        {"name":"one","domains":["one.apps.example.com"],"path_prefix":"/x",
         "backends":[{"address":"127.0.0.1:2"}]}
    ]"#,
        ),
        None,
    )
    .expect("valid table");
    let name = |host: &str, path: &str| match t.lookup(host, path) {
        Lookup::Route(r) => Some(r.name.clone()),
        _ => None,
    };
    assert_eq!(name("a.apps.example.com", "/").as_deref(), Some("wild"));
    assert_eq!(name("B.APPS.example.com:443", "/").as_deref(), Some("wild"));
    // Exact first; a path the exact domain does not serve falls to the wildcard.
    assert_eq!(name("one.apps.example.com", "/x").as_deref(), Some("one"));
    assert_eq!(name("one.apps.example.com", "/y").as_deref(), Some("wild"));
    assert_eq!(name("apps.example.com", "/"), None, "not the apex");
    assert_eq!(name("a.b.apps.example.com", "/"), None, "exactly one label");
    let unnamed = spec(r#"[{"domains":["*.b.example.com"],"backends":[]}]"#);
    assert_eq!(unnamed[0].name(), "wildcard.b.example.com");
    RouteTable::build(&unnamed, None).expect("a wildcard route without a name is valid");
    let bad: Result<Vec<RouteSpec>, _> =
        serde_json::from_str(r#"[{"domains":["a.*.example.com"],"backends":[]}]"#);
    assert!(bad.is_err());
}

#[test]
fn validation_errors_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"[{"domains":["a.com"],"backends":[]},{"name":"b","domains":["A.com."],"backends":[]}]"#,
            "routes[1].domains[0]",
            "duplicate domain",
        ),
        (
            r#"[{"domains":["a.com"],"aliases":["a.com"],"backends":[]}]"#,
            "routes[0].aliases[0]",
            "duplicate domain",
        ),
        (
            r#"[{"name":"x","domains":[],"backends":[]}]"#,
            "routes[0].domains",
            "at least one domain",
        ),
        (
            r#"[{"name":"x","domains":["a.com"]},{"name":"x","domains":["b.com"]}]"#,
            "routes[1].name",
            "already used",
        ),
        (
            r#"[{"domains":["a.com"],"backends":[{"address":"1.2.3.4:5","weight":5000}]}]"#,
            "routes[0].backends[0].weight",
            "out of range",
        ),
        (
            r#"[{"domains":["a.com"],"backends":[{"address":"1.2.3.4:5"},{"address":"1.2.3.4:5"}]}]"#,
            "routes[0].backends[1]",
            "appears twice",
        ),
        (
            r#"[{"domains":["a.com"],"retries":6}]"#,
            "routes[0].retries",
            "out of range (0-5)",
        ),
    ];
    for (json, field, msg) in cases {
        let err = validate_routes("routes", &spec(json)).expect_err(json);
        assert_eq!(err.field, *field, "{json}");
        assert!(err.message.contains(msg), "{json}: {}", err.message);
    }
    // Same domain under different prefixes is fine.
    validate_routes(
        "routes",
        &spec(r#"[{"domains":["a.com"]},{"name":"b","domains":["a.com"],"path_prefix":"/b"}]"#),
    )
    .expect("prefixes may share a domain");
}

#[test]
fn parse_errors() {
    for (json, msg) in [
        (r#""1.2.3.4""#, "port is missing"),
        (r#""1.2.3.4:99999""#, "out of range"),
        (r#""1.2.3.4:0""#, "out of range"),
        (r#""1.2.3.4:http""#, "not a number"),
        (r#""bad host:80""#, "host name"),
    ] {
        let err = serde_json::from_str::<BackendAddr>(json).expect_err(json);
        assert!(err.to_string().contains(msg), "{json}: {err}");
    }
    let a: BackendAddr = serde_json::from_str(r#""[::1]:8080""#).unwrap();
    assert_eq!(a.to_string(), "[::1]:8080");
    let err = serde_json::from_str::<Domain>(r#""exa mple.com""#).unwrap_err();
    assert!(err.to_string().contains("invalid host name"), "{err}");
    assert!(serde_json::from_str::<PathPrefix>(r#""api""#).is_err());
}

#[test]
fn pick_skips_ineligible_and_keeps_stats() {
    let specs = spec(
        r#"[{"name":"w","domains":["a.com"],"backends":[
        {"id":"a","address":"127.0.0.1:1","weight":2},
        {"id":"b","address":"127.0.0.1:2","state":"drain"},
        {"id":"c","address":"127.0.0.1:3","state":"maint"},
        {"id":"d","address":"127.0.0.1:4","weight":0}]}]"#,
    );
    let t = RouteTable::build(&specs, None).unwrap();
    let r = t.route("w").unwrap();
    for _ in 0..10 {
        assert_eq!(r.pick(None), Ok(0));
    }
    assert_eq!(r.pick(Some(0)), Err(PickError::AllDown));
    r.backends[0]
        .stats
        .requests
        .fetch_add(7, std::sync::atomic::Ordering::Relaxed);
    let t2 = RouteTable::build(&specs, Some(&t)).unwrap();
    assert_eq!(
        t2.route("w").unwrap().backends[0]
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        7
    );
    let empty = RouteTable::build(&spec(r#"[{"name":"e","domains":["e.com"]}]"#), None).unwrap();
    assert_eq!(
        empty.route("e").unwrap().pick(None),
        Err(PickError::NoBackends)
    );
}

#[test]
fn balancer_spellings() {
    let ok: &[(&str, BalancerKind)] = &[
        (r#""round_robin""#, BalancerKind::RoundRobin),
        (r#""least_connections""#, BalancerKind::LeastConnections),
        (
            r#""sticky_cookie""#,
            BalancerKind::StickyCookie {
                cookie: "BERTH_SERVER".into(),
                indirect: false,
            },
        ),
        (
            r#"{"kind":"sticky_cookie","cookie":"PIN"}"#,
            BalancerKind::StickyCookie {
                cookie: "PIN".into(),
                indirect: false,
            },
        ),
        (
            r#"{"kind":"sticky_cookie","cookie":"PIN","indirect":true}"#,
            BalancerKind::StickyCookie {
                cookie: "PIN".into(),
                indirect: true,
            },
        ),
        (r#""source_ip""#, BalancerKind::SourceIp),
        (
            r#""uri_hash""#,
            BalancerKind::UriHash { key: HashKey::Path },
        ),
        (
            r#"{"kind":"uri_hash","key":"uri"}"#,
            BalancerKind::UriHash { key: HashKey::Uri },
        ),
        (r#"{"kind":"round_robin"}"#, BalancerKind::RoundRobin),
    ];
    for (json, want) in ok {
        let got: BalancerKind = serde_json::from_str(json).expect(json);
        assert_eq!(&got, want, "{json}");
        // Round trip.
        let again: BalancerKind =
            serde_json::from_str(&serde_json::to_string(&got).unwrap()).unwrap();
        assert_eq!(&again, want);
    }
    assert_eq!(
        serde_json::to_string(&BalancerKind::RoundRobin).unwrap(),
        r#""round_robin""#
    );
    for (json, msg) in [
        (r#""random""#, "unknown balancer"),
        (
            r#"{"kind":"sticky_cookie","cookie":"a b"}"#,
            "invalid cookie name",
        ),
        (
            r#"{"kind":"round_robin","cookie":"X"}"#,
            "only applies to sticky_cookie",
        ),
        (
            r#"{"kind":"uri_hash","indirect":true}"#,
            "`indirect` only applies to sticky_cookie",
        ),
        (
            r#"{"kind":"sticky_cookie","key":"path"}"#,
            "only applies to uri_hash",
        ),
        (r#"{"cookie":"X"}"#, "missing field `kind`"),
        (r#"{"kind":"uri_hash","key":"host"}"#, "unknown variant"),
        (r#"{"kind":"uri_hash","salt":"x"}"#, "unknown field"),
    ] {
        let err = serde_json::from_str::<BalancerKind>(json).expect_err(json);
        assert!(err.to_string().contains(msg), "{json}: {err}");
    }
}

#[test]
fn health_check_spec_defaults_and_validation() {
    let r = spec(
        r#"[{"domains":["a.com"],"health_check":{},"slowstart":"10s","on_down":"shutdown_sessions"}]"#,
    );
    let h = r[0].health_check.as_ref().unwrap();
    assert_eq!(h, &HealthCheckSpec::default());
    assert_eq!((h.path.as_str(), h.fall, h.rise), ("/", 3, 2));
    assert_eq!(h.interval, Duration::from_secs(15));
    assert_eq!(h.timeout, Duration::from_secs(5));
    assert!(h.accepts(200) && h.accepts(302) && !h.accepts(404) && !h.accepts(500));
    assert_eq!(r[0].slowstart, Some(Duration::from_secs(10)));
    assert_eq!(r[0].on_down, OnDown::ShutdownSessions);
    let h: HealthCheckSpec = serde_json::from_str(r#"{"expect":["204","4xx"]}"#).unwrap();
    assert!(h.accepts(204) && h.accepts(404) && !h.accepts(200));
    for (json, field) in [
        (r#"{"path":"health"}"#, "routes[0].health_check.path"),
        (r#"{"interval":"1ms"}"#, "routes[0].health_check.interval"),
        (r#"{"fall":0}"#, "routes[0].health_check.fall"),
        (r#"{"rise":1000}"#, "routes[0].health_check.rise"),
        (r#"{"expect":[]}"#, "routes[0].health_check.expect"),
    ] {
        let r = spec(&format!(
            r#"[{{"domains":["a.com"],"health_check":{json}}}]"#
        ));
        assert_eq!(
            validate_routes("routes", &r).unwrap_err().field,
            field,
            "{json}"
        );
    }
    for bad in [
        r#"{"expect":["6xx"]}"#,
        r#"{"expect":["abc"]}"#,
        r#"{"bogus":1}"#,
    ] {
        assert!(
            serde_json::from_str::<HealthCheckSpec>(bad).is_err(),
            "{bad}"
        );
    }
}

fn sticky_table() -> RouteTable {
    RouteTable::build(
        &spec(
            r#"[{"name":"s","domains":["a.com"],"balancer":{"kind":"sticky_cookie","cookie":"PIN"},
            "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"},
            {"id":"c","address":"127.0.0.1:3"}]}]"#,
        ),
        None,
    )
    .unwrap()
}

#[test]
fn sticky_cookie_pins_and_repins() {
    let t = sticky_table();
    let r = t.route("s").unwrap();
    let ctx = |c: &'static str| PickContext {
        cookie: Some(c),
        path: "/",
        path_and_query: "/",
        client: None,
    };
    // No cookie: balanced, and a cookie to set.
    let first = r.pick_for(&PickContext::default(), None).unwrap();
    let set = first.set_cookie.clone().unwrap();
    let tok = &r.backends[first.index].token;
    assert_eq!(set, format!("PIN={tok}; Path=/; HttpOnly; SameSite=Lax"));
    // With the cookie: always that backend, nothing to set.
    let cookie: &'static str = Box::leak(format!("x=1; PIN={tok}").into_boxed_str());
    for _ in 0..10 {
        assert_eq!(
            r.pick_for(&ctx(cookie), None).unwrap(),
            Pick {
                index: first.index,
                set_cookie: None,
                version_cookie: None,
            }
        );
    }
    // Unknown token: re-balanced and rewritten.
    let p = r.pick_for(&ctx("PIN=0000"), None).unwrap();
    assert!(p.set_cookie.is_some());

    // Pinned backend b: drain still accepts pins, maint and down do not.
    let tok_b: &'static str = Box::leak(format!("PIN={}", r.backends[1].token).into_boxed_str());
    let base = r#"[{"name":"s","domains":["a.com"],"balancer":{"kind":"sticky_cookie","cookie":"PIN"},
            "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2","state":"STATE"},
            {"id":"c","address":"127.0.0.1:3"}]}]"#;
    let t2 = RouteTable::build(&spec(&base.replace("STATE", "drain")), Some(&t)).unwrap();
    let r2 = t2.route("s").unwrap();
    assert_eq!(r2.pick_for(&ctx(tok_b), None).unwrap().index, 1);
    for _ in 0..10 {
        assert_ne!(r2.pick(None).unwrap(), 1, "drained: no unpinned traffic");
    }
    let t3 = RouteTable::build(&spec(&base.replace("STATE", "maint")), Some(&t)).unwrap();
    let p = t3.route("s").unwrap().pick_for(&ctx(tok_b), None).unwrap();
    assert_ne!(p.index, 1);
    assert!(p.set_cookie.unwrap().starts_with("PIN="));
    // Down.
    for _ in 0..3 {
        r.backends[1].health.record(false, 2, 3, 1);
    }
    let p = r.pick_for(&ctx(tok_b), None).unwrap();
    assert_ne!(p.index, 1);
    assert!(p.set_cookie.is_some());
    // Removed.
    let t4 = RouteTable::build(
        &spec(r#"[{"name":"s","domains":["a.com"],"balancer":"sticky_cookie","backends":[{"id":"a","address":"127.0.0.1:1"}]}]"#),
        Some(&t),
    )
    .unwrap();
    let p = t4
        .route("s")
        .unwrap()
        .pick_for(
            &PickContext {
                cookie: Some("BERTH_SERVER=ffff"),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(p.index, 0);
    assert!(p.set_cookie.unwrap().starts_with("BERTH_SERVER="));
}

#[test]
fn health_survives_rebuilds_and_slowstart_ramps() {
    let json = r#"[{"name":"w","domains":["a.com"],"slowstart":"10s","health_check":{},
        "backends":[{"id":"a","address":"127.0.0.1:1","weight":100},{"id":"b","address":"127.0.0.1:2","weight":100}]}]"#;
    let t0 = RouteTable::build_at(&spec(json), None, 1_000_000).unwrap();
    let r = t0.route("w").unwrap();
    assert_eq!(
        r.backends[0].effective_weight, 100,
        "boot: full weight at once"
    );
    assert!(!t0.ramping());
    for _ in 0..3 {
        r.backends[1].health.record(false, 2, 3, 1_000_000);
    }
    // Another writer rebuilds from specs: b stays down.
    let t1 = RouteTable::build_at(&spec(json), Some(&t0), 1_001_000).unwrap();
    let b = &t1.route("w").unwrap().backends[1];
    assert!(!b.health.is_up() && !b.eligible());
    for _ in 0..10 {
        assert_eq!(t1.route("w").unwrap().pick(None), Ok(0));
    }
    // It recovers at t=1_002_000 and ramps over 10 s.
    b.health.record(true, 2, 3, 1_002_000);
    b.health.record(true, 2, 3, 1_002_000);
    let mut last = 0;
    for (at, want) in [
        (1_002_000, 1),
        (1_004_500, 25),
        (1_007_000, 50),
        (1_012_000, 100),
    ] {
        let t = RouteTable::build_at(&spec(json), Some(&t1), at).unwrap();
        let w = t.route("w").unwrap().backends[1].effective_weight;
        assert_eq!(w, want, "at {at}");
        assert!(w >= last);
        last = w;
        assert_eq!(t.ramping(), want < 100);
    }
    // A backend added to a running table ramps too; an address change resets health.
    let json2 = json.replace("127.0.0.1:2", "127.0.0.1:9").replace(
        r#"]}]"#,
        r#",{"id":"c","address":"127.0.0.1:3","weight":100}]}]"#,
    );
    let t2 = RouteTable::build_at(&spec(&json2), Some(&t1), 2_000_000).unwrap();
    let r2 = t2.route("w").unwrap();
    assert_eq!(r2.backends[2].effective_weight, 1);
    assert!(r2.backends[1].health.is_up(), "new address, fresh health");
    assert!(t2.ramping());
}

#[test]
fn least_connections_and_uri_hash_pick() {
    let t = RouteTable::build(
        &spec(
            r#"[{"name":"l","domains":["l.com"],"balancer":"least_connections",
            "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"}]},
            {"name":"h","domains":["h.com"],"balancer":{"kind":"uri_hash","key":"uri"},
            "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"},
            {"id":"c","address":"127.0.0.1:3","state":"drain"}]}]"#,
        ),
        None,
    )
    .unwrap();
    let l = t.route("l").unwrap();
    l.backends[0]
        .stats
        .inflight
        .store(5, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(l.pick(None), Ok(1));
    }
    assert_eq!(l.pick(Some(1)), Ok(0), "retry excludes the failed one");
    let h = t.route("h").unwrap();
    let mut seen = HashSet::new();
    for k in 0..200 {
        let pq = format!("/p?x={k}");
        let ctx = PickContext {
            cookie: None,
            path: "/p",
            path_and_query: &pq,
            client: None,
        };
        let i = h.pick_for(&ctx, None).unwrap().index;
        assert_eq!(h.pick_for(&ctx, None).unwrap().index, i, "stable");
        assert_ne!(i, 2, "drained backend gets no hashed traffic");
        seen.insert(i);
    }
    assert_eq!(seen.len(), 2, "whole-URI keys spread over both");
}

#[test]
fn source_ip_pins_clients_and_skips_down_backends() {
    let t = RouteTable::build(
        &spec(
            r#"[{"name":"s","domains":["s.com"],"balancer":"source_ip",
            "backends":[{"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2"},
            {"id":"c","address":"127.0.0.1:3"}]}]"#,
        ),
        None,
    )
    .unwrap();
    let r = t.route("s").unwrap();
    let at = |ip: std::net::IpAddr| {
        r.pick_for(
            &PickContext {
                client: Some(ip),
                ..Default::default()
            },
            None,
        )
        .unwrap()
        .index
    };
    let mut owners = Vec::new();
    for k in 0..300u32 {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + k));
        let i = at(ip);
        assert_eq!(at(ip), i, "a client stays on its backend");
        owners.push((ip, i));
    }
    let used: HashSet<usize> = owners.iter().map(|o| o.1).collect();
    assert_eq!(used.len(), 3, "clients spread over all backends");
    // b goes down: only b's clients move.
    for _ in 0..3 {
        r.backends[1].health.record(false, 2, 3, 1);
    }
    assert!(!r.backends[1].health.is_up());
    for (ip, i) in &owners {
        let now = at(*ip);
        if *i == 1 {
            assert_ne!(now, 1);
        } else {
            assert_eq!(now, *i, "{ip} moved although its backend is up");
        }
    }
}

#[test]
fn retries_and_check_method_round_trip() {
    let r = &spec(
        r#"[{"domains":["a.com"],"retries":3,"health_check":{"path":"/up","method":"HEAD"}}]"#,
    )[0];
    assert_eq!(r.retries, 3);
    assert_eq!(r.health_check.as_ref().unwrap().method, CheckMethod::Head);
    let d = &spec(r#"[{"domains":["a.com"],"health_check":{}}]"#)[0];
    assert_eq!(d.retries, DEFAULT_RETRIES);
    assert_eq!(d.health_check.as_ref().unwrap().method, CheckMethod::Get);
    let json = serde_json::to_string(d).unwrap();
    assert!(
        !json.contains("retries") && !json.contains("method"),
        "{json}"
    );
    assert!(serde_json::from_str::<RouteSpec>(
        r#"{"domains":["a.com"],"health_check":{"method":"POST"}}"#
    )
    .is_err());
}

#[test]
fn retired_flags_follow_the_newest_table() {
    use std::sync::atomic::Ordering::SeqCst;
    let base = r#"[{"name":"w","domains":["a.com"],"backends":[
        {"id":"a","address":"127.0.0.1:1"},{"id":"b","address":"127.0.0.1:2","state":"STATE"},
        {"id":"c","address":"127.0.0.1:3"}]}]"#;
    let retired = |t: &RouteTable| -> Vec<bool> {
        t.route("w")
            .unwrap()
            .backends
            .iter()
            .map(|b| b.stats.retired.load(SeqCst))
            .collect()
    };
    let t0 = RouteTable::build(&spec(&base.replace("STATE", "ready")), None).unwrap();
    assert_eq!(retired(&t0), [false, false, false]);
    // Drain still takes pinned requests: not retired. Maint takes none: retired, on the
    // counters an older snapshot (t0) shares.
    let t1 = RouteTable::build(&spec(&base.replace("STATE", "drain")), Some(&t0)).unwrap();
    t1.mark_retired(&t0);
    assert_eq!(retired(&t0), [false, false, false]);
    let t2 = RouteTable::build(&spec(&base.replace("STATE", "maint")), Some(&t1)).unwrap();
    t2.mark_retired(&t1);
    assert_eq!(retired(&t0), [false, true, false]);
    // Back to ready: cleared.
    let t3 = RouteTable::build(&spec(&base.replace("STATE", "ready")), Some(&t2)).unwrap();
    t3.mark_retired(&t2);
    assert_eq!(retired(&t0), [false, false, false]);
    // Removed from the route: retired; a backend of that id added again is a new one.
    let without_b = spec(
        r#"[{"name":"w","domains":["a.com"],"backends":[
        {"id":"a","address":"127.0.0.1:1"},{"id":"c","address":"127.0.0.1:3"}]}]"#,
    );
    let t4 = RouteTable::build(&without_b, Some(&t3)).unwrap();
    t4.mark_retired(&t3);
    assert_eq!(retired(&t0), [false, true, false]);
    let t5 = RouteTable::build(&spec(&base.replace("STATE", "ready")), Some(&t4)).unwrap();
    t5.mark_retired(&t4);
    assert_eq!(retired(&t5), [false, false, false]);
    assert_eq!(
        retired(&t0),
        [false, true, false],
        "the old counters stay retired"
    );
    // The whole route gone: every backend retired.
    let other =
        RouteTable::build(&spec(r#"[{"name":"o","domains":["o.com"]}]"#), Some(&t5)).unwrap();
    other.mark_retired(&t5);
    assert_eq!(retired(&t5), [true, true, true]);
    // Marked from an older `previous` after a newer swap (two writers): the newest table
    // decides, so nothing it holds is left retired.
    let t6 = RouteTable::build(&spec(&base.replace("STATE", "ready")), None).unwrap();
    let t7 = RouteTable::build(&spec(&base.replace("STATE", "ready")), Some(&t6)).unwrap();
    t7.mark_retired(&t6);
    t7.mark_retired(&t0);
    assert_eq!(retired(&t7), [false, false, false]);
}
