//! Executes one deployment: resolve the image, run the plan step by step, and either commit
//! (persist success, then remove the stopped old containers and prune images) or abort (old
//! replicas restarted and routed again, new ones drained and removed, failure recorded with
//! the last health error and the container's last log lines).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::failure::{GateFailure, StepError};
use super::handover::{self, Checkpoint, NewRec, ReplicaRec};
use super::health::GateError;
use super::{now_ms, AppHosts, ImageSource, Inner, LockExt, Replica, Stage};
use crate::model::deploy::{
    images_to_prune, plan, AppSpec, ImageUse, OldReplica, PullPolicy, Step, Strategy,
};
use crate::model::labels::{self, LabelSpec};
use crate::model::route::{BackendAddr, ServerState};
use crate::runtime::{last_log_lines, ContainerSpec, RuntimeError};
use crate::store::deployments::{DeployState, DeploymentRecord};

/// A new replica started by this deployment.
pub(crate) struct New {
    pub id: String,
    pub name: String,
    pub addr: SocketAddr,
}

/// What the executor did so far, for abort.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) new: BTreeMap<u32, New>,
    pub(super) routed_new: Vec<String>,
    pub(super) stopped_old: Vec<Replica>,
    /// `docker stop` of drained old replicas runs in the background (a replica out of the
    /// route with nothing in flight needs no waiting); awaited before commit or abort.
    pub(super) stops: Vec<tokio::task::JoinHandle<Result<(), RuntimeError>>>,
}

pub(super) fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

pub(crate) async fn run(inner: Arc<Inner>, rec: DeploymentRecord, image: ImageSource) {
    let _active = inner.handover.enter(&rec.id);
    let mut progress = Progress::default();
    let outcome = execute(&inner, &rec, image, &mut progress).await;
    conclude(&inner, &rec, progress, outcome).await;
}

/// Carries on a deploy from the checkpoint its previous owner (the process before an
/// upgrade) wrote at a step boundary.
pub(crate) async fn resume(inner: Arc<Inner>, rec: DeploymentRecord, cp: Checkpoint) {
    let mut progress = Progress {
        new: cp
            .new
            .iter()
            .map(|(slot, n)| {
                (
                    *slot,
                    New {
                        id: n.id.clone(),
                        name: n.name.clone(),
                        addr: n.addr,
                    },
                )
            })
            .collect(),
        routed_new: cp.routed_new.clone(),
        stopped_old: cp.stopped_old.iter().map(ReplicaRec::replica).collect(),
        stops: Vec::new(),
    };
    let input = PlanInput {
        image_id: cp.image_id.clone(),
        old: cp.old.clone(),
        old_grace: Duration::from_millis(cp.old_grace_ms),
    };
    let outcome = match cp.canary {
        // A canary an upgrade parked: its walk goes on (`canary.rs`).
        Some(here) => {
            super::canary::carry_on(
                &inner,
                &rec,
                &input.image_id,
                here,
                input.old_grace,
                &mut progress,
            )
            .await
        }
        None => steps(&inner, &rec, &input, cp.steps_done, &mut progress).await,
    };
    conclude(&inner, &rec, progress, outcome).await;
}

