//! Faults of Redis's internal work, against real servers (`testkit::attribution_builds`:
//! every build `cargo xtask setup` installs), real eBPF, as root: they land on the internal phase
//! (`active-expire`, `eviction`, `lazyfree`), and eviction run inside a write command
//! lands on that command.
//!
//! Forks are kept alive by stopping the child with SIGSTOP (its pages stay shared, so
//! every write of the parent is a copy-on-write) and resumed with SIGCONT, also when a
//! test fails (see `testkit::fork_child::StoppedChild`). Time windows compare fault
//! `ts_ns` with the test's own CLOCK_MONOTONIC readings: the kernel stamps faults with
//! the same clock.

use std::time::Duration;

use serde_json::Value;
use testkit::{
    Recording, Server, attribution_builds,
    clock::{mono_ns, unix_ms},
    commands::info_u64_on,
    fork_child::bgsave_stopped,
    process::ProcStat,
    read_timeline, require_root,
    timeline::{by_activity, count_activity, is_command, parent_faults},
    wait::wait_until,
};

#[test]
fn active_expiry_faults_are_attributed_to_active_expire() {
    require_root();
    const KEYS: usize = 200_000;
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &["--active-expire-effort", "10"]);
        let mut con = server.client();
        let value = vec![b'e'; 512];
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(20_000) {
            let mut pipe = redis::pipe();
            for i in chunk {
                pipe.cmd("SET").arg(format!("exp:{i}")).arg(&value).ignore();
            }
            pipe.query::<()>(&mut con).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);

        // Deadlines 2.5 s .. 3.5 s from now, set before the fork: the keys' memory is
        // shared with the child, and they expire while it lives.
        let base = unix_ms() + 2500;
        let mut pipe = redis::pipe();
        for i in 0..KEYS {
            pipe.cmd("PEXPIREAT")
                .arg(format!("exp:{i}"))
                .arg(base + (i % 1000) as u64)
                .ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
        let stopped = bgsave_stopped(&server, &mut con);
        let window_start = mono_ns();
        assert_eq!(
            info_u64_on(&mut con, "stats", "expired_keys"),
            0,
            "[{label}] keys expired before the fork: machine too slow for this test"
        );
        assert!(unix_ms() < base, "[{label}] fork after the first deadline");
        // No client command from here until every key is gone, except a rare INFO.
        std::thread::sleep(Duration::from_millis(
            (base + 1000).saturating_sub(unix_ms()),
        ));
        // Redis stops sampling a table under 1 % full ("waiting for better times", until
        // it shrinks, which it does not while a child lives): the last ~1 % of the keys
        // stay until the child exits. Wait until expiry stalls.
        let mut last = u64::MAX;
        wait_until(
            "active expiry to stall",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let n = info_u64_on(&mut con, "stats", "expired_keys");
                let stalled = n == last && n > 0;
                last = n;
                stalled
            },
        );
        let window_end = mono_ns();
        let expired = last;
        assert!(
            expired >= KEYS as u64 * 95 / 100,
            "[{label}] only {expired} keys expired while the child lived"
        );
        drop(stopped);
        let (status, _) = server.wait_bgsave_done(Duration::from_secs(60));
        assert_eq!(status, "ok");
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(t["epochs"].as_array().unwrap().len(), 1, "[{label}]");

        let window = parent_faults(&t, 0, Some((window_start, window_end)));
        let active = count_activity(&window, "active-expire");
        let commands = window.iter().filter(|f| is_command(f)).count();
        let exp_keyed = parent_faults(&t, 0, None)
            .iter()
            .filter(|f| f["key"].as_str().is_some_and(|k| k.starts_with("exp:")))
            .count();
        eprintln!(
            "[{label}] expiry window: {expired} keys expired, {} parent faults, active-expire {active}, under commands \
             {commands}; by activity {:?}",
            window.len(),
            by_activity(&window)
        );
        // Deleting 200k keys writes both dicts' bucket arrays (2 x 2 MiB) and reuses
        // freed, still shared, allocator pages: well over a thousand copies.
        assert!(
            active >= 1000,
            "[{label}] only {active} faults under active-expire"
        );
        assert!(
            active >= 20 * commands.max(1),
            "[{label}] {commands} faults under commands vs {active} under active-expire"
        );
        assert_eq!(exp_keyed, 0, "[{label}] no command touched an exp:* key");
        let cow_active = window
            .iter()
            .filter(|f| f["activity"] == "active-expire" && f["kind"] == "cow_copy")
            .count();
        assert!(
            cow_active * 2 >= active,
            "[{label}] the parent's work while the child lives is copy-on-write: {cow_active} of {active}"
        );
    }
}

