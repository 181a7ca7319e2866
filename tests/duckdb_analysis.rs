//! The DuckDB queries of `docs/analysis.md` on a real recording. The SQL is read from the
//! page itself (the blocks after `<!-- duckdb-sql: NAME -->`), so the page and this test
//! cannot drift apart, and run by DuckDB's Python package (the pinned wheel `cargo xtask
//! setup` installs; `testkit::tools` finds it) on NDJSON timelines recorded through a
//! BGSAVE while a client writes hash-tagged keys, a known number of pages per tag. The
//! results must equal what the tracer itself wrote in the trailer and what
//! `redis-memtrace report` prints. Two builds: Redis 7.0 (jemalloc) and Redis 6.2, whose
//! C-library allocator gives faults marked `in_allocator` that the tables leave out. And
//! a multi-node timeline (schema version 2) of three Redis 7.0 servers, written by one
//! tracer (`record --redis A --redis B --redis C`) and by `merge`, whose queries must
//! give the nodes' slot tables and the cluster view `report` prints.
//!
//! Needs root, Debian's python3 and `cargo xtask setup`. Run serially (`--test-threads=1`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};
use testkit::{
    Allocator, Recording, Server, by_label, commands::cluster_keyslots, recording::ATTRIBUTION_ON,
    require_root, run_in, tools,
};

/// Runs `python3 -c RUNNER VERSION SETUP QUERY...` in the folder holding the timelines:
/// checks the DuckDB version, runs the setup block (the view or table, one or more
/// statements), prints each query's rows as one JSON array per line. The same calls
/// `docs/analysis.md` shows (`execute`, then `sql`).
const RUNNER: &str = r#"
import json, sys, duckdb
if duckdb.__version__ != sys.argv[1]:
    sys.exit("duckdb %s from %s, expected %s" % (duckdb.__version__, duckdb.__file__, sys.argv[1]))
con = duckdb.connect()
con.execute(sys.argv[2])
for query in sys.argv[3:]:
    print(json.dumps(con.sql(query).fetchall()))
"#;

/// The hash tags whose values get pages written in place under the BGSAVE, and how many
/// pages of each of their keys: a different number per tag, so their slots must come out
/// in this order.
const TAGS: [(&str, u64); 3] = [("tagA", 6), ("tagB", 3), ("tagC", 1)];
/// Keys per tag.
const KEYS_PER_TAG: u64 = 40;
/// Bytes of each tagged value: 8 pages, each write lands on a page of its own.
const VALUE_BYTES: usize = 8 << 12;
/// The hash tag of new keys set under the BGSAVE into memory freed before it: the C
/// library's allocator writes its bookkeeping into those shared pages, so on a libc build
/// some of the tag's faults are `in_allocator`, which the slot table leaves out.
const ALLOCATING_TAG: &str = "tagD";
/// Keys of [`ALLOCATING_TAG`], and their value size (small chunks, reused from freed ones).
const ALLOCATING_KEYS: u64 = 200;
const ALLOCATING_BYTES: usize = 2000;
/// Keys the fork child saves, slowly (`rdb-key-save-delay`), while the writes land.
const FILLER_KEYS: u64 = 20_000;
/// `report --top`'s default: the rows of each table `report` prints.
const REPORT_TOP: usize = 10;

/// The SQL of the block marked `<!-- duckdb-sql: NAME -->` in `docs/analysis.md`.
fn doc_sql(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/analysis.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let marker = format!("<!-- duckdb-sql: {name} -->\n```sql\n");
    assert_eq!(
        doc.matches(&marker).count(),
        1,
        "{} must have exactly one `{}` block",
        path.display(),
        marker.trim_end()
    );
    let start = doc.find(&marker).map(|i| i + marker.len()).unwrap_or(0);
    let len = doc[start..]
        .find("```")
        .unwrap_or_else(|| panic!("the {name} block of {} is not closed", path.display()));
    doc[start..start + len].to_string()
}

