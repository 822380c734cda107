//! The route set as the route registry changes it, without I/O: config routes, their
//! runtime state overrides and stored routes (`RouteSet`); the planner that turns one
//! requested change into the new set plus the store writes that persist it
//! (`RouteSet::plan`); the domain-collision check over config, stored and engine routes
//! (`find_collision`, on `route::HostClaims`, the same check `validate_routes` makes); and
//! errors whose field is relative to what the change carried. `store::registry` runs it:
//! validate → persist → publish.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use thiserror::Error;

pub use super::api::RouteSource;
use super::route::{BackendSpec, HostClaims, RouteFault, RouteSpec, ServerState};

/// A route kept in the store, with its backends and their states filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRoute {
    pub source: RouteSource,
    /// `name` is always set.
    pub spec: RouteSpec,
}

/// One write the planner asks for; the store applies a change's writes in one transaction
/// (`Store::apply`).
#[derive(Clone, Debug, PartialEq)]
pub enum StoreOp {
    /// Inserts or replaces a route (by `spec.name`), its backends and their states.
    PutRoute {
        source: RouteSource,
        spec: Box<RouteSpec>,
    },
    /// Removes a route, its backends and their states. Removing a missing route is a no-op.
    DeleteRoute { name: String },
    /// Sets one backend's state. On a route that is not stored (a config route) this is an
    /// override that wins over the file's state, `ready` included, until changed again.
    SetState {
        route: String,
        backend: String,
        state: ServerState,
    },
}

/// Longest route name or backend id accepted.
pub const MAX_NAME_LEN: usize = 200;

/// One requested change to the route set.
// A change is built once per API call and consumed at once; boxing the spec buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum RouteChange {
    /// Creates or replaces route `name` (the spec's own `name`, if set, must match).
    PutRoute {
        name: String,
        source: RouteSource,
        spec: RouteSpec,
    },
    DeleteRoute {
        name: String,
    },
    /// Creates or replaces backend `id` of route `route` (the spec's `id`, if set, must match).
    PutBackend {
        route: String,
        id: String,
        backend: BackendSpec,
    },
    DeleteBackend {
        route: String,
        id: String,
    },
    /// Allowed on config routes too: runtime state is not configuration (as HAProxy's
    /// `set server state` works on servers from the file). Persisted as an override.
    SetState {
        route: String,
        backend: String,
        state: ServerState,
    },
}

/// What a successful change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Deleted,
}

/// Why a change to the route set is refused (nothing changed).
#[derive(Debug, Error)]
pub enum RouteSetError {
    #[error("route {0:?} does not exist")]
    RouteNotFound(String),
    #[error("route {route:?} has no backend {backend:?}")]
    BackendNotFound { route: String, backend: String },
    #[error(
        "route {0:?} comes from the configuration file and is read-only; change the file and \
         reload berthd instead"
    )]
    ReadOnly(String),
    /// The change is malformed. `field` is relative to the object the change carried (the
    /// route spec, or the backend spec for backend changes).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A domain (with its path prefix) is already served by another route.
    #[error("{field}: {message}")]
    Conflict { field: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
}

/// A route as served, with where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteEntry {
    pub source: RouteSource,
    /// `name` is always set; backend states include runtime overrides.
    pub spec: RouteSpec,
}

impl RouteEntry {
    pub fn name(&self) -> String {
        self.spec.name()
    }
    /// Config routes cannot be changed at run time (except backend states).
    pub fn read_only(&self) -> bool {
        self.source == RouteSource::Config
    }
}

/// The route set the registry owns: config routes, their runtime states, stored routes.
#[derive(Clone, Debug, Default)]
pub struct RouteSet {
    pub statics: Vec<RouteSpec>,
    /// Config routes the daemon derives from settings rather than `routes:` (the API's own
    /// route on `api.domain`): read-only like `statics`, kept across config reloads.
    pub pinned: Vec<RouteSpec>,
    /// Runtime states of config-route backends, keyed by (route, backend id).
    pub overrides: HashMap<(String, String), ServerState>,
    pub stored: Vec<StoredRoute>,
}

impl RouteSet {
    /// Config routes (with runtime states) then stored routes, as served.
    pub fn entries(&self) -> Vec<RouteEntry> {
        let statics = self.statics.iter().chain(self.pinned.iter()).map(|s| {
            let mut spec = s.clone();
            let name = spec.name();
            for b in &mut spec.backends {
                if let Some(st) = self.overrides.get(&(name.clone(), b.id())) {
                    b.state = *st;
                }
            }
            spec.name = Some(name);
            RouteEntry {
                source: RouteSource::Config,
                spec,
            }
        });
        let stored = self.stored.iter().map(|r| RouteEntry {
            source: r.source,
            spec: r.spec.clone(),
        });
        statics.chain(stored).collect()
    }

