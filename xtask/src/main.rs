//! `cargo xtask`: everything needed on a fresh machine, in one place.
//!
//! - `setup`: idempotent; mounts tracefs, adds rust-src to nightly, builds bpf-linker against
//!   rustc's own LLVM, installs the Debian packages the tests use and the Redis/Valkey builds
//!   they run against (see `servers`), and DuckDB's Python package for the analysis test (see
//!   `tools`). Every other command runs it.
//! - `build`: the `redis-memtrace` binary (with the eBPF object embedded) and the fault generator.
//! - `test`: formatting, clippy, unit tests and the root integration tests, serially.
//! - `bench`: events/s delivered and lost, and fault-rate overhead, in one run.
//! - `bench-overhead`: requests/s a Redis server loses while `record --pid` traces it.
//! - `bench-fork`: BPF and tracer CPU per fault and throughput cost on a million-key Redis
//!   while a fork child is alive (copy-on-write at full speed), next to a no-fork baseline.
//! - `demo`: the main job: trace a workload with forks, copy-on-write and swap, and show it.

mod bench;
mod bench_common;
mod bench_fork;
mod bench_overhead;
mod bench_stages;
mod demo;
mod interrupt;
mod prometheus;
mod redis_benchmark;
mod servers;
mod setup;
mod tools;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "redis-memtrace automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install and prepare everything the build and tests need (idempotent).
    Setup,
    /// Build the tracer and the test workloads (release).
    Build,
    /// Run lints, unit tests and the root integration tests.
    Test {
        /// Only the tests whose names contain this.
        filter: Option<String>,
    },
    /// Measure events/s delivered and lost, and the tracer's cost to the traced process.
    Bench {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Alternating runs per configuration.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Measure what `record --pid` costs a Redis server in requests/s (redis-benchmark).
    BenchOverhead {
        /// Requests per redis-benchmark run.
        #[arg(long, default_value_t = bench_overhead::DEFAULT_REQUESTS)]
        requests: u64,
        /// Alternating untraced/traced rounds per workload.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// redis-benchmark clients.
        #[arg(long, default_value_t = 50)]
        clients: u32,
    },
    /// Measure BPF, tracer and throughput cost on 1M keys with a fork child alive and without
    /// (run under `flock /tmp/memtrace-bpf.lock`).
    BenchFork {
        /// ABBA rounds (a traced, an untraced and two control windows per kind each);
        /// default 10, or 3 with --stages.
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per window (sets each kind's request count from a warm-up run).
        #[arg(long, default_value_t = bench_fork::DEFAULT_SECONDS)]
        seconds: f64,
        /// The server build to measure, by its label in the setup manifest.
        #[arg(long, default_value = "redis-7.0")]
        build: String,
        /// An argument added to the tracer's `record` command line (repeatable), e.g.
        /// `--tracer-arg=--ring-buffer-mb --tracer-arg=2`.
        #[arg(long = "tracer-arg", allow_hyphen_values = true)]
        tracer_args: Vec<String>,
        /// Instead: where the BPF time of a server fault goes, one traced window per
        /// stage of the Redis attribution and fork kind per round (default rounds: 3).
        #[arg(long)]
        stages: bool,
    },
    /// The soak test for longer: redis-benchmark and a BGSAVE every 5 s under the tracer
    /// (the test suite runs it for 60 s).
    Soak {
        /// How long.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Soak `serve` (a restart halfway, scraped by Prometheus) instead of `record`.
        #[arg(long)]
        serve: bool,
    },
    /// The main job: a throwaway Redis with a BGSAVE under writes and a swap episode,
    /// recorded; prints the report and leaves timeline.json, trace.json, report.html.
    Demo {
        /// Folder for the outputs.
        #[arg(long, default_value = "memtrace-out")]
        out: PathBuf,
    },
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs a command in the workspace root, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// `cargo` with the toolchain that runs xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Release binary path.
pub fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

fn build() -> Result<()> {
    setup::setup()?;
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "tracer",
        "-p",
        "memtrace-tests",
        "--bins",
    ]))
}