/// The folder to put on `PYTHONPATH`; fails the test when setup did not install DuckDB.
fn require_duckdb() -> PathBuf {
    let dir = tools::duckdb_dir().expect("neither MEMTRACE_DUCKDB nor HOME is set");
    assert!(
        dir.join("duckdb").is_dir(),
        "no DuckDB Python package in {}: run `cargo xtask setup`",
        dir.display()
    );
    dir
}

/// The rows of each query (by block name), run in `cwd` after the block `setup` (the
/// `records` view of NDJSON timelines, or the `nodes` table of a multi-node document).
fn duckdb(cwd: &Path, setup: &str, queries: &[&str]) -> Vec<Vec<Value>> {
    let out = Command::new(tools::PYTHON)
        .arg("-c")
        .arg(RUNNER)
        .arg(tools::DUCKDB_VERSION)
        .arg(doc_sql(setup))
        .args(queries.iter().map(|q| doc_sql(q)))
        .env("PYTHONPATH", require_duckdb())
        .current_dir(cwd)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "DuckDB failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<Value>> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(rows.len(), queries.len(), "{stdout}");
    rows
}

/// The trailer line of a finished NDJSON timeline.
fn trailer(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    let last = text.lines().last().expect("an empty timeline");
    let t: Value = serde_json::from_str(last).expect("the last line is one JSON object");
    assert_eq!(t["type"], "trailer", "the run did not finish");
    t
}

/// `[slot, pages]` rows of a `top_slots_*` aggregate.
fn slot_rows(rows: &Value) -> Vec<Value> {
    let rows = rows.as_array().expect("a slot table");
    rows.iter()
        .map(|r| json!([r["slot"], r["pages"]]))
        .collect()
}

/// The cells of each row of the table titled `title` (the first line starting with it)
/// in a text `report`, split at whitespace.
fn report_rows<'r>(report: &'r str, title: &str) -> Vec<Vec<&'r str>> {
    let mut lines = report.lines().skip_while(|l| !l.starts_with(title));
    assert!(lines.next().is_some(), "no table {title:?} in:\n{report}");
    // The column names and the dashes under them.
    let rows = lines.skip(2).take_while(|l| !l.is_empty());
    rows.map(|l| l.split_whitespace().collect()).collect()
}

/// A number `report` printed.
fn cell(row: &[&str], i: usize) -> u64 {
    row[i].parse().unwrap_or_else(|_| panic!("row {row:?}"))
}

/// `[slot, pages]` rows of the "Top slots by copy-on-write" table `report` printed.
fn report_slot_rows(report: &str) -> Vec<Value> {
    let rows = report_rows(report, "Top slots by copy-on-write");
    // The rank, the slot, the pages.
    rows.iter()
        .map(|r| json!([cell(r, 1), cell(r, 2)]))
        .collect()
}

/// The hash tags of one server's workload, `{tagA<suffix>}` ...: `TAGS`, then
/// [`ALLOCATING_TAG`]. The suffix is empty for a lone server; in the multi-node case each
/// server has its own, so that each slot is one server's.
fn tags(suffix: &str) -> Vec<String> {
    let names = TAGS.iter().map(|(t, _)| *t).chain([ALLOCATING_TAG]);
    names.map(|t| format!("{{{t}{suffix}}}")).collect()
}

/// The key written under each tag, in `TAGS` order, with how many pages each write.
fn tagged_keys(suffix: &str) -> Vec<(String, u64)> {
    let tags = tags(suffix);
    TAGS.iter()
        .zip(tags)
        .flat_map(|(&(_, pages), tag)| {
            (0..KEYS_PER_TAG).map(move |i| (format!("{tag}:{i}"), pages))
        })
        .collect()
}

/// `SET key value` for every key, pipelined.
fn set_keys(con: &mut redis::Connection, keys: &[String], value: &[u8]) {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("SET").arg(key).arg(value).ignore();
    }
    pipe.query::<()>(con).expect("pipelined SET");
}

