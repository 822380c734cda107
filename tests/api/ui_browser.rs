//! The status page in a real browser: runs tests/ui/run.sh (headless Debian chromium driven by
//! playwright-core) against the berthd binary cargo just built, with the real Docker deploy
//! engine (an app deployed, shown, rolled back from the page) and a real, failing ACME loop
//! (certificate retried from the page). Needs chromium, node and a running dockerd, so it runs
//! only with BERTH_SYSTEM_TESTS=1.

use std::process::Command;
use std::time::Instant;

#[test]
#[cfg_attr(
    not(berth_system_tests),
    ignore = "system test: set BERTH_SYSTEM_TESTS=1"
)]
fn status_page_in_headless_chromium() {
    if crate::support::system_tests_off("chromium, node and dockerd") {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/run.sh");
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(script)
        .env("BERTHD", env!("CARGO_BIN_EXE_berthd"))
        .status()
        .expect("run tests/ui/run.sh");
    assert!(
        status.success(),
        "tests/ui/run.sh failed ({status}) after {:?}; screenshots in tests/ui/artifacts/",
        started.elapsed()
    );
}
