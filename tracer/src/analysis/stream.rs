//! The pure core: turns the kernel's event stream into timeline records, fork epochs and
//! a summary. No I/O; unit-tested with recorded streams.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;
use serde_json::Value;
use tracer_common::{
    ContextEvent, ExitEvent, FaultEvent, ForkEvent, SwapLevelEvent, exit_flags, fault_flags as ff,
    swap_flags,
};

use crate::{
    analysis::classify::{Evidence, FaultKind, classify, classify_with, is_huge},
    analysis::counts::KindCounts,
    analysis::fork_epochs::{Epoch, ForkEpochs, Role},
    attribution::{
        aggregate::{AggregateReport, Aggregates},
        context::{Attribution, Attributor, PhaseRange, ThreadContext},
        pending::PendingFaults,
    },
    json_fields::{i64_at, str_at, u32_at, u64_at},
    kernel::events::KernelEvent,
};

/// Page size used to turn byte counters into pages.
pub const PAGE_SIZE: u64 = 4096;

/// One line of the timeline, derived from one kernel event. The kinds `export` reads back
/// carry named types with a lenient `from_json` ([`Fork`], [`ForkReturn`], [`SwapLevel`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimelineEvent {
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
    Fork(Fork),
    /// A libc `fork()` call returned in a traced process.
    ForkReturn(ForkReturn),
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
    SwapLevel(SwapLevel),
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

impl TimelineEvent {
    /// Timestamp of the record.
    pub fn ts_ns(&self) -> u64 {
        match self {
            TimelineEvent::Fault { ts_ns, .. }
            | TimelineEvent::Fork(Fork { ts_ns, .. })
            | TimelineEvent::ForkReturn(ForkReturn { ts_ns, .. })
            | TimelineEvent::Exit { ts_ns, .. }
            | TimelineEvent::SwapLevel(SwapLevel { ts_ns, .. })
            | TimelineEvent::SwapWrite { ts_ns, .. } => *ts_ns,
        }
    }
}

/// The target or a child forked (`"kind": "fork"` in a timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// Time of the fork (`sched_process_fork`).
    pub ts_ns: u64,
    /// Forking process.
    pub pid: u32,
    /// Forking thread.
    pub tid: u32,
    /// New process; 0 when a timeline read back does not name it (no child is PID 0).
    pub child_pid: u32,
    /// Epoch opened by this fork (forks of the target only).
    pub epoch: Option<u32>,
}

/// A libc `fork()` call returned in a traced process (`"kind": "fork_return"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkReturn {
    /// Call entry time.
    pub ts_ns: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
    /// Return value (the child's pid in the caller's PID namespace, or -1); 0 when a
    /// timeline read back does not give it (the parent never sees 0).
    pub ret: i64,
    /// Call duration; 0 when a timeline read back does not give it.
    pub duration_ns: u64,
    /// Epoch of the fork made inside this call.
    pub epoch: Option<u32>,
}

/// Pages in swap of a traced process changed (`"kind": "swap_level"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapLevel {
    /// Time of the change.
    pub ts_ns: u64,
    /// Owner of the memory.
    pub pid: u32,
    /// Thread that made the change.
    pub tid: u32,
    /// New amount in swap, bytes (`swap_bytes` in a timeline).
    pub bytes: u64,
    /// Change in pages, when the previous value is known.
    pub delta_pages: Option<i64>,
}

/// Time, process and thread of an element of a timeline's `events` whose `kind` is
/// `kind`; `None` for another kind or without `ts_ns` or `pid` (a missing `tid` is the
/// pid: the process's main thread).
fn event_head(v: &Value, kind: &str) -> Option<(u64, u32, u32)> {
    if str_at(v, "kind") != Some(kind) {
        return None;
    }
    let (ts_ns, pid) = (u64_at(v, "ts_ns")?, u32_at(v, "pid")?);
    Some((ts_ns, pid, u32_at(v, "tid").unwrap_or(pid)))
}

