//! Classification of one completed fault from the evidence the kernel side gathered.
//!
//! The evidence is what the kernel did on the faulting thread between fault entry and
//! completion: whether it allocated a user page, which RSS counters moved, whether a swap
//! entry was consumed. With the x86 error code (present bit, write bit) that decides the
//! kind without guessing:
//!
//! | kind | evidence |
//! |---|---|
//! | `swap_in` | MM_SWAPENTS changed outside reclaim (swap-cache hits included) |
//! | `cow_copy` | write to a present page, a user page was allocated, anon RSS unchanged: a shared anonymous page was copied |
//! | `wp_reuse` | write to a present page, nothing allocated: the page was reused in place |
//! | `first_touch` | anon RSS grew: a zero-filled page (or the private copy of the zero page or a file page) appeared |
//! | `other` | everything else: file page cache mappings, zero-page maps on read, spurious and failed faults |

use serde::Serialize;
use tracer_common::fault_flags as ff;

/// x86 page-fault error code: the page was present (a protection fault).
const PF_PRESENT: u64 = 1 << 0;
/// x86 page-fault error code: the access was a write.
const PF_WRITE: u64 = 1 << 1;

/// What a fault did to memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A shared anonymous page was copied on write (fork copy-on-write).
    CowCopy,
    /// A write-protected page was made writable without a copy.
    WpReuse,
    /// A page came back from swap (from disk or the swap cache).
    SwapIn,
    /// New anonymous memory: a zero-filled page.
    FirstTouch,
    /// Any other fault.
    Other,
}

impl FaultKind {
    /// Every kind, in the order summaries list them.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::CowCopy,
        FaultKind::WpReuse,
        FaultKind::SwapIn,
        FaultKind::FirstTouch,
        FaultKind::Other,
    ];

    /// The kind a timeline names `name` (`None` for a record that is not a fault).
    pub fn from_name(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The name used in timelines.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::CowCopy => "cow_copy",
            FaultKind::WpReuse => "wp_reuse",
            FaultKind::SwapIn => "swap_in",
            FaultKind::FirstTouch => "first_touch",
            FaultKind::Other => "other",
        }
    }
}

/// Which kinds of evidence this kernel could give (a tracepoint may be missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// `kmem:mm_page_alloc` attached: page allocations inside a fault are seen.
    pub page_alloc: bool,
    /// `kmem:rss_stat` attached: RSS and swap-entry counter changes are seen.
    pub rss_stat: bool,
}

impl Evidence {
    /// Everything attached: classification is exact.
    pub const FULL: Evidence = Evidence {
        page_alloc: true,
        rss_stat: true,
    };

    /// The kinds whose counts are approximate with this evidence, in summary order.
    pub fn approximate_kinds(self) -> Vec<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(|k| match k {
                // Without allocations a copy is told from a reuse by the fork epoch.
                FaultKind::CowCopy => !self.page_alloc || !self.rss_stat,
                FaultKind::WpReuse => !self.page_alloc,
                // Without counters: major faults and allocating faults stand in.
                FaultKind::SwapIn | FaultKind::FirstTouch | FaultKind::Other => !self.rss_stat,
            })
            .collect()
    }
}

