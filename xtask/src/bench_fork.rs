//! `cargo xtask bench-fork`: what `redis-memtrace record --pid` costs a Redis server with
//! a large data set while a fork child is alive, when copy-on-write faults come fastest.
//!
//! One `redis-server` (Debian's 7.0) holds 1,000,000 keys of 400 bytes named as
//! `redis-benchmark -r 1000000` names them, so every SET overwrites a value of the same
//! size. Four kinds of window, `redis-benchmark` SET with random keys in each:
//! {fork child alive, no fork} x {`-P 1`, `-P 16`}. A "fork" window starts a fresh BGSAVE
//! (pages copied in an earlier window would not fault again) whose child sleeps
//! `rdb-key-save-delay` per key, so it outlives the window, and is killed after it.
//!
//! Each window does a fixed number of requests (calibrated once to last `--seconds`
//! untraced), so traced and untraced windows do the same work. Per round and kind: one
//! traced and one untraced window, traced first in even rounds and second in odd ones
//! (ABBA), then two untraced windows in the same slots as a control: their ratio is what
//! the design reports when nothing differs, the noise floor of the traced/untraced ratio.
//!
//! Cost in traced windows, from snapshots at the window's start and end: the kernel's
//! per-program BPF statistics (`run_time_ns`, `run_cnt` in the tracer's
//! `/proc/PID/fdinfo` of each program fd), the faults and CPU time of the server, its
//! fork child and the tracer from `/proc/PID/stat`. Statistics are turned on with
//! `BPF_ENABLE_STATS` (off again when its fd closes, even if we are killed), falling back
//! to the `kernel.bpf_stats_enabled` sysctl, restored afterwards.
//!
//! Prints markdown tables; `target/bench-fork.json` has every window. The server, its
//! fork child and the tracer are stopped on every path, Ctrl-C included (testkit's guards
//! stop them when dropped). Run it under the machine's BPF lock (`flock`).

