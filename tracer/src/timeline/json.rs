//! The JSON timeline, written as a stream: header, then one object per record inside
//! `"events"`, then the trailer. Memory stays flat however long the run.
//!
//! The file is written under a temporary name in the destination directory and renamed
//! when complete, so the output path never holds a truncated timeline.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{RunInfo, SCHEMA_VERSION, TargetInfo, Trailer};
use crate::{
    analysis::stream::{Fork, ForkReturn, SwapLevel, TimelineEvent},
    attribution::context::Attribution,
    output_file::AtomicFile,
};

/// Streams one timeline to disk.
pub struct JsonTimeline {
    file: AtomicFile,
    first: bool,
}

impl JsonTimeline {
    /// Creates the temporary file (mode 0600, never through an existing file or link).
    /// Called before anything is attached, so an unwritable path fails early.
    pub fn create(dest: &Path) -> io::Result<Self> {
        Ok(JsonTimeline {
            file: AtomicFile::create(dest)?,
            first: true,
        })
    }

    /// Writes everything known before tracing starts.
    pub fn write_header(&mut self, run: &RunInfo, target: &TargetInfo) -> io::Result<()> {
        let out = self.file.writer();
        write!(out, "{{\"schema_version\":{SCHEMA_VERSION},\"run\":")?;
        to_writer(out, run)?;
        out.write_all(b",\"target\":")?;
        to_writer(out, target)?;
        out.write_all(b",\"events\":[\n")
    }

    /// Appends one record to `events`.
    pub fn write_record(&mut self, record: &TimelineEvent) -> io::Result<()> {
        let out = self.file.writer();
        if !self.first {
            out.write_all(b",\n")?;
        }
        self.first = false;
        write_record(out, record)
    }

    /// Writes the trailer, syncs and moves the file into place.
    pub fn finish(mut self, trailer: &Trailer) -> io::Result<PathBuf> {
        let out = self.file.writer();
        out.write_all(b"\n],")?;
        write_trailer_fields(out, trailer)?;
        out.write_all(b"}\n")?;
        self.file.commit()
    }

    /// Removes the temporary file (used when the run fails before producing anything).
    pub fn abandon(self) {
        self.file.abandon();
    }
}

/// Writes the trailer's fields as `"key":value,...` (no braces), in serialization order.
pub fn write_trailer_fields<W: Write>(out: &mut W, trailer: &Trailer) -> io::Result<()> {
    let value = serde_json::to_value(trailer).map_err(io::Error::other)?;
    let serde_json::Value::Object(map) = value else {
        return Err(io::Error::other("trailer is not an object"));
    };
    let mut first = true;
    for (key, value) in map {
        if !first {
            out.write_all(b",")?;
        }
        first = false;
        to_writer(out, &key)?;
        out.write_all(b":")?;
        to_writer(out, &value)?;
    }
    Ok(())
}

pub(crate) fn to_writer<W: Write, T: Serialize + ?Sized>(w: &mut W, value: &T) -> io::Result<()> {
    serde_json::to_writer(w, value).map_err(io::Error::other)
}

fn opt(v: Option<u32>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn put_u64<W: Write>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(itoa::Buffer::new().format(v).as_bytes())
}

fn put_bool<W: Write>(w: &mut W, v: bool) -> io::Result<()> {
    w.write_all(if v { b"true" } else { b"false" })
}

/// A key as the JSON string of its [`escape_key`] form, without building that form:
/// escape_key's output is printable ASCII, so JSON only doubles its backslashes and
/// escapes its quotes.
fn put_key<W: Write>(w: &mut W, key: &[u8]) -> io::Result<()> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    w.write_all(b"\"")?;
    let mut from = 0;
    for (i, &b) in key.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\\\\\",
            b'"' => b"\\\\\\\"",
            b'\n' => b"\\\\n",
            b'\r' => b"\\\\r",
            b'\t' => b"\\\\t",
            0x20..=0x7e => continue,
            _ => &[
                b'\\',
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ],
        };
        w.write_all(&key[from..i])?;
        w.write_all(escaped)?;
        from = i + 1;
    }
    w.write_all(&key[from..])?;
    w.write_all(b"\"")
}

