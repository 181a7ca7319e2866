//! `redis-memtrace export --perfetto` on a real recording: a Redis 7.0 server doing a
//! BGSAVE while a client writes, traced with real eBPF as root, exported to Chrome Trace
//! Event JSON. The trace is checked by an independent parser (a Python script using only
//! the standard `json` module: valid phases, timestamps, sorting, the epoch slice and its
//! duration, the counters, the child's name) and cross-checked against the timeline in
//! Rust (epoch count, CoW totals, rates). Bad input to `export` fails in one line.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use serde_json::Value;
use testkit::{
    Recording, Server, by_label, fails_in_one_line, names_in, read_timeline, require_root, tracer,
};

/// The independent checker: `python3 check.py TRACE TIMELINE`. Prints what it checked,
/// exits 1 listing every problem found.
const CHECKER: &str = r#"
import json, sys

trace_path, timeline_path = sys.argv[1], sys.argv[2]
with open(trace_path) as f:
    trace = json.load(f)
with open(timeline_path) as f:
    timeline = json.load(f)

problems = []
def bad(msg):
    problems.append(msg)

def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)

def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

if not isinstance(trace, dict):
    sys.exit("trace is not a JSON object")
events = trace.get("traceEvents")
if not isinstance(events, list) or not events:
    sys.exit("traceEvents missing or empty")
if trace.get("displayTimeUnit") not in ("ms", "ns"):
    bad("displayTimeUnit is %r" % trace.get("displayTimeUnit"))

phases = {}
last_ts = None
for i, e in enumerate(events):
    ph = e.get("ph")
    phases[ph] = phases.get(ph, 0) + 1
    if ph not in ("X", "i", "I", "C", "M", "B", "E"):
        bad("event %d: ph %r" % (i, ph))
        continue
    for k in ("pid", "tid"):
        if not is_int(e.get(k)):
            bad("event %d: %s is %r" % (i, k, e.get(k)))
    if not isinstance(e.get("name"), str):
        bad("event %d: no name" % i)
    if ph == "M":
        continue
    ts = e.get("ts")
    if not is_num(ts) or ts < 0:
        bad("event %d: ts %r" % (i, ts))
        continue
    if last_ts is not None and ts < last_ts:
        bad("event %d: ts %r before %r" % (i, ts, last_ts))
    last_ts = ts
    if ph == "X" and not (is_num(e.get("dur")) and e["dur"] >= 0):
        bad("event %d: dur %r" % (i, e.get("dur")))
    if ph == "C":
        args = e.get("args")
        if not isinstance(args, dict) or not args or not all(is_num(v) for v in args.values()):
            bad("event %d: counter args %r" % (i, args))
    if ph in ("i", "I") and e.get("s") not in (None, "t", "p", "g"):
        bad("event %d: scope %r" % (i, e.get("s")))

def process_name(pid):
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name" and e.get("pid") == pid:
            return e.get("args", {}).get("name")
    return None

start = timeline["run"]["monotonic_start_ns"]
trace_end = timeline["end"]["monotonic_end_ns"]
target = timeline["target"]["pid"]
if not process_name(target):
    bad("the Redis process %d has no process_name" % target)

epoch_slices = [e for e in events if e.get("ph") == "X" and e.get("cat") == "epoch"]
for ep in timeline["epochs"]:
    found = [s for s in epoch_slices
             if s["pid"] == ep["parent_pid"]
             and s.get("args", {}).get("child_pid") == ep["child_pid"]
             and s.get("args", {}).get("epoch") == ep["id"]]
    if len(found) != 1:
        bad("epoch %d: %d slices on parent pid %d with child_pid %d"
            % (ep["id"], len(found), ep["parent_pid"], ep["child_pid"]))
        continue
    s = found[0]
    end = ep["end_ns"] if ep["end_ns"] is not None else trace_end
    want_dur = (end - ep["start_ns"]) / 1000.0
    want_ts = max(ep["start_ns"] - start, 0) / 1000.0
    if abs(s["dur"] - want_dur) > 1.0:
        bad("epoch %d: dur %r us, timeline says %r us" % (ep["id"], s["dur"], want_dur))
    if abs(s["ts"] - want_ts) > 1.0:
        bad("epoch %d: ts %r us, timeline says %r us" % (ep["id"], s["ts"], want_ts))
    name = process_name(ep["child_pid"])
    if not name:
        bad("child %d has no process_name" % ep["child_pid"])
    print("epoch %d: %r on pid %d, ts %.3f us, dur %.3f us (timeline %.3f); child named %r"
          % (ep["id"], s["name"], s["pid"], s["ts"], s["dur"], want_dur, name))

