//! TLS termination support: the SNI certificate store (a rustls resolver over `ArcSwap`
//! snapshots), bring-your-own PEM certificates with validation and reload, and the ACME issuer
//! with its renewal loop. Handshakes only ever `load()` snapshots; writers swap whole maps.

pub mod acme;
pub mod dns01;
pub mod manual;
pub mod ondemand;
pub mod pem;
pub mod store;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use acme::{AcmeManager, RetryError};
pub use manual::ManualCerts;
pub use store::{CertStatus, CertStore};

/// Problems with certificates, keys and ACME. Each names the file or domain concerned.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found")]
    NoKey { path: PathBuf },
    #[error("{path}: invalid PEM: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("{path}: unusable certificate: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{path}: unsupported private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("{key}: private key does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: certificate expired at {not_after}")]
    Expired { path: PathBuf, not_after: String },
    #[error("{path}: certificate lists no DNS names (subjectAltName)")]
    NoNames { path: PathBuf },
    #[error("ACME account: {0}")]
    Account(String),
    #[error("ACME order for {domain}: {message}")]
    Order { domain: String, message: String },
    /// DNS-01: the TSIG key, or writing the TXT record, failed.
    #[error("ACME order for {domain}: {source}")]
    Dns {
        domain: String,
        source: dns01::DnsUpdateError,
    },
    /// TLS-ALPN-01: the challenge certificate could not be made.
    #[error("ACME order for {domain}: {source}")]
    ChallengeCert {
        domain: String,
        source: acme::ChallengeCertError,
    },
}

impl TlsError {
    pub(crate) fn read(path: &Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn write(path: &Path, source: std::io::Error) -> Self {
        Self::Write {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The rustls crypto provider Berth uses everywhere (ring: no cmake/nasm needed to build).
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes `data` to `path` atomically (temp file + rename) with mode `mode`.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| TlsError::write(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| TlsError::write(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| TlsError::write(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TlsError::write(path, e))
}
