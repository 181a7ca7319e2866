//! The NDJSON stream (`record --format ndjson`): one JSON object per line, written as
//! events happen, so `redis-memtrace record -o - --format ndjson | jq` works live.
//!
//! Line 1 is `{"type":"header",...}` (schema_version, run, target); then one line per
//! record, each exactly an element of the JSON timeline's `events`; the last line is
//! `{"type":"trailer",...}` with the fields that follow `events` in the JSON document.
//!
//! Only whole lines reach the file: records are collected in memory and written with one
//! `write` per drain, so a run killed at any point leaves a file that is valid line by
//! line (a stream without its trailer is an unfinished run).

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{RunInfo, SCHEMA_VERSION, TargetInfo, Trailer, json};
use crate::analysis::stream::TimelineEvent;

/// Where the lines go.
enum Sink {
    Stdout(io::Stdout),
    /// The file, its path, and the bytes of whole lines written so far.
    File(File, PathBuf, u64),
}

/// Streams one timeline as NDJSON.
pub struct NdjsonTimeline {
    sink: Sink,
    pending: Vec<u8>,
}

/// Pending bytes that force a write even before the caller's next flush.
const FLUSH_AT: usize = 1 << 20;

impl NdjsonTimeline {
    /// Opens `dest` (`-` is stdout). A file is created 0600 or truncated, never through a
    /// symlink (`O_NOFOLLOW`); it is written live, so there is no temporary name.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let sink = if dest == Path::new("-") {
            Sink::Stdout(io::stdout())
        } else {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(dest)?;
            Sink::File(file, dest.to_path_buf(), 0)
        };
        Ok(NdjsonTimeline {
            sink,
            pending: Vec::with_capacity(64 << 10),
        })
    }

    /// Writes the header line.
    pub fn write_header(&mut self, run: &RunInfo, target: &TargetInfo) -> io::Result<()> {
        let p = &mut self.pending;
        write!(
            p,
            "{{\"type\":\"header\",\"schema_version\":{SCHEMA_VERSION},\"run\":"
        )?;
        json::to_writer(p, run)?;
        p.write_all(b",\"target\":")?;
        json::to_writer(p, target)?;
        p.write_all(b"}\n")?;
        self.flush()
    }

    /// Queues one record line.
    pub fn write_record(&mut self, record: &TimelineEvent) -> io::Result<()> {
        json::write_record(&mut self.pending, record)?;
        self.pending.push(b'\n');
        if self.pending.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the queued lines (whole lines only).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        match &mut self.sink {
            Sink::Stdout(out) => {
                let mut lock = out.lock();
                lock.write_all(&self.pending)?;
                lock.flush()?;
            }
            Sink::File(f, _, whole) => {
                if let Err(e) = f.write_all(&self.pending) {
                    // A full disk takes part of a write: cut back to the last whole
                    // line, so the file stays valid line by line (an unfinished run).
                    let _ = f.set_len(*whole);
                    return Err(e);
                }
                *whole += self.pending.len() as u64;
            }
        }
        self.pending.clear();
        Ok(())
    }

    /// Writes the trailer line and syncs. Returns the destination (`-` for stdout).
    pub fn finish(mut self, trailer: &Trailer) -> io::Result<PathBuf> {
        self.pending.extend_from_slice(b"{\"type\":\"trailer\",");
        json::write_trailer_fields(&mut self.pending, trailer)?;
        self.pending.extend_from_slice(b"}\n");
        self.flush()?;
        match self.sink {
            Sink::Stdout(_) => Ok(PathBuf::from("-")),
            Sink::File(f, path, _) => {
                f.sync_all()?;
                Ok(path)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{EndInfo, KernelCounters};

    fn run() -> RunInfo {
        RunInfo {
            tracer_version: "test",
            kernel_release: "6.18".into(),
            monotonic_start_ns: 1,
            wall_start_unix_ns: 2,
            attach_ns: 3,
            options: serde_json::json!({}),
            host: Default::default(),
        }
    }

    #[test]
    fn lines_are_header_records_trailer_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.ndjson");
        let mut t = NdjsonTimeline::create(&dest).unwrap();
        t.write_header(
            &run(),
            &TargetInfo {
                pid: 7,
                comm: "x".into(),
                exe: "/x".into(),
                start_time_ticks: 1,
                command: None,
            },
        )
        .unwrap();
        for i in 0..3 {
            t.write_record(&TimelineEvent::Fork(crate::analysis::stream::Fork {
                ts_ns: 10 + i,
                pid: 7,
                tid: 7,
                child_pid: 8,
                epoch: Some(0),
            }))
            .unwrap();
        }
        // Before finish: header on disk, records only after a flush.
        let text = std::fs::read_to_string(&dest).unwrap();
        assert_eq!(text.lines().count(), 1);
        t.flush().unwrap();
        let trailer = Trailer {
            epochs: vec![],
            lost_events: 0,
            kernel: KernelCounters::default(),
            summary: Default::default(),
            end: EndInfo {
                reason: "signal".into(),
                monotonic_end_ns: 20,
                target_exit_status: None,
            },
            redis: None,
            samples: vec![],
            warnings: vec![],
            event_cap: Default::default(),
            segments: vec![],
            cluster: vec![],
        };
        t.finish(&trailer).unwrap();
        let text = std::fs::read_to_string(&dest).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0]["type"], "header");
        assert_eq!(lines[1]["kind"], "fork");
        assert_eq!(lines[4]["type"], "trailer");
        assert_eq!(lines[4]["end"]["reason"], "signal");
        let back = crate::timeline::read::parse("t", &text).unwrap();
        assert_eq!(back.events().len(), 3);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.ndjson");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &dest).unwrap();
        assert!(NdjsonTimeline::create(&dest).is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }
}
