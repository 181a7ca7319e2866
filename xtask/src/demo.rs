//! The main job: a throwaway Redis, a BGSAVE under writes, a swap episode under reads,
//! all recorded by redis-memtrace; then the report. Leaves `timeline.json`, `trace.json`
//! (Perfetto) and `report.html` in the output folder and removes its server, its data
//! folder and any swap file it created.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use testkit::{
    Recording, Server, SwapGuard, page_out,
    recording::{Launch, TRACING_PID},
    redis,
};

use crate::{bin, run, servers};

/// Keys loaded before the BGSAVE (value size [`VALUE_SIZE`]): ~250 MiB of RSS.
const KEYS: u64 = 200_000;
/// Bytes per value.
const VALUE_SIZE: usize = 1024;
/// Keys the writers overwrite while the fork child lives (the "hot" set).
const HOT_KEYS: u64 = 40_000;

/// Runs the demo, leaving its outputs in `out`.
pub fn demo(out: &Path) -> Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let timeline = out.join("timeline.json");
    let trace = out.join("trace.json");
    let html = out.join("report.html");
    let _swap = SwapGuard::try_ensure(1024)?;
    let server = Server::try_start(&servers::installed_build("redis-7.0")?, None, &[])?;
    let pid = server.pid;
    eprintln!(
        "demo: redis-server pid {pid} on {}; loading {KEYS} keys of {VALUE_SIZE} B",
        server.url()
    );
    server.try_populate_benchmark_keys(KEYS, VALUE_SIZE)?;

    let url = server.url();
    let trace_arg = trace
        .to_str()
        .context("the output folder's path is not UTF-8")?;
    let tracer = Recording::launch(&Launch {
        target: &["--redis", &url],
        out: &timeline,
        extra: &["--perfetto", trace_arg],
        ready: TRACING_PID,
        echo: true,
    })?;

    // 1. A BGSAVE slowed down so that writes land while the child is alive.
    let save_delay = |usec: u32| server.try_config_set("rdb-key-save-delay", usec);
    save_delay(20)?;
    server.try_query::<String>(&redis::cmd("BGSAVE"))?;
    eprintln!("demo: BGSAVE started; overwriting {HOT_KEYS} hot keys while the child saves");
    benchmark(&server, "set", HOT_KEYS, 60_000)?;
    server.try_wait_bgsave_done(Duration::from_secs(120))?;
    save_delay(0)?;

    // 2. Swap: push the server's memory out, then read keys back.
    let paged = page_out(pid)?;
    eprintln!(
        "demo: paged out {} MiB of the server with process_madvise(MADV_PAGEOUT); reading keys back",
        paged >> 20
    );
    benchmark(&server, "get", KEYS, 60_000)?;
    std::thread::sleep(Duration::from_millis(1500));

    tracer
        .try_stop()
        .context("redis-memtrace did not exit cleanly")?;
    drop(server);

    println!();
    run(Command::new(bin("redis-memtrace"))
        .arg("report")
        .arg(&timeline)
        .arg("--html")
        .arg(&html))?;
    println!();
    println!("demo: finished in {:.0} s", started.elapsed().as_secs_f64());
    println!("  timeline (JSON):  {}", timeline.display());
    println!(
        "  Perfetto trace:   {}  (open in https://ui.perfetto.dev)",
        trace.display()
    );
    println!("  HTML report:      {}", html.display());
    Ok(())
}

/// `redis-benchmark` of `test` on `keyspace` random keys, `requests` requests.
fn benchmark(server: &Server, test: &str, keyspace: u64, requests: u64) -> Result<()> {
    run(Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args(["-t", test, "-r", &keyspace.to_string()])
        .args(["-n", &requests.to_string(), "-d", &VALUE_SIZE.to_string()])
        .args(["-c", "20", "-q"])
        .stdout(Stdio::null()))
}
