//! The secrets key and what it does: seal (encrypt) app secrets for the store, unseal them when
//! a container is created, and fingerprint them for display. Crypto is `ring`'s
//! ChaCha20-Poly1305 (AEAD, a fresh random 96-bit nonce per value, the secret's name as
//! associated data so a sealed value cannot be moved to another name) and HMAC-SHA256.
//!
//! The key is 32 random bytes: from `$CREDENTIALS_DIRECTORY/berth-secrets-key` when that file
//! exists (systemd `LoadCredential=`), else `<data_dir>/secrets.key` (mode 0600), created by
//! `berthd init` or, when missing, by the daemon on start. Either file holds 64 hex digits
//! (or the 32 raw bytes). Two subkeys are derived with HMAC-SHA256 (one to encrypt, one to
//! fingerprint), so a fingerprint reveals nothing usable about the encryption key.
//! Invariants: a value is never logged; a wrong or missing key is an error, never a panic.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use thiserror::Error;

use crate::model::deploy::{AppSpec, SpecError};

/// File name of the key inside the data dir.
pub const KEY_FILE: &str = "secrets.key";
/// Name of the systemd credential (`LoadCredential=berth-secrets-key:/path`).
pub const CREDENTIAL_NAME: &str = "berth-secrets-key";
/// Prefix of a sealed value (format version).
const SEALED_PREFIX: &str = "v1:";
/// Bytes of the fingerprint shown (16 hex digits).
const FINGERPRINT_BYTES: usize = 8;

#[derive(Debug, Error)]
pub enum SecretsError {
    #[error("secrets key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error(
        "secret {name} cannot be decrypted with this server's secrets key ({key}); it was sealed \
         with another key (restore the secrets.key of the server that stored it)"
    )]
    WrongKey { name: String, key: String },
    #[error("secret {name}: stored value is malformed: {message}")]
    Malformed { name: String, message: String },
    #[error("secret {0}: the OS random number generator failed")]
    Random(String),
}

