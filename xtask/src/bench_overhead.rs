//! `cargo xtask bench-overhead`: what `redis-memtrace record --pid` costs a Redis server,
//! measured as requests/s of `redis-benchmark` untraced (A) and traced (B).
//!
//! One `redis-server` (Debian's 7.0) runs in a temporary folder on a free port, with
//! 100,000 keys of 64 bytes named exactly as `redis-benchmark -r 100000` names them
//! (`key:000000000000` ...), so every GET hits and every SET overwrites a value of the
//! same size. After one short warm-up run per workload, each round runs the four workloads
//! ([SET, GET] x [no pipelining, `-P 16`]) once untraced and once traced; the A/B order
//! alternates between rounds so that drift on a noisy machine hits both sides alike.
//! Traced means the tracer was attached (its `tracing pid` line seen) before the benchmark
//! started and is stopped with SIGINT after it ended; it must exit 0 and write a timeline.
//!
//! The table gives medians over rounds; `target/bench-overhead.json` has every run.
//! The server and the tracer are stopped on every path, Ctrl-C included (their guards
//! in `testkit` stop them when dropped).

use std::{
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde_json::json;
use testkit::{
    Recording, Server,
    recording::{Launch, TRACING_PID},
};

use crate::{bin, root, servers, setup::is_root};

/// Requests per redis-benchmark run. With 3 rounds the bench takes about 2 minutes on an
/// idle 2-vCPU machine (~60k req/s unpipelined, ~450k with `-P 16`) and 4.5 on a busy one
/// (~30k req/s).
pub const DEFAULT_REQUESTS: u64 = 500_000;

/// Keys in the server, and redis-benchmark's `-r` key space.
const KEYS: u64 = 100_000;
/// Value size, redis-benchmark's `-d`.
const VALUE_SIZE: usize = 64;
/// Pipeline depth of the pipelined workloads.
const PIPELINE: u32 = 16;

struct Workload {
    name: &'static str,
    test: &'static str,
    pipeline: Option<u32>,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "SET",
        test: "set",
        pipeline: None,
    },
    Workload {
        name: "SET -P 16",
        test: "set",
        pipeline: Some(PIPELINE),
    },
    Workload {
        name: "GET",
        test: "get",
        pipeline: None,
    },
    Workload {
        name: "GET -P 16",
        test: "get",
        pipeline: Some(PIPELINE),
    },
];

/// Set by SIGINT: the children get the terminal's SIGINT too and stop, the run fails, and
/// the guards clean up instead of the process dying with a server left behind.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// What one traced run's timeline says.
struct TraceStats {
    events: u64,
    faults: u64,
    lost: u64,
}

/// `redis-memtrace record --pid PID -o OUT`, returned once it printed that it is tracing
/// `pid`; SIGINTed (then SIGKILLed) when dropped.
fn attach(pid: u32, out: &Path) -> Result<Recording> {
    let pid = pid.to_string();
    Ok(Recording::launch(&Launch {
        target: &["--pid", &pid],
        out,
        extra: &[],
        ready: TRACING_PID,
        echo: false,
    })?)
}

/// SIGINT, wait for a clean exit, and read the timeline's totals (then remove it).
fn detach(tracer: Recording, out: &Path) -> Result<TraceStats> {
    tracer.try_stop()?;
    let bytes =
        std::fs::read(out).with_context(|| format!("reading the timeline {}", out.display()))?;
    let _ = std::fs::remove_file(out);
    let t: serde_json::Value =
        serde_json::from_slice(&bytes).context("the timeline is not valid JSON")?;
    let faults = t["summary"]["faults"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0);
    Ok(TraceStats {
        events: t["summary"]["events_received"].as_u64().unwrap_or(0),
        faults,
        lost: t["lost_events"].as_u64().unwrap_or(0),
    })
}

