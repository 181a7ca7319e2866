//! The live view of `record`: one status line on stderr, refreshed about every second
//! (elapsed, events/s, CoW pages, swap-ins, current epoch, lost events). Only when stderr
//! is a terminal and `--quiet` is off; nothing of it ever reaches a file or a pipe.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use crate::{
    analysis::classify::FaultKind,
    analysis::stream::{Fork, TimelineEvent},
};

/// What the line shows, updated from the records as they are written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Records seen.
    pub events: u64,
    /// `cow_copy` faults.
    pub cow: u64,
    /// `swap_in` faults.
    pub swap_in: u64,
    /// The open epoch: (id, child pid).
    pub epoch: Option<(u32, u32)>,
    /// Epochs opened so far.
    pub forks: u64,
}

impl Progress {
    /// Counts one record.
    pub fn observe(&mut self, record: &TimelineEvent) {
        self.events += 1;
        match record {
            TimelineEvent::Fault { kind, .. } => match kind {
                FaultKind::CowCopy => self.cow += 1,
                FaultKind::SwapIn => self.swap_in += 1,
                _ => {}
            },
            TimelineEvent::Fork(Fork {
                child_pid,
                epoch: Some(id),
                ..
            }) => {
                self.epoch = Some((*id, *child_pid));
                self.forks += 1;
            }
            TimelineEvent::Exit {
                pid,
                process_exit: true,
                ..
            } if self.epoch.is_some_and(|(_, child)| child == *pid) => self.epoch = None,
            _ => {}
        }
    }

    /// The status text (no terminal control codes).
    pub fn render(&self, elapsed: Duration, events_per_s: f64, lost: u64) -> String {
        let epoch = match self.epoch {
            Some((id, child)) => format!("epoch {id} (child {child})"),
            None => "no fork child".to_string(),
        };
        format!(
            "{:>6.1}s  {:>9} ev/s  cow {}  swap-in {}  forks {}  {epoch}  lost {lost}",
            elapsed.as_secs_f64(),
            human_rate(events_per_s),
            self.cow,
            self.swap_in,
            self.forks,
        )
    }
}

fn human_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// Draws [`Progress`] on stderr about once a second.
pub struct StatusLine {
    enabled: bool,
    started: Instant,
    last: Instant,
    last_events: u64,
    drawn: bool,
}

impl StatusLine {
    /// A status line that draws only if `wanted` and stderr is a terminal.
    pub fn new(wanted: bool) -> StatusLine {
        let now = Instant::now();
        StatusLine {
            enabled: wanted && std::io::stderr().is_terminal(),
            started: now,
            last: now,
            last_events: 0,
            drawn: false,
        }
    }

    /// Redraws if a second has passed; `lost` is read only then.
    pub fn tick(&mut self, progress: &Progress, lost: impl FnOnce() -> u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        let now = Instant::now();
        let rate = (progress.events - self.last_events) as f64
            / now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.last_events = progress.events;
        let text = progress.render(now.duration_since(self.started), rate, lost());
        let mut err = std::io::stderr().lock();
        // Carriage return + erase line: the line is replaced in place.
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the line so the final messages start on a clean line.
    pub fn clear(&mut self) {
        if self.drawn {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::fork_epochs::Role;

    fn fault(kind: FaultKind) -> TimelineEvent {
        TimelineEvent::Fault {
            ts_ns: 1,
            pid: 1,
            tid: 1,
            kind,
            addr: 0,
            role: Role::Parent,
            epoch: None,
            error_code: 0,
            latency_ns: 0,
            flags: 0,
            attribution: None,
        }
    }

    #[test]
    fn counts_and_epoch() {
        let mut p = Progress::default();
        p.observe(&fault(FaultKind::CowCopy));
        p.observe(&fault(FaultKind::CowCopy));
        p.observe(&fault(FaultKind::SwapIn));
        p.observe(&fault(FaultKind::FirstTouch));
        p.observe(&TimelineEvent::Fork(Fork {
            ts_ns: 2,
            pid: 1,
            tid: 1,
            child_pid: 9,
            epoch: Some(0),
        }));
        assert_eq!((p.events, p.cow, p.swap_in, p.forks), (5, 2, 1, 1));
        assert_eq!(p.epoch, Some((0, 9)));
        let line = p.render(Duration::from_millis(2500), 12_345.0, 3);
        assert_eq!(
            line,
            "   2.5s      12.3k ev/s  cow 2  swap-in 1  forks 1  epoch 0 (child 9)  lost 3"
        );
        // Another process's exit does not close the epoch; the child's does.
        for (pid, open) in [(8, true), (9, false)] {
            p.observe(&TimelineEvent::Exit {
                ts_ns: 3,
                pid,
                tid: pid,
                process_exit: true,
                epoch: None,
            });
            assert_eq!(p.epoch.is_some(), open);
        }
    }

    #[test]
    fn not_drawn_when_unwanted() {
        let mut s = StatusLine::new(false);
        s.last = Instant::now() - Duration::from_secs(5);
        let mut read = false;
        s.tick(&Progress::default(), || {
            read = true;
            0
        });
        assert!(!read && !s.drawn);
    }
}
