//! Command-line interface.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Kernel-level memory tracer for Redis: copy-on-write, swap-ins and first touches,
/// by fork epoch.
#[derive(Debug, Parser)]
#[command(name = "redis-memtrace", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace a process (and its fork children) and write a JSON timeline.
    Record(RecordArgs),
    /// Print a terminal summary of a timeline (and optionally write an HTML report).
    Report(ReportArgs),
    /// Convert a timeline to another format (Perfetto / Chrome Trace Event JSON).
    Export(ExportArgs),
    /// Check that this host (and a Redis server) can be traced; exit 0 pass, 1 warn, 2 fail.
    Check(CheckArgs),
    /// Trace a Redis server for as long as it takes (days), following its restarts, and
    /// serve live Prometheus metrics; no timeline file, memory bounded.
    Serve(ServeArgs),
    /// Put the timelines of several servers (recorded at the same time, on one host or
    /// several) on one time axis in one multi-node file, for `report` and `export`.
    Merge(MergeArgs),
}

/// Arguments of `merge`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  redis-memtrace merge node1.json node2.json node3.json -o cluster.json\n  redis-memtrace report cluster.json"
)]
pub struct MergeArgs {
    /// Timelines written by `record` (JSON or NDJSON), or files written by `merge`.
    #[arg(required = true, num_args = 1..)]
    pub timelines: Vec<PathBuf>,
    /// Where to write the multi-node timeline.
    #[arg(short, long)]
    pub output: PathBuf,
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to serve the metrics (OpenMetrics text at `/metrics`).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: std::net::SocketAddr,
    /// The Redis server by address: HOST:PORT or redis://[user:pass@]host:port. When it
    /// exits, a server at the same address is waited for and traced. Give it more than
    /// once to serve several servers' metrics (one `node` label each).
    #[arg(long, value_name = "ADDR", required = true)]
    pub redis: Vec<String>,
    /// Do not attribute faults to Redis commands and keys (count only).
    #[arg(long)]
    pub no_attribution: bool,
    /// What of key names the top-key gauges show: `full`, `hash` or `none`.
    #[arg(long, value_enum, default_value_t = KeysMode::Full)]
    pub keys: KeysMode,
    /// Salt of `--keys hash`.
    #[arg(long, value_name = "SALT", requires = "keys")]
    pub key_salt: Option<String>,
    /// Key bytes kept (longer keys are cut).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub key_bytes: u32,
    /// Memory sampling interval (RSS, swap, INFO).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after this long; default: until SIGINT or SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub ring: RingArgs,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The kernel ring buffer's options, shared by `record` and `serve`.
#[derive(Debug, Args)]
pub struct RingArgs {
    /// Ring buffer size in MiB (a power of two). It is mapped into the tracer twice, so
    /// it counts double in the tracer's RSS.
    #[arg(long, default_value_t = 16)]
    pub ring_buffer_mb: u32,
    /// How often the ring buffer is drained while events flow, in milliseconds (each
    /// drain wakes two of the tracer's threads).
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
}

/// Arguments of `report`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  redis-memtrace report timeline.json\n  redis-memtrace report timeline.json --html report.html"
)]
pub struct ReportArgs {
    /// Timeline written by `record` (JSON or NDJSON).
    pub timeline: PathBuf,
    /// Also write a self-contained HTML report with charts to this file.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Rows in each top-N table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

/// Arguments of `export`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example:\n  redis-memtrace export --perfetto timeline.json -o trace.json\n  (open trace.json in https://ui.perfetto.dev or chrome://tracing)"
)]
pub struct ExportArgs {
    /// Timeline to convert to Chrome Trace Event JSON (opens in Perfetto UI).
    #[arg(long, value_name = "TIMELINE")]
    pub perfetto: PathBuf,
    /// Where to write the trace.
    #[arg(short, long, default_value = "trace.json")]
    pub output: PathBuf,
}

/// Arguments of `check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also check a running process (symbols for attribution, THP of its mappings).
    #[arg(long, conflicts_with = "redis")]
    pub pid: Option<u32>,
    /// Also check a Redis server by address (HOST:PORT or redis://[user:pass@]host:port).
    #[arg(long, value_name = "ADDR")]
    pub redis: Option<String>,
}

/// `--keys` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeysMode {
    /// Key names, escaped and cut to --key-bytes.
    Full,
    /// A keyed hash of each key.
    Hash,
    /// No keys.
    None,
}

/// Where the kernel side's Redis attribution stops (`record --cost-stage`, hidden): for
/// `cargo xtask bench-fork --stages`, which measures what each stage costs. Every stage
/// but `full` sends no Redis context, so the timeline has no attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CostStage {
    /// Everything.
    Full,
    /// Only find that the fault is the server's.
    Server,
    /// Also read the current client and the command counter.
    Current,
    /// Outside commands, also scan the stack for the phase.
    Stack,
    /// Outside commands, also search for the client being read.
    Client,
}

