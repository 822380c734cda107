//! Deployment history and each app's current deployment, in SQLite. Self-contained: the
//! tables come from `MIGRATION_SQL` (idempotent), the functions take a `&Connection`, and
//! `DeploymentStore` is the narrow trait the deploy engine uses. Marking a deployment
//! succeeded and making it the app's current one happen in one transaction. App secrets are
//! stored only sealed (`store::secrets`), in their own column: the `spec` JSON carries their
//! names and fingerprints, and a row with a secret still in clear is refused.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};
use thiserror::Error;

use crate::model::deploy::AppSpec;
use crate::model::traffic::AppGate;

/// Tables of this module. Idempotent; run it once per connection or register it as one step
/// of the store's `user_version` migrations.
pub const MIGRATION_SQL: &str = "
CREATE TABLE IF NOT EXISTS deployments (
    id          TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    spec        TEXT NOT NULL,
    image_id    TEXT,
    state       TEXT NOT NULL,
    reason      TEXT,
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER,
    rollback_of TEXT,
    secrets     TEXT
);
CREATE INDEX IF NOT EXISTS deployments_by_app ON deployments(app, created_at);
CREATE TABLE IF NOT EXISTS app_current (
    app        TEXT PRIMARY KEY,
    deployment TEXT REFERENCES deployments(id)
);
CREATE TABLE IF NOT EXISTS deleted_apps (
    app        TEXT PRIMARY KEY,
    deleted_at INTEGER NOT NULL
);
";

/// The event log of each deployment (the stages the status page's timeline and
/// `GET /v1/deployments/{id}/events` replay after a restart). Idempotent, like `MIGRATION_SQL`.
pub const EVENTS_MIGRATION_SQL: &str = "
CREATE TABLE IF NOT EXISTS deploy_events (
    deployment TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    stage      TEXT NOT NULL,
    message    TEXT NOT NULL,
    PRIMARY KEY (deployment, seq)
);
";

/// Where an in-flight deployment stands when its process hands it to a successor (upgrade):
/// who may write it (`owner`, a process id), whom it was handed to, and the engine's own JSON
/// (plan position and what it did so far). A row exists only while a deployment is paused at
/// a step boundary or handed over; `finish` deletes it. Idempotent, like `MIGRATION_SQL`.
pub const CHECKPOINTS_MIGRATION_SQL: &str = "
CREATE TABLE IF NOT EXISTS deploy_checkpoints (
    deployment TEXT PRIMARY KEY,
    owner      INTEGER NOT NULL,
    handed_to  INTEGER,
    checkpoint TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Each app's gate (pause, maintenance; `model::traffic::AppGate` as JSON), so both survive
/// a restart and an upgrade. Idempotent, like `MIGRATION_SQL`.
pub const GATES_MIGRATION_SQL: &str = "
CREATE TABLE IF NOT EXISTS app_gates (
    app        TEXT PRIMARY KEY,
    gate       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// A stored deployment checkpoint (see `CHECKPOINTS_MIGRATION_SQL`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The process that paused the deployment (and wrote it until then).
    pub owner: u32,
    /// The process it was handed to, once handed over.
    pub handed_to: Option<u32>,
    /// The engine's JSON.
    pub data: String,
}

/// Event logs kept per app: those of older deployments are deleted when one finishes.
pub const EVENT_LOGS_KEPT: usize = 50;

/// One stored progress event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Unix milliseconds.
    pub at: i64,
    pub stage: String,
    pub message: String,
}

#[derive(Debug, Error)]
pub enum DeploymentStoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("deployment {id}: stored {what} is unreadable: {message}")]
    Corrupt {
        id: String,
        what: &'static str,
        message: String,
    },
}

pub use crate::model::api::{DeployState, DeploymentRecord};

