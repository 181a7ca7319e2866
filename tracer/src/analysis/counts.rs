//! Per-kind fault counters, as they appear in timelines: written by the recorder, read
//! back by `report`.

use serde::Serialize;
use serde_json::Value;

use crate::analysis::classify::FaultKind;

/// Number of faults of each kind. Serialized with the exact names other tools read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindCounts {
    /// Copy-on-write copies.
    pub cow_copy: u64,
    /// Write-protect faults resolved without a copy.
    pub wp_reuse: u64,
    /// Pages brought back from swap.
    pub swap_in: u64,
    /// New zero-filled anonymous pages.
    pub first_touch: u64,
    /// Everything else.
    pub other: u64,
}

impl KindCounts {
    /// Adds one fault of `kind`.
    pub fn add(&mut self, kind: FaultKind) {
        let slot = self.slot(kind);
        *slot = slot.saturating_add(1);
    }

    /// The count for `kind`.
    pub fn get(&self, kind: FaultKind) -> u64 {
        match kind {
            FaultKind::CowCopy => self.cow_copy,
            FaultKind::WpReuse => self.wp_reuse,
            FaultKind::SwapIn => self.swap_in,
            FaultKind::FirstTouch => self.first_touch,
            FaultKind::Other => self.other,
        }
    }

    /// Sum over all kinds.
    pub fn total(&self) -> u64 {
        FaultKind::ALL.iter().map(|k| self.get(*k)).sum()
    }

    /// Reads `{cow_copy, wp_reuse, swap_in, first_touch, other}` from a timeline, leniently
    /// (an older or newer file still reads): an absent or mistyped count is 0.
    pub fn from_json(v: &Value) -> KindCounts {
        let mut counts = KindCounts::default();
        for kind in FaultKind::ALL {
            *counts.slot(kind) = v.get(kind.name()).and_then(Value::as_u64).unwrap_or(0);
        }
        counts
    }

    fn slot(&mut self, kind: FaultKind) -> &mut u64 {
        match kind {
            FaultKind::CowCopy => &mut self.cow_copy,
            FaultKind::WpReuse => &mut self.wp_reuse,
            FaultKind::SwapIn => &mut self.swap_in,
            FaultKind::FirstTouch => &mut self.first_touch,
            FaultKind::Other => &mut self.other,
        }
    }
}