impl CostStage {
    /// The value the kernel side reads.
    pub fn kernel(self) -> u32 {
        use tracer_common::cost_stage as s;
        match self {
            CostStage::Full => s::FULL,
            CostStage::Server => s::SERVER,
            CostStage::Current => s::CURRENT,
            CostStage::Stack => s::STACK,
            CostStage::Client => s::CLIENT,
        }
    }
}

/// Output formats of `record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON document, written when the run ends (temp file renamed into place).
    Json,
    /// One JSON object per line as events happen; the last line is the summary.
    Ndjson,
}

/// Arguments of `record`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  redis-memtrace record --duration 30s -o timeline.json\n  redis-memtrace record --redis redis://default:secret@127.0.0.1:6379 --duration 30s\n  redis-memtrace record --pid $(pidof redis-server) --duration 30s -o timeline.json\n  redis-memtrace record --redis 127.0.0.1:7001 --redis 127.0.0.1:7002 --duration 30s -o nodes.json\n  redis-memtrace record -o timeline.json -- redis-server --port 7777 --save ''"
)]
pub struct RecordArgs {
    /// PID of a running process to trace. Without --pid, --redis, --all or a command,
    /// the only redis-server running here is traced.
    #[arg(long, conflicts_with_all = ["command", "redis", "all"])]
    pub pid: Option<u32>,
    /// A local Redis server by address: HOST:PORT or redis://[user:pass@]host:port.
    /// Its PID comes from the listening socket or INFO; INFO feeds samples and fork labels.
    /// Give it more than once to trace several servers at once: one set of programs, and
    /// one timeline holding a node per server (schema version 2, as `merge` writes).
    #[arg(long, conflicts_with = "command", value_name = "ADDR")]
    pub redis: Vec<String>,
    /// Trace every redis-server and valkey-server running on this host (one node each).
    #[arg(long, conflicts_with_all = ["command", "redis"])]
    pub all: bool,
    /// With --redis: when the server exits, wait for a server at the same address and go
    /// on tracing it (a new segment of the same timeline). Stop with Ctrl-C or --duration.
    #[arg(long, requires = "redis")]
    pub follow: bool,
    /// Do not attribute faults to Redis commands and keys (count only).
    #[arg(long)]
    pub no_attribution: bool,
    /// Benchmarking only: stop the kernel side's Redis attribution at this stage.
    #[arg(long, value_enum, default_value_t = CostStage::Full, hide = true)]
    pub cost_stage: CostStage,
    /// Key bytes kept in timelines (longer keys are truncated; their length is kept).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub key_bytes: u32,
    /// What of key names is written: `full` (escaped, cut to --key-bytes), `hash` (a
    /// keyed hash; no key name is written anywhere) or `none` (no keys; slots stay).
    #[arg(long, value_enum, default_value_t = KeysMode::Full)]
    pub keys: KeysMode,
    /// Salt of `--keys hash`: runs with the same salt hash a key the same way and can be
    /// compared. Default: a random salt per run. Only a fingerprint of it is recorded.
    #[arg(long, value_name = "SALT", requires = "keys")]
    pub key_salt: Option<String>,
    /// Rows in each top-N table (commands, keys, slots).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Memory sampling interval (RSS, swap, INFO, vmstat).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or the target exits.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Where to write the timeline (`-` for stdout with --format ndjson).
    #[arg(short, long, default_value = "timeline.json")]
    pub output: PathBuf,
    /// Timeline format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Also write a Perfetto / Chrome Trace Event JSON file when the run ends.
    #[arg(long, value_name = "FILE")]
    pub perfetto: Option<PathBuf>,
    /// Write at most N fault records to the timeline (counts stay exact; the rest are
    /// counted in `event_cap.dropped`).
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,
    /// Write at most N fault records per second of trace (counts stay exact).
    #[arg(long, value_name = "N")]
    pub max_rate: Option<u64>,
    /// Serve live Prometheus metrics (OpenMetrics text at `/metrics`) on HOST:PORT while
    /// recording: faults by kind, side and command or phase, forks, the fork() call's
    /// duration, the latest epoch's copy-on-write bytes, lost events, top keys and slots.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub ring: RingArgs,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Command to launch and trace from its first instruction (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::CostStage;

    /// `--cost-stage`'s names are the ones the tracer writes back (its degraded note) and
    /// `bench-fork --stages` passes, each for its own kernel value.
    #[test]
    fn cost_stage_names_match_the_kernel_values() {
        let mut seen = Vec::new();
        for stage in CostStage::value_variants() {
            let cli = stage.to_possible_value().unwrap();
            assert_eq!(
                cli.get_name(),
                tracer_common::cost_stage::name(stage.kernel()),
                "{stage:?}"
            );
            assert!(!seen.contains(&stage.kernel()), "{stage:?} reuses a value");
            seen.push(stage.kernel());
        }
        assert_eq!(seen.len(), 5);
    }
}
