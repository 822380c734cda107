//! The CLI's own settings: named servers (URL + token) in `~/.config/berth/config.yaml`
//! (mode 0600), the current one, and the `BERTH_SERVER`/`BERTH_TOKEN`/`BERTH_URL`/
//! `BERTH_CA_CERT` overrides.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ClientError;

/// One server the CLI can talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub url: String,
    pub token: String,
    /// PEM file of extra CA certificates to trust for this server's HTTPS (a private CA);
    /// `BERTH_CA_CERT` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub servers: BTreeMap<String, Server>,
}

/// `$XDG_CONFIG_HOME/berth/config.yaml`, else `~/.config/berth/config.yaml`.
pub fn path() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_CLI_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("berth").join("config.yaml")
}

impl Settings {
    pub fn load() -> Result<Self, ClientError> {
        let p = path();
        match std::fs::read_to_string(&p) {
            Ok(s) => serde_yaml::from_str(&s).map_err(|e| ClientError::Settings {
                path: p,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ClientError::Settings {
                path: p,
                message: e.to_string(),
            }),
        }
    }

    /// Writes atomically with mode 0600 (the file holds tokens).
    pub fn save(&self) -> Result<(), ClientError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path();
        let err = |e: std::io::Error| ClientError::Settings {
            path: p.clone(),
            message: e.to_string(),
        };
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = p.with_extension("yaml.tmp");
        let text = serde_yaml::to_string(self).map_err(|e| ClientError::Settings {
            path: p.clone(),
            message: e.to_string(),
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &p).map_err(err)?;
        Ok(())
    }

    /// The server a command talks to: `--server`, else `BERTH_SERVER`, else the current one;
    /// `BERTH_URL` + `BERTH_TOKEN` alone also work (CI without a config file).
    pub fn resolve(&self, flag: Option<&str>) -> Result<(String, Server), ClientError> {
        let env_token = std::env::var("BERTH_TOKEN").ok().filter(|t| !t.is_empty());
        let env_name = std::env::var("BERTH_SERVER").ok().filter(|t| !t.is_empty());
        let name = flag
            .map(str::to_string)
            .or(env_name)
            .or(self.current.clone());
        if name.is_none() {
            if let (Ok(url), Some(token)) = (std::env::var("BERTH_URL"), env_token.clone()) {
                return Ok((
                    "env".into(),
                    Server {
                        url,
                        token,
                        ca_cert: env_ca_cert(),
                    },
                ));
            }
        }
        let name = name.ok_or(ClientError::NoServer)?;
        let mut server = self
            .servers
            .get(&name)
            .cloned()
            .ok_or_else(|| ClientError::UnknownServer(name.clone()))?;
        if let Some(t) = env_token {
            server.token = t;
        }
        if let Some(ca) = env_ca_cert() {
            server.ca_cert = Some(ca);
        }
        Ok((name, server))
    }
}

/// `BERTH_CA_CERT`, when set and not empty.
fn env_ca_cert() -> Option<PathBuf> {
    std::env::var_os("BERTH_CA_CERT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
