//! Bounded-memory heavy hitters: which keys (or slots, commands...) account for most of
//! the faults, without keeping a counter per distinct key.
//!
//! A Redis instance can touch millions of distinct keys during one fork epoch, and the
//! tracer must not grow without bound while it records. [`TopN`] implements the
//! Space-Saving algorithm (Metwally, Agrawal, El Abbadi, "Efficient Computation of
//! Frequent and Top-k Elements in Data Streams", ICDT 2005), weighted form: it keeps at
//! most `capacity` counters, and when a new key arrives with the table full, the key with
//! the smallest count is replaced and the newcomer inherits that count as its possible
//! overestimation. This gives, for every reported key, `count - error <= true <= count`,
//! with `error <= total / capacity`; every key whose true weight exceeds
//! `total / capacity` is guaranteed to be reported; and the counts are exact while the
//! number of distinct keys is at most `capacity`.
//!
//! The counters are kept as Metwally et al.'s "Stream-Summary": buckets of equal counts
//! in a list sorted by count, each holding a list of its entries. The usual add has
//! weight 1, and moves an entry to the next bucket or a new one after its own: constant
//! time, where a binary heap walked its whole depth for each newcomer of a full table
//! (every count equal, the common case with millions of distinct keys). Each key is
//! hashed once per add: the index stores slots under their keys' hashes, kept with the
//! entries, so an evicted key is found without hashing it again. Memory fixed at
//! `capacity` entries and as many buckets.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;
use serde::Serialize;

/// Most entries allocated up front: a huge requested capacity must not allocate (or
/// abort on allocation failure) before any key is seen.
const MAX_PREALLOC: usize = 1024;

/// No entry or bucket.
const NIL: usize = usize::MAX;

/// One heavy hitter reported by [`TopN::top`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Counted<K> {
    /// The key.
    pub key: K,
    /// Estimated total weight of the key: never below the true total.
    pub count: u64,
    /// Maximum overestimation in `count`: the count of the entry this key replaced when it
    /// entered the table, 0 if it never replaced one (then `count` is exact).
    pub error: u64,
}

impl<K> Counted<K> {
    /// Guaranteed lower bound on the key's true total weight (`count - error`).
    pub fn lower_bound(&self) -> u64 {
        self.count.saturating_sub(self.error)
    }
}

/// One counter of the table; its count is its bucket's.
#[derive(Debug, Clone)]
struct Entry<K> {
    key: K,
    /// The key's hash, under which the index holds this slot.
    hash: u64,
    error: u64,
    bucket: usize,
    /// Neighbours in the bucket's list of entries.
    prev: usize,
    next: usize,
}

/// The entries of one count, in the list of buckets by ascending count.
#[derive(Debug, Clone)]
struct Bucket {
    count: u64,
    /// First entry (the one an eviction takes).
    first: usize,
    prev: usize,
    next: usize,
}

/// Space-Saving heavy-hitter summary holding at most `capacity` keys.
///
/// Deterministic: the same sequence of [`TopN::add`] calls always produces the same
/// summary (the hash table is only used for lookups, never iterated).
#[derive(Debug, Clone)]
pub struct TopN<K: Eq + Hash + Clone> {
    /// Maximum number of entries, at least 1.
    capacity: usize,
    /// Sum of all weights ever added (saturating).
    total: u64,
    /// The counters. An entry's index ("slot") never changes: eviction reuses the slot.
    entries: Vec<Entry<K>>,
    /// Buckets, live or in `free`.
    buckets: Vec<Bucket>,
    free: Vec<usize>,
    /// The bucket of the smallest count.
    lowest: usize,
    /// Slots, stored under their keys' hashes.
    index: HashTable<usize>,
    hasher: foldhash::quality::RandomState,
}

