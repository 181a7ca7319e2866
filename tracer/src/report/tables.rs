//! The report's text content as neutral tables and key/value lists, built once from the
//! [`Model`] and drawn by both the terminal and the HTML renderer, so the two always
//! show the same numbers. Cells hold raw text from the timeline; each renderer escapes
//! it for its medium.

use super::{
    format::{bytes, duration_ns, ellipsize, pages_mib, percent, rfc3339},
    model::{ActivityRow, KeyRow, KindCounts, Model, SlotRow},
};
use crate::redis::cluster::ClusterMap;

/// Horizontal alignment of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A titled table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Stable identifier (HTML id, tests).
    pub id: &'static str,
    /// Heading.
    pub title: String,
    /// Column names and alignments.
    pub columns: Vec<(&'static str, Align)>,
    /// Cells, one `Vec` per row, as many as columns.
    pub rows: Vec<Vec<String>>,
    /// Shown instead of the table when there are no rows.
    pub empty: &'static str,
    /// Shown under the table.
    pub note: Option<&'static str>,
}

/// Label/value lines.
pub type Pairs = Vec<(&'static str, String)>;

/// Longest key shown in a table cell, in characters.
pub const KEY_CELL_MAX: usize = 64;

/// Placeholder for an unknown value.
const NA: &str = "-";

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| NA.to_string(), f)
}

/// Who, what and when.
pub fn header(m: &Model, source: &str) -> Pairs {
    let h = &m.header;
    let mut out: Pairs = vec![("timeline", source.to_string())];
    let mut target = opt(h.pid, |p| format!("pid {p}"));
    if let Some(c) = &h.comm {
        target.push_str(&format!(" ({c})"));
    }
    if let Some(e) = &h.exe {
        target.push_str(&format!(", {e}"));
    }
    out.push(("target", target));
    out.push((
        "redis",
        match &h.redis {
            Some(r) => {
                let mut s = if r.version.is_empty() {
                    format!("{}, version unknown", r.product)
                } else {
                    format!("{} {}", r.product, r.version)
                };
                if let Some(role) = &r.role {
                    s.push_str(&format!(", {role}"));
                }
                if let Some(p) = r.port {
                    s.push_str(&format!(", port {p}"));
                }
                s
            }
            None => "no Redis information (not a Redis server, or INFO unreachable)".into(),
        },
    ));
    let mut kernel = h.kernel_release.clone().unwrap_or_else(|| NA.into());
    if let Some(v) = &h.tracer_version {
        kernel.push_str(&format!(" (recorded by redis-memtrace {v})"));
    }
    out.push(("kernel", kernel));
    out.push(("host", host_line(m)));
    let mut run = opt(h.start_wall_ns.and_then(rfc3339), |s| s);
    run.push_str(&format!(", {}", opt(h.duration_ns, duration_ns)));
    if let Some(r) = &h.end_reason {
        run.push_str(&format!(" (ended: {r})"));
    }
    out.push(("run", run));
    let attribution = match h.attribution {
        Some(true) => ", attribution on",
        Some(false) => ", attribution off",
        None => "",
    };
    out.push((
        "events",
        format!(
            "{} recorded, {} lost{}{attribution}",
            h.event_count,
            opt(h.lost_events, |n| n.to_string()),
            h.threads_full
                .filter(|&n| n > 0)
                .map(|n| format!(", {n} faults untracked"))
                .unwrap_or_default()
        ),
    ));
    out.push(("faults", faults_line(&m.faults)));
    if let Some(map) = &m.cluster {
        out.push(("cluster", cluster_line(map, m.cluster_maps)));
    }
    out
}

/// The latest cluster map in one line: its size, the traced node, the changes seen.
fn cluster_line(map: &ClusterMap, maps: usize) -> String {
    let (masters, replicas) = map.counts();
    let me = match map.myself() {
        Some(n) if n.slots.is_empty() => format!("{} ({}, no slots)", n.addr, n.role),
        Some(n) => {
            let ranges: Vec<String> = n
                .slots
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            format!("{} ({}, slots {})", n.addr, n.role, ranges.join(","))
        }
        None => "not in the map".into(),
    };
    let changes = match maps.saturating_sub(1) {
        0 => "no change during the run".to_string(),
        1 => "changed once during the run".to_string(),
        n => format!("changed {n} times during the run"),
    };
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}; traced node {me}; {changes}",
        plural(masters, "master"),
        plural(replicas, "replica")
    )
}