/// One redis-benchmark result.
#[derive(Clone, Copy)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn benchmark_args(port: u16, clients: u32, requests: u64, w: &Workload) -> Vec<String> {
    let mut args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-c",
        &clients.to_string(),
        "-n",
        &requests.to_string(),
        "-t",
        w.test,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(p) = w.pipeline {
        args.extend(["-P".to_string(), p.to_string()]);
    }
    args.extend(
        [
            "-r",
            &KEYS.to_string(),
            "-d",
            &VALUE_SIZE.to_string(),
            "--csv",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args
}

/// Parses redis-benchmark's `--csv` output: the header row names the columns.
fn parse_csv(text: &str, test: &str) -> Result<Sample> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .map(|l| {
            l.split(',')
                .map(|f| f.trim().trim_matches('"').to_string())
                .collect()
        })
        .collect();
    let header = rows
        .iter()
        .find(|r| r.first().is_some_and(|f| f == "test"))
        .with_context(|| format!("no CSV header in redis-benchmark output: {text}"))?;
    let row = rows
        .iter()
        .find(|r| r.first().is_some_and(|f| f.eq_ignore_ascii_case(test)))
        .with_context(|| format!("no {test} row in redis-benchmark output: {text}"))?;
    let col = |name: &str| -> Result<f64> {
        let i = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no {name} column in redis-benchmark output: {text}"))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad {name} value in redis-benchmark output: {text}"))
    };
    Ok(Sample {
        rps: col("rps")?,
        p50_ms: col("p50_latency_ms")?,
        p99_ms: col("p99_latency_ms")?,
    })
}

