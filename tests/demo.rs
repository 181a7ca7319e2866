//! The main job, `cargo xtask demo`, run as a user runs it, and its outputs checked: the
//! three files are written and no key carries more copy-on-write pages than its writes
//! can explain.
//!
//! Needs root (the demo records a real Redis).

use std::{path::Path, process::Command};

use testkit::{read_timeline, require_root};

/// The demo's workload (xtask/src/demo.rs): 60,000 SETs of 1 KiB on random keys among
/// 40,000 while the BGSAVE child lives. A key is written about 1.5 times on average;
/// 12 times or more has a probability under 1e-7 per key (Poisson), so under 0.5% over
/// all 40,000.
const MOST_WRITES: u64 = 12;
/// Pages one 1 KiB SET overwrite can copy: the new value's allocation (2 when it
/// straddles a page), its object, the dict entry, the allocator's free-list page of the
/// old value, and the client's query and reply buffers (one each) — 7, rounded up.
const PAGES_PER_WRITE: u64 = 8;

#[test]
fn the_demo_runs_and_shows_no_impossible_key() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO"))
        .args(["xtask", "demo", "--out"])
        .arg(dir.path())
        .current_dir(&root)
        .output()
        .expect("cargo xtask demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for file in ["timeline.json", "trace.json", "report.html"] {
        let len = std::fs::metadata(dir.path().join(file)).map_or(0, |m| m.len());
        assert!(len > 0, "{file} missing or empty");
    }
    assert!(
        stdout.contains("Top keys"),
        "no key table in the report: {stdout}"
    );
    let t = read_timeline(&dir.path().join("timeline.json"));
    assert_eq!(t["lost_events"], 0);
    let rows = t["summary"]["attribution"]["top_keys_cow"]
        .as_array()
        .unwrap();
    assert!(!rows.is_empty(), "no key with copy-on-write");
    let bound = MOST_WRITES * PAGES_PER_WRITE;
    let worst = &rows[0];
    eprintln!("demo: top CoW key {worst}; bound {bound} pages");
    for r in rows {
        let pages = r["pages"].as_u64().unwrap();
        assert!(
            pages <= bound,
            "impossible row: {r} (at most {PAGES_PER_WRITE} pages per write, {MOST_WRITES} writes)"
        );
    }
}