impl Fork {
    /// A `fork` element of a timeline's `events`, read leniently: `None` for another
    /// kind or without `ts_ns` or `pid`; an absent, null or mistyped optional field is
    /// unknown.
    pub fn from_json(v: &Value) -> Option<Fork> {
        let (ts_ns, pid, tid) = event_head(v, "fork")?;
        Some(Fork {
            ts_ns,
            pid,
            tid,
            child_pid: u32_at(v, "child_pid").unwrap_or(0),
            epoch: u32_at(v, "epoch"),
        })
    }
}

impl ForkReturn {
    /// A `fork_return` element of a timeline's `events`, read leniently: `None` for
    /// another kind or without `ts_ns` or `pid`; an absent, null or mistyped optional
    /// field is unknown.
    pub fn from_json(v: &Value) -> Option<ForkReturn> {
        let (ts_ns, pid, tid) = event_head(v, "fork_return")?;
        Some(ForkReturn {
            ts_ns,
            pid,
            tid,
            ret: i64_at(v, "ret").unwrap_or(0),
            duration_ns: u64_at(v, "duration_ns").unwrap_or(0),
            epoch: u32_at(v, "epoch"),
        })
    }
}

impl SwapLevel {
    /// A `swap_level` element of a timeline's `events`, read leniently: `None` for
    /// another kind or without `ts_ns`, `pid` or `swap_bytes` (a level is all it says);
    /// an absent, null or mistyped `delta_pages` is unknown.
    pub fn from_json(v: &Value) -> Option<SwapLevel> {
        let (ts_ns, pid, tid) = event_head(v, "swap_level")?;
        Some(SwapLevel {
            ts_ns,
            pid,
            tid,
            bytes: u64_at(v, "swap_bytes")?,
            delta_pages: i64_at(v, "delta_pages"),
        })
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
    /// What the kernel's ranges stand for.
    pub ranges: Vec<PhaseRange>,
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
    /// Epochs below this id were forgotten: their faults count in the run's tables only.
    first_epoch: u32,
    fork_child: Arc<Attribution>,
    top_n: usize,
    key_capacity: usize,
    /// Main-thread faults taken while Redis read a client's command before its key was
    /// parsed, waiting for that client's command.
    pending: PendingFaults<PendingFault>,
}

#[derive(Debug)]
struct PendingFault {
    record: TimelineEvent,
    kind: FaultKind,
    epoch: Option<u32>,
}

/// Parse-stage faults held at most; past this they get their client's fallback at once.
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
    /// [`Analyzer::enable_attribution`] is called for it. The old server's waiting faults
    /// are written out.
    pub fn retarget(
        &mut self,
        target: u32,
        target_swap_bytes: Option<u64>,
        out: &mut Vec<TimelineEvent>,
    ) {
        self.flush_pending(out);
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
    }

    /// Turns attribution on (the target is a Redis server whose layout the kernel has).
    /// After [`Analyzer::retarget`], the aggregates so far are kept.
    pub fn enable_attribution(&mut self, opts: AttributionOptions) {
        let attributor = Attributor::new(opts.ranges, opts.key_max, opts.keys);
        if let Some(a) = self.attribution.as_mut() {
            a.attributor = attributor;
            return;
        }
        self.attribution = Some(AttributionState {
            attributor,
            total: Aggregates::new(opts.key_capacity),
            per_epoch: HashMap::new(),
            retired: Default::default(),
            first_epoch: 0,
            fork_child: Arc::new(Attribution::phase("fork-child")),
            top_n: opts.top_n,
            key_capacity: opts.key_capacity,
            pending: PendingFaults::new(MAX_PENDING),
        });
    }

    /// Writes out faults still waiting for their client's command (end of the run).
    pub fn flush_pending(&mut self, out: &mut Vec<TimelineEvent>) {
        if let Some(a) = self.attribution.as_mut() {
            let released = a.pending.drain_all();
            a.release(released, out);
        }
    }

    /// Labels the epoch `id` with why Redis forked and Redis's own numbers.
    pub fn label_epoch(
        &mut self,
        id: u32,
        reason: Option<String>,
        redis: Option<crate::analysis::fork_epochs::EpochRedisInfo>,
    ) {
        if let Some(e) = self.epochs.get_mut(id) {
            if reason.is_some() {
                e.reason = reason;
            }
            if let Some(r) = redis {
                let mine = e.redis.get_or_insert_with(Default::default);
                mine.merge(r);
            }
        }
    }

