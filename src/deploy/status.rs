//! What the engine reports: app status (`GET /v1/apps`, `GET /v1/apps/{app}`), deployment
//! history, logs of an app's replicas and label warnings.

use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{
    app_route_name, discovered_route_name, AppStatus, DeployError, Engine, LockExt, ReplicaStatus,
    VersionStatus,
};
use crate::runtime::RuntimeError;
use crate::store::deployments::{DeployState, DeploymentRecord};

impl Engine {
    /// The id of the deployment running for `app`, if one is (or [`RECONCILING`],
    /// [`STOPPING`]). The API checks it before reading an image upload, so a second upload
    /// is refused (409) without being streamed.
    pub fn running(&self, app: &str) -> Option<String> {
        let st = self.inner.state.locked();
        st.apps.get(app).and_then(|a| a.running.clone())
    }

    /// `GET /v1/deployments/{id}`.
    pub fn deployment(&self, id: &str) -> Result<DeploymentRecord, DeployError> {
        self.inner
            .store
            .get(id)?
            .ok_or_else(|| DeployError::DeploymentNotFound(id.to_string()))
    }

    /// `GET /v1/apps/{app}/deployments` (newest first).
    pub fn deployments(
        &self,
        app: &str,
        limit: usize,
    ) -> Result<Vec<DeploymentRecord>, DeployError> {
        Ok(self.inner.store.list(app, limit)?)
    }

    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<Vec<AppStatus>, DeployError> {
        let mut names: Vec<String> = self
            .inner
            .store
            .apps()?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        {
            let st = self.inner.state.locked();
            names.extend(st.discovered.values().map(|d| d.labels.app.clone()));
            names.extend(
                st.apps
                    .iter()
                    .filter(|(_, a)| a.adopted.is_some())
                    .map(|(n, _)| n.clone()),
            );
        }
        names.sort();
        names.dedup();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            out.push(self.app(&n).await?);
        }
        Ok(out)
    }

    /// `GET /v1/apps/{app}`: replicas (with Docker state and in-flight counts), current and
    /// previous deployments, the deployment in progress.
    pub async fn app(&self, app: &str) -> Result<AppStatus, DeployError> {
        let (replicas, down, discovered, deploying, adopted, gate, split) = {
            let st = self.inner.state.locked();
            let a = st.apps.get(app);
            (
                a.map(|a| a.replicas.clone()).unwrap_or_default(),
                a.map(|a| a.down.clone()).unwrap_or_default(),
                st.discovered
                    .values()
                    .filter(|d| d.labels.app == app)
                    .map(|d| d.replica.clone())
                    .collect::<Vec<_>>(),
                a.and_then(|a| a.running.clone()),
                a.and_then(|a| a.adopted.clone()),
                a.map(|a| a.gate.clone()).unwrap_or_default(),
                a.and_then(|a| a.split.clone()),
            )
        };
        let history = self.inner.store.list(app, 50)?;
        let current = self.inner.store.current(app)?;
        if history.is_empty() && discovered.is_empty() && adopted.is_none() {
            return Err(DeployError::AppNotFound(app.to_string()));
        }
        let previous = history
            .iter()
            .find(|d| {
                d.state == DeployState::Succeeded && Some(&d.id) != current.as_ref().map(|c| &c.id)
            })
            .cloned();
        let mut rs = Vec::new();
        for (route, r) in replicas
            .iter()
            .map(|r| (app_route_name(app), r))
            .chain(discovered.iter().map(|r| (discovered_route_name(app), r)))
        {
            let info = self.inner.rt.inspect(&r.container_id).await.ok();
            let healthy = self.inner.publisher.healthy(&route, &r.container_id);
            rs.push(ReplicaStatus {
                container_id: r.container_id.clone(),
                name: r.name.clone(),
                address: r.address.to_string(),
                deployment: (!r.deployment.is_empty()).then(|| r.deployment.clone()),
                routing: r.state,
                routed: !down.contains(&r.container_id) && healthy != Some(false),
                healthy,
                running: info.as_ref().map(|i| i.running()),
                docker_health: info
                    .and_then(|i| i.health)
                    .map(|h| format!("{h:?}").to_lowercase()),
                inflight: self.inner.publisher.inflight(&route, &r.container_id),
            });
        }
        let discovered_status = rs.split_off(replicas.len());
        let versions = self.versions_of(&rs, split.as_ref());
        Ok(AppStatus {
            name: app.to_string(),
            replicas: rs,
            discovered: discovered_status,
            current,
            previous,
            deploying,
            heal: self
                .inner
                .heal
                .locked()
                .get(app)
                .and_then(|h| h.line.clone()),
            adopted,
            gate,
            canary: self.inner.canaries.status(app),
            versions,
        })
    }

    /// One line per version of `replicas` when there are several (else none).
    fn versions_of(
        &self,
        replicas: &[ReplicaStatus],
        split: Option<&crate::model::canary::VersionSplit>,
    ) -> Vec<VersionStatus> {
        let mut ids: Vec<&str> = replicas
            .iter()
            .filter_map(|r| r.deployment.as_deref())
            .collect();
        ids.sort();
        ids.dedup();
        if ids.len() < 2 {
            return Vec::new();
        }
        ids.into_iter()
            .map(|id| {
                let rec = self.inner.store.get(id).ok().flatten();
                let of = replicas
                    .iter()
                    .filter(|r| r.deployment.as_deref() == Some(id));
                VersionStatus {
                    deployment: id.to_string(),
                    label: rec
                        .as_ref()
                        .map(|d| super::canary::image_tag(&d.spec.image))
                        .unwrap_or_default(),
                    ready: of.clone().filter(|r| r.serves()).count() as u32,
                    desired: rec.as_ref().map_or(0, |d| d.spec.replicas),
                    draining: of
                        .filter(|r| r.routing == crate::model::route::ServerState::Drain)
                        .count() as u32,
                    weight: split.and_then(|s| s.weights.get(id).copied()),
                }
            })
            .collect()
    }

    /// `GET /v1/apps/{app}/logs`: log lines of every replica, prefixed with the container
    /// name; `follow` keeps the stream open.
    pub fn logs(
        &self,
        app: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<BoxStream<'static, Result<String, RuntimeError>>, DeployError> {
        let st = self.inner.state.locked();
        let mut members: Vec<(String, String)> = st
            .apps
            .get(app)
            .map(|a| {
                a.replicas
                    .iter()
                    .map(|r| (r.container_id.clone(), r.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        members.extend(
            st.discovered
                .values()
                .filter(|d| d.labels.app == app)
                .map(|d| (d.replica.container_id.clone(), d.replica.name.clone())),
        );
        if members.is_empty() {
            return Err(DeployError::AppNotFound(app.to_string()));
        }
        let streams = members.into_iter().map(|(id, name)| {
            self.inner
                .rt
                .logs(&id, follow, tail)
                .map(move |l| l.map(|l| format!("[{name}] {l}")))
                .boxed()
        });
        Ok(futures_util::stream::select_all(streams).boxed())
    }

    /// Warnings about unusable labels of hand-started containers (each once).
    pub fn warnings(&self) -> Vec<String> {
        self.inner.warnings.locked().clone()
    }
}
