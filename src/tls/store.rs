//! `CertStore`: the SNI certificate resolver. A handshake does one `ArcSwap::load()` of the
//! name → certificate snapshot (exact, then one-label wildcard, then default, else refuse);
//! writers (manual reload, ACME) rebuild the whole snapshot under a writer-only mutex and swap
//! it, so a certificate change never fails a handshake. Also holds the pending ACME challenge
//! answers (HTTP-01 key authorizations, TLS-ALPN-01 certificates) and the status list.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::pem::LoadedCert;
use crate::model::sni::{self, normalize_server_name, Selection};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Default)]
struct Snapshot {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

pub use crate::model::api::{CertSource, CertStatus};

/// Format for status times.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[derive(Default)]
struct Sources {
    /// Keyed by domain.
    acme: BTreeMap<String, Arc<LoadedCert>>,
    /// Keyed by certificate file path.
    manual: BTreeMap<String, Arc<LoadedCert>>,
    default: Option<Arc<LoadedCert>>,
}

/// The SNI store. Share it as `Arc<CertStore>`; hand it to rustls as
/// `Arc<dyn ResolvesServerCert>`.
pub struct CertStore {
    snapshot: ArcSwap<Snapshot>,
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    http01: ArcSwap<HashMap<String, String>>,
    sources: Mutex<Sources>,
    challenges: Mutex<()>,
    status: Mutex<BTreeMap<(u8, String), CertStatus>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("names", &self.snapshot.load().by_name.len())
            .finish()
    }
}

