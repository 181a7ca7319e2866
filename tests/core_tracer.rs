//! Integration tests of the core tracer: the real eBPF programs in the real kernel,
//! tracing the fault generator, whose counts are known exactly.
//!
//! Needs root. Run serially (`--test-threads=1`, as `cargo xtask test` does): the kernel
//! state (swap, attached programs) is shared.

mod common;

use std::{collections::BTreeMap, process::Command};

use common::*;
use testkit::{
    Guarded, Recording, SwapGuard, process::signal, programs::our_programs_after_exit,
    read_timeline, recording::TRACING_PID, require_root, tracefs::tracefs_without, tracer,
};

/// Fault counts inside the generator's region, keyed by (kind, role, epoch).
fn region_counts(
    t: &serde_json::Value,
    region: (u64, u64),
) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for e in t["events"].as_array().expect("events array") {
        let Some(addr) = e["addr"].as_u64() else {
            continue;
        };
        if addr < region.0 || addr >= region.1 {
            continue;
        }
        let key = (
            e["kind"].as_str().unwrap().to_string(),
            e["role"].as_str().unwrap().to_string(),
            e["epoch"].to_string(),
        );
        *out.entry(key).or_default() += 1;
    }
    out
}

fn key(kind: &str, role: &str, epoch: &str) -> (String, String, String) {
    (kind.into(), role.into(), epoch.into())
}

/// Runs the generator under the tracer and checks every count inside its region exactly.
fn exact_case(pages: u64, cow: u64, reuse: u64, swap: u64) {
    require_root();
    let _swap = (swap > 0).then(SwapGuard::ensure);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.json");
    let args = [
        "--pages".to_string(),
        pages.to_string(),
        "--cow".into(),
        cow.to_string(),
        "--reuse".into(),
        reuse.to_string(),
        "--swap".into(),
        swap.to_string(),
    ];
    let run = record_command(&out, &args);
    let region = run.region();
    let child = run.value("child").unwrap().parse::<u64>().unwrap();
    let t = read_timeline(&out);
    let counts = region_counts(&t, region);

    let mut expected = BTreeMap::new();
    expected.insert(key("first_touch", "parent", "null"), pages);
    if cow > 0 {
        expected.insert(key("cow_copy", "parent", "0"), cow);
    }
    if reuse > 0 {
        expected.insert(key("wp_reuse", "parent", "null"), reuse);
    }
    if swap > 0 {
        expected.insert(key("swap_in", "parent", "null"), swap);
    }
    assert_eq!(
        counts, expected,
        "faults inside the region (stdout: {})",
        run.stdout
    );

    assert_eq!(t["lost_events"], 0, "events were lost");
    assert_eq!(t["summary"]["forks"], 1);
    let epochs = t["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1);
    let e = &epochs[0];
    assert_eq!(e["child_pid"].as_u64(), Some(child));
    assert_eq!(e["end_reason"], "exit");
    let (start, end) = (
        e["start_ns"].as_u64().unwrap(),
        e["end_ns"].as_u64().unwrap(),
    );
    assert!(end > start, "epoch must have a closed end after its start");
    // fault-gen forks right after its exec: the libc probe must already be in place.
    let call = e["fork_call_ns"]
        .as_u64()
        .expect("libc fork() call measured");
    assert!(call > 0, "fork duration measured");
    // The kernel's fork (sched_process_fork, the epoch's start) happens inside the
    // timed fork() call.
    let ret = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ev| ev["kind"] == "fork_return")
        .expect("a fork_return event");
    assert_eq!(ret["ret"].as_u64(), Some(child));
    assert_eq!(ret["duration_ns"].as_u64(), Some(call));
    let call_start = ret["ts_ns"].as_u64().unwrap();
    assert!(
        (call_start..call_start + call).contains(&start),
        "fork at {start} outside the fork() call {call_start}+{call}"
    );
    assert!(e["faults"]["parent"]["cow_copy"].as_u64().unwrap() >= cow);
    // Every summary field other tools read is present and an integer.
    for k in ["cow_copy", "wp_reuse", "swap_in", "first_touch", "other"] {
        assert!(t["summary"]["faults"][k].is_u64(), "summary.faults.{k}");
    }
    assert_eq!(t["target"]["comm"], "fault-gen");
    assert_eq!(t["end"]["reason"], "target_exit");
    assert_eq!(t["end"]["target_exit_status"], 0);
}

