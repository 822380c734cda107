//! One function per CLI command. Each talks to the API through `Api`, prints through `Out`,
//! and returns the process exit code (0 only when the thing asked for happened).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use super::api::{check_url, Api};
use super::appfile::{starter, AppFile};
use super::output::{field, text, Out};
use super::settings::{Server, Settings};
use super::{AppsCmd, BackendsCmd, CertsCmd, Cli, ClientError, Command, RoutesCmd, ServerCmd};

fn seg(s: &str) -> String {
    // Path segments are names/ids; percent-encode anything unusual.
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn connect(cli_servers: &[String]) -> Result<(String, Api), ClientError> {
    let settings = Settings::load()?;
    let (name, server) = settings.resolve(cli_servers.first().map(String::as_str))?;
    let api = Api::new(&server)?;
    api.check_version().await?;
    Ok((name, api))
}

pub async fn run(cli: Cli, out: &Out) -> Result<u8, ClientError> {
    let g = cli.global;
    match cli.command {
        Command::Server(cmd) => server(cmd, out).await,
        Command::Init { name, force } => init(name, force, out),
        Command::Completions { shell } => {
            let shell = match shell.as_str() {
                "bash" => clap_complete::Shell::Bash,
                "zsh" => clap_complete::Shell::Zsh,
                _ => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            Ok(0)
        }
        Command::Deploy {
            file,
            image_tar,
            detach,
        } => deploy(&g.server, &file, image_tar, detach, out).await,
        Command::Apps {
            action: Some(AppsCmd::Delete { app, keep_history }),
        } => {
            let (_, api) = connect(&g.server).await?;
            let history = if keep_history { "keep" } else { "remove" };
            let v: Value = api
                .json(
                    Method::DELETE,
                    &format!("/v1/apps/{}?history={history}", seg(&app)),
                    None,
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                out.line(&format!(
                    "{app} deleted: {} replicas removed, {} deployments {}",
                    n("replicas_removed"),
                    n("deployments"),
                    if keep_history { "kept" } else { "removed" }
                ));
            }
            Ok(0)
        }
        Command::Apps {
            action: None | Some(AppsCmd::List),
        } => {
            let (_, api) = connect(&g.server).await?;
            let v: Value = api.json(Method::GET, "/v1/apps", None).await?;
            if out.json {
                out.json(&v);
            } else {
                out.table(
                    &["app", "replicas", "health", "deployment", "domains"],
                    app_rows(&v, out),
                );
            }
            Ok(0)
        }
        Command::Status { app } => status(&g.server, app, out).await,
        Command::Deployments { app } => {
            let (_, api) = connect(&g.server).await?;
            let v: Value = api
                .json(
                    Method::GET,
                    &format!("/v1/apps/{}/deployments", seg(&app)),
                    None,
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = list(&v, "deployments")
                    .iter()
                    .map(|d| {
                        vec![
                            field(d, &["id"]),
                            out.state(&field(d, &["state", "status"])),
                            field(d, &["image", "spec.image"]),
                            when(&field(d, &["created_at", "started_at"])),
                            when(&field(d, &["finished_at"])),
                            field(d, &["error", "reason"]),
                        ]
                    })
                    .collect();
                out.table(
                    &["id", "state", "image", "started", "finished", "reason"],
                    rows,
                );
            }
            Ok(0)
        }
        Command::Rollback { app, deployment } => {
            let (_, api) = connect(&g.server).await?;
            let body = match &deployment {
                Some(d) => json!({ "deployment": d }),
                None => json!({}),
            };
            let v: Value = api
                .json(
                    Method::POST,
                    &format!("/v1/apps/{}/rollback", seg(&app)),
                    Some(&body),
                )
                .await?;
            let id = field(&v, &["id", "deployment", "deployment_id"]);
            if out.json {
                out.json(&v);
                return Ok(0);
            }
            out.line(&format!("rolling back {app}: deployment {id}"));
            follow_deployment(&api, &id, out, None).await
        }
        cmd @ (Command::Pause { .. } | Command::Resume { .. } | Command::Maintenance { .. }) => {
            let (_, api) = connect(&g.server).await?;
            super::traffic::run(cmd, &api, out).await
        }
        Command::Stop { app } => {
            let (_, api) = connect(&g.server).await?;
            let v: Value = api
                .json(
                    Method::POST,
                    &format!("/v1/apps/{}/stop", seg(&app)),
                    Some(&json!({})),
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!("{app} stopped"));
            }
            Ok(0)
        }
        Command::Logs { app, follow, tail } => {
            let (_, api) = connect(&g.server).await?;
            let path = format!("/v1/apps/{}/logs?follow={follow}&tail={tail}", seg(&app));
            api.sse(&path, |_, data| {
                if out.json {
                    out.line(data);
                } else {
                    match serde_json::from_str::<Value>(data) {
                        Ok(v) if v.get("line").is_some() => out.line(&format!(
                            "{} {}",
                            field(&v, &["container", "replica"]),
                            field(&v, &["line"])
                        )),
                        _ => out.line(data),
                    }
                }
                true
            })
            .await?;
            Ok(0)
        }
        Command::Routes(cmd) => routes(&g.server, cmd, out).await,
        Command::Backends { route, action } => backends(&g.server, &route, action, out).await,
        Command::Certs { action } => certs(&g.server, action.unwrap_or(CertsCmd::List), out).await,
    }
}

async fn certs(servers: &[String], cmd: CertsCmd, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    match cmd {
        CertsCmd::List => {
            let v: Value = api.json(Method::GET, "/v1/certificates", None).await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = list(&v, "certificates")
                    .iter()
                    .map(|c| {
                        vec![
                            field(c, &["domain"]),
                            field(c, &["source"]),
                            field(c, &["issuer"]),
                            field(c, &["not_after"]),
                            field(c, &["next_renewal"]),
                            field(c, &["last_error"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "domain",
                        "source",
                        "issuer",
                        "expires",
                        "renews",
                        "last error",
                    ],
                    rows,
                );
            }
        }
        CertsCmd::Retry { domain } => {
            let v: Value = api
                .json(
                    Method::POST,
                    &format!("/v1/certificates/{}/retry", seg(&domain)),
                    Some(&json!({})),
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!(
                    "{}: certificate order queued (see `berth certs`)",
                    field(&v, &["domain"])
                ));
            }
        }
    }
    Ok(0)
}

async fn server(cmd: ServerCmd, out: &Out) -> Result<u8, ClientError> {
    let mut settings = Settings::load()?;
    match cmd {
        ServerCmd::Add {
            name,
            url,
            token,
            token_stdin,
            no_check,
            ca_cert,
        } => {
            check_url(&url)?;
            let token = match (token, token_stdin) {
                (Some(t), false) => t,
                (None, true) => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s).map_err(|e| {
                        ClientError::Usage(format!("reading the token from stdin: {e}"))
                    })?;
                    s.trim().to_string()
                }
                (None, false) => std::env::var("BERTH_TOKEN").map_err(|_| {
                    ClientError::Usage(
                        "give the token with --token, --token-stdin or BERTH_TOKEN".into(),
                    )
                })?,
                (Some(_), true) => {
                    return Err(ClientError::Usage(
                        "use either --token or --token-stdin, not both".into(),
                    ))
                }
            };
            if token.is_empty() {
                return Err(ClientError::Usage("the token is empty".into()));
            }
            // Stored absolute, so later commands work from any directory.
            let ca_cert = ca_cert.map(|p| std::path::absolute(&p).unwrap_or(p));
            let server = Server {
                url: url.trim_end_matches('/').to_string(),
                token,
                ca_cert,
            };
            if !no_check {
                let api = Api::new(&server)?;
                let v = api.check_version().await?;
                // An authenticated call any token may make proves the token works (a daemon
                // from before token scopes has no /v1/token: then any read will do).
                let scopes = match api.json::<Value>(Method::GET, "/v1/token", None).await {
                    Ok(t) => field(&t, &["scopes"]),
                    Err(ClientError::Api { status: 404, .. }) => {
                        let _: Value = api.json(Method::GET, "/v1/routes", None).await?;
                        "admin".into()
                    }
                    Err(e) => return Err(e),
                };
                out.line(&format!(
                    "connected to berthd {} at {} (token scopes: {scopes})",
                    field(&v, &["version"]),
                    server.url
                ));
            }
            settings.servers.insert(name.clone(), server);
            if settings.current.is_none() {
                settings.current = Some(name.clone());
            }
            settings.save()?;
            out.line(&format!("server {name} saved"));
            Ok(0)
        }
        ServerCmd::List => {
            if out.json {
                let list: Vec<Value> = settings
                    .servers
                    .iter()
                    .map(|(n, s)| {
                        json!({"name": n, "url": s.url, "current": settings.current.as_deref() == Some(n)})
                    })
                    .collect();
                out.json(&Value::Array(list));
            } else {
                let rows = settings
                    .servers
                    .iter()
                    .map(|(n, s)| {
                        let cur = if settings.current.as_deref() == Some(n) {
                            "*"
                        } else {
                            ""
                        };
                        vec![cur.to_string(), n.clone(), s.url.clone()]
                    })
                    .collect();
                out.table(&["", "name", "url"], rows);
            }
            Ok(0)
        }
        ServerCmd::Remove { name } => {
            if settings.servers.remove(&name).is_none() {
                return Err(ClientError::UnknownServer(name));
            }
            if settings.current.as_deref() == Some(name.as_str()) {
                settings.current = settings.servers.keys().next().cloned();
            }
            settings.save()?;
            out.line(&format!("server {name} removed"));
            Ok(0)
        }
        ServerCmd::Use { name } => {
            if !settings.servers.contains_key(&name) {
                return Err(ClientError::UnknownServer(name));
            }
            settings.current = Some(name.clone());
            settings.save()?;
            out.line(&format!("now using {name}"));
            Ok(0)
        }
    }
}