/// The keys of [`ALLOCATING_TAG`] named `{tagD<suffix>}:<what>:<i>`.
fn allocating_keys(suffix: &str, what: &str) -> Vec<String> {
    (0..ALLOCATING_KEYS)
        .map(|i| format!("{{{ALLOCATING_TAG}{suffix}}}:{what}:{i}"))
        .collect()
}

/// One byte on each of the first `pages` pages of every tagged value: a page copy each
/// while the child shares them.
fn write_tagged_pages(con: &mut redis::Connection, suffix: &str) {
    let mut pipe = redis::pipe();
    for (key, pages) in tagged_keys(suffix) {
        for page in 0..pages {
            pipe.cmd("SETRANGE")
                .arg(&key)
                .arg(page << 12)
                .arg("x")
                .ignore();
        }
    }
    pipe.query::<()>(con).expect("SETRANGE the tagged keys");
}

/// Gets `server` ready for [`bgsave_under_writes`] with the tags of `suffix`: the
/// filler keys, the tagged values, free chunks, and a child that saves slowly.
fn prepare_writes(server: &Server, suffix: &str) {
    server.populate(FILLER_KEYS, "filler", 1024);
    let mut con = server.client();
    let tagged: Vec<String> = tagged_keys(suffix).into_iter().map(|(k, _)| k).collect();
    set_keys(&mut con, &tagged, &[b'v'; VALUE_BYTES]);
    // Set and deleted: free chunks in pages the fork will share.
    let old = allocating_keys(suffix, "old");
    set_keys(&mut con, &old, &[b'o'; ALLOCATING_BYTES]);
    let deleted: u64 = redis::cmd("DEL").arg(&old).query(&mut con).expect("DEL");
    assert_eq!(deleted, ALLOCATING_KEYS);
    // 100 us per key saved: the child lives for seconds, the writes take milliseconds.
    server.config_set("rdb-key-save-delay", "100");
}

/// A BGSAVE whose child saves slowly while the tagged values of `suffix` get their pages
/// written and the allocating tag's keys are set; returns once the child is done.
fn bgsave_under_writes(server: &Server, suffix: &str) {
    let mut con = server.client();
    let reply: String = redis::cmd("BGSAVE").query(&mut con).expect("BGSAVE");
    assert!(reply.contains("Background saving started"), "{reply}");
    write_tagged_pages(&mut con, suffix);
    let new = allocating_keys(suffix, "new");
    set_keys(&mut con, &new, &[b'n'; ALLOCATING_BYTES]);
    let persistence = server.info("persistence");
    assert_eq!(
        persistence["rdb_bgsave_in_progress"], "1",
        "the writes must land while the child lives"
    );
    let (status, _) = server.wait_bgsave_done(Duration::from_secs(120));
    assert_eq!(status, "ok");
}

/// Records `server` with `--format ndjson` into `out` through [`bgsave_under_writes`];
/// returns the tracer's stderr.
fn record_bgsave_under_writes(server: &Server, out: &Path) -> String {
    prepare_writes(server, "");
    let rec = Recording::start(server, out, &["--format", "ndjson"]);
    bgsave_under_writes(server, "");
    rec.stop()
}

/// Redis 7.0 is built with jemalloc: no fault is `in_allocator`.
#[test]
fn duckdb_queries_reproduce_the_tables_on_redis_7_0() {
    queries_reproduce_the_tables("redis-7.0");
}

/// Redis 6.2 is built with the C library's allocator: the run has `in_allocator` faults
/// under keyed commands, which the queries must leave out as the tracer does.
#[test]
fn duckdb_queries_leave_out_allocator_faults_on_redis_6_2() {
    queries_reproduce_the_tables("redis-6.2");
}

