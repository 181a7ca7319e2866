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