use std::{
    collections::BTreeMap,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use testkit::{
    Recording, Server,
    process::{ProcStat, children_of, signal, tick_ns},
    recording::ATTRIBUTION_ON,
    redis,
};

use crate::{
    bench_common::{attach, kernel, median, scratch_dir, stop_and_read, write_report},
    bin, interrupt,
    redis_benchmark::Load,
    servers,
    setup::is_root,
};

/// Rounds by default: ten ABBA rounds, as the issue asks.
pub const DEFAULT_ROUNDS: usize = 10;
/// Seconds per window by default: 4 kinds x 4 windows x 10 rounds, with the tracer's
/// attach and stop and a fork per fork window, take about 10 minutes on a 2-vCPU machine.
pub const DEFAULT_SECONDS: f64 = 2.5;

/// Keys in the server, and redis-benchmark's `-r` key space.
const KEYS: u64 = 1_000_000;
/// Value size, redis-benchmark's `-d`.
const VALUE_SIZE: usize = 400;
/// redis-benchmark clients.
const CLIENTS: u32 = 50;
/// The fork child sleeps this long per key: 1,000,000 keys keep it alive ~17 minutes,
/// far longer than a window.
const SAVE_DELAY_US: u64 = 1000;
/// How long a killed BGSAVE child may take to be reaped by the server.
const BGSAVE_END: Duration = Duration::from_secs(60);
/// How long the dictionary of 1,000,000 keys may take to finish rehashing after the fill.
const REHASH_END: Duration = Duration::from_secs(120);
/// The kernel's BPF statistics switch (the fallback).
const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One kind of window.
pub(crate) struct Kind {
    pub(crate) name: &'static str,
    pub(crate) fork: bool,
    pipeline: u32,
}

pub(crate) const KINDS: [Kind; 4] = [
    Kind {
        name: "fork, -P 1",
        fork: true,
        pipeline: 1,
    },
    Kind {
        name: "fork, -P 16",
        fork: true,
        pipeline: 16,
    },
    Kind {
        name: "no fork, -P 1",
        fork: false,
        pipeline: 1,
    },
    Kind {
        name: "no fork, -P 16",
        fork: false,
        pipeline: 16,
    },
];

/// The kernel's BPF run-time statistics, on while this lives.
pub(crate) enum BpfStats {
    /// `BPF_ENABLE_STATS`: the kernel counts while this fd is open and stops when it
    /// closes, whatever ends us; the sysctl other users see is not touched.
    Fd(#[allow(dead_code)] OwnedFd),
    /// `kernel.bpf_stats_enabled`, put back to `old` when dropped.
    Sysctl { old: String },
}

impl BpfStats {
    pub(crate) fn enable() -> Result<BpfStats> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        // union bpf_attr, enable_stats.type = BPF_STATS_RUN_TIME (0); the rest zero.
        let attr = [0u32; 2];
        // SAFETY: `attr` is a readable buffer of the size passed; the kernel only reads it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if let Ok(fd) = i32::try_from(fd)
            && fd >= 0
        {
            // SAFETY: the kernel just returned this fd and nothing else owns it.
            return Ok(BpfStats::Fd(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let why = std::io::Error::last_os_error();
        let old = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("BPF_ENABLE_STATS failed ({why}); reading {STATS_SYSCTL}"))?;
        std::fs::write(STATS_SYSCTL, "1")
            .with_context(|| format!("BPF_ENABLE_STATS failed ({why}); writing {STATS_SYSCTL}"))?;
        Ok(BpfStats::Sysctl {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let BpfStats::Sysctl { old } = self
            && let Err(e) = std::fs::write(STATS_SYSCTL, old.as_bytes())
        {
            eprintln!("bench-fork: cannot restore {STATS_SYSCTL} to {old}: {e}");
        }
    }
}

/// `/proc/PID/stat` of `pid`, an error once it is gone.
fn proc_stat(pid: u32) -> Result<ProcStat> {
    ProcStat::read(pid).with_context(|| format!("reading /proc/{pid}/stat"))
}

/// A BPF program's run-time counters.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct ProgRun {
    pub(crate) ns: u64,
    pub(crate) runs: u64,
}

/// `prog_id`, `run_time_ns` and `run_cnt` of one `/proc/PID/fdinfo` entry of a program.
fn parse_fdinfo(text: &str) -> Option<(u32, ProgRun)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let id = u32::try_from(field("prog_id")?).ok()?;
    Some((
        id,
        ProgRun {
            ns: field("run_time_ns")?,
            runs: field("run_cnt")?,
        },
    ))
}

/// The counters of every BPF program `pid` holds an fd of, by program id.
fn prog_runs(pid: u32) -> Result<BTreeMap<u32, ProgRun>> {
    let dir = format!("/proc/{pid}/fd");
    let mut runs = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let entry = entry.with_context(|| format!("listing {dir}"))?;
        // fds come and go (timeline, sockets): skip any that vanished meanwhile.
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:bpf-prog" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        if let Some((id, run)) = std::fs::read_to_string(&info)
            .ok()
            .and_then(|t| parse_fdinfo(&t))
        {
            runs.insert(id, run);
        }
    }
    if runs.is_empty() {
        bail!("no BPF program with run_time_ns/run_cnt among the fds of the tracer (pid {pid})");
    }
    Ok(runs)
}

/// Program names by id, from `bpftool -j prog show`.
fn prog_names() -> Result<BTreeMap<u32, String>> {
    let o = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .stdin(Stdio::null())
        .output()
        .context("running bpftool (run `cargo xtask setup`)")?;
    if !o.status.success() {
        bail!(
            "bpftool prog show failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let progs: Vec<Value> =
        serde_json::from_slice(&o.stdout).context("bpftool -j prog show printed no JSON array")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            let id = u32::try_from(p["id"].as_u64()?).ok()?;
            Some((id, p["name"].as_str().unwrap_or("?").to_string()))
        })
        .collect())
}

/// A tracer attached to the server, with what is needed to cost it.
struct Tracer {
    rec: Recording,
    pid: u32,
    names: BTreeMap<u32, String>,
    /// Its counters once ready: the span to the stop costs the events it received.
    ready: ProcStat,
}

/// What one traced window cost.
struct TracerCost {
    /// The tracer's own faults and CPU over the window.
    cpu: ProcStat,
    /// BPF counters over the window, by program name.
    progs: BTreeMap<String, ProgRun>,
    /// The tracer's CPU ticks from ready to SIGINT, the span its events came in.
    span_ticks: u64,
    events: u64,
    faults: u64,
    lost: u64,
}

impl Tracer {
    /// `record --pid PID -o OUT EXTRA...`, once Redis attribution is on (an error if it
    /// is not).
    fn attach(server_pid: u32, out: &Path, extra: &[String]) -> Result<Tracer> {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let rec = attach(server_pid, out, ATTRIBUTION_ON, &extra)?;
        let tracer_pid = rec.pid();
        Ok(Tracer {
            names: prog_names()?,
            ready: proc_stat(tracer_pid)?,
            pid: tracer_pid,
            rec,
        })
    }

    /// Stops the tracer and costs the window between `start` and `end`.
    fn finish(self, start: &Snapshot, end: &Snapshot, out: &Path) -> Result<TracerCost> {
        let stopping = proc_stat(self.pid)?;
        let t = stop_and_read(self.rec, out)?;
        let (Some((t0, p0)), Some((t1, p1))) = (&start.tracer, &end.tracer) else {
            bail!("a traced window without tracer snapshots");
        };
        let mut progs: BTreeMap<String, ProgRun> = BTreeMap::new();
        for (id, run) in p1 {
            let before = p0.get(id).copied().unwrap_or_default();
            let name = self
                .names
                .get(id)
                .cloned()
                .unwrap_or_else(|| format!("id {id}"));
            let p = progs.entry(name).or_default();
            p.ns += run.ns.saturating_sub(before.ns);
            p.runs += run.runs.saturating_sub(before.runs);
        }
        Ok(TracerCost {
            cpu: t1.since(t0),
            progs,
            span_ticks: stopping.since(&self.ready).cpu_ticks,
            events: t.events,
            faults: t.faults,
            lost: t.lost,
        })
    }
}

/// Counters at one instant of a window.
struct Snapshot {
    server: ProcStat,
    child: Option<ProcStat>,
    tracer: Option<(ProcStat, BTreeMap<u32, ProgRun>)>,
}

impl Snapshot {
    fn take(server: u32, child: Option<u32>, tracer: Option<u32>) -> Result<Snapshot> {
        let child = match child {
            Some(pid) => {
                let s = proc_stat(pid)
                    .with_context(|| format!("the BGSAVE child {pid} ended within the window"))?;
                if s.state == 'Z' {
                    bail!("the BGSAVE child {pid} ended within the window");
                }
                Some(s)
            }
            None => None,
        };
        let tracer = match tracer {
            Some(pid) => Some((proc_stat(pid)?, prog_runs(pid)?)),
            None => None,
        };
        Ok(Snapshot {
            server: proc_stat(server)?,
            child,
            tracer,
        })
    }
}

/// A BGSAVE child kept alive by `rdb-key-save-delay`; ended when dropped, so that no
/// path leaves it running or leaves the server to shut down with it.
struct ForkChild<'a> {
    server: &'a Server,
    pid: u32,
    ended: bool,
}