fn benchmark(port: u16, clients: u32, requests: u64, w: &Workload) -> Result<Sample> {
    check_interrupted()?;
    let o = Command::new("redis-benchmark")
        .args(benchmark_args(port, clients, requests, w))
        .stdin(Stdio::null())
        .output()
        .context("running redis-benchmark (run `cargo xtask setup`)")?;
    check_interrupted()?;
    if !o.status.success() {
        bail!(
            "redis-benchmark {} failed with {}: {}",
            w.name,
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    parse_csv(&String::from_utf8_lossy(&o.stdout), w.test)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[derive(Default)]
struct Results {
    untraced: Vec<Sample>,
    traced: Vec<Sample>,
    events: u64,
    faults: u64,
    lost: u64,
}

/// Runs the benchmark and prints the table; writes `target/bench-overhead.json`.
pub fn bench_overhead(requests: u64, rounds: usize, clients: u32) -> Result<()> {
    if !is_root() {
        bail!("bench-overhead loads eBPF programs: run as root");
    }
    if requests == 0 || rounds == 0 || clients == 0 {
        bail!("--requests, --rounds and --clients must be at least 1");
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    // Timelines can be large: keep them in memory when possible, like `bench`.
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm").to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("memtrace-bench-overhead-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a folder in {}", base.display()))?;
    let result = run_all(requests, rounds, clients, dir.path());
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("bench-overhead: interrupted; server and tracer stopped");
    }
    result
}

fn run_all(requests: u64, rounds: usize, clients: u32, dir: &Path) -> Result<()> {
    let started = Instant::now();
    let mut server = Server::try_start(&servers::installed_build("redis-7.0")?, None, &[])?;
    let pid = server.pid;
    let version = server.build.version.clone();
    let redis_server = server.build.server.clone();
    server.try_populate_benchmark_keys(KEYS, VALUE_SIZE)?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "redis-memtrace bench-overhead: redis-server {version} (pid {pid}), {KEYS} keys of {VALUE_SIZE} B, \
         {requests} requests x {clients} clients per run, {rounds} rounds, {cpus} CPUs"
    );

    // Warm-up: first runs are slower (allocator, page cache, CPU frequency).
    let warm = (requests / 10).clamp(10_000, 100_000);
    for w in &WORKLOADS {
        benchmark(server.port, clients, warm, w)?;
    }

    let timeline = dir.join("t.json");
    let mut results: Vec<Results> = WORKLOADS.iter().map(|_| Results::default()).collect();
    for round in 0..rounds {
        for (w, r) in WORKLOADS.iter().zip(results.iter_mut()) {
            // A B in even rounds, B A in odd ones.
            for traced in [round % 2 == 1, round % 2 == 0] {
                let sample = if traced {
                    let tracer = attach(pid, &timeline)?;
                    let sample = benchmark(server.port, clients, requests, w)?;
                    let stats = detach(tracer, &timeline)?;
                    r.events += stats.events;
                    r.faults += stats.faults;
                    r.lost += stats.lost;
                    r.traced.push(sample);
                    sample
                } else {
                    let sample = benchmark(server.port, clients, requests, w)?;
                    r.untraced.push(sample);
                    sample
                };
                eprintln!(
                    "bench-overhead: round {}/{rounds} {:<10} {:<8} {:>10.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                    round + 1,
                    w.name,
                    if traced { "traced" } else { "untraced" },
                    sample.rps,
                    sample.p50_ms,
                    sample.p99_ms
                );
            }
        }
    }
    if !server.is_running() {
        bail!("redis-server exited during the benchmark: {}", server.log());
    }
    drop(server);

    println!(
        "{:<10} {:>13} {:>13} {:>7} {:>7} {:>13} {:>13} {:>13} {:>9} {:>5}",
        "workload",
        "untraced rps",
        "traced rps",
        "ratio",
        "loss %",
        "round ratios",
        "p99 ms untr.",
        "p99 ms traced",
        "faults",
        "lost"
    );
    let mut rows = Vec::new();
    let mut log_ratio_sum = 0.0;
    for (w, r) in WORKLOADS.iter().zip(&results) {
        let rps = |s: &[Sample]| s.iter().map(|x| x.rps).collect::<Vec<_>>();
        let p99 = |s: &[Sample]| median(&s.iter().map(|x| x.p99_ms).collect::<Vec<_>>());
        let a = median(&rps(&r.untraced));
        let b = median(&rps(&r.traced));
        let ratio = b / a;
        log_ratio_sum += ratio.ln();
        // Traced / untraced within each round: their spread shows how noisy the machine was.
        let paired: Vec<f64> = r
            .traced
            .iter()
            .zip(&r.untraced)
            .map(|(t, u)| t.rps / u.rps)
            .collect();
        let (lo, hi) = paired
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        println!(
            "{:<10} {:>13.0} {:>13.0} {:>7.3} {:>6.1}% {:>13} {:>13.3} {:>13.3} {:>9} {:>5}",
            w.name,
            a,
            b,
            ratio,
            (1.0 - ratio) * 100.0,
            format!("{lo:.2}..{hi:.2}"),
            p99(&r.untraced),
            p99(&r.traced),
            r.faults,
            r.lost
        );
        let samples = |s: &[Sample]| {
            s.iter()
                .map(|x| json!({"rps": x.rps, "p50_ms": x.p50_ms, "p99_ms": x.p99_ms}))
                .collect::<Vec<_>>()
        };
        rows.push(json!({
            "workload": w.name,
            "redis_benchmark_args": benchmark_args(0, clients, requests, w)
                .into_iter()
                .skip(4)
                .collect::<Vec<_>>(),
            "untraced": samples(&r.untraced),
            "traced": samples(&r.traced),
            "untraced_rps_median": a,
            "traced_rps_median": b,
            "ratio": ratio,
            "round_ratios": paired,
            "loss_pct": (1.0 - ratio) * 100.0,
            "untraced_p99_ms_median": p99(&r.untraced),
            "traced_p99_ms_median": p99(&r.traced),
            "traced_events": r.events,
            "traced_faults": r.faults,
            "lost_events": r.lost,
        }));
    }
    let overall = (log_ratio_sum / WORKLOADS.len() as f64).exp();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{:<10} {:>13} {:>13} {:>7.3} {:>6.1}%  (geometric mean of the 4 ratios)",
        "overall",
        "",
        "",
        overall,
        (1.0 - overall) * 100.0
    );
    println!(
        "rps = median requests/s over {rounds} rounds; ratio = traced / untraced of the medians; \
         round ratios = lowest..highest traced / untraced within one round (noise); faults and \
         lost = totals over the traced runs. Took {elapsed:.0} s."
    );

    let report = json!({
        "redis_version": version,
        "redis_server": redis_server,
        "tracer": bin("redis-memtrace"),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        "cpus": cpus,
        "keys": KEYS,
        "value_size": VALUE_SIZE,
        "requests": requests,
        "rounds": rounds,
        "clients": clients,
        "workloads": rows,
        "overall_ratio": overall,
        "overall_loss_pct": (1.0 - overall) * 100.0,
        "elapsed_s": elapsed,
    });
    let path = root().join("target/bench-overhead.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"63877.36\",\"0.428\",\"0.192\",\"0.383\",\"0.791\",\"1.055\",\"4.559\"\n";
        let s = parse_csv(out, "set").unwrap();
        assert_eq!(s.rps, 63877.36);
        assert_eq!(s.p50_ms, 0.383);
        assert_eq!(s.p99_ms, 1.055);
        assert!(parse_csv(out, "get").is_err());
        assert!(parse_csv("garbage", "set").is_err());
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn benchmark_command_line() {
        let a = benchmark_args(7000, 50, 1000, &WORKLOADS[1]).join(" ");
        assert_eq!(
            a,
            "-h 127.0.0.1 -p 7000 -c 50 -n 1000 -t set -P 16 -r 100000 -d 64 --csv"
        );
    }
}
