//! Snapshot tests of the `berth` CLI's help texts and of its offline behaviour (app file
//! errors, server bookkeeping, completions, exit codes). `BERTH_UPDATE_SNAPSHOTS=1` rewrites
//! the snapshots in tests/snapshots/ after an intended change.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn berth(cfg: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(BERTH)
        .args(args)
        .current_dir(cwd)
        .env("BERTH_CLI_CONFIG", cfg)
        .env("NO_COLOR", "1")
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_URL")
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