impl<'a> ForkChild<'a> {
    /// A fresh BGSAVE. The server forks before it replies, and forks nothing else here
    /// (no save points, no AOF), so its one live child is the save.
    fn start(server: &'a Server) -> Result<ForkChild<'a>> {
        let reply: String = server.try_query(&redis::cmd("BGSAVE"))?;
        if !reply.contains("started") {
            bail!("BGSAVE answered {reply:?}");
        }
        let mut fork = ForkChild {
            server,
            pid: 0,
            ended: false,
        };
        match children_of(server.pid)[..] {
            [pid] => fork.pid = pid,
            ref kids => {
                // Ends the save whatever it is, before failing.
                kids.iter().for_each(|&k| {
                    signal(k, libc::SIGUSR1);
                });
                bail!(
                    "after BGSAVE, {} has children {kids:?}, not one",
                    server.pid
                );
            }
        }
        Ok(fork)
    }

    /// SIGUSR1 is how Redis itself kills a save child (not counted as a failed save);
    /// waits until the server reaped it, so the next window can fork again.
    fn end(mut self) -> Result<()> {
        self.ended = true;
        signal(self.pid, libc::SIGUSR1);
        self.server.try_wait_bgsave_done(BGSAVE_END)?;
        Ok(())
    }
}

impl Drop for ForkChild<'_> {
    fn drop(&mut self) {
        if !self.ended {
            signal(self.pid, libc::SIGUSR1);
            let _ = self.server.try_wait_bgsave_done(BGSAVE_END);
        }
    }
}

