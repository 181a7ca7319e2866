//! Unit tests of the Perfetto export on synthetic timelines.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{builder::Clock, *};
use crate::timeline::read::parse;

const BASE: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
const TARGET: u64 = 100;

/// A timeline of `events`, `epochs` and `samples`, from BASE to BASE + `end_ms`.
fn doc(events: Vec<Value>, epochs: Vec<Value>, samples: Vec<Value>, end_ms: u64) -> Value {
    json!({
        "schema_version": 1,
        "run": {"monotonic_start_ns": BASE, "wall_start_unix_ns": 5, "tracer_version": "t"},
        "target": {"pid": TARGET, "comm": "redis-server", "exe": "/usr/bin/redis-server"},
        "events": events,
        "end": {"monotonic_end_ns": BASE + end_ms * MS, "reason": "duration"},
        "epochs": epochs,
        "samples": samples,
        "summary": {},
        "redis": {"version": "7.0.15"},
    })
}

fn trace(v: &Value) -> Value {
    let t = parse("t", &v.to_string()).expect("test timeline is valid");
    let tr = to_chrome_trace(&t);
    check_invariants(&tr);
    tr
}

fn fault(kind: &str, pid: u64, at_ms: u64, activity: Option<&str>, key: Option<&str>) -> Value {
    let mut f = json!({
        "ts_ns": BASE + at_ms * MS, "pid": pid, "tid": pid, "kind": kind, "addr": 4096,
        "role": if pid == TARGET { "parent" } else { "child" }, "epoch": 0, "latency_ns": 1000,
    });
    if let Some(a) = activity {
        f["activity"] = a.into();
    }
    if let Some(k) = key {
        f["key"] = k.into();
        f["key_len"] = k.len().into();
        f["slot"] = 42.into();
    }
    f
}

fn events(tr: &Value) -> &Vec<Value> {
    tr["traceEvents"].as_array().unwrap()
}

fn with<'a>(tr: &'a Value, pred: impl Fn(&Value) -> bool + 'a) -> Vec<&'a Value> {
    events(tr).iter().filter(|e| pred(e)).collect()
}

/// (ts µs, args) of counter `name` of `pid`.
fn counter(tr: &Value, pid: u64, name: &str) -> Vec<(f64, Value)> {
    with(tr, |e| {
        e["ph"] == "C" && e["pid"] == pid && e["name"] == name
    })
    .into_iter()
    .map(|e| (e["ts"].as_f64().unwrap(), e["args"].clone()))
    .collect()
}