impl<K: Eq + Hash + Clone> TopN<K> {
    /// An empty summary keeping at most `capacity` keys (a capacity of 0 is taken as 1).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let prealloc = capacity.min(MAX_PREALLOC);
        Self {
            capacity,
            total: 0,
            entries: Vec::with_capacity(prealloc),
            buckets: Vec::with_capacity(prealloc),
            free: Vec::new(),
            lowest: NIL,
            index: HashTable::with_capacity(prealloc),
            hasher: Default::default(),
        }
    }

    /// Maximum number of keys kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds `weight` to `key`'s count. A weight of 0 changes nothing (it neither inserts
    /// the key nor evicts another one). Counts and the total saturate at `u64::MAX`.
    pub fn add(&mut self, key: K, weight: u64) {
        self.add_with(&key, |k| *k == key, || key.clone(), weight);
    }

    /// [`TopN::add`] for the key that `like` stands for: `like` hashes as that key does
    /// (a tuple of references for a tuple of `Arc`s, say), `is` tells it from others, and
    /// `make` builds the key only if it is inserted.
    pub fn add_with<Q: Hash + ?Sized>(
        &mut self,
        like: &Q,
        is: impl Fn(&K) -> bool,
        make: impl FnOnce() -> K,
        weight: u64,
    ) {
        if weight == 0 {
            return;
        }
        self.total = self.total.saturating_add(weight);
        let hash = self.hasher.hash_one(like);
        let entries = &self.entries;
        if let Some(&slot) = self.index.find(hash, |&s| is(&entries[s].key)) {
            let bucket = self.entries[slot].bucket;
            let count = self.buckets[bucket].count.saturating_add(weight);
            self.move_to(slot, bucket, count);
            return;
        }
        if self.entries.len() < self.capacity {
            let slot = self.entries.len();
            self.entries.push(Entry {
                key: make(),
                hash,
                error: 0,
                bucket: NIL,
                prev: NIL,
                next: NIL,
            });
            self.insert_slot(hash, slot);
            let bucket = self.bucket_for(NIL, weight);
            self.push(slot, bucket);
            return;
        }
        // Full: the newcomer takes over an entry of the smallest count, inheriting that
        // count as both a base (it may have occurred that often unseen) and its error.
        let lowest = self.lowest;
        let (min, slot) = (self.buckets[lowest].count, self.buckets[lowest].first);
        let evicted = self.entries[slot].hash;
        if let Ok(found) = self.index.find_entry(evicted, |&s| s == slot) {
            found.remove();
        }
        let entry = &mut self.entries[slot];
        entry.key = make();
        entry.hash = hash;
        entry.error = min;
        self.insert_slot(hash, slot);
        self.move_to(slot, lowest, min.saturating_add(weight));
    }

    /// Indexes `slot` under `hash`.
    fn insert_slot(&mut self, hash: u64, slot: usize) {
        let entries = &self.entries;
        self.index.insert_unique(hash, slot, |&s| entries[s].hash);
    }

    /// Moves `slot` from `bucket` to the bucket of `count` (not below the current one).
    fn move_to(&mut self, slot: usize, bucket: usize, count: u64) {
        if count == self.buckets[bucket].count {
            return; // saturated
        }
        let target = self.bucket_for(bucket, count);
        self.unlink(slot);
        self.push(slot, target);
    }

    /// The bucket of `count`, made if there is none, searching from bucket `after`
    /// (whose count is below `count`; `NIL`: from the lowest).
    fn bucket_for(&mut self, after: usize, count: u64) -> usize {
        let (mut prev, mut cur) = match after {
            NIL => (NIL, self.lowest),
            b => (b, self.buckets[b].next),
        };
        while cur != NIL && self.buckets[cur].count < count {
            prev = cur;
            cur = self.buckets[cur].next;
        }
        if cur != NIL && self.buckets[cur].count == count {
            return cur;
        }
        let made = Bucket {
            count,
            first: NIL,
            prev,
            next: cur,
        };
        let b = match self.free.pop() {
            Some(b) => {
                self.buckets[b] = made;
                b
            }
            None => {
                self.buckets.push(made);
                self.buckets.len() - 1
            }
        };
        match prev {
            NIL => self.lowest = b,
            p => self.buckets[p].next = b,
        }
        if cur != NIL {
            self.buckets[cur].prev = b;
        }
        b
    }

    /// Puts `slot` first in `bucket`'s entries.
    fn push(&mut self, slot: usize, bucket: usize) {
        let first = self.buckets[bucket].first;
        let entry = &mut self.entries[slot];
        (entry.bucket, entry.prev, entry.next) = (bucket, NIL, first);
        if first != NIL {
            self.entries[first].prev = slot;
        }
        self.buckets[bucket].first = slot;
    }

    /// Takes `slot` out of its bucket, and the bucket out of the list if it empties.
    fn unlink(&mut self, slot: usize) {
        let Entry {
            bucket, prev, next, ..
        } = self.entries[slot];
        match prev {
            NIL => self.buckets[bucket].first = next,
            p => self.entries[p].next = next,
        }
        if next != NIL {
            self.entries[next].prev = prev;
        }
        if self.buckets[bucket].first != NIL {
            return;
        }
        let Bucket { prev, next, .. } = self.buckets[bucket];
        match prev {
            NIL => self.lowest = next,
            p => self.buckets[p].next = next,
        }
        if next != NIL {
            self.buckets[next].prev = prev;
        }
        self.free.push(bucket);
    }

    /// Number of keys currently kept (never more than [`TopN::capacity`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has been added (with a non-zero weight).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of all weights ever added, including those of keys since evicted (saturating).
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Upper bound on the true weight of any key not currently kept: the smallest count
    /// in a full table, 0 while the table is not full (then no key was ever evicted).
    pub fn min_count(&self) -> u64 {
        if self.entries.len() < self.capacity || self.lowest == NIL {
            return 0;
        }
        self.buckets[self.lowest].count
    }

    /// Count of the entry in `slot`.
    fn count_of(&self, slot: usize) -> u64 {
        self.buckets[self.entries[slot].bucket].count
    }
}

