//! `record` on the nodes of a real Redis Cluster (three Redis 7.0 masters made by
//! `redis-cli --cluster create`), one tracer per node at the same time: each timeline's
//! `cluster` list holds the map its node reports (same ids, slot ranges, `myself`),
//! each node's copy-on-write lands on the slot of the hash tag it serves, `report` names
//! the node serving that slot, and a slot moved while recording is a second map.
//!
//! The oracle is what the nodes answer to `CLUSTER SHARDS` and `CLUSTER KEYSLOT`, read
//! by the test with the `redis` crate (`testkit::cluster`), not by the tracer's parsers.
//!
//! Needs root. Run serially.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};
use testkit::{
    Recording, Server, by_label, cluster::Cluster, commands::info_on, fork_child::bgsave_stopped,
    read_timeline, require_root, run_in, wait::wait_until,
};

/// Pages of each node's hot value, each overwritten once while its fork child is held.
const PAGES: usize = 32;
const PAGE: usize = 4096;
/// Sampling interval of the tracers: how often they read the cluster map.
const INTERVAL: &str = "100ms";

/// A hash tag per node whose slot that node serves: `{hot-N}` for the first N that fits.
fn tags_per_node(cluster: &Cluster) -> Vec<(String, u16)> {
    let slot_of = |tag: &str| -> u16 {
        cluster.nodes()[0].query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(tag))
    };
    cluster
        .nodes()
        .iter()
        .map(|node| {
            (0..)
                .map(|n| format!("{{hot-{n}}}"))
                .map(|tag| {
                    let slot = slot_of(&tag);
                    (tag, slot)
                })
                .find(|(_, slot)| cluster.owner_of_slot(*slot) == node.port)
                .expect("a tag for every node")
        })
        .collect()
}

/// Each node's hot tag, its value of [`PAGES`] pages set on the node serving it.
fn hot_values(cluster: &Cluster) -> Vec<(String, u16)> {
    let tags = tags_per_node(cluster);
    for (node, (tag, _)) in cluster.nodes().iter().zip(&tags) {
        let _: () = node.query(
            redis::cmd("SET")
                .arg(format!("{tag}:v"))
                .arg(vec![b'x'; PAGES * PAGE]),
        );
    }
    tags
}

/// One `record --redis` per node, all running at once.
fn record_all(cluster: &Cluster, dir: &Path) -> Vec<Recording> {
    cluster
        .nodes()
        .iter()
        .map(|node| {
            let out = dir.join(format!("node-{}.json", node.port));
            Recording::start(node, &out, &["--interval", INTERVAL])
        })
        .collect()
}

fn timeline_of(dir: &Path, node: &Server) -> (String, Value) {
    let path = dir.join(format!("node-{}.json", node.port));
    let t = read_timeline(&path);
    (path.to_string_lossy().into_owned(), t)
}

/// The maps of a timeline's `cluster` list, oldest first.
fn maps(t: &Value) -> Vec<Value> {
    t["cluster"]
        .as_array()
        .unwrap_or_else(|| panic!("no cluster list in the trailer"))
        .iter()
        .map(|c| c["map"]["nodes"].clone())
        .collect()
}

/// Every node saves in a fork child held stopped while its hot value is overwritten page
/// by page, then the children finish.
fn bgsave_under_writes(cluster: &Cluster, tags: &[(String, u16)]) {
    let mut cons: Vec<redis::Connection> = cluster.nodes().iter().map(Server::client).collect();
    let mut held = Vec::new();
    for ((node, con), (tag, _)) in cluster.nodes().iter().zip(&mut cons).zip(tags) {
        // The child waits before each key: Redis 7 frees a saved value's pages in the
        // child, which would turn the parent's writes into reuses, not copies.
        node.config_set("rdb-key-save-delay", 200_000);
        held.push(bgsave_stopped(node, con));
        for p in 0..PAGES {
            let len: usize = redis::cmd("SETRANGE")
                .arg(format!("{tag}:v"))
                .arg(p * PAGE)
                .arg("y")
                .query(con)
                .unwrap();
            assert_eq!(len, PAGES * PAGE);
        }
    }
    drop(held);
    for node in cluster.nodes() {
        let (status, _) = node.wait_bgsave_done(Duration::from_secs(60));
        assert_eq!(status, "ok");
    }
}

