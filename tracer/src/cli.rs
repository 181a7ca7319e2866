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
    after_help = "Examples:\n  redis-memtrace record --pid $(pidof redis-server) --duration 30s -o timeline.json\n  redis-memtrace record -o timeline.json -- redis-server --port 7777 --save ''"
)]
pub struct RecordArgs {
    /// PID of a running process to trace.
    #[arg(long, conflicts_with = "command")]
    pub pid: Option<u32>,
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
