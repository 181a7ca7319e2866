//! `redis-memtrace record`: attach, stream events through the analyzer into the timeline,
//! stop on duration, signal or target exit, and always leave a complete timeline.
//!
//! - [`setup`]: resolving the target, opening outputs, loading the programs, turning
//!   attribution on; a [`setup::Recorder`] owns everything and cleans up on drop.
//! - [`run`]: the loop, one batch of kernel records at a time.
//! - [`decide`]: its decisions (stop, wait for a restart, retry), pure and unit-tested.
//! - [`target`]: the traced server: its Redis session, sampler, segments.
//! - [`finish`]: draining, the trailer, the outputs.

pub mod decide;
mod finish;
mod run;
mod setup;
mod signals;
pub mod status_line;
mod target;

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{analysis::fork_epochs::Epoch, analysis::stream::Summary};

/// What to trace.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// An existing process.
    Pid(u32),
    /// A command to launch and trace from its first instruction.
    Command(Vec<String>),
    /// A Redis server by address (`HOST:PORT` or a `redis://` URL); must run here.
    Redis(String),
    /// The only redis-server (or valkey-server) running on this machine.
    AutoRedis,
    /// Several Redis servers by address, in one recording (`--redis A --redis B`).
    Redises(Vec<String>),
    /// Every redis-server and valkey-server running on this machine (`--all`).
    AllRedis,
}

/// Options of one recording.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// What to trace.
    pub target: TargetSpec,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Timeline path.
    pub output: PathBuf,
    /// Ring buffer size, MiB (power of two).
    pub ring_buffer_mb: u32,
    /// Where the kernel side's Redis attribution stops ([`tracer_common::cost_stage`]:
    /// `FULL` but in `bench-fork --stages`).
    pub cost_stage: u32,
    /// How often the ring buffer is drained.
    pub poll_interval: Duration,
    /// No progress output.
    pub quiet: bool,
    /// Attribute faults of a Redis target to commands, keys and phases.
    pub attribution: bool,
    /// Key bytes kept per key.
    pub key_max: usize,
    /// Rows of each top-N table.
    pub top_n: usize,
    /// Memory sampling interval.
    pub interval: Duration,
    /// Write NDJSON (one object per line, live) instead of one JSON document.
    pub ndjson: bool,
    /// Also write a Perfetto / Chrome Trace Event file here when the run ends.
    pub perfetto: Option<PathBuf>,
    /// What of key names is kept (`--keys`).
    pub keys: crate::attribution::key_privacy::KeyPolicy,
    /// At most this many fault records in `events`.
    pub max_events: Option<u64>,
    /// At most this many fault records per second of trace time in `events`.
    pub max_rate: Option<u64>,
    /// With `--redis`: when the server exits, wait for one at the same address and go on
    /// tracing it in a new segment.
    pub follow: bool,
    /// Serve live Prometheus metrics here.
    pub metrics: Option<std::net::SocketAddr>,
    /// `serve`: no timeline, and nothing kept that grows with time (samples, old epochs,
    /// warnings), so the run can last for days.
    pub live: bool,
}

impl RecordOptions {
    fn to_stdout(&self) -> bool {
        self.output == std::path::Path::new("-")
    }

    /// Rejects combinations that cannot work, before anything is done.
    fn validate(&self) -> Result<()> {
        if !self.ring_buffer_mb.is_power_of_two() || self.ring_buffer_mb > 1024 {
            bail!(
                "--ring-buffer-mb must be a power of two between 1 and 1024, not {}",
                self.ring_buffer_mb
            );
        }
        if matches!(self.target, TargetSpec::Redises(_) | TargetSpec::AllRedis) && self.ndjson {
            bail!(
                "--format ndjson takes one server; with several (--redis given more than once, or --all) the timeline is one JSON file of all of them"
            );
        }
        if self.follow && !matches!(self.target, TargetSpec::Redis(_) | TargetSpec::Redises(_)) {
            bail!(
                "--follow needs --redis HOST:PORT (the address the restarted server is found at)"
            );
        }
        if self.to_stdout() && !self.ndjson {
            bail!(
                "-o - (stdout) needs --format ndjson: a JSON document is only complete at the end"
            );
        }
        if self.live && self.metrics.is_none() {
            bail!("serving needs --metrics HOST:PORT");
        }
        if self.to_stdout() && self.perfetto.is_some() {
            bail!("--perfetto reads the finished timeline back: write it to a file with -o");
        }
        Ok(())
    }
}

/// Outcome of a recording, for callers that want the numbers.
#[derive(Debug)]
pub struct RecordOutcome {
    /// Where the timeline went.
    pub output: PathBuf,
    /// Totals.
    pub summary: Summary,
    /// Epochs.
    pub epochs: Vec<Epoch>,
    /// Events lost in the kernel.
    pub lost_events: u64,
    /// Exit status of a launched command.
    pub target_exit_status: Option<i32>,
}

/// Runs one recording.
pub fn record(opts: &RecordOptions) -> Result<RecordOutcome> {
    crate::kernel::privileges::require().map_err(anyhow::Error::msg)?;
    opts.validate()?;
    let mut recorder = setup::Recorder::setup(opts)?;
    let reason = recorder.run()?;
    recorder.finish(reason)
}
