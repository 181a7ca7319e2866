//! `cargo xtask bench-overhead`: what `redis-memtrace record --pid` costs a Redis server,
//! measured as requests/s of `redis-benchmark` untraced (A) and traced (B).
//!
//! One `redis-server` (Debian's 7.0) runs in a temporary folder on a free port, with
//! 100,000 keys of 64 bytes named exactly as `redis-benchmark -r 100000` names them
//! (`key:000000000000` ...), so every GET hits and every SET overwrites a value of the
//! same size. After one short warm-up run per workload, each round runs the four workloads
//! ([SET, GET] x [no pipelining, `-P 16`]) once untraced and once traced; the A/B order
//! alternates between rounds so that drift on a noisy machine hits both sides alike.
//! Traced means the tracer had attached and turned Redis attribution on (its `attribution
//! on` line seen; an error otherwise) before the benchmark started and is stopped with SIGINT after it ended; it must exit 0 and write a timeline.
//!
//! The table gives medians over rounds; `target/bench-overhead.json` has every run.
//! The server and the tracer are stopped on every path, Ctrl-C included (their guards
//! in `testkit` stop them when dropped).

use std::{path::Path, time::Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use testkit::{Server, recording::ATTRIBUTION_ON};

use crate::{
    bench_common::{attach, kernel, median, scratch_dir, stop_and_read, write_report},
    bin, interrupt,
    redis_benchmark::{Load, Sample},
    servers,
    setup::is_root,
};

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

/// The redis-benchmark run of `w`.
fn load(w: &Workload, clients: u32, requests: u64) -> Load {
    Load {
        test: w.test,
        clients,
        requests,
        pipeline: w.pipeline,
        keys: KEYS,
        value_size: VALUE_SIZE,
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
    interrupt::install();
    let dir = scratch_dir("memtrace-bench-overhead-")?;
    let result = run_all(requests, rounds, clients, dir.path());
    if interrupt::happened() {
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
        load(w, clients, warm).run(server.port)?;
    }
    let results = run_rounds(&server, requests, rounds, clients, &dir.join("t.json"))?;
    if !server.is_running() {
        bail!("redis-server exited during the benchmark: {}", server.log());
    }
    drop(server);

    let (rows, overall) = print_table(&results, requests, clients);
    let elapsed = started.elapsed().as_secs_f64();
    print_footer(overall, rounds, elapsed);
    write_report(
        "bench-overhead.json",
        &json!({
            "redis_version": version,
            "redis_server": redis_server,
            "tracer": bin("redis-memtrace"),
            "kernel": kernel(),
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
        }),
    )
}

/// Every round of every workload, each run logged on stderr as it ends.
fn run_rounds(
    server: &Server,
    requests: u64,
    rounds: usize,
    clients: u32,
    timeline: &Path,
) -> Result<Vec<Results>> {
    let mut results: Vec<Results> = WORKLOADS.iter().map(|_| Results::default()).collect();
    for round in 0..rounds {
        for (w, r) in WORKLOADS.iter().zip(results.iter_mut()) {
            // A B in even rounds, B A in odd ones.
            for traced in [round % 2 == 1, round % 2 == 0] {
                let run = load(w, clients, requests);
                let sample = if traced {
                    let tracer = attach(server.pid, timeline, ATTRIBUTION_ON, &[])?;
                    let sample = run.run(server.port)?;
                    let stats = stop_and_read(tracer, timeline)?;
                    r.events += stats.events;
                    r.faults += stats.faults;
                    r.lost += stats.lost;
                    r.traced.push(sample);
                    sample
                } else {
                    let sample = run.run(server.port)?;
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
    Ok(results)
}

/// One workload's medians.
struct Summary {
    untraced_rps: f64,
    traced_rps: f64,
    ratio: f64,
    /// Traced / untraced within each round: their spread shows how noisy the machine was.
    round_ratios: Vec<f64>,
    untraced_p99_ms: f64,
    traced_p99_ms: f64,
}

impl Summary {
    fn of(r: &Results) -> Summary {
        let rps = |s: &[Sample]| median(&s.iter().map(|x| x.rps).collect::<Vec<_>>());
        let p99 = |s: &[Sample]| median(&s.iter().map(|x| x.p99_ms).collect::<Vec<_>>());
        let (untraced_rps, traced_rps) = (rps(&r.untraced), rps(&r.traced));
        Summary {
            untraced_rps,
            traced_rps,
            ratio: traced_rps / untraced_rps,
            round_ratios: r
                .traced
                .iter()
                .zip(&r.untraced)
                .map(|(t, u)| t.rps / u.rps)
                .collect(),
            untraced_p99_ms: p99(&r.untraced),
            traced_p99_ms: p99(&r.traced),
        }
    }
}

/// Prints the table; returns its rows for the JSON and the geometric mean of the ratios.
fn print_table(results: &[Results], requests: u64, clients: u32) -> (Vec<Value>, f64) {
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
    for (w, r) in WORKLOADS.iter().zip(results) {
        let s = Summary::of(r);
        log_ratio_sum += s.ratio.ln();
        let (lo, hi) = s
            .round_ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        println!(
            "{:<10} {:>13.0} {:>13.0} {:>7.3} {:>6.1}% {:>13} {:>13.3} {:>13.3} {:>9} {:>5}",
            w.name,
            s.untraced_rps,
            s.traced_rps,
            s.ratio,
            (1.0 - s.ratio) * 100.0,
            format!("{lo:.2}..{hi:.2}"),
            s.untraced_p99_ms,
            s.traced_p99_ms,
            r.faults,
            r.lost
        );
        rows.push(row_json(w, r, &s, load(w, clients, requests).args()));
    }
    (rows, (log_ratio_sum / WORKLOADS.len() as f64).exp())
}

fn row_json(w: &Workload, r: &Results, s: &Summary, args: Vec<String>) -> Value {
    let samples = |v: &[Sample]| {
        v.iter()
            .map(|x| json!({"rps": x.rps, "p50_ms": x.p50_ms, "p99_ms": x.p99_ms}))
            .collect::<Vec<_>>()
    };
    json!({
        "workload": w.name,
        "redis_benchmark_args": args,
        "untraced": samples(&r.untraced),
        "traced": samples(&r.traced),
        "untraced_rps_median": s.untraced_rps,
        "traced_rps_median": s.traced_rps,
        "ratio": s.ratio,
        "round_ratios": s.round_ratios,
        "loss_pct": (1.0 - s.ratio) * 100.0,
        "untraced_p99_ms_median": s.untraced_p99_ms,
        "traced_p99_ms_median": s.traced_p99_ms,
        "traced_events": r.events,
        "traced_faults": r.faults,
        "lost_events": r.lost,
    })
}

fn print_footer(overall: f64, rounds: usize, elapsed: f64) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workloads' command lines, as they were before `redis_benchmark` was shared.
    #[test]
    fn benchmark_command_line() {
        assert_eq!(
            load(&WORKLOADS[1], 50, 1000).command_line(7000).join(" "),
            "-h 127.0.0.1 -p 7000 -c 50 -n 1000 -t set -P 16 -r 100000 -d 64 --csv"
        );
        assert_eq!(
            load(&WORKLOADS[2], 50, 1000).args().join(" "),
            "-c 50 -n 1000 -t get -r 100000 -d 64 --csv"
        );
    }
}
