//! Soak: redis-benchmark writing and reading without pause, a BGSAVE every few seconds,
//! under the tracer with full attribution, for `MEMTRACE_SOAK_SECS` seconds (60 in the
//! test suite; `cargo xtask soak` runs 10 minutes). Asserts: the tracer's RSS stays
//! under 64 MiB, no event is lost, every BGSAVE is an epoch and every epoch is closed,
//! and the timeline is complete and valid.

use std::time::Duration;

use testkit::{
    Recording, Server, by_label,
    process::ProcStat,
    read_timeline, require_root,
    soak::{SoakStats, periodic_bgsaves, soak_seconds},
};

/// User plus system CPU time of `pid` so far, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    ProcStat::read(pid).map_or(0.0, |s| s.cpu_seconds())
}

#[test]
fn soak_under_benchmark_with_periodic_bgsave() {
    require_root();
    let secs = soak_seconds();
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(100_000, "key", 512);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("soak.json");
    let rec = Recording::start(&server, &out, &["--interval", "1s"]);
    let tracer_pid = rec.pid();

    let mut bench = server.benchmark_loop();
    let SoakStats { bgsaves, max_rss } =
        periodic_bgsaves(&server, tracer_pid, Duration::from_secs(secs));
    server.wait_bgsave_done(Duration::from_secs(60));
    let _ = bench.kill();
    let _ = bench.wait();
    // CPU over the whole run (the server was started just before it).
    let (tracer_cpu, redis_cpu) = (cpu_seconds(tracer_pid), cpu_seconds(server.pid));
    let log = rec.stop();
    let t = read_timeline(&out);
    eprintln!(
        "soak {secs}s: {bgsaves} BGSAVEs, tracer max RSS {} MiB, {} events, lost {}; CPU: \
         tracer {tracer_cpu:.1} s, redis-server {redis_cpu:.1} s ({:.1}%)",
        max_rss >> 20,
        t["events"].as_array().unwrap().len(),
        t["lost_events"],
        100.0 * tracer_cpu / redis_cpu.max(0.01)
    );
    assert!(bgsaves >= secs / 10, "only {bgsaves} BGSAVEs: {log}");
    assert!(max_rss > 0 && max_rss < 64 << 20, "tracer RSS {max_rss} B");
    assert_eq!(t["lost_events"], 0);
    assert_eq!(t["kernel"]["threads_full"], 0);
    let epochs = t["epochs"].as_array().unwrap();
    assert_eq!(epochs.len() as u64, bgsaves, "one epoch per BGSAVE");
    for e in epochs {
        assert!(e["end_ns"].is_u64(), "epoch not closed: {e}");
        assert_eq!(e["end_reason"], "exit");
        assert_eq!(e["reason"], "bgsave");
    }
    assert_eq!(t["end"]["reason"], "signal");
    assert!(t["summary"]["faults"]["cow_copy"].as_u64().unwrap() > 0);
}
