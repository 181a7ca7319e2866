//! Ending a recording: drain what is left, wait briefly for Redis's own numbers, write
//! the trailer and the outputs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use std::path::{Path, PathBuf};

use super::{RecordOutcome, decide::EndReason, setup::Recorder};
use crate::{
    analysis::clock,
    timeline::{
        EndInfo, Trailer,
        nodes::{self, Input},
        read,
    },
};

/// Redis publishes a fork's CoW size shortly after reaping the child.
const COW_SIZE_WAIT: Duration = Duration::from_secs(1);

impl Recorder<'_> {
    /// Finishes the run stopped for `reason` (the programs are detached).
    pub fn finish(mut self, reason: EndReason) -> Result<RecordOutcome> {
        // Read before detaching: programs go in no set order, and a fault of the target
        // whose entry hook is already gone when its completion runs would count as
        // unmatched. The other counters are read at the end (events lost up to the
        // detach count).
        let unmatched = self.counters.read().unmatched_completions;
        self.detach();
        // Whatever the reader drained after the stop.
        while let Ok(batch) = self.events.recv_timeout(Duration::from_millis(100)) {
            for ev in batch {
                self.handle(ev)?;
            }
        }
        let stats = self.join_reader();
        for ev in std::mem::take(&mut self.stash) {
            self.handle(ev)?;
        }
        self.status.clear();
        let end_mono = clock::monotonic_ns();
        if let Some(l) = self.launched.as_ref()
            && self.exit_status.is_none()
        {
            self.exit_status = if reason == EndReason::TargetExit {
                l.wait()
            } else {
                l.try_status()
            };
        }
        self.await_cow_sizes();
        let kernel = crate::timeline::KernelCounters {
            unmatched_completions: unmatched,
            ..self.counters.read()
        };
        let loss = loss_warning(&kernel);
        if let Some(w) = &loss
            && !self.opts.quiet
        {
            eprintln!("redis-memtrace: warning: {w}");
        }
        let mut written = Vec::new();
        for i in 0..self.nodes.len() {
            let mut released = Vec::new();
            self.nodes[i].analyzer.flush_pending(&mut released);
            for r in &released {
                self.write(i, r)?;
            }
            self.nodes[i].warnings.extend(loss.clone());
            let trailer = self.trailer(i, reason, end_mono, &kernel);
            let timeline = self.nodes[i].timeline.take().context("timeline closed")?;
            let path = timeline.finish(&trailer).with_context(|| {
                format!("finishing the timeline at {}", self.opts.output.display())
            })?;
            written.push((path, trailer));
        }
        let output = if self.opts.live {
            PathBuf::new()
        } else if self.several() {
            merge_nodes(&written, &self.opts.output)?
        } else {
            written[0].0.clone()
        };
        if let Some(file) = self.perfetto.take() {
            write_perfetto(&output, file)?;
        }
        if !self.opts.quiet {
            let elapsed = end_mono.saturating_sub(self.start_mono);
            eprintln!(
                "redis-memtrace: stopped ({}) after {:.2} s: {} events, {} lost",
                reason.as_str(),
                elapsed as f64 / 1e9,
                stats.delivered,
                kernel.ring_buffer_full
            );
            for (i, (_, t)) in written.iter().enumerate() {
                if self.several() {
                    let pid = t.segments.first().map_or(0, |s| s.pid);
                    eprintln!("  server {} (pid {pid}):", i + 1);
                }
                print_summary(t);
            }
            if !output.as_os_str().is_empty() {
                eprintln!("  timeline: {}", output.display());
            }
        }
        let (_, first) = written.swap_remove(0);
        Ok(RecordOutcome {
            output,
            summary: first.summary,
            epochs: first.epochs,
            lost_events: first.lost_events,
            target_exit_status: self.exit_status,
        })
    }

    fn await_cow_sizes(&mut self) {
        let until = Instant::now() + COW_SIZE_WAIT;
        loop {
            let mut waiting = false;
            for i in 0..self.nodes.len() {
                self.poll_cow_sizes(i);
                let n = &self.nodes[i];
                let exited = &n.exited;
                waiting |= n
                    .target
                    .session
                    .as_ref()
                    .is_some_and(|s| s.has_pending(&|c| exited.contains(&c)));
            }
            if !waiting || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node `i`'s trailer; a node whose server exited before the others ends there.
    fn trailer(
        &mut self,
        i: usize,
        reason: EndReason,
        end_mono: u64,
        kernel: &crate::timeline::KernelCounters,
    ) -> Trailer {
        let quiet = self.opts.quiet;
        let exit_status = self.exit_status;
        let n = &mut self.nodes[i];
        let (reason, end_mono) = match n.ended_ns {
            Some(at) => (EndReason::TargetExit, at),
            None => (reason, end_mono),
        };
        let sample_warnings = n.target.stop_sampler();
        if !quiet {
            for w in &sample_warnings {
                eprintln!("redis-memtrace: warning: {w}");
            }
        }
        n.warnings.extend(sample_warnings);
        n.target.end_segment(end_mono, reason.as_str());
        let analyzer = std::mem::replace(
            &mut n.analyzer,
            crate::analysis::stream::Analyzer::new(0, None),
        );
        let (mut epochs, summary) = analyzer.finish(end_mono);
        for e in &mut epochs {
            if let (Some(r), Some(ours)) = (e.redis.as_mut(), e.fork_call_ns)
                && let Some(theirs) = r.latest_fork_usec
            {
                r.fork_usec_difference = Some((ours / 1000) as i64 - theirs as i64);
            }
        }
        Trailer {
            epochs,
            lost_events: kernel.ring_buffer_full,
            kernel: *kernel,
            summary,
            redis: n.target.session.as_ref().map(|s| s.info.clone()),
            samples: std::mem::take(&mut n.target.earlier_samples),
            warnings: std::mem::take(&mut n.warnings),
            event_cap: n.cap.report(),
            segments: std::mem::take(&mut n.target.segments),
            cluster: n.target.take_cluster(),
            end: EndInfo {
                reason: reason.as_str().to_string(),
                monotonic_end_ns: end_mono,
                target_exit_status: exit_status,
            },
        }
    }
}

/// Several servers: their timelines, written next to `output`, merged into it (one
/// host, one clock: the alignment is exact) and removed. A failure keeps them and says
/// where they are.
fn merge_nodes(written: &[(PathBuf, Trailer)], output: &Path) -> Result<PathBuf> {
    let keep = || {
        let files: Vec<String> = written
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        format!("the servers' timelines are kept in {}", files.join(", "))
    };
    let mut inputs = Vec::new();
    for (path, _) in written {
        let timeline = read::load(path).map_err(|e| anyhow::anyhow!("{e}; {}", keep()))?;
        inputs.push(Input {
            source: output.display().to_string(),
            timeline,
        });
    }
    let set = nodes::merge(inputs).map_err(|e| anyhow::anyhow!("{e}; {}", keep()))?;
    let bytes = serde_json::to_vec(&set).context("encoding the timeline")?;
    let done = crate::output_file::write_atomically(output, &bytes)
        .with_context(|| format!("cannot write {}; {}", output.display(), keep()))?;
    for (path, _) in written {
        let _ = std::fs::remove_file(path);
    }
    Ok(done)
}

/// What lost events and untraced threads make of the counts, if any were.
fn loss_warning(k: &crate::timeline::KernelCounters) -> Option<String> {
    let mut causes = Vec::new();
    if k.ring_buffer_full > 0 {
        causes.push(format!(
            "{} events lost (ring buffer full: a larger --ring-buffer-mb or a smaller \
             --poll-ms keeps up)",
            k.ring_buffer_full
        ));
    }
    if k.threads_full > 0 {
        causes.push(format!(
            "{} threads untraced (thread table full)",
            k.threads_full
        ));
    }
    (!causes.is_empty()).then(|| {
        format!(
            "{}: the summary's fault counts, the epochs' counts and the top tables are \
             lower bounds",
            causes.join("; ")
        )
    })
}

/// Converts the finished timeline at `timeline` into the Perfetto file opened at start.
fn write_perfetto(
    timeline: &std::path::Path,
    mut file: crate::output_file::AtomicFile,
) -> Result<()> {
    use std::io::Write;
    let trace = crate::export::perfetto::trace_of_file(timeline)?;
    let bytes = crate::export::perfetto::encode(&trace).context("encoding the Perfetto trace")?;
    file.writer()
        .write_all(&bytes)
        .context("writing the Perfetto trace")?;
    file.commit().context("writing the Perfetto trace")?;
    Ok(())
}

fn print_summary(t: &Trailer) {
    let f = &t.summary.faults;
    eprintln!(
        "  faults: cow_copy={} wp_reuse={} swap_in={} first_touch={} other={}",
        f.cow_copy, f.wp_reuse, f.swap_in, f.first_touch, f.other
    );
    for e in &t.epochs {
        eprintln!(
            "  epoch {}: child {} lived {:.3} s, fork {} us, parent cow_copy={} child cow_copy={}",
            e.id,
            e.child_pid,
            e.end_ns.unwrap_or(e.start_ns).saturating_sub(e.start_ns) as f64 / 1e9,
            e.fork_call_ns
                .map_or("?".into(), |d| (d / 1000).to_string()),
            e.faults.parent.cow_copy,
            e.faults.child.cow_copy,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::loss_warning;
    use crate::timeline::KernelCounters;

    #[test]
    fn losses_make_the_counts_lower_bounds() {
        assert_eq!(loss_warning(&KernelCounters::default()), None);
        let lost = KernelCounters {
            ring_buffer_full: 7,
            threads_full: 2,
            ..KernelCounters::default()
        };
        let w = loss_warning(&lost).unwrap();
        assert!(w.starts_with("7 events lost (ring buffer full"), "{w}");
        assert!(w.contains("; 2 threads untraced"), "{w}");
        assert!(w.ends_with("are lower bounds"), "{w}");
    }
}