/// The redis-benchmark run of every window: SET over the whole key space, so every SET
/// overwrites a value of the same size.
fn load(pipeline: u32, requests: u64) -> Load {
    Load {
        test: "set",
        clients: CLIENTS,
        requests,
        pipeline: Some(pipeline),
        keys: KEYS,
        value_size: VALUE_SIZE,
    }
}

/// One window's numbers: deltas over the window.
pub(crate) struct Window {
    rps: f64,
    requests: u64,
    server: ProcStat,
    child: Option<ProcStat>,
    tracer: Option<TracerCost>,
}

/// What the windows share.
pub(crate) struct Bench {
    pub(crate) server: Server,
    pub(crate) timeline: PathBuf,
    /// Passed to `record` after its own arguments (`--tracer-arg`).
    pub(crate) tracer_args: Vec<String>,
}

/// One window: tracer attached first when `traced`, then a fresh fork for a fork kind,
/// counters, the benchmark, counters; then the fork and the tracer are ended.
pub(crate) fn run_window(b: &Bench, kind: &Kind, traced: bool, requests: u64) -> Result<Window> {
    interrupt::check()?;
    let tracer = if traced {
        Some(Tracer::attach(b.server.pid, &b.timeline, &b.tracer_args)?)
    } else {
        None
    };
    let fork = if kind.fork {
        Some(ForkChild::start(&b.server)?)
    } else {
        None
    };
    let child = fork.as_ref().map(|f| f.pid);
    let tracer_pid = tracer.as_ref().map(|t| t.pid);
    let start = Snapshot::take(b.server.pid, child, tracer_pid)?;
    let rps = load(kind.pipeline, requests).run(b.server.port)?.rps;
    let end = Snapshot::take(b.server.pid, child, tracer_pid)?;
    if let Some(fork) = fork {
        fork.end()?;
    }
    let cost = match tracer {
        Some(t) => Some(t.finish(&start, &end, &b.timeline)?),
        None => None,
    };
    let child = match (start.child, end.child) {
        (Some(s), Some(e)) => Some(e.since(&s)),
        _ => None,
    };
    Ok(Window {
        rps,
        requests,
        server: end.server.since(&start.server),
        child,
        tracer: cost,
    })
}

/// The windows of one kind: per round, traced and untraced, and the two control windows
/// (both untraced) in the traced and the untraced slot.
#[derive(Default)]
struct Series {
    traced: Vec<Window>,
    untraced: Vec<Window>,
    control_a: Vec<Window>,
    control_b: Vec<Window>,
}

/// Requests per window of `kind`: an untraced warm-up window's rate x `seconds` (the
/// warm-up also settles the allocator and the page cache).
pub(crate) fn calibrate(b: &Bench, kind: &Kind, seconds: f64) -> Result<u64> {
    // A guess of this machine's rate, only to size the warm-up.
    let guess = if kind.pipeline > 1 {
        300_000.0
    } else {
        50_000.0
    };
    let w = run_window(b, kind, false, (guess * seconds) as u64)?;
    let n = ((w.rps * seconds / 1000.0).round().max(1.0) * 1000.0) as u64;
    progress(&format!(
        "warm-up {:<15} {:>9.0} req/s -> {n} requests per window",
        kind.name, w.rps
    ));
    Ok(n)
}

/// A progress line on stderr, stamped with the seconds since the bench started.
fn progress(line: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("bench-fork [{t:>5.0} s] {line}");
}

pub(crate) fn log_window(round: usize, rounds: usize, kind: &Kind, what: &str, w: &Window) {
    let tracer = w.tracer.as_ref().map_or(String::new(), |t| {
        let bpf: u64 = t.progs.values().map(|p| p.ns).sum();
        format!(
            "  BPF {:.0} ms  events {}  lost {}",
            bpf as f64 / 1e6,
            t.events,
            t.lost
        )
    });
    progress(&format!(
        "round {}/{rounds} {:<15} {:<10} {:>9.0} req/s  server faults {:>7}  child faults {:>5}{tracer}",
        round + 1,
        kind.name,
        what,
        w.rps,
        w.server.faults(),
        w.child.map_or(0, |c| c.faults())
    ));
}

