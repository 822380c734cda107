//! Durable state in one SQLite file (`berth.db` under the data dir): routes added at run time,
//! their backends, backend states (including overrides on static config routes) and API
//! tokens. WAL mode, schema migrations by `PRAGMA user_version`, one connection behind a mutex
//! (the single writer of this process; other processes such as `berthd token create` wait on
//! SQLite's busy timeout). Every write is one transaction: it happens entirely or not at all.
//!
//! Nothing here runs on the proxy's request path. Calls block on disk I/O (`synchronous=FULL`
//! so a committed change survives a power cut): async callers use `spawn_blocking`.

pub mod deployments;
mod frontends;
pub mod registry;
pub mod secrets;
mod tokens;
pub mod traffic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use thiserror::Error;

use crate::model::route::{BackendSpec, RouteSpec, ServerState};

pub use crate::model::routeset::{RouteSource, StoreOp, StoredRoute};
pub use tokens::{hash_token, TokenAuth, TokenInfo, TOKEN_PREFIX};

use deployments::DeploymentStoreError;

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
    Sql(rusqlite::Error),
    /// The disk (or the file system's quota) is full: the change was not made.
    #[error("disk full: the change was not stored ({0}); free space in the data dir")]
    DiskFull(String),
    /// The store cannot take writes (read-only or unopenable data dir, damaged database):
    /// berthd serves what it could read, and refuses changes until this is fixed.
    #[error("the store is unavailable for changes: {0}")]
    Unavailable(String),
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
    #[error(
        "database {path} is damaged ({problem}); restore a backup (`berthd backup` makes one) \
         or move the file aside to start empty (README, \"Backup and restore\")"
    )]
    Damaged { path: PathBuf, problem: String },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
            Some(rusqlite::ErrorCode::ReadOnly) => {
                StoreError::Unavailable(format!("{e} (the data dir or berth.db is read-only)"))
            }
            _ => StoreError::Sql(e),
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

