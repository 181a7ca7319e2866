//! Fault events: copy-on-write aggregated per process, activity and bucket; swap-ins
//! as instants.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value, json};

use super::{
    Builder, MAX_ACTIVITY_TRACKS, MAX_COW_SLICES, MAX_SWAP_IN_INSTANTS,
    input::{FaultKind, Parsed},
};

/// Activity of faults that carry none.
const UNATTRIBUTED: &str = "unattributed";
/// Track gathering the activities past [`MAX_ACTIVITY_TRACKS`].
const OTHER_ACTIVITIES: &str = "other activities";
/// Keys listed in a CoW slice's args.
pub const TOP_KEYS: usize = 5;

/// Copy-on-write pages of one process, activity and bucket.
#[derive(Debug, Default, Clone)]
pub struct Cell<'t> {
    /// Pages copied.
    pub pages: u64,
    /// Time of the first copy, monotonic ns.
    pub first_ns: u64,
    /// Time of the last copy, monotonic ns.
    pub last_ns: u64,
    /// Pages copied while a key was known.
    pub keyed: u64,
    /// The copies were made in a fork child.
    pub child: bool,
    /// Pages per key.
    pub keys: HashMap<&'t str, u64>,
    /// Pages per activity (only on the `other activities` track).
    pub activities: BTreeMap<&'t str, u64>,
}

impl<'t> Cell<'t> {
    fn add_time(&mut self, first_ns: u64, last_ns: u64) {
        if self.pages == 0 {
            (self.first_ns, self.last_ns) = (first_ns, last_ns);
        } else {
            self.first_ns = self.first_ns.min(first_ns);
            self.last_ns = self.last_ns.max(last_ns);
        }
    }

    fn merge(&mut self, activity: &'t str, other: &Cell<'t>) {
        self.add_time(other.first_ns, other.last_ns);
        self.pages += other.pages;
        self.keyed += other.keyed;
        self.child |= other.child;
        for (k, n) in &other.keys {
            *self.keys.entry(k).or_default() += n;
        }
        *self.activities.entry(activity).or_default() += other.pages;
    }
}

/// Fault counts gathered in one pass.
#[derive(Debug, Default)]
pub struct Acc<'t> {
    /// `cow_copy` faults per bucket, [parent, child].
    pub cow_per_bucket: Vec<[u64; 2]>,
    /// `swap_in` faults per bucket, [parent, child].
    pub swap_in_per_bucket: Vec<[u64; 2]>,
    /// CoW per (pid, activity, bucket).
    pub cells: BTreeMap<(u32, &'t str, u64), Cell<'t>>,
    /// Indices of the swap-in faults in `Parsed::faults`.
    pub swap_ins: Vec<usize>,
}

/// Counts the faults of `p` into buckets and cells.
pub fn accumulate<'t>(b: &Builder, p: &Parsed<'t>) -> Acc<'t> {
    let buckets = usize::try_from(b.clock.buckets).unwrap_or(usize::MAX);
    let mut acc = Acc {
        cow_per_bucket: vec![[0; 2]; buckets],
        swap_in_per_bucket: vec![[0; 2]; buckets],
        ..Acc::default()
    };
    for (i, f) in p.faults.iter().enumerate() {
        // `bucket` is below `buckets`, which fits in the vectors just allocated.
        let bucket = b.clock.bucket(f.ts_ns);
        let side = usize::from(f.child());
        match f.kind {
            FaultKind::CowCopy => {
                if let Some(c) = acc.cow_per_bucket.get_mut(bucket as usize) {
                    c[side] += 1;
                }
                let activity = f.activity.unwrap_or(UNATTRIBUTED);
                let cell = acc.cells.entry((f.pid, activity, bucket)).or_default();
                cell.add_time(f.ts_ns, f.ts_ns);
                cell.pages += 1;
                cell.child |= f.child();
                if let Some(key) = f.key {
                    cell.keyed += 1;
                    *cell.keys.entry(key).or_default() += 1;
                }
            }
            FaultKind::SwapIn => {
                if let Some(c) = acc.swap_in_per_bucket.get_mut(bucket as usize) {
                    c[side] += 1;
                }
                acc.swap_ins.push(i);
            }
            FaultKind::WpReuse | FaultKind::FirstTouch | FaultKind::Other => {}
        }
    }
    acc
}

