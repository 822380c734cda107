//! Frontends and pools created through the API (`/v1/frontends`, `/v1/pools`): one row per
//! object holding its spec as JSON. Config-file ones are never stored. Each write is one
//! transaction; the caller validates the whole set before writing and publishes after.

use rusqlite::params;

use super::{now, Store, StoreError};
use crate::model::frontend::FrontendSpec;
use crate::model::pool::PoolSpec;

/// Migration: the two tables (idempotent).
pub(super) const MIGRATION_SQL: &str = "CREATE TABLE IF NOT EXISTS frontends (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,   -- FrontendSpec JSON
        updated_at INTEGER NOT NULL
     ) STRICT;
     CREATE TABLE IF NOT EXISTS pools (
        name       TEXT PRIMARY KEY,
        spec       TEXT NOT NULL,   -- PoolSpec JSON
        updated_at INTEGER NOT NULL
     ) STRICT;";

/// Which table.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Frontend,
    Pool,
}

impl Kind {
    fn table(self) -> &'static str {
        match self {
            Kind::Frontend => "frontends",
            Kind::Pool => "pools",
        }
    }
    fn what(self) -> &'static str {
        match self {
            Kind::Frontend => "frontend",
            Kind::Pool => "pool",
        }
    }
}

impl Store {
    fn load_specs<T: serde::de::DeserializeOwned>(
        &self,
        kind: Kind,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let conn = self.conn()?;
        let sql = format!("SELECT name, spec FROM {} ORDER BY name", kind.table());
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, json) = row?;
            let spec = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                what: kind.what(),
                name: name.clone(),
                message: e.to_string(),
            })?;
            out.push((name, spec));
        }
        Ok(out)
    }

    fn put_spec<T: serde::Serialize>(
        &self,
        kind: Kind,
        name: &str,
        spec: &T,
    ) -> Result<(), StoreError> {
        self.writable()?;
        let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            what: kind.what(),
            name: name.to_string(),
            message: e.to_string(),
        })?;
        let conn = self.conn()?;
        conn.execute(
            &format!(
                "INSERT INTO {} (name, spec, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET spec = excluded.spec,
                 updated_at = excluded.updated_at",
                kind.table()
            ),
            params![name, json, now()],
        )?;
        Ok(())
    }

    fn delete_spec(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        self.writable()?;
        let conn = self.conn()?;
        conn.execute(
            &format!("DELETE FROM {} WHERE name = ?1", kind.table()),
            params![name],
        )?;
        Ok(())
    }

    /// Stored frontends, by name.
    pub fn load_frontends(&self) -> Result<Vec<FrontendSpec>, StoreError> {
        Ok(self
            .load_specs::<FrontendSpec>(Kind::Frontend)?
            .into_iter()
            .map(|(name, mut s)| {
                s.name = Some(name);
                s
            })
            .collect())
    }

    /// Stored pools, by name.
    pub fn load_pools(&self) -> Result<Vec<PoolSpec>, StoreError> {
        Ok(self
            .load_specs::<PoolSpec>(Kind::Pool)?
            .into_iter()
            .map(|(name, mut s)| {
                s.name = Some(name);
                s
            })
            .collect())
    }

    pub fn put_frontend(&self, spec: &FrontendSpec) -> Result<(), StoreError> {
        self.put_spec(Kind::Frontend, spec.name(), spec)
    }

    pub fn delete_frontend(&self, name: &str) -> Result<(), StoreError> {
        self.delete_spec(Kind::Frontend, name)
    }

    pub fn put_pool(&self, spec: &PoolSpec) -> Result<(), StoreError> {
        self.put_spec(Kind::Pool, spec.name(), spec)
    }

    pub fn delete_pool(&self, name: &str) -> Result<(), StoreError> {
        self.delete_spec(Kind::Pool, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontends_and_pools_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let pool: PoolSpec =
            serde_yaml::from_str("name: db\nmembers:\n  - address: 127.0.0.1:5432\n").unwrap();
        let fe: FrontendSpec =
            serde_yaml::from_str("name: pg\nbind: 127.0.0.1:6432\npool: db\n").unwrap();
        s.put_pool(&pool).unwrap();
        s.put_frontend(&fe).unwrap();
        s.put_frontend(&fe).unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.load_pools().unwrap(), vec![pool]);
        assert_eq!(s.load_frontends().unwrap(), vec![fe]);
        s.delete_frontend("pg").unwrap();
        s.delete_pool("db").unwrap();
        assert!(s.load_frontends().unwrap().is_empty());
        assert!(s.load_pools().unwrap().is_empty());
    }
}
