//! What the integration tests share about the fault generator (`fault_gen/main.rs`):
//! running it under the tracer, launched or attached, and reading what it printed.
//! Everything else they share is in `testkit`.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use testkit::{Guarded, Recording, process::signal, recording::TRACING_PID, tracer};

/// The fault generator built with these tests.
pub fn fault_gen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fault-gen"))
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

/// Starts `fault-gen --wait-signal GEN_ARGS`, attaches `record --pid PID -o OUT EXTRA`,
/// releases the generator and waits for both to finish; asserts both succeed.
pub fn record_pid<S: AsRef<OsStr>>(out: &Path, gen_args: &[S], extra: &[&str]) -> Run {
    let mut generator = Guarded::kill_on_drop(
        Command::new(fault_gen())
            .arg("--wait-signal")
            .args(gen_args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut gen_out = BufReader::new(generator.stdout.take().unwrap());
    let mut head = String::new();
    while !head.contains("ready ") {
        assert!(
            gen_out.read_line(&mut head).unwrap() > 0,
            "generator ended: {head}"
        );
    }
    let pid = generator.id();
    let rec = Recording::start_with(&["--pid", &pid.to_string()], out, extra, TRACING_PID);
    signal(pid, libc::SIGUSR1);
    let mut rest = String::new();
    gen_out.read_to_string(&mut rest).unwrap();
    assert!(generator.wait().unwrap().success());
    let (status, stderr) = rec.exit();
    assert!(status.success(), "tracer failed: {stderr}");
    Run {
        stdout: head + &rest,
        stderr,
    }
}

/// `fault-gen --wait-signal --pause-after-touch ARGS`: held before its faults, then
/// after them, so a test can act on the tracer around them.
pub struct PausedGenerator {
    process: Guarded,
    out: BufReader<std::process::ChildStdout>,
    seen: String,
}

impl PausedGenerator {
    /// Starts the generator and waits until it is ready for SIGUSR1.
    pub fn start(gen_args: &[&str]) -> PausedGenerator {
        let mut process = Guarded::kill_on_drop(
            Command::new(fault_gen())
                .args(["--wait-signal", "--pause-after-touch"])
                .args(gen_args)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let out = BufReader::new(process.stdout.take().unwrap());
        let mut g = PausedGenerator {
            process,
            out,
            seen: String::new(),
        };
        g.read_until("ready ");
        g
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The kernel's count of its page faults so far (`minflt + majflt` of
    /// `/proc/PID/stat`), the same events the tracer's completion programs count; read
    /// once it sleeps in `sigwait` (it prints `ready` just before).
    pub fn kernel_faults(&self) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while testkit::process::proc_state(self.pid()) != Some('S') {
            assert!(
                std::time::Instant::now() < deadline,
                "generator not waiting"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        testkit::process::ProcStat::read(self.pid())
            .expect("generator alive")
            .faults()
    }

    /// Lets it take its first-touch faults; returns once they are all done.
    pub fn touch(&mut self) {
        assert!(signal(self.pid(), libc::SIGUSR1));
        self.read_until("touched");
        self.read_until("ready ");
    }

    /// Lets it finish; its region.
    pub fn finish(mut self) -> (u64, u64) {
        assert!(signal(self.pid(), libc::SIGUSR1));
        self.out.read_to_string(&mut self.seen).unwrap();
        assert!(self.process.wait().unwrap().success(), "{}", self.seen);
        Run {
            stdout: std::mem::take(&mut self.seen),
            stderr: String::new(),
        }
        .region()
    }

    fn read_until(&mut self, prefix: &str) {
        loop {
            let mut line = String::new();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "generator ended before {prefix:?}: {}", self.seen);
            self.seen.push_str(&line);
            if line.starts_with(prefix) {
                return;
            }
        }
    }
}
