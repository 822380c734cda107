//! Bad deploys are refused before anything runs (real dockerd, real API, gated on
//! BERTH_SYSTEM_TESTS=1): a NUL in an env value, relative or host-path volumes, an image part
//! that is empty, not a tar or truncated, and a second upload while a deploy runs. Each answer
//! names the field, and no container of the app is ever created by a refused deploy.

mod docker_support;

use std::time::Duration;

use docker_support::{prepare, skip, Cleanup, IMG_V1};
use serde_json::{json, Value};

struct World {
    running: berth::daemon::Running,
    token: String,
    app: String,
    http: reqwest::Client,
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(name: &str) -> World {
        prepare();
        let dir = tempfile::tempdir().unwrap();
        let app = format!("{name}-{}", std::process::id());
        let network = format!("berth-v-{app}");
        let mut c = berth::model::config::Config {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        c.http.listen = "127.0.0.1:0".parse().unwrap();
        c.api.listen = "127.0.0.1:0".parse().unwrap();
        c.log.access_log = false;
        c.deploy.enabled = berth::model::config::DeployEnabled::Required;
        c.deploy.network = network.clone();
        c.deploy.stop_grace = Duration::from_secs(2);
        let running = berth::daemon::start(c, None).await.expect("daemon starts");
        let (_, token) = running.registry.store().create_token("ci").unwrap();
        World {
            running,
            token,
            _cleanup: Cleanup {
                app: app.clone(),
                network,
            },
            app,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.api_addr)
    }

    fn spec(&self, extra: Value) -> Value {
        let mut s = json!({
            "image": IMG_V1,
            "domains": [format!("{}.test", self.app)],
            "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
            "deploy_timeout": "20s",
        });
        if let (Value::Object(s), Value::Object(e)) = (&mut s, extra) {
            s.extend(e);
        }
        s
    }

    async fn deploy_json(&self, spec: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(&format!("/v1/apps/{}/deploy", self.app)))
            .bearer_auth(&self.token)
            .json(&spec)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn deploy_upload(&self, spec: Value, image: Vec<u8>) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "spec",
                reqwest::multipart::Part::text(spec.to_string())
                    .mime_str("application/json")
                    .unwrap(),
            )
            .part(
                "image",
                reqwest::multipart::Part::bytes(image)
                    .file_name("image.tar")
                    .mime_str("application/x-tar")
                    .unwrap(),
            );
        let resp = self
            .http
            .post(self.url(&format!("/v1/apps/{}/deploy", self.app)))
            .bearer_auth(&self.token)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Containers of this app, running or not.
    fn containers(&self) -> usize {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=berth.app={}", self.app),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_before_anything_runs() {
    if skip() {
        return;
    }
    let w = World::start("badspec").await;
    let cases = [
        (json!({"env": {"A": "x\u{0}y"}}), "env.A", "NUL"),
        (json!({"volumes": ["../x:/y"]}), "volumes[0]", "neither"),
        (
            json!({"volumes": ["d:/y/../z"]}),
            "volumes[0]",
            "container path",
        ),
        (
            json!({"volumes": ["data:/d", "/:/host"]}),
            "volumes[1]",
            "allow_host_mounts",
        ),
        (
            json!({"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}),
            "volumes[0]",
            "allow_host_mounts",
        ),
    ];
    for (extra, field, words) in cases {
        let (status, body) = w.deploy_json(w.spec(extra.clone())).await;
        assert!(status == 400 || status == 422, "{extra}: {status} {body}");
        assert_eq!(body["error"]["field"], field, "{extra}: {body}");
        assert!(
            body.to_string().contains(words),
            "{extra}: message should mention {words:?}: {body}"
        );
    }
    // Nothing was started, and no app record was left behind.
    assert_eq!(w.containers(), 0);
    let resp = w
        .http
        .get(w.url(&format!("/v1/apps/{}", w.app)))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "a refused first deploy leaves no app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_parts_that_are_not_whole_tars_are_refused() {
    if skip() {
        return;
    }
    let w = World::start("badtar").await;
    let tar = std::process::Command::new("docker")
        .args(["save", IMG_V1])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let tar = tar.stdout;
    assert!(tar.len() > 4096);
    let garbage = b"this is not a tar archive at all\n".repeat(100);
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("empty", Vec::new(), "empty"),
        ("not a tar", garbage, "not a tar"),
        ("truncated", tar[..tar.len() / 2].to_vec(), "truncated"),
    ];
    for (what, image, words) in cases {
        let (status, body) = w.deploy_upload(w.spec(json!({})), image).await;
        assert_eq!(status, 422, "{what}: {body}");
        assert_eq!(body["error"]["field"], "image", "{what}: {body}");
        assert!(
            body.to_string().contains(words),
            "{what}: message should say {words:?}: {body}"
        );
    }
    assert_eq!(
        w.containers(),
        0,
        "a refused image never starts a container"
    );
    // The truncated upload had already begun a deployment (the tar streams into Docker as it
    // arrives): it ends failed, naming the cause, without a container.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let last = loop {
        let resp = w
            .http
            .get(w.url(&format!("/v1/apps/{}/deployments", w.app)))
            .bearer_auth(&w.token)
            .send()
            .await
            .unwrap();
        let v: Value = resp.json().await.unwrap();
        let list = v
            .as_array()
            .or_else(|| v["deployments"].as_array())
            .cloned()
            .unwrap_or_default();
        if list.iter().all(|d| d["state"] != "running") {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "still running: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        last.len(),
        1,
        "only the truncated upload began a deployment: {last:?}"
    );
    assert_eq!(last[0]["state"], "failed", "{last:?}");
    assert!(
        last[0]["reason"].to_string().contains("truncated"),
        "the reason names the truncation: {last:?}"
    );
    assert_eq!(w.containers(), 0);
    // The whole tar still deploys.
    let (status, body) = w.deploy_upload(w.spec(json!({})), tar).await;
    assert_eq!(status, 202, "{body}");
}