/// The loaded key. Never printed (`Debug` shows where it came from only).
pub struct SecretsKey {
    enc: LessSafeKey,
    fingerprint: hmac::Key,
    source: PathBuf,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretsKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn key_err(path: &Path, message: impl Into<String>) -> SecretsError {
    SecretsError::Key {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Parses a key file's content: 64 hex digits (surrounding whitespace ignored) or 32 raw bytes.
fn parse_key(path: &Path, bytes: &[u8]) -> Result<[u8; 32], SecretsError> {
    let text = std::str::from_utf8(bytes).map(str::trim).unwrap_or("");
    let mut key = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut key).is_ok() {
        return Ok(key);
    }
    if bytes.len() == 32 {
        key.copy_from_slice(bytes);
        return Ok(key);
    }
    Err(key_err(
        path,
        format!(
            "must hold 64 hex digits (32 bytes), found {} bytes; create one with \
             `openssl rand -hex 32`",
            bytes.len()
        ),
    ))
}

impl SecretsKey {
    /// A key from its 32 bytes; `source` is only for messages.
    pub fn from_bytes(master: &[u8; 32], source: &Path) -> Self {
        let m = hmac::Key::new(hmac::HMAC_SHA256, master);
        let enc = hmac::sign(&m, b"berth secrets v1: encryption key");
        let fp = hmac::sign(&m, b"berth secrets v1: fingerprint key");
        // Both lengths are right by construction (32-byte HMAC-SHA256 output).
        let unbound = UnboundKey::new(&aead::CHACHA20_POLY1305, enc.as_ref())
            .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key is always valid"));
        SecretsKey {
            enc: LessSafeKey::new(unbound),
            fingerprint: hmac::Key::new(hmac::HMAC_SHA256, fp.as_ref()),
            source: source.to_path_buf(),
            rng: SystemRandom::new(),
        }
    }

    /// Where the key came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Loads the key: the systemd credential if `$CREDENTIALS_DIRECTORY` has one, else
    /// `data_dir/secrets.key`, which is created (0600) when missing. Returns whether it was
    /// created.
    pub fn load_or_create(data_dir: &Path) -> Result<(SecretsKey, bool), SecretsError> {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let path = Path::new(&dir).join(CREDENTIAL_NAME);
            if path.exists() {
                let bytes = std::fs::read(&path).map_err(|e| key_err(&path, e.to_string()))?;
                let key = parse_key(&path, &bytes)?;
                return Ok((SecretsKey::from_bytes(&key, &path), false));
            }
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                if let Ok(meta) = std::fs::metadata(&path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        tracing::warn!(
                            path = %path.display(),
                            "the secrets key is readable by other users; chmod 600 it"
                        );
                    }
                }
                let key = parse_key(&path, &bytes)?;
                Ok((SecretsKey::from_bytes(&key, &path), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::create(&path).map(|k| (k, true))
            }
            Err(e) => Err(key_err(&path, e.to_string())),
        }
    }

    /// Creates a new key file (fails if one appeared meanwhile: then that one is read).
    fn create(path: &Path) -> Result<SecretsKey, SecretsError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| key_err(path, "the OS random number generator failed"))?;
        if let Some(dir) = path.parent() {
            super::ensure_data_dir(dir).map_err(|e| key_err(path, e.to_string()))?;
        }
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(path).map_err(|e| key_err(path, e.to_string()))?;
                return Ok(SecretsKey::from_bytes(&parse_key(path, &bytes)?, path));
            }
            Err(e) => return Err(key_err(path, e.to_string())),
        };
        let text = format!("{}\n", hex::encode(key));
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| key_err(path, e.to_string()))?;
        tracing::info!(
            path = %path.display(),
            "created the secrets key (app secrets are stored encrypted with it; back it up \
             with berth.db)"
        );
        Ok(SecretsKey::from_bytes(&key, path))
    }

    /// `sha256:` + the first 8 bytes of HMAC-SHA256(fingerprint key, value), in hex.
    pub fn fingerprint(&self, value: &str) -> String {
        let tag = hmac::sign(&self.fingerprint, value.as_bytes());
        format!("sha256:{}", hex::encode(&tag.as_ref()[..FINGERPRINT_BYTES]))
    }

    fn aad(name: &str) -> Vec<u8> {
        let mut aad = b"berth-secret:".to_vec();
        aad.extend_from_slice(name.as_bytes());
        aad
    }

    /// Encrypts `value` for secret `name`: `v1:` + base64url(nonce ‖ ciphertext ‖ tag).
    pub fn seal(&self, name: &str, value: &str) -> Result<String, SecretsError> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Random(name.to_string()))?;
        let mut buf = value.as_bytes().to_vec();
        self.enc
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(name)),
                &mut buf,
            )
            .map_err(|_| SecretsError::Malformed {
                name: name.to_string(),
                message: "value too long to encrypt".into(),
            })?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{SEALED_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// Decrypts what [`seal`](Self::seal) made for secret `name`.
    pub fn unseal(&self, name: &str, sealed: &str) -> Result<String, SecretsError> {
        let malformed = |message: &str| SecretsError::Malformed {
            name: name.to_string(),
            message: message.to_string(),
        };
        let b64 = sealed
            .strip_prefix(SEALED_PREFIX)
            .ok_or_else(|| malformed("unknown format (no v1: prefix)"))?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| malformed("not base64"))?;
        if raw.len() < aead::NONCE_LEN + aead::CHACHA20_POLY1305.tag_len() {
            return Err(malformed("too short"));
        }
        let (nonce, rest) = raw.split_at(aead::NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed("nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .enc
            .open_in_place(nonce, Aad::from(Self::aad(name)), &mut buf)
            .map_err(|_| SecretsError::WrongKey {
                name: name.to_string(),
                key: self.source.display().to_string(),
            })?;
        String::from_utf8(plain.to_vec()).map_err(|_| malformed("not UTF-8"))
    }

    /// Seals every secret of `spec` that is still in clear (the rest are left as they are).
    pub fn seal_spec(&self, spec: &mut AppSpec) -> Result<(), SpecError> {
        for (name, secret) in spec.secrets.iter_mut() {
            let Some(value) = secret.value() else {
                continue;
            };
            let fingerprint = self.fingerprint(value);
            let sealed = self.seal(name, value).map_err(|e| SpecError {
                field: format!("secrets.{name}"),
                message: e.to_string(),
            })?;
            secret.seal(sealed, fingerprint);
        }
        Ok(())
    }

    /// `NAME=value` for every secret of `spec`, decrypted (for `docker create` only).
    pub fn env_of(&self, spec: &AppSpec) -> Result<Vec<String>, SecretsError> {
        let mut out = Vec::with_capacity(spec.secrets.len());
        for (name, secret) in &spec.secrets {
            let value = match (secret.value(), secret.sealed_value()) {
                (Some(v), _) => v.to_string(),
                (None, Some(sealed)) => self.unseal(name, sealed)?,
                (None, None) => {
                    return Err(SecretsError::Malformed {
                        name: name.clone(),
                        message: "no stored value (the deployment row lost it)".into(),
                    })
                }
            };
            out.push(format!("{name}={value}"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_unseal_fingerprint() {
        let k = SecretsKey::from_bytes(&[7u8; 32], Path::new("test"));
        let a = k.seal("DB", "hunter2").unwrap();
        let b = k.seal("DB", "hunter2").unwrap();
        assert!(a.starts_with("v1:") && !a.contains("hunter2"));
        assert_ne!(a, b, "a fresh nonce per value");
        assert_eq!(k.unseal("DB", &a).unwrap(), "hunter2");
        // Bound to the name.
        assert!(matches!(
            k.unseal("OTHER", &a),
            Err(SecretsError::WrongKey { .. })
        ));
        // Another key: a clear error naming the secret.
        let other = SecretsKey::from_bytes(&[8u8; 32], Path::new("/x/secrets.key"));
        let e = other.unseal("DB", &a).unwrap_err().to_string();
        assert!(
            e.contains("secret DB") && e.contains("/x/secrets.key"),
            "{e}"
        );
        for bad in ["", "v2:abc", "v1:!!!", "v1:AAAA"] {
            assert!(
                matches!(k.unseal("DB", bad), Err(SecretsError::Malformed { .. })),
                "{bad}"
            );
        }
        // Fingerprints: stable per key and value, differ across values and keys.
        let f = k.fingerprint("hunter2");
        assert_eq!(f, k.fingerprint("hunter2"));
        assert_eq!(f.len(), "sha256:".len() + 16);
        assert_ne!(f, k.fingerprint("hunter3"));
        assert_ne!(f, other.fingerprint("hunter2"));
    }

    #[test]
    fn key_file_is_created_0600_and_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let (k1, created) = SecretsKey::load_or_create(tmp.path()).unwrap();
        assert!(created);
        let path = tmp.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, created) = SecretsKey::load_or_create(tmp.path()).unwrap();
        assert!(!created);
        let sealed = k1.seal("A", "v").unwrap();
        assert_eq!(k2.unseal("A", &sealed).unwrap(), "v");
        // Raw 32 bytes are accepted too; anything else is a clear error.
        std::fs::write(&path, [1u8; 32]).unwrap();
        SecretsKey::load_or_create(tmp.path()).unwrap();
        std::fs::write(&path, "short\n").unwrap();
        let e = SecretsKey::load_or_create(tmp.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn specs_are_sealed_and_env_is_decrypted() {
        let k = SecretsKey::from_bytes(&[3u8; 32], Path::new("test"));
        let mut spec: AppSpec = serde_json::from_str(
            r#"{"image":"x","domains":["a.com"],"secrets":{"A":"1","B":"two"}}"#,
        )
        .unwrap();
        k.seal_spec(&mut spec).unwrap();
        assert!(spec.secrets.values().all(|s| s.value().is_none()));
        assert_eq!(
            spec.secrets["B"].fingerprint(),
            Some(k.fingerprint("two").as_str())
        );
        // Sealing again changes nothing (rollback reuses the stored form).
        let before = spec.clone();
        k.seal_spec(&mut spec).unwrap();
        assert_eq!(before, spec);
        assert_eq!(k.env_of(&spec).unwrap(), ["A=1", "B=two"]);
    }
}