/// Commits or aborts a deploy whose steps ended with `outcome` (`Ok(true)`: handed over to a
/// successor, which concludes it; nothing more is written here).
pub(super) async fn conclude(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    mut progress: Progress,
    outcome: Result<bool, StepError>,
) {
    let id = rec.id.clone();
    let app = rec.app.clone();
    let mut outcome = match outcome {
        Ok(true) => return,
        Ok(false) => Ok(()),
        Err(e) => Err(e),
    };
    for stop in std::mem::take(&mut progress.stops) {
        let res = match stop.await {
            Ok(r) => r.map_err(StepError::StopOld),
            Err(e) => Err(StepError::StopTask(e)),
        };
        if let (Err(e), true) = (res, outcome.is_ok()) {
            outcome = Err(e);
        }
    }
    let (state, reason) = match outcome {
        Ok(()) => (DeployState::Succeeded, None),
        Err(e) => {
            let reason = e.to_string();
            inner.emit(&id, Stage::Aborting, reason.clone());
            abort(inner, rec, &mut progress).await;
            (DeployState::Failed, Some(reason))
        }
    };
    // Persist the outcome before removing anything the old version could still need.
    if let Err(e) = inner.store.finish(&id, state, reason.as_deref(), now_ms()) {
        inner.warn(format!(
            "deployment {id}: recording the outcome failed: {e}"
        ));
    }
    super::versions::concluded(inner, rec, state);
    if state == DeployState::Succeeded {
        for old in &progress.stopped_old {
            if let Err(e) = inner.rt.remove(&old.container_id).await {
                inner.warn(format!("removing old container {}: {e}", old.name));
            }
        }
        prune_images(inner, &id, &app).await;
    }
    {
        let mut st = inner.state.locked();
        let a = st.apps.entry(app.clone()).or_default();
        a.running = None;
        if state == DeployState::Succeeded {
            // The store knows what runs again: adopted containers were replaced.
            a.adopted = None;
        }
    }
    match reason {
        None => inner.emit(
            &id,
            Stage::Succeeded,
            format!("app {app} now runs deployment {id}"),
        ),
        Some(r) => {
            tracing::warn!(%app, deployment = %id, "deployment failed: {r}");
            inner.emit(&id, Stage::Failed, r)
        }
    }
    inner.mark_done(&id, state);
}

/// What a deploy's plan is made from (recomputed identically when a successor resumes it).
struct PlanInput {
    image_id: String,
    /// Container ids of the old replicas when the plan was made.
    old: Vec<String>,
    old_grace: Duration,
}

/// A step boundary: returns `Ok(true)` when the deploy was handed over to a successor.
async fn at_boundary(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    input: &PlanInput,
    (done, total): (usize, usize),
    progress: &mut Progress,
) -> Result<bool, StepError> {
    if inner.handover.running() {
        return Ok(false);
    }
    // The checkpoint says the stopped old replicas are stopped: make it true.
    for stop in std::mem::take(&mut progress.stops) {
        match stop.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StepError::StopOld(e)),
            Err(e) => return Err(StepError::StopTask(e)),
        }
    }
    let mut cp = Checkpoint::new(&input.image_id, &input.old, done, total, input.old_grace);
    fill_checkpoint(&mut cp, progress);
    handover::boundary(inner, rec, cp).await
}

/// What a checkpoint says of the deploy's own containers: started, routed, stopped.
pub(super) fn fill_checkpoint(cp: &mut Checkpoint, progress: &Progress) {
    cp.new = progress
        .new
        .iter()
        .map(|(slot, n)| {
            (
                *slot,
                NewRec {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    addr: n.addr,
                },
            )
        })
        .collect();
    cp.routed_new = progress.routed_new.clone();
    cp.stopped_old = progress.stopped_old.iter().map(ReplicaRec::of).collect();
    cp.new_hosts = !progress.routed_new.is_empty();
}

