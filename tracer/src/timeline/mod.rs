//! Timeline output: the header known at start, the records streamed while tracing, and
//! the trailer (epochs, losses, summary) known at the end.

pub mod json;
pub mod ndjson;
pub mod nodes;
pub mod read;

use serde::Serialize;

use crate::{analysis::fork_epochs::Epoch, analysis::stream::Summary};

/// A timeline being written, in the format the user chose.
pub enum Writer {
    /// One JSON document, renamed into place when complete.
    Json(json::JsonTimeline),
    /// One JSON object per line, written live.
    Ndjson(ndjson::NdjsonTimeline),
    /// Nothing written (`serve`: the metrics are the output).
    Discard,
}

impl Writer {
    /// Opens the output before anything is attached, so a bad path fails early.
    pub fn create(dest: &std::path::Path, ndjson: bool) -> std::io::Result<Writer> {
        Ok(if ndjson {
            Writer::Ndjson(ndjson::NdjsonTimeline::create(dest)?)
        } else {
            Writer::Json(json::JsonTimeline::create(dest)?)
        })
    }

    /// Writes what is known before tracing starts.
    pub fn write_header(&mut self, run: &RunInfo, target: &TargetInfo) -> std::io::Result<()> {
        match self {
            Writer::Json(w) => w.write_header(run, target),
            Writer::Ndjson(w) => w.write_header(run, target),
            Writer::Discard => Ok(()),
        }
    }

    /// Writes one record.
    pub fn write_record(
        &mut self,
        record: &crate::analysis::stream::TimelineEvent,
    ) -> std::io::Result<()> {
        match self {
            Writer::Json(w) => w.write_record(record),
            Writer::Ndjson(w) => w.write_record(record),
            Writer::Discard => Ok(()),
        }
    }

    /// Makes what was written so far visible (NDJSON); a no-op for JSON.
    pub fn flush_live(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Json(_) | Writer::Discard => Ok(()),
            Writer::Ndjson(w) => w.flush(),
        }
    }

    /// Writes the trailer and completes the output; returns where it is.
    pub fn finish(self, trailer: &Trailer) -> std::io::Result<std::path::PathBuf> {
        match self {
            Writer::Json(w) => w.finish(trailer),
            Writer::Ndjson(w) => w.finish(trailer),
            Writer::Discard => Ok(std::path::PathBuf::new()),
        }
    }

    /// Gives up: the JSON temporary file is removed; an NDJSON stream keeps its lines.
    pub fn abandon(self) {
        if let Writer::Json(w) = self {
            w.abandon();
        }
    }
}

pub use crate::{kernel::loader::KernelCounters, kernel::target::TargetInfo};

/// Version of the timeline format; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// Facts about the run known at start.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// `redis-memtrace` version.
    pub tracer_version: &'static str,
    /// `uname -r`.
    pub kernel_release: String,
    /// CLOCK_MONOTONIC at start, ns: every `ts_ns` uses this clock.
    pub monotonic_start_ns: u64,
    /// Wall clock at the same instant, ns since the Unix epoch.
    pub wall_start_unix_ns: u128,
    /// Time from opening the eBPF object to the last attach, ns.
    pub attach_ns: u64,
    /// Options the run was started with.
    pub options: serde_json::Value,
    /// RAM, swap, THP and VM settings of the host at start.
    pub host: crate::kernel::host::HostInfo,
}

/// How the run ended.
#[derive(Debug, Clone, Serialize)]
pub struct EndInfo {
    /// `duration`, `signal`, `target_exit`.
    pub reason: String,
    /// CLOCK_MONOTONIC at the end, ns.
    pub monotonic_end_ns: u64,
    /// Exit status of a launched command (exit code, or 128 + signal).
    pub target_exit_status: Option<i32>,
}

/// Everything written after the records.
#[derive(Debug, Clone, Serialize)]
pub struct Trailer {
    /// Fork epochs.
    pub epochs: Vec<Epoch>,
    /// Events the kernel could not deliver (sum of all causes).
    pub lost_events: u64,
    /// Kernel-side counters.
    pub kernel: KernelCounters,
    /// Totals.
    pub summary: Summary,
    /// How it ended.
    pub end: EndInfo,
    /// The Redis server, when the target is one.
    pub redis: Option<crate::redis::session::RedisRunInfo>,
    /// Memory samples (RSS, swap, INFO, vmstat) every `--interval`.
    pub samples: Vec<crate::analysis::samples::Sample>,
    /// Warnings printed during the run.
    pub warnings: Vec<String>,
    /// Fault records left out of `events` by `--max-events` / `--max-rate` (counts,
    /// epochs and aggregates still include them).
    pub event_cap: crate::analysis::event_cap::CapReport,
    /// The processes traced as the target, in order: one, or several with `--follow`
    /// when the server restarted.
    pub segments: Vec<Segment>,
    /// The cluster map at start and at each change (a server in cluster mode only;
    /// absent otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<crate::redis::cluster::ClusterCapture>,
}

/// One target process's stretch of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (with the pid, names the process).
    pub start_time_ticks: u64,
    /// `comm` when it was found.
    pub comm: String,
    /// Monotonic time tracing of it began.
    pub start_ns: u64,
    /// Monotonic time it exited or the run ended.
    pub end_ns: Option<u64>,
    /// `target_exit`, or how the run ended (`signal`, `duration`).
    pub end_reason: Option<&'static str>,
}

impl Segment {
    /// A segment of `target` starting at `start_ns`.
    pub fn begin(target: &TargetInfo, start_ns: u64) -> Segment {
        Segment {
            pid: target.pid,
            start_time_ticks: target.start_time_ticks,
            comm: target.comm.clone(),
            start_ns,
            end_ns: None,
            end_reason: None,
        }
    }
}
