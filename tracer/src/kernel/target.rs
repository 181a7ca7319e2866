//! The process to trace: an existing PID, or a command launched by us and held at a gate
//! until the probes are attached, so it is traced from its first instruction.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    sys::wait::{WaitPidFlag, WaitStatus, waitpid},
    unistd::{ForkResult, Pid, execvp, fork, pipe2, read, write},
};

/// The traced process.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetInfo {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm` at attach.
    pub comm: String,
    /// `/proc/PID/exe` at attach (the executable for a launched command).
    pub exe: String,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22): with the pid,
    /// identifies the process even if the pid is reused.
    pub start_time_ticks: u64,
    /// The command line, when redis-memtrace launched it.
    pub command: Option<Vec<String>>,
}

/// Errors finding or launching the target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such process.
    #[error("no process with PID {0} (check the PID with `pgrep redis-server`)")]
    NoSuchPid(u32),
    /// The process went away between lookup and attach.
    #[error("process {0} exited before tracing started")]
    ExitedBeforeAttach(u32),
    /// The PID now belongs to another process.
    #[error("PID {0} was reused by another process before tracing started")]
    Reused(u32),
    /// Reading /proc failed.
    #[error("cannot read /proc/{0}: {1}")]
    Proc(u32, String),
    /// The command could not be prepared or started.
    #[error("cannot start {0}: {1}")]
    Launch(String, String),
}

/// Identity of a process: pid plus start time, so a reused pid is never mistaken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    /// Process id.
    pub pid: u32,
    /// Start time, clock ticks after boot.
    pub start_ticks: u64,
}

/// Reads comm, exe and start time of a running process.
pub fn describe(pid: u32) -> Result<(TargetInfo, ProcessId), TargetError> {
    let proc =
        procfs::process::Process::new(pid as i32).map_err(|_| TargetError::NoSuchPid(pid))?;
    let stat = proc.stat().map_err(|_| TargetError::NoSuchPid(pid))?;
    let exe = proc
        .exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<unreadable: {e}>"));
    let info = TargetInfo {
        pid,
        comm: stat.comm.clone(),
        exe,
        start_time_ticks: stat.starttime,
        command: None,
    };
    Ok((
        info,
        ProcessId {
            pid,
            start_ticks: stat.starttime,
        },
    ))
}

/// Checks that `id` still names the same running process.
pub fn still_running(id: ProcessId) -> Result<(), TargetError> {
    match procfs::process::Process::new(id.pid as i32).and_then(|p| p.stat()) {
        Ok(stat) if stat.starttime == id.start_ticks => {
            // A zombie has exited already.
            if stat.state == 'Z' || stat.state == 'X' {
                Err(TargetError::ExitedBeforeAttach(id.pid))
            } else {
                Ok(())
            }
        }
        Ok(_) => Err(TargetError::Reused(id.pid)),
        Err(_) => Err(TargetError::ExitedBeforeAttach(id.pid)),
    }
}

/// Fork children of `pid` alive now (e.g. a BGSAVE already running at attach).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// `VmSwap` of a process in bytes.
pub fn swap_bytes(pid: u32) -> Option<u64> {
    let status = procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?;
    status.vmswap.map(|kb| kb * 1024)
}

/// A launched command waiting at its gate.
pub struct Launched {
    /// Its pid.
    pub pid: u32,
    gate: Option<OwnedFd>,
}

fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.is_file())
}