async fn resolve_image(
    inner: &Inner,
    rec: &DeploymentRecord,
    image: ImageSource,
) -> Result<String, StepError> {
    // The server's `deploy.pull` caps what the app asks for (an offline host says `never`).
    let pull = rec.spec.pull.under(inner.cfg.pull_ceiling);
    if pull != rec.spec.pull && matches!(image, ImageSource::Reference { .. }) {
        inner.emit(
            &rec.id,
            Stage::Image,
            format!(
                "pull: {} lowered to {} by the server's deploy.pull",
                pull_name(rec.spec.pull),
                pull_name(pull)
            ),
        );
    }
    let id = match image {
        ImageSource::Id(i) => inner
            .rt
            .image_id(&i)
            .await
            .map_err(|source| StepError::Image { image: i, source })?,
        ImageSource::Tar(tar) => {
            // The upload's own error (truncated, too large, interrupted) is the cause; Docker
            // only sees a body that broke off. Keep the first one to name it in the reason.
            let cause = Arc::new(std::sync::Mutex::new(None::<String>));
            let seen = cause.clone();
            let tar = tar
                .inspect(move |item| {
                    if let Err(e) = item {
                        if let Ok(mut slot) = seen.lock() {
                            slot.get_or_insert_with(|| e.to_string());
                        }
                    }
                })
                .boxed();
            match inner.rt.load_image(tar).await {
                Ok(id) => id,
                Err(e) => {
                    let upload = cause.lock().ok().and_then(|mut c| c.take());
                    return Err(match upload {
                        Some(u) => StepError::Upload(u),
                        None => e.into(),
                    });
                }
            }
        }
        ImageSource::Reference { reference, creds } if pull == PullPolicy::Always => {
            // A moving tag (`:latest`) gets the registry's current image on every deploy.
            inner.emit(
                &rec.id,
                Stage::Image,
                format!("pulling {reference} (pull: always)"),
            );
            inner.rt.pull_image(&reference, creds.as_ref()).await?
        }
        ImageSource::Reference { reference, creds } => match inner.rt.image_id(&reference).await {
            Ok(i) => i,
            Err(RuntimeError::NotFound { .. }) if pull == PullPolicy::Never => {
                return Err(if rec.spec.pull == PullPolicy::Never {
                    StepError::NotPresent { reference }
                } else {
                    StepError::NotPresentServerNever { reference }
                });
            }
            Err(RuntimeError::NotFound { .. }) => {
                inner.emit(&rec.id, Stage::Image, format!("pulling {reference}"));
                inner.rt.pull_image(&reference, creds.as_ref()).await?
            }
            Err(e) => return Err(e.into()),
        },
    };
    Ok(id)
}

fn pull_name(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Never => "never",
        PullPolicy::Missing => "missing",
        PullPolicy::Always => "always",
    }
}

async fn execute(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image: ImageSource,
    progress: &mut Progress,
) -> Result<bool, StepError> {
    let app = &rec.app;
    // Old replicas stop with the grace their own deployment asked for.
    let old_grace = inner
        .store
        .current(app)
        .ok()
        .flatten()
        .and_then(|c| c.spec.stop_timeout)
        .unwrap_or(inner.cfg.stop_grace);
    let image_id = resolve_image(inner, rec, image).await?;
    inner.store.set_image(&rec.id, &image_id)?;
    inner.emit(&rec.id, Stage::Image, format!("image {}", short(&image_id)));
    // Berth's own tag: pruning removes only these, never a tag an operator made.
    let (repo, tag) = berth_tag(app, &rec.id);
    if let Err(e) = inner.rt.tag_image(&image_id, &repo, &tag).await {
        inner.warn(format!("tagging image {repo}:{tag}: {e}"));
    }
    inner.rt.ensure_network().await?;
    run_pre_deploy(inner, rec, &image_id).await?;

    let old: Vec<Replica> = inner
        .state
        .locked()
        .apps
        .get(app)
        .map(|a| a.replicas.clone())
        .unwrap_or_default();
    let current: Vec<OldReplica> = old
        .iter()
        .map(|r| OldReplica {
            container_id: r.container_id.clone(),
        })
        .collect();
    match rec.spec.strategy {
        // Next to the stable version, step by step (`canary.rs`).
        Strategy::Canary if !old.is_empty() => {
            return super::canary::run_canary(inner, rec, &image_id, &old, old_grace, progress)
                .await;
        }
        // Next to the running versions, kept (`versions.rs`).
        Strategy::SideBySide if !old.is_empty() => {
            return super::versions::run_side_by_side(inner, rec, &image_id, &old, progress)
                .await
                .map(|()| false);
        }
        // A first deploy has nothing to run next to: the rolling plan.
        Strategy::Canary | Strategy::SideBySide => inner.emit(
            &rec.id,
            Stage::Accepted,
            "first deploy of the app: nothing runs to compare with or keep, so it runs as a \
             rolling deploy",
        ),
        Strategy::Rolling | Strategy::Replace => super::versions::before_plain(inner, rec),
    }
    let input = PlanInput {
        image_id,
        old: current.into_iter().map(|o| o.container_id).collect(),
        old_grace,
    };
    steps(inner, rec, &input, 0, progress).await
}

