//! Discovery of hand-started containers (`docker run`, compose) that carry the Berth labels
//! but not `berth.managed`: an initial scan plus the Docker events stream. A container is
//! routed after its health gate passes and unrouted as soon as it stops; each change replaces
//! the app's discovered route in one swap. Bad labels produce one warning, never a crash.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::{DeployError, Discovered, Inner, LockExt, Replica};
use crate::model::deploy::HealthSpec;
use crate::model::labels::{self, Parsed};
use crate::model::route::{BackendAddr, ServerState};
use crate::runtime::ContainerInfo;

/// Subscribes to events, scans once, then follows the events in a task of the engine.
pub(crate) async fn start(inner: &Arc<Inner>) -> Result<(), DeployError> {
    // Subscribe before scanning so nothing that happens in between is missed.
    let events = inner.rt.events();
    let found = inner.rt.list(&[format!("{}=app", labels::ROLE)]).await?;
    // Serve first: the initial scan's health gates run in the background (each bounded by
    // the discovery health timeout), never holding the daemon's start.
    for gate in found
        .into_iter()
        .filter(|c| c.running())
        .filter_map(|c| consider(inner, c))
    {
        inner.spawn(gate);
    }
    let task_inner = inner.clone();
    inner.spawn(follow(task_inner, events));
    Ok(())
}

async fn follow(
    inner: Arc<Inner>,
    mut events: futures_util::stream::BoxStream<
        'static,
        Result<crate::runtime::ContainerEvent, crate::runtime::RuntimeError>,
    >,
) {
    loop {
        while let Some(ev) = events.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    inner.warn(format!("docker events: {e}; resubscribing"));
                    break;
                }
            };
            let Some(app) = ev.labels.get(labels::APP).cloned() else {
                continue;
            };
            if ev.labels.get(labels::MANAGED).map(String::as_str) == Some("true") {
                if ev.is_gone() {
                    replica_down(&inner, &app, &ev.id);
                } else if ev.action == "start" || ev.action == "unpause" {
                    replica_started(&inner, &app, &ev.id);
                }
                continue;
            }
            if ev.is_gone() {
                unroute(&inner, &ev.id);
            } else if ev.action == "start" || ev.action == "unpause" {
                if let Ok(c) = inner.rt.inspect(&ev.id).await {
                    if let Some(gate) = c.running().then(|| consider(&inner, c)).flatten() {
                        inner.spawn(gate);
                    }
                }
            }
        }
        // Stream ended or failed: back off, resubscribe, rescan (routes converge).
        tokio::time::sleep(Duration::from_secs(1)).await;
        events = inner.rt.events();
        let ids: Vec<String> = inner.state.locked().discovered.keys().cloned().collect();
        for id in ids {
            match inner.rt.inspect(&id).await {
                Ok(c) if c.running() => {}
                _ => unroute(&inner, &id),
            }
        }
        // Deployed replicas that stopped or came back while no events arrived.
        let replicas: Vec<(String, String)> = inner
            .state
            .locked()
            .apps
            .iter()
            .flat_map(|(app, a)| {
                a.replicas
                    .iter()
                    .map(move |r| (app.clone(), r.container_id.clone()))
            })
            .collect();
        for (app, id) in replicas {
            match inner.rt.inspect(&id).await {
                Ok(c) if c.running() => replica_started(&inner, &app, &id),
                _ => replica_down(&inner, &app, &id),
            }
        }
        if let Ok(found) = inner.rt.list(&[format!("{}=app", labels::ROLE)]).await {
            for c in found.into_iter().filter(|c| c.running()) {
                if let Some(gate) = consider(&inner, c) {
                    inner.spawn(gate);
                }
            }
        }
    }
}

