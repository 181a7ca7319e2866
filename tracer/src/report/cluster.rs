//! The report of a multi-node file (`merge`): a cluster view across the nodes (each
//! node's run, the hottest slots and keys with the node they live on, forks that
//! overlap across nodes, the cluster's live copy-on-write over time), then each node's
//! own report. Times are seconds on the merged axis.

use serde_json::Value;

use super::{
    format::{duration_ns, pages_mib},
    model::Model,
    tables::{Align, Pairs, Table},
    terminal::{self, Style},
};
use crate::{
    redis::cluster::{ClusterCapture, ClusterMap},
    timeline::nodes::{Node, NodeSet},
};

/// One node's report model with its place on the merged axis.
pub struct NodeView<'s> {
    /// The node.
    pub node: &'s Node,
    /// Its single-server report.
    pub model: Model,
}

/// Everything the cluster view shows.
pub struct ClusterView<'s> {
    /// The set.
    pub set: &'s NodeSet,
    /// One per node, in the set's order.
    pub nodes: Vec<NodeView<'s>>,
}

/// An epoch on the merged axis.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisEpoch {
    /// Index of the node.
    pub node: usize,
    /// Epoch id within the node.
    pub id: u32,
    /// Why Redis forked.
    pub reason: String,
    /// Start and end on the axis, ns (open epochs end with the node's run).
    pub span: (i64, i64),
}

impl<'s> ClusterView<'s> {
    /// Builds each node's model (`top` rows per list).
    pub fn build(set: &'s NodeSet, top: usize) -> ClusterView<'s> {
        let nodes = set
            .nodes
            .iter()
            .map(|node| NodeView {
                node,
                model: Model::build(&node.timeline(), top),
            })
            .collect();
        ClusterView { set, nodes }
    }

    /// Every node's epochs on the axis, by start.
    pub fn epochs(&self) -> Vec<AxisEpoch> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let run_end = n.node.span().1;
            for e in &n.model.epochs {
                out.push(AxisEpoch {
                    node: i,
                    id: e.id,
                    reason: e.reason.clone().unwrap_or_else(|| "fork".into()),
                    span: (
                        n.node.axis_ns(e.start_ns),
                        n.node.axis_ns(e.end_ns.unwrap_or(run_end)),
                    ),
                });
            }
        }
        out.sort_by_key(|e| e.span);
        out
    }

    /// Pairs of epochs of different nodes alive at the same time, with the overlap, ns.
    pub fn overlapping_forks(&self) -> Vec<(AxisEpoch, AxisEpoch, u64)> {
        let epochs = self.epochs();
        let mut out = Vec::new();
        for (i, a) in epochs.iter().enumerate() {
            for b in &epochs[i + 1..] {
                let overlap = a.span.1.min(b.span.1) - a.span.0.max(b.span.0);
                if a.node != b.node && overlap > 0 {
                    out.push((a.clone(), b.clone(), overlap as u64));
                }
            }
        }
        out
    }

    /// The cluster's live copy-on-write at the end of each of `buckets` equal steps of
    /// the merged run: pages copied so far in every fork epoch still open then (both
    /// sides), and how many nodes had a fork child. Counted from the fault events.
    pub fn live_cow(&self, buckets: usize) -> Vec<(i64, u64, usize)> {
        let (start, end) = self.axis_span();
        let step = ((end - start) / buckets.max(1) as i64).max(1);
        let epochs = self.epochs();
        let copies = self.copy_times();
        (1..=buckets.max(1))
            .map(|k| {
                let t = start + step * k as i64;
                let open: Vec<&AxisEpoch> = epochs
                    .iter()
                    .filter(|e| e.span.0 <= t && t < e.span.1)
                    .collect();
                let pages = open
                    .iter()
                    .map(|e| copies_until(&copies, e, t))
                    .sum::<u64>();
                let mut forking: Vec<usize> = open.iter().map(|e| e.node).collect();
                forking.sort_unstable();
                forking.dedup();
                (t, pages, forking.len())
            })
            .collect()
    }

    /// The latest cluster map any node recorded, by time on the axis (`None` unless the
    /// servers ran in cluster mode): the cluster as last seen, after nodes left or slots
    /// moved.
    pub fn latest_map(&self) -> Option<ClusterMap> {
        self.nodes
            .iter()
            .flat_map(|n| {
                let captures = n.node.timeline["cluster"].as_array().cloned();
                captures.into_iter().flatten().filter_map(move |c| {
                    let c: ClusterCapture = serde_json::from_value(c).ok()?;
                    Some((n.node.axis_ns(c.ts_ns), c.map))
                })
            })
            .max_by_key(|(t, _)| *t)
            .map(|(_, map)| map)
    }

    /// The merged run's start and end on the axis.
    pub fn axis_span(&self) -> (i64, i64) {
        let spans = self.nodes.iter().map(|n| {
            let (s, e) = n.node.span();
            (n.node.axis_ns(s), n.node.axis_ns(e))
        });
        spans.fold((i64::MAX, i64::MIN), |(s, e), (a, b)| (s.min(a), e.max(b)))
    }

    /// Axis times of every `cow_copy` event, by (node, epoch), sorted.
    fn copy_times(&self) -> std::collections::HashMap<(usize, u32), Vec<i64>> {
        let mut out: std::collections::HashMap<(usize, u32), Vec<i64>> = Default::default();
        for (i, n) in self.nodes.iter().enumerate() {
            let events = n.node.timeline["events"].as_array();
            for e in events.into_iter().flatten() {
                if e["kind"] != "cow_copy" {
                    continue;
                }
                let (Some(ts), Some(epoch)) = (e["ts_ns"].as_u64(), epoch_of(e)) else {
                    continue;
                };
                out.entry((i, epoch)).or_default().push(n.node.axis_ns(ts));
            }
        }
        for v in out.values_mut() {
            v.sort_unstable();
        }
        out
    }
}

