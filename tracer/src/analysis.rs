//! The pure core: turns the kernel's event stream into timeline records, fork epochs and
//! a summary. No I/O; unit-tested with recorded streams.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;
use tracer_common::{
    ContextEvent, Event, exit_flags, fault_flags as ff, fork_ret_flags, kind, swap_flags,
};

use crate::{
    attribution::{
        aggregate::{AggregateReport, Aggregates},
        context::{Attribution, Attributor},
    },
    classify::{Evidence, FaultKind, classify, classify_with, is_huge},
    counts::KindCounts,
    fork_epochs::{Epoch, ForkEpochs, Role},
};

/// Page size used to turn byte counters into pages.
pub const PAGE_SIZE: u64 = 4096;

/// One line of the timeline, derived from one kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A classified page fault.
    Fault {
        /// Start of the fault (monotonic ns).
        ts_ns: u64,
        /// Process.
        pid: u32,
        /// Thread.
        tid: u32,
        /// Classification.
        kind: FaultKind,
        /// Faulting address.
        addr: u64,
        /// Parent (target) or fork child.
        role: Role,
        /// Epoch the fault belongs to.
        epoch: Option<u32>,
        /// x86 error code.
        error_code: u64,
        /// Entry to completion.
        latency_ns: u64,
        /// Raw evidence bits (`tracer_common::fault_flags`).
        flags: u32,
        /// Command/key or phase, when attribution is on.
        attribution: Option<Arc<Attribution>>,
    },
    /// The target or a child forked.
    Fork {
        /// Time of the fork.
        ts_ns: u64,
        /// Forking process.
        pid: u32,
        /// Forking thread.
        tid: u32,
        /// New process.
        child_pid: u32,
        /// Epoch opened by this fork (forks of the target only).
        epoch: Option<u32>,
    },
    /// A clone syscall returned in a traced process.
    ForkReturn {
        /// Syscall entry time.
        ts_ns: u64,
        /// Process.
        pid: u32,
        /// Thread.
        tid: u32,
        /// Return value (child pid or -errno).
        ret: i64,
        /// Syscall duration.
        duration_ns: u64,
    },
    /// A traced thread or process exited.
    Exit {
        /// Exit time.
        ts_ns: u64,
        /// Process.
        pid: u32,
        /// Thread.
        tid: u32,
        /// The whole process is gone.
        process_exit: bool,
        /// Epoch this exit closed.
        epoch: Option<u32>,
    },
    /// Pages in swap of a traced process changed.
    SwapEnts {
        /// Time of the change.
        ts_ns: u64,
        /// Owner of the memory.
        pid: u32,
        /// Thread that made the change.
        tid: u32,
        /// New amount in swap, bytes.
        bytes: u64,
        /// Change in pages, when the previous value is known.
        delta_pages: Option<i64>,
    },
    /// Reclaim wrote an anonymous page to swap on a traced thread.
    SwapWrite {
        /// Time.
        ts_ns: u64,
        /// Process.
        pid: u32,
        /// Thread.
        tid: u32,
        /// Page frame number written.
        pfn: u64,
    },
}

impl Record {
    /// Timestamp of the record.
    pub fn ts_ns(&self) -> u64 {
        match self {
            Record::Fault { ts_ns, .. }
            | Record::Fork { ts_ns, .. }
            | Record::ForkReturn { ts_ns, .. }
            | Record::Exit { ts_ns, .. }
            | Record::SwapEnts { ts_ns, .. }
            | Record::SwapWrite { ts_ns, .. } => *ts_ns,
        }
    }
}

/// Fault totals by side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ByRole {
    /// The target's faults.
    pub parent: KindCounts,
    /// Fork children's faults.
    pub child: KindCounts,
}

/// Swap activity of the traced processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SwapSummary {
    /// Pages that went to swap (sum of MM_SWAPENTS increases).
    pub pages_out: u64,
    /// Pages that came back by fault (equals `faults.swap_in` for 4 KiB pages).
    pub pages_in: u64,
    /// Swap entries dropped without a fault (unmap, exit, swapoff).
    pub pages_discarded: u64,
    /// Anonymous pages written to swap by reclaim running on a traced thread.
    pub writes_on_traced_threads: u64,
}

