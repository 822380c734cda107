//! `berthd`'s admin commands, run without a daemon (`init`, `token`, `backup`) or against the
//! running one through its control socket (`upgrade`, `reload`, `status`). Each prints for a
//! person and returns the process exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use super::cli::TokenCommand;

const STARTER_CONFIG: &str = r#"# /etc/berth/berthd.yaml: berthd's configuration. Every key is optional; the values
# shown are the defaults. Reference: README.md ("Configuration"). Check with
# `berthd check-config`, apply with `berthd reload` (or `systemctl reload berthd`).

http:
  listen: 0.0.0.0:80          # plain-HTTP proxy listener

api:
  listen: 127.0.0.1:9922      # REST API + status page (/ui/); keep it on loopback and use an
                              # SSH tunnel, or set `domain:` to serve it over HTTPS
  # domain: berth.example.com # the proxy serves the API on https://berth.example.com/ with
                              # a certificate like any app (needs the tls: section below)

# tls:
#   listen: 0.0.0.0:443
#   acme:
#     email: ops@example.com  # Let's Encrypt production unless `directory:` says otherwise
#   redirect: true            # HTTP -> HTTPS (308) for hosts that have a certificate

proxy:
  workers: 0                  # 0 = one per CPU core
  max_body_size: 100MiB
  timeouts:
    connect: 5s
    response_header: 60s
    client_header: 10s
    idle: 60s
    drain: 30s

log:
  level: info
  format: human               # human | json (journald is used under systemd)
  access_log: true

data_dir: /var/lib/berth

# Static routes (the API shows them read-only); deploys add their own routes.
# routes:
#   - domains: [app.example.com]
#     aliases: [www.app.example.com]
#     backends:
#       - address: 10.0.0.5:8080
"#;

pub(super) fn init_command(
    config: Option<PathBuf>,
    server_name: &str,
    new_token: bool,
) -> ExitCode {
    let path = config.unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_PATH));
    if path.exists() {
        eprintln!("berthd init: {} exists; keeping it", path.display());
    } else {
        if let Some(dir) = path.parent() {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("berthd init: cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
        if let Err(e) = std::fs::write(&path, STARTER_CONFIG) {
            eprintln!("berthd init: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("berthd init: wrote {}", path.display());
    }
    let config = match crate::config::load(&path, true) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match crate::store::Store::open(&config.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    match crate::store::secrets::SecretsKey::load_or_create(&config.data_dir) {
        Ok((key, true)) => eprintln!(
            "berthd init: created the secrets key {} (app secrets are stored encrypted with \
             it; back it up with berth.db)",
            key.source().display()
        ),
        Ok((key, false)) => eprintln!(
            "berthd init: secrets key {} exists; keeping it",
            key.source().display()
        ),
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    }
    let existing = match store.list_tokens() {
        Ok(t) => t
            .into_iter()
            .find(|t| t.name == "init" && t.revoked_at.is_none()),
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let api = config.api.listen;
    let url = match &config.api.domain {
        Some(domain) => format!("https://{domain}"),
        None if api.ip().is_unspecified() => format!("http://127.0.0.1:{}", api.port()),
        None => format!("http://{api}"),
    };
    if let (Some(t), false) = (existing, new_token) {
        eprintln!(
            "berthd init: data dir {} ready; an init token exists already (id {}). \
             Run `berthd init --new-token` (or `berthd token create`) for another.",
            config.data_dir.display(),
            t.id
        );
        return ExitCode::SUCCESS;
    }
    match store.create_token("init") {
        Ok((_, secret)) => {
            eprintln!("berthd init: data dir {} ready", config.data_dir.display());
            if config.api.domain.is_none() {
                eprintln!(
                    "berthd init: on your laptop, open a tunnel to the API (it listens on loopback):"
                );
                eprintln!(
                    "  ssh -N -L {0}:127.0.0.1:{0} root@THIS-SERVER &",
                    api.port()
                );
                eprintln!("berthd init: then run (the token is shown only this once):");
            } else {
                eprintln!("berthd init: on your laptop, run (the token is shown only this once):");
            }
            println!("berth server add {server_name} {url} --token {secret}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn rfc3339(ts: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(ts.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn token_command(cmd: TokenCommand, config: Option<PathBuf>) -> ExitCode {
    let config = match load_or_exit(config) {
        Ok((_, c)) => c,
        Err(code) => return code,
    };
    let store = match crate::store::Store::open(&config.data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cmd {
        TokenCommand::Create { name, scopes } => {
            let scopes = if scopes.is_empty() {
                Ok(crate::model::access::Scopes::admin())
            } else {
                crate::model::access::Scopes::parse(&scopes)
            };
            let scopes = match scopes {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("berthd token create: --scope: {e}");
                    return ExitCode::from(2);
                }
            };
            store
                .create_token_scoped(&name, &scopes)
                .map(|(info, secret)| {
                    println!("{secret}");
                    eprintln!(
                        "created token {} ({:?}, scopes {}); it is shown only this once: store \
                         it now",
                        info.id, info.name, info.scopes
                    );
                })
        }
        TokenCommand::List => store.list_tokens().map(|tokens| {
            println!(
                "{:<6} {:<24} {:<22} {:<24} STATUS",
                "ID", "NAME", "CREATED", "SCOPES"
            );
            for t in tokens {
                let status = match t.revoked_at {
                    Some(r) => format!("revoked {}", rfc3339(r)),
                    None => "active".into(),
                };
                println!(
                    "{:<6} {:<24} {:<22} {:<24} {status}",
                    t.id,
                    t.name,
                    rfc3339(t.created_at),
                    t.scopes.to_string()
                );
            }
        }),
        TokenCommand::Revoke { id } => store.revoke_token(id).map(|t| {
            eprintln!("revoked token {} ({:?})", t.id, t.name);
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn backup_command(config: Option<PathBuf>, file: &std::path::Path) -> ExitCode {
    let config = match load_or_exit(config) {
        Ok((_, c)) => c,
        Err(code) => return code,
    };
    match crate::store::backup(&config.data_dir, file) {
        Ok(()) => {
            let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "berthd backup: {} -> {} ({size} bytes, quick_check ok)",
                config.data_dir.join(crate::store::DB_FILE).display(),
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berthd backup: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn load_or_exit(
    path: Option<PathBuf>,
) -> Result<(PathBuf, crate::model::config::Config), ExitCode> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (PathBuf::from(crate::config::DEFAULT_PATH), false),
    };
    match crate::config::load(&path, required) {
        Ok(c) => Ok((path, c)),
        Err(e) => {
            eprintln!("berthd: {e}");
            Err(ExitCode::from(2))
        }
    }
}

pub(super) fn control(path: Option<PathBuf>, command: &str) -> ExitCode {
    let socket = match load_or_exit(path) {
        Ok((_, c)) => c.control_socket(),
        // A broken file must still reach the daemon on `reload`, so that it rejects it, logs
        // it and reports it as STATUS= (the error above is printed too). The daemon's own
        // socket path then comes from the defaults.
        Err(_) if command == "reload" => crate::model::config::Config::default().control_socket(),
        Err(code) => return code,
    };
    match crate::lifecycle::control::call(&socket, command) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("berthd {command}: {e}");
            ExitCode::FAILURE
        }
    }
}
