//! Fork epochs: each fork of the target opens one, the child's exit closes it.
//!
//! Faults are assigned by timestamp, not by arrival order: the ring buffer is filled from
//! every CPU and a fault is emitted when it completes, so a child's exit can arrive before
//! a parent fault that started earlier.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use crate::{
    analysis::classify::FaultKind,
    analysis::counts::KindCounts,
    attribution::aggregate::AggregateReport,
    json_fields::{flag_at, i64_at, str_at, u32_at, u64_at},
};

/// Which side of a fork a fault happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The traced target (the process that forks).
    Parent,
    /// A fork child of the target (or a descendant of one).
    Child,
}

impl Role {
    /// The name used in timelines (`role` of a fault).
    pub fn name(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Child => "child",
        }
    }

    /// The role a timeline names `name` (`None` for anything else).
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Parent, Role::Child]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// Fault counts of one epoch, split by side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EpochFaults {
    /// Faults of the parent while the epoch was open.
    pub parent: KindCounts,
    /// Faults of the child.
    pub child: KindCounts,
}

/// One fork of the target, from fork to the child's exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Epoch {
    /// Index in the timeline's `epochs` array.
    pub id: u32,
    /// The forking process.
    pub parent_pid: u32,
    /// The thread that called fork.
    pub parent_tid: u32,
    /// The child process.
    pub child_pid: u32,
    /// Monotonic time of the fork (`sched_process_fork`), or of attach when the child
    /// existed before tracing started.
    pub start_ns: u64,
    /// Monotonic time of the child's exit; `None` while open.
    pub end_ns: Option<u64>,
    /// How long the `fork()` call took in the parent, as the caller saw it (libc `fork`
    /// entry to return in the parent: the clone syscall, atfork handlers and any wait for
    /// a CPU on the way back). This is what Redis's `latest_fork_usec` measures. `None`
    /// when libc's `fork` could not be probed (a static binary without symbols) or the
    /// child existed before tracing started.
    pub fork_call_ns: Option<u64>,
    /// The clone syscall alone: older timelines only (no longer measured; see
    /// `fork_call_ns`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fork_duration_ns: Option<u64>,
    /// The child was already running when tracing started (start and fork time unknown).
    pub started_before_trace: bool,
    /// Why the child's epoch ended: `exit`, or `trace_end` when tracing stopped first.
    pub end_reason: Option<&'static str>,
    /// Faults during the epoch.
    pub faults: EpochFaults,
    /// Why Redis forked: `bgsave`, `aof-rewrite`, `replication`, `module`, `other`
    /// (absent when the target is not a Redis server with attribution on).
    pub reason: Option<String>,
    /// What Redis itself reported about this fork, when INFO was reachable.
    pub redis: Option<EpochRedisInfo>,
    /// Attributed faults of the epoch (parent and child).
    pub attribution: Option<crate::attribution::aggregate::AggregateReport>,
}

/// Redis's own view of one fork, side by side with the tracer's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EpochRedisInfo {
    /// How the reason was found (`server.child_type`, `INFO`, `child title`).
    pub reason_source: String,
    /// INFO `latest_fork_usec` read right after the fork.
    pub latest_fork_usec: Option<u64>,
    /// Tracer's fork duration (the libc call when probed, else the syscall) minus
    /// Redis's, microseconds (positive: tracer longer).
    pub fork_usec_difference: Option<i64>,
    /// INFO `rdb_last_cow_size` (or `aof_last_cow_size`) after the child exited, bytes.
    pub last_cow_size: Option<u64>,
}

impl EpochRedisInfo {
    /// Takes every field `other` knows.
    pub fn merge(&mut self, other: EpochRedisInfo) {
        if !other.reason_source.is_empty() {
            self.reason_source = other.reason_source;
        }
        self.latest_fork_usec = other.latest_fork_usec.or(self.latest_fork_usec);
        self.fork_usec_difference = other.fork_usec_difference.or(self.fork_usec_difference);
        self.last_cow_size = other.last_cow_size.or(self.last_cow_size);
    }
}

impl EpochFaults {
    fn from_json(f: &Value) -> EpochFaults {
        EpochFaults {
            parent: KindCounts::from_json(&f["parent"]),
            child: KindCounts::from_json(&f["child"]),
        }
    }
}