/// The address of the master serving `slot` in `map`, "-" when none does.
fn node_of(map: &ClusterMap, slot: Option<u16>) -> String {
    opt(slot.and_then(|s| map.owner_of(s)), |n| n.addr.clone())
}

/// Inserts a `node` column after `slot` when the run has a cluster map; a table of a
/// server outside cluster mode keeps its shape.
fn with_nodes(
    mut t: Table,
    cluster: Option<&ClusterMap>,
    slot_of: impl Fn(usize) -> Option<u16>,
) -> Table {
    let Some(map) = cluster else {
        return t;
    };
    let Some(at) = t.columns.iter().position(|c| c.0 == "slot") else {
        return t;
    };
    t.columns.insert(at + 1, ("node", Align::Left));
    for (i, row) in t.rows.iter_mut().enumerate() {
        row.insert(at + 1, node_of(map, slot_of(i)));
    }
    t
}

fn faults_line(f: &KindCounts) -> String {
    format!(
        "cow_copy {} ({}), wp_reuse {}, swap_in {} ({}), first_touch {}, other {}",
        f.cow_copy,
        pages_mib(f.cow_copy),
        f.wp_reuse,
        f.swap_in,
        pages_mib(f.swap_in),
        f.first_touch,
        f.other
    )
}

fn host_line(m: &Model) -> String {
    let Some(host) = &m.host else {
        return "not recorded (timeline from an older redis-memtrace)".into();
    };
    let mut parts = Vec::new();
    if let Some(t) = host.mem_total_bytes {
        let avail = host
            .mem_available_bytes
            .map(|a| format!(" ({} available at start)", bytes(a)))
            .unwrap_or_default();
        parts.push(format!("RAM {}{avail}", bytes(t)));
    }
    if let Some(s) = host.swap_total_bytes {
        parts.push(format!("swap {}", bytes(s)));
    }
    if let Some(c) = host.cpus {
        parts.push(format!("{c} CPUs"));
    }
    if let Some(t) = &host.thp_enabled {
        let defrag = host
            .thp_defrag
            .as_ref()
            .map(|d| format!(" (defrag {d})"))
            .unwrap_or_default();
        parts.push(format!("THP {t}{defrag}"));
    }
    if let Some(o) = host.overcommit_memory {
        parts.push(format!("vm.overcommit_memory {o}"));
    }
    if let Some(s) = host.swappiness {
        parts.push(format!("vm.swappiness {s}"));
    }
    if parts.is_empty() {
        NA.into()
    } else {
        parts.join(", ")
    }
}

