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

use thiserror::Error;

use crate::model::route::{RouteFault, RouteSpec, RouteTable};
use crate::model::routeset::{
    absolute_error, find_collision, relative_error, with_dynamic, EngineRoutes, RouteSet,
};
pub use crate::model::routeset::{Outcome, RouteChange, RouteEntry, RouteSetError, MAX_NAME_LEN};

use super::{RouteSource, Store, StoreError};

/// Why the registry refused or failed a change; nothing changed.
#[derive(Debug, Error)]
pub enum ChangeError {
    /// The change is not valid on the route set (names the field, see [`RouteSetError`]).
    #[error(transparent)]
    Rejected(#[from] RouteSetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Where a new table goes. The daemon implements it for the proxy's table holder, so this
/// module needs nothing from the proxy.
pub trait TablePublisher: Send + Sync {
    /// The table being served now (the base for counters carried into the next one).
    fn current(&self) -> Arc<RouteTable>;
    /// Swaps in `table` atomically.
    fn publish(&self, table: RouteTable);
}

/// The route set: static routes, stored routes, and the single writer that changes them.
pub struct RouteRegistry {
    store: Arc<Store>,
    publisher: Arc<dyn TablePublisher>,
    inner: tokio::sync::Mutex<RouteSet>,
    /// The deploy engine's routes by key. Held while any table is built and published.
    published: Mutex<BTreeMap<String, Vec<RouteSpec>>>,
    listing: ArcSwap<Vec<RouteEntry>>,
}

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
        let inner = RouteSet {
            statics,
            pinned: Vec::new(),
            overrides: loaded.other_states,
            stored: loaded.routes,
        };
        let entries = inner.entries();
        let stored_names: HashSet<String> = inner.stored.iter().map(|r| r.spec.name()).collect();
        if let Some(c) = find_collision(&entries, &stored_names) {
            let e = &entries[c.entry];
            return Err(RouteSetError::Conflict {
                field: format!("stored route {:?}: {}", e.name(), c.field),
                message: format!(
                    "{}; remove one of them (DELETE /v1/routes/{} or edit the config file)",
                    c.message,
                    e.name()
                ),
            }
            .into());
        }
        // At boot every backend starts at full weight (no slow start): no previous table.
        let specs: Vec<RouteSpec> = entries.iter().map(|e| e.spec.clone()).collect();
        let table = RouteTable::try_build(&specs, None).map_err(|e| absolute_error(&entries, e))?;
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
            return Err(RouteSetError::Conflict {
                field: format!("route {:?}: {}", entries[c.entry].name(), c.field),
                message: c.message,
            }
            .into());
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
                RouteSetError::Invalid {
                    field,
                    message: c.message,
                }
            } else {
                RouteSetError::Conflict {
                    field,
                    message: c.message,
                }
            }
            .into());
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
    fn publish_config(&self, inner: &mut RouteSet, next: RouteSet) -> Result<(), ChangeError> {
        let stored: HashSet<String> = next.stored.iter().map(|r| r.spec.name()).collect();
        if let Some(s) = next
            .statics
            .iter()
            .chain(next.pinned.iter())
            .find(|s| stored.contains(&s.name()))
        {
            return Err(RouteSetError::Conflict {
                field: format!("routes: {:?}", s.name()),
                message: "a route with this name was created through the API; delete it there \
                          first or rename the config route"
                    .into(),
            }
            .into());
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
            return Err(RouteSetError::Conflict {
                field: format!("config route {:?}: {}", entries[c.entry].name(), c.field),
                message: c.message,
            }
            .into());
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

fn build(entries: &[RouteEntry], current: &RouteTable) -> Result<RouteTable, RouteFault> {
    let specs: Vec<RouteSpec> = entries.iter().map(|e| e.spec.clone()).collect();
    RouteTable::try_build(&specs, Some(current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::route::{BackendSpec, ServerState};
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
                ChangeError::Rejected(RouteSetError::Conflict { field, message }) => {
                    let owner = message.split('"').nth(3).unwrap_or("");
                    format!("conflict {field} \"{owner}\"")
                }
                ChangeError::Rejected(RouteSetError::Invalid { field, .. }) => {
                    format!("invalid {field}")
                }
                ChangeError::Rejected(RouteSetError::ReadOnly(_)) => "read_only".into(),
                ChangeError::Rejected(RouteSetError::RouteNotFound(_)) => "route_not_found".into(),
                ChangeError::Rejected(RouteSetError::BackendNotFound { .. }) => {
                    "backend_not_found".into()
                }
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
        assert!(
            matches!(err, ChangeError::Rejected(RouteSetError::Conflict { .. })),
            "{err}"
        );
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
            matches!(err, ChangeError::Rejected(RouteSetError::Conflict { .. }))
                && err.to_string().contains("\"web\""),
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
        assert!(
            matches!(err, ChangeError::Rejected(RouteSetError::ReadOnly(_))),
            "{err}"
        );
        let err = reg
            .apply(put(
                "other",
                r#"{"domains":["api.test"],"backends":[{"address":"127.0.0.1:3"}]}"#,
            ))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ChangeError::Rejected(RouteSetError::Conflict { .. })),
            "{err}"
        );
        reg.replace_statics(Vec::new()).await.unwrap();
        assert!(sink.current().route("static").is_none());
        assert!(sink.current().route("berth-api").is_some());
        assert!(reg.route("berth-api").is_some());
    }
}
