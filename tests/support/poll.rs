//! Bounded polling: every wait in a test has a deadline, and none sleeps longer than it must.

use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it returns true (→ true) or `within` passes (→ false).
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Like [`eventually`], and panics naming `what` when `within` passes.
pub async fn expect_within(within: Duration, what: &str, f: impl FnMut() -> bool) {
    assert!(eventually(within, f).await, "timed out: {what}");
}

/// Blocking [`eventually`] for tests without a runtime; panics when `within` passes.
pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("condition not met within {within:?}");
}

/// Polls the async `f` every 100 ms until it returns `Some` or `deadline` passes.
pub async fn wait_for<T, F, Fut>(deadline: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
