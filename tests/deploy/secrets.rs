//! App secrets end to end (issue 18 item 6), with the real `berthd` binary (its log captured
//! at debug level), the real `berth` CLI and real dockerd: a secret from `berth.yaml` reaches
//! the container's environment, and its value appears nowhere else: not in `berth.db` or its
//! WAL, not in any API response or the status page, not in `berth status`, not in the daemon's
//! log. A rollback gets the secret back from its sealed form; with a different key the
//! rollback is refused with a clear error. Gated on BERTH_SYSTEM_TESTS=1.

use crate::support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::berthd::BerthdProcess;
use crate::support::docker::{docker_ready, Cleanup, IMG_V1, IMG_V2};
use serde_json::{json, Value};

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The environment of the app's running containers, as Docker reports it.
fn container_env(app: &str) -> Vec<String> {
    let out = sh(&format!(
        "docker ps -q --filter label=berth.app={app} | xargs -r docker inspect"
    ));
    let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["Config"]["Env"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| e.as_str().map(str::to_string))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file in the data dir (the database, its WAL and shared memory, the key) must not
/// hold the value.
fn assert_not_in_data_dir(dir: &Path, value: &str) {
    let mut seen = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        std::fs::File::open(&p)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert!(
            !contains(&bytes, value.as_bytes()),
            "{} holds the secret",
            p.display()
        );
        seen += 1;
    }
    assert!(
        seen >= 2,
        "expected berth.db and its WAL in {}",
        dir.display()
    );
}

struct Cli {
    cfg: PathBuf,
    work: PathBuf,
}

