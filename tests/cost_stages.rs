//! `record --cost-stage` (hidden, for `cargo xtask bench-fork --stages`), real eBPF, as
//! root: a stage before `full` counts every fault as `full` does but sends no Redis
//! context, so no fault is attributed, and the timeline says why.

use std::path::Path;

use serde_json::Value;
use testkit::{
    Recording, Server, by_label, read_timeline, recording::ATTRIBUTION_ON, require_root,
    timeline::faults,
};

/// A BGSAVE and 5,000 SETs of 1 KiB under `record --cost-stage STAGE`.
fn record_at(server: &Server, stage: &str, out: &Path) -> Value {
    let target = server.url();
    let rec = Recording::start_with(
        &["--redis", &target],
        out,
        &["--cost-stage", stage],
        ATTRIBUTION_ON,
    );
    server.bgsave_and_overwrite(5000, b's', 1024);
    let stderr = rec.stop();
    eprintln!("{stage}: {stderr}");
    read_timeline(out)
}

fn degraded(t: &Value) -> Vec<String> {
    t["run"]["options"]["degraded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect()
}

/// Parent copy-on-write faults, and how many of them name a command.
fn parent_cow(t: &Value) -> (usize, usize) {
    let fs = faults(t);
    let cow: Vec<&Value> = fs
        .into_iter()
        .filter(|f| f["kind"] == "cow_copy" && f["role"] == "parent")
        .collect();
    let named = cow.iter().filter(|f| f.get("activity").is_some()).count();
    (cow.len(), named)
}

#[test]
fn a_stage_before_full_counts_faults_and_attributes_none() {
    require_root();
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(50_000, "key", 1024);
    let dir = tempfile::tempdir().unwrap();
    for stage in ["server", "current", "stack", "client"] {
        let t = record_at(&server, stage, &dir.path().join(format!("{stage}.json")));
        let (cow, named) = parent_cow(&t);
        assert!(cow >= 500, "{stage}: only {cow} parent cow_copy faults");
        assert_eq!(named, 0, "{stage}: {named} of {cow} copies attributed");
        let d = degraded(&t);
        assert!(
            d.iter()
                .any(|w| w.contains(&format!("--cost-stage {stage}"))),
            "{stage}: {d:?}"
        );
    }
    let t = record_at(&server, "full", &dir.path().join("full.json"));
    let (cow, named) = parent_cow(&t);
    eprintln!("full: {named} of {cow} parent copies attributed");
    assert!(cow >= 500, "full: only {cow} parent cow_copy faults");
    assert!(
        named * 10 >= cow * 9,
        "full: {named} of {cow} copies attributed"
    );
    let d = degraded(&t);
    assert!(!d.iter().any(|w| w.contains("--cost-stage")), "full: {d:?}");
}
