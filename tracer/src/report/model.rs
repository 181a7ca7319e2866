//! What the report needs, extracted from the timeline JSON. Every field of the file is
//! treated as optional: a missing, null or mistyped value becomes `None` (or an empty
//! list), never a panic, so a timeline from an older or newer recorder still reports.

use serde_json::Value;

use super::rates::{Rates, rates};
use crate::{
    analysis::classify::FaultKind,
    json_fields::{str_at, u32_at, u64_at},
    redis::session::RedisIdentity,
    timeline::read::Timeline,
};
pub use crate::{
    analysis::counts::KindCounts,
    analysis::fork_epochs::Epoch,
    analysis::samples::{InfoMem, Sample},
    attribution::aggregate::{ActivityRow, AggregateReport, KeyRow, SlotRow},
    kernel::host::HostInfo,
    redis::cluster::ClusterMap,
};

/// Who, what and when: the report's header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Header {
    /// Traced process id.
    pub pid: Option<u64>,
    /// Its `comm`.
    pub comm: Option<String>,
    /// Its executable.
    pub exe: Option<String>,
    /// The Redis server, when the target was one.
    pub redis: Option<RedisIdentity>,
    /// `uname -r` of the recording host.
    pub kernel_release: Option<String>,
    /// Version of the recorder.
    pub tracer_version: Option<String>,
    /// Wall clock of the start, ns since the Unix epoch.
    pub start_wall_ns: Option<u128>,
    /// Length of the run.
    pub duration_ns: Option<u64>,
    /// Why the run ended (`duration`, `signal`, `target_exit`).
    pub end_reason: Option<String>,
    /// Events the kernel could not deliver.
    pub lost_events: Option<u64>,
    /// Events dropped because the ring buffer was full.
    pub ring_buffer_full: Option<u64>,
    /// Traced threads that got no slot, whose faults are not recorded at all (not part
    /// of `lost_events`; `inflight_map_full` in files from before 0.2).
    pub threads_full: Option<u64>,
    /// Events in the file.
    pub event_count: usize,
    /// Whether command/key attribution was on.
    pub attribution: Option<bool>,
    /// Fault kinds counted approximately (a kernel hook was missing).
    pub approximate_kinds: Vec<String>,
    /// What the missing hooks cost, as the tracer described it.
    pub degraded: Vec<String>,
}

/// Parent and child RSS at the sample where their sum peaked during an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    /// When.
    pub ts_ns: u64,
    /// Server RSS.
    pub parent_rss: u64,
    /// The epoch's child RSS (`None` when no sample saw that child).
    pub child_rss: Option<u64>,
}

impl Peak {
    /// Parent plus child RSS: what memory would hold if every shared page were copied.
    pub fn total(&self) -> u64 {
        self.parent_rss.saturating_add(self.child_rss.unwrap_or(0))
    }
}

/// One fork epoch as the report shows it: the recorded epoch and the memory peak the
/// samples saw while it was open.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochView {
    /// The epoch as recorded.
    pub epoch: Epoch,
    /// Highest parent+child RSS among the samples taken during the epoch.
    pub peak: Option<Peak>,
}

impl std::ops::Deref for EpochView {
    type Target = Epoch;
    fn deref(&self) -> &Epoch {
        &self.epoch
    }
}

/// Swap as seen by the recorder, the kernel counters and the samples.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwapState {
    /// Pages of the traced processes read back from swap.
    pub pages_in: Option<u64>,
    /// Pages of the traced processes written to swap.
    pub pages_out: Option<u64>,
    /// Swap slots freed without a read.
    pub pages_discarded: Option<u64>,
    /// Anonymous pages written to swap by the whole machine during the run.
    pub system_swap_writes: Option<u64>,
    /// Largest server `VmSwap` in the samples.
    pub server_swap_max: Option<u64>,
    /// Last server `VmSwap` in the samples.
    pub server_swap_last: Option<u64>,
    /// Largest `swap_bytes` of `swap_level` events.
    pub swap_level_max: Option<u64>,
    /// Sum of `pswpin` deltas (pages, all processes).
    pub pswpin: Option<u64>,
    /// Sum of `pswpout` deltas.
    pub pswpout: Option<u64>,
}

