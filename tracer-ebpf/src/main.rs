//! Kernel side of redis-memtrace.
//!
//! A fault is seen three times: at entry (`exceptions:page_fault_{user,kernel}`), while the
//! kernel resolves it (page allocations and RSS counter changes on the same thread), and at
//! completion (the minor/major-fault software perf events, which fire after
//! `handle_mm_fault` returns). Entry opens a per-thread record, the middle adds evidence
//! bits, completion emits one event. Userspace turns the bits into a classification.
//!
//! Only processes in `TRACED` (the target and its fork children) do any work beyond one
//! hash lookup. Nothing about the kernel's tracepoint layout is compiled in: field offsets
//! arrive in `CONFIG`, written by the loader from tracefs before load.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        bpf_task_pt_regs, generated,
    },
    macros::{map, perf_event, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{
        PerfEventContext, ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext,
    },
};
use tracer_common::{
    CLONE_THREAD, Config, ContextEvent, Event, FIELD_ABSENT, GFP_MOVABLE, Inflight, KEY_CAP,
    NAME_CAP, PHASE_RANGES, RECLAIM_WB_ANON, RedisLayout, STACK_WORDS, context_flags, counter,
    exit_flags, fault_flags as ff, fork_ret_flags, kind, phase, role, rss_member, swap_flags,
};

/// Tracepoint field offsets; overwritten by the loader before load.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::ABSENT;

/// Events to userspace. Sized by the loader (`--ring-buffer-mb`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// tgid -> role: the processes being traced.
#[map]
static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// tid -> fault in progress. At most one per thread.
#[map]
static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

/// child pid -> clone flags, from `task_newtask`, consumed by `sched_process_fork`.
#[map]
static CLONE_FLAGS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// tid -> start of an in-progress libc `fork()` call of a traced process.
#[map]
static FORK_CALL_START: LruHashMap<u32, u64> = LruHashMap::with_max_entries(1024, 0);

/// rss_stat mm_id -> owning tgid, learnt from the owner's own events, so changes made
/// from other contexts (kswapd, process_madvise) can be attributed.
#[map]
static MM_OWNER: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// tgid -> where the Redis server keeps what attribution reads.
#[map]
static REDIS: HashMap<u32, RedisLayout> = HashMap::with_max_entries(64, 0);

/// Per-CPU scratch for the user stack words scanned by phase detection.
#[map]
static STACK: PerCpuArray<[u64; STACK_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Kernel-side counters (see `tracer_common::counter`).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// First address above user space on x86-64 (4- and 5-level paging both stay below).
const USER_TOP: u64 = 0x0100_0000_0000_0000;

#[inline(always)]
fn cfg(field: &u32) -> u32 {
    // SAFETY: reading our own global; volatile so the loader-written value is used
    // instead of the compile-time constant.
    unsafe { core::ptr::read_volatile(field) }
}

#[inline(always)]
fn field<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: the offset comes from the tracepoint's own format file; read_at uses
    // bpf_probe_read, so a wrong offset yields garbage or an error, never a fault.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *ptr += 1 };
    }
}

#[inline(always)]
fn is_traced(tgid: u32) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { TRACED.get(tgid) }.is_some()
}