/// What a whole run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Faults of all traced processes by kind.
    pub faults: KindCounts,
    /// Forks of the target.
    pub forks: u64,
    /// Faults by side.
    pub by_role: ByRole,
    /// Faults that involved a huge (order >= 1) folio.
    pub huge_faults: u64,
    /// Faults that completed as major faults.
    pub major_faults: u64,
    /// Faults taken in kernel mode on a user address.
    pub kernel_mode_faults: u64,
    /// Faults superseded before completing.
    pub incomplete_faults: u64,
    /// Faults during which direct or memcg reclaim ran.
    pub faults_with_reclaim: u64,
    /// Swap activity.
    pub swap: SwapSummary,
    /// Kernel events received.
    pub events_received: u64,
    /// Events of a kind this version does not know.
    pub unknown_events: u64,
    /// Faults by command, key, slot and phase (Redis targets with attribution on).
    pub attribution: Option<AggregateReport>,
    /// Context events received from the kernel (attribution on).
    pub context_events: u64,
}

/// How attribution is configured for a Redis target.
#[derive(Debug, Clone)]
pub struct AttributionOptions {
    /// Labels of the kernel's phase ranges.
    pub phases: Vec<Option<&'static str>>,
    /// Key bytes kept.
    pub key_max: usize,
    /// Rows in each top-N table.
    pub top_n: usize,
    /// Keys each heavy-hitters sketch tracks.
    pub key_capacity: usize,
    /// What of a key is kept (`--keys`).
    pub keys: crate::attribution::key_privacy::KeyPolicy,
}

#[derive(Debug)]
struct AttributionState {
    attributor: Attributor,
    total: Aggregates,
    per_epoch: HashMap<u32, Aggregates>,
    /// Epochs whose tables were turned into their report (see
    /// [`Analyzer::retire_epoch_tables`]).
    retired: std::collections::HashSet<u32>,
    fork_child: Arc<Attribution>,
    top_n: usize,
    key_capacity: usize,
    /// Main-thread faults taken while Redis parsed input, waiting for the command they
    /// belong to (the next command context of the thread).
    pending: Vec<PendingFault>,
}

#[derive(Debug)]
struct PendingFault {
    record: Record,
    kind: FaultKind,
    epoch: Option<u32>,
    parsing: Arc<Attribution>,
}

/// Parse-stage faults held at most; past this they are written as `networking-read`.
const MAX_PENDING: usize = 65_536;

/// How long after its end an epoch's tables stay open for faults still in flight (a
/// fault is emitted when it completes but dated when it began).
const RETIRE_AFTER_NS: u64 = 2_000_000_000;

/// Consumes kernel events in arrival order.
#[derive(Debug)]
pub struct Analyzer {
    target: u32,
    epochs: ForkEpochs,
    summary: Summary,
    swap_bytes: HashMap<u32, u64>,
    target_exit_ns: Option<u64>,
    last_ts: u64,
    attribution: Option<AttributionState>,
    evidence: Evidence,
}

impl Analyzer {
    /// Analyzer for `target`, whose swap usage is `target_swap_bytes` at attach time.
    pub fn new(target: u32, target_swap_bytes: Option<u64>) -> Self {
        let mut swap_bytes = HashMap::new();
        if let Some(b) = target_swap_bytes {
            swap_bytes.insert(target, b);
        }
        Analyzer {
            target,
            epochs: ForkEpochs::new(target),
            summary: Summary::default(),
            swap_bytes,
            target_exit_ns: None,
            last_ts: 0,
            attribution: None,
            evidence: Evidence::FULL,
        }
    }

    /// Classifies with `evidence` from now on (the kernel lacks a tracepoint).
    pub fn set_evidence(&mut self, evidence: Evidence) {
        self.evidence = evidence;
    }