fn epoch_of(e: &Value) -> Option<u32> {
    e["epoch"].as_u64().and_then(|v| u32::try_from(v).ok())
}

fn copies_until(
    copies: &std::collections::HashMap<(usize, u32), Vec<i64>>,
    e: &AxisEpoch,
    t: i64,
) -> u64 {
    copies
        .get(&(e.node, e.id))
        .map_or(0, |v| v.partition_point(|&x| x <= t) as u64)
}

fn secs(ns: i64) -> String {
    format!("{:.3}", ns as f64 / 1e9)
}

/// The header lines of the cluster view.
pub fn header(v: &ClusterView, source: &str) -> Pairs {
    let (start, end) = v.axis_span();
    vec![
        ("timeline", source.to_string()),
        ("nodes", v.nodes.len().to_string()),
        ("span", duration_ns((end - start).max(0) as u64)),
        ("alignment", v.set.alignment.note.clone()),
    ]
}

/// One row per node: its run on the axis and its totals.
pub fn nodes(v: &ClusterView) -> Table {
    let rows = v
        .nodes
        .iter()
        .map(|n| {
            let (s, e) = n.node.span();
            let h = &n.model.header;
            let cow: u64 = n
                .model
                .epochs
                .iter()
                .map(|e| e.faults.parent.cow_copy + e.faults.child.cow_copy)
                .sum();
            vec![
                n.node.name.clone(),
                h.pid.map_or("-".into(), |p| p.to_string()),
                h.redis
                    .as_ref()
                    .map_or("-".into(), |r| format!("{} {}", r.product, r.version)),
                secs(n.node.axis_ns(s)),
                secs(n.node.axis_ns(e)),
                h.end_reason.clone().unwrap_or_else(|| "-".into()),
                n.model.epochs.len().to_string(),
                cow.to_string(),
                n.model.faults.swap_in.to_string(),
                h.lost_events.map_or("-".into(), |l| l.to_string()),
            ]
        })
        .collect();
    Table {
        id: "cluster-nodes",
        title: "Nodes".into(),
        columns: vec![
            ("node", Align::Left),
            ("pid", Align::Right),
            ("server", Align::Left),
            ("start s", Align::Right),
            ("end s", Align::Right),
            ("ended by", Align::Left),
            ("forks", Align::Right),
            ("CoW pages", Align::Right),
            ("swap-ins", Align::Right),
            ("lost", Align::Right),
        ],
        rows,
        empty: "no node",
        note: None,
    }
}

/// The hottest slots of the cluster by copy-on-write, with the node they are on.
pub fn hot_slots(v: &ClusterView, top: usize) -> Table {
    let mut rows: Vec<(u64, u16, &str)> = v
        .nodes
        .iter()
        .flat_map(|n| {
            let name = n.node.name.as_str();
            n.model
                .attribution
                .top_slots_cow
                .iter()
                .map(move |s| (s.pages, s.slot, name))
        })
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(b.2)));
    rows.truncate(top);
    let map = v.latest_map();
    let mut columns = vec![
        ("slot", Align::Right),
        ("node", Align::Left),
        ("pages", Align::Right),
        ("MiB", Align::Right),
    ];
    if map.is_some() {
        columns.push(("served by (latest map)", Align::Left));
    }
    let rows = rows
        .into_iter()
        .map(|(pages, slot, node)| {
            let mut row = vec![
                slot.to_string(),
                node.to_string(),
                pages.to_string(),
                pages_mib(pages),
            ];
            if let Some(m) = &map {
                row.push(m.owner_of(slot).map_or("-".into(), |o| o.addr.clone()));
            }
            row
        })
        .collect();
    Table {
        id: "cluster-slots-cow",
        title: "Hot slots of the cluster by copy-on-write".into(),
        columns,
        rows,
        empty: "no slot attributed on any node",
        note: map.as_ref().map(|_| {
            "node: where the pages were copied; served by: the master serving the slot in the latest cluster map any node recorded (- when none does, as after its node left)"
        }),
    }
}

