//! Reading a recorded timeline (`docs/timeline.md`) and picking its faults.

use std::{collections::BTreeMap, path::Path};

use serde_json::Value;

/// Parses a timeline file.
///
/// With `MEMTRACE_KEEP_TIMELINES=DIR` set, a copy is kept in DIR for a look after the
/// test (a debugging aid: nothing reads it back).
pub fn read_timeline(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Some(dir) = std::env::var_os("MEMTRACE_KEEP_TIMELINES") {
        static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "{}-{n}-{}",
            std::process::id(),
            path.file_name()
                .map_or("timeline".into(), |n| n.to_string_lossy())
        );
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(Path::new(&dir).join(name), &bytes);
    }
    serde_json::from_slice(&bytes).expect("timeline is valid JSON")
}

/// Whether an event is a fault (it has one of the fault kinds).
pub fn is_fault(e: &Value) -> bool {
    matches!(
        e["kind"].as_str(),
        Some("cow_copy" | "wp_reuse" | "swap_in" | "first_touch" | "other")
    )
}

/// Every fault of a timeline.
pub fn faults(t: &Value) -> Vec<&Value> {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| is_fault(e))
        .collect()
}

/// Parent faults of epoch `epoch`, optionally only those stamped inside `[from, to)`.
pub fn parent_faults(t: &Value, epoch: u64, window: Option<(u64, u64)>) -> Vec<&Value> {
    faults(t)
        .into_iter()
        .filter(|f| f["role"] == "parent" && f["epoch"] == epoch)
        .filter(|f| {
            window.is_none_or(|(a, b)| {
                let ts = f["ts_ns"].as_u64().unwrap();
                ts >= a && ts < b
            })
        })
        .collect()
}

/// Whether a fault's activity is a command (`SET`, `CONFIG`, `GEORADIUS_RO` ...) rather
/// than a phase (`active-expire`) or nothing.
pub fn is_command(f: &Value) -> bool {
    f["activity"].as_str().is_some_and(|a| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "_-|".contains(c))
    })
}

/// How many of `fs` have `activity`.
pub fn count_activity(fs: &[&Value], activity: &str) -> usize {
    fs.iter().filter(|f| f["activity"] == activity).count()
}

/// `activity -> faults` for diagnostics.
pub fn by_activity(fs: &[&Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in fs {
        let a = f["activity"].as_str().unwrap_or("(none)").to_string();
        *m.entry(a).or_insert(0) += 1;
    }
    m
}

/// Checks the `fork()` call the tracer timed for `epoch` against Redis's
/// `latest_fork_usec`: within 200 µs or 25%, once the caller's faults that began after
/// the call returned and inside Redis's interval are allowed for. Redis reads its clock
/// again only after its first writes in the parent (`stat_total_forks`), and those are
/// copy-on-write faults, slow when the parent waits for the CPU while the new child
/// runs; `fork()` holds none of that. `Ok` holds the numbers, for the test's output.
pub fn check_fork_time(t: &Value, epoch: &Value, latest_fork_usec: u64) -> Result<String, String> {
    let call = t["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["kind"] == "fork_return" && e["epoch"] == epoch["id"])
        .ok_or_else(|| format!("no fork_return of epoch {}", epoch["id"]))?;
    let n = |v: &Value, k: &str| v[k].as_u64().ok_or_else(|| format!("no {k} in {v}"));
    let (entry, duration) = (n(call, "ts_ns")?, n(call, "duration_ns")?);
    let call_us = n(epoch, "fork_call_ns")? / 1000;
    let end = entry + duration;
    // The caller's faults after fork() returned, up to where Redis's interval ends at
    // the latest (it began before the call).
    let after_us: u64 = faults(t)
        .into_iter()
        .filter(|f| f["tid"] == call["tid"] && f["pid"] == call["pid"])
        .filter(|f| {
            f["ts_ns"]
                .as_u64()
                .is_some_and(|ts| ts >= end && ts < entry + latest_fork_usec * 1000)
        })
        .map(|f| f["latency_ns"].as_u64().unwrap_or(0) / 1000)
        .sum();
    let diff = call_us.abs_diff(latest_fork_usec);
    let allowed = 200
        + if call_us <= latest_fork_usec {
            after_us
        } else {
            0
        };
    let numbers = format!(
        "fork() call {call_us} us vs latest_fork_usec {latest_fork_usec} us \
         (the caller's faults after the call: {after_us} us)"
    );
    if diff <= allowed || diff * 4 <= latest_fork_usec {
        Ok(numbers)
    } else {
        Err(numbers)
    }
}
