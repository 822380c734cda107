//! On-demand TLS (`tls.on_demand`): a handshake for a name that has no certificate and is
//! not routed asks the operator's endpoint (`GET ASK?domain=NAME`, 200 = allowed) and, if
//! allowed, has the ACME loop order a certificate for it at once; the handshake waits (at most
//! `timeout`) and then continues with whatever the store holds. Limits (`model::ondemand`)
//! are checked before the endpoint is asked, so a flood of random names costs at most one
//! refusal lookup each and never reaches the CA beyond `max_per_hour`.
//!
//! Names that got a certificate are kept in `<data_dir>/certs/acme/on-demand.list` and renewed
//! like routed domains, across restarts. A first order that fails forgets the name again.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::acme::AcmeManager;
use crate::model::config::OnDemandConfig;
use crate::model::host::parse_domain;
use crate::model::ondemand::Admission;
use crate::model::sni::normalize_server_name;

/// How long the ask endpoint may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// State of on-demand admission: the limits' bookkeeping and the names being asked about.
pub struct OnDemand {
    cfg: OnDemandConfig,
    state: Mutex<(Admission, HashSet<String>)>,
    http: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AcmeManager {
    /// Turns on-demand TLS on (with `Some`); names certified on demand before a restart are
    /// taken up again.
    pub fn with_on_demand(mut self, cfg: Option<OnDemandConfig>) -> Self {
        let Some(cfg) = cfg else {
            return self;
        };
        let http = reqwest::Client::builder()
            .timeout(ASK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        self.on_demand = Some(OnDemand {
            cfg,
            state: Mutex::new((Admission::default(), HashSet::new())),
            http,
        });
        if let Ok(text) = std::fs::read_to_string(self.list_path()) {
            let mut extra = lock(&self.extra);
            for name in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if self.store.acme_cert(name).is_some() {
                    extra.insert(name.to_string());
                }
            }
        }
        self
    }

    fn list_path(&self) -> std::path::PathBuf {
        self.dir.join("on-demand.list")
    }

    /// The names certified on demand.
    pub fn extra_names(&self) -> BTreeSet<String> {
        lock(&self.extra).clone()
    }

    fn save_extra(&self, names: &BTreeSet<String>) {
        let mut text = String::new();
        for n in names {
            text.push_str(n);
            text.push('\n');
        }
        if let Err(e) = super::write_file(&self.list_path(), text.as_bytes(), 0o644) {
            tracing::warn!(error = %e, "on-demand name list not saved");
        }
    }

    pub(super) fn forget_on_demand(&self, name: &str) {
        let mut extra = lock(&self.extra);
        if extra.remove(name) {
            self.save_extra(&extra);
        }
    }

    /// Whether a handshake for `server_name` should wait for an on-demand order: on-demand is
    /// on, and no certificate (other than the default one) covers the name. Cheap: one
    /// snapshot lookup.
    pub fn wants_on_demand(&self, server_name: &str) -> bool {
        self.on_demand.is_some() && !self.store.has_certificate(server_name)
    }

    /// Asks, orders and waits (bounded by `tls.on_demand.timeout`) for `server_name`. Returns
    /// when the certificate is in the store, the name is refused or limited, or time is up.
    pub async fn obtain_on_demand(self: Arc<Self>, server_name: String) {
        let Some(od) = &self.on_demand else {
            return;
        };
        let Some(name) = normalize_server_name(&server_name) else {
            return;
        };
        // Names a public CA could certify: no IP literals, no single labels, no wildcards.
        if name.parse::<std::net::IpAddr>().is_ok()
            || !name.contains('.')
            || parse_domain(&name, false).is_err()
        {
            return;
        }
        if self.domains.borrow().contains(&name) {
            // Routed: the renewal loop orders it anyway; nothing to ask.
            return;
        }
        let deadline = Instant::now() + od.cfg.timeout;
        let joined = {
            let mut st = lock(&od.state);
            if st.1.contains(&name) || lock(&self.extra).contains(&name) {
                true // Someone is asking or ordering already: wait for that.
            } else {
                if let Err(why) = st.0.check(&od.cfg.limits(), &name, SystemTime::now()) {
                    tracing::info!(%name, reason = %why, "on-demand certificate not ordered");
                    return;
                }
                st.1.insert(name.clone());
                false
            }
        };
        if !joined {
            let allowed = self.ask(od, &name).await;
            let mut st = lock(&od.state);
            st.1.remove(&name);
            let now = SystemTime::now();
            match allowed {
                Ok(()) => {
                    st.0.record_attempt(&name, now);
                    drop(st);
                    {
                        let mut extra = lock(&self.extra);
                        extra.insert(name.clone());
                        self.save_extra(&extra);
                    }
                    self.requests().forced.insert(name.clone());
                    tracing::info!(%name, "on-demand certificate allowed by the ask endpoint; ordering");
                    self.wake.notify_one();
                }
                Err(why) => {
                    st.0.record_refusal(&name, now);
                    tracing::info!(%name, reason = %why, "on-demand certificate refused");
                    return;
                }
            }
        }
        // Wait for the loop: done when the certificate is in, or the name was dropped again
        // (its first order failed).
        while Instant::now() < deadline {
            if self.store.has_certificate(&name) {
                return;
            }
            let pending = {
                let st = lock(&od.state);
                st.1.contains(&name)
            };
            if !pending && !lock(&self.extra).contains(&name) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(%name, timeout = ?od.cfg.timeout, "on-demand certificate not ready in time; the handshake goes on without it");
    }

    /// `GET ask?domain=NAME`: `Ok` on 200, else why not.
    async fn ask(&self, od: &OnDemand, name: &str) -> Result<(), AskError> {
        let mut url = url::Url::parse(&od.cfg.ask)?;
        url.query_pairs_mut().append_pair("domain", name);
        match od.http.get(url).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::OK => Ok(()),
            Ok(r) => Err(AskError::Refused(r.status().as_u16())),
            Err(e) => Err(AskError::Unreachable(e)),
        }
    }
}

/// Why the `ask` endpoint did not allow a certificate.
#[derive(Debug, thiserror::Error)]
enum AskError {
    #[error("tls.on_demand.ask: {0}")]
    Url(#[from] url::ParseError),
    #[error("ask endpoint answered {0}")]
    Refused(u16),
    #[error("ask endpoint unreachable: {0}")]
    Unreachable(reqwest::Error),
}
