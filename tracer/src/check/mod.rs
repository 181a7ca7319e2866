//! `redis-memtrace check`: can this host (and this Redis) be traced, and is it set up
//! the way Redis wants? One line per check, pass/warn/fail with a one-line fix.
//!
//! The verdicts are pure functions of facts ([`verdicts`]); [`run`] gathers the facts.

pub mod facts;
pub mod verdicts;

use std::io::{IsTerminal, Write};

pub use verdicts::{Check, Level};

/// Runs every check, prints one line each, and returns the worst level.
pub fn run(pid: Option<u32>, redis: Option<&str>) -> anyhow::Result<Level> {
    let checks = facts::gather(pid, redis)?;
    let color = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    for c in &checks {
        writeln!(out, "{}", c.render(color))?;
    }
    let worst = checks.iter().map(|c| c.level).max().unwrap_or(Level::Pass);
    let count = |l: Level| checks.iter().filter(|c| c.level == l).count();
    writeln!(
        out,
        "{} checks: {} pass, {} warn, {} fail",
        checks.len(),
        count(Level::Pass),
        count(Level::Warn),
        count(Level::Fail)
    )?;
    Ok(worst)
}