impl EpochRedisInfo {
    fn from_json(r: &Value) -> EpochRedisInfo {
        EpochRedisInfo {
            reason_source: str_at(r, "reason_source").unwrap_or_default().to_string(),
            latest_fork_usec: u64_at(r, "latest_fork_usec"),
            fork_usec_difference: i64_at(r, "fork_usec_difference"),
            last_cow_size: u64_at(r, "last_cow_size"),
        }
    }
}

impl Epoch {
    /// Element `index` of a timeline's `epochs`, whose target is `target_pid` (the
    /// parent when the file does not say); `None` without `start_ns`. An unknown child is
    /// PID 0.
    pub fn from_json(e: &Value, index: usize, target_pid: u32) -> Option<Epoch> {
        let parent_pid = u32_at(e, "parent_pid").unwrap_or(target_pid);
        let end_reason = match str_at(e, "end_reason") {
            Some("exit") => Some("exit"),
            Some("trace_end") => Some("trace_end"),
            _ => None,
        };
        Some(Epoch {
            id: u32_at(e, "id").unwrap_or(u32::try_from(index).unwrap_or(u32::MAX)),
            parent_pid,
            parent_tid: u32_at(e, "parent_tid").unwrap_or(parent_pid),
            child_pid: u32_at(e, "child_pid").unwrap_or(0),
            start_ns: u64_at(e, "start_ns")?,
            end_ns: u64_at(e, "end_ns"),
            fork_call_ns: u64_at(e, "fork_call_ns"),
            fork_duration_ns: u64_at(e, "fork_duration_ns"),
            started_before_trace: flag_at(e, "started_before_trace"),
            end_reason,
            faults: EpochFaults::from_json(&e["faults"]),
            reason: str_at(e, "reason").map(str::to_string),
            redis: e
                .get("redis")
                .filter(|r| r.is_object())
                .map(EpochRedisInfo::from_json),
            attribution: e
                .get("attribution")
                .filter(|a| a.is_object())
                .map(AggregateReport::from_json),
        })
    }

    /// Fork time as reports show it: the libc call when it was probed (what Redis's
    /// `latest_fork_usec` measures), else the syscall (older timelines).
    pub fn fork_ns(&self) -> Option<u64> {
        self.fork_call_ns.or(self.fork_duration_ns)
    }

    /// Redis's `latest_fork_usec` for this fork, when INFO was read.
    pub fn redis_fork_usec(&self) -> Option<u64> {
        self.redis.as_ref()?.latest_fork_usec
    }

    /// Redis's `rdb_last_cow_size` / `aof_last_cow_size` after the child exited.
    pub fn redis_cow_bytes(&self) -> Option<u64> {
        self.redis.as_ref()?.last_cow_size
    }

    /// Why Redis forked, or `fork` when unknown.
    pub fn reason_or_fork(&self) -> &str {
        self.reason.as_deref().unwrap_or("fork")
    }

    /// Child lifetime seen by the trace, and whether it was cut short by the run's start
    /// or end (so the true lifetime is longer); `None` while open.
    pub fn duration(&self) -> Option<(u64, bool)> {
        let d = self.end_ns?.checked_sub(self.start_ns)?;
        let cut = self.started_before_trace || self.end_reason != Some("exit");
        Some((d, cut))
    }

    fn covers(&self, ts: u64) -> bool {
        ts >= self.start_ns && self.end_ns.is_none_or(|end| ts < end)
    }
}

/// Tracks the epochs of one target.
#[derive(Debug, Default)]
pub struct ForkEpochs {
    target: u32,
    /// The epochs kept, in fork order: ids `first..`.
    epochs: Vec<Epoch>,
    /// Id of `epochs[0]` (older epochs were forgotten, see [`ForkEpochs::forget_closed`]).
    first: u32,
    /// Every traced non-target process -> the epoch it belongs to.
    member: HashMap<u32, u32>,
}

impl ForkEpochs {
    /// Epochs of forks made by `target`.
    pub fn new(target: u32) -> Self {
        ForkEpochs {
            target,
            ..Default::default()
        }
    }

    /// A process forked. Forks of the target open an epoch; forks of a child join the
    /// child's epoch. Returns the epoch id when one was opened.
    pub fn on_fork(&mut self, parent: u32, parent_tid: u32, child: u32, ts: u64) -> Option<u32> {
        if parent == self.target {
            let id = self.open(parent, parent_tid, child, ts, false);
            return Some(id);
        }
        if let Some(&epoch) = self.member.get(&parent) {
            self.member.insert(child, epoch);
        }
        None
    }

