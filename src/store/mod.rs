//! Durable state in one SQLite file (`berth.db` under the data dir): routes added at run time,
//! their backends, backend states (including overrides on static config routes) and API
//! tokens. WAL mode, schema migrations by `PRAGMA user_version`, one connection behind a mutex
//! (the single writer of this process; other processes such as `berthd token create` wait on
//! SQLite's busy timeout). Every write is one transaction: it happens entirely or not at all.
//!
//! Nothing here runs on the proxy's request path. Calls block on disk I/O (`synchronous=FULL`
//! so a committed change survives a power cut): async callers use `spawn_blocking`.

pub mod deployments;
pub mod registry;
pub mod secrets;
mod tokens;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::route::{BackendSpec, RouteSpec, ServerState};

pub use tokens::{hash_token, TokenAuth, TokenInfo, TOKEN_PREFIX};

/// File name of the database inside the data dir.
pub const DB_FILE: &str = "berth.db";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, newer than this berthd knows ({known}); \
         upgrade berthd or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database: stored {what} {name:?} cannot be read: {message}")]
    Corrupt {
        what: &'static str,
        name: String,
        message: String,
    },
    #[error("token {0} does not exist")]
    TokenNotFound(i64),
    #[error("token {0} is already revoked")]
    TokenRevoked(i64),
    #[error("database: the store lock was poisoned by a panic")]
    Poisoned,
}

/// Who owns a stored route. Config routes are never stored (they come from the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// Static route from the configuration file: read-only at run time.
    Config,
    /// Created through the REST API.
    Api,
    /// Published by the deploy orchestrator.
    Deploy,
}

impl RouteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Config => "config",
            RouteSource::Api => "api",
            RouteSource::Deploy => "deploy",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "config" => Some(RouteSource::Config),
            "api" => Some(RouteSource::Api),
            "deploy" => Some(RouteSource::Deploy),
            _ => None,
        }
    }
}

fn state_str(s: ServerState) -> &'static str {
    match s {
        ServerState::Ready => "ready",
        ServerState::Drain => "drain",
        ServerState::Maint => "maint",
    }
}

fn parse_state(s: &str) -> Option<ServerState> {
    match s {
        "ready" => Some(ServerState::Ready),
        "drain" => Some(ServerState::Drain),
        "maint" => Some(ServerState::Maint),
        _ => None,
    }
}

/// A route kept in the store, with its backends and their states filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRoute {
    pub source: RouteSource,
    /// `name` is always set.
    pub spec: RouteSpec,
}

/// Everything the route registry needs at start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredRoutes {
    /// In creation order.
    pub routes: Vec<StoredRoute>,
    /// States of backends that belong to no stored route (overrides on config routes),
    /// keyed by (route name, backend id).
    pub other_states: HashMap<(String, String), ServerState>,
}

/// One write, applied with others in a single transaction by [`Store::apply`].
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

const MIGRATIONS: &[&str] = &[
    // 1: routes, backends, backend states, API tokens.
    "CREATE TABLE routes (
        name       TEXT PRIMARY KEY,
        source     TEXT NOT NULL CHECK (source IN ('api', 'deploy')),
        spec       TEXT NOT NULL,   -- RouteSpec JSON without name and backends
        position   INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE backends (
        route    TEXT NOT NULL REFERENCES routes(name) ON DELETE CASCADE,
        id       TEXT NOT NULL,
        position INTEGER NOT NULL,
        spec     TEXT NOT NULL,     -- BackendSpec JSON without state
        PRIMARY KEY (route, id)
     ) STRICT;
     CREATE TABLE backend_states (
        route      TEXT NOT NULL,   -- no foreign key: may name a config route
        backend    TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('ready', 'drain', 'maint')),
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (route, backend)
     ) STRICT;
     CREATE TABLE api_tokens (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL,
        hash       BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
     ) STRICT;",
    // 2: deployment history (owned by `deployments`; its SQL is idempotent, so databases
    // where `SqliteDeployments::open` already created the tables migrate cleanly).
    deployments::MIGRATION_SQL,
    // 3: deployment event logs (idempotent for the same reason).
    deployments::EVENTS_MIGRATION_SQL,
    // 4: token scopes; tokens made before scopes existed keep full access.
    tokens::SCOPES_MIGRATION_SQL,
];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn ensure_data_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::DataDir {
            path: dir.into(),
            source,
        })
}