    fn is_static(&self, name: &str) -> bool {
        self.statics
            .iter()
            .chain(self.pinned.iter())
            .any(|s| s.name() == name)
    }

    fn stored_mut(&mut self, name: &str) -> Option<&mut StoredRoute> {
        self.stored.iter_mut().find(|r| r.spec.name() == name)
    }

    /// Applies one change to this (scratch) copy and returns the store op(s) that persist it.
    pub fn plan(&mut self, change: &RouteChange) -> Result<(Outcome, Vec<StoreOp>), RouteSetError> {
        match change {
            RouteChange::PutRoute { name, source, spec } => {
                check_name("name", name)?;
                if self.is_static(name) {
                    return Err(RouteSetError::ReadOnly(name.clone()));
                }
                if *source == RouteSource::Config {
                    return Err(RouteSetError::Internal(
                        "config routes are not stored".into(),
                    ));
                }
                same_as_path("name", "route name", spec.name.as_ref(), name)?;
                let mut spec = spec.clone();
                spec.name = Some(name.clone());
                for (k, b) in spec.backends.iter_mut().enumerate() {
                    check_name(&format!("backends[{k}].id"), &b.id())?;
                    // Store the id explicitly so it survives an address change.
                    b.id = Some(b.id());
                }
                let op = StoreOp::PutRoute {
                    source: *source,
                    spec: Box::new(spec.clone()),
                };
                let outcome = match self.stored_mut(name) {
                    Some(r) => {
                        r.source = *source;
                        r.spec = spec;
                        Outcome::Updated
                    }
                    None => {
                        self.stored.push(StoredRoute {
                            source: *source,
                            spec,
                        });
                        Outcome::Created
                    }
                };
                Ok((outcome, vec![op]))
            }
            RouteChange::DeleteRoute { name } => {
                if self.is_static(name) {
                    return Err(RouteSetError::ReadOnly(name.clone()));
                }
                let before = self.stored.len();
                self.stored.retain(|r| r.spec.name() != *name);
                if self.stored.len() == before {
                    return Err(RouteSetError::RouteNotFound(name.clone()));
                }
                Ok((
                    Outcome::Deleted,
                    vec![StoreOp::DeleteRoute { name: name.clone() }],
                ))
            }
            RouteChange::PutBackend { route, id, backend } => {
                if self.is_static(route) {
                    return Err(RouteSetError::ReadOnly(route.clone()));
                }
                check_name("id", id)?;
                same_as_path("id", "backend id", backend.id.as_ref(), id)?;
                let r = self
                    .stored_mut(route)
                    .ok_or_else(|| RouteSetError::RouteNotFound(route.clone()))?;
                let mut b = backend.clone();
                b.id = Some(id.clone());
                let outcome = match r.spec.backends.iter_mut().find(|x| x.id() == *id) {
                    Some(slot) => {
                        *slot = b;
                        Outcome::Updated
                    }
                    None => {
                        r.spec.backends.push(b);
                        Outcome::Created
                    }
                };
                let op = StoreOp::PutRoute {
                    source: r.source,
                    spec: Box::new(r.spec.clone()),
                };
                Ok((outcome, vec![op]))
            }
            RouteChange::DeleteBackend { route, id } => {
                if self.is_static(route) {
                    return Err(RouteSetError::ReadOnly(route.clone()));
                }
                let r = self
                    .stored_mut(route)
                    .ok_or_else(|| RouteSetError::RouteNotFound(route.clone()))?;
                let before = r.spec.backends.len();
                r.spec.backends.retain(|b| b.id() != *id);
                if r.spec.backends.len() == before {
                    return Err(RouteSetError::BackendNotFound {
                        route: route.clone(),
                        backend: id.clone(),
                    });
                }
                let op = StoreOp::PutRoute {
                    source: r.source,
                    spec: Box::new(r.spec.clone()),
                };
                Ok((Outcome::Deleted, vec![op]))
            }
            RouteChange::SetState {
                route,
                backend,
                state,
            } => {
                let not_found = || RouteSetError::BackendNotFound {
                    route: route.clone(),
                    backend: backend.clone(),
                };
                if let Some(s) = self
                    .statics
                    .iter()
                    .chain(self.pinned.iter())
                    .find(|s| s.name() == *route)
                {
                    if !s.backends.iter().any(|b| b.id() == *backend) {
                        return Err(not_found());
                    }
                    self.overrides
                        .insert((route.clone(), backend.clone()), *state);
                } else {
                    let r = self
                        .stored_mut(route)
                        .ok_or_else(|| RouteSetError::RouteNotFound(route.clone()))?;
                    let b = r
                        .spec
                        .backends
                        .iter_mut()
                        .find(|b| b.id() == *backend)
                        .ok_or_else(not_found)?;
                    b.state = *state;
                }
                Ok((
                    Outcome::Updated,
                    vec![StoreOp::SetState {
                        route: route.clone(),
                        backend: backend.clone(),
                        state: *state,
                    }],
                ))
            }
        }
    }
}

