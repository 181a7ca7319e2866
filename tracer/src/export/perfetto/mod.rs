//! Chrome Trace Event JSON for Perfetto UI (<https://ui.perfetto.dev>) and
//! chrome://tracing, converted from a timeline.
//!
//! # What the trace holds
//!
//! Timestamps (`ts`, `dur`) are microseconds (fractions keep the nanoseconds) since
//! `run.monotonic_start_ns`; anything earlier is pinned to 0. Events are sorted by `ts`,
//! and among slices starting together the longer comes first, so they nest.
//!
//! * **Processes.** The Redis server (the target, listed first) and one process per fork
//!   child, named `fork child PID (REASON)`.
//! * **Fork epochs.** Each epoch is a complete slice `REASON epoch ID` (category `epoch`)
//!   on a `fork epochs` track of the parent process, with the child pid, the CoW pages of
//!   both sides, the fork times and Redis's `latest_fork_usec` in its args; the same span
//!   is the child's lifetime slice (category `epoch_child`) on the child's main thread. An
//!   epoch still open when tracing stopped ends at `end.monotonic_end_ns`. The epoch is
//!   not on the parent's own thread: it starts inside the fork call (at
//!   `sched_process_fork`), so the two would overlap without nesting. Overlapping epochs
//!   of one parent go on separate `fork epochs` lanes.
//! * **The fork call** is a slice `fork()` (category `fork`) on the thread that forked:
//!   from the clone syscall's start (its `fork_return` event), lasting `fork_call_ns`
//!   (the libc call Redis times) when known, else `fork_duration_ns` (the syscall). Each
//!   `fork` event is also an instant there.
//! * **Counters** (category `memory`), in the process they measure: `RSS` and `swap`
//!   (arg `MiB`) of the server and of each child from the samples, the child's dropping
//!   to 0 when it exits; `swap (rss_stat)` (arg `MiB`) from `swap_level` events, the last
//!   level of each bucket; `used_memory` and `current_cow_size` (arg `MiB`) from Redis
//!   INFO when sampled. On the server process, `CoW copies/s` and `swap-ins/s` with args
//!   `parent` and `child`: fault events counted per bucket, divided by the bucket length,
//!   one value per bucket from the first bucket to the last non-empty one (zeros
//!   included) and a 0 right after it, so the lines drop back.
//! * **Copy-on-write by activity.** One CoW fault event per page would drown the UI, so
//!   `cow_copy` faults are aggregated per process, activity (Redis command or server
//!   phase) and bucket into one complete slice per non-empty bucket (category `cow`),
//!   from the first to the last copy in the bucket, named after the activity, on a
//!   `CoW: ACTIVITY` track of that process; its args hold the page count, the rate over
//!   the bucket, and the most copied keys. Past
//!   [`MAX_ACTIVITY_TRACKS`] activities of one process, the smallest share one
//!   `other activities` track. At most [`MAX_COW_SLICES`] slices are kept (the largest).
//! * **Swap-ins** are instants `swap-in` (category `swap_in`) on the faulting thread with
//!   the command, key, slot and latency; past [`MAX_SWAP_IN_INSTANTS`] only the slowest
//!   are kept.
//!
//! Buckets are [`MIN_BUCKET_NS`] (100 ms) wide, widened for long runs so there are at
//! most [`MAX_BUCKETS`]; samples past [`MAX_SAMPLES`] are thinned to every k-th. The
//! top-level `metadata` object says what was omitted, so the output size is bounded by
//! these limits, not by the run's length.

mod builder;
mod counters;
mod faults;
mod input;
mod nodes;
mod tracks;

#[cfg(test)]
mod tests;

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

pub(crate) use builder::{Builder, mib};

use crate::timeline::read::Timeline;

/// Narrowest bucket for rates and CoW aggregation, ns.
pub const MIN_BUCKET_NS: u64 = 100_000_000;
/// Most buckets in one trace: longer runs get wider buckets (multiples of 100 ms).
pub const MAX_BUCKETS: u64 = 3000;
/// Most `swap-in` instants; the slowest are kept.
pub const MAX_SWAP_IN_INSTANTS: usize = 5000;
/// Most CoW aggregate slices; the largest are kept.
pub const MAX_COW_SLICES: usize = 30_000;
/// Most `CoW: ACTIVITY` tracks per process (the last one gathers the rest).
pub const MAX_ACTIVITY_TRACKS: usize = 12;
/// Most samples turned into counter values; more are thinned to every k-th.
pub const MAX_SAMPLES: usize = 5000;

/// Synthetic thread ids (epoch lanes, CoW tracks) start here: above Linux's largest
/// possible pid (2^22), so they never collide with a real thread of the trace.
const SYNTHETIC_TID_BASE: u32 = 1 << 30;