/// What the deploy engine needs from storage.
pub trait DeploymentStore: Send + Sync + 'static {
    fn insert(&self, rec: &DeploymentRecord) -> Result<(), DeploymentStoreError>;
    fn set_image(&self, id: &str, image_id: &str) -> Result<(), DeploymentStoreError>;
    /// Records the outcome; `Succeeded` also makes it the app's current deployment (atomically).
    fn finish(
        &self,
        id: &str,
        state: DeployState,
        reason: Option<&str>,
        at: i64,
    ) -> Result<(), DeploymentStoreError>;
    fn get(&self, id: &str) -> Result<Option<DeploymentRecord>, DeploymentStoreError>;
    /// Newest first.
    fn list(&self, app: &str, limit: usize) -> Result<Vec<DeploymentRecord>, DeploymentStoreError>;
    /// The deployment that should be running for `app` (None: never deployed, or stopped).
    fn current(&self, app: &str) -> Result<Option<DeploymentRecord>, DeploymentStoreError>;
    /// Every app with a row, and its current deployment id.
    fn apps(&self) -> Result<Vec<(String, Option<String>)>, DeploymentStoreError>;
    /// Deployments still marked running (interrupted ones, after a crash).
    fn unfinished(&self) -> Result<Vec<DeploymentRecord>, DeploymentStoreError>;
    /// The app should run nothing (after `stop`).
    fn clear_current(&self, app: &str) -> Result<(), DeploymentStoreError>;
    /// Forgets an app (see [`delete_app`]); returns how many deployments it had.
    fn delete_app(
        &self,
        app: &str,
        keep_history: bool,
        at: i64,
    ) -> Result<usize, DeploymentStoreError>;
    /// Appends one progress event to a deployment's log.
    fn add_event(&self, deployment: &str, ev: &StoredEvent) -> Result<(), DeploymentStoreError>;
    /// A deployment's event log, oldest first (empty when none was kept).
    fn events(&self, deployment: &str) -> Result<Vec<StoredEvent>, DeploymentStoreError>;
    /// Every app's persisted gate (pause, maintenance).
    fn gates(&self) -> Result<Vec<(String, AppGate)>, DeploymentStoreError>;
    /// Persists an app's gate; an empty gate removes the row.
    fn set_gate(&self, app: &str, gate: &AppGate, at: i64) -> Result<(), DeploymentStoreError>;
    /// Every app's persisted manual version split (`store::traffic`).
    fn traffic_splits(
        &self,
    ) -> Result<Vec<(String, crate::model::canary::VersionSplit)>, DeploymentStoreError>;
    /// Persists an app's manual version split; `None` removes it.
    fn set_traffic_split(
        &self,
        app: &str,
        split: Option<&crate::model::canary::VersionSplit>,
        at: i64,
    ) -> Result<(), DeploymentStoreError>;
    /// Records where deployment `id` stands, written by process `owner` (not handed over).
    fn save_checkpoint(&self, id: &str, owner: u32, data: &str)
        -> Result<(), DeploymentStoreError>;
    /// Hands the checkpointed deployment `id` from process `from` (now its owner of record:
    /// the one `to` waits for) to process `to`.
    fn hand_over(&self, id: &str, from: u32, to: u32) -> Result<(), DeploymentStoreError>;
    /// The checkpoint of deployment `id`, if it has one.
    fn checkpoint(&self, id: &str) -> Result<Option<StoredCheckpoint>, DeploymentStoreError>;
    /// Forgets the checkpoint of `id` (its owner carries on writing it).
    fn drop_checkpoint(&self, id: &str) -> Result<(), DeploymentStoreError>;
}

/// Creates this module's tables; adds the `secrets` column to tables made before it existed.
pub fn migrate(conn: &Connection) -> Result<(), DeploymentStoreError> {
    conn.execute_batch(MIGRATION_SQL)?;
    conn.execute_batch(EVENTS_MIGRATION_SQL)?;
    conn.execute_batch(CHECKPOINTS_MIGRATION_SQL)?;
    conn.execute_batch(GATES_MIGRATION_SQL)?;
    conn.execute_batch(super::traffic::MIGRATION_SQL)?;
    let has_secrets: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('deployments') WHERE name = 'secrets'",
        [],
        |r| r.get(0),
    )?;
    if !has_secrets {
        conn.execute_batch("ALTER TABLE deployments ADD COLUMN secrets TEXT")?;
    }
    Ok(())
}

const COLUMNS: &str = "id, app, spec, image_id, state, reason, created_by, created_at, \
                       finished_at, rollback_of, secrets";

/// The sealed secrets of a spec as stored (`{"NAME": "v1:..."}`); `None` without secrets.
fn sealed_json(rec: &DeploymentRecord) -> Result<Option<String>, DeploymentStoreError> {
    if rec.spec.secrets.is_empty() {
        return Ok(None);
    }
    let mut sealed = std::collections::BTreeMap::new();
    for (name, secret) in &rec.spec.secrets {
        let Some(s) = secret.sealed_value() else {
            return Err(DeploymentStoreError::Corrupt {
                id: rec.id.clone(),
                what: "secrets",
                message: format!("secret {name} is not sealed; refusing to store it in clear"),
            });
        };
        sealed.insert(name.as_str(), s);
    }
    serde_json::to_string(&sealed)
        .map(Some)
        .map_err(|e| DeploymentStoreError::Corrupt {
            id: rec.id.clone(),
            what: "secrets",
            message: e.to_string(),
        })
}

type RawRow = (DeploymentRecord, String, String, Option<String>);

fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRow> {
    // Spec and state are parsed after the row is read, so a bad value becomes `Corrupt`.
    let spec: String = row.get(2)?;
    let state: String = row.get(4)?;
    let placeholder = AppSpec {
        image: String::new(),
        domains: vec![],
        aliases: vec![],
        port: 0,
        replicas: 0,
        strategy: Default::default(),
        canary: None,
        health: Default::default(),
        balancer: Default::default(),
        slowstart: None,
        path_prefix: None,
        retries: Default::default(),
        min_ready: Default::default(),
        drain_timeout: Default::default(),
        deploy_timeout: Default::default(),
        env: Default::default(),
        secrets: Default::default(),
        volumes: vec![],
        stop_signal: None,
        stop_timeout: None,
        command: None,
        entrypoint: None,
        resources: Default::default(),
        pull: Default::default(),
        hooks: Default::default(),
        registry: None,
    };
    Ok((
        DeploymentRecord {
            id: row.get(0)?,
            app: row.get(1)?,
            spec: placeholder,
            image_id: row.get(3)?,
            state: DeployState::Running,
            reason: row.get(5)?,
            created_by: row.get(6)?,
            created_at: row.get(7)?,
            finished_at: row.get(8)?,
            rollback_of: row.get(9)?,
        },
        spec,
        state,
        row.get(10)?,
    ))
}

fn finish_row(
    (mut rec, spec, state, sealed): RawRow,
) -> Result<DeploymentRecord, DeploymentStoreError> {
    rec.spec = serde_json::from_str(&spec).map_err(|e| DeploymentStoreError::Corrupt {
        id: rec.id.clone(),
        what: "spec",
        message: e.to_string(),
    })?;
    if let Some(sealed) = sealed {
        let sealed: std::collections::BTreeMap<String, String> = serde_json::from_str(&sealed)
            .map_err(|e| DeploymentStoreError::Corrupt {
                id: rec.id.clone(),
                what: "secrets",
                message: e.to_string(),
            })?;
        for (name, value) in sealed {
            if let Some(s) = rec.spec.secrets.get_mut(&name) {
                s.set_sealed(value);
            }
        }
    }
    rec.state = DeployState::parse(&state).ok_or_else(|| DeploymentStoreError::Corrupt {
        id: rec.id.clone(),
        what: "state",
        message: format!("unknown state {state:?}"),
    })?;
    Ok(rec)
}

fn query(
    conn: &Connection,
    sql_where: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<DeploymentRecord>, DeploymentStoreError> {
    let sql = format!("SELECT {COLUMNS} FROM deployments {sql_where}");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params, from_row)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(finish_row(r?)?);
    }
    Ok(out)
}

pub fn insert(conn: &Connection, rec: &DeploymentRecord) -> Result<(), DeploymentStoreError> {
    let spec = serde_json::to_string(&rec.spec).map_err(|e| DeploymentStoreError::Corrupt {
        id: rec.id.clone(),
        what: "spec",
        message: e.to_string(),
    })?;
    let secrets = sealed_json(rec)?;
    // A new deployment brings a deleted app (and any history kept for it) back.
    let tx = conn.unchecked_transaction()?;
    tx.execute("DELETE FROM deleted_apps WHERE app = ?1", params![rec.app])?;
    tx.execute(
        &format!("INSERT INTO deployments ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)"),
        params![
            rec.id,
            rec.app,
            spec,
            rec.image_id,
            rec.state.as_str(),
            rec.reason,
            rec.created_by,
            rec.created_at,
            rec.finished_at,
            rec.rollback_of,
            secrets
        ],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn set_image(conn: &Connection, id: &str, image_id: &str) -> Result<(), DeploymentStoreError> {
    conn.execute(
        "UPDATE deployments SET image_id = ?2 WHERE id = ?1",
        params![id, image_id],
    )?;
    Ok(())
}

pub fn finish(
    conn: &mut Connection,
    id: &str,
    state: DeployState,
    reason: Option<&str>,
    at: i64,
) -> Result<(), DeploymentStoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        "UPDATE deployments SET state = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
        params![id, state.as_str(), reason, at],
    )?;
    if state == DeployState::Succeeded {
        tx.execute(
            "INSERT INTO app_current (app, deployment)
             SELECT app, id FROM deployments WHERE id = ?1
             ON CONFLICT(app) DO UPDATE SET deployment = excluded.deployment",
            params![id],
        )?;
    }
    // A finished deployment is nobody's to resume.
    tx.execute(
        "DELETE FROM deploy_checkpoints WHERE deployment = ?1",
        params![id],
    )?;
    tx.commit()?;
    Ok(())
}