    /// The child of epoch `id`.
    pub fn epoch_child(&self, id: u32) -> Option<u32> {
        self.epochs.get(id).map(|e| e.child_pid)
    }

    /// Mutable access to Redis's view of the epoch of `child` (to add numbers later).
    pub fn epoch_redis_mut(
        &mut self,
        child: u32,
    ) -> Option<&mut crate::analysis::fork_epochs::EpochRedisInfo> {
        let e = self.epochs.epoch_of_child_mut(child)?;
        Some(e.redis.get_or_insert_with(Default::default))
    }

    /// Registers a fork child that was running before tracing started.
    pub fn adopt_running_child(&mut self, child: u32, ts: u64) -> u32 {
        self.epochs.adopt_running_child(child, ts)
    }

    /// Processes one kernel event; appends the records it yields to `out` (none, one, or
    /// several when it releases faults that waited for a command).
    pub fn process(&mut self, ev: &KernelEvent, out: &mut Vec<TimelineEvent>) {
        self.summary.events_received += 1;
        self.last_ts = self.last_ts.max(ev.header().ts_ns);
        match ev {
            KernelEvent::Fault(f) => self.fault(f, out),
            KernelEvent::Fork(f) => out.push(self.fork(f)),
            KernelEvent::ForkCall(c) => {
                let epoch = self.epochs.on_fork_call_return(
                    c.header.tid,
                    c.header.ts_ns,
                    c.ret,
                    c.duration_ns,
                );
                out.push(TimelineEvent::ForkReturn(ForkReturn {
                    ts_ns: c.header.ts_ns,
                    pid: c.header.tgid,
                    tid: c.header.tid,
                    ret: c.ret,
                    duration_ns: c.duration_ns,
                    epoch,
                }));
            }
            KernelEvent::Exit(e) => out.push(self.exit(e)),
            KernelEvent::SwapLevel(s) => out.push(self.swap_level(s)),
            KernelEvent::SwapWrite(w) => {
                self.summary.swap.writes_on_traced_threads += 1;
                out.push(TimelineEvent::SwapWrite {
                    ts_ns: w.header.ts_ns,
                    pid: w.header.tgid,
                    tid: w.header.tid,
                    pfn: w.pfn,
                });
            }
            KernelEvent::Context(c) => self.context(c, out),
            KernelEvent::ClientGone(g) => {
                if g.header.tgid == self.target
                    && let Some(a) = self.attribution.as_mut()
                {
                    let released = a.pending.client_gone(g.client);
                    a.release(released, out);
                }
            }
            KernelEvent::Calibration(_) => {}
            KernelEvent::Unknown(_) => self.summary.unknown_events += 1,
        }
    }

    fn context(&mut self, ev: &ContextEvent, out: &mut Vec<TimelineEvent>) {
        self.summary.context_events += 1;
        let Some(a) = self.attribution.as_mut() else {
            return;
        };
        if ev.header.tgid != self.target {
            return;
        }
        let resolved = a.attributor.on_context(ev);
        if let Some(ThreadContext::Awaiting(w)) = a.attributor.for_thread(ev.header.tid) {
            let earlier = a.pending.restarted(w);
            a.release(earlier, out);
        }
        if let Some(r) = resolved {
            let released = a.pending.resolve(&r);
            a.release(released, out);
        }
    }

    fn fork(&mut self, f: &ForkEvent) -> TimelineEvent {
        self.retire_epoch_tables(f.header.ts_ns);
        let (parent, child) = (f.header.tgid, f.child_pid);
        let epoch = self
            .epochs
            .on_fork(parent, f.header.tid, child, f.header.ts_ns);
        if epoch.is_some() {
            self.summary.forks += 1;
        }
        // The child starts with the parent's swap entries.
        if let Some(&b) = self.swap_bytes.get(&parent) {
            self.swap_bytes.insert(child, b);
        }
        TimelineEvent::Fork(Fork {
            ts_ns: f.header.ts_ns,
            pid: parent,
            tid: f.header.tid,
            child_pid: child,
            epoch,
        })
    }

