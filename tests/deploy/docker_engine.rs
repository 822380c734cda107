//! Deploy engine logic against an in-process fake `ContainerRuntime` (no dockerd needed, runs
//! always): each fake container is a tiny HTTP server on its own loopback address
//! (127.0.0.N:port), so the engine's real health gate, the daemon's publisher (`RegistryRoutes`
//! over a route registry) and `RouteTable` are exercised. Covers what is hard to provoke with real containers: an abort
//! in the middle of a rolling deploy (old replicas restarted and routed again), reconcile
//! finishing a complete interrupted deploy, conflicts and spec errors.

use crate::support;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::daemon::engine::RegistryRoutes;
use berth::deploy::{app_route_name, DeployError, Engine, EngineConfig, ImageSource, Stage};
use berth::model::route::{RouteTable, ServerState};
use berth::proxy::Tables;
use berth::runtime::{
    ByteStream, ContainerEvent, ContainerInfo, ContainerRuntime, ContainerSpec, RegistryCreds,
    RunState, RuntimeError,
};
use berth::store::deployments::{
    DeployState, DeploymentRecord, DeploymentStore, SqliteDeployments,
};
use berth::store::registry::RouteRegistry;
use berth::store::Store;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

struct FakeContainer {
    info: ContainerInfo,
    image_ref: String,
    port: u16,
    server: Option<JoinHandle<()>>,
}

/// Images: `v1`, `v2` serve their name and a healthy `/health`; `bad-slot1` is healthy except
/// in slot 1. Ids are `sha256:<name>`.
#[derive(Default)]
struct Fake {
    containers: Mutex<HashMap<String, FakeContainer>>,
    next: AtomicU32,
    events: Mutex<Vec<tokio::sync::mpsc::UnboundedSender<ContainerEvent>>>,
    removed_images: Mutex<Vec<String>>,
    /// Containers whose `/health` answers 503 from their next start on.
    unhealthy: Mutex<std::collections::HashSet<String>>,
    /// Berth's tags (`berth/APP:DEPLOYMENT`) → image id, as Docker keeps them.
    tags: Mutex<HashMap<String, String>>,
    /// Containers whose `inspect` fails as when Docker does not answer (listing still works).
    inspect_fails: Mutex<std::collections::HashSet<String>>,
}

const IMAGES: &[&str] = &["v1", "v2", "bad-slot1"];