/// One round of one kind: traced and untraced in ABBA order, then the control pair.
fn run_round(
    b: &Bench,
    round: usize,
    rounds: usize,
    kind: &Kind,
    n: u64,
    s: &mut Series,
) -> Result<()> {
    let window = |traced: bool, what: &str| -> Result<Window> {
        let w = run_window(b, kind, traced, n)?;
        log_window(round, rounds, kind, what, &w);
        Ok(w)
    };
    // ABBA: the traced (A) slot comes first in even rounds, second in odd ones.
    let a_first = round.is_multiple_of(2);
    for traced in [a_first, !a_first] {
        if traced {
            s.traced.push(window(true, "traced")?);
        } else {
            s.untraced.push(window(false, "untraced")?);
        }
    }
    // The control: both untraced, in the same slots.
    for slot_a in [a_first, !a_first] {
        if slot_a {
            s.control_a.push(window(false, "control A")?);
        } else {
            s.control_b.push(window(false, "control B")?);
        }
    }
    Ok(())
}

/// Calibration and all rounds, the no-fork kinds first. Once a fork child has ended, the
/// parent's pages stay write-protected until each is written again (a cheap reuse fault
/// per page): run after a fork, no-fork windows would count that aftermath. Within a
/// phase each round runs every kind in turn, so drift spreads over the kinds too.
fn run_phases(b: &Bench, rounds: usize, seconds: f64) -> Result<(Vec<Series>, Vec<u64>)> {
    let mut all: Vec<Series> = KINDS.iter().map(|_| Series::default()).collect();
    let mut requests = vec![0; KINDS.len()];
    for fork in [false, true] {
        let phase: Vec<usize> = (0..KINDS.len())
            .filter(|&i| KINDS[i].fork == fork)
            .collect();
        for &i in &phase {
            requests[i] = calibrate(b, &KINDS[i], seconds)?;
        }
        for round in 0..rounds {
            for &i in &phase {
                run_round(b, round, rounds, &KINDS[i], requests[i], &mut all[i])?;
            }
        }
    }
    Ok((all, requests))
}

/// Runs the benchmark and prints the tables; writes `target/bench-fork.json`.
pub fn bench_fork(rounds: usize, seconds: f64, build: &str, tracer_args: &[String]) -> Result<()> {
    check_args(rounds, seconds)?;
    interrupt::install();
    let stats = BpfStats::enable()?;
    let dir = scratch_dir("memtrace-bench-fork-")?;
    let result = run_all(rounds, seconds, build, tracer_args, dir.path(), &stats);
    if interrupt::happened() {
        eprintln!("bench-fork: interrupted; server, fork child and tracer stopped");
    }
    result
}

/// Refuses what `bench-fork` cannot run: not root, no round, a window of no time.
pub(crate) fn check_args(rounds: usize, seconds: f64) -> Result<()> {
    if !is_root() {
        bail!("bench-fork loads eBPF programs: run as root");
    }
    if rounds == 0 || !(seconds.is_finite() && seconds > 0.0) {
        bail!("--rounds must be at least 1 and --seconds positive");
    }
    Ok(())
}

/// Starts and fills the server, checks it can fork as planned.
pub(crate) fn start_server(build: &str) -> Result<Server> {
    let server = Server::try_start(&servers::installed_build(build)?, None, &[])?;
    progress(&format!(
        "filling redis-server {} (pid {}) with {KEYS} keys of {VALUE_SIZE} B",
        server.build.version, server.pid
    ));
    server.try_populate_benchmark_keys(KEYS, VALUE_SIZE)?;
    server.try_config_set("rdb-key-save-delay", SAVE_DELAY_US)?;
    // An incremental rehash writes all over the table, and would fault in some windows
    // and not in others.
    server.try_wait_rehashed(REHASH_END)?;
    Ok(server)
}

fn run_all(
    rounds: usize,
    seconds: f64,
    build: &str,
    tracer_args: &[String],
    dir: &Path,
    stats: &BpfStats,
) -> Result<()> {
    let started = Instant::now();
    let mut b = Bench {
        server: start_server(build)?,
        timeline: dir.join("t.json"),
        tracer_args: tracer_args.to_vec(),
    };
    let (series, requests) = run_phases(&b, rounds, seconds)?;
    if !b.server.is_running() {
        bail!(
            "redis-server exited during the benchmark: {}",
            b.server.log()
        );
    }
    let info = RunInfo {
        redis: b.server.build.version.clone(),
        redis_server: b.server.build.server.clone(),
        rounds,
        seconds,
        requests,
        tracer_args: tracer_args.to_vec(),
        elapsed_s: started.elapsed().as_secs_f64(),
        stats: match stats {
            BpfStats::Fd(_) => "BPF_ENABLE_STATS",
            BpfStats::Sysctl { .. } => "kernel.bpf_stats_enabled",
        },
    };
    drop(b);
    let rows: Vec<Row> = series.iter().map(|s| Row::of(s, tick_ns())).collect();
    print_report(&info, &rows);
    write_json(&info, &rows, &series)
}