    /// Follows a new target (`record --follow`: the server restarted as `target`).
    /// Epochs and totals so far are kept; the new server's attribution starts off until
    /// [`Analyzer::enable_attribution`] is called for it.
    /// Returns the old server's parse-stage faults still held.
    #[must_use = "the returned records belong in the timeline"]
    pub fn retarget(&mut self, target: u32, target_swap_bytes: Option<u64>) -> Vec<Record> {
        let held = self.flush_pending();
        self.target = target;
        self.epochs.retarget(target);
        self.target_exit_ns = None;
        if let Some(b) = target_swap_bytes {
            self.swap_bytes.insert(target, b);
        }
        if let Some(a) = self.attribution.as_mut() {
            // No context of the new server yet: its faults count as unattributed.
            a.attributor = Attributor::default();
        }
        held
    }

    /// Turns attribution on (the target is a Redis server whose layout the kernel has).
    /// After [`Analyzer::retarget`], the aggregates so far are kept.
    pub fn enable_attribution(&mut self, opts: AttributionOptions) {
        if let Some(a) = self.attribution.as_mut() {
            a.attributor = Attributor::new(opts.phases, opts.key_max, opts.keys);
            return;
        }
        self.attribution = Some(AttributionState {
            attributor: Attributor::new(opts.phases, opts.key_max, opts.keys),
            total: Aggregates::new(opts.key_capacity),
            per_epoch: HashMap::new(),
            retired: Default::default(),
            fork_child: Arc::new(Attribution::phase("fork-child")),
            top_n: opts.top_n,
            key_capacity: opts.key_capacity,
            pending: Vec::new(),
        });
    }

    /// Processes a context event (what a Redis thread was doing). Returns the fault
    /// records it completes: faults taken while this command's input was parsed.
    #[must_use = "the returned records belong in the timeline"]
    pub fn process_context(&mut self, ev: &ContextEvent) -> Vec<Record> {
        self.summary.events_received += 1;
        self.summary.context_events += 1;
        self.last_ts = self.last_ts.max(ev.ts_ns);
        let Some(a) = self.attribution.as_mut() else {
            return Vec::new();
        };
        if ev.tgid != self.target {
            return Vec::new();
        }
        a.attributor.on_context(ev);
        if ev.tid != self.target || a.pending.is_empty() {
            return Vec::new();
        }
        match a.attributor.for_thread(ev.tid) {
            Some(now) if now.is_command => {
                let parse = Arc::new(Attribution {
                    stage: Some("parse"),
                    ..(*now).clone()
                });
                a.release(Some(&parse))
            }
            // Still reading input, or the event loop doing something else between two
            // reads of the same command (cron, before-sleep, allocator work): the faults
            // wait for the command (bounded by MAX_PENDING).
            _ => Vec::new(),
        }
    }

    /// Writes out faults still waiting for their command (end of the run).
    pub fn flush_pending(&mut self) -> Vec<Record> {
        self.attribution
            .as_mut()
            .map(|a| a.release(None))
            .unwrap_or_default()
    }

    /// Labels the epoch of fork child `child` (reason and Redis's own numbers).
    pub fn label_epoch(
        &mut self,
        child: u32,
        reason: Option<String>,
        redis: Option<crate::fork_epochs::EpochRedisInfo>,
    ) {
        if let Some(e) = self.epochs.epoch_of_child_mut(child) {
            if reason.is_some() {
                e.reason = reason;
            }
            if redis.is_some() {
                e.redis = redis;
            }
        }
    }

    /// Mutable access to Redis's view of the epoch of `child` (to add numbers later).
    pub fn epoch_redis_mut(
        &mut self,
        child: u32,
    ) -> Option<&mut crate::fork_epochs::EpochRedisInfo> {
        let e = self.epochs.epoch_of_child_mut(child)?;
        Some(e.redis.get_or_insert_with(Default::default))
    }

    /// Registers a fork child that was running before tracing started.
    pub fn adopt_running_child(&mut self, child: u32, ts: u64) -> u32 {
        self.epochs.adopt_running_child(child, ts)
    }