    /// Forks of `target` open epochs from now on (`record --follow`); earlier epochs stay.
    pub fn retarget(&mut self, target: u32) {
        self.target = target;
    }

    /// A child of the target that was already running when tracing began.
    pub fn adopt_running_child(&mut self, child: u32, ts: u64) -> u32 {
        self.open(self.target, self.target, child, ts, true)
    }

    fn open(&mut self, parent: u32, parent_tid: u32, child: u32, ts: u64, before: bool) -> u32 {
        let id = self.first + self.epochs.len() as u32;
        self.epochs.push(Epoch {
            id,
            parent_pid: parent,
            parent_tid,
            child_pid: child,
            start_ns: ts,
            end_ns: None,
            fork_call_ns: None,
            fork_duration_ns: None,
            started_before_trace: before,
            end_reason: None,
            faults: EpochFaults::default(),
            reason: None,
            redis: None,
            attribution: None,
        });
        self.member.insert(child, id);
        id
    }

    /// The libc `fork()` call of `tid`, begun at `start_ns`, returned `ret` after
    /// `duration_ns`. The call is matched to the fork made inside it by thread and time,
    /// not by `ret`: in a PID namespace (a container) `ret` is the child's pid there, not
    /// the one the kernel's fork event carries.
    /// Returns the epoch the call opened.
    pub fn on_fork_call_return(
        &mut self,
        tid: u32,
        start_ns: u64,
        ret: i64,
        duration_ns: u64,
    ) -> Option<u32> {
        if ret <= 0 {
            return None;
        }
        let end_ns = start_ns.saturating_add(duration_ns);
        let epoch = self.epochs.iter_mut().rev().find(|e| {
            e.parent_tid == tid
                && !e.started_before_trace
                && (start_ns..=end_ns).contains(&e.start_ns)
        })?;
        epoch.fork_call_ns.get_or_insert(duration_ns);
        Some(epoch.id)
    }

    /// A process exited. Closes its epoch when it is an epoch's child.
    /// Returns the closed epoch's id.
    pub fn on_exit(&mut self, pid: u32, ts: u64) -> Option<u32> {
        let epoch = self.member.remove(&pid)?;
        let e = self.get_mut(epoch)?;
        if e.child_pid == pid && e.end_ns.is_none() {
            e.end_ns = Some(ts);
            e.end_reason = Some("exit");
            return Some(epoch);
        }
        None
    }

    /// Whether process `pid` shared its pages with a live fork relative at `ts`: the
    /// target inside an open epoch, or a fork child whose epoch is still open.
    pub fn shares_pages(&self, pid: u32, ts: u64) -> bool {
        if pid == self.target {
            return self
                .epochs
                .iter()
                .any(|e| e.parent_pid == pid && e.covers(ts));
        }
        self.member
            .get(&pid)
            .and_then(|&id| self.get(id))
            .is_some_and(|e| e.end_ns.is_none())
    }

    /// Side and epoch of a fault of process `pid` that began at `ts`, counted in the
    /// epoch's totals.
    pub fn assign(&mut self, pid: u32, ts: u64, kind: FaultKind) -> (Role, Option<u32>) {
        if pid == self.target {
            // The most recent epoch that covers the fault: the parent's copies are caused by
            // the newest child still sharing its pages.
            let covering = self
                .epochs
                .iter()
                .rposition(|e| e.parent_pid == pid && e.covers(ts));
            // A copy after the child's exit event: its memory is released after that
            // event (some 100 us later for a Redis child), and until then the parent's
            // writes still copy. The copy is that fork's: the latest epoch ended before.
            let found = covering
                .or_else(|| {
                    (kind == FaultKind::CowCopy)
                        .then(|| {
                            self.epochs.iter().rposition(|e| {
                                e.parent_pid == pid && e.end_ns.is_some_and(|end| end <= ts)
                            })
                        })
                        .flatten()
                })
                .map(|i| &mut self.epochs[i]);
            return match found {
                Some(e) => {
                    e.faults.parent.add(kind);
                    (Role::Parent, Some(e.id))
                }
                None => (Role::Parent, None),
            };
        }
        let id = self.member.get(&pid).copied();
        match id.and_then(|id| self.get_mut(id)) {
            Some(e) => {
                e.faults.child.add(kind);
                (Role::Child, Some(e.id))
            }
            None => (Role::Child, None),
        }
    }

