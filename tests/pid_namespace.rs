//! A Redis in its own PID namespace, as in a container (`unshare -p -f --mount-proc
//! redis-server ...`), traced from the host by its host pid: attribution is on, its
//! BGSAVE is an epoch with reason `bgsave`, and the epoch has the fork() call's duration,
//! within 25 % or 200 us of Redis's own `latest_fork_usec` (allowing for the parent's faults
//! after `fork()` returned, which Redis's interval holds).
//!
//! Inside the namespace fork() returns the child's namespace pid, which is not the pid
//! the kernel's fork tracepoint reports: the tracer must match the call to its fork by
//! thread and time, not by that return value. Real kernel, real Redis 7.0, real eBPF, as
//! root.

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use testkit::{
    Build, Guarded, Recording, by_label,
    commands::{info_on, info_u64_on},
    free_port,
    process::{child_of, proc_stat, wait_exit},
    read_timeline,
    recording::ATTRIBUTION_ON,
    require_root,
    wait::wait_until,
};

/// How long the server has to answer PING after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A redis-server running as init (pid 1) of a new PID namespace, with its own /proc:
/// `unshare -p -f --mount-proc SERVER ...`. Dropping it SIGKILLs the server, which makes
/// the kernel kill every other process of the namespace (the BGSAVE child among them),
/// then reaps `unshare`, and removes the folder.
struct NsServer {
    /// The server as the host sees it: the pid to trace.
    host_pid: u32,
    port: u16,
    /// A pidfd of the server, so the kill at the end cannot hit a reused pid.
    pidfd: OwnedFd,
    unshare: Guarded,
    /// The server's `--dir` (and log), removed last.
    _dir: tempfile::TempDir,
}

impl NsServer {
    fn start(build: &Build) -> NsServer {
        let dir = tempfile::Builder::new()
            .prefix("memtrace-pidns-")
            .tempdir()
            .unwrap();
        let log = File::create(dir.path().join("redis.log")).unwrap();
        let port = free_port();
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(&build.server)
            .envs(build.env.iter().map(|(k, v)| (k, v)))
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--enable-debug-command", "yes"])
            .arg("--dir")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("running unshare (util-linux)");
        let mut unshare = Guarded::kill_on_drop(unshare);
        // unshare forks the namespace's first process, which then execs the server.
        let mut host_pid = None;
        wait_until(
            "the server to run inside the namespace",
            START_TIMEOUT,
            Duration::from_millis(10),
            || {
                if let Ok(Some(st)) = unshare.try_wait() {
                    panic!(
                        "unshare exited with {st}: {}",
                        std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default()
                    );
                }
                host_pid = child_of(unshare.id()).filter(|&p| comm(p) == "redis-server");
                host_pid.is_some()
            },
        );
        let host_pid = host_pid.unwrap();
        let pidfd = pidfd_open(host_pid);
        // Taken while unshare (its parent, which has not reaped it) lives: the pidfd is
        // this server's, as long as it is still unshare's child now.
        assert_eq!(
            proc_stat(host_pid).map(|(_, ppid)| ppid),
            Some(unshare.id())
        );
        let server = NsServer {
            host_pid,
            port,
            pidfd,
            unshare,
            _dir: dir,
        };
        wait_until(
            "the namespaced server to answer PING",
            START_TIMEOUT,
            Duration::from_millis(20),
            || {
                server.try_client().is_some_and(|mut c| {
                    redis::cmd("PING").query::<String>(&mut c).ok().as_deref() == Some("PONG")
                })
            },
        );
        server
    }

    fn try_client(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).ok()?;
        let con = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        con.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
        Some(con)
    }

    fn client(&self) -> redis::Connection {
        self.try_client()
            .unwrap_or_else(|| panic!("cannot connect to 127.0.0.1:{}", self.port))
    }
}