/// Epochs of different nodes alive at the same time.
pub fn overlaps(v: &ClusterView, top: usize) -> Table {
    let name = |i: usize| v.nodes[i].node.name.clone();
    let all = v.overlapping_forks();
    let rows = all
        .iter()
        .take(top)
        .map(|(a, b, ns)| {
            vec![
                format!("{} epoch {} ({})", name(a.node), a.id, a.reason),
                format!("{} epoch {} ({})", name(b.node), b.id, b.reason),
                secs(a.span.0.max(b.span.0)),
                duration_ns(*ns),
            ]
        })
        .collect();
    Table {
        id: "cluster-fork-overlaps",
        title: format!("Forks overlapping across nodes ({})", all.len()),
        columns: vec![
            ("fork", Align::Left),
            ("overlaps fork", Align::Left),
            ("from s", Align::Right),
            ("for", Align::Right),
        ],
        rows,
        empty: "none: no two nodes had a fork child at the same time",
        note: None,
    }
}

/// Steps of the live-CoW table.
const COW_STEPS: usize = 12;

/// The cluster's live copy-on-write over time.
pub fn cow_over_time(v: &ClusterView) -> Table {
    let rows = v
        .live_cow(COW_STEPS)
        .into_iter()
        .map(|(t, pages, forking)| vec![secs(t), forking.to_string(), pages_mib(pages)])
        .collect();
    Table {
        id: "cluster-cow-time",
        title: "Copy-on-write alive in the cluster".into(),
        columns: vec![
            ("at s", Align::Right),
            ("nodes forking", Align::Right),
            ("CoW MiB", Align::Right),
        ],
        rows,
        empty: "no time span",
        note: Some(
            "pages copied so far in the fork epochs open at that time, parent and child, from the fault events",
        ),
    }
}

