//! The benchmark: how many fault events per second reach userspace, how many are lost,
//! and what tracing costs the traced process, measured as ratios within one run.
//!
//! Each configuration runs the fault generator for a fixed time untraced and traced,
//! alternating (A B A B ...) so drift on a noisy machine hits both sides alike. Ground
//! truth is the generator's own fault count: the tracer must report at least that many
//! events of the generated kind and lose none.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{bin, setup::is_root};

struct Config {
    name: &'static str,
    mode: &'static str,
    workers: usize,
    pages: usize,
    /// Summary field the generated faults are counted under.
    kind: &'static str,
}

const CONFIGS: &[Config] = &[
    Config {
        name: "zero-page reads, 1 process",
        mode: "zero",
        workers: 1,
        pages: 4096,
        kind: "other",
    },
    Config {
        name: "zero-page reads, 2 processes",
        mode: "zero",
        workers: 2,
        pages: 4096,
        kind: "other",
    },
    Config {
        name: "first touches, 1 process",
        mode: "touch",
        workers: 1,
        pages: 4096,
        kind: "first_touch",
    },
];

fn generator_faults(stdout: &[u8]) -> Result<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .find_map(|l| l.strip_prefix("faults "))
        .and_then(|v| v.trim().parse().ok())
        .context("fault-gen printed no `faults N` line")
}

fn gen_args(c: &Config, seconds: f64) -> Vec<String> {
    vec![
        "--pages".into(),
        c.pages.to_string(),
        "--loop-seconds".into(),
        seconds.to_string(),
        "--loop-mode".into(),
        c.mode.into(),
        "--workers".into(),
        c.workers.to_string(),
    ]
}

struct Traced {
    faults: u64,
    events: u64,
    kind_count: u64,
    lost: u64,
    attach_ms: f64,
}

fn traced(c: &Config, seconds: f64, dir: &Path) -> Result<Traced> {
    let out = dir.join("bench.json");
    let o = Command::new(bin("redis-memtrace"))
        .args(["record", "-q", "-o"])
        .arg(&out)
        .arg("--")
        .arg(bin("fault-gen"))
        .args(gen_args(c, seconds))
        .output()?;
    if !o.status.success() {
        bail!("traced run failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let faults = generator_faults(&o.stdout)?;
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    std::fs::remove_file(&out)?;
    Ok(Traced {
        faults,
        events: t["summary"]["events_received"].as_u64().unwrap_or(0),
        kind_count: t["summary"]["faults"][c.kind].as_u64().unwrap_or(0),
        lost: t["lost_events"].as_u64().unwrap_or(u64::MAX),
        attach_ms: t["run"]["attach_ns"].as_u64().unwrap_or(0) as f64 / 1e6,
    })
}

fn untraced(c: &Config, seconds: f64) -> Result<u64> {
    let o = Command::new(bin("fault-gen"))
        .args(gen_args(c, seconds))
        .output()?;
    if !o.status.success() {
        bail!("fault-gen failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    generator_faults(&o.stdout)
}

/// Runs every configuration `rounds` times each way and prints the table.
pub fn bench(seconds: f64, rounds: usize) -> Result<()> {
    if !is_root() {
        bail!("bench loads eBPF programs: run as root");
    }
    // The timeline of a second of full-speed faults is hundreds of MB: keep it in memory.
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    let dir = base.join(format!("memtrace-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_all(seconds, rounds, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_all(seconds: f64, rounds: usize, dir: &Path) -> Result<()> {
    let started = Instant::now();
    println!(
        "redis-memtrace benchmark: {seconds} s per run, {rounds} alternating rounds per configuration, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<30} {:>14} {:>14} {:>10} {:>16} {:>6} {:>10}",
        "load", "untraced f/s", "traced f/s", "ratio", "events/s to user", "lost", "attach ms"
    );
    let mut worst_lost = 0;
    for c in CONFIGS {
        let (mut a, mut b, mut events, mut lost, mut attach) = (0u64, 0u64, 0u64, 0u64, 0f64);
        for _ in 0..rounds {
            a += untraced(c, seconds)?;
            let t = traced(c, seconds, dir)?;
            if t.kind_count < t.faults {
                bail!(
                    "{}: tracer reported {} {} faults, the generator made {}",
                    c.name,
                    t.kind_count,
                    c.kind,
                    t.faults
                );
            }
            b += t.faults;
            events += t.events;
            lost += t.lost;
            attach = attach.max(t.attach_ms);
        }
        let secs = seconds * rounds as f64;
        worst_lost = worst_lost.max(lost);
        println!(
            "{:<30} {:>14.0} {:>14.0} {:>10.3} {:>16.0} {:>6} {:>10.1}",
            c.name,
            a as f64 / secs,
            b as f64 / secs,
            b as f64 / a as f64,
            events as f64 / secs,
            lost,
            attach
        );
    }
    println!(
        "ratio = traced / untraced fault rate of the generator; events/s counts every event delivered to userspace (attach = load + attach of all programs, worst run). Took {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    if worst_lost > 0 {
        println!("WARNING: events were lost");
    }
    Ok(())
}
