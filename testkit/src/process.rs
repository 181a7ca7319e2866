//! Child processes stopped on every path, free ports, and `/proc` facts about processes.

use std::{
    net::TcpListener,
    ops::{Deref, DerefMut},
    process::{Child, ExitStatus},
    time::{Duration, Instant},
};

use crate::Error;

/// A free TCP port on 127.0.0.1: bound, read, released (whoever binds it next may lose
/// a race; [`crate::Server`] retries).
pub fn try_free_port() -> Result<u16, Error> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(Error::io("binding a free port on 127.0.0.1"))
}

/// [`try_free_port`], panicking on failure.
pub fn free_port() -> u16 {
    try_free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Sends `sig` to the process `pid`; false if it could not be sent.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory preconditions; callers signal their own children (not
    // yet reaped, so the pid cannot have been reused) or processes they just looked up.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Waits up to `timeout` for `child` to exit; its status if it did.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `sig` to `child`, waits up to `grace` for it to exit, then SIGKILLs it. Its exit
/// status when it ended within `grace`.
pub fn stop_child(child: &mut Child, sig: libc::c_int, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal(child.id(), sig);
    let status = wait_exit(child, grace);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    status
}

/// A child process stopped when dropped: its stop signal, a grace period, then SIGKILL.
/// Derefs to the [`Child`] (panics once [`Guarded::stop`] took it).
pub struct Guarded {
    child: Option<Child>,
    sig: libc::c_int,
    grace: Duration,
}

impl Guarded {
    /// Stopped by `sig`, with `grace` to exit before SIGKILL.
    pub fn new(child: Child, sig: libc::c_int, grace: Duration) -> Guarded {
        Guarded {
            child: Some(child),
            sig,
            grace,
        }
    }

    /// Killed (SIGKILL) and reaped when dropped, as a test's helper process.
    pub fn kill_on_drop(child: Child) -> Guarded {
        Guarded::new(child, libc::SIGKILL, Duration::from_secs(5))
    }

    /// Stops the child now (once); its exit status if it exited within the grace period.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        stop_child(&mut child, self.sig, self.grace)
    }
}

impl Deref for Guarded {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.child.as_ref().expect("child used after Guarded::stop")
    }
}

impl DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child used after Guarded::stop")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `/proc/PID/stat` says of a process (all threads, exited ones included).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub minflt: u64,
    pub majflt: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcStat {
    /// Reads `/proc/PID/stat`; `None` once the process is gone.
    pub fn read(pid: u32) -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses the text of a `/proc/PID/stat`.
    pub fn parse(text: &str) -> Option<ProcStat> {
        // The command name may hold spaces and ')': count fields from the last ')'.
        let fields: Vec<&str> = text
            .get(text.rfind(')')? + 1..)?
            .split_whitespace()
            .collect();
        let n = |i: usize| fields.get(i)?.parse::<u64>().ok();
        // After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt,
        // cminflt, majflt, cmajflt, utime, stime.
        Some(ProcStat {
            state: fields.first()?.chars().next()?,
            ppid: u32::try_from(n(1)?).ok()?,
            minflt: n(7)?,
            majflt: n(9)?,
            cpu_ticks: n(11)? + n(12)?,
        })
    }

    /// The counts accrued since `start` (the state is this one's).
    pub fn since(&self, start: &ProcStat) -> ProcStat {
        ProcStat {
            minflt: self.minflt.saturating_sub(start.minflt),
            majflt: self.majflt.saturating_sub(start.majflt),
            cpu_ticks: self.cpu_ticks.saturating_sub(start.cpu_ticks),
            ..*self
        }
    }

    /// Minor plus major faults.
    pub fn faults(&self) -> u64 {
        self.minflt + self.majflt
    }

    /// CPU time in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_ticks as f64 * tick_ns() / 1e9
    }
}

/// Nanoseconds per clock tick of `/proc/PID/stat`.
pub fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// `/proc/PID/stat` fields after the command name: (state, ppid).
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    ProcStat::read(pid).map(|s| (s.state, s.ppid))
}

/// The state letter of `pid` (`R`, `S`, `T` for stopped, `Z` ...).
pub fn proc_state(pid: u32) -> Option<char> {
    proc_stat(pid).map(|(s, _)| s)
}

/// Live (not zombie) children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z'))
        .collect()
}

/// A live (not zombie) child process of `parent`.
pub fn child_of(parent: u32) -> Option<u32> {
    children_of(parent).into_iter().next()
}

/// VmRSS of `pid` in bytes (0 when it cannot be read).
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A process held with SIGSTOP (waited for until it shows state `T`); SIGCONT when
/// dropped, also when the test fails, so nothing stays stopped after it.
pub struct Stopped(pub u32);

impl Stopped {
    /// Stops `pid` and waits (5 s at most) until it is stopped.
    pub fn new(pid: u32) -> Stopped {
        signal(pid, libc::SIGSTOP);
        let stopped = Stopped(pid);
        crate::wait::wait_until(
            "the process to stop",
            std::time::Duration::from_secs(5),
            std::time::Duration::from_millis(2),
            || proc_state(pid) == Some('T'),
        );
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text =
            "23058 (redis server) S 1 23054 22101 0 -1 4194560 313875 0 2 0 320 159 0 0 20 0 5 0";
        let s = ProcStat::parse(text).unwrap();
        assert_eq!((s.state, s.ppid), ('S', 1));
        assert_eq!((s.minflt, s.majflt, s.cpu_ticks), (313875, 2, 479));
        assert_eq!(s.faults(), 313877);
        assert!(ProcStat::parse("garbage").is_none());
        let own = ProcStat::read(std::process::id()).unwrap();
        assert_eq!(own.since(&own).faults(), 0);
    }
}
