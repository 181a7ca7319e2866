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
}

/// Arguments of `record`.
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  redis-memtrace record --duration 30s -o timeline.json\n  redis-memtrace record --redis redis://default:secret@127.0.0.1:6379 --duration 30s\n  redis-memtrace record --pid $(pidof redis-server) --duration 30s -o timeline.json\n  redis-memtrace record -o timeline.json -- redis-server --port 7777 --save ''"
)]
pub struct RecordArgs {
    /// PID of a running process to trace. Without --pid, --redis or a command, the
    /// only redis-server running here is traced.
    #[arg(long, conflicts_with_all = ["command", "redis"])]
    pub pid: Option<u32>,
    /// A local Redis server by address: HOST:PORT or redis://[user:pass@]host:port.
    /// Its PID comes from the listening socket or INFO; INFO feeds samples and fork labels.
    #[arg(long, conflicts_with = "command", value_name = "ADDR")]
    pub redis: Option<String>,
    /// Do not attribute faults to Redis commands and keys (count only).
    #[arg(long)]
    pub no_attribution: bool,
    /// Key bytes kept in timelines (longer keys are truncated; their length is kept).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub key_bytes: u32,
    /// Rows in each top-N table (commands, keys, slots).
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Memory sampling interval (RSS, swap, INFO, vmstat).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or the target exits.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Where to write the JSON timeline.
    #[arg(short, long, default_value = "timeline.json")]
    pub output: PathBuf,
    /// Ring buffer size in MiB (a power of two).
    #[arg(long, default_value_t = 64)]
    pub ring_buffer_mb: u32,
    /// How often the ring buffer is drained, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub poll_ms: u64,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Command to launch and trace from its first instruction (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}
