//! The engine's operations: start (serve first, reconcile after), deploy, rollback, stop,
//! delete, and the upgrade hand-over of in-flight deploys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, watch};

use super::events::Progress;
use super::health::HealthClient;
use super::{
    app_route_name, discovery, handover, now_ms, reconcile, run, AppDeleted, DeployError,
    EngineConfig, HandoverError, ImageSource, Inner, LockExt, Replica, RoutePublisher, Stage,
    State, DELETING, STOPPING,
};
use crate::model::deploy::{validate_app_name, AppSpec, Strategy};
use crate::runtime::ContainerRuntime;
use crate::store::deployments::{DeployState, DeploymentRecord, DeploymentStore};
use crate::store::registry::{ChangeError, RouteSetError};

/// The engine. Dropping it (or `kill`) aborts its tasks without any cleanup, like `kill -9`;
/// a new engine on the same store reconciles.
pub struct Engine {
    pub(super) inner: Arc<Inner>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Engine {
    /// Reconciles (SQLite says what should run, Docker what does), rebuilds and publishes
    /// every route, starts discovery, and only then returns: the daemon may report READY.
    pub async fn start(
        rt: Arc<dyn ContainerRuntime>,
        store: Arc<dyn DeploymentStore>,
        publisher: Arc<dyn RoutePublisher>,
        cfg: EngineConfig,
    ) -> Result<Engine, DeployError> {
        let inner = Arc::new(Inner {
            rt,
            store,
            health: HealthClient::new(publisher.clone()),
            publisher,
            cfg,
            state: Mutex::new(State::default()),
            progress: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            heal: Mutex::new(HashMap::new()),
            reconciled: watch::Sender::new(false),
            handover: handover::Handover::default(),
            canaries: super::canary::Canaries::default(),
        });
        inner.rt.ensure_network().await?;
        // Serve first: what runs now is routed before this returns (one Docker listing, no
        // health gate); reconcile and repairs follow in the background.
        let mut startup = reconcile::serve_first(&inner).await?;
        // Deploys a previous process handed over (or paused and then died): resumed from
        // their checkpoints once they are ours.
        for ad in std::mem::take(&mut startup.handed) {
            let bg = inner.clone();
            inner.spawn(handover::resume_when_ours(bg, ad));
        }
        // Canaries held by a manual split (A/B): waiting for promote or abort again.
        for r in std::mem::take(&mut startup.ab) {
            let bg = inner.clone();
            inner.spawn(super::canary::resume(bg, r));
        }
        discovery::start(&inner).await?;
        if let Some(why) = &inner.cfg.store_damaged {
            tracing::error!(
                adopted = startup.adopted,
                "deploy engine: the store is damaged ({why}); reconcile, self-healing and \
                 deploys are off, running containers are routed as they are"
            );
            let apps: Vec<String> = inner.state.locked().apps.keys().cloned().collect();
            for app in apps {
                if let Some(a) = inner.state.locked().apps.get_mut(&app) {
                    a.running = None;
                }
            }
            inner.reconciled.send_replace(true);
        } else {
            let bg = inner.clone();
            inner.spawn(async move {
                if let Err(e) = reconcile::reconcile(&bg, startup).await {
                    bg.warn(format!("reconcile: {e}"));
                }
                bg.reconciled.send_replace(true);
                tracing::info!("reconcile done");
                reconcile::heal(bg).await;
            });
        }
        Ok(Engine { inner })
    }

    /// Waits until the background reconcile after start is done.
    pub async fn reconciled(&self) {
        let mut rx = self.inner.reconciled.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Upgrade, step 1 (before the successor starts): pauses every deploy at its next step
    /// boundary with its checkpoint persisted, and waits for running repairs. Fails (and
    /// lets them carry on) if one does not get there within `timeout`. Returns how many
    /// deploys are paused.
    pub async fn pause_for_upgrade(&self, timeout: Duration) -> Result<usize, HandoverError> {
        handover::pause_all(&self.inner, timeout).await
    }

    /// The upgrade failed: paused deploys carry on in this process.
    pub fn resume_after_failed_upgrade(&self) {
        handover::resume_all(&self.inner);
    }

    /// Upgrade, step 2 (the successor `pid` is serving): the paused deploys are its now;
    /// this process writes none of them again.
    pub fn hand_over(&self, pid: u32) {
        handover::hand_over_all(&self.inner, pid);
    }

    /// Aborts every task of this engine at its next await point, without cleanup.
    pub fn kill(&self) {
        for t in self.inner.tasks.locked().drain(..) {
            t.abort();
        }
    }

    /// The process stops: every task of this engine ends at its next await point (what it
    /// leaves is what reconcile finds at the next start, as after a kill) and is waited for,
    /// so none still calls Docker or arms a timer while the runtime shuts down. (Left to the
    /// runtime's teardown, a reconcile in progress saw each Docker call fail and took its
    /// replicas for broken, and the self-healing timer panicked.)
    pub async fn shutdown(&self) {
        // An aborted task may spawn another before its next await: bounded rounds.
        for _ in 0..100 {
            let tasks: Vec<_> = self.inner.tasks.locked().drain(..).collect();
            if tasks.is_empty() {
                return;
            }
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                let _ = t.await;
            }
        }
    }

    fn secrets_key(&self) -> Result<&crate::store::secrets::SecretsKey, DeployError> {
        self.inner.cfg.secrets.as_deref().ok_or_else(|| {
            DeployError::Secrets(
                "this server has no secrets key, so it cannot take or use app secrets".into(),
            )
        })
    }

    /// `POST /v1/apps/{app}/deploy`: validates, records the deployment and starts it; returns
    /// its id at once. A deploy already running for the app → `Conflict` with its id.
    pub async fn deploy(
        &self,
        app: &str,
        spec: AppSpec,
        image: ImageSource,
        who: &str,
    ) -> Result<String, DeployError> {
        self.start_deployment(app, spec, image, who, None)
    }

    fn start_deployment(
        &self,
        app: &str,
        spec: AppSpec,
        image: ImageSource,
        who: &str,
        rollback_of: Option<String>,
    ) -> Result<String, DeployError> {
        validate_app_name(app)?;
        spec.validate()?;
        self.refuse_if_damaged(app)?;
        spec.check_host_mounts(self.inner.cfg.allow_host_mounts)?;
        // The domains must be free before the deploy is accepted (the route is published only
        // after the first replica is healthy; a collision then would fail the deploy late).
        let probe = spec.traffic().route(
            app_route_name(app),
            spec.domains.clone(),
            spec.aliases.clone(),
            vec![],
        );
        if !spec.is_worker() {
            self.inner
                .publisher
                .check_routes(&app_route_name(app), vec![probe])
                .map_err(|e| {
                    DeployError::DomainTaken(match e {
                        ChangeError::Rejected(RouteSetError::Conflict { message, .. }) => message,
                        other => other.to_string(),
                    })
                })?;
        }
        let mut spec = spec;
        if !spec.secrets.is_empty() {
            // Sealed before anything is stored; the values in clear are dropped here.
            self.secrets_key()?.seal_spec(&mut spec)?;
        }
        let id = new_deployment_id();
        let rec = DeploymentRecord {
            id: id.clone(),
            app: app.to_string(),
            spec,
            image_id: match &image {
                ImageSource::Id(i) => Some(i.clone()),
                _ => None,
            },
            state: DeployState::Running,
            reason: None,
            created_by: who.to_string(),
            created_at: now_ms(),
            finished_at: None,
            rollback_of,
        };
        {
            let mut st = self.inner.state.locked();
            let a = st.apps.entry(app.to_string()).or_default();
            if a.running.is_none() && rec.spec.strategy == Strategy::Canary && a.split.is_some() {
                return Err(DeployError::Versions(format!(
                    "app {app} runs several versions side by side: a canary needs one stable \
                     version (remove the others with `berth version rm`, or deploy with \
                     strategy: side_by_side or rolling)"
                )));
            }
            // Claimed here, so no second deploy can slip in; persisted (below, outside the
            // state lock) before anything runs.
            a.claim(app, &id)?;
            let (tx, _) = broadcast::channel(256);
            let mut progress = self.inner.progress.locked();
            if progress.len() > 200 {
                // Forget the oldest finished deployments' event logs.
                let mut done: Vec<(String, i64)> = progress
                    .iter()
                    .filter(|(_, p)| p.done.borrow().is_some())
                    .map(|(k, p)| (k.clone(), p.events.first().map_or(0, |e| e.at)))
                    .collect();
                done.sort_by_key(|(_, at)| *at);
                for (k, _) in done.into_iter().take(100) {
                    progress.remove(&k);
                }
            }
            progress.insert(
                id.clone(),
                Progress {
                    events: Vec::new(),
                    tx,
                    done: watch::Sender::new(None),
                },
            );
        }
        if let Err(e) = self.inner.store.insert(&rec) {
            if let Some(a) = self.inner.state.locked().apps.get_mut(app) {
                if a.running.as_deref() == Some(id.as_str()) {
                    a.running = None;
                }
            }
            self.inner.progress.locked().remove(&id);
            return Err(e.into());
        }
        self.inner.emit(
            &id,
            Stage::Accepted,
            format!(
                "{} deploy of {} ({} replicas) requested by {who}",
                match rec.spec.strategy {
                    Strategy::Rolling => "rolling",
                    Strategy::Replace => "replace",
                    Strategy::Canary => "canary",
                    Strategy::SideBySide => "side-by-side",
                },
                rec.spec.image,
                rec.spec.replicas
            ),
        );
        let inner = self.inner.clone();
        self.inner
            .spawn(async move { run::run(inner, rec, image).await });
        Ok(id)
    }

    pub(super) fn refuse_if_damaged(&self, app: &str) -> Result<(), DeployError> {
        if !self.inner.handover.running() {
            return Err(DeployError::Upgrading);
        }
        match &self.inner.cfg.store_damaged {
            Some(why) => Err(DeployError::Conflict {
                app: app.to_string(),
                running: format!(
                    "nothing (the store is damaged: {why}; restore a backup and restart berthd)"
                ),
            }),
            None => Ok(()),
        }
    }

    /// `POST /v1/apps/{app}/rollback`: a rolling deploy of the stored spec and image of
    /// deployment `to`, or of the newest successful deployment before the current one.
    pub async fn rollback(
        &self,
        app: &str,
        to: Option<&str>,
        who: &str,
    ) -> Result<String, DeployError> {
        let target = match to {
            Some(id) => {
                let d = self
                    .inner
                    .store
                    .get(id)?
                    .ok_or_else(|| DeployError::DeploymentNotFound(id.to_string()))?;
                if d.app != app {
                    return Err(DeployError::NoRollbackTarget(format!(
                        "deployment {id} belongs to app {}",
                        d.app
                    )));
                }
                if d.state != DeployState::Succeeded {
                    return Err(DeployError::NoRollbackTarget(format!(
                        "deployment {id} did not succeed"
                    )));
                }
                d
            }
            None => {
                let current = self.inner.store.current(app)?.map(|c| c.id);
                self.inner
                    .store
                    .list(app, 1000)?
                    .into_iter()
                    .find(|d| d.state == DeployState::Succeeded && Some(&d.id) != current.as_ref())
                    .ok_or_else(|| {
                        DeployError::NoRollbackTarget(format!(
                            "app {app} has no earlier successful deployment"
                        ))
                    })?
            }
        };
        let image_id = target.image_id.clone().ok_or_else(|| {
            DeployError::NoRollbackTarget(format!("deployment {} has no image id", target.id))
        })?;
        if let Err(e) = self.inner.rt.image_id(&image_id).await {
            return Err(DeployError::NoRollbackTarget(format!(
                "the image of deployment {} is gone ({e}); only the last {} are kept",
                target.id, self.inner.cfg.keep_images
            )));
        }
        let mut spec = target.spec.clone();
        if !spec.secrets.is_empty() {
            // Fail now, clearly, rather than at the first container.
            self.secrets_key()?
                .env_of(&spec)
                .map_err(|e| DeployError::Secrets(format!("cannot roll back: {e}")))?;
        }
        spec.strategy = Strategy::Rolling;
        spec.canary = None;
        self.start_deployment(app, spec, ImageSource::Id(image_id), who, Some(target.id))
    }

    /// `POST /v1/apps/{app}/stop`: drains and stops every replica; the app then runs
    /// nothing (also after a restart) until the next deploy.
    pub async fn stop(&self, app: &str) -> Result<(), DeployError> {
        self.refuse_if_damaged(app)?;
        let current = self.inner.store.current(app)?;
        let drain = current
            .as_ref()
            .map_or(Duration::from_secs(30), |c| c.spec.drain_timeout);
        let grace = current
            .and_then(|c| c.spec.stop_timeout)
            .unwrap_or(self.inner.cfg.stop_grace);
        {
            let mut st = self.inner.state.locked();
            let Some(a) = st.apps.get_mut(app) else {
                return Err(DeployError::AppNotFound(app.to_string()));
            };
            // Deploys of this app get Conflict("stopping") until the stop is done.
            a.claim(app, STOPPING)?;
        }
        // Persist first (outside the state lock): after a crash from here on, reconcile
        // stops the rest.
        if let Err(e) = self.inner.store.clear_current(app) {
            if let Some(a) = self.inner.state.locked().apps.get_mut(app) {
                a.running = None;
            }
            return Err(e.into());
        }
        let replicas = {
            let mut st = self.inner.state.locked();
            if !st.apps.contains_key(app) {
                return Err(DeployError::AppNotFound(app.to_string()));
            }
            self.inner.drain_all(&mut st, app)
        };
        let result = self.finish_stop(app, &replicas, drain, grace).await;
        if let Some(a) = self.inner.state.locked().apps.get_mut(app) {
            a.running = None;
        }
        result
    }

    /// Deletes an app: drains, stops and removes its replicas and its route, then forgets it
    /// (history kept readable by deployment id, or removed with Berth's image tags). A failed
    /// first deploy leaves an app record behind; this is how it goes. Hand-started containers
    /// with the app's labels are the operator's and stay.
    pub async fn delete(&self, app: &str, keep_history: bool) -> Result<AppDeleted, DeployError> {
        self.refuse_if_damaged(app)?;
        let history = self.inner.store.list(app, 100_000)?;
        let current = self.inner.store.current(app)?;
        let drain = current
            .as_ref()
            .map_or(Duration::from_secs(30), |c| c.spec.drain_timeout);
        let grace = current
            .as_ref()
            .and_then(|c| c.spec.stop_timeout)
            .unwrap_or(self.inner.cfg.stop_grace);
        let replicas = {
            let mut st = self.inner.state.locked();
            if history.is_empty() && !st.apps.contains_key(app) {
                return Err(DeployError::AppNotFound(app.to_string()));
            }
            let a = st.apps.entry(app.to_string()).or_default();
            // Deploys of this app get Conflict("deleting") until the delete is done.
            a.claim(app, DELETING)?;
            self.inner.drain_all(&mut st, app)
        };
        let result = async {
            // Persist first: after a crash from here on, reconcile stops the rest.
            self.inner.store.clear_current(app)?;
            self.finish_stop(app, &replicas, drain, grace).await?;
            let deployments = self.inner.store.delete_app(app, keep_history, now_ms())?;
            let mut images_untagged = 0;
            if !keep_history {
                for d in history.iter().filter(|d| d.image_id.is_some()) {
                    let (repo, tag) = run::berth_tag(app, &d.id);
                    let reference = format!("{repo}:{tag}");
                    match self.inner.rt.untag_image(&reference).await {
                        Ok(true) => images_untagged += 1,
                        Ok(false) => {}
                        Err(e) => self.inner.warn(format!("removing image {reference}: {e}")),
                    }
                }
            }
            Ok::<_, DeployError>(AppDeleted {
                app: app.to_string(),
                replicas_removed: replicas.len(),
                deployments,
                history_kept: keep_history,
                images_untagged,
            })
        }
        .await;
        {
            let mut st = self.inner.state.locked();
            match &result {
                Ok(_) => {
                    st.apps.remove(app);
                }
                Err(_) => {
                    if let Some(a) = st.apps.get_mut(app) {
                        a.running = None;
                    }
                }
            }
        }
        if let Ok(d) = &result {
            tracing::info!(
                app,
                replicas = d.replicas_removed,
                deployments = d.deployments,
                history_kept = keep_history,
                "app deleted"
            );
        }
        result
    }

    async fn finish_stop(
        &self,
        app: &str,
        replicas: &[Replica],
        drain: Duration,
        grace: Duration,
    ) -> Result<(), DeployError> {
        for r in replicas {
            run::wait_drained(&self.inner, app, &r.container_id, drain).await;
        }
        {
            let mut st = self.inner.state.locked();
            if let Some(a) = st.apps.get_mut(app) {
                a.replicas.clear();
                a.hosts = None;
                a.adopted = None;
                // Versions side by side were stopped with the rest.
                a.split = None;
            }
            if let Err(e) = self.inner.publish_app(&st, app) {
                self.inner
                    .warn(format!("app {app}: removing routes failed: {e}"));
            }
        }
        self.inner
            .store
            .set_traffic_split(app, None, now_ms() / 1000)?;
        for r in replicas {
            self.inner.rt.stop(&r.container_id, grace).await?;
            self.inner.rt.remove(&r.container_id).await?;
        }
        Ok(())
    }
}

fn new_deployment_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("d{:011x}{:05x}", now_ms(), h.finish() & 0xfffff)
}
