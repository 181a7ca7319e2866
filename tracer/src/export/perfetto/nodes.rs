//! A multi-node file (`merge`) as one trace: each node's trace, as [`to_chrome_trace`]
//! makes it, moved onto the merged time axis, its processes renumbered into a range of
//! their own (pids of different hosts can be equal) and named after the node, and the
//! nodes listed in the set's order.

use serde_json::{Map, Value, json};

use super::to_chrome_trace;
use crate::timeline::nodes::NodeSet;

/// Pids of node `i` become `(i + 1) << PID_BITS | pid`: Linux pids fit in 22 bits.
const PID_BITS: u32 = 22;
/// Most nodes whose pids fit in 32 bits.
pub const MAX_NODES: usize = (1 << (32 - PID_BITS)) - 1;
/// Sort indexes of node `i`'s processes are moved by `i` times this.
const SORT_STRIDE: i64 = 10_000_000;

/// The trace of every node of `set`, on one axis (ts 0 is the earliest node's start).
pub fn to_chrome_trace_nodes(set: &NodeSet) -> anyhow::Result<Value> {
    if set.nodes.len() > MAX_NODES {
        anyhow::bail!(
            "a trace holds at most {MAX_NODES} nodes; this file has {}",
            set.nodes.len()
        );
    }
    let mut events = Vec::new();
    let mut nodes_meta = Vec::new();
    for (i, node) in set.nodes.iter().enumerate() {
        let trace = to_chrome_trace(&node.timeline());
        let base = node.timeline["run"]["monotonic_start_ns"]
            .as_u64()
            .unwrap_or(0);
        // Each node's ts 0 is its own start: shift it to where it sits on the axis.
        let shift_us = node.axis_ns(base).max(0) as f64 / 1000.0;
        let list = trace["traceEvents"].as_array().cloned().unwrap_or_default();
        for e in list {
            if let Value::Object(m) = e {
                events.push(Value::Object(moved(m, i, &node.name, shift_us)));
            }
        }
        nodes_meta.push(json!({
            "name": node.name,
            "source": node.source,
            "shift_us": shift_us,
            "metadata": trace["metadata"],
        }));
    }
    // Metadata first, then by time with longer slices first, as one node's trace is.
    let key = |e: &Value| {
        let meta = e["ph"] == "M";
        let ts = e["ts"].as_f64().unwrap_or(0.0);
        let dur = e["dur"].as_f64().unwrap_or(0.0);
        (!meta, ts, -dur)
    };
    events.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.total_cmp(&b.2))
    });
    Ok(json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "metadata": {
            "alignment": set.alignment,
            "nodes": nodes_meta,
        },
    }))
}

/// One event of node `i` with its pid, time and names moved into the node's place.
fn moved(mut m: Map<String, Value>, i: usize, name: &str, shift_us: f64) -> Map<String, Value> {
    let node_bits = (i as u64 + 1) << PID_BITS;
    if let Some(pid) = m.get("pid").and_then(Value::as_u64) {
        m.insert("pid".into(), (node_bits | pid).into());
    }
    let meta = m.get("ph").and_then(Value::as_str) == Some("M");
    if !meta && let Some(ts) = m.get("ts").and_then(Value::as_f64) {
        m.insert("ts".into(), json!(ts + shift_us));
    }
    let what = m.get("name").and_then(Value::as_str).unwrap_or("");
    match what {
        "process_name" if meta => {
            let old = m["args"]["name"].as_str().unwrap_or("").to_string();
            m.insert("args".into(), json!({ "name": format!("{name}: {old}") }));
        }
        "process_sort_index" if meta => {
            let old = m["args"]["sort_index"].as_i64().unwrap_or(0);
            let sort = old + i as i64 * SORT_STRIDE;
            m.insert("args".into(), json!({ "sort_index": sort }));
        }
        _ => {}
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_node_is_a_process_group_of_its_own_on_the_common_axis() {
        let set = crate::report::cluster::tests::set();
        let trace = to_chrome_trace_nodes(&set).unwrap();
        let events = trace["traceEvents"].as_array().unwrap();
        let name_of = |pid: u64| {
            events
                .iter()
                .find(|e| e["name"] == "process_name" && e["pid"] == pid)
                .map(|e| e["args"]["name"].as_str().unwrap().to_string())
        };
        // Pid 20 of node 1: (1 + 1) << 22 | 20.
        let (p0, p1) = ((1u64 << 22) | 10, (2u64 << 22) | 20);
        assert!(name_of(p0).unwrap().starts_with("h:1: "));
        assert!(name_of(p1).unwrap().starts_with("h:2: "));
        assert!(name_of(10).is_none() && name_of(20).is_none());
        // Both runs start at axis 0; node 0 forks 0.5 s in, node 1 a second later.
        let epoch = |pid: u64| {
            events
                .iter()
                .find(|e| e["pid"] == pid && e["cat"] == "epoch")
                .and_then(|e| e["ts"].as_f64())
                .unwrap()
        };
        assert_eq!(epoch(p0), 500_000.0);
        assert_eq!(epoch(p1), 1_500_000.0);
        // Sorted: metadata first, then by time.
        let first_timed = events.iter().position(|e| e["ph"] != "M").unwrap();
        assert!(events[first_timed..].iter().all(|e| e["ph"] != "M"));
        let ts: Vec<f64> = events[first_timed..]
            .iter()
            .map(|e| e["ts"].as_f64().unwrap())
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(trace["metadata"]["nodes"].as_array().unwrap().len(), 2);
    }
}
