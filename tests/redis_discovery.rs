//! The layout the tracer discovers on a live server (`redis.layout` of the timeline) is
//! exact, on every build of the matrix, checked against two oracles that owe nothing to
//! the discovery:
//!
//! 1. the binary's own DWARF, where it has some (`readelf --debug-dump=info`): the size
//!    of `struct redisServer` / `valkeyServer`, `offsetof` its `current_client`,
//!    `stat_numcommands`, `clients`, and of `argc`, `argv`, `bulklen` in `struct client`;
//!    on a build with a command queue (Valkey 9) also `cmd_queue` and `parsedCommand`,
//!    and without one, no `client_queue` in the layout;
//! 2. the per-version tables attribution used before discovery (6.2 and 7.0, computed
//!    with `offsetof` from each version's `server.h`), which discovery must reproduce.
//!
//! Where both apply they must agree with each other first. A build with neither (a
//! stripped binary of another version) must still have a complete layout with attribution
//! on. Real servers, real eBPF, as root.

use std::time::Instant;

use serde_json::{Map, Value, json};
use testkit::{
    Allocator, Build, Product, Recording, Server, attribution_builds, dwarf, read_timeline,
    require_root,
};

/// The offsets the tables of earlier versions held, for the builds they were made for:
/// (version prefix, server_size, current_client, stat_numcommands, clients, client_argc,
/// client_argv).
const OLD_TABLES: [(&str, [u64; 6]); 2] = [
    ("6.2.", [3960, 696, 1240, 648, 72, 80]),
    ("7.0.", [4368, 752, 1216, 704, 72, 80]),
];

/// Fields every layout has, all integers.
const NUMBERS: [&str; 7] = [
    "server_size",
    "current_client",
    "stat_numcommands",
    "clients",
    "client_argc",
    "client_argv",
    "client_bulklen",
];

/// Oracle 2: the old table's fields for `build`, if it had one.
fn table_oracle(build: &Build) -> Option<Value> {
    let (_, v) = OLD_TABLES
        .iter()
        .find(|(prefix, _)| build.product == Product::Redis && build.version.starts_with(prefix))?;
    Some(json!({
        "server_size": v[0],
        "current_client": v[1],
        "stat_numcommands": v[2],
        "clients": v[3],
        "client_argc": v[4],
        "client_argv": v[5],
    }))
}

/// Oracle 1: the fields from the binary's DWARF, if it has some. A member missing from
/// the DWARF fails the test: a build with debug info must describe what attribution reads.
fn dwarf_oracle(build: &Build) -> Option<Value> {
    if !dwarf::has_debug_info(&build.server) {
        return None;
    }
    let label = &build.label;
    let (own, other) = match build.product {
        Product::Redis => ("redisServer", "valkeyServer"),
        Product::Valkey => ("valkeyServer", "redisServer"),
    };
    let started = Instant::now();
    let found = dwarf::structs(
        &build.server,
        &[own, other, "client", "parsedCommand", "cmdQueue"],
    );
    eprintln!(
        "[{label}] DWARF read in {:.2} s: {:?}",
        started.elapsed().as_secs_f64(),
        found.keys().collect::<Vec<_>>()
    );
    // Valkey kept Redis's name before 8.0.
    let server = found
        .get(own)
        .or_else(|| found.get(other))
        .unwrap_or_else(|| panic!("[{label}] no struct {own} in the DWARF"));
    let client = found
        .get("client")
        .unwrap_or_else(|| panic!("[{label}] no struct client in the DWARF"));
    let member = |s: &dwarf::Struct, what: &str, name: &str| {
        s.offset(name)
            .unwrap_or_else(|| panic!("[{label}] no member {name} in the DWARF's {what}"))
    };
    let mut expected = json!({
        "server_size": server.byte_size,
        "current_client": member(server, own, "current_client"),
        "stat_numcommands": member(server, own, "stat_numcommands"),
        "clients": member(server, own, "clients"),
        "client_argc": member(client, "client", "argc"),
        "client_argv": member(client, "client", "argv"),
        "client_bulklen": member(client, "client", "bulklen"),
        // A build without a command queue must have no `client_queue`.
        "client_queue": null,
    });
    if let Some(queue) = client.offset("cmd_queue") {
        let entry = found
            .get("parsedCommand")
            .unwrap_or_else(|| panic!("[{label}] client.cmd_queue but no parsedCommand"));
        // `{parsedCommand *cmds; uint16_t len; ...}`: len right after the pointer.
        let len = found
            .get("cmdQueue")
            .map_or(8, |q| member(q, "cmdQueue", "len"));
        expected["client_queue"] = json!({
            "len": queue + len,
            "stride": entry.byte_size,
            "argc": member(entry, "parsedCommand", "argc"),
            "argv": member(entry, "parsedCommand", "argv"),
        });
    }
    Some(expected)
}

