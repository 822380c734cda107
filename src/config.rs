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
    let mut text = String::new();
    match std::fs::metadata(path) {
        Ok(_) => {
            // Read it ourselves first so an unreadable file is reported as such (and kept to
            // name the line of a bad key).
            let raw = std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?;
            text = String::from_utf8_lossy(&raw).into_owned();
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
        message: describe(e, &text),
    })?;
    config.validate().map_err(|e| ConfigError::Invalid {
        path: path.into(),
        field: e.field,
        message: e.message,
    })?;
    Ok(config)
}

/// One readable line per figment error: `key routes.0.domains.0: invalid host name ...`, with
/// the line in the file (`text`) where that key (or its nearest named parent) is written.
fn describe(err: figment::Error, text: &str) -> String {
    let mut parts = Vec::new();
    for e in err {
        let from_file = !matches!(&e.metadata, Some(m) if m.name.contains("environment"));
        let segments: Vec<&str> = e
            .path
            .iter()
            .map(String::as_str)
            .filter(|p| *p != "default")
            .collect();
        let line = if from_file {
            yaml_key_line(text, &segments)
        } else {
            None
        };
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
        let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
        if key.is_empty() {
            parts.push(format!("{kind}{source}"));
        } else {
            parts.push(format!("key {key}{at}{source}: {kind}"));
        }
    }
    parts.join("; ")
}

/// The 1-based line of the block-style YAML mapping key at `path` in `text` (the nearest
/// named parent when the path goes through a list index). A parsing helper for error
/// messages only: flow style or anchors give `None`, never a wrong guess deeper than found.
fn yaml_key_line(text: &str, path: &[&str]) -> Option<usize> {
    let mut found = None;
    // Lines (index, indent) under the current parent: start with the whole file.
    let mut from = 0usize;
    let mut min_indent = 0usize;
    for seg in path {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        let mut hit = None;
        let mut level = None;
        for (i, line) in text.lines().enumerate().skip(from) {
            let body = line.trim_start();
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            let indent = line.len() - body.len();
            if i > from && indent < min_indent {
                break;
            }
            let level = *level.get_or_insert(indent);
            if indent != level {
                continue;
            }
            let Some((key, _)) = body.split_once(':') else {
                continue;
            };
            if key.trim().trim_matches(['"', '\'']) == *seg {
                hit = Some((i, indent));
                break;
            }
        }
        let (i, indent) = hit?;
        found = Some(i + 1);
        from = i + 1;
        min_indent = indent + 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_in_block_yaml() {
        let text = "# berthd\nhttp:\n  listen: 0.0.0.0:80\ndeploy:\n  network: x\n\n  # ceiling\n  pull: sometimes\nroutes:\n  - domains: [a.test]\n    backends: []\n";
        assert_eq!(yaml_key_line(text, &["deploy", "pull"]), Some(8));
        assert_eq!(yaml_key_line(text, &["http", "listen"]), Some(3));
        assert_eq!(yaml_key_line(text, &["deploy"]), Some(4));
        // Through a list index: the nearest named parent.
        assert_eq!(yaml_key_line(text, &["routes", "0", "domains"]), Some(9));
        // Not written in the file (a default or an env value): no line.
        assert_eq!(yaml_key_line(text, &["deploy", "keep_images"]), None);
        assert_eq!(yaml_key_line(text, &["tls"]), None);
        // A key of the same name under another parent is not taken.
        assert_eq!(yaml_key_line(text, &["http", "network"]), None);
    }

    #[test]
    fn a_bad_pull_ceiling_names_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berthd.yaml");
        std::fs::write(&path, "deploy:\n  network: x\n  pull: sometimes\n").unwrap();
        let err = load(&path, true).unwrap_err().to_string();
        assert!(err.contains("berthd.yaml"), "{err}");
        assert!(err.contains("key deploy.pull (line 3)"), "{err}");
        assert!(err.contains("sometimes"), "{err}");
        std::fs::write(&path, "deploy:\n  pull: never\n").unwrap();
        assert_eq!(
            load(&path, true).unwrap().deploy.pull,
            crate::model::deploy::PullPolicy::Never
        );
    }
}
