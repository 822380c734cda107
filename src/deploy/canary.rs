//! Canary deploys (`strategy: canary`) and the manual version split (A/B).
//!
//! A canary starts the new version's replicas next to the stable ones (health-gated, routed
//! with weight 0), then walks `canary.steps`: each sets the split (`model::canary`), holds, and
//! is judged from what the proxy counted per version since the step began. A breach (or
//! `berth abort`) takes the canary's weight away and drains its replicas in one table swap,
//! then the deployment is aborted (`run::abort`: containers removed) and failed with the
//! numbers; after the last step (or `berth promote`) the canary takes all traffic and the old
//! replicas drain, stop and are removed one by one, and the deployment commits as usual.
//! `berth traffic` (a manual split) stops the automatic steps: the split stays until promote
//! or abort (A/B between two versions).
//!
//! What a crash does: the route table a new process serves first holds the current deployment
//! only (stable until promotion commits), so traffic is back on stable within a second of the
//! restart; reconcile then fails the interrupted canary and removes its containers (also one
//! that was mid-promotion: stopped stable replicas are started again). The one exception is a
//! split set by hand (A/B, persisted in `app_traffic`): that canary is routed as split again
//! and waits for promote or abort. A crash after promotion committed leaves the canary as the
//! current deployment. An upgrade during a canary hands it over: at its next analysis tick
//! the canary parks (its point in the walk, split and replicas in the deploy's checkpoint,
//! traffic split as it was), the successor routes that split from its first table and walks
//! on from the same step with the rest of its hold (counts start again in the new process).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::failure::StepError;
use super::handover::{self, Checkpoint, ReplicaRec};
use super::run::{self, Progress};
use super::{now_ms, AppHosts, DeployError, Engine, Inner, LockExt, Replica};
use crate::model::api::Stage;
use crate::model::canary::{
    analyse, step_action, CanarySpec, StepAction, VersionCounts, VersionSplit,
};
pub use crate::model::canary::{CanaryStatus, LiveFigures};
use crate::model::deploy::SpecError;
use crate::model::route::{BackendAddr, ServerState};
use crate::store::deployments::DeploymentRecord;

/// How often a step looks at the counts (and at hand commands).
const TICK: Duration = Duration::from_millis(100);

/// A hand command to a running canary.
#[derive(Debug)]
pub(crate) enum Command {
    Promote,
    Abort,
    /// A manual split (already validated and persisted): kept until promote or abort.
    Split(VersionSplit),
}

struct Entry {
    tx: mpsc::UnboundedSender<Command>,
    status: CanaryStatus,
}

/// The running canaries, by app.
#[derive(Default)]
pub(crate) struct Canaries(Mutex<HashMap<String, Entry>>);

impl Canaries {
    fn register(&self, app: &str, status: CanaryStatus) -> mpsc::UnboundedReceiver<Command> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0
            .locked()
            .insert(app.to_string(), Entry { tx, status });
        rx
    }

    fn update(&self, app: &str, f: impl FnOnce(&mut CanaryStatus)) {
        if let Some(e) = self.0.locked().get_mut(app) {
            f(&mut e.status);
        }
    }

    fn remove(&self, app: &str, deployment: &str) {
        let mut m = self.0.locked();
        if m.get(app)
            .is_some_and(|e| e.status.deployment == deployment)
        {
            m.remove(app);
        }
    }

    /// The live status of `app`'s canary, if one runs.
    pub(crate) fn status(&self, app: &str) -> Option<CanaryStatus> {
        self.0.locked().get(app).map(|e| e.status.clone())
    }

    fn send(&self, app: &str, cmd: Command) -> bool {
        self.0
            .locked()
            .get(app)
            .is_some_and(|e| e.tx.send(cmd).is_ok())
    }
}

/// Registers `rec`'s canary with its first status; the guard unregisters it however the run
/// ends.
fn register<'a>(
    inner: &'a Inner,
    rec: &DeploymentRecord,
    status: CanaryStatus,
) -> (mpsc::UnboundedReceiver<Command>, Registered<'a>) {
    let rx = inner.canaries.register(&rec.app, status);
    (
        rx,
        Registered {
            inner,
            app: rec.app.clone(),
            deployment: rec.id.clone(),
        },
    )
}

/// Unregisters the canary however its run ends.
struct Registered<'a> {
    inner: &'a Inner,
    app: String,
    deployment: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.inner.canaries.remove(&self.app, &self.deployment);
    }
}