/// Everything the report shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// Header.
    pub header: Header,
    /// Host settings (`None` for timelines recorded before `run.host` existed).
    pub host: Option<HostInfo>,
    /// Faults of the whole run.
    pub faults: KindCounts,
    /// Faults served with a huge page.
    pub huge_faults: Option<u64>,
    /// Fork epochs.
    pub epochs: Vec<EpochView>,
    /// Attribution of the whole run.
    pub attribution: AggregateReport,
    /// Swap.
    pub swap: SwapState,
    /// Memory samples, oldest first.
    pub samples: Vec<Sample>,
    /// Fault rates.
    pub rates: Rates,
    /// Warnings the recorder printed.
    pub warnings: Vec<String>,
    /// Monotonic start and end of the run (the charts' time axis).
    pub span_ns: (u64, u64),
    /// The latest cluster map of the run (`None` unless the server ran in cluster mode).
    pub cluster: Option<ClusterMap>,
    /// Cluster maps recorded (the one at start, then one per change).
    pub cluster_maps: usize,
}

fn text(v: &Value, key: &str) -> Option<String> {
    str_at(v, key).map(str::to_string)
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

impl Model {
    /// Extracts the report from `t`, keeping at most `top` rows of each top-N list.
    pub fn build(t: &Timeline, top: usize) -> Model {
        let v = t.value();
        let run = &v["run"];
        let samples = samples(t.samples());
        let (span, event_faults, swap_level_max) = scan_events(t);
        let summary = &v["summary"];
        let faults = match summary.get("faults") {
            Some(f) if f.is_object() => KindCounts::from_json(f),
            // An older or hand-made file without totals: count the events.
            _ => event_faults,
        };
        let header = Header {
            pid: u64_at(&v["target"], "pid"),
            comm: text(&v["target"], "comm"),
            exe: text(&v["target"], "exe"),
            redis: v
                .get("redis")
                .filter(|r| r.is_object())
                .map(RedisIdentity::from_json),
            kernel_release: text(run, "kernel_release"),
            tracer_version: text(run, "tracer_version"),
            start_wall_ns: u64_at(run, "monotonic_start_ns").and_then(|m| t.wall_ns(m)),
            duration_ns: u64_at(run, "monotonic_start_ns")
                .zip(u64_at(&v["end"], "monotonic_end_ns"))
                .and_then(|(s, e)| e.checked_sub(s)),
            end_reason: text(&v["end"], "reason"),
            lost_events: u64_at(v, "lost_events"),
            ring_buffer_full: u64_at(&v["kernel"], "ring_buffer_full"),
            threads_full: u64_at(&v["kernel"], "threads_full")
                .or_else(|| u64_at(&v["kernel"], "inflight_map_full")),
            event_count: t.events().len(),
            attribution: run["options"].get("attribution").and_then(Value::as_bool),
            approximate_kinds: strings(&run["options"]["approximate_kinds"]),
            degraded: strings(&run["options"]["degraded"]),
        };
        let target = u32_at(&v["target"], "pid");
        let epochs = t
            .epochs()
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Epoch::from_json(e, i, target.unwrap_or(0)))
            .map(|epoch| EpochView {
                peak: peak(&epoch, &samples, span.1),
                epoch,
            })
            .collect();
        let swap = swap_state(v, &samples, swap_level_max);
        Model {
            header,
            host: run
                .get("host")
                .filter(|h| h.is_object())
                .map(HostInfo::from_json),
            faults,
            huge_faults: u64_at(summary, "huge_faults"),
            epochs,
            attribution: AggregateReport::from_json(&summary["attribution"]).truncated(top),
            swap,
            rates: rates(t, span),
            samples,
            warnings: list(v, "warnings")
                .iter()
                .filter_map(|w| w.as_str().map(str::to_string))
                .collect(),
            span_ns: span,
            cluster: latest_cluster_map(list(v, "cluster")),
            cluster_maps: list(v, "cluster").len(),
        }
    }

    /// Physical RAM of the recording host, when known.
    pub fn mem_total(&self) -> Option<u64> {
        self.host
            .as_ref()
            .and_then(|h| h.mem_total_bytes)
            .filter(|&m| m > 0)
    }

    /// Wall clock of a monotonic time of this run, ns since the Unix epoch.
    pub fn wall_ns(&self, ts_ns: u64) -> Option<u128> {
        let start_wall = self.header.start_wall_ns?;
        let delta = ts_ns as i128 - self.span_ns.0 as i128;
        u128::try_from(start_wall as i128 + delta).ok()
    }

    /// The latest sample with Redis's INFO memory figures.
    pub fn last_info(&self) -> Option<&InfoMem> {
        self.samples.iter().rev().find_map(|s| s.info.as_ref())
    }
}