pub fn save_checkpoint(
    conn: &Connection,
    id: &str,
    owner: u32,
    data: &str,
    at: i64,
) -> Result<(), DeploymentStoreError> {
    conn.execute(
        "INSERT INTO deploy_checkpoints (deployment, owner, handed_to, checkpoint, updated_at)
         VALUES (?1, ?2, NULL, ?3, ?4)
         ON CONFLICT(deployment) DO UPDATE SET owner = excluded.owner, handed_to = NULL,
           checkpoint = excluded.checkpoint, updated_at = excluded.updated_at",
        params![id, owner, data, at],
    )?;
    Ok(())
}

pub fn hand_over(
    conn: &Connection,
    id: &str,
    from: u32,
    to: u32,
    at: i64,
) -> Result<(), DeploymentStoreError> {
    conn.execute(
        "UPDATE deploy_checkpoints SET owner = ?2, handed_to = ?3, updated_at = ?4 \
         WHERE deployment = ?1",
        params![id, from, to, at],
    )?;
    Ok(())
}

pub fn checkpoint(
    conn: &Connection,
    id: &str,
) -> Result<Option<StoredCheckpoint>, DeploymentStoreError> {
    Ok(conn
        .query_row(
            "SELECT owner, handed_to, checkpoint FROM deploy_checkpoints WHERE deployment = ?1",
            params![id],
            |r| {
                Ok(StoredCheckpoint {
                    owner: r.get(0)?,
                    handed_to: r.get(1)?,
                    data: r.get(2)?,
                })
            },
        )
        .optional()?)
}

pub fn drop_checkpoint(conn: &Connection, id: &str) -> Result<(), DeploymentStoreError> {
    conn.execute(
        "DELETE FROM deploy_checkpoints WHERE deployment = ?1",
        params![id],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, id: &str) -> Result<Option<DeploymentRecord>, DeploymentStoreError> {
    Ok(query(conn, "WHERE id = ?1", &[&id])?.into_iter().next())
}

pub fn list(
    conn: &Connection,
    app: &str,
    limit: usize,
) -> Result<Vec<DeploymentRecord>, DeploymentStoreError> {
    let limit = limit.min(i64::MAX as usize) as i64;
    query(
        conn,
        "WHERE app = ?1 AND app NOT IN (SELECT app FROM deleted_apps) \
         ORDER BY created_at DESC, rowid DESC LIMIT ?2",
        &[&app, &limit],
    )
}

pub fn current(
    conn: &Connection,
    app: &str,
) -> Result<Option<DeploymentRecord>, DeploymentStoreError> {
    let id: Option<String> = conn
        .query_row(
            "SELECT deployment FROM app_current WHERE app = ?1",
            params![app],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    match id {
        Some(id) => get(conn, &id),
        None => Ok(None),
    }
}

pub fn apps(conn: &Connection) -> Result<Vec<(String, Option<String>)>, DeploymentStoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.app, c.deployment FROM (SELECT DISTINCT app FROM deployments) a
         LEFT JOIN app_current c ON c.app = a.app
         WHERE a.app NOT IN (SELECT app FROM deleted_apps) ORDER BY a.app",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn unfinished(conn: &Connection) -> Result<Vec<DeploymentRecord>, DeploymentStoreError> {
    query(conn, "WHERE state = 'running' ORDER BY created_at", &[])
}

pub fn clear_current(conn: &Connection, app: &str) -> Result<(), DeploymentStoreError> {
    conn.execute(
        "INSERT INTO app_current (app, deployment) VALUES (?1, NULL)
         ON CONFLICT(app) DO UPDATE SET deployment = NULL",
        params![app],
    )?;
    Ok(())
}

/// Forgets `app`: it runs nothing and is listed nowhere. With `keep_history` its deployment
/// rows stay readable by id (and come back with the app's next deployment); without, they and
/// their event logs are deleted. One transaction. Returns the number of deployments it had.
/// Every app's persisted gate. A row that does not parse is `Corrupt` (never dropped
/// silently: a maintenance page that vanished after a restart would be worse).
pub fn gates(conn: &Connection) -> Result<Vec<(String, AppGate)>, DeploymentStoreError> {
    app_json_rows(conn, "SELECT app, gate FROM app_gates ORDER BY app", "gate")
}

/// Rows of (app, JSON) parsed; one that does not parse is `Corrupt` naming the app and `what`.
pub(super) fn app_json_rows<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    what: &'static str,
) -> Result<Vec<(String, T)>, DeploymentStoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(app, json)| {
            serde_json::from_str(&json)
                .map(|v| (app.clone(), v))
                .map_err(|e| DeploymentStoreError::Corrupt {
                    id: app,
                    what,
                    message: e.to_string(),
                })
        })
        .collect()
}

