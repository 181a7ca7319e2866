//! `--max-events` / `--max-rate`: bounds on how many fault records reach the timeline.
//!
//! Counting is never capped: the summary, epochs and aggregates include every fault. Only
//! the per-fault records are dropped past a bound, and how many is reported in the
//! trailer (`event_cap`). Fork, exit and other lifecycle records always pass: they are
//! rare and the timeline's structure depends on them. The rate is counted in windows of
//! one second of event time, so the outcome depends on the events, not on timing.

use serde::Serialize;

use crate::analysis::stream::{SwapLevel, TimelineEvent};

/// What was capped, for the trailer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CapReport {
    /// `--max-events`, if given.
    pub max_events: Option<u64>,
    /// `--max-rate` (records per second), if given.
    pub max_rate_per_s: Option<u64>,
    /// Fault records not written because of either bound.
    pub dropped: u64,
}

/// The admission state.
#[derive(Debug, Clone, Default)]
pub struct EventCap {
    report: CapReport,
    written: u64,
    window_start_ns: u64,
    in_window: u64,
}

const WINDOW_NS: u64 = 1_000_000_000;

impl EventCap {
    /// A cap with the given bounds (`None`: unbounded).
    pub fn new(max_events: Option<u64>, max_rate_per_s: Option<u64>) -> EventCap {
        EventCap {
            report: CapReport {
                max_events,
                max_rate_per_s,
                dropped: 0,
            },
            ..EventCap::default()
        }
    }

    /// Whether `record` is written.
    pub fn admit(&mut self, record: &TimelineEvent) -> bool {
        let ts = match record {
            TimelineEvent::Fault { ts_ns, .. }
            | TimelineEvent::SwapLevel(SwapLevel { ts_ns, .. })
            | TimelineEvent::SwapWrite { ts_ns, .. } => *ts_ns,
            _ => return true,
        };
        if self.report.max_events.is_some_and(|m| self.written >= m) {
            self.report.dropped += 1;
            return false;
        }
        if let Some(rate) = self.report.max_rate_per_s {
            if ts >= self.window_start_ns.saturating_add(WINDOW_NS) || ts < self.window_start_ns {
                self.window_start_ns = ts - ts % WINDOW_NS;
                self.in_window = 0;
            }
            if self.in_window >= rate {
                self.report.dropped += 1;
                return false;
            }
            self.in_window += 1;
        }
        self.written += 1;
        true
    }

    /// What was capped so far.
    pub fn report(&self) -> CapReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{analysis::classify::FaultKind, analysis::fork_epochs::Role};

    fn fault(ts_ns: u64) -> TimelineEvent {
        TimelineEvent::Fault {
            ts_ns,
            pid: 1,
            tid: 1,
            kind: FaultKind::CowCopy,
            addr: 0,
            role: Role::Parent,
            epoch: None,
            error_code: 0,
            latency_ns: 0,
            flags: 0,
            attribution: None,
        }
    }

    fn fork(ts_ns: u64) -> TimelineEvent {
        TimelineEvent::Fork(crate::analysis::stream::Fork {
            ts_ns,
            pid: 1,
            tid: 1,
            child_pid: 2,
            epoch: Some(0),
        })
    }

    #[test]
    fn unbounded_admits_everything() {
        let mut c = EventCap::new(None, None);
        assert!((0..1000).all(|i| c.admit(&fault(i))));
        assert_eq!(c.report().dropped, 0);
    }

    #[test]
    fn max_events_keeps_the_first_n_and_lifecycle_records() {
        let mut c = EventCap::new(Some(3), None);
        let admitted: Vec<bool> = (0..5).map(|i| c.admit(&fault(i))).collect();
        assert_eq!(admitted, [true, true, true, false, false]);
        assert!(c.admit(&fork(10)));
        assert_eq!(c.report().dropped, 2);
    }

    #[test]
    fn max_rate_per_second_window() {
        let mut c = EventCap::new(None, Some(2));
        let s = WINDOW_NS;
        let ts = [
            s,
            s + 1,
            s + 2,
            2 * s - 1,
            2 * s,
            2 * s + 5,
            2 * s + 6,
            5 * s,
        ];
        let admitted: Vec<bool> = ts.iter().map(|&t| c.admit(&fault(t))).collect();
        assert_eq!(
            admitted,
            [true, true, false, false, true, true, false, true]
        );
        assert_eq!(c.report().dropped, 3);
    }
}
