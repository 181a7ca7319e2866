//! A tracer attached to a test's Redis with `record --redis`, stopped by SIGINT.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
};

use super::{KillOnDrop, redis::RedisServer, tracer};

/// A tracer attached with `record --redis`, stopped by SIGINT.
pub struct Recording {
    proc: KillOnDrop,
    stderr: BufReader<std::process::ChildStderr>,
    seen: String,
}

impl Recording {
    /// Starts recording and waits until attribution is on.
    pub fn start(server: &RedisServer, out: &Path, extra: &[&str]) -> Recording {
        let mut child = Command::new(tracer())
            .args(["record", "--redis", &server.url(), "-o"])
            .arg(out)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start redis-memtrace");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut r = Recording {
            proc: KillOnDrop(child),
            stderr,
            seen: String::new(),
        };
        loop {
            let mut l = String::new();
            assert!(
                r.stderr.read_line(&mut l).unwrap() > 0,
                "tracer ended before attribution was on: {}",
                r.seen
            );
            r.seen.push_str(&l);
            if l.contains("attribution on") {
                break;
            }
        }
        r
    }

    /// The tracer's pid.
    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// SIGINT, wait for a clean exit, return everything it printed.
    pub fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.proc.0.id() as i32, libc::SIGINT) };
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        self.seen.push_str(&rest);
        let status = self.proc.0.wait().unwrap();
        assert!(status.success(), "tracer failed: {}", self.seen);
        self.seen
    }
}