fn init(name: Option<String>, force: bool, out: &Out) -> Result<u8, ClientError> {
    let path = Path::new("berth.yaml");
    if path.exists() && !force {
        return Err(ClientError::Usage(
            "berth.yaml already exists (use --force to overwrite)".into(),
        ));
    }
    let name = name.unwrap_or_else(|| {
        std::env::current_dir()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_lowercase()))
            .map(|n| {
                n.chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect::<String>()
                    .trim_matches('-')
                    .to_string()
            })
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "app".into())
    });
    std::fs::write(path, starter(&name))
        .map_err(|e| ClientError::Other(format!("writing berth.yaml: {e}")))?;
    // Check what we wrote parses, so `berth init` never produces a broken file.
    AppFile::load(path)?;
    out.line(&format!(
        "wrote berth.yaml for {name}; edit it, then run `berth deploy`"
    ));
    Ok(0)
}

/// Unix milliseconds (or seconds) from the API as an RFC 3339 time; other text unchanged.
fn when(v: &str) -> String {
    match v.parse::<u64>() {
        Ok(n) => {
            let secs = if n > 100_000_000_000 { n / 1000 } else { n };
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string()
        }
        Err(_) => v.to_string(),
    }
}

fn list<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn app_rows(v: &Value, out: &Out) -> Vec<Vec<String>> {
    list(v, "apps")
        .iter()
        .map(|a| {
            vec![
                field(a, &["name", "app"]),
                field(a, &["ready", "replicas"]),
                out.state(&field(a, &["health", "state"])),
                field(a, &["current.id", "current_deployment", "deployment"]),
                field(a, &["domains"]),
            ]
        })
        .collect()
}

