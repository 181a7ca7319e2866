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