series = set()
for e in events:
    if e.get("ph") == "C":
        for k, v in e.get("args", {}).items():
            if is_num(v):
                series.add((e["pid"] == target, e["name"], k))
for want in [(True, "RSS", "MiB"), (True, "swap", "MiB"), (True, "used_memory", "MiB"),
             (True, "CoW copies/s", "parent"), (True, "CoW copies/s", "child"),
             (True, "swap-ins/s", "parent"), (True, "swap-ins/s", "child"),
             (False, "RSS", "MiB")]:
    if want not in series:
        bad("counter %r %r missing (%s)" % (want[1], want[2],
            "server" if want[0] else "child"))
cow_peak = max([e["args"]["parent"] for e in events
                if e.get("ph") == "C" and e.get("name") == "CoW copies/s"] or [0])
if cow_peak <= 0:
    bad("CoW copies/s never above 0")

print("events by phase:", dict(sorted(phases.items())))
print("counter series:", sorted("%s%s %s" % ("" if s else "child ", n, k) for s, n, k in series))
print("peak parent CoW copies/s: %r" % cow_peak)
if problems:
    print("PROBLEMS (%d):" % len(problems))
    for p in problems[:50]:
        print("  " + p)
    sys.exit(1)
print("OK: %d events checked" % len(events))
"#;

/// `redis-memtrace export --perfetto TIMELINE -o OUT`: (success, stderr).
fn export(timeline: &Path, out: &Path) -> (bool, String) {
    let o = Command::new(tracer())
        .args(["export", "--perfetto"])
        .arg(timeline)
        .arg("-o")
        .arg(out)
        .output()
        .expect("run redis-memtrace export");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Sum of numbers that must all be unsigned integers.
fn total<'a>(values: impl Iterator<Item = &'a Value>) -> u64 {
    values
        .map(|v| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}")))
        .sum()
}

fn of_cat<'a>(trace: &'a Value, cat: &str) -> Vec<&'a Value> {
    trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["cat"] == cat)
        .collect()
}

