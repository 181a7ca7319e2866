//! Schema version 2: several nodes (Redis servers) in one document on one time axis,
//! written by `merge` from the version 1 timelines of several tracers, perhaps on
//! several hosts. Each node keeps its version 1 timeline whole, so every reader of
//! version 1 reads a node; the set adds the alignment that puts them on one axis.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::read::Timeline;

/// Version of the multi-node format.
pub const NODES_SCHEMA_VERSION: u32 = 2;

/// How the nodes' clocks were put on one axis.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AlignMethod {
    /// One host, one boot: the runs share CLOCK_MONOTONIC, so the alignment is exact.
    Monotonic,
    /// Each run's wall-clock anchor: as good as the hosts' clock synchronisation.
    WallClock,
}

/// The merged time axis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alignment {
    /// How it was done.
    pub method: AlignMethod,
    /// Wall clock (ns since the Unix epoch) of axis time 0: the earliest node's start.
    pub origin_wall_unix_ns: u64,
    /// `monotonic`: the shared CLOCK_MONOTONIC of axis time 0.
    pub origin_monotonic_ns: Option<u64>,
    /// Largest alignment error, ns, when it is known (0 for `monotonic`).
    pub uncertainty_ns: Option<u64>,
    /// The same in words, for the report.
    pub note: String,
}

/// One server's timeline in the set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// `HOSTNAME:PORT` (or `HOSTNAME:COMM:PID` when the port is unknown).
    pub name: String,
    /// The timeline file it came from.
    pub source: String,
    /// Added to this node's monotonic `ts_ns`, gives ns on the merged axis.
    pub offset_ns: i64,
    /// The node's version 1 timeline, whole.
    pub timeline: Value,
}

/// A schema version 2 document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSet {
    /// Always [`NODES_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `redis-memtrace` version that wrote it.
    pub tracer_version: String,
    /// The time axis.
    pub alignment: Alignment,
    /// The nodes, in the order given.
    pub nodes: Vec<Node>,
}

impl Node {
    /// The node's timeline as the version 1 readers take it.
    pub fn timeline(&self) -> Timeline {
        Timeline(self.timeline.clone())
    }

    /// A monotonic time of this node on the merged axis, ns (negative before its origin).
    pub fn axis_ns(&self, ts_ns: u64) -> i64 {
        (ts_ns as i64).saturating_add(self.offset_ns)
    }

    /// Monotonic start and end of the node's run.
    pub fn span(&self) -> (u64, u64) {
        let v = &self.timeline;
        let start = v["run"]["monotonic_start_ns"].as_u64().unwrap_or(0);
        let end = v["end"]["monotonic_end_ns"].as_u64().unwrap_or(start);
        (start, end.max(start))
    }
}

/// Why timelines cannot be merged.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MergeError {
    /// Fewer than two nodes in all the inputs.
    #[error("merge needs at least two nodes; the inputs hold {0}")]
    TooFew(usize),
    /// One server in two inputs (the same process traced twice, or a file given twice).
    #[error(
        "{first} and {second} both hold node {name} (the same server process): give each server once"
    )]
    SameNode {
        /// The first input holding it.
        first: String,
        /// The second.
        second: String,
        /// The node.
        name: String,
    },
    /// A run that does not overlap the others on the merged axis.
    #[error(
        "{file} ({name}) does not overlap the other runs: it is {gap_s:.1} s away from them; merge combines runs recorded at the same time (if they were, the hosts' clocks disagree by at least that much)"
    )]
    ClocksApart {
        /// The input.
        file: String,
        /// Its node.
        name: String,
        /// The gap, seconds.
        gap_s: f64,
    },
    /// A version 1 timeline without the wall-clock anchor needed to align it.
    #[error("{0} has no run.wall_start_unix_ns: it cannot be put on a common time axis")]
    NoAnchor(String),
}

/// One version 1 timeline to merge, with the file it came from.
pub struct Input {
    /// Where it came from (for messages and `nodes[].source`).
    pub source: String,
    /// The timeline.
    pub timeline: Timeline,
}

/// What identifies a server process across inputs.
fn identity(v: &Value) -> (String, u64, u64) {
    let host = &v["run"]["host"];
    let machine = host["boot_id"]
        .as_str()
        .or(host["hostname"].as_str())
        .unwrap_or("?");
    let pid = v["target"]["pid"].as_u64().unwrap_or(0);
    let start = v["target"]["start_time_ticks"].as_u64().unwrap_or(0);
    (machine.to_string(), pid, start)
}

/// The node's name: `HOSTNAME:PORT`, else `HOSTNAME:COMM:PID`.
pub fn node_name(v: &Value) -> String {
    let host = v["run"]["host"]["hostname"].as_str().unwrap_or("?");
    match v["redis"]["port"].as_u64().filter(|&p| p > 0) {
        Some(port) => format!("{host}:{port}"),
        None => format!(
            "{host}:{}:{}",
            v["target"]["comm"].as_str().unwrap_or("?"),
            v["target"]["pid"].as_u64().unwrap_or(0)
        ),
    }
}

