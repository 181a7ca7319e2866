//! The data the HTML page's script draws: memory and fault-rate series on a shared time
//! axis (seconds since the run started), the fork epochs to shade, and the top-N bar
//! charts. Bounded in size whatever the run length.

use serde_json::{Value, json};

use super::{
    format::ellipsize,
    model::{KeyRow, Model, SlotRow},
};

/// Most points per memory series; longer runs keep the maximum of each group, so peaks
/// survive the thinning.
pub const MAX_POINTS: usize = 2000;

/// Longest key label embedded (the table has the full key).
const LABEL_MAX: usize = 200;

/// Chart data and how many charts the page will draw from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Charts {
    /// The JSON embedded in the page.
    pub data: Value,
    /// Charts the script draws: the two time series always, plus one per non-empty top
    /// list (keys and slots, for CoW and for swap-in).
    pub count: usize,
}

fn seconds(ts: u64, start: u64) -> f64 {
    (ts as i128 - start as i128) as f64 / 1e9
}

/// Builds the chart data of `m`.
pub fn build(m: &Model) -> Charts {
    let (start, end) = m.span_ns;
    let mut epochs = Vec::new();
    for e in &m.epochs {
        let s = e.start_ns;
        let label = format!("#{} {}", e.id, e.reason_or_fork());
        epochs.push(json!({
            "label": ellipsize(&label, 40),
            "x0": seconds(s, start),
            "x1": seconds(e.end_ns.unwrap_or(end).max(s), start),
        }));
    }
    let memory = memory(m, start);
    let rates = rates(m);
    let mut bars = Vec::new();
    for (id, title, rows) in [
        (
            "keys-cow",
            "Top keys by copy-on-write pages",
            keys(&m.attribution.top_keys_cow),
        ),
        (
            "slots-cow",
            "Top slots by copy-on-write pages",
            slots(&m.attribution.top_slots_cow),
        ),
        (
            "keys-swap-in",
            "Top keys by swap-in pages",
            keys(&m.attribution.top_keys_swap_in),
        ),
        (
            "slots-swap-in",
            "Top slots by swap-in pages",
            slots(&m.attribution.top_slots_swap_in),
        ),
    ] {
        if !rows.is_empty() {
            bars.push(json!({"id": id, "title": title, "rows": rows}));
        }
    }
    let count = 2 + bars.len();
    Charts {
        data: json!({
            "x": [0.0, seconds(end, start)],
            "memory": memory,
            "rates": rates,
            "epochs": epochs,
            "bars": bars,
        }),
        count,
    }
}

fn keys(rows: &[KeyRow]) -> Vec<Value> {
    rows.iter()
        .map(|k| {
            json!({
                "label": ellipsize(&k.key, LABEL_MAX),
                "value": k.pages,
                "note": k.slot.map(|s| format!("slot {s}")),
            })
        })
        .collect()
}

fn slots(rows: &[SlotRow]) -> Vec<Value> {
    rows.iter()
        .map(|s| json!({"label": format!("slot {}", s.slot), "value": s.pages, "note": null}))
        .collect()
}

/// The larger of two optional values.
fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn memory(m: &Model, start: u64) -> Value {
    let group = m.samples.len().div_ceil(MAX_POINTS).max(1);
    let mut t = Vec::new();
    let (mut rss, mut child, mut swap) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in m.samples.chunks(group) {
        t.push(seconds(chunk[0].ts_ns, start));
        rss.push(chunk.iter().fold(None, |a, s| max_opt(a, s.server_rss())));
        child.push(chunk.iter().fold(None, |a, s| max_opt(a, s.child_rss())));
        swap.push(chunk.iter().fold(None, |a, s| max_opt(a, s.server_swap())));
    }
    json!({
        "t": t,
        "series": [
            {"name": "server RSS", "color": "#1f77b4", "values": rss},
            {"name": "child RSS", "color": "#ff7f0e", "values": child},
            {"name": "server swap", "color": "#d62728", "values": swap},
        ],
    })
}

fn rates(m: &Model) -> Value {
    let r = &m.rates;
    let width_s = r.bucket_ns as f64 / 1e9;
    let t: Vec<f64> = (0..r.cow.len())
        .map(|i| seconds(r.start_ns, m.span_ns.0) + (i as f64 + 0.5) * width_s)
        .collect();
    let per_s = |v: &[u64]| -> Vec<f64> { v.iter().map(|&c| c as f64 / width_s).collect() };
    let mut series =
        vec![json!({"name": "CoW pages/s", "color": "#2ca02c", "values": per_s(&r.cow)})];
    if r.swap_in.iter().any(|&c| c > 0) {
        series.push(
            json!({"name": "swap-in pages/s", "color": "#9467bd", "values": per_s(&r.swap_in)}),
        );
    }
    json!({"bucket_s": width_s, "t": t, "series": series})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::{base, model};

    #[test]
    fn base_has_two_series_charts_and_two_bars() {
        let c = build(&model(base()));
        assert_eq!(c.count, 4);
        let d = &c.data;
        assert_eq!(d["x"], json!([0.0, 3.0]));
        assert_eq!(d["memory"]["t"], json!([0.0, 1.0, 2.0]));
        assert_eq!(
            d["memory"]["series"][1]["values"],
            json!([null, 536870912u64, 805306368u64])
        );
        assert_eq!(
            d["epochs"][0],
            json!({"label": "#0 bgsave", "x0": 0.5, "x1": 2.5})
        );
        assert_eq!(d["rates"]["bucket_s"], json!(0.02));
        let cow = d["rates"]["series"][0]["values"].as_array().unwrap();
        assert_eq!(cow[30], json!(50.0), "1 page in 20 ms is 50 pages/s");
        assert_eq!(d["rates"]["series"].as_array().unwrap().len(), 1);
        assert_eq!(
            d["bars"][0]["rows"][0],
            json!({"label": "k1", "value": 2, "note": "slot 1"})
        );
    }

    #[test]
    fn long_runs_are_thinned_keeping_peaks() {
        let mut v = base();
        let samples: Vec<Value> = (0..5000u64)
            .map(|i| json!({"ts_ns": 1_000_000_000 + i, "server": {"rss_bytes": if i == 4321 { 999 } else { 1 }}}))
            .collect();
        v["samples"] = json!(samples);
        let c = build(&model(v));
        let rss = c.data["memory"]["series"][0]["values"].as_array().unwrap();
        assert!(rss.len() <= MAX_POINTS);
        assert_eq!(rss.iter().filter(|x| **x == json!(999)).count(), 1);
    }

    #[test]
    fn empty_model_still_has_the_two_time_charts() {
        let c = build(&model(json!({})));
        assert_eq!(c.count, 2);
        assert_eq!(c.data["memory"]["t"], json!([]));
    }
}
