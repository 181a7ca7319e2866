//! What the Redis benches (`bench-overhead`, `bench-fork`) share besides
//! `redis-benchmark` and Ctrl-C: the tracer attached to a pid and the totals of its
//! timeline, the scratch folder for timelines, medians, the kernel's name, the JSON
//! report.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;
use testkit::{Recording, recording::Launch};

use crate::root;

/// `redis-memtrace record --pid PID -o OUT EXTRA...`, returned once it printed `ready`
/// (a `testkit::recording` marker); SIGINTed (then SIGKILLed) when dropped.
pub fn attach(pid: u32, out: &Path, ready: &str, extra: &[&str]) -> Result<Recording> {
    let pid = pid.to_string();
    Ok(Recording::launch(&Launch {
        target: &["--pid", &pid],
        out,
        extra,
        ready,
        echo: false,
    })?)
}

/// The part of a timeline the benches read (`docs/timeline.md`). Typed rather than a
/// `serde_json::Value`: serde then skips `events` without building it, and a timeline
/// of a copy-on-write-heavy window is tens of MB.
#[derive(Deserialize)]
struct TimelineTail {
    summary: TimelineSummary,
    lost_events: u64,
}

#[derive(Deserialize)]
struct TimelineSummary {
    events_received: u64,
    #[serde(default)]
    faults: BTreeMap<String, u64>,
}

/// A traced run's totals, from its timeline.
pub struct TraceTotals {
    pub events: u64,
    /// Faults of every kind.
    pub faults: u64,
    pub lost: u64,
}

/// SIGINTs the tracer, waits for a clean exit, and reads the timeline's totals; then
/// removes the timeline, so that the next traced run cannot read a stale one.
pub fn stop_and_read(tracer: Recording, out: &Path) -> Result<TraceTotals> {
    tracer.try_stop()?;
    let bytes =
        std::fs::read(out).with_context(|| format!("reading the timeline {}", out.display()))?;
    let _ = std::fs::remove_file(out);
    let t: TimelineTail = serde_json::from_slice(&bytes).context("the timeline has no summary")?;
    Ok(TraceTotals {
        events: t.summary.events_received,
        faults: t.summary.faults.values().sum(),
        lost: t.lost_events,
    })
}

/// A temporary folder for timelines, removed when dropped. In `/dev/shm` when there is
/// one: timelines are large, and writing them to disk would load the machine the bench
/// measures.
pub fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm").to_path_buf()
    } else {
        std::env::temp_dir()
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .with_context(|| format!("creating a folder in {}", base.display()))
}

/// The median; NaN for no values. Medians rather than means: one run disturbed by the
/// rest of a noisy machine should not move the result.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The running kernel's release, `?` if unreadable.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Writes `report` to `target/NAME`, where it stays for a look after the run, and says so.
pub fn write_report(name: &str, report: &Value) -> Result<()> {
    let path = root().join("target").join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
