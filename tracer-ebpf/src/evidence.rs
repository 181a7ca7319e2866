//! What the kernel does while a traced fault runs: page allocations, RSS counter changes
//! and reclaim, each turned into a bit of the fault in progress.

use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{GFP_MOVABLE, fault_flags as ff};

use crate::{emit::pid_tgid, faults::mark, threads::current_slot};

/// `mm_page_alloc(struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype)`:
/// fires for every page allocation on the machine, so the cheapest test comes first.
#[raw_tracepoint(tracepoint = "mm_page_alloc")]
pub fn mm_page_alloc(ctx: RawTracePointContext) -> i32 {
    let gfp = ctx.arg::<u64>(2) & 0xffff_ffff;
    // Page tables and slab are never movable; an interrupt's allocation is atomic.
    if gfp & GFP_MOVABLE == 0 {
        return 0;
    }
    let order = ctx.arg::<u64>(1) & 0xffff_ffff;
    let bits = if order > 0 {
        ff::ALLOC | ff::ALLOC_HUGE
    } else {
        ff::ALLOC
    };
    mark(pid_tgid(), bits);
    0
}

#[tracepoint]
pub fn reclaim_begin(_ctx: TracePointContext) -> u32 {
    mark(pid_tgid(), ff::RECLAIM | ff::IN_RECLAIM);
    0
}

#[tracepoint]
pub fn reclaim_end(_ctx: TracePointContext) -> u32 {
    if let Some(slot) = current_slot(pid_tgid()) {
        // SAFETY: the slot belongs to the current thread.
        unsafe { (*slot).flags &= !ff::IN_RECLAIM };
    }
    0
}