/// Persists an app's gate (an empty one deletes the row).
pub fn set_gate(
    conn: &Connection,
    app: &str,
    gate: &AppGate,
    at: i64,
) -> Result<(), DeploymentStoreError> {
    let row = AppJsonRow {
        table: "app_gates",
        column: "gate",
        what: "gate",
    };
    row.set(conn, app, (!gate.is_empty()).then_some(gate), at)
}

/// A table holding one JSON value per app (`app` primary key, the value, `updated_at`).
pub(super) struct AppJsonRow {
    pub table: &'static str,
    pub column: &'static str,
    /// What the value is, in a `Corrupt` error.
    pub what: &'static str,
}

impl AppJsonRow {
    /// Writes `app`'s value, or deletes its row for `None`.
    pub fn set<T: serde::Serialize>(
        &self,
        conn: &Connection,
        app: &str,
        value: Option<&T>,
        at: i64,
    ) -> Result<(), DeploymentStoreError> {
        let AppJsonRow {
            table,
            column,
            what,
        } = self;
        let Some(value) = value else {
            conn.execute(&format!("DELETE FROM {table} WHERE app = ?1"), params![app])?;
            return Ok(());
        };
        let json = serde_json::to_string(value).map_err(|e| DeploymentStoreError::Corrupt {
            id: app.to_string(),
            what,
            message: e.to_string(),
        })?;
        conn.execute(
            &format!(
                "INSERT INTO {table} (app, {column}, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(app) DO UPDATE SET {column} = excluded.{column}, \
                 updated_at = excluded.updated_at"
            ),
            params![app, json, at],
        )?;
        Ok(())
    }
}

pub fn delete_app(
    conn: &mut Connection,
    app: &str,
    keep_history: bool,
    at: i64,
) -> Result<usize, DeploymentStoreError> {
    let tx = conn.transaction()?;
    let count: i64 = tx.query_row(
        "SELECT COUNT(*) FROM deployments WHERE app = ?1",
        params![app],
        |r| r.get(0),
    )?;
    tx.execute("DELETE FROM app_current WHERE app = ?1", params![app])?;
    if keep_history {
        tx.execute(
            "INSERT INTO deleted_apps (app, deleted_at) VALUES (?1, ?2)
             ON CONFLICT(app) DO UPDATE SET deleted_at = excluded.deleted_at",
            params![app, at],
        )?;
    } else {
        tx.execute(
            "DELETE FROM deploy_events WHERE deployment IN \
             (SELECT id FROM deployments WHERE app = ?1)",
            params![app],
        )?;
        tx.execute("DELETE FROM deployments WHERE app = ?1", params![app])?;
        tx.execute("DELETE FROM deleted_apps WHERE app = ?1", params![app])?;
    }
    tx.commit()?;
    Ok(count as usize)
}

pub fn add_event(
    conn: &Connection,
    deployment: &str,
    ev: &StoredEvent,
) -> Result<(), DeploymentStoreError> {
    conn.execute(
        "INSERT INTO deploy_events (deployment, seq, at, stage, message) VALUES (?1, \
         (SELECT COALESCE(MAX(seq), -1) + 1 FROM deploy_events WHERE deployment = ?1), ?2, ?3, ?4)",
        params![deployment, ev.at, ev.stage, ev.message],
    )?;
    if crate::model::api::Stage::parse(&ev.stage).is_some_and(|s| s.is_terminal()) {
        // Keep the logs of the app's newest deployments only.
        conn.execute(
            "DELETE FROM deploy_events WHERE deployment IN (SELECT id FROM deployments \
             WHERE app = (SELECT app FROM deployments WHERE id = ?1) \
             ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?2)",
            params![deployment, EVENT_LOGS_KEPT as i64],
        )?;
    }
    Ok(())
}