/// A name the body repeats (`field`) must equal the one in the path.
fn same_as_path(
    field: &str,
    what: &str,
    given: Option<&String>,
    path: &str,
) -> Result<(), RouteSetError> {
    match given {
        Some(given) if given != path => Err(RouteSetError::Invalid {
            field: field.into(),
            message: format!(
                "{given:?} differs from the {what} in the path ({path:?}); omit it or make them \
                 equal"
            ),
        }),
        _ => Ok(()),
    }
}

fn check_name(field: &str, name: &str) -> Result<(), RouteSetError> {
    let invalid = |message: String| RouteSetError::Invalid {
        field: field.into(),
        message,
    };
    if name.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "is {} bytes long (at most {MAX_NAME_LEN})",
            name.len()
        )));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(invalid(format!("{name:?} contains control characters")));
    }
    Ok(())
}

/// A domain collision found before building the table.
pub struct Collision {
    /// Index (into the entries) of the route whose field collides.
    pub entry: usize,
    /// Field relative to that route's spec (`domains[0]`, `aliases[1]`).
    pub field: String,
    pub message: String,
    /// The route lists the same host twice itself (a malformed spec, not a conflict).
    pub same_route: bool,
}

/// Finds a (host, path prefix) pair claimed twice. Routes in `changed` are checked last, so a
/// collision is reported against the route being changed, naming the route that owns it.
pub fn find_collision(entries: &[RouteEntry], changed: &HashSet<String>) -> Option<Collision> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| changed.contains(&entries[i].name()));
    let mut claims = HostClaims::default();
    for i in order {
        let Err(c) = claims.claim(i, &entries[i].spec) else {
            continue;
        };
        let (d, on) = (&c.host, c.on());
        let message = if c.owner == i {
            format!("domain \"{d}\"{on} is listed twice in this route")
        } else {
            let o = &entries[c.owner];
            format!(
                "domain \"{d}\"{on} is already served by route {:?} (source: {})",
                o.name(),
                o.source.as_str()
            )
        };
        return Some(Collision {
            entry: i,
            field: c.field.to_string(),
            message,
            same_route: c.owner == i,
        });
    }
    None
}

/// Config + stored entries followed by the engine's routes.
pub fn with_dynamic(
    mut entries: Vec<RouteEntry>,
    dynamic: &BTreeMap<String, Vec<RouteSpec>>,
) -> Vec<RouteEntry> {
    entries.extend(dynamic.values().flatten().map(|spec| {
        let mut spec = spec.clone();
        spec.name = Some(spec.name());
        RouteEntry {
            source: RouteSource::Deploy,
            spec,
        }
    }));
    entries
}

/// The engine's routes by key (`app/NAME`, `discovered/NAME`).
pub type EngineRoutes = BTreeMap<String, Vec<RouteSpec>>;

/// Rewrites a table-build fault so its field is relative to what the change carried.
pub fn relative_error(
    entries: &[RouteEntry],
    carried: &HashMap<String, &RouteChange>,
    f: RouteFault,
) -> RouteSetError {
    let Some(entry) = entries.get(f.index) else {
        let e = f.into_error("routes");
        return RouteSetError::Invalid {
            field: e.field,
            message: e.message,
        };
    };
    let name = entry.name();
    let field = match carried.get(&name) {
        Some(RouteChange::PutRoute { .. }) => f.in_route(),
        Some(RouteChange::PutBackend { id, .. })
            if f.backend.is_some()
                && f.backend == entry.spec.backends.iter().position(|b| b.id() == *id) =>
        {
            if f.field.is_empty() {
                "id".to_string()
            } else {
                f.field.clone()
            }
        }
        _ => format!("route {name:?}: {}", f.in_route()),
    };
    RouteSetError::Invalid {
        field,
        message: f.message,
    }
}

