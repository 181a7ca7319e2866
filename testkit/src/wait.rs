//! Polling for a condition.

use std::time::{Duration, Instant};

/// Polls `cond` every `every` until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}
