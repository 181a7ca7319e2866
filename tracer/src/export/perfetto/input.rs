//! Typed views of the timeline's records, read leniently: a record missing what the
//! trace needs (a timestamp, a pid) is skipped and counted, optional fields that are
//! absent, null or of another type read as unknown.

use serde_json::Value;

use crate::timeline::read::Timeline;
pub use crate::{classify::FaultKind, fork_epochs::Epoch, samples::Sample};

/// A `u64` field (absent, null, negative, fractional or textual: `None`).
pub fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key)?.as_u64()
}

/// A `u32` field (pids and tids; larger numbers are not ids).
pub fn u32_of(v: &Value, key: &str) -> Option<u32> {
    u32::try_from(u64_of(v, key)?).ok()
}

/// A string field.
pub fn str_of<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key)?.as_str()
}

/// One fault event.
#[derive(Debug, Clone)]
pub struct Fault<'t> {
    /// Start of the fault, monotonic ns.
    pub ts_ns: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Kind (the trace draws copies and swap-ins; the others are counted).
    pub kind: FaultKind,
    /// The fault happened in a fork child (the `role` field, else pid != target).
    pub child: bool,
    /// Redis command or server phase.
    pub activity: Option<&'t str>,
    /// Key the command was working on.
    pub key: Option<&'t str>,
    /// How long the fault took.
    pub latency_ns: Option<u64>,
    /// The whole record, for optional args.
    pub raw: &'t Value,
}

/// A `fork` event.
#[derive(Debug, Clone)]
pub struct Fork {
    /// Time of `sched_process_fork`.
    pub ts_ns: u64,
    /// Forking process.
    pub pid: u32,
    /// Forking thread.
    pub tid: u32,
    /// New process.
    pub child_pid: Option<u32>,
    /// Epoch it opened.
    pub epoch: Option<u64>,
}

/// A `fork_return` event: the parent's libc `fork()` call, timed from its start.
#[derive(Debug, Clone)]
pub struct ForkReturn {
    /// When the call started.
    pub ts_ns: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Return value: the child pid, or -errno.
    pub ret: Option<i64>,
    /// How long the call took.
    pub duration_ns: Option<u64>,
}

/// A `swap_level` event: how much of a process is in swap.
#[derive(Debug, Clone)]
pub struct SwapLevel {
    /// Time of the change.
    pub ts_ns: u64,
    /// Owner of the memory.
    pub pid: u32,
    /// New amount in swap.
    pub swap_bytes: u64,
}

/// One fork epoch placed on the trace: the epoch as recorded, and where its slices end.
#[derive(Debug, Clone)]
pub struct EpochSpan {
    /// The epoch as recorded.
    pub epoch: Epoch,
    /// Where the epoch ends in the trace: its `end_ns`, or the end of tracing when open
    /// (`end.monotonic_end_ns`, else the latest time in the timeline); never before the
    /// start.
    pub shown_end_ns: u64,
}

impl EpochSpan {
    /// The child outlived the trace (`end_ns` is null).
    pub fn open(&self) -> bool {
        self.epoch.end_ns.is_none()
    }

    /// The child's PID, when the timeline names it.
    pub fn child(&self) -> Option<u32> {
        Some(self.epoch.child_pid).filter(|&pid| pid != 0)
    }
}

impl std::ops::Deref for EpochSpan {
    type Target = Epoch;
    fn deref(&self) -> &Epoch {
        &self.epoch
    }
}

/// Everything the trace is built from.
#[derive(Debug)]
pub struct Parsed<'t> {
    /// The traced process.
    pub target_pid: u32,
    /// Name of the traced process: its `comm`, and the Redis version when known.
    pub target_name: String,
    /// Earliest time anywhere in the timeline.
    pub first_ns: Option<u64>,
    /// Latest time anywhere in the timeline.
    pub last_ns: Option<u64>,
    /// Events in the timeline.
    pub total_events: u64,
    /// Events without a timestamp or pid, or of an unknown kind.
    pub skipped_events: u64,
    /// Fault events.
    pub faults: Vec<Fault<'t>>,
    /// `fork` events.
    pub forks: Vec<Fork>,
    /// `fork_return` events.
    pub fork_returns: Vec<ForkReturn>,
    /// `swap_level` events.
    pub swap_levels: Vec<SwapLevel>,
    /// Number of `swap_write` events.
    pub swap_writes: u64,
    /// Epochs with a start time.
    pub epochs: Vec<EpochSpan>,
    /// Epochs without a start time.
    pub epochs_skipped: u64,
    /// Samples with a timestamp.
    pub samples: Vec<Sample>,
}