impl Drop for NsServer {
    fn drop(&mut self) {
        // SAFETY: a valid pidfd we own; no siginfo.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        // unshare exits once its child (the namespace's init) is gone.
        if wait_exit(&mut self.unshare, Duration::from_secs(10)).is_none() {
            eprintln!(
                "unshare {} still running after its server was killed",
                self.unshare.id()
            );
        }
        // Then the fields drop in order: `unshare` is SIGKILLed if still there and
        // reaped, and the folder is removed.
    }
}

fn pidfd_open(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open(2) takes a pid and flags; the fd is owned right below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The `NSpid` line of `/proc/PID/status`: the pid in each namespace, host first.
fn ns_pids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .expect("NSpid in /proc/PID/status")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

#[test]
fn namespaced_bgsave_epoch_has_its_fork_time() {
    require_root();
    let server = NsServer::start(&by_label("redis-7.0"));
    // The setup is what it claims: the server is pid 1 of a namespace of its own, and
    // says so in INFO (so a pid from inside never names the host process).
    assert_eq!(ns_pids(server.host_pid), [server.host_pid, 1]);
    let mut con = server.client();
    assert_eq!(info_u64_on(&mut con, "server", "process_id"), 1);
    // A data set whose fork takes long enough (page tables to copy) for the bar to mean
    // something.
    let _: () = redis::cmd("DEBUG")
        .arg("POPULATE")
        .arg(200_000)
        .arg("key")
        .arg(100)
        .query(&mut con)
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let pid = server.host_pid.to_string();
    let rec = Recording::start_with(&["--pid", &pid], &out, &[], ATTRIBUTION_ON);
    let forks_before = info_u64_on(&mut con, "stats", "total_forks");
    // BGSAVE forks before it replies: the window holds the fork.
    let mut waited = testkit::timeline::RunDelay::start(server.host_pid);
    let reply: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    waited.stop();
    assert!(reply.contains("started"), "{reply}");
    wait_until(
        "the BGSAVE to finish",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || info_on(&mut con, "persistence")["rdb_bgsave_in_progress"] == "0",
    );
    assert_eq!(
        info_on(&mut con, "persistence")["rdb_last_bgsave_status"],
        "ok"
    );
    let fork_usec = info_u64_on(&mut con, "stats", "latest_fork_usec");
    assert_eq!(
        info_u64_on(&mut con, "stats", "total_forks"),
        forks_before + 1,
        "one fork"
    );
    let stderr = rec.stop();

    let t = read_timeline(&out);
    assert_eq!(t["target"]["pid"], server.host_pid, "{stderr}");
    assert_eq!(t["run"]["options"]["attribution"], true);
    assert!(t["redis"].is_object(), "attribution active: {stderr}");
    let epochs = t["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1, "{stderr}");
    let e = &epochs[0];
    assert_eq!(e["reason"], "bgsave", "{e}");
    assert_eq!(e["parent_pid"], server.host_pid);
    assert!(e["attribution"].is_object(), "{e}");
    // The case under test: fork() returned the namespace pid, not the child_pid the
    // kernel reported, and its call was still matched to the epoch.
    let calls: Vec<&Value> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "fork_return")
        .collect();
    assert_eq!(calls.len(), 1, "one fork() call: {calls:?}");
    let ret = calls[0]["ret"].as_i64().unwrap();
    assert!(ret > 0, "{}", calls[0]);
    assert_ne!(Some(ret as u64), e["child_pid"].as_u64(), "{}", calls[0]);
    assert_eq!(calls[0]["epoch"], 0, "{}", calls[0]);

    let call_ns = e["fork_call_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fork_call_ns in {e}\n{stderr}"));
    assert_eq!(call_ns, calls[0]["duration_ns"].as_u64().unwrap());
    assert_eq!(e["redis"]["latest_fork_usec"], fork_usec, "{e}");
    let numbers = testkit::timeline::check_fork_time(&t, e, fork_usec, &waited);
    println!(
        "namespaced server host pid {} (pid 1 inside): {numbers:?} ({call_ns} ns), child {} \
         returned as {ret}",
        server.host_pid, e["child_pid"]
    );
    assert!(numbers.is_ok(), "{numbers:?}");
}