fn test(filter: Option<String>) -> Result<()> {
    build()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    let packages = [
        "-p",
        "tracer",
        "-p",
        "tracer-common",
        "-p",
        "testkit",
        "-p",
        "memtrace-tests",
    ];
    run(cargo().args(["clippy", "--release"]).args(packages).args([
        "-p",
        "xtask",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Installed by `build`'s setup already: this only checks each `--version` again.
    let manifest = servers::ensure()?;
    let prometheus = prometheus::ensure()?;
    let duckdb = tools::ensure()?;
    let mut cmd = cargo();
    cmd.args(["test", "--release", "--no-fail-fast"])
        .args(packages)
        .args(["-p", "xtask"])
        .env("MEMTRACE_BIN", bin("redis-memtrace"))
        .env(servers::MANIFEST_ENV, &manifest)
        .env(prometheus::ENV, &prometheus)
        .env(testkit::tools::DUCKDB_ENV, &duckdb)
        // Every build: a narrowing left in the shell would pass the suite on fewer.
        .env_remove(testkit::builds::ONLY_ENV)
        .arg("--");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    // One tracer at a time: the tests share swap and the kernel's hooks.
    cmd.arg("--test-threads=1");
    run(&mut cmd)
}

/// Puts `/dev/null` on stdin unless it is a terminal. CI may start us with fd 0
/// closed; the next descriptor opened would land on 0 and every child that reads
/// stdin (rustc's `rustc - --print ...` target probe does) would read it. Nothing
/// here reads stdin.
fn detach_stdin() -> Result<()> {
    // SAFETY: isatty only queries the descriptor.
    if unsafe { libc::isatty(0) } == 1 {
        return Ok(());
    }
    // SAFETY: a NUL-terminated path and plain flags; dup2 onto fd 0 (which clears
    // close-on-exec, so every child inherits it), then the spare copy is closed.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        if null < 0 || libc::dup2(null, 0) < 0 {
            bail!(
                "cannot put /dev/null on stdin: {}",
                std::io::Error::last_os_error()
            );
        }
        if null != 0 {
            libc::close(null);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    setup::repair_dev_null()?;
    detach_stdin()?;
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => build(),
        Cmd::Test { filter } => test(filter),
        Cmd::Bench { seconds, rounds } => {
            build()?;
            bench::bench(seconds, rounds)
        }
        Cmd::BenchOverhead {
            requests,
            rounds,
            clients,
        } => {
            build()?;
            bench_overhead::bench_overhead(requests, rounds, clients)
        }
        Cmd::BenchFork {
            rounds,
            seconds,
            build: label,
            tracer_args,
            stages,
        } => {
            build()?;
            if stages {
                let rounds = rounds.unwrap_or(bench_stages::DEFAULT_ROUNDS);
                bench_stages::bench_stages(rounds, seconds, &label, &tracer_args)
            } else {
                let rounds = rounds.unwrap_or(bench_fork::DEFAULT_ROUNDS);
                bench_fork::bench_fork(rounds, seconds, &label, &tracer_args)
            }
        }
        Cmd::Soak { minutes, serve } => {
            build()?;
            let manifest = servers::ensure()?;
            let prometheus = prometheus::ensure()?;
            run(cargo()
                .args(["test", "--release", "-p", "memtrace-tests", "--test"])
                .arg(if serve { "serve" } else { "soak" })
                .env("MEMTRACE_BIN", bin("redis-memtrace"))
                .env(servers::MANIFEST_ENV, &manifest)
                .env(prometheus::ENV, &prometheus)
                .env("MEMTRACE_SOAK_SECS", (minutes * 60).to_string())
                .args(["--", "--test-threads=1", "--nocapture"]))
        }
        Cmd::Demo { out } => {
            build()?;
            demo::demo(&out)
        }
    }
}