fn thread_name(tr: &Value, pid: &Value, tid: &Value) -> String {
    with(tr, |e| {
        e["ph"] == "M" && e["name"] == "thread_name" && &e["pid"] == pid && &e["tid"] == tid
    })[0]["args"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// What every trace must satisfy to open in Perfetto and chrome://tracing.
fn check_invariants(tr: &Value) {
    assert_eq!(tr["displayTimeUnit"], "ms");
    assert!(tr["metadata"].is_object());
    let mut last = 0.0;
    let mut seen_non_meta = false;
    for e in events(tr) {
        let ph = e["ph"].as_str().unwrap();
        assert!(["X", "i", "C", "M"].contains(&ph), "{e}");
        assert!(e["pid"].is_u64() && e["tid"].is_u64(), "{e}");
        assert!(e["name"].is_string(), "{e}");
        assert!(e["args"].is_object(), "{e}");
        if ph == "M" {
            assert!(!seen_non_meta, "metadata events come first");
            continue;
        }
        seen_non_meta = true;
        let ts = e["ts"].as_f64().unwrap();
        assert!(ts >= 0.0 && ts >= last, "unsorted or negative at {e}");
        last = ts;
        if ph == "X" {
            assert!(e["dur"].as_f64().unwrap() >= 0.0, "{e}");
        }
        if ph == "C" {
            for v in e["args"].as_object().unwrap().values() {
                assert!(v.is_number(), "{e}");
            }
        }
    }
    // What write_trace writes parses back (floats may differ in the last bit: serde_json
    // parses without `float_roundtrip`).
    let text = serde_json::to_string(tr).unwrap();
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(events(&back).len(), events(tr).len());
}

#[test]
fn clock_buckets_are_bounded() {
    let c = Clock::new(0, 1_000 * MS);
    assert_eq!((c.bucket_ns, c.buckets), (100 * MS, 10));
    let c = Clock::new(0, 3_000_000 * MS);
    assert_eq!((c.bucket_ns, c.buckets), (1_000 * MS, 3000));
    let c = Clock::new(0, 3_001_000 * MS);
    assert_eq!(c.bucket_ns, 1_100 * MS);
    assert!(c.buckets <= MAX_BUCKETS);
    let c = Clock::new(5, 0);
    assert_eq!(
        (c.end_ns, c.buckets, c.bucket(0), c.bucket(u64::MAX)),
        (5, 1, 0, 0)
    );
    let c = Clock::new(0, u64::MAX);
    assert!(c.buckets <= MAX_BUCKETS + 1);
    assert_eq!(c.bucket(u64::MAX), c.buckets - 1);
}

#[test]
fn rate_counters_have_exact_values_and_drop_back() {
    let v = doc(
        vec![
            fault("cow_copy", TARGET, 10, Some("SET"), None),
            fault("cow_copy", TARGET, 20, Some("SET"), None),
            fault("cow_copy", TARGET, 30, Some("SET"), None),
            fault("wp_reuse", TARGET, 50, Some("SET"), None),
            fault("cow_copy", 200, 150, Some("fork-child"), None),
            fault("swap_in", TARGET, 250, Some("GET"), Some("k")),
            fault("swap_in", TARGET, 260, Some("GET"), Some("k")),
            fault("cow_copy", TARGET, 450, None, None),
        ],
        vec![],
        vec![],
        1000,
    );
    let tr = trace(&v);
    let pairs = |name| -> Vec<(f64, f64, f64)> {
        counter(&tr, TARGET, name)
            .into_iter()
            .map(|(ts, a)| {
                (
                    ts,
                    a["parent"].as_f64().unwrap(),
                    a["child"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(
        pairs(counters::COW_RATE),
        vec![
            (0.0, 30.0, 0.0),
            (100_000.0, 0.0, 10.0),
            (200_000.0, 0.0, 0.0),
            (300_000.0, 0.0, 0.0),
            (400_000.0, 10.0, 0.0),
            (500_000.0, 0.0, 0.0),
        ]
    );
    assert_eq!(
        pairs(counters::SWAP_IN_RATE),
        vec![
            (0.0, 0.0, 0.0),
            (100_000.0, 0.0, 0.0),
            (200_000.0, 20.0, 0.0),
            (300_000.0, 0.0, 0.0),
        ]
    );
    assert_eq!(tr["metadata"]["bucket_ms"], 100.0);
}

#[test]
fn no_faults_is_a_single_zero_and_last_bucket_drops_at_trace_end() {
    let tr = trace(&doc(vec![], vec![], vec![], 1000));
    assert_eq!(counter(&tr, TARGET, counters::COW_RATE).len(), 1);
    assert_eq!(
        counter(&tr, TARGET, counters::SWAP_IN_RATE)[0].1,
        json!({"parent": 0.0, "child": 0.0})
    );
    // A copy in the last, partial bucket: the 0 lands at the trace end (950 ms).
    let tr = trace(&doc(
        vec![fault("cow_copy", TARGET, 940, Some("SET"), None)],
        vec![],
        vec![],
        950,
    ));
    let c = counter(&tr, TARGET, counters::COW_RATE);
    assert_eq!(c.len(), 11);
    assert_eq!(c[9], (900_000.0, json!({"parent": 10.0, "child": 0.0})));
    assert_eq!(c[10], (950_000.0, json!({"parent": 0.0, "child": 0.0})));
}

#[test]
fn samples_are_mib_counters_and_child_drops_to_zero_at_exit() {
    let samples = vec![
        json!({"ts_ns": BASE + 100 * MS,
               "server": {"rss_bytes": 2 << 20, "swap_bytes": 1 << 20},
               "child": null,
               "info": {"used_memory": 4 << 20, "current_cow_size": null}}),
        json!({"ts_ns": BASE + 200 * MS,
               "server": {"rss_bytes": 3 << 20},
               "child": [200, {"rss_bytes": 1 << 20, "swap_bytes": 0}],
               "info": null}),
    ];
    let epochs = vec![json!({"id": 0, "parent_pid": TARGET, "parent_tid": TARGET,
        "child_pid": 200, "start_ns": BASE + 150 * MS, "end_ns": BASE + 300 * MS,
        "end_reason": "exit", "reason": "bgsave"})];
    let tr = trace(&doc(vec![], epochs, samples, 1000));
    let mib = |v: &[(f64, Value)]| -> Vec<(f64, f64)> {
        v.iter()
            .map(|(ts, a)| (*ts, a["MiB"].as_f64().unwrap()))
            .collect()
    };
    assert_eq!(
        mib(&counter(&tr, TARGET, counters::RSS)),
        vec![(100_000.0, 2.0), (200_000.0, 3.0)]
    );
    // A sample without `swap_bytes` (the recorder always writes it) reads as 0.
    assert_eq!(
        mib(&counter(&tr, TARGET, counters::SWAP)),
        vec![(100_000.0, 1.0), (200_000.0, 0.0)]
    );
    assert_eq!(
        mib(&counter(&tr, TARGET, counters::USED_MEMORY)),
        vec![(100_000.0, 4.0)]
    );
    assert!(counter(&tr, TARGET, counters::CURRENT_COW_SIZE).is_empty());
    assert_eq!(
        mib(&counter(&tr, 200, counters::RSS)),
        vec![(200_000.0, 1.0), (300_000.0, 0.0)]
    );
    assert_eq!(
        mib(&counter(&tr, 200, counters::SWAP)),
        vec![(200_000.0, 0.0), (300_000.0, 0.0)]
    );
}

#[test]
fn swap_level_keeps_the_last_value_of_each_bucket() {
    let level = |pid: u64, at_ms: u64, bytes: u64| {
        json!({"ts_ns": BASE + at_ms * MS, "pid": pid, "tid": pid, "kind": "swap_level",
               "swap_bytes": bytes, "delta_pages": null})
    };
    let tr = trace(&doc(
        vec![
            level(TARGET, 10, 4096),
            level(TARGET, 20, 1 << 20),
            level(TARGET, 150, 0),
            level(200, 20, 2 << 20),
        ],
        vec![],
        vec![],
        1000,
    ));
    let c = counter(&tr, TARGET, counters::SWAP_RSS_STAT);
    assert_eq!(
        c,
        vec![
            (20_000.0, json!({"MiB": 1.0})),
            (150_000.0, json!({"MiB": 0.0}))
        ]
    );
    assert_eq!(
        counter(&tr, 200, counters::SWAP_RSS_STAT),
        vec![(20_000.0, json!({"MiB": 2.0}))]
    );
}

fn epoch(id: u64, child: u64, start_ms: u64, end_ms: Option<u64>) -> Value {
    json!({"id": id, "parent_pid": TARGET, "parent_tid": TARGET, "child_pid": child,
           "start_ns": BASE + start_ms * MS, "end_ns": end_ms.map(|e| BASE + e * MS),
           "fork_duration_ns": 5 * MS, "fork_call_ns": 6 * MS, "reason": "bgsave",
           "started_before_trace": false, "end_reason": end_ms.map(|_| "exit"),
           "faults": {"parent": {"cow_copy": 7, "wp_reuse": 1}, "child": {"cow_copy": 2}},
           "redis": {"latest_fork_usec": 6100, "last_cow_size": null}})
}

#[test]
fn epoch_child_and_fork_call_slices() {
    let events = vec![
        json!({"ts_ns": BASE + 100 * MS, "pid": TARGET, "tid": TARGET, "kind": "fork",
               "child_pid": 200, "epoch": 0}),
        json!({"ts_ns": BASE + 96 * MS, "pid": TARGET, "tid": TARGET, "kind": "fork_return",
               "ret": 200, "duration_ns": 5 * MS}),
    ];
    let tr = trace(&doc(
        events,
        vec![epoch(0, 200, 100, Some(300))],
        vec![],
        1000,
    ));
    let e = with(&tr, |e| e["cat"] == "epoch");
    assert_eq!(e.len(), 1);
    let e = e[0];
    assert_eq!(e["name"], "bgsave epoch 0");
    assert_eq!(
        (e["ts"].as_f64(), e["dur"].as_f64()),
        (Some(100_000.0), Some(200_000.0))
    );
    assert_eq!(e["pid"], TARGET);
    assert_eq!(thread_name(&tr, &e["pid"], &e["tid"]), "fork epochs");
    let a = &e["args"];
    assert_eq!(a["child_pid"], 200);
    assert_eq!(a["cow_pages_parent"], 7);
    assert_eq!(a["cow_pages_child"], 2);
    assert_eq!(a["latest_fork_usec"], 6100);
    assert_eq!(a["fork_call_us"], 6000.0);
    assert_eq!(a["fork_syscall_us"], 5000.0);
    assert_eq!(a["end_reason"], "exit");
    // Every kind, as the recorder writes them (absent ones read as 0).
    assert_eq!(
        a["faults_parent"],
        json!({"cow_copy": 7, "wp_reuse": 1, "swap_in": 0, "first_touch": 0, "other": 0})
    );
    assert!(
        a.get("redis_last_cow_size_bytes").is_none(),
        "null is left out"
    );

    let c = with(&tr, |e| e["cat"] == "epoch_child");
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0]["pid"].as_u64(), c[0]["tid"].as_u64()),
        (Some(200), Some(200))
    );
    assert_eq!(
        (c[0]["ts"].as_f64(), c[0]["dur"].as_f64()),
        (Some(100_000.0), Some(200_000.0))
    );

    let f = with(&tr, |e| e["cat"] == "fork" && e["ph"] == "X");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0]["name"], "fork()");
    assert_eq!(
        (f[0]["ts"].as_f64(), f[0]["dur"].as_f64()),
        (Some(96_000.0), Some(6_000.0))
    );
    assert_eq!(
        (f[0]["pid"].as_u64(), f[0]["tid"].as_u64()),
        (Some(TARGET), Some(TARGET))
    );
    assert_eq!(f[0]["args"]["measured"], "libc fork() call");
    let i = with(&tr, |e| e["cat"] == "fork" && e["ph"] == "i");
    assert_eq!(
        (i.len(), i[0]["ts"].as_f64(), &i[0]["s"]),
        (1, Some(100_000.0), &json!("t"))
    );

    let proc_name = |pid: u64| {
        with(&tr, move |e| e["name"] == "process_name" && e["pid"] == pid)[0]["args"]["name"]
            .clone()
    };
    assert_eq!(proc_name(TARGET), "redis-server (Redis 7.0.15)");
    assert_eq!(proc_name(200), "fork child 200 (bgsave)");
    let sort = |pid: u64| {
        with(&tr, move |e| {
            e["name"] == "process_sort_index" && e["pid"] == pid
        })[0]["args"]["sort_index"]
            .as_i64()
            .unwrap()
    };
    assert!(sort(TARGET) < sort(200));
}

#[test]
fn fork_call_falls_back_to_syscall_and_epoch_start() {
    // No libc measurement, no fork_return event: the syscall, ending at the epoch start.
    let mut ep = epoch(0, 200, 100, Some(300));
    ep["fork_call_ns"] = Value::Null;
    let tr = trace(&doc(vec![], vec![ep.clone()], vec![], 1000));
    let f = with(&tr, |e| e["name"] == "fork()");
    assert_eq!(
        (f[0]["ts"].as_f64(), f[0]["dur"].as_f64()),
        (Some(95_000.0), Some(5_000.0))
    );
    assert_eq!(f[0]["args"]["measured"], "clone syscall");
    // A child found running at attach has no fork call.
    ep["started_before_trace"] = true.into();
    let tr = trace(&doc(vec![], vec![ep], vec![], 1000));
    assert!(with(&tr, |e| e["name"] == "fork()").is_empty());
    assert_eq!(with(&tr, |e| e["cat"] == "epoch").len(), 1);
}

#[test]
fn open_epoch_ends_at_trace_end() {
    let tr = trace(&doc(vec![], vec![epoch(0, 200, 100, None)], vec![], 2000));
    let e = with(&tr, |e| e["cat"] == "epoch")[0];
    assert_eq!(
        (e["ts"].as_f64(), e["dur"].as_f64()),
        (Some(100_000.0), Some(1_900_000.0))
    );
    assert_eq!(e["args"]["end_reason"], "open at trace end");
    let c = with(&tr, |e| e["cat"] == "epoch_child")[0];
    assert_eq!(c["dur"].as_f64(), Some(1_900_000.0));

    // No `end` record: the latest time in the timeline.
    let mut v = doc(
        vec![fault("cow_copy", TARGET, 700, Some("SET"), None)],
        vec![epoch(0, 200, 100, None)],
        vec![],
        0,
    );
    v.as_object_mut().unwrap().remove("end");
    let tr = trace(&v);
    let e = with(&tr, |e| e["cat"] == "epoch")[0];
    assert_eq!(e["dur"].as_f64(), Some(600_000.0));
}

#[test]
fn overlapping_epochs_get_separate_lanes() {
    let tr = trace(&doc(
        vec![],
        vec![
            epoch(0, 200, 100, Some(500)),
            epoch(1, 201, 200, Some(300)),
            epoch(2, 202, 600, Some(700)),
        ],
        vec![],
        1000,
    ));
    let e = with(&tr, |e| e["cat"] == "epoch");
    let tid = |id: u64| {
        e.iter().find(|e| e["args"]["epoch"] == id).unwrap()["tid"]
            .as_u64()
            .unwrap()
    };
    assert_ne!(tid(0), tid(1));
    assert_eq!(tid(0), tid(2));
    assert_eq!(
        thread_name(&tr, &json!(TARGET), &json!(tid(1))),
        "fork epochs (lane 2)"
    );
}

#[test]
fn cow_is_aggregated_per_activity_and_bucket() {
    let tr = trace(&doc(
        vec![
            fault("cow_copy", TARGET, 10, Some("SET"), Some("k1")),
            fault("cow_copy", TARGET, 30, Some("SET"), Some("k1")),
            fault("cow_copy", TARGET, 40, Some("SET"), Some("k2")),
            fault("cow_copy", TARGET, 60, None, None),
            fault("cow_copy", TARGET, 120, Some("SET"), None),
        ],
        vec![],
        vec![],
        1000,
    ));
    let set = with(&tr, |e| e["cat"] == "cow" && e["name"] == "SET");
    assert_eq!(set.len(), 2);
    assert_eq!(
        (set[0]["ts"].as_f64(), set[0]["dur"].as_f64()),
        (Some(10_000.0), Some(30_000.0))
    );
    let a = &set[0]["args"];
    assert_eq!(a["cow_pages"], 3);
    assert_eq!(a["pages_per_s"], 30.0);
    assert_eq!(a["keyed_pages"], 3);
    assert_eq!(a["distinct_keys"], 2);
    assert_eq!(a["role"], "parent");
    assert_eq!(
        a["top_keys"],
        json!([{"key": "k1", "pages": 2}, {"key": "k2", "pages": 1}])
    );
    assert_eq!(set[1]["dur"].as_f64(), Some(0.0));
    assert_eq!(set[1]["args"]["bucket_start_ms"], 100.0);
    assert_eq!(thread_name(&tr, &set[0]["pid"], &set[0]["tid"]), "CoW: SET");
    let un = with(&tr, |e| e["cat"] == "cow" && e["name"] == "unattributed");
    assert_eq!(un.len(), 1);
    assert_ne!(un[0]["tid"], set[0]["tid"]);
    let pages: u64 = with(&tr, |e| e["cat"] == "cow")
        .iter()
        .map(|e| e["args"]["cow_pages"].as_u64().unwrap())
        .sum();
    assert_eq!(pages, 5);
}

#[test]
fn many_activities_share_one_other_track() {
    let mut events = Vec::new();
    let names: Vec<String> = (0..15).map(|i| format!("CMD{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        for _ in 0..=i {
            events.push(fault("cow_copy", TARGET, 10, Some(name), None));
        }
    }
    let tr = trace(&doc(events, vec![], vec![], 1000));
    let cow = with(&tr, |e| e["cat"] == "cow");
    let tids: std::collections::BTreeSet<u64> =
        cow.iter().map(|e| e["tid"].as_u64().unwrap()).collect();
    assert_eq!(tids.len(), MAX_ACTIVITY_TRACKS);
    let other = with(&tr, |e| {
        e["cat"] == "cow" && e["name"] == "other activities"
    });
    assert_eq!(other.len(), 1);
    // The 4 smallest (1 + 2 + 3 + 4 pages) share the track.
    assert_eq!(other[0]["args"]["cow_pages"], 10);
    assert_eq!(
        other[0]["args"]["activities"],
        json!({"CMD00": 1, "CMD01": 2, "CMD02": 3, "CMD03": 4})
    );
    let total: u64 = cow
        .iter()
        .map(|e| e["args"]["cow_pages"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 120);
}

#[test]
fn swap_in_instants_carry_command_and_key_and_are_capped() {
    let tr = trace(&doc(
        vec![fault("swap_in", TARGET, 5, Some("GET"), Some("user:1"))],
        vec![],
        vec![],
        1000,
    ));
    let i = with(&tr, |e| e["cat"] == "swap_in");
    assert_eq!(i.len(), 1);
    assert_eq!(
        (i[0]["ph"].as_str(), i[0]["s"].as_str()),
        (Some("i"), Some("t"))
    );
    let a = &i[0]["args"];
    assert_eq!(
        (&a["command"], &a["key"], &a["slot"]),
        (&json!("GET"), &json!("user:1"), &json!(42))
    );
    assert_eq!(a["latency_us"], 1.0);
    assert_eq!(a["addr"], "0x1000");

    let events: Vec<Value> = (0..MAX_SWAP_IN_INSTANTS as u64 + 10)
        .map(|n| {
            let mut f = fault("swap_in", TARGET, 1, Some("cron"), None);
            f["ts_ns"] = (BASE + n * 1000).into();
            f["latency_ns"] = n.into();
            f
        })
        .collect();
    let tr = trace(&doc(events, vec![], vec![], 1000));
    let i = with(&tr, |e| e["cat"] == "swap_in");
    assert_eq!(i.len(), MAX_SWAP_IN_INSTANTS);
    assert!(
        i[0]["args"].get("command").is_none(),
        "cron is not a command"
    );
    assert_eq!(
        i[0]["args"]["latency_us"], 0.01,
        "the 10 fastest are left out"
    );
    let m = &tr["metadata"]["swap_in_instants"];
    assert_eq!(
        (m["total"].as_u64(), m["omitted"].as_u64()),
        (Some(MAX_SWAP_IN_INSTANTS as u64 + 10), Some(10))
    );
    // The rate counter still counts all of them.
    let c = counter(&tr, TARGET, counters::SWAP_IN_RATE);
    assert_eq!(
        c[0].1["parent"],
        (MAX_SWAP_IN_INSTANTS as f64 + 10.0) * 10.0
    );
}

#[test]
fn hostile_keys_survive_json_escaping() {
    let keys = [
        "\"quoted\"",
        "back\\slash",
        "new\nline\r",
        "nul\u{0}byte\u{1f}",
        "</script><script>alert(1)</script>",
        "crab 🦀 \u{2028}\u{2029}",
        "{\"json\":[1,2]}",
        "\\x00\\xff escaped by the tracer",
    ];
    let mut events = Vec::new();
    for k in keys {
        events.push(fault("cow_copy", TARGET, 10, Some("SET"), Some(k)));
        events.push(fault("swap_in", TARGET, 20, Some("GET"), Some(k)));
    }
    let tr = trace(&doc(events, vec![], vec![], 1000));
    let text = serde_json::to_string(&tr).unwrap();
    let back: Value = serde_json::from_str(&text).unwrap();
    let mut swapped: Vec<String> = with(&back, |e| e["cat"] == "swap_in")
        .iter()
        .map(|e| e["args"]["key"].as_str().unwrap().to_string())
        .collect();
    let mut copied: Vec<String> = with(&back, |e| e["cat"] == "cow")[0]["args"]["top_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    want.sort();
    swapped.sort();
    assert_eq!(swapped, want);
    // top_keys lists 5 of the 8 (1 page each: the first 5 in byte order).
    copied.sort();
    assert_eq!(copied, want[..faults::TOP_KEYS].to_vec());
}

#[test]
fn control_characters_are_kept_out_of_names_but_not_args() {
    let tr = trace(&doc(
        vec![fault(
            "cow_copy",
            TARGET,
            10,
            Some("BAD\u{1}\u{7f}\nCMD"),
            None,
        )],
        vec![],
        vec![],
        1000,
    ));
    let c = with(&tr, |e| e["cat"] == "cow")[0];
    assert_eq!(c["name"], "BAD???CMD");
    assert_eq!(c["args"]["activity"], "BAD\u{1}\u{7f}\nCMD");
    assert_eq!(thread_name(&tr, &c["pid"], &c["tid"]), "CoW: BAD???CMD");
}

#[test]
fn file_layout_puts_ph_and_ts_first_one_event_per_line() {
    let tr = trace(&doc(
        vec![fault("cow_copy", TARGET, 10, Some("SET"), Some("k\"\n"))],
        vec![epoch(0, 200, 5, Some(30))],
        vec![],
        100,
    ));
    let bytes = encode(&tr).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.starts_with("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n"));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), events(&tr).len() + 2);
    for line in &lines[1..lines.len() - 1] {
        assert!(line.starts_with("{\"ph\":"), "{line}");
        assert!(line.contains(",\"ts\":"), "{line}");
    }
    assert!(lines.last().unwrap().starts_with("],\"metadata\":{"));
    let back: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back["metadata"], tr["metadata"]);
    assert_eq!(events(&back).len(), events(&tr).len());
    let key = with(&back, |e| e["cat"] == "cow")[0]["args"]["top_keys"][0]["key"].clone();
    assert_eq!(key, "k\"\n");
}