/// The attribution fields of a fault record (`,"activity":...`).
fn put_attribution<W: Write>(w: &mut W, at: &Attribution) -> io::Result<()> {
    w.write_all(b",\"activity\":")?;
    to_writer(w, &at.activity)?;
    if let Some(key) = &at.key {
        w.write_all(b",\"key\":")?;
        put_key(w, &key.bytes)?;
        w.write_all(b",\"key_len\":")?;
        put_u64(w, key.original_len)?;
        w.write_all(b",\"key_truncated\":")?;
        put_bool(w, key.truncated())?;
        if key.hashed {
            w.write_all(b",\"key_hashed\":true")?;
        }
    }
    if let Some(slot) = at.slot {
        w.write_all(b",\"slot\":")?;
        put_u64(w, u64::from(slot))?;
    }
    if let Some(stage) = at.stage {
        w.write_all(b",\"stage\":\"")?;
        w.write_all(stage.as_bytes())?;
        w.write_all(b"\"")?;
    }
    if let Some(n) = at.keys_in_command {
        w.write_all(b",\"keys_in_command\":")?;
        put_u64(w, u64::from(n))?;
    }
    Ok(())
}

/// Writes one record as a JSON object. Hand-formatted: this runs for every event.
pub fn write_record<W: Write>(w: &mut W, record: &TimelineEvent) -> io::Result<()> {
    use tracer_common::fault_flags as ff;
    match record {
        TimelineEvent::Fault {
            ts_ns,
            pid,
            tid,
            kind,
            addr,
            role,
            epoch,
            error_code,
            latency_ns,
            flags,
            attribution,
        } => {
            let b = |bit: u32| flags & bit != 0;
            w.write_all(b"{\"ts_ns\":")?;
            put_u64(w, *ts_ns)?;
            w.write_all(b",\"pid\":")?;
            put_u64(w, u64::from(*pid))?;
            w.write_all(b",\"tid\":")?;
            put_u64(w, u64::from(*tid))?;
            w.write_all(b",\"kind\":\"")?;
            w.write_all(kind.name().as_bytes())?;
            w.write_all(b"\",\"addr\":")?;
            put_u64(w, *addr)?;
            w.write_all(b",\"role\":\"")?;
            w.write_all(role.name().as_bytes())?;
            w.write_all(b"\",\"epoch\":")?;
            match epoch {
                Some(e) => put_u64(w, u64::from(*e))?,
                None => w.write_all(b"null")?,
            }
            w.write_all(b",\"error_code\":")?;
            put_u64(w, *error_code)?;
            w.write_all(b",\"latency_ns\":")?;
            put_u64(w, *latency_ns)?;
            w.write_all(b",\"huge\":")?;
            put_bool(w, b(ff::ALLOC_HUGE))?;
            w.write_all(b",\"major\":")?;
            put_bool(w, b(ff::MAJOR))?;
            w.write_all(b",\"kernel_mode\":")?;
            put_bool(w, b(ff::KERNEL_MODE))?;
            w.write_all(b",\"reclaim\":")?;
            put_bool(w, b(ff::RECLAIM))?;
            if let Some(at) = attribution {
                put_attribution(w, at)?;
                if b(ff::IN_ALLOCATOR) {
                    w.write_all(b",\"in_allocator\":true")?;
                }
            }
            w.write_all(b"}")
        }
        TimelineEvent::Fork(Fork {
            ts_ns,
            pid,
            tid,
            child_pid,
            epoch,
        }) => write!(
            w,
            "{{\"ts_ns\":{ts_ns},\"pid\":{pid},\"tid\":{tid},\"kind\":\"fork\",\"child_pid\":{child_pid},\"epoch\":{}}}",
            opt(*epoch)
        ),
        TimelineEvent::ForkReturn(ForkReturn {
            ts_ns,
            pid,
            tid,
            ret,
            duration_ns,
            epoch,
        }) => write!(
            w,
            "{{\"ts_ns\":{ts_ns},\"pid\":{pid},\"tid\":{tid},\"kind\":\"fork_return\",\"ret\":{ret},\"duration_ns\":{duration_ns},\"epoch\":{}}}",
            opt(*epoch)
        ),
        TimelineEvent::Exit {
            ts_ns,
            pid,
            tid,
            process_exit,
            epoch,
        } => write!(
            w,
            "{{\"ts_ns\":{ts_ns},\"pid\":{pid},\"tid\":{tid},\"kind\":\"exit\",\"process_exit\":{process_exit},\"epoch\":{}}}",
            opt(*epoch)
        ),
        TimelineEvent::SwapLevel(SwapLevel {
            ts_ns,
            pid,
            tid,
            bytes,
            delta_pages,
        }) => write!(
            w,
            "{{\"ts_ns\":{ts_ns},\"pid\":{pid},\"tid\":{tid},\"kind\":\"swap_level\",\"swap_bytes\":{bytes},\"delta_pages\":{}}}",
            delta_pages.map_or_else(|| "null".to_string(), |d| d.to_string())
        ),
        TimelineEvent::SwapWrite {
            ts_ns,
            pid,
            tid,
            pfn,
        } => write!(
            w,
            "{{\"ts_ns\":{ts_ns},\"pid\":{pid},\"tid\":{tid},\"kind\":\"swap_write\",\"pfn\":{pfn}}}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output_file::temp_path;
    use crate::{
        analysis::classify::FaultKind,
        analysis::fork_epochs::Role,
        analysis::stream::{Analyzer, Summary},
        timeline::{EndInfo, KernelCounters},
    };
    use std::fs;

    fn run() -> RunInfo {
        RunInfo {
            tracer_version: "test",
            kernel_release: "6.18".into(),
            monotonic_start_ns: 1,
            wall_start_unix_ns: 2,
            attach_ns: 3,
            options: serde_json::json!({"duration": null}),
            host: Default::default(),
        }
    }

    fn target() -> TargetInfo {
        TargetInfo {
            pid: 7,
            comm: "a\"b\\c".into(),
            exe: "/bin/x".into(),
            start_time_ticks: 9,
            command: Some(vec!["x".into(), "--y".into()]),
        }
    }

    #[test]
    fn every_record_kind_is_valid_json_with_required_fields() {
        let records = [
            TimelineEvent::Fault {
                ts_ns: 5,
                pid: 7,
                tid: 8,
                kind: FaultKind::CowCopy,
                addr: 0x7fff_0000_1000,
                role: Role::Parent,
                epoch: Some(0),
                error_code: 7,
                latency_ns: 900,
                flags: tracer_common::fault_flags::MAJOR,
                attribution: None,
            },
            TimelineEvent::Fork(Fork {
                ts_ns: 1,
                pid: 7,
                tid: 7,
                child_pid: 9,
                epoch: None,
            }),
            TimelineEvent::ForkReturn(ForkReturn {
                ts_ns: 1,
                pid: 7,
                tid: 7,
                ret: -11,
                duration_ns: 4,
                epoch: None,
            }),
            TimelineEvent::Exit {
                ts_ns: 1,
                pid: 9,
                tid: 9,
                process_exit: true,
                epoch: Some(0),
            },
            TimelineEvent::SwapLevel(SwapLevel {
                ts_ns: 1,
                pid: 7,
                tid: 7,
                bytes: 4096,
                delta_pages: None,
            }),
            TimelineEvent::SwapWrite {
                ts_ns: 1,
                pid: 7,
                tid: 7,
                pfn: 3,
            },
        ];
        for r in &records {
            let mut buf = Vec::new();
            write_record(&mut buf, r).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&buf)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&buf)));
            for key in ["ts_ns", "tid", "kind", "pid"] {
                assert!(v.get(key).is_some(), "{key} missing in {v}");
            }
        }
        let mut buf = Vec::new();
        write_record(&mut buf, &records[0]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["kind"], "cow_copy");
        assert_eq!(v["addr"], 0x7fff_0000_1000u64);
        assert_eq!(v["major"], true);
        assert_eq!(v["huge"], false);
    }

    #[test]
    fn complete_file_parses_and_temp_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.json");
        let mut tl = JsonTimeline::create(&dest).unwrap();
        tl.write_header(&run(), &target()).unwrap();
        let an = Analyzer::new(7, None);
        for i in 0..3 {
            tl.write_record(&TimelineEvent::Exit {
                ts_ns: i,
                pid: 7,
                tid: 7,
                process_exit: false,
                epoch: None,
            })
            .unwrap();
        }
        let (epochs, summary) = an.finish(10);
        let trailer = Trailer {
            epochs,
            lost_events: 0,
            kernel: KernelCounters::default(),
            summary,
            end: EndInfo {
                reason: "duration".into(),
                monotonic_end_ns: 10,
                target_exit_status: None,
            },
            redis: None,
            samples: Vec::new(),
            warnings: vec!["a warning".into()],
            event_cap: Default::default(),
            segments: vec![],
            cluster: vec![],
        };
        tl.finish(&trailer).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&dest).unwrap()).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["target"]["comm"], "a\"b\\c");
        assert_eq!(v["events"].as_array().unwrap().len(), 3);
        assert_eq!(v["summary"]["faults"]["cow_copy"], 0);
        assert_eq!(v["summary"]["forks"], 0);
        assert!(v["epochs"].as_array().unwrap().is_empty());
        assert!(v.get("cluster").is_none(), "no cluster map: no key");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
        let _ = Summary::default();
    }

    #[test]
    fn refuses_to_write_through_an_existing_temp_name() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("t.json");
        fs::write(temp_path(&dest), b"x").unwrap();
        assert!(JsonTimeline::create(&dest).is_err());
    }
}

