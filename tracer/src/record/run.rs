//! The record loop: one batch of kernel records at a time, then the periodic work
//! (samples of Redis's CoW sizes, retries, `--follow`), then the stop decision.

use std::{
    sync::{atomic::Ordering, mpsc::RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracer_common::role;

use super::{
    decide::{EndReason, Every, StopInputs, Verdict, verdict},
    setup::{Recorder, announce_attribution},
};
use crate::{
    analysis::clock,
    analysis::stream::{Fork, ForkReturn, TimelineEvent},
    kernel::events::KernelEvent,
    kernel::target::{self, ProcessId},
    redis::{info::redact_spec, locate},
    timeline::TargetInfo,
};

/// How long to wait for a batch before doing the periodic work.
const TICK: Duration = Duration::from_millis(50);
/// How often `serve` drops what it does not need to keep.
const FORGET_EVERY: Duration = Duration::from_secs(5);
/// Closed fork epochs `serve` keeps (their tables, the exits it knows of).
const KEEP_EPOCHS: usize = 16;
/// Warnings `serve` keeps (the newest; each was printed when it came).
const KEEP_WARNINGS: usize = 64;

/// How long a fork's reason is looked for in its child's title.
const LABEL_WAIT: Duration = Duration::from_secs(1);

impl Recorder<'_> {
    /// Records until a stop reason; the programs are detached when it returns.
    pub fn run(&mut self) -> Result<EndReason> {
        let deadline = self.opts.duration.map(|d| Instant::now() + d);
        let mut liveness = Every::new(Duration::from_millis(200));
        let mut attribution_try = Every::new(Duration::from_millis(200));
        let mut follow_try = Every::new(Duration::from_millis(500));
        let mut top_tables = Every::new(Duration::from_secs(1));
        let mut forget = Every::new(FORGET_EVERY);
        loop {
            let stashed = std::mem::take(&mut self.stash);
            for ev in stashed {
                self.handle(ev)?;
            }
            match self.events.recv_timeout(TICK) {
                Ok(batch) => {
                    for ev in batch {
                        self.handle(ev)?;
                    }
                    for n in &mut self.nodes {
                        if let Some(t) = n.timeline.as_mut() {
                            t.flush_live().context("writing the timeline")?;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The reader is gone (it only stops when told to): nothing more will come.
                Err(RecvTimeoutError::Disconnected) => return Ok(EndReason::Signal),
            }
            let counters = &self.counters;
            self.status
                .tick(&self.progress, || counters.read().ring_buffer_full);
            for i in 0..self.nodes.len() {
                self.poll_cow_sizes(i);
                self.label_from_titles(i);
            }
            self.update_metrics(top_tables.due(Instant::now()));
            if self.opts.live && forget.due(Instant::now()) {
                self.forget_history();
            }
            if let Some(p) = self.probes.as_mut()
                && let Some(w) = self.nodes[0].target.retry_fork_probe(p)
            {
                self.warn(0, w);
            }
            let now = Instant::now();
            if self.nodes[0].target.attribution_pending && attribution_try.due(now) {
                self.retry_attribution();
            }
            if self.nodes.iter().any(|n| n.target.waiting_since.is_some()) && follow_try.due(now) {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].target.waiting_since.is_some() {
                        self.try_follow(i)?;
                    }
                }
            }
            let check_gone = liveness.due(now);
            let inputs = if self.several() {
                self.several_stop_inputs(check_gone, now, deadline)
            } else {
                let gone = check_gone.then(|| self.target_gone(0));
                StopInputs {
                    signalled: self.signalled.load(Ordering::Relaxed),
                    now,
                    deadline,
                    follow: self.opts.follow,
                    waiting: self.nodes[0].target.waiting_since.is_some(),
                    target_exited: self.nodes[0].analyzer.target_exited(),
                    target_gone: gone,
                }
            };
            match verdict(&inputs) {
                Verdict::Continue => {}
                Verdict::AwaitRestart => self.await_restart(0),
                Verdict::Stop(reason) => {
                    self.detach();
                    return Ok(reason);
                }
            }
        }
    }

    /// Several servers: one that exits ends its node (the others go on being traced), or
    /// with `--follow` waits for its restart; the run ends as for one server once all
    /// have ended.
    fn several_stop_inputs(
        &mut self,
        check_gone: bool,
        now: Instant,
        deadline: Option<Instant>,
    ) -> StopInputs {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.ended_ns.is_some() || n.target.waiting_since.is_some() {
                continue;
            }
            if n.analyzer.target_exited() || (check_gone && self.target_gone(i)) {
                if self.opts.follow {
                    self.await_restart(i);
                } else {
                    self.end_node(i);
                }
            }
        }
        StopInputs {
            signalled: self.signalled.load(Ordering::Relaxed),
            now,
            deadline,
            follow: false,
            waiting: false,
            target_exited: self.nodes.iter().all(|n| n.ended_ns.is_some()),
            target_gone: None,
        }
    }

    /// Node `i`'s server exited while others are traced: its run ends here.
    fn end_node(&mut self, i: usize) {
        let now = clock::monotonic_ns();
        let quiet = self.opts.quiet;
        let n = &mut self.nodes[i];
        n.ended_ns = Some(now);
        n.target.end_segment(now, EndReason::TargetExit.as_str());
        if !quiet {
            eprintln!(
                "redis-memtrace: pid {} exited; tracing the other servers",
                n.target.pid()
            );
        }
    }

    /// The node a kernel record belongs to: the only one, or by its process.
    fn route(&mut self, ev: &KernelEvent) -> Option<usize> {
        if !self.several() {
            return Some(0);
        }
        let i = *self.owners.get(&ev.header().tgid)?;
        if let KernelEvent::Fork(f) = ev {
            self.owners.insert(f.child_pid, i);
        }
        Some(i)
    }

    /// One kernel record: into its node's analyzer, its records into that node's
    /// timeline, and what the Redis side learns from it.
    pub(super) fn handle(&mut self, ev: KernelEvent) -> Result<()> {
        let Some(i) = self.route(&ev) else {
            return Ok(());
        };
        let mut records = std::mem::take(&mut self.records);
        self.nodes[i].analyzer.process(&ev, &mut records);
        for record in records.drain(..) {
            self.react(i, &record, &ev);
            self.progress.observe(&record);
            self.write(i, &record)?;
        }
        self.records = records;
        Ok(())
    }

    /// Writes `record` to node `i` unless `--max-events` / `--max-rate` leave it out.
    pub(super) fn write(&mut self, i: usize, record: &TimelineEvent) -> Result<()> {
        let n = &mut self.nodes[i];
        if let Some(m) = n.metrics.as_mut() {
            m.observe(record);
        }
        if n.cap.admit(record)
            && let Some(t) = n.timeline.as_mut()
        {
            t.write_record(record).context("writing the timeline")?;
        }
        Ok(())
    }

    /// `serve`: keeps only recent history, so memory does not grow with the time or the
    /// forks and restarts seen.
    fn forget_history(&mut self) {
        for n in &mut self.nodes {
            n.analyzer.forget_old_epochs(KEEP_EPOCHS);
            let extra = n.warnings.len().saturating_sub(KEEP_WARNINGS);
            n.warnings.drain(..extra);
            // Exited children matter only while their CoW size is awaited, or may still be
            // once their fork is labelled (a child can exit before its title is read).
            let unlabelled: Vec<u32> = n.unlabelled.iter().map(|&(_, c, _)| c).collect();
            match n.target.session.as_ref() {
                Some(s) => n
                    .exited
                    .retain(|c| s.awaits_cow_size(*c) || unlabelled.contains(c)),
                None => n.exited.clear(),
            }
            let segments = &mut n.target.segments;
            let extra = segments.len().saturating_sub(KEEP_EPOCHS);
            segments.drain(..extra);
            n.target.earlier_samples.clear();
        }
    }

    /// The metrics' periodic part; when `tables` (once a second), also the BPF run time (a
    /// system call per program) and the top tables (a sort of the key table).
    fn update_metrics(&mut self, tables: bool) {
        if self.nodes[0].metrics.is_none() {
            return;
        }
        // The kernel counters (a map read per CPU) once a second with the rest: the lost
        // count only grows, so a tick without it (0) leaves the metric as it is.
        let full = if tables {
            self.counters.read().ring_buffer_full
        } else {
            0
        };
        let bpf = match self.probes.as_ref() {
            Some(p) if tables => Some(p.run_totals()),
            _ => None,
        };
        for n in &mut self.nodes {
            let Some(m) = n.metrics.as_mut() else {
                continue;
            };
            m.tick(n.analyzer.epochs(), full);
            if !tables {
                continue;
            }
            if let Some(totals) = bpf {
                m.bpf(totals);
            }
            if let Some(t) = n.analyzer.tables(crate::metrics::TOP_ROWS) {
                m.top_tables(&t);
            }
        }
    }

    /// Labels forks and tracks exits of node `i`.
    fn react(&mut self, i: usize, record: &TimelineEvent, ev: &KernelEvent) {
        let n = &mut self.nodes[i];
        match (record, ev) {
            (
                TimelineEvent::Fork(Fork {
                    child_pid,
                    epoch: Some(id),
                    ..
                }),
                _,
            ) => {
                if let Some(s) = n.target.session.as_mut() {
                    let (why, info) = s.on_fork(*child_pid);
                    if let Some(r) = &why {
                        s.expect_cow_size(*child_pid, r);
                    }
                    n.analyzer.label_epoch(*id, why, Some(info));
                }
            }
            (
                TimelineEvent::ForkReturn(ForkReturn {
                    epoch: Some(id), ..
                }),
                KernelEvent::ForkCall(call),
            ) => n.label_from_stack(*id, call),
            (
                TimelineEvent::Exit {
                    pid,
                    process_exit: true,
                    ..
                },
                _,
            ) => {
                n.exited.insert(*pid);
            }
            _ => {}
        }
    }

    /// Epochs of node `i` the stack did not name: their child's title, once it has set it.
    fn label_from_titles(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.unlabelled.is_empty() {
            return;
        }
        let Some(s) = n.target.session.as_mut() else {
            n.unlabelled.clear();
            return;
        };
        let mut keep = Vec::new();
        for (id, child, since) in std::mem::take(&mut n.unlabelled) {
            let (why, info) = s.on_fork(child);
            match why {
                Some(r) => {
                    s.expect_cow_size(child, &r);
                    n.analyzer.label_epoch(id, Some(r), Some(info));
                }
                None if since.elapsed() < LABEL_WAIT => keep.push((id, child, since)),
                None => {}
            }
        }
        n.unlabelled = keep;
    }

    pub(super) fn poll_cow_sizes(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(s) = n.target.session.as_mut() else {
            return;
        };
        let exited = &n.exited;
        for (child, bytes) in s.poll_cow_sizes(&|c| exited.contains(&c)) {
            if let Some(r) = n.analyzer.epoch_redis_mut(child) {
                r.last_cow_size = Some(bytes);
            }
        }
    }

    /// A launched server: turn attribution on once it serves.
    fn retry_attribution(&mut self) {
        let pid = self.nodes[0].target.pid();
        let serving = target::comm(pid).is_some_and(|c| locate::SERVER_NAMES.contains(&c.as_str()))
            && !locate::tcp_ports_of(pid).is_empty();
        if !serving {
            return;
        }
        // Not listening yet, or memory not set up: tried again shortly. A definite answer
        // (on, or a warning) ends the retries.
        let before = self.nodes[0].warnings.len();
        let on = self.try_attribution(0);
        let n = &mut self.nodes[0];
        n.target.attribution_pending = false;
        if !self.opts.quiet {
            if let Some(s) = n.target.session.as_ref().filter(|_| on) {
                announce_attribution(s);
            }
            for w in &n.warnings[before..] {
                eprintln!("redis-memtrace: warning: {w}");
            }
        }
    }

    fn warn(&mut self, i: usize, w: String) {
        if !self.opts.quiet {
            eprintln!("redis-memtrace: warning: {w}");
        }
        self.nodes[i].warnings.push(w);
    }

    /// The liveness backstop, in case the exit event itself was lost.
    fn target_gone(&mut self, i: usize) -> bool {
        match self.launched.as_ref() {
            Some(l) => {
                self.exit_status = self.exit_status.or_else(|| l.try_status());
                self.exit_status.is_some()
            }
            None => target::still_running(self.nodes[i].target.id).is_err(),
        }
    }

    /// Node `i`'s server went away under `--follow`: close its segment, start waiting.
    fn await_restart(&mut self, i: usize) {
        let t = &mut self.nodes[i].target;
        t.end_segment(clock::monotonic_ns(), EndReason::TargetExit.as_str());
        t.waiting_since = Some(Instant::now());
        if !self.opts.quiet {
            eprintln!(
                "redis-memtrace: pid {} exited; waiting for a server at the same address (--follow)",
                t.pid()
            );
        }
    }

    /// Under `--follow`: a server back at node `i`'s address is traced in a new segment.
    fn try_follow(&mut self, i: usize) -> Result<()> {
        let Some(spec) = self.nodes[i].follow_spec.clone() else {
            return Ok(());
        };
        let Some((info, id)) = find_restarted(&spec, self.nodes[i].target.id) else {
            return Ok(());
        };
        let since = self.nodes[i]
            .target
            .waiting_since
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        if !self.opts.quiet {
            eprintln!(
                "redis-memtrace: following: a server is back at {} as pid {} ({since:.1} s after the last one exited)",
                redact_spec(&spec),
                id.pid
            );
        }
        let mut released = Vec::new();
        self.nodes[i]
            .analyzer
            .retarget(id.pid, target::swap_bytes(id.pid), &mut released);
        for r in &released {
            self.write(i, r)?;
        }
        let n = &mut self.nodes[i];
        let sample_warnings = n.target.stop_sampler();
        n.warnings.extend(sample_warnings);
        n.target.restart(info, id, clock::monotonic_ns());
        let index = n.index;
        if let Some(p) = self.probes.as_mut() {
            p.trace(id.pid, role::TARGET, index)?;
        }
        if self.several() {
            self.owners.insert(id.pid, i);
        }
        if let Err(w) = self.probe_fork_call(id.pid) {
            self.nodes[i].warnings.push(w);
        }
        let attribution = self.opts.attribution && self.try_attribution(i);
        let n = &mut self.nodes[i];
        n.target.start_sampler(self.opts.interval, self.opts.live);
        if attribution
            && !self.opts.quiet
            && let Some(s) = &n.target.session
        {
            announce_attribution(s);
        }
        Ok(())
    }
}

impl super::setup::Node {
    /// The reason of epoch `id` from its `fork()` caller's stack.
    fn label_from_stack(&mut self, id: u32, call: &tracer_common::ForkCallEvent) {
        let Some(s) = self.target.session.as_mut() else {
            return;
        };
        let Some(child) = self.analyzer.epoch_child(id) else {
            return;
        };
        match s.fork_reason(call) {
            Some((reason, source)) => {
                s.expect_cow_size(child, &reason);
                let info = crate::analysis::fork_epochs::EpochRedisInfo {
                    reason_source: source.into(),
                    ..Default::default()
                };
                self.analyzer.label_epoch(id, Some(reason), Some(info));
            }
            None => self.unlabelled.push((id, child, Instant::now())),
        }
    }
}

/// A server at `spec` that is not `old` (another pid, or the same pid reused by a new
/// process: the start time tells them apart).
fn find_restarted(spec: &str, old: ProcessId) -> Option<(TargetInfo, ProcessId)> {
    let resolved = locate::resolve_redis(spec, Duration::from_millis(500)).ok()?;
    let (info, id) = target::describe(resolved.pid).ok()?;
    (id != old).then_some((info, id))
}