#[test]
fn exact_counts_one_copy_one_swap_in() {
    exact_case(2000, 1, 1000, 1);
}

#[test]
fn exact_counts_thousand_copies_thousand_swap_ins() {
    exact_case(3000, 1000, 1000, 1000);
}

#[test]
fn exact_counts_hundred_thousand_copies() {
    exact_case(110_000, 100_000, 10_000, 1000);
}

#[test]
fn unrelated_busy_process_emits_nothing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.json");
    // A busy process faulting as fast as it can, not traced.
    let mut busy = Guarded::kill_on_drop(
        Command::new(fault_gen())
            .args([
                "--pages",
                "2048",
                "--loop-seconds",
                "6",
                "--loop-mode",
                "touch",
                "--workers",
                "2",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let busy_pid = busy.id() as u64;
    let run = record_command(
        &out,
        &[
            "--pages".into(),
            "5000".into(),
            "--cow".into(),
            "2000".into(),
        ],
    );
    let status = busy.wait().unwrap();
    assert!(status.success());
    let child = run.value("child").unwrap().parse::<u64>().unwrap();
    let t = read_timeline(&out);
    let target = t["target"]["pid"].as_u64().unwrap();
    let mut pids = std::collections::BTreeSet::new();
    for e in t["events"].as_array().unwrap() {
        pids.insert(e["pid"].as_u64().unwrap());
    }
    assert!(!pids.contains(&busy_pid), "the busy process was traced");
    assert_eq!(
        pids,
        [target, child].into_iter().collect(),
        "only the target and its child"
    );
    let counts = region_counts(&t, run.region());
    assert_eq!(counts[&key("cow_copy", "parent", "0")], 2000);
    assert_eq!(counts[&key("first_touch", "parent", "null")], 5000);
}

#[test]
fn huge_page_faults_are_flagged() {
    require_root();
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") || thp.is_empty() {
        panic!("THP is disabled on this machine ({thp:?}); this test needs madvise or always");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.json");
    let run = record_command(
        &out,
        &[
            "--pages".into(),
            "16".into(),
            "--no-fork".into(),
            "--thp".into(),
            "3".into(),
        ],
    );
    let (lo, hi) = run.range("thp_region");
    let t = read_timeline(&out);
    let faults: Vec<_> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["addr"].as_u64().is_some_and(|a| a >= lo && a < hi))
        .collect();
    assert_eq!(faults.len(), 3, "one fault per huge page");
    for f in faults {
        assert_eq!(f["kind"], "first_touch");
        assert_eq!(f["huge"], true);
    }
    assert!(t["summary"]["huge_faults"].as_u64().unwrap() >= 3);
    assert_eq!(t["summary"]["forks"], 0);
}

#[test]
fn attach_to_running_pid() {
    require_root();
    let _swap = SwapGuard::ensure();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.json");
    let run = record_pid(
        &out,
        &[
            "--pages", "1500", "--cow", "700", "--reuse", "300", "--swap", "300",
        ],
        &[],
    );
    let t = read_timeline(&out);
    let counts = region_counts(&t, run.region());
    let expected: BTreeMap<_, _> = [
        (key("first_touch", "parent", "null"), 1500),
        (key("cow_copy", "parent", "0"), 700),
        (key("wp_reuse", "parent", "null"), 300),
        (key("swap_in", "parent", "null"), 300),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, expected);
    assert_eq!(t["lost_events"], 0);
    let epochs = t["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1);
    let child = run.value("child").unwrap().parse::<u64>().unwrap();
    assert_eq!(epochs[0]["child_pid"].as_u64(), Some(child));
    assert_eq!(epochs[0]["end_reason"], "exit");
    assert_eq!(t["target"]["comm"], "fault-gen");
    assert_eq!(t["end"]["reason"], "target_exit");
    assert!(t["target"]["command"].is_null());
}

/// Region faults of the generator recorded in `t`, by kind.
fn region_records(t: &serde_json::Value, region: (u64, u64), kind: &str) -> u64 {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["kind"] == kind
                && e["addr"]
                    .as_u64()
                    .is_some_and(|a| (region.0..region.1).contains(&a))
        })
        .count() as u64
}

