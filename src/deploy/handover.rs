//! Ownership of in-flight deploys across a `berthd upgrade` (and a crash during one).
//!
//! One process writes a deployment at a time. On an upgrade the running process first
//! **pauses** every deploy at its next step boundary: the task persists a [`Checkpoint`]
//! (the plan's inputs, the steps done, the containers it started, routed and stopped, and
//! the route as it stands) with itself as owner, then waits. Only then is the successor
//! started; it routes the app as the checkpoint says and waits. When the successor is
//! ready, the predecessor **hands over** (the checkpoint names the successor's pid) and its
//! deploy tasks end without touching anything else; if the upgrade fails, the predecessor
//! drops the checkpoints and carries on. The successor resumes each handed-over deploy from
//! its checkpoint once the predecessor has exited (its proxy may still send requests to a
//! replica the next step drains and stops), or after [`PREDECESSOR_WAIT`]. A checkpoint whose
//! owner died without handing over (kill -9 during an upgrade) is exact too (nothing ran
//! after it was written), so it is resumed the same way. Deploys interrupted without a
//! checkpoint (a crash mid-step) are finished or rolled back by reconcile.
//!
//! While paused or handed over, the process takes no new deploys, stops or deletes
//! ([`super::DeployError::Upgrading`]) and its self-healing loop does nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tokio::time::Instant;

use super::failure::StepError;
use super::{AppHosts, AppState, Inner, LockExt, Replica, Stage};
use crate::model::route::{BackendAddr, ServerState};
use crate::store::deployments::DeploymentRecord;

/// Checkpoint format version (a successor refuses others and leaves the deploy to reconcile).
const CHECKPOINT_VERSION: u32 = 1;
/// The version of a parked canary's checkpoint: a berthd that does not know canaries refuses
/// it (then reconcile fails the canary and stable keeps the traffic) instead of running the
/// rolling plan from its step count.
pub(crate) const CANARY_CHECKPOINT_VERSION: u32 = 2;

/// Longest wait of a successor for its predecessor to exit before resuming a handed-over
/// deploy (the predecessor's drain is bounded too; this only guards against a hung one).
pub(crate) const PREDECESSOR_WAIT: Duration = Duration::from_secs(60);

/// What every deploy task obeys at its step boundaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ownership {
    Run,
    /// Stop at the next boundary, persist, wait.
    Paused,
    /// Handed to this process id: end without writing anything.
    HandOver(u32),
}

/// Why an upgrade could not pause the deploys.
#[derive(Debug, Error)]
pub enum HandoverError {
    #[error(
        "deploy(s) {0} did not reach a step boundary in time (an image upload or a long \
         health gate); the upgrade was not started, try again when they are done"
    )]
    Busy(String),
}

/// Why a stored checkpoint cannot be resumed (reconcile then treats the deploy as
/// interrupted).
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("checkpoint version {0} (this berthd reads {CHECKPOINT_VERSION})")]
    Version(u32),
}

/// One replica as routed (or stopped) when the checkpoint was written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ReplicaRec {
    pub container_id: String,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub deployment: String,
    /// `drain` or `maint` (an older successor, which reads only this, keeps it draining).
    pub drain: bool,
    /// `maint`: a drain's second phase (`run::wait_drained`), nothing routed to it.
    #[serde(default)]
    pub maint: bool,
}

impl ReplicaRec {
    pub fn of(r: &Replica) -> Self {
        ReplicaRec {
            container_id: r.container_id.clone(),
            name: r.name.clone(),
            host: r.address.host().to_string(),
            port: r.address.port(),
            deployment: r.deployment.clone(),
            drain: r.state != ServerState::Ready,
            maint: r.state == ServerState::Maint,
        }
    }

    pub fn replica(&self) -> Replica {
        Replica {
            container_id: self.container_id.clone(),
            name: self.name.clone(),
            address: BackendAddr::new(self.host.clone(), self.port),
            deployment: self.deployment.clone(),
            state: match (self.maint, self.drain) {
                (true, _) => ServerState::Maint,
                (false, true) => ServerState::Drain,
                (false, false) => ServerState::Ready,
            },
        }
    }
}

/// A replica this deployment started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct NewRec {
    pub id: String,
    pub name: String,
    pub addr: SocketAddr,
}