impl<'t> Parsed<'t> {
    /// Reads every record of `t`.
    pub fn new(t: &'t Timeline) -> Parsed<'t> {
        let v = &t.0;
        let mut p = Parsed {
            target_pid: 0,
            target_name: String::new(),
            first_ns: None,
            last_ns: None,
            total_events: t.events().len() as u64,
            skipped_events: 0,
            faults: Vec::new(),
            forks: Vec::new(),
            fork_returns: Vec::new(),
            swap_levels: Vec::new(),
            swap_writes: 0,
            epochs: Vec::new(),
            epochs_skipped: 0,
            samples: Vec::new(),
        };
        p.target_pid = u32_of(&v["target"], "pid")
            .or_else(|| t.epochs().iter().find_map(|e| u32_of(e, "parent_pid")))
            .unwrap_or(0);
        let comm = str_of(&v["target"], "comm").unwrap_or("target");
        p.target_name = match str_of(&v["redis"], "version") {
            Some(version) => format!("{comm} (Redis {version})"),
            None => comm.to_string(),
        };
        for e in t.events() {
            if !p.event(e) {
                p.skipped_events += 1;
            }
        }
        for s in t.samples() {
            p.sample(s);
        }
        let trace_end = u64_of(&v["end"], "monotonic_end_ns");
        p.see(trace_end);
        // Epoch ends need the latest time of the other records (for open epochs when the
        // timeline has no `end`), and are themselves part of it.
        for e in t.epochs() {
            p.see(u64_of(e, "start_ns"));
            p.see(u64_of(e, "end_ns"));
        }
        let open_end = trace_end.or(p.last_ns).unwrap_or(0);
        for (i, e) in t.epochs().iter().enumerate() {
            match p.epoch(i, e, open_end) {
                Some(epoch) => p.epochs.push(epoch),
                None => p.epochs_skipped += 1,
            }
        }
        p
    }

    /// Widens the first/last time seen.
    fn see(&mut self, ns: Option<u64>) {
        if let Some(ns) = ns {
            self.first_ns = Some(self.first_ns.map_or(ns, |f| f.min(ns)));
            self.last_ns = Some(self.last_ns.map_or(ns, |l| l.max(ns)));
        }
    }

    /// Reads one event; false when it is skipped.
    fn event(&mut self, e: &'t Value) -> bool {
        let (Some(ts_ns), Some(pid), Some(kind)) =
            (u64_of(e, "ts_ns"), u32_of(e, "pid"), str_of(e, "kind"))
        else {
            return false;
        };
        let tid = u32_of(e, "tid").unwrap_or(pid);
        self.see(Some(ts_ns));
        if let Some(kind) = FaultKind::from_name(kind) {
            let child = match str_of(e, "role") {
                Some("child") => true,
                Some("parent") => false,
                _ => pid != self.target_pid,
            };
            self.faults.push(Fault {
                ts_ns,
                pid,
                tid,
                kind,
                child,
                activity: str_of(e, "activity"),
                key: str_of(e, "key"),
                latency_ns: u64_of(e, "latency_ns"),
                raw: e,
            });
            return true;
        }
        match kind {
            "fork" => self.forks.push(Fork {
                ts_ns,
                pid,
                tid,
                child_pid: u32_of(e, "child_pid"),
                epoch: u64_of(e, "epoch"),
            }),
            "fork_return" => {
                let duration_ns = u64_of(e, "duration_ns");
                self.see(duration_ns.map(|d| ts_ns.saturating_add(d)));
                self.fork_returns.push(ForkReturn {
                    ts_ns,
                    pid,
                    tid,
                    ret: e.get("ret").and_then(Value::as_i64),
                    duration_ns,
                });
            }
            "swap_level" => match u64_of(e, "swap_bytes") {
                Some(swap_bytes) => self.swap_levels.push(SwapLevel {
                    ts_ns,
                    pid,
                    swap_bytes,
                }),
                None => return false,
            },
            "swap_write" => self.swap_writes += 1,
            // Exits are shown by the end of the epoch slices.
            "exit" => {}
            _ => return false,
        }
        true
    }

    fn sample(&mut self, s: &Value) {
        let Some(sample) = Sample::from_json(s) else {
            return;
        };
        self.see(Some(sample.ts_ns));
        self.samples.push(sample);
    }

    fn epoch(&self, index: usize, e: &Value, open_end: u64) -> Option<EpochSpan> {
        let epoch = Epoch::from_json(e, index, self.target_pid)?;
        Some(EpochSpan {
            shown_end_ns: epoch.end_ns.unwrap_or(open_end).max(epoch.start_ns),
            epoch,
        })
    }
}
