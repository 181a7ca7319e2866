//! Which command the faults go to, against real servers (`testkit::attribution_builds`:
//! every build `cargo xtask setup` installs), real eBPF, as root:
//!
//! - faults of reading a large argument belong to its command (`stage` `parse`), also
//!   when timers or another client's command run between the reads;
//! - multi-key commands (MSET, DEL of 10,000 keys) are attributed to the command and its
//!   first key only (`argv[1]`: the other keys are never recorded), without losing events;
//! - subcommands (Redis 7.0 `CONFIG SET`, `CONFIG GET`) name their container command;
//! - commands in MULTI/EXEC are each their own command; scripts are their caller;
//! - a client blocked in BLPOP is served under the command that serves it.
//!
//! Forks are kept alive by stopping the child with SIGSTOP (its pages stay shared, so
//! every write of the parent is a copy-on-write) and resumed with SIGCONT, also when a
//! test fails (see `testkit::fork_child::StoppedChild`). Time windows compare fault
//! `ts_ns` with the test's own CLOCK_MONOTONIC readings: the kernel stamps faults with
//! the same clock.

use std::{io::Read, time::Duration};

use serde_json::Value;
use testkit::{
    Recording, Server, attribution_builds,
    clock::mono_ns,
    commands::setrange,
    fork_child::bgsave_stopped,
    read_timeline, require_root,
    timeline::{by_activity, count_activity, faults, parent_faults},
};