/// Where a deploy stands at a step boundary: enough to run the rest of its plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub version: u32,
    pub image_id: String,
    /// The old replicas the plan was made from (the plan is recomputed from them).
    pub old: Vec<String>,
    /// Steps of the plan already done.
    pub steps_done: usize,
    pub steps_total: usize,
    /// Grace of `docker stop` for the old replicas.
    pub old_grace_ms: u64,
    pub new: BTreeMap<u32, NewRec>,
    pub routed_new: Vec<String>,
    /// Old replicas out of the route and stopped (restarted on abort, removed on success).
    pub stopped_old: Vec<ReplicaRec>,
    /// The app's route as it stands (what the successor publishes at once).
    pub routed: Vec<ReplicaRec>,
    /// Whether the route answers for the new spec's domains already.
    pub new_hosts: bool,
    /// A canary's point in its walk (`canary::Parked`): the successor carries on there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<super::canary::Parked>,
}

impl Checkpoint {
    pub fn parse(data: &str) -> Result<Checkpoint, CheckpointError> {
        let cp: Checkpoint = serde_json::from_str(data)?;
        let known = cp.version == CHECKPOINT_VERSION
            || (cp.version == CANARY_CHECKPOINT_VERSION && cp.canary.is_some());
        if !known {
            return Err(CheckpointError::Version(cp.version));
        }
        Ok(cp)
    }

    pub fn new(
        image_id: &str,
        old: &[String],
        steps_done: usize,
        steps_total: usize,
        old_grace: Duration,
    ) -> Checkpoint {
        Checkpoint {
            version: CHECKPOINT_VERSION,
            image_id: image_id.to_string(),
            old: old.to_vec(),
            steps_done,
            steps_total,
            old_grace_ms: old_grace.as_millis() as u64,
            new: BTreeMap::new(),
            routed_new: Vec::new(),
            stopped_old: Vec::new(),
            routed: Vec::new(),
            new_hosts: false,
            canary: None,
        }
    }
}

/// The engine's hand-over state.
pub(crate) struct Handover {
    pub pause: watch::Sender<Ownership>,
    /// Deploy tasks running in this process (and `heal:APP` while a repair runs).
    active: Mutex<BTreeSet<String>>,
    /// Deploys paused at a boundary: id → (step done, steps).
    paused: Mutex<BTreeMap<String, (usize, usize)>>,
}

impl Default for Handover {
    fn default() -> Self {
        Handover {
            pause: watch::Sender::new(Ownership::Run),
            active: Mutex::new(BTreeSet::new()),
            paused: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Registered while a deploy task (or a repair) runs; unregisters on drop.
pub(crate) struct Active<'a> {
    h: &'a Handover,
    key: String,
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.h.active.locked().remove(&self.key);
    }
}

impl Handover {
    pub fn running(&self) -> bool {
        *self.pause.borrow() == Ownership::Run
    }

    /// Deploy `id`, paused after step `at` (done, of), waits until the upgrade goes on or
    /// not; returns what became of the pause.
    async fn wait_paused(&self, id: &str, at: (usize, usize)) -> Ownership {
        self.paused.locked().insert(id.to_string(), at);
        let mut rx = self.pause.subscribe();
        let next = rx
            .wait_for(|p| *p != Ownership::Paused)
            .await
            .map(|p| p.clone())
            .unwrap_or(Ownership::Run);
        self.paused.locked().remove(id);
        next
    }

    pub fn enter(&self, key: &str) -> Active<'_> {
        self.active.locked().insert(key.to_string());
        Active {
            h: self,
            key: key.to_string(),
        }
    }
}

/// Whether a process id names a live (not zombie) process.
pub(crate) fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 3, after the command name in parentheses (which may itself hold spaces).
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .unwrap_or("");
    !matches!(state, "Z" | "X" | "x" | "")
}

/// A step boundary of deploy `rec`. Returns at once unless an upgrade asked for a pause:
/// then persists `cp` (filled in here with the route as it stands), waits, and returns
/// `true` if the deploy was handed over (the caller ends without another write).
pub(crate) async fn boundary(
    inner: &Arc<Inner>,
    rec: &DeploymentRecord,
    mut cp: Checkpoint,
) -> Result<bool, StepError> {
    if inner.handover.running() {
        return Ok(false);
    }
    {
        let st = inner.state.locked();
        if let Some(a) = st.apps.get(&rec.app) {
            cp.routed = a.replicas.iter().map(ReplicaRec::of).collect();
        }
    }
    let data = serde_json::to_string(&cp).map_err(StepError::CheckpointEncode)?;
    inner
        .store
        .save_checkpoint(&rec.id, std::process::id(), &data)
        .map_err(StepError::CheckpointSave)?;
    inner.emit(
        &rec.id,
        Stage::Paused,
        format!(
            "paused after step {} of {} for a berthd upgrade",
            cp.steps_done, cp.steps_total
        ),
    );
    let next = inner
        .handover
        .wait_paused(&rec.id, (cp.steps_done, cp.steps_total))
        .await;
    match next {
        Ownership::HandOver(_) => Ok(true),
        _ => {
            // The upgrade did not happen: this process carries on, nobody resumes it.
            if let Err(e) = inner.store.drop_checkpoint(&rec.id) {
                inner.warn(format!(
                    "deployment {}: dropping its checkpoint: {e}",
                    rec.id
                ));
            }
            inner.emit(
                &rec.id,
                Stage::Resumed,
                "the upgrade did not happen; carrying on",
            );
            Ok(false)
        }
    }
}

