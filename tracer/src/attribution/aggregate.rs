//! Bounded aggregates of attributed faults: per activity (command or phase), top keys
//! and top cluster slots by copy-on-write and by swap-in pages.
//!
//! Memory is bounded whatever the workload: activities are capped (commands and phases
//! are a small closed set, anything past the cap is folded into `(other)`), keys go
//! through a Space-Saving heavy-hitters sketch, and slots are at most 16384.

use std::{collections::HashMap, sync::Arc};

/// The hot maps' hasher: keys come from clients (key names), so seeded per run, and far
/// cheaper than SipHash on every fault.
type Fast = foldhash::quality::RandomState;

use serde::Serialize;

use super::{
    context::Attribution,
    keys::{KeyBytes, escape_key},
    top_n::TopN,
};
use crate::{
    analysis::classify::FaultKind,
    analysis::counts::KindCounts,
    json_fields::{flag_at, u64_at},
};

/// Distinct activities kept before folding into `(other)`.
const MAX_ACTIVITIES: usize = 1024;

/// The activity row that counts activities past the table's capacity.
pub const OTHER_ACTIVITY: &str = "(other)";

/// Running aggregates for one scope (the whole run or one epoch).
#[derive(Debug)]
pub struct Aggregates {
    activities: HashMap<String, (bool, KindCounts), Fast>,
    keys_cow: TopN<(Arc<KeyBytes>, Option<u16>)>,
    keys_swap_in: TopN<(Arc<KeyBytes>, Option<u16>)>,
    slots_cow: HashMap<u16, u64, Fast>,
    slots_swap_in: HashMap<u16, u64, Fast>,
    /// Faults with no attribution (before the first context of their thread).
    unattributed: KindCounts,
}

/// One activity's faults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityRow {
    /// Command (upper case) or phase name.
    pub activity: String,
    /// True for commands.
    pub is_command: bool,
    /// Faults by kind.
    pub faults: KindCounts,
}

/// One key's pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    /// The key, escaped redis-cli style (`\xNN` for non-printable bytes).
    pub key: String,
    /// Original key length in bytes.
    pub key_len: u64,
    /// True when `key` holds only a prefix.
    pub truncated: bool,
    /// True when `key` is a keyed hash of the key (`--keys hash`).
    pub hashed: bool,
    /// Cluster hash slot of the real key (absent when the key was longer than the
    /// kernel's capture, so its slot is unknown).
    pub slot: Option<u16>,
    /// Pages (an upper bound when `error` > 0).
    pub pages: u64,
    /// How much `pages` may overcount (0: exact).
    pub error: u64,
}

/// One slot's pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlotRow {
    /// Hash slot, 0..16383.
    pub slot: u16,
    /// Pages.
    pub pages: u64,
}

// Reading the rows back (`report`), leniently: a row without its name or count is
// skipped; other missing or mistyped fields read as 0, false or no slot.

impl ActivityRow {
    /// One `by_activity` row of a timeline.
    pub fn from_json(r: &serde_json::Value) -> Option<ActivityRow> {
        Some(ActivityRow {
            activity: r.get("activity")?.as_str()?.to_string(),
            is_command: flag_at(r, "is_command"),
            faults: KindCounts::from_json(&r["faults"]),
        })
    }
}

impl KeyRow {
    /// One `top_keys_*` row of a timeline.
    pub fn from_json(k: &serde_json::Value) -> Option<KeyRow> {
        Some(KeyRow {
            key: k.get("key")?.as_str()?.to_string(),
            key_len: u64_at(k, "key_len").unwrap_or(0),
            truncated: flag_at(k, "truncated"),
            hashed: flag_at(k, "hashed"),
            slot: u64_at(k, "slot").and_then(|s| u16::try_from(s).ok()),
            pages: u64_at(k, "pages")?,
            error: u64_at(k, "error").unwrap_or(0),
        })
    }
}

impl SlotRow {
    /// One `top_slots_*` row of a timeline.
    pub fn from_json(s: &serde_json::Value) -> Option<SlotRow> {
        Some(SlotRow {
            slot: u16::try_from(u64_at(s, "slot")?).ok()?,
            pages: u64_at(s, "pages")?,
        })
    }
}

/// The aggregates as written to the timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AggregateReport {
    /// Every activity, by copy-on-write pages then swap-ins then total.
    pub by_activity: Vec<ActivityRow>,
    /// Top keys by copy-on-write pages.
    pub top_keys_cow: Vec<KeyRow>,
    /// Top keys by swap-in pages.
    pub top_keys_swap_in: Vec<KeyRow>,
    /// Top slots by copy-on-write pages.
    pub top_slots_cow: Vec<SlotRow>,
    /// Top slots by swap-in pages.
    pub top_slots_swap_in: Vec<SlotRow>,
    /// Faults with no attribution.
    pub unattributed: KindCounts,
}

