//! The main job: a throwaway Redis, a BGSAVE under writes, a swap episode under reads,
//! all recorded by redis-memtrace; then the report. Leaves `timeline.json`, `trace.json`
//! (Perfetto) and `report.html` in the output folder and removes its server, its data
//! folder and any swap file it created.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    bin,
    redis_server::{Guarded, Server, TempDir},
    run,
    swap::Swap,
};

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
    let _swap = Swap::ensure(1024)?;
    let dir = TempDir::new("memtrace-demo")?;
    let mut server = Server::start(&dir.0)?;
    let pid = server.pid();
    eprintln!(
        "demo: redis-server pid {pid} on 127.0.0.1:{}; loading {KEYS} keys of {VALUE_SIZE} B",
        server.port
    );
    server.populate(KEYS, VALUE_SIZE)?;

    let mut tracer = Command::new(bin("redis-memtrace"));
    tracer
        .args(["record", "--redis", &format!("127.0.0.1:{}", server.port)])
        .arg("-o")
        .arg(&timeline)
        .arg("--perfetto")
        .arg(&trace)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = tracer.spawn().context("starting redis-memtrace")?;
    let stderr = child.stderr.take().context("tracer stderr")?;
    let mut tracer = Guarded::new(child, libc::SIGINT, Duration::from_secs(120));
    let (tx, rx) = mpsc::channel();
    let echo = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("tracing pid") {
                let _ = tx.send(());
            }
            eprintln!("{line}");
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .context("redis-memtrace did not start tracing within 30 s")?;

    // 1. A BGSAVE slowed down so that writes land while the child is alive.
    server.cli(&["CONFIG", "SET", "rdb-key-save-delay", "20"])?;
    server.cli(&["BGSAVE"])?;
    eprintln!("demo: BGSAVE started; overwriting {HOT_KEYS} hot keys while the child saves");
    benchmark(&server, "set", HOT_KEYS, 60_000)?;
    wait_bgsave(&server, Duration::from_secs(120))?;
    server.cli(&["CONFIG", "SET", "rdb-key-save-delay", "0"])?;

    // 2. Swap: push the server's memory out, then read keys back.
    let paged = page_out(pid);
    eprintln!(
        "demo: paged out {} MiB of the server with process_madvise(MADV_PAGEOUT); reading keys back",
        paged >> 20
    );
    benchmark(&server, "get", KEYS, 60_000)?;
    std::thread::sleep(Duration::from_millis(1500));

    let status = tracer.stop();
    let _ = echo.join();
    match status {
        Some(s) if s.success() => {}
        other => bail!("redis-memtrace did not exit cleanly: {other:?}"),
    }
    drop(server);
    drop(dir);

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

fn wait_bgsave(server: &Server, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let info = server.cli(&["INFO", "persistence"])?;
        if info.contains("rdb_bgsave_in_progress:0") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("BGSAVE still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pages out the anonymous memory of `pid` (`process_madvise(MADV_PAGEOUT)`); bytes
/// reclaimed.
fn page_out(pid: u32) -> usize {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return 0;
    };
    // SAFETY: plain syscalls with valid arguments; the iovecs describe the target's
    // address ranges, which the kernel only uses as ranges.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if pidfd < 0 {
        return 0;
    }
    let mut total = 0;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let anon = f.len() < 6 || f[5] == "[heap]";
        if !anon || !f.get(1).is_some_and(|p| p.starts_with("rw")) {
            continue;
        }
        let Some((a, b)) = f[0].split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let iov = libc::iovec {
            iov_base: a as *mut libc::c_void,
            iov_len: (b - a) as usize,
        };
        // SAFETY: as above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd,
                &iov,
                1,
                libc::MADV_PAGEOUT,
                0,
            )
        };
        if r > 0 {
            total += r as usize;
        }
    }
    // SAFETY: our own descriptor.
    unsafe { libc::close(pidfd) };
    total
}