async fn serve(l: TcpListener, body: String, healthy: bool) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let resp = if req.starts_with("GET /health") && !healthy {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_string()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

impl Fake {
    async fn run_server(&self, id: &str) -> Result<(), RuntimeError> {
        let (addr, body, healthy) = {
            let c = self.containers.lock().unwrap();
            let c = c.get(id).ok_or(RuntimeError::NotFound {
                what: "container",
                id: id.into(),
            })?;
            let slot = c.info.labels.get("berth.slot").cloned().unwrap_or_default();
            let ip = c.info.address.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let bad_slot = c.image_ref == "bad-slot1" && slot == "1";
            let healthy = !(bad_slot || self.unhealthy.lock().unwrap().contains(id));
            (SocketAddr::new(ip, c.port), c.image_ref.clone(), healthy)
        };
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| RuntimeError::Docker {
                op: "start",
                message: e.to_string(),
            })?;
        let h = tokio::spawn(serve(l, body, healthy));
        let mut cs = self.containers.lock().unwrap();
        if let Some(c) = cs.get_mut(id) {
            c.server = Some(h);
            c.info.state = RunState::Running;
        }
        Ok(())
    }

    fn emit(&self, id: &str, action: &str) {
        let labels = self
            .containers
            .lock()
            .unwrap()
            .get(id)
            .map(|c| c.info.labels.clone())
            .unwrap_or_default();
        self.events.lock().unwrap().retain(|tx| {
            tx.send(ContainerEvent {
                id: id.into(),
                action: action.into(),
                labels: labels.clone(),
            })
            .is_ok()
        });
    }

    fn running_of(&self, deployment: &str) -> usize {
        self.containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| {
                c.info.labels.get("berth.deployment").map(String::as_str) == Some(deployment)
                    && c.info.running()
            })
            .count()
    }

    fn count(&self) -> usize {
        self.containers.lock().unwrap().len()
    }

    fn ids_of(&self, deployment: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| {
                c.info.labels.get("berth.deployment").map(String::as_str) == Some(deployment)
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn address_of(&self, id: &str) -> String {
        let cs = self.containers.lock().unwrap();
        let c = &cs[id];
        SocketAddr::new(c.info.address.unwrap(), c.port).to_string()
    }

    /// What Docker's inspect says of `id` (no address unless running).
    fn info(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let cs = self.containers.lock().unwrap();
        let c = cs.get(id).ok_or(RuntimeError::NotFound {
            what: "container",
            id: id.into(),
        })?;
        let mut info = c.info.clone();
        if !info.running() {
            info.address = None;
        }
        Ok(info)
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for Fake {
    fn network(&self) -> &str {
        "fake"
    }
    async fn ensure_network(&self) -> Result<(), RuntimeError> {
        Ok(())
    }
    async fn load_image(&self, _tar: ByteStream) -> Result<String, RuntimeError> {
        Err(RuntimeError::Load("fake runtime loads nothing".into()))
    }
    async fn pull_image(
        &self,
        r: &str,
        _c: Option<&RegistryCreds>,
    ) -> Result<String, RuntimeError> {
        Err(RuntimeError::Pull {
            reference: r.into(),
            message: "no registry".into(),
        })
    }
    async fn image_id(&self, r: &str) -> Result<String, RuntimeError> {
        let name = r.strip_prefix("sha256:").unwrap_or(r);
        if IMAGES.contains(&name) {
            Ok(format!("sha256:{name}"))
        } else {
            Err(RuntimeError::NotFound {
                what: "image",
                id: r.into(),
            })
        }
    }
    async fn remove_image(&self, id: &str) -> Result<bool, RuntimeError> {
        self.removed_images.lock().unwrap().push(id.to_string());
        Ok(true)
    }
    async fn tag_image(&self, id: &str, repo: &str, tag: &str) -> Result<(), RuntimeError> {
        self.tags
            .lock()
            .unwrap()
            .insert(format!("{repo}:{tag}"), id.to_string());
        Ok(())
    }
    /// Like Docker: the image goes with its last Berth tag (the fake's images have no other
    /// tags that count, and containers are not checked here).
    async fn untag_image(&self, reference: &str) -> Result<bool, RuntimeError> {
        let mut tags = self.tags.lock().unwrap();
        let Some(id) = tags.remove(reference) else {
            return Ok(true);
        };
        if !tags.values().any(|other| *other == id) {
            self.removed_images.lock().unwrap().push(id);
        }
        Ok(true)
    }
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 2;
        let id = format!("c{n:04}");
        let image_ref = spec.image.trim_start_matches("sha256:").to_string();
        let port = spec
            .labels
            .get("berth.port")
            .and_then(|p| p.parse().ok())
            .unwrap_or(8080);
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            image_id: spec.image.clone(),
            labels: spec.labels.clone(),
            state: RunState::Created,
            address: Some(IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                10 + (n / 250) as u8,
                (n % 250) as u8 + 1,
            ))),
            health: None,
            restart_count: 0,
        };
        self.containers.lock().unwrap().insert(
            id.clone(),
            FakeContainer {
                info,
                image_ref,
                port,
                server: None,
            },
        );
        self.run_server(&id).await?;
        self.emit(&id, "start");
        Ok(id)
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run_server(id).await?;
        self.emit(id, "start");
        Ok(())
    }
    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        {
            let mut cs = self.containers.lock().unwrap();
            let Some(c) = cs.get_mut(id) else {
                return Ok(());
            };
            if let Some(h) = c.server.take() {
                h.abort();
            }
            c.info.state = RunState::Exited;
        }
        self.emit(id, "die");
        Ok(())
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop(id, Duration::ZERO).await?;
        self.containers.lock().unwrap().remove(id);
        Ok(())
    }
    async fn inspect(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        if self.inspect_fails.lock().unwrap().contains(id) {
            return Err(RuntimeError::Docker {
                op: "container inspect",
                message: "client error (Connect)".into(),
            });
        }
        self.info(id)
    }
    async fn list(&self, labels: &[String]) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut out = Vec::new();
        let ids: Vec<String> = self.containers.lock().unwrap().keys().cloned().collect();
        for id in ids {
            let info = self.info(&id)?;
            let all = labels.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => info.labels.get(k).map(String::as_str) == Some(v),
                None => info.labels.contains_key(l),
            });
            if all {
                out.push(info);
            }
        }
        Ok(out)
    }
    fn logs(
        &self,
        id: &str,
        _follow: bool,
        _tail: Option<usize>,
    ) -> BoxStream<'static, Result<String, RuntimeError>> {
        futures_util::stream::iter(vec![Ok(format!("fake log line of {id}\n"))]).boxed()
    }
    fn events(&self) -> BoxStream<'static, Result<ContainerEvent, RuntimeError>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.events.lock().unwrap().push(tx);
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        )
        .boxed()
    }
}