/// Sets the app's split and publishes it (one table swap).
pub(super) fn publish_split(
    inner: &Inner,
    app: &str,
    split: Option<VersionSplit>,
) -> Result<(), StepError> {
    let mut st = inner.state.locked();
    let a = st.apps.entry(app.to_string()).or_default();
    a.split = split;
    inner.publish_app(&st, app).map_err(StepError::Publish)
}

/// What the proxy counted so far for the replicas of `stable` and `canary`.
fn counts(inner: &Inner, app: &str, canary: &str) -> (VersionCounts, VersionCounts) {
    let route = super::app_route_name(app);
    let members: Vec<(String, bool)> = inner
        .state
        .locked()
        .apps
        .get(app)
        .map(|a| {
            a.replicas
                .iter()
                .map(|r| (r.container_id.clone(), r.deployment == canary))
                .collect()
        })
        .unwrap_or_default();
    let (mut s, mut c) = (VersionCounts::default(), VersionCounts::default());
    for (id, is_canary) in members {
        if let Some(n) = inner.publisher.counts(&route, &id) {
            if is_canary { &mut c } else { &mut s }.add(&n);
        }
    }
    (s, c)
}

/// Takes all traffic off the canary at once (split gone, its replicas drain, in one swap),
/// then returns the reason for `run::conclude`, which aborts the rest.
fn back_to_stable(inner: &Inner, rec: &DeploymentRecord, why: String) -> StepError {
    inner
        .canaries
        .update(&rec.app, |s| s.phase = "aborting".into());
    {
        let mut st = inner.state.locked();
        if let Some(a) = st.apps.get_mut(&rec.app) {
            a.split = None;
            for r in a.replicas.iter_mut().filter(|r| r.deployment == rec.id) {
                r.state = ServerState::Drain;
            }
        }
        if let Err(e) = inner.publish_app(&st, &rec.app) {
            inner.warn(format!(
                "canary {}: publishing the abort failed: {e}",
                rec.id
            ));
        }
    }
    inner.emit(
        &rec.id,
        Stage::Rollback,
        "traffic is back on the stable version; the canary drains",
    );
    // The manual split named the canary: it goes with it.
    if let Err(e) = inner
        .store
        .set_traffic_split(&rec.app, None, now_ms() / 1000)
    {
        inner.warn(format!("canary {}: clearing the split failed: {e}", rec.id));
    }
    StepError::Canary(why)
}

/// What woke a canary's loop.
enum Wake {
    /// The next analysis tick.
    Tick,
    Promote,
    /// A split set by hand, already applied.
    Split(VersionSplit),
    /// berthd is upgrading: park at this point for the successor.
    Upgrade,
}

