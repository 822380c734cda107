//! `berth deploy` end to end against a real berthd and dockerd: the upload progress bar on a
//! terminal (under `script`, a real pty: bytes, rate and ETA redrawn in place, then a final
//! summary line) and its absence without one; and the `build:` path (local `docker build`
//! from a locally built base image, `docker save`, upload, deploy, served). Gated on
//! BERTH_SYSTEM_TESTS=1.

use crate::support;

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::docker::{deploy_config, prepare, skip, Cleanup, IMG_V1};

/// A 64 MiB image on top of the busybox test image: big enough that the upload takes several
/// frames of the progress bar. Built locally (never pulled), once per machine.
const IMG_PADDED: &str = "berth-test-demo:pad64";

struct World {
    running: berth::daemon::Running,
    app: String,
    work: tempfile::TempDir,
    cfg: std::path::PathBuf,
    _cleanup: Cleanup,
    _data: tempfile::TempDir,
}

fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

impl World {
    async fn start(name: &str) -> World {
        prepare();
        let data = tempfile::tempdir().unwrap();
        let app = format!("{name}-{}", std::process::id());
        let network = format!("berth-t-{app}");
        let c = deploy_config(data.path(), &network);
        let running = berth::daemon::start(c, None).await.expect("daemon starts");
        let (_, token) = running.registry.store().create_token("test").unwrap();
        let work = tempfile::tempdir().unwrap();
        let cfg = work.path().join("cli.yaml");
        let w = World {
            running,
            app: app.clone(),
            work,
            cfg,
            _cleanup: Cleanup { app, network },
            _data: data,
        };
        let url = format!("http://{}", w.running.api_addr);
        let (code, out) = w
            .berth(&["server", "add", "local", &url, "--token", &token])
            .await;
        assert_eq!(code, 0, "{out}");
        w
    }

    fn host(&self) -> String {
        format!("{}.test", self.app)
    }

    fn command(&self, args: &[&str]) -> Command {
        support::cli::command(&self.cfg, self.work.path(), args)
    }

    /// Runs `berth` with pipes (no terminal): (exit code, stdout + stderr).
    async fn berth(&self, args: &[&str]) -> (i32, String) {
        support::cli::run(self.command(args)).await
    }

    fn write_app_file(&self, source: &str) {
        let (dir, host) = (self.work.path(), self.host());
        support::docker::write_app_file(dir, &self.app, source, &host, 1, "");
    }

    async fn proxied(&self, path: &str) -> (u16, String) {
        let resp = reqwest::Client::new()
            .get(format!("http://{}{path}", self.running.http_addr))
            .header("host", self.host())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        (s, resp.text().await.unwrap_or_default())
    }
}

/// `docker build` from a context directory, offline (the base image is local).
fn docker_build(tag: &str, dockerfile: &str, files: &[(&str, &[u8])]) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, data) in files {
        std::fs::write(ctx.path().join(name), data).unwrap();
    }
    let (ok, out) = sh(&format!(
        "docker build --pull=false -t {tag} {}",
        ctx.path().display()
    ));
    assert!(ok, "docker build {tag}: {out}");
}

fn padded_image() {
    if sh(&format!(
        "docker image inspect {IMG_PADDED} >/dev/null 2>&1"
    ))
    .0
    {
        return;
    }
    // Incompressible, so nothing along the way makes the upload smaller.
    let mut pad = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in pad.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    docker_build(
        IMG_PADDED,
        &format!("FROM {IMG_V1}\nCOPY pad.bin /pad.bin\n"),
        &[("pad.bin", &pad)],
    );
}