impl Cli {
    fn run(&self, args: &[&str], secret: Option<&str>) -> (i32, String) {
        let mut cmd = support::cli::command(&self.cfg, &self.work, args);
        cmd.env_remove("DB_PASSWORD");
        if let Some(s) = secret {
            cmd.env("DB_PASSWORD", s);
        }
        support::cli::text(cmd.output().expect("berth runs"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn secrets_reach_the_container_and_nothing_else() {
    if !docker_ready() {
        return;
    }
    let app = format!("sec-{}", std::process::id());
    let network = format!("berth-t-{app}");
    let _cleanup = Cleanup {
        app: app.clone(),
        network: network.clone(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut daemon = BerthdProcess::with_log(
        "  level: trace\n  access_log: true\n",
        &format!("deploy:\n  enabled: required\n  network: {network}\n  stop_grace: 2s\n"),
    );
    let data = daemon.data();
    // Distinctive, and no substring of anything hex or base64url-looking by accident.
    let value = format!("s3cr3t~{}~{}", std::process::id(), app.len() * 7919);
    let token = daemon.create_token(&["--name", "ci", "--scope", &format!("deploy:{app}")]);
    let (_, admin) = {
        let s = berth::store::Store::open(&data).unwrap();
        s.create_token("admin").unwrap()
    };

    daemon.start_within(Duration::from_secs(60));
    let key_mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(data.join("secrets.key"))
            .expect("the daemon created the secrets key")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(key_mode, 0o600);
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let cli = Cli {
        cfg: tmp.path().join("cli.yaml"),
        work: work.clone(),
    };
    let url = format!("http://{}", daemon.api);
    let (code, out) = cli.run(&["server", "add", "local", &url, "--token", &token], None);
    assert_eq!(code, 0, "{out}");
    let app_file = |image: &str| {
        let (source, host) = (format!("image: {image}"), format!("{app}.test"));
        let extra = format!("env:\n  MODE: visible-{app}\nsecrets: [DB_PASSWORD]\n");
        support::docker::write_app_file(&work, &app, &source, &host, 1, &extra);
    };

    // Deploy v1 with the secret from the local environment, through a deploy-only token.
    app_file(IMG_V1);
    let (code, out) = cli.run(&["deploy"], Some(&value));
    assert_eq!(code, 0, "{out}");
    assert!(
        !out.contains(&value),
        "berth deploy printed the secret:\n{out}"
    );
    let env = container_env(&app);
    assert!(env.contains(&format!("DB_PASSWORD={value}")), "{env:?}");
    assert!(env.contains(&format!("MODE=visible-{app}")), "{env:?}");

    // v2 (same secret), then roll back to v1: the rolled-back container gets it again from
    // the sealed copy (the client sends nothing for a rollback).
    app_file(IMG_V2);
    let (code, out) = cli.run(&["deploy"], Some(&value));
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli.run(&["rollback", &app], None);
    assert_eq!(code, 0, "{out}");
    let env = container_env(&app);
    assert!(
        env.contains(&format!("DB_PASSWORD={value}")),
        "after rollback: {env:?}"
    );
    let images = sh(&format!(
        "docker ps --filter label=berth.app={app} --format '{{{{.Image}}}}'"
    ));
    assert!(!images.contains(IMG_V2), "rolled back: {images}");

    // Every API response that shows a spec, the status page and the CLI: names and
    // fingerprints only.
    let http = reqwest::Client::new();
    let get = |path: String, token: String| {
        let r = http
            .get(format!("{url}{path}"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(20));
        async move {
            let r = r.send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.text().await.unwrap()
        }
    };
    let apps: Value = serde_json::from_str(&get("/v1/apps".into(), admin.clone()).await).unwrap();
    let listed = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app.as_str())
        .unwrap();
    let secrets = &listed["current"]["spec"]["secrets"];
    assert_eq!(secrets[0]["name"], "DB_PASSWORD", "{secrets}");
    let fingerprint = secrets[0]["fingerprint"].as_str().unwrap().to_string();
    assert!(fingerprint.starts_with("sha256:"), "{fingerprint}");
    assert_eq!(
        listed["current"]["spec"]["env"]["MODE"],
        format!("visible-{app}")
    );
    let history: Value =
        serde_json::from_str(&get(format!("/v1/apps/{app}/deployments"), admin.clone()).await)
            .unwrap();
    let ids: Vec<String> = history["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let mut shown = vec![
        serde_json::to_string(&apps).unwrap(),
        serde_json::to_string(&history).unwrap(),
        get(format!("/v1/apps/{app}"), admin.clone()).await,
        get(format!("/v1/apps/{app}"), token.clone()).await,
        get("/metrics".into(), admin.clone()).await,
        get("/v1/stats".into(), admin.clone()).await,
        get("/v1/routes".into(), admin.clone()).await,
        get("/ui/".into(), admin.clone()).await,
        get("/ui/app.js".into(), admin.clone()).await,
    ];
    for id in &ids {
        shown.push(get(format!("/v1/deployments/{id}/events"), token.clone()).await);
        let body = get(format!("/v1/deployments/{id}"), admin.clone()).await;
        let d: Value = serde_json::from_str(&body).unwrap();
        shown.push(body);
        // All three deployments had the same secret: the same fingerprint.
        assert_eq!(
            d["spec"]["secrets"],
            json!([{"name": "DB_PASSWORD", "fingerprint": fingerprint}]),
            "{d}"
        );
    }
    // The status page's own view: a session from the token, then what the page fetches.
    let login = http
        .post(format!("{url}/ui/login"))
        .json(&json!({ "token": admin }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for path in ["/v1/apps", &format!("/v1/apps/{app}/deployments")] {
        let r = http
            .get(format!("{url}{path}"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        shown.push(r.text().await.unwrap());
    }
    for (i, body) in shown.iter().enumerate() {
        assert!(
            !body.contains(&value),
            "response {i} shows the secret: {body}"
        );
    }
    let (code, status) = cli.run(&["status", &app], None);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains(&format!("DB_PASSWORD ({fingerprint})")),
        "{status}"
    );
    assert!(!status.contains(&value), "{status}");

    // The database file, its WAL and the rest of the data dir, while the daemon runs (the
    // WAL is not yet checkpointed) and after it stopped.
    assert_not_in_data_dir(&data, &value);
    let log = daemon.stop();
    assert!(log.contains("created the secrets key"), "no INFO line");
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(&value)).collect();
    assert!(
        leaks.is_empty(),
        "the daemon log shows the secret:\n{}",
        leaks.join("\n")
    );
    assert_not_in_data_dir(&data, &value);

    // Another key: rolling back is refused, clearly, naming the secret; nothing panics.
    let creds = tmp.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(data.join("secrets.key"), creds.join("berth-secrets-key")).unwrap();
    std::fs::write(data.join("secrets.key"), format!("{}\n", "ab".repeat(32))).unwrap();
    daemon.start_within(Duration::from_secs(60));
    let url = format!("http://{}", daemon.api);
    let r = http
        .post(format!("{url}/v1/apps/{app}/rollback"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "secrets_unavailable", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("DB_PASSWORD") && msg.contains("secrets.key"),
        "{msg}"
    );
    let log = daemon.stop();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(&value));

    // The right key as a systemd credential (LoadCredential=) wins over the data dir's file:
    // the rollback to v2 works after a restart, from the stored sealed copy.
    daemon.credentials = Some(creds);
    daemon.start_within(Duration::from_secs(60));
    daemon.wait_log("reconcile done");
    let r = http
        .post(format!("http://{}/v1/apps/{app}/rollback", daemon.api))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let events = http
        .get(format!("http://{}/v1/deployments/{id}/events", daemon.api))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("\"state\":\"succeeded\""), "{events}");
    let env = container_env(&app);
    assert!(
        env.contains(&format!("DB_PASSWORD={value}")),
        "after restart + rollback: {env:?}"
    );
    let log = daemon.stop();
    assert!(!log.contains(&value));
    assert!(!log.contains("created the secrets key"));
}