/// Records `label` and checks every documented query against the tracer's tables.
fn queries_reproduce_the_tables(label: &str) {
    require_root();
    require_duckdb();
    let build = by_label(label);
    let tag_slots = distinct_slots(&build, &tags(""));

    let server = Server::start(&build, &[]);
    let dir = tempfile::tempdir().unwrap();
    let timelines = dir.path().join("timelines");
    std::fs::create_dir(&timelines).unwrap();
    let out = timelines.join("run-1.ndjson");
    let stderr = record_bgsave_under_writes(&server, &out);
    eprintln!("[{label}] {stderr}");
    drop(server);

    let t = trailer(&out);
    let attribution = &t["summary"]["attribution"];
    assert!(
        attribution.is_object(),
        "[{label}] attribution off: {stderr}"
    );
    let no_cap = json!({"max_events": null, "max_rate_per_s": null, "dropped": 0});
    assert_eq!(
        t["event_cap"], no_cap,
        "the queries equal the tables only without a cap"
    );
    let left_out = allocator_faults_with_a_slot(&out);
    eprintln!("[{label}] {left_out} in_allocator cow_copy faults with a slot");
    if build.allocator == Allocator::Libc {
        assert!(
            left_out > 0,
            "[{label}] nothing for the slot table to leave out"
        );
    }
    let results = duckdb(
        dir.path(),
        "records",
        &["top-slots-cow", "cow-per-epoch", "top-keys-cow", "trailers"],
    );
    let slots = &results[0];
    eprintln!("[{label}] DuckDB slot table: {slots:?}");
    check_slot_table(slots, &t, &tag_slots);
    check_report(&out, slots);
    check_epochs(&results[1], &t);
    check_top_keys(&results[2], attribution);
    let expected = json!([["timelines/run-1.ndjson", null, null, 0, t["lost_events"]]]);
    assert_eq!(
        Value::from(results[3].clone()),
        expected,
        "the trailer query"
    );

    // Two timelines read together: the same one twice gives every slot twice its pages.
    std::fs::copy(&out, timelines.join("run-2.ndjson")).unwrap();
    let twice = &duckdb(dir.path(), "records", &["top-slots-cow"])[0];
    let doubled: Vec<Value> = slots
        .iter()
        .map(|r| json!([r[0], r[1].as_u64().unwrap() * 2]))
        .collect();
    assert_eq!(twice, &doubled, "[{label}] two copies of the timeline");
}

/// The slot of each of `tags`, which must all differ.
fn distinct_slots(build: &testkit::Build, tags: &[String]) -> Vec<u64> {
    let slots = cluster_keyslots(build, tags);
    let distinct: BTreeSet<u64> = slots.iter().copied().collect();
    assert_eq!(distinct.len(), slots.len(), "one slot per tag: {slots:?}");
    slots
}

/// `cow_copy` records of `path` with a `slot` and `in_allocator`, counted here (not by
/// DuckDB): what the slot table must leave out.
fn allocator_faults_with_a_slot(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"));
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("one JSON object per line"))
        .filter(|r| r["kind"] == "cow_copy" && r["in_allocator"] == true && r["slot"].is_u64())
        .count()
}

/// (a) The query's rows are the trailer's `top_slots_cow`, and the hash tags' slots
/// (`tag_slots`: `TAGS`, then the allocating tag) are its first rows, `TAGS` in the order
/// of their pages written, each with at least the pages written.
fn check_slot_table(slots: &[Value], t: &Value, tag_slots: &[u64]) {
    let written = slot_rows(&t["summary"]["attribution"]["top_slots_cow"]);
    assert_eq!(slots, written, "DuckDB against the trailer's top_slots_cow");
    let with_pages = slots.iter().filter(|r| r[1].as_u64() > Some(0)).count();
    assert!(with_pages >= 3, "{with_pages} slots with pages: {slots:?}");
    // The first rows are the written tags' slots...
    let first: Vec<u64> = slots
        .iter()
        .take(tag_slots.len())
        .map(|r| r[0].as_u64().expect("a slot"))
        .collect();
    let (mut leading, mut expected) = (first.clone(), tag_slots.to_vec());
    leading.sort_unstable();
    expected.sort_unstable();
    assert_eq!(leading, expected, "the written tags' slots lead: {slots:?}");
    // ...`TAGS` among them in the order of their pages written (the allocating tag's
    // place depends on the allocator).
    let tags = &tag_slots[..TAGS.len()];
    let order: Vec<u64> = first.into_iter().filter(|s| tags.contains(s)).collect();
    assert_eq!(order, tags, "the tags' slots by pages written: {slots:?}");
    for ((tag, pages), slot) in TAGS.iter().zip(tag_slots) {
        let row = slots.iter().find(|r| r[0] == *slot).expect("the tag's row");
        let written = KEYS_PER_TAG * pages;
        eprintln!("{tag}: slot {slot}, {} pages, {written} written", row[1]);
        assert!(row[1].as_u64() >= Some(written), "{tag}: {row}");
    }
}

