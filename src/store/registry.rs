//! The one write path for the route set. Static routes come from the config file; the rest
//! live in the store. Every change (from the API, and later from deploys) goes through
//! [`RouteRegistry::apply`], which, holding the writer lock:
//! 1. computes the complete new route set (config routes + stored routes + the change),
//! 2. validates it by building the new `RouteTable` (domain conflicts are reported as such),
//! 3. persists the change in ONE SQLite transaction,
//! 4. and only then publishes the table.
//!
//! A failure at any step leaves the store, the served table and this registry as they were.
//!
//! The deploy engine's routes (`app/NAME`, `discovered/NAME`) are a third input, kept in
//! memory only (the engine rebuilds them from Docker and its own history on start) and set
//! through [`RouteRegistry::set_dynamic`]. Every table build, from any writer, happens under
//! one short synchronous lock (`published`) that holds the dynamic routes, so a registry change
//! and an engine change can never publish over each other.
//! Readers never take the writer lock: the listing is an `ArcSwap` snapshot, and the proxy
//! reads its own table snapshot.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use serde::Serialize;
use thiserror::Error;

use crate::model::route::{
    BackendSpec, PathPrefix, RouteError, RouteSpec, RouteTable, ServerState,
};

use super::{RouteSource, Store, StoreError, StoreOp, StoredRoute};

/// Longest route name or backend id accepted.
pub const MAX_NAME_LEN: usize = 200;

/// Where a new table goes. The daemon implements it for the proxy's table holder, so this
/// module needs nothing from the proxy.
pub trait TablePublisher: Send + Sync {
    /// The table being served now (the base for counters carried into the next one).
    fn current(&self) -> Arc<RouteTable>;
    /// Swaps in `table` atomically.
    fn publish(&self, table: RouteTable);
}

/// One requested change to the route set.
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

