//! Bad deploys are refused before anything runs (real dockerd, real API, gated on
//! BERTH_SYSTEM_TESTS=1): a NUL in an env value, relative or host-path volumes, an image part
//! that is empty, not a tar or truncated, and a second upload while a deploy runs. Each answer
//! names the field, and no container of the app is ever created by a refused deploy. Also the
//! app features a deploy spec carries (stop signal/timeout, command, resources, hooks,
//! deletion, logs) and pulls from a real private registry (Debian's `docker-registry` with
//! htpasswd auth, started by the test on loopback).

use crate::support;

use std::time::Duration;

use crate::support::docker::{deploy_config, prepare, skip, Cleanup, IMG_V1, IMG_V2};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Instant;

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
        Self::start_with(name, |_| {}).await
    }

    async fn start_with(
        name: &str,
        tweak: impl FnOnce(&mut berth::model::config::Config),
    ) -> World {
        prepare();
        let dir = tempfile::tempdir().unwrap();
        let app = format!("{name}-{}", std::process::id());
        let network = format!("berth-v-{app}");
        let mut c = deploy_config(dir.path(), &network);
        tweak(&mut c);
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

    /// Waits for deployment `id` to end; returns its record.
    async fn wait(&self, id: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let resp = self
                .call(reqwest::Method::GET, &format!("/v1/deployments/{id}"))
                .await;
            let v: Value = resp.json().await.unwrap();
            // Done when the record says so and the app takes the next change (the engine
            // clears its claim after removing old replicas and pruning, a moment later).
            let app: Value = self
                .call(reqwest::Method::GET, &format!("/v1/apps/{}", self.app))
                .await
                .json()
                .await
                .unwrap_or(Value::Null);
            if v["state"] != "running" && app["deploying"].is_null() {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "{v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An authenticated request to the API.
    async fn call(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    /// `spec` with `image` and the extra fields.
    fn spec_for(&self, image: &str, extra: Value) -> Value {
        let mut s = self.spec(extra);
        s["image"] = json!(image);
        s
    }

    /// Deploys (expecting 202) and waits for the end; returns the final record.
    async fn deploy_wait(&self, spec: Value) -> Value {
        let (status, body) = self.deploy_json(spec).await;
        assert_eq!(status, 202, "{body}");
        self.wait(body["id"].as_str().unwrap()).await
    }

    /// The app's answer through the proxy, trimmed.
    async fn body(&self) -> String {
        self.http
            .get(format!("http://{}/", self.running.http_addr))
            .header("host", format!("{}.test", self.app))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .trim()
            .to_string()
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
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
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
        .call(reqwest::Method::GET, &format!("/v1/apps/{}", w.app))
        .await;
    assert_eq!(resp.status(), 404, "a refused first deploy leaves no app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
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
            .call(
                reqwest::Method::GET,
                &format!("/v1/apps/{}/deployments", w.app),
            )
            .await;
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
    w.wait(last[0]["id"].as_str().unwrap()).await;
    assert_eq!(last[0]["state"], "failed", "{last:?}");
    assert!(
        last[0]["reason"].to_string().contains("truncated"),
        "the reason names the truncation: {last:?}"
    );
    assert_eq!(w.containers(), 0);
    // The whole tar still deploys. Waited for: a deploy still running when the test ends
    // creates its containers after the cleanup ran, and they outlive the test (each later
    // berthd start on this host then inspects them).
    let (status, body) = w.deploy_upload(w.spec(json!({})), tar).await;
    assert_eq!(status, 202, "{body}");
    let done = w.wait(body["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn a_domain_served_by_another_app_is_refused_before_202() {
    if skip() {
        return;
    }
    let w = World::start("domtaken").await;
    let other = format!("{}-b", w.app);
    let _cleanup_b = Cleanup {
        app: other.clone(),
        network: String::new(),
    };
    let (status, body) = w.deploy_json(w.spec(json!({}))).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    // Wait for the first app's route: it is published once a replica is healthy.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = w
            .call(reqwest::Method::GET, &format!("/v1/deployments/{id}"))
            .await;
        let v: Value = resp.json().await.unwrap();
        if v["state"] == "succeeded" {
            break;
        }
        assert_ne!(v["state"], "failed", "{v}");
        assert!(std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taken = format!("{}.test", w.app);
    for extra in [
        json!({"domains": [taken.clone()]}),
        json!({"domains": [format!("{other}.test")], "aliases": [taken.clone()]}),
    ] {
        let mut spec = w.spec(json!({}));
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let resp = w
            .http
            .post(w.url(&format!("/v1/apps/{other}/deploy")))
            .bearer_auth(&w.token)
            .json(&spec)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 409, "{extra}: {body}");
        assert_eq!(body["error"]["field"], "domains", "{body}");
        assert!(body.to_string().contains(&taken), "{body}");
    }
    let resp = w
        .call(reqwest::Method::GET, &format!("/v1/apps/{other}"))
        .await;
    assert_eq!(resp.status(), 404, "the refused app left no record");
}

fn docker_ok(args: &[&str]) -> bool {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Pruning removes only Berth's own `berth/APP:DEPLOYMENT` tags: an operator's tag on the same
/// image (`drill-app:v3` in the drill) and the shared test image survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn pruning_never_removes_an_operators_tag() {
    if skip() {
        return;
    }
    let w = World::start_with("prune", |c| c.deploy.keep_images = 1).await;
    let optag = format!("optag-{}:v3", w.app);
    assert!(docker_ok(&["tag", IMG_V1, &optag]));
    struct Untag(Vec<String>);
    impl Drop for Untag {
        fn drop(&mut self) {
            for t in &self.0 {
                let _ = std::process::Command::new("docker")
                    .args(["rmi", t])
                    .output();
            }
        }
    }
    let mut untag = Untag(vec![optag.clone()]);
    let mut ids = Vec::new();
    for image in [optag.as_str(), IMG_V2] {
        let (status, body) = w.deploy_json(w.spec(json!({ "image": image }))).await;
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let done = w.wait(&id).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        untag.0.push(format!("berth/{}:{id}", w.app));
        ids.push(id);
    }
    // keep_images: 1 → the first deployment's image was pruned: only Berth's tag went.
    let first = format!("berth/{}:{}", w.app, ids[0]);
    let second = format!("berth/{}:{}", w.app, ids[1]);
    assert!(!docker_ok(&["image", "inspect", &first]), "{first} pruned");
    assert!(
        docker_ok(&["image", "inspect", &optag]),
        "operator tag {optag} kept"
    );
    assert!(docker_ok(&["image", "inspect", IMG_V1]), "{IMG_V1} kept");
    assert!(
        docker_ok(&["image", "inspect", &second]),
        "{second} (current) kept"
    );
}

/// An app that ignores SIGTERM as PID 1 (busybox httpd) stops after its own `stop_timeout`,
/// not the daemon's 10 s grace, and `stop_signal` reaches the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn stop_timeout_and_signal_come_from_the_spec() {
    if skip() {
        return;
    }
    let w = World::start_with("stopsig", |c| {
        c.deploy.stop_grace = Duration::from_secs(10);
    })
    .await;
    let spec = w.spec(json!({"stop_timeout": "1s", "stop_signal": "SIGQUIT"}));
    let (status, body) = w.deploy_json(spec).await;
    assert_eq!(status, 202, "{body}");
    let done = w.wait(body["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker ps -q --filter label=berth.app={} | xargs docker inspect -f '{{{{.Config.StopSignal}}}}'",
            w.app
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SIGQUIT");
    let started = std::time::Instant::now();
    let resp = w
        .call(reqwest::Method::POST, &format!("/v1/apps/{}/stop", w.app))
        .await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(6),
        "stop took {took:?}: the spec's 1s stop_timeout was not used"
    );
    println!("stop with stop_timeout 1s took {took:?}");
}

/// `DELETE /v1/apps/{app}`: a failed first deploy's leftover record goes; a running app is
/// drained, stopped, removed and unrouted, its history kept readable by id when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn apps_can_be_deleted_with_or_without_history() {
    if skip() {
        return;
    }
    let w = World::start("appdel").await;
    let w = &w;
    // A failed first deploy (the image never answers /health) leaves an app record.
    let bad = w.spec(json!({"image": support::docker::IMG_BAD, "deploy_timeout": "3s"}));
    let (status, body) = w.deploy_json(bad).await;
    assert_eq!(status, 202, "{body}");
    let failed = w.wait(body["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let get_app = || async {
        w.call(reqwest::Method::GET, &format!("/v1/apps/{}", w.app))
            .await
            .status()
            .as_u16()
    };
    assert_eq!(get_app().await, 200, "the failed app is listed");
    let del = |history: &'static str| async move {
        let resp = w
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/apps/{}?history={history}", w.app),
            )
            .await;
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, body) = del("remove").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["deployments"], 1, "{body}");
    assert_eq!(get_app().await, 404, "deleted");
    let (status, _) = del("remove").await;
    assert_eq!(status, 404, "deleting twice is 404");

    // A running app with two replicas, deleted with its history kept.
    let (status, body) = w.deploy_json(w.spec(json!({"replicas": 2}))).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(w.wait(&id).await["state"], "succeeded");
    assert_eq!(w.containers(), 2);
    let host = format!("{}.test", w.app);
    let proxied = || async {
        w.http
            .get(format!("http://{}/", w.running.http_addr))
            .header("host", &host)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(proxied().await, 200);
    let (status, body) = del("keep").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replicas_removed"], 2, "{body}");
    assert_eq!(body["history_kept"], true, "{body}");
    assert_eq!(w.containers(), 0, "replicas removed");
    assert_eq!(proxied().await, 404, "route removed");
    assert_eq!(get_app().await, 404, "app forgotten");
    let resp = w
        .call(reqwest::Method::GET, &format!("/v1/deployments/{id}"))
        .await;
    assert_eq!(resp.status(), 200, "kept history is readable by id");
    // Bad query values are refused, naming the parameter.
    let resp = w
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/apps/{}?history=maybe", w.app),
        )
        .await;
    assert_eq!(resp.status(), 400);
}

/// `command`, `entrypoint` and `resources` reach the container; the app serves with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn command_entrypoint_and_resources_reach_the_container() {
    if skip() {
        return;
    }
    let w = World::start("cmdres").await;
    let spec = w.spec(json!({
        "entrypoint": ["/bin/sh", "-c"],
        "command": ["echo custom-command; exec /bin/httpd -f -p 8080 -h /www"],
        "resources": {"memory": "64MiB", "cpus": 0.5},
        "stop_timeout": "1s",
    }));
    let done = w.deploy_wait(spec).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker ps -q --filter label=berth.app={} | xargs docker inspect",
            w.app
        ))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &v[0];
    assert_eq!(c["Config"]["Entrypoint"], json!(["/bin/sh", "-c"]), "{c}");
    assert_eq!(
        c["Config"]["Cmd"],
        json!(["echo custom-command; exec /bin/httpd -f -p 8080 -h /www"])
    );
    assert_eq!(c["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(c["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(w.body().await, "v1");
}

/// `hooks.pre_deploy` runs in a one-off container of the new image with the app's env before
/// any replica changes: its output reaches the deploy's events; a non-zero exit aborts with
/// nothing changed; no hook container is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn pre_deploy_hook_runs_first_and_aborts_on_failure() {
    if skip() {
        return;
    }
    let w = World::start("prehook").await;
    let hook = |script: &str| json!({"pre_deploy": {"command": ["/bin/sh", "-c", script], "timeout": "30s"}});
    let spec = w.spec(json!({
        "env": {"GREETING": "hello-from-env"},
        "hooks": hook("echo migrating $GREETING; echo schema v2"),
    }));
    let (status, body) = w.deploy_json(spec).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    assert_eq!(w.wait(&id).await["state"], "succeeded");
    let events: Value = w
        .call(
            reqwest::Method::GET,
            &format!("/v1/deployments/{id}/events"),
        )
        .await
        .text()
        .await
        .map(Value::String)
        .unwrap();
    let text = events.as_str().unwrap();
    assert!(
        text.contains("pre_deploy | migrating hello-from-env"),
        "{text}"
    );
    assert!(text.contains("pre_deploy | schema v2"), "{text}");
    let hooks_left = || {
        let out = std::process::Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=berth.hook={}", w.app),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(hooks_left(), 0, "the hook container is removed");
    let before = w.containers();
    // A failing hook: the deploy fails naming the exit code and output; v1 keeps serving.
    let spec = w.spec(json!({
        "image": IMG_V2,
        "hooks": hook("echo cannot migrate >&2; exit 3"),
    }));
    let (status, body) = w.deploy_json(spec).await;
    assert_eq!(status, 202, "{body}");
    let failed = w.wait(body["id"].as_str().unwrap()).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.contains("exited with 3") && reason.contains("cannot migrate"),
        "{reason}"
    );
    assert_eq!(hooks_left(), 0);
    assert_eq!(w.containers(), before, "no replica was touched");
    let body = w
        .http
        .get(format!("http://{}/", w.running.http_addr))
        .header("host", format!("{}.test", w.app))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body.trim(), "v1");
}

/// `berth logs APP -f` (the real CLI) follows an app that keeps writing lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn berth_logs_follow_streams_new_lines() {
    if skip() {
        return;
    }
    let w = World::start("logsf").await;
    let spec = w.spec(json!({
        "command": ["/bin/sh", "-c",
            "/bin/httpd -f -p 8080 -h /www & i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done"],
        "stop_timeout": "1s",
    }));
    let (status, body) = w.deploy_json(spec).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        w.wait(body["id"].as_str().unwrap()).await["state"],
        "succeeded"
    );
    let mut child = tokio::process::Command::from(support::cli::command(
        &w._dir.path().join("cli.yaml"),
        w._dir.path(),
        &["logs", &w.app, "-f", "--tail", "1"],
    ))
    .env("BERTH_URL", format!("http://{}", w.running.api_addr))
    .env("BERTH_TOKEN", &w.token)
    .stdout(std::process::Stdio::piped())
    .kill_on_drop(true)
    .spawn()
    .expect("berth runs");
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ticks = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ticks.len() < 5 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("berth logs -f keeps streaming")
            .unwrap()
            .expect("stream open");
        if let Some(n) = line.split("tick-").nth(1) {
            ticks.push(n.trim().parse::<u64>().unwrap());
        }
    }
    // New lines arrive in order, one after another (followed, not a one-time dump).
    assert!(ticks.windows(2).all(|p| p[1] == p[0] + 1), "{ticks:?}");
    let _ = child.kill().await;
}