/// (b) `redis-memtrace report FILE` prints the first rows of the same table.
fn check_report(file: &Path, slots: &[Value]) {
    let file = file.to_string_lossy();
    let (code, stderr, stdout) = run_in(Path::new("/"), &["report", &file]);
    assert_eq!(code, Some(0), "report failed: {stderr}");
    let printed = report_slot_rows(&stdout);
    let shown = slots.len().min(REPORT_TOP);
    assert_eq!(printed, slots[..shown], "report's slot table:\n{stdout}");
}

/// The per-epoch query equals each epoch's `faults.{parent,child}.cow_copy`.
fn check_epochs(rows: &[Value], t: &Value) {
    let epochs = t["epochs"].as_array().expect("epochs");
    assert!(!epochs.is_empty(), "no fork epoch");
    let mut expected = BTreeMap::new();
    for e in epochs {
        for role in ["parent", "child"] {
            let pages = e["faults"][role]["cow_copy"].as_u64().expect("a count");
            if pages > 0 {
                expected.insert((e["id"].as_u64().expect("an id"), role.to_string()), pages);
            }
        }
    }
    let file = json!("timelines/run-1.ndjson");
    assert!(rows.iter().all(|r| r[0] == file), "{rows:?}");
    let counted: BTreeMap<(u64, String), u64> = rows
        .iter()
        .map(|r| {
            let id = r[1].as_u64().expect("an epoch");
            let role = r[2].as_str().expect("a role").to_string();
            ((id, role), r[3].as_u64().expect("pages"))
        })
        .collect();
    eprintln!("DuckDB per epoch: {counted:?}");
    assert!(expected.contains_key(&(0, "parent".into())), "{expected:?}");
    assert_eq!(counted, expected, "DuckDB against epochs[].faults");
}

/// The top-keys query equals `top_keys_cow`, every row of which is exact in this run.
fn check_top_keys(rows: &[Value], attribution: &Value) {
    let written = attribution["top_keys_cow"]
        .as_array()
        .expect("top_keys_cow");
    assert!(
        written.iter().all(|k| k["error"] == 0),
        "the comparison needs exact rows: {written:?}"
    );
    let written: Vec<Value> = written
        .iter()
        .map(|k| {
            json!([
                k["key"],
                k["key_len"],
                k["truncated"],
                k["slot"],
                k["pages"]
            ])
        })
        .collect();
    assert!(!written.is_empty(), "no key row");
    assert_eq!(rows, written, "DuckDB against top_keys_cow");
}

/// One tag suffix per server of the multi-node case: each server's tags, and so its
/// slots, are its own.
const NODE_SUFFIXES: [&str; 3] = ["-n0", "-n1", "-n2"];

