//! Typed views of the timeline's records, read leniently: a record missing what the
//! trace needs (a timestamp, a pid) is skipped and counted, optional fields that are
//! absent, null or of another type read as unknown.

use serde_json::Value;

pub use crate::{
    analysis::classify::FaultKind,
    analysis::fork_epochs::{Epoch, Role},
    analysis::samples::Sample,
    analysis::stream::{Fork, ForkReturn, SwapLevel},
};
use crate::{
    json_fields::{str_at, u32_at, u64_at},
    timeline::read::Timeline,
};

/// A borrowed view of a fault ([`TimelineEvent::Fault`](crate::analysis::stream::TimelineEvent::Fault)) read
/// back from a timeline: the fields the trace draws, with the activity and key borrowed
/// from the document instead of rebuilt as an attribution per fault (a trace may hold
/// millions), and the whole record for the optional args.
#[derive(Debug, Clone)]
pub struct FaultView<'t> {
    /// Start of the fault, monotonic ns.
    pub ts_ns: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Kind (the trace draws copies and swap-ins; the others are counted).
    pub kind: FaultKind,
    /// Side of the fork: the `role` field, else a child when pid != target.
    pub role: Role,
    /// Redis command or server phase.
    pub activity: Option<&'t str>,
    /// Key the command was working on, as the timeline escapes it.
    pub key: Option<&'t str>,
    /// How long the fault took (`None` when the timeline does not say: unlike 0, no
    /// `latency_us` arg).
    pub latency_ns: Option<u64>,
    /// The whole record, for optional args.
    pub raw: &'t Value,
}

impl<'t> FaultView<'t> {
    /// A fault element of a timeline's `events` whose target is `target_pid`, read
    /// leniently: `None` for another kind or without `ts_ns` or `pid`; an absent, null
    /// or mistyped optional field is unknown.
    pub fn from_json(e: &'t Value, target_pid: u32) -> Option<FaultView<'t>> {
        let kind = FaultKind::from_name(str_at(e, "kind")?)?;
        let (ts_ns, pid) = (u64_at(e, "ts_ns")?, u32_at(e, "pid")?);
        let role = str_at(e, "role")
            .and_then(Role::from_name)
            .unwrap_or(if pid == target_pid {
                Role::Parent
            } else {
                Role::Child
            });
        Some(FaultView {
            ts_ns,
            pid,
            tid: u32_at(e, "tid").unwrap_or(pid),
            kind,
            role,
            activity: str_at(e, "activity"),
            key: str_at(e, "key"),
            latency_ns: u64_at(e, "latency_ns"),
            raw: e,
        })
    }

    /// The fault happened in a fork child.
    pub fn child(&self) -> bool {
        self.role == Role::Child
    }
}

/// A `fork_return` record on the trace: the recorder's [`ForkReturn`], and whether the
/// timeline gave the call's duration (a 0 ns call is still drawn; a record without a
/// duration does not time the `fork()` slice).
#[derive(Debug, Clone)]
pub struct ForkCall {
    /// The record as read.
    pub call: ForkReturn,
    /// `duration_ns` was present.
    pub timed: bool,
}

impl ForkCall {
    /// The call's duration, when the timeline gave it.
    pub fn duration_ns(&self) -> Option<u64> {
        self.timed.then_some(self.call.duration_ns)
    }
}

impl std::ops::Deref for ForkCall {
    type Target = ForkReturn;
    fn deref(&self) -> &ForkReturn {
        &self.call
    }
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
    pub faults: Vec<FaultView<'t>>,
    /// `fork` events.
    pub forks: Vec<Fork>,
    /// `fork_return` events.
    pub fork_returns: Vec<ForkCall>,
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
        p.target_pid = u32_at(&v["target"], "pid")
            .or_else(|| t.epochs().iter().find_map(|e| u32_at(e, "parent_pid")))
            .unwrap_or(0);
        let comm = str_at(&v["target"], "comm").unwrap_or("target");
        p.target_name = match str_at(&v["redis"], "version") {
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
        let trace_end = u64_at(&v["end"], "monotonic_end_ns");
        p.see(trace_end);
        // Epoch ends need the latest time of the other records (for open epochs when the
        // timeline has no `end`), and are themselves part of it.
        for e in t.epochs() {
            p.see(u64_at(e, "start_ns"));
            p.see(u64_at(e, "end_ns"));
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
        let (Some(ts_ns), Some(_), Some(kind)) =
            (u64_at(e, "ts_ns"), u32_at(e, "pid"), str_at(e, "kind"))
        else {
            return false;
        };
        self.see(Some(ts_ns));
        if let Some(fault) = FaultView::from_json(e, self.target_pid) {
            self.faults.push(fault);
            return true;
        }
        match kind {
            "fork" => match Fork::from_json(e) {
                Some(fork) => self.forks.push(fork),
                None => return false,
            },
            "fork_return" => match ForkReturn::from_json(e) {
                Some(call) => {
                    let call = ForkCall {
                        timed: u64_at(e, "duration_ns").is_some(),
                        call,
                    };
                    self.see(call.duration_ns().map(|d| ts_ns.saturating_add(d)));
                    self.fork_returns.push(call);
                }
                None => return false,
            },
            // A level without `swap_bytes` says nothing.
            "swap_level" => match SwapLevel::from_json(e) {
                Some(level) => self.swap_levels.push(level),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_written_fault_reads_back_as_a_view() {
        let v = json!({"ts_ns": 5, "pid": 7, "tid": 8, "kind": "swap_in", "addr": 4096,
                       "role": "child", "epoch": 0, "error_code": 4, "latency_ns": 900,
                       "activity": "SET", "key": "k\\n"});
        let f = FaultView::from_json(&v, 7).unwrap();
        assert_eq!((f.ts_ns, f.pid, f.tid), (5, 7, 8));
        assert_eq!((f.kind, f.role), (FaultKind::SwapIn, Role::Child));
        assert_eq!((f.activity, f.key), (Some("SET"), Some("k\\n")));
        assert_eq!(f.latency_ns, Some(900));
        assert!(f.child() && std::ptr::eq(f.raw, &v));
    }

    #[test]
    fn faults_without_time_or_pid_or_of_another_kind_are_not_read() {
        for v in [
            json!({"ts_ns": null, "pid": 1, "kind": "cow_copy"}),
            json!({"ts_ns": 1, "kind": "cow_copy"}),
            json!({"ts_ns": 1, "pid": -1, "kind": "cow_copy"}),
            json!({"ts_ns": 1, "pid": 1, "kind": "fork"}),
            json!({"ts_ns": 1, "pid": 1}),
        ] {
            assert!(FaultView::from_json(&v, 1).is_none(), "{v}");
        }
    }

    #[test]
    fn mistyped_optional_fault_fields_read_as_unknown() {
        // No usable role: the side follows the pid.
        let v = json!({"ts_ns": 1, "pid": 2, "tid": "x", "kind": "cow_copy", "role": 3,
                       "activity": {}, "key": [1], "latency_ns": -1});
        let f = FaultView::from_json(&v, 2).unwrap();
        assert_eq!((f.tid, f.role), (2, Role::Parent));
        assert_eq!((f.activity, f.key, f.latency_ns), (None, None, None));
        let f = FaultView::from_json(&v, 9).unwrap();
        assert_eq!(f.role, Role::Child);
        let v = json!({"ts_ns": 1, "pid": 2, "kind": "cow_copy", "role": "sibling"});
        assert_eq!(FaultView::from_json(&v, 9).unwrap().role, Role::Child);
        assert_eq!(Role::from_name("parent"), Some(Role::Parent));
    }
}
