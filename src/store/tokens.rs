//! API bearer tokens. A token is `berth_` + 64 hex digits from the OS RNG; only its SHA-256 is
//! stored, so the database never holds a usable secret. Verification hashes the presented token
//! and compares it with every active hash in constant time, without stopping at a match, so the
//! timing says nothing about which or how many bytes matched. Each token has scopes
//! (`model::access`); tokens from before scopes existed were migrated to `admin`.

use rand::TryRngCore;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{now, Store, StoreError};
use crate::model::access::Scopes;

/// Schema step adding scopes. Every existing token becomes `admin` (what it could do before).
pub const SCOPES_MIGRATION_SQL: &str =
    "ALTER TABLE api_tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin';";

/// Every token starts with this, so a leaked one is easy to recognise (secret scanners).
pub const TOKEN_PREFIX: &str = "berth_";

/// What `token list` shows. Never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` while the token is active.
    pub revoked_at: Option<i64>,
    /// What the token may do.
    pub scopes: Scopes,
}

/// An active token that matched: its id and scopes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenAuth {
    pub id: i64,
    pub scopes: Scopes,
}

fn parse_scopes(id: i64, raw: &str) -> Result<Scopes, StoreError> {
    Scopes::parse(&[raw]).map_err(|e| StoreError::Corrupt {
        what: "token scopes",
        name: id.to_string(),
        message: e.to_string(),
    })
}

/// SHA-256 of a token as presented.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn generate() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| StoreError::Corrupt {
            what: "token",
            name: "new".into(),
            message: format!("the OS random number generator failed: {e}"),
        })?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

impl Store {
    /// Creates an `admin` token and returns it with the secret, which is not stored and
    /// cannot be shown again.
    pub fn create_token(&self, name: &str) -> Result<(TokenInfo, String), StoreError> {
        self.create_token_scoped(name, &Scopes::admin())
    }