/// Forks a child that waits until [`Launched::release`] and then execs `argv`.
/// Must be called while the process is single-threaded.
/// With `stdout_to_stderr`, the command's standard output goes to our standard error
/// (our stdout carries the timeline).
pub fn launch(
    argv: &[String],
    stdout_to_stderr: bool,
) -> Result<(Launched, TargetInfo), TargetError> {
    let program = argv
        .first()
        .ok_or_else(|| TargetError::Launch("".into(), "empty command".into()))?;
    let fail = |why: String| TargetError::Launch(program.clone(), why);
    let exe = resolve(program).ok_or_else(|| fail("not found in PATH".into()))?;
    let exe = exe.canonicalize().map_err(|e| fail(e.to_string()))?;
    let c_args = argv
        .iter()
        .map(|a| {
            CString::new(a.as_bytes()).map_err(|_| fail("argument contains a NUL byte".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let c_prog =
        CString::new(exe.as_os_str().as_encoded_bytes()).map_err(|_| fail("bad path".into()))?;
    let (gate_rx, gate_tx) =
        pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(e.to_string()))?;
    // SAFETY: called before any thread is started; the child only calls read, dup2,
    // execvp, write and _exit, which are async-signal-safe.
    match unsafe { fork() }.map_err(|e| fail(e.to_string()))? {
        ForkResult::Child => {
            drop(gate_tx);
            let mut byte = [0u8; 1];
            if !matches!(read(gate_rx.as_raw_fd(), &mut byte), Ok(1)) {
                // The tracer gave up before releasing us.
                // SAFETY: _exit is always safe to call.
                unsafe { libc::_exit(126) };
            }
            if stdout_to_stderr {
                // SAFETY: dup2 is async-signal-safe; both descriptors are ours.
                unsafe { libc::dup2(2, 1) };
            }
            let _ = execvp(&c_prog, &c_args);
            let _ = write(
                std::io::stderr(),
                b"redis-memtrace: exec of the command failed\n",
            );
            // SAFETY: as above.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(gate_rx);
            let pid = child.as_raw() as u32;
            let comm: String = exe
                .file_name()
                .map(|n| n.to_string_lossy().chars().take(15).collect())
                .unwrap_or_default();
            let start_time_ticks = procfs::process::Process::new(pid as i32)
                .and_then(|p| p.stat())
                .map(|s| s.starttime)
                .unwrap_or(0);
            let info = TargetInfo {
                pid,
                comm,
                exe: exe.display().to_string(),
                start_time_ticks,
                command: Some(argv.to_vec()),
            };
            Ok((
                Launched {
                    pid,
                    gate: Some(gate_tx),
                },
                info,
            ))
        }
    }
}

impl Launched {
    /// Lets the command exec.
    pub fn release(&mut self) -> Result<(), TargetError> {
        if let Some(gate) = self.gate.take() {
            write(&gate, b"g")
                .map_err(|e| TargetError::Launch(self.pid.to_string(), e.to_string()))?;
        }
        Ok(())
    }

    /// The command's exit status if it has exited (exit code, or 128 + signal).
    pub fn try_status(&self) -> Option<i32> {
        match waitpid(Pid::from_raw(self.pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            _ => None,
        }
    }

    /// Waits for the command to exit.
    pub fn wait(&self) -> Option<i32> {
        match waitpid(Pid::from_raw(self.pid as i32), None) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            _ => None,
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // Closing an unreleased gate makes the child exit instead of running untraced.
        self.gate.take();
    }
}

/// Whether `pid` runs another executable than this tracer (a launched command has
/// exec'd).
pub fn has_exec_d(pid: u32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/exe"));
    let ours = std::fs::read_link("/proc/self/exe");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a != b)
}

/// `/proc/PID/comm` without the newline, if the process exists.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_pid_is_not_the_old_process() {
        let (_, me) = describe(std::process::id()).unwrap();
        assert!(still_running(me).is_ok());
        // The same pid with another start time: a process that took the pid over.
        let other = ProcessId {
            start_ticks: me.start_ticks + 1,
            ..me
        };
        assert!(matches!(still_running(other), Err(TargetError::Reused(p)) if p == me.pid));
        // A process that exited: not running, zombie or reaped.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let (_, id) = describe(child.id()).unwrap();
        assert!(still_running(id).is_ok());
        child.kill().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(still_running(id).is_err(), "a zombie");
        child.wait().unwrap();
        assert!(still_running(id).is_err());
    }
}