/// About the run, for the header and the JSON.
struct RunInfo {
    redis: String,
    redis_server: PathBuf,
    rounds: usize,
    seconds: f64,
    requests: Vec<u64>,
    tracer_args: Vec<String>,
    elapsed_s: f64,
    stats: &'static str,
}

fn ratios(a: &[Window], b: &[Window]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x.rps / y.rps).collect()
}

fn rps(ws: &[Window]) -> Vec<f64> {
    ws.iter().map(|w| w.rps).collect()
}

/// Sums over windows.
#[derive(Default)]
pub(crate) struct Totals {
    pub(crate) windows: u64,
    pub(crate) requests: u64,
    pub(crate) server_faults: u64,
    pub(crate) child_faults: u64,
    pub(crate) redis_ticks: u64,
    pub(crate) tracer_ticks: u64,
    pub(crate) span_ticks: u64,
    pub(crate) bpf_ns: u64,
    pub(crate) events: u64,
    pub(crate) lost: u64,
    pub(crate) progs: BTreeMap<String, ProgRun>,
}

pub(crate) fn totals<'a>(ws: impl IntoIterator<Item = &'a Window>) -> Totals {
    let mut t = Totals::default();
    for w in ws {
        t.windows += 1;
        t.requests += w.requests;
        t.server_faults += w.server.faults();
        t.child_faults += w.child.map_or(0, |c| c.faults());
        t.redis_ticks += w.server.cpu_ticks;
        if let Some(c) = &w.tracer {
            t.tracer_ticks += c.cpu.cpu_ticks;
            t.span_ticks += c.span_ticks;
            t.events += c.events;
            t.lost += c.lost;
            for (name, p) in &c.progs {
                t.bpf_ns += p.ns;
                let sum = t.progs.entry(name.clone()).or_default();
                sum.ns += p.ns;
                sum.runs += p.runs;
            }
        }
    }
    t
}

/// One kind's results.
struct Row {
    untraced_rps: f64,
    traced_rps: f64,
    ratio: f64,
    round_ratios: Vec<f64>,
    control: f64,
    control_ratios: Vec<f64>,
    traced: Totals,
    untraced: Totals,
    tick_ns: f64,
}

impl Row {
    fn of(s: &Series, tick_ns: f64) -> Row {
        let round_ratios = ratios(&s.traced, &s.untraced);
        let control_ratios = ratios(&s.control_a, &s.control_b);
        Row {
            untraced_rps: median(&rps(&s.untraced)),
            traced_rps: median(&rps(&s.traced)),
            ratio: median(&round_ratios),
            control: median(&control_ratios),
            round_ratios,
            control_ratios,
            traced: totals(&s.traced),
            // Every untraced window, the control's included: more samples of the cost
            // of the work itself.
            untraced: totals(s.untraced.iter().chain(&s.control_a).chain(&s.control_b)),
            tick_ns,
        }
    }

    fn redis_ns(&self) -> f64 {
        self.traced.redis_ticks as f64 * self.tick_ns
    }

    fn per_window(&self, v: u64, t: &Totals) -> f64 {
        v as f64 / t.windows.max(1) as f64
    }
}

/// YYYY-MM-DD (UTC) of now; days to a civil date as in H. Hinnant's `civil_from_days`.
pub(crate) fn today() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn span(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.3}..{hi:.3}")
}

