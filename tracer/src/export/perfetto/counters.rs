//! Counter tracks: memory from the samples and `swap_level` events, fault rates.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::{Builder, MAX_SAMPLES, faults::Acc, input::Parsed, mib};

/// Counter of resident memory (arg `MiB`), in the server and each child.
pub const RSS: &str = "RSS";
/// Counter of swapped-out memory from the samples (arg `MiB`).
pub const SWAP: &str = "swap";
/// Counter of swapped-out memory from `swap_level` events (arg `MiB`).
pub const SWAP_RSS_STAT: &str = "swap (rss_stat)";
/// Counter of Redis INFO `used_memory` (arg `MiB`).
pub const USED_MEMORY: &str = "used_memory";
/// Counter of Redis INFO `current_cow_size` (arg `MiB`).
pub const CURRENT_COW_SIZE: &str = "current_cow_size";
/// Counter of copy-on-write copies per second (args `parent`, `child`).
pub const COW_RATE: &str = "CoW copies/s";
/// Counter of swap-ins per second (args `parent`, `child`).
pub const SWAP_IN_RATE: &str = "swap-ins/s";

fn mib_arg(bytes: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("MiB".into(), mib(bytes).into());
    m
}

/// RSS, swap and INFO counters from the samples (every k-th past [`MAX_SAMPLES`]);
/// a child's counters drop to 0 when it exits.
pub fn samples(b: &mut Builder, p: &Parsed) {
    let n = p.samples.len();
    let stride = n.div_ceil(MAX_SAMPLES).max(1);
    let target = b.target_pid;
    let mut children = BTreeSet::new();
    let mut used = 0usize;
    for (i, s) in p.samples.iter().enumerate() {
        // The last sample is always kept: it is the state at the end of the run.
        if i % stride != 0 && i + 1 != n {
            continue;
        }
        used += 1;
        let mut mem = |pid: u32, rss: Option<u64>, swap: Option<u64>| {
            if let Some(v) = rss {
                b.counter(pid, RSS, s.ts_ns, mib_arg(v));
            }
            if let Some(v) = swap {
                b.counter(pid, SWAP, s.ts_ns, mib_arg(v));
            }
        };
        mem(target, s.server_rss(), s.server_swap());
        if let Some((pid, m)) = s.child {
            mem(pid, Some(m.rss_bytes), Some(m.swap_bytes));
            children.insert(pid);
        }
        let info = s.info.as_ref();
        if let Some(v) = info.and_then(|i| i.used_memory) {
            b.counter(target, USED_MEMORY, s.ts_ns, mib_arg(v));
        }
        if let Some(v) = info.and_then(|i| i.current_cow_size) {
            b.counter(target, CURRENT_COW_SIZE, s.ts_ns, mib_arg(v));
        }
    }
    for e in &p.epochs {
        let Some(child) = e.child().filter(|c| children.contains(c)) else {
            continue;
        };
        if !e.open() && e.end_reason != Some("trace_end") {
            b.counter(child, RSS, e.shown_end_ns, mib_arg(0));
            b.counter(child, SWAP, e.shown_end_ns, mib_arg(0));
        }
    }
    b.metadata.insert(
        "samples".into(),
        json!({ "total": n, "used": used, "stride": stride }),
    );
}

/// `swap (rss_stat)` per process: the last `swap_level` of each bucket, at its time.
pub fn swap_levels(b: &mut Builder, p: &Parsed) {
    let mut last: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
    for s in &p.swap_levels {
        let slot = last
            .entry((s.pid, b.clock.bucket(s.ts_ns)))
            .or_insert((s.ts_ns, s.bytes));
        if s.ts_ns >= slot.0 {
            *slot = (s.ts_ns, s.bytes);
        }
    }
    for ((pid, _), (ts, bytes)) in last {
        b.counter(pid, SWAP_RSS_STAT, ts, mib_arg(bytes));
    }
}

/// `CoW copies/s` and `swap-ins/s` on the server process.
pub fn rates(b: &mut Builder, acc: &Acc) {
    rate_series(b, COW_RATE, &acc.cow_per_bucket);
    rate_series(b, SWAP_IN_RATE, &acc.swap_in_per_bucket);
}

/// One value per bucket (parent and child series) from bucket 0 to the last non-empty
/// bucket, then 0 at the next bucket's start (or the trace end). No events at all: one 0.
fn rate_series(b: &mut Builder, name: &str, per_bucket: &[[u64; 2]]) {
    let target = b.target_pid;
    let last = per_bucket.iter().rposition(|c| c[0] > 0 || c[1] > 0);
    let values = |parent: f64, child: f64| {
        let mut m = Map::new();
        m.insert("parent".into(), parent.into());
        m.insert("child".into(), child.into());
        m
    };
    for (i, c) in per_bucket.iter().enumerate().take(last.unwrap_or(0) + 1) {
        let ts = b.clock.bucket_start(i as u64);
        let args = values(b.clock.rate(c[0]), b.clock.rate(c[1]));
        b.counter(target, name, ts, args);
    }
    if let Some(last) = last {
        let prev = b.clock.bucket_start(last as u64);
        let next = b.clock.bucket_start(last as u64 + 1).min(b.clock.end_ns);
        if next > prev {
            b.counter(target, name, next, values(0.0, 0.0));
        }
    }
}
