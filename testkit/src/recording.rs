//! The one `Recording`: `redis-memtrace record` running in the background, ready once it
//! printed a given line (by default: attribution is on), stopped by SIGINT; plus the
//! tracer binary and the root check every tracer test starts with.
//!
//! A thread reads the tracer's stderr from the start, so the tracer never blocks on a
//! full pipe, and hands the lines over; [`Recording::stop`] returns all of them.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{ChildStderr, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use crate::{
    Error, Server,
    process::{Guarded, signal, wait_exit},
};

/// The line `record --redis` prints once Redis attribution is on.
pub const ATTRIBUTION_ON: &str = "attribution on";
/// The line `record` prints once its target is traced.
pub const TRACING_PID: &str = "tracing pid";

/// How long [`Recording::wait_for`] waits for a line.
const LINE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the tracer has to exit after SIGINT, or by itself, before SIGKILL.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a dropped recording has to exit after SIGINT before SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// The tracer binary: `MEMTRACE_BIN` (set by `cargo xtask test`) or the release build.
pub fn tracer() -> PathBuf {
    std::env::var_os("MEMTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/redis-memtrace")
        })
}

/// Fails the test with a clear message when not root or when the tracer is not built.
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

/// Runs the tracer with `args`, expecting failure; returns (exit code, stderr).
pub fn tracer_fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(tracer())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer().display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The names of the files in `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Runs the tracer with `args` in the folder `cwd`: (exit code, stderr, stdout).
pub fn run_in(cwd: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(tracer())
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tracer().display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Bad input as the README promises it: the tracer run with `args` in `cwd` exits 1 with
/// exactly `line` on stderr (one line, nothing else) and nothing on stdout, and leaves
/// the folder's files as they were.
pub fn fails_in_one_line(cwd: &Path, args: &[&str], line: &str) {
    let before = names_in(cwd);
    let (code, stderr, stdout) = run_in(cwd, args);
    eprintln!("{args:?}: exit {code:?}: {}", stderr.trim_end());
    assert_eq!(code, Some(1), "{args:?}: {stderr}");
    assert_eq!(stderr, format!("{line}\n"), "{args:?}");
    assert_eq!(stdout, "", "{args:?}: stdout");
    assert_eq!(names_in(cwd), before, "{args:?}: the folder changed");
}

/// The lines of `stderr` (each with its newline), read by a thread of their own until it
/// closes; with `echo`, each is also printed on our stderr as it comes.
fn read_lines(stderr: Option<ChildStderr>, echo: bool) -> Receiver<String> {
    let (tx, lines) = mpsc::channel();
    if let Some(stderr) = stderr {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                if tx.send(line + "\n").is_err() {
                    break;
                }
            }
        });
    }
    lines
}

/// How to start a recording: `record TARGET -o OUT EXTRA`, ready at the stderr line
/// containing `ready`.
pub struct Launch<'a> {
    /// `["--redis", url]`, `["--pid", pid]` ...
    pub target: &'a [&'a str],
    /// The timeline.
    pub out: &'a Path,
    /// More options.
    pub extra: &'a [&'a str],
    /// A piece of the stderr line that says it is ready, e.g. [`ATTRIBUTION_ON`].
    pub ready: &'a str,
    /// Copy every stderr line to ours as it comes (for people watching).
    pub echo: bool,
}

/// A running `redis-memtrace record`; SIGINT (then SIGKILL after 10 s) when dropped.
pub struct Recording {
    proc: Guarded,
    lines: Receiver<String>,
    seen: String,
}

impl Recording {
    /// `record --redis 127.0.0.1:PORT -o OUT EXTRA`, returned once attribution is on.
    pub fn start(server: &Server, out: &Path, extra: &[&str]) -> Recording {
        Recording::start_with(&["--redis", &server.url()], out, extra, ATTRIBUTION_ON)
    }

    /// `record TARGET -o OUT EXTRA`, returned once it printed a line containing `ready`.
    pub fn start_with(target: &[&str], out: &Path, extra: &[&str], ready: &str) -> Recording {
        let launch = Launch {
            target,
            out,
            extra,
            ready,
            echo: false,
        };
        Recording::launch(&launch).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the tracer as `launch` says and waits until it is ready.
    pub fn launch(launch: &Launch) -> Result<Recording, Error> {
        let mut cmd = Command::new(tracer());
        cmd.arg("record")
            .args(launch.target)
            .arg("-o")
            .arg(launch.out)
            .args(launch.extra);
        Recording::spawn(cmd, launch.ready, launch.echo)
    }

    /// `redis-memtrace serve ARGS` in the folder `cwd`, returned once it printed a line
    /// containing `ready`.
    pub fn serve(cwd: &Path, args: &[&str], ready: &str) -> Recording {
        let mut cmd = Command::new(tracer());
        cmd.arg("serve").args(args).current_dir(cwd);
        Recording::spawn(cmd, ready, false).unwrap_or_else(|e| panic!("{e}"))
    }

    fn spawn(mut cmd: Command, ready: &str, echo: bool) -> Result<Recording, Error> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(Error::io(format!(
                "starting {} (run `cargo xtask build`)",
                tracer().display()
            )))?;
        let lines = read_lines(child.stderr.take(), echo);
        let mut rec = Recording {
            proc: Guarded::new(child, libc::SIGINT, DROP_GRACE),
            lines,
            seen: String::new(),
        };
        rec.try_wait_for(ready)?;
        Ok(rec)
    }

    /// The tracer's pid.
    pub fn pid(&self) -> u32 {
        self.proc.id()
    }

    /// Sends `sig` to the tracer.
    pub fn signal(&self, sig: libc::c_int) {
        signal(self.pid(), sig);
    }

    /// Reads stderr up to the first line containing `needle`; what it read, that line
    /// included. An error if the tracer ends first or nothing comes for 120 s.
    pub fn try_wait_for(&mut self, needle: &str) -> Result<String, Error> {
        let mut read = String::new();
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            let line = match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => line,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failed(&format!("tracer ended before {needle:?}")));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failed(&format!(
                        "no {needle:?} from the tracer within {LINE_TIMEOUT:?}"
                    )));
                }
            };
            self.seen.push_str(&line);
            read.push_str(&line);
            if line.contains(needle) {
                return Ok(read);
            }
            if needle == ATTRIBUTION_ON && line.contains("attribution off") {
                return Err(self.failed("the tracer turned attribution off"));
            }
        }
    }

    /// [`Recording::try_wait_for`], panicking on failure.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.try_wait_for(needle).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An [`Error::Tracer`] with all of stderr so far.
    fn failed(&mut self, what: &str) -> Error {
        self.drain(Duration::ZERO);
        Error::Tracer {
            what: what.to_string(),
            stderr: self.seen.clone(),
        }
    }

    /// Moves the lines read so far into `seen`, waiting up to `linger` for each more.
    fn drain(&mut self, linger: Duration) {
        while let Ok(line) = self.lines.recv_timeout(linger) {
            self.seen.push_str(&line);
        }
    }

    /// Waits for the tracer to exit by itself (or after a signal sent before); its status
    /// and all of its stderr. Killed, and an error, after 120 s.
    pub fn try_exit(mut self) -> Result<(ExitStatus, String), Error> {
        let Some(status) = wait_exit(&mut self.proc, EXIT_TIMEOUT) else {
            self.proc.stop();
            return Err(self.failed(&format!("tracer still running after {EXIT_TIMEOUT:?}")));
        };
        // The pipe closes with the process; a second of slack for the reader thread.
        self.drain(Duration::from_secs(1));
        Ok((status, std::mem::take(&mut self.seen)))
    }

    /// [`Recording::try_exit`], panicking on failure.
    pub fn exit(self) -> (ExitStatus, String) {
        self.try_exit().unwrap_or_else(|e| panic!("{e}"))
    }

    /// SIGINT, wait for a clean exit, return everything it printed on stderr.
    pub fn try_stop(self) -> Result<String, Error> {
        self.signal(libc::SIGINT);
        let (status, stderr) = self.try_exit()?;
        if !status.success() {
            return Err(Error::Tracer {
                what: format!("tracer failed ({status})"),
                stderr,
            });
        }
        Ok(stderr)
    }

    /// [`Recording::try_stop`], panicking on failure.
    pub fn stop(self) -> String {
        self.try_stop().unwrap_or_else(|e| panic!("{e}"))
    }
}