/// Copy-on-write records under `slot`, not inside the allocator (what the slot table
/// counts).
fn cow_pages_of_slot(t: &Value, slot: u16) -> u64 {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "cow_copy" && e["slot"] == slot && e["in_allocator"].is_null())
        .count() as u64
}

/// The first row of `report`'s "Top slots by copy-on-write" table, split in cells.
fn report_top_slot_row(report: &str) -> Vec<String> {
    let mut lines = report
        .lines()
        .skip_while(|l| !l.starts_with("Top slots by copy-on-write"));
    assert!(lines.next().is_some(), "no slot table in:\n{report}");
    let header = lines.next().unwrap_or_default();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["#", "slot", "node", "pages", "MiB"]
    );
    // Under the dashes.
    let row = lines.nth(1).unwrap_or_default();
    row.split_whitespace().map(str::to_string).collect()
}

#[test]
fn each_node_records_its_map_and_its_hot_slot() {
    require_root();
    hot_slots_on(&by_label("redis-7.0"));
}

/// The same on a server without `CLUSTER SHARDS` (Redis 6.2: the tracer reads
/// `CLUSTER NODES`) and on Valkey, when the manifest has them.
#[test]
fn each_node_of_other_builds_records_its_map_and_its_hot_slot() {
    require_root();
    for build in testkit::builds() {
        if ["redis-6.2", "valkey-9.1"].contains(&build.label.as_str()) {
            hot_slots_on(&build);
        }
    }
}

/// One tracer per node of a 3-node cluster of `build`, through held BGSAVEs under writes
/// of each node's hot tag; each timeline checked against the node's own answers.
fn hot_slots_on(build: &testkit::Build) {
    eprintln!("{}", build.label);
    let cluster = Cluster::start(build, 3);
    let tags = hot_values(&cluster);
    let dir = tempfile::tempdir().unwrap();
    let recordings = record_all(&cluster, dir.path());
    bgsave_under_writes(&cluster, &tags);
    for rec in recordings {
        rec.stop();
    }

    for (i, (node, (tag, slot))) in cluster.nodes().iter().zip(&tags).enumerate() {
        let (path, t) = timeline_of(dir.path(), node);
        let want = serde_json::to_value(cluster.view(i)).unwrap();
        assert_eq!(
            maps(&t),
            std::slice::from_ref(&want),
            "node {i}: one map, the node's own"
        );
        let me: Vec<&Value> = want
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["myself"] == true)
            .collect();
        assert_eq!(me.len(), 1);
        assert_eq!(me[0]["addr"], node.url());

        let pages = cow_pages_of_slot(&t, *slot);
        eprintln!(
            "node {i} ({}): {tag} in slot {slot}, {pages} CoW pages",
            node.url()
        );
        assert!(pages >= PAGES as u64, "{tag}: {pages} pages");
        let top = &t["summary"]["attribution"]["top_slots_cow"][0];
        assert_eq!(*top, json!({"slot": slot, "pages": pages}), "node {i}");

        let (code, stderr, report) = run_in(dir.path(), &["report", &path]);
        assert_eq!(code, Some(0), "{stderr}");
        let row = report_top_slot_row(&report);
        assert_eq!(
            row[..4],
            [
                "1".to_string(),
                slot.to_string(),
                node.url(),
                pages.to_string()
            ]
        );
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with("cluster "));
        let want = format!(
            "3 masters, 0 replicas; traced node {} (master, slots ",
            node.url()
        );
        assert!(line.is_some_and(|l| l.contains(&want)), "{report}");
    }
}