#[test]
fn times_before_the_start_are_pinned_to_zero() {
    let tr = trace(&doc(
        vec![fault("cow_copy", TARGET, 0, Some("SET"), None)],
        vec![json!({"id": 0, "parent_pid": TARGET, "child_pid": 200,
                    "start_ns": BASE - 50 * MS, "end_ns": BASE + 50 * MS})],
        vec![json!({"ts_ns": BASE - 1, "server": {"rss_bytes": 0}})],
        1000,
    ));
    let e = with(&tr, |e| e["cat"] == "epoch")[0];
    assert_eq!(
        (e["ts"].as_f64(), e["dur"].as_f64()),
        (Some(0.0), Some(50_000.0))
    );
    assert_eq!(e["name"], "fork epoch 0");
    assert_eq!(counter(&tr, TARGET, counters::RSS)[0].0, 0.0);
}

#[test]
fn odd_but_valid_timelines_do_not_panic() {
    let minimal = json!({"schema_version": 1, "run": {}, "target": {}, "events": [],
                         "epochs": [], "summary": {}});
    let tr = trace(&minimal);
    assert_eq!(tr["metadata"]["monotonic_start_ns"], 0);
    let odd = json!({"schema_version": 1, "run": {"monotonic_start_ns": null},
        "target": {"pid": -1, "comm": 5}, "summary": {}, "redis": null, "end": null,
        "events": [
            {"ts_ns": null, "kind": "cow_copy", "pid": 1},
            {"ts_ns": 5, "kind": "cow_copy"},
            {"ts_ns": 5, "kind": "mystery", "pid": 1},
            {"ts_ns": 5.5, "kind": "fork", "pid": 1},
            {"ts_ns": 7, "kind": "fork", "pid": 1, "child_pid": "x", "epoch": null},
            {"ts_ns": 8, "kind": "fork_return", "pid": 1, "ret": null, "duration_ns": -3},
            {"ts_ns": 9, "kind": "swap_level", "pid": 1},
            {"ts_ns": 10, "kind": "swap_in", "pid": 4294967296u64},
            {"ts_ns": u64::MAX, "kind": "swap_in", "pid": 1, "tid": null, "key": [1],
             "activity": {}},
            [], 3, null
        ],
        "epochs": [
            {"start_ns": null},
            {"start_ns": u64::MAX, "end_ns": 1, "child_pid": null, "faults": [],
             "redis": "x", "fork_call_ns": u64::MAX},
            {"start_ns": 0, "end_ns": u64::MAX, "id": -1, "reason": 3},
            7
        ],
        "samples": [null, {"ts_ns": 1, "child": [null, 3]}, {"ts_ns": 2, "child": [5]},
                    {"ts_ns": 3, "server": null, "info": "x", "child": {"a": 1}}]
    });
    let tr = trace(&odd);
    assert_eq!(tr["metadata"]["epochs_skipped"], 2);
}