/// Puts `inputs` on one time axis. Pure: the caller reads and writes the files.
pub fn merge(inputs: Vec<Input>) -> Result<NodeSet, MergeError> {
    if inputs.len() < 2 {
        return Err(MergeError::TooFew(inputs.len()));
    }
    let mut seen: HashMap<(String, u64, u64), &str> = HashMap::new();
    for i in &inputs {
        if let Some(first) = seen.insert(identity(i.timeline.value()), &i.source) {
            return Err(MergeError::SameNode {
                first: first.to_string(),
                second: i.source.clone(),
                name: node_name(i.timeline.value()),
            });
        }
    }
    for i in &inputs {
        if i.timeline.value()["run"]["wall_start_unix_ns"]
            .as_u64()
            .is_none()
        {
            return Err(MergeError::NoAnchor(i.source.clone()));
        }
    }
    let alignment = align(&inputs);
    let nodes: Vec<Node> = inputs
        .into_iter()
        .map(|i| {
            let v = i.timeline.0;
            Node {
                name: node_name(&v),
                source: i.source,
                offset_ns: offset(&alignment, &v),
                timeline: v,
            }
        })
        .collect();
    check_overlap(&nodes)?;
    Ok(NodeSet {
        schema_version: NODES_SCHEMA_VERSION,
        tracer_version: env!("CARGO_PKG_VERSION").to_string(),
        alignment,
        nodes,
    })
}

fn boot_id(v: &Value) -> Option<&str> {
    v["run"]["host"]["boot_id"].as_str()
}

fn anchors(v: &Value) -> (u64, u64) {
    let run = &v["run"];
    (
        run["monotonic_start_ns"].as_u64().unwrap_or(0),
        run["wall_start_unix_ns"].as_u64().unwrap_or(0),
    )
}

/// One boot of one host: its monotonic clock; otherwise the wall-clock anchors.
fn align(inputs: &[Input]) -> Alignment {
    let values: Vec<&Value> = inputs.iter().map(|i| i.timeline.value()).collect();
    let first_boot = boot_id(values[0]);
    let one_boot = first_boot.is_some() && values.iter().all(|v| boot_id(v) == first_boot);
    if one_boot {
        // The earliest start is the origin; its wall anchor names it.
        let (mono, wall) = values.iter().map(|v| anchors(v)).min().unwrap_or_default();
        return Alignment {
            method: AlignMethod::Monotonic,
            origin_wall_unix_ns: wall,
            origin_monotonic_ns: Some(mono),
            uncertainty_ns: Some(0),
            note: "one host and boot: the runs share CLOCK_MONOTONIC, so the alignment is exact"
                .into(),
        };
    }
    let origin = values.iter().map(|v| anchors(v).1).min().unwrap_or(0);
    let mut hosts: Vec<&str> = values
        .iter()
        .map(|v| v["run"]["host"]["hostname"].as_str().unwrap_or("?"))
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    Alignment {
        method: AlignMethod::WallClock,
        origin_wall_unix_ns: origin,
        origin_monotonic_ns: None,
        uncertainty_ns: None,
        note: format!(
            "several hosts or boots ({}): each run is placed by its wall-clock anchor, so the alignment is off by as much as the hosts' clocks disagree, which redis-memtrace cannot measure",
            hosts.join(", ")
        ),
    }
}

/// The node's offset from its monotonic clock to the merged axis.
fn offset(a: &Alignment, v: &Value) -> i64 {
    let (mono, wall) = anchors(v);
    match (a.method, a.origin_monotonic_ns) {
        // One clock for all: only the origin moves.
        (AlignMethod::Monotonic, Some(origin)) => -(origin as i64),
        // The node's start sits at its wall anchor's distance from the origin's.
        _ => wall as i64 - a.origin_wall_unix_ns as i64 - mono as i64,
    }
}

