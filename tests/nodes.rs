//! Several servers, one view: one tracer following three Redis 7.0 servers
//! (`record --redis A --redis B --redis C`), and three tracers' timelines put on one
//! time axis by `merge`; both read back by `report` (its cluster view) and
//! `export --perfetto`. Real servers, real eBPF, as root; run serially.
//!
//! The workload gives each server its own hot key of a known size, written page by page
//! while all three servers' BGSAVE children are held stopped at once: the forks overlap
//! across nodes, every first write of a page is a copy, and each key's pages can only
//! be on its own node.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use testkit::{
    Recording, Server, by_label, fails_in_one_line,
    fork_child::{StoppedChild, bgsave_stopped},
    process::Stopped,
    read_timeline,
    recording::ATTRIBUTION_ON,
    require_root, run_in,
};

/// Each server's hot key and the pages written into it under the fork.
const HOT: [(&str, usize); 3] = [("{n1}:big", 48), ("{n2}:big", 24), ("{n3}:big", 12)];
const PAGE: usize = 4096;
const BGSAVE: Duration = Duration::from_secs(120);

/// Three Redis 7.0 servers, each holding its hot key (one page more than is written).
fn three_servers() -> Vec<Server> {
    let build = by_label("redis-7.0");
    let servers: Vec<Server> = (0..3).map(|_| Server::start(&build, &[])).collect();
    for (s, (key, pages)) in servers.iter().zip(HOT) {
        let _: () = s.query(
            redis::cmd("SET")
                .arg(key)
                .arg(vec![b'a'; (pages + 1) * PAGE]),
        );
        // The child waits before each key: Redis 7 would otherwise free a saved big
        // value's pages in the child, making the parent's writes reuses, not copies.
        s.config_set("rdb-key-save-delay", 200_000);
    }
    servers
}

/// BGSAVE on every server with all three children held at once, then every page of
/// each hot key written (mid-page, one byte); the children are let go and waited for.
/// Returns the children's pids.
fn overlapping_forks_with_writes(servers: &[Server]) -> Vec<u32> {
    let mut cons: Vec<redis::Connection> = servers.iter().map(Server::client).collect();
    let held: Vec<StoppedChild> = servers
        .iter()
        .zip(&mut cons)
        .map(|(s, c)| bgsave_stopped(s, c))
        .collect();
    for (con, (key, pages)) in cons.iter_mut().zip(HOT) {
        // A first SETRANGE elsewhere copies what any first command of the epoch writes
        // (the command table's call counters, the client's buffers), so the hot key's
        // pages are its own.
        let _: i64 = redis::cmd("SETRANGE")
            .arg("warm-up")
            .arg(0)
            .arg("x")
            .query(con)
            .unwrap();
        for p in 0..pages {
            let _: i64 = redis::cmd("SETRANGE")
                .arg(key)
                .arg(p * PAGE + PAGE / 2)
                .arg("x")
                .query(con)
                .unwrap();
        }
    }
    let children = held.iter().map(|c| c.0).collect();
    drop(held);
    for s in servers {
        assert_eq!(s.wait_bgsave_done(BGSAVE).0, "ok");
    }
    children
}

/// The fork child of a BGSAVE just started (it lives at least one key's save delay).
fn wait_child(server: &Server) -> u32 {
    let mut child = None;
    testkit::wait::wait_until(
        "the BGSAVE child",
        Duration::from_secs(5),
        Duration::from_millis(1),
        || {
            child = testkit::process::child_of(server.pid);
            child.is_some()
        },
    );
    child.unwrap()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn port(s: &Server) -> u16 {
    s.url().rsplit(':').next().unwrap().parse().unwrap()
}

/// Every pid of a node's records.
fn pids(t: &Value) -> BTreeSet<u64> {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["pid"].as_u64())
        .collect()
}