/// Converts the timeline at `timeline` and writes the trace to `output`.
pub fn export(timeline: &Path, output: &Path) -> anyhow::Result<()> {
    let trace = trace_of_file(timeline)?;
    let events = write_value(&trace, output)?;
    eprintln!(
        "redis-memtrace: wrote {} ({events} trace events); open it in https://ui.perfetto.dev",
        output.display()
    );
    Ok(())
}

/// The trace of the timeline at `timeline`: one server's, or every node's of a
/// multi-node file.
pub fn trace_of_file(timeline: &Path) -> anyhow::Result<Value> {
    use crate::timeline::read::{Document, load_document};
    // The reader's errors already name their cause; as a plain message the cause is
    // not printed a second time by the caller's error chain.
    Ok(
        match load_document(timeline).map_err(|e| anyhow::anyhow!("{e}"))? {
            Document::One(t) => to_chrome_trace(&t),
            Document::Nodes(set) => nodes::to_chrome_trace_nodes(&set)?,
        },
    )
}

/// Writes the trace of `t` to `output` atomically (temporary file renamed into place,
/// mode 0600); an unwritable destination is one error naming it.
pub fn write_trace(t: &Timeline, output: &Path) -> anyhow::Result<()> {
    write(t, output).map(|_| ())
}

/// [`write_trace`], returning the number of trace events written.
fn write(t: &Timeline, output: &Path) -> anyhow::Result<usize> {
    write_value(&to_chrome_trace(t), output)
}

/// Writes a trace value; returns its number of trace events.
fn write_value(trace: &Value, output: &Path) -> anyhow::Result<usize> {
    // An existing folder as destination would otherwise fail only at the final rename,
    // after the temporary file was written next to it.
    if output.is_dir() {
        anyhow::bail!("cannot write {}: it is a directory", output.display());
    }
    let count = trace["traceEvents"].as_array().map_or(0, Vec::len);
    let bytes = encode(trace).context("cannot encode the trace")?;
    crate::output_file::write_atomically(output, &bytes)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(count)
}

/// The Chrome Trace Event JSON object (`traceEvents`, `displayTimeUnit`, `metadata`) of
/// a timeline. Pure; missing or mistyped optional fields are skipped, never a panic.
pub fn to_chrome_trace(t: &Timeline) -> Value {
    let parsed = input::Parsed::new(t);
    let mut b = Builder::new(t, &parsed);
    tracks::epochs(&mut b, &parsed);
    tracks::fork_instants(&mut b, &parsed);
    counters::samples(&mut b, &parsed);
    counters::swap_levels(&mut b, &parsed);
    let acc = faults::accumulate(&b, &parsed);
    counters::rates(&mut b, &acc);
    faults::cow_slices(&mut b, &acc);
    faults::swap_in_instants(&mut b, &parsed, &acc);
    b.metadata
        .insert("swap_writes".into(), parsed.swap_writes.into());
    b.metadata
        .insert("epochs_skipped".into(), parsed.epochs_skipped.into());
    b.finish(t, &parsed)
}

/// Keys of each event in the order they are written: `ph` and `ts` first, because
/// Perfetto's streaming JSON tokenizer reads an event's keys in order until it finds
/// `ts`, and older versions of it reject some string escapes on the way.
const KEY_ORDER: [&str; 9] = ["ph", "ts", "dur", "pid", "tid", "name", "cat", "s", "args"];

/// The bytes of a trace file for [`to_chrome_trace`]'s value: `displayTimeUnit` first
/// (Perfetto only honours it near the start), then one event per line with `ph` and
/// `ts` first, then `metadata`. Prefer it to plain `serde_json` serialization, which
/// writes keys in alphabetical order.
pub fn encode(trace: &Value) -> serde_json::Result<Vec<u8>> {
    let events = trace["traceEvents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut out = Vec::with_capacity(events.len() * 160 + 4096);
    out.extend_from_slice(b"{\"displayTimeUnit\":\"ms\",\"traceEvents\":[");
    for (i, e) in events.iter().enumerate() {
        out.extend_from_slice(if i == 0 { &b"\n"[..] } else { &b",\n"[..] });
        let Some(m) = e.as_object() else {
            serde_json::to_writer(&mut out, e)?;
            continue;
        };
        out.push(b'{');
        let ordered = KEY_ORDER.iter().filter_map(|k| m.get_key_value(*k));
        let rest = m.iter().filter(|(k, _)| !KEY_ORDER.contains(&k.as_str()));
        for (j, (k, v)) in ordered.chain(rest).enumerate() {
            if j > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, k)?;
            out.push(b':');
            serde_json::to_writer(&mut out, v)?;
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"\n],\"metadata\":");
    serde_json::to_writer(&mut out, &trace["metadata"])?;
    out.extend_from_slice(b"}\n");
    Ok(out)
}
