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
    target::SERVER_INDEX,
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
                    if let Some(t) = self.timeline.as_mut() {
                        t.flush_live().context("writing the timeline")?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The reader is gone (it only stops when told to): nothing more will come.
                Err(RecvTimeoutError::Disconnected) => return Ok(EndReason::Signal),
            }
            let counters = &self.counters;
            self.status
                .tick(&self.progress, || counters.read().ring_buffer_full);
            self.poll_cow_sizes();
            self.label_from_titles();
            self.update_metrics(top_tables.due(Instant::now()));
            if self.opts.live && forget.due(Instant::now()) {
                self.forget_history();
            }
            if let Some(p) = self.probes.as_mut()
                && let Some(w) = self.target.retry_fork_probe(p)
            {
                self.warn(w);
            }
            let now = Instant::now();
            if self.target.attribution_pending && attribution_try.due(now) {
                self.retry_attribution();
            }
            if self.target.waiting_since.is_some() && follow_try.due(now) {
                self.try_follow()?;
            }
            let gone = liveness.due(now).then(|| self.target_gone());
            let inputs = StopInputs {
                signalled: self.signalled.load(Ordering::Relaxed),
                now,
                deadline,
                follow: self.opts.follow,
                waiting: self.target.waiting_since.is_some(),
                target_exited: self.analyzer.target_exited(),
                target_gone: gone,
            };
            match verdict(&inputs) {
                Verdict::Continue => {}
                Verdict::AwaitRestart => self.await_restart(),
                Verdict::Stop(reason) => {
                    self.detach();
                    return Ok(reason);
                }
            }
        }
    }

    /// One kernel record: into the analyzer, its records into the timeline, and what the
    /// Redis side learns from it.
    pub(super) fn handle(&mut self, ev: KernelEvent) -> Result<()> {
        let mut records = std::mem::take(&mut self.records);
        self.analyzer.process(&ev, &mut records);
        for record in records.drain(..) {
            self.react(&record, &ev);
            self.progress.observe(&record);
            self.write(&record)?;
        }
        self.records = records;
        Ok(())
    }

    /// Writes `record` unless `--max-events` / `--max-rate` leave it out.
    pub(super) fn write(&mut self, record: &TimelineEvent) -> Result<()> {
        if let Some((m, _)) = self.metrics.as_mut() {
            m.observe(record);
        }
        if self.cap.admit(record)
            && let Some(t) = self.timeline.as_mut()
        {
            t.write_record(record).context("writing the timeline")?;
        }
        Ok(())
    }

    /// `serve`: keeps only recent history, so memory does not grow with the time or the
    /// forks and restarts seen.
    fn forget_history(&mut self) {
        self.analyzer.forget_old_epochs(KEEP_EPOCHS);
        let extra = self.warnings.len().saturating_sub(KEEP_WARNINGS);
        self.warnings.drain(..extra);
        // Exited children matter only while their CoW size is awaited.
        match self.target.session.as_ref() {
            Some(s) => self.exited.retain(|&c| s.awaits_cow_size(c)),
            None => self.exited.clear(),
        }
        let segments = &mut self.target.segments;
        let extra = segments.len().saturating_sub(KEEP_EPOCHS);
        segments.drain(..extra);
        self.target.earlier_samples.clear();
    }

    /// The metrics' periodic part; when `tables` (once a second), also the BPF run time (a
    /// system call per program) and the top tables (a sort of the key table).
    fn update_metrics(&mut self, tables: bool) {
        let Some((m, _)) = self.metrics.as_mut() else {
            return;
        };
        m.tick(
            self.analyzer.epochs(),
            self.counters.read().ring_buffer_full,
        );
        if !tables {
            return;
        }
        if let Some(p) = self.probes.as_ref() {
            m.bpf(p.run_totals());
        }
        if let Some(t) = self.analyzer.tables(crate::metrics::TOP_ROWS) {
            m.top_tables(&t);
        }
    }

    /// Labels forks and tracks exits.
    fn react(&mut self, record: &TimelineEvent, ev: &KernelEvent) {
        match (record, ev) {
            (
                TimelineEvent::Fork(Fork {
                    child_pid,
                    epoch: Some(id),
                    ..
                }),
                _,
            ) => {
                if let Some(s) = self.target.session.as_mut() {
                    let (why, info) = s.on_fork(*child_pid);
                    if let Some(r) = &why {
                        s.expect_cow_size(*child_pid, r);
                    }
                    self.analyzer.label_epoch(*id, why, Some(info));
                }
            }
            (
                TimelineEvent::ForkReturn(ForkReturn {
                    epoch: Some(id), ..
                }),
                KernelEvent::ForkCall(call),
            ) => self.label_from_stack(*id, call),
            (
                TimelineEvent::Exit {
                    pid,
                    process_exit: true,
                    ..
                },
                _,
            ) => {
                self.exited.insert(*pid);
            }
            _ => {}
        }
    }

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

    /// Epochs the stack did not name: their child's title, once it has set it.
    fn label_from_titles(&mut self) {
        if self.unlabelled.is_empty() {
            return;
        }
        let Some(s) = self.target.session.as_mut() else {
            self.unlabelled.clear();
            return;
        };
        let mut keep = Vec::new();
        for (id, child, since) in std::mem::take(&mut self.unlabelled) {
            let (why, info) = s.on_fork(child);
            match why {
                Some(r) => {
                    s.expect_cow_size(child, &r);
                    self.analyzer.label_epoch(id, Some(r), Some(info));
                }
                None if since.elapsed() < LABEL_WAIT => keep.push((id, child, since)),
                None => {}
            }
        }
        self.unlabelled = keep;
    }

    pub(super) fn poll_cow_sizes(&mut self) {
        let Some(s) = self.target.session.as_mut() else {
            return;
        };
        let exited = &self.exited;
        for (child, bytes) in s.poll_cow_sizes(&|c| exited.contains(&c)) {
            if let Some(r) = self.analyzer.epoch_redis_mut(child) {
                r.last_cow_size = Some(bytes);
            }
        }
    }

    /// A launched server: turn attribution on once it serves.
    fn retry_attribution(&mut self) {
        let pid = self.target.pid();
        let serving = target::comm(pid).is_some_and(|c| locate::SERVER_NAMES.contains(&c.as_str()))
            && !locate::tcp_ports_of(pid).is_empty();
        if !serving {
            return;
        }
        // Not listening yet, or memory not set up: tried again shortly. A definite answer
        // (on, or a warning) ends the retries.
        let before = self.warnings.len();
        let on = self.try_attribution();
        self.target.attribution_pending = false;
        if !self.opts.quiet {
            if let Some(s) = self.target.session.as_ref().filter(|_| on) {
                announce_attribution(s);
            }
            for w in &self.warnings[before..] {
                eprintln!("redis-memtrace: warning: {w}");
            }
        }
    }

    fn warn(&mut self, w: String) {
        if !self.opts.quiet {
            eprintln!("redis-memtrace: warning: {w}");
        }
        self.warnings.push(w);
    }

    /// The liveness backstop, in case the exit event itself was lost.
    fn target_gone(&mut self) -> bool {
        match self.launched.as_ref() {
            Some(l) => {
                self.exit_status = self.exit_status.or_else(|| l.try_status());
                self.exit_status.is_some()
            }
            None => target::still_running(self.target.id).is_err(),
        }
    }

    /// The traced server went away under `--follow`: close its segment, start waiting.
    fn await_restart(&mut self) {
        self.target
            .end_segment(clock::monotonic_ns(), EndReason::TargetExit.as_str());
        self.target.waiting_since = Some(Instant::now());
        if !self.opts.quiet {
            eprintln!(
                "redis-memtrace: pid {} exited; waiting for a server at the same address (--follow)",
                self.target.pid()
            );
        }
    }

    /// Under `--follow`: a server back at the address is traced in a new segment.
    fn try_follow(&mut self) -> Result<()> {
        let super::TargetSpec::Redis(spec) = &self.opts.target else {
            return Ok(());
        };
        let Some((info, id)) = find_restarted(spec, self.target.id) else {
            return Ok(());
        };
        let since = self
            .target
            .waiting_since
            .map_or(0.0, |s| s.elapsed().as_secs_f64());
        if !self.opts.quiet {
            eprintln!(
                "redis-memtrace: following: a server is back at {} as pid {} ({since:.1} s after the last one exited)",
                redact_spec(spec),
                id.pid
            );
        }
        let mut released = Vec::new();
        self.analyzer
            .retarget(id.pid, target::swap_bytes(id.pid), &mut released);
        for r in &released {
            self.write(r)?;
        }
        let sample_warnings = self.target.stop_sampler();
        self.warnings.extend(sample_warnings);
        self.target.restart(info, id, clock::monotonic_ns());
        if let Some(p) = self.probes.as_mut() {
            p.trace(id.pid, role::TARGET, SERVER_INDEX)?;
        }
        if let Err(w) = self.probe_fork_call(id.pid) {
            self.warnings.push(w);
        }
        let attribution = self.opts.attribution && self.try_attribution();
        self.target
            .start_sampler(self.opts.interval, self.opts.live);
        if attribution
            && !self.opts.quiet
            && let Some(s) = &self.target.session
        {
            announce_attribution(s);
        }
        Ok(())
    }
}

/// A server at `spec` that is not `old` (another pid, or the same pid reused by a new
/// process: the start time tells them apart).
fn find_restarted(spec: &str, old: ProcessId) -> Option<(TargetInfo, ProcessId)> {
    let resolved = locate::resolve_redis(spec, Duration::from_millis(500)).ok()?;
    let (info, id) = target::describe(resolved.pid).ok()?;
    (id != old).then_some((info, id))
}