#[derive(Debug, Error)]
pub enum ChangeError {
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
    #[error(transparent)]
    Store(#[from] StoreError),
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

#[derive(Clone, Debug, Default)]
struct Inner {
    statics: Vec<RouteSpec>,
    /// Config routes the daemon derives from settings rather than `routes:` (the API's own
    /// route on `api.domain`): read-only like `statics`, kept across config reloads.
    pinned: Vec<RouteSpec>,
    /// Runtime states of config-route backends, keyed by (route, backend id).
    overrides: HashMap<(String, String), ServerState>,
    stored: Vec<StoredRoute>,
}

impl Inner {
    fn entries(&self) -> Vec<RouteEntry> {
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
    fn plan(&mut self, change: &RouteChange) -> Result<(Outcome, Vec<StoreOp>), ChangeError> {
        match change {
            RouteChange::PutRoute { name, source, spec } => {
                check_name("name", name)?;
                if self.is_static(name) {
                    return Err(ChangeError::ReadOnly(name.clone()));
                }
                if *source == RouteSource::Config {
                    return Err(ChangeError::Internal("config routes are not stored".into()));
                }
                if let Some(n) = &spec.name {
                    if n != name {
                        return Err(ChangeError::Invalid {
                            field: "name".into(),
                            message: format!(
                                "{n:?} differs from the route name in the path ({name:?}); \
                                 omit it or make them equal"
                            ),
                        });
                    }
                }
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
                    return Err(ChangeError::ReadOnly(name.clone()));
                }
                let before = self.stored.len();
                self.stored.retain(|r| r.spec.name() != *name);
                if self.stored.len() == before {
                    return Err(ChangeError::RouteNotFound(name.clone()));
                }
                Ok((
                    Outcome::Deleted,
                    vec![StoreOp::DeleteRoute { name: name.clone() }],
                ))
            }
            RouteChange::PutBackend { route, id, backend } => {
                if self.is_static(route) {
                    return Err(ChangeError::ReadOnly(route.clone()));
                }
                check_name("id", id)?;
                if let Some(given) = &backend.id {
                    if given != id {
                        return Err(ChangeError::Invalid {
                            field: "id".into(),
                            message: format!(
                                "{given:?} differs from the backend id in the path ({id:?}); \
                                 omit it or make them equal"
                            ),
                        });
                    }
                }
                let r = self
                    .stored_mut(route)
                    .ok_or_else(|| ChangeError::RouteNotFound(route.clone()))?;
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
                    return Err(ChangeError::ReadOnly(route.clone()));
                }
                let r = self
                    .stored_mut(route)
                    .ok_or_else(|| ChangeError::RouteNotFound(route.clone()))?;
                let before = r.spec.backends.len();
                r.spec.backends.retain(|b| b.id() != *id);
                if r.spec.backends.len() == before {
                    return Err(ChangeError::BackendNotFound {
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
                let not_found = || ChangeError::BackendNotFound {
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
                        .ok_or_else(|| ChangeError::RouteNotFound(route.clone()))?;
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

fn check_name(field: &str, name: &str) -> Result<(), ChangeError> {
    let invalid = |message: String| ChangeError::Invalid {
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
struct Collision {
    /// Index (into the entries) of the route whose field collides.
    entry: usize,
    /// Field relative to that route's spec (`domains[0]`, `aliases[1]`).
    field: String,
    message: String,
    /// The route lists the same host twice itself (a malformed spec, not a conflict).
    same_route: bool,
}

/// Finds a (host, path prefix) pair claimed twice. Routes in `changed` are checked last, so a
/// collision is reported against the route being changed, naming the route that owns it.
fn find_collision(entries: &[RouteEntry], changed: &HashSet<String>) -> Option<Collision> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| changed.contains(&entries[i].name()));
    let mut claims: HashMap<(String, String), usize> = HashMap::new();
    for i in order {
        let e = &entries[i];
        let prefix = e
            .spec
            .path_prefix
            .clone()
            .unwrap_or_else(PathPrefix::root)
            .as_str()
            .to_string();
        let hosts = e
            .spec
            .domains
            .iter()
            .enumerate()
            .map(|(k, d)| (format!("domains[{k}]"), d))
            .chain(
                e.spec
                    .aliases
                    .iter()
                    .enumerate()
                    .map(|(k, d)| (format!("aliases[{k}]"), d)),
            );
        for (field, d) in hosts {
            let key = (d.to_string(), prefix.clone());
            let on = if prefix == "/" {
                String::new()
            } else {
                format!(" with path prefix {prefix:?}")
            };
            if let Some(&owner) = claims.get(&key) {
                let message = if owner == i {
                    format!("domain \"{d}\"{on} is listed twice in this route")
                } else {
                    let o = &entries[owner];
                    format!(
                        "domain \"{d}\"{on} is already served by route {:?} (source: {})",
                        o.name(),
                        o.source.as_str()
                    )
                };
                return Some(Collision {
                    entry: i,
                    field,
                    message,
                    same_route: owner == i,
                });
            }
            claims.insert(key, i);
        }
    }
    None
}

/// The route set: static routes, stored routes, and the single writer that changes them.
pub struct RouteRegistry {
    store: Arc<Store>,
    publisher: Arc<dyn TablePublisher>,
    inner: tokio::sync::Mutex<Inner>,
    /// The deploy engine's routes by key. Held while any table is built and published.
    published: Mutex<BTreeMap<String, Vec<RouteSpec>>>,
    listing: ArcSwap<Vec<RouteEntry>>,
}

/// Config + stored entries followed by the engine's routes.
fn with_dynamic(
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
type EngineRoutes = BTreeMap<String, Vec<RouteSpec>>;

impl RouteRegistry {
    /// Loads the stored routes, builds the table from them plus `statics`, and publishes it.
    /// Fails (naming the routes) if stored routes conflict with the config file.
    pub async fn open(
        store: Arc<Store>,
        statics: Vec<RouteSpec>,
        publisher: Arc<dyn TablePublisher>,
    ) -> Result<RouteRegistry, ChangeError> {
        let s = store.clone();
        let loaded = tokio::task::spawn_blocking(move || s.load_routes())
            .await
            .map_err(|e| ChangeError::Internal(format!("store task: {e}")))??;
        let inner = Inner {
            statics,
            pinned: Vec::new(),
            overrides: loaded.other_states,
            stored: loaded.routes,
        };
        let entries = inner.entries();
        let stored_names: HashSet<String> = inner.stored.iter().map(|r| r.spec.name()).collect();
        if let Some(c) = find_collision(&entries, &stored_names) {
            let e = &entries[c.entry];
            return Err(ChangeError::Conflict {
                field: format!("stored route {:?}: {}", e.name(), c.field),
                message: format!(
                    "{}; remove one of them (DELETE /v1/routes/{} or edit the config file)",
                    c.message,
                    e.name()
                ),
            });
        }
        // At boot every backend starts at full weight (no slow start): no previous table.
        let specs: Vec<RouteSpec> = entries.iter().map(|e| e.spec.clone()).collect();
        let table = RouteTable::build(&specs, None).map_err(|e| absolute_error(&entries, e))?;
        publisher.publish(table);
        tracing::info!(
            config_routes = inner.statics.len(),
            stored_routes = inner.stored.len(),
            "route table loaded"
        );
        Ok(RouteRegistry {
            store,
            publisher,
            inner: tokio::sync::Mutex::new(inner),
            published: Mutex::new(BTreeMap::new()),
            listing: ArcSwap::from_pointee(entries),
        })
    }

    fn published(&self) -> MutexGuard<'_, BTreeMap<String, Vec<RouteSpec>>> {
        // Only mutated after a successful build; a poisoned lock still holds consistent data.
        self.published.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every engine route under `key` (`app/NAME`, `discovered/NAME`) in one table
    /// swap; an empty list removes them. Not persisted. Refused (changing nothing) when a
    /// domain is already served by another route.
    pub fn set_dynamic(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), ChangeError> {
        let mut dynamic = self.published();
        let (entries, next) = self.with_key(&dynamic, key, routes)?;
        let table =
            build(&entries, &self.publisher.current()).map_err(|e| absolute_error(&entries, e))?;
        self.publisher.publish(table);
        self.listing.store(Arc::new(entries));
        *dynamic = next;
        Ok(())
    }

    /// What [`RouteRegistry::set_dynamic`] would refuse, without changing anything: the deploy
    /// API asks before it accepts a deploy, so a domain another route serves is a 409 then,
    /// not a failed deployment later.
    pub fn check_dynamic(&self, key: &str, routes: Vec<RouteSpec>) -> Result<(), ChangeError> {
        let dynamic = self.published();
        self.with_key(&dynamic, key, routes).map(|_| ())
    }

    /// The entries (and engine routes) with `key` replaced by `routes`, checked for domain
    /// collisions against config, stored and other engine routes.
    fn with_key(
        &self,
        dynamic: &EngineRoutes,
        key: &str,
        routes: Vec<RouteSpec>,
    ) -> Result<(Vec<RouteEntry>, EngineRoutes), ChangeError> {
        let mut next = dynamic.clone();
        let changed: HashSet<String> = routes.iter().map(|r| r.name()).collect();
        if routes.is_empty() {
            next.remove(key);
        } else {
            next.insert(key.to_string(), routes);
        }
        // Config and stored routes as committed (the listing minus the engine's).
        let base: Vec<RouteEntry> = self
            .listing
            .load()
            .iter()
            .filter(|e| e.source != RouteSource::Deploy)
            .cloned()
            .collect();
        let entries = with_dynamic(base, &next);
        if let Some(c) = find_collision(&entries, &changed) {
            return Err(ChangeError::Conflict {
                field: format!("route {:?}: {}", entries[c.entry].name(), c.field),
                message: c.message,
            });
        }
        Ok((entries, next))
    }

    /// Every route as served: config routes first, then stored ones in creation order.
    pub fn routes(&self) -> Arc<Vec<RouteEntry>> {
        self.listing.load_full()
    }

    pub fn route(&self, name: &str) -> Option<RouteEntry> {
        self.listing
            .load()
            .iter()
            .find(|r| r.name() == name)
            .cloned()
    }

    /// The table being served now.
    pub fn table(&self) -> Arc<RouteTable> {
        self.publisher.current()
    }

    /// The store this registry persists to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Applies one change: validate, persist, publish. See the module docs.
    pub async fn apply(&self, change: RouteChange) -> Result<Outcome, ChangeError> {
        let outcomes = self.apply_all(vec![change]).await?;
        outcomes
            .into_iter()
            .next()
            .ok_or_else(|| ChangeError::Internal("no outcome".into()))
    }

    /// Applies several changes atomically: one validation, one transaction, one publish.
    /// If any change is rejected, none is applied.
    pub async fn apply_all(&self, changes: Vec<RouteChange>) -> Result<Vec<Outcome>, ChangeError> {
        let mut inner = self.inner.lock().await;
        let mut next = inner.clone();
        let mut ops = Vec::new();
        let mut outcomes = Vec::new();
        // Routes whose spec a change carried, to report errors relative to it.
        let mut carried: HashMap<String, &RouteChange> = HashMap::new();
        for change in &changes {
            let (outcome, mut o) = next.plan(change)?;
            outcomes.push(outcome);
            ops.append(&mut o);
            match change {
                RouteChange::PutRoute { name, .. } => {
                    carried.insert(name.clone(), change);
                }
                RouteChange::PutBackend { route, .. } => {
                    carried.insert(route.clone(), change);
                }
                _ => {}
            }
        }
        let dynamic = self.published();
        let entries = with_dynamic(next.entries(), &dynamic);
        let changed: HashSet<String> = carried.keys().cloned().collect();
        if let Some(c) = find_collision(&entries, &changed) {
            let e = &entries[c.entry];
            let field = match carried.get(&e.name()) {
                Some(RouteChange::PutRoute { .. }) => c.field,
                _ => format!("route {:?}: {}", e.name(), c.field),
            };
            return Err(if c.same_route {
                ChangeError::Invalid {
                    field,
                    message: c.message,
                }
            } else {
                ChangeError::Conflict {
                    field,
                    message: c.message,
                }
            });
        }
        let table = build(&entries, &self.publisher.current())
            .map_err(|e| relative_error(&entries, &carried, e))?;

        // Persisted while holding `published` (one short SQLite transaction), so no engine
        // route change can be published between this validation and this publish. The
        // worker thread hands its other tasks off while it waits for the fsync.
        super::blocking(|| self.store.apply(&ops))?;

        self.publisher.publish(table);
        self.listing.store(Arc::new(entries));
        drop(dynamic);
        *inner = next;
        Ok(outcomes)
    }

    /// Replaces the static routes (config reload). Stored routes and overrides stay. Nothing
    /// is persisted; an invalid combination changes nothing.
    pub async fn replace_statics(&self, statics: Vec<RouteSpec>) -> Result<(), ChangeError> {
        let mut inner = self.inner.lock().await;
        let mut next = inner.clone();
        next.statics = statics;
        self.publish_config(&mut inner, next)
    }

    /// Adds (or replaces, by name) a read-only config route that is not in `routes:` and
    /// survives config reloads: the daemon's route for the API on `api.domain`. Refused,
    /// changing nothing, when another route serves its domain.
    pub async fn pin_static(&self, spec: RouteSpec) -> Result<(), ChangeError> {
        let mut inner = self.inner.lock().await;
        let mut next = inner.clone();
        let name = spec.name();
        next.pinned.retain(|s| s.name() != name);
        next.pinned.push(spec);
        self.publish_config(&mut inner, next)
    }

    /// Validates and publishes a new set of config routes (`statics` + `pinned`).
    fn publish_config(&self, inner: &mut Inner, next: Inner) -> Result<(), ChangeError> {
        let stored: HashSet<String> = next.stored.iter().map(|r| r.spec.name()).collect();
        if let Some(s) = next
            .statics
            .iter()
            .chain(next.pinned.iter())
            .find(|s| stored.contains(&s.name()))
        {
            return Err(ChangeError::Conflict {
                field: format!("routes: {:?}", s.name()),
                message: "a route with this name was created through the API; delete it there \
                          first or rename the config route"
                    .into(),
            });
        }
        let dynamic = self.published();
        let entries = with_dynamic(next.entries(), &dynamic);
        let static_names: HashSet<String> = next
            .statics
            .iter()
            .chain(next.pinned.iter())
            .map(|s| s.name())
            .collect();
        if let Some(c) = find_collision(&entries, &static_names) {
            return Err(ChangeError::Conflict {
                field: format!("config route {:?}: {}", entries[c.entry].name(), c.field),
                message: c.message,
            });
        }
        let table =
            build(&entries, &self.publisher.current()).map_err(|e| absolute_error(&entries, e))?;
        self.publisher.publish(table);
        self.listing.store(Arc::new(entries));
        drop(dynamic);
        *inner = next;
        Ok(())
    }
}

fn build(entries: &[RouteEntry], current: &RouteTable) -> Result<RouteTable, RouteError> {
    let specs: Vec<RouteSpec> = entries.iter().map(|e| e.spec.clone()).collect();
    RouteTable::build(&specs, Some(current))
}

/// Splits `routes[i].rest` into (i, rest).
fn split_field(field: &str) -> Option<(usize, &str)> {
    let rest = field.strip_prefix("routes[")?;
    let end = rest.find(']')?;
    let i = rest[..end].parse().ok()?;
    let rest = &rest[end + 1..];
    Some((i, rest.strip_prefix('.').unwrap_or(rest)))
}

/// Rewrites a table-build error so its field is relative to what the change carried.
fn relative_error(
    entries: &[RouteEntry],
    carried: &HashMap<String, &RouteChange>,
    e: RouteError,
) -> ChangeError {
    let Some((i, rest)) = split_field(&e.field) else {
        return ChangeError::Invalid {
            field: e.field,
            message: e.message,
        };
    };
    let Some(entry) = entries.get(i) else {
        return ChangeError::Invalid {
            field: e.field,
            message: e.message,
        };
    };
    let name = entry.name();
    let field = match carried.get(&name) {
        Some(RouteChange::PutRoute { .. }) => rest.to_string(),
        Some(RouteChange::PutBackend { id, .. }) => {
            let k = entry.spec.backends.iter().position(|b| b.id() == *id);
            match k.and_then(|k| rest.strip_prefix(&format!("backends[{k}]"))) {
                Some(r) => {
                    let r = r.strip_prefix('.').unwrap_or(r);
                    if r.is_empty() {
                        "id".to_string()
                    } else {
                        r.to_string()
                    }
                }
                None => format!("route {name:?}: {rest}"),
            }
        }
        _ => format!("route {name:?}: {rest}"),
    };
    ChangeError::Invalid {
        field,
        message: e.message,
    }
}

/// A table-build error at load time, naming the route.
fn absolute_error(entries: &[RouteEntry], e: RouteError) -> ChangeError {
    match split_field(&e.field).and_then(|(i, rest)| entries.get(i).map(|x| (x, rest))) {
        Some((entry, rest)) => ChangeError::Invalid {
            field: format!("{} route {:?}: {rest}", entry.source.as_str(), entry.name()),
            message: e.message,
        },
        None => ChangeError::Invalid {
            field: e.field,
            message: e.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records published tables instead of serving them.
    #[derive(Default)]
    struct Sink {
        current: Mutex<Arc<RouteTable>>,
        published: std::sync::atomic::AtomicUsize,
    }

    impl TablePublisher for Sink {
        fn current(&self) -> Arc<RouteTable> {
            self.current.lock().unwrap().clone()
        }
        fn publish(&self, table: RouteTable) {
            *self.current.lock().unwrap() = Arc::new(table);
            self.published
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn spec(json: &str) -> RouteSpec {
        serde_json::from_str(json).expect("test spec parses")
    }

    fn backend(json: &str) -> BackendSpec {
        serde_json::from_str(json).expect("test backend parses")
    }

    async fn open(dir: &std::path::Path, sink: Arc<Sink>) -> RouteRegistry {
        let store = Arc::new(Store::open(dir).unwrap());
        let statics = vec![spec(
            r#"{"name":"static","domains":["static.test"],"backends":[{"id":"s1","address":"127.0.0.1:1"}]}"#,
        )];
        RouteRegistry::open(store, statics, sink).await.unwrap()
    }

    fn put(name: &str, json: &str) -> RouteChange {
        RouteChange::PutRoute {
            name: name.into(),
            source: RouteSource::Api,
            spec: spec(json),
        }
    }

    #[tokio::test]
    async fn changes_are_validated_persisted_and_published() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(Sink::default());
        let reg = open(tmp.path(), sink.clone()).await;
        assert_eq!(reg.routes().len(), 1);
        assert!(reg.routes()[0].read_only());

        let out = reg
            .apply(put(
                "web",
                r#"{"domains":["web.test"],"backends":[{"id":"a","address":"127.0.0.1:2"}]}"#,
            ))
            .await
            .unwrap();
        assert_eq!(out, Outcome::Created);
        assert!(sink.current().route("web").is_some());

        let out = reg
            .apply(RouteChange::PutBackend {
                route: "web".into(),
                id: "b".into(),
                backend: backend(r#"{"address":"127.0.0.1:3","weight":5}"#),
            })
            .await
            .unwrap();
        assert_eq!(out, Outcome::Created);
        reg.apply(RouteChange::SetState {
            route: "web".into(),
            backend: "a".into(),
            state: ServerState::Drain,
        })
        .await
        .unwrap();
        reg.apply(RouteChange::SetState {
            route: "static".into(),
            backend: "s1".into(),
            state: ServerState::Maint,
        })
        .await
        .unwrap();
        let t = sink.current();
        let web = t.route("web").unwrap();
        assert_eq!(web.backends.len(), 2);
        assert_eq!(web.backends[0].state, ServerState::Drain);
        assert_eq!(web.backends[1].weight, 5);
        assert_eq!(
            t.route("static").unwrap().backends[0].state,
            ServerState::Maint
        );

        // A fresh registry on the same store serves the same thing.
        let sink2 = Arc::new(Sink::default());
        drop(reg);
        let reg2 = open(tmp.path(), sink2.clone()).await;
        let t2 = sink2.current();
        let web2 = t2.route("web").unwrap();
        assert_eq!(web2.backends[0].state, ServerState::Drain);
        assert_eq!(web2.backends[1].weight, 5);
        assert_eq!(
            t2.route("static").unwrap().backends[0].state,
            ServerState::Maint
        );
        assert_eq!(reg2.routes().len(), 2);
    }

    #[tokio::test]
    async fn rejected_changes_change_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(Sink::default());
        let reg = open(tmp.path(), sink.clone()).await;
        reg.apply(put("web", r#"{"domains":["web.test"]}"#))
            .await
            .unwrap();
        let published = sink.published.load(std::sync::atomic::Ordering::SeqCst);

        let cases: Vec<(RouteChange, &str)> = vec![
            (
                put(
                    "other",
                    r#"{"domains":["x.test"],"aliases":["static.test"]}"#,
                ),
                "conflict aliases[0] \"static\"",
            ),
            (
                put("web2", r#"{"domains":["WEB.test."]}"#),
                "conflict domains[0] \"web\"",
            ),
            (
                put("dup", r#"{"domains":["d.test"],"aliases":["D.test"]}"#),
                "invalid aliases[0]",
            ),
            (put("static", r#"{"domains":["s.test"]}"#), "read_only"),
            (
                put("bad", r#"{"name":"other","domains":["b.test"]}"#),
                "invalid name",
            ),
            (put("bad", r#"{"domains":[]}"#), "invalid domains"),
            (
                put(
                    "bad",
                    r#"{"domains":["b.test"],"backends":[{"address":"1.2.3.4:5","weight":5000}]}"#,
                ),
                "invalid backends[0].weight",
            ),
            (
                RouteChange::PutBackend {
                    route: "web".into(),
                    id: "a".into(),
                    backend: backend(r#"{"address":"1.2.3.4:5","weight":5000}"#),
                },
                "invalid weight",
            ),
            (
                RouteChange::DeleteRoute {
                    name: "static".into(),
                },
                "read_only",
            ),
            (
                RouteChange::DeleteRoute {
                    name: "nope".into(),
                },
                "route_not_found",
            ),
            (
                RouteChange::DeleteBackend {
                    route: "web".into(),
                    id: "zz".into(),
                },
                "backend_not_found",
            ),
            (
                RouteChange::SetState {
                    route: "static".into(),
                    backend: "zz".into(),
                    state: ServerState::Drain,
                },
                "backend_not_found",
            ),
        ];
        for (change, want) in cases {
            let err = reg.apply(change.clone()).await.expect_err(want);
            let got = match &err {
                ChangeError::Conflict { field, message } => {
                    let owner = message.split('"').nth(3).unwrap_or("");
                    format!("conflict {field} \"{owner}\"")
                }
                ChangeError::Invalid { field, .. } => format!("invalid {field}"),
                ChangeError::ReadOnly(_) => "read_only".into(),
                ChangeError::RouteNotFound(_) => "route_not_found".into(),
                ChangeError::BackendNotFound { .. } => "backend_not_found".into(),
                other => format!("{other}"),
            };
            assert_eq!(got, want, "{change:?}: {err}");
        }
        assert_eq!(
            sink.published.load(std::sync::atomic::Ordering::SeqCst),
            published,
            "nothing was published"
        );
        assert_eq!(reg.routes().len(), 2);
        let stored = reg.store().load_routes().unwrap();
        assert_eq!(stored.routes.len(), 1);
        assert!(stored.other_states.is_empty());
    }

    #[tokio::test]
    async fn a_failed_commit_publishes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(Sink::default());
        let reg = open(tmp.path(), sink.clone()).await;
        reg.apply(put("web", r#"{"domains":["web.test"]}"#))
            .await
            .unwrap();
        let published = sink.published.load(std::sync::atomic::Ordering::SeqCst);
        // Make every write to the routes table fail inside the transaction.
        reg.store()
            .conn()
            .unwrap()
            .execute_batch(
                "CREATE TRIGGER no_writes BEFORE UPDATE ON routes
                 BEGIN SELECT RAISE(ABORT, 'disk on fire'); END;",
            )
            .unwrap();
        let err = reg
            .apply(put("web", r#"{"domains":["web.test","new.test"]}"#))
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::Store(_)), "{err}");
        assert_eq!(
            sink.published.load(std::sync::atomic::Ordering::SeqCst),
            published,
            "a change that was not persisted must not be served"
        );
        assert_eq!(reg.route("web").unwrap().spec.domains.len(), 1);
        assert_eq!(sink.current().route("web").unwrap().spec.domains.len(), 1);
        // The writer is not stuck: once the store works again, changes go through.
        reg.store()
            .conn()
            .unwrap()
            .execute_batch("DROP TRIGGER no_writes")
            .unwrap();
        reg.apply(put("web", r#"{"domains":["web.test","new.test"]}"#))
            .await
            .unwrap();
        assert_eq!(sink.current().route("web").unwrap().spec.domains.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_are_serialised() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(Sink::default());
        let reg = Arc::new(open(tmp.path(), sink.clone()).await);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let reg = reg.clone();
                tokio::spawn(async move {
                    reg.apply(put(
                        &format!("r{i}"),
                        &format!(r#"{{"domains":["r{i}.test"]}}"#),
                    ))
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Outcome::Created);
        }
        // No lost update: every route is served, listed and stored.
        assert_eq!(sink.current().routes().len(), 21);
        assert_eq!(reg.routes().len(), 21);
        assert_eq!(reg.store().load_routes().unwrap().routes.len(), 20);
    }

    #[tokio::test]
    async fn batch_is_all_or_nothing_and_reload_keeps_stored_routes() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(Sink::default());
        let reg = open(tmp.path(), sink.clone()).await;
        let err = reg
            .apply_all(vec![
                put("a", r#"{"domains":["a.test"]}"#),
                put("b", r#"{"domains":["a.test"]}"#),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::Conflict { .. }), "{err}");
        assert_eq!(reg.routes().len(), 1);
        reg.apply(put("a", r#"{"domains":["a.test"]}"#))
            .await
            .unwrap();

        // Reload: the static route changes, the stored one stays.
        reg.replace_statics(vec![spec(r#"{"name":"static","domains":["new.test"]}"#)])
            .await
            .unwrap();
        let t = sink.current();
        assert!(t.route("a").is_some());
        assert_eq!(
            t.route("static").unwrap().spec.domains[0].as_str(),
            "new.test"
        );
        // A reload that collides with a stored route is refused.
        let err = reg
            .replace_statics(vec![spec(r#"{"name":"s","domains":["a.test"]}"#)])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("already served by route \"a\""),
            "{err}"
        );
        assert!(sink.current().route("static").is_some());
    }

    #[tokio::test]
    async fn pinned_routes_are_read_only_survive_reloads_and_conflict() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = Arc::new(Sink::default());
        let reg = open(tmp.path(), sink.clone()).await;
        reg.apply(put(
            "web",
            r#"{"domains":["web.test"],"backends":[{"id":"a","address":"127.0.0.1:2"}]}"#,
        ))
        .await
        .unwrap();
        // Claiming a domain another route serves is refused and changes nothing.
        let clash = spec(
            r#"{"name":"berth-api","domains":["web.test"],"backends":[{"address":"127.0.0.1:9"}]}"#,
        );
        let err = reg.pin_static(clash).await.unwrap_err();
        assert!(
            matches!(err, ChangeError::Conflict { .. }) && err.to_string().contains("\"web\""),
            "{err}"
        );
        assert!(sink.current().route("berth-api").is_none());
        let api = spec(
            r#"{"name":"berth-api","domains":["api.test"],"backends":[{"address":"127.0.0.1:9"}]}"#,
        );
        reg.pin_static(api).await.unwrap();
        let entry = reg.route("berth-api").expect("listed");
        assert!(entry.read_only());
        assert!(sink.current().route("berth-api").is_some());
        // Read-only through the API, and a reload of the file keeps it.
        let err = reg
            .apply(RouteChange::DeleteRoute {
                name: "berth-api".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::ReadOnly(_)), "{err}");
        let err = reg
            .apply(put(
                "other",
                r#"{"domains":["api.test"],"backends":[{"address":"127.0.0.1:3"}]}"#,
            ))
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::Conflict { .. }), "{err}");
        reg.replace_statics(Vec::new()).await.unwrap();
        assert!(sink.current().route("static").is_none());
        assert!(sink.current().route("berth-api").is_some());
        assert!(reg.route("berth-api").is_some());
    }
}
