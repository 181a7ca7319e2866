//! The clocks a test compares a timeline with.

use std::time::{SystemTime, UNIX_EPOCH};

/// CLOCK_MONOTONIC in ns: the clock of every `ts_ns` in a timeline (the kernel stamps
/// faults with it).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock time in ms since the Unix epoch (Redis's `PEXPIREAT` unit).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
