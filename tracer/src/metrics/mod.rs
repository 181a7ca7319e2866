//! Live Prometheus metrics of a recording (`record --metrics HOST:PORT`): the same
//! records the timeline gets, counted as they are written, served in the OpenMetrics text
//! format by [`serve`].
//!
//! Every label value is bounded: fault kinds and roles are fixed sets, activities (Redis
//! commands and internal phases) are capped like the timeline's activity table, keys and
//! slots appear only as the few rows of the top-N gauges.

pub mod serve;

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::AtomicU64,
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    analysis::{
        classify::FaultKind,
        fork_epochs::Epoch,
        stream::{Fork, ForkReturn, PAGE_SIZE, TimelineEvent},
    },
    attribution::aggregate::{AggregateReport, OTHER_ACTIVITY},
};

/// Rows of the top-key and top-slot gauges.
pub const TOP_ROWS: usize = 10;

/// Activities with a label value of their own; the rest are counted as
/// [`OTHER_ACTIVITY`]. Redis has about 240 commands and the tracer a dozen phases.
const MAX_ACTIVITY_LABELS: usize = 256;

/// The `activity` of faults that have none (attribution off, or a process that is not
/// a Redis server).
const NO_ACTIVITY: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FaultLabels {
    kind: &'static str,
    role: &'static str,
    activity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: u16,
}

/// The registry every node's metrics go in (`redis_memtrace_` names), for the server.
pub fn registry() -> Registry {
    Registry::with_prefix("redis_memtrace")
}

/// The metrics of one traced server (one `node`).
pub struct Metrics {
    faults: Family<FaultLabels, Counter>,
    /// Counter handles by `(kind, role, activity)`: one string lookup per fault, no
    /// label set built.
    handles: HashMap<(FaultKind, &'static str), HashMap<String, Counter>>,
    /// Activities with a label of their own (at most [`MAX_ACTIVITY_LABELS`]).
    activities: HashSet<String>,
    forks: Counter,
    fork_call: Histogram,
    children: Gauge,
    epoch: Option<u32>,
    epoch_cow: Gauge,
    lost: Counter,
    lost_seen: u64,
    bpf_seconds: Counter<f64, AtomicU64>,
    bpf_runs: Counter,
    bpf_seen: (Duration, u64),
    top_keys: Family<KeyLabels, Gauge>,
    top_slots: Family<SlotLabels, Gauge>,
}

impl Metrics {
    /// Metrics labelled `node` (the server's address, or `comm:pid` for a process),
    /// registered in `root` (from [`registry`]); several nodes share one root.
    pub fn register(root: &mut Registry, node: &str) -> Metrics {
        let faults = Family::<FaultLabels, Counter>::default();
        let forks = Counter::default();
        // 10 us .. 1.3 s: a fork of a small server to one of a huge one.
        let fork_call = Histogram::new(exponential_buckets(1e-5, 2.0, 18));
        let children = Gauge::default();
        let epoch_cow = Gauge::default();
        let lost = Counter::default();
        let bpf_seconds = Counter::<f64, AtomicU64>::default();
        let bpf_runs = Counter::default();
        let top_keys = Family::<KeyLabels, Gauge>::default();
        let top_slots = Family::<SlotLabels, Gauge>::default();
        let reg = root.sub_registry_with_label(("node".into(), node.to_string().into()));
        reg.register(
            "faults",
            "Page faults (4 KiB pages) of the server and its fork children",
            faults.clone(),
        );
        reg.register("forks", "Forks of the server", forks.clone());
        reg.register(
            "fork_call_seconds",
            "Duration of the server's fork() calls",
            fork_call.clone(),
        );
        reg.register(
            "fork_children",
            "Fork children of the server alive now",
            children.clone(),
        );
        reg.register(
            "epoch_cow_bytes",
            "Copy-on-write bytes of the latest fork epoch (both sides)",
            epoch_cow.clone(),
        );
        reg.register(
            "lost_events",
            "Events the kernel could not deliver",
            lost.clone(),
        );
        reg.register(
            "bpf_run_seconds",
            "Run time of the tracer's eBPF programs (0 unless kernel.bpf_stats_enabled=1)",
            bpf_seconds.clone(),
        );
        reg.register(
            "bpf_runs",
            "Runs of the tracer's eBPF programs (0 unless kernel.bpf_stats_enabled=1)",
            bpf_runs.clone(),
        );
        reg.register(
            "top_key_cow_pages",
            "Copy-on-write pages of the run's top keys",
            top_keys.clone(),
        );
        reg.register(
            "top_slot_cow_pages",
            "Copy-on-write pages of the run's top hash slots",
            top_slots.clone(),
        );
        Metrics {
            faults,
            handles: HashMap::new(),
            activities: HashSet::new(),
            forks,
            fork_call,
            children,
            epoch: None,
            epoch_cow,
            lost,
            lost_seen: 0,
            bpf_seconds,
            bpf_runs,
            bpf_seen: (Duration::ZERO, 0),
            top_keys,
            top_slots,
        }
    }