async fn status(servers: &[String], app: Option<String>, out: &Out) -> Result<u8, ClientError> {
    let (name, api) = connect(servers).await?;
    let apps: Value = match &app {
        Some(a) => {
            let one: Value = api
                .json(Method::GET, &format!("/v1/apps/{}", seg(a)), None)
                .await?;
            Value::Array(vec![one])
        }
        None => api.json(Method::GET, "/v1/apps", None).await?,
    };
    let certs: Value = api
        .json(Method::GET, "/v1/certificates", None)
        .await
        .unwrap_or(Value::Null);
    if out.json {
        out.json(&json!({ "server": name, "apps": apps, "certificates": certs }));
        return Ok(0);
    }
    out.line(&format!("server: {name}"));
    out.table(
        &["app", "replicas", "health", "deployment", "domains"],
        app_rows(&apps, out),
    );
    // Secrets: names and fingerprints only (the server never sends a value).
    for a in list(&apps, "apps") {
        let shown: Vec<String> = a
            .pointer("/current/spec/secrets")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|s| format!("{} ({})", field(s, &["name"]), field(s, &["fingerprint"])))
                    .collect()
            })
            .unwrap_or_default();
        if !shown.is_empty() {
            out.line(&format!(
                "{} secrets: {}",
                field(a, &["name", "app"]),
                shown.join(", ")
            ));
        }
    }
    let cert_rows: Vec<Vec<String>> = list(&certs, "certificates")
        .iter()
        .map(|c| {
            vec![
                field(c, &["domain"]),
                field(c, &["issuer"]),
                field(c, &["not_after"]),
                field(c, &["next_renewal"]),
                field(c, &["last_error"]),
            ]
        })
        .collect();
    if !cert_rows.is_empty() {
        out.line("");
        out.table(
            &["domain", "issuer", "expires", "renews", "last error"],
            cert_rows,
        );
    }
    Ok(0)
}