#[test]
fn bgsave_under_writes_exports_a_trace_an_independent_parser_accepts() {
    require_root();
    let server = Server::start(&by_label("redis-7.0"), &[]);
    const KEYS: u64 = 50_000;
    server.populate(KEYS, "key", 1024);
    // Keep the child alive while the client writes (microseconds per key saved).
    server.config_set("rdb-key-save-delay", "20");
    let dir = tempfile::tempdir().unwrap();
    let timeline = dir.path().join("timeline.json");
    let out = dir.path().join("trace.json");
    // Samples every 100 ms, so the child's RSS is sampled while it lives.
    let rec = Recording::start(&server, &timeline, &["--interval", "100ms"]);

    let mut con = server.client();
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    let value = vec![b'v'; 1024];
    for round in 0..4 {
        let mut pipe = redis::pipe();
        for i in 0..5_000 {
            pipe.cmd("SET")
                .arg(format!("key:{}", (i * 7 + round * 13) % KEYS))
                .arg(&value)
                .ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    let persistence: String = redis::cmd("INFO")
        .arg("persistence")
        .query(&mut con)
        .unwrap();
    assert!(
        persistence.contains("rdb_bgsave_in_progress:1"),
        "the SETs must land while the child lives"
    );
    let (status, _) = server.wait_bgsave_done(Duration::from_secs(120));
    assert_eq!(status, "ok");
    std::thread::sleep(Duration::from_millis(300));
    let rec_log = rec.stop();

    let (ok, stderr) = export(&timeline, &out);
    assert!(ok, "export failed: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    eprintln!("{}", stderr.trim_end());
    let size = std::fs::metadata(&out).unwrap().len();
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The independent parser.
    let script = dir.path().join("check_trace.py");
    std::fs::write(&script, CHECKER).unwrap();
    let check = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&out)
        .arg(&timeline)
        .output()
        .expect("run python3");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    eprintln!("--- python checker ---\n{}", report.trim_end());
    assert!(
        check.status.success(),
        "the Python checker rejected the trace:\n{report}\n--- tracer ---\n{rec_log}"
    );

    // Exact cross-checks against the timeline.
    let t = read_timeline(&timeline);
    let trace: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    eprintln!(
        "trace: {size} bytes, {} events",
        trace["traceEvents"].as_array().unwrap().len()
    );
    let epochs = t["epochs"].as_array().unwrap();
    assert!(!epochs.is_empty(), "the BGSAVE opened an epoch");
    let slices = of_cat(&trace, "epoch");
    assert_eq!(slices.len(), epochs.len(), "one slice per epoch");
    assert_eq!(
        total(slices.iter().map(|s| &s["args"]["cow_pages_parent"])),
        total(epochs.iter().map(|e| &e["faults"]["parent"]["cow_copy"])),
        "parent CoW pages in the epoch args"
    );
    assert_eq!(
        total(slices.iter().map(|s| &s["args"]["cow_pages_child"])),
        total(epochs.iter().map(|e| &e["faults"]["child"]["cow_copy"])),
        "child CoW pages in the epoch args"
    );
    assert_eq!(of_cat(&trace, "epoch_child").len(), epochs.len());
    for e in epochs {
        let child = e["child_pid"].as_u64().unwrap();
        let name = trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["ph"] == "M" && m["name"] == "process_name" && m["pid"] == child)
            .map(|m| m["args"]["name"].clone());
        assert_eq!(
            name,
            Some(Value::from(format!("fork child {child} (bgsave)")))
        );
    }

    // Every cow_copy event is in exactly one aggregate slice and in the rate counter.
    let cow_events = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "cow_copy")
        .count() as u64;
    assert!(cow_events > 1000, "thousands of CoW copies: {cow_events}");
    let cow = of_cat(&trace, "cow");
    assert_eq!(
        total(cow.iter().map(|s| &s["args"]["cow_pages"])),
        cow_events
    );
    let bucket_s = trace["metadata"]["bucket_ms"].as_f64().unwrap() / 1000.0;
    let rated: f64 = trace["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ph"] == "C" && e["name"] == "CoW copies/s")
        .map(|e| {
            (e["args"]["parent"].as_f64().unwrap() + e["args"]["child"].as_f64().unwrap())
                * bucket_s
        })
        .sum();
    assert!(
        (rated - cow_events as f64).abs() < 1e-6 * cow_events as f64,
        "rates integrate to {rated}, {cow_events} events"
    );
    // The SETs made most of the parent's copies, and their keys are in the args.
    let set_pages = total(
        cow.iter()
            .filter(|s| s["name"] == "SET" && s["pid"] == t["target"]["pid"])
            .map(|s| &s["args"]["cow_pages"]),
    );
    assert!(
        set_pages * 2 > cow_events,
        "SET made {set_pages} of {cow_events} copies"
    );
    assert!(cow.iter().any(|s| {
        s["args"]["top_keys"][0]["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("key:"))
    }));

    // The fork call on the parent's thread, as long as the timeline says.
    let forks: Vec<&Value> = of_cat(&trace, "fork")
        .into_iter()
        .filter(|e| e["ph"] == "X")
        .collect();
    assert_eq!(forks.len(), epochs.len());
    let want_us = epochs[0]["fork_call_ns"]
        .as_u64()
        .or(epochs[0]["fork_duration_ns"].as_u64())
        .unwrap() as f64
        / 1000.0;
    assert!((forks[0]["dur"].as_f64().unwrap() - want_us).abs() <= 1.0);
    assert_eq!(forks[0]["pid"], t["target"]["pid"]);
}