    fn exit(&mut self, e: &ExitEvent) -> TimelineEvent {
        let (pid, tid) = (e.header.tgid, e.header.tid);
        let process_exit = e.header.flags & exit_flags::GROUP_DEAD != 0;
        if pid == self.target
            && let Some(a) = self.attribution.as_mut()
        {
            a.attributor.on_thread_exit(tid);
        }
        let epoch = if process_exit {
            if pid == self.target {
                self.target_exit_ns = Some(e.header.ts_ns);
            } else {
                // A child's swap level: it has no more to report.
                self.swap_bytes.remove(&pid);
            }
            self.epochs.on_exit(pid, e.header.ts_ns)
        } else {
            None
        };
        TimelineEvent::Exit {
            ts_ns: e.header.ts_ns,
            pid,
            tid,
            process_exit,
            epoch,
        }
    }

    fn fault(&mut self, ev: &FaultEvent, out: &mut Vec<TimelineEvent>) {
        let (pid, tid, ts, flags) = (
            ev.header.tgid,
            ev.header.tid,
            ev.header.ts_ns,
            ev.header.flags,
        );
        let kind = if self.evidence == Evidence::FULL {
            classify(flags, ev.error_code)
        } else {
            let shares = self.epochs.shares_pages(pid, ts);
            classify_with(flags, ev.error_code, self.evidence, shares)
        };
        let (role, epoch) = self.epochs.assign(pid, ts, kind);
        self.count(kind, role, flags);
        let record = TimelineEvent::Fault {
            ts_ns: ts,
            pid,
            tid,
            kind,
            addr: ev.addr,
            role,
            epoch,
            error_code: ev.error_code,
            latency_ns: ev.latency_ns,
            flags,
            attribution: None,
        };
        let Some(a) = self.attribution.as_mut() else {
            out.push(record);
            return;
        };
        let context = match role {
            Role::Child => Some(ThreadContext::Ready(Arc::clone(&a.fork_child))),
            Role::Parent if pid == self.target => a.attributor.for_thread(tid).cloned(),
            Role::Parent => None,
        };
        let at = match context {
            Some(ThreadContext::Awaiting(w)) => {
                let fallback = Arc::clone(&w.fallback);
                match a.pending.push(
                    &w,
                    PendingFault {
                        record,
                        kind,
                        epoch,
                    },
                ) {
                    Ok(()) => return,
                    // Bounded: past the cap a fault gets its client's fallback at once.
                    Err(p) => {
                        out.push(a.attribute(p.record, p.kind, p.epoch, Some(fallback)));
                        return;
                    }
                }
            }
            Some(ThreadContext::Ready(at)) => Some(at),
            None => None,
        };
        out.push(a.attribute(record, kind, epoch, at));
    }

    fn count(&mut self, kind: FaultKind, role: Role, flags: u32) {
        let s = &mut self.summary;
        s.faults.add(kind);
        match role {
            Role::Parent => s.by_role.parent.add(kind),
            Role::Child => s.by_role.child.add(kind),
        }
        let count = |bit: u32| u64::from(flags & bit != 0);
        s.huge_faults += u64::from(is_huge(flags));
        s.major_faults += count(ff::MAJOR);
        s.kernel_mode_faults += count(ff::KERNEL_MODE);
        s.incomplete_faults += count(ff::INCOMPLETE);
        s.faults_with_reclaim += count(ff::RECLAIM);
    }