#[cfg(test)]
mod encoding {
    use super::*;
    use crate::{
        analysis::classify::FaultKind,
        analysis::fork_epochs::Role,
        attribution::{
            context::Attribution,
            keys::{KeyBytes, escape_key},
        },
    };
    use proptest::prelude::*;
    use std::sync::Arc;

    proptest! {
        #[test]
        fn keys_are_the_json_string_of_their_escaped_form(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            put_key(&mut out, &key).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&escape_key(&key)).unwrap());
        }
    }

    #[test]
    fn a_keyed_fault_reads_back_field_by_field() {
        let at = Arc::new(Attribution {
            key: Some(Arc::new(KeyBytes::new(b"a\"b\\c\n\xff", 40, 128))),
            slot: Some(1234),
            stage: Some("parse"),
            keys_in_command: Some(3),
            ..Attribution::phase("SET")
        });
        let r = TimelineEvent::Fault {
            ts_ns: u64::MAX,
            pid: 7,
            tid: 8,
            kind: FaultKind::SwapIn,
            addr: 0x7fff_0000_1000,
            role: Role::Child,
            epoch: None,
            error_code: 4,
            latency_ns: 0,
            flags: tracer_common::fault_flags::MAJOR | tracer_common::fault_flags::KERNEL_MODE,
            attribution: Some(at),
        };
        let mut out = Vec::new();
        write_record(&mut out, &r).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "ts_ns": u64::MAX, "pid": 7, "tid": 8, "kind": "swap_in",
                "addr": 0x7fff_0000_1000u64, "role": "child", "epoch": null, "error_code": 4,
                "latency_ns": 0, "huge": false, "major": true, "kernel_mode": true,
                "reclaim": false, "activity": "SET", "key": "a\\\"b\\\\c\\n\\xff",
                "key_len": 40, "key_truncated": true, "slot": 1234, "stage": "parse",
                "keys_in_command": 3
            })
        );
    }
}