/// Classifies a fault when some evidence is missing. `shares_pages`: the faulting process
/// had a live fork relative at the time (an open epoch), so a write to a present page was
/// most likely a copy.
///
/// - no `rss_stat`: a major fault on a non-present page is a `swap_in` (file-backed major
///   faults are counted too, swap-cache hits are missed); a fault on a non-present page
///   that allocated is a `first_touch` (page-cache fills are counted too).
/// - no `mm_page_alloc`: a write to a present page is a `cow_copy` inside an epoch and a
///   `wp_reuse` outside one.
pub fn classify_with(
    flags: u32,
    error_code: u64,
    evidence: Evidence,
    shares_pages: bool,
) -> FaultKind {
    if evidence == Evidence::FULL {
        return classify(flags, error_code);
    }
    if flags & ff::INCOMPLETE != 0 {
        return FaultKind::Other;
    }
    let present = error_code & PF_PRESENT != 0;
    let write_protect = error_code & (PF_PRESENT | PF_WRITE) == (PF_PRESENT | PF_WRITE);
    let anon_grew = evidence.rss_stat && flags & ff::ANON_RSS != 0;
    if evidence.rss_stat {
        if flags & ff::SWAP_ENTS != 0 {
            return FaultKind::SwapIn;
        }
    } else if flags & ff::MAJOR != 0 && !present {
        return FaultKind::SwapIn;
    }
    if write_protect {
        if anon_grew {
            return FaultKind::FirstTouch;
        }
        let copied = if evidence.page_alloc {
            flags & ff::ALLOC != 0
        } else {
            shares_pages
        };
        return if copied {
            FaultKind::CowCopy
        } else {
            FaultKind::WpReuse
        };
    }
    if anon_grew || (!evidence.rss_stat && !present && flags & ff::ALLOC != 0) {
        return FaultKind::FirstTouch;
    }
    FaultKind::Other
}

/// Classifies a fault from its kernel-side evidence `flags` and x86 `error_code`.
pub fn classify(flags: u32, error_code: u64) -> FaultKind {
    if flags & ff::INCOMPLETE != 0 {
        return FaultKind::Other;
    }
    if flags & ff::SWAP_ENTS != 0 {
        return FaultKind::SwapIn;
    }
    let write_protect = error_code & (PF_PRESENT | PF_WRITE) == (PF_PRESENT | PF_WRITE);
    let alloc = flags & ff::ALLOC != 0;
    let anon_grew = flags & ff::ANON_RSS != 0;
    match (write_protect, alloc, anon_grew) {
        (true, true, false) => FaultKind::CowCopy,
        (true, false, _) => FaultKind::WpReuse,
        (_, _, true) => FaultKind::FirstTouch,
        _ => FaultKind::Other,
    }
}