#[test]
fn eviction_between_commands_is_eviction_and_inside_a_write_is_the_write() {
    require_root();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &["--maxmemory-policy", "allkeys-lru"]);
        server.populate(100_000, "key", 1024);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        // The tracer's own INFO samples would evict inside INFO (see below): one every
        // 10 s keeps them out of the windows.
        let rec = Recording::start(&server, &out, &["--interval", "10s"]);
        let mut con = server.client();

        // A: maxmemory lowered by 40 MB, no command after it. Redis 7.0 evicts only from
        // its eviction time event (evictionTimeProc -> performEvictions), outside any
        // client; 6.2 evicts for up to 500 us inside CONFIG SET, then the same way.
        let stopped = bgsave_stopped(&server, &mut con);
        let used = info_u64_on(&mut con, "memory", "used_memory");
        let a0 = mono_ns();
        server.config_set("maxmemory", used - 40_000_000);
        // Watched without commands: every command, INFO included, runs
        // performEvictions() in processCommand() while over the limit, and its faults
        // would rightly be that command's. Eviction under the stopped child copies pages
        // (hundreds a second) until it is done, so it is done once the server's fault
        // count all but stands still (cron's few writes go on).
        let mut last = u64::MAX;
        wait_until(
            "eviction A",
            Duration::from_secs(60),
            Duration::from_secs(1),
            || {
                let n = ProcStat::read(server.pid).map_or(0, |s| s.faults());
                let done = last != u64::MAX && n.saturating_sub(last) < 16;
                last = n;
                done
            },
        );
        let a1 = mono_ns();
        let evicted_a = info_u64_on(&mut con, "stats", "evicted_keys");
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));

        // B: the same, but with a SET pipelined right behind the CONFIG SETs and no time
        // limit: the SET's processCommand() evicts everything before the time event
        // runs, while server.current_client is the SET's client.
        let stopped = bgsave_stopped(&server, &mut con);
        let used = info_u64_on(&mut con, "memory", "used_memory");
        let b0 = mono_ns();
        let mut pipe = redis::pipe();
        pipe.cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-eviction-tenacity")
            .arg(100)
            .ignore();
        pipe.cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(used - 40_000_000)
            .ignore();
        pipe.cmd("SET").arg("trigger").arg("v").ignore();
        pipe.query::<()>(&mut con).unwrap();
        let evicted_b = info_u64_on(&mut con, "stats", "evicted_keys") - evicted_a;
        std::thread::sleep(Duration::from_millis(300));
        let b1 = mono_ns();
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();

        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(t["epochs"].as_array().unwrap().len(), 2, "[{label}]");
        let a = parent_faults(&t, 0, Some((a0, a1)));
        let b = parent_faults(&t, 1, Some((b0, b1)));
        eprintln!(
            "[{label}] A: evicted {evicted_a}, faults by activity {:?}",
            by_activity(&a)
        );
        eprintln!(
            "[{label}] B: evicted {evicted_b}, faults by activity {:?}",
            by_activity(&b)
        );
        assert!(evicted_a >= 20_000, "[{label}] evicted {evicted_a}");
        assert!(evicted_b >= 20_000, "[{label}] evicted {evicted_b}");

        let eviction_a = count_activity(&a, "eviction");
        let commands_a = a.iter().filter(|f| is_command(f)).count();
        assert!(
            eviction_a >= 300,
            "[{label}] A: only {eviction_a} faults under eviction"
        );
        assert!(
            eviction_a >= 5 * commands_a,
            "[{label}] A: {commands_a} faults under commands vs {eviction_a} under eviction"
        );

        let eviction_b = count_activity(&b, "eviction");
        if server.build.major() >= 7 {
            // Eviction ran inside the SET: its faults are the SET's, with its key.
            let set_trigger = b
                .iter()
                .filter(|f| f["activity"] == "SET" && f["key"] == "trigger")
                .count();
            assert!(
                set_trigger >= 300,
                "[{label}] B: only {set_trigger} faults under SET trigger"
            );
            assert!(
                set_trigger >= 5 * eviction_b,
                "[{label}] B: {eviction_b} faults under eviction vs {set_trigger} under SET"
            );
        } else {
            // 6.2 evicts inside CONFIG SET maxmemory (updateMaxmemory -> performEvictions).
            let config = count_activity(&b, "CONFIG");
            assert!(
                config >= 300,
                "[{label}] B: only {config} faults under CONFIG"
            );
            assert!(
                config >= 5 * eviction_b,
                "[{label}] B: {eviction_b} faults under eviction vs {config} under CONFIG"
            );
        }
    }
}