/// A multi-node timeline, written twice from the same three Redis 7.0 servers: by one
/// tracer (`record --redis A --redis B --redis C`) and by `merge` of three tracers'
/// timelines. Each server gets the workload (a BGSAVE under writes) under its own tags,
/// one server after the other; the doc's queries on each file must give what the
/// tracer wrote and what `report` prints.
#[test]
fn duckdb_queries_reproduce_the_cluster_tables_of_a_multi_node_timeline() {
    require_root();
    require_duckdb();
    let build = by_label("redis-7.0");
    let all_tags: Vec<String> = NODE_SUFFIXES.iter().flat_map(|s| tags(s)).collect();
    let slots = distinct_slots(&build, &all_tags);
    let tag_slots: Vec<Vec<u64>> = slots.chunks(TAGS.len() + 1).map(<[u64]>::to_vec).collect();
    let servers: Vec<Server> = NODE_SUFFIXES
        .iter()
        .map(|suffix| {
            let server = Server::start(&build, &[]);
            prepare_writes(&server, suffix);
            server
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();

    let recorded = dir.path().join("record");
    std::fs::create_dir(&recorded).unwrap();
    record_servers(&servers, &recorded.join("cluster.json"));
    check_cluster(&recorded, &servers, &tag_slots);
    let ties = dir.path().join("ties");
    std::fs::create_dir(&ties).unwrap();
    check_node_name_ties(&recorded, &ties);

    let merged = dir.path().join("merge");
    std::fs::create_dir(&merged).unwrap();
    merge_recordings(&servers, &merged);
    check_cluster(&merged, &servers, &tag_slots);
}

/// One tracer for all `servers` into `out`, through each one's BGSAVE under writes.
fn record_servers(servers: &[Server], out: &Path) {
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let target: Vec<&str> = urls.iter().flat_map(|u| ["--redis", u.as_str()]).collect();
    let mut rec = Recording::start_with(&target, out, &[], ATTRIBUTION_ON);
    // One "attribution on" per server.
    for _ in 1..servers.len() {
        rec.wait_for(ATTRIBUTION_ON);
    }
    for (server, suffix) in servers.iter().zip(NODE_SUFFIXES) {
        bgsave_under_writes(server, suffix);
    }
    eprintln!("[record] {}", rec.stop());
}

/// One tracer per server (`n0.json` ...) through each one's BGSAVE under writes, then
/// `merge` of the three into `cluster.json`, all in `dir`.
fn merge_recordings(servers: &[Server], dir: &Path) {
    let outs: Vec<String> = (0..servers.len()).map(|i| format!("n{i}.json")).collect();
    let recs: Vec<Recording> = servers
        .iter()
        .zip(&outs)
        .map(|(s, o)| Recording::start(s, &dir.join(o), &[]))
        .collect();
    for (server, suffix) in servers.iter().zip(NODE_SUFFIXES) {
        bgsave_under_writes(server, suffix);
    }
    for rec in recs {
        eprintln!("[merge] {}", rec.stop());
    }
    let mut args = vec!["merge"];
    args.extend(outs.iter().map(String::as_str));
    args.extend(["-o", "cluster.json"]);
    let (code, stderr, _) = run_in(dir, &args);
    assert_eq!(code, Some(0), "merge failed: {stderr}");
}

/// The doc's multi-node queries on `dir/cluster.json`, whose node `i` is `servers[i]`,
/// whose tags have the slots `tag_slots[i]`.
fn check_cluster(dir: &Path, servers: &[Server], tag_slots: &[Vec<u64>]) {
    let file = dir.join("cluster.json");
    let set = testkit::read_timeline(&file);
    assert_eq!(set["schema_version"], 2);
    let nodes = set["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), servers.len());
    let no_cap = json!({"max_events": null, "max_rate_per_s": null, "dropped": 0});
    for (n, s) in nodes.iter().zip(servers) {
        assert_eq!(
            n["timeline"]["target"]["pid"], s.pid,
            "nodes in server order"
        );
        assert_eq!(n["timeline"]["event_cap"], no_cap, "{}: a cap", n["name"]);
    }
    let queries = [
        "node-slots-cow",
        "cluster-hot-slots",
        "slot-nodes",
        "node-totals",
    ];
    let results = duckdb(dir, "nodes", &queries);
    let union = trailer_slot_union(nodes);
    eprintln!(
        "[{}] DuckDB node slot tables: {:?}",
        dir.display(),
        results[0]
    );
    assert_eq!(results[0], union, "DuckDB against the nodes' top_slots_cow");
    let hot: Vec<Value> = results[1]
        .iter()
        .map(|r| json!([r[0], r[1], r[2]]))
        .collect();
    assert!(
        union.len() > REPORT_TOP,
        "the cut at --top is not exercised"
    );
    assert_eq!(hot, union[..REPORT_TOP], "the hot slots against the union");
    check_tag_pages(&union, nodes, tag_slots);
    check_slot_nodes(&results[2], nodes, tag_slots);
    let (code, stderr, report) = run_in(dir, &["report", "cluster.json"]);
    assert_eq!(code, Some(0), "report failed: {stderr}");
    check_cluster_report(&report, &results[1], &results[3]);
    check_node_totals(&results[3], nodes);
}

/// Every node's `top_slots_cow` as `[slot, node, pages]` rows, sorted as `report` sorts
/// its cluster table: pages, most first, then slot, then node name.
fn trailer_slot_union(nodes: &[Value]) -> Vec<Value> {
    let mut rows: Vec<(u64, u64, String)> = nodes
        .iter()
        .flat_map(|n| {
            let name = n["name"].as_str().expect("a name").to_string();
            let table = n["timeline"]["summary"]["attribution"]["top_slots_cow"].as_array();
            let table = table.expect("attribution on").clone();
            table.into_iter().map(move |r| {
                let pages = r["pages"].as_u64().expect("pages");
                (pages, r["slot"].as_u64().expect("a slot"), name.clone())
            })
        })
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    rows.into_iter()
        .map(|(pages, slot, node)| json!([slot, node, pages]))
        .collect()
}

/// Each server's written tags are on its node with at least the pages written.
fn check_tag_pages(union: &[Value], nodes: &[Value], tag_slots: &[Vec<u64>]) {
    for (n, slots) in nodes.iter().zip(tag_slots) {
        for ((tag, pages), slot) in TAGS.iter().zip(slots) {
            let row = union
                .iter()
                .find(|r| r[0] == *slot && r[1] == n["name"])
                .unwrap_or_else(|| panic!("{}: no row for {tag} (slot {slot})", n["name"]));
            let written = KEYS_PER_TAG * pages;
            assert!(row[2].as_u64() >= Some(written), "{tag}: {row}");
        }
    }
}

/// The slot-to-node query equals the nodes of the records with each slot, counted here,
/// and each server's tags are on its node alone.
fn check_slot_nodes(rows: &[Value], nodes: &[Value], tag_slots: &[Vec<u64>]) {
    let mut expected: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for n in nodes {
        let name = n["name"].as_str().expect("a name");
        let events = n["timeline"]["events"].as_array().expect("events");
        for slot in events.iter().filter_map(|e| e["slot"].as_u64()) {
            expected.entry(slot).or_default().insert(name.to_string());
        }
    }
    let expected: Vec<Value> = expected.into_iter().map(|(s, n)| json!([s, n])).collect();
    assert_eq!(rows, expected, "DuckDB against the records' slots");
    for (n, slots) in nodes.iter().zip(tag_slots) {
        for slot in slots {
            let row = rows.iter().find(|r| r[0] == *slot).expect("a tag's slot");
            assert_eq!(row[1], json!([n["name"]]), "slot {slot}");
        }
    }
}

/// The cluster report's hot slots are the query's rows (MiB included), and its "Nodes"
/// table has the totals query's forks, CoW pages and lost events.
fn check_cluster_report(report: &str, hot: &[Value], totals: &[Value]) {
    check_report_hot_slots(report, hot);
    // node, pid, server (two words), start, end, ended by, forks, CoW, swap-ins, lost.
    let printed: BTreeSet<String> = report_rows(report, "Nodes")
        .iter()
        .map(|r| {
            let at = |back: usize| cell(r, r.len() - back);
            json!([r[0], at(4), at(3), at(1)]).to_string()
        })
        .collect();
    let counted: BTreeSet<String> = totals
        .iter()
        .map(|r| json!([r[1], r[2], r[3], r[4]]).to_string())
        .collect();
    assert_eq!(printed, counted, "report's Nodes table:\n{report}");
}

/// The rows of the cluster report's "Hot slots of the cluster by copy-on-write" are the
/// hot-slot query's, MiB included.
fn check_report_hot_slots(report: &str, hot: &[Value]) {
    let printed: Vec<Value> = report_rows(report, "Hot slots of the cluster by copy-on-write")
        .iter()
        .map(|r| {
            // slot, node, pages, then "0.9 MiB".
            let mib: f64 = r[3].parse().unwrap_or_else(|_| panic!("row {r:?}"));
            json!([cell(r, 0), r[1], cell(r, 2), mib])
        })
        .collect();
    assert_eq!(printed, hot, "report's cluster slot table:\n{report}");
}

/// Ties on pages and slot, which `report` breaks by node name: a copy of the document in
/// `from` whose node 1 holds node 0's timeline, written into `dir`. The two nodes' names
/// are swapped when needed so that the name sorting first is the later node in the set:
/// the order cannot come from the set's order.
fn check_node_name_ties(from: &Path, dir: &Path) {
    let mut set = testkit::read_timeline(&from.join("cluster.json"));
    let nodes = set["nodes"].as_array_mut().expect("nodes");
    nodes[1]["timeline"] = nodes[0]["timeline"].clone();
    let mut names = [nodes[0]["name"].take(), nodes[1]["name"].take()];
    names.sort_by(|a, b| b.as_str().cmp(&a.as_str()));
    let [later, first] = names;
    (nodes[0]["name"], nodes[1]["name"]) = (later, first.clone());
    std::fs::write(dir.join("cluster.json"), set.to_string()).expect("write the copy");
    let nodes = set["nodes"].as_array().expect("nodes");
    let union = trailer_slot_union(nodes);
    let results = duckdb(dir, "nodes", &["node-slots-cow", "cluster-hot-slots"]);
    assert_eq!(results[0], union, "DuckDB against the nodes' top_slots_cow");
    // Node 0's rows come in pairs, the name sorting first ahead; pairs are in the table.
    let tied = |w: &[Value]| (&w[0][0], &w[0][2]) == (&w[1][0], &w[1][2]);
    let pairs: Vec<&[Value]> = union[..REPORT_TOP].windows(2).filter(|w| tied(w)).collect();
    assert!(!pairs.is_empty(), "no tie among the first rows: {union:?}");
    assert!(pairs.iter().all(|w| w[0][1] == first), "{union:?}");
    let hot: Vec<Value> = results[1]
        .iter()
        .map(|r| json!([r[0], r[1], r[2]]))
        .collect();
    assert_eq!(hot, union[..REPORT_TOP], "the hot slots against the union");
    let (code, stderr, report) = run_in(dir, &["report", "cluster.json"]);
    assert_eq!(code, Some(0), "report failed: {stderr}");
    check_report_hot_slots(&report, &results[1]);
}

/// The totals query equals each node's epochs, their `cow_copy` faults, lost events and
/// cap (none), node by node.
fn check_node_totals(rows: &[Value], nodes: &[Value]) {
    let mut expected: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let t = &n["timeline"];
            let epochs = t["epochs"].as_array().expect("epochs");
            let cow: u64 = epochs
                .iter()
                .flat_map(|e| ["parent", "child"].map(|r| e["faults"][r]["cow_copy"].as_u64()))
                .map(|c| c.expect("a count"))
                .sum();
            json!([
                "cluster.json",
                n["name"],
                epochs.len(),
                cow,
                t["lost_events"],
                null,
                null,
                0
            ])
        })
        .collect();
    expected.sort_by_key(|r| r[1].as_str().map(String::from));
    assert_eq!(rows, expected, "DuckDB against the nodes' epochs");
    assert!(
        rows.iter().all(|r| r[2].as_u64() >= Some(1)),
        "a node without a fork"
    );
}