/// Every node's run overlaps the others' on the merged axis.
fn check_overlap(nodes: &[Node]) -> Result<(), MergeError> {
    let spans: Vec<(i64, i64)> = nodes
        .iter()
        .map(|n| {
            let (s, e) = n.span();
            (n.axis_ns(s), n.axis_ns(e))
        })
        .collect();
    // The latest starter first: of two runs apart, the one named is the later.
    let mut order: Vec<usize> = (0..nodes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(spans[i].0));
    for i in order {
        let n = &nodes[i];
        let others = spans.iter().enumerate().filter(|(j, _)| *j != i);
        let start = others.clone().map(|(_, s)| s.0).min().unwrap_or(0);
        let end = others.map(|(_, s)| s.1).max().unwrap_or(0);
        let (s, e) = spans[i];
        let gap = (s - end).max(start - e);
        if gap > 0 {
            return Err(MergeError::ClocksApart {
                file: n.source.clone(),
                name: n.name.clone(),
                gap_s: gap as f64 / 1e9,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A minimal timeline of `port` on `host`/`boot`, started at monotonic `mono` and
    /// wall `wall`, lasting `secs`.
    fn node(host: &str, boot: &str, port: u16, pid: u32, mono: u64, wall: u64, secs: u64) -> Input {
        Input {
            source: format!("{host}-{port}.json"),
            timeline: Timeline(json!({
                "schema_version": 1,
                "run": {"monotonic_start_ns": mono, "wall_start_unix_ns": wall,
                        "host": {"hostname": host, "boot_id": boot}},
                "target": {"pid": pid, "comm": "redis-server", "start_time_ticks": 7},
                "redis": {"port": port},
                "events": [], "epochs": [], "summary": {},
                "end": {"monotonic_end_ns": mono + secs * 1_000_000_000},
            })),
        }
    }

    #[test]
    fn one_boot_shares_the_monotonic_clock() {
        let set = merge(vec![
            node("a", "b1", 7001, 10, 5_000, 1_000_000, 10),
            // Its wall anchor is off by 3 s (a clock step): monotonic alignment ignores it.
            node("a", "b1", 7002, 11, 2_000, 4_000_000_000, 10),
        ])
        .unwrap();
        assert_eq!(set.schema_version, 2);
        assert_eq!(set.alignment.method, AlignMethod::Monotonic);
        assert_eq!(set.alignment.uncertainty_ns, Some(0));
        assert_eq!(set.alignment.origin_monotonic_ns, Some(2_000));
        assert_eq!(set.nodes[0].name, "a:7001");
        assert_eq!(set.nodes[0].axis_ns(5_000), 3_000);
        assert_eq!(set.nodes[1].axis_ns(2_000), 0);
    }

    #[test]
    fn hosts_are_placed_by_their_wall_anchors() {
        let s = 1_000_000_000u64;
        let set = merge(vec![
            node("a", "b1", 7001, 10, 50 * s, 1_000 * s, 10),
            node("b", "b2", 7001, 10, 900 * s, 1_002 * s, 10),
        ])
        .unwrap();
        assert_eq!(set.alignment.method, AlignMethod::WallClock);
        assert_eq!(set.alignment.uncertainty_ns, None);
        assert!(
            set.alignment.note.contains("a, b"),
            "{}",
            set.alignment.note
        );
        assert_eq!(set.nodes[0].axis_ns(50 * s), 0);
        assert_eq!(set.nodes[1].axis_ns(900 * s), 2 * s as i64);
        assert_eq!(set.nodes[1].axis_ns(901 * s), 3 * s as i64);
    }

    #[test]
    fn bad_sets_are_refused() {
        let s = 1_000_000_000u64;
        assert_eq!(
            merge(vec![node("a", "b", 1, 1, 0, s, 1)]).unwrap_err(),
            MergeError::TooFew(1)
        );
        let e = merge(vec![
            node("a", "b1", 7001, 10, s, s, 10),
            node("a", "b1", 7001, 10, s, s, 10),
        ])
        .unwrap_err();
        assert!(
            matches!(e, MergeError::SameNode { ref name, .. } if name == "a:7001"),
            "{e}"
        );
        // An hour apart on different hosts: not recorded together, or clocks that disagree.
        let e = merge(vec![
            node("a", "b1", 7001, 10, s, 1_000 * s, 10),
            node("b", "b2", 7001, 10, s, 4_610 * s, 10),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "b-7001.json (b:7001) does not overlap the other runs: it is 3600.0 s away from them; merge combines runs recorded at the same time (if they were, the hosts' clocks disagree by at least that much)"
        );
        let mut no_anchor = node("a", "b1", 7002, 11, s, s, 10);
        no_anchor.timeline.0["run"]
            .as_object_mut()
            .unwrap()
            .remove("wall_start_unix_ns");
        let e = merge(vec![node("a", "b1", 7001, 10, s, s, 10), no_anchor]).unwrap_err();
        assert!(matches!(e, MergeError::NoAnchor(_)), "{e}");
    }

    #[test]
    fn a_set_reads_back_as_written() {
        let set = merge(vec![
            node("a", "b1", 7001, 10, 0, 1, 1),
            node("a", "b1", 7002, 11, 0, 1, 1),
        ])
        .unwrap();
        let text = serde_json::to_string(&set).unwrap();
        match super::super::read::parse_document("m", &text).unwrap() {
            super::super::read::Document::Nodes(back) => {
                assert_eq!(back.alignment, set.alignment);
                assert_eq!(back.nodes.len(), 2);
                assert_eq!(back.nodes[1].timeline, set.nodes[1].timeline);
            }
            other => panic!("{other:?}"),
        }
        // A node that is not a timeline is the reader's one-line error, naming the node.
        let broken = text.replace("\"events\":[]", "\"events\":3");
        let e = super::super::read::parse_document("m", &broken).unwrap_err();
        assert!(e.to_string().contains("m (node a:7001)"), "{e}");
    }
}