fn print_header(info: &RunInfo) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("## bench-fork: tracing cost with a fork child alive");
    println!();
    println!(
        "{}, kernel {}, Redis {} ({}), {cpus} x {}.  ",
        today(),
        kernel(),
        info.redis,
        info.redis_server.display(),
        cpu_model()
    );
    println!(
        "{KEYS} keys of {VALUE_SIZE} B; `redis-benchmark -t set -c {CLIENTS} -r {KEYS} -d {VALUE_SIZE}`, \
         -P 1 or -P 16, {:.1} s windows of a fixed request count (warm-up calibrated: {}); \
         {} rounds, ABBA; fork = a fresh BGSAVE per window, child kept alive by \
         `rdb-key-save-delay {SAVE_DELAY_US}`; BPF stats via {}; tracer arguments added: [{}]. \
         Took {:.0} s.",
        info.seconds,
        info.requests
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        info.rounds,
        info.stats,
        info.tracer_args.join(" "),
        info.elapsed_s
    );
    println!();
}

/// A markdown table with a row per kind of window: `head` names the columns after
/// "window", `align` is each one's separator cell (`---:` right-aligns numbers).
fn kind_table(rows: &[Row], head: &[&str], align: &str, cells: impl Fn(&Row) -> Vec<String>) {
    println!("| window | {} |", head.join(" | "));
    println!("|---|{}", format!("{align}|").repeat(head.len()));
    for (k, r) in KINDS.iter().zip(rows) {
        println!("| {} | {} |", k.name, cells(r).join(" | "));
    }
    println!();
}

fn print_throughput(rows: &[Row]) {
    let head = [
        "untraced req/s",
        "traced req/s",
        "traced/untraced",
        "rounds",
        "control A/B",
        "control rounds",
    ];
    kind_table(rows, &head, "---:", |r| {
        vec![
            format!("{:.0}", r.untraced_rps),
            format!("{:.0}", r.traced_rps),
            format!("{:.3}", r.ratio),
            span(&r.round_ratios),
            format!("{:.3}", r.control),
            span(&r.control_ratios),
        ]
    });
}

fn print_cost(rows: &[Row]) {
    let head = [
        "server faults/window",
        "child faults/window",
        "BPF ns/server fault",
        "BPF / Redis CPU",
        "tracer / Redis CPU",
        "tracer ns/event",
        "events/window",
        "lost",
        "Redis CPU us/req untraced",
        "traced",
    ];
    kind_table(rows, &head, "---:", |r| {
        let t = &r.traced;
        let us_per_req =
            |x: &Totals| x.redis_ticks as f64 * r.tick_ns / 1e3 / x.requests.max(1) as f64;
        vec![
            format!("{:.0}", r.per_window(t.server_faults, t)),
            format!("{:.0}", r.per_window(t.child_faults, t)),
            format!("{:.0}", t.bpf_ns as f64 / t.server_faults.max(1) as f64),
            pct(t.bpf_ns as f64 / r.redis_ns()),
            pct(t.tracer_ticks as f64 * r.tick_ns / r.redis_ns()),
            format!(
                "{:.0}",
                t.span_ticks as f64 * r.tick_ns / t.events.max(1) as f64
            ),
            format!("{:.0}", r.per_window(t.events, t)),
            t.lost.to_string(),
            format!("{:.2}", us_per_req(&r.untraced)),
            format!("{:.2}", us_per_req(t)),
        ]
    });
}