/// Runs `cmd` on a pseudo-terminal with `script` (util-linux) and returns its raw output.
fn on_a_tty(cmd: &Command) -> (i32, Vec<u8>) {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = String::from("stty cols 120 rows 40 2>/dev/null; exec");
    line.push(' ');
    line.push_str(&quote(&cmd.get_program().to_string_lossy()));
    for a in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(&a.to_string_lossy()));
    }
    let mut script = Command::new("script");
    script.args(["-qfec", &line, "/dev/null"]);
    if let Some(dir) = cmd.get_current_dir() {
        script.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    script.env("TERM", "xterm-256color");
    script.env_remove("NO_COLOR");
    let out = script
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    (out.status.code().unwrap_or(-1), out.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn upload_progress_bar_on_a_tty_and_not_without() {
    if skip() {
        return;
    }
    let w = World::start("tty").await;
    padded_image();
    let tar = w.work.path().join("image.tar");
    let (ok, out) = sh(&format!("docker save -o {} {IMG_PADDED}", tar.display()));
    assert!(ok, "{out}");
    let size = std::fs::metadata(&tar).unwrap().len();
    assert!(size > 60 << 20, "{size}");
    w.write_app_file(&format!("image: {IMG_PADDED}"));

    // On a terminal: the bar is drawn and redrawn in place, then left as a summary line.
    let cmd = w.command(&["deploy", "--image-tar", tar.to_str().unwrap()]);
    let t = Instant::now();
    let (code, raw) = tokio::task::spawn_blocking(move || on_a_tty(&cmd))
        .await
        .unwrap();
    let elapsed = t.elapsed();
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(code, 0, "{text:?}");
    let frames = text.matches("uploading [").count();
    println!(
        "cli_deploy: tty deploy of {} MiB in {elapsed:?}: {frames} progress frames, {} bytes of output",
        size >> 20,
        raw.len()
    );
    let tail: String = {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(900)..].iter().collect()
    };
    println!("cli_deploy: end of the terminal output: {tail:?}");
    assert!(
        frames >= 2,
        "the bar is redrawn while uploading ({frames} frames): {text:?}"
    );
    // Redrawn in place: carriage returns / cursor movement and line clearing, not new lines.
    assert!(
        text.contains('\r') && text.contains("\x1b["),
        "redraws use CR/ANSI sequences: {text:?}"
    );
    // Bytes so far / total, rate, ETA.
    let total_mib = format!("{:.2} MiB", size as f64 / (1u64 << 20) as f64);
    assert!(
        text.contains(&format!("/{total_mib}")),
        "{total_mib}: {text:?}"
    );
    assert!(text.contains("MiB/s") || text.contains("KiB/s"), "{text:?}");
    assert!(text.contains("ETA "), "{text:?}");
    // Finished: a full bar frame or the final summary with the total, then the deploy.
    assert!(
        text.contains(&format!("{total_mib}/{total_mib}")),
        "the bar reached the total: {text:?}"
    );
    // The summary line is printed above the bar (indicatif pads each line to the terminal
    // width, 120 columns here, instead of ending it with a newline)...
    let summary = format!("local uploaded {total_mib} in ");
    let at = text.find(&summary).expect("summary line");
    let line = &text[at..];
    let line = &line[..line.find(['\r', '\x1b']).unwrap_or(line.len())];
    assert!(line.trim_end().ends_with("MiB/s)"), "{line:?}");
    assert_eq!(line.chars().count(), 120, "padded to the width: {line:?}");
    // ...then the bar is cleared (CR + erase line) and the deployment's stages take its
    // place, one line each, ending in success.
    let last_frame = text.rfind("uploading [").unwrap();
    assert!(last_frame < text.rfind("\r\x1b[2K").unwrap(), "bar cleared");
    let deploying = text.find("deploying ").expect("deploy stages follow");
    assert!(deploying > at && deploying > last_frame, "{text:?}");
    assert!(
        text[deploying..].contains("\r\n") && text[deploying..].contains("succeeded"),
        "{text:?}"
    );
    assert_eq!(w.proxied("/").await, (200, "v1\n".to_string()));

    // Without a terminal: one plain line, no bar, no escape sequences, no carriage returns.
    let (code, out) = w
        .berth(&["deploy", "--image-tar", tar.to_str().unwrap()])
        .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("uploaded {size} bytes")), "{out}");
    assert!(!out.contains("uploading ["), "{out:?}");
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert!(out.contains("succeeded"), "{out}");

    let World { running, .. } = w;
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
async fn deploy_builds_with_the_local_docker_build() {
    if skip() {
        return;
    }
    let w = World::start("build").await;
    let marker = format!("built by berth deploy {}\n", w.app);
    let dir = w.work.path();
    std::fs::create_dir_all(dir.join("site")).unwrap();
    std::fs::write(dir.join("site/index.html"), &marker).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {IMG_V1}\nCOPY site/index.html /www/index.html\n"),
    )
    .unwrap();
    w.write_app_file("build:\n  context: .\n  dockerfile: Dockerfile");

    let t = Instant::now();
    let (code, out) = w.berth(&["deploy"]).await;
    println!("cli_deploy: berth deploy with build: {:?}", t.elapsed());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("with docker build"), "{out}");
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(w.proxied("/").await, (200, marker.clone()));
    // The image that serves is the one just built, tagged for the app.
    let (ok, images) = sh(&format!(
        "docker images --format '{{{{.Repository}}}}:{{{{.Tag}}}}' {}",
        w.app
    ));
    assert!(ok, "{images}");
    assert!(images.contains(&format!("{}:berth-", w.app)), "{images}");
    // The temporary `docker save` tar is gone.
    let leftover = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("berth-{}-", w.app))
        });
    assert!(!leftover, "temporary image tar removed");
    // A broken Dockerfile fails before anything is uploaded, with docker's exit status.
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM berth-test-demo:v1\nCOPY missing /x\n",
    )
    .unwrap();
    let (code, out) = w.berth(&["deploy"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("docker build failed"), "{out}");
    assert_eq!(w.proxied("/").await, (200, marker));

    let World { running, .. } = w;
    running.shutdown().await;
}