    /// Creates a token with `scopes`; returns it with the secret (shown once).
    pub fn create_token_scoped(
        &self,
        name: &str,
        scopes: &Scopes,
    ) -> Result<(TokenInfo, String), StoreError> {
        let secret = generate()?;
        let hash = hash_token(&secret);
        let created_at = now();
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO api_tokens (name, hash, created_at, scopes) VALUES (?1, ?2, ?3, ?4)",
            params![name, hash.as_slice(), created_at, scopes.to_string()],
        )?;
        let info = TokenInfo {
            id: conn.last_insert_rowid(),
            name: name.to_string(),
            created_at,
            revoked_at: None,
            scopes: scopes.clone(),
        };
        Ok((info, secret))
    }

    /// All tokens, revoked ones included, oldest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let conn = self.conn()?;
        let mut q = conn.prepare(
            "SELECT id, name, created_at, revoked_at, scopes FROM api_tokens ORDER BY id",
        )?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name, created_at, revoked_at, scopes) = row?;
            out.push(TokenInfo {
                id,
                name,
                created_at,
                revoked_at,
                scopes: parse_scopes(id, &scopes)?,
            });
        }
        Ok(out)
    }

    /// Revokes a token: it stops working at once, also in a running daemon.
    pub fn revoke_token(&self, id: i64) -> Result<TokenInfo, StoreError> {
        let conn = self.conn()?;
        let row: Option<(String, i64, Option<i64>, String)> = conn
            .query_row(
                "SELECT name, created_at, revoked_at, scopes FROM api_tokens WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((name, created_at, revoked, scopes)) = row else {
            return Err(StoreError::TokenNotFound(id));
        };
        if revoked.is_some() {
            return Err(StoreError::TokenRevoked(id));
        }
        let ts = now();
        conn.execute(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1",
            params![id, ts],
        )?;
        Ok(TokenInfo {
            id,
            name,
            created_at,
            revoked_at: Some(ts),
            scopes: parse_scopes(id, &scopes)?,
        })
    }

    /// The id of the active token `presented` is, if any. Reads the table on every call so
    /// tokens created or revoked by another process take effect immediately.
    pub fn verify_token(&self, presented: &str) -> Result<Option<i64>, StoreError> {
        Ok(self.authenticate(presented)?.map(|t| t.id))
    }

    /// The active token `presented` is, with its scopes, if any (see `verify_token`).
    pub fn authenticate(&self, presented: &str) -> Result<Option<TokenAuth>, StoreError> {
        let want = hash_token(presented);
        let conn = self.conn()?;
        let mut q = conn
            .prepare_cached("SELECT id, hash, scopes FROM api_tokens WHERE revoked_at IS NULL")?;
        let rows = q.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut found: Option<(i64, String)> = None;
        for row in rows {
            let (id, hash, scopes) = row?;
            // Compare every row; never return early on a match.
            // `ct_eq` on slices is constant time for equal lengths and false otherwise.
            if bool::from(hash.as_slice().ct_eq(&want[..])) {
                found = Some((id, scopes));
            }
        }
        match found {
            Some((id, scopes)) => Ok(Some(TokenAuth {
                id,
                scopes: parse_scopes(id, &scopes)?,
            })),
            None => Ok(None),
        }
    }

    /// The scopes of active token `id`; `None` when it does not exist or is revoked (a
    /// status-page session checks this on every request).
    pub fn active_token_scopes(&self, id: i64) -> Result<Option<Scopes>, StoreError> {
        let conn = self.conn()?;
        let scopes: Option<String> = conn
            .query_row(
                "SELECT scopes FROM api_tokens WHERE id = ?1 AND revoked_at IS NULL",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        scopes.map(|s| parse_scopes(id, &s)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_list_revoke() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let (a, secret_a) = s.create_token("ci").unwrap();
        let (b, secret_b) = s.create_token("laptop").unwrap();
        assert!(secret_a.starts_with(TOKEN_PREFIX));
        assert_eq!(secret_a.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(secret_a, secret_b);
        assert_eq!(s.verify_token(&secret_a).unwrap(), Some(a.id));
        assert_eq!(s.verify_token(&secret_b).unwrap(), Some(b.id));
        assert_eq!(s.verify_token("berth_nope").unwrap(), None);
        assert_eq!(s.verify_token("").unwrap(), None);
        // Only the hash is stored.
        let stored: Vec<u8> = s
            .conn()
            .unwrap()
            .query_row("SELECT hash FROM api_tokens WHERE id = ?1", [a.id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(stored, hash_token(&secret_a).to_vec());

        let revoked = s.revoke_token(a.id).unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(s.verify_token(&secret_a).unwrap(), None);
        assert_eq!(s.verify_token(&secret_b).unwrap(), Some(b.id));
        assert!(matches!(
            s.revoke_token(a.id),
            Err(StoreError::TokenRevoked(_))
        ));
        assert!(matches!(
            s.revoke_token(999),
            Err(StoreError::TokenNotFound(999))
        ));
        let list = s.list_tokens().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "ci");
        assert!(list[0].revoked_at.is_some());
        assert!(list[1].revoked_at.is_none());
        assert_eq!(list[1].scopes, Scopes::admin());
    }

    #[test]
    fn scopes_are_stored_and_old_tokens_become_admin() {
        let tmp = tempfile::tempdir().unwrap();
        // A database from before scopes (schema 3) with one token in it.
        {
            let s = Store::open(tmp.path()).unwrap();
            let c = s.conn().unwrap();
            c.execute_batch(
                "CREATE TABLE t AS SELECT id, name, hash, created_at, revoked_at FROM api_tokens;
                 DROP TABLE api_tokens;
                 CREATE TABLE api_tokens (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                    hash BLOB NOT NULL UNIQUE, created_at INTEGER NOT NULL, revoked_at INTEGER)
                    STRICT;
                 DROP TABLE t;
                 PRAGMA user_version = 3;",
            )
            .unwrap();
            c.execute(
                "INSERT INTO api_tokens (name, hash, created_at) VALUES ('old', ?1, 1)",
                [hash_token("berth_old").to_vec()],
            )
            .unwrap();
        }
        let s = Store::open(tmp.path()).unwrap();
        let old = s.authenticate("berth_old").unwrap().unwrap();
        assert_eq!(old.scopes, Scopes::admin());
        let ci = Scopes::parse(&["deploy:web", "read"]).unwrap();
        let (info, secret) = s.create_token_scoped("ci", &ci).unwrap();
        assert_eq!(info.scopes, ci);
        assert_eq!(s.authenticate(&secret).unwrap().unwrap().scopes, ci);
        assert_eq!(s.active_token_scopes(info.id).unwrap(), Some(ci.clone()));
        assert_eq!(s.list_tokens().unwrap()[1].scopes, ci);
        s.revoke_token(info.id).unwrap();
        assert_eq!(s.active_token_scopes(info.id).unwrap(), None);
        assert_eq!(s.authenticate(&secret).unwrap(), None);
    }
}