/// The last readable map of a timeline's `cluster` list.
fn latest_cluster_map(captures: &[Value]) -> Option<ClusterMap> {
    captures
        .iter()
        .rev()
        .find_map(|c| serde_json::from_value(c.get("map")?.clone()).ok())
}

/// The run's time span, fault counts of the events, and the highest `swap_level`.
fn scan_events(t: &Timeline) -> ((u64, u64), KindCounts, Option<u64>) {
    let mut counts = KindCounts::default();
    let mut swap_level: Option<u64> = None;
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for e in t.events() {
        if let Some(ts) = u64_at(e, "ts_ns") {
            lo = lo.min(ts);
            hi = hi.max(ts);
        }
        match str_at(e, "kind") {
            Some("swap_level") => {
                if let Some(b) = u64_at(e, "swap_bytes") {
                    swap_level = Some(swap_level.map_or(b, |m| m.max(b)));
                }
            }
            Some(kind) => {
                if let Some(kind) = FaultKind::from_name(kind) {
                    counts.add(kind);
                }
            }
            None => {}
        }
    }
    for s in t.samples() {
        if let Some(ts) = u64_at(s, "ts_ns") {
            lo = lo.min(ts);
            hi = hi.max(ts);
        }
    }
    let v = t.value();
    let start =
        u64_at(&v["run"], "monotonic_start_ns").unwrap_or(if lo == u64::MAX { 0 } else { lo });
    let end = u64_at(&v["end"], "monotonic_end_ns")
        .filter(|&e| e >= start)
        .unwrap_or(hi.max(start));
    ((start, end), counts, swap_level)
}

fn samples(raw: &[Value]) -> Vec<Sample> {
    let mut out: Vec<Sample> = raw.iter().filter_map(Sample::from_json).collect();
    out.sort_by_key(|s| s.ts_ns);
    out
}

/// The sample inside the epoch with the highest server + child RSS. The child counts
/// only when the sample saw this epoch's child.
fn peak(ep: &Epoch, samples: &[Sample], run_end: u64) -> Option<Peak> {
    let start = ep.start_ns;
    let end = ep.end_ns.unwrap_or(run_end).max(start);
    samples
        .iter()
        .filter(|s| (start..=end).contains(&s.ts_ns))
        .filter_map(|s| {
            let child_rss = match s.child_pid() {
                Some(pid) if pid == ep.child_pid => s.child_rss(),
                _ => None,
            };
            Some(Peak {
                ts_ns: s.ts_ns,
                parent_rss: s.server_rss()?,
                child_rss,
            })
        })
        // On ties the earliest sample wins: `max_by_key` keeps the last, so reverse.
        .rev()
        .max_by_key(Peak::total)
}

fn sum_opt(it: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    it.flatten().fold(None, |acc: Option<u64>, x| {
        Some(acc.unwrap_or(0).saturating_add(x))
    })
}

