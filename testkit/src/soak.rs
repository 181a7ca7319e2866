//! The soak tests' loop: a BGSAVE every few seconds while a load runs, watching the
//! tracer's memory.

use std::time::{Duration, Instant};

use crate::{Server, process::rss_bytes};

/// At most one BGSAVE per this long, and only when none is running.
pub const BGSAVE_EVERY: Duration = Duration::from_secs(5);

/// How long a soak runs: `MEMTRACE_SOAK_SECS` (`cargo xtask soak` sets it), else 60 s.
pub fn soak_seconds() -> u64 {
    std::env::var("MEMTRACE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

/// What [`periodic_bgsaves`] saw.
pub struct SoakStats {
    /// BGSAVEs started.
    pub bgsaves: u64,
    /// The tracer's largest RSS sampled, bytes.
    pub max_rss: u64,
}

/// For `length`: a BGSAVE of `server` every [`BGSAVE_EVERY`] when none is running, and
/// the RSS of process `tracer` every 250 ms. Returns without waiting for the last BGSAVE.
pub fn periodic_bgsaves(server: &Server, tracer: u32, length: Duration) -> SoakStats {
    let mut con = server.client();
    let started = Instant::now();
    let mut stats = SoakStats {
        bgsaves: 0,
        max_rss: 0,
    };
    let mut last_save = Instant::now() - 2 * BGSAVE_EVERY;
    while started.elapsed() < length {
        stats.max_rss = stats.max_rss.max(rss_bytes(tracer));
        let saving = server.info_u64("persistence", "rdb_bgsave_in_progress");
        if saving == 0 && last_save.elapsed() >= BGSAVE_EVERY {
            let r: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
            assert_eq!(r, "Background saving started");
            stats.bgsaves += 1;
            last_save = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stats
}