/// SIGINT and SIGTERM drain the ring buffer: faults still in it at the signal are in the
/// timeline. The tracer is stopped (SIGSTOP) while the generator takes its faults, and
/// gets the signal before it runs again, so none of them has been read yet.
#[test]
fn a_stop_signal_drains_the_events_still_in_the_ring_buffer() {
    require_root();
    const PAGES: u64 = 20_000;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let mut paused = PausedGenerator::start(&["--pages", &PAGES.to_string(), "--no-fork"]);
        let rec = Recording::start_with(
            &["--pid", &paused.pid().to_string()],
            &out,
            &[],
            TRACING_PID,
        );
        assert!(signal(rec.pid(), libc::SIGSTOP));
        paused.touch();
        assert!(signal(rec.pid(), sig));
        assert!(signal(rec.pid(), libc::SIGCONT));
        let (status, stderr) = rec.exit();
        assert!(status.success(), "signal {sig}: {stderr}");
        assert!(stderr.contains("stopped (signal)"), "{stderr}");
        let region = paused.finish();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "signal {sig}");
        assert_eq!(
            region_records(&t, region, "first_touch"),
            PAGES,
            "signal {sig}: faults in the ring buffer at the signal"
        );
    }
}

/// `--max-events` and `--max-rate` bound the fault records written, never the counts:
/// every fault is in the summary, and what was left out is in `event_cap`.
#[test]
fn max_events_and_max_rate_cap_the_records_not_the_counts() {
    require_root();
    for (flag, bound) in [("--max-events", 1_000u64), ("--max-rate", 500)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let gen_args: Vec<String> = ["--pages", "5000", "--no-fork"].map(String::from).to_vec();
        let bound_text = bound.to_string();
        record_command_env(&out, &gen_args, &["-q", flag, &bound_text], &[]);
        let t = read_timeline(&out);
        let fault_ts: Vec<u64> = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["addr"].is_u64())
            .map(|e| e["ts_ns"].as_u64().unwrap())
            .collect();
        let written = fault_ts.len() as u64;
        let dropped = t["event_cap"]["dropped"].as_u64().unwrap();
        let f = &t["summary"]["faults"];
        let counted: u64 = ["cow_copy", "wp_reuse", "swap_in", "first_touch", "other"]
            .iter()
            .map(|k| f[k].as_u64().unwrap())
            .sum();
        eprintln!("{flag} {bound}: {written} written, {dropped} left out, {counted} counted");
        assert!(f["first_touch"].as_u64().unwrap() >= 5_000, "{flag}: {f}");
        assert_eq!(written + dropped, counted, "{flag}: every fault counted");
        assert!(dropped > 0, "{flag}: nothing capped");
        if flag == "--max-events" {
            assert_eq!(written, bound);
        } else {
            // At most `bound` in each second of event time, and the first second is full.
            let (first, last) = (fault_ts[0], *fault_ts.last().unwrap());
            let seconds = (last - first) / 1_000_000_000 + 1;
            assert!(
                written >= bound && written <= bound * (seconds + 1),
                "{written}"
            );
        }
    }
}

#[test]
fn no_programs_left_after_a_run() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.json");
    record_command(&out, &["--pages".into(), "10".into(), "--no-fork".into()]);
    let left = our_programs_after_exit();
    assert!(left.is_empty(), "programs still loaded: {left:?}");
}