/// A table-build fault at load time, naming the route.
pub fn absolute_error(entries: &[RouteEntry], f: RouteFault) -> RouteSetError {
    match entries.get(f.index) {
        Some(entry) => RouteSetError::Invalid {
            field: format!(
                "{} route {:?}: {}",
                entry.source.as_str(),
                entry.name(),
                f.in_route()
            ),
            message: f.message,
        },
        None => {
            let e = f.into_error("routes");
            RouteSetError::Invalid {
                field: e.field,
                message: e.message,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::RouteTable;

    fn spec(json: &str) -> RouteSpec {
        serde_json::from_str(json).expect("test spec parses")
    }

    fn set() -> RouteSet {
        RouteSet {
            statics: vec![spec(
                r#"{"name":"site","domains":["a.test"],"backends":[{"address":"127.0.0.1:1"}]}"#,
            )],
            ..RouteSet::default()
        }
    }

    #[test]
    fn plan_refuses_config_routes_and_checks_names() {
        let mut s = set();
        let err = s
            .plan(&RouteChange::DeleteRoute {
                name: "site".into(),
            })
            .unwrap_err();
        assert!(matches!(err, RouteSetError::ReadOnly(_)), "{err}");
        let err = s
            .plan(&RouteChange::PutRoute {
                name: "x".repeat(MAX_NAME_LEN + 1),
                source: RouteSource::Api,
                spec: spec(r#"{"domains":["b.test"]}"#),
            })
            .unwrap_err();
        assert!(
            matches!(&err, RouteSetError::Invalid { field, .. } if field == "name"),
            "{err}"
        );
        let err = s
            .plan(&RouteChange::PutRoute {
                name: "api".into(),
                source: RouteSource::Api,
                spec: spec(r#"{"name":"web","domains":["b.test"]}"#),
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "name: \"web\" differs from the route name in the path (\"api\"); omit it or make \
             them equal"
        );
        let (outcome, ops) = s
            .plan(&RouteChange::PutRoute {
                name: "api".into(),
                source: RouteSource::Api,
                spec: spec(r#"{"domains":["b.test"],"backends":[{"address":"127.0.0.1:2"}]}"#),
            })
            .expect("a new route is planned");
        assert_eq!(outcome, Outcome::Created);
        assert_eq!(ops.len(), 1);
        assert_eq!(s.entries().len(), 2);
        // Runtime state of a config backend is an override, not a stored route.
        let (_, ops) = s
            .plan(&RouteChange::SetState {
                route: "site".into(),
                backend: "127.0.0.1:1".into(),
                state: ServerState::Drain,
            })
            .expect("state of a config backend");
        assert!(matches!(ops[0], StoreOp::SetState { .. }));
        assert_eq!(s.entries()[0].spec.backends[0].state, ServerState::Drain);
    }

    #[test]
    fn collisions_are_reported_against_the_changed_route() {
        let mut s = set();
        s.plan(&RouteChange::PutRoute {
            name: "api".into(),
            source: RouteSource::Api,
            spec: spec(r#"{"domains":["b.test"],"aliases":["a.test"]}"#),
        })
        .expect("planned; collisions are checked on the whole set");
        let changed: HashSet<String> = ["api".to_string()].into();
        let c = find_collision(&s.entries(), &changed).expect("a.test is claimed twice");
        assert_eq!(c.entry, 1);
        assert_eq!(c.field, "aliases[0]");
        assert!(!c.same_route);
        assert_eq!(
            c.message,
            "domain \"a.test\" is already served by route \"site\" (source: config)"
        );
        let twice = vec![RouteEntry {
            source: RouteSource::Api,
            spec: spec(r#"{"name":"t","domains":["c.test","c.test"]}"#),
        }];
        let c = find_collision(&twice, &HashSet::new()).expect("listed twice");
        assert!(c.same_route);
        assert_eq!(c.field, "domains[1]");
    }

    #[test]
    fn build_faults_become_fields_relative_to_the_change() {
        let entries = vec![RouteEntry {
            source: RouteSource::Api,
            spec: spec(
                r#"{"name":"api","domains":["b.test"],"backends":[
                    {"id":"one","address":"127.0.0.1:1"},
                    {"id":"two","address":"127.0.0.1:2","weight":5000}]}"#,
            ),
        }];
        let specs: Vec<RouteSpec> = entries.iter().map(|e| e.spec.clone()).collect();
        let fault = RouteTable::try_build(&specs, None).unwrap_err();
        assert_eq!((fault.index, fault.backend), (0, Some(1)));
        let put_backend = RouteChange::PutBackend {
            route: "api".into(),
            id: "two".into(),
            backend: entries[0].spec.backends[1].clone(),
        };
        let put_route = RouteChange::PutRoute {
            name: "api".into(),
            source: RouteSource::Api,
            spec: entries[0].spec.clone(),
        };
        let field = |carried: HashMap<String, &RouteChange>| match relative_error(
            &entries,
            &carried,
            fault.clone(),
        ) {
            RouteSetError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field([("api".into(), &put_backend)].into()), "weight");
        assert_eq!(
            field([("api".into(), &put_route)].into()),
            "backends[1].weight"
        );
        assert_eq!(field(HashMap::new()), "route \"api\": backends[1].weight");
        match absolute_error(&entries, fault.clone()) {
            RouteSetError::Invalid { field, .. } => {
                assert_eq!(field, "api route \"api\": backends[1].weight")
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            fault.into_error("routes").field,
            "routes[0].backends[1].weight"
        );
    }
}