/// Pauses every deploy at its next step boundary (and waits for running repairs); on
/// timeout, lets them carry on and says which did not stop.
pub(crate) async fn pause_all(inner: &Inner, timeout: Duration) -> Result<usize, HandoverError> {
    inner.handover.pause.send_replace(Ownership::Paused);
    let deadline = Instant::now() + timeout;
    loop {
        let busy: Vec<String> = {
            let active = inner.handover.active.locked();
            let paused = inner.handover.paused.locked();
            active
                .iter()
                .filter(|k| !paused.contains_key(*k))
                .cloned()
                .collect()
        };
        if busy.is_empty() {
            let n = inner.handover.paused.locked().len();
            if n > 0 {
                tracing::info!(deploys = n, "deploys paused for the upgrade");
            }
            return Ok(n);
        }
        if Instant::now() >= deadline {
            resume_all(inner);
            return Err(HandoverError::Busy(busy.join(", ")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The upgrade failed: paused deploys carry on here.
pub(crate) fn resume_all(inner: &Inner) {
    inner.handover.pause.send_replace(Ownership::Run);
}

/// The successor `pid` is serving: every paused deploy is its now. Each gets an event, then
/// its checkpoint names `pid`; then the tasks end.
pub(crate) fn hand_over_all(inner: &Inner, pid: u32) {
    let paused: Vec<(String, (usize, usize))> = inner
        .handover
        .paused
        .locked()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    for (id, (done, total)) in &paused {
        // The last write of this process to the deployment.
        inner.emit(
            id,
            Stage::Handover,
            format!(
                "handed over to berthd process {pid}; it carries on after step {done} of {total}"
            ),
        );
        if let Err(e) = inner.store.hand_over(id, std::process::id(), pid) {
            // The successor resumes it anyway once this process has exited.
            inner.warn(format!(
                "deployment {id}: recording the hand-over failed: {e}"
            ));
        }
    }
    inner.handover.pause.send_replace(Ownership::HandOver(pid));
    if !paused.is_empty() {
        tracing::info!(
            deploys = paused.len(),
            successor = pid,
            "deploys handed over"
        );
    }
}

/// A deploy found checkpointed at start (an upgrade handed it over, or its owner died while
/// it was paused): the route it had is published by `serve_first` from this.
pub(crate) struct Adopted {
    pub rec: DeploymentRecord,
    pub cp: Checkpoint,
}

/// Applies a checkpoint's route to the app's start-up state.
pub(crate) fn route_as_checkpointed(a: &mut AppState, ad: &Adopted) {
    a.replicas = ad.cp.routed.iter().map(ReplicaRec::replica).collect();
    if ad.cp.new_hosts {
        a.hosts = Some(AppHosts::of(&ad.rec.spec));
    }
    a.running = Some(ad.rec.id.clone());
    // A parked canary's split, as it was.
    if let Some(c) = &ad.cp.canary {
        a.split = Some(c.split.clone());
    }
    // A replace deploy of a one-replica app held requests during its cut-over: the hold is
    // back from the first route this process serves, not only once the deploy resumes (the
    // predecessor may still be draining then, and its old replica is already gone).
    a.deploy_hold = super::traffic::cutover_hold(
        &ad.rec.spec,
        ad.cp.old.len(),
        Duration::from_millis(ad.cp.old_grace_ms),
    );
}

/// Background, in the successor: waits until deploy `ad` is this process's to write (handed
/// over and the predecessor gone, or its owner dead), then resumes it.
pub(crate) async fn resume_when_ours(inner: Arc<Inner>, ad: Adopted) {
    let me = std::process::id();
    let id = ad.rec.id.clone();
    let mut handed_at: Option<Instant> = None;
    // Counted as a running deploy: an upgrade of this process before the deploy is resumed
    // waits until it is parked (below) and hands it on.
    let active = inner.handover.enter(&id);
    let how = loop {
        if !inner.handover.running() {
            // This process is being upgraded in turn: park the deploy and pass it on (the
            // checkpoint then names this process as owner, so the next one waits for it).
            let next = inner
                .handover
                .wait_paused(&id, (ad.cp.steps_done, ad.cp.steps_total))
                .await;
            if matches!(next, Ownership::HandOver(_)) {
                return;
            }
            continue;
        }
        match inner.store.checkpoint(&id) {
            Ok(Some(c)) => {
                let owner_gone = c.owner == me || !process_alive(c.owner);
                if c.handed_to == Some(me) {
                    let since = *handed_at.get_or_insert_with(Instant::now);
                    if owner_gone {
                        break format!("handed over by berthd process {}", c.owner);
                    }
                    if since.elapsed() > PREDECESSOR_WAIT {
                        inner.warn(format!(
                            "deployment {id}: the previous berthd process {} has not exited \
                             {PREDECESSOR_WAIT:?} after handing over; resuming anyway",
                            c.owner
                        ));
                        break format!("handed over by berthd process {}", c.owner);
                    }
                } else if owner_gone {
                    break format!(
                        "berthd process {} stopped while the deploy was paused",
                        c.owner
                    );
                }
            }
            Ok(None) => {
                // The owner took it back (its upgrade failed; this process is being stopped)
                // or finished it.
                {
                    let mut st = inner.state.locked();
                    if let Some(a) = st.apps.get_mut(&ad.rec.app) {
                        if a.running.as_deref() == Some(id.as_str()) {
                            a.running = None;
                            // Its cut-over hold (`route_as_checkpointed`) goes with it.
                            if a.deploy_hold.take().is_some() {
                                if let Err(e) = inner.publish_app(&st, &ad.rec.app) {
                                    inner.warn(format!("deployment {id}: ending its hold: {e}"));
                                }
                            }
                        }
                    }
                }
                tracing::info!(deployment = %id, "deploy stays with the previous process");
                return;
            }
            Err(e) => inner.warn(format!("deployment {id}: reading its checkpoint: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    inner.emit(
        &id,
        Stage::Resumed,
        format!(
            "berthd process {me} carries on after step {} of {} ({how})",
            ad.cp.steps_done, ad.cp.steps_total
        ),
    );
    super::run::resume(inner.clone(), ad.rec, ad.cp).await;
    drop(active);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handed_over_one_replica_replace_holds_requests_from_the_first_route() {
        let spec = |strategy: &str| -> crate::model::deploy::AppSpec {
            serde_json::from_value(serde_json::json!({
                "image": "web:2", "domains": ["web.test"], "strategy": strategy,
            }))
            .unwrap()
        };
        let adopted = |strategy: &str| Adopted {
            rec: DeploymentRecord {
                id: "d2".into(),
                app: "web".into(),
                spec: spec(strategy),
                image_id: None,
                state: crate::store::deployments::DeployState::Running,
                reason: None,
                created_by: "t".into(),
                created_at: 1,
                finished_at: None,
                rollback_of: None,
            },
            cp: Checkpoint::new("sha256:ab", &["c1".into()], 2, 5, Duration::from_secs(3)),
        };
        let mut a = AppState::default();
        route_as_checkpointed(&mut a, &adopted("replace"));
        // Before: no hold until the deploy resumed (requests got 503 in between).
        assert!(a.deploy_hold.is_some());
        assert!(a.effective_gate().is_some_and(|g| g.paused.is_some()));
        let mut a = AppState::default();
        route_as_checkpointed(&mut a, &adopted("rolling"));
        assert!(a.deploy_hold.is_none());
    }

    #[test]
    fn liveness_of_processes() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }

    #[test]
    fn checkpoints_round_trip_and_refuse_other_versions() {
        let mut cp = Checkpoint::new("sha256:ab", &["c1".into()], 2, 9, Duration::from_secs(3));
        cp.routed = vec![ReplicaRec {
            container_id: "c1".into(),
            name: "n".into(),
            host: "10.0.0.2".into(),
            port: 8080,
            deployment: "d0".into(),
            drain: true,
            maint: false,
        }];
        let data = serde_json::to_string(&cp).unwrap();
        assert_eq!(Checkpoint::parse(&data).unwrap(), cp);
        assert_eq!(cp.routed[0].replica().state, ServerState::Drain);
        // Every state survives the hand-over (a drain's second phase is `maint`), and a
        // checkpoint written before `maint` existed still reads.
        for state in [ServerState::Ready, ServerState::Drain, ServerState::Maint] {
            let mut r = cp.routed[0].replica();
            r.state = state;
            assert_eq!(ReplicaRec::of(&r).replica().state, state);
        }
        let old = data.replace(",\"maint\":false", "");
        assert!(!old.contains("maint"), "{old}");
        assert_eq!(Checkpoint::parse(&old).unwrap(), cp);
        cp.version = 99;
        let err = Checkpoint::parse(&serde_json::to_string(&cp).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(err, "checkpoint version 99 (this berthd reads 1)");
    }
}
