//! Loading a certificate chain + private key from PEM and validating the pair: the key must
//! match the leaf, the leaf must not be expired and must list DNS names. The result carries
//! the facts the store and the status list need (names, validity, issuer).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::TlsError;
use crate::model::sni::normalize_server_name;

/// A validated certificate and key, ready to serve.
#[derive(Debug)]
pub struct LoadedCert {
    pub certified: Arc<CertifiedKey>,
    /// DNS names from subjectAltName, lower-case (`*.example.com` for wildcards).
    pub names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Issuer distinguished name, e.g. `CN=Pebble Intermediate CA 1c1b2f`.
    pub issuer: String,
    /// Where it came from (the certificate file).
    pub path: PathBuf,
}

fn to_system_time(ts: i64) -> SystemTime {
    if ts >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(ts.unsigned_abs())
    }
}

/// Reads and validates a pair of PEM files.
pub fn load_files(cert: &Path, key: &Path, now: SystemTime) -> Result<LoadedCert, TlsError> {
    let cert_pem = std::fs::read(cert).map_err(|e| TlsError::read(cert, e))?;
    let key_pem = std::fs::read(key).map_err(|e| TlsError::read(key, e))?;
    parse_pair(&cert_pem, cert, &key_pem, key, now)
}

/// Parses and validates PEM bytes; `cert_path`/`key_path` only label errors.
pub fn parse_pair(
    cert_pem: &[u8],
    cert_path: &Path,
    key_pem: &[u8],
    key_path: &Path,
    now: SystemTime,
) -> Result<LoadedCert, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadPem {
            path: cert_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: key_path.to_path_buf(),
        },
        other => TlsError::BadPem {
            path: key_path.to_path_buf(),
            message: other.to_string(),
        },
    })?;

    let (_, x509) =
        X509Certificate::from_der(leaf.as_ref()).map_err(|e| TlsError::BadCertificate {
            path: cert_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let not_before = to_system_time(x509.validity().not_before.timestamp());
    let not_after = to_system_time(x509.validity().not_after.timestamp());
    let issuer = x509.issuer().to_string();
    let mut names = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for gn in &san.value.general_names {
            if let GeneralName::DNSName(n) = gn {
                if let Some(n) = normalize_server_name(n) {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
    }
    if names.is_empty() {
        return Err(TlsError::NoNames {
            path: cert_path.to_path_buf(),
        });
    }
    if not_after <= now {
        return Err(TlsError::Expired {
            path: cert_path.to_path_buf(),
            not_after: humantime::format_rfc3339_seconds(not_after).to_string(),
        });
    }

    let signing = super::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            path: key_path.to_path_buf(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            })
        }
    }
    Ok(LoadedCert {
        certified: Arc::new(certified),
        names,
        not_before,
        not_after,
        issuer,
        path: cert_path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str], days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("keygen");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        let now = rcgen::date_time_ymd(2020, 1, 1);
        params.not_before = now;
        params.not_after = if days >= 0 {
            rcgen::date_time_ymd(2100, 1, 1)
        } else {
            rcgen::date_time_ymd(2020, 6, 1)
        };
        let cert = params.self_signed(&key).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn validates_pairs() {
        let now = SystemTime::now();
        let (c, k) = self_signed(&["Example.com", "*.example.com"], 1);
        let p = Path::new("c.pem");
        let kp = Path::new("k.pem");
        let ok = parse_pair(c.as_bytes(), p, k.as_bytes(), kp, now).expect("valid");
        assert_eq!(ok.names, vec!["example.com", "*.example.com"]);

        let (_, other_key) = self_signed(&["x.org"], 1);
        let e = parse_pair(c.as_bytes(), p, other_key.as_bytes(), kp, now).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("does not match"), "{e}");

        let (old, old_key) = self_signed(&["old.org"], -1);
        let e = parse_pair(old.as_bytes(), p, old_key.as_bytes(), kp, now).unwrap_err();
        assert!(e.to_string().contains("expired at 2020-06-01"), "{e}");

        let e = parse_pair(b"nothing", p, k.as_bytes(), kp, now).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
        let e = parse_pair(c.as_bytes(), p, b"", kp, now).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
    }
}