/// The fields of `expected` whose value differs in `layout` (an absent field is `null`).
fn differences(layout: &Value, expected: &Value) -> Vec<String> {
    let expected: &Map<String, Value> = expected.as_object().unwrap();
    expected
        .iter()
        .filter_map(|(k, want)| {
            let got = layout.get(k).unwrap_or(&Value::Null);
            (got != want).then(|| format!("{k}: discovered {got}, expected {want}"))
        })
        .collect()
}

/// Starts `build`, records it briefly and returns its timeline's `redis` object.
fn recorded_redis(build: &Build) -> Value {
    let label = &build.label;
    let server = Server::start(build, &[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let rec = Recording::start(&server, &out, &[]);
    let stderr = rec.stop();
    let t = read_timeline(&out);
    assert_eq!(
        t["run"]["options"]["attribution"], true,
        "[{label}] {stderr}"
    );
    let redis = t["redis"].clone();
    assert!(redis.is_object(), "[{label}] attribution active: {stderr}");
    assert_eq!(redis["product"], build.product.name(), "[{label}]");
    assert_eq!(redis["version"], build.version.as_str(), "[{label}]");
    redis
}

/// The README's support table: per build, whether the binary carries DWARF (so the
/// layout is checked against it), the internal phases the binary's symbols give, and
/// the allocator the live server reports.
const MATRIX: [(&str, bool, &[&str], Allocator); 7] = [
    ("redis-6.2", true, &PHASES_7, Allocator::Libc),
    ("redis-7.0", false, &PHASES_7, Allocator::Jemalloc),
    ("redis-7.4", true, &PHASES_8, Allocator::Jemalloc),
    ("valkey-8.0", false, &PHASES_7, Allocator::Jemalloc),
    ("valkey-8.1", true, &PHASES_7, Allocator::Libc),
    ("valkey-9.1", false, &PHASES_6, Allocator::Libc),
    ("redis-8.0", false, &PHASES_7, Allocator::Jemalloc),
];
const PHASES_6: [&str; 6] = [
    "networking-read",
    "networking-write",
    "active-expire",
    "eviction",
    "cron",
    "before-sleep",
];
const PHASES_7: [&str; 7] = [
    "networking-read",
    "networking-write",
    "active-expire",
    "eviction",
    "replica-load",
    "cron",
    "before-sleep",
];
const PHASES_8: [&str; 8] = [
    "networking-read",
    "networking-write",
    "active-expire",
    "eviction",
    "active-defrag",
    "replica-load",
    "cron",
    "before-sleep",
];

/// With the installed matrix (`cargo xtask test`), the builds are the README's seven.
#[test]
fn the_installed_matrix_is_the_readmes() {
    if std::env::var(testkit::builds::MANIFEST_ENV).is_err() {
        eprintln!("no manifest (run through `cargo xtask test`): nothing to compare");
        return;
    }
    let expected: Vec<&str> = MATRIX.iter().map(|(l, ..)| *l).collect();
    let labels: Vec<String> = testkit::builds().into_iter().map(|b| b.label).collect();
    assert_eq!(labels, expected, "the installed builds");
    // The builds the attribution tests loop over: all of them (`cargo xtask test` clears
    // `MEMTRACE_ONLY_BUILDS`, which narrows this list while working on one build).
    let tested: Vec<String> = attribution_builds().into_iter().map(|b| b.label).collect();
    assert_eq!(tested, expected, "the builds the attribution tests run on");
}

#[test]
fn discovered_layouts_match_the_binaries_dwarf_and_the_old_tables() {
    require_root();
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut checked = Vec::new();
    for build in attribution_builds() {
        let label = &build.label;
        let dwarf = dwarf_oracle(&build);
        let table = table_oracle(&build);
        if let (Some(d), Some(t)) = (&dwarf, &table) {
            let disagree = differences(d, t);
            assert!(
                disagree.is_empty(),
                "[{label}] the DWARF and the old table disagree (no oracle to choose): \
                 {disagree:?}\nDWARF: {d}\ntable: {t}"
            );
        }

        let redis = recorded_redis(&build);
        if let Some((_, has_dwarf, phases, allocator)) = MATRIX.iter().find(|(l, ..)| l == label) {
            let reported = redis["allocator"].as_str().and_then(Allocator::from_name);
            assert_eq!(reported, Some(*allocator), "[{label}] INFO mem_allocator");
            assert_eq!(dwarf.is_some(), *has_dwarf, "[{label}] DWARF oracle");
            let found: Vec<&str> = redis["phases"]
                .as_array()
                .map_or(Vec::new(), |p| p.iter().filter_map(Value::as_str).collect());
            assert_eq!(found, *phases, "[{label}] phases");
        }
        let layout = &redis["layout"];
        eprintln!("[{label}] discovered layout: {layout}");
        // Complete, whatever the oracles.
        for k in NUMBERS {
            assert!(layout[k].is_u64(), "[{label}] layout.{k}: {layout}");
        }
        assert!(
            matches!(layout["values"].as_str(), Some("pointer" | "inline")),
            "[{label}] layout.values: {layout}"
        );
        assert!(
            layout.get("client_queue").is_none_or(|q| {
                ["len", "stride", "argc", "argv"]
                    .iter()
                    .all(|k| q[k].is_u64())
            }),
            "[{label}] layout.client_queue: {layout}"
        );

        let oracles = [("DWARF", dwarf), ("old table", table)];
        let mut used = Vec::new();
        for (name, expected) in oracles {
            let Some(expected) = expected else { continue };
            let diff = differences(layout, &expected);
            let verdict = if diff.is_empty() { "exact" } else { "MISMATCH" };
            eprintln!("[{label}] {name} oracle: {expected} -> {verdict}");
            if !diff.is_empty() {
                failures.push(format!("[{label}] against the {name}: {diff:?}"));
            }
            used.push(name);
        }
        if used.is_empty() {
            eprintln!("[{label}] no oracle (stripped binary, no table): complete layout only");
        }
        let used = if used.is_empty() {
            "none".into()
        } else {
            used.join(" + ")
        };
        checked.push(format!("{label}: {used}"));
    }
    eprintln!(
        "oracles per build: {}; {:.1} s",
        checked.join(", "),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn differences_name_each_field_and_an_absent_queue_is_null() {
    let layout = json!({"server_size": 3960, "clients": 648, "values": "pointer"});
    let same = json!({"server_size": 3960, "clients": 648, "client_queue": null});
    assert!(differences(&layout, &same).is_empty());
    let off = json!({"server_size": 3968, "clients": 648});
    assert_eq!(
        differences(&layout, &off),
        ["server_size: discovered 3960, expected 3968"]
    );
    let queue = json!({"client_queue": {"len": 88, "stride": 48, "argc": 4, "argv": 8}});
    assert_eq!(
        differences(&layout, &queue).len(),
        1,
        "a queue expected, none found"
    );
    let with_queue = json!({"client_queue": {"len": 88, "stride": 48, "argc": 4, "argv": 8}});
    let none = json!({"client_queue": null});
    assert_eq!(
        differences(&with_queue, &none).len(),
        1,
        "a queue found, none expected"
    );
    assert!(differences(&with_queue, &queue).is_empty());
}