    /// Processes one event; returns the record to write, or `None` for unknown kinds.
    pub fn process(&mut self, ev: &Event) -> Option<Record> {
        self.summary.events_received += 1;
        self.last_ts = self.last_ts.max(ev.ts_ns);
        let record = match ev.kind {
            kind::FAULT => return self.fault(ev),
            kind::FORK => {
                self.retire_epoch_tables(ev.ts_ns);
                let child = ev.addr as u32;
                let epoch = self.epochs.on_fork(ev.tgid, ev.tid, child, ev.ts_ns);
                if epoch.is_some() {
                    self.summary.forks += 1;
                }
                // The child starts with the parent's swap entries.
                if let Some(&b) = self.swap_bytes.get(&ev.tgid) {
                    self.swap_bytes.insert(child, b);
                }
                Record::Fork {
                    ts_ns: ev.ts_ns,
                    pid: ev.tgid,
                    tid: ev.tid,
                    child_pid: child,
                    epoch,
                }
            }
            kind::FORK_RET => {
                // Only the libc `fork()` call is timed (uprobe/uretprobe): timing the
                // clone syscall would need a syscall tracepoint, which puts every syscall
                // of every process on the slow path (about 70 ns each, measured).
                debug_assert!(ev.flags & fork_ret_flags::LIBC_CALL != 0);
                let ret = ev.arg as i64;
                self.epochs
                    .on_fork_call_return(ev.tid, ev.ts_ns, ret, ev.duration_ns);
                Record::ForkReturn {
                    ts_ns: ev.ts_ns,
                    pid: ev.tgid,
                    tid: ev.tid,
                    ret,
                    duration_ns: ev.duration_ns,
                }
            }
            kind::EXIT => {
                let process_exit = ev.flags & exit_flags::GROUP_DEAD != 0;
                if ev.tgid == self.target
                    && let Some(a) = self.attribution.as_mut()
                {
                    a.attributor.on_thread_exit(ev.tid);
                }
                let epoch = if process_exit {
                    if ev.tgid == self.target {
                        self.target_exit_ns = Some(ev.ts_ns);
                    }
                    self.epochs.on_exit(ev.tgid, ev.ts_ns)
                } else {
                    None
                };
                Record::Exit {
                    ts_ns: ev.ts_ns,
                    pid: ev.tgid,
                    tid: ev.tid,
                    process_exit,
                    epoch,
                }
            }
            kind::SWAP_ENTS => self.swap_ents(ev),
            kind::SWAP_WRITE => {
                self.summary.swap.writes_on_traced_threads += 1;
                Record::SwapWrite {
                    ts_ns: ev.ts_ns,
                    pid: ev.tgid,
                    tid: ev.tid,
                    pfn: ev.addr,
                }
            }
            _ => {
                self.summary.unknown_events += 1;
                return None;
            }
        };
        Some(record)
    }

    fn fault(&mut self, ev: &Event) -> Option<Record> {
        let kind = if self.evidence == Evidence::FULL {
            classify(ev.flags, ev.arg)
        } else {
            let shares = self.epochs.shares_pages(ev.tgid, ev.ts_ns);
            classify_with(ev.flags, ev.arg, self.evidence, shares)
        };
        let (role, epoch) = self.epochs.assign(ev.tgid, ev.ts_ns, kind);
        let s = &mut self.summary;
        s.faults.add(kind);
        match role {
            Role::Parent => s.by_role.parent.add(kind),
            Role::Child => s.by_role.child.add(kind),
        }
        let count = |bit: u32| u64::from(ev.flags & bit != 0);
        s.huge_faults += u64::from(is_huge(ev.flags));
        s.major_faults += count(ff::MAJOR);
        s.kernel_mode_faults += count(ff::KERNEL_MODE);
        s.incomplete_faults += count(ff::INCOMPLETE);
        s.faults_with_reclaim += count(ff::RECLAIM);
        let record = Record::Fault {
            ts_ns: ev.ts_ns,
            pid: ev.tgid,
            tid: ev.tid,
            kind,
            addr: ev.addr,
            role,
            epoch,
            error_code: ev.arg,
            latency_ns: ev.duration_ns,
            flags: ev.flags,
            attribution: None,
        };
        let Some(a) = self.attribution.as_mut() else {
            return Some(record);
        };
        let at = match role {
            Role::Child => Some(Arc::clone(&a.fork_child)),
            Role::Parent if ev.tgid == self.target => a.attributor.for_thread(ev.tid),
            Role::Parent => None,
        };
        if let Some(parsing) = at.as_ref().filter(|at| at.is_parsing())
            && ev.tid == self.target
        {
            let parsing = Arc::clone(parsing);
            if a.pending.len() >= MAX_PENDING {
                // Bounded: past the cap a parse-stage fault stays `networking-read`.
                return Some(a.attribute(record, kind, epoch, Some(parsing)));
            }
            a.pending.push(PendingFault {
                record,
                kind,
                epoch,
                parsing,
            });
            return None;
        }
        Some(a.attribute(record, kind, epoch, at))
    }

