//! Reconcile on start (also after `kill -9` mid-deploy): SQLite says what should run, Docker
//! says what does. An interrupted deployment is finished if all its replicas run and pass a
//! health check, otherwise recorded as failed (rolled back). Each app's current deployment is
//! brought back to its replica count (stopped replicas started, missing ones created, all
//! health-gated); every other Berth-managed container of a known app is removed. Routes are
//! published before this returns. Containers of apps this store does not know are left alone.

use std::sync::Arc;

use tokio::time::Instant;

use super::run::{address_of, start_replica};
use super::{now_ms, AppHosts, AppState, DeployError, Inner, LockExt, Replica};
use crate::model::labels;
use crate::model::route::{BackendAddr, ServerState};
use crate::runtime::ContainerInfo;
use crate::store::deployments::{DeployState, DeploymentRecord};

fn deployment_of(c: &ContainerInfo) -> Option<&str> {
    c.labels.get(labels::DEPLOYMENT).map(String::as_str)
}

async fn all_healthy(inner: &Inner, d: &DeploymentRecord, cs: &[&ContainerInfo]) -> bool {
    let host = d.spec.domains[0].to_string();
    for c in cs {
        let Some(ip) = c.address else { return false };
        let addr = std::net::SocketAddr::new(ip, d.spec.port);
        let deadline = Instant::now() + d.spec.health.timeout * 3;
        if inner
            .health
            .wait_healthy(
                inner.rt.as_ref(),
                &c.id,
                addr,
                &host,
                &d.spec.health,
                deadline,
            )
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

pub(crate) async fn reconcile(inner: &Arc<Inner>) -> Result<(), DeployError> {
    let managed = inner
        .rt
        .list(&[format!("{}=true", labels::MANAGED)])
        .await?;

    // 1. Deployments interrupted by a crash: finish or roll back.
    for d in inner.store.unfinished()? {
        let mine: Vec<&ContainerInfo> = managed
            .iter()
            .filter(|c| deployment_of(c) == Some(d.id.as_str()) && c.running())
            .collect();
        let complete = mine.len() as u32 >= d.spec.replicas && all_healthy(inner, &d, &mine).await;
        if complete {
            inner
                .store
                .finish(&d.id, DeployState::Succeeded, None, now_ms())?;
            tracing::info!(deployment = %d.id, app = %d.app, "interrupted deployment was complete: finished");
        } else {
            let reason = format!(
                "interrupted: berthd stopped during the deploy ({} of {} new replicas running); rolled back on start",
                mine.len(),
                d.spec.replicas
            );
            inner
                .store
                .finish(&d.id, DeployState::Failed, Some(&reason), now_ms())?;
            tracing::warn!(deployment = %d.id, app = %d.app, "{reason}");
        }
    }

    // 2. Each known app: bring the current deployment back, remove everything else.
    for (app, current) in inner.store.apps()? {
        let of_app: Vec<&ContainerInfo> = managed
            .iter()
            .filter(|c| c.labels.get(labels::APP) == Some(&app))
            .collect();
        let cur = match &current {
            Some(id) => inner.store.get(id)?,
            None => None,
        };
        let mut replicas = Vec::new();
        if let Some(cur) = &cur {
            let mut mine: Vec<&ContainerInfo> = of_app
                .iter()
                .copied()
                .filter(|c| deployment_of(c) == Some(cur.id.as_str()))
                .collect();
            // Running ones first: they are the cheapest to keep.
            mine.sort_by_key(|c| !c.running());
            let host = cur.spec.domains[0].to_string();
            for c in mine {
                if replicas.len() as u32 >= cur.spec.replicas {
                    inner.rt.remove(&c.id).await?;
                    continue;
                }
                if !c.running() {
                    if let Err(e) = inner.rt.start(&c.id).await {
                        inner.warn(format!("reconcile: starting {}: {e}; removing it", c.name));
                        inner.rt.remove(&c.id).await?;
                        continue;
                    }
                }
                let ok = match address_of(inner, &c.id, cur.spec.port).await {
                    Ok(addr) => {
                        let deadline = Instant::now() + cur.spec.deploy_timeout;
                        match inner
                            .health
                            .wait_healthy(
                                inner.rt.as_ref(),
                                &c.id,
                                addr,
                                &host,
                                &cur.spec.health,
                                deadline,
                            )
                            .await
                        {
                            Ok(()) => Some(addr),
                            Err(e) => {
                                inner.warn(format!(
                                    "reconcile: {} unhealthy: {e}; replacing it",
                                    c.name
                                ));
                                None
                            }
                        }
                    }
                    Err(e) => {
                        inner.warn(format!("reconcile: {}: {e}; replacing it", c.name));
                        None
                    }
                };
                match ok {
                    Some(addr) => replicas.push(Replica {
                        container_id: c.id.clone(),
                        name: c.name.clone(),
                        address: BackendAddr::new(addr.ip().to_string(), addr.port()),
                        deployment: cur.id.clone(),
                        state: ServerState::Ready,
                    }),
                    None => inner.rt.remove(&c.id).await?,
                }
            }
            // Missing replicas are recreated from the stored spec and image id.
            let mut slot = 0;
            while (replicas.len() as u32) < cur.spec.replicas {
                let Some(image) = cur.image_id.clone() else {
                    inner.warn(format!("reconcile: deployment {} has no image id", cur.id));
                    break;
                };
                match start_replica(inner, cur, &image, 100 + slot).await {
                    Ok(new) => {
                        let deadline = Instant::now() + cur.spec.deploy_timeout;
                        match inner
                            .health
                            .wait_healthy(
                                inner.rt.as_ref(),
                                &new.id,
                                new.addr,
                                &host,
                                &cur.spec.health,
                                deadline,
                            )
                            .await
                        {
                            Ok(()) => replicas.push(Replica {
                                container_id: new.id,
                                name: new.name,
                                address: BackendAddr::new(
                                    new.addr.ip().to_string(),
                                    new.addr.port(),
                                ),
                                deployment: cur.id.clone(),
                                state: ServerState::Ready,
                            }),
                            Err(e) => {
                                inner.warn(format!(
                                    "reconcile: new replica of {app} unhealthy: {e}"
                                ));
                                inner.rt.remove(&new.id).await?;
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        inner.warn(format!("reconcile: starting a replica of {app}: {e}"));
                        break;
                    }
                }
                slot += 1;
            }
        }
        // Everything else of this app (failed or interrupted deploys, replaced versions).
        let keep: Vec<&str> = replicas.iter().map(|r| r.container_id.as_str()).collect();
        for c in &of_app {
            if !keep.contains(&c.id.as_str()) {
                inner.rt.remove(&c.id).await?;
                tracing::info!(container = %c.name, app = %app, "reconcile: removed leftover container");
            }
        }
        let mut st = inner.state.locked();
        st.apps.insert(
            app.clone(),
            AppState {
                hosts: cur.as_ref().map(|c| AppHosts::of(&c.spec)),
                replicas,
                down: Default::default(),
                running: None,
            },
        );
        if let Err(e) = inner.publish_app(&st, &app) {
            inner.warn(format!("reconcile: publishing routes of {app}: {e}"));
        }
    }
    Ok(())
}