fn child_pids(t: &Value) -> Vec<u64> {
    t["epochs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["child_pid"].as_u64().unwrap())
        .collect()
}

/// Node `i` holds server `i` (its name, pid, epochs, records) and its hot key alone.
fn check_node(node: &Value, i: usize, server: &Server, children: &[u32]) {
    let t = &node["timeline"];
    assert_eq!(node["name"], format!("{}:{}", hostname(), port(server)));
    assert_eq!(
        t["schema_version"], 1,
        "a node is a whole version 1 timeline"
    );
    assert_eq!(t["target"]["pid"], server.pid);
    assert_eq!(t["lost_events"], 0);
    let want: Vec<u64> = children.iter().map(|&c| c as u64).collect();
    assert_eq!(
        child_pids(t),
        want,
        "node {i}'s epochs are its server's forks"
    );
    let mut allowed: BTreeSet<u64> = want.into_iter().collect();
    allowed.insert(server.pid as u64);
    assert!(
        pids(t).is_subset(&allowed),
        "node {i}: records of other processes: {:?} not in {allowed:?}",
        pids(t)
    );
    let keys = t["summary"]["attribution"]["top_keys_cow"]
        .as_array()
        .unwrap();
    let (key, pages) = HOT[i];
    assert_eq!(keys[0]["key"], key, "node {i}'s hottest key");
    assert_eq!(keys[0]["pages"], pages, "{key}: its pages written");
    for (other, _) in HOT.iter().filter(|(k, _)| *k != key) {
        assert!(
            keys.iter().all(|k| k["key"] != *other),
            "node {i} has {other}, a key of another server"
        );
    }
}

/// `report`'s cluster view: three overlapping pairs, and the hot slots naming each
/// node with the pages of that node's own slot table.
fn check_report(file: &Path, nodes: &[Value]) {
    let html = file.with_extension("html");
    let (code, stderr, stdout) = run_in(
        file.parent().unwrap(),
        &["report", path(file), "--html", path(&html)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<h1>redis-memtrace cluster report</h1>"));
    for (i, n) in nodes.iter().enumerate() {
        let name = n["name"].as_str().unwrap();
        let section = format!("<section class=\"node\" id=\"node-{i}\">\n<h2>Node {name}</h2>");
        assert!(page.contains(&section), "{section} missing");
    }
    assert!(
        stdout.starts_with("redis-memtrace cluster report\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Forks overlapping across nodes (3)"),
        "{stdout}"
    );
    for n in nodes {
        let row = &n["timeline"]["summary"]["attribution"]["top_slots_cow"][0];
        let (slot, pages) = (
            row["slot"].as_u64().unwrap(),
            row["pages"].as_u64().unwrap(),
        );
        let name = n["name"].as_str().unwrap();
        let line = stdout.lines().find(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() >= 3 && w[..3] == [slot.to_string(), name.to_string(), pages.to_string()]
        });
        assert!(
            line.is_some(),
            "no hot-slot row {slot} {name} {pages}:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("===== node {name} =====")),
            "{stdout}"
        );
    }
}

/// `export --perfetto`: one process group per node, named after it, and each node's
/// epoch slices at their place on the merged axis.
fn check_perfetto(file: &Path, set: &Value) {
    let dir = file.parent().unwrap();
    let trace_path = dir.join("trace.json");
    let (code, stderr, _) = run_in(
        dir,
        &["export", "--perfetto", path(file), "-o", path(&trace_path)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let trace: Value = serde_json::from_slice(&std::fs::read(&trace_path).unwrap()).unwrap();
    let events = trace["traceEvents"].as_array().unwrap();
    for (i, n) in set["nodes"].as_array().unwrap().iter().enumerate() {
        let name = n["name"].as_str().unwrap();
        let offset = n["offset_ns"].as_i64().unwrap();
        let pid = n["timeline"]["target"]["pid"].as_u64().unwrap();
        // Node i's pids are moved to a range of their own: (i + 1) << 22 | pid.
        let gpid = Value::from(((i as u64 + 1) << 22) | pid);
        let group = events
            .iter()
            .find(|e| e["name"] == "process_name" && e["pid"] == gpid)
            .unwrap_or_else(|| panic!("no process group for {name}"));
        let label = group["args"]["name"].as_str().unwrap();
        assert!(label.starts_with(&format!("{name}: ")), "{label}");
        let gpid = &gpid;
        for ep in n["timeline"]["epochs"].as_array().unwrap() {
            let start = ep["start_ns"].as_i64().unwrap() + offset;
            let id = format!(" epoch {}", ep["id"]);
            let slice = events
                .iter()
                .find(|e| {
                    e["pid"] == *gpid
                        && e["cat"] == "epoch"
                        && e["name"].as_str().is_some_and(|n| n.ends_with(&id))
                })
                .unwrap_or_else(|| panic!("{name}: no epoch slice"));
            let ts_ns = slice["ts"].as_f64().unwrap() * 1000.0;
            assert!(
                (ts_ns - start as f64).abs() < 1.0,
                "{name}: epoch at {ts_ns} ns on the trace, {start} on the axis"
            );
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn nodes_of(set: &Value) -> Vec<Value> {
    set["nodes"].as_array().unwrap().clone()
}

#[test]
fn one_tracer_records_three_servers_as_three_nodes() {
    require_root();
    let mut servers = three_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nodes.json");
    let urls: Vec<String> = servers.iter().map(Server::url).collect();
    let target = [
        "--redis", &urls[0], "--redis", &urls[1], "--redis", &urls[2],
    ];
    let mut rec = Recording::start_with(&target, &out, &[], ATTRIBUTION_ON);
    rec.wait_for(ATTRIBUTION_ON);
    rec.wait_for(ATTRIBUTION_ON);
    let children = overlapping_forks_with_writes(&servers);
    // A node leaves: its server is killed; the others are still traced.
    let gone = servers[2].pid;
    servers[2].kill();
    rec.wait_for(&format!("pid {gone} exited; tracing the other servers"));
    // The run goes on: a fork of a remaining server is its node's second epoch.
    let mut con = servers[0].client();
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    let late_child = wait_child(&servers[0]);
    servers[0].wait_bgsave_done(BGSAVE);
    let stderr = rec.stop();

    let set = read_timeline(&out);
    assert_eq!(set["schema_version"], 2, "{stderr}");
    assert_eq!(set["alignment"]["method"], "monotonic");
    assert_eq!(set["alignment"]["uncertainty_ns"], 0);
    let nodes = nodes_of(&set);
    assert_eq!(nodes.len(), 3);
    // One tracer, one start: one offset for all.
    let start = nodes[0]["timeline"]["run"]["monotonic_start_ns"]
        .as_i64()
        .unwrap();
    for n in &nodes {
        assert_eq!(n["offset_ns"].as_i64().unwrap(), -start);
    }
    check_node(&nodes[0], 0, &servers[0], &[children[0], late_child]);
    check_node(&nodes[1], 1, &servers[1], &children[1..2]);
    check_node(&nodes[2], 2, &servers[2], &children[2..3]);
    // The node that left ends where its server did; the others at the signal.
    let end = |n: &Value| n["timeline"]["end"]["reason"].as_str().unwrap().to_string();
    assert_eq!(end(&nodes[2]), "target_exit");
    assert_eq!(
        nodes[2]["timeline"]["segments"][0]["end_reason"],
        "target_exit"
    );
    assert_eq!(
        (end(&nodes[0]), end(&nodes[1])),
        ("signal".into(), "signal".into())
    );
    let end_ns = |n: &Value| n["timeline"]["end"]["monotonic_end_ns"].as_u64().unwrap();
    let second_fork = nodes[0]["timeline"]["epochs"][1]["start_ns"]
        .as_u64()
        .unwrap();
    assert!(
        end_ns(&nodes[2]) < second_fork,
        "node 3 left before the last fork"
    );
    check_report(&out, &nodes);
    check_perfetto(&out, &set);
}

#[test]
fn merge_puts_three_tracers_on_one_axis() {
    require_root();
    let servers = three_servers();
    let dir = tempfile::tempdir().unwrap();
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("n{i}.json")))
        .collect();
    let recs: Vec<Recording> = servers
        .iter()
        .zip(&outs)
        .map(|(s, o)| Recording::start(s, o, &[]))
        .collect();
    let children = overlapping_forks_with_writes(&servers);
    for r in recs {
        r.stop();
    }
    let merged = dir.path().join("cluster.json");
    let mut args = vec!["merge"];
    args.extend(outs.iter().map(|p| path(p)));
    args.extend(["-o", path(&merged)]);
    let (code, stderr, _) = run_in(dir.path(), &args);
    assert_eq!(code, Some(0), "{stderr}");

    let set = read_timeline(&merged);
    assert_eq!(set["schema_version"], 2);
    assert_eq!(set["alignment"]["method"], "monotonic");
    let inputs: Vec<Value> = outs.iter().map(|p| read_timeline(p)).collect();
    let starts: Vec<i64> = inputs
        .iter()
        .map(|t| t["run"]["monotonic_start_ns"].as_i64().unwrap())
        .collect();
    let origin = *starts.iter().min().unwrap();
    assert_eq!(set["alignment"]["origin_monotonic_ns"], origin);
    let nodes = nodes_of(&set);
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["timeline"], inputs[i], "node {i} is its input, whole");
        assert_eq!(n["offset_ns"].as_i64().unwrap(), -origin);
        assert_eq!(n["source"], path(&outs[i]));
        check_node(n, i, &servers[i], &children[i..=i]);
    }
    check_report(&merged, &nodes);
    check_perfetto(&merged, &set);

    // A merged file merges again with the version 1 files: the same nodes, the same axis.
    let again = dir.path().join("again.json");
    let partial = dir.path().join("partial.json");
    let (code, stderr, _) = run_in(
        dir.path(),
        &[
            "merge",
            path(&outs[0]),
            path(&outs[1]),
            "-o",
            path(&partial),
        ],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr, _) = run_in(
        dir.path(),
        &["merge", path(&partial), path(&outs[2]), "-o", path(&again)],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let again = read_timeline(&again);
    assert_eq!(again["alignment"], set["alignment"]);
    for (a, b) in nodes_of(&again).iter().zip(&nodes) {
        assert_eq!(
            (&a["name"], &a["offset_ns"], &a["timeline"]),
            (&b["name"], &b["offset_ns"], &b["timeline"])
        );
    }
    bad_merges(dir.path(), &outs);
}

/// Each bad set is one line, exit 1, and no file written.
fn bad_merges(dir: &Path, outs: &[PathBuf]) {
    let name = |p: &PathBuf| p.file_name().unwrap().to_str().unwrap().to_string();
    let (a, b) = (name(&outs[0]), name(&outs[1]));
    let node_a = read_timeline(&outs[0]);
    let node_name = format!(
        "{}:{}",
        hostname(),
        node_a["redis"]["port"].as_u64().unwrap()
    );
    fails_in_one_line(
        dir,
        &["merge", &a, &a, "-o", "x.json"],
        &format!(
            "redis-memtrace: error: {a} and {a} both hold node {node_name} (the same server process): give each server once"
        ),
    );
    fails_in_one_line(
        dir,
        &["merge", &a, "-o", "x.json"],
        "redis-memtrace: error: merge needs at least two nodes; the inputs hold 1",
    );
    // Another host, its clock two hours ahead: the runs cannot overlap.
    let mut far = read_timeline(&outs[1]);
    far["run"]["host"]["boot_id"] = "another-boot".into();
    far["run"]["host"]["hostname"] = "elsewhere".into();
    let wall = far["run"]["wall_start_unix_ns"].as_u64().unwrap();
    far["run"]["wall_start_unix_ns"] = (wall + 7_200_000_000_000).into();
    std::fs::write(dir.join("far.json"), far.to_string()).unwrap();
    let err = run_in(dir, &["merge", &a, "far.json", "-o", "x.json"]).1;
    assert!(
        err.starts_with("redis-memtrace: error: far.json (elsewhere:")
            && err.contains("does not overlap the other runs: it is 71")
            && err.ends_with("the hosts' clocks disagree by at least that much)\n"),
        "{err}"
    );
    assert!(!dir.join("x.json").exists());
    let mut v3 = read_timeline(&outs[1]);
    v3["schema_version"] = 3.into();
    std::fs::write(dir.join("v3.json"), v3.to_string()).unwrap();
    fails_in_one_line(
        dir,
        &["merge", &a, "v3.json", "-o", "x.json"],
        "redis-memtrace: error: v3.json has schema_version 3; this redis-memtrace reads versions 1 (one server) and 2 (several, from merge)",
    );
    fails_in_one_line(
        dir,
        &["merge", &a, &b, "-o", "."],
        "redis-memtrace: error: cannot write .: it is a directory",
    );
}

#[test]
fn record_refuses_a_server_twice_and_ndjson_for_several() {
    require_root();
    let servers = three_servers();
    let dir = tempfile::tempdir().unwrap();
    let (u0, u1) = (servers[0].url(), servers[1].url());
    fails_in_one_line(
        dir.path(),
        &["record", "--redis", &u0, "--redis", &u0, "-o", "x.json"],
        &format!(
            "redis-memtrace: error: --redis {u0} is pid {}, already traced as {u0}: give each server once",
            servers[0].pid
        ),
    );
    fails_in_one_line(
        dir.path(),
        &[
            "record", "--redis", &u0, "--redis", &u1, "--format", "ndjson", "-o", "x.json",
        ],
        "redis-memtrace: error: --format ndjson takes one server; with several (--redis given \
         more than once, or --all) the timeline is one JSON file of all of them",
    );
}

#[test]
fn all_traces_every_server_of_the_host() {
    require_root();
    let servers = three_servers();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.json");
    let mut rec = Recording::start_with(&["--all"], &out, &["--duration", "2s"], ATTRIBUTION_ON);
    rec.wait_for(ATTRIBUTION_ON);
    rec.wait_for(ATTRIBUTION_ON);
    let (status, stderr) = rec.exit();
    assert!(status.success(), "{stderr}");
    let set = read_timeline(&out);
    let traced: BTreeSet<u64> = nodes_of(&set)
        .iter()
        .map(|n| n["timeline"]["target"]["pid"].as_u64().unwrap())
        .collect();
    let ours: BTreeSet<u64> = servers.iter().map(|s| s.pid as u64).collect();
    assert_eq!(traced, ours, "{stderr}");
    for n in nodes_of(&set) {
        assert_eq!(n["timeline"]["end"]["reason"], "duration");
        assert_eq!(n["timeline"]["redis"]["product"], "redis");
    }
}

/// `minflt + majflt` of `pid` so far.
fn kernel_faults(pid: u32) -> u64 {
    testkit::process::ProcStat::read(pid)
        .expect("server alive")
        .faults()
}

/// A BGSAVE under writes (the writes fault while the child lives); waits for its end.
fn bgsave_with_writes(server: &Server, round: usize) {
    let mut con = server.client();
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    server.populate(5_000, &format!("w{round}"), 512);
    assert_eq!(server.wait_bgsave_done(BGSAVE).0, "ok");
}

/// `serve` of two servers, one of them restarted at its address: each node's series
/// under its own label, counted as for one server.
#[test]
fn serve_follows_two_servers_each_under_its_node_label() {
    require_root();
    let build = by_label("redis-7.0");
    let port_b = testkit::free_port();
    let a = Server::start(&build, &[]);
    let mut b = Server::start_on_port(&build, Some(port_b), &[]);
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let prometheus = testkit::prometheus::Prometheus::start(&addr);
    let cwd = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let args = ["--redis", &a.url(), "--redis", &b.url(), "--metrics", &addr];
    let mut serve = Recording::serve(cwd.path(), &args, ATTRIBUTION_ON);
    serve.wait_for(ATTRIBUTION_ON);
    let a_before = kernel_faults(a.pid);
    let b_before = kernel_faults(b.pid);
    bgsave_with_writes(&a, 0);
    bgsave_with_writes(&b, 0);
    let b_first = kernel_faults(b.pid) - b_before;
    b.kill();
    let b2 = Server::start_on_port(&build, Some(port_b), &[]);
    serve.wait_for("following: a server is back");
    serve.wait_for(ATTRIBUTION_ON);
    let b2_before = kernel_faults(b2.pid);
    bgsave_with_writes(&b2, 1);
    bgsave_with_writes(&a, 1);
    // Nothing of either server can fault from here.
    let held: Vec<Stopped> = [&a, &b2].iter().map(|s| Stopped::new(s.pid)).collect();
    let kernel = [
        (a.url(), (kernel_faults(a.pid) - a_before) as f64),
        (
            b2.url(),
            (b_first + kernel_faults(b2.pid) - b2_before) as f64,
        ),
    ];
    let range = format!("{}s", started.elapsed().as_secs() + 10);
    for (url, faults) in &kernel {
        let node = format!("node=\"{url}\"");
        let parent = format!("sum(redis_memtrace_faults_total{{{node},role=\"parent\"}})");
        testkit::wait::wait_until(
            "both servers' forks and faults in Prometheus",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                prometheus.value(&format!("redis_memtrace_forks_total{{{node}}}")) == Some(2.0)
                    && prometheus.value(&parent).is_some_and(|n| n >= *faults)
            },
        );
        let resets = prometheus.query(&format!(
            "resets(redis_memtrace_faults_total{{{node}}}[{range}])"
        ));
        assert!(
            !resets.is_empty() && resets.iter().all(|(_, n)| *n == 0.0),
            "{url}: {resets:?}"
        );
        let lost = format!("redis_memtrace_lost_events_total{{{node}}}");
        assert_eq!(prometheus.value(&lost), Some(0.0));
    }
    drop(held);
    let log = serve.stop();
    assert!(log.contains("stopped (signal)"), "{log}");
    assert!(
        testkit::names_in(cwd.path()).is_empty(),
        "serve wrote files"
    );
}