/// One row per fork epoch.
pub fn epochs(m: &Model) -> Table {
    let ram = m.mem_total();
    let rows = m
        .epochs
        .iter()
        .map(|e| {
            let start = if e.started_before_trace {
                "before the run".to_string()
            } else {
                opt(m.wall_ns(e.start_ns).and_then(rfc3339), |s| s)
            };
            let duration = opt(e.duration(), |(d, cut)| {
                format!("{}{}", if cut { ">= " } else { "" }, duration_ns(d))
            });
            let (peak, share) = match e.peak {
                Some(p) => (
                    bytes(p.total()),
                    opt(ram.and_then(|r| percent(p.total(), r)), |s| s),
                ),
                None => (NA.to_string(), NA.to_string()),
            };
            vec![
                e.id.to_string(),
                e.reason.clone().unwrap_or_else(|| NA.into()),
                opt(Some(e.child_pid).filter(|&p| p != 0), |p| p.to_string()),
                start,
                duration,
                opt(e.fork_ns(), duration_ns),
                opt(e.redis_fork_usec(), |us| {
                    duration_ns(us.saturating_mul(1000))
                }),
                pages_mib(e.faults.parent.cow_copy),
                pages_mib(e.faults.child.cow_copy),
                opt(e.redis_cow_bytes(), bytes),
                peak,
                share,
            ]
        })
        .collect();
    Table {
        id: "epochs",
        title: "Fork epochs".into(),
        columns: vec![
            ("id", Align::Right),
            ("reason", Align::Left),
            ("child", Align::Right),
            ("start (UTC)", Align::Left),
            ("duration", Align::Right),
            ("fork", Align::Right),
            ("Redis fork", Align::Right),
            ("CoW parent", Align::Right),
            ("CoW child", Align::Right),
            ("Redis CoW", Align::Right),
            ("peak RSS p+c", Align::Right),
            ("% RAM", Align::Right),
        ],
        rows,
        empty: "no fork during the run",
        note: Some(
            "fork: the libc fork() call in the parent (the clone syscall when fork() was not \
             probed); Redis fork: INFO latest_fork_usec; CoW: pages copied x 4 KiB; Redis \
             CoW: rdb/aof_last_cow_size; peak RSS p+c: highest parent+child RSS among the \
             samples of the epoch (shared pages count twice), against physical RAM",
        ),
    }
}

/// Which fault kind a ranking is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `cow_copy`.
    Cow,
    /// `swap_in`.
    SwapIn,
}

impl Kind {
    fn count(self) -> fn(&KindCounts) -> u64 {
        match self {
            Kind::Cow => |k| k.cow_copy,
            Kind::SwapIn => |k| k.swap_in,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Cow => "copy-on-write (cow_copy)",
            Kind::SwapIn => "swap-in (swap_in)",
        }
    }
}

/// Commands and internal activities ranked by one fault kind.
pub fn activities(m: &Model, kind: Kind, top: usize) -> Table {
    let count = kind.count();
    let total = count(&m.faults);
    let rows = m
        .attribution
        .top_activities(count, top)
        .into_iter()
        .map(|a: &ActivityRow| {
            let n = count(&a.faults);
            vec![
                a.activity.clone(),
                if a.is_command { "command" } else { "internal" }.to_string(),
                n.to_string(),
                pages_mib(n),
                opt(percent(n, total), |s| s),
            ]
        })
        .collect();
    Table {
        id: match kind {
            Kind::Cow => "activities-cow",
            Kind::SwapIn => "activities-swap-in",
        },
        title: format!("Top commands and activities by {}", kind.label()),
        columns: vec![
            ("activity", Align::Left),
            ("type", Align::Left),
            ("pages", Align::Right),
            ("MiB", Align::Right),
            ("share", Align::Right),
        ],
        rows,
        empty: match kind {
            Kind::Cow => "no copy-on-write fault attributed to a command or activity",
            Kind::SwapIn => "no swap-in fault attributed to a command or activity",
        },
        note: None,
    }
}

/// Keys ranked by pages of one fault kind; with a cluster map, the node serving each
/// key's slot.
pub fn keys(rows: &[KeyRow], kind: Kind, cluster: Option<&ClusterMap>) -> Table {
    let t = Table {
        id: match kind {
            Kind::Cow => "keys-cow",
            Kind::SwapIn => "keys-swap-in",
        },
        title: format!("Top keys by {}", kind.label()),
        columns: vec![
            ("#", Align::Right),
            ("key", Align::Left),
            ("pages", Align::Right),
            ("MiB", Align::Right),
            ("slot", Align::Right),
            ("error", Align::Right),
        ],
        rows: rows
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut key = ellipsize(&k.key, KEY_CELL_MAX);
                if k.hashed {
                    key.push_str(" (hashed)");
                }
                if k.truncated {
                    key.push_str(&format!(" (truncated, {} bytes)", k.key_len));
                }
                vec![
                    (i + 1).to_string(),
                    key,
                    k.pages.to_string(),
                    pages_mib(k.pages),
                    opt(k.slot, |s| s.to_string()),
                    k.error.to_string(),
                ]
            })
            .collect(),
        empty: "no key attributed (attribution off, keys not recorded, or no such fault \
                under a key)",
        note: Some(
            "pages is an upper bound (keys are counted by a heavy-hitters sketch): the true \
             count is between pages - error and pages; error 0 is exact",
        ),
    };
    with_nodes(t, cluster, |i| rows[i].slot)
}

