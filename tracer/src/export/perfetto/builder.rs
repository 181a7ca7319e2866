//! The trace under construction: time axis, events, track names, metadata.

use std::{cmp::Reverse, collections::BTreeMap};

use serde_json::{Map, Value, json};

use super::{MAX_BUCKETS, MIN_BUCKET_NS, SYNTHETIC_TID_BASE, input};
use crate::timeline::read::Timeline;

/// A name safe in any trace reader: control characters (which some readers refuse even
/// escaped) become `?`. Args keep the exact text.
pub(crate) fn label(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Time axis of the trace: origin, end and bucket width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Clock {
    /// Monotonic ns shown as ts 0.
    pub base_ns: u64,
    /// Monotonic ns of the end of the trace (never before `base_ns`).
    pub end_ns: u64,
    /// Bucket width, ns (a multiple of [`MIN_BUCKET_NS`]).
    pub bucket_ns: u64,
    /// Number of buckets covering `base_ns..end_ns` (at least 1).
    pub buckets: u64,
}

impl Clock {
    /// A clock from `base_ns` to `end_ns` (moved up to `base_ns` when earlier).
    pub fn new(base_ns: u64, end_ns: u64) -> Clock {
        let end_ns = end_ns.max(base_ns);
        let span = end_ns - base_ns;
        let bucket_ns = span
            .div_ceil(MAX_BUCKETS)
            .div_ceil(MIN_BUCKET_NS)
            .max(1)
            .saturating_mul(MIN_BUCKET_NS);
        let buckets = span.div_ceil(bucket_ns).max(1);
        Clock {
            base_ns,
            end_ns,
            bucket_ns,
            buckets,
        }
    }

    /// ns since the origin (0 for earlier times).
    pub fn rel(&self, ns: u64) -> u64 {
        ns.saturating_sub(self.base_ns)
    }

    /// Bucket of a monotonic time (times past the end land in the last bucket).
    pub fn bucket(&self, ns: u64) -> u64 {
        (self.rel(ns) / self.bucket_ns).min(self.buckets - 1)
    }

    /// Monotonic start of bucket `i`.
    pub fn bucket_start(&self, i: u64) -> u64 {
        self.base_ns
            .saturating_add(i.saturating_mul(self.bucket_ns))
    }

    /// Events per second of `count` events in one bucket.
    pub fn rate(&self, count: u64) -> f64 {
        count as f64 * 1e9 / self.bucket_ns as f64
    }
}

/// One non-metadata trace event, sorted on output by (`rel_ns`, longest first).
struct Ev {
    rel_ns: u64,
    dur_ns: u64,
    body: Map<String, Value>,
}

/// Collects trace events, track names and metadata.
pub(crate) struct Builder {
    /// The time axis.
    pub clock: Clock,
    /// The Redis server's pid.
    pub target_pid: u32,
    /// Extra top-level `metadata` entries.
    pub metadata: Map<String, Value>,
    events: Vec<Ev>,
    processes: BTreeMap<u32, (String, i64)>,
    threads: BTreeMap<(u32, u32), (String, i64)>,
    next_tid: u32,
}

/// ns to the JSON microseconds of `ts` and `dur`.
fn micros(ns: u64) -> Value {
    json!(ns as f64 / 1000.0)
}

/// Bytes to MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

impl Builder {
    pub fn new(t: &Timeline, p: &input::Parsed) -> Builder {
        let base_ns = t.0["run"]["monotonic_start_ns"]
            .as_u64()
            .or(p.first_ns)
            .unwrap_or(0);
        Builder {
            clock: Clock::new(base_ns, p.last_ns.unwrap_or(base_ns)),
            target_pid: p.target_pid,
            metadata: Map::new(),
            events: Vec::new(),
            processes: BTreeMap::new(),
            threads: BTreeMap::new(),
            next_tid: SYNTHETIC_TID_BASE,
        }
    }

    /// Names process `pid` (the first name given wins); lower `sort` is listed first.
    pub fn name_process(&mut self, pid: u32, name: String, sort: i64) {
        self.processes.entry(pid).or_insert((label(&name), sort));
    }

    /// Names thread `tid` of `pid` (the first name given wins).
    pub fn name_thread(&mut self, pid: u32, tid: u32, name: String, sort: i64) {
        self.threads
            .entry((pid, tid))
            .or_insert((label(&name), sort));
    }

    /// A new thread id for a track of `pid` that is not a real thread.
    pub fn synthetic_thread(&mut self, pid: u32, name: String, sort: i64) -> u32 {
        let tid = self.next_tid;
        self.next_tid = self.next_tid.saturating_add(1);
        self.name_thread(pid, tid, name, sort);
        tid
    }

    fn push(&mut self, start_ns: u64, dur_ns: u64, body: Map<String, Value>) {
        self.events.push(Ev {
            rel_ns: self.clock.rel(start_ns),
            dur_ns,
            body,
        });
    }

    fn body(ph: &str, cat: &str, name: &str, pid: u32, tid: u32) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("ph".into(), ph.into());
        m.insert("cat".into(), cat.into());
        m.insert("name".into(), label(name).into());
        m.insert("pid".into(), pid.into());
        m.insert("tid".into(), tid.into());
        m
    }

    /// A complete slice (`X`) from `start_ns` to `end_ns` (monotonic; clamped to the
    /// origin, and to zero length when the end is before the start).
    #[allow(clippy::too_many_arguments, reason = "one slice's fields")]
    pub fn slice(
        &mut self,
        pid: u32,
        tid: u32,
        cat: &str,
        name: &str,
        start_ns: u64,
        end_ns: u64,
        args: Map<String, Value>,
    ) {
        let dur = self
            .clock
            .rel(end_ns)
            .saturating_sub(self.clock.rel(start_ns));
        let mut m = Self::body("X", cat, name, pid, tid);
        m.insert("dur".into(), micros(dur));
        m.insert("args".into(), Value::Object(args));
        self.push(start_ns, dur, m);
    }

    /// A thread-scoped instant (`i`, `s: "t"`).
    pub fn instant(
        &mut self,
        pid: u32,
        tid: u32,
        cat: &str,
        name: &str,
        ts_ns: u64,
        args: Map<String, Value>,
    ) {
        let mut m = Self::body("i", cat, name, pid, tid);
        m.insert("s".into(), "t".into());
        m.insert("args".into(), Value::Object(args));
        self.push(ts_ns, 0, m);
    }

    /// A counter value (`C`) of process `pid`: one series per arg.
    pub fn counter(&mut self, pid: u32, name: &str, ts_ns: u64, args: Map<String, Value>) {
        let mut m = Self::body("C", "memory", name, pid, pid);
        m.insert("args".into(), Value::Object(args));
        self.push(ts_ns, 0, m);
    }

    /// The finished trace object.
    pub fn finish(mut self, t: &Timeline, p: &input::Parsed) -> Value {
        // Every pid and thread that carries an event gets a name.
        let used: Vec<(u32, u32)> = self
            .events
            .iter()
            .filter_map(|e| {
                let pid = u32::try_from(e.body.get("pid")?.as_u64()?).ok()?;
                let tid = u32::try_from(e.body.get("tid")?.as_u64()?).ok()?;
                Some((pid, tid))
            })
            .collect();
        for (pid, tid) in used {
            let sort = if pid == self.target_pid { 0 } else { 1_000_000 };
            self.name_process(pid, format!("process {pid}"), sort);
            let name = if tid == pid {
                "main thread".to_string()
            } else {
                format!("thread {tid}")
            };
            let sort = if tid == pid { 0 } else { 1 };
            // Counters and process-wide events use tid = pid; naming that thread is right
            // too, it is the process's main thread.
            self.name_thread(pid, tid, name, sort);
        }

        let mut out = Vec::with_capacity(self.events.len() + 2 * self.threads.len() + 8);
        for (pid, (name, sort)) in &self.processes {
            out.push(meta("process_name", *pid, *pid, json!({ "name": name })));
            out.push(meta(
                "process_sort_index",
                *pid,
                *pid,
                json!({ "sort_index": sort }),
            ));
        }
        for ((pid, tid), (name, sort)) in &self.threads {
            out.push(meta("thread_name", *pid, *tid, json!({ "name": name })));
            out.push(meta(
                "thread_sort_index",
                *pid,
                *tid,
                json!({ "sort_index": sort }),
            ));
        }
        // Stable: events pushed in time order keep it among equal timestamps.
        self.events.sort_by_key(|e| (e.rel_ns, Reverse(e.dur_ns)));
        for mut e in self.events {
            e.body.insert("ts".into(), micros(e.rel_ns));
            out.push(Value::Object(e.body));
        }

        let mut metadata = Map::new();
        metadata.insert(
            "generator".into(),
            "redis-memtrace export --perfetto".into(),
        );
        let v = &t.0;
        for (key, val) in [
            ("tracer_version", &v["run"]["tracer_version"]),
            ("schema_version", &v["schema_version"]),
            ("wall_start_unix_ns", &v["run"]["wall_start_unix_ns"]),
            ("end_reason", &v["end"]["reason"]),
            ("redis_version", &v["redis"]["version"]),
            ("lost_events", &v["lost_events"]),
            ("target", &v["target"]),
        ] {
            if !val.is_null() {
                metadata.insert(key.into(), val.clone());
            }
        }
        metadata.insert(
            "ts_origin".into(),
            "microseconds since monotonic_start_ns (CLOCK_MONOTONIC)".into(),
        );
        metadata.insert("monotonic_start_ns".into(), self.clock.base_ns.into());
        metadata.insert("monotonic_end_ns".into(), self.clock.end_ns.into());
        metadata.insert("bucket_ms".into(), json!(self.clock.bucket_ns as f64 / 1e6));
        metadata.insert("timeline_events".into(), p.total_events.into());
        metadata.insert("timeline_events_skipped".into(), p.skipped_events.into());
        metadata.append(&mut self.metadata);

        json!({
            "traceEvents": out,
            "displayTimeUnit": "ms",
            "metadata": metadata,
        })
    }
}

/// A metadata (`M`) event.
fn meta(name: &str, pid: u32, tid: u32, args: Value) -> Value {
    json!({ "ph": "M", "name": name, "pid": pid, "tid": tid, "ts": 0, "args": args })
}
