//! Timing libc's `fork()` as the caller sees it (what Redis's `latest_fork_usec`
//! measures), and keeping the caller's return addresses, which name why it forked.

use aya_ebpf::{
    helpers::generated,
    macros::{map, uprobe, uretprobe},
    maps::PerCpuArray,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{FORK_FRAMES, ForkCallEvent, STACK_WORDS, kind};

use crate::{
    emit::{Wake, header, now_ns, output, pid_tgid},
    maps::{FORK_CALLS, SERVERS, STACK, TRACED},
    threads::current_slot,
};

/// A `fork()` call in progress.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CallStart {
    /// Entry time.
    pub ts_ns: u64,
    /// Return addresses into the executable, innermost first.
    pub frames: [u64; FORK_FRAMES],
    /// Valid entries of `frames`.
    pub count: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// Entry of libc `fork()`. Attached system-wide (by inode): other processes cost one
/// lookup, and fork is rare.
#[uprobe]
pub fn fork_call_enter(ctx: ProbeContext) -> u32 {
    let id = pid_tgid();
    // SAFETY: only tested for presence.
    if unsafe { TRACED.get((id >> 32) as u32) }.is_none() {
        return 0;
    }
    let Some(start) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let start = unsafe { &mut *start };
    start.ts_ns = now_ns();
    start.frames = [0; FORK_FRAMES];
    start.count = 0;
    caller_frames(&ctx, id);
    let _ = FORK_CALLS.insert(id as u32, *start, 0);
    0
}

/// Keeps the first words of the stack that point into a traced Redis server's code.
#[inline(always)]
fn caller_frames(ctx: &ProbeContext, id: u64) {
    let Some(slot) = current_slot(id) else {
        return;
    };
    // SAFETY: the current thread's slot, read only.
    let server = u32::from(unsafe { (*slot).server });
    let Some(layout) = SERVERS.get(server) else {
        return;
    };
    if server == 0 || layout.tgid != (id >> 32) as u32 {
        return;
    }
    // SAFETY: `regs` of a uprobe are the user registers saved at the probe.
    let sp = unsafe { (*ctx.regs).rsp };
    let Some(words) = STACK.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: bounded copy into our per-CPU scratch; an unreadable stack fails cleanly.
    let rc = unsafe {
        generated::bpf_probe_read_user(
            (*words).as_mut_ptr().cast(),
            (STACK_WORDS * 8) as u32,
            sp as *const core::ffi::c_void,
        )
    };
    if rc != 0 {
        return;
    }
    let mut at = server;
    // SAFETY: the callback is a BPF subprogram taking a pointer to `at`, which lives on
    // this stack for the whole call. A loop through bpf_loop: a plain one, which writes
    // frames at a varying index, exceeds the verifier's complexity limit.
    unsafe {
        generated::bpf_loop(
            STACK_WORDS as u32,
            keep_frame as *mut core::ffi::c_void,
            (&mut at as *mut u32).cast(),
            0,
        )
    };
}

#[inline(never)]
extern "C" fn keep_frame(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: caller_frames passes a pointer to the server index.
    let server = unsafe { *ctx.cast::<u32>() };
    let (Some(words), Some(start), Some(layout)) = (
        STACK.get_ptr(0),
        SCRATCH.get_ptr_mut(0),
        SERVERS.get(server),
    ) else {
        return 1;
    };
    let i = index as usize;
    if i >= STACK_WORDS {
        return 1;
    }
    // SAFETY: per-CPU scratch filled by caller_frames in this program run.
    let (w, start) = unsafe { ((*words)[i], &mut *start) };
    if w.wrapping_sub(layout.text_lo) >= layout.text_hi.wrapping_sub(layout.text_lo) {
        return 0;
    }
    let n = start.count as usize;
    if n >= FORK_FRAMES {
        return 1;
    }
    start.frames[n] = w;
    start.count += 1;
    0
}

/// Per-CPU scratch: the call being entered.
#[map]
static SCRATCH: PerCpuArray<CallStart> = PerCpuArray::with_max_entries(1, 0);

/// Return of libc `fork()`. The child returns through here too (another tid, no start
/// recorded): only the parent emits.
#[uretprobe]
pub fn fork_call_exit(ctx: RetProbeContext) -> u32 {
    let id = pid_tgid();
    let tid = id as u32;
    // SAFETY: value copied out immediately.
    let Some(start) = (unsafe { FORK_CALLS.get(tid) }).copied() else {
        return 0;
    };
    let _ = FORK_CALLS.remove(tid);
    let ret = ctx.ret::<i32>() as i64;
    output(
        &ForkCallEvent {
            header: header(kind::FORK_CALL, id, start.ts_ns, 0),
            ret,
            duration_ns: now_ns().saturating_sub(start.ts_ns),
            frames: start.frames,
            frame_count: start.count,
            _pad: 0,
        },
        Wake::No,
    );
    0
}