    fn swap_ents(&mut self, ev: &Event) -> Record {
        let bytes = ev.arg;
        let previous = self.swap_bytes.insert(ev.tgid, bytes);
        let delta_pages = previous.map(|p| (bytes as i64 - p as i64) / PAGE_SIZE as i64);
        if let Some(d) = delta_pages {
            let swap = &mut self.summary.swap;
            if d > 0 {
                swap.pages_out += d as u64;
            } else if ev.flags & swap_flags::IN_FAULT != 0 {
                swap.pages_in += d.unsigned_abs();
            } else {
                swap.pages_discarded += d.unsigned_abs();
            }
        }
        Record::SwapEnts {
            ts_ns: ev.ts_ns,
            pid: ev.tgid,
            tid: ev.tid,
            bytes,
            delta_pages,
        }
    }

    /// Whether the target's whole process has exited.
    pub fn target_exited(&self) -> bool {
        self.target_exit_ns.is_some()
    }

    /// Turns the key sketches of epochs that ended at least [`RETIRE_AFTER_NS`] before
    /// `now` into their final report. The sketches are what takes memory, and a server
    /// saving every few seconds has thousands of epochs in a long trace; called at each
    /// fork, so at most the open epochs and the last one keep live tables.
    fn retire_epoch_tables(&mut self, now: u64) {
        let Some(a) = self.attribution.as_mut() else {
            return;
        };
        let epochs = self.epochs.epochs_mut();
        let done: Vec<u32> = a
            .per_epoch
            .keys()
            .copied()
            .filter(|&id| {
                let ended = epochs
                    .get(id as usize)
                    .and_then(|e| e.end_ns)
                    .is_some_and(|end| end.saturating_add(RETIRE_AFTER_NS) <= now);
                ended && !a.pending.iter().any(|p| p.epoch == Some(id))
            })
            .collect();
        for id in done {
            if let (Some(agg), Some(e)) = (a.per_epoch.remove(&id), epochs.get_mut(id as usize)) {
                e.attribution = Some(agg.report(a.top_n));
                a.retired.insert(id);
            }
        }
    }

    /// Ends the run at `end_ts`: open epochs are closed there.
    pub fn finish(mut self, end_ts: u64) -> (Vec<Epoch>, Summary) {
        self.epochs.close_all(end_ts.max(self.last_ts));
        if let Some(a) = &self.attribution {
            self.summary.attribution = Some(a.total.report(a.top_n));
            for e in self.epochs.epochs_mut() {
                if a.retired.contains(&e.id) {
                    continue;
                }
                e.attribution = Some(
                    a.per_epoch
                        .get(&e.id)
                        .map(|agg| agg.report(a.top_n))
                        .unwrap_or_default(),
                );
            }
        }
        (self.epochs.epochs().to_vec(), self.summary)
    }

    /// Summary so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }
}

impl AttributionState {
    /// Counts a fault and attaches its attribution.
    fn attribute(
        &mut self,
        mut record: Record,
        kind: FaultKind,
        epoch: Option<u32>,
        at: Option<Arc<Attribution>>,
    ) -> Record {
        self.total.add(kind, at.as_deref());
        // A fault of an epoch whose tables are retired (it began before the epoch ended
        // and completed after the next fork, RETIRE_AFTER_NS later) counts in the run's
        // tables only.
        if let Some(id) = epoch.filter(|id| !self.retired.contains(id)) {
            let cap = self.key_capacity;
            self.per_epoch
                .entry(id)
                .or_insert_with(|| Aggregates::new(cap))
                .add(kind, at.as_deref());
        }
        if let Record::Fault { attribution, .. } = &mut record {
            *attribution = at;
        }
        record
    }