#[inline(always)]
fn emit(event: Event) {
    // Never wake the reader from a fault: a wakeup is an irq_work inside the faulting
    // thread's path. Userspace drains on a timer instead, which it slows down when idle;
    // the rare process lifecycle events wake it, so a fork is seen at once. Not the
    // fork() return: that wakeup would run in Redis between fork() and the ustime() that
    // ends its own `latest_fork_usec`, and the next timer drain is soon enough.
    let flags = match event.kind {
        kind::FORK | kind::EXIT => BPF_RB_FORCE_WAKEUP,
        _ => BPF_RB_NO_WAKEUP,
    };
    if EVENTS.output::<Event>(&event, flags as u64).is_err() {
        bump(counter::LOST);
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper with no arguments and no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

// The hottest hooks (every fault on the machine) are raw tracepoints: no trace record is
// built and the arguments are read straight from the prototype
// `(unsigned long address, struct pt_regs *regs, unsigned long error_code)`, which has
// been stable since the tracepoints were added (3.13).

#[raw_tracepoint(tracepoint = "page_fault_user")]
pub fn page_fault_user(ctx: RawTracePointContext) -> i32 {
    // For a user-mode fault `regs` are the user registers: the stack to scan.
    fault_entry(ctx.arg::<u64>(0), ctx.arg::<u64>(2), 0, ctx.arg::<u64>(1));
    0
}

#[raw_tracepoint(tracepoint = "page_fault_kernel")]
pub fn page_fault_kernel(ctx: RawTracePointContext) -> i32 {
    // `regs` are kernel registers here; the user ones are looked up only if needed.
    fault_entry(ctx.arg::<u64>(0), ctx.arg::<u64>(2), ff::KERNEL_MODE, 0);
    0
}

#[inline(always)]
fn fault_entry(addr: u64, error_code: u64, mode: u32, user_regs: u64) {
    let (tgid, tid) = current();
    // SAFETY: value copied out immediately.
    let Some(traced_as) = (unsafe { TRACED.get(tgid) }).copied() else {
        return;
    };
    if addr >= USER_TOP {
        return; // a kernel address: not this process's memory
    }
    let ts_ns = now_ns();
    let slot = match INFLIGHT.get_ptr_mut(tid) {
        Some(slot) => {
            // SAFETY: the slot belongs to this thread; no other thread uses this tid's key.
            unsafe {
                if (*slot).active != 0 {
                    // The previous fault never completed (error, or a retry that went
                    // back to user space): report it rather than merge two faults.
                    emit(fault_event(&*slot, tgid, tid, ff::INCOMPLETE, 0));
                }
                // Field by field: the context-dedup fields survive from fault to fault.
                (*slot).ts_ns = ts_ns;
                (*slot).addr = addr;
                (*slot).error_code = error_code;
                (*slot).flags = mode;
                (*slot).active = 1;
            }
            slot
        }
        None => {
            let fresh = Inflight {
                ts_ns,
                addr,
                error_code,
                flags: mode,
                active: 1,
                ctx_client: 0,
                ctx_seq: 0,
                ctx_phase: 0,
                _pad: 0,
            };
            if INFLIGHT.insert(tid, fresh, 0).is_err() {
                bump(counter::INFLIGHT_FULL);
                return;
            }
            match INFLIGHT.get_ptr_mut(tid) {
                Some(slot) => slot,
                None => return,
            }
        }
    };
    if traced_as & role::ATTRIBUTE != 0 {
        redis_context(tgid, tid, ts_ns, slot, user_regs);
    }
}

// ---------------------------------------------------------------------------------------
// Redis attribution
// ---------------------------------------------------------------------------------------
//
// Nothing runs per command: when a fault of the Redis server begins, the faulting thread
// is the one doing the work, in Redis's own address space, so what it is executing is read
// from the exported global `server` right then (`current_client`, its `cmd` and `argv`).
// A context event goes out only when it differs from the thread's previous one.

/// Offset of `sp` in x86-64 `struct pt_regs`.
const PT_REGS_SP: u64 = 19 * 8;

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user never faults: a bad or non-resident address is an error.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

#[inline(always)]
fn redis_context(tgid: u32, tid: u32, ts_ns: u64, slot: *mut Inflight, user_regs: u64) {
    // SAFETY: value used while the program runs; the map entry is only replaced by the
    // loader between runs of the same server.
    let Some(layout) = (unsafe { REDIS.get(tgid) }) else {
        return;
    };
    if tid != tgid {
        // Not the main thread (bio, io threads, allocator): its name says what it is.
        // SAFETY: slot owned by this thread.
        if unsafe { (*slot).ctx_phase } == phase::THREAD + 1 {
            return;
        }
        // SAFETY: as above.
        unsafe { (*slot).ctx_phase = phase::THREAD + 1 };
        emit_context(ts_ns, tgid, tid, phase::THREAD, 0, 0, 0, layout);
        return;
    }
    let client = read_user::<u64>(layout.server_addr + layout.off_current_client as u64);
    let seq = read_user::<u64>(layout.server_addr + layout.off_stat_numcommands as u64);
    let (ph, client, seq, flags) = match (client, seq) {
        (Some(0), Some(seq)) => {
            let (ph, flags) = main_thread_phase(layout, user_regs);
            (ph, 0, seq, flags)
        }
        (Some(c), Some(seq)) => (phase::COMMAND, c, seq, 0),
        _ => (phase::UNREADABLE, 0, 0, 0),
    };
    // SAFETY: slot owned by this thread.
    unsafe {
        if (*slot).ctx_phase == ph + 1 && (*slot).ctx_client == client && (*slot).ctx_seq == seq {
            return;
        }
        (*slot).ctx_phase = ph + 1;
        (*slot).ctx_client = client;
        (*slot).ctx_seq = seq;
    }
    emit_context(ts_ns, tgid, tid, ph, client, seq, flags, layout);
}

/// Which Redis function the main thread is in, outside any command: the innermost
/// return address on its user stack that falls in one of the layout's ranges. The
/// binary has no frame pointers, so the stack is scanned word by word.
#[inline(always)]
fn main_thread_phase(layout: &RedisLayout, user_regs: u64) -> (u32, u32) {
    let regs = if user_regs != 0 {
        user_regs
    } else {
        // SAFETY: helpers without preconditions; the result is only read through
        // bpf_probe_read_kernel.
        unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as u64 }
    };
    // SAFETY: probe read of a kernel pointer; failure is handled.
    let Ok(sp) = (unsafe { bpf_probe_read_kernel((regs + PT_REGS_SP) as *const u64) }) else {
        return (phase::MAIN_OTHER, context_flags::NO_STACK);
    };
    let Some(words) = STACK.get_ptr_mut(0) else {
        return (phase::MAIN_OTHER, context_flags::NO_STACK);
    };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let words = unsafe { &mut *words };
    // SAFETY: bounded copy into our own buffer; a short stack fails cleanly.
    let read = unsafe {
        generated::bpf_probe_read_user(
            words.as_mut_ptr().cast(),
            (STACK_WORDS * 8) as u32,
            sp as *const core::ffi::c_void,
        )
    };
    if read != 0 {
        return (phase::MAIN_OTHER, context_flags::NO_STACK);
    }
    let mut i = 0;
    while i < STACK_WORDS {
        let w = words[i];
        let mut r = 0;
        while r < PHASE_RANGES {
            if w >= layout.range_lo[r] && w < layout.range_hi[r] {
                return (phase::FIRST_RANGE + r as u32, 0);
            }
            r += 1;
        }
        i += 1;
    }
    (phase::MAIN_OTHER, 0)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn emit_context(
    ts_ns: u64,
    tgid: u32,
    tid: u32,
    ph: u32,
    client: u64,
    seq: u64,
    flags: u32,
    layout: &RedisLayout,
) {
    let Some(mut entry) = EVENTS.reserve::<ContextEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    // SAFETY: reserved ring-buffer memory of the right size; initialised completely
    // here before any field is read or the event is submitted.
    let ev = unsafe {
        let raw = entry.as_mut_ptr();
        core::ptr::write_bytes(raw, 0, 1);
        &mut *raw
    };
    ev.ts_ns = ts_ns;
    ev.kind = kind::CONTEXT;
    ev.tgid = tgid;
    ev.tid = tid;
    ev.phase = ph;
    ev.client = client;
    ev.seq = seq;
    ev.flags = flags;
    if ph == phase::THREAD {
        if let Ok(comm) = bpf_get_current_comm() {
            let n = comm.len().min(NAME_CAP);
            ev.name[..n].copy_from_slice(&comm[..n]);
            ev.name_len = n as u32;
        }
    } else if ph == phase::COMMAND {
        command_details(ev, client, layout);
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

/// Fills in the command name and first key of the client executing a command.
///
/// The name is the command's first argument, as the client sent it: a subcommand's
/// `redisCommand` (Redis 7: `CONFIG SET`) is named `set`, which would pass for the data
/// command. `cmd->declared_name` is the fallback when argv[0] cannot be read.
#[inline(always)]
fn command_details(ev: &mut ContextEvent, client: u64, layout: &RedisLayout) {
    let argc = read_user::<i32>(client + layout.off_client_argc as u64).unwrap_or(0);
    ev.argc = argc.max(0) as u32;
    let argv = if argc >= 1 {
        read_user::<u64>(client + layout.off_client_argv as u64)
    } else {
        None
    };
    if let Some(argv) = argv
        && let Some(obj) = read_user::<u64>(argv)
        && let Some(ptr) = read_user::<u64>(obj + 8)
        && let Some(len) = sds_len(ptr)
    {
        let n = if len < NAME_CAP as u64 {
            len as u32
        } else {
            NAME_CAP as u32
        };
        // SAFETY: n is bounded by NAME_CAP, the size of the destination.
        let rc = unsafe {
            generated::bpf_probe_read_user(
                ev.name.as_mut_ptr().cast(),
                n,
                ptr as *const core::ffi::c_void,
            )
        };
        if rc == 0 {
            ev.name_len = n;
        }
    }
    if ev.name_len == 0
        && argc >= 1
        && let Some(cmd) = read_user::<u64>(client + layout.off_client_cmd as u64)
        && cmd != 0
        && let Some(name) = read_user::<u64>(cmd + layout.off_cmd_name as u64)
    {
        // SAFETY: bounded string copy into the event.
        if let Ok(n) = unsafe { bpf_probe_read_user_str_bytes(name as *const u8, &mut ev.name) }
            .map(|b| b.len())
        {
            ev.name_len = n as u32;
        }
    }
    let Some(argv) = argv else {
        return;
    };
    if argc < 2 {
        return;
    }
    // argv[1] is the first key of nearly every keyed command (userspace knows which
    // commands have none).
    let Some(obj) = read_user::<u64>(argv + 8) else {
        return;
    };
    // robj: `unsigned type:4, encoding:4, lru:24; int refcount; void *ptr;`
    let (Some(head), Some(ptr)) = (read_user::<u32>(obj), read_user::<u64>(obj + 8)) else {
        return;
    };
    let encoding = (head >> 4) & 0xf;
    const OBJ_ENCODING_RAW: u32 = 0;
    const OBJ_ENCODING_INT: u32 = 1;
    const OBJ_ENCODING_EMBSTR: u32 = 8;
    if encoding == OBJ_ENCODING_INT {
        ev.key_len = ptr;
        ev.flags |= context_flags::KEY_INT | context_flags::HAS_KEY;
        return;
    }
    if encoding != OBJ_ENCODING_RAW && encoding != OBJ_ENCODING_EMBSTR {
        return;
    }
    let Some(len) = sds_len(ptr) else {
        return;
    };
    ev.key_len = len;
    ev.flags |= context_flags::HAS_KEY;
    let max = (layout.key_max as u64).min(KEY_CAP as u64);
    let n = if len < max { len } else { max };
    let n = n as u32;
    if n == 0 || n > KEY_CAP as u32 {
        return;
    }
    // SAFETY: n is bounded by KEY_CAP, the size of the destination.
    let rc = unsafe {
        generated::bpf_probe_read_user(
            ev.key.as_mut_ptr().cast(),
            n,
            ptr as *const core::ffi::c_void,
        )
    };
    if rc == 0 {
        ev.key_captured = n;
    }
}

/// Length of an sds string from its header (the byte before the string holds the type).
#[inline(always)]
fn sds_len(s: u64) -> Option<u64> {
    let flags = read_user::<u8>(s - 1)?;
    match flags & 7 {
        0 => Some((flags >> 3) as u64),                // SDS_TYPE_5
        1 => read_user::<u8>(s - 3).map(|v| v as u64), // SDS_TYPE_8: len, alloc, flags
        2 => read_user::<u16>(s - 5).map(|v| v as u64),
        3 => read_user::<u32>(s - 9).map(|v| v as u64),
        4 => read_user::<u64>(s - 17),
        _ => None,
    }
}

/// The in-progress fault of thread `tid`, if any.
#[inline(always)]
fn active_fault(tid: u32) -> Option<*mut Inflight> {
    let slot = INFLIGHT.get_ptr_mut(tid)?;
    // SAFETY: the slot belongs to the current thread.
    (unsafe { (*slot).active } != 0).then_some(slot)
}

#[inline(always)]
fn fault_event(state: &Inflight, tgid: u32, tid: u32, extra: u32, duration_ns: u64) -> Event {
    Event {
        ts_ns: state.ts_ns,
        kind: kind::FAULT,
        tgid,
        tid,
        flags: (state.flags & !ff::IN_RECLAIM) | extra,
        addr: state.addr,
        arg: state.error_code,
        duration_ns,
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
    let (tgid, tid) = current();
    let Some(slot) = active_fault(tid) else {
        if is_traced(tgid) {
            bump(counter::UNMATCHED);
        }
        return;
    };
    // SAFETY: the slot belongs to this thread.
    let state = unsafe {
        (*slot).active = 0;
        *slot
    };
    emit(fault_event(
        &state,
        tgid,
        tid,
        extra,
        now_ns().saturating_sub(state.ts_ns),
    ));
}

/// Adds evidence bits to the fault running on the current thread, if any.
#[inline(always)]
fn mark_inflight(tid: u32, bits: u32) -> Option<u32> {
    let ptr = active_fault(tid)?;
    // SAFETY: entry owned by this thread.
    unsafe {
        let before = (*ptr).flags;
        (*ptr).flags = before | bits;
        Some(before)
    }
}

#[tracepoint]
pub fn mm_page_alloc(ctx: TracePointContext) -> u32 {
    let (_, tid) = current();
    // Cheap test first: this fires for every page allocation on the machine.
    if active_fault(tid).is_none() {
        return 0;
    }
    let gfp = field::<u64>(&ctx, cfg(&CONFIG.alloc_gfp)).unwrap_or(0);
    // Page tables and slab are never movable; an interrupt's allocation is atomic.
    if gfp & GFP_MOVABLE == 0 {
        return 0;
    }
    let order = field::<u32>(&ctx, cfg(&CONFIG.alloc_order)).unwrap_or(0);
    let bits = if order > 0 {
        ff::ALLOC | ff::ALLOC_HUGE
    } else {
        ff::ALLOC
    };
    let _ = mark_inflight(tid, bits);
    0
}

#[tracepoint]
pub fn rss_stat(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    let Some(member) = field::<u32>(&ctx, cfg(&CONFIG.rss_member)) else {
        return 0;
    };
    let curr = field::<u32>(&ctx, cfg(&CONFIG.rss_curr)).unwrap_or(0);
    let mm_id = field::<u32>(&ctx, cfg(&CONFIG.rss_mm_id)).unwrap_or(0);
    if curr == 0 {
        // Someone else's context changed an mm (kswapd, process_madvise, fork, exit):
        // only swap entries of a known traced mm matter.
        if member != rss_member::SWAPENTS {
            return 0;
        }
        // SAFETY: value copied out immediately.
        let Some(owner) = (unsafe { MM_OWNER.get(mm_id) }).copied() else {
            return 0;
        };
        let size = field::<i64>(&ctx, cfg(&CONFIG.rss_size)).unwrap_or(0);
        emit(swap_event(owner, tid, size, 0));
        return 0;
    }
    if !is_traced(tgid) {
        return 0;
    }
    // SAFETY: value compared immediately.
    if unsafe { MM_OWNER.get(mm_id) }.copied() != Some(tgid) {
        let _ = MM_OWNER.insert(mm_id, tgid, 0);
    }
    let in_fault_bit = match member {
        rss_member::ANON => ff::ANON_RSS,
        rss_member::SWAPENTS => ff::SWAP_ENTS,
        _ => ff::FILE_RSS,
    };
    // Reclaim inside a fault changes counters for pages it evicts; that is not evidence
    // about the fault itself.
    let mut in_fault = false;
    if let Some(ptr) = active_fault(tid) {
        // SAFETY: entry owned by this thread.
        unsafe {
            if (*ptr).flags & ff::IN_RECLAIM == 0 {
                (*ptr).flags |= in_fault_bit;
                in_fault = true;
            }
        }
    }
    if member == rss_member::SWAPENTS {
        let size = field::<i64>(&ctx, cfg(&CONFIG.rss_size)).unwrap_or(0);
        let flags = if in_fault {
            swap_flags::CURR | swap_flags::IN_FAULT
        } else {
            swap_flags::CURR
        };
        emit(swap_event(tgid, tid, size, flags));
    }
    0
}

#[inline(always)]
fn swap_event(owner: u32, tid: u32, size: i64, flags: u32) -> Event {
    Event {
        ts_ns: now_ns(),
        kind: kind::SWAP_ENTS,
        tgid: owner,
        tid,
        flags,
        addr: 0,
        arg: if size < 0 { 0 } else { size as u64 },
        duration_ns: 0,
    }
}

#[tracepoint]
pub fn reclaim_begin(_ctx: TracePointContext) -> u32 {
    let (_, tid) = current();
    let _ = mark_inflight(tid, ff::RECLAIM | ff::IN_RECLAIM);
    0
}

#[tracepoint]
pub fn reclaim_end(_ctx: TracePointContext) -> u32 {
    let (_, tid) = current();
    if let Some(ptr) = active_fault(tid) {
        // SAFETY: entry owned by this thread.
        unsafe { (*ptr).flags &= !ff::IN_RECLAIM };
    }
    0
}

#[tracepoint]
pub fn mm_vmscan_write_folio(ctx: TracePointContext) -> u32 {
    let flags = field::<i32>(&ctx, cfg(&CONFIG.write_folio_flags)).unwrap_or(0) as u32;
    if flags & RECLAIM_WB_ANON == 0 {
        return 0;
    }
    bump(counter::SYS_SWAP_WRITES);
    let (tgid, tid) = current();
    if is_traced(tgid) {
        let pfn = field::<u64>(&ctx, cfg(&CONFIG.write_folio_pfn)).unwrap_or(0);
        emit(Event {
            ts_ns: now_ns(),
            kind: kind::SWAP_WRITE,
            tgid,
            tid,
            flags: 0,
            addr: pfn,
            arg: 0,
            duration_ns: 0,
        });
    }
    0
}

// ---------------------------------------------------------------------------------------
// Process lifecycle
// ---------------------------------------------------------------------------------------

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let (tgid, _) = current();
    if !is_traced(tgid) {
        return 0;
    }
    let (Some(pid), Some(flags)) = (
        field::<u32>(&ctx, cfg(&CONFIG.newtask_pid)),
        field::<u64>(&ctx, cfg(&CONFIG.newtask_clone_flags)),
    ) else {
        return 0;
    };
    let _ = CLONE_FLAGS.insert(pid, flags, 0);
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    if !is_traced(tgid) {
        return 0;
    }
    let Some(child) = field::<u32>(&ctx, cfg(&CONFIG.fork_child_pid)) else {
        return 0;
    };
    // SAFETY: value copied out immediately.
    let flags = unsafe { CLONE_FLAGS.get(child) }.copied().unwrap_or(0);
    let _ = CLONE_FLAGS.remove(child);
    if flags & CLONE_THREAD != 0 {
        return 0; // a thread: already covered by its tgid
    }
    // Inserted before the child first runs (the tracepoint precedes wake_up_new_task),
    // so its first fault is seen.
    let _ = TRACED.insert(child, role::CHILD, 0);
    emit(Event {
        ts_ns: now_ns(),
        kind: kind::FORK,
        tgid,
        tid,
        flags: 0,
        addr: child as u64,
        arg: flags,
        duration_ns: 0,
    });
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = current();
    if !is_traced(tgid) {
        return 0;
    }
    let _ = INFLIGHT.remove(tid);
    let group_dead = match field::<u8>(&ctx, cfg(&CONFIG.exit_group_dead)) {
        Some(v) => v != 0,
        None => tid == tgid, // older kernels: the leader's exit stands for the process
    };
    if group_dead {
        let _ = TRACED.remove(tgid);
    }
    emit(Event {
        ts_ns: now_ns(),
        kind: kind::EXIT,
        tgid,
        tid,
        flags: if group_dead {
            exit_flags::GROUP_DEAD
        } else {
            0
        },
        addr: 0,
        arg: 0,
        duration_ns: 0,
    });
    0
}

/// Entry of libc `fork()`. Attached system-wide (by inode): other processes cost one
/// lookup, and fork is rare.
#[uprobe]
pub fn fork_call_enter(_ctx: ProbeContext) -> u32 {
    let (tgid, tid) = current();
    if is_traced(tgid) {
        let _ = FORK_CALL_START.insert(tid, now_ns(), 0);
    }
    0
}

/// Return of libc `fork()`. The child returns through here too (ret 0, another tid, no
/// start recorded): only the parent emits.
#[uretprobe]
pub fn fork_call_exit(ctx: RetProbeContext) -> u32 {
    let (tgid, tid) = current();
    // SAFETY: value copied out immediately.
    let Some(start) = (unsafe { FORK_CALL_START.get(tid) }).copied() else {
        return 0;
    };
    let _ = FORK_CALL_START.remove(tid);
    let ret: i64 = ctx.ret::<i32>() as i64;
    emit(Event {
        ts_ns: start,
        kind: kind::FORK_RET,
        tgid,
        tid,
        flags: fork_ret_flags::LIBC_CALL,
        addr: 0,
        arg: ret as u64,
        duration_ns: now_ns().saturating_sub(start),
    });
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