/// A small valid timeline.
const SMALL: &str = r#"{"schema_version":1,"run":{"monotonic_start_ns":1000000000},"target":{"pid":7},"events":[{"ts_ns":1100000000,"pid":7,"tid":7,"kind":"cow_copy","role":"parent","activity":"SET"}],"end":{"monotonic_end_ns":2000000000},"epochs":[],"samples":[],"summary":{}}"#;

/// `export --perfetto INPUT -o OUT`, run in the folder `cwd`, fails with exit 1, exactly
/// `line` on stderr (one line, nothing else) and nothing on stdout, and leaves the
/// folder's files as they were.
fn export_fails(cwd: &Path, input: &str, out: &str, line: &str) {
    fails_in_one_line(cwd, &["export", "--perfetto", input, "-o", out], line);
}

/// Bad timelines, among them the row of docs/robustness.md (`export --perfetto v3.json
/// -o trace.json`, a timeline of schema version 2), and unwritable destinations: one line
/// each, and no trace or temporary file.
#[test]
fn bad_input_fails_in_one_line_without_output() {
    assert!(
        tracer().exists(),
        "{} missing: run `cargo xtask build`",
        tracer().display()
    );
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let good = cwd.join("good.json");
    std::fs::write(&good, SMALL).unwrap();
    let bad_inputs: [(&str, Option<String>, String); 5] = [
        (
            "missing.json",
            None,
            "redis-memtrace: error: cannot read missing.json: No such file or directory (os \
             error 2)"
                .into(),
        ),
        (
            "empty.json",
            Some(String::new()),
            "redis-memtrace: error: empty.json is empty: not a redis-memtrace timeline".into(),
        ),
        (
            "truncated.json",
            Some(SMALL[..SMALL.len() / 2].to_string()),
            format!(
                "redis-memtrace: error: truncated.json is truncated at byte {}: the timeline \
                 is incomplete",
                SMALL.len() / 2
            ),
        ),
        (
            "notjson.json",
            Some("hello, world\n".into()),
            "redis-memtrace: error: notjson.json is not a redis-memtrace timeline: expected \
             value at line 1 column 1"
                .into(),
        ),
        (
            "v3.json",
            Some(SMALL.replace(r#""schema_version":1"#, r#""schema_version":3"#)),
            "redis-memtrace: error: v3.json has schema_version 3; this redis-memtrace reads \
             versions 1 (one server) and 2 (several, from merge)"
                .into(),
        ),
    ];
    for (name, content, line) in &bad_inputs {
        if let Some(c) = content {
            std::fs::write(cwd.join(name), c).unwrap();
        }
        export_fails(cwd, name, "trace.json", line);
        assert!(
            !cwd.join("trace.json").exists(),
            "{name}: a trace was written"
        );
    }

    // Unwritable destinations: a missing folder, a folder.
    export_fails(
        cwd,
        "good.json",
        "no/such/dir/trace.json",
        "redis-memtrace: error: cannot write no/such/dir/trace.json: No such file or \
         directory (os error 2)",
    );
    assert!(!cwd.join("no").exists(), "a folder was created");
    std::fs::create_dir(cwd.join("a_folder")).unwrap();
    export_fails(
        cwd,
        "good.json",
        "a_folder",
        "redis-memtrace: error: cannot write a_folder: it is a directory",
    );
    assert_eq!(names_in(&cwd.join("a_folder")), Vec::<String>::new());

    // Nothing but the inputs is left behind (no temporary files).
    assert_eq!(
        names_in(cwd),
        [
            "a_folder",
            "empty.json",
            "good.json",
            "notjson.json",
            "truncated.json",
            "v3.json"
        ]
    );

    // And the small good file converts.
    let out = dir.path().join("trace.json");
    let (ok, stderr) = export(&good, &out);
    assert!(ok, "{stderr}");
    let trace: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(of_cat(&trace, "cow").len(), 1);
}