/// One slice per non-empty cell, on a `CoW: ACTIVITY` track of the process, from the
/// cell's first copy to its last (not the whole bucket, which may start before the fork).
pub fn cow_slices(b: &mut Builder, acc: &Acc) {
    // Per process, activities by pages copied (most first); the tail shares one track.
    let mut totals: BTreeMap<u32, BTreeMap<&str, u64>> = BTreeMap::new();
    for ((pid, activity, _), cell) in &acc.cells {
        *totals.entry(*pid).or_default().entry(activity).or_default() += cell.pages;
    }
    let mut track_of: BTreeMap<(u32, &str), (&str, usize)> = BTreeMap::new();
    for (pid, by_activity) in &totals {
        let mut ranked: Vec<(&str, u64)> = by_activity.iter().map(|(a, n)| (*a, *n)).collect();
        ranked.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
        let merge = ranked.len() > MAX_ACTIVITY_TRACKS;
        for (rank, (activity, _)) in ranked.into_iter().enumerate() {
            let track = match merge && rank + 1 >= MAX_ACTIVITY_TRACKS {
                true => (OTHER_ACTIVITIES, MAX_ACTIVITY_TRACKS - 1),
                false => (activity, rank),
            };
            track_of.insert((*pid, activity), track);
        }
    }
    let mut cells: BTreeMap<(u32, &str, u64), Cell> = BTreeMap::new();
    let mut rank_of: BTreeMap<(u32, &str), usize> = BTreeMap::new();
    for ((pid, activity, bucket), cell) in &acc.cells {
        let (label, rank) = track_of
            .get(&(*pid, *activity))
            .copied()
            .unwrap_or((activity, 0));
        rank_of.insert((*pid, label), rank);
        if label == OTHER_ACTIVITIES {
            cells
                .entry((*pid, label, *bucket))
                .or_default()
                .merge(activity, cell);
        } else {
            cells.insert((*pid, label, *bucket), cell.clone());
        }
    }

    let mut order: Vec<(&(u32, &str, u64), &Cell)> = cells.iter().collect();
    let omitted = order.len().saturating_sub(MAX_COW_SLICES);
    if omitted > 0 {
        order.sort_by(|x, y| y.1.pages.cmp(&x.1.pages).then(x.0.cmp(y.0)));
        order.truncate(MAX_COW_SLICES);
        order.sort_by(|x, y| x.0.cmp(y.0));
    }
    let mut tids: BTreeMap<(u32, &str), u32> = BTreeMap::new();
    for ((pid, label, bucket), cell) in order {
        let tid = match tids.get(&(*pid, *label)) {
            Some(tid) => *tid,
            None => {
                let rank = rank_of.get(&(*pid, *label)).copied().unwrap_or(0);
                let tid = b.synthetic_thread(*pid, format!("CoW: {label}"), 10 + rank as i64);
                tids.insert((*pid, label), tid);
                tid
            }
        };
        let args = cell_args(b, *bucket, label, cell);
        b.slice(*pid, tid, "cow", label, cell.first_ns, cell.last_ns, args);
    }
    b.metadata.insert(
        "cow_slices".into(),
        json!({
            "emitted": cells.len() - omitted,
            "omitted": omitted,
            "aggregation": "cow_copy faults per process, activity and bucket",
        }),
    );
}

fn cell_args(b: &Builder, bucket: u64, label: &str, cell: &Cell) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert("activity".into(), label.into());
    a.insert(
        "bucket_start_ms".into(),
        (b.clock.rel(b.clock.bucket_start(bucket)) as f64 / 1e6).into(),
    );
    a.insert("cow_pages".into(), cell.pages.into());
    a.insert("pages_per_s".into(), b.clock.rate(cell.pages).into());
    a.insert(
        "role".into(),
        if cell.child { "child" } else { "parent" }.into(),
    );
    a.insert("keyed_pages".into(), cell.keyed.into());
    a.insert("distinct_keys".into(), cell.keys.len().into());
    let mut keys: Vec<(&str, u64)> = cell.keys.iter().map(|(k, n)| (*k, *n)).collect();
    keys.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
    let top: Vec<Value> = keys
        .into_iter()
        .take(TOP_KEYS)
        .map(|(key, pages)| json!({ "key": key, "pages": pages }))
        .collect();
    if !top.is_empty() {
        a.insert("top_keys".into(), top.into());
    }
    if !cell.activities.is_empty() {
        a.insert("activities".into(), json!(cell.activities));
    }
    a
}

/// `swap-in` instants on the faulting threads; past [`MAX_SWAP_IN_INSTANTS`], the
/// slowest.
pub fn swap_in_instants(b: &mut Builder, p: &Parsed, acc: &Acc) {
    let mut chosen = acc.swap_ins.clone();
    let total = chosen.len();
    if total > MAX_SWAP_IN_INSTANTS {
        let latency = |i: &usize| p.faults.get(*i).and_then(|f| f.latency_ns).unwrap_or(0);
        chosen.sort_by(|x, y| latency(y).cmp(&latency(x)).then(x.cmp(y)));
        chosen.truncate(MAX_SWAP_IN_INSTANTS);
        chosen.sort_unstable();
    }
    for f in chosen.iter().filter_map(|i| p.faults.get(*i)) {
        let mut a = Map::new();
        if let Some(activity) = f.activity {
            a.insert("activity".into(), activity.into());
            // Redis commands are upper case; server phases (cron, networking-read ...)
            // are not.
            if !activity.chars().any(|c| c.is_lowercase()) {
                a.insert("command".into(), activity.into());
            }
        }
        for key in [
            "key",
            "key_len",
            "key_truncated",
            "slot",
            "stage",
            "epoch",
            "major",
        ] {
            if let Some(v) = f.raw.get(key).filter(|v| !v.is_null()) {
                a.insert(key.into(), v.clone());
            }
        }
        if let Some(ns) = f.latency_ns {
            a.insert("latency_us".into(), (ns as f64 / 1e3).into());
        }
        if let Some(addr) = f.raw.get("addr").and_then(Value::as_u64) {
            a.insert("addr".into(), format!("{addr:#x}").into());
        }
        a.insert("role".into(), f.role.name().into());
        b.instant(f.pid, f.tid, "swap_in", "swap-in", f.ts_ns, a);
    }
    b.metadata.insert(
        "swap_in_instants".into(),
        json!({
            "total": total,
            "emitted": chosen.len(),
            "omitted": total - chosen.len(),
            "kept": "slowest",
        }),
    );
}
