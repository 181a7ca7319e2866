//! Shared helpers of the integration tests: binaries, root, swap, running the tracer.
#![allow(dead_code, reason = "each test file uses a different subset")]
pub mod recording;
pub mod redis;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The tracer binary: `MEMTRACE_BIN` (set by `cargo xtask test`) or the release build.
pub fn tracer() -> PathBuf {
    std::env::var_os("MEMTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/redis-memtrace")
        })
}

/// The fault generator built with these tests.
pub fn fault_gen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fault-gen"))
}

/// Fails the test with a clear message when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests need root: run `cargo xtask test`"
    );
    assert!(
        tracer().exists(),
        "{} missing: run `cargo xtask build`",
        tracer().display()
    );
}

fn swap_total_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A swap file created for the test when the machine has none; removed on drop.
pub struct SwapGuard {
    file: Option<PathBuf>,
}

impl SwapGuard {
    /// Makes sure some swap is on.
    pub fn ensure() -> SwapGuard {
        if swap_total_kb() > 0 {
            return SwapGuard { file: None };
        }
        let file = PathBuf::from(format!(
            "/var/tmp/memtrace-test-{}.swap",
            std::process::id()
        ));
        let sh = |cmd: &mut Command| {
            let st = cmd.status().expect("run swap tool");
            assert!(st.success(), "{cmd:?} failed");
        };
        sh(Command::new("fallocate").args(["-l", "256M"]).arg(&file));
        sh(Command::new("chmod").arg("600").arg(&file));
        sh(Command::new("mkswap").arg("-q").arg(&file));
        sh(Command::new("swapon").arg(&file));
        SwapGuard { file: Some(file) }
    }
}

impl Drop for SwapGuard {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = Command::new("swapoff").arg(&file).status();
            let _ = std::fs::remove_file(&file);
        }
    }
}

/// Output of one traced generator run.
pub struct Run {
    /// The generator's stdout.
    pub stdout: String,
    /// The tracer's stderr.
    pub stderr: String,
}

impl Run {
    /// Value after `name ` on a line of the generator's output.
    pub fn value(&self, name: &str) -> Option<String> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map(str::to_string)
    }

    /// Address range printed as `name START END`.
    pub fn range(&self, name: &str) -> (u64, u64) {
        let v = self
            .value(name)
            .unwrap_or_else(|| panic!("no {name} line in {}", self.stdout));
        let mut it = v
            .split_whitespace()
            .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).unwrap());
        (it.next().unwrap(), it.next().unwrap())
    }

    /// The generator's main region.
    pub fn region(&self) -> (u64, u64) {
        self.range("region")
    }
}

/// `redis-memtrace record -q -o OUT -- fault-gen ARGS`; asserts both succeed.
pub fn record_command(out: &Path, gen_args: &[String]) -> Run {
    record_command_env(out, gen_args, &["-q"], &[])
}

/// `redis-memtrace record FLAGS -o OUT -- fault-gen ARGS` with `env` added; asserts both
/// succeed.
pub fn record_command_env(
    out: &Path,
    gen_args: &[String],
    flags: &[&str],
    env: &[(&str, &Path)],
) -> Run {
    let output = Command::new(tracer())
        .arg("record")
        .args(flags)
        .arg("-o")
        .arg(out)
        .envs(env.iter().copied())
        .arg("--")
        .arg(fault_gen())
        .args(gen_args)
        .output()
        .expect("run redis-memtrace");
    let run = Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        output.status.success(),
        "tracer failed: {}\n{}",
        run.stderr,
        run.stdout
    );
    assert!(
        run.stdout.contains("\ndone"),
        "generator did not finish: {}",
        run.stdout
    );
    run
}

/// A stand-in tracefs (for `MEMTRACE_TRACEFS`) holding the real format files of every
/// category the tracer reads, minus the `hidden` tracepoints (`"kmem/rss_stat"`): a
/// kernel without them, as far as the tracer can tell.
pub fn tracefs_without(hidden: &[&str]) -> tempfile::TempDir {
    let real = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .expect("tracefs mounted (cargo xtask setup mounts it)");
    let fake = tempfile::tempdir().unwrap();
    for category in ["exceptions", "sched", "task", "kmem", "vmscan"] {
        let dir = real.join("events").join(category);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let format = entry.path().join("format");
            if hidden.contains(&format!("{category}/{name}").as_str()) || !format.is_file() {
                continue;
            }
            let to = fake.path().join("events").join(category).join(&name);
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&format, to.join("format")).unwrap();
        }
    }
    fake
}

/// A child process killed and reaped when the test ends, passed or failed.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fault-gen --wait-signal ARGS`, attaches with `record --pid`, then releases it.
pub fn record_pid(out: &Path, gen_args: &[String]) -> Run {
    let mut gen_proc = KillOnDrop(
        Command::new(fault_gen())
            .arg("--wait-signal")
            .args(gen_args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut gen_out = BufReader::new(gen_proc.0.stdout.take().unwrap());
    let mut head = String::new();
    while !head.contains("ready ") {
        assert!(
            gen_out.read_line(&mut head).unwrap() > 0,
            "generator ended: {head}"
        );
    }
    let pid = gen_proc.0.id();
    let mut tracer = KillOnDrop(
        Command::new(tracer())
            .args(["record", "--pid", &pid.to_string(), "-o"])
            .arg(out)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(tracer.0.stderr.take().unwrap());
    let mut stderr = String::new();
    loop {
        let mut l = String::new();
        assert!(
            err.read_line(&mut l).unwrap() > 0,
            "tracer ended early: {stderr}"
        );
        stderr.push_str(&l);
        if l.contains("tracing pid") {
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut gen_out, &mut rest).unwrap();
    assert!(gen_proc.0.wait().unwrap().success());
    std::io::Read::read_to_string(&mut err, &mut stderr).unwrap();
    assert!(
        tracer.0.wait().unwrap().success(),
        "tracer failed: {stderr}"
    );
    Run {
        stdout: head + &rest,
        stderr,
    }
}

/// Parses a timeline file.
pub fn read_timeline(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("timeline is valid JSON")
}

/// Runs the tracer with `args`, expecting failure; returns (exit code, stderr).
pub fn tracer_fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(tracer())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every program of the tracer's eBPF object, as `bpftool -j` names them.
pub const PROGRAM_NAMES: &[&str] = &[
    "page_fault_user",
    "page_fault_kernel",
    "fault_done_minor",
    "fault_done_major",
    "mm_page_alloc",
    "rss_stat",
    "reclaim_begin",
    "reclaim_end",
    "mm_vmscan_write_folio",
    "task_newtask",
    "sched_process_fork",
    "sched_process_exit",
    "fork_call_enter",
    "fork_call_exit",
];

/// Our programs still loaded once the tracer has exited, waiting up to 5 s: the kernel
/// frees a program after the last fd closes, but raw tracepoint and perf-event detach
/// waits for an RCU grace period, so a listing taken the instant the process is reaped
/// can still show one.
pub fn our_programs_after_exit() -> Vec<String> {
    let mut left = our_programs_loaded();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = our_programs_loaded();
    }
    left
}

/// Names of the tracer's programs the kernel still has loaded (`bpftool prog show -j`).
pub fn our_programs_loaded() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(out.status.success(), "bpftool prog show failed");
    let progs: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON");
    let loaded: Vec<String> = progs
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    loaded
        .into_iter()
        .filter(|n| PROGRAM_NAMES.contains(&n.as_str()))
        .collect()
}