    /// Counts one record written to the timeline (or left out of it by a cap).
    pub fn observe(&mut self, record: &TimelineEvent) {
        match record {
            TimelineEvent::Fault {
                kind,
                role,
                epoch,
                attribution,
                ..
            } => {
                let activity = attribution.as_deref().map_or(NO_ACTIVITY, |a| &a.activity);
                self.fault(*kind, role.name(), activity).inc();
                if *kind == FaultKind::CowCopy && epoch.is_some() && *epoch == self.epoch {
                    self.epoch_cow.inc_by(PAGE_SIZE as i64);
                }
            }
            TimelineEvent::Fork(Fork {
                epoch: Some(id), ..
            }) => {
                self.forks.inc();
                self.epoch = Some(*id);
                self.epoch_cow.set(0);
            }
            TimelineEvent::ForkReturn(ForkReturn { duration_ns, .. }) => {
                self.fork_call.observe(*duration_ns as f64 / 1e9);
            }
            _ => {}
        }
    }

    /// The counter of one label set, created on first use; activities past
    /// [`MAX_ACTIVITY_LABELS`] share one.
    fn fault(&mut self, kind: FaultKind, role: &'static str, activity: &str) -> &Counter {
        let by_activity = self.handles.entry((kind, role)).or_default();
        if !by_activity.contains_key(activity) {
            let own = self.activities.contains(activity)
                || (self.activities.len() < MAX_ACTIVITY_LABELS
                    && self.activities.insert(activity.to_string()));
            let labels = FaultLabels {
                kind: kind.name(),
                role,
                activity: if own { activity } else { OTHER_ACTIVITY }.to_string(),
            };
            let counter = self.faults.get_or_create(&labels).clone();
            by_activity.insert(activity.to_string(), counter);
        }
        &by_activity[activity]
    }

    /// The periodic part: the fork children alive (epochs open, including one adopted at
    /// attach, which no fork record announced) and lost events (the kernel's running
    /// total).
    pub fn tick(&mut self, epochs: &[Epoch], lost_total: u64) {
        let open = epochs.iter().filter(|e| e.end_ns.is_none());
        self.children.set(open.clone().count() as i64);
        if self.epoch.is_none() {
            self.epoch = open.map(|e| e.id).max();
        }
        if lost_total > self.lost_seen {
            self.lost.inc_by(lost_total - self.lost_seen);
            self.lost_seen = lost_total;
        }
    }

    /// The programs' run time and count (the kernel's running totals).
    pub fn bpf(&mut self, (time, runs): (Duration, u64)) {
        let (seen_time, seen_runs) = self.bpf_seen;
        if time > seen_time {
            self.bpf_seconds.inc_by((time - seen_time).as_secs_f64());
        }
        if runs > seen_runs {
            self.bpf_runs.inc_by(runs - seen_runs);
        }
        self.bpf_seen = (time.max(seen_time), runs.max(seen_runs));
    }