/// Waits for a hand command or the next tick. An abort by hand takes the traffic back to
/// stable and ends the canary with the reason; an upgrade parks it (`park`).
async fn wake(
    inner: &Inner,
    rec: &DeploymentRecord,
    rx: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<Wake, StepError> {
    tokio::select! {
        cmd = rx.recv() => match cmd {
            Some(Command::Promote) => {
                inner.emit(&rec.id, Stage::Promote, "promoted by hand");
                Ok(Wake::Promote)
            }
            Some(Command::Abort) | None => {
                Err(back_to_stable(inner, rec, "canary aborted by hand".into()))
            }
            Some(Command::Split(s)) => {
                apply_manual(inner, rec, &s)?;
                Ok(Wake::Split(s))
            }
        },
        _ = tokio::time::sleep(TICK) => {
            if !inner.handover.running() {
                return Ok(Wake::Upgrade);
            }
            Ok(Wake::Tick)
        }
    }
}

/// Both versions' counts since `base` (stable, canary), shown as the canary's live figures.
fn live(
    inner: &Inner,
    app: &str,
    canary: &str,
    base: &(VersionCounts, VersionCounts),
) -> (VersionCounts, VersionCounts) {
    let now = counts(inner, app, canary);
    let (s, c) = (now.0.since(&base.0), now.1.since(&base.1));
    inner.canaries.update(app, |st| {
        st.stable_live = LiveFigures::of(&s);
        st.canary_live = LiveFigures::of(&c);
    });
    (s, c)
}

/// Applies a split set by hand (already validated and persisted) and shows it.
fn apply_manual(inner: &Inner, rec: &DeploymentRecord, s: &VersionSplit) -> Result<(), StepError> {
    publish_split(inner, &rec.app, Some(s.clone()))?;
    inner.emit(
        &rec.id,
        Stage::Split,
        format!(
            "traffic split by hand: {}; automatic steps stop until promote or abort",
            s.weights
                .iter()
                .map(|(v, w)| format!("{v}={w}%"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    inner.canaries.update(&rec.app, |st| {
        st.phase = "manual".into();
        st.split = s.weights.clone();
        st.sticky = s.sticky;
    });
    Ok(())
}

/// Starts `rec`'s replicas next to the running ones, each health-gated and then routed
/// (with whatever weight the app's split gives its version: 0 while it starts).
pub(super) async fn start_beside(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image_id: &str,
    progress: &mut Progress,
    what: &str,
) -> Result<(), StepError> {
    let (app, spec) = (&rec.app, &rec.spec);
    for slot in 0..spec.replicas {
        let new = run::start_replica(inner, rec, image_id, slot).await?;
        inner.emit(
            &rec.id,
            Stage::Start,
            format!("{what} {slot}: container {} at {}", new.name, new.addr),
        );
        let (id, name, addr) = (new.id.clone(), new.name.clone(), new.addr);
        progress.new.insert(slot, new);
        if let Some(new) = progress.new.get(&slot) {
            run::gate(inner, rec, new, slot).await?;
        }
        inner.emit(&rec.id, Stage::Healthy, format!("{what} {slot} is healthy"));
        let mut st = inner.state.locked();
        let a = st.apps.entry(app.clone()).or_default();
        a.hosts = Some(AppHosts::of(spec));
        a.replicas.push(Replica {
            container_id: id.clone(),
            name,
            address: BackendAddr::new(addr.ip().to_string(), addr.port()),
            deployment: rec.id.clone(),
            state: ServerState::Ready,
        });
        progress.routed_new.push(id);
        inner.publish_app(&st, app).map_err(StepError::Publish)?;
    }
    Ok(())
}

/// Runs a canary deploy of `rec` next to the `old` replicas (the stable version). `Err` is
/// the failure reason (traffic is already back on stable); `conclude` aborts or commits.
pub(super) async fn run_canary(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image_id: &str,
    old: &[Replica],
    old_grace: Duration,
    progress: &mut Progress,
) -> Result<bool, StepError> {
    let app = &rec.app;
    let spec = &rec.spec;
    let cs: &CanarySpec = spec.canary.as_ref().ok_or(StepError::NoCanarySpec)?;
    let stable = old
        .first()
        .map(|r| r.deployment.clone())
        .unwrap_or_default();
    let (mut rx, _registered) = register(
        inner,
        rec,
        CanaryStatus {
            deployment: rec.id.clone(),
            stable: stable.clone(),
            phase: "starting".into(),
            step: 0,
            steps: cs.steps.len(),
            split: VersionSplit::canary(&stable, &rec.id, 0, cs.sticky).weights,
            sticky: cs.sticky,
            stable_live: LiveFigures::default(),
            canary_live: LiveFigures::default(),
        },
    );
    // 1. The canary's replicas, health-gated, routed with weight 0.
    publish_split(
        inner,
        app,
        Some(VersionSplit::canary(&stable, &rec.id, 0, cs.sticky)),
    )?;
    start_beside(inner, rec, image_id, progress, "canary replica").await?;
    // 2. The steps (or a manual split, until promote or abort).
    walk(
        inner,
        rec,
        image_id,
        (&stable, old, old_grace),
        progress,
        &mut rx,
        At::default(),
    )
    .await
}

/// Where a canary's walk starts: step index, time of that step's hold already done, a split
/// set by hand (then no automatic steps).
#[derive(Default)]
struct At {
    step: usize,
    held: Duration,
    manual: Option<VersionSplit>,
}

/// Walks `canary.steps` from `at` (or holds a split set by hand) until promotion (then
/// `Ok(false)`), a breach or an abort (`Err`, traffic already back on stable), or an upgrade
/// that handed the canary to the successor (`Ok(true)`).
async fn walk(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image_id: &str,
    (stable, old, old_grace): (&str, &[Replica], Duration),
    progress: &mut Progress,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    at: At,
) -> Result<bool, StepError> {
    let app = &rec.app;
    let cs: &CanarySpec = rec.spec.canary.as_ref().ok_or(StepError::NoCanarySpec)?;
    let mut manual = at.manual;
    let total = cs.steps.len();
    'steps: for (k, step) in cs.steps.iter().enumerate().skip(at.step) {
        let weight = step.weight.as_whole().unwrap_or(0);
        let held = if k == at.step {
            at.held
        } else {
            Duration::ZERO
        };
        if manual.is_none() {
            publish_split(
                inner,
                app,
                Some(VersionSplit::canary(stable, &rec.id, weight, cs.sticky)),
            )?;
            inner.emit(
                &rec.id,
                Stage::Step,
                format!(
                    "step {}/{total}: {weight}% of new requests to the canary for {}",
                    k + 1,
                    humantime::format_duration(step.hold.saturating_sub(held))
                ),
            );
        }
        let split_now = |manual: &Option<VersionSplit>| {
            manual
                .clone()
                .unwrap_or_else(|| VersionSplit::canary(stable, &rec.id, weight, cs.sticky))
        };
        inner.canaries.update(app, |s| {
            s.phase = if manual.is_some() { "manual" } else { "step" }.into();
            s.step = k + 1;
            s.split = split_now(&manual).weights;
        });
        let mut base = counts(inner, app, &rec.id);
        let mut started = Instant::now()
            .checked_sub(held)
            .unwrap_or_else(Instant::now);
        loop {
            match wake(inner, rec, rx).await? {
                Wake::Promote => break 'steps,
                Wake::Split(s) => {
                    manual = Some(s);
                    base = counts(inner, app, &rec.id);
                    started = Instant::now();
                    continue;
                }
                Wake::Upgrade => {
                    let here = Parked {
                        step: k,
                        held_ms: started.elapsed().as_millis() as u64,
                        split: split_now(&manual),
                        manual: manual.is_some(),
                        stable: stable.to_string(),
                        stable_replicas: old.iter().map(ReplicaRec::of).collect(),
                    };
                    if park(inner, rec, image_id, old_grace, progress, here).await? {
                        return Ok(true);
                    }
                    continue;
                }
                Wake::Tick => {}
            }
            let (s, c) = live(inner, app, &rec.id, &base);
            if manual.is_some() {
                continue;
            }
            let elapsed = started.elapsed();
            let verdict = analyse(&cs.analysis, &c, &s);
            match step_action(&verdict, elapsed >= step.hold, elapsed >= step.hold * 3) {
                StepAction::Wait => {}
                StepAction::Advance => {
                    inner.emit(
                        &rec.id,
                        Stage::Analysis,
                        format!(
                            "step {}/{total} passed: canary {}; stable {}",
                            k + 1,
                            c.summary(),
                            s.summary()
                        ),
                    );
                    break;
                }
                StepAction::Abort(why) => {
                    let why = format!("canary aborted at step {}/{total}: {why}", k + 1);
                    return Err(back_to_stable(inner, rec, why));
                }
            }
        }
    }
    let sticky = manual.as_ref().map_or(cs.sticky, |m| m.sticky);
    promote(inner, rec, stable, old, sticky, old_grace, progress)
        .await
        .map(|()| false)
}

/// Where a canary stood when an upgrade parked it (in the deploy's checkpoint): the
/// successor routes `split` at once and walks on from `step` with `held_ms` of its hold done.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Parked {
    pub step: usize,
    pub held_ms: u64,
    pub split: VersionSplit,
    /// The split was set by hand: no automatic steps.
    pub manual: bool,
    pub stable: String,
    pub stable_replicas: Vec<ReplicaRec>,
}

/// An upgrade asked deploys to pause: the canary's point is checkpointed (its replicas and
/// split stay routed as they are) and it waits. `Ok(true)`: handed over to the successor,
/// which carries on (`carry_on`); `Ok(false)`: the upgrade did not happen, walk on here.
async fn park(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image_id: &str,
    old_grace: Duration,
    progress: &mut Progress,
    here: Parked,
) -> Result<bool, StepError> {
    let old: Vec<String> = here
        .stable_replicas
        .iter()
        .map(|r| r.container_id.clone())
        .collect();
    let steps = rec.spec.canary.as_ref().map_or(0, |c| c.steps.len());
    let mut cp = Checkpoint::new(image_id, &old, here.step, steps, old_grace);
    run::fill_checkpoint(&mut cp, progress);
    cp.new_hosts = true;
    cp.canary = Some(here);
    cp.version = handover::CANARY_CHECKPOINT_VERSION;
    handover::boundary(inner, rec, cp).await
}

/// In the successor of an upgrade: carries on a canary its predecessor parked, at the step
/// and split it had (already routed by `serve_first`), with the rest of that step's hold.
pub(super) async fn carry_on(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    image_id: &str,
    here: Parked,
    old_grace: Duration,
    progress: &mut Progress,
) -> Result<bool, StepError> {
    let old: Vec<Replica> = here
        .stable_replicas
        .iter()
        .map(ReplicaRec::replica)
        .collect();
    let steps = rec.spec.canary.as_ref().map_or(0, |c| c.steps.len());
    let (mut rx, _registered) = register(
        inner,
        rec,
        CanaryStatus {
            deployment: rec.id.clone(),
            stable: here.stable.clone(),
            phase: if here.manual { "manual" } else { "step" }.into(),
            step: here.step + 1,
            steps,
            split: here.split.weights.clone(),
            sticky: here.split.sticky,
            stable_live: LiveFigures::default(),
            canary_live: LiveFigures::default(),
        },
    );
    inner.emit(
        &rec.id,
        Stage::Step,
        format!(
            "the canary carries on after the upgrade at step {}/{steps} ({} of its hold done), \
             split {}",
            here.step + 1,
            humantime::format_duration(Duration::from_millis(here.held_ms)),
            here.split
                .weights
                .iter()
                .map(|(v, w)| format!("{v}={w}%"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let at = At {
        step: here.step,
        held: Duration::from_millis(here.held_ms),
        manual: here.manual.then(|| here.split.clone()),
    };
    walk(
        inner,
        rec,
        image_id,
        (&here.stable, &old, old_grace),
        progress,
        &mut rx,
        at,
    )
    .await
}

/// Promotion: the canary takes every new request, the old replicas drain, stop and leave
/// the route one by one; the split goes and the stored one with it. `conclude` commits.
async fn promote(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    stable: &str,
    old: &[Replica],
    sticky: bool,
    old_grace: Duration,
    progress: &mut Progress,
) -> Result<(), StepError> {
    let app = &rec.app;
    let spec = &rec.spec;
    inner.canaries.update(app, |s| s.phase = "promoting".into());
    publish_split(
        inner,
        app,
        Some(VersionSplit::canary(stable, &rec.id, 100, sticky)),
    )?;
    inner.emit(
        &rec.id,
        Stage::Promote,
        "the canary takes all new requests; the stable replicas drain",
    );
    for o in old {
        run::set_routing(inner, app, &o.container_id, ServerState::Drain)?;
        let left = run::wait_drained(inner, app, &o.container_id, spec.drain_timeout).await;
        if let Some(r) = run::take_out(inner, app, &o.container_id)? {
            progress.stopped_old.push(r);
        }
        let rt = inner.rt.clone();
        let cid = o.container_id.clone();
        progress
            .stops
            .push(tokio::spawn(async move { rt.stop(&cid, old_grace).await }));
        inner.emit(
            &rec.id,
            Stage::Stopped,
            format!(
                "old {} is out of the route ({left} in flight at the end of its drain); stopping",
                run::short(&o.container_id)
            ),
        );
    }
    publish_split(inner, app, None)?;
    if let Err(e) = inner.store.set_traffic_split(app, None, now_ms() / 1000) {
        inner.warn(format!("canary {}: clearing the split failed: {e}", rec.id));
    }
    Ok(())
}

/// A canary that a manual split held when berthd stopped (see `reconcile::serve_first`).
pub(crate) struct Resumed {
    pub rec: DeploymentRecord,
    /// The app's current (stable) deployment.
    pub stable: DeploymentRecord,
    pub split: VersionSplit,
}

/// Carries on a canary held by a manual split after a restart: routed as split already
/// (`serve_first`), it waits for promote, abort or another split, like before the restart.
pub(super) async fn resume(inner: Arc<Inner>, r: Resumed) {
    let Resumed { rec, stable, split } = r;
    let _active = inner.handover.enter(&rec.id);
    let past = inner
        .store
        .events(&rec.id)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| super::replayed(&rec.id, e))
        .collect();
    inner.track(&rec.id, past);
    let (old, canary): (Vec<Replica>, Vec<Replica>) = inner
        .state
        .locked()
        .apps
        .get(&rec.app)
        .map(|a| a.replicas.clone())
        .unwrap_or_default()
        .into_iter()
        .partition(|r| r.deployment != rec.id);
    let mut progress = Progress::default();
    for (slot, c) in canary.iter().enumerate() {
        if let Ok(addr) = format!("{}:{}", c.address.host(), c.address.port()).parse() {
            progress.new.insert(
                slot as u32,
                run::New {
                    id: c.container_id.clone(),
                    name: c.name.clone(),
                    addr,
                },
            );
        }
        progress.routed_new.push(c.container_id.clone());
    }
    inner.emit(
        &rec.id,
        Stage::Split,
        format!(
            "berthd restarted: the split set by hand is restored ({} of the canary's replicas run); waiting for promote or abort",
            canary.len()
        ),
    );
    let old_grace = stable.spec.stop_timeout.unwrap_or(inner.cfg.stop_grace);
    let outcome = held(
        &inner,
        &rec,
        &stable.id,
        split,
        &old,
        old_grace,
        &mut progress,
    )
    .await;
    run::conclude(&inner, &rec, progress, outcome).await;
}

/// The manual hold of a resumed canary: commands until promote (then promotion) or abort.
async fn held(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    stable: &str,
    split: VersionSplit,
    old: &[Replica],
    old_grace: Duration,
    progress: &mut Progress,
) -> Result<bool, StepError> {
    let (mut rx, _registered) = register(
        inner,
        rec,
        CanaryStatus {
            deployment: rec.id.clone(),
            stable: stable.to_string(),
            phase: "manual".into(),
            step: 0,
            steps: rec.spec.canary.as_ref().map_or(0, |c| c.steps.len()),
            split: split.weights.clone(),
            sticky: split.sticky,
            stable_live: LiveFigures::default(),
            canary_live: LiveFigures::default(),
        },
    );
    let image_id = rec.image_id.clone().unwrap_or_default();
    let at = At {
        manual: Some(split),
        ..At::default()
    };
    walk(
        inner,
        rec,
        &image_id,
        (stable, old, old_grace),
        progress,
        &mut rx,
        at,
    )
    .await
}

/// A version of a running app: its deployment id and, when unambiguous, its image tag.
pub(super) fn resolve_version(key: &str, running: &[(String, String)]) -> Option<String> {
    if running.iter().any(|(id, _)| id == key) {
        return Some(key.to_string());
    }
    let by_tag: Vec<&(String, String)> = running.iter().filter(|(_, tag)| tag == key).collect();
    match by_tag.as_slice() {
        [(id, _)] => Some(id.clone()),
        _ => None,
    }
}

/// [`resolve_version`], or the 422 naming `field` and listing the app's running versions.
pub(super) fn running_version(
    app: &str,
    key: &str,
    field: String,
    running: &[(String, String)],
) -> Result<String, DeployError> {
    resolve_version(key, running).ok_or_else(|| {
        let list = running
            .iter()
            .map(|(id, tag)| {
                if tag.is_empty() {
                    id.clone()
                } else {
                    format!("{id} ({tag})")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        DeployError::Invalid(SpecError {
            field,
            message: format!("{key:?} names no running version of app {app} (running: {list})"),
        })
    })
}

/// The tag of an image reference (`registry:5000/web:v2` → `v2`), if it has one.
pub(super) fn image_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if !image.starts_with("sha256:") => tag.to_string(),
        _ => String::new(),
    }
}

impl Engine {
    /// `POST /v1/apps/{app}/promote`: the running canary is promoted now.
    pub fn promote(&self, app: &str) -> Result<CanaryStatus, DeployError> {
        self.canary_command(app, Command::Promote)
    }

    /// `POST /v1/apps/{app}/abort`: the running canary is aborted now (traffic back on
    /// stable, its containers removed, the deployment failed).
    pub fn abort(&self, app: &str) -> Result<CanaryStatus, DeployError> {
        self.canary_command(app, Command::Abort)
    }

    fn canary_command(&self, app: &str, cmd: Command) -> Result<CanaryStatus, DeployError> {
        let status = self
            .inner
            .canaries
            .status(app)
            .ok_or_else(|| DeployError::NoCanary(app.to_string()))?;
        if !self.inner.canaries.send(app, cmd) {
            return Err(DeployError::NoCanary(app.to_string()));
        }
        Ok(status)
    }

    /// `GET /v1/apps/{app}/traffic`: the split in force (version → percent); one version at
    /// 100 when the app runs one.
    pub fn traffic(&self, app: &str) -> Result<VersionSplit, DeployError> {
        let st = self.inner.state.locked();
        let a = st
            .apps
            .get(app)
            .filter(|a| a.hosts.is_some())
            .ok_or_else(|| DeployError::AppNotFound(app.to_string()))?;
        if let Some(s) = &a.split {
            return Ok(s.clone());
        }
        // No split: each version's share of the ready replicas (one version: 100; a rolling
        // deploy in progress: its new replicas' share so far).
        let mut ready: BTreeMap<String, u32> = BTreeMap::new();
        for r in a.replicas.iter().filter(|r| r.state == ServerState::Ready) {
            *ready.entry(r.deployment.clone()).or_default() += 1;
        }
        let total: u32 = ready.values().sum();
        let mut weights = BTreeMap::new();
        let mut given = 0;
        let n = ready.len();
        for (i, (v, count)) in ready.into_iter().enumerate() {
            let w = if i + 1 == n {
                100 - given
            } else {
                count * 100 / total
            };
            given += w;
            weights.insert(v, w);
        }
        Ok(VersionSplit {
            weights,
            sticky: false,
        })
    }

    /// `PUT /v1/apps/{app}/traffic`: splits new requests between the running versions
    /// (deployment ids or image tags) by whole percents summing to 100. Validated against
    /// what runs (422 naming the version or `weights`), persisted, then applied by the
    /// running canary, which stops its automatic steps until promote or abort. Nothing
    /// changes on a refusal.
    pub fn set_traffic(
        &self,
        app: &str,
        weights: &BTreeMap<String, u32>,
        sticky: Option<bool>,
    ) -> Result<VersionSplit, DeployError> {
        self.refuse_if_damaged(app)?;
        let running = self.running_versions(app)?;
        let mut split = VersionSplit::default();
        for (k, w) in weights {
            let id = running_version(app, k, format!("weights.{k}"), &running)?;
            if *w > 100 {
                // Named as the caller wrote it (not as the deployment id it resolves to).
                return Err(DeployError::Invalid(SpecError {
                    field: format!("weights.{k}"),
                    message: format!("{w} is out of range (0-100)"),
                }));
            }
            if split.weights.insert(id.clone(), *w).is_some() {
                return Err(DeployError::Invalid(SpecError {
                    field: format!("weights.{k}"),
                    message: format!("version {id} is named twice"),
                }));
            }
        }
        let ids: Vec<&str> = running.iter().map(|(id, _)| id.as_str()).collect();
        split.validate(&ids).map_err(DeployError::Invalid)?;
        let status = self.inner.canaries.status(app);
        let kept = self.kept_split(app);
        split.sticky = sticky.unwrap_or_else(|| {
            status.as_ref().is_some_and(|s| s.sticky) || kept.as_ref().is_some_and(|k| k.sticky)
        });
        if status.is_none() && kept.is_some() {
            // Versions side by side (`versions.rs`): persisted, then published.
            return self.set_kept_split(app, split, &running);
        }
        if ids.len() < 2 {
            // One version: it already has every request; nothing to persist.
            return Ok(split);
        }
        if status.is_none() {
            return Err(DeployError::NoCanary(app.to_string()));
        }
        // Persist before it takes effect.
        self.inner
            .store
            .set_traffic_split(app, Some(&split), now_ms() / 1000)?;
        if !self.inner.canaries.send(app, Command::Split(split.clone())) {
            let _ = self
                .inner
                .store
                .set_traffic_split(app, None, now_ms() / 1000);
            return Err(DeployError::NoCanary(app.to_string()));
        }
        Ok(split)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_by_id_or_unambiguous_tag() {
        let running = vec![
            ("d1".to_string(), "v1".to_string()),
            ("d2".to_string(), "v2".to_string()),
            ("d3".to_string(), "v2".to_string()),
        ];
        assert_eq!(resolve_version("d2", &running).as_deref(), Some("d2"));
        assert_eq!(resolve_version("v1", &running).as_deref(), Some("d1"));
        assert_eq!(resolve_version("v2", &running), None, "ambiguous");
        assert_eq!(resolve_version("v9", &running), None);
        assert_eq!(image_tag("web:v2"), "v2");
        assert_eq!(image_tag("registry:5000/web:v2"), "v2");
        assert_eq!(image_tag("registry:5000/web"), "");
        assert_eq!(image_tag("sha256:abc"), "");
    }
}
