//! The deploy endpoints against real dockerd, through HTTP with a token: JSON deploy + SSE,
//! multipart tar upload, 409 on a concurrent deploy, rollback, stop, logs, a bad spec, 401.
//! Gated on BERTH_SYSTEM_TESTS=1.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::docker::{
    deploy_config, prepare, skip, write_app_file, Cleanup, IMG_V1, IMG_V2,
};
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
        World::start_with(name, |_, _| {}).await
    }

    /// [`World::start`] with `edit(config, app name)` applied to the daemon's config first.
    async fn start_with(
        name: &str,
        edit: impl FnOnce(&mut berth::model::config::Config, &str),
    ) -> World {
        prepare();
        let dir = tempfile::tempdir().unwrap();
        let run = format!("{name}-{}", std::process::id());
        let mut c = deploy_config(dir.path(), &format!("berth-t-{run}"));
        edit(&mut c, &run);
        let running = berth::daemon::start(c, None).await.expect("daemon starts");
        let (_, token) = running
            .registry
            .store()
            .create_token("ci-deployer")
            .unwrap();
        World {
            running,
            token,
            _cleanup: Cleanup {
                app: run.clone(),
                network: format!("berth-t-{run}"),
            },
            app: run,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// [`World::start`], plus a CLI user (settings and working directory in the returned
    /// dir) whose server `local` is this daemon with the deploy token.
    async fn with_cli(name: &str) -> (World, tempfile::TempDir, support::cli::Cli) {
        let w = World::start(name).await;
        let work = tempfile::tempdir().unwrap();
        let cli = support::cli::Cli::in_dir(work.path());
        let url = format!("http://{}", w.running.api_addr);
        let (code, out) = cli
            .run(&["server", "add", "local", &url, "--token", &w.token])
            .await;
        assert_eq!(code, 0, "{out}");
        (w, work, cli)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.api_addr)
    }

    fn spec(&self, image: &str, replicas: u32) -> Value {
        json!({
            "image": image,
            "domains": [self.host()],
            "replicas": replicas,
            "health": {"path": "/health", "interval": "100ms", "timeout": "1s"},
            "drain_timeout": "3s",
            "deploy_timeout": "30s",
        })
    }

    fn host(&self) -> String {
        format!("{}.test", self.app)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let s = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        (s, v)
    }

    /// POSTs `spec` as a deploy of the app (202 expected) and follows it to its end; returns
    /// every event.
    async fn deploy_and_follow(&self, spec: Value) -> Vec<Value> {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/apps/{}/deploy", self.app),
                Some(spec),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        self.follow(v["id"].as_str().unwrap()).await
    }

    /// Follows the deployment's SSE stream to its end; returns every event.
    async fn follow(&self, id: &str) -> Vec<Value> {
        let resp = self
            .http
            .get(self.url(&format!("/v1/deployments/{id}/events")))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let text = tokio::time::timeout(Duration::from_secs(60), resp.text())
            .await
            .expect("event stream ends after the terminal event")
            .unwrap();
        text.split("\n\n")
            .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    async fn proxied(&self) -> String {
        let resp = self
            .http
            .get(format!("http://{}/", self.running.http_addr))
            .header("host", self.host())
            .send()
            .await
            .unwrap();
        resp.text().await.unwrap()
    }
}

fn last_state(events: &[Value]) -> &str {
    events
        .last()
        .and_then(|e| e["state"].as_str())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn deploy_upload_conflict_rollback_logs_stop_over_http() {
    if skip() {
        return;
    }
    let w = World::start("apps").await;
    let app = w.app.clone();
    let t0 = Instant::now();

    // Unauthenticated → 401.
    let r = w.http.get(w.url("/v1/apps")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // A bad spec → 422 naming the field.
    let mut bad = w.spec(IMG_V1, 2);
    bad["replicas"] = json!("two");
    let (s, v) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/deploy"),
            Some(bad),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"]["field"], "replicas", "{v}");

    // v1 by JSON (image already loaded), 2 replicas; follow SSE to success.
    let (s, v) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/deploy"),
            Some(w.spec(IMG_V1, 2)),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let d1 = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["state"], "running");
    // A second deploy while v1 runs → 409 with the running id.
    let (s, v) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/deploy"),
            Some(w.spec(IMG_V2, 2)),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "deploy_in_progress");
    assert_eq!(v["error"]["deployment"], d1.as_str());
    let ev = w.follow(&d1).await;
    assert_eq!(last_state(&ev), "succeeded", "{ev:?}");
    assert!(ev
        .iter()
        .all(|e| e["at"].is_i64() && e["stage"].is_string()));
    assert_eq!(ev.last().unwrap()["done"], true);
    assert_eq!(w.proxied().await.trim(), "v1");
    let t_v1 = t0.elapsed();

    // v2 as a multipart upload of a `docker save` tar.
    let tar = std::process::Command::new("docker")
        .args(["save", IMG_V2])
        .output()
        .unwrap();
    assert!(tar.status.success());
    let form = reqwest::multipart::Form::new()
        .part(
            "spec",
            reqwest::multipart::Part::text(w.spec(IMG_V2, 2).to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            "image",
            reqwest::multipart::Part::bytes(tar.stdout)
                .file_name("image.tar")
                .mime_str("application/x-tar")
                .unwrap(),
        );
    let resp = w
        .http
        .post(w.url(&format!("/v1/apps/{app}/deploy")))
        .bearer_auth(&w.token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    let d2 = v["id"].as_str().unwrap().to_string();
    let ev = w.follow(&d2).await;
    assert_eq!(last_state(&ev), "succeeded", "{ev:?}");
    assert_eq!(w.proxied().await.trim(), "v2");

    // Status, history, who.
    let (s, v) = w
        .call(reqwest::Method::GET, &format!("/v1/apps/{app}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["current"]["id"], d2.as_str());
    assert_eq!(v["previous"]["id"], d1.as_str());
    assert_eq!(v["current"]["created_by"], "ci-deployer");
    assert_eq!(v["replicas"].as_array().unwrap().len(), 2);
    assert_eq!(v["health"], "healthy");
    assert_eq!(v["domains"][0], w.host());
    let (s, v) = w
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}/deployments"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["deployments"].as_array().unwrap().len(), 2);
    // The deployed route is in the one table next to API routes.
    let (s, v) = w.call(reqwest::Method::GET, "/v1/routes", None).await;
    assert_eq!(s, 200);
    assert!(v.to_string().contains(&format!("app/{app}")), "{v}");

    // Rollback → v1.
    let (s, v) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/rollback"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let d3 = v["id"].as_str().unwrap().to_string();
    let ev = w.follow(&d3).await;
    assert_eq!(last_state(&ev), "succeeded", "{ev:?}");
    assert_eq!(w.proxied().await.trim(), "v1");

    // Logs (not followed) end by themselves; each event names its container.
    let resp = w
        .http
        .get(w.url(&format!("/v1/apps/{app}/logs?follow=false&tail=5")))
        .bearer_auth(&w.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(20), resp.text())
        .await
        .unwrap()
        .unwrap();
    for d in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let v: Value = serde_json::from_str(d).unwrap();
        assert!(v["container"].is_string() && v["line"].is_string(), "{v}");
    }

    // Stop: no route, no containers.
    let (s, v) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/stop"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let status = w
        .http
        .get(format!("http://{}/", w.running.http_addr))
        .header("host", w.host())
        .send()
        .await
        .unwrap()
        .status();
    assert_ne!(status, 200);
    let (_, v) = w.call(reqwest::Method::GET, "/v1/certificates", None).await;
    assert_eq!(v["certificates"], json!([]));
    println!(
        "apps_api: v1 deploy (2 replicas) via HTTP+SSE {:?}; whole flow {:?}",
        t_v1,
        t0.elapsed()
    );
    let World { running, http, .. } = w;
    drop(http);
    let t = Instant::now();
    running.shutdown().await;
    println!("apps_api: daemon shutdown {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn the_berth_cli_end_to_end() {
    if skip() {
        return;
    }
    let (w, work, cli) = World::with_cli("cli").await;
    let app = w.app.clone();
    let url = w.url("");

    let image = format!("image: {IMG_V1}");
    write_app_file(work.path(), &app, &image, &w.host(), 2, "");
    let tar = work.path().join("v1.tar");
    let st = std::process::Command::new("docker")
        .args(["save", "-o"])
        .arg(&tar)
        .arg(IMG_V1)
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    let (code, out) = cli
        .run(&["deploy", "--image-tar", tar.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("succeeded"), "{out}");
    println!(
        "apps_api: berth deploy --image-tar (2 replicas) {:?}",
        t.elapsed()
    );
    assert_eq!(w.proxied().await.trim(), "v1");

    let (code, out) = cli.run(&["apps"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&app) && out.contains("healthy"), "{out}");
    assert!(out.contains("2/2"), "{out}");
    println!("apps_api: berth apps:\n{out}");
    let (code, out) = cli.run(&["status", &app, "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["apps"][0]["name"], app.as_str(), "{v}");

    // A second deployment (v2 by reference) to have something to roll back to.
    let image = format!("image: {IMG_V2}");
    write_app_file(work.path(), &app, &image, &w.host(), 2, "");
    let (code, out) = cli.run(&["deploy"]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(w.proxied().await.trim(), "v2");
    let (code, out) = cli.run(&["deployments", &app]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.matches("succeeded").count() >= 2, "{out}");
    let (code, out) = cli.run(&["rollback", &app]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(w.proxied().await.trim(), "v1", "{out}");
    let (code, out) = cli.run(&["logs", &app, "--tail", "5"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli.run(&["stop", &app]).await;
    assert_eq!(code, 0, "{out}");

    // Wrong token → exit code 4 and a clear message.
    let (code, out) = cli
        .run(&["server", "add", "bad", &url, "--token", "berth_wrong_token"])
        .await;
    let (code2, out2) = if code == 0 {
        cli.run(&["--server", "bad", "apps"]).await
    } else {
        (code, out.clone())
    };
    assert_eq!(code2, 4, "{out}\n{out2}");
    assert!(out2.to_lowercase().contains("token"), "{out2}");
    println!("apps_api: wrong token: {out2}");
    let World { running, http, .. } = w;
    drop(http);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn canary_promote_abort_and_traffic_over_http_and_the_cli() {
    if skip() {
        return;
    }
    let (w, work, cli) = World::with_cli("canaryapi").await;
    let app = w.app.clone();

    // No canary yet: promote, abort and a split are 409; unknown app 404.
    let (s1, v) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/deploy"),
            Some(w.spec(IMG_V1, 1)),
        )
        .await;
    assert_eq!(s1, 202, "{v}");
    let d1 = v["id"].as_str().unwrap().to_string();
    assert_eq!(last_state(&w.follow(&d1).await), "succeeded");
    for path in ["promote", "abort"] {
        let (st, v) = w
            .call(
                reqwest::Method::POST,
                &format!("/v1/apps/{app}/{path}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(st, 409, "{path}: {v}");
        assert_eq!(v["error"]["code"], "no_canary", "{v}");
    }
    let (st, v) = w
        .call(reqwest::Method::GET, "/v1/apps/nosuchapp/traffic", None)
        .await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = w
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}/traffic"),
            None,
        )
        .await;
    assert_eq!((st, v["weights"][&d1].as_u64()), (200, Some(100)), "{v}");

    // A bad canary spec in berth.yaml names file, line and key before anything is sent.
    std::fs::write(
        work.path().join("berth.yaml"),
        format!(
            "name: {app}\nimage: {IMG_V2}\ndomains: [{}]\nstrategy: canary\ncanary:\n  steps: [{{weight: 5%, hold: 2m}}]\n  analysis:\n    max_error_rate: 150%\n",
            w.host()
        ),
    )
    .unwrap();
    let (code, out) = cli.run(&["deploy", "--detach"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("berth.yaml:8") && out.contains("canary.analysis.max_error_rate"),
        "{out}"
    );

    // A canary of v2 that holds its first step long; driven by hand from here.
    let image = format!("image: {IMG_V2}");
    let canary = "strategy: canary\ncanary:\n  steps: [{weight: 50%, hold: 10m}]\n  analysis: \
                  {min_requests: 1000000}\n";
    write_app_file(work.path(), &app, &image, &w.host(), 1, canary);
    let (code, out) = cli.run(&["deploy", "--detach"]).await;
    assert_eq!(code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let d2 = loop {
        let (_, v) = w
            .call(reqwest::Method::GET, &format!("/v1/apps/{app}"), None)
            .await;
        if v["canary"]["phase"] == "step" {
            break v["canary"]["deployment"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "canary reaches its step: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Refused splits: 422 naming the version or the sum; nothing changes.
    for (body, field) in [
        (json!({"v1": 90, "v3": 10}), "weights.v3"),
        (json!({"v1": 80, "v2": 30}), "weights"),
    ] {
        let (st, v) = w
            .call(
                reqwest::Method::PUT,
                &format!("/v1/apps/{app}/traffic"),
                Some(body),
            )
            .await;
        assert_eq!(st, 422, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (_, v) = w
        .call(
            reqwest::Method::GET,
            &format!("/v1/apps/{app}/traffic"),
            None,
        )
        .await;
    assert_eq!(v["weights"][&d2], 50, "{v}");
    let (code, out) = cli.run(&["traffic", &app, "v1=90", "v9=10"]).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("weights.v9"), "{out}");
    // By hand through the CLI: 70/30, sticky.
    let (code, out) = cli
        .run(&["traffic", &app, "v1=70", "v2=30", "--sticky"])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{d2}=30%")), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out) = cli.run(&["status"]).await;
        assert_eq!(code, 0, "{out}");
        if out.contains(&format!("{app}: canary {d2} (manual step 1/1), split")) {
            assert!(out.contains("(sticky)"), "{out}");
            println!("apps_api: berth status with a canary:\n{out}");
            break;
        }
        assert!(Instant::now() < deadline, "status shows the split: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Promote by hand: v2 takes over, v1 goes.
    let (code, out) = cli.run(&["promote", &app]).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(last_state(&w.follow(&d2).await), "succeeded");
    assert_eq!(w.proxied().await.trim(), "v2");
    let (_, v) = w
        .call(reqwest::Method::GET, &format!("/v1/apps/{app}"), None)
        .await;
    assert!(v.get("canary").is_none(), "{v}");
    assert_eq!(v["current"]["id"], d2.as_str(), "{v}");
    let (code, out) = cli.run(&["abort", &app]).await;
    assert_ne!(code, 0, "no canary to abort: {out}");
}

/// Issue 21: versions side by side over the API and the CLI against a real berthd:
/// `berth deploy --keep` starts v2 next to v1 at weight 0, `berth traffic` splits 50/50 (a
/// split naming a version that does not run is 422 naming it), `berth status` shows each
/// version's replicas and weight, `DELETE /v1/apps/{app}/versions/{version}` refuses an
/// unknown version (422 `version`) and the current one (409), and `berth version rm` drains
/// and removes v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn versions_side_by_side_over_http_and_the_cli() {
    if skip() {
        return;
    }
    let w = World::start("versapi").await;
    let app = w.app.clone();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("cli.toml");
    let url = format!("http://{}", w.running.api_addr);
    let run = |args: Vec<String>| {
        let (cfg, dir) = (cfg.clone(), work.path().to_path_buf());
        async move {
            tokio::task::spawn_blocking(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                support::cli::berth_blocking(&cfg, &dir, &a)
            })
            .await
            .unwrap()
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (code, out) = run(s(&["server", "add", "local", &url, "--token", &w.token])).await;
    assert_eq!(code, 0, "{out}");
    let (st, v) = w
        .call(
            reqwest::Method::POST,
            &format!("/v1/apps/{app}/deploy"),
            Some(w.spec(IMG_V1, 1)),
        )
        .await;
    assert_eq!(st, 202, "{v}");
    let d1 = v["id"].as_str().unwrap().to_string();
    assert_eq!(last_state(&w.follow(&d1).await), "succeeded");
    // v2 next to v1, by the CLI: v1 keeps every request.
    std::fs::write(
        work.path().join("berth.yaml"),
        format!(
            "name: {app}\nimage: {IMG_V2}\ndomains: [{}]\nport: 8080\nreplicas: 1\n\
             health:\n  path: /health\n  interval: 100ms\n  timeout: 1s\n",
            w.host()
        ),
    )
    .unwrap();
    let (code, out) = run(s(&["deploy", "--keep"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("with weight 0"), "{out}");
    let (_, v) = w
        .call(reqwest::Method::GET, &format!("/v1/apps/{app}"), None)
        .await;
    let d2 = v["current"]["id"].as_str().unwrap().to_string();
    assert_ne!(d1, d2);
    assert_eq!(w.proxied().await.trim(), "v1");
    // Refused: a version that does not run, named as written; nothing changes.
    let (st, v) = w
        .call(
            reqwest::Method::PUT,
            &format!("/v1/apps/{app}/traffic"),
            Some(json!({"v1": 50, "v3": 50})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("weights.v3")),
        "{v}"
    );
    let (code, out) = run(s(&["traffic", &app, "v1=50", "v2=50"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{d1}=50%")), "{out}");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..40 {
        *seen
            .entry(w.proxied().await.trim().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        (seen.get("v1"), seen.get("v2")),
        (Some(&20), Some(&20)),
        "{seen:?}"
    );
    let (code, out) = run(s(&["status"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1/1 v1 (50%) + 1/1 v2 (50%)"), "{out}");
    println!("apps_api: berth status with two versions:\n{out}");
    // Removal: an unknown version is 422, the current one 409.
    let (st, v) = w
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/apps/{app}/versions/v9"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (422, Some("version")),
        "{v}"
    );
    let (st, v) = w
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/apps/{app}/versions/v2"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("versions")),
        "{v}"
    );
    let (code, out) = run(s(&["version", "rm", &app, "v1"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{d2}=100%")), "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, v) = w
            .call(reqwest::Method::GET, &format!("/v1/apps/{app}"), None)
            .await;
        if v["replicas"].as_array().map(Vec::len) == Some(1) && v.get("versions").is_none() {
            assert_eq!(v["ready"], "1/1", "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "v1 drained and removed: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(w.proxied().await.trim(), "v2");
    let (code, out) = run(s(&["version", "rm", &app, "v2"])).await;
    assert_ne!(code, 0, "one version left: {out}");
}

/// A TCP frontend whose pool follows the app: a connection open through it to an old replica
/// is part of that replica's drain. The rolling deploy waits for it (within `drain_timeout`)
/// instead of stopping the container under it: the old replica's slow answer arrives whole,
/// and the drain ends with nothing in flight. (Before, the drain counted the app route's
/// HTTP requests only, saw zero at once, and the container stop cut the connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn a_tcp_connection_through_a_pool_that_follows_the_app_is_drained() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if skip() {
        return;
    }
    // `/cgi-bin/app` answers after 3 s; `/` at once.
    const SLOW_V1: &str = "berth-test-slow-app:v1";
    const SLOW_V2: &str = "berth-test-slow-app:v2";
    for (tag, v) in [(SLOW_V1, "v1"), (SLOW_V2, "v2")] {
        support::docker::build_cgi_image(
            tag,
            &format!("{v}\n"),
            &format!("sleep 3\necho 'Content-Type: text/plain'\necho\necho '{v} slow'\n"),
        );
    }
    let w = World::start_with("tcpdrain", |c, app| {
        c.pools = vec![serde_yaml::from_str(&format!("name: app\napp: {app}\n")).unwrap()];
        c.frontends =
            vec![
                serde_yaml::from_str("name: raw\nmode: tcp\nbind: 127.0.0.1:0\npool: app\n")
                    .unwrap(),
            ];
    })
    .await;
    let spec = |image: &str| {
        let mut s = w.spec(image, 1);
        s["drain_timeout"] = json!("8s");
        s
    };
    let ev = w.deploy_and_follow(spec(SLOW_V1)).await;
    assert_eq!(last_state(&ev), "succeeded", "{ev:?}");
    let addr = w.running.tcp.frontends().await[0].listening[0];
    async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        let mut c = tokio::net::TcpStream::connect(addr).await?;
        c.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        c.read_to_string(&mut out).await?;
        Ok(out)
    }
    // The pool follows the replica feed a moment after the deploy: wait until it answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = tokio::time::timeout(Duration::from_secs(2), get(addr, "/")).await;
        if matches!(&r, Ok(Ok(t)) if t.ends_with("v1\n")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TCP frontend never reached v1: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A slow request on v1 through the TCP frontend, then the deploy of v2 while it runs.
    let slow = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(15), get(addr, "/cgi-bin/app")).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = w.deploy_and_follow(spec(SLOW_V2)).await;
    assert_eq!(last_state(&ev), "succeeded", "{ev:?}");
    let answer = slow.await.unwrap().expect("answered within 15 s");
    let answer = answer.expect("the connection was not cut");
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("\n\nv1 slow\n"),
        "{answer:?}"
    );
    let drained: Vec<&str> = ev
        .iter()
        .filter(|e| e["stage"] == "drained")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert_eq!(drained.len(), 1, "{ev:?}");
    assert!(
        drained[0].ends_with("has no requests in flight"),
        "{drained:?}"
    );
    // The drain waited for the connection: the old replica stopped after the answer.
    let at = |stage: &str| {
        ev.iter()
            .find(|e| e["stage"] == stage)
            .and_then(|e| e["at"].as_i64())
            .unwrap_or_else(|| panic!("no {stage} event: {ev:?}"))
    };
    assert!(
        at("drained") - at("drain") >= 1_000,
        "drain {} ms, drained {} ms",
        at("drain"),
        at("drained")
    );
}