#[test]
fn lazy_free_faults_are_on_the_lazyfree_thread() {
    require_root();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &["--lazyfree-lazy-user-del", "yes"]);
        let mut con = server.client();
        // A hash of 200k fields (hashtable encoding): far above LAZYFREE_THRESHOLD.
        let value = vec![b'h'; 100];
        for c in 0..200 {
            let mut cmd = redis::cmd("HSET");
            cmd.arg("big");
            for j in 0..1000 {
                cmd.arg(format!("f{}", c * 1000 + j)).arg(&value);
            }
            let _: u64 = cmd.query(&mut con).unwrap();
        }
        server.populate(100_000, "key", 200);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let lazyfreed_before = info_u64_on(&mut con, "memory", "lazyfreed_objects");
        let stopped = bgsave_stopped(&server, &mut con);
        let t0 = mono_ns();
        // DEL is UNLINK with lazyfree-lazy-user-del yes.
        let n: u64 = redis::cmd("DEL").arg("big").query(&mut con).unwrap();
        assert_eq!(n, 1);
        let _: () = redis::cmd("FLUSHALL").arg("ASYNC").query(&mut con).unwrap();
        wait_until(
            "lazy free",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || info_u64_on(&mut con, "memory", "lazyfree_pending_objects") == 0,
        );
        let t1 = mono_ns();
        let lazyfreed = info_u64_on(&mut con, "memory", "lazyfreed_objects") - lazyfreed_before;
        // The lazy-free thread, by name.
        let lazy_tids: Vec<u64> = std::fs::read_dir(format!("/proc/{}/task", server.pid))
            .unwrap()
            .filter_map(|e| {
                let tid = e.ok()?.file_name().to_str()?.parse::<u64>().ok()?;
                let comm = std::fs::read_to_string(format!("/proc/{}/task/{tid}/comm", server.pid))
                    .ok()?;
                (comm.trim() == "bio_lazy_free").then_some(tid)
            })
            .collect();
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(lazy_tids.len(), 1, "[{label}] one bio_lazy_free thread");
        assert!(
            lazyfreed >= 2,
            "[{label}] lazyfreed_objects grew by {lazyfreed}"
        );
        let window = parent_faults(&t, 0, Some((t0, t1)));
        let lazy: Vec<&&Value> = window
            .iter()
            .filter(|f| f["activity"] == "lazyfree")
            .collect();
        eprintln!(
            "[{label}] lazy free window: by activity {:?}",
            by_activity(&window)
        );
        assert!(
            lazy.len() >= 100,
            "[{label}] only {} faults under lazyfree",
            lazy.len()
        );
        for f in &lazy {
            assert_eq!(
                f["tid"].as_u64(),
                Some(lazy_tids[0]),
                "[{label}] a lazyfree fault off the bio_lazy_free thread: {f}"
            );
            assert!(f.get("key").is_none(), "[{label}] {f}");
        }
        // Every fault of that thread in the window is a lazyfree one.
        let on_thread = window
            .iter()
            .filter(|f| f["tid"].as_u64() == Some(lazy_tids[0]))
            .count();
        assert_eq!(on_thread, lazy.len(), "[{label}]");
    }
}