#[test]
fn write_trace_writes_0600_and_fails_in_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t = parse("t", &doc(vec![], vec![], vec![], 10).to_string()).unwrap();
    let out = dir.path().join("trace.json");
    write_trace(&t, &out).unwrap();
    let back: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    check_invariants(&back);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let e = write_trace(&t, Path::new("/nonexistent/dir/trace.json")).unwrap_err();
    let line = format!("{e:#}");
    assert!(
        line.starts_with("cannot write /nonexistent/dir/trace.json: "),
        "{line}"
    );
    assert!(!line.contains('\n'));
    let e = write_trace(&t, dir.path()).unwrap_err();
    assert!(format!("{e:#}").contains("is a directory"), "{e:#}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp left"
    );

    let e = export(&dir.path().join("missing.json"), &out).unwrap_err();
    assert!(format!("{e:#}").starts_with("cannot read "), "{e:#}");
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0u64..3_000_000_000).prop_map(|n| Value::from(BASE - MS + n)),
        (0u64..500).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "cow_copy",
            "swap_in",
            "wp_reuse",
            "first_touch",
            "other",
            "fork",
            "fork_return",
            "exit",
            "swap_level",
            "swap_write",
            "parent",
            "child",
            "SET",
        ])
        .prop_map(Value::from),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object with some of `keys`, each holding anything.
