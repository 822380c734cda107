//! Each app's manual version split (`PUT /v1/apps/{app}/traffic`, `berth traffic`): the
//! `model::canary::VersionSplit` as JSON, one row per app. Written before the split is
//! published; deleted when the deployment it splits to ends (promoted or aborted), so a row
//! never outlives the versions it names. Idempotent, like the other migrations.

use rusqlite::Connection;

use super::deployments::DeploymentStoreError;
use crate::model::canary::VersionSplit;

/// Migration 9.
pub const MIGRATION_SQL: &str = "
CREATE TABLE IF NOT EXISTS app_traffic (
    app        TEXT PRIMARY KEY,
    split      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// Every app's persisted split. A row that does not parse is `Corrupt`, never dropped.
pub fn splits(conn: &Connection) -> Result<Vec<(String, VersionSplit)>, DeploymentStoreError> {
    super::deployments::app_json_rows(
        conn,
        "SELECT app, split FROM app_traffic ORDER BY app",
        "traffic split",
    )
}

/// Persists an app's split; `None` deletes the row.
pub fn set_split(
    conn: &Connection,
    app: &str,
    split: Option<&VersionSplit>,
    at: i64,
) -> Result<(), DeploymentStoreError> {
    let row = super::deployments::AppJsonRow {
        table: "app_traffic",
        column: "split",
        what: "traffic split",
    };
    row.set(conn, app, split, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_round_trip_and_delete() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATION_SQL).unwrap();
        conn.execute_batch(MIGRATION_SQL).unwrap();
        let s = VersionSplit::canary("d1", "d2", 10, true);
        set_split(&conn, "web", Some(&s), 1).unwrap();
        set_split(&conn, "web", Some(&s), 2).unwrap();
        assert_eq!(splits(&conn).unwrap(), vec![("web".to_string(), s)]);
        set_split(&conn, "web", None, 3).unwrap();
        assert!(splits(&conn).unwrap().is_empty());
        conn.execute(
            "INSERT INTO app_traffic (app, split, updated_at) VALUES ('x', '{bad', 1)",
            [],
        )
        .unwrap();
        assert!(matches!(
            splits(&conn),
            Err(DeploymentStoreError::Corrupt { .. })
        ));
    }
}