impl Default for CertStore {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a writer lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CertStore {
    pub fn new() -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            alpn: ArcSwap::from_pointee(HashMap::new()),
            http01: ArcSwap::from_pointee(HashMap::new()),
            sources: Mutex::new(Sources::default()),
            challenges: Mutex::new(()),
            status: Mutex::new(BTreeMap::new()),
        }
    }

    fn rebuild(&self, s: &Sources) {
        let mut by_name = HashMap::new();
        // ACME first so that a bring-your-own certificate for the same name wins.
        for c in s.acme.values().chain(s.manual.values()) {
            for n in &c.names {
                by_name.insert(n.clone(), c.certified.clone());
            }
        }
        let default = s.default.as_ref().map(|c| c.certified.clone());
        self.snapshot.store(Arc::new(Snapshot { by_name, default }));
    }

    /// Installs (or replaces) the ACME certificate of `domain`.
    pub fn set_acme(&self, domain: &str, cert: Arc<LoadedCert>) {
        let mut s = lock(&self.sources);
        s.acme.insert(domain.to_string(), cert);
        self.rebuild(&s);
    }

    /// Removes the ACME certificate of `domain` (domain no longer routed).
    pub fn remove_acme(&self, domain: &str) {
        let mut s = lock(&self.sources);
        if s.acme.remove(domain).is_some() {
            self.rebuild(&s);
        }
    }

    /// Installs (or replaces) a bring-your-own certificate, keyed by its file.
    pub fn set_manual(&self, key: &str, cert: Arc<LoadedCert>) {
        let mut s = lock(&self.sources);
        s.manual.insert(key.to_string(), cert);
        self.rebuild(&s);
    }

    /// Removes a bring-your-own certificate whose files disappeared.
    pub fn remove_manual(&self, key: &str) {
        let mut s = lock(&self.sources);
        if s.manual.remove(key).is_some() {
            self.rebuild(&s);
        }
    }

    pub fn set_default(&self, cert: Option<Arc<LoadedCert>>) {
        let mut s = lock(&self.sources);
        s.default = cert;
        self.rebuild(&s);
    }

    /// Whether a bring-your-own certificate covers `domain` (then ACME leaves it alone).
    pub fn manual_covers(&self, domain: &str) -> bool {
        let s = lock(&self.sources);
        s.manual
            .values()
            .any(|c| c.names.iter().any(|n| sni::covers(n, domain)))
    }

    /// The current ACME certificate of `domain`, if any.
    pub fn acme_cert(&self, domain: &str) -> Option<Arc<LoadedCert>> {
        lock(&self.sources).acme.get(domain).cloned()
    }

    /// Whether a certificate (not the default one) covers `host`; drives the HTTP→HTTPS
    /// redirect.
    pub fn has_certificate(&self, host: &str) -> bool {
        let snap = self.snapshot.load();
        matches!(
            sni::select(&snap.by_name, None, Some(host)),
            Selection::Found(..)
        )
    }

    /// The certificate a ClientHello with this SNI name gets (None: handshake refused).
    pub fn select(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let snap = self.snapshot.load();
        match sni::select(&snap.by_name, snap.default.as_ref(), server_name) {
            Selection::Found(c, _) => Some(c.clone()),
            Selection::Refuse => None,
        }
    }

    /// Publishes an HTTP-01 answer for `token`.
    pub fn add_http01(&self, token: &str, key_authorization: &str) {
        let _w = lock(&self.challenges);
        let mut m = HashMap::clone(&self.http01.load());
        m.insert(token.to_string(), key_authorization.to_string());
        self.http01.store(Arc::new(m));
    }

    pub fn remove_http01(&self, token: &str) {
        let _w = lock(&self.challenges);
        let mut m = HashMap::clone(&self.http01.load());
        m.remove(token);
        self.http01.store(Arc::new(m));
    }

    /// The key authorization for an HTTP-01 token Berth owns (None: not ours, pass through).
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.load().get(token).cloned()
    }

    /// Publishes the TLS-ALPN-01 certificate for `domain`.
    pub fn add_alpn(&self, domain: &str, cert: Arc<CertifiedKey>) {
        let _w = lock(&self.challenges);
        let mut m = HashMap::clone(&self.alpn.load());
        m.insert(domain.to_string(), cert);
        self.alpn.store(Arc::new(m));
    }

    pub fn remove_alpn(&self, domain: &str) {
        let _w = lock(&self.challenges);
        let mut m = HashMap::clone(&self.alpn.load());
        m.remove(domain);
        self.alpn.store(Arc::new(m));
    }

    /// Records the status line of a certificate.
    pub fn set_status(&self, status: CertStatus) {
        let k = (status.source as u8, status.path.clone());
        lock(&self.status).insert(k, status);
    }

    pub fn remove_status(&self, source: CertSource, path: &str) {
        lock(&self.status).remove(&(source as u8, path.to_string()));
    }

    /// Updates the status line at (`source`, `path`) in place, if present.
    pub fn update_status(&self, source: CertSource, path: &str, f: impl FnOnce(&mut CertStatus)) {
        if let Some(s) = lock(&self.status).get_mut(&(source as u8, path.to_string())) {
            f(s);
        }
    }

    /// Every known certificate with its state, for `GET /v1/certificates`.
    pub fn status(&self) -> Vec<CertStatus> {
        lock(&self.status).values().cloned().collect()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .map(|mut protos| protos.any(|p| p == ACME_TLS_ALPN))
            .unwrap_or(false);
        if acme {
            // RFC 8737: only the challenge certificate, never a real one.
            let name = hello.server_name().and_then(normalize_server_name)?;
            return self.alpn.load().get(&name).cloned();
        }
        self.select(hello.server_name())
    }
}

/// Builds a `CertStatus` line for a loaded certificate.
pub fn status_for(
    domain: &str,
    source: CertSource,
    cert: Option<&LoadedCert>,
    path: &str,
) -> CertStatus {
    CertStatus {
        domain: domain.to_string(),
        names: cert.map(|c| c.names.clone()).unwrap_or_default(),
        source,
        path: path.to_string(),
        issuer: cert.map(|c| c.issuer.clone()),
        not_after: cert.map(|c| rfc3339(c.not_after)),
        next_renewal: None,
        last_error: None,
    }
}