impl AggregateReport {
    /// Keeps the `top` largest rows of each key and slot table (stable: equal counts keep
    /// the recorder's order).
    pub fn truncated(mut self, top: usize) -> AggregateReport {
        fn keep<T>(rows: &mut Vec<T>, pages: fn(&T) -> u64, top: usize) {
            rows.sort_by_key(|r| std::cmp::Reverse(pages(r)));
            rows.truncate(top);
        }
        keep(&mut self.top_keys_cow, |r| r.pages, top);
        keep(&mut self.top_keys_swap_in, |r| r.pages, top);
        keep(&mut self.top_slots_cow, |r| r.pages, top);
        keep(&mut self.top_slots_swap_in, |r| r.pages, top);
        self
    }

    /// Activities with faults of one kind, most first, at most `top`.
    pub fn top_activities(&self, kind: fn(&KindCounts) -> u64, top: usize) -> Vec<&ActivityRow> {
        let mut v: Vec<&ActivityRow> = self
            .by_activity
            .iter()
            .filter(|a| kind(&a.faults) > 0)
            .collect();
        v.sort_by_key(|a| std::cmp::Reverse(kind(&a.faults)));
        v.truncate(top);
        v
    }

    /// An `attribution` object of a timeline.
    pub fn from_json(a: &serde_json::Value) -> AggregateReport {
        fn rows<T>(
            a: &serde_json::Value,
            k: &str,
            row: fn(&serde_json::Value) -> Option<T>,
        ) -> Vec<T> {
            a.get(k)
                .and_then(serde_json::Value::as_array)
                .map_or(Vec::new(), |v| v.iter().filter_map(row).collect())
        }
        AggregateReport {
            by_activity: rows(a, "by_activity", ActivityRow::from_json),
            top_keys_cow: rows(a, "top_keys_cow", KeyRow::from_json),
            top_keys_swap_in: rows(a, "top_keys_swap_in", KeyRow::from_json),
            top_slots_cow: rows(a, "top_slots_cow", SlotRow::from_json),
            top_slots_swap_in: rows(a, "top_slots_swap_in", SlotRow::from_json),
            unattributed: KindCounts::from_json(&a["unattributed"]),
        }
    }
}

impl Aggregates {
    /// Aggregates whose key sketches keep `key_capacity` keys each.
    pub fn new(key_capacity: usize) -> Aggregates {
        Aggregates {
            activities: HashMap::default(),
            keys_cow: TopN::with_capacity(key_capacity),
            keys_swap_in: TopN::with_capacity(key_capacity),
            slots_cow: HashMap::default(),
            slots_swap_in: HashMap::default(),
            unattributed: KindCounts::default(),
        }
    }

    /// Adds one fault. A fault taken inside the allocator (`in_allocator`) counts for its
    /// activity only: its page is the allocator's bookkeeping or the block it was
    /// handing out, not the key's data.
    pub fn add(&mut self, kind: FaultKind, at: Option<&Attribution>, in_allocator: bool) {
        let Some(at) = at else {
            self.unattributed.add(kind);
            return;
        };
        let full = self.activities.len() >= MAX_ACTIVITIES;
        let entry = match self.activities.get_mut(&at.activity) {
            Some(e) => e,
            None => {
                let name = if full {
                    OTHER_ACTIVITY
                } else {
                    at.activity.as_str()
                };
                self.activities
                    .entry(name.to_string())
                    .or_insert((at.is_command && !full, KindCounts::default()))
            }
        };
        entry.1.add(kind);
        let (keys, slots) = match kind {
            _ if in_allocator => return,
            FaultKind::CowCopy => (&mut self.keys_cow, &mut self.slots_cow),
            FaultKind::SwapIn => (&mut self.keys_swap_in, &mut self.slots_swap_in),
            _ => return,
        };
        if let Some(key) = &at.key {
            // The slot rides along: it was computed from the real key, which a hashed
            // or cut key no longer shows.
            // Hashed as the stored `(Arc, slot)` is; the `Arc` is cloned only if the key
            // enters the table.
            keys.add_with(
                &(&**key, at.slot),
                |(k, slot)| *slot == at.slot && (Arc::ptr_eq(k, key) || **k == **key),
                || (Arc::clone(key), at.slot),
                1,
            );
        }
        if let Some(slot) = at.slot {
            *slots.entry(slot).or_default() += 1;
        }
    }