fn record(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(keys), value(), 0..keys.len())
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

const EVENT_KEYS: &[&str] = &[
    "ts_ns",
    "pid",
    "tid",
    "kind",
    "role",
    "activity",
    "key",
    "slot",
    "latency_ns",
    "epoch",
    "child_pid",
    "ret",
    "duration_ns",
    "swap_bytes",
    "addr",
    "stage",
];
const EPOCH_KEYS: &[&str] = &[
    "id",
    "parent_pid",
    "parent_tid",
    "child_pid",
    "start_ns",
    "end_ns",
    "fork_duration_ns",
    "fork_call_ns",
    "reason",
    "end_reason",
    "started_before_trace",
    "faults",
    "redis",
];
const SAMPLE_KEYS: &[&str] = &["ts_ns", "server", "child", "info"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_records_never_panic(
        events in prop::collection::vec(record(EVENT_KEYS), 0..30),
        epochs in prop::collection::vec(record(EPOCH_KEYS), 0..4),
        samples in prop::collection::vec(record(SAMPLE_KEYS), 0..4),
        run in record(&["monotonic_start_ns", "wall_start_unix_ns", "tracer_version"]),
        end in record(&["monotonic_end_ns", "reason"]),
        target in record(&["pid", "comm"]),
    ) {
        let v = json!({"schema_version": 1, "run": run, "target": target, "events": events,
                       "epochs": epochs, "samples": samples, "end": end, "summary": {}});
        let _ = trace(&v);
    }

    #[test]
    fn mutated_timelines_never_panic(at in 0usize..10_000, byte in any::<u8>(), cut in 0usize..10_000) {
        let good = doc(
            vec![
                fault("cow_copy", TARGET, 10, Some("SET"), Some("k")),
                fault("swap_in", 200, 20, Some("GET"), Some("k")),
                json!({"ts_ns": BASE + 5 * MS, "pid": TARGET, "tid": TARGET, "kind": "fork_return",
                       "ret": 200, "duration_ns": 1000}),
            ],
            vec![epoch(0, 200, 5, Some(30))],
            vec![json!({"ts_ns": BASE + 15 * MS, "server": {"rss_bytes": 4096},
                        "child": [200, {"rss_bytes": 1}], "info": {"used_memory": 3}})],
            100,
        )
        .to_string();
        let mut bytes = good.clone().into_bytes();
        let at = at % bytes.len();
        bytes[at] = byte;
        for text in [String::from_utf8_lossy(&bytes).into_owned(), good[..cut % good.len()].to_string()] {
            if let Ok(t) = parse("t", &text) {
                check_invariants(&to_chrome_trace(&t));
            }
        }
    }
}
