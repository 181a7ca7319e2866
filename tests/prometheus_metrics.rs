//! `record --metrics`, read back through a real Prometheus (Debian 12's, installed by
//! `cargo xtask setup`) scraping the tracer on loopback, against the timeline of the same
//! run: a real redis-server (Redis 7.0) through a BGSAVE whose child is held stopped
//! while big hash-tagged strings are overwritten page by page.
//!
//! The comparison needs a moment when nothing more can happen: the server is stopped
//! (SIGSTOP) and only then is the fork child let go; its exit is the last record of the
//! run, so once Prometheus has scraped `fork_children 0` after it, the tracer has written
//! every record of the server into the NDJSON timeline and counted it in the metrics
//! (both happen in `Recorder::write`), and they must agree exactly.
//!
//! Needs root and `MEMTRACE_PROMETHEUS` (set by `cargo xtask test`). Run serially.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use testkit::{
    Recording, Server, by_label,
    commands::cluster_keyslots,
    fails_in_one_line,
    fork_child::bgsave_stopped,
    free_port,
    process::{Stopped, proc_state},
    prometheus::Prometheus,
    require_root,
    wait::wait_until,
};

/// The big strings and their pages: each tag's slot gets that many copy-on-write pages.
const HOT: [(&str, usize); 3] = [("{hot-a}:v", 48), ("{hot-b}:v", 24), ("{hot-c}:v", 12)];
const PAGE: usize = 4096;
/// How long Prometheus gets to show a state the tracer reached.
const SCRAPED: Duration = Duration::from_secs(30);

