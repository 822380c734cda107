//! `berthd` as a child process on fixed loopback ports (the same across restarts and upgrades,
//! so clients keep using them): its config file and data dir, control commands (`status`,
//! `upgrade`, `token create`, `backup`), its log lines (every successor writes to the same
//! pipe), the API with a token, a systemd credentials directory, and stopping it. The upgrade,
//! store-recovery and secrets drills of `tests/lifecycle/upgrade_race.rs`,
//! `tests/deploy/upgrade_deploy.rs`, `tests/deploy/store_recovery.rs` and
//! `tests/deploy/secrets.rs` share it.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::net::free_port;
use super::process::{spawn_berthd, BERTHD};

pub struct BerthdProcess {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub http: SocketAddr,
    pub api: SocketAddr,
    /// A token from [`BerthdProcess::new_token`] (empty until then).
    pub token: String,
    /// The process this test spawned (after an upgrade, no longer the one serving).
    pub child: Option<Child>,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Timeout of one [`BerthdProcess::api_call`] (30 s unless a test sets it).
    pub api_timeout: Duration,
    /// Removed after berthd is killed (the containers of the apps the test deployed).
    pub cleanup: Vec<super::docker::Cleanup>,
    /// `CREDENTIALS_DIRECTORY` of the next spawn (systemd's `LoadCredential=`); none unless set.
    pub credentials: Option<PathBuf>,
    /// The thread collecting the spawned process's log lines.
    reader: Option<JoinHandle<()>>,
}

impl BerthdProcess {
    /// Writes `berthd.yaml` (not started): HTTP and API on loopback ports free now, data in
    /// `DIR/data`, no access log, then `extra`: more top-level YAML (`proxy:`, `deploy:`,
    /// `routes:`), each line ending in a newline.
    pub fn new(extra: &str) -> BerthdProcess {
        BerthdProcess::with_log("  access_log: false\n", extra)
    }

    /// As [`BerthdProcess::new`], with `log` as the lines under `log:` (e.g.
    /// `"  level: trace\n  access_log: true\n"`).
    pub fn with_log(log: &str, extra: &str) -> BerthdProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.path().join("berthd.yaml");
        std::fs::write(
            &config,
            format!(
                "http:\n  listen: {http}\napi:\n  listen: {api}\ndata_dir: {}\nlog:\n{log}{extra}",
                dir.path().join("data").display()
            ),
        )
        .expect("write berthd.yaml");
        BerthdProcess {
            dir,
            config,
            http,
            api,
            token: String::new(),
            child: None,
            logs: Arc::new(Mutex::new(Vec::new())),
            api_timeout: Duration::from_secs(30),
            cleanup: Vec::new(),
            credentials: None,
            reader: None,
        }
    }

    /// The data dir (`berth.db`, `control.sock`).
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `berthd --config C ARGS`: (success, stdout + stderr).
    pub fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(super::process::berthd_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("berthd runs");
        let (code, text) = super::cli::text(out);
        (code == 0, text)
    }

    /// `berthd token create` into [`BerthdProcess::token`] (works next to a running daemon,
    /// and after a store loss).
    pub fn new_token(&mut self) {
        self.token = self.create_token(&["--name", "test"]);
    }

    /// `berthd token create ARGS` (`--name`, `--scope`): the token it prints.
    pub fn create_token(&self, args: &[&str]) -> String {
        let out = Command::new(super::process::berthd_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["token", "create"])
            .args(args)
            .output()
            .expect("berthd runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Spawns berthd (log lines of an earlier process cleared); returns when the process is
    /// spawned, not when it serves.
    pub fn spawn(&mut self) -> Instant {
        self.logs.lock().unwrap().clear();
        let t0 = Instant::now();
        let (child, reader) = spawn_berthd(&self.config, &self.logs, self.credentials.as_deref());
        self.child = Some(child);
        self.reader = Some(reader);
        t0
    }

    /// Spawns berthd and waits (20 s at most) until the API and the proxy accept connections
    /// and the control socket exists.
    pub fn start(&mut self) {
        self.start_within(Duration::from_secs(20));
    }

    /// [`BerthdProcess::start`] with another bound.
    pub fn start_within(&mut self, bound: Duration) {
        self.spawn();
        let deadline = Instant::now() + bound;
        while TcpStream::connect(self.api).is_err()
            || TcpStream::connect(self.http).is_err()
            || !self.data().join("control.sock").exists()
        {
            assert!(
                Instant::now() < deadline,
                "berthd did not start: {:?}",
                self.logs.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid `berthd status` reports as serving.
    pub fn current_pid(&self) -> Option<u32> {
        let (ok, out) = self.ctl(&["status"]);
        if !ok {
            return None;
        }
        out.split_whitespace().nth(1)?.parse().ok()
    }

    /// Runs `berthd upgrade` and returns the new pid (`new process PID is serving`).
    pub fn upgrade(&self) -> u32 {
        let (ok, out) = self.ctl(&["upgrade"]);
        assert!(ok, "upgrade: {out}\n{:?}", {
            let logs = self.logs.lock().unwrap();
            logs.iter().rev().take(20).cloned().collect::<Vec<_>>()
        });
        out.split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out:?}"))
    }

    /// SIGKILL to the spawned process (no upgrade in between).
    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM to the spawned process; panics if it has not exited within 30 s.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child, which has not been waited for.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("berthd did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGTERM, as [`BerthdProcess::terminate`]; then, once its last line is read (5 s at
    /// most), the process's whole log.
    pub fn stop(&mut self) -> String {
        self.terminate();
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        self.log_text()
    }

    /// The log lines of the process spawned last (and its successors), one per line.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits (60 s at most) for a log line whose message is `message` (e.g. "reconcile done":
    /// until then an app the store knows refuses deploys with 409 `reconcile after start`).
    pub fn wait_log(&self, message: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self.logs.lock().unwrap().iter().any(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["fields"]["message"] == message)
            });
            if found {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {message:?} in the log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The first log line containing `needle`.
    pub fn logged(&self, needle: &str) -> Option<String> {
        self.log_lines(needle).into_iter().next()
    }

    /// An API request with the token; (status, JSON body or `null`).
    pub async fn api_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("http://{}{path}", self.api))
            .bearer_auth(&self.token)
            .timeout(self.api_timeout);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("API answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET `/` for `host` through the proxy with `client`: (status, trimmed body) or the
    /// transport error.
    pub async fn get(
        &self,
        client: &reqwest::Client,
        host: &str,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let resp = client
            .get(format!("http://{}/", self.http))
            .header("host", host)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let s = resp.status().as_u16();
        Ok((s, resp.text().await.unwrap_or_default().trim().to_string()))
    }
}

impl Drop for BerthdProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            if let Some(pid) = self.current_pid() {
                // SAFETY: plain kill(2) on the pid the daemon reported as itself.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
