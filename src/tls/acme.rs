//! The ACME issuer and renewal loop (instant-acme). One account per data dir, its key stored
//! 0600 under `<data_dir>/certs/acme/account.key` and reused on every start; one certificate
//! per routed domain under `<data_dir>/certs/acme/<domain>/{cert,key}.pem` (key 0600).
//! Certificates are ordered when a domain first appears, renewed per `model::renewal`
//! (ARI window when the CA offers `renewalInfo`), retried with backoff on failure; every step
//! is visible in the store's status list.
//!
//! Operators can ask for an order now (`POST /v1/certificates/{domain}/retry`, via
//! [`AcmeManager::request_retry`]): the domain is marked forced, the loop wakes, clears its
//! backoff and orders at once, whether the certificate failed, is missing, or is healthy (an
//! early renewal: the remedy for a certificate revoked at a CA that does not signal it through
//! ARI). One order per domain runs at a time; a request while it runs is refused (409).

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, ExternalAccountKey,
    Identifier, Key, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio::sync::{watch, Notify};

use super::dns01::DnsUpdater;
pub use super::ondemand::OnDemand;
use super::pem::{load_files, parse_pair, LoadedCert};
use super::store::{rfc3339, status_for, CertSource, CertStore};
use super::{write_file, TlsError};
use crate::model::config::{AcmeChallenge, AcmeConfig};
use crate::model::dns::TsigKey;
use crate::model::renewal::{self, AriWindow};

/// Per-domain bookkeeping of the renewal loop.
struct DomainState {
    failures: u32,
    retry_at: Option<SystemTime>,
    /// Fraction used to pick a point inside an ARI window (fixed per certificate).
    jitter: f64,
    ari: Option<AriWindow>,
    ari_next_fetch: SystemTime,
}

fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Removes published challenge answers when an order attempt ends, however it ends.
struct ChallengeCleanup<'a> {
    store: &'a CertStore,
    tokens: Vec<String>,
    alpn: Vec<String>,
    /// DNS-01 records written (name, value), with the updater and key that wrote them.
    dns: Option<DnsRecords>,
}

type DnsRecords = (Arc<DnsUpdater>, TsigKey, Vec<(String, String)>);

impl Drop for ChallengeCleanup<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.store.remove_http01(t);
        }
        for d in &self.alpn {
            self.store.remove_alpn(d);
        }
        // Normally removed (and awaited) by `issue`; left only when the order was cancelled
        // (shutdown). Delete them in the background then.
        if let Some((u, k, records)) = self.dns.take().filter(|(_, _, r)| !r.is_empty()) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    for (name, value) in records {
                        let _ = u.remove_txt(&k, &name, &value).await;
                    }
                });
            }
        }
    }
}

/// Why the TLS-ALPN-01 challenge certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ChallengeCertError {
    #[error("key authorization digest is not SHA-256")]
    Digest,
    #[error(transparent)]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    Key(#[from] rustls::Error),
}

