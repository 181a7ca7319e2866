//! Fault rates over time: `cow_copy` and `swap_in` events counted in fixed-width
//! buckets across the run, for the HTML chart. The bucket count is bounded whatever the
//! run length.

use crate::{
    json_fields::{str_at, u64_at},
    timeline::read::Timeline,
};

/// Fault rates over time: counts per fixed-width bucket from the run's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    /// Monotonic time of the first bucket.
    pub start_ns: u64,
    /// Width of a bucket.
    pub bucket_ns: u64,
    /// `cow_copy` faults per bucket.
    pub cow: Vec<u64>,
    /// `swap_in` faults per bucket.
    pub swap_in: Vec<u64>,
}

/// Most buckets in [`Rates`]: enough detail for a chart, bounded for any run length.
pub const MAX_BUCKETS: u64 = 240;

/// Bucket widths tried in order, ns: round numbers read well on an axis.
const NICE_BUCKETS_NS: [u64; 18] = [
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    15_000_000_000,
    30_000_000_000,
    60_000_000_000,
    120_000_000_000,
    300_000_000_000,
    600_000_000_000,
    1_800_000_000_000,
    3_600_000_000_000,
];

/// The smallest round bucket width that covers `span_ns` in at most [`MAX_BUCKETS`].
pub fn bucket_width(span_ns: u64) -> u64 {
    NICE_BUCKETS_NS
        .iter()
        .copied()
        .find(|w| span_ns.div_ceil(*w) <= MAX_BUCKETS)
        .unwrap_or_else(|| span_ns.div_ceil(MAX_BUCKETS).max(1))
}

/// Counts the `cow_copy` and `swap_in` events of `t` in buckets over `[start, end]`
/// (events outside are left out).
pub fn rates(t: &Timeline, (start, end): (u64, u64)) -> Rates {
    let span = end.saturating_sub(start);
    if span == 0 {
        return Rates::default();
    }
    let width = bucket_width(span);
    let n = span.div_ceil(width) as usize;
    let mut r = Rates {
        start_ns: start,
        bucket_ns: width,
        cow: vec![0; n],
        swap_in: vec![0; n],
    };
    for e in t.events() {
        let series = match str_at(e, "kind") {
            Some("cow_copy") => &mut r.cow,
            Some("swap_in") => &mut r.swap_in,
            _ => continue,
        };
        let Some(ts) = u64_at(e, "ts_ns").filter(|ts| (start..=end).contains(ts)) else {
            continue;
        };
        // The end instant itself belongs to the last bucket.
        let i = (((ts - start) / width) as usize).min(n - 1);
        series[i] = series[i].saturating_add(1);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::{base, model};

    #[test]
    fn rates_bucket_cow_events() {
        let m = model(base());
        // 3 s span: 20 ms buckets (150 of them).
        assert_eq!(m.rates.bucket_ns, 20_000_000);
        assert_eq!(m.rates.cow.len(), 150);
        assert_eq!(m.rates.cow.iter().sum::<u64>(), 2);
        assert_eq!(m.rates.cow[30], 1);
        assert_eq!(m.rates.cow[32], 1);
        assert!(m.rates.swap_in.iter().all(|&c| c == 0));
    }

    #[test]
    fn bucket_widths_stay_bounded() {
        assert_eq!(bucket_width(1), 10_000_000);
        assert_eq!(bucket_width(8_880_000_000), 50_000_000);
        for span in [0, 1, 999, 2_400_000_000, 86_400_000_000_000, u64::MAX] {
            let w = bucket_width(span);
            assert!(w > 0 && span.div_ceil(w) <= MAX_BUCKETS, "{span} -> {w}");
        }
    }
}