/// Cluster slots ranked by pages of one fault kind; with a cluster map, the node
/// serving each slot.
pub fn slots(rows: &[SlotRow], kind: Kind, cluster: Option<&ClusterMap>) -> Table {
    let t = Table {
        id: match kind {
            Kind::Cow => "slots-cow",
            Kind::SwapIn => "slots-swap-in",
        },
        title: format!("Top slots by {}", kind.label()),
        columns: vec![
            ("#", Align::Right),
            ("slot", Align::Right),
            ("pages", Align::Right),
            ("MiB", Align::Right),
        ],
        rows: rows
            .iter()
            .enumerate()
            .map(|(i, s)| {
                vec![
                    (i + 1).to_string(),
                    s.slot.to_string(),
                    s.pages.to_string(),
                    pages_mib(s.pages),
                ]
            })
            .collect(),
        empty: "no slot attributed (attribution off, or no such fault under a key)",
        note: cluster.map(|_| {
            "node: the master serving the slot in the run's latest cluster map, as the \
             traced node saw it"
        }),
    };
    with_nodes(t, cluster, |i| Some(rows[i].slot))
}

/// Swap devices and use, pages moved, and the server's swap over the run.
pub fn swap(m: &Model) -> Pairs {
    let s = &m.swap;
    let mut out: Pairs = Vec::new();
    match &m.host {
        None => out.push(("devices", "not recorded (older timeline)".into())),
        Some(h) if h.swap_devices.is_empty() => {
            out.push(("devices", "none: this host has no swap".into()))
        }
        Some(h) => {
            for d in &h.swap_devices {
                out.push((
                    "device",
                    format!(
                        "{} ({}): {} used of {}, priority {}",
                        d.path,
                        d.kind,
                        bytes(d.used_bytes),
                        bytes(d.size_bytes),
                        d.priority
                    ),
                ));
            }
        }
    }
    if let Some(h) = &m.host {
        out.push((
            "host swap",
            format!(
                "total {}, free {} at start; vm.swappiness {}",
                opt(h.swap_total_bytes, bytes),
                opt(h.swap_free_bytes, bytes),
                opt(h.swappiness, |v| v.to_string())
            ),
        ));
    }
    out.push((
        "swap-in faults",
        format!("{} ({})", m.faults.swap_in, pages_mib(m.faults.swap_in)),
    ));
    out.push((
        "traced pages",
        format!(
            "{} swapped in, {} swapped out, {} discarded",
            opt(s.pages_in, |n| n.to_string()),
            opt(s.pages_out, |n| n.to_string()),
            opt(s.pages_discarded, |n| n.to_string())
        ),
    ));
    out.push((
        "server swap",
        if m.samples.iter().any(|p| p.server_swap().is_some()) {
            format!(
                "max {}, last {} (VmSwap in samples)",
                opt(s.server_swap_max, bytes),
                opt(s.server_swap_last, bytes)
            )
        } else {
            "no samples".into()
        },
    ));
    out.push((
        "whole machine",
        format!(
            "pswpin +{}, pswpout +{} pages during the run; {} anonymous pages written to swap",
            opt(s.pswpin, |n| n.to_string()),
            opt(s.pswpout, |n| n.to_string()),
            opt(s.system_swap_writes, |n| n.to_string())
        ),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::{base, model};
    use serde_json::{Value, json};

    #[test]
    fn epoch_row_numbers() {
        let m = model(base());
        let t = epochs(&m);
        assert_eq!(t.rows.len(), 1);
        let r = &t.rows[0];
        let col = |name: &str| t.columns.iter().position(|c| c.0 == name).unwrap();
        assert_eq!(r[col("id")], "0");
        assert_eq!(r[col("reason")], "bgsave");
        assert_eq!(r[col("start (UTC)")], "2026-11-25T09:57:32.654Z");
        assert_eq!(r[col("duration")], "2.00 s");
        assert_eq!(r[col("fork")], "21.5 ms");
        assert_eq!(r[col("Redis fork")], "21.4 ms");
        assert_eq!(r[col("CoW parent")], "0.0 MiB");
        assert_eq!(r[col("Redis CoW")], "8.0 KiB");
        assert_eq!(r[col("peak RSS p+c")], "1.8 GiB");
        assert_eq!(r[col("% RAM")], "21.9%");
    }

    #[test]
    fn epoch_cut_by_the_run_and_unknowns() {
        let mut v = base();
        v["epochs"][0]["end_reason"] = json!("trace_end");
        v["epochs"][0]["fork_call_ns"] = json!(null);
        v["epochs"][0]["redis"] = json!(null);
        v["epochs"][0]["faults"]["parent"]["cow_copy"] = json!(51926);
        v["run"]["host"] = json!(null);
        let m = model(v);
        let r = &epochs(&m).rows[0];
        assert_eq!(r[4], ">= 2.00 s");
        assert_eq!(
            r[5], "20.0 ms",
            "the syscall when libc's fork was not probed"
        );
        assert_eq!(r[6], "-");
        assert_eq!(r[7], "202.8 MiB");
        assert_eq!(r[11], "-", "no RAM figure without run.host");
    }

    #[test]
    fn top_lists_respect_top() {
        let mut v = base();
        let acts: Vec<_> = (0..30)
            .map(|i| {
                json!({"activity": format!("CMD{i}"), "is_command": true,
                "faults": {"cow_copy": i + 1}})
            })
            .collect();
        v["summary"]["attribution"]["by_activity"] = json!(acts);
        v["summary"]["faults"]["cow_copy"] = json!(465);
        let keys_json: Vec<_> = (0..30)
            .map(|i| json!({"key": format!("k{i}"), "pages": i, "slot": i}))
            .collect();
        v["summary"]["attribution"]["top_keys_cow"] = json!(keys_json);
        let m = Model::build(&crate::timeline::read::Timeline(v), 3);
        let t = activities(&m, Kind::Cow, 3);
        assert_eq!(t.rows.len(), 3);
        assert_eq!(t.rows[0], ["CMD29", "command", "30", "0.1 MiB", "6.5%"]);
        let k = keys(&m.attribution.top_keys_cow, Kind::Cow, None);
        assert_eq!(k.rows.len(), 3);
        assert_eq!(k.rows[0][1], "k29");
        assert!(activities(&m, Kind::SwapIn, 3).rows.is_empty());
    }

    #[test]
    fn long_and_truncated_keys() {
        let rows = [KeyRow {
            key: "x".repeat(200),
            key_len: 5000,
            truncated: true,
            hashed: false,
            pages: 1,
            slot: None,
            error: 0,
        }];
        let t = keys(&rows, Kind::SwapIn, None);
        assert!(t.rows[0][1].starts_with(&"x".repeat(61)));
        assert!(t.rows[0][1].ends_with("... (truncated, 5000 bytes)"));
        let hashed = [KeyRow {
            key: "h:0123456789abcdef0123456789abcdef".into(),
            key_len: 34,
            truncated: false,
            hashed: true,
            pages: 0,
            slot: None,
            error: 0,
        }];
        let t = keys(&hashed, Kind::Cow, None);
        assert_eq!(t.rows[0][1], "h:0123456789abcdef0123456789abcdef (hashed)");
        assert_eq!(t.rows[0][4], "-");
    }

    /// The base timeline of a cluster node (10.0.0.1:7000, slots 0-1 and 5) whose slot 1
    /// moved to 10.0.0.2:7001 during the run.
    fn clustered() -> Model {
        let node = |id: &str, addr: &str, slots: Value, myself: bool| {
            json!({"id": id, "addr": addr, "role": "master", "primary_id": null,
                   "slots": slots, "myself": myself})
        };
        let replica = json!({"id": "c", "addr": "10.0.0.3:7002", "role": "replica",
                             "primary_id": "a", "slots": [], "myself": false});
        let mut v = base();
        v["cluster"] = json!([
            {"ts_ns": 1, "map": {"nodes": [
                node("a", "10.0.0.1:7000", json!([[0, 1], [5, 5]]), true),
                node("b", "10.0.0.2:7001", json!([[2, 4]]), false), replica.clone()]}},
            {"ts_ns": 2, "map": {"nodes": [
                node("a", "10.0.0.1:7000", json!([[0, 0], [5, 5]]), true),
                node("b", "10.0.0.2:7001", json!([[1, 4]]), false), replica]}}
        ]);
        v["summary"]["attribution"]["top_slots_cow"] =
            json!([{"slot": 1, "pages": 2}, {"slot": 5, "pages": 1}, {"slot": 9, "pages": 1}]);
        v["summary"]["attribution"]["top_keys_cow"] = json!([
            {"key": "k1", "pages": 2, "slot": 1}, {"key": "long", "pages": 1}]);
        model(v)
    }

    #[test]
    fn cluster_tables_name_the_node_serving_each_slot() {
        let m = clustered();
        let t = slots(&m.attribution.top_slots_cow, Kind::Cow, m.cluster.as_ref());
        let names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
        assert_eq!(names, ["#", "slot", "node", "pages", "MiB"]);
        assert_eq!(
            t.rows[0],
            ["1", "1", "10.0.0.2:7001", "2", "0.0 MiB"],
            "the latest map"
        );
        assert_eq!(t.rows[1][2], "10.0.0.1:7000");
        assert_eq!(t.rows[2][2], "-", "no node serves slot 9");
        assert!(
            t.note
                .is_some_and(|n| n.starts_with("node: the master serving"))
        );
        let k = keys(&m.attribution.top_keys_cow, Kind::Cow, m.cluster.as_ref());
        let names: Vec<&str> = k.columns.iter().map(|c| c.0).collect();
        assert_eq!(names, ["#", "key", "pages", "MiB", "slot", "node", "error"]);
        assert_eq!(k.rows[0][4..6], ["1", "10.0.0.2:7001"]);
        assert_eq!(k.rows[1][4..6], ["-", "-"], "a key without its slot");
        let h = header(&m, "t.json");
        let line = &h.iter().find(|p| p.0 == "cluster").unwrap().1;
        assert_eq!(
            line,
            "2 masters, 1 replica; traced node 10.0.0.1:7000 (master, slots 0,5); \
             changed once during the run"
        );
    }

    #[test]
    fn tables_without_a_cluster_keep_their_shape() {
        let m = model(base());
        let t = slots(&m.attribution.top_slots_cow, Kind::Cow, m.cluster.as_ref());
        let names: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
        assert_eq!(names, ["#", "slot", "pages", "MiB"]);
        assert_eq!(t.rows[0], ["1", "1", "2", "0.0 MiB"]);
        assert_eq!(t.note, None);
        let k = keys(&m.attribution.top_keys_cow, Kind::Cow, None);
        assert_eq!(k.columns.len(), 6);
        assert!(header(&m, "t.json").iter().all(|p| p.0 != "cluster"));
    }

    #[test]
    fn header_and_swap_lines() {
        let m = model(base());
        let h = header(&m, "t.json");
        let get = |k: &str| h.iter().find(|p| p.0 == k).unwrap().1.clone();
        assert_eq!(
            get("run"),
            "2026-11-25T09:57:32.154Z, 3.00 s (ended: duration)"
        );
        assert_eq!(get("events"), "4 recorded, 0 lost, attribution on");
        assert_eq!(get("redis"), "redis 7.0.15, master, port 6379");
        assert!(get("host").contains("RAM 8.0 GiB (6.0 GiB available at start)"));
        assert!(get("host").contains("vm.overcommit_memory 1"));
        let s = swap(&m);
        assert_eq!(s[0].1, "/swapfile (file): 0 B used of 1.0 GiB, priority -2");
        let m = model(json!({}));
        assert!(header(&m, "x").iter().any(|p| p.1.contains("not recorded")));
        assert_eq!(swap(&m)[0].1, "not recorded (older timeline)");
    }
}
