//! `berth deploy`: build or pick the image, send it to every target, follow the events.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use super::seg;
use crate::client::api::Api;
use crate::client::appfile::AppFile;
use crate::client::output::{field, text, Out};
use crate::client::settings::Settings;
use crate::client::ClientError;

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

pub(super) async fn deploy(
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
                    code = code.max(crate::client::exit::FAILURE);
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
        crate::client::exit::FAILURE
    })
}

const TERMINAL: &[&str] = &["succeeded", "failed", "aborted", "rolled_back", "cancelled"];

/// How long `berth deploy` keeps reconnecting to a deployment's events after the connection
/// dropped (an upgrade hands the API to a new berthd process; a restart takes a few seconds).
const RECONNECT_FOR: Duration = Duration::from_secs(120);

async fn follow_deployment_state(
    api: &Api,
    id: &str,
    out: &Out,
    prefix: Option<String>,
) -> Result<String, ClientError> {
    let start = Instant::now();
    let mut last_state = String::from("unknown");
    let pfx = prefix.map(|p| format!("{p}: ")).unwrap_or_default();
    // Every connection replays the log from the start: print each event once.
    let mut seen = std::collections::HashSet::<String>::new();
    let mut lost_at: Option<Instant> = None;
    loop {
        let mut finished = false;
        let res = api
            .sse(
                &format!("/v1/deployments/{}/events", seg(id)),
                |name, data| {
                    if !seen.insert(data.to_string()) {
                        return true;
                    }
                    lost_at = None;
                    let v: Value =
                        serde_json::from_str(data).unwrap_or(Value::String(data.to_string()));
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
                    finished =
                        TERMINAL.contains(&state.as_str()) || name == "done" || name == "end";
                    !finished
                },
            )
            .await;
        if finished {
            return Ok(last_state);
        }
        // The stream ended before the deployment did (berthd upgraded or restarted): the
        // deployment goes on in the new process; follow it there.
        let why = match res {
            Ok(()) => "the event stream ended".to_string(),
            Err(ClientError::Unreachable { message, .. }) => message,
            Err(e) => return Err(e),
        };
        let since = *lost_at.get_or_insert_with(|| {
            if !out.json {
                out.line(&format!(
                    "{pfx}· connection to berthd lost ({why}); reconnecting"
                ));
            }
            Instant::now()
        });
        if since.elapsed() > RECONNECT_FOR {
            return Err(ClientError::Unreachable {
                url: format!("/v1/deployments/{id}/events"),
                message: format!(
                    "lost the deployment's events ({why}) and could not reconnect within \
                     {RECONNECT_FOR:?}; `berth deployments APP` shows how it ended"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
