//! RSS counter changes (evidence of the fault in progress, and the swap level of traced
//! processes) and swap writes by reclaim.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    FIELD_ABSENT, RECLAIM_WB_ANON, SwapLevelEvent, SwapWriteEvent, ThreadSlot, counter,
    fault_flags as ff, kind, rss_member, swap_flags,
};

use crate::{
    emit::{Wake, header, now_ns, output, pid_tgid},
    maps::{CONFIG, MM_OWNER, bump, cfg},
    threads::current_slot,
};

/// Bit of [`ThreadSlot::role`]: this thread already told `MM_OWNER` whose mm it is.
const MM_KNOWN: u32 = 1 << 31;

/// A field of the tracepoint record at a loader-given offset. `CONFIG` is frozen, so the
/// verifier sees a constant offset and allows a direct load from the context.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: the offset comes from this tracepoint's own format file; `read_at` uses
    // bpf_probe_read (a loader-given offset cannot be a load's immediate), so a wrong
    // offset yields garbage or an error, never a fault.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// Fires for every RSS counter change on the machine: one field read, then the thread's
/// slot; the other fields are read only for swap-entry changes, which are rare.
#[tracepoint]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let Some(member) = field::<u32>(&ctx, cfg(&CONFIG.rss_member)) else {
        return 0;
    };
    let id = pid_tgid();
    let slot = current_slot(id);
    let Some(slot) = slot else {
        if member == rss_member::SWAPENTS
            && field::<u32>(&ctx, cfg(&CONFIG.rss_curr)).unwrap_or(0) == 0
        {
            // Someone else's context (kswapd, process_madvise) changed an mm's swap
            // entries: a traced one's, if its owner is known.
            foreign_swap_change(&ctx, id);
        }
        return 0;
    };
    // SAFETY: the slot belongs to the current thread.
    let slot = unsafe { &mut *slot };
    // A traced thread inside its own fault changes its own mm's counters.
    let in_fault = slot.flags & ff::ACTIVE != 0 && slot.flags & ff::IN_RECLAIM == 0;
    if in_fault {
        slot.flags |= match member {
            rss_member::ANON => ff::ANON_RSS,
            rss_member::SWAPENTS => ff::SWAP_ENTS,
            _ => ff::FILE_RSS,
        };
    }
    if slot.role & MM_KNOWN == 0 || member == rss_member::SWAPENTS {
        if field::<u32>(&ctx, cfg(&CONFIG.rss_curr)).unwrap_or(0) == 0 {
            // A traced thread changing another process's counters (unmap, exit of a
            // child sharing nothing): not this process's swap level.
            return 0;
        }
        learn_owner(&ctx, slot);
    }
    if member == rss_member::SWAPENTS {
        let flags = if in_fault {
            swap_flags::CURR | swap_flags::IN_FAULT
        } else {
            swap_flags::CURR
        };
        emit_level(&ctx, id, slot.tgid, flags);
    }
    0
}

/// Records which process owns the mm, once per thread, so changes made to it from other
/// contexts (kswapd, process_madvise) can be attributed.
#[inline(always)]
fn learn_owner(ctx: &TracePointContext, slot: &mut ThreadSlot) {
    if slot.role & MM_KNOWN != 0 {
        return;
    }
    let mm_id = field::<u32>(ctx, cfg(&CONFIG.rss_mm_id)).unwrap_or(0);
    if MM_OWNER.insert(mm_id, slot.tgid, 0).is_ok() {
        slot.role |= MM_KNOWN;
    }
}

#[inline(always)]
fn foreign_swap_change(ctx: &TracePointContext, id: u64) {
    let mm_id = field::<u32>(ctx, cfg(&CONFIG.rss_mm_id)).unwrap_or(0);
    // SAFETY: value copied out immediately.
    let Some(owner) = (unsafe { MM_OWNER.get(mm_id) }).copied() else {
        return;
    };
    emit_level(ctx, id, owner, 0);
}

#[inline(always)]
fn emit_level(ctx: &TracePointContext, id: u64, owner: u32, flags: u32) {
    let size = field::<i64>(ctx, cfg(&CONFIG.rss_size)).unwrap_or(0);
    let mut h = header(kind::SWAP_LEVEL, id, now_ns(), flags);
    h.tgid = owner;
    output(
        &SwapLevelEvent {
            header: h,
            bytes: if size < 0 { 0 } else { size as u64 },
        },
        Wake::No,
    );
}

#[tracepoint]
pub fn mm_vmscan_write_folio(ctx: TracePointContext) -> u32 {
    let flags = field::<i32>(&ctx, cfg(&CONFIG.write_folio_flags)).unwrap_or(0) as u32;
    if flags & RECLAIM_WB_ANON == 0 {
        return 0;
    }
    bump(counter::SYS_SWAP_WRITES);
    let id = pid_tgid();
    if current_slot(id).is_some() {
        let pfn = field::<u64>(&ctx, cfg(&CONFIG.write_folio_pfn)).unwrap_or(0);
        output(
            &SwapWriteEvent {
                header: header(kind::SWAP_WRITE, id, now_ns(), 0),
                pfn,
            },
            Wake::No,
        );
    }
    0
}