    /// Ends every open epoch at `ts` (tracing stopped while children were alive).
    pub fn close_all(&mut self, ts: u64) {
        for e in self.epochs.iter_mut().filter(|e| e.end_ns.is_none()) {
            e.end_ns = Some(ts.max(e.start_ns));
            e.end_reason = Some("trace_end");
        }
    }

    /// The latest epoch of fork child `child`.
    pub fn epoch_of_child_mut(&mut self, child: u32) -> Option<&mut Epoch> {
        self.epochs.iter_mut().rev().find(|e| e.child_pid == child)
    }

    /// Epoch `id`, unless forgotten.
    pub fn get(&self, id: u32) -> Option<&Epoch> {
        self.epochs.get(id.checked_sub(self.first)? as usize)
    }

    /// Epoch `id`, unless forgotten.
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Epoch> {
        self.epochs.get_mut(id.checked_sub(self.first)? as usize)
    }

    /// Forgets the oldest epochs while more than `keep` closed ones precede the oldest
    /// open one (`serve`, which runs for days, keeps no history); returns the first id
    /// kept. Ids stay as they were.
    pub fn forget_closed(&mut self, keep: usize) -> u32 {
        let closed = self
            .epochs
            .iter()
            .take_while(|e| e.end_ns.is_some())
            .count();
        let n = closed.saturating_sub(keep);
        self.epochs.drain(..n);
        self.first += n as u32;
        self.first
    }

    /// The epochs kept, in fork order, for labelling.
    pub fn epochs_mut(&mut self) -> &mut [Epoch] {
        &mut self.epochs
    }

    /// The epochs kept (all of them unless [`ForkEpochs::forget_closed`] was called), in
    /// fork order.
    pub fn epochs(&self) -> &[Epoch] {
        &self.epochs
    }