    fn swap_level(&mut self, ev: &SwapLevelEvent) -> TimelineEvent {
        let (pid, bytes) = (ev.header.tgid, ev.bytes);
        let previous = self.swap_bytes.insert(pid, bytes);
        let delta_pages = previous.map(|p| (bytes as i64 - p as i64) / PAGE_SIZE as i64);
        if let Some(d) = delta_pages {
            let swap = &mut self.summary.swap;
            if d > 0 {
                swap.pages_out += d as u64;
            } else if ev.header.flags & swap_flags::IN_FAULT != 0 {
                swap.pages_in += d.unsigned_abs();
            } else {
                swap.pages_discarded += d.unsigned_abs();
            }
        }
        TimelineEvent::SwapLevel(SwapLevel {
            ts_ns: ev.header.ts_ns,
            pid,
            tid: ev.header.tid,
            bytes,
            delta_pages,
        })
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
        let epochs = &mut self.epochs;
        let done: Vec<u32> = a
            .per_epoch
            .keys()
            .copied()
            .filter(|&id| {
                let ended = epochs
                    .get(id)
                    .and_then(|e| e.end_ns)
                    .is_some_and(|end| end.saturating_add(RETIRE_AFTER_NS) <= now);
                ended && !a.pending.any(|p| p.epoch == Some(id))
            })
            .collect();
        for id in done {
            if let (Some(agg), Some(e)) = (a.per_epoch.remove(&id), epochs.get_mut(id)) {
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

    /// Fork epochs so far (those kept).
    pub fn epochs(&self) -> &[Epoch] {
        self.epochs.epochs()
    }

    /// Forgets all but the last `keep` closed epochs before the oldest open one, with
    /// their tables (`serve`: memory must not grow with the number of forks).
    pub fn forget_old_epochs(&mut self, keep: usize) {
        let first = self.epochs.forget_closed(keep);
        if let Some(a) = self.attribution.as_mut() {
            a.per_epoch.retain(|&id, _| id >= first);
            a.retired.retain(|&id| id >= first);
            a.first_epoch = first;
        }
    }

    /// The run's attribution tables so far, `top` rows each (attribution on).
    pub fn tables(&self, top: usize) -> Option<AggregateReport> {
        self.attribution.as_ref().map(|a| a.total.report(top))
    }
}

impl AttributionState {
    /// Counts a fault and attaches its attribution.
    fn attribute(
        &mut self,
        mut record: TimelineEvent,
        kind: FaultKind,
        epoch: Option<u32>,
        at: Option<Arc<Attribution>>,
    ) -> TimelineEvent {
        let in_allocator =
            matches!(record, TimelineEvent::Fault { flags, .. } if flags & ff::IN_ALLOCATOR != 0);
        self.total.add(kind, at.as_deref(), in_allocator);
        // A fault of an epoch whose tables are retired (it began before the epoch ended
        // and completed after the next fork, RETIRE_AFTER_NS later) counts in the run's
        // tables only.
        if let Some(id) = epoch.filter(|id| *id >= self.first_epoch && !self.retired.contains(id)) {
            let cap = self.key_capacity;
            self.per_epoch
                .entry(id)
                .or_insert_with(|| Aggregates::new(cap))
                .add(kind, at.as_deref(), in_allocator);
        }
        if let TimelineEvent::Fault { attribution, .. } = &mut record {
            *attribution = at;
        }
        record
    }

    /// Writes out released waiting faults with the attribution each got.
    fn release(
        &mut self,
        released: Vec<(PendingFault, Arc<Attribution>)>,
        out: &mut Vec<TimelineEvent>,
    ) {
        for (p, at) in released {
            out.push(self.attribute(p.record, p.kind, p.epoch, Some(at)));
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{
        ClientGoneEvent, ForkCallEvent, Header, SwapLevelEvent, context_flags, kind, phase,
    };

    use super::*;

    const T: u32 = 4242;
    const C: u32 = 4243;

    fn h(kind: u32, ts: u64, tgid: u32, flags: u32) -> Header {
        Header {
            ts_ns: ts,
            kind,
            tgid,
            tid: tgid,
            flags,
        }
    }

    fn fault(ts: u64, tgid: u32, flags: u32, addr: u64, error_code: u64) -> KernelEvent {
        KernelEvent::Fault(FaultEvent {
            header: h(kind::FAULT, ts, tgid, flags),
            addr,
            error_code,
            latency_ns: 0,
        })
    }

    fn fork(ts: u64, child: u32) -> KernelEvent {
        KernelEvent::Fork(ForkEvent {
            header: h(kind::FORK, ts, T, 0),
            child_pid: child,
            _pad: 0,
            clone_flags: 0x1200011,
        })
    }

    fn exit(ts: u64, tgid: u32) -> KernelEvent {
        KernelEvent::Exit(ExitEvent {
            header: h(kind::EXIT, ts, tgid, exit_flags::GROUP_DEAD),
        })
    }

    fn swap(ts: u64, flags: u32, bytes: u64) -> KernelEvent {
        KernelEvent::SwapLevel(SwapLevelEvent {
            header: h(kind::SWAP_LEVEL, ts, T, flags),
            bytes,
        })
    }

    fn run(an: &mut Analyzer, events: &[KernelEvent]) -> Vec<TimelineEvent> {
        let mut out = Vec::new();
        for e in events {
            an.process(e, &mut out);
        }
        out
    }

    /// The stream the kernel side emits for: touch 2 pages, fork, parent writes 1 page,
    /// child exits, parent writes the other page, one page swapped out and read back.
    fn recorded_stream() -> Vec<KernelEvent> {
        let a = 0x7f00_0000_0000;
        let b = a + 4096;
        vec![
            fault(10, T, ff::ALLOC | ff::ANON_RSS, a, 0x6),
            fault(20, T, ff::ALLOC | ff::ANON_RSS, b, 0x6),
            fork(30, C),
            KernelEvent::ForkCall(ForkCallEvent {
                header: h(kind::FORK_CALL, 25, T, 0),
                ret: C as i64,
                duration_ns: 77,
                ..ForkCallEvent::default()
            }),
            fault(40, T, ff::ALLOC, a, 0x7),
            fault(45, C, ff::ALLOC, 0x7ffd_0000_0000, 0x7),
            exit(50, C),
            fault(60, T, 0, b, 0x7),
            swap(70, swap_flags::CURR, 4096),
            swap(80, swap_flags::CURR | swap_flags::IN_FAULT, 0),
            fault(79, T, ff::SWAP_ENTS | ff::ANON_RSS, a, 0x4),
            exit(90, T),
        ]
    }

    #[test]
    fn recorded_stream_yields_exact_counts_epochs_and_sides() {
        let mut an = Analyzer::new(T, Some(0));
        let records = run(&mut an, &recorded_stream());
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
        assert!(records.iter().any(|r| matches!(
            r,
            TimelineEvent::ForkReturn(ForkReturn { epoch: Some(0), .. })
        )));
        // the reuse after the child exited belongs to no epoch
        let reuse = records.iter().find(|r| {
            matches!(
                r,
                TimelineEvent::Fault {
                    kind: FaultKind::WpReuse,
                    ..
                }
            )
        });
        assert!(matches!(
            reuse,
            Some(TimelineEvent::Fault {
                epoch: None,
                role: Role::Parent,
                ..
            })
        ));
    }

    #[test]
    fn unknown_kinds_are_counted_not_fatal() {
        let mut an = Analyzer::new(T, None);
        assert!(run(&mut an, &[KernelEvent::Unknown(h(99, 1, T, 0))]).is_empty());
        assert_eq!(an.summary().unknown_events, 1);
    }

    #[test]
    fn swap_deltas_need_a_baseline() {
        let mut an = Analyzer::new(T, None);
        let first = run(&mut an, &[swap(1, 0, 8192)]);
        assert!(matches!(
            first[0],
            TimelineEvent::SwapLevel(SwapLevel {
                delta_pages: None,
                ..
            })
        ));
        let second = run(&mut an, &[swap(2, 0, 0)]);
        assert!(matches!(
            second[0],
            TimelineEvent::SwapLevel(SwapLevel {
                delta_pages: Some(-2),
                ..
            })
        ));
        assert_eq!(an.summary().swap.pages_discarded, 2);
    }

    fn attributed() -> Analyzer {
        let mut an = Analyzer::new(T, None);
        an.enable_attribution(AttributionOptions {
            ranges: vec![PhaseRange {
                label: "networking-read",
                input: crate::attribution::context::Input::Parse,
            }],
            key_max: 128,
            top_n: 5,
            key_capacity: 1000,
            keys: crate::attribution::key_privacy::KeyPolicy::Full,
        });
        an
    }

    fn context(ts: u64, ph: u32, client: u64, name: &[u8], key: &[u8], argc: u32) -> KernelEvent {
        let mut c = ContextEvent::zeroed();
        c.header = h(
            kind::CONTEXT,
            ts,
            T,
            if key.is_empty() {
                0
            } else {
                context_flags::HAS_KEY
            },
        );
        c.phase = ph;
        c.client = client;
        c.argc = argc;
        c.name[..name.len()].copy_from_slice(name);
        c.name_len = name.len() as u32;
        c.key[..key.len()].copy_from_slice(key);
        c.key_captured = key.len() as u32;
        c.key_len = key.len() as u64;
        KernelEvent::Context(Box::new(c))
    }

    fn key_of(r: &TimelineEvent) -> (String, Option<Vec<u8>>, Option<&'static str>) {
        let TimelineEvent::Fault {
            attribution: Some(at),
            ..
        } = r
        else {
            panic!("unattributed {r:?}")
        };
        (
            at.activity.clone(),
            at.key.as_ref().map(|k| k.bytes.clone()),
            at.stage,
        )
    }

    /// Two clients interleaved: A's input is read before its key is parsed, then B runs a
    /// command that faults, then A's command is revealed. A's early faults are A's.
    #[test]
    fn parse_faults_wait_for_their_own_client() {
        let (a, b) = (0xa0, 0xb0);
        let mut an = attributed();
        let out = run(
            &mut an,
            &[
                context(1, phase::RANGE, a, b"SET", b"", 1),
                fault(2, T, ff::ALLOC, 0x1000, 0x7),
                context(3, phase::COMMAND, b, b"SET", b"kb", 3),
                fault(4, T, ff::ALLOC, 0x2000, 0x7),
                context(5, phase::RANGE, a, b"SET", b"ka", 2),
                fault(6, T, ff::ALLOC, 0x3000, 0x7),
            ],
        );
        let got: Vec<_> = out.iter().map(key_of).collect();
        assert_eq!(
            got,
            vec![
                ("SET".into(), Some(b"kb".to_vec()), None),
                ("SET".into(), Some(b"ka".to_vec()), Some("parse")),
                ("SET".into(), Some(b"ka".to_vec()), Some("parse")),
            ]
        );
    }

    #[test]
    fn a_client_that_leaves_or_restarts_keeps_its_faults() {
        let a = 0xa0;
        let mut an = attributed();
        let mut out = run(
            &mut an,
            &[
                context(1, phase::RANGE, a, b"SET", b"", 1),
                fault(2, T, ff::ALLOC, 0x1000, 0x7),
                // Parsing again from nothing: the SET ran without a fault.
                context(3, phase::RANGE, a, b"", b"", 0),
                fault(4, T, ff::ALLOC, 0x2000, 0x7),
                KernelEvent::ClientGone(ClientGoneEvent {
                    header: h(kind::CLIENT_GONE, 5, T, 0),
                    client: a,
                }),
            ],
        );
        an.flush_pending(&mut out);
        let got: Vec<_> = out.iter().map(key_of).collect();
        assert_eq!(
            got,
            vec![
                ("SET".into(), None, Some("parse")),
                ("unknown-command".into(), None, Some("parse")),
            ]
        );
    }

    /// Two BGSAVE-like epochs with SET faults on key `k`; the second fork comes `gap`
    /// after the first child's exit. Returns the finished epochs.
    fn two_epochs_with_sets(gap: u64) -> Vec<Epoch> {
        let mut an = attributed();
        let child2 = C + 1;
        let second = 50 + gap;
        run(
            &mut an,
            &[
                context(1, phase::COMMAND, 0xc1, b"set", b"k", 3),
                fork(10, C),
                fault(20, T, ff::ALLOC, 0x1000, 0x7),
                fault(21, T, ff::ALLOC, 0x2000, 0x7),
                exit(50, C),
                fork(second, child2),
                fault(second + 10, T, ff::ALLOC, 0x3000, 0x7),
                // dated inside the first epoch, completed after the second fork
                fault(30, T, ff::ALLOC, 0x4000, 0x7),
            ],
        );
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
        run(&mut an, &[fork(5, C)]);
        let (epochs, _) = an.finish(50);
        assert_eq!(epochs[0].end_ns, Some(50));
        assert_eq!(epochs[0].end_reason, Some("trace_end"));
    }
}

#[cfg(test)]
mod read_back {
    use serde_json::json;

    use super::*;
    use crate::timeline::json::write_record;

    /// `record` as the recorder writes it.
    fn written(record: &TimelineEvent) -> Value {
        let mut out = Vec::new();
        write_record(&mut out, record).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn written_records_read_back_whole() {
        let fork = Fork {
            ts_ns: 5,
            pid: 7,
            tid: 8,
            child_pid: 9,
            epoch: Some(2),
        };
        let call = ForkReturn {
            ts_ns: 4,
            pid: 7,
            tid: 8,
            ret: -1,
            duration_ns: 300,
            epoch: None,
        };
        let level = SwapLevel {
            ts_ns: 6,
            pid: 7,
            tid: 8,
            bytes: 8192,
            delta_pages: Some(-2),
        };
        let back = Fork::from_json(&written(&TimelineEvent::Fork(fork.clone())));
        assert_eq!(back, Some(fork));
        let back = ForkReturn::from_json(&written(&TimelineEvent::ForkReturn(call.clone())));
        assert_eq!(back, Some(call));
        let back = SwapLevel::from_json(&written(&TimelineEvent::SwapLevel(level.clone())));
        assert_eq!(back, Some(level));
    }

    #[test]
    fn records_without_time_or_pid_or_of_another_kind_are_not_read() {
        for kind in ["fork", "fork_return", "swap_level"] {
            let full = json!({"ts_ns": 1, "pid": 2, "kind": kind, "swap_bytes": 0});
            let mut no_ts = full.clone();
            no_ts["ts_ns"] = json!(null);
            let mut no_pid = full.clone();
            no_pid.as_object_mut().unwrap().remove("pid");
            let mut big_pid = full.clone();
            big_pid["pid"] = json!(1u64 << 32);
            for v in [&no_ts, &no_pid, &big_pid] {
                assert!(Fork::from_json(v).is_none(), "{v}");
                assert!(ForkReturn::from_json(v).is_none(), "{v}");
                assert!(SwapLevel::from_json(v).is_none(), "{v}");
            }
            let read = [
                Fork::from_json(&full).is_some(),
                ForkReturn::from_json(&full).is_some(),
                SwapLevel::from_json(&full).is_some(),
            ];
            let expected = [kind == "fork", kind == "fork_return", kind == "swap_level"];
            assert_eq!(read, expected, "{kind}");
        }
        // A level is all a `swap_level` says.
        let v = json!({"ts_ns": 1, "pid": 2, "kind": "swap_level", "swap_bytes": "1"});
        assert!(SwapLevel::from_json(&v).is_none());
    }

    #[test]
    fn mistyped_optional_fields_read_as_unknown() {
        let v = json!({"ts_ns": 1, "pid": 2, "tid": -3, "kind": "fork", "child_pid": "x",
                       "epoch": 1u64 << 32});
        assert_eq!(
            Fork::from_json(&v),
            Some(Fork {
                ts_ns: 1,
                pid: 2,
                tid: 2,
                child_pid: 0,
                epoch: None,
            })
        );
        let v = json!({"ts_ns": 1, "pid": 2, "kind": "fork_return", "ret": 1.5,
                       "duration_ns": -3, "epoch": null});
        assert_eq!(
            ForkReturn::from_json(&v),
            Some(ForkReturn {
                ts_ns: 1,
                pid: 2,
                tid: 2,
                ret: 0,
                duration_ns: 0,
                epoch: None,
            })
        );
        let v = json!({"ts_ns": 1, "pid": 2, "tid": null, "kind": "swap_level",
                       "swap_bytes": 4096, "delta_pages": "1"});
        assert_eq!(
            SwapLevel::from_json(&v),
            Some(SwapLevel {
                ts_ns: 1,
                pid: 2,
                tid: 2,
                bytes: 4096,
                delta_pages: None,
            })
        );
    }
}