/// `kernel.bpf_stats_enabled` set to 1, the earlier value restored when dropped.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn on() -> BpfStats {
        let was = std::fs::read_to_string(BPF_STATS).expect(BPF_STATS);
        std::fs::write(BPF_STATS, "1").expect(BPF_STATS);
        BpfStats(was.trim().to_string())
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// `run_cnt` of every BPF program among the fds of process `pid`, summed: the kernel's
/// own count of the runs the tracer reports.
fn bpf_runs_of(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .expect("the tracer's fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("run_cnt:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

/// `(kind, role, activity)` of a fault record, `activity` as the metrics label it.
type FaultKey = (String, String, String);

/// The records of an NDJSON stream read so far.
fn records(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("the NDJSON timeline");
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("whole JSON lines"))
        .filter(|v| v.get("type").is_none())
        .collect()
}

fn is_fault(r: &Value) -> bool {
    matches!(
        r["kind"].as_str(),
        Some("cow_copy" | "wp_reuse" | "swap_in" | "first_touch" | "other")
    )
}

fn fault_counts(records: &[Value]) -> BTreeMap<FaultKey, f64> {
    let mut counts = BTreeMap::new();
    for r in records.iter().filter(|r| is_fault(r)) {
        let s = |k: &str| r[k].as_str().unwrap_or("none").to_string();
        *counts
            .entry((s("kind"), s("role"), s("activity")))
            .or_default() += 1.0;
    }
    counts
}

#[test]
fn prometheus_reads_back_the_timelines_counts() {
    require_root();
    let build = by_label("redis-7.0");
    let server = Server::start(&build, &[]);
    let mut con = server.client();
    for (key, pages) in HOT {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(vec![b'x'; pages * PAGE])
            .query(&mut con)
            .unwrap();
    }
    let keys: Vec<&str> = HOT.iter().map(|(k, _)| *k).collect();
    let slots = cluster_keyslots(&build, &keys);
    let addr = format!("127.0.0.1:{}", free_port());
    let prometheus = Prometheus::start(&addr);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.ndjson");
    let stats = BpfStats::on();
    let rec = Recording::start(&server, &out, &["--format", "ndjson", "--metrics", &addr]);

    // The child waits before each key (Redis 7 frees a big value's pages in the child
    // once saved, which would make the parent's writes reuses, not copies).
    server.config_set("rdb-key-save-delay", 200_000);
    let child = bgsave_stopped(&server, &mut con);
    for (key, pages) in HOT {
        for p in 0..pages {
            let len: usize = redis::cmd("SETRANGE")
                .arg(key)
                .arg(p * PAGE)
                .arg("y")
                .query(&mut con)
                .unwrap();
            assert_eq!(len, pages * PAGE);
        }
    }
    // Nothing of the server can fault from here; the child's exit comes last.
    let stopped = Stopped::new(server.pid);
    let child_pid = child.0;
    drop(child);
    wait_until(
        "the fork child to exit",
        SCRAPED,
        Duration::from_millis(5),
        || matches!(proc_state(child_pid), None | Some('Z')),
    );
    let exited = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let node = format!("{{node=\"{}\"}}", server.url());
    let m = |name: &str| format!("redis_memtrace_{name}{node}");
    wait_until(
        "a scrape after the child's exit",
        SCRAPED,
        Duration::from_millis(50),
        || {
            prometheus
                .value(&format!("timestamp({})", m("fork_children")))
                .is_some_and(|t| t > exited)
                && prometheus.value(&m("forks_total")) == Some(1.0)
                && prometheus.value(&m("fork_children")) == Some(0.0)
        },
    );

    let seen = records(&out);
    let expected = fault_counts(&seen);
    let scraped: BTreeMap<FaultKey, f64> = prometheus
        .query(&m("faults_total"))
        .into_iter()
        .map(|(l, v)| {
            (
                (l["kind"].clone(), l["role"].clone(), l["activity"].clone()),
                v,
            )
        })
        .collect();
    eprintln!(
        "{} fault series, {} faults",
        expected.len(),
        expected.values().sum::<f64>()
    );
    assert_eq!(
        scraped, expected,
        "faults_total against the timeline's records"
    );
    let set_cow = &(
        "cow_copy".to_string(),
        "parent".to_string(),
        "SETRANGE".to_string(),
    );
    let hot_pages: usize = HOT.iter().map(|(_, p)| p).sum();
    assert!(
        expected
            .get(set_cow)
            .is_some_and(|&n| n >= hot_pages as f64),
        "SETRANGE copied at least the {hot_pages} pages it wrote: {expected:?}"
    );

    let fork_returns = seen.iter().filter(|r| r["kind"] == "fork_return").count();
    assert_eq!(fork_returns, 1);
    assert_eq!(prometheus.value(&m("fork_call_seconds_count")), Some(1.0));
    let epoch = seen.iter().find(|r| r["kind"] == "fork").expect("the fork")["epoch"].clone();
    let epoch_cow = seen
        .iter()
        .filter(|r| r["kind"] == "cow_copy" && r["epoch"] == epoch)
        .count();
    assert_eq!(
        prometheus.value(&m("epoch_cow_bytes")),
        Some((epoch_cow * PAGE) as f64)
    );
    assert_eq!(prometheus.value(&m("lost_events_total")), Some(0.0));

    // The programs' runs, read once a second: each fault of the server ran its entry and
    // completion programs at least; never more than the kernel's own count, read after.
    let faults: f64 = expected.values().sum();
    let mut runs = 0.0;
    wait_until(
        "the BPF run count",
        SCRAPED,
        Duration::from_millis(50),
        || {
            runs = prometheus.value(&m("bpf_runs_total")).unwrap_or(0.0);
            runs >= 2.0 * faults
        },
    );
    let kernel_runs = bpf_runs_of(rec.pid());
    assert!(
        runs <= kernel_runs as f64,
        "{runs} runs reported, {kernel_runs} counted"
    );
    assert!(
        prometheus
            .value(&m("bpf_run_seconds_total"))
            .is_some_and(|s| s > 0.0)
    );

    // The slot gauges follow the run's table once a second: wait for the hot slots to
    // show their counts from the records (copy-on-write under the slot, not inside the
    // allocator), and for them to be the top three.
    let slot_pages = |slot: u64| {
        seen.iter()
            .filter(|r| r["kind"] == "cow_copy" && r["slot"] == slot && r["in_allocator"].is_null())
            .count() as f64
    };
    let want: BTreeMap<String, f64> = slots
        .iter()
        .map(|&s| (s.to_string(), slot_pages(s)))
        .collect();
    wait_until(
        "the top-slot gauges",
        SCRAPED,
        Duration::from_millis(50),
        || {
            let mut rows = prometheus.query(&m("top_slot_cow_pages"));
            rows.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top: BTreeMap<String, f64> = rows
                .iter()
                .take(3)
                .map(|(l, v)| (l["slot"].clone(), *v))
                .collect();
            top == want
        },
    );
    for ((key, pages), slot) in HOT.iter().zip(&slots) {
        assert!(want[&slot.to_string()] >= *pages as f64, "{key}: {want:?}");
    }

    drop(stopped);
    let stderr = rec.stop();
    drop(stats);
    let all = records(&out);
    let trailer = std::fs::read_to_string(&out).unwrap();
    assert!(
        trailer
            .lines()
            .last()
            .is_some_and(|l| l.contains("\"type\":\"trailer\"")),
        "a finished timeline: {stderr}"
    );
    assert!(all.len() >= seen.len());
}

#[test]
fn a_metrics_port_in_use_fails_in_one_line_and_creates_nothing() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let pid = std::process::id().to_string();
    fails_in_one_line(
        dir.path(),
        &["record", "--pid", &pid, "--metrics", &addr, "-o", "t.json"],
        &format!(
            "redis-memtrace: error: cannot serve metrics on {addr} (is the port in use? \
             choose another with --metrics): Address already in use (os error 98)"
        ),
    );
}