impl<K: Eq + Hash + Clone + Ord> TopN<K> {
    /// The `n` keys with the highest counts, highest first; equal counts are ordered by
    /// key, so the result is deterministic. Returns fewer than `n` if fewer are kept.
    pub fn top(&self, n: usize) -> Vec<Counted<K>> {
        let mut ranked: Vec<(u64, &Entry<K>)> = (0..self.entries.len())
            .map(|slot| (self.count_of(slot), &self.entries[slot]))
            .collect();
        // Keys are unique, so an unstable sort is still fully determined.
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.key.cmp(&b.1.key)));
        ranked
            .into_iter()
            .take(n)
            .map(|(count, entry)| Counted {
                key: entry.key.clone(),
                count,
                error: entry.error,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Checks the bucket, list and index invariants the algorithm relies on.
    fn assert_consistent<K: Eq + Hash + Clone + std::fmt::Debug>(t: &TopN<K>) {
        assert!(t.entries.len() <= t.capacity);
        assert_eq!(t.index.len(), t.entries.len());
        for (slot, entry) in t.entries.iter().enumerate() {
            assert_eq!(entry.hash, t.hasher.hash_one(&entry.key));
            let found = t.index.find(entry.hash, |&s| t.entries[s].key == entry.key);
            assert_eq!(found, Some(&slot));
        }
        // Buckets by strictly ascending count, none empty, each entry in its own.
        let (mut seen, mut prev, mut b, mut last) = (0, NIL, t.lowest, None);
        while b != NIL {
            let bucket = &t.buckets[b];
            assert_eq!(bucket.prev, prev);
            assert!(last.is_none_or(|c| c < bucket.count));
            assert_ne!(bucket.first, NIL, "empty bucket {b}");
            let (mut e, mut before) = (bucket.first, NIL);
            while e != NIL {
                assert_eq!((t.entries[e].bucket, t.entries[e].prev), (b, before));
                seen += 1;
                (before, e) = (e, t.entries[e].next);
            }
            (prev, last, b) = (b, Some(bucket.count), bucket.next);
        }
        assert_eq!(seen, t.entries.len());
    }

    #[test]
    fn a_borrowed_stand_in_finds_the_stored_key() {
        use std::sync::Arc;
        let mut t: TopN<(Arc<String>, Option<u16>)> = TopN::with_capacity(2);
        let a = Arc::new("a".to_string());
        t.add((Arc::clone(&a), Some(1)), 1);
        // Another allocation with equal bytes, looked up through references.
        let again = Arc::new("a".to_string());
        let add_like = |t: &mut TopN<(Arc<String>, Option<u16>)>, s: &Arc<String>, slot| {
            t.add_with(
                &(&**s, slot),
                |(k, sl)| *sl == slot && **k == **s,
                || (Arc::clone(s), slot),
                1,
            );
        };
        add_like(&mut t, &again, Some(1));
        add_like(&mut t, &again, Some(2));
        assert_consistent(&t);
        let top = t.top(3);
        assert_eq!(top.len(), 2, "{top:?}");
        assert_eq!((top[0].key.1, top[0].count), (Some(1), 2));
        assert_eq!((top[1].key.1, top[1].count), (Some(2), 1));
    }

    #[test]
    fn exact_when_distinct_fits() {
        let mut t = TopN::with_capacity(4);
        for (key, weight) in [("a", 3), ("b", 1), ("c", 7), ("a", 2), ("d", 5), ("b", 4)] {
            t.add(key, weight);
        }
        assert_consistent(&t);
        assert_eq!(t.len(), 4);
        assert_eq!(t.total(), 22);
        assert_eq!(t.min_count(), 5);
        let top = t.top(10);
        let got: Vec<_> = top.iter().map(|c| (c.key, c.count, c.error)).collect();
        // "a" and "b" tie at 5; the tie is broken by key.
        assert_eq!(
            got,
            vec![("c", 7, 0), ("a", 5, 0), ("b", 5, 0), ("d", 5, 0)]
        );
        assert_eq!(t.top(2).len(), 2);
        assert!(t.top(0).is_empty());
    }

    #[test]
    fn zero_weight_is_noop_and_capacity_clamps() {
        let mut t = TopN::with_capacity(0);
        assert_eq!(t.capacity(), 1);
        assert!(t.is_empty());
        t.add(1u32, 0);
        assert!(t.is_empty());
        assert_eq!(t.total(), 0);
        t.add(1, 2);
        t.add(2, 0);
        assert_eq!(
            t.top(5),
            vec![Counted {
                key: 1,
                count: 2,
                error: 0
            }]
        );
        t.add(2, 1);
        // Capacity 1: 2 replaced 1 and inherited its count as error.
        assert_eq!(
            t.top(5),
            vec![Counted {
                key: 2,
                count: 3,
                error: 2
            }]
        );
        assert_eq!(t.top(5)[0].lower_bound(), 1);
        assert_consistent(&t);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let mut t = TopN::with_capacity(1);
        t.add(0u8, u64::MAX);
        t.add(0, u64::MAX);
        t.add(1, 5);
        assert_eq!(t.total(), u64::MAX);
        assert_eq!(
            t.top(1),
            vec![Counted {
                key: 1,
                count: u64::MAX,
                error: u64::MAX
            }]
        );
    }

    #[test]
    fn huge_capacity_does_not_preallocate() {
        let mut t = TopN::with_capacity(usize::MAX);
        t.add("k", 1);
        assert_eq!(t.len(), 1);
    }

    /// Interleaves `light` distinct weight-1 keys with 10 heavy keys that each receive
    /// `heavy_total` in chunks of `chunk`, spread evenly through the stream, and checks the
    /// Space-Saving guarantees on the result.
    fn check_skewed(capacity: usize, light: u64, heavy_total: u64, chunk: u64) {
        let heavy_keys = 10u64;
        let rounds = heavy_total / chunk;
        let every = light / rounds;
        let mut t = TopN::with_capacity(capacity);
        let mut truth: BTreeMap<u64, u64> = BTreeMap::new();
        // Heavy keys are 0..10, light ones from 1_000_000 up.
        for i in 0..light {
            t.add(1_000_000 + i, 1);
            truth.insert(1_000_000 + i, 1);
            if i % every == every - 1 && *truth.get(&0).unwrap_or(&0) < heavy_total {
                for h in 0..heavy_keys {
                    t.add(h, chunk);
                    *truth.entry(h).or_default() += chunk;
                }
            }
            assert!(t.len() <= capacity);
        }
        assert_consistent(&t);
        let total = t.total();
        assert_eq!(total, truth.values().sum::<u64>());
        // The precondition of Space-Saving's guarantee to report a key.
        assert!(heavy_total > total / capacity as u64);

        let top = t.top(10);
        let mut keys: Vec<u64> = top.iter().map(|c| c.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..heavy_keys).collect::<Vec<_>>());
        for c in t.top(capacity) {
            let true_count = truth[&c.key];
            assert!(c.count >= true_count, "{c:?} true {true_count}");
            assert!(c.count <= true_count + c.error, "{c:?} true {true_count}");
            assert!(c.error <= total / capacity as u64, "{c:?} total {total}");
        }
    }

    #[test]
    fn skewed_stream_finds_heavy_keys() {
        // Capacity 100: 120k total, so keys above 1200 are guaranteed; heavy keys have 2000.
        check_skewed(100, 100_000, 2_000, 10);
        // Heavy keys of 1000 each, arriving one unit at a time: with 110k total that needs
        // a capacity above 110 to be guaranteed; 200 gives a margin.
        check_skewed(200, 100_000, 1_000, 1);
    }

    #[test]
    fn many_adds_stay_bounded() {
        // A cheap pseudo-random skewed stream (xorshift), a million adds.
        let mut t = TopN::with_capacity(1000);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Squaring a uniform value skews the distribution towards small keys.
            let r = (x >> 40) % 1_000_000;
            t.add(r * r / 1_000_000, 1);
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(t.total(), 1_000_000);
        assert_consistent(&t);
    }

    proptest! {
        #[test]
        fn space_saving_bounds(
            capacity in 1usize..20,
            stream in proptest::collection::vec((0u16..40, 0u64..50), 0..400),
        ) {
            let mut t = TopN::with_capacity(capacity);
            let mut truth: BTreeMap<u16, u64> = BTreeMap::new();
            for &(key, weight) in &stream {
                t.add(key, weight);
                if weight > 0 {
                    *truth.entry(key).or_default() += weight;
                }
                prop_assert!(t.len() <= capacity);
            }
            assert_consistent(&t);
            let total: u64 = truth.values().sum();
            prop_assert_eq!(t.total(), total);

            let top = t.top(usize::MAX);
            prop_assert_eq!(top.len(), t.len());
            // Space-Saving keeps the counts summing to the total.
            prop_assert_eq!(top.iter().map(|c| c.count).sum::<u64>(), total);
            for pair in top.windows(2) {
                prop_assert!(
                    (pair[0].count, std::cmp::Reverse(pair[0].key))
                        > (pair[1].count, std::cmp::Reverse(pair[1].key))
                );
            }
            for c in &top {
                let true_count = truth.get(&c.key).copied().unwrap_or(0);
                prop_assert!(c.lower_bound() <= true_count, "{:?} true {}", c, true_count);
                prop_assert!(true_count <= c.count, "{:?} true {}", c, true_count);
                prop_assert!(c.error <= total / capacity as u64);
            }
            // Keys not kept occurred at most min_count times.
            for (key, &true_count) in &truth {
                if !top.iter().any(|c| c.key == *key) {
                    prop_assert!(true_count <= t.min_count());
                }
            }
            if truth.len() <= capacity {
                let exact: Vec<(u16, u64, u64)> = top.iter().map(|c| (c.key, c.count, c.error)).collect();
                let mut expected: Vec<(u16, u64, u64)> = truth.iter().map(|(&k, &v)| (k, v, 0)).collect();
                expected.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                prop_assert_eq!(exact, expected);
            }
        }
    }
}