    /// The `top` largest entries of each table.
    pub fn report(&self, top: usize) -> AggregateReport {
        let mut by_activity: Vec<ActivityRow> = self
            .activities
            .iter()
            .map(|(name, (is_command, faults))| ActivityRow {
                activity: name.clone(),
                is_command: *is_command,
                faults: *faults,
            })
            .collect();
        by_activity.sort_by(|a, b| {
            (b.faults.cow_copy, b.faults.swap_in, b.faults.total())
                .cmp(&(a.faults.cow_copy, a.faults.swap_in, a.faults.total()))
                .then_with(|| a.activity.cmp(&b.activity))
        });
        AggregateReport {
            by_activity,
            top_keys_cow: key_rows(&self.keys_cow, top),
            top_keys_swap_in: key_rows(&self.keys_swap_in, top),
            top_slots_cow: slot_rows(&self.slots_cow, top),
            top_slots_swap_in: slot_rows(&self.slots_swap_in, top),
            unattributed: self.unattributed,
        }
    }
}

fn key_rows(sketch: &TopN<(Arc<KeyBytes>, Option<u16>)>, top: usize) -> Vec<KeyRow> {
    sketch
        .top(top)
        .into_iter()
        .map(|c| KeyRow {
            key: escape_key(&c.key.0.bytes),
            key_len: c.key.0.original_len,
            truncated: c.key.0.truncated(),
            hashed: c.key.0.hashed,
            slot: c.key.1,
            pages: c.count,
            error: c.error,
        })
        .collect()
}

fn slot_rows(slots: &HashMap<u16, u64, Fast>, top: usize) -> Vec<SlotRow> {
    let mut rows: Vec<SlotRow> = slots
        .iter()
        .map(|(&slot, &pages)| SlotRow { slot, pages })
        .collect();
    rows.sort_by(|a, b| b.pages.cmp(&a.pages).then(a.slot.cmp(&b.slot)));
    rows.truncate(top);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::keyslot::key_hash_slot;

    fn set(key: &str) -> Attribution {
        let k = KeyBytes::new(key.as_bytes(), key.len() as u64, 128);
        Attribution {
            activity: "SET".into(),
            is_command: true,
            slot: Some(key_hash_slot(&k.bytes)),
            key: Some(Arc::new(k)),
            argc: 3,
            stage: None,
            keys_in_command: None,
        }
    }

    #[test]
    fn counts_keys_slots_and_activities() {
        let mut agg = Aggregates::new(100);
        for _ in 0..5 {
            agg.add(FaultKind::CowCopy, Some(&set("hot:1")), false);
        }
        agg.add(FaultKind::CowCopy, Some(&set("{tag}a")), false);
        agg.add(FaultKind::CowCopy, Some(&set("{tag}b")), false);
        agg.add(FaultKind::SwapIn, Some(&set("cold")), false);
        agg.add(
            FaultKind::FirstTouch,
            Some(&Attribution::phase("cron")),
            false,
        );
        agg.add(FaultKind::CowCopy, None, false);
        let r = agg.report(10);
        assert_eq!(r.by_activity[0].activity, "SET");
        assert_eq!(r.by_activity[0].faults.cow_copy, 7);
        assert_eq!(r.by_activity[0].faults.swap_in, 1);
        assert_eq!(r.by_activity[1].activity, "cron");
        assert_eq!(r.top_keys_cow[0].key, "hot:1");
        assert_eq!(r.top_keys_cow[0].pages, 5);
        assert_eq!(r.top_keys_swap_in[0].key, "cold");
        let tag = key_hash_slot(b"tag");
        assert_eq!(
            r.top_slots_cow[0],
            SlotRow {
                slot: key_hash_slot(b"hot:1"),
                pages: 5
            }
        );
        assert!(r.top_slots_cow.contains(&SlotRow {
            slot: tag,
            pages: 2
        }));
        assert_eq!(r.unattributed.cow_copy, 1);
    }

    #[test]
    fn allocator_faults_count_for_the_command_not_the_key() {
        let mut agg = Aggregates::new(100);
        agg.add(FaultKind::CowCopy, Some(&set("big")), false);
        for _ in 0..9 {
            agg.add(FaultKind::CowCopy, Some(&set("big")), true);
        }
        let r = agg.report(10);
        assert_eq!(r.by_activity[0].faults.cow_copy, 10);
        assert_eq!(r.top_keys_cow.len(), 1);
        assert_eq!(r.top_keys_cow[0].pages, 1);
        assert_eq!(r.top_slots_cow[0].pages, 1);
    }

    #[test]
    fn activities_are_bounded() {
        let mut agg = Aggregates::new(10);
        for i in 0..(MAX_ACTIVITIES + 50) {
            agg.add(
                FaultKind::Other,
                Some(&Attribution::phase(&format!("p{i}"))),
                false,
            );
        }
        let r = agg.report(5);
        assert!(r.by_activity.len() <= MAX_ACTIVITIES + 1);
        let other = r
            .by_activity
            .iter()
            .find(|a| a.activity == "(other)")
            .unwrap();
        assert_eq!(other.faults.other, 50);
    }
}