/// A `docker-registry serve` process with htpasswd auth (user `berth`, password `s3cret`),
/// and a private `DOCKER_CONFIG` for the CLI's login and push.
struct Registry {
    child: Child,
    addr: String,
    docker_config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", "berth", "s3cret"])
            .output()
            .expect("htpasswd (apache2-utils) installed");
        assert!(htpasswd.status.success());
        std::fs::write(d.join("htpasswd"), &htpasswd.stdout).unwrap();
        let port = support::free_port();
        let addr = format!("127.0.0.1:{port}");
        std::fs::write(
            d.join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n\
                 http:\n  addr: {addr}\n  secret: test\nauth:\n  htpasswd: {{realm: berth, path: {}}}\n",
                d.join("data").display(),
                d.join("htpasswd").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .args(["serve", &d.join("config.yml").display().to_string()])
            .stdout(std::fs::File::create(d.join("registry.log")).unwrap())
            .stderr(std::fs::File::create(d.join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry installed (apt-get install docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let docker_config = d.join("docker-config");
        std::fs::create_dir_all(&docker_config).unwrap();
        let r = Registry {
            child,
            addr,
            docker_config,
            _dir: dir,
        };
        r.docker(
            &["login", &r.addr, "-u", "berth", "--password-stdin"],
            Some("s3cret"),
        );
        r
    }

    fn docker(&self, args: &[&str], stdin: Option<&str>) {
        use std::io::Write;
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_CONFIG", &self.docker_config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Pushes local image `src` as `REGISTRY/repo:tag` and removes the pushed tag locally.
    fn push(&self, src: &str, reference: &str) {
        self.docker(&["tag", src, reference], None);
        self.docker(&["push", "-q", reference], None);
    }
}

fn rmi(reference: &str) {
    let _ = Command::new("docker").args(["rmi", reference]).output();
}

fn local_id(reference: &str) -> Option<String> {
    let o = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", reference])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn pull_always_follows_a_moving_tag() {
    if skip() {
        return;
    }
    let reg = Registry::start();
    assert!(
        reg.docker_config.join("config.json").exists(),
        "docker login stored"
    );
    let w = World::start("pullalways").await;
    let latest = format!("{}/{}:latest", reg.addr, w.app);
    struct Untag(String);
    impl Drop for Untag {
        fn drop(&mut self) {
            rmi(&self.0);
        }
    }
    let _untag = Untag(latest.clone());
    // :latest is v1 in the registry and locally (the daemon's Docker is the CLI's).
    reg.push(IMG_V1, &latest);
    let v1 = w.deploy_wait(w.spec_for(&latest, json!({}))).await;
    assert_eq!(v1["state"], "succeeded", "{v1}");
    assert_eq!(w.body().await, "v1");
    // The tag moves to v2 in the registry; the local :latest still names v1.
    reg.push(IMG_V2, &latest);
    reg.docker(&["tag", IMG_V1, &latest], None);
    assert_eq!(local_id(&latest), local_id(IMG_V1));
    // pull: missing (the default) keeps what is local...
    let kept = w.deploy_wait(w.spec_for(&latest, json!({}))).await;
    assert_eq!(kept["state"], "succeeded", "{kept}");
    assert_eq!(w.body().await, "v1", "pull: missing uses the local image");
    // ...pull: always asks the registry; without credentials it is refused, clearly.
    let refused = w
        .deploy_wait(w.spec_for(&latest, json!({"pull": "always"})))
        .await;
    assert_eq!(refused["state"], "failed", "{refused}");
    let reason = refused["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("auth") || reason.contains("unauthorized"),
        "the reason names the missing credentials: {reason}"
    );
    assert_eq!(w.body().await, "v1", "a refused pull changes nothing");
    // A wrong password: refused by the registry, named in the reason; nothing changes.
    let login = |password: &str| json!({"pull": "always", "registry": {"server": reg.addr, "username": "berth", "password": password}});
    let wrong = w
        .deploy_wait(w.spec_for(&latest, login("not-the-password")))
        .await;
    assert_eq!(wrong["state"], "failed", "{wrong}");
    let reason = wrong["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("unauthorized") || reason.contains("authentication"),
        "{reason}"
    );
    assert_eq!(w.body().await, "v1");
    // The right one: the registry's current :latest (v2) is pulled and served.
    let pulled = w.deploy_wait(w.spec_for(&latest, login("s3cret"))).await;
    assert_eq!(pulled["state"], "succeeded", "{pulled}");
    assert_eq!(w.body().await, "v2", "pull: always got the moved tag");
    assert_eq!(local_id(&latest), local_id(IMG_V2));
    // The password is used for the pull only: not stored, not shown.
    let listing = w
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{}/deployments", w.app),
        )
        .await
        .text()
        .await
        .unwrap();
    assert!(listing.contains(r#""username":"berth""#), "{listing}");
    assert!(!listing.contains("s3cret") && !listing.contains("not-the-password"));
    for f in ["berth.db", "berth.db-wal"] {
        let bytes = std::fs::read(w._dir.path().join(f)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("s3cret"), "{f} holds the registry password");
    }
}
