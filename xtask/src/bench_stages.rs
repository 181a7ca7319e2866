//! `cargo xtask bench-fork --stages`: where the BPF time of a server fault goes.
//!
//! The same server and fork windows as `bench-fork` (a million keys, a BGSAVE child kept
//! alive, redis-benchmark SET with random keys at -P 1 and -P 16), traced only, once per
//! stage of the kernel side's Redis attribution (`record --cost-stage`, hidden): from
//! `server` (the fault is known to be the server's; nothing of Redis read) to `full`
//! (what every recording runs). Stages run in turn within each round, so drift spreads
//! over them. A stage before `full` sends no context: its own cost is the difference to
//! the stage before, and `full` minus `client` is the arguments' reads and the context
//! record. BPF time is `run_time_ns` per program over each window, per server fault as in
//! `bench-fork`.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::{
    bench_common::{kernel, scratch_dir},
    bench_fork::{
        Bench, BpfStats, KINDS, Kind, Totals, Window, calibrate, check_args, cpu_model, log_window,
        run_window, start_server, today, totals,
    },
    interrupt,
};

/// Rounds by default: each is 10 traced windows.
pub const DEFAULT_ROUNDS: usize = 3;

/// The stages, from the least work to everything, as `record --cost-stage` names them.
const STAGES: [(&str, &str); 5] = [
    ("server", "find the fault is the server's"),
    ("current", "+ read current_client and stat_numcommands"),
    (
        "stack",
        "+ outside commands: registers, stack copy, phase scan",
    ),
    ("client", "+ outside commands: the client being read"),
    ("full", "+ arguments, name and key, context record"),
];

/// Programs shown in their own column (the rest are summed).
const SHOWN: [&str; 3] = ["page_fault_user", "fault_done_minor", "mm_page_alloc"];

/// Runs the stages and prints one table per fork kind.
pub fn bench_stages(
    rounds: usize,
    seconds: f64,
    build: &str,
    tracer_args: &[String],
) -> Result<()> {
    check_args(rounds, seconds)?;
    interrupt::install();
    let _stats = BpfStats::enable()?;
    let dir = scratch_dir("memtrace-bench-stages-")?;
    let started = Instant::now();
    let mut b = Bench {
        server: start_server(build)?,
        timeline: dir.path().join("t.json"),
        tracer_args: tracer_args.to_vec(),
    };
    let result = run(&mut b, rounds, seconds, tracer_args);
    if interrupt::happened() {
        eprintln!("bench-fork: interrupted; server, fork child and tracer stopped");
    }
    let windows = result?;
    if !b.server.is_running() {
        bail!(
            "redis-server exited during the benchmark: {}",
            b.server.log()
        );
    }
    println!("## bench-fork --stages: BPF time per server fault, stage by stage\n");
    println!(
        "{}, kernel {}, Redis {} ({}), {}.  \n{rounds} round(s) of one traced window per \
         stage and fork kind, {seconds} s windows; tracer arguments added: {:?}. Took {:.0} s.\n",
        today(),
        kernel(),
        b.server.build.version,
        b.server.build.server.display(),
        cpu_model(),
        tracer_args,
        started.elapsed().as_secs_f64()
    );
    for (k, kind) in fork_kinds().enumerate() {
        let rows: Vec<Totals> = windows.iter().map(|w| totals(&w[k])).collect();
        print_kind(kind, &rows);
    }
    println!(
        "ns/run: run_time_ns / run_cnt of the program over the stage's windows. BPF ns/server \
         fault: all the tracer's programs over the server's minflt+majflt. Step: the stage's \
         BPF ns/server fault minus the stage before's."
    );
    Ok(())
}

fn fork_kinds() -> impl Iterator<Item = &'static Kind> {
    KINDS.iter().filter(|k| k.fork)
}

/// Windows by stage, then by fork kind.
fn run(
    b: &mut Bench,
    rounds: usize,
    seconds: f64,
    base: &[String],
) -> Result<Vec<Vec<Vec<Window>>>> {
    let requests = fork_kinds()
        .map(|k| calibrate(b, k, seconds))
        .collect::<Result<Vec<u64>>>()?;
    let mut windows: Vec<Vec<Vec<Window>>> = STAGES
        .iter()
        .map(|_| fork_kinds().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..rounds {
        for (s, (stage, _)) in STAGES.iter().enumerate() {
            b.tracer_args = base.to_vec();
            b.tracer_args
                .extend(["--cost-stage".to_string(), stage.to_string()]);
            for (k, kind) in fork_kinds().enumerate() {
                let w = run_window(b, kind, true, requests[k])?;
                log_window(round, rounds, kind, stage, &w);
                windows[s][k].push(w);
            }
        }
    }
    Ok(windows)
}

/// BPF nanoseconds per run of program `name`.
fn per_run(t: &Totals, name: &str) -> f64 {
    t.progs
        .get(name)
        .map_or(0.0, |p| p.ns as f64 / p.runs.max(1) as f64)
}

fn per_fault(t: &Totals, ns: u64) -> f64 {
    ns as f64 / t.server_faults.max(1) as f64
}

fn print_kind(kind: &Kind, rows: &[Totals]) {
    println!("### {}\n", kind.name);
    println!(
        "| stage | what it adds | {} ns/run | other programs ns/server fault | BPF ns/server fault | step |",
        SHOWN.join(" ns/run | ")
    );
    println!("|---|---|{}---:|---:|---:|", "---:|".repeat(SHOWN.len()));
    let mut before: Option<f64> = None;
    for ((stage, what), t) in STAGES.iter().zip(rows) {
        let shown_ns: u64 = SHOWN
            .iter()
            .filter_map(|n| t.progs.get(*n))
            .map(|p| p.ns)
            .sum();
        let total = per_fault(t, t.bpf_ns);
        let step = before.map_or("".to_string(), |b| format!("{:+.0}", total - b));
        let cells: Vec<String> = SHOWN
            .iter()
            .map(|n| format!("{:.0}", per_run(t, n)))
            .collect();
        println!(
            "| {stage} | {what} | {} | {:.0} | {total:.0} | {step} |",
            cells.join(" | "),
            per_fault(t, t.bpf_ns - shown_ns),
        );
        before = Some(total);
    }
    println!();
}