async fn routes(servers: &[String], cmd: RoutesCmd, out: &Out) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    match cmd {
        RoutesCmd::List => {
            let v: Value = api.json(Method::GET, "/v1/routes", None).await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = list(&v, "routes")
                    .iter()
                    .map(|r| {
                        let backends = r
                            .get("backends")
                            .or_else(|| r.get("spec").and_then(|s| s.get("backends")))
                            .and_then(Value::as_array)
                            .map(|b| b.len().to_string())
                            .unwrap_or_else(|| "-".into());
                        vec![
                            field(r, &["name"]),
                            field(r, &["domains", "spec.domains"]),
                            field(r, &["path_prefix", "spec.path_prefix"]),
                            field(r, &["balancer", "spec.balancer"]),
                            backends,
                            field(r, &["source"]),
                        ]
                    })
                    .collect();
                out.table(
                    &[
                        "name", "domains", "prefix", "balancer", "backends", "source",
                    ],
                    rows,
                );
            }
        }
        RoutesCmd::Get { name } => {
            let v: Value = api
                .json(Method::GET, &format!("/v1/routes/{}", seg(&name)), None)
                .await?;
            out.json(&v);
        }
        RoutesCmd::Put { name, file } => {
            let text = if file == Path::new("-") {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| ClientError::Usage(e.to_string()))?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| ClientError::Usage(format!("{}: {e}", file.display())))?
            };
            let body: Value = serde_yaml::from_str(&text).map_err(|e| ClientError::AppFile {
                path: file.clone(),
                line: e.location().map(|l| l.line()),
                key: String::new(),
                message: e.to_string(),
            })?;
            let v: Value = api
                .json(
                    Method::PUT,
                    &format!("/v1/routes/{}", seg(&name)),
                    Some(&body),
                )
                .await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!("route {name} saved"));
            }
        }
        RoutesCmd::Delete { name } => {
            api.send(api.request(Method::DELETE, &format!("/v1/routes/{}", seg(&name))))
                .await?;
            out.line(&format!("route {name} deleted"));
        }
    }
    Ok(0)
}

