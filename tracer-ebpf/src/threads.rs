//! Finding, claiming and releasing a traced thread's slot.
//!
//! The direct-mapped array costs one inlined array load per hook. Two traced threads can
//! share a slot only when `pid_max` exceeds the array (the loader sizes it from
//! `pid_max`, up to 65,536 entries); the later one then lives in the spill hash, which is
//! only consulted once anything was put there.

use tracer_common::{ThreadSlot, counter};

use crate::maps::{CONFIG, SPILL, SPILLED, THREADS, bump, cfg};

/// Whether any thread was ever put in the spill hash during this run. A flag that only
/// goes from 0 to 1 needs no atomic update; once set, misses cost one more lookup.
#[inline(always)]
fn spilled() -> u64 {
    SPILLED.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn mark_spilled() {
    if let Some(p) = SPILLED.get_ptr_mut(0) {
        // SAFETY: a u64 map value; every writer stores the same 1.
        unsafe { *p = 1 };
    }
}

/// The slot of the current thread, when it is traced.
#[inline(always)]
pub fn current_slot(pid_tgid: u64) -> Option<*mut ThreadSlot> {
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    if let Some(slot) = THREADS.get_ptr_mut(tid & cfg(&CONFIG.thread_mask)) {
        // SAFETY: a map value; only read here.
        if unsafe { (*slot).tid == tid && (*slot).tgid == tgid } {
            return Some(slot);
        }
    }
    if spilled() == 0 {
        return None;
    }
    let slot = SPILL.get_ptr_mut(tid)?;
    // SAFETY: a map value; only read here.
    (unsafe { (*slot).tgid } == tgid).then_some(slot)
}

/// Starts tracing thread `tid` of process `tgid`. Called before the thread first runs
/// (from the creator's `task_newtask`).
#[inline(always)]
pub fn claim(tid: u32, tgid: u32, role: u32, server: u32) {
    let fresh = ThreadSlot {
        tid,
        tgid,
        role,
        server: server as u16,
        ..ThreadSlot::default()
    };
    if let Some(slot) = THREADS.get_ptr_mut(tid & cfg(&CONFIG.thread_mask)) {
        // SAFETY: a map value. Two creators racing for one free slot is not possible in
        // practice (tids are unique); the loser would only be untraced.
        unsafe {
            let owner = (*slot).tid;
            if owner == 0 || owner == tid {
                *slot = fresh;
                return;
            }
        }
    }
    if SPILL.insert(tid, fresh, 0).is_ok() {
        mark_spilled();
    } else {
        bump(counter::THREADS_FULL);
    }
}

/// Stops tracing thread `tid` (it exited).
#[inline(always)]
pub fn release(tid: u32) {
    if let Some(slot) = THREADS.get_ptr_mut(tid & cfg(&CONFIG.thread_mask)) {
        // SAFETY: a map value.
        unsafe {
            if (*slot).tid == tid {
                *slot = ThreadSlot::default();
                return;
            }
        }
    }
    if spilled() != 0 {
        let _ = SPILL.remove(tid);
    }
}