fn print_programs(rows: &[Row]) {
    let names: std::collections::BTreeSet<&String> =
        rows.iter().flat_map(|r| r.traced.progs.keys()).collect();
    let head: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    println!(
        "| BPF program: runs/window, ns/run | {} |",
        head.join(" | ")
    );
    println!("|---|{}", "---:|".repeat(KINDS.len()));
    for name in names {
        let cells: Vec<String> = rows
            .iter()
            .map(|r| {
                let p = r.traced.progs.get(name).copied().unwrap_or_default();
                let per_run = if p.runs == 0 {
                    0.0
                } else {
                    p.ns as f64 / p.runs as f64
                };
                format!("{:.0}, {per_run:.0}", r.per_window(p.runs, &r.traced))
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    println!();
}

fn print_rounds(rows: &[Row]) {
    let list = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let head = ["traced/untraced per round", "control A/B per round"];
    kind_table(rows, &head, "---", |r| {
        vec![list(&r.round_ratios), list(&r.control_ratios)]
    });
}

fn print_report(info: &RunInfo, rows: &[Row]) {
    print_header(info);
    print_throughput(rows);
    print_cost(rows);
    print_programs(rows);
    print_rounds(rows);
    println!(
        "req/s: medians over rounds; traced/untraced and control A/B: medians of the per-round \
         ratios (control = two untraced windows in the traced and untraced slots: the noise \
         floor), lowest..highest beside them. Faults: minflt+majflt from /proc/PID/stat over \
         a window (server = the redis-server process; child = the BGSAVE child). BPF ns: \
         run_time_ns of the tracer's programs over the traced windows, per server fault and \
         as a share of the server's CPU (utime+stime) in the same windows; tracer CPU likewise; \
         tracer ns/event: its CPU from ready to stop per event it received. Redis CPU us/req: \
         untraced windows (control included) vs traced. In the no-fork rows, BPF ns/server \
         fault and tracer ns/event are dominated by fixed costs (tens of server faults per \
         window; the fault programs also run for other processes' faults) and are not \
         meaningful."
    );
}

fn window_json(w: &Window) -> Value {
    let stat =
        |s: &ProcStat| json!({"minflt": s.minflt, "majflt": s.majflt, "cpu_ticks": s.cpu_ticks});
    json!({
        "rps": w.rps,
        "requests": w.requests,
        "server": stat(&w.server),
        "child": w.child.as_ref().map(stat),
        "tracer": w.tracer.as_ref().map(|t| json!({
            "cpu": stat(&t.cpu),
            "span_cpu_ticks": t.span_ticks,
            "events": t.events,
            "faults": t.faults,
            "lost": t.lost,
            "programs": t.progs.iter().map(|(n, p)| (n.clone(), json!({"run_time_ns": p.ns, "run_cnt": p.runs}))).collect::<serde_json::Map<_, _>>(),
        })),
    })
}

fn write_json(info: &RunInfo, rows: &[Row], series: &[Series]) -> Result<()> {
    let ws = |v: &[Window]| v.iter().map(window_json).collect::<Vec<_>>();
    let kinds: Vec<Value> = KINDS
        .iter()
        .zip(rows.iter().zip(series))
        .zip(&info.requests)
        .map(|((k, (r, s)), n)| {
            json!({
                "window": k.name,
                "redis_benchmark_args": load(k.pipeline, *n).args(),
                "untraced_rps_median": r.untraced_rps,
                "traced_rps_median": r.traced_rps,
                "ratio_median": r.ratio,
                "round_ratios": r.round_ratios,
                "control_median": r.control,
                "control_ratios": r.control_ratios,
                "traced": ws(&s.traced),
                "untraced": ws(&s.untraced),
                "control_a": ws(&s.control_a),
                "control_b": ws(&s.control_b),
            })
        })
        .collect();
    let report = json!({
        "date": today(),
        "kernel": kernel(),
        "cpu": cpu_model(),
        "redis_version": info.redis,
        "redis_server": info.redis_server,
        "tracer": bin("redis-memtrace"),
        "tracer_args": info.tracer_args,
        "clock_tick_ns": tick_ns(),
        "keys": KEYS,
        "value_size": VALUE_SIZE,
        "clients": CLIENTS,
        "rounds": info.rounds,
        "seconds": info.seconds,
        "bpf_stats": info.stats,
        "elapsed_s": info.elapsed_s,
        "kinds": kinds,
    });
    write_report("bench-fork.json", &report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fdinfo() {
        let text =
            "pos:\t0\nprog_type:\t17\nprog_id:\t15995\nrun_time_ns:\t254230\nrun_cnt:\t2583\n";
        let (id, run) = parse_fdinfo(text).unwrap();
        assert_eq!((id, run.ns, run.runs), (15995, 254230, 2583));
        assert!(parse_fdinfo("pos:\t0\nprog_id:\t1\n").is_none());
    }

    /// The windows' command lines, as they were before `redis_benchmark` was shared:
    /// `-P 1` is passed explicitly.
    #[test]
    fn benchmark_command_line() {
        assert_eq!(
            load(16, 1000).command_line(7000).join(" "),
            "-h 127.0.0.1 -p 7000 -c 50 -n 1000 -t set -P 16 -r 1000000 -d 400 --csv"
        );
        assert_eq!(
            load(1, 1000).args().join(" "),
            "-c 50 -n 1000 -t set -P 1 -r 1000000 -d 400 --csv"
        );
    }

    #[test]
    fn date_of_today_is_plausible() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.as_str() > "2024-01-01");
    }
}
