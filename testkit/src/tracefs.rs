//! A stand-in tracefs, to run the tracer as on a kernel that lacks some tracepoints.

use std::path::Path;

/// A stand-in tracefs (for `MEMTRACE_TRACEFS`) holding the real format files of every
/// category the tracer reads, minus the `hidden` tracepoints (`"kmem/rss_stat"`): a
/// kernel without them, as far as the tracer can tell.
pub fn tracefs_without(hidden: &[&str]) -> tempfile::TempDir {
    let real = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .expect("tracefs mounted (cargo xtask setup mounts it)");
    let fake = tempfile::tempdir().unwrap();
    for category in ["exceptions", "sched", "task", "kmem", "vmscan"] {
        let dir = real.join("events").join(category);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let format = entry.path().join("format");
            if hidden.contains(&format!("{category}/{name}").as_str()) || !format.is_file() {
                continue;
            }
            let to = fake.path().join("events").join(category).join(&name);
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&format, to.join("format")).unwrap();
        }
    }
    fake
}
