//! Loads the daemon configuration: built-in defaults, then the YAML file, then `BERTH_*`
//! environment variables (nested keys with `__`, e.g. `BERTH_PROXY__WORKERS=2`). Every error
//! names the file, the key and the problem; nothing falls back silently.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Yaml};
use figment::Figment;
use thiserror::Error;

use crate::model::config::Config;

/// Where the daemon looks when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/berth/berthd.yaml";

/// Top-level sections `BERTH_*` variables may set. Other `BERTH_*` variables (the CLI's
/// `BERTH_SERVER`, `BERTH_TOKEN`, ...) are not configuration and are ignored here.
const ENV_SECTIONS: &[&str] = &[
    "http",
    "api",
    "proxy",
    "log",
    "lifecycle",
    "tls",
    "deploy",
    "data_dir",
];

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Loads and validates. A missing file is an error only when `required` (an explicit path).
pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    match std::fs::metadata(path) {
        Ok(_) => {
            // Read it ourselves first so an unreadable file is reported as such.
            std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?;
            fig = fig.merge(Yaml::file_exact(path));
        }
        Err(source) if required || source.kind() != std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Read {
                path: path.into(),
                source,
            })
        }
        Err(_) => {}
    }
    fig = fig.merge(
        Env::prefixed("BERTH_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                ENV_SECTIONS
                    .iter()
                    .any(|s| k == *s || k.starts_with(&format!("{s}__")))
            })
            .split("__"),
    );
    let config: Config = fig.extract().map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: describe(e),
    })?;
    config.validate().map_err(|e| ConfigError::Invalid {
        path: path.into(),
        field: e.field,
        message: e.message,
    })?;
    Ok(config)
}

/// One readable line per figment error: `key routes.0.domains.0: invalid host name ...`.
fn describe(err: figment::Error) -> String {
    let mut parts = Vec::new();
    for e in err {
        let mut key = String::new();
        for seg in e.path.iter().filter(|p| p.as_str() != "default") {
            if seg.bytes().all(|b| b.is_ascii_digit()) && !key.is_empty() {
                key.push_str(&format!("[{seg}]"));
            } else {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(seg);
            }
        }
        let source = match &e.metadata {
            Some(m) if m.name.contains("environment") => " (from environment variable)",
            _ => "",
        };
        let kind = e.kind.to_string();
        if key.is_empty() {
            parts.push(format!("{kind}{source}"));
        } else {
            parts.push(format!("key {key}{source}: {kind}"));
        }
    }
    parts.join("; ")
}