fn swap_state(v: &Value, samples: &[Sample], swap_level_max: Option<u64>) -> SwapState {
    let s = &v["summary"]["swap"];
    let raw = v["samples"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    SwapState {
        pages_in: u64_at(s, "pages_in"),
        pages_out: u64_at(s, "pages_out"),
        pages_discarded: u64_at(s, "pages_discarded"),
        system_swap_writes: u64_at(&v["kernel"], "system_swap_writes"),
        server_swap_max: samples.iter().filter_map(|p| p.server_swap()).max(),
        server_swap_last: samples.iter().rev().find_map(|p| p.server_swap()),
        swap_level_max,
        pswpin: sum_opt(raw.iter().map(|r| u64_at(r, "pswpin_delta"))),
        pswpout: sum_opt(raw.iter().map(|r| u64_at(r, "pswpout_delta"))),
    }
}

/// The strings of a JSON array (anything else is empty).
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::{base, model};
    use serde_json::json;

    #[test]
    fn extracts_the_base_timeline() {
        let m = model(base());
        assert_eq!(m.header.pid, Some(42));
        assert_eq!(m.header.duration_ns, Some(3_000_000_000));
        assert_eq!(m.header.event_count, 4);
        assert_eq!(m.faults.cow_copy, 2);
        assert_eq!(m.span_ns, (1_000_000_000, 4_000_000_000));
        let e = &m.epochs[0];
        assert_eq!(e.fork_ns(), Some(21_500_000), "the libc call is preferred");
        assert_eq!(e.duration(), Some((2_000_000_000, false)));
        let p = e.peak.unwrap();
        assert_eq!(p.ts_ns, 3_000_000_000, "the sample with the largest child");
        assert_eq!(p.total(), (1u64 << 30) + (3u64 << 28));
        assert_eq!(m.mem_total(), Some(8 << 30));
        assert_eq!(m.attribution.top_keys_cow[0].key, "k1");
        assert_eq!(m.swap.pswpin, Some(0));
        assert_eq!(m.last_info().unwrap().mem_fragmentation_ratio, Some(1.05));
    }

    #[test]
    fn the_child_counts_only_when_it_is_the_epochs_child() {
        let mut v = base();
        v["samples"][2]["child"][0] = json!(99);
        let p = model(v).epochs[0].peak.unwrap();
        assert_eq!(p.ts_ns, 2_000_000_000);
        assert_eq!(p.child_rss, Some(1 << 29));
    }

    #[test]
    fn minimal_document_gives_empty_model() {
        let m = model(json!({}));
        assert_eq!(m.header, Header::default());
        assert!(m.host.is_none() && m.epochs.is_empty() && m.samples.is_empty());
        assert_eq!(m.rates, Rates::default());
        let m = model(json!(null));
        assert!(m.epochs.is_empty());
    }

    #[test]
    fn the_latest_readable_cluster_map_is_kept() {
        let node = |slots: serde_json::Value| {
            json!({"id": "a", "addr": "10.0.0.1:7000", "role": "master",
                   "primary_id": null, "slots": slots, "myself": true})
        };
        let mut v = base();
        v["cluster"] = json!([
            {"ts_ns": 1, "map": {"nodes": [node(json!([[0, 16383]]))]}},
            {"ts_ns": 2, "map": {"nodes": [node(json!([[0, 100]]))]}},
            {"ts_ns": 3, "map": {"nodes": "mangled"}}
        ]);
        let m = model(v);
        assert_eq!(m.cluster_maps, 3);
        let map = m.cluster.unwrap();
        assert_eq!(map.nodes[0].slots, [(0, 100)]);
        let m = model(base());
        assert_eq!((m.cluster, m.cluster_maps), (None, 0));
    }

    #[test]
    fn missing_summary_totals_are_counted_from_events() {
        let mut v = base();
        v["summary"] = json!(null);
        let m = model(v);
        assert_eq!(m.faults.cow_copy, 2);
        assert_eq!(m.faults.first_touch, 1);
    }
}