/// Faults while Redis reads a command's large argument belong to that command
/// (`stage` `parse`), per docs/timeline.md: "For large values this is where the memory
/// is written."
#[test]
fn large_value_read_faults_are_attributed_to_their_command() {
    require_root();
    let mut failures = Vec::new();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        server.populate(50_000, "key", 1024);
        let mut con = server.client();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let stopped = bgsave_stopped(&server, &mut con);
        let t0 = mono_ns();
        let _: () = redis::cmd("SET")
            .arg("bigvalue")
            .arg(vec![b'b'; 1 << 20])
            .query(&mut con)
            .unwrap();
        let t1 = mono_ns();
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        let window = parent_faults(&t, 0, Some((t0, t1)));
        let parse = window
            .iter()
            .filter(|f| f["activity"] == "SET" && f["key"] == "bigvalue" && f["stage"] == "parse")
            .count();
        let reading =
            count_activity(&window, "networking-read") + count_activity(&window, "main-other");
        eprintln!(
            "[{label}] SET bigvalue <1 MiB>: {parse} parse-stage faults; window {:?}",
            by_activity(&window)
        );
        // 1 MiB read into the query buffer: 256 pages.
        if parse < 256 {
            failures.push(format!(
                "[{label}] {parse} parse-stage faults under SET bigvalue; {reading} left as \
                 networking-read/main-other: {:?}",
                by_activity(&window)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Two clients: A's large argument arrives in two halves and B runs a command in
/// between. The faults of reading A's argument are A's SET's (`stage` `parse`), not
/// B's command's, whatever ran on the main thread meanwhile: the kernel finds the client
/// being read (a 4 MiB argument is read straight into its own buffer, so those reads are
/// the key's memory).
#[test]
fn parse_faults_stay_with_their_client_when_another_client_runs_in_between() {
    use std::io::Write;
    require_root();
    const HALF: usize = 2 << 20;
    let mut failures = Vec::new();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let mut a = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = server.client();
        let _: String = redis::cmd("PING").query(&mut b).unwrap();
        let mut first = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", 2 * HALF).into_bytes();
        first.extend(std::iter::repeat_n(b'a', HALF));
        a.write_all(&first).unwrap();
        // Redis reads the first half (2 MiB of query buffer written: 512 pages).
        std::thread::sleep(Duration::from_millis(500));
        setrange(&mut b, b"other", (1 << 20) - 1);
        let mut second = vec![b'a'; HALF];
        second.extend_from_slice(b"\r\n");
        a.write_all(&second).unwrap();
        let mut reply = [0u8; 5];
        a.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
        let len: u64 = redis::cmd("STRLEN").arg("big").query(&mut b).unwrap();
        assert_eq!(len, 2 * HALF as u64);
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        let fs = faults(&t);
        let big_parse = fs
            .iter()
            .filter(|f| f["activity"] == "SET" && f["key"] == "big" && f["stage"] == "parse")
            .count();
        let other_parse = fs
            .iter()
            .filter(|f| f["key"] == "other" && f["stage"] == "parse")
            .count();
        let other_run = fs
            .iter()
            .filter(|f| f["key"] == "other" && f.get("stage").is_none())
            .count();
        let left = count_activity(&fs, "networking-read");
        eprintln!(
            "[{label}] SET big parse {big_parse}; SETRANGE other: parse {other_parse}, run \
             {other_run}; networking-read {left}"
        );
        assert!(
            other_run >= 256,
            "[{label}] SETRANGE zero-filled 1 MiB: {other_run}"
        );
        if other_parse > 4 {
            failures.push(format!(
                "[{label}] {other_parse} faults of reading A's SET are attributed to B's \
                 SETRANGE (stage parse)"
            ));
        }
        if big_parse < 1024 {
            failures.push(format!(
                "[{label}] reading 4 MiB of SET big: only {big_parse} parse-stage faults \
                 ({left} networking-read)"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn mset_and_del_of_10000_keys_are_attributed_to_their_first_key() {
    require_root();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        server.populate(100_000, "key", 64);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let mut con = server.client();
        let stopped = bgsave_stopped(&server, &mut con);
        let value = vec![b'm'; 100];
        let mut mset = redis::cmd("MSET");
        for i in 0..10_000 {
            mset.arg(format!("m:{i}")).arg(&value);
        }
        let _: () = mset.query(&mut con).unwrap();
        let mut del = redis::cmd("DEL");
        for i in 0..10_000 {
            del.arg(format!("key:{i}"));
        }
        let deleted: u64 = del.query(&mut con).unwrap();
        assert_eq!(deleted, 10_000);
        let dbsize: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
        assert_eq!(dbsize, 100_000);
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(t["kernel"]["ring_buffer_full"], 0, "[{label}]");
        let epoch = parent_faults(&t, 0, None);
        let mset_faults: Vec<&&Value> = epoch.iter().filter(|f| f["activity"] == "MSET").collect();
        let del_faults: Vec<&&Value> = epoch.iter().filter(|f| f["activity"] == "DEL").collect();
        eprintln!(
            "[{label}] MSET {} faults, DEL {} faults; by activity {:?}",
            mset_faults.len(),
            del_faults.len(),
            by_activity(&epoch)
        );
        assert!(mset_faults.len() >= 50, "[{label}]");
        assert!(del_faults.len() >= 50, "[{label}]");
        // Only argv[1], the first key, is recorded.
        for f in &mset_faults {
            assert_eq!(f["key"], "m:0", "[{label}] {f}");
            assert_eq!(f["key_len"], 3, "[{label}] {f}");
        }
        for f in &del_faults {
            assert_eq!(f["key"], "key:0", "[{label}] {f}");
            assert_eq!(f["key_len"], 5, "[{label}] {f}");
        }
        let mut keys: Vec<&str> = faults(&t)
            .iter()
            .filter(|f| f["epoch"] == 0)
            .filter_map(|f| f["key"].as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys, ["key:0", "m:0"], "[{label}] keys seen in the epoch");
    }
}

// ---------------------------------------------------------------------------------------
// Subcommands (Redis 7.0 looks up `CONFIG SET` as the subcommand `set`)
// ---------------------------------------------------------------------------------------

#[test]
fn subcommand_faults_name_the_container_command() {
    require_root();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        server.populate(50_000, "key", 100);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let mut con = server.client();
        let stopped = bgsave_stopped(&server, &mut con);
        // CONFIG GET * writes a reply of a few KB into the client's (shared) buffers,
        // whose pages this connection's BGSAVE reply may already have copied; CONFIG SET
        // maxmemory below the data set with allkeys-lru then evicts: inside the command on
        // 6.2 (freeing keys writes shared pages), in the eviction time event on 7.0.
        let used = server.info_u64("memory", "used_memory");
        let t0 = mono_ns();
        for _ in 0..3 {
            let _: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("*")
                .query(&mut con)
                .unwrap();
        }
        server.config_set("maxmemory-policy", "allkeys-lru");
        server.config_set("maxmemory", used * 3 / 4);
        let t1 = mono_ns();
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        let window = parent_faults(&t, 0, Some((t0, t1)));
        eprintln!("[{label}] CONFIG window: {:?}", by_activity(&window));
        // Other clients (the tracer's own INFO connection) may run commands in the window
        // too; what must never appear is the subcommand passing for a data command
        // (`GET`/`SET` with the key `get`/`set`).
        let config = count_activity(&window, "CONFIG");
        assert!(
            config >= 1,
            "[{label}] CONFIG GET/SET caused no fault: nothing to check"
        );
        for f in &window {
            assert!(
                !matches!(f["activity"].as_str(), Some("GET" | "SET")),
                "[{label}] a CONFIG GET/SET fault passes for a data command: {f}"
            );
            if f["activity"] == "CONFIG" {
                assert!(f.get("key").is_none(), "[{label}] CONFIG has no key: {f}");
            }
        }
    }
}

/// Bytes each command of the transaction and the scripts zero-fill: new keys, so every
/// page is a first touch of the command that writes it (at least 64 pages each).
const FILLS: [(&str, usize); 3] = [("tx:a", 1 << 20), ("tx:b", 1 << 19), ("tx:c", 1 << 18)];

/// MULTI/EXEC: each queued command's faults are that command's and its key's (EXEC runs
/// them under its own client, the first one before EXEC is counted). Scripts (EVAL, and
/// FCALL on Redis 7 and later): the writes of the commands a script calls are the calling
/// EVAL's or FCALL's, without a key (a script names its keys in KEYS, not in `argv[1]`).
#[test]
fn transactions_give_each_command_its_key_and_scripts_are_their_caller() {
    require_root();
    let mut failures = Vec::new();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        let mut con = server.client();
        let functions = build.major() >= 7;
        if functions {
            let _: String = redis::cmd("FUNCTION")
                .arg("LOAD")
                .arg(
                    "#!lua name=memtrace\nredis.register_function('fill', function(keys, args) \
                     return redis.call('SETRANGE', keys[1], tonumber(args[1]), 'x') end)",
                )
                .query(&mut con)
                .unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let mut tx = redis::pipe();
        tx.atomic();
        for (key, bytes) in FILLS {
            tx.cmd("SETRANGE").arg(key).arg(bytes - 1).arg("x");
        }
        let lens: Vec<u64> = tx.query(&mut con).unwrap();
        assert_eq!(lens, FILLS.map(|(_, b)| b as u64).to_vec());
        let script = "return redis.call('SETRANGE', KEYS[1], tonumber(ARGV[1]), 'x')";
        let len: u64 = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg("ev:a")
            .arg((1 << 20) - 1)
            .query(&mut con)
            .unwrap();
        assert_eq!(len, 1 << 20);
        if functions {
            let len: u64 = redis::cmd("FCALL")
                .arg("fill")
                .arg(1)
                .arg("fc:a")
                .arg((1 << 20) - 1)
                .query(&mut con)
                .unwrap();
            assert_eq!(len, 1 << 20);
        }
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        let fs = faults(&t);
        let under = |activity: &str, key: Option<&str>| {
            fs.iter()
                .filter(|f| f["activity"] == activity && f["key"].as_str() == key)
                .count()
        };
        let keyed: Vec<usize> = FILLS
            .iter()
            .map(|(key, _)| under("SETRANGE", Some(key)))
            .collect();
        let (eval, fcall) = (under("EVAL", None), under("FCALL", None));
        eprintln!(
            "[{label}] SETRANGE in MULTI/EXEC {keyed:?}, EXEC {}, EVAL {eval}, FCALL {fcall}; \
             all {:?}",
            count_activity(&fs, "EXEC"),
            by_activity(&fs)
        );
        for ((key, bytes), n) in FILLS.iter().zip(&keyed) {
            // A little less than the bytes' pages where the allocator reuses freed pages.
            // At most its own pages and a few of the allocator's (up to 7 seen): a page of
            // queued command charged to this key would exceed it (the three differ by
            // 64 pages or more).
            let pages = bytes / 4096;
            if *n < pages * 3 / 4 || *n > pages + 16 {
                failures.push(format!(
                    "[{label}] SETRANGE {key} in EXEC: {n} faults for {pages} pages"
                ));
            }
        }
        if count_activity(&fs, "EXEC") > 16 {
            failures.push(format!(
                "[{label}] EXEC itself took {} faults: its commands' writes",
                count_activity(&fs, "EXEC")
            ));
        }
        if eval < 192 || (functions && fcall < 192) {
            failures.push(format!(
                "[{label}] a script's 1 MiB SETRANGE: EVAL {eval}, FCALL {fcall} faults"
            ));
        }
        let script_keys = fs
            .iter()
            .filter(|f| matches!(f["key"].as_str(), Some("ev:a" | "fc:a")))
            .count();
        if script_keys > 0 {
            failures.push(format!(
                "[{label}] {script_keys} faults name a script's key"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A client blocked in BLPOP is served later, inside another client's LPUSH: the reply it
/// gets (the popped 1 MiB element, copied into its reply buffer) is the BLPOP's, with the
/// list's key, on every build (Redis has the blocked client as `current_client` while it
/// serves it). The LPUSH keeps its own parse, run and cleanup faults.
#[test]
fn blocked_clients_are_served_under_the_command_that_serves_them() {
    use std::io::Write;
    require_root();
    const VALUE: usize = 1 << 20;
    let mut failures: Vec<String> = Vec::new();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let mut waiter = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        waiter
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        waiter
            .write_all(b"*3\r\n$5\r\nBLPOP\r\n$7\r\nbl:list\r\n$1\r\n0\r\n")
            .unwrap();
        testkit::wait::wait_until(
            "the BLPOP to block",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || server.info_u64("clients", "blocked_clients") == 1,
        );
        let mut pusher = server.client();
        let pushed_at = mono_ns();
        let len: u64 = redis::cmd("LPUSH")
            .arg("bl:list")
            .arg(vec![b'v'; VALUE])
            .query(&mut pusher)
            .unwrap();
        assert_eq!(len, 1);
        // *2 $7 bl:list $1048576 <value>: read it all.
        let mut reply = vec![0u8; 4 + 4 + 9 + 10 + VALUE + 2];
        waiter.read_exact(&mut reply).unwrap();
        assert!(reply.starts_with(b"*2\r\n$7\r\nbl:list\r\n$1048576\r\nvvv"));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        let fs = faults(&t);
        let after: Vec<&Value> = fs
            .iter()
            .copied()
            .filter(|f| f["ts_ns"].as_u64() >= Some(pushed_at))
            .collect();
        let count = |activity: &str, stage: Option<&str>| {
            after
                .iter()
                .filter(|f| {
                    f["activity"] == activity
                        && f["key"] == "bl:list"
                        && f["stage"].as_str() == stage
                })
                .count()
        };
        let (push_parse, pop_run) = (count("LPUSH", Some("parse")), count("BLPOP", None));
        let mut groups = std::collections::BTreeMap::new();
        for f in &after {
            let what = format!("{} {} {}", f["activity"], f["key"], f["stage"]);
            *groups.entry(what).or_insert(0usize) += 1;
        }
        eprintln!("[{label}] after the push: {groups:?}");
        // The reply holds the 1 MiB element: 256 pages, a little less where the allocator
        // reuses freed pages.
        if pop_run < 192 {
            failures.push(format!(
                "[{label}] the blocked BLPOP's 1 MiB reply: {pop_run} faults under BLPOP"
            ));
        }
        if push_parse < 192 {
            failures.push(format!(
                "[{label}] reading LPUSH's 1 MiB argument: {push_parse} parse faults"
            ));
        }
        let elsewhere = after
            .iter()
            .filter(|f| matches!(f["activity"].as_str(), Some("LPUSH" | "BLPOP")))
            .filter(|f| f["key"] != "bl:list")
            .count();
        if elsewhere > 0 {
            failures.push(format!(
                "[{label}] {elsewhere} LPUSH/BLPOP faults without the list's key"
            ));
        }
        let other = after
            .iter()
            .filter(|f| !matches!(f["activity"].as_str(), Some("LPUSH" | "BLPOP")))
            .count();
        if other > 16 {
            failures.push(format!(
                "[{label}] {other} faults after the push under neither command"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
