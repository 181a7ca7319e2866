//! Forks other than BGSAVE, against real servers (`testkit::attribution_builds`: Redis
//! 7.0 and 6.2), real eBPF, as root: they are labelled with their reason
//! (`aof-rewrite`, `replication` disk-based and disk-less) and carry Redis's own
//! `latest_fork_usec`.

use std::time::Duration;

use serde_json::Value;
use testkit::{
    Recording, Server, attribution_builds, read_timeline, require_root,
    timeline::{RunDelay, check_fork_time},
    wait::wait_until,
};

/// The epoch's own numbers agree with Redis: `latest_fork_usec` is INFO's value after
/// the fork, and the libc fork() call the tracer timed agrees with it (the bar:
/// within 200 us or 25%, allowing for the parent's faults between fork()'s return and
/// Redis's clock read, see `testkit::timeline::check_fork_time`).
fn check_fork_numbers(label: &str, t: &Value, e: &Value, info_fork_usec: u64, waited: &RunDelay) {
    assert_eq!(
        e["redis"]["latest_fork_usec"], info_fork_usec,
        "[{label}] epoch's latest_fork_usec vs INFO: {e}"
    );
    match check_fork_time(t, e, info_fork_usec, waited) {
        Ok(numbers) => println!("[{label}] {numbers}"),
        Err(numbers) => panic!("[{label}] {numbers}"),
    }
}

fn aof_idle(server: &Server) -> bool {
    let p = server.info("persistence");
    p.get("aof_rewrite_in_progress").map(String::as_str) == Some("0")
        && p.get("aof_rewrite_scheduled").map(String::as_str) == Some("0")
}

#[test]
fn bgrewriteaof_fork_is_labelled_aof_rewrite() {
    require_root();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &["--appendonly", "yes"]);
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
        let rec = Recording::start(&server, &out, &[]);
        let forks_before = server.info_u64("stats", "total_forks");
        // BGREWRITEAOF forks before it replies: the window holds the fork.
        let mut waited = RunDelay::start(server.pid);
        let reply: String = server.query(&redis::cmd("BGREWRITEAOF"));
        waited.stop();
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
        // Named by the function that called fork() (rewriteAppendOnlyFileBackground).
        assert_eq!(e["redis"]["reason_source"], "fork() caller", "[{label}]");
        assert_eq!(e["end_reason"], "exit", "[{label}]");
        check_fork_numbers(label, &t, e, fork_usec, &waited);
        // aof_last_cow_size, not rdb_last_cow_size, for an AOF rewrite.
        assert_eq!(e["redis"]["last_cow_size"], aof_cow, "[{label}]");
    }
}

#[test]
fn replica_full_sync_fork_is_labelled_replication() {
    require_root();
    for build in attribution_builds() {
        let label = &build.label;
        for diskless in ["no", "yes"] {
            let label = format!("{label} repl-diskless-sync {diskless}");
            let master = Server::start(
                &build,
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
            master.config_set("rdb-key-save-delay", "20");
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("t.json");
            let rec = Recording::start(&master, &out, &[]);
            let forks_before = master.info_u64("stats", "total_forks");
            let port = master.port.to_string();
            // The master forks when the replica asks for a full sync: the window runs
            // from before the replica starts to the end of the sync.
            let mut waited = RunDelay::start(master.pid);
            let replica = Server::start(&build, &["--replicaof", "127.0.0.1", &port]);
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
            waited.stop();
            assert_eq!(status, "ok", "[{label}]");
            let keys: u64 = replica.query(&redis::cmd("DBSIZE"));
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
            // Named by the function that called fork(): rdbSaveToSlavesSockets
            // (diskless) or startBgsaveForReplication (disk) on the stack.
            assert_eq!(e["redis"]["reason_source"], "fork() caller", "[{label}]");
            assert_eq!(e["end_reason"], "exit", "[{label}]");
            check_fork_numbers(&label, &t, e, fork_usec, &waited);
            drop(replica);
        }
    }
}