/// Parses the labels of a running container; for a usable hand-started one, returns its
/// health gate, which routes it when it passes.
fn consider(
    inner: &Arc<Inner>,
    c: ContainerInfo,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let spec = match labels::parse(&c.name, &c.labels) {
        Parsed::NotOurs => return None,
        Parsed::Invalid(w) => {
            inner.warn(w);
            return None;
        }
        Parsed::Ok(s) => s,
    };
    if spec.managed || inner.state.locked().discovered.contains_key(&c.id) {
        return None;
    }
    let Some(ip) = c.address else {
        inner.warn(format!(
            "container {}: not attached to network {}; not routed",
            c.name,
            inner.rt.network()
        ));
        return None;
    };
    let addr = SocketAddr::new(ip, spec.port);
    let task_inner = inner.clone();
    Some(async move {
        let inner = task_inner;
        let health = HealthSpec {
            path: spec.health_path.clone(),
            ..HealthSpec::default()
        };
        let deadline = Instant::now() + inner.cfg.discovery_health_timeout;
        let host = spec.domains[0].to_string();
        if let Err(e) = inner
            .health
            .wait_healthy(inner.rt.as_ref(), &c.id, addr, &host, &health, deadline)
            .await
        {
            inner.warn(format!("container {}: not routed: {e}", c.name));
            return;
        }
        // It may have stopped while we checked; the event then already ran unroute.
        match inner.rt.inspect(&c.id).await {
            Ok(i) if i.running() => {}
            _ => return,
        }
        let app = spec.app.clone();
        let mut st = inner.state.locked();
        st.discovered.insert(
            c.id.clone(),
            Discovered {
                labels: spec,
                replica: Replica {
                    container_id: c.id.clone(),
                    name: c.name.clone(),
                    address: BackendAddr::new(ip.to_string(), addr.port()),
                    deployment: String::new(),
                    state: ServerState::Ready,
                },
            },
        );
        if let Err(e) = inner.publish_discovered(&st, &app) {
            st.discovered.remove(&c.id);
            drop(st);
            inner.warn(format!("container {}: not routed: {e}", c.name));
            return;
        }
        tracing::info!(container = %c.name, app = %app, %addr, "discovered container routed");
    })
}

fn unroute(inner: &Inner, id: &str) {
    let mut st = inner.state.locked();
    if let Some(d) = st.discovered.remove(id) {
        if let Err(e) = inner.publish_discovered(&st, &d.labels.app) {
            inner.warn(format!("unrouting {}: {e}", d.replica.name));
        }
        tracing::info!(container = %d.replica.name, app = %d.labels.app, "discovered container unrouted");
    }
}

/// A deployed replica's container stopped outside a deploy (a deploy takes a replica out of
/// the route before stopping it, so this finds nothing then): out of the route now, instead
/// of after the prober's `fall` failed checks or a connect timeout per request.
fn replica_down(inner: &Inner, app: &str, id: &str) {
    let mut st = inner.state.locked();
    let Some(a) = st.apps.get_mut(app) else {
        return;
    };
    let Some(r) = a.replicas.iter().find(|r| r.container_id == id) else {
        return;
    };
    let name = r.name.clone();
    let live: Vec<String> = a.replicas.iter().map(|r| r.container_id.clone()).collect();
    a.down.retain(|d| live.contains(d));
    if !a.down.insert(id.to_string()) {
        return;
    }
    if let Err(e) = inner.publish_app(&st, app) {
        inner.warn(format!("replica {name} stopped; unrouting it failed: {e}"));
        return;
    }
    tracing::warn!(app, container = %name, "replica stopped; out of the route until it runs and passes its health check");
}

/// A replica that was down runs again (Docker's restart policy, `docker start`): routed again
/// once it passes the health check of the deployment that started it.
fn replica_started(inner: &Arc<Inner>, app: &str, id: &str) {
    let (replica, deployment) = {
        let st = inner.state.locked();
        let Some(a) = st.apps.get(app) else {
            return;
        };
        if !a.down.contains(id) {
            return;
        }
        match a.replicas.iter().find(|r| r.container_id == id) {
            Some(r) => (r.clone(), r.deployment.clone()),
            None => return,
        }
    };
    let inner2 = inner.clone();
    let app = app.to_string();
    inner.spawn(async move {
        let inner = inner2;
        let spec = inner.store.get(&deployment).ok().flatten().map(|d| d.spec);
        let Some(spec) = spec else {
            inner.warn(format!(
                "replica {}: deployment {deployment} not found; left out of the route",
                replica.name
            ));
            return;
        };
        let addr = match super::run::address_of(&inner, &replica.container_id, replica.address.port()).await {
            Ok(a) => a,
            Err(e) => {
                inner.warn(format!("replica {}: {e}; left out of the route", replica.name));
                return;
            }
        };
        let deadline = Instant::now() + spec.deploy_timeout;
        if let Err(e) = super::run::ready(&inner, &spec, &replica.container_id, addr, deadline).await {
            inner.warn(format!(
                "replica {} runs again but is not healthy: {e}; left out of the route",
                replica.name
            ));
            return;
        }
        let mut st = inner.state.locked();
        let Some(a) = st.apps.get_mut(&app) else {
            return;
        };
        // Still ours and still down (a deploy or stop may have replaced it meanwhile).
        if !a.down.contains(&replica.container_id) {
            return;
        }
        let Some(r) = a.replicas.iter_mut().find(|r| r.container_id == replica.container_id) else {
            return;
        };
        r.address = BackendAddr::new(addr.ip().to_string(), addr.port());
        a.down.remove(&replica.container_id);
        if let Err(e) = inner.publish_app(&st, &app) {
            inner.warn(format!("replica {}: routing it again failed: {e}", replica.name));
            return;
        }
        tracing::info!(app = %app, container = %replica.name, %addr, "replica runs again and is healthy; back in the route");
    });
}