async fn backends(
    servers: &[String],
    route: &str,
    action: BackendsCmd,
    out: &Out,
) -> Result<u8, ClientError> {
    let (_, api) = connect(servers).await?;
    let base = format!("/v1/routes/{}/backends", seg(route));
    let (id, state) = match &action {
        BackendsCmd::List => {
            let v: Value = api.json(Method::GET, &base, None).await?;
            if out.json {
                out.json(&v);
            } else {
                let rows = list(&v, "backends")
                    .iter()
                    .map(|b| {
                        vec![
                            field(b, &["id"]),
                            field(b, &["address"]),
                            field(b, &["weight"]),
                            out.state(&field(b, &["state"])),
                            out.state(&field(b, &["health"])),
                        ]
                    })
                    .collect();
                out.table(&["id", "address", "weight", "state", "health"], rows);
            }
            return Ok(0);
        }
        BackendsCmd::Drain { id } => (id, "drain"),
        BackendsCmd::Ready { id } => (id, "ready"),
        BackendsCmd::Maint { id } => (id, "maint"),
        BackendsCmd::Weight { id, weight } => {
            let path = format!("{base}/{}", seg(id));
            let mut b: Value = api.json(Method::GET, &path, None).await?;
            b["weight"] = json!(weight);
            if let Some(o) = b.as_object_mut() {
                o.retain(|k, _| matches!(k.as_str(), "address" | "weight" | "state"));
            }
            let v: Value = api.json(Method::PUT, &path, Some(&b)).await?;
            if out.json {
                out.json(&v);
            } else {
                out.line(&format!("{route}/{id}: weight {weight}"));
            }
            return Ok(0);
        }
    };
    let v: Value = api
        .json(
            Method::PUT,
            &format!("{base}/{}/state", seg(id)),
            Some(&json!({ "state": state })),
        )
        .await?;
    if out.json {
        out.json(&v);
    } else {
        out.line(&format!("{route}/{id}: {}", out.state(state)));
    }
    Ok(0)
}

/// Where the image comes from for a deploy.
enum ImageSource {
    Reference(String),
    /// `temporary`: written by `docker save` for this deploy, removed afterwards.
    Tar {
        path: PathBuf,
        image: String,
        temporary: bool,
    },
}

