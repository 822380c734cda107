//! Bring-your-own certificates: pairs named in `tls.certs` / `tls.default_cert`, plus
//! `NAME.crt` + `NAME.key` pairs dropped into `<data_dir>/certs/manual/`. Each pair is
//! validated on load and re-checked (file mtime + size) every `reload_interval`; a bad new
//! file keeps the old certificate in service and records the error in the status list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::pem::load_files;
use super::store::{status_for, CertSource, CertStore};
use super::TlsError;
use crate::model::config::{CertFiles, TlsConfig};

type Stamp = Option<(SystemTime, u64)>;

fn stamp(p: &Path) -> Stamp {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

struct Tracked {
    files: CertFiles,
    is_default: bool,
    /// From the directory (disappears when the files do) rather than the config.
    from_dir: bool,
    seen: (Stamp, Stamp),
}

/// Watches bring-your-own certificate files and keeps the store in sync.
pub struct ManualCerts {
    store: Arc<CertStore>,
    dir: PathBuf,
    tracked: BTreeMap<String, Tracked>,
}

fn key_of(f: &CertFiles) -> String {
    f.cert.display().to_string()
}

impl ManualCerts {
    /// Loads every configured pair; any error here is fatal (the configuration is wrong).
    /// Pairs in the manual directory that fail are reported in the status list instead.
    pub fn load(store: Arc<CertStore>, cfg: &TlsConfig, data_dir: &Path) -> Result<Self, TlsError> {
        let mut me = Self {
            store,
            dir: data_dir.join("certs").join("manual"),
            tracked: BTreeMap::new(),
        };
        let now = SystemTime::now();
        let configured = cfg
            .default_cert
            .iter()
            .map(|f| (f, true))
            .chain(cfg.certs.iter().map(|f| (f, false)));
        for (files, is_default) in configured {
            let loaded = Arc::new(load_files(&files.cert, &files.key, now)?);
            let key = key_of(files);
            me.install(&key, is_default, loaded);
            me.tracked.insert(
                key,
                Tracked {
                    files: files.clone(),
                    is_default,
                    from_dir: false,
                    seen: (stamp(&files.cert), stamp(&files.key)),
                },
            );
        }
        me.poll();
        Ok(me)
    }

    fn install(&self, key: &str, is_default: bool, cert: Arc<super::pem::LoadedCert>) {
        let first = cert.names.first().cloned().unwrap_or_default();
        let source = if is_default {
            CertSource::Default
        } else {
            CertSource::Manual
        };
        self.store
            .set_status(status_for(&first, source, Some(&cert), key));
        if is_default {
            self.store.set_default(Some(cert));
        } else {
            self.store.set_manual(key, cert);
        }
    }

    /// Pairs currently in the manual directory.
    fn scan_dir(&self) -> Vec<CertFiles> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some("crt") {
                let key = p.with_extension("key");
                if key.exists() {
                    out.push(CertFiles { cert: p, key });
                }
            }
        }
        out.sort_by(|a, b| a.cert.cmp(&b.cert));
        out
    }

    /// Checks every tracked pair for changes and picks up new or removed directory pairs.
    /// Returns how many certificates were (re)loaded.
    pub fn poll(&mut self) -> usize {
        let now = SystemTime::now();
        let in_dir = self.scan_dir();
        // Pairs removed from the directory leave the store.
        let gone: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.from_dir && !in_dir.iter().any(|f| f.cert == t.files.cert))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            tracing::info!(cert = %k, "manual certificate removed");
            self.tracked.remove(&k);
            self.store.remove_manual(&k);
            self.store.remove_status(CertSource::Manual, &k);
        }
        for f in in_dir {
            let k = key_of(&f);
            self.tracked.entry(k).or_insert(Tracked {
                files: f,
                is_default: false,
                from_dir: true,
                seen: (None, None),
            });
        }
        let mut loaded = 0;
        let keys: Vec<String> = self.tracked.keys().cloned().collect();
        for k in keys {
            let Some(t) = self.tracked.get(&k) else {
                continue;
            };
            let now_seen = (stamp(&t.files.cert), stamp(&t.files.key));
            if now_seen == t.seen {
                continue;
            }
            let (files, is_default) = (t.files.clone(), t.is_default);
            match load_files(&files.cert, &files.key, now) {
                Ok(c) => {
                    tracing::info!(cert = %files.cert.display(), names = ?c.names, "certificate loaded");
                    self.install(&k, is_default, Arc::new(c));
                    loaded += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate not loaded; the previous one (if any) stays in service");
                    let source = if is_default {
                        CertSource::Default
                    } else {
                        CertSource::Manual
                    };
                    let msg = e.to_string();
                    let mut found = false;
                    self.store.update_status(source, &k, |s| {
                        s.last_error = Some(msg.clone());
                        found = true;
                    });
                    if !found {
                        let mut s = status_for("", source, None, &k);
                        s.last_error = Some(msg);
                        self.store.set_status(s);
                    }
                }
            }
            if let Some(t) = self.tracked.get_mut(&k) {
                t.seen = now_seen;
            }
        }
        loaded
    }

    /// Polls every `interval` until `stop` turns true.
    pub async fn run(mut self, interval: Duration, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {
                    // File reads are small; do them off the async workers anyway.
                    self = match tokio::task::spawn_blocking(move || { self.poll(); self }).await {
                        Ok(me) => me,
                        Err(e) => {
                            tracing::error!(error = %e, "certificate reload task failed");
                            return;
                        }
                    };
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
