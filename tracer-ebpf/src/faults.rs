//! A fault is seen three times on the faulting thread: at entry (`page_fault_user` /
//! `page_fault_kernel`), while the kernel resolves it (page allocations and RSS counter
//! changes: [`crate::evidence`]), and at completion (the minor/major page-fault software
//! perf events, which fire after `handle_mm_fault` returns). Entry opens the thread's
//! slot, the middle adds evidence bits, completion emits one [`FaultEvent`].

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::{perf_event, raw_tracepoint},
    programs::{PerfEventContext, RawTracePointContext},
};
use tracer_common::{FIELD_ABSENT, FaultEvent, ThreadSlot, counter, fault_flags as ff, kind};

use crate::{
    emit::{Wake, header, now_ns, output, pid_tgid},
    maps::{CONFIG, bump, cfg},
    threads::current_slot,
};

/// First address above user space on x86-64 (4- and 5-level paging both stay below).
const USER_TOP: u64 = 0x0100_0000_0000_0000;

// The hottest hooks (every fault on the machine) are raw tracepoints: no trace record is
// built and the arguments are read straight from the prototype
// `(unsigned long address, struct pt_regs *regs, unsigned long error_code)`, stable since
// the tracepoints were added (3.13).

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user(ctx: RawTracePointContext) -> i32 {
    // `regs` are the task's saved user registers here; Redis attribution reads them
    // through the typed `task_pt_regs` pointer instead (plain loads, no helper copy).
    fault_entry(ctx.arg::<u64>(0), ctx.arg::<u64>(2), 0);
    0
}

#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: RawTracePointContext) -> i32 {
    // `regs` are kernel registers here; the user ones are looked up only if needed.
    fault_entry(ctx.arg::<u64>(0), ctx.arg::<u64>(2), ff::KERNEL_MODE);
    0
}

#[inline(always)]
fn fault_entry(addr: u64, error_code: u64, mode: u32) {
    let id = pid_tgid();
    let Some(slot) = current_slot(id) else {
        return;
    };
    if addr >= USER_TOP {
        return; // a kernel address: not this process's memory
    }
    if mode != 0 && pagefaults_disabled() {
        // A non-faulting read (an eBPF program's, ours or another tracer's, perf's
        // user-stack copy): the kernel fixes it up without handling a fault, so there is
        // no completion, and the thread's fault in progress, if any, must stay open.
        return;
    }
    let ts_ns = now_ns();
    // SAFETY: the slot belongs to the current thread; no other thread writes it.
    unsafe {
        if (*slot).flags & ff::ACTIVE != 0 {
            // The previous fault never completed (error, or a retry that went back to
            // user space): report it rather than merge two faults.
            output(&fault_event(&*slot, id, ff::INCOMPLETE, 0), Wake::No);
        }
        (*slot).ts_ns = ts_ns;
        (*slot).addr = addr;
        (*slot).error_code = error_code as u16;
        (*slot).flags = mode | ff::ACTIVE;
        if (*slot).server != 0 {
            crate::redis::on_fault(slot, id, ts_ns);
        }
    }
}

/// Whether the current task runs with page faults disabled (`pagefault_disable()`),
/// from the offset the loader found in BTF; false when it is unknown.
#[inline(always)]
fn pagefaults_disabled() -> bool {
    let off = cfg(&CONFIG.task_pagefault_disabled);
    if off == FIELD_ABSENT {
        return false;
    }
    // SAFETY: a helper with no arguments; the task pointer is only read through
    // bpf_probe_read_kernel, which checks the access.
    let task = unsafe { bpf_get_current_task() };
    // SAFETY: bpf_probe_read_kernel reports a bad address instead of faulting.
    let depth = unsafe { bpf_probe_read_kernel((task + u64::from(off)) as *const i32) };
    // The helper itself copies inside pagefault_disable(), so it sees one more than the
    // faulting code had (1 at every ordinary fault, seen on 6.18): only 2 or more means
    // the fault came from a non-faulting read. On a kernel whose helper did not add one,
    // a read at depth 1 would be counted, as before this check.
    depth.is_ok_and(|n| n > 1)
}

#[inline(always)]
fn fault_event(slot: &ThreadSlot, id: u64, extra: u32, latency_ns: u64) -> FaultEvent {
    FaultEvent {
        header: header(
            kind::FAULT,
            id,
            slot.ts_ns,
            (slot.flags & !ff::INTERNAL) | extra,
        ),
        addr: slot.addr,
        error_code: slot.error_code as u64,
        latency_ns,
    }
}

#[perf_event]
pub fn fault_done_minor(_ctx: PerfEventContext) -> u32 {
    fault_done(0);
    0
}

#[perf_event]
pub fn fault_done_major(_ctx: PerfEventContext) -> u32 {
    fault_done(ff::MAJOR);
    0
}

#[inline(always)]
fn fault_done(extra: u32) {
    let id = pid_tgid();
    let Some(slot) = current_slot(id) else {
        return;
    };
    // SAFETY: the slot belongs to the current thread.
    unsafe {
        if (*slot).flags & ff::ACTIVE == 0 {
            bump(counter::UNMATCHED);
            return;
        }
        let event = fault_event(&*slot, id, extra, now_ns().saturating_sub((*slot).ts_ns));
        (*slot).flags = 0;
        output(&event, Wake::No);
    }
}

/// Adds evidence bits to the fault running on the current thread, if any; returns
/// whether one was running.
#[inline(always)]
pub fn mark(id: u64, bits: u32) -> bool {
    let Some(slot) = current_slot(id) else {
        return false;
    };
    // SAFETY: the slot belongs to the current thread.
    unsafe {
        if (*slot).flags & ff::ACTIVE == 0 {
            return false;
        }
        (*slot).flags |= bits;
    }
    true
}
