//! Writing records into the ring buffer.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use tracer_common::{Header, Wire, counter};

use crate::maps::{EVENTS, bump};

/// Whether the reader is woken for a record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Never from a fault: a wakeup is an irq_work inside the faulting thread's path.
    /// Userspace drains on a timer instead.
    No,
    /// Rare process lifecycle records, so a fork or exit is seen at once.
    Now,
}

/// Copies `record` into the ring buffer, counting it as lost when there is no room.
#[inline(always)]
pub fn output<T: Wire>(record: &T, wake: Wake) {
    let flags = match wake {
        Wake::No => BPF_RB_NO_WAKEUP,
        Wake::Now => BPF_RB_FORCE_WAKEUP,
    };
    if EVENTS.output::<T>(record, flags as u64).is_err() {
        bump(counter::LOST);
    }
}

/// `CLOCK_MONOTONIC` now, nanoseconds.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments and no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// The current process and thread ids, as one word (`tgid << 32 | tid`).
#[inline(always)]
pub fn pid_tgid() -> u64 {
    bpf_get_current_pid_tgid()
}

/// A header of `kind` for the current thread at `ts_ns`.
#[inline(always)]
pub fn header(kind: u32, pid_tgid: u64, ts_ns: u64, flags: u32) -> Header {
    Header {
        ts_ns,
        kind,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        flags,
    }
}