/// Runs the plan from step `from` (0 for a new deploy, the checkpoint's position when a
/// successor resumes one), with a hand-over boundary before each step.
async fn steps(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    input: &PlanInput,
    from: usize,
    progress: &mut Progress,
) -> Result<bool, StepError> {
    let spec = &rec.spec;
    let app = &rec.app;
    let image_id = input.image_id.as_str();
    let old_grace = input.old_grace;
    let current: Vec<OldReplica> = input
        .old
        .iter()
        .map(|c| OldReplica {
            container_id: c.clone(),
        })
        .collect();
    // Replace of a one-replica app: requests wait during the cut-over (ends on drop).
    let _hold = super::traffic::CutoverHold::start(inner, app, spec, current.len(), old_grace);
    let plan = plan(&current, spec);
    let total = plan.len();
    for (i, step) in plan.into_iter().enumerate().skip(from) {
        if at_boundary(inner, rec, input, (i, total), progress).await? {
            return Ok(true);
        }
        match step {
            Step::StartNew { slot } => {
                let new = start_replica(inner, rec, image_id, slot).await?;
                inner.emit(
                    &rec.id,
                    Stage::Start,
                    format!("replica {slot}: container {} at {}", new.name, new.addr),
                );
                progress.new.insert(slot, new);
            }
            Step::WaitHealthy { slot } => {
                let new = progress
                    .new
                    .get(&slot)
                    .ok_or(StepError::NotStarted { slot })?;
                gate(inner, rec, new, slot).await?;
                inner.emit(
                    &rec.id,
                    Stage::Healthy,
                    format!("replica {slot} is healthy"),
                );
            }
            Step::RouteNew { slot } => {
                let new = progress
                    .new
                    .get(&slot)
                    .ok_or(StepError::NotStarted { slot })?;
                {
                    let mut st = inner.state.locked();
                    let a = st.apps.entry(app.clone()).or_default();
                    a.hosts = Some(AppHosts::of(spec));
                    a.replicas.push(Replica {
                        container_id: new.id.clone(),
                        name: new.name.clone(),
                        address: BackendAddr::new(new.addr.ip().to_string(), new.addr.port()),
                        deployment: rec.id.clone(),
                        state: ServerState::Ready,
                    });
                    progress.routed_new.push(new.id.clone());
                    inner.publish_app(&st, app).map_err(StepError::Publish)?;
                }
                inner.emit(
                    &rec.id,
                    Stage::Routed,
                    format!("replica {slot} takes traffic"),
                );
            }
            Step::DrainOld { container_id } => {
                set_routing(inner, app, &container_id, ServerState::Drain)?;
                inner.emit(
                    &rec.id,
                    Stage::Drain,
                    format!("old {} drains", short(&container_id)),
                );
            }
            Step::WaitDrained { container_id } => {
                let left = wait_drained(inner, app, &container_id, spec.drain_timeout).await;
                inner.emit(
                    &rec.id,
                    Stage::Drained,
                    if left == 0 {
                        format!("old {} has no requests in flight", short(&container_id))
                    } else {
                        format!(
                            "old {}: drain timeout {:?} reached with {left} in flight",
                            short(&container_id),
                            spec.drain_timeout
                        )
                    },
                );
            }
            Step::StopOld { container_id } => {
                if let Some(r) = take_out(inner, app, &container_id)? {
                    progress.stopped_old.push(r);
                }
                let rt = inner.rt.clone();
                let grace = old_grace;
                inner.emit(
                    &rec.id,
                    Stage::Stopping,
                    format!(
                        "old {} stops (up to {}, then killed)",
                        short(&container_id),
                        humantime::format_duration(grace)
                    ),
                );
                let cid = container_id.clone();
                progress
                    .stops
                    .push(tokio::spawn(async move { rt.stop(&cid, grace).await }));
                inner.emit(
                    &rec.id,
                    Stage::Stopped,
                    format!("old {} is out of the route; stopping", short(&container_id)),
                );
            }
        }
    }
    Ok(false)
}

/// Takes a replica out of the app's route (one table swap); returns it.
pub(super) fn take_out(
    inner: &Inner,
    app: &str,
    container_id: &str,
) -> Result<Option<Replica>, StepError> {
    let mut st = inner.state.locked();
    let a = st.apps.entry(app.to_string()).or_default();
    let pos = a
        .replicas
        .iter()
        .position(|r| r.container_id == container_id);
    let removed = pos.map(|p| a.replicas.remove(p));
    inner.publish_app(&st, app).map_err(StepError::Publish)?;
    Ok(removed)
}

