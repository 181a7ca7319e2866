//! `redis-memtrace check`: preflight of the host (and a Redis server).

/// Overall result of a check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Everything needed is there.
    Pass,
    /// Tracing works, but something is degraded or risky.
    Warn,
    /// Tracing cannot work.
    Fail,
}

/// Runs every check, prints one line each, and returns the worst level.
pub fn run(pid: Option<u32>, redis: Option<&str>) -> anyhow::Result<Level> {
    let _ = (pid, redis);
    anyhow::bail!("check is being written")
}