async fn deploy(
    servers: &[String],
    file: &Path,
    image_tar: Option<PathBuf>,
    detach: bool,
    out: &Out,
) -> Result<u8, ClientError> {
    let app = AppFile::load(file)?;
    let base = file.parent().unwrap_or(Path::new("."));
    let secrets = app.resolve_secrets(base)?;
    let registry_password = app.registry_password(base)?;
    let settings = Settings::load()?;

    let names: Vec<Option<&str>> = if !servers.is_empty() {
        servers.iter().map(|s| Some(s.as_str())).collect()
    } else if !app.targets.is_empty() {
        app.targets.iter().map(|s| Some(s.as_str())).collect()
    } else {
        vec![None]
    };
    // Every target resolved and its URL checked before anything is built or sent.
    let mut targets: Vec<(String, Api)> = Vec::new();
    for name in names {
        let (name, server) = settings.resolve(name)?;
        let api = Api::new(&server)?;
        targets.push((name, api));
    }

    let source = if let Some(tar) = image_tar {
        let image = app
            .image
            .clone()
            .unwrap_or_else(|| format!("{}:uploaded", app.name));
        ImageSource::Tar {
            path: tar,
            image,
            temporary: false,
        }
    } else if let Some(build) = &app.build {
        let tag = format!(
            "{}:berth-{}",
            app.name,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        );
        let ctx = base.join(&build.context);
        out.line(&format!("building {tag} with docker build"));
        // `--pull=false`: the base image comes from the local store when present (the
        // docker default, spelled out); Berth never asks for a registry pull itself.
        let status = std::process::Command::new("docker")
            .arg("build")
            .arg("--pull=false")
            .arg("-t")
            .arg(&tag)
            .arg("-f")
            .arg(ctx.join(&build.dockerfile))
            .arg(&ctx)
            .status()
            .map_err(|e| ClientError::Other(format!("cannot run docker build: {e}")))?;
        if !status.success() {
            return Err(ClientError::Other(format!(
                "docker build failed ({status})"
            )));
        }
        let tar =
            std::env::temp_dir().join(format!("berth-{}-{}.tar", app.name, std::process::id()));
        let status = std::process::Command::new("docker")
            .arg("save")
            .arg("-o")
            .arg(&tar)
            .arg(&tag)
            .status()
            .map_err(|e| ClientError::Other(format!("cannot run docker save: {e}")))?;
        if !status.success() {
            return Err(ClientError::Other(format!("docker save failed ({status})")));
        }
        ImageSource::Tar {
            path: tar,
            image: tag,
            temporary: true,
        }
    } else {
        ImageSource::Reference(app.image.clone().unwrap_or_default())
    };

    let multi = MultiProgress::new();
    if !out.tty {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut jobs = Vec::new();
    let multi_target = targets.len() > 1;
    for (target, api) in targets {
        let image = match &source {
            ImageSource::Reference(r) => r.clone(),
            ImageSource::Tar { image, .. } => image.clone(),
        };
        let mut spec = app.to_spec(&image, &secrets);
        let tar = match &source {
            ImageSource::Tar { path, .. } => Some(path.clone()),
            _ => None,
        };
        // Only a pull needs the registry password; an uploaded image does not.
        if let (Some(pw), None) = (&registry_password, &tar) {
            spec["registry"]["password"] = json!(pw);
        }
        let bar = multi.add(ProgressBar::new(0));
        bar.set_prefix(target.clone());
        let app_name = app.name.clone();
        jobs.push(async move {
            let r = deploy_one(&api, &app_name, spec, tar, detach, out, &bar, multi_target).await;
            (target, r)
        });
    }
    let results = futures_util::future::join_all(jobs).await;
    if let ImageSource::Tar {
        path,
        temporary: true,
        ..
    } = &source
    {
        let _ = std::fs::remove_file(path);
    }
    let mut code = 0u8;
    let mut summary = Vec::new();
    for (target, r) in results {
        match r {
            Ok(state) => {
                if state != "succeeded" && !detach {
                    code = code.max(super::exit::FAILURE);
                }
                summary.push(json!({"server": target, "state": state}));
            }
            Err(e) => {
                code = code.max(e.exit_code());
                out.error(&format!("{target}: {e}"));
                summary.push(json!({"server": target, "error": e.to_string()}));
            }
        }
    }
    if out.json {
        out.json(&Value::Array(summary));
    }
    Ok(code)
}

#[allow(clippy::too_many_arguments)]
async fn deploy_one(
    api: &Api,
    app: &str,
    spec: Value,
    tar: Option<PathBuf>,
    detach: bool,
    out: &Out,
    bar: &ProgressBar,
    multi_target: bool,
) -> Result<String, ClientError> {
    api.check_version().await?;
    let path = format!("/v1/apps/{}/deploy", seg(app));
    let accepted: Value = match tar {
        None => api.json(Method::POST, &path, Some(&spec)).await?,
        Some(tar) => {
            // A deploy already running would refuse the upload only after the server stopped
            // reading it (the client then sees "Broken pipe"): ask first, so the answer is the
            // conflict (exit 5). The server checks again before reading the image part.
            let status: Result<Value, ClientError> = api
                .json(Method::GET, &format!("/v1/apps/{}", seg(app)), None)
                .await;
            if let Ok(running) = status {
                if let Some(id) = running.get("deploying").and_then(Value::as_str) {
                    return Err(ClientError::Api {
                        status: 409,
                        message: format!("app {app} already has a deployment in progress: {id}"),
                        field: None,
                        detail: Value::Null,
                    });
                }
            }
            let file = tokio::fs::File::open(&tar)
                .await
                .map_err(|e| ClientError::Usage(format!("{}: {e}", tar.display())))?;
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            bar.set_length(len);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let pb = bar.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
            let stream = futures_util::StreamExt::inspect(stream, move |chunk| {
                if let Ok(c) = chunk {
                    pb.inc(c.len() as u64);
                }
            });
            let image_part = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                len,
            )
            .file_name("image.tar")
            .mime_str("application/x-tar")
            .map_err(|e| ClientError::Other(e.to_string()))?;
            let spec_part = reqwest::multipart::Part::text(spec.to_string())
                .mime_str("application/json")
                .map_err(|e| ClientError::Other(e.to_string()))?;
            let form = reqwest::multipart::Form::new()
                .part("spec", spec_part)
                .part("image", image_part);
            let sent = api
                .send(api.request(Method::POST, &path).multipart(form))
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    bar.abandon();
                    return Err(e);
                }
            };
            // The bar gives way to a summary line printed above it (a no-op when the bar is
            // hidden, i.e. not on a terminal).
            let secs = bar.elapsed().as_secs_f64();
            let rate = if secs > 0.0 {
                (len as f64 / secs) as u64
            } else {
                len
            };
            bar.println(format!(
                "{} uploaded {} in {secs:.1}s ({}/s)",
                bar.prefix(),
                indicatif::HumanBytes(len),
                indicatif::HumanBytes(rate)
            ));
            bar.finish_and_clear();
            if !out.tty && !out.json {
                out.line(&format!("uploaded {len} bytes"));
            }
            resp.json()
                .await
                .map_err(|e| ClientError::Other(format!("unexpected answer from berthd: {e}")))?
        }
    };
    let id = field(&accepted, &["id", "deployment", "deployment_id"]);
    if detach {
        if !out.json {
            out.line(&format!("deployment {id} accepted"));
        }
        return Ok("accepted".into());
    }
    if !out.json {
        out.line(&format!("deploying {app}: deployment {id}"));
    }
    let prefix = multi_target.then(|| bar.prefix());
    let state = follow_deployment_state(api, &id, out, prefix).await?;
    Ok(state)
}