/// The database. Cheap to share behind an `Arc`; every method takes the one connection.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) `data_dir/berth.db` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        ensure_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        {
            use std::os::unix::fs::PermissionsExt;
            // Token hashes and the fleet layout are nobody else's business.
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()?
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Loads every stored route (backends and states filled in) and the state overrides.
    pub fn load_routes(&self) -> Result<StoredRoutes, StoreError> {
        let conn = self.conn()?;
        let mut routes: Vec<StoredRoute> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        {
            for (name, source, spec) in string_triples(
                &conn,
                "SELECT name, source, spec FROM routes ORDER BY position",
            )? {
                let corrupt = |message: String| StoreError::Corrupt {
                    what: "route",
                    name: name.clone(),
                    message,
                };
                let source = RouteSource::parse(&source)
                    .ok_or_else(|| corrupt(format!("unknown source {source:?}")))?;
                let mut spec: RouteSpec =
                    serde_json::from_str(&spec).map_err(|e| corrupt(e.to_string()))?;
                spec.name = Some(name.clone());
                spec.backends.clear();
                index.insert(name, routes.len());
                routes.push(StoredRoute { source, spec });
            }
        }
        {
            let mut q =
                conn.prepare("SELECT route, id, spec FROM backends ORDER BY route, position")?;
            let rows = q.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            for row in rows {
                let (route, id, spec) = row?;
                let mut b: BackendSpec =
                    serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt {
                        what: "backend",
                        name: format!("{route}/{id}"),
                        message: e.to_string(),
                    })?;
                b.id = Some(id);
                b.state = ServerState::Ready;
                if let Some(&i) = index.get(&route) {
                    routes[i].spec.backends.push(b);
                }
            }
        }
        let mut other_states = HashMap::new();
        {
            for (route, backend, state) in
                string_triples(&conn, "SELECT route, backend, state FROM backend_states")?
            {
                let state = parse_state(&state).ok_or_else(|| StoreError::Corrupt {
                    what: "backend state",
                    name: format!("{route}/{backend}"),
                    message: format!("unknown state {state:?}"),
                })?;
                let stored = index.get(&route).and_then(|&i| {
                    routes[i]
                        .spec
                        .backends
                        .iter_mut()
                        .find(|b| b.id() == backend)
                });
                match stored {
                    Some(b) => b.state = state,
                    None => {
                        other_states.insert((route, backend), state);
                    }
                }
            }
        }
        Ok(StoredRoutes {
            routes,
            other_states,
        })
    }

    /// Applies `ops` in order inside one transaction: all of them or none.
    pub fn apply(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ts = now();
        for op in ops {
            match op {
                StoreOp::PutRoute { source, spec } => put_route(&tx, *source, spec, ts)?,
                StoreOp::DeleteRoute { name } => {
                    tx.execute("DELETE FROM routes WHERE name = ?1", params![name])?;
                    tx.execute("DELETE FROM backend_states WHERE route = ?1", params![name])?;
                }
                StoreOp::SetState {
                    route,
                    backend,
                    state,
                } => set_state(&tx, route, backend, *state, ts)?,
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores one route (one transaction).
    pub fn put_route(&self, source: RouteSource, spec: &RouteSpec) -> Result<(), StoreError> {
        self.apply(&[StoreOp::PutRoute {
            source,
            spec: Box::new(spec.clone()),
        }])
    }

    /// Removes one route (one transaction).
    pub fn delete_route(&self, name: &str) -> Result<(), StoreError> {
        self.apply(&[StoreOp::DeleteRoute { name: name.into() }])
    }

    /// Sets one backend state (one transaction).
    pub fn set_backend_state(
        &self,
        route: &str,
        backend: &str,
        state: ServerState,
    ) -> Result<(), StoreError> {
        self.apply(&[StoreOp::SetState {
            route: route.into(),
            backend: backend.into(),
            state,
        }])
    }
}

fn to_json<T: Serialize>(what: &'static str, name: &str, v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        what,
        name: name.into(),
        message: e.to_string(),
    })
}

fn put_route(
    tx: &rusqlite::Transaction<'_>,
    source: RouteSource,
    spec: &RouteSpec,
    ts: i64,
) -> Result<(), StoreError> {
    let name = spec.name();
    let mut bare = spec.clone();
    bare.name = None;
    bare.backends.clear();
    let json = to_json("route", &name, &bare)?;
    let position: i64 = match tx
        .query_row(
            "SELECT position FROM routes WHERE name = ?1",
            params![name],
            |r| r.get(0),
        )
        .optional()?
    {
        Some(p) => p,
        None => tx.query_row(
            "SELECT COALESCE(MAX(position), 0) + 1 FROM routes",
            [],
            |r| r.get(0),
        )?,
    };
    tx.execute(
        "INSERT INTO routes (name, source, spec, position, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (name) DO UPDATE SET source = ?2, spec = ?3, updated_at = ?5",
        params![name, source.as_str(), json, position, ts],
    )?;
    tx.execute("DELETE FROM backends WHERE route = ?1", params![name])?;
    tx.execute("DELETE FROM backend_states WHERE route = ?1", params![name])?;
    for (pos, b) in spec.backends.iter().enumerate() {
        let id = b.id();
        let mut bare = b.clone();
        bare.id = None;
        bare.state = ServerState::Ready;
        let json = to_json("backend", &id, &bare)?;
        tx.execute(
            "INSERT INTO backends (route, id, position, spec) VALUES (?1, ?2, ?3, ?4)",
            params![name, id, pos as i64, json],
        )?;
        if b.state != ServerState::Ready {
            set_state(tx, &name, &id, b.state, ts)?;
        }
    }
    Ok(())
}

