//! The record loop's decisions, pure so they are tested without a kernel: when to stop
//! and why, when to wait for a restarted server, and when a periodic retry is due.

use std::time::{Duration, Instant};

/// Why a recording ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `--duration` elapsed.
    Duration,
    /// SIGINT or SIGTERM.
    Signal,
    /// The target exited (and `--follow` was not given).
    TargetExit,
}

impl EndReason {
    /// The name written to the timeline (`end.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Duration => "duration",
            EndReason::Signal => "signal",
            EndReason::TargetExit => "target_exit",
        }
    }
}

/// What the loop knows when it decides.
#[derive(Debug, Clone, Copy)]
pub struct StopInputs {
    /// A stop signal arrived.
    pub signalled: bool,
    /// Now.
    pub now: Instant,
    /// When `--duration` ends.
    pub deadline: Option<Instant>,
    /// `--follow` was given.
    pub follow: bool,
    /// The target already exited and a restarted server is awaited.
    pub waiting: bool,
    /// The kernel reported the target's exit.
    pub target_exited: bool,
    /// The backstop check found the target gone (`None`: not checked this time).
    pub target_gone: Option<bool>,
}

/// What the loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep recording.
    Continue,
    /// The target is gone; with `--follow`, close its segment and wait for a new one.
    AwaitRestart,
    /// Stop for this reason.
    Stop(EndReason),
}

/// The next step. A signal wins; while waiting for a restart only the duration ends the
/// run; the target's exit wins over the duration.
pub fn verdict(i: &StopInputs) -> Verdict {
    let past_deadline = i.deadline.is_some_and(|d| i.now >= d);
    if i.signalled {
        return Verdict::Stop(EndReason::Signal);
    }
    if i.waiting {
        return if past_deadline {
            Verdict::Stop(EndReason::Duration)
        } else {
            Verdict::Continue
        };
    }
    if i.target_exited || i.target_gone == Some(true) {
        return if i.follow {
            Verdict::AwaitRestart
        } else {
            Verdict::Stop(EndReason::TargetExit)
        };
    }
    if past_deadline {
        return Verdict::Stop(EndReason::Duration);
    }
    Verdict::Continue
}

/// A periodic action: due at once, then every `period`.
#[derive(Debug, Clone, Copy)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    /// An action to take every `period`.
    pub fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// Whether it is due at `now`; if so, the next one is due `period` later.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|l| now < l + self.period) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(now: Instant) -> StopInputs {
        StopInputs {
            signalled: false,
            now,
            deadline: None,
            follow: false,
            waiting: false,
            target_exited: false,
            target_gone: None,
        }
    }

    #[test]
    fn stop_reasons_in_order() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        assert_eq!(verdict(&inputs(t0)), Verdict::Continue);
        let deadline = StopInputs {
            deadline: Some(t0 + Duration::from_secs(1)),
            now: later,
            ..inputs(t0)
        };
        assert_eq!(verdict(&deadline), Verdict::Stop(EndReason::Duration));
        // The target's exit wins over the duration, a signal over everything.
        let exited = StopInputs {
            target_exited: true,
            ..deadline
        };
        assert_eq!(verdict(&exited), Verdict::Stop(EndReason::TargetExit));
        let signalled = StopInputs {
            signalled: true,
            ..exited
        };
        assert_eq!(verdict(&signalled), Verdict::Stop(EndReason::Signal));
        // The backstop's finding counts like the kernel's exit event.
        let gone = StopInputs {
            target_gone: Some(true),
            ..inputs(t0)
        };
        assert_eq!(verdict(&gone), Verdict::Stop(EndReason::TargetExit));
    }

    #[test]
    fn follow_waits_and_only_the_duration_or_a_signal_ends_the_wait() {
        let t0 = Instant::now();
        let follow = StopInputs {
            follow: true,
            target_exited: true,
            ..inputs(t0)
        };
        assert_eq!(verdict(&follow), Verdict::AwaitRestart);
        let waiting = StopInputs {
            waiting: true,
            ..follow
        };
        assert_eq!(verdict(&waiting), Verdict::Continue);
        let late = StopInputs {
            deadline: Some(t0),
            now: t0 + Duration::from_millis(1),
            ..waiting
        };
        assert_eq!(verdict(&late), Verdict::Stop(EndReason::Duration));
    }

    #[test]
    fn periodic_actions_are_due_once_per_period() {
        let t0 = Instant::now();
        let mut every = Every::new(Duration::from_millis(200));
        assert!(every.due(t0));
        assert!(!every.due(t0 + Duration::from_millis(199)));
        assert!(every.due(t0 + Duration::from_millis(200)));
        assert!(!every.due(t0 + Duration::from_millis(300)));
    }
}