/// Follows a deployment's events and returns the exit code (0 only when it succeeded).
pub async fn follow_deployment(
    api: &Api,
    id: &str,
    out: &Out,
    prefix: Option<String>,
) -> Result<u8, ClientError> {
    let state = follow_deployment_state(api, id, out, prefix).await?;
    Ok(if state == "succeeded" {
        0
    } else {
        super::exit::FAILURE
    })
}

const TERMINAL: &[&str] = &["succeeded", "failed", "aborted", "rolled_back", "cancelled"];

async fn follow_deployment_state(
    api: &Api,
    id: &str,
    out: &Out,
    prefix: Option<String>,
) -> Result<String, ClientError> {
    let start = Instant::now();
    let mut last_state = String::from("unknown");
    let pfx = prefix.map(|p| format!("{p}: ")).unwrap_or_default();
    api.sse(
        &format!("/v1/deployments/{}/events", seg(id)),
        |name, data| {
            let v: Value = serde_json::from_str(data).unwrap_or(Value::String(data.to_string()));
            let stage = field(&v, &["stage", "step", "kind"]);
            let message = field(&v, &["message", "detail"]);
            let state = v
                .get("state")
                .or_else(|| v.get("status"))
                .map(text)
                .unwrap_or_default();
            if out.json {
                out.line(data);
            } else {
                let elapsed = start.elapsed().as_secs_f64();
                let mark = if TERMINAL.contains(&state.as_str()) {
                    out.state(&state)
                } else {
                    "·".into()
                };
                let msg = if message == "-" {
                    String::new()
                } else {
                    format!(" {message}")
                };
                if stage == state {
                    out.line(&format!("{pfx}{mark}{msg} ({elapsed:.1}s)"));
                } else {
                    out.line(&format!("{pfx}{mark} {stage}{msg} ({elapsed:.1}s)"));
                }
            }
            if !state.is_empty() {
                last_state = state.clone();
            }
            !(TERMINAL.contains(&state.as_str()) || name == "done" || name == "end")
        },
    )
    .await?;
    if !TERMINAL.contains(&last_state.as_str()) {
        // The stream ended without a final state: ask for it.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(last_state)
}