    /// Whether `pid` is a fork child (or descendant) being followed.
    pub fn is_member(&self, pid: u32) -> bool {
        self.member.contains_key(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u32 = 100;

    #[test]
    fn epoch_opens_on_fork_and_closes_on_child_exit() {
        let mut ep = ForkEpochs::new(T);
        assert_eq!(ep.on_fork(T, 101, 200, 1_000), Some(0));
        // The child's return (0), another thread's call and a call that did not contain
        // the fork are not the parent's.
        assert_eq!(ep.on_fork_call_return(101, 900, 0, 1), None);
        assert_eq!(ep.on_fork_call_return(102, 900, 200, 2), None);
        assert_eq!(ep.on_fork_call_return(101, 1_001, 200, 3), None);
        // The call that contains the fork, returning the child's pid in the parent's own
        // PID namespace (here 7, not 200): matched by thread and time.
        assert_eq!(ep.on_fork_call_return(101, 900, 7, 420), Some(0));
        assert_eq!(
            ep.assign(T, 1_500, FaultKind::CowCopy),
            (Role::Parent, Some(0))
        );
        assert_eq!(
            ep.assign(200, 1_600, FaultKind::CowCopy),
            (Role::Child, Some(0))
        );
        assert_eq!(ep.on_exit(200, 2_000), Some(0));
        assert_eq!(
            ep.assign(T, 2_500, FaultKind::WpReuse),
            (Role::Parent, None)
        );
        let e = &ep.epochs()[0];
        assert_eq!(
            (e.start_ns, e.end_ns, e.fork_call_ns),
            (1_000, Some(2_000), Some(420))
        );
        assert_eq!(e.faults.parent.cow_copy, 1);
        assert_eq!(e.faults.child.cow_copy, 1);
        assert_eq!(e.faults.parent.wp_reuse, 0);
        assert_eq!(e.end_reason, Some("exit"));
    }

    #[test]
    fn forgetting_closed_epochs_keeps_ids_and_the_open_ones() {
        let mut ep = ForkEpochs::new(T);
        // Epoch 0's child lives on; 1..=4 end.
        ep.on_fork(T, T, 200, 1_000);
        for i in 1..=4u32 {
            ep.on_fork(T, T, 200 + i, 1_000 * (i as u64 + 1));
            ep.on_exit(200 + i, 1_000 * (i as u64 + 1) + 500);
        }
        // Nothing before the open epoch 0: nothing forgotten.
        assert_eq!(ep.forget_closed(1), 0);
        assert_eq!(ep.epochs().len(), 5);
        ep.on_exit(200, 6_000);
        // All closed: all but the last two go.
        assert_eq!(ep.forget_closed(2), 3);
        assert_eq!(ep.epochs().iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4]);
        assert!(ep.get(2).is_none());
        assert_eq!(ep.get(4).map(|e| e.child_pid), Some(204));
        // New epochs continue the ids; faults find them.
        assert_eq!(ep.on_fork(T, T, 300, 7_000), Some(5));
        assert_eq!(
            ep.assign(300, 7_100, FaultKind::CowCopy),
            (Role::Child, Some(5))
        );
        assert_eq!(
            ep.assign(T, 7_200, FaultKind::CowCopy),
            (Role::Parent, Some(5))
        );
        assert_eq!(ep.on_exit(300, 8_000), Some(5));
        assert_eq!(ep.get(5).map(|e| e.faults.child.cow_copy), Some(1));
    }

    #[test]
    fn late_arriving_parent_fault_is_assigned_by_timestamp() {
        let mut ep = ForkEpochs::new(T);
        ep.on_fork(T, T, 200, 1_000);
        ep.on_exit(200, 2_000);
        // emitted after the exit was seen, but it began inside the epoch
        assert_eq!(
            ep.assign(T, 1_999, FaultKind::CowCopy),
            (Role::Parent, Some(0))
        );
        assert_eq!(
            ep.assign(T, 999, FaultKind::FirstTouch),
            (Role::Parent, None)
        );
    }

    #[test]
    fn a_copy_after_the_childs_exit_is_the_last_epochs() {
        let mut ep = ForkEpochs::new(T);
        assert_eq!(
            ep.assign(T, 500, FaultKind::CowCopy),
            (Role::Parent, None),
            "no fork yet"
        );
        ep.on_fork(T, T, 200, 1_000);
        ep.on_exit(200, 2_000);
        ep.on_fork(T, T, 201, 3_000);
        ep.on_exit(201, 4_000);
        // The second child's memory is still being released.
        assert_eq!(
            ep.assign(T, 4_100, FaultKind::CowCopy),
            (Role::Parent, Some(1))
        );
        assert_eq!(
            ep.assign(T, 2_100, FaultKind::CowCopy),
            (Role::Parent, Some(0))
        );
        // Only copies: a reuse after the exit is no epoch's.
        assert_eq!(
            ep.assign(T, 4_200, FaultKind::WpReuse),
            (Role::Parent, None)
        );
        assert_eq!(ep.epochs()[1].faults.parent.cow_copy, 1);
        assert_eq!(ep.epochs()[0].faults.parent.cow_copy, 1);
    }

    #[test]
    fn thread_exit_and_unrelated_exit_do_not_close() {
        let mut ep = ForkEpochs::new(T);
        ep.on_fork(T, T, 200, 1_000);
        assert_eq!(ep.on_exit(T, 1_500), None);
        assert_eq!(ep.on_exit(999, 1_500), None);
        assert!(ep.epochs()[0].end_ns.is_none());
        ep.close_all(3_000);
        assert_eq!(ep.epochs()[0].end_ns, Some(3_000));
        assert_eq!(ep.epochs()[0].end_reason, Some("trace_end"));
    }

    #[test]
    fn grandchildren_join_their_parents_epoch_and_failed_forks_are_ignored() {
        let mut ep = ForkEpochs::new(T);
        ep.on_fork(T, T, 200, 1_000);
        assert_eq!(ep.on_fork(200, 200, 300, 1_100), None);
        assert_eq!(
            ep.assign(300, 1_200, FaultKind::FirstTouch),
            (Role::Child, Some(0))
        );
        assert_eq!(
            ep.on_exit(300, 1_300),
            None,
            "grandchild exit must not close"
        );
        assert_eq!(ep.on_fork_call_return(T, 999, -11, 5), None);
        assert_eq!(ep.epochs()[0].fork_call_ns, None);
        assert_eq!(ep.epochs().len(), 1);
    }

    #[test]
    fn overlapping_epochs_assign_to_newest() {
        let mut ep = ForkEpochs::new(T);
        ep.on_fork(T, T, 200, 1_000);
        ep.on_fork(T, T, 201, 2_000);
        assert_eq!(ep.assign(T, 2_500, FaultKind::CowCopy).1, Some(1));
        ep.on_exit(201, 3_000);
        assert_eq!(ep.assign(T, 3_500, FaultKind::CowCopy).1, Some(0));
    }
}