/// The address of the master serving `slot` in a map's `nodes`.
fn owner(nodes: &Value, slot: u16) -> Option<Value> {
    let serves = |n: &&Value| {
        n["role"] == "master"
            && n["slots"].as_array().into_iter().flatten().any(|r| {
                let (lo, hi) = (r[0].as_u64(), r[1].as_u64());
                lo <= Some(u64::from(slot)) && hi >= Some(u64::from(slot))
            })
    };
    nodes
        .as_array()?
        .iter()
        .find(serves)
        .map(|n| n["addr"].clone())
}

/// `CLUSTER SHARDS` calls a node has served (`cmdstat_cluster|shards`).
fn shards_calls(con: &mut redis::Connection) -> u64 {
    info_on(con, "commandstats")
        .get("cmdstat_cluster|shards")
        .and_then(|v| v.strip_prefix("calls=")?.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slot_moved_while_recording_is_a_second_map() {
    require_root();
    let cluster = Cluster::start(&by_label("redis-7.0"), 3);
    // Slot 0 is node 0's and holds no key.
    let slot = 0;
    assert_eq!(cluster.owner_of_slot(slot), cluster.nodes()[0].port);
    let before: Vec<Value> = (0..3)
        .map(|i| serde_json::to_value(cluster.view(i)).unwrap())
        .collect();
    let mut stats: Vec<redis::Connection> = cluster.nodes().iter().map(Server::client).collect();
    let dir = tempfile::tempdir().unwrap();
    let recordings = record_all(&cluster, dir.path());
    let moving = testkit::clock::mono_ns();
    cluster.move_slot(slot, 0, 1);
    assert_eq!(cluster.owner_of_slot(slot), cluster.nodes()[1].port);
    let after: Vec<Value> = (0..3)
        .map(|i| serde_json::to_value(cluster.view(i)).unwrap())
        .collect();
    // From here only the tracers ask CLUSTER SHARDS: one more call on each node is a
    // read of the moved map.
    let seen: Vec<u64> = stats.iter_mut().map(shards_calls).collect();
    for (con, seen) in stats.iter_mut().zip(seen) {
        wait_until(
            "a tracer's read after the move",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || shards_calls(con) > seen,
        );
    }
    for rec in recordings {
        rec.stop();
    }

    for (i, node) in cluster.nodes().iter().enumerate() {
        let (_, t) = timeline_of(dir.path(), node);
        assert_eq!(maps(&t), [before[i].clone(), after[i].clone()], "node {i}");
        let captures = t["cluster"].as_array().unwrap();
        let ts = |c: &Value| c["ts_ns"].as_u64().unwrap();
        assert!(
            ts(&captures[0]) < moving && ts(&captures[1]) > moving,
            "node {i}"
        );
        assert_eq!(
            owner(&before[i], slot),
            Some(json!(cluster.nodes()[0].url()))
        );
        assert_eq!(
            owner(&after[i], slot),
            Some(json!(cluster.nodes()[1].url()))
        );
    }
}

/// The rows of `report`'s "Hot slots of the cluster by copy-on-write" table (a
/// multi-node file), split in cells.
fn cluster_hot_slot_rows(report: &str) -> Vec<Vec<String>> {
    let mut lines = report
        .lines()
        .skip_while(|l| !l.starts_with("Hot slots of the cluster by copy-on-write"));
    assert!(
        lines.next().is_some(),
        "no cluster slot table in:\n{report}"
    );
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "slot", "node", "pages", "MiB", "served", "by", "(latest", "map)"
        ]
    );
    lines
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && l.starts_with("  "))
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// One tracer with a `--redis` per node of the cluster (one timeline, a node each):
/// each node's hot slot is its own tag's, on the node serving it; then a node leaves
/// the cluster (killed, then forgotten by the others): its node ends there, the others
/// record the map without it, and the cluster view says its slot is served by none.
#[test]
fn one_tracer_records_the_cluster_and_a_node_leaving_it() {
    require_root();
    let cluster = Cluster::start(&by_label("redis-7.0"), 3);
    let tags = hot_values(&cluster);
    let before: Vec<Value> = (0..3)
        .map(|i| serde_json::to_value(cluster.view(i)).unwrap())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cluster.json");
    let urls: Vec<String> = cluster.nodes().iter().map(Server::url).collect();
    let target = [
        "--redis", &urls[0], "--redis", &urls[1], "--redis", &urls[2],
    ];
    let ready = testkit::recording::ATTRIBUTION_ON;
    let mut rec = Recording::start_with(&target, &out, &["--interval", INTERVAL], ready);
    rec.wait_for(ready);
    rec.wait_for(ready);
    bgsave_under_writes(&cluster, &tags);

    // Node 2 leaves: killed, then forgotten by the other two.
    let gone_id = cluster.node_id(2);
    let gone = cluster.nodes()[2].pid;
    testkit::process::signal(gone, libc::SIGKILL);
    rec.wait_for(&format!("pid {gone} exited; tracing the other servers"));
    let mut stats: Vec<redis::Connection> =
        cluster.nodes()[..2].iter().map(Server::client).collect();
    let seen: Vec<u64> = stats.iter_mut().map(shards_calls).collect();
    for node in &cluster.nodes()[..2] {
        let _: () = node.query(redis::cmd("CLUSTER").arg("FORGET").arg(&gone_id));
    }
    for (con, seen) in stats.iter_mut().zip(seen) {
        wait_until(
            "a tracer's read after the node left",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || shards_calls(con) > seen,
        );
    }
    let stderr = rec.stop();

    let set = read_timeline(&out);
    let nodes = set["nodes"].as_array().expect("a multi-node timeline");
    assert_eq!(nodes.len(), 3, "{stderr}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for (i, ((n, node), (tag, slot))) in nodes.iter().zip(cluster.nodes()).zip(&tags).enumerate() {
        let t = &n["timeline"];
        assert_eq!(n["name"], format!("{}:{}", hostname.trim(), node.port));
        let pages = cow_pages_of_slot(t, *slot);
        assert!(pages >= PAGES as u64, "{tag}: {pages} pages");
        let top = &t["summary"]["attribution"]["top_slots_cow"][0];
        assert_eq!(*top, json!({"slot": slot, "pages": pages}), "node {i}");
        let maps = maps(t);
        assert_eq!(maps[0], before[i], "node {i}: the map at start");
        if i < 2 {
            // The map without the node that left, after the one with it.
            assert_eq!(maps.len(), 2, "node {i}: {maps:?}");
            let ids: Vec<&Value> = maps[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| &m["id"])
                .collect();
            assert!(!ids.contains(&&json!(gone_id)), "node {i}: {ids:?}");
            assert_eq!(owner(&maps[1], *slot), Some(json!(node.url())));
        } else {
            assert_eq!(t["end"]["reason"], "target_exit", "{stderr}");
        }
    }

    let (code, stderr, report) = run_in(dir.path(), &["report", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let rows = cluster_hot_slot_rows(&report);
    for (i, (n, (_, slot))) in nodes.iter().zip(&tags).enumerate() {
        let row = rows
            .iter()
            .find(|r| r[0] == slot.to_string())
            .unwrap_or_else(|| panic!("no row for slot {slot}:\n{report}"));
        let top = &n["timeline"]["summary"]["attribution"]["top_slots_cow"][0];
        assert_eq!(row[1], n["name"].as_str().unwrap());
        assert_eq!(row[2], top["pages"].to_string());
        // Served by its node, except the slot of the node that left: by none now.
        let served = if i < 2 { urls[i].as_str() } else { "-" };
        assert_eq!(row[5], served, "{report}");
    }
}
