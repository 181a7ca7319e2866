//! `serve`: one tracer following a Redis server through a restart at the same address,
//! under redis-benchmark writes and a BGSAVE every few seconds, scraped by a real
//! Prometheus, for `MEMTRACE_SOAK_SECS` seconds (60 in the suite; `cargo xtask soak
//! --serve --minutes 10` runs longer). Asserts: no counter ever went down (Prometheus's
//! own `resets()` over the whole run), one fork per BGSAVE across both servers, the
//! faults counted are at least the kernel's count of each server's faults while it was
//! traced, 0 events lost, the tracer's RSS under 64 MiB, a clean exit on SIGINT that
//! leaves no file behind.
//!
//! Needs root and `MEMTRACE_PROMETHEUS` (set by `cargo xtask test`). Run serially.

use std::time::{Duration, Instant};

use testkit::{
    Recording, Server, by_label, free_port, names_in,
    process::{ProcStat, proc_state, rss_bytes, signal},
    prometheus::Prometheus,
    recording::ATTRIBUTION_ON,
    require_root,
    soak::{periodic_bgsaves, soak_seconds},
    wait::wait_until,
};

/// `minflt + majflt` of `pid` so far.
fn faults(pid: u32) -> u64 {
    ProcStat::read(pid).expect("server alive").faults()
}

/// What one server's stretch of the run saw.
struct Stretch {
    bgsaves: u64,
    max_rss: u64,
    /// The kernel's count of the server's faults while it was traced.
    kernel_faults: u64,
}

/// Runs the benchmark on `server` for `secs`, a BGSAVE every 5 s at most when none
/// runs, sampling the tracer's RSS; returns once the last BGSAVE is done.
fn stretch(server: &Server, tracer: u32, secs: u64) -> Stretch {
    let before = faults(server.pid);
    let bench = server.benchmark_loop();
    let stats = periodic_bgsaves(server, tracer, Duration::from_secs(secs));
    drop(bench);
    server.wait_bgsave_done(Duration::from_secs(60));
    Stretch {
        bgsaves: stats.bgsaves,
        max_rss: stats.max_rss,
        kernel_faults: faults(server.pid) - before,
    }
}

#[test]
fn serve_follows_a_restart_with_monotonic_metrics_and_bounded_memory() {
    require_root();
    let secs = soak_seconds();
    let build = by_label("redis-7.0");
    let port = free_port();
    let mut first = Server::start_on_port(&build, Some(port), &[]);
    first.populate(100_000, "key", 512);
    let addr = format!("127.0.0.1:{}", free_port());
    let prometheus = Prometheus::start(&addr);
    let cwd = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut serve = Recording::serve(
        cwd.path(),
        &[
            "--redis",
            &first.url(),
            "--metrics",
            &addr,
            "--interval",
            "1s",
        ],
        ATTRIBUTION_ON,
    );
    let tracer = serve.pid();
    let a = stretch(&first, tracer, secs / 2);

    // The restart: a new server at the same address, found and traced again.
    first.kill();
    let second = Server::start_on_port(&build, Some(port), &[]);
    serve.wait_for("following: a server is back");
    serve.wait_for(ATTRIBUTION_ON);
    second.populate(50_000, "key", 512);
    let b = stretch(&second, tracer, secs - secs / 2);
    signal(second.pid, libc::SIGSTOP);
    wait_until(
        "the server to stop",
        Duration::from_secs(5),
        Duration::from_millis(2),
        || proc_state(second.pid) == Some('T'),
    );

    let node = format!("node=\"{}\"", second.url());
    let parent = format!("sum(redis_memtrace_faults_total{{{node},role=\"parent\"}})");
    let kernel = (a.kernel_faults + b.kernel_faults) as f64;
    wait_until(
        "the servers' faults in Prometheus",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || prometheus.value(&parent).is_some_and(|n| n >= kernel),
    );
    let counted = prometheus.value(&parent).unwrap_or(0.0);
    let range = format!("{}s", started.elapsed().as_secs() + 10);
    let resets = prometheus.query(&format!(
        "resets(redis_memtrace_faults_total{{{node}}}[{range}])"
    ));
    let forks = prometheus.value(&format!("redis_memtrace_forks_total{{{node}}}"));
    let lost = prometheus.value(&format!("redis_memtrace_lost_events_total{{{node}}}"));
    let series = prometheus
        .query(&format!("redis_memtrace_faults_total{{{node}}}"))
        .len();
    signal(second.pid, libc::SIGCONT);
    let max_rss = a.max_rss.max(b.max_rss).max(rss_bytes(tracer));
    let log = serve.stop();
    eprintln!(
        "serve {secs}s: {} + {} BGSAVEs, {series} fault series, parent faults {counted} \
         (kernel {kernel}), tracer max RSS {} MiB, lost {lost:?}",
        a.bgsaves,
        b.bgsaves,
        max_rss >> 20
    );
    assert!(
        !resets.is_empty() && resets.iter().all(|(_, n)| *n == 0.0),
        "{resets:?}"
    );
    assert_eq!(forks, Some((a.bgsaves + b.bgsaves) as f64), "{log}");
    assert!(a.bgsaves >= 1 && b.bgsaves >= 1, "{log}");
    assert_eq!(lost, Some(0.0));
    assert!(max_rss > 0 && max_rss < 64 << 20, "tracer RSS {max_rss} B");
    assert!(log.contains("stopped (signal)"), "{log}");
    assert!(names_in(cwd.path()).is_empty(), "serve wrote files");
}
