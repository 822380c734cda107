//! `berth deploy`: build or pick the image, send it to every target, follow the events.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use reqwest::Method;
use serde::Serialize;

use super::seg;
use crate::client::api::{read_json, Api};
use crate::client::appfile::AppFile;
use crate::client::output::Out;
use crate::client::settings::Settings;
use crate::client::ClientError;
use crate::model::api::{App, DeployAccepted, DeployEvent, DeployRequest, DeployState};

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
    keep: bool,
    out: &Out,
) -> Result<u8, ClientError> {
    let mut app = AppFile::load(file)?;
    if keep {
        // `--keep` is `strategy: side_by_side` for this deploy.
        if app.strategy == crate::model::deploy::Strategy::Canary {
            return Err(ClientError::Usage(format!(
                "{}: strategy: canary and --keep exclude each other (--keep deploys side by side)",
                file.display()
            )));
        }
        app.strategy = crate::model::deploy::Strategy::SideBySide;
    }
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
        let mut spec = app.to_spec(&image, &secrets)?;
        let tar = match &source {
            ImageSource::Tar { path, .. } => Some(path.clone()),
            _ => None,
        };
        // Only a pull needs the registry password; an uploaded image does not.
        if let (Some(pw), None, Some(r)) = (&registry_password, &tar, &mut spec.registry) {
            r.password = Some(pw.clone());
        }
        let spec = DeployRequest::new(spec);
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
    for (server, r) in results {
        match r {
            Ok(state) => {
                if state != "succeeded" && !detach {
                    code = code.max(crate::client::exit::FAILURE);
                }
                summary.push(TargetOutcome {
                    server,
                    state: Some(state),
                    error: None,
                });
            }
            Err(e) => {
                code = code.max(e.exit_code());
                out.error(&format!("{server}: {e}"));
                summary.push(TargetOutcome {
                    server,
                    state: None,
                    error: Some(e.to_string()),
                });
            }
        }
    }
    if out.json {
        out.json(&summary);
    }
    Ok(code)
}

/// One line of `berth deploy --json`: how the deploy to one server ended.
#[derive(Serialize)]
struct TargetOutcome {
    server: String,
    /// `succeeded`, `failed`, or `accepted` (`--detach`).
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn deploy_one(
    api: &Api,
    app: &str,
    spec: DeployRequest,
    tar: Option<PathBuf>,
    detach: bool,
    out: &Out,
    bar: &ProgressBar,
    multi_target: bool,
) -> Result<&'static str, ClientError> {
    api.check_version().await?;
    let path = format!("/v1/apps/{}/deploy", seg(app));
    let accepted: DeployAccepted = match tar {
        None => api.json(Method::POST, &path, Some(&spec)).await?,
        Some(tar) => {
            // A deploy already running would refuse the upload only after the server stopped
            // reading it (the client then sees "Broken pipe"): ask first, so the answer is the
            // conflict (exit 5). The server checks again before reading the image part.
            let status: Result<App, ClientError> = api.get(&format!("/v1/apps/{}", seg(app))).await;
            if let Ok(running) = status {
                if let Some(id) = &running.status.deploying {
                    return Err(ClientError::Api {
                        status: 409,
                        message: format!("app {app} already has a deployment in progress: {id}"),
                        field: None,
                        detail: None,
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
            let spec_json = serde_json::to_string(&spec)
                .map_err(|e| ClientError::Other(format!("cannot encode the app spec: {e}")))?;
            let spec_part = reqwest::multipart::Part::text(spec_json)
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
            read_json(resp).await?
        }
    };
    let id = accepted.id;
    if detach {
        if !out.json {
            out.line(&format!("deployment {id} accepted"));
        }
        return Ok("accepted");
    }
    if !out.json {
        out.line(&format!("deploying {app}: deployment {id}"));
    }
    let prefix = multi_target.then(|| bar.prefix());
    let state = follow_deployment_state(api, &id, out, prefix).await?;
    Ok(state.as_str())
}

/// Follows a deployment's events and returns the exit code (0 only when it succeeded).
pub async fn follow_deployment(
    api: &Api,
    id: &str,
    out: &Out,
    prefix: Option<String>,
) -> Result<u8, ClientError> {
    let state = follow_deployment_state(api, id, out, prefix).await?;
    Ok(if state == DeployState::Succeeded {
        0
    } else {
        crate::client::exit::FAILURE
    })
}

/// How long `berth deploy` keeps reconnecting to a deployment's events after the connection
/// dropped (an upgrade hands the API to a new berthd process; a restart takes a few seconds).
const RECONNECT_FOR: Duration = Duration::from_secs(120);

async fn follow_deployment_state(
    api: &Api,
    id: &str,
    out: &Out,
    prefix: Option<String>,
) -> Result<DeployState, ClientError> {
    let start = Instant::now();
    let pfx = prefix.map(|p| format!("{p}: ")).unwrap_or_default();
    // Every connection replays the log from the start: print each event once.
    let mut seen = std::collections::HashSet::<String>::new();
    let mut lost_at: Option<Instant> = None;
    loop {
        let mut finished: Option<DeployState> = None;
        let mut bad: Option<ClientError> = None;
        let res = api
            .sse(
                &format!("/v1/deployments/{}/events", seg(id)),
                |name, data| {
                    if name != "message" || !seen.insert(data.to_string()) {
                        return true;
                    }
                    lost_at = None;
                    let ev: DeployEvent = match serde_json::from_str(data) {
                        Ok(ev) => ev,
                        Err(e) => {
                            bad = Some(ClientError::Other(format!(
                                "unexpected deployment event from berthd: {e}: {data}"
                            )));
                            return false;
                        }
                    };
                    if out.json {
                        out.line(data);
                    } else {
                        out.line(&progress_line(&pfx, &ev, start.elapsed(), out));
                    }
                    if ev.state != DeployState::Running {
                        finished = Some(ev.state);
                    }
                    finished.is_none()
                },
            )
            .await;
        if let Some(e) = bad {
            return Err(e);
        }
        if let Some(state) = finished {
            return Ok(state);
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

/// One progress line: `· STAGE MESSAGE (1.2s)`; the last event shows its outcome instead of
/// the dot (`succeeded MESSAGE (9.9s)`).
fn progress_line(pfx: &str, ev: &DeployEvent, elapsed: Duration, out: &Out) -> String {
    let elapsed = elapsed.as_secs_f64();
    let mark = if ev.state == DeployState::Running {
        "·".to_string()
    } else {
        out.state(ev.state.as_str())
    };
    let msg = &ev.message;
    if ev.stage.as_str() == ev.state.as_str() {
        format!("{pfx}{mark} {msg} ({elapsed:.1}s)")
    } else {
        format!("{pfx}{mark} {} {msg} ({elapsed:.1}s)", ev.stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::api::Stage;

    #[test]
    fn progress_lines() {
        let out = Out::plain(false);
        let t = Duration::from_millis(1234);
        let ev = DeployEvent::new("d1", 0, Stage::Routed, "replica 1 takes traffic".into());
        assert_eq!(
            progress_line("", &ev, t, &out),
            "· routed replica 1 takes traffic (1.2s)"
        );
        let ev = DeployEvent::new("d1", 0, Stage::Succeeded, "2 replicas".into());
        assert_eq!(
            progress_line("prod: ", &ev, t, &out),
            "prod: succeeded 2 replicas (1.2s)"
        );
    }
}