    /// Releases the pending parse-stage faults, attributed to `command` (or left as
    /// `networking-read`).
    fn release(&mut self, command: Option<&Arc<Attribution>>) -> Vec<Record> {
        let pending = std::mem::take(&mut self.pending);
        pending
            .into_iter()
            .map(|p| {
                let at = command.cloned().unwrap_or(p.parsing);
                self.attribute(p.record, p.kind, p.epoch, Some(at))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u32 = 4242;
    const C: u32 = 4243;

    fn ev(kind: u32, ts: u64, tgid: u32, flags: u32, addr: u64, arg: u64) -> Event {
        Event {
            ts_ns: ts,
            kind,
            tgid,
            tid: tgid,
            flags,
            addr,
            arg,
            duration_ns: 0,
        }
    }

    /// The stream the kernel side emits for: touch 2 pages, fork, parent writes 1 page,
    /// child exits, parent writes the other page, one page swapped out and read back.
    fn recorded_stream() -> Vec<Event> {
        let a = 0x7f00_0000_0000;
        let b = a + 4096;
        vec![
            ev(kind::FAULT, 10, T, ff::ALLOC | ff::ANON_RSS, a, 0x6),
            ev(kind::FAULT, 20, T, ff::ALLOC | ff::ANON_RSS, b, 0x6),
            ev(kind::FORK, 30, T, 0, C as u64, 0x1200011),
            Event {
                duration_ns: 77,
                ..ev(kind::FORK_RET, 25, T, 0, 0, C as u64)
            },
            ev(kind::FAULT, 40, T, ff::ALLOC, a, 0x7),
            ev(kind::FAULT, 45, C, ff::ALLOC, 0x7ffd_0000_0000, 0x7),
            ev(kind::EXIT, 50, C, exit_flags::GROUP_DEAD, 0, 0),
            ev(kind::FAULT, 60, T, 0, b, 0x7),
            ev(kind::SWAP_ENTS, 70, T, swap_flags::CURR, 0, 4096),
            ev(
                kind::SWAP_ENTS,
                80,
                T,
                swap_flags::CURR | swap_flags::IN_FAULT,
                0,
                0,
            ),
            ev(kind::FAULT, 79, T, ff::SWAP_ENTS | ff::ANON_RSS, a, 0x4),
            ev(kind::EXIT, 90, T, exit_flags::GROUP_DEAD, 0, 0),
        ]
    }

    #[test]
    fn recorded_stream_yields_exact_counts_epochs_and_sides() {
        let mut an = Analyzer::new(T, Some(0));
        let records: Vec<_> = recorded_stream()
            .iter()
            .filter_map(|e| an.process(e))
            .collect();
        assert_eq!(records.len(), 12);
        assert!(an.target_exited());
        let (epochs, s) = an.finish(100);
        assert_eq!(
            s.faults,
            KindCounts {
                cow_copy: 2,
                wp_reuse: 1,
                swap_in: 1,
                first_touch: 2,
                other: 0
            }
        );
        assert_eq!(s.by_role.child.cow_copy, 1);
        assert_eq!(s.by_role.parent.cow_copy, 1);
        assert_eq!(s.forks, 1);
        assert_eq!(
            (s.swap.pages_out, s.swap.pages_in, s.swap.pages_discarded),
            (1, 1, 0)
        );
        assert_eq!(epochs.len(), 1);
        let e = &epochs[0];
        assert_eq!((e.child_pid, e.start_ns, e.end_ns), (C, 30, Some(50)));
        assert_eq!(e.fork_call_ns, Some(77));
        assert_eq!(e.faults.parent.cow_copy, 1);
        assert_eq!(e.faults.child.cow_copy, 1);
        // the reuse after the child exited belongs to no epoch
        let reuse = records.iter().find(|r| {
            matches!(
                r,
                Record::Fault {
                    kind: FaultKind::WpReuse,
                    ..
                }
            )
        });
        assert!(matches!(
            reuse,
            Some(Record::Fault {
                epoch: None,
                role: Role::Parent,
                ..
            })
        ));
    }

    #[test]
    fn unknown_kinds_are_counted_not_fatal() {
        let mut an = Analyzer::new(T, None);
        assert_eq!(an.process(&ev(99, 1, T, 0, 0, 0)), None);
        assert_eq!(an.summary().unknown_events, 1);
    }

    #[test]
    fn swap_deltas_need_a_baseline() {
        let mut an = Analyzer::new(T, None);
        let first = an.process(&ev(kind::SWAP_ENTS, 1, T, 0, 0, 8192)).unwrap();
        assert!(matches!(
            first,
            Record::SwapEnts {
                delta_pages: None,
                ..
            }
        ));
        let second = an.process(&ev(kind::SWAP_ENTS, 2, T, 0, 0, 0)).unwrap();
        assert!(matches!(
            second,
            Record::SwapEnts {
                delta_pages: Some(-2),
                ..
            }
        ));
        assert_eq!(an.summary().swap.pages_discarded, 2);
    }

    /// Two BGSAVE-like epochs with SET faults on key `k`; the second fork comes `gap`
    /// after the first child's exit. Returns the finished epochs.
    fn two_epochs_with_sets(gap: u64) -> Vec<Epoch> {
        let mut an = Analyzer::new(T, None);
        an.enable_attribution(AttributionOptions {
            phases: Vec::new(),
            key_max: 128,
            top_n: 5,
            key_capacity: 1000,
            keys: crate::attribution::key_privacy::KeyPolicy::Full,
        });
        let mut set = ContextEvent::zeroed();
        set.ts_ns = 1;
        set.tgid = T;
        set.tid = T;
        set.phase = tracer_common::phase::COMMAND;
        set.name[..3].copy_from_slice(b"set");
        set.name_len = 3;
        set.key[..1].copy_from_slice(b"k");
        set.key_captured = 1;
        set.key_len = 1;
        set.argc = 3;
        set.flags = tracer_common::context_flags::HAS_KEY;
        assert!(an.process_context(&set).is_empty());
        let child2 = C + 1;
        let second = 50 + gap;
        let stream = [
            ev(kind::FORK, 10, T, 0, C as u64, 0),
            ev(kind::FAULT, 20, T, ff::ALLOC, 0x1000, 0x7),
            ev(kind::FAULT, 21, T, ff::ALLOC, 0x2000, 0x7),
            ev(kind::EXIT, 50, C, exit_flags::GROUP_DEAD, 0, 0),
            ev(kind::FORK, second, T, 0, child2 as u64, 0),
            ev(kind::FAULT, second + 10, T, ff::ALLOC, 0x3000, 0x7),
            // dated inside the first epoch, completed after the second fork
            ev(kind::FAULT, 30, T, ff::ALLOC, 0x4000, 0x7),
        ];
        for e in &stream {
            an.process(e);
        }
        an.finish(second + 100).0
    }

    #[test]
    fn ended_epochs_keep_their_tables_as_a_report() {
        let kept = two_epochs_with_sets(10);
        let retired = two_epochs_with_sets(RETIRE_AFTER_NS);
        let cow = |e: &Epoch| {
            let a = e.attribution.as_ref().expect("tables");
            (a.by_activity[0].activity.clone(), a.top_keys_cow[0].pages)
        };
        // Within the grace period the late fault still lands in the first epoch.
        assert_eq!(cow(&kept[0]), ("SET".to_string(), 3));
        // Retired at the second fork: the report is what the tables held then.
        assert_eq!(cow(&retired[0]), ("SET".to_string(), 2));
        assert_eq!(cow(&kept[1]), ("SET".to_string(), 1));
        assert_eq!(cow(&retired[1]), ("SET".to_string(), 1));
        // The epoch's own fault counts never depend on the tables.
        assert_eq!(retired[0].faults.parent.cow_copy, 3);
    }

    #[test]
    fn open_epoch_is_closed_at_trace_end() {
        let mut an = Analyzer::new(T, None);
        an.process(&ev(kind::FORK, 5, T, 0, C as u64, 0));
        let (epochs, _) = an.finish(50);
        assert_eq!(epochs[0].end_ns, Some(50));
        assert_eq!(epochs[0].end_reason, Some("trace_end"));
    }
}