    /// The top-key and top-slot gauges, from the run's tables.
    pub fn top_tables(&mut self, t: &AggregateReport) {
        self.top_keys.clear();
        for row in t.top_keys_cow.iter().take(TOP_ROWS) {
            let labels = KeyLabels {
                key: row.key.clone(),
            };
            self.top_keys.get_or_create(&labels).set(row.pages as i64);
        }
        self.top_slots.clear();
        for row in t.top_slots_cow.iter().take(TOP_ROWS) {
            let labels = SlotLabels { slot: row.slot };
            self.top_slots.get_or_create(&labels).set(row.pages as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{analysis::fork_epochs::Role, attribution::context::Attribution};

    fn fault(
        kind: FaultKind,
        role: Role,
        epoch: Option<u32>,
        activity: Option<&str>,
    ) -> TimelineEvent {
        TimelineEvent::Fault {
            ts_ns: 1,
            pid: 10,
            tid: 10,
            kind,
            addr: 0x1000,
            role,
            epoch,
            error_code: 7,
            latency_ns: 1,
            flags: 0,
            attribution: activity.map(|a| std::sync::Arc::new(Attribution::phase(a))),
        }
    }

    fn text(root: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, root).unwrap();
        s
    }

    #[test]
    fn counts_faults_by_labels_and_the_latest_epochs_copies() {
        let mut root = registry();
        let mut m = Metrics::register(&mut root, "127.0.0.1:6379");
        m.observe(&fault(
            FaultKind::FirstTouch,
            Role::Parent,
            None,
            Some("SET"),
        ));
        m.observe(&TimelineEvent::Fork(Fork {
            ts_ns: 2,
            pid: 10,
            tid: 10,
            child_pid: 11,
            epoch: Some(0),
        }));
        for _ in 0..3 {
            m.observe(&fault(
                FaultKind::CowCopy,
                Role::Parent,
                Some(0),
                Some("SET"),
            ));
        }
        m.observe(&fault(FaultKind::CowCopy, Role::Child, Some(0), None));
        m.observe(&TimelineEvent::ForkReturn(ForkReturn {
            ts_ns: 2,
            pid: 10,
            tid: 10,
            ret: 11,
            duration_ns: 300_000,
            epoch: Some(0),
        }));
        m.tick(&[], 5);
        m.bpf((Duration::from_millis(3), 10));
        // Totals only grow; a smaller reading (never expected) adds nothing.
        m.bpf((Duration::from_millis(5), 4));
        let t = text(&root);
        let node = "node=\"127.0.0.1:6379\"";
        for line in [
            format!(
                "redis_memtrace_faults_total{{{node},kind=\"cow_copy\",role=\"parent\",activity=\"SET\"}} 3"
            ),
            format!(
                "redis_memtrace_faults_total{{{node},kind=\"first_touch\",role=\"parent\",activity=\"SET\"}} 1"
            ),
            format!(
                "redis_memtrace_faults_total{{{node},kind=\"cow_copy\",role=\"child\",activity=\"none\"}} 1"
            ),
            format!("redis_memtrace_forks_total{{{node}}} 1"),
            format!("redis_memtrace_epoch_cow_bytes{{{node}}} 16384"),
            format!("redis_memtrace_fork_call_seconds_count{{{node}}} 1"),
            format!("redis_memtrace_fork_call_seconds_bucket{{{node},le=\"0.00032\"}} 1"),
            format!("redis_memtrace_fork_call_seconds_bucket{{{node},le=\"0.00016\"}} 0"),
            // No epoch open in what `tick` was given: the child is gone.
            format!("redis_memtrace_fork_children{{{node}}} 0"),
            format!("redis_memtrace_lost_events_total{{{node}}} 5"),
            format!("redis_memtrace_bpf_runs_total{{{node}}} 10"),
            format!("redis_memtrace_bpf_run_seconds_total{{{node}}} 0.005"),
        ] {
            assert!(t.lines().any(|l| l == line), "{line} missing from\n{t}");
        }
    }

    #[test]
    fn activities_past_the_cap_share_one_label() {
        let mut root = registry();
        let mut m = Metrics::register(&mut root, "n");
        for i in 0..MAX_ACTIVITY_LABELS + 10 {
            let name = format!("CMD{i}");
            m.observe(&fault(FaultKind::Other, Role::Parent, None, Some(&name)));
            m.observe(&fault(FaultKind::Other, Role::Parent, None, Some(&name)));
        }
        let t = text(&root);
        let series = t
            .lines()
            .filter(|l| l.starts_with("redis_memtrace_faults_total"))
            .count();
        assert_eq!(series, MAX_ACTIVITY_LABELS + 1);
        assert!(
            t.lines().any(|l| l.ends_with("activity=\"(other)\"} 20")),
            "{t}"
        );
    }
}

#[cfg(test)]
mod several {
    use super::*;

    #[test]
    fn nodes_share_one_registry_each_under_its_label() {
        let mut root = registry();
        let a = Metrics::register(&mut root, "a:1");
        let b = Metrics::register(&mut root, "b:2");
        a.forks.inc();
        drop(b);
        let mut t = String::new();
        prometheus_client::encoding::text::encode(&mut t, &root).unwrap();
        assert!(
            t.lines()
                .any(|l| l == "redis_memtrace_forks_total{node=\"a:1\"} 1"),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l == "redis_memtrace_forks_total{node=\"b:2\"} 0"),
            "{t}"
        );
    }
}