/// Why the CA's renewal information (ARI) could not be read (the renewal then goes by the
/// certificate's lifetime).
#[derive(Debug, thiserror::Error)]
enum AriError {
    #[error(transparent)]
    Certificate(#[from] rustls::Error),
    /// instant-acme's own message for a certificate it cannot identify.
    #[error("{0}")]
    Identifier(String),
    #[error(transparent)]
    Acme(#[from] instant_acme::Error),
}

/// The TLS-ALPN-01 certificate for `domain` (RFC 8737: self-signed, the domain as its only
/// SAN, the critical acmeIdentifier extension holding SHA-256 of the key authorization).
pub fn alpn_challenge_cert(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, ChallengeCertError> {
    if digest.len() != 32 {
        return Err(ChallengeCertError::Digest);
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = super::provider().key_provider.load_private_key(der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Operator requests waiting for the renewal loop, and the order it is running.
#[derive(Default)]
pub(super) struct Requests {
    /// Domains to order now, whatever their schedule or backoff.
    pub(super) forced: BTreeSet<String>,
    /// The domain whose order is running.
    pub(super) in_flight: Option<String>,
}

/// Why a retry request was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RetryError {
    #[error("{0} is not a domain Berth orders certificates for (not routed, or ACME is off)")]
    NotManaged(String),
    #[error("{0} is covered by a bring-your-own certificate; replace its files instead")]
    Manual(String),
    #[error("an order for {0} is already running; its result shows in GET /v1/certificates")]
    InProgress(String),
}

/// Orders and renews certificates for the routed domains.
pub struct AcmeManager {
    cfg: AcmeConfig,
    /// Writes DNS-01 records (`tls.acme.dns`).
    dns: Option<Arc<DnsUpdater>>,
    pub(super) dir: PathBuf,
    pub(super) store: Arc<CertStore>,
    pub(super) domains: watch::Sender<BTreeSet<String>>,
    requests: std::sync::Mutex<Requests>,
    /// Wakes the loop when a retry is requested (a permit is kept if it is busy).
    pub(super) wake: Notify,
    /// Names ordered on demand (`tls.on_demand`), certified and renewed like routed ones.
    pub(super) extra: std::sync::Mutex<BTreeSet<String>>,
    pub(super) on_demand: Option<super::ondemand::OnDemand>,
}

/// Puts `domain` into the normal form the domain set uses (lower case, no trailing dot).
fn normalize_domain(domain: &str) -> String {
    let d = domain.trim();
    d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase()
}

fn system_time_from_unix(ts: i64) -> SystemTime {
    if ts >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(ts as u64)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

impl AcmeManager {
    /// Creates the manager and puts every certificate already on disk into `store`, so HTTPS
    /// works at once after a restart. Unusable files (expired, damaged) are reissued later.
    pub fn new(cfg: AcmeConfig, data_dir: &Path, store: Arc<CertStore>) -> Self {
        let dir = data_dir.join("certs").join("acme");
        let dns = cfg.dns.clone().map(|d| Arc::new(DnsUpdater::new(d)));
        if let Some(Err(e)) = dns.as_ref().map(|d| d.key()) {
            // Read again at every order; say so now rather than at the first renewal.
            tracing::error!(error = %e, "DNS-01 TSIG key unusable");
        }
        let me = Self {
            cfg,
            dns,
            dir,
            store,
            domains: watch::Sender::new(BTreeSet::new()),
            requests: std::sync::Mutex::new(Requests::default()),
            wake: Notify::new(),
            extra: std::sync::Mutex::new(BTreeSet::new()),
            on_demand: None,
        };
        if let Ok(rd) = std::fs::read_dir(&me.dir) {
            let now = SystemTime::now();
            for e in rd.flatten() {
                let p = e.path();
                if !p.is_dir() {
                    continue;
                }
                let Some(domain) = p.file_name().and_then(|n| n.to_str()).map(str::to_string)
                else {
                    continue;
                };
                match load_files(&p.join("cert.pem"), &p.join("key.pem"), now) {
                    Ok(c) => {
                        tracing::info!(%domain, not_after = %rfc3339(c.not_after), "stored certificate loaded");
                        me.store.set_acme(&domain, Arc::new(c));
                    }
                    Err(e) => {
                        tracing::warn!(%domain, error = %e, "stored certificate unusable; a new one will be ordered")
                    }
                }
            }
        }
        me
    }

    /// Where the certificate of `domain` lives.
    pub fn cert_path(&self, domain: &str) -> PathBuf {
        self.dir.join(domain).join("cert.pem")
    }

    /// Sets the domains that should have certificates (called after every route publish).
    /// Domains covered by a bring-your-own certificate are skipped.
    pub fn set_domains<I: IntoIterator<Item = String>>(&self, domains: I) {
        let set: BTreeSet<String> = domains.into_iter().collect();
        self.domains.send_if_modified(|cur| {
            if *cur == set {
                false
            } else {
                *cur = set;
                true
            }
        });
    }

    pub(super) fn requests(&self) -> std::sync::MutexGuard<'_, Requests> {
        // Plain data; a panic elsewhere cannot leave it half-written.
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the loop to order a certificate for `domain` now: backoff is cleared and a healthy
    /// certificate is renewed early. Returns the normalised domain once queued (asking again
    /// before the order starts is harmless); refused for domains Berth does not order for and
    /// while an order for the domain is running.
    pub fn request_retry(&self, domain: &str) -> Result<String, RetryError> {
        let d = normalize_domain(domain);
        let on_demand = || {
            self.extra
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&d)
        };
        if !self.domains.borrow().contains(&d) && !on_demand() {
            return Err(RetryError::NotManaged(d));
        }
        if self.store.manual_covers(&d) {
            return Err(RetryError::Manual(d));
        }
        {
            let mut r = self.requests();
            if r.in_flight.as_deref() == Some(d.as_str()) {
                return Err(RetryError::InProgress(d));
            }
            r.forced.insert(d.clone());
        }
        self.store.update_status(
            CertSource::Acme,
            &self.cert_path(&d).display().to_string(),
            |s| s.next_renewal = Some(rfc3339(SystemTime::now())),
        );
        tracing::info!(domain = %d, "certificate order requested by an operator");
        self.wake.notify_one();
        Ok(d)
    }

    /// Whether an order for `domain` is running now.
    pub fn in_flight(&self, domain: &str) -> bool {
        self.requests().in_flight.as_deref() == Some(normalize_domain(domain).as_str())
    }

    async fn account(&self) -> Result<Account, TlsError> {
        let e = |m: String| TlsError::Account(m);
        let builder = match &self.cfg.ca_root {
            Some(p) => Account::builder_with_root(p)
                .map_err(|err| e(format!("ca_root {}: {err}", p.display())))?,
            None => Account::builder().map_err(|err| e(err.to_string()))?,
        };
        let key_path = self.dir.join("account.key");
        let directory = self.cfg.directory.clone();
        if key_path.exists() {
            let pem = std::fs::read(&key_path).map_err(|err| TlsError::read(&key_path, err))?;
            let der = PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|err| TlsError::BadKey {
                path: key_path.clone(),
                message: err.to_string(),
            })?;
            let key = Key::from_pkcs8_der(der.clone_key()).map_err(|err| TlsError::BadKey {
                path: key_path.clone(),
                message: err.to_string(),
            })?;
            let (account, _) = builder
                .create_from_key((key, PrivateKeyDer::Pkcs8(der)), directory)
                .await
                .map_err(|err| e(format!("{}: {err}", self.cfg.directory)))?;
            return Ok(account);
        }
        let contact = self.cfg.email.as_ref().map(|m| format!("mailto:{m}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &self.cfg.eab {
            Some(eab) => {
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(eab.hmac_key.trim_end_matches('='))
                    .map_err(|err| e(format!("tls.acme.eab.hmac_key is not base64url: {err}")))?;
                Some(ExternalAccountKey::new(eab.kid.clone(), &raw))
            }
            None => None,
        };
        let (account, creds) = builder
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory,
                eab.as_ref(),
            )
            .await
            .map_err(|err| e(format!("{}: {err}", self.cfg.directory)))?;
        let pem = pem_encode("PRIVATE KEY", creds.private_key().secret_pkcs8_der());
        write_file(&key_path, pem.as_bytes(), 0o600)?;
        tracing::info!(id = %account.id(), "ACME account created");
        Ok(account)
    }

    /// Runs one order for `domain` to completion and stores the result.
    async fn issue(
        &self,
        account: &Account,
        domain: &str,
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<LoadedCert, TlsError> {
        let err = |m: String| TlsError::Order {
            domain: domain.to_string(),
            message: m,
        };
        let challenge = self.cfg.challenge_for(domain);
        // DNS-01 needs its server and key before anything is asked of the CA.
        let dns = match (challenge, &self.dns) {
            (AcmeChallenge::Dns01, Some(d)) => Some((
                d.clone(),
                d.key().map_err(|source| TlsError::Dns {
                    domain: domain.to_string(),
                    source,
                })?,
            )),
            (AcmeChallenge::Dns01, None) => {
                return Err(err(self.cfg.dns01_missing(domain).unwrap_or_default()))
            }
            _ => None,
        };
        let ids = [Identifier::Dns(domain.to_string())];
        let mut new_order = NewOrder::new(&ids);
        if let Some(r) = replaces {
            new_order = new_order.replaces(r);
        }
        let mut order = account
            .new_order(&new_order)
            .await
            .map_err(|e| err(format!("new order: {e}")))?;
        let mut cleanup = ChallengeCleanup {
            store: &self.store,
            tokens: Vec::new(),
            alpn: Vec::new(),
            dns: dns.clone().map(|(u, k)| (u, k, Vec::new())),
        };
        let kind = match challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            AcmeChallenge::Dns01 => ChallengeType::Dns01,
        };
        let result = self
            .validate_and_finalize(&mut order, domain, challenge, kind, &mut cleanup)
            .await;
        // DNS records go now (the order is validated or failed either way); a failure to
        // delete is logged, never fails the order.
        if let Some((u, k, records)) = cleanup.dns.as_mut() {
            for (name, value) in std::mem::take(records) {
                match u.remove_txt(k, &name, &value).await {
                    Ok(()) => tracing::info!(%domain, record = %name, "DNS-01 record removed"),
                    Err(e) => tracing::warn!(%domain, error = %e, "DNS-01 record not removed"),
                }
            }
        }
        drop(cleanup);
        let (key_pem, chain_pem) = result?;

        let cert_path = self.cert_path(domain);
        let key_path = cert_path.with_file_name("key.pem");
        let loaded = parse_pair(
            chain_pem.as_bytes(),
            &cert_path,
            key_pem.as_bytes(),
            &key_path,
            SystemTime::now(),
        )?;
        // Key first: a crash between the two writes leaves a pair that fails validation
        // (and is reissued) rather than a new cert with an old key in service.
        write_file(&key_path, key_pem.as_bytes(), 0o600)?;
        write_file(&cert_path, chain_pem.as_bytes(), 0o644)?;
        Ok(loaded)
    }

    /// Publishes the challenge answers, tells the CA, waits for validation, finalizes and
    /// downloads. Returns (key PEM, chain PEM).
    async fn validate_and_finalize(
        &self,
        order: &mut instant_acme::Order,
        domain: &str,
        challenge: AcmeChallenge,
        kind: ChallengeType,
        cleanup: &mut ChallengeCleanup<'_>,
    ) -> Result<(String, String), TlsError> {
        let err = |m: String| TlsError::Order {
            domain: domain.to_string(),
            message: m,
        };
        let dns_err = |source| TlsError::Dns {
            domain: domain.to_string(),
            source,
        };
        {
            let mut auths = order.authorizations();
            while let Some(a) = auths.next().await {
                let mut a = a.map_err(|e| err(format!("authorization: {e}")))?;
                match a.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    s => return Err(err(format!("authorization is {s:?}"))),
                }
                let ident = a.identifier().to_string();
                let mut ch = a
                    .challenge(kind.clone())
                    .ok_or_else(|| err(format!("the CA offers no {kind:?} challenge")))?;
                let ka = ch.key_authorization();
                match challenge {
                    AcmeChallenge::Http01 => {
                        self.store.add_http01(&ch.token, ka.as_str());
                        cleanup.tokens.push(ch.token.clone());
                    }
                    AcmeChallenge::TlsAlpn01 => {
                        let ck = alpn_challenge_cert(domain, ka.digest().as_ref()).map_err(
                            |source| TlsError::ChallengeCert {
                                domain: domain.to_string(),
                                source,
                            },
                        )?;
                        self.store.add_alpn(domain, ck);
                        cleanup.alpn.push(domain.to_string());
                    }
                    AcmeChallenge::Dns01 => {
                        let Some((u, k, records)) = cleanup.dns.as_mut() else {
                            return Err(err("tls.acme.dns is not configured".into()));
                        };
                        let name = u.record_name(&ident).map_err(&dns_err)?;
                        let value = ka.dns_value();
                        u.add_txt(k, &name, &value).await.map_err(&dns_err)?;
                        records.push((name.clone(), value.clone()));
                        let started = std::time::Instant::now();
                        let served = u.wait_served(&name, &value).await;
                        tracing::info!(%domain, record = %name, served,
                            waited_ms = started.elapsed().as_millis() as u64, "DNS-01 record written");
                    }
                }
                ch.set_ready()
                    .await
                    .map_err(|e| err(format!("challenge: {e}")))?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| err(format!("waiting for validation: {e}")))?;
        if status != OrderStatus::Ready {
            let mut details = Vec::new();
            let mut auths = order.authorizations();
            while let Some(Ok(mut a)) = auths.next().await {
                if let Ok(st) = a.refresh().await {
                    for c in &st.challenges {
                        if let Some(p) = &c.error {
                            details.push(p.to_string());
                        }
                    }
                }
            }
            return Err(err(format!(
                "order is {status:?}: {}",
                if details.is_empty() {
                    "no details from the CA".to_string()
                } else {
                    details.join("; ")
                }
            )));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| err(format!("finalize: {e}")))?;
        let chain_pem = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| err(format!("certificate: {e}")))?;
        Ok((key_pem, chain_pem))
    }

    /// Orders and renews until `stop` turns true. Checks at start, whenever the domain set
    /// changes, when a renewal or retry is due, and at least every `check_interval`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut domains_rx = self.domains.subscribe();
        let mut account: Option<Account> = None;
        let mut account_retry: Option<SystemTime> = None;
        let mut account_failures = 0u32;
        let mut account_error: Option<String> = None;
        let mut ari_supported = true;
        let mut states: HashMap<String, DomainState> = HashMap::new();
        loop {
            let extra = self.extra_names();
            let wanted: BTreeSet<String> = domains_rx
                .borrow_and_update()
                .iter()
                .chain(extra.iter())
                .filter(|d| !self.store.manual_covers(d))
                .cloned()
                .collect();
            // Domains no longer routed stop being served and renewed (files stay on disk).
            let dropped: Vec<String> = states
                .keys()
                .filter(|d| !wanted.contains(*d))
                .cloned()
                .collect();
            // A forced domain stays queued (asking again is harmless) until its order starts.
            let forced: BTreeSet<String> = {
                let mut r = self.requests();
                r.forced.retain(|d| wanted.contains(d));
                r.forced.clone()
            };
            if !forced.is_empty() && account.is_none() {
                // An operator asked: try the CA now, not when the account backoff ends.
                account_retry = None;
                account_failures = 0;
            }
            for d in dropped {
                states.remove(&d);
                self.store.remove_acme(&d);
                self.store
                    .remove_status(CertSource::Acme, &self.cert_path(&d).display().to_string());
            }

            // Register early (also validates the CA settings at start, and lets ARI be asked
            // about certificates loaded from disk before anything is due).
            if account.is_none()
                && !wanted.is_empty()
                && account_retry.is_none_or(|t| t <= SystemTime::now())
            {
                match self.account().await {
                    Ok(a) => {
                        account = Some(a);
                        account_failures = 0;
                        account_retry = None;
                        account_error = None;
                    }
                    Err(e) => {
                        account_failures += 1;
                        let delay =
                            renewal::retry_delay(account_failures, self.cfg.max_retry_delay);
                        account_retry = Some(SystemTime::now() + delay);
                        tracing::error!(error = %e, retry_in = ?delay, "ACME account unavailable");
                        account_error = Some(e.to_string());
                    }
                }
            }
            let mut wake = SystemTime::now() + self.cfg.check_interval;
            if let Some(t) = account_retry {
                wake = wake.min(t);
            }
            for domain in &wanted {
                if *stop.borrow() {
                    return;
                }
                let now = SystemTime::now();
                let path = self.cert_path(domain).display().to_string();
                let st = states.entry(domain.clone()).or_insert_with(|| DomainState {
                    failures: 0,
                    retry_at: None,
                    jitter: random_fraction(),
                    ari: None,
                    ari_next_fetch: now,
                });
                let current = self.store.acme_cert(domain);
                let force = forced.contains(domain);
                if force {
                    st.failures = 0;
                    st.retry_at = None;
                }

                // ACME Renewal Information, when the CA has it.
                if let (Some(cert), Some(acct), true) = (&current, &account, ari_supported) {
                    if st.ari_next_fetch <= now {
                        match fetch_ari(acct, cert).await {
                            Ok(Some((w, retry_after))) => {
                                st.ari = Some(w);
                                st.ari_next_fetch = now + retry_after.max(Duration::from_secs(60));
                            }
                            Ok(None) => ari_supported = false,
                            Err(e) => {
                                tracing::debug!(%domain, error = %e, "renewal info unavailable");
                                st.ari_next_fetch = now + Duration::from_secs(3600);
                            }
                        }
                    }
                }

                let due = match (&current, st.retry_at) {
                    _ if force => now,
                    (_, Some(r)) => r,
                    (None, None) => now,
                    (Some(c), None) => {
                        renewal::renewal_time(c.not_before, c.not_after, st.ari, st.jitter).0
                    }
                };
                let mut status = status_for(domain, CertSource::Acme, current.as_deref(), &path);
                if due > now {
                    status.next_renewal = Some(rfc3339(due));
                    status.last_error = self
                        .store
                        .status()
                        .into_iter()
                        .find(|s| s.source == CertSource::Acme && s.path == path)
                        .and_then(|s| s.last_error);
                    self.store.set_status(status);
                    wake = wake.min(due);
                    continue;
                }

                // Due, but the settings cannot prove this name (a wildcard without DNS-01):
                // say so in the status list instead of asking the CA.
                if let Some(msg) = self.cfg.dns01_missing(domain) {
                    self.requests().forced.remove(domain);
                    let at = now + self.cfg.check_interval;
                    status.last_error = Some(
                        TlsError::Order {
                            domain: domain.clone(),
                            message: msg,
                        }
                        .to_string(),
                    );
                    status.next_renewal = Some(rfc3339(at));
                    self.store.set_status(status);
                    wake = wake.min(at);
                    continue;
                }

                // Due: order, if there is an account.
                let Some(acct) = &account else {
                    if force {
                        // The account attempt above was this request's answer.
                        self.requests().forced.remove(domain);
                    }
                    let at = account_retry.unwrap_or(now + Duration::from_secs(10));
                    status.last_error = Some(
                        account_error
                            .clone()
                            .unwrap_or_else(|| "ACME account unavailable".into()),
                    );
                    status.next_renewal = Some(rfc3339(at));
                    self.store.set_status(status);
                    wake = wake.min(at);
                    continue;
                };
                let replaces = match (&current, st.ari.is_some()) {
                    (Some(c), true) => c
                        .certified
                        .end_entity_cert()
                        .ok()
                        .and_then(|der| CertificateIdentifier::try_from(der).ok())
                        .map(CertificateIdentifier::into_owned),
                    _ => None,
                };
                let started = std::time::Instant::now();
                tracing::info!(%domain, renewal = current.is_some(), forced = force, "ordering certificate");
                {
                    let mut r = self.requests();
                    r.forced.remove(domain);
                    r.in_flight = Some(domain.clone());
                }
                let issue = tokio::select! {
                    r = self.issue(acct, domain, replaces) => r,
                    _ = stop.changed() => return,
                };
                self.requests().in_flight = None;
                let now = SystemTime::now();
                match issue {
                    Ok(cert) => {
                        tracing::info!(%domain, not_after = %rfc3339(cert.not_after),
                            took_ms = started.elapsed().as_millis() as u64, "certificate issued");
                        let cert = Arc::new(cert);
                        self.store.set_acme(domain, cert.clone());
                        st.failures = 0;
                        st.retry_at = None;
                        st.ari = None;
                        st.ari_next_fetch = now;
                        st.jitter = random_fraction();
                        let next =
                            renewal::renewal_time(cert.not_before, cert.not_after, None, st.jitter)
                                .0;
                        let mut s = status_for(domain, CertSource::Acme, Some(&cert), &path);
                        s.next_renewal = Some(rfc3339(next));
                        self.store.set_status(s);
                        wake = wake.min(next);
                    }
                    Err(e) => {
                        st.failures += 1;
                        let delay = renewal::retry_delay(st.failures, self.cfg.max_retry_delay);
                        st.retry_at = Some(now + delay);
                        tracing::error!(%domain, error = %e, failures = st.failures, retry_in = ?delay, "certificate order failed");
                        if matches!(&e, TlsError::Order { message, .. } if message.contains("accountDoesNotExist"))
                        {
                            // The CA forgot us (e.g. a test CA restarted): re-register.
                            account = None;
                        }
                        status.last_error = Some(e.to_string());
                        status.next_renewal = Some(rfc3339(now + delay));
                        self.store.set_status(status);
                        wake = wake.min(now + delay);
                        if current.is_none() && extra.contains(domain) {
                            // A first on-demand order failed: forget the name; the next
                            // handshake may try again (rate-limited per name).
                            self.forget_on_demand(domain);
                            wake = SystemTime::now();
                        }
                    }
                }
            }

            let sleep = wake
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                r = domains_rx.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

/// Asks the CA for the renewal window of `cert`. `Ok(None)`: the CA does not offer ARI.
async fn fetch_ari(
    account: &Account,
    cert: &LoadedCert,
) -> Result<Option<(AriWindow, Duration)>, AriError> {
    let der = cert.certified.end_entity_cert()?;
    let id = CertificateIdentifier::try_from(der).map_err(AriError::Identifier)?;
    match account.renewal_info(&id).await {
        Ok((info, retry_after)) => {
            let w = info.suggested_window;
            Ok(Some((
                AriWindow {
                    start: system_time_from_unix(w.start.unix_timestamp()),
                    end: system_time_from_unix(w.end.unix_timestamp()),
                },
                retry_after,
            )))
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(dir: &Path) -> AcmeManager {
        AcmeManager::new(AcmeConfig::default(), dir, Arc::new(CertStore::new()))
    }

    #[test]
    fn retry_requests_are_checked_and_queued() {
        let dir = tempfile::tempdir().expect("tmp");
        let m = manager(dir.path());
        m.set_domains(["a.test".to_string(), "b.test".to_string()]);
        assert_eq!(
            m.request_retry("c.test"),
            Err(RetryError::NotManaged("c.test".into()))
        );
        // Normalised like the domain set: case and a trailing dot do not matter.
        assert_eq!(m.request_retry("A.Test."), Ok("a.test".into()));
        assert_eq!(m.request_retry("a.test"), Ok("a.test".into()), "idempotent");
        assert_eq!(
            m.requests().forced.iter().collect::<Vec<_>>(),
            vec!["a.test"]
        );
        m.requests().in_flight = Some("b.test".into());
        assert!(m.in_flight("B.test"));
        assert_eq!(
            m.request_retry("b.test"),
            Err(RetryError::InProgress("b.test".into()))
        );
        assert!(!m.requests().forced.contains("b.test"));
        // A domain that is no longer routed cannot be retried.
        m.set_domains(["b.test".to_string()]);
        assert_eq!(
            m.request_retry("a.test"),
            Err(RetryError::NotManaged("a.test".into()))
        );
        // Names certified on demand can.
        m.extra.lock().expect("extra").insert("od.test".into());
        assert_eq!(m.request_retry("od.test"), Ok("od.test".into()));
    }
}