/// What a run on a kernel without `hidden` reports: the timeline, the generator's run,
/// and the tracer's stderr. Every count in the region is checked by the caller.
fn degraded_run(hidden: &str, args: &[&str]) -> (serde_json::Value, Run) {
    let fake = tracefs_without(&[hidden]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.json");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run = record_command_env(&out, &args, &[], &[("MEMTRACE_TRACEFS", fake.path())]);
    let t = read_timeline(&out);
    let name = hidden.replace('/', ":");
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("redis-memtrace: warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {}", run.stderr);
    assert!(
        warnings[0].contains(&format!("{name} unavailable")),
        "{}",
        run.stderr
    );
    let degraded = t["run"]["options"]["degraded"].as_array().unwrap();
    assert_eq!(degraded.len(), 1, "{degraded:?}");
    assert!(degraded[0].as_str().unwrap().starts_with(&name));
    assert_eq!(t["lost_events"], 0);
    // The report says so.
    let report = Command::new(tracer())
        .arg("report")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{text}");
    assert!(
        text.contains("counts are approximate on this kernel"),
        "{text}"
    );
    (t, run)
}

#[test]
fn without_page_allocations_copies_are_told_from_reuses_by_the_epoch() {
    require_root();
    let _swap = SwapGuard::ensure();
    let (t, run) = degraded_run(
        "kmem/mm_page_alloc",
        &[
            "--pages", "3000", "--cow", "1000", "--reuse", "500", "--swap", "100",
        ],
    );
    assert_eq!(
        t["run"]["options"]["approximate_kinds"],
        serde_json::json!(["cow_copy", "wp_reuse"])
    );
    // For this workload the fork epoch gives the same answer the allocations would.
    let expected: BTreeMap<_, _> = [
        (key("first_touch", "parent", "null"), 3000),
        (key("cow_copy", "parent", "0"), 1000),
        (key("wp_reuse", "parent", "null"), 500),
        (key("swap_in", "parent", "null"), 100),
    ]
    .into_iter()
    .collect();
    assert_eq!(region_counts(&t, run.region()), expected, "{}", run.stdout);
}

#[test]
fn without_rss_counters_swap_ins_are_major_faults_and_cache_hits_are_lost() {
    require_root();
    let _swap = SwapGuard::ensure();
    let (t, run) = degraded_run(
        "kmem/rss_stat",
        &[
            "--pages", "3000", "--cow", "200", "--reuse", "300", "--swap", "1000",
        ],
    );
    assert_eq!(
        t["run"]["options"]["approximate_kinds"],
        serde_json::json!(["cow_copy", "swap_in", "first_touch", "other"])
    );
    let region = run.region();
    let counts = region_counts(&t, region);
    // Allocations still tell first touches and copies exactly here.
    assert_eq!(
        counts.get(&key("first_touch", "parent", "null")),
        Some(&3000)
    );
    assert_eq!(counts.get(&key("cow_copy", "parent", "0")), Some(&200));
    assert_eq!(counts.get(&key("wp_reuse", "parent", "null")), Some(&300));
    // Each of the 1000 pages read back faults once: from disk (major: swap_in) or from
    // the swap cache (minor, invisible without the counters: other). After
    // MADV_PAGEOUT the pages usually are still in the swap cache, so most or all of them
    // end up as `other`: that is the loss the warning names.
    let swap_in = counts
        .get(&key("swap_in", "parent", "null"))
        .copied()
        .unwrap_or(0);
    let other = counts
        .get(&key("other", "parent", "null"))
        .copied()
        .unwrap_or(0);
    assert_eq!(swap_in + other, 1000, "{counts:?}");
    let in_region = |e: &&serde_json::Value| {
        e["addr"]
            .as_u64()
            .is_some_and(|a| a >= region.0 && a < region.1)
    };
    let events = t["events"].as_array().unwrap();
    let major = events
        .iter()
        .filter(in_region)
        .filter(|e| e["major"] == true)
        .count() as u64;
    assert_eq!(swap_in, major, "swap-ins are the region's major faults");
    // No rss_stat: no swap level events.
    assert!(!events.iter().any(|e| e["kind"] == "swap_level"));
    // Nothing else in the region.
    assert_eq!(
        counts.values().sum::<u64>(),
        3000 + 200 + 300 + 1000,
        "{counts:?}"
    );
}

/// A launched command that forks at once: its loader maps libc only after the exec the
/// tracer sees, so `fork` must be found once it is mapped (or through the probe on the
/// tracer's own libc, placed before the exec) and never reported missing. 40 runs: the
/// race lost 22 of 40 before it was fixed.
#[test]
fn launched_command_that_forks_at_once_is_timed_without_warning_every_time() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let args: Vec<String> = ["--pages", "1", "--cow", "1"].map(String::from).to_vec();
    for run_no in 0..40 {
        let run = record_command(&out, &args);
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        let epochs = t["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 1, "run {run_no}: {}", run.stderr);
        assert!(
            epochs[0]["fork_call_ns"].as_u64().is_some_and(|ns| ns > 0),
            "run {run_no}: fork not timed: {}",
            epochs[0]
        );
        let warnings = t["warnings"].as_array().unwrap();
        assert!(
            warnings
                .iter()
                .all(|w| !w.as_str().unwrap().contains("fork")),
            "run {run_no}: {warnings:?}"
        );
    }
}