struct World {
    fake: Arc<Fake>,
    tables: Arc<Tables>,
    publisher: Arc<RegistryRoutes>,
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let tables = Arc::new(Tables::new(RouteTable::default()));
        // The publisher the daemon uses: the route registry over the proxy's tables. Its own
        // store holds only API routes (none here); the deployment history each engine opens
        // (`store()`) stays a separate connection, so a test can replace the file under it
        // the way a crash would.
        let routes = Store::open(&dir.path().join("routes")).unwrap();
        let registry = RouteRegistry::open(Arc::new(routes), vec![], tables.clone())
            .await
            .unwrap();
        World {
            fake: Arc::new(Fake::default()),
            publisher: Arc::new(RegistryRoutes(Arc::new(registry))),
            tables,
            db: dir.path().join("berth.db"),
            _dir: dir,
        }
    }
    fn store(&self) -> Arc<SqliteDeployments> {
        Arc::new(SqliteDeployments::open(&self.db).unwrap())
    }
    async fn engine(&self) -> Engine {
        self.engine_with(EngineConfig::default()).await
    }
    /// A started engine whose background reconcile is done.
    async fn engine_with(&self, cfg: EngineConfig) -> Engine {
        let e = self.engine_now(cfg).await;
        e.reconciled().await;
        e
    }
    /// A started engine as `Engine::start` returns it: serving, reconcile still running.
    async fn engine_now(&self, cfg: EngineConfig) -> Engine {
        Engine::start(self.fake.clone(), self.store(), self.publisher.clone(), cfg)
            .await
            .unwrap()
    }
    /// (backend address, state) of the app's route.
    fn backends(&self, app: &str) -> Vec<(String, ServerState)> {
        let t = self.tables.load();
        t.route(&app_route_name(app))
            .map(|r| {
                r.backends
                    .iter()
                    .map(|b| (b.address.to_string(), b.state))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn spec(image: &str, replicas: u32, port: u16) -> berth::model::deploy::AppSpec {
    serde_json::from_value(serde_json::json!({
        "image": image, "domains": ["fake.test"], "replicas": replicas, "port": port,
        "health": {"path": "/health", "interval": "50ms", "timeout": "500ms"},
        "deploy_timeout": "1s", "drain_timeout": "1s",
    }))
    .unwrap()
}

fn by_ref(r: &str) -> ImageSource {
    ImageSource::Reference {
        reference: r.into(),
        creds: None,
    }
}
/// Deploys with `engine` and waits for the outcome, which must be `Succeeded`; the id.
async fn deploy_ok(
    engine: &Engine,
    app: &str,
    s: berth::model::deploy::AppSpec,
    image: ImageSource,
    by: &str,
) -> String {
    let id = engine.deploy(app, s, image, by).await.unwrap();
    assert_eq!(
        engine.wait(&id).await.unwrap().state,
        DeployState::Succeeded
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_mid_rolling_restores_old_replicas() {
    let w = World::new().await;
    let port = support::free_port();
    let engine = w.engine().await;
    let d1 = deploy_ok(&engine, "web", spec("v1", 3, port), by_ref("v1"), "t").await;
    let v1_backends = w.backends("web");
    assert_eq!(v1_backends.len(), 3);

    // Replica 0 of v2 gets routed and old #0 stopped; replica 1 never becomes healthy.
    let d2 = engine
        .deploy("web", spec("bad-slot1", 3, port), by_ref("bad-slot1"), "t")
        .await
        .unwrap();
    let r2 = engine.wait(&d2).await.unwrap();
    assert_eq!(r2.state, DeployState::Failed);
    let reason = r2.reason.unwrap();
    assert!(
        reason.contains("replica 1") && reason.contains("503"),
        "{reason}"
    );
    assert!(reason.contains("fake log line"), "{reason}");
    let (events, _) = engine.subscribe(&d2).unwrap();
    let stages: Vec<&str> = events.iter().map(|e| e.stage.as_str()).collect();
    assert!(stages.contains(&"restored"), "{stages:?}");
    // The SSE payload: clients stop on `state`.
    let last = serde_json::to_value(events.last().unwrap()).unwrap();
    assert_eq!(last["state"], "failed");
    assert_eq!(last["done"], true);
    assert_eq!(
        serde_json::to_value(&events[0]).unwrap()["state"],
        "running"
    );

    // Three v1 replicas serve again (the stopped one restarted), nothing of d2 is left.
    assert_eq!(w.fake.running_of(&d1), 3);
    assert_eq!(w.fake.running_of(&d2), 0);
    assert_eq!(w.fake.count(), 3);
    let mut now = w.backends("web");
    now.sort_by(|a, b| a.0.cmp(&b.0));
    let mut before = v1_backends.clone();
    before.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(now, before);
    assert!(now.iter().all(|(_, s)| *s == ServerState::Ready));
    assert_eq!(engine.app("web").await.unwrap().current.unwrap().id, d1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_spec_errors() {
    let w = World::new().await;
    let engine = w.engine().await;
    let port = support::free_port();
    // min_ready keeps the first deploy running long enough for the conflicting calls.
    let mut slow = spec("v1", 2, port);
    slow.min_ready = Duration::from_secs(2);
    let d1 = engine.deploy("web", slow, by_ref("v1"), "t").await.unwrap();
    match engine
        .deploy("web", spec("v2", 2, port), by_ref("v2"), "t")
        .await
    {
        Err(DeployError::Conflict { running, .. }) => assert_eq!(running, d1),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        engine.stop("web").await,
        Err(DeployError::Conflict { .. })
    ));
    engine.wait(&d1).await.unwrap();
    match engine
        .deploy("web", spec("v1", 0, port), by_ref("v1"), "t")
        .await
    {
        Err(DeployError::Invalid(e)) => assert_eq!(e.field, "replicas"),
        other => panic!("{other:?}"),
    }
    match engine
        .deploy("Bad_Name", spec("v1", 1, port), by_ref("v1"), "t")
        .await
    {
        Err(DeployError::Invalid(e)) => assert_eq!(e.field, "app"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        engine.rollback("web", None, "t").await,
        Err(DeployError::NoRollbackTarget(_))
    ));
    // An image that is neither local nor pullable fails the deployment, changing nothing.
    let d = engine
        .deploy("web", spec("nope", 2, port), by_ref("nope"), "t")
        .await
        .unwrap();
    let r = engine.wait(&d).await.unwrap();
    assert_eq!(r.state, DeployState::Failed);
    assert!(r.reason.unwrap().contains("no registry"));
    assert_eq!(w.fake.running_of(&d1), 2);
    assert_eq!(w.backends("web").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finishes_a_complete_interrupted_deploy_and_removes_orphans() {
    let w = World::new().await;
    let port = support::free_port();
    let d1;
    {
        let engine = w.engine().await;
        d1 = engine
            .deploy("web", spec("v1", 2, port), by_ref("v1"), "t")
            .await
            .unwrap();
        engine.wait(&d1).await.unwrap();
    }
    // As if berthd died after all v2 replicas started but before the commit: the row says
    // running, two v2 containers run next to the two v1 ones.
    let store = w.store();
    let rec = DeploymentRecord {
        id: "dinterrupted".into(),
        app: "web".into(),
        spec: spec("v2", 2, port),
        image_id: Some("sha256:v2".into()),
        state: DeployState::Running,
        reason: None,
        created_by: "t".into(),
        created_at: 1,
        finished_at: None,
        rollback_of: None,
    };
    store.insert(&rec).unwrap();
    // The older deploy the orphan below belongs to failed; the store knows it (a container
    // of a deployment the store does not know is never removed: see
    // `store_behind_reality_adopts_and_never_removes`).
    store
        .insert(&DeploymentRecord {
            id: "dold".into(),
            state: DeployState::Failed,
            created_at: 0,
            ..rec.clone()
        })
        .unwrap();
    for slot in 0..2 {
        let mut labels: HashMap<String, String> = [
            ("berth.app", "web"),
            ("berth.role", "app"),
            ("berth.managed", "true"),
            ("berth.deployment", "dinterrupted"),
            ("berth.domain.0", "fake.test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        labels.insert("berth.port".into(), port.to_string());
        labels.insert("berth.slot".into(), slot.to_string());
        w.fake
            .create_and_start(&ContainerSpec {
                name: format!("v2-{slot}"),
                image: "sha256:v2".into(),
                labels,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // An orphan of an older failed deploy of the same app.
    let mut orphan = HashMap::new();
    for (k, v) in [
        ("berth.app", "web"),
        ("berth.role", "app"),
        ("berth.managed", "true"),
        ("berth.deployment", "dold"),
    ] {
        orphan.insert(k.to_string(), v.to_string());
    }
    w.fake
        .create_and_start(&ContainerSpec {
            name: "orphan".into(),
            image: "sha256:v1".into(),
            labels: orphan,
            ..Default::default()
        })
        .await
        .unwrap();
    drop(store);

    let engine = w.engine().await;
    let r = engine.deployment("dinterrupted").unwrap();
    assert_eq!(
        r.state,
        DeployState::Succeeded,
        "complete deploy finished: {:?}",
        r.reason
    );
    assert_eq!(
        engine.app("web").await.unwrap().current.unwrap().id,
        "dinterrupted"
    );
    assert_eq!(w.fake.running_of("dinterrupted"), 2);
    assert_eq!(w.fake.count(), 2, "v1 replicas and the orphan removed");
    assert_eq!(w.backends("web").len(), 2);
    let _ = d1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_of_older_deployments_are_pruned() {
    let w = World::new().await;
    let port = support::free_port();
    let engine = w
        .engine_with(EngineConfig {
            keep_images: 2,
            ..EngineConfig::default()
        })
        .await;
    for img in ["v1", "v2"] {
        deploy_ok(&engine, "web", spec(img, 1, port), by_ref(img), "t").await;
    }
    assert!(w.fake.removed_images.lock().unwrap().is_empty(), "2 kept");
    // A failed deploy's image is not kept.
    let d = engine
        .deploy("web", spec("bad-slot1", 2, port), by_ref("bad-slot1"), "t")
        .await
        .unwrap();
    assert_eq!(engine.wait(&d).await.unwrap().state, DeployState::Failed);
    let d = engine.rollback("web", None, "t").await.unwrap();
    let r = engine.wait(&d).await.unwrap();
    assert_eq!(r.state, DeployState::Succeeded, "{:?}", r.reason);
    assert_eq!(r.image_id.as_deref(), Some("sha256:v1"));
    // Kept: v1 (current, and the newest two succeeded are v1, v2); pruned: the failed one.
    assert_eq!(
        *w.fake.removed_images.lock().unwrap(),
        vec!["sha256:bad-slot1".to_string()]
    );
    let (events, _) = engine.subscribe(&d).unwrap();
    assert!(
        events.iter().any(|e| e.stage == Stage::Pruned),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_replace_restarts_the_old_version_and_min_ready_is_waited() {
    let w = World::new().await;
    let port = support::free_port();
    let engine = w.engine().await;
    let mut s1 = spec("v1", 2, port);
    s1.strategy = berth::model::deploy::Strategy::Replace;
    s1.min_ready = Duration::from_millis(300);
    let d1 = deploy_ok(&engine, "web", s1, by_ref("v1"), "t").await;
    let (events, _) = engine.subscribe(&d1).unwrap();
    let start = events.iter().find(|e| e.stage == Stage::Start).unwrap().at;
    let healthy = events
        .iter()
        .find(|e| e.stage == Stage::Healthy)
        .unwrap()
        .at;
    assert!(healthy - start >= 300, "min_ready waited: {events:?}");

    let mut s2 = spec("bad-slot1", 2, port);
    s2.strategy = berth::model::deploy::Strategy::Replace;
    let d2 = engine
        .deploy("web", s2, by_ref("bad-slot1"), "t")
        .await
        .unwrap();
    let r2 = engine.wait(&d2).await.unwrap();
    assert_eq!(r2.state, DeployState::Failed);
    assert_eq!(w.fake.running_of(&d1), 2, "old replicas started again");
    assert_eq!(w.fake.count(), 2);
    let b = w.backends("web");
    assert_eq!(b.len(), 2);
    assert!(b.iter().all(|(_, s)| *s == ServerState::Ready));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_removes_everything_and_survives_a_restart() {
    let w = World::new().await;
    let port = support::free_port();
    let first;
    {
        let engine = w.engine().await;
        let d = engine
            .deploy("web", spec("v1", 2, port), by_ref("v1"), "t")
            .await
            .unwrap();
        engine.wait(&d).await.unwrap();
        first = d.clone();
        assert_eq!(w.backends("web").len(), 2);
        engine.stop("web").await.unwrap();
        assert_eq!(w.fake.count(), 0);
        assert!(w.tables.load().route(&app_route_name("web")).is_none());
        let status = engine.app("web").await.unwrap();
        assert!(status.current.is_none() && status.replicas.is_empty());
    }
    // A restarted engine keeps it stopped; a new deploy starts it again.
    let engine = w.engine().await;
    // The first deployment's stages were stored, in order, ending with the outcome.
    let stages: Vec<String> = engine
        .stored_events(&first)
        .unwrap()
        .into_iter()
        .map(|e| e.stage.as_str().to_string())
        .collect();
    assert_eq!(
        stages.first().map(String::as_str),
        Some("accepted"),
        "{stages:?}"
    );
    assert_eq!(
        stages.last().map(String::as_str),
        Some("succeeded"),
        "{stages:?}"
    );
    assert_eq!(
        stages.iter().filter(|s| *s == "healthy").count(),
        2,
        "{stages:?}"
    );
    assert_eq!(w.fake.count(), 0);
    assert!(w.tables.load().route(&app_route_name("web")).is_none());
    deploy_ok(&engine, "web", spec("v2", 1, port), by_ref("v2"), "t").await;
    assert_eq!(w.backends("web").len(), 1);
    let lines: Vec<String> = engine
        .logs("web", false, Some(10))
        .unwrap()
        .map(|l| l.unwrap())
        .collect()
        .await;
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("[berth-web-") && lines[0].contains("fake log line"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_leaves_the_route_and_returns_when_healthy() {
    let w = World::new().await;
    let port = support::free_port();
    let engine = w.engine().await;
    let d = deploy_ok(&engine, "web", spec("v1", 2, port), by_ref("v1"), "t").await;
    assert_eq!(w.backends("web").len(), 2);
    // The route is checked continuously with the app's own health check.
    let check = w
        .tables
        .load()
        .route(&app_route_name("web"))
        .and_then(|r| r.spec.health_check.clone())
        .expect("deployed route has a health check");
    assert_eq!(check.path, "/health");
    assert_eq!(check.interval, Duration::from_millis(50));

    let victim = {
        let cs = w.fake.containers.lock().unwrap();
        cs.iter()
            .find(|(_, c)| c.info.running())
            .map(|(id, _)| id.clone())
            .unwrap()
    };
    // Stopped outside a deploy (a crash, `docker stop`): out of the route at once.
    w.fake.stop(&victim, Duration::ZERO).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while w.backends("web").len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "stopped replica still routed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = engine.app("web").await.unwrap();
    let out: Vec<&str> = status
        .replicas
        .iter()
        .filter(|r| !r.routed)
        .map(|r| r.container_id.as_str())
        .collect();
    assert_eq!(
        out,
        [victim.as_str()],
        "status shows the stopped replica out of the route"
    );
    // Docker's restart policy starts it again: routed after its health check passes.
    w.fake.start(&victim).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while w.backends("web").len() != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "restarted replica not routed again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w
        .backends("web")
        .iter()
        .all(|(_, s)| *s == ServerState::Ready));
    assert!(engine
        .app("web")
        .await
        .unwrap()
        .replicas
        .iter()
        .all(|r| r.routed));
    // A deploy afterwards still replaces both.
    deploy_ok(&engine, "web", spec("v2", 2, port), by_ref("v2"), "t").await;
    assert_eq!(w.backends("web").len(), 2);
    assert_eq!(w.fake.running_of(&d), 0);
}

/// Issue 19.1: the store lost its last commits (a deleted `-wal` after `kill -9`; here: an
/// older copy of the database put back). Before the fix, reconcile removed the running v2
/// containers, recreated v1, and left app `b` running unrouted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_behind_reality_adopts_and_never_removes() {
    let w = World::new().await;
    let port = support::free_port();
    let old_db = w._dir.path().join("older.db");
    let (d2, b1);
    let store = w.store();
    {
        let engine = Engine::start(
            w.fake.clone(),
            store.clone(),
            w.publisher.clone(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        engine.reconciled().await;
        let d1 = deploy_ok(&engine, "web", spec("v1", 2, port), by_ref("v1"), "t").await;
        berth::store::backup(w._dir.path(), &old_db).unwrap();
        d2 = deploy_ok(&engine, "web", spec("v2", 2, port), by_ref("v2"), "t").await;
        let mut bspec = spec("v1", 1, port);
        bspec.domains = vec![serde_json::from_value(serde_json::json!("b.test")).unwrap()];
        b1 = deploy_ok(&engine, "b", bspec, by_ref("v1"), "t").await;
        assert_eq!(w.fake.running_of(&d1), 0);
    } // dropped like kill -9
      // Its aborted tasks let go of the connection asynchronously: a process killed with -9
      // has no connection left either (one closing later would checkpoint its WAL into the
      // file put back below).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&store) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "engine tasks still hold the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(store);
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", w.db.display()));
    }
    std::fs::copy(&old_db, &w.db).unwrap();
    let v2_ids = w.fake.ids_of(&d2);
    let mut v2_addrs: Vec<String> = v2_ids.iter().map(|id| w.fake.address_of(id)).collect();
    v2_addrs.sort();

    let engine = w.engine_now(EngineConfig::default()).await;
    // Routed at once, from the containers' labels.
    let mut now: Vec<String> = w.backends("web").into_iter().map(|b| b.0).collect();
    now.sort();
    assert_eq!(now, v2_addrs, "v2 routed at start");
    assert_eq!(w.backends("b").len(), 1, "b routed at start");
    engine.reconciled().await;
    assert_eq!(w.fake.ids_of(&d2), v2_ids, "v2 containers kept");
    assert_eq!(w.fake.running_of(&d2), 2);
    assert_eq!(w.fake.running_of(&b1), 1);
    assert_eq!(w.fake.count(), 3, "nothing recreated");
    let mut now: Vec<String> = w.backends("web").into_iter().map(|b| b.0).collect();
    now.sort();
    assert_eq!(now, v2_addrs, "v2 still routed after reconcile");
    assert_eq!(w.backends("b").len(), 1);
    let warned = engine.warnings().join("\n");
    assert!(
        warned.contains("store is behind") && warned.contains(&d2) && warned.contains(&b1),
        "{warned}"
    );
    let web = engine.app("web").await.unwrap();
    assert!(web.adopted.is_some());
    assert!(engine.apps().await.unwrap().iter().any(|a| a.name == "b"));

    // A deploy makes the store current again: the adopted replicas are replaced.
    let d3 = deploy_ok(&engine, "web", spec("v1", 2, port), by_ref("v1"), "t").await;
    assert_eq!(w.fake.running_of(&d2), 0);
    assert_eq!(w.fake.running_of(&d3), 2);
    assert!(engine.app("web").await.unwrap().adopted.is_none());
}

/// Issue 19.2: an unhealthy replica must not hold the start. Routes are published before
/// `Engine::start` returns (no health gate), reconcile replaces the bad replica behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_serves_at_once_and_replaces_an_unhealthy_replica_behind() {
    let w = World::new().await;
    let port = support::free_port();
    let mut s = spec("v1", 2, port);
    // Reconcile's health gate may wait this long: start must not.
    s.deploy_timeout = Duration::from_secs(3);
    let d1;
    {
        let engine = w.engine().await;
        d1 = deploy_ok(&engine, "web", s, by_ref("v1"), "t").await;
    }
    let ids = w.fake.ids_of(&d1);
    let bad = ids[0].clone();
    w.fake.unhealthy.lock().unwrap().insert(bad.clone());
    w.fake.stop(&bad, Duration::ZERO).await.unwrap();
    // The aborted server task releases its listener asynchronously.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = w.fake.start(&bad).await {
        assert!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let t0 = std::time::Instant::now();
    let engine = w.engine_now(EngineConfig::default()).await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "start took {took:?}");
    assert_eq!(w.backends("web").len(), 2, "both routed at once");
    // Deploys wait for reconcile of this app (it could replace replicas meanwhile).
    assert!(matches!(
        engine
            .deploy("web", spec("v2", 2, port), by_ref("v2"), "t")
            .await,
        Err(DeployError::Conflict { .. })
    ));
    // Another app deploys meanwhile: reconcile (still gating `web`) must neither take its
    // running deployment for one a crash interrupted nor touch its containers.
    let mut other = spec("v2", 1, port);
    other.domains = vec![serde_json::from_value(serde_json::json!("other.test")).unwrap()];
    let o1 = engine
        .deploy("other", other, by_ref("v2"), "t")
        .await
        .unwrap();
    let r = engine.wait(&o1).await.unwrap();
    assert_eq!(r.state, DeployState::Succeeded, "{:?}", r.reason);
    engine.reconciled().await;
    assert_eq!(w.fake.running_of(&o1), 1);
    assert_eq!(w.backends("other").len(), 1);
    assert!(
        !w.fake.ids_of(&d1).contains(&bad),
        "unhealthy replica replaced"
    );
    assert_eq!(w.fake.running_of(&d1), 2);
    let good = w.fake.address_of(&ids[1]);
    let now: Vec<String> = w.backends("web").into_iter().map(|b| b.0).collect();
    assert_eq!(now.len(), 2);
    assert!(now.contains(&good), "{now:?}");
}

/// A Docker error while reconcile inspects a replica (dockerd restarting or overloaded, or
/// berthd stopping mid-reconcile) says nothing about the replica: it keeps running and routed.
/// Before, reconcile took any failed inspect for a broken replica and replaced it ("inspect
/// failed: client error (Connect); replacing it", seen when a stop met a running reconcile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_keeps_a_replica_docker_could_not_inspect() {
    let w = World::new().await;
    let port = support::free_port();
    let d1;
    {
        let engine = w.engine().await;
        d1 = deploy_ok(&engine, "web", spec("v1", 2, port), by_ref("v1"), "t").await;
    }
    let ids = w.fake.ids_of(&d1);
    let addresses = |w: &World| -> Vec<String> {
        let mut a: Vec<String> = w.backends("web").into_iter().map(|b| b.0).collect();
        a.sort();
        a
    };
    let routed = addresses(&w);
    assert_eq!(routed.len(), 2);
    w.fake.inspect_fails.lock().unwrap().insert(ids[0].clone());
    let engine = w.engine().await;
    assert_eq!(w.fake.ids_of(&d1), ids, "no replica replaced");
    assert_eq!(w.fake.running_of(&d1), 2);
    assert_eq!(addresses(&w), routed, "both still routed");
    // Docker answers again: the app takes deploys (reconcile released it).
    w.fake.inspect_fails.lock().unwrap().clear();
    let d2 = deploy_ok(&engine, "web", spec("v2", 2, port), by_ref("v2"), "t").await;
    assert_eq!(w.fake.running_of(&d2), 2);
}

/// Issue 19.5: stopped or vanished replicas are restored by the self-healing loop; an app
/// stopped on purpose stays stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_healing_restores_replicas_but_not_a_stopped_app() {
    let w = World::new().await;
    let port = support::free_port();
    let engine = w
        .engine_with(EngineConfig {
            heal_interval: Duration::from_millis(100),
            ..EngineConfig::default()
        })
        .await;
    let d1 = deploy_ok(&engine, "web", spec("v1", 2, port), by_ref("v1"), "t").await;
    let ids = w.fake.ids_of(&d1);

    // `docker kill` of one replica: started again and routed again.
    w.fake.stop(&ids[0], Duration::ZERO).await.unwrap();
    support::expect_within(Duration::from_secs(10), "killed replica restarted", || {
        w.fake.running_of(&d1) == 2 && w.backends("web").len() == 2
    })
    .await;
    assert_eq!(w.fake.ids_of(&d1), ids, "restarted, not replaced");

    // A replica that is gone for good (`docker rm -f`): replaced from the image.
    w.fake.remove(&ids[1]).await.unwrap();
    w.fake.emit(&ids[1], "destroy");
    support::expect_within(Duration::from_secs(10), "lost replica replaced", || {
        w.fake.running_of(&d1) == 2 && w.backends("web").len() == 2
    })
    .await;
    assert!(!w.fake.ids_of(&d1).contains(&ids[1]));
    let stages: Vec<String> = engine
        .stored_events(&d1)
        .unwrap()
        .into_iter()
        .map(|e| e.stage.as_str().to_string())
        .collect();
    assert!(stages.iter().any(|s| s == "heal"), "{stages:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while engine.app("web").await.unwrap().heal.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "status line not cleared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // `berth stop` is not undone.
    engine.stop("web").await.unwrap();
    assert_eq!(w.fake.running_of(&d1), 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(w.fake.running_of(&d1), 0, "a stopped app stays stopped");
    assert_eq!(w.fake.count(), 0);
    assert!(engine.app("web").await.unwrap().heal.is_none());
}

/// Issue 21: a first deploy with `strategy: canary` or `side_by_side` has nothing to run next
/// to: it runs as rolling, and its events say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_canary_or_side_by_side_deploy_runs_rolling_and_says_so() {
    let w = World::new().await;
    let engine = w.engine().await;
    let port = support::free_port();
    for (app, domain, strategy) in [
        ("firstcanary", "canary.fake.test", "canary"),
        ("firstbeside", "beside.fake.test", "side_by_side"),
    ] {
        let mut v = serde_json::to_value(spec("v1", 1, port)).unwrap();
        v["domains"] = serde_json::json!([domain]);
        v["strategy"] = strategy.into();
        if strategy == "canary" {
            v["canary"] = serde_json::json!({"steps": [{"weight": "10%", "hold": "1s"}]});
        }
        let s: berth::model::deploy::AppSpec = serde_json::from_value(v).unwrap();
        let d = engine.deploy(app, s, by_ref("v1"), "t").await.unwrap();
        let r = engine.wait(&d).await.unwrap();
        assert_eq!(
            r.state,
            DeployState::Succeeded,
            "{strategy}: {:?}",
            r.reason
        );
        let said = engine
            .stored_events(&d)
            .unwrap()
            .into_iter()
            .any(|e| e.message.contains("runs as a rolling deploy"));
        assert!(said, "{strategy}: the first deploy says it runs as rolling");
    }
}
