//! Snapshot tests of the `berth` CLI's help texts and of its offline behaviour (app file
//! errors, server bookkeeping, completions, exit codes). `BERTH_UPDATE_SNAPSHOTS=1` rewrites
//! the snapshots in tests/snapshots/ after an intended change.

use std::path::{Path, PathBuf};
use std::process::Output;

fn berth(cfg: &Path, cwd: &Path, args: &[&str]) -> Output {
    crate::support::cli::command(cfg, cwd, args)
        .env("COLUMNS", "100")
        .output()
        .expect("berth runs")
}

fn snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("BERTH_UPDATE_SNAPSHOTS").is_some() || !path.exists() {
        std::fs::write(&path, actual).expect("write snapshot");
        if std::env::var_os("BERTH_UPDATE_SNAPSHOTS").is_none() {
            panic!("snapshot {name} did not exist; wrote it, review and commit it");
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).expect("read snapshot");
    assert_eq!(
        actual, expected,
        "snapshot {name} changed (BERTH_UPDATE_SNAPSHOTS=1 to accept)"
    );
}

#[test]
fn help_texts_match_their_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cli.yaml");
    for (name, args) in [
        ("help", vec!["--help"]),
        ("help-deploy", vec!["deploy", "--help"]),
        ("help-server-add", vec!["server", "add", "--help"]),
        ("help-backends", vec!["backends", "--help"]),
        ("help-certs", vec!["certs", "--help"]),
    ] {
        let out = berth(&cfg, dir.path(), &args);
        assert!(out.status.success(), "{name}");
        snapshot(name, &String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn offline_commands_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cli.yaml");

    // No server configured: usage error (2) with a hint.
    let out = berth(&cfg, dir.path(), &["apps"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("berth server add"));

    // Plain HTTP to a non-loopback host is refused before any token is sent.
    let out = berth(
        &cfg,
        dir.path(),
        &[
            "server",
            "add",
            "prod",
            "http://10.1.2.3:9922",
            "--token",
            "x",
            "--no-check",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain HTTP"));

    // Saved with --no-check; the file is 0600 and lists the server.
    let out = berth(
        &cfg,
        dir.path(),
        &[
            "server",
            "add",
            "local",
            "http://127.0.0.1:1",
            "--token",
            "t0k",
            "--no-check",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let out = berth(&cfg, dir.path(), &["server", "list"]);
    snapshot("server-list", &String::from_utf8_lossy(&out.stdout));
    let out = berth(&cfg, dir.path(), &["server", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "local");
    assert_eq!(v[0]["current"], true);

    // Unreachable server: exit code 3 and the URL in the message.
    let out = berth(&cfg, dir.path(), &["apps"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"));

    // berth init writes a file that parses; a broken file names file, line and key.
    let out = berth(&cfg, dir.path(), &["init", "--name", "shop"]);
    assert!(out.status.success());
    assert!(dir.path().join("berth.yaml").exists());
    let out = berth(&cfg, dir.path(), &["init"]);
    assert_eq!(out.status.code(), Some(2), "refuses to overwrite");
    std::fs::write(
        dir.path().join("berth.yaml"),
        "name: shop\nimage: shop:1\ndomains: [shop.test]\nreplicas: lots\n",
    )
    .unwrap();
    let out = berth(&cfg, dir.path(), &["deploy"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("berth.yaml:4: replicas:"), "{err}");

    // Completions for every shell.
    for shell in ["bash", "zsh", "fish"] {
        let out = berth(&cfg, dir.path(), &["completions", shell]);
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("deploy"),
            "{shell}"
        );
    }

    // server use / remove.
    let out = berth(&cfg, dir.path(), &["server", "use", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let out = berth(&cfg, dir.path(), &["server", "remove", "local"]);
    assert!(out.status.success());
}

/// The token never leaves over plain HTTP to a non-loopback name, whichever way the URL
/// arrives (flag, settings file, environment): a listener that the name actually leads to
/// (`BERTH_RESOLVE` points it at 127.0.0.1) sees no connection at all.
#[test]
fn no_token_over_plain_http_to_non_loopback_names() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cli.yaml");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("http://api.example.test:{port}");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = crate::support::cli::command(&cfg, dir.path(), args);
        cmd.env("BERTH_RESOLVE", "api.example.test=127.0.0.1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("berth runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // 1. `server add` with the check (it would contact the server): refused, nothing saved.
    let (code, err) = run(&["server", "add", "p", &url, "--token", "s3cret"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("plain HTTP"), "{err}");
    assert!(!cfg.exists());
    // 2. A hand-edited settings file with such a URL.
    std::fs::write(
        &cfg,
        format!("current: p\nservers:\n  p:\n    url: {url}\n    token: s3cret\n"),
    )
    .unwrap();
    let (code, err) = run(&["apps"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("plain HTTP"), "{err}");
    // 3. The environment only (CI).
    std::fs::remove_file(&cfg).unwrap();
    let (code, err) = run(
        &["routes", "list"],
        &[("BERTH_URL", url.as_str()), ("BERTH_TOKEN", "s3cret")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("plain HTTP"), "{err}");
    // 4. deploy resolves every target the same way.
    std::fs::write(
        dir.path().join("berth.yaml"),
        "name: shop\nimage: shop:1\ndomains: [shop.test]\n",
    )
    .unwrap();
    let (code, err) = run(
        &["deploy"],
        &[("BERTH_URL", url.as_str()), ("BERTH_TOKEN", "s3cret")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("plain HTTP"), "{err}");
    // Nobody ever connected.
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the plain-HTTP listener: {other:?}"),
    }
    // Plain HTTP to a loopback address is allowed (and does connect): the listener takes
    // one connection and closes it, so the CLI reports an unreachable server (3).
    listener.set_nonblocking(false).unwrap();
    let accepted = std::thread::spawn(move || listener.accept().map(|_| ()).is_ok());
    let (code, err) = run(
        &["routes", "list"],
        &[
            ("BERTH_URL", &format!("http://127.0.0.1:{port}")),
            ("BERTH_TOKEN", "s3cret"),
        ],
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(accepted.join().unwrap(), "loopback is contacted");
}

/// `berth … | head -1`: a reader that closes the pipe early ends berth quietly (exit 0), never
/// with a panic on EPIPE. The read end is closed before berth writes, so the write must fail.
#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cli.yaml");
    for i in 0..3 {
        let name = format!("s{i}");
        let out = berth(
            &cfg,
            dir.path(),
            &[
                "server",
                "add",
                &name,
                "http://127.0.0.1:9",
                "--token",
                "t",
                "--no-check",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for args in [&["server", "list"][..], &["server", "list", "--json"][..]] {
        let mut child = crate::support::cli::command(&cfg, dir.path(), args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("berth runs");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("berth ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
