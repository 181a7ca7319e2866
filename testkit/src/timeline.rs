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
/// `latest_fork_usec`: within 200 µs or 25%, once what Redis's interval holds beyond the
/// call is allowed for when Redis's number is the larger: the caller's faults that began
/// after the call returned and inside Redis's interval (Redis reads its clock again only
/// after its first writes in the parent, `stat_total_forks`, copy-on-write faults), and
/// `waited` (a [`RunDelay`] of the server's main thread over a window holding the fork):
/// the time the thread spent ready but waiting for a CPU, as when the new child runs on
/// a small machine. `fork()` holds none of that. `Ok` holds the numbers, for the test's
/// output.
/// Time a thread spent ready to run but waiting for a CPU (`run_delay`, the second field
/// of `/proc/PID/task/TID/schedstat`) since [`RunDelay::start`], read again when asked.
pub struct RunDelay {
    path: String,
    start_ns: u64,
    end_ns: Option<u64>,
}

impl RunDelay {
    /// Starts counting for the main thread of `pid` (tid = pid).
    pub fn start(pid: u32) -> RunDelay {
        let path = format!("/proc/{pid}/task/{pid}/schedstat");
        let start_ns = run_delay_ns(&path);
        RunDelay {
            path,
            start_ns,
            end_ns: None,
        }
    }

    /// Stops counting: later reads return the wait up to now.
    pub fn stop(&mut self) {
        self.end_ns = Some(run_delay_ns(&self.path));
    }

    /// Microseconds waited between start and stop (or now, when not stopped).
    pub fn waited_us(&self) -> u64 {
        let end = self.end_ns.unwrap_or_else(|| run_delay_ns(&self.path));
        end.saturating_sub(self.start_ns) / 1000
    }
}

/// `run_delay` of a schedstat file, ns; panics when the kernel has none (the allowance
/// would silently be 0 otherwise).
fn run_delay_ns(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{path}: no run_delay in {text:?}"))
}

pub fn check_fork_time(
    t: &Value,
    epoch: &Value,
    latest_fork_usec: u64,
    waited: &RunDelay,
) -> Result<String, String> {
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
    let waited_us = waited.waited_us();
    let diff = call_us.abs_diff(latest_fork_usec);
    let allowed = 200
        + if call_us <= latest_fork_usec {
            after_us + waited_us
        } else {
            0
        };
    let numbers = format!(
        "fork() call {call_us} us vs latest_fork_usec {latest_fork_usec} us \
         (the caller's faults after the call: {after_us} us; its main thread waited for a \
         CPU {waited_us} us around the fork)"
    );
    if diff <= allowed || diff * 4 <= latest_fork_usec {
        Ok(numbers)
    } else {
        Err(numbers)
    }
}