/// Everything the route registry needs at start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredRoutes {
    /// In creation order.
    pub routes: Vec<StoredRoute>,
    /// States of backends that belong to no stored route (overrides on config routes),
    /// keyed by (route name, backend id).
    pub other_states: HashMap<(String, String), ServerState>,
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
    // 5: deleted apps. `deployments::MIGRATION_SQL` (step 2) creates this table too since it
    // was added there; databases migrated before that get it here (only this path migrates
    // berth.db now, nothing re-runs step 2).
    "CREATE TABLE IF NOT EXISTS deleted_apps (
        app        TEXT PRIMARY KEY,
        deleted_at INTEGER NOT NULL
     );",
    // 6: checkpoints of deployments paused or handed over during an upgrade.
    deployments::CHECKPOINTS_MIGRATION_SQL,
    // 7: frontends and pools created through the API.
    frontends::MIGRATION_SQL,
    // 8: app gates (pause, maintenance), owned by `deployments`.
    deployments::GATES_MIGRATION_SQL,
    // 9: manual version splits of apps (A/B, canary by hand), owned by `traffic`.
    traffic::MIGRATION_SQL,
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
    /// Set when the store could not be opened for writing (see [`Store::open_degraded`]).
    degraded: Option<String>,
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
        let conn = open_connection(&path)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path,
            degraded: None,
        })
    }

    /// The store when [`Store::open`] failed with `cause` (read-only or unopenable data
    /// dir, a file that is not a database): the last readable `berth.db` opened read-only
    /// (routes and tokens keep working), or else an empty in-memory database. Every write
    /// fails with [`StoreError::Unavailable`] naming `cause`.
    pub fn open_degraded(data_dir: &Path, cause: &str) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let read_only = || -> Result<Connection, rusqlite::Error> {
            use rusqlite::OpenFlags;
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
            // A read-only directory cannot hold the WAL index: fall back to reading the
            // main file as immutable (the last checkpointed state).
            let conn = Connection::open_with_flags(&path, flags)
                .and_then(|c| {
                    c.query_row("SELECT COUNT(*) FROM routes", [], |_| Ok(()))
                        .map(|_| c)
                })
                .or_else(|_| {
                    let uri = format!("file:{}?immutable=1", path.display());
                    let c = Connection::open_with_flags(uri, flags)?;
                    c.query_row("SELECT COUNT(*) FROM routes", [], |_| Ok(()))?;
                    Ok::<_, rusqlite::Error>(c)
                })?;
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version != MIGRATIONS.len() as i64 {
                return Err(rusqlite::Error::InvalidQuery);
            }
            Ok(conn)
        };
        let conn = match path.is_file().then(read_only) {
            Some(Ok(c)) => {
                tracing::warn!(db = %path.display(), "store opened read-only: serving its last state");
                c
            }
            _ => {
                tracing::warn!(db = %path.display(), "store unreadable: starting with an empty in-memory store");
                let mut c = Connection::open_in_memory()?;
                if let Err(e) = migrate(&mut c, &path) {
                    tracing::error!(error = %e, "in-memory store: migration failed");
                }
                c
            }
        };
        // Belt and braces: SQLite itself refuses every write on this connection.
        let _ = conn.pragma_update(None, "query_only", "ON");
        Ok(Store {
            conn: Mutex::new(conn),
            path,
            degraded: Some(cause.to_string()),
        })
    }

    /// Why the store takes no writes, when it was opened degraded.
    pub fn degraded(&self) -> Option<&str> {
        self.degraded.as_deref()
    }

    fn writable(&self) -> Result<(), StoreError> {
        match &self.degraded {
            Some(cause) => Err(StoreError::Unavailable(cause.clone())),
            None => Ok(()),
        }
    }

    /// `PRAGMA quick_check`: `Ok(None)` when the database is intact, else what SQLite found
    /// (first lines). A damaged store must stop reconcile (it could act on wrong data), not
    /// the proxy.
    pub fn quick_check(&self) -> Result<Option<String>, StoreError> {
        quick_check(&*self.conn()?)
    }

    /// Copies the live database into `dest` with SQLite's online backup (a consistent
    /// snapshot, also while berthd writes) and checks the copy.
    pub fn backup_to(&self, dest: &Path) -> Result<(), StoreError> {
        backup_connection(&*self.conn()?, dest)
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
        self.writable()?;
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

/// The deploy engine's history lives in the same database, behind the same one connection
/// (one writer, one durability setting, one migration path).
impl deployments::DeploymentDb for Store {
    fn with_db<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DeploymentStoreError>,
    ) -> Result<T, DeploymentStoreError> {
        blocking(|| {
            // rusqlite rolls a half transaction back on drop, so a poisoned lock is still
            // usable.
            let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
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

/// Runs blocking SQLite work called from async code (the deploy engine, the registry's
/// writer): on a multi-threaded tokio runtime the worker first hands its other tasks to
/// another thread (`block_in_place`), so an fsync never stalls the proxy's or the API's
/// tasks queued behind it; elsewhere (a current-thread runtime, a plain thread) it just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Opens the database file `path` with the store's settings (WAL, `synchronous=FULL`,
/// foreign keys, busy timeout, mode 0600) and brings its schema up to date: the one place
/// where a connection to `berth.db` is configured and migrated.
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    {
        use std::os::unix::fs::PermissionsExt;
        // Token hashes and the fleet layout are nobody else's business.
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(open_err)?;
    // FULL: a committed deployment record or route change is on disk (the WAL fsynced)
    // before anything acts on it. NORMAL could lose the last commits on a power cut.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(open_err)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

fn quick_check(conn: &Connection) -> Result<Option<String>, StoreError> {
    let mut q = conn.prepare("PRAGMA quick_check(20)")?;
    let lines: Vec<String> = q
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if lines.len() == 1 && lines[0] == "ok" {
        Ok(None)
    } else {
        Ok(Some(lines.join("; ")))
    }
}

fn backup_connection(conn: &Connection, dest: &Path) -> Result<(), StoreError> {
    use rusqlite::backup::Backup;
    let tmp = dest.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut out = Connection::open(&tmp).map_err(|source| StoreError::Open {
            path: tmp.clone(),
            source,
        })?;
        {
            let b = Backup::new(conn, &mut out)?;
            // Whole database in steps of 256 pages, yielding to the writer in between.
            b.run_to_completion(256, std::time::Duration::from_millis(5), None)?;
        }
        // A backup file is one self-contained file, not a WAL pair.
        out.pragma_update(None, "journal_mode", "DELETE")?;
        if let Some(problem) = quick_check(&out)? {
            return Err(StoreError::Damaged {
                path: tmp.clone(),
                problem,
            });
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, dest).map_err(|source| StoreError::DataDir {
        path: dest.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// `berthd backup FILE`: a consistent copy of `data_dir/berth.db` (WAL included) in `dest`,
/// taken with SQLite's online backup while berthd may be running, and checked with
/// `quick_check`. Restore: stop berthd, remove `berth.db-wal` and `berth.db-shm`, copy the
/// file to `data_dir/berth.db`, start berthd (README, "Backup and restore").
pub fn backup(data_dir: &Path, dest: &Path) -> Result<(), StoreError> {
    let path = data_dir.join(DB_FILE);
    if !path.is_file() {
        return Err(StoreError::DataDir {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no database here"),
        });
    }
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if let Some(problem) = quick_check(&conn)? {
        return Err(StoreError::Damaged { path, problem });
    }
    backup_connection(&conn, dest)
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
    use deployments::{DeployState, DeploymentRecord};

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

    fn fill(s: &Store, n: usize) {
        let ops: Vec<StoreOp> = (0..n)
            .map(|i| StoreOp::PutRoute {
                source: RouteSource::Api,
                spec: Box::new(route(&format!(
                    r#"{{"name":"r{i}","domains":["r{i}.test"],"backends":[{{"address":"127.0.0.1:{}"}}]}}"#,
                    1000 + i
                ))),
            })
            .collect();
        s.apply(&ops).unwrap();
    }

    #[test]
    fn one_connection_full_durability_and_deployments_share_it() {
        use deployments::DeploymentStore;
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let sync: i64 = s
            .conn()
            .unwrap()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let rec: DeploymentRecord = serde_json::from_value(serde_json::json!({
            "id": "d1", "app": "web",
            "spec": {"image": "demo:v1", "domains": ["web.test"]},
            "image_id": null, "state": "running", "reason": null, "created_by": "t",
            "created_at": 1, "finished_at": null, "rollback_of": null
        }))
        .unwrap();
        s.insert(&rec).unwrap();
        s.finish("d1", DeployState::Succeeded, None, 2).unwrap();
        assert_eq!(s.current("web").unwrap().unwrap().id, "d1");
        assert_eq!(s.quick_check().unwrap(), None);
        // SqliteDeployments opens the same schema through the same migration path.
        drop(s);
        let d = deployments::SqliteDeployments::open(&tmp.path().join(DB_FILE)).unwrap();
        assert_eq!(d.current("web").unwrap().unwrap().id, "d1");
    }

    #[test]
    fn quick_check_finds_a_damaged_page() {
        use std::io::{Seek, SeekFrom, Write};
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = Store::open(tmp.path()).unwrap();
            fill(&s, 300);
        }
        // Closing the last connection checkpointed the WAL into berth.db: damage a b-tree
        // page in the middle of the file (not the header page).
        let path = tmp.path().join(DB_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len > 8 * 4096, "{len}");
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(4 * 4096)).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap();
        drop(f);
        match Store::open(tmp.path()) {
            Ok(s) => {
                let problem = s.quick_check().unwrap().expect("damage found");
                assert!(!problem.is_empty());
                // A backup of a damaged store is refused, naming the recovery.
                let err = backup(tmp.path(), &tmp.path().join("b.db")).unwrap_err();
                assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
                assert!(err.to_string().contains("restore a backup"), "{err}");
            }
            // Damage in the schema itself fails the open: also refused, never silent.
            Err(e) => assert!(e.to_string().contains("malformed"), "{e}"),
        }
    }

    #[test]
    fn backup_while_open_then_restore() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let s = Store::open(&data).unwrap();
        fill(&s, 5);
        // The live store has uncheckpointed commits in its WAL: the backup must have them.
        let file = tmp.path().join("berth-backup.db");
        backup(&data, &file).unwrap();
        s.delete_route("r0").unwrap();
        s.put_route(
            RouteSource::Api,
            &route(r#"{"name":"late","domains":["late.test"]}"#),
        )
        .unwrap();
        drop(s);
        // Restore, as README says: stop berthd, remove -wal/-shm, copy the file, start.
        for ext in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(data.join(format!("{DB_FILE}{ext}")));
        }
        std::fs::copy(&file, data.join(DB_FILE)).unwrap();
        let s = Store::open(&data).unwrap();
        assert_eq!(s.quick_check().unwrap(), None);
        let names: Vec<String> = s
            .load_routes()
            .unwrap()
            .routes
            .iter()
            .map(|r| r.spec.name())
            .collect();
        assert_eq!(names, ["r0", "r1", "r2", "r3", "r4"]);
        // The backup is one self-contained file, not a WAL pair.
        assert!(!tmp.path().join("berth-backup.db-wal").exists());
    }

    #[test]
    fn degraded_store_serves_its_last_state_and_refuses_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let secret;
        {
            let s = Store::open(tmp.path()).unwrap();
            fill(&s, 3);
            secret = s.create_token("t").unwrap().1;
        }
        let s = Store::open_degraded(tmp.path(), "data dir is read-only (test)").unwrap();
        assert_eq!(s.degraded(), Some("data dir is read-only (test)"));
        assert_eq!(s.load_routes().unwrap().routes.len(), 3);
        assert!(
            s.verify_token(&secret).unwrap().is_some(),
            "tokens still work"
        );
        let err = s.delete_route("r0").unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("read-only (test)")),
            "{err}"
        );
        // Writes that bypass `apply` are refused by SQLite itself (query_only).
        let err = s.create_token("x").unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert_eq!(s.load_routes().unwrap().routes.len(), 3);

        // Nothing readable (the data dir is a file): an empty store that refuses writes.
        let file = tmp.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let cause = Store::open(&file).unwrap_err().to_string();
        let s = Store::open_degraded(&file, &cause).unwrap();
        assert!(s.load_routes().unwrap().routes.is_empty());
        assert!(matches!(
            s.put_route(
                RouteSource::Api,
                &route(r#"{"name":"a","domains":["a.test"]}"#)
            ),
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn a_full_disk_is_reported_as_such() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let pages: i64 = s
            .conn()
            .unwrap()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        // The database may not grow: what a full disk does to SQLite (SQLITE_FULL).
        s.conn()
            .unwrap()
            .pragma_update(None, "max_page_count", pages)
            .unwrap();
        let mut err = None;
        for i in 0..200 {
            let big = "x".repeat(3000);
            let spec = route(&format!(
                r#"{{"name":"big{i}","domains":["big{i}.test"],"path_prefix":"/{big}"}}"#
            ));
            if let Err(e) = s.put_route(RouteSource::Api, &spec) {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("the database filled up");
        assert!(matches!(err, StoreError::DiskFull(_)), "{err}");
        assert!(err.to_string().starts_with("disk full"), "{err}");
    }

    #[test]
    fn a_database_from_before_deleted_apps_is_migrated() {
        use deployments::DeploymentStore;
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = Store::open(tmp.path()).unwrap();
            let c = s.conn().unwrap();
            // As a database migrated to version 4 before `deleted_apps` had its own step.
            c.execute_batch("DROP TABLE deleted_apps; PRAGMA user_version = 4;")
                .unwrap();
        }
        let s = Store::open(tmp.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert!(s.apps().unwrap().is_empty());
        assert_eq!(s.delete_app("web", true, 1).unwrap(), 0);
    }
}