/// The whole text report of a multi-node file: the cluster view, then every node's.
pub fn render(v: &ClusterView, source: &str, top: usize, style: Style) -> String {
    let mut out = String::new();
    out.push_str(&style.title("redis-memtrace cluster report"));
    out.push('\n');
    terminal::pairs(&mut out, &header(v, source));
    out.push('\n');
    for t in [
        nodes(v),
        hot_slots(v, top),
        overlaps(v, top),
        cow_over_time(v),
    ] {
        out.push_str(&style.title(&t.title));
        out.push('\n');
        terminal::table(&mut out, &t);
        out.push('\n');
    }
    for n in &v.nodes {
        let found = super::findings::findings(&n.model);
        let label = format!("{source}, node {}", n.node.name);
        out.push_str(&style.title(&format!("===== node {} =====", n.node.name)));
        out.push('\n');
        out.push_str(&terminal::render(&n.model, &found, &label, top, style));
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::timeline::{nodes, read::Timeline};

    /// The fixture timeline as server `port` of one host and boot, everything moved
    /// `shift_ns` later, its one slot `slot` with `pages` pages.
    pub(crate) fn node(port: u16, pid: u32, shift_ns: u64, slot: u16, pages: u64) -> nodes::Input {
        let mut v = super::super::fixture::base();
        v["run"]["host"]["hostname"] = "h".into();
        v["run"]["host"]["boot_id"] = "b".into();
        v["redis"]["port"] = port.into();
        v["target"]["pid"] = pid.into();
        v["epochs"][0]["parent_pid"] = pid.into();
        let shift = |x: &mut Value| *x = (x.as_u64().unwrap() + shift_ns).into();
        for e in v["events"].as_array_mut().unwrap() {
            shift(&mut e["ts_ns"]);
            if e.get("slot").is_some() {
                e["slot"] = slot.into();
            }
        }
        shift(&mut v["epochs"][0]["start_ns"]);
        shift(&mut v["epochs"][0]["end_ns"]);
        shift(&mut v["end"]["monotonic_end_ns"]);
        v["summary"]["attribution"]["top_slots_cow"] = json!([{"slot": slot, "pages": pages}]);
        nodes::Input {
            source: format!("{port}.json"),
            timeline: Timeline(v),
        }
    }

    /// Two nodes: the second's fork a second later, so the two epochs (2 s each) overlap
    /// for one second.
    pub(crate) fn set() -> NodeSet {
        nodes::merge(vec![node(1, 10, 0, 7, 2), node(2, 20, 1_000_000_000, 9, 5)]).unwrap()
    }

    #[test]
    fn forks_of_two_nodes_overlap_where_both_children_live() {
        let s = set();
        let v = ClusterView::build(&s, 10);
        // Axis 0 is the runs' common start (monotonic 1 s); epochs at 0.5 s and 1.5 s.
        let pairs = v.overlapping_forks();
        assert_eq!(pairs.len(), 1);
        let (a, b, overlap) = &pairs[0];
        assert_eq!((a.node, b.node), (0, 1));
        assert_eq!(a.span, (500_000_000, 2_500_000_000));
        assert_eq!(b.span, (1_500_000_000, 3_500_000_000));
        assert_eq!(*overlap, 1_000_000_000);
    }

    #[test]
    fn live_copy_on_write_counts_open_epochs_copies_so_far() {
        let s = set();
        let v = ClusterView::build(&s, 10);
        // The run spans 0..4 s on the axis: steps end at 1, 2, 3 and 4 s. Each epoch has
        // its 2 copies 0.1 and 0.15 s after its fork.
        let steps: Vec<(i64, u64, usize)> = v.live_cow(4);
        assert_eq!(
            steps,
            [
                (1_000_000_000, 2, 1),
                (2_000_000_000, 4, 2),
                (3_000_000_000, 2, 1),
                (4_000_000_000, 0, 0),
            ]
        );
    }

    #[test]
    fn hot_slots_name_their_node_and_the_serving_master_only_with_a_map() {
        let s = set();
        let v = ClusterView::build(&s, 10);
        let t = hot_slots(&v, 10);
        assert_eq!(t.columns.len(), 4);
        assert_eq!(
            t.rows,
            [
                vec!["9".to_string(), "h:2".into(), "5".into(), pages_mib(5)],
                vec!["7".to_string(), "h:1".into(), "2".into(), pages_mib(2)],
            ]
        );
        assert_eq!(hot_slots(&v, 1).rows.len(), 1);
        // Node 1's map, recorded after node 0's: slot 9 is served by none any more.
        let mut s = set();
        let map = |ts: u64, slots: Value| {
            json!([{"ts_ns": ts, "map": {"nodes": [
                {"id": "a", "addr": "127.0.0.1:1", "role": "master", "primary_id": null,
                 "slots": slots, "myself": true}]}}])
        };
        s.nodes[0].timeline["cluster"] = map(1_100_000_000, json!([[0, 16383]]));
        s.nodes[1].timeline["cluster"] = map(1_200_000_000, json!([[0, 8]]));
        let v = ClusterView::build(&s, 10);
        let t = hot_slots(&v, 10);
        assert_eq!(t.columns.len(), 5);
        assert_eq!(t.rows[0][4], "-");
        assert_eq!(t.rows[1][4], "127.0.0.1:1");
    }

    #[test]
    fn the_html_page_has_the_cluster_view_then_each_node_without_charts() {
        let s = set();
        let v = ClusterView::build(&s, 10);
        let page = super::super::html::render_cluster(&v, "c.json", 10);
        for needle in [
            "<h1>redis-memtrace cluster report</h1>",
            "<section id=\"cluster-slots-cow\">",
            "<section id=\"cluster-fork-overlaps\">",
            "<section class=\"node\" id=\"node-1\">\n<h2>Node h:2</h2>",
            "id=\"node-0-summary\"",
            "<section id=\"node-1-slots-cow\">",
            "<body data-charts=\"0\">",
        ] {
            assert!(page.contains(needle), "{needle} missing");
        }
        assert!(!page.contains("report-data") && !page.contains("chart-area"));
        // Every id once.
        let ids: Vec<&str> = page
            .split(" id=\"")
            .skip(1)
            .map(|r| &r[..r.find('"').unwrap()])
            .collect();
        let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "{ids:?}");
    }

    #[test]
    fn the_text_report_has_the_cluster_view_then_each_node() {
        let s = set();
        let v = ClusterView::build(&s, 10);
        let text = render(&v, "c.json", 10, Style { color: false });
        assert!(
            text.starts_with("redis-memtrace cluster report\n"),
            "{text}"
        );
        for needle in [
            "Forks overlapping across nodes (1)",
            "===== node h:1 =====",
            "===== node h:2 =====",
            "c.json, node h:2",
        ] {
            assert!(text.contains(needle), "{needle} missing:\n{text}");
        }
    }
}