fn set_state(
    tx: &rusqlite::Transaction<'_>,
    route: &str,
    backend: &str,
    state: ServerState,
    ts: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO backend_states (route, backend, state, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (route, backend) DO UPDATE SET state = ?3, updated_at = ?4",
        params![route, backend, state_str(state), ts],
    )?;
    Ok(())
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let known = MIGRATIONS.len() as i64;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.into(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tracing::info!(db = %path.display(), version = i + 1, "database schema migrated");
    }
    tx.commit()?;
    Ok(())
}

/// Runs a query whose rows are three text columns (route listings of the load path).
fn string_triples(
    conn: &Connection,
    sql: &str,
) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut q = conn.prepare(sql)?;
    let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: &str) -> RouteSpec {
        serde_json::from_str(json).expect("test route parses")
    }

    #[test]
    fn creates_dir_0700_and_migrates_once() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        drop(s);
        // Re-opening an up-to-date database applies nothing and keeps the data.
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let journal: String = s
            .conn()
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn refuses_a_newer_schema() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = Store::open(tmp.path()).unwrap();
            s.conn()
                .unwrap()
                .pragma_update(None, "user_version", 99)
                .unwrap();
        }
        let err = Store::open(tmp.path()).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn routes_backends_and_states_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let a = route(
            r#"{"name":"a","domains":["a.test"],"path_prefix":"/x","backends":[
                {"id":"one","address":"127.0.0.1:1","weight":3},
                {"address":"127.0.0.1:2","state":"drain"}]}"#,
        );
        let b = route(r#"{"name":"b","domains":["b.test"]}"#);
        s.apply(&[
            StoreOp::PutRoute {
                source: RouteSource::Api,
                spec: Box::new(a.clone()),
            },
            StoreOp::PutRoute {
                source: RouteSource::Deploy,
                spec: Box::new(b.clone()),
            },
            StoreOp::SetState {
                route: "static".into(),
                backend: "s1".into(),
                state: ServerState::Maint,
            },
        ])
        .unwrap();
        drop(s);
        let s = Store::open(tmp.path()).unwrap();
        let got = s.load_routes().unwrap();
        let mut want_a = a.clone();
        want_a.backends[1].id = Some("127.0.0.1:2".into());
        assert_eq!(
            got.routes,
            vec![
                StoredRoute {
                    source: RouteSource::Api,
                    spec: want_a
                },
                StoredRoute {
                    source: RouteSource::Deploy,
                    spec: b
                },
            ]
        );
        assert_eq!(
            got.other_states.get(&("static".into(), "s1".into())),
            Some(&ServerState::Maint)
        );

        // Replacing keeps the position; deleting removes backends and states too.
        let mut a2 = a.clone();
        a2.backends.truncate(1);
        s.put_route(RouteSource::Api, &a2).unwrap();
        s.set_backend_state("static", "s1", ServerState::Ready)
            .unwrap();
        let got = s.load_routes().unwrap();
        assert_eq!(got.routes[0].spec.backends.len(), 1);
        assert_eq!(got.routes[0].spec.name.as_deref(), Some("a"));
        // A `ready` override is kept: it may override a state written in the config file.
        assert_eq!(
            got.other_states.get(&("static".into(), "s1".into())),
            Some(&ServerState::Ready)
        );
        s.delete_route("a").unwrap();
        let got = s.load_routes().unwrap();
        assert_eq!(got.routes.len(), 1);
        let n: i64 = s
            .conn()
            .unwrap()
            .query_row("SELECT COUNT(*) FROM backends", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn a_failing_batch_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let a = route(r#"{"name":"a","domains":["a.test"]}"#);
        s.put_route(RouteSource::Api, &a).unwrap();
        // Config routes are never stored: the CHECK constraint rejects the second op, so the
        // first (deleting "a") must be rolled back.
        let err = s.apply(&[
            StoreOp::DeleteRoute { name: "a".into() },
            StoreOp::PutRoute {
                source: RouteSource::Config,
                spec: Box::new(route(r#"{"name":"c","domains":["c.test"]}"#)),
            },
        ]);
        assert!(err.is_err());
        assert_eq!(s.load_routes().unwrap().routes.len(), 1);
    }
}