pub fn events(
    conn: &Connection,
    deployment: &str,
) -> Result<Vec<StoredEvent>, DeploymentStoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, stage, message FROM deploy_events WHERE deployment = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![deployment], |r| {
        Ok(StoredEvent {
            at: r.get(0)?,
            stage: r.get(1)?,
            message: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `DeploymentStore` over one SQLite connection (the store's single writer).
pub struct SqliteDeployments {
    conn: Mutex<Connection>,
}

impl SqliteDeployments {
    /// Opens (creating if needed) a database file with the store's settings and migrations
    /// (`store::open_connection`: WAL, `synchronous=FULL`). The daemon does not use this: its
    /// engine shares the `Store`'s one connection.
    pub fn open(path: &Path) -> Result<Self, DeploymentStoreError> {
        let conn = crate::store::open_connection(path).map_err(|e| match e {
            crate::store::StoreError::Sql(e) | crate::store::StoreError::Open { source: e, .. } => {
                DeploymentStoreError::Sqlite(e)
            }
            other => DeploymentStoreError::Corrupt {
                id: String::new(),
                what: "database",
                message: other.to_string(),
            },
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// Wraps a connection the caller opened; runs `MIGRATION_SQL`.
    pub fn from_connection(conn: Connection) -> Result<Self, DeploymentStoreError> {
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }
}

impl DeploymentDb for SqliteDeployments {
    fn with_db<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DeploymentStoreError>,
    ) -> Result<T, DeploymentStoreError> {
        // A panic while holding the lock cannot leave a half transaction (rusqlite rolls back
        // on drop), so a poisoned lock is still usable.
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }
}

/// The owner of the one connection the deployments tables are read and written on: the
/// daemon's `Store`, or `SqliteDeployments` (tests, tools). `DeploymentStore` is written once,
/// over this.
pub trait DeploymentDb: Send + Sync + 'static {
    /// Runs `f` on the connection (one at a time).
    fn with_db<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DeploymentStoreError>,
    ) -> Result<T, DeploymentStoreError>;
}

impl<D: DeploymentDb> DeploymentStore for D {
    fn insert(&self, rec: &DeploymentRecord) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| insert(c, rec))
    }
    fn gates(&self) -> Result<Vec<(String, AppGate)>, DeploymentStoreError> {
        self.with_db(|c| gates(c))
    }
    fn set_gate(&self, app: &str, gate: &AppGate, at: i64) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| set_gate(c, app, gate, at))
    }
    fn traffic_splits(
        &self,
    ) -> Result<Vec<(String, crate::model::canary::VersionSplit)>, DeploymentStoreError> {
        self.with_db(|c| super::traffic::splits(c))
    }
    fn set_traffic_split(
        &self,
        app: &str,
        split: Option<&crate::model::canary::VersionSplit>,
        at: i64,
    ) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| super::traffic::set_split(c, app, split, at))
    }
    fn set_image(&self, id: &str, image_id: &str) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| set_image(c, id, image_id))
    }
    fn finish(
        &self,
        id: &str,
        state: DeployState,
        reason: Option<&str>,
        at: i64,
    ) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| finish(c, id, state, reason, at))
    }
    fn get(&self, id: &str) -> Result<Option<DeploymentRecord>, DeploymentStoreError> {
        self.with_db(|c| get(c, id))
    }
    fn list(&self, app: &str, limit: usize) -> Result<Vec<DeploymentRecord>, DeploymentStoreError> {
        self.with_db(|c| list(c, app, limit))
    }
    fn current(&self, app: &str) -> Result<Option<DeploymentRecord>, DeploymentStoreError> {
        self.with_db(|c| current(c, app))
    }
    fn apps(&self) -> Result<Vec<(String, Option<String>)>, DeploymentStoreError> {
        self.with_db(|c| apps(c))
    }
    fn unfinished(&self) -> Result<Vec<DeploymentRecord>, DeploymentStoreError> {
        self.with_db(|c| unfinished(c))
    }
    fn clear_current(&self, app: &str) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| clear_current(c, app))
    }
    fn delete_app(
        &self,
        app: &str,
        keep_history: bool,
        at: i64,
    ) -> Result<usize, DeploymentStoreError> {
        self.with_db(|c| delete_app(c, app, keep_history, at))
    }
    fn add_event(&self, deployment: &str, ev: &StoredEvent) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| add_event(c, deployment, ev))
    }
    fn events(&self, deployment: &str) -> Result<Vec<StoredEvent>, DeploymentStoreError> {
        self.with_db(|c| events(c, deployment))
    }
    fn save_checkpoint(
        &self,
        id: &str,
        owner: u32,
        data: &str,
    ) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| save_checkpoint(c, id, owner, data, now_ms()))
    }
    fn hand_over(&self, id: &str, from: u32, to: u32) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| hand_over(c, id, from, to, now_ms()))
    }
    fn checkpoint(&self, id: &str) -> Result<Option<StoredCheckpoint>, DeploymentStoreError> {
        self.with_db(|c| checkpoint(c, id))
    }
    fn drop_checkpoint(&self, id: &str) -> Result<(), DeploymentStoreError> {
        self.with_db(|c| drop_checkpoint(c, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, app: &str, at: i64) -> DeploymentRecord {
        DeploymentRecord {
            id: id.into(),
            app: app.into(),
            spec: serde_json::from_str(r#"{"image":"demo:v1","domains":["a.com"],"replicas":3}"#)
                .unwrap(),
            image_id: None,
            state: DeployState::Running,
            reason: None,
            created_by: "test".into(),
            created_at: at,
            finished_at: None,
            rollback_of: None,
        }
    }

    fn ev(at: i64, stage: &str) -> StoredEvent {
        StoredEvent {
            at,
            stage: stage.into(),
            message: format!("{stage} at {at}"),
        }
    }

    #[test]
    fn checkpoints_are_handed_over_and_end_with_the_deployment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        let s = SqliteDeployments::open(&path).unwrap();
        s.insert(&rec("d1", "web", 1)).unwrap();
        assert_eq!(s.checkpoint("d1").unwrap(), None);
        s.save_checkpoint("d1", 10, "{\"step\":3}").unwrap();
        s.hand_over("d1", 10, 11).unwrap();
        // A second process (the successor) reads what the first wrote.
        let other = SqliteDeployments::open(&path).unwrap();
        assert_eq!(
            other.checkpoint("d1").unwrap(),
            Some(StoredCheckpoint {
                owner: 10,
                handed_to: Some(11),
                data: "{\"step\":3}".into()
            })
        );
        // Saving again (paused again by its new owner) clears the hand-over.
        other.save_checkpoint("d1", 11, "{}").unwrap();
        assert_eq!(s.checkpoint("d1").unwrap().unwrap().handed_to, None);
        s.drop_checkpoint("d1").unwrap();
        assert_eq!(s.checkpoint("d1").unwrap(), None);
        s.save_checkpoint("d1", 11, "{}").unwrap();
        other.finish("d1", DeployState::Succeeded, None, 5).unwrap();
        assert_eq!(
            s.checkpoint("d1").unwrap(),
            None,
            "finished: nobody resumes it"
        );
    }

    #[test]
    fn deleting_an_app_forgets_it_with_or_without_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteDeployments::open(&dir.path().join("berth.db")).unwrap();
        for (id, app, at) in [("a1", "web", 1), ("a2", "web", 2), ("b1", "api", 3)] {
            s.insert(&rec(id, app, at)).unwrap();
            s.add_event(id, &ev(at, "accepted")).unwrap();
            s.finish(id, DeployState::Succeeded, None, at).unwrap();
        }
        // Kept history: gone from every listing, still readable by id.
        assert_eq!(s.delete_app("web", true, 10).unwrap(), 2);
        let apps: Vec<String> = s.apps().unwrap().into_iter().map(|(a, _)| a).collect();
        assert_eq!(apps, ["api"]);
        assert!(s.list("web", 10).unwrap().is_empty());
        assert!(s.current("web").unwrap().is_none());
        assert_eq!(s.get("a1").unwrap().unwrap().app, "web");
        assert_eq!(s.events("a2").unwrap().len(), 1);
        // A new deployment brings the app back with the history that was kept.
        s.insert(&rec("a3", "web", 11)).unwrap();
        assert_eq!(s.list("web", 10).unwrap().len(), 3);
        // Without history: rows and event logs go; other apps stay.
        assert_eq!(s.delete_app("web", false, 12).unwrap(), 3);
        assert!(s.get("a1").unwrap().is_none());
        assert!(s.events("a2").unwrap().is_empty());
        assert_eq!(s.list("api", 10).unwrap().len(), 1);
        assert_eq!(s.delete_app("nothing", false, 13).unwrap(), 0);
    }

    #[test]
    fn event_logs_survive_reopen_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        {
            let s = SqliteDeployments::open(&path).unwrap();
            s.insert(&rec("d0", "web", 0)).unwrap();
            for (i, stage) in ["accepted", "image", "start", "succeeded"]
                .iter()
                .enumerate()
            {
                s.add_event("d0", &ev(i as i64, stage)).unwrap();
            }
            s.insert(&rec("x0", "api", 0)).unwrap();
            s.add_event("x0", &ev(1, "accepted")).unwrap();
        }
        let s = SqliteDeployments::open(&path).unwrap();
        let stages: Vec<String> = s
            .events("d0")
            .unwrap()
            .into_iter()
            .map(|e| e.stage)
            .collect();
        assert_eq!(stages, ["accepted", "image", "start", "succeeded"]);
        assert_eq!(s.events("d0").unwrap()[2], ev(2, "start"));
        assert!(s.events("nope").unwrap().is_empty());

        // EVENT_LOGS_KEPT more deployments of `web` finish: d0's log goes, api's stays.
        for i in 1..=EVENT_LOGS_KEPT as i64 {
            let id = format!("d{i}");
            s.insert(&rec(&id, "web", i)).unwrap();
            s.add_event(&id, &ev(i, "accepted")).unwrap();
            assert_eq!(
                s.events("d0").unwrap().len(),
                4,
                "pruned before a deploy finished"
            );
            s.add_event(&id, &ev(i, "failed")).unwrap();
        }
        assert!(s.events("d0").unwrap().is_empty());
        assert_eq!(s.events("d1").unwrap().len(), 2);
        assert_eq!(s.events("x0").unwrap().len(), 1);
    }

    #[test]
    fn lifecycle_current_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        let s = SqliteDeployments::open(&path).unwrap();
        s.insert(&rec("d1", "web", 1)).unwrap();
        assert_eq!(s.unfinished().unwrap().len(), 1);
        assert!(s.current("web").unwrap().is_none());
        s.set_image("d1", "sha256:aa").unwrap();
        s.finish("d1", DeployState::Succeeded, None, 2).unwrap();
        s.insert(&rec("d2", "web", 3)).unwrap();
        s.finish("d2", DeployState::Failed, Some("health"), 4)
            .unwrap();
        s.insert(&rec("d3", "api", 5)).unwrap();

        let cur = s.current("web").unwrap().unwrap();
        assert_eq!(cur.id, "d1");
        assert_eq!(cur.image_id.as_deref(), Some("sha256:aa"));
        assert_eq!(cur.spec.replicas, 3);
        assert_eq!(cur.state, DeployState::Succeeded);
        let hist: Vec<String> = s
            .list("web", 10)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(hist, ["d2", "d1"]);
        assert_eq!(
            s.get("d2").unwrap().unwrap().reason.as_deref(),
            Some("health")
        );
        assert_eq!(
            s.apps().unwrap(),
            vec![("api".into(), None), ("web".into(), Some("d1".into()))]
        );
        assert_eq!(s.unfinished().unwrap()[0].id, "d3");
        drop(s);

        // Survives a reopen (what reconcile relies on); migration is idempotent.
        let s = SqliteDeployments::open(&path).unwrap();
        assert_eq!(s.current("web").unwrap().unwrap().id, "d1");
        s.clear_current("web").unwrap();
        assert!(s.current("web").unwrap().is_none());
    }

    #[test]
    fn secrets_are_stored_sealed_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.db");
        let s = SqliteDeployments::open(&path).unwrap();
        let mut r = rec("d1", "web", 1);
        r.spec.secrets.insert(
            "DB_PASSWORD".into(),
            crate::model::deploy::Secret::plain("hunter2"),
        );
        // In clear: refused, nothing written.
        let e = s.insert(&r).unwrap_err().to_string();
        assert!(e.contains("not sealed"), "{e}");
        assert!(s.get("d1").unwrap().is_none());
        r.spec
            .secrets
            .get_mut("DB_PASSWORD")
            .unwrap()
            .seal("v1:c2VhbGVk".into(), "sha256:0011".into());
        s.insert(&r).unwrap();
        let back = s.get("d1").unwrap().unwrap();
        assert_eq!(
            back.spec.secrets["DB_PASSWORD"],
            r.spec.secrets["DB_PASSWORD"]
        );
        let json = serde_json::to_string(&back).unwrap();
        assert!(!json.contains("v1:c2VhbGVk"), "{json}");
        assert!(json.contains("sha256:0011"), "{json}");
    }

    #[test]
    fn gates_round_trip_and_an_empty_one_deletes_the_row() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(GATES_MIGRATION_SQL).unwrap();
        let gate = AppGate {
            paused: Some(Default::default()),
            maintenance: None,
        };
        set_gate(&conn, "web", &gate, 1).unwrap();
        set_gate(&conn, "web", &gate, 2).unwrap();
        assert_eq!(gates(&conn).unwrap(), vec![("web".to_string(), gate)]);
        set_gate(&conn, "web", &AppGate::default(), 3).unwrap();
        assert!(gates(&conn).unwrap().is_empty());
    }

    #[test]
    fn an_old_table_gains_the_secrets_column() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE deployments (id TEXT PRIMARY KEY, app TEXT NOT NULL, spec TEXT NOT NULL,
             image_id TEXT, state TEXT NOT NULL, reason TEXT, created_by TEXT NOT NULL,
             created_at INTEGER NOT NULL, finished_at INTEGER, rollback_of TEXT);
             INSERT INTO deployments (id, app, spec, state, created_by, created_at)
             VALUES ('x', 'web', '{\"image\":\"a\",\"domains\":[\"a.com\"]}', 'succeeded', 't', 1);",
        )
        .unwrap();
        let s = SqliteDeployments::from_connection(conn).unwrap();
        assert_eq!(s.get("x").unwrap().unwrap().spec.image, "a");
        // Twice is fine.
        s.with_db(|c| migrate(c)).unwrap();
    }

    #[test]
    fn corrupt_rows_are_errors_not_panics() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn.execute(
            "INSERT INTO deployments (id, app, spec, state, created_by, created_at)
             VALUES ('x', 'web', '{not json', 'running', 't', 1)",
            [],
        )
        .unwrap();
        let s = SqliteDeployments::from_connection(conn).unwrap();
        let e = s.get("x").unwrap_err().to_string();
        assert!(e.contains("deployment x: stored spec"), "{e}");
    }
}