pub(super) fn set_routing(
    inner: &Inner,
    app: &str,
    container_id: &str,
    to: ServerState,
) -> Result<(), StepError> {
    let mut st = inner.state.locked();
    if let Some(a) = st.apps.get_mut(app) {
        for r in a
            .replicas
            .iter_mut()
            .filter(|r| r.container_id == container_id)
        {
            r.state = to;
        }
    }
    inner.publish_app(&st, app).map_err(StepError::Publish)
}

/// Drains backend `container_id` of the app's route within `timeout`: first in `drain` (no
/// new requests, but those pinned to it by a sticky cookie still come) until nothing is in
/// flight (seen twice, 10 ms apart) or half of `timeout` has passed; then in `maint` (nothing
/// new at all: pinned clients are re-pinned) until nothing is in flight or `timeout` has
/// passed. Returns what is still in flight; the caller takes the backend out of the route
/// and stops its container next.
///
/// Why two phases: pinned clients keep a `drain` backend busy, so there "nothing in flight"
/// is only a gap between two of their requests, and with a few of them never comes at all;
/// a stop at the deadline then cut the requests in flight. In `maint`, a request that picked
/// the backend from a snapshot older than that publish is either counted before the read
/// below or sees the backend retired and picks again (`BackendStats::retired`), so zero
/// there means none will come, and the second half of `timeout` is theirs to finish.
///
/// "In flight" includes what goes to the replica through pools that follow the app (HTTP
/// frontends' requests, TCP connections), and counts as zero only once those pools were
/// republished with the phase's state (they follow the engine's replica feed a moment
/// later): a TCP connection open through such a pool once had its replica stopped under it.
pub(crate) async fn wait_drained(
    inner: &Inner,
    app: &str,
    container_id: &str,
    timeout: Duration,
) -> u64 {
    let route = super::app_route_name(app);
    let start = Instant::now();
    let (pinned_until, deadline) = (start + timeout / 2, start + timeout);
    let mut zeros = 0;
    loop {
        if inner
            .publisher
            .draining(&route, container_id, ServerState::Drain)
            .done()
        {
            zeros += 1;
            if zeros >= 2 {
                break;
            }
        } else {
            zeros = 0;
        }
        if Instant::now() >= pinned_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Err(e) = set_routing(inner, app, container_id, ServerState::Maint) {
        // The backend stays in `drain`; its removal (the caller's next step) ends it too.
        tracing::warn!(app, container = %short(container_id), error = %e, "putting a drained replica in maint failed");
    }
    loop {
        let d = inner
            .publisher
            .draining(&route, container_id, ServerState::Maint);
        if d.done() || Instant::now() >= deadline {
            return d.inflight;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) fn container_labels(
    inner: &Inner,
    rec: &DeploymentRecord,
    slot: u32,
) -> std::collections::HashMap<String, String> {
    let spec = &rec.spec;
    let mut l = labels::to_labels(&LabelSpec {
        app: rec.app.clone(),
        deployment: Some(rec.id.clone()),
        domains: spec.domains.clone(),
        aliases: spec.aliases.clone(),
        port: spec.port,
        traffic: spec.traffic(),
        managed: true,
    });
    l.insert(labels::SLOT.to_string(), slot.to_string());
    for (k, v) in &inner.cfg.extra_labels {
        l.entry(k.clone()).or_insert_with(|| v.clone());
    }
    l
}

/// The environment of the app's containers (replicas and hooks): `env`, then the secrets.
fn container_env(inner: &Inner, rec: &DeploymentRecord) -> Result<Vec<String>, StepError> {
    let mut env: Vec<String> = rec
        .spec
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !rec.spec.secrets.is_empty() {
        // Secrets are opened here only, for Docker's create call (messages name them only).
        let key = inner.cfg.secrets.as_ref().ok_or(StepError::NoSecretsKey)?;
        env.extend(key.env_of(&rec.spec)?);
    }
    Ok(env)
}

/// What Docker creates for the app's spec: replicas and hooks alike (a hook replaces `cmd`).
fn container_spec(
    rec: &DeploymentRecord,
    name: String,
    image_id: &str,
    labels: std::collections::HashMap<String, String>,
    env: Vec<String>,
) -> ContainerSpec {
    let spec = &rec.spec;
    ContainerSpec {
        name,
        image: image_id.to_string(),
        labels,
        env,
        volumes: spec.volumes.clone(),
        cmd: spec.command.clone(),
        stop_signal: spec.stop_signal.clone(),
        entrypoint: spec.entrypoint.clone(),
        memory: spec
            .resources
            .memory
            .map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
        nano_cpus: spec.resources.cpus.map(|c| c.nano()),
    }
}

/// Most hook output lines copied into the deploy's events (the rest are counted).
const HOOK_LINES_SHOWN: usize = 500;

/// Runs `hooks.pre_deploy` in a one-off container of the new image (app env, network and
/// resources; labelled as a hook, so discovery and reconcile never take it for a replica),
/// streaming its output into the deploy's events. Nothing of the app has changed yet, so a
/// failure simply ends the deploy.
async fn run_pre_deploy(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image_id: &str,
) -> Result<(), StepError> {
    let Some(hook) = &rec.spec.hooks.pre_deploy else {
        return Ok(());
    };
    let env = container_env(inner, rec).map_err(|e| StepError::Hook(Box::new(e)))?;
    let mut labels: std::collections::HashMap<String, String> = inner.cfg.extra_labels.clone();
    labels.insert(labels::HOOK.to_string(), rec.app.clone());
    labels.insert(labels::HOOK_DEPLOYMENT.to_string(), rec.id.clone());
    let name = format!(
        "berth-{}-{}-pre-deploy",
        rec.app,
        &rec.id[rec.id.len().saturating_sub(6)..]
    );
    let mut spec = container_spec(rec, name, image_id, labels, env);
    spec.cmd = Some(hook.command.clone());
    inner.emit(
        &rec.id,
        Stage::Hook,
        format!(
            "pre_deploy: {} (up to {})",
            hook.command.join(" "),
            humantime::format_duration(hook.timeout)
        ),
    );
    let seen = std::sync::atomic::AtomicUsize::new(0);
    let tail = std::sync::Mutex::new(std::collections::VecDeque::<String>::new());
    let on_line = |chunk: String| {
        for line in chunk.lines() {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n < HOOK_LINES_SHOWN {
                inner.emit(&rec.id, Stage::Hook, format!("pre_deploy | {line}"));
            }
            if let Ok(mut t) = tail.lock() {
                t.push_back(line.to_string());
                if t.len() > 5 {
                    t.pop_front();
                }
            }
        }
    };
    let code = inner
        .rt
        .run_once(&spec, hook.timeout, &on_line)
        .await
        .map_err(|e| StepError::Hook(Box::new(e.into())))?;
    let lines = seen.load(std::sync::atomic::Ordering::Relaxed);
    if lines > HOOK_LINES_SHOWN {
        inner.emit(
            &rec.id,
            Stage::Hook,
            format!(
                "pre_deploy: {} more lines not shown",
                lines - HOOK_LINES_SHOWN
            ),
        );
    }
    if code != 0 {
        let last = tail
            .lock()
            .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
            .unwrap_or_default();
        return Err(StepError::HookExit { code, last });
    }
    inner.emit(&rec.id, Stage::Hook, "pre_deploy succeeded (exit 0)");
    Ok(())
}

pub(crate) async fn start_replica(
    inner: &Inner,
    rec: &DeploymentRecord,
    image_id: &str,
    slot: u32,
) -> Result<New, StepError> {
    // Unique even when reconcile recreates a slot of an older deployment.
    let name = format!(
        "berth-{}-{}-{slot}-{:04x}",
        rec.app,
        &rec.id[rec.id.len().saturating_sub(6)..],
        now_ms() & 0xffff
    );
    let env = container_env(inner, rec).map_err(|e| e.of_replica(slot))?;
    let labels = container_labels(inner, rec, slot);
    let spec = container_spec(rec, name.clone(), image_id, labels, env);
    let id = inner
        .rt
        .create_and_start(&spec)
        .await
        .map_err(|e| StepError::from(e).of_replica(slot))?;
    let addr = address_of(inner, &id, rec.spec.port).await;
    match addr {
        Ok(addr) => Ok(New { id, name, addr }),
        Err(e) => {
            // Not yet tracked by the caller: clean it up here.
            let _ = inner.rt.remove(&id).await;
            Err(e.of_replica(slot))
        }
    }
}

/// The container's address on the Berth network (Docker assigns it at start).
pub(crate) async fn address_of(
    inner: &Inner,
    id: &str,
    port: u16,
) -> Result<SocketAddr, StepError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info = inner.rt.inspect(id).await?;
        if let Some(ip) = info.address {
            return Ok(SocketAddr::new(ip, port));
        }
        if !info.running() {
            let logs = last_log_lines(inner.rt.as_ref(), id, 20).await;
            return Err(StepError::ExitedAtStart {
                state: info.state,
                logs,
            });
        }
        if Instant::now() > deadline {
            return Err(StepError::NoAddress {
                network: inner.rt.network().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The readiness check of one replica of `spec`: its HTTP health check (apps with domains),
/// or for a worker, running steadily (see `HealthClient::wait_running`).
pub(crate) async fn ready(
    inner: &Inner,
    spec: &AppSpec,
    container_id: &str,
    addr: SocketAddr,
    deadline: Instant,
) -> Result<(), GateError> {
    if spec.is_worker() {
        inner
            .health
            .wait_running(
                inner.rt.as_ref(),
                container_id,
                spec.worker_steady(),
                &spec.health,
                deadline,
            )
            .await
    } else {
        inner
            .health
            .wait_healthy(
                inner.rt.as_ref(),
                container_id,
                addr,
                &spec.health_host(),
                &spec.health,
                deadline,
            )
            .await
    }
}

/// Health gate: healthy within `deploy_timeout`, then still healthy after `min_ready` (a
/// worker's steady run already covers `min_ready`).
pub(super) async fn gate(
    inner: &Inner,
    rec: &DeploymentRecord,
    new: &New,
    slot: u32,
) -> Result<(), StepError> {
    let spec: &AppSpec = &rec.spec;
    let deadline = Instant::now() + spec.deploy_timeout;
    let mut res = ready(inner, spec, &new.id, new.addr, deadline)
        .await
        .map_err(GateFailure::Gate);
    if res.is_ok() && !spec.min_ready.is_zero() && !spec.is_worker() {
        tokio::time::sleep(spec.min_ready).await;
        let deadline = Instant::now() + spec.health.timeout;
        res = ready(inner, spec, &new.id, new.addr, deadline)
            .await
            .map_err(|source| GateFailure::Again {
                min_ready: spec.min_ready,
                source,
            });
    }
    match res {
        Ok(()) => Ok(()),
        Err(cause) => Err(StepError::Unhealthy {
            slot,
            name: new.name.clone(),
            timeout: spec.deploy_timeout,
            cause: Box::new(cause),
            logs: last_log_lines(inner.rt.as_ref(), &new.id, 20).await,
        }),
    }
}

async fn abort(inner: &Arc<Inner>, rec: &DeploymentRecord, progress: &mut Progress) {
    let app = &rec.app;
    // 1. Old replicas stopped by this deploy come back first, health-gated.
    for old in std::mem::take(&mut progress.stopped_old) {
        if let Err(e) = inner.rt.start(&old.container_id).await {
            inner.warn(format!("abort: restarting old {}: {e}", old.name));
            continue;
        }
        let addr = match address_of(inner, &old.container_id, old.address.port()).await {
            Ok(a) => a,
            Err(e) => {
                inner.warn(format!("abort: old {} has no address: {e}", old.name));
                continue;
            }
        };
        let old_spec = inner
            .store
            .get(&old.deployment)
            .ok()
            .flatten()
            .map(|d| d.spec);
        let deadline = Instant::now()
            + old_spec
                .as_ref()
                .map_or(Duration::from_secs(60), |s| s.deploy_timeout);
        let res = match &old_spec {
            Some(s) => ready(inner, s, &old.container_id, addr, deadline).await,
            None => {
                inner
                    .health
                    .wait_healthy(
                        inner.rt.as_ref(),
                        &old.container_id,
                        addr,
                        "localhost",
                        &Default::default(),
                        deadline,
                    )
                    .await
            }
        };
        if let Err(e) = res {
            inner.warn(format!(
                "abort: old {} did not become healthy again: {e}",
                old.name
            ));
        }
        let mut st = inner.state.locked();
        let a = st.apps.entry(app.clone()).or_default();
        if let Some(s) = &old_spec {
            a.hosts = Some(AppHosts::of(s));
        }
        a.replicas.push(Replica {
            address: BackendAddr::new(addr.ip().to_string(), addr.port()),
            state: ServerState::Ready,
            ..old.clone()
        });
        let _ = inner.publish_app(&st, app);
        drop(st);
        inner.emit(
            &rec.id,
            Stage::Restored,
            format!("old {} takes traffic again", old.name),
        );
    }
    // 2. Old replicas set to drain take traffic again; routed new ones drain.
    {
        let mut st = inner.state.locked();
        if let Some(a) = st.apps.get_mut(app) {
            for r in a.replicas.iter_mut() {
                r.state = if progress.routed_new.contains(&r.container_id) {
                    ServerState::Drain
                } else {
                    ServerState::Ready
                };
            }
        }
        let _ = inner.publish_app(&st, app);
    }
    for id in &progress.routed_new {
        wait_drained(inner, app, id, rec.spec.drain_timeout).await;
    }
    // 3. New replicas leave the route and are removed.
    {
        let mut st = inner.state.locked();
        let restore_hosts = inner
            .store
            .current(app)
            .ok()
            .flatten()
            .map(|c| AppHosts::of(&c.spec));
        if let Some(a) = st.apps.get_mut(app) {
            a.replicas
                .retain(|r| !progress.routed_new.contains(&r.container_id));
            // Back to what the current deployment serves (none after a failed first deploy).
            a.hosts = restore_hosts;
        }
        let _ = inner.publish_app(&st, app);
    }
    for (_, new) in std::mem::take(&mut progress.new) {
        match inner.rt.remove(&new.id).await {
            Ok(()) => inner.emit(&rec.id, Stage::Removed, format!("new {} removed", new.name)),
            Err(e) => inner.warn(format!("abort: removing new {}: {e}", new.name)),
        }
    }
}

/// The tag Berth gives the image of deployment `id` of `app`: `berth/APP:ID`.
pub(crate) fn berth_tag(app: &str, id: &str) -> (String, String) {
    (format!("berth/{app}"), id.to_string())
}

async fn prune_images(inner: &Inner, id: &str, app: &str) {
    let keep = inner.cfg.keep_images.max(1);
    let history = match inner.store.list(app, 10_000) {
        Ok(h) => h,
        Err(e) => {
            inner.warn(format!("image pruning skipped: {e}"));
            return;
        }
    };
    let uses: Vec<ImageUse> = history
        .iter()
        .filter_map(|d| {
            Some(ImageUse {
                image_id: d.image_id.clone()?,
                succeeded: d.state == DeployState::Succeeded,
            })
        })
        .collect();
    // Containers and other apps need no list here: untagging is never forced, so Docker keeps
    // an image a container uses or another tag (another app's, an operator's) names.
    let doomed = images_to_prune(&uses, keep, &[]);
    let mut removed = Vec::new();
    // Only Berth's own tags go (`berth/APP:DEPLOYMENT`); Docker deletes an image with its last
    // tag, so an image an operator tagged (or another app uses) stays.
    for d in history
        .iter()
        .filter(|d| d.image_id.as_ref().is_some_and(|i| doomed.contains(i)))
    {
        let (repo, tag) = berth_tag(app, &d.id);
        let reference = format!("{repo}:{tag}");
        match inner.rt.untag_image(&reference).await {
            Ok(true) => removed.push(reference),
            Ok(false) => {}
            Err(e) => inner.warn(format!("pruning image {reference}: {e}")),
        }
    }
    if !removed.is_empty() {
        inner.emit(
            id,
            Stage::Pruned,
            format!("removed old images {}", removed.join(", ")),
        );
    }
}