/// Whether the fault involved a huge (order >= 1) folio.
pub fn is_huge(flags: u32) -> bool {
    flags & ff::ALLOC_HUGE != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ_NP: u64 = 0x4; // user read, page not present
    const WRITE_NP: u64 = 0x6; // user write, page not present
    const WRITE_P: u64 = 0x7; // user write, page present (write-protect fault)

    #[test]
    fn fork_copy_on_write() {
        assert_eq!(classify(ff::ALLOC, WRITE_P), FaultKind::CowCopy);
        // kernel-mode copy_to_user into a shared page (error code without the user bit)
        assert_eq!(
            classify(ff::ALLOC | ff::KERNEL_MODE, 0x3),
            FaultKind::CowCopy
        );
    }

    #[test]
    fn reuse_after_child_exit() {
        assert_eq!(classify(0, WRITE_P), FaultKind::WpReuse);
        assert_eq!(classify(ff::MAJOR, WRITE_P), FaultKind::WpReuse);
    }

    #[test]
    fn zero_fill_and_zero_page_copy_are_first_touch() {
        assert_eq!(
            classify(ff::ALLOC | ff::ANON_RSS, WRITE_NP),
            FaultKind::FirstTouch
        );
        assert_eq!(
            classify(ff::ALLOC | ff::ANON_RSS, WRITE_P),
            FaultKind::FirstTouch
        );
        assert!(is_huge(ff::ALLOC | ff::ALLOC_HUGE | ff::ANON_RSS));
        assert!(!is_huge(ff::ALLOC | ff::ANON_RSS));
    }

    #[test]
    fn swap_in_wins_over_everything_but_incomplete() {
        // swap cache hit: no allocation at all
        assert_eq!(
            classify(ff::SWAP_ENTS | ff::ANON_RSS, READ_NP),
            FaultKind::SwapIn
        );
        // read from disk: readahead allocations, major
        let disk = ff::SWAP_ENTS | ff::ANON_RSS | ff::ALLOC | ff::MAJOR;
        assert_eq!(classify(disk, READ_NP), FaultKind::SwapIn);
        assert_eq!(classify(disk | ff::INCOMPLETE, READ_NP), FaultKind::Other);
    }

    #[test]
    fn reclaim_inside_a_fault_is_not_a_swap_in() {
        // The kernel side never sets SWAP_ENTS while reclaim runs; what is left is a
        // first touch that had to reclaim memory first.
        let flags = ff::ALLOC | ff::ANON_RSS | ff::RECLAIM;
        assert_eq!(classify(flags, WRITE_NP), FaultKind::FirstTouch);
    }

    const NO_ALLOC: Evidence = Evidence {
        page_alloc: false,
        rss_stat: true,
    };
    const NO_RSS: Evidence = Evidence {
        page_alloc: true,
        rss_stat: false,
    };

    #[test]
    fn full_evidence_is_the_exact_classification() {
        for flags in 0..(1 << 10) {
            for code in [READ_NP, WRITE_NP, WRITE_P, 0x3, 0x5] {
                for shares in [false, true] {
                    assert_eq!(
                        classify_with(flags, code, Evidence::FULL, shares),
                        classify(flags, code),
                        "flags {flags:#x} code {code:#x}"
                    );
                }
            }
        }
        assert!(Evidence::FULL.approximate_kinds().is_empty());
    }

    #[test]
    fn without_page_allocations_the_epoch_tells_copy_from_reuse() {
        assert_eq!(
            classify_with(0, WRITE_P, NO_ALLOC, true),
            FaultKind::CowCopy
        );
        assert_eq!(
            classify_with(0, WRITE_P, NO_ALLOC, false),
            FaultKind::WpReuse
        );
        // Anon RSS growth still means a zero-page copy, not a fork copy.
        assert_eq!(
            classify_with(ff::ANON_RSS, WRITE_P, NO_ALLOC, true),
            FaultKind::FirstTouch
        );
        // The counters still decide swap-ins and first touches exactly.
        assert_eq!(
            classify_with(ff::SWAP_ENTS, READ_NP, NO_ALLOC, true),
            FaultKind::SwapIn
        );
        assert_eq!(
            classify_with(ff::ANON_RSS, WRITE_NP, NO_ALLOC, false),
            FaultKind::FirstTouch
        );
        assert_eq!(
            NO_ALLOC.approximate_kinds(),
            [FaultKind::CowCopy, FaultKind::WpReuse]
        );
    }

    #[test]
    fn without_counters_major_faults_are_swap_ins() {
        let disk = ff::ALLOC | ff::MAJOR;
        assert_eq!(
            classify_with(disk, READ_NP, NO_RSS, false),
            FaultKind::SwapIn
        );
        // A swap-cache hit leaves no trace without the counters.
        assert_eq!(classify_with(0, READ_NP, NO_RSS, false), FaultKind::Other);
        assert_eq!(
            classify_with(ff::ALLOC, WRITE_NP, NO_RSS, false),
            FaultKind::FirstTouch
        );
        assert_eq!(
            classify_with(ff::ALLOC, WRITE_P, NO_RSS, true),
            FaultKind::CowCopy
        );
        assert_eq!(classify_with(0, WRITE_P, NO_RSS, true), FaultKind::WpReuse);
        assert_eq!(
            classify_with(disk | ff::INCOMPLETE, READ_NP, NO_RSS, false),
            FaultKind::Other
        );
        assert_eq!(
            NO_RSS.approximate_kinds(),
            [
                FaultKind::CowCopy,
                FaultKind::SwapIn,
                FaultKind::FirstTouch,
                FaultKind::Other
            ]
        );
    }

    #[test]
    fn file_and_zero_page_faults_are_other() {
        assert_eq!(classify(ff::FILE_RSS, READ_NP), FaultKind::Other);
        assert_eq!(classify(0, READ_NP), FaultKind::Other);
        // page cache miss: allocation, file RSS
        assert_eq!(
            classify(ff::ALLOC | ff::FILE_RSS, READ_NP),
            FaultKind::Other
        );
    }
}
