//! Outside a command: which Redis function the main thread is in, and, while it reads or
//! parses client input, which client.
//!
//! The binaries have no frame pointers, so the user stack is scanned word by word for
//! return addresses; a word outside the executable's code is rejected with two
//! comparisons, so only real candidates are compared with the layout's ranges. The client
//! being read is in a callee-saved register of the parsing functions (measured on Redis
//! 7.0: `rbx` at every `createStringObject` call from `processMultibulkBuffer`) or, once
//! a callee has saved it, in a stack word below that function's return address.

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_task_pt_regs, generated};
use tracer_common::{
    ALLOCATOR_CELL, PHASE_CELL_BYTES, PHASE_CELLS_PER_WORD, STACK_WORDS, ServerLayout, ThreadSlot,
    context_flags as cf, cost_stage, fault_flags as ff, features, phase as ph,
};

use super::{Found, args, clients, emit};
use aya_ebpf::{macros::map, maps::PerCpuArray};

use crate::{
    maps::{PHASE_TABLE, STACK},
    verifier::{self, within},
};

/// Index of `sp` in x86-64 `struct pt_regs` (words).
const PT_REGS_SP: usize = 19;
/// Index of `orig_ax` (the system call number) in x86-64 `struct pt_regs`.
const PT_REGS_ORIG_AX: usize = 15;
/// Index of `ip` in x86-64 `struct pt_regs`.
const PT_REGS_IP: usize = 16;
/// Words of `struct pt_regs` read, up to `sp`.
const PT_REGS_WORDS: usize = PT_REGS_SP + 1;
/// `r15, r14, r13, r12, rbp, rbx`: the first six words of x86-64 `struct pt_regs`.
const CALLEE_SAVED: usize = 6;
/// No range found.
const NONE: u32 = u32::MAX;

/// Context of a main-thread fault while no command runs.
#[inline(always)]
pub fn outside_command(
    slot: &mut ThreadSlot,
    layout: &ServerLayout,
    id: u64,
    ts_ns: u64,
    seq: u64,
) {
    let user_mode = slot.flags & ff::KERNEL_MODE == 0;
    let mut flags = if user_mode { 0 } else { cf::KERNEL_MODE };
    let tgid = (id >> 32) as u32;
    // One copy of the registers serves the stack scan, the client search and the system
    // call.
    let regs = read_regs();
    let (range, below) = match scan_stack(regs, layout) {
        Some(found) => {
            if user_mode
                && layout.features & features::ALLOCATOR != 0
                && let Some(r) = regs
                // The stack scan just filled the scratch.
                && in_allocator(layout, r[PT_REGS_IP], || STACK.get(0))
            {
                slot.flags |= ff::IN_ALLOCATOR;
            }
            found
        }
        None => {
            flags |= cf::NO_STACK;
            (NONE, 0)
        }
    };
    if super::stopped_at(cost_stage::STACK) {
        return;
    }
    let mut client = 0u64;
    if range != NONE
        && layout.features & features::CLIENT_SEARCH != 0
        && (layout.range_client_mask >> (range & 31)) & 1 != 0
    {
        flags |= cf::CLIENT_SEARCHED;
        // Read back from map memory: every way out of the search continues in one
        // verifier state (the `where` constants would multiply what follows).
        let found_at;
        (client, found_at) = match find_client(regs, below, tgid) {
            Some(()) => CLIENT_FOUND.get(0).map_or((0, 0), |f| (f[0], f[1] as u32)),
            None => (0, 0),
        };
        flags |= match found_at {
            0 => 0,
            1..=15 => cf::CLIENT_IN_REGS,
            _ => cf::CLIENT_ON_STACK,
        };
    }
    if super::stopped_at(cost_stage::CLIENT) {
        return;
    }
    let (phase, range) = if range != NONE {
        (ph::RANGE, range)
    } else if flags & cf::KERNEL_MODE != 0 {
        // The kernel touching user memory for a system call whose caller is deeper than
        // the stack window (Valkey 9 writes big replies with writev from a frame holding
        // a 16 KiB iovec array): the call says what it is.
        (ph::MAIN_OTHER, syscall_of(regs))
    } else {
        (ph::MAIN_OTHER, 0)
    };
    // The key of this context: phase and range, client, seq, and how far the client's
    // command is parsed (a new argument can bring the key; in Valkey 9, a new queued
    // command is a new one).
    let mut argc = 0;
    let mut queue = 0;
    let mut args = None;
    if client != 0 {
        queue = args::queue(client, layout);
        args = args::own(client, layout).and_then(|own| args::parsing(client, layout, queue, own));
        match args {
            // A command has at most a few million arguments: anything else is not a
            // client any more (freed, its memory reused), whatever the table said.
            Some(a) if (0..1 << 22).contains(&a.argc) => argc = a.argc as u32,
            _ => {
                client = 0;
                args = None;
                flags &= !(cf::CLIENT_IN_REGS | cf::CLIENT_ON_STACK);
            }
        }
    }
    let queued = queue & 0xff;
    let code = (phase << 8 | (range & 0xff)) + 1;
    let same = slot.ctx_phase == code
        && slot.ctx_client == client
        && slot.ctx_seq == seq
        && slot.ctx_argc == argc | queued << 24;
    slot.ctx_argc = argc | queued << 24;
    if same {
        return;
    }
    slot.ctx_phase = code;
    slot.ctx_client = client;
    slot.ctx_seq = seq;
    let found = Found {
        phase,
        range,
        client,
        seq,
        flags,
        args,
        queue: if client != 0 { queue } else { 0 },
    };
    emit(id, ts_ns, &found, layout);
}

/// The system call the thread is in, plus one (0: none, or not below 255).
#[inline(always)]
fn syscall_of(regs: Option<&[u64; PT_REGS_WORDS]>) -> u32 {
    let nr = regs.map_or(u64::MAX, |r| r[PT_REGS_ORIG_AX]);
    if nr < 255 { nr as u32 + 1 } else { 0 }
}

/// The client being read: `(client, where)`, `where` as reported in the context flags
/// (register `i` as `i + 1`, stack word `w` as `w + 16`, 0 not found).
///
/// The parsing function keeps its client in a callee-saved register; the function it
/// called saves that register right below the return address into the parser, so the
/// words just below that return address are searched first. Only then the registers at
/// the fault (which may still hold a client handled earlier in the same event-loop turn)
/// and the deeper words.
#[inline(always)]
fn find_client(regs: Option<&[u64; PT_REGS_WORDS]>, below: usize, tgid: u32) -> Option<()> {
    let words = STACK.get_ptr(0)?;
    let out = CLIENT_FOUND.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch filled by scan_stack in this program run.
    let words = unsafe { &*words };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let out = unsafe { &mut *out };
    *out = [0, 0];
    let mut k = 1;
    while k <= SAVE_AREA {
        // `k <= below` through a temporary (see `verifier`).
        if verifier::below(k as u64 - 1, below as u64) {
            let at = below.wrapping_sub(k) % STACK_WORDS;
            if clients::is_live(words[at], tgid) {
                *out = [words[at], at as u64 + 16];
                return Some(());
            }
        }
        k += 1;
    }
    let saved = regs.map_or([0; CALLEE_SAVED], |r| [r[0], r[1], r[2], r[3], r[4], r[5]]);
    let mut i = 0;
    while i < CALLEE_SAVED {
        if clients::is_live(saved[i], tgid) {
            *out = [saved[i], i as u64 + 1];
            return Some(());
        }
        i += 1;
    }
    let deeper = if verifier::below(SAVE_AREA as u64, below as u64) {
        below - SAVE_AREA
    } else {
        0
    };
    on_stack(deeper, tgid, words, out);
    Some(())
}

/// The current thread's saved user registers (`task_pt_regs`: at a user-mode fault, the
/// registers it faulted with; at a kernel-mode one, those of its system call). The
/// pointer is typed (BTF), so the verifier lets fields be loaded directly, each load
/// guarded against faults like a probe read, with no helper call.
#[inline(always)]
fn user_regs() -> *const [u64; PT_REGS_WORDS] {
    // SAFETY: helpers without preconditions; they return a valid, non-null pointer.
    unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) as *const [u64; PT_REGS_WORDS] }
}

/// The faulting thread's user registers that are used (the callee-saved ones, `orig_ax`,
/// `ip` and `sp`), copied once into per-CPU scratch at their `pt_regs` indices; the other
/// words of the scratch are stale.
#[inline(always)]
fn read_regs() -> Option<&'static [u64; PT_REGS_WORDS]> {
    let out = REGS.get_ptr_mut(0)?;
    // SAFETY: loads at constant offsets of the typed `pt_regs` pointer (the verifier
    // checks each against the struct and turns it into a guarded load) into our per-CPU
    // scratch, exclusively ours while the program runs.
    unsafe {
        let r = user_regs();
        let o = &mut *out;
        o[0] = (*r)[0];
        o[1] = (*r)[1];
        o[2] = (*r)[2];
        o[3] = (*r)[3];
        o[4] = (*r)[4];
        o[5] = (*r)[5];
        o[PT_REGS_ORIG_AX] = (*r)[PT_REGS_ORIG_AX];
        o[PT_REGS_IP] = (*r)[PT_REGS_IP];
        o[PT_REGS_SP] = (*r)[PT_REGS_SP];
        Some(&*out)
    }
}

/// Per-CPU scratch: the registers [`read_regs`] read.
#[map]
static REGS: PerCpuArray<[u64; PT_REGS_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Words a function's prologue pushes at most (the six callee-saved registers).
const SAVE_AREA: usize = 6;

/// The innermost stack word inside one of the layout's ranges: `(range, word index)`.
/// `None` when the stack could not be read.
///
/// Comparisons go through [`verifier::within`], so all iterations reach the loop head in
/// equivalent states.
#[inline(always)]
fn scan_stack(regs: Option<&[u64; PT_REGS_WORDS]>, layout: &ServerLayout) -> Option<(u32, usize)> {
    let words = read_stack(regs?[PT_REGS_SP], STACK_WORDS)?;
    let found = FOUND.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    unsafe { *found = [NONE, STACK_WORDS as u32] };
    let mut i = 0;
    while i < STACK_WORDS {
        let w = words[i];
        if within(w, layout.text_lo, layout.text_hi) {
            let nibble = cell_of(layout, w);
            if nibble != 0 && nibble != ALLOCATOR_CELL {
                // SAFETY: as above.
                unsafe { *found = [nibble as u32 - 1, i as u32] };
                break;
            }
        }
        i += 1;
    }
    // Read back from map memory, whose contents the verifier does not track: every
    // path of the scan continues in one state (with `(r, i)` as exact constants, the
    // code after it would be verified once per stack word and range).
    // SAFETY: as above.
    let [range, at] = unsafe { *found };
    Some((range, at as usize))
}

/// The phase-table cell of code address `w` (inside the executable's code): one table
/// load per address instead of a comparison per range.
#[inline(always)]
fn cell_of(layout: &ServerLayout, w: u64) -> u64 {
    let cell = w.wrapping_sub(layout.text_lo) / PHASE_CELL_BYTES;
    let word = u64::from(layout.phase_base) + cell / PHASE_CELLS_PER_WORD;
    let bits = PHASE_TABLE.get(word as u32).copied().unwrap_or(0);
    (bits >> ((cell % PHASE_CELLS_PER_WORD) * 4)) & 0xf
}

/// The innermost `n` (at most [`STACK_WORDS`]) words of the user stack at `sp`, copied
/// into per-CPU scratch ([`STACK`]; the words beyond `n` are stale). `None` when the
/// stack could not be read.
#[inline(always)]
fn read_stack(sp: u64, n: usize) -> Option<&'static [u64; STACK_WORDS]> {
    let words = STACK.get_ptr_mut(0)?;
    // SAFETY: bounded copy into our per-CPU scratch, exclusively ours while the program
    // runs; a short stack fails cleanly.
    let rc = unsafe {
        generated::bpf_probe_read_user(
            (*words).as_mut_ptr().cast(),
            (n.min(STACK_WORDS) * 8) as u32,
            sp as *const core::ffi::c_void,
        )
    };
    // SAFETY: as above.
    (rc == 0).then(|| unsafe { &*words })
}

/// Whether a user-mode fault at instruction `ip` is inside the C library's allocator on
/// behalf of the server: `ip` is in an allocator wrapper, or outside the executable with
/// a return address into a wrapper among the innermost [`ALLOCATOR_WINDOW`] words of
/// the user stack, which `stack` provides (only called in that second case). A `free`
/// reached through a tail call (`zfree` ends in `jmp free`) is not seen: the return
/// address is then the caller's. (Also decoding the call before the innermost code
/// address, to see those, cost about 200 ns more per server fault on Redis 6.2 in
/// `bench-fork`, and the exact-keys test's worst precision on the glibc builds was 0.9984
/// with it, 0.9980 without, one run each.)
#[inline(always)]
pub fn in_allocator(
    layout: &ServerLayout,
    ip: u64,
    stack: impl FnOnce() -> Option<&'static [u64; STACK_WORDS]>,
) -> bool {
    if within(ip, layout.text_lo, layout.text_hi) {
        return cell_of(layout, ip) == ALLOCATOR_CELL;
    }
    let Some(words) = stack() else {
        return false;
    };
    let mut i = 0;
    while i < ALLOCATOR_WINDOW {
        let w = words[i];
        if within(w, layout.text_lo, layout.text_hi) && cell_of(layout, w) == ALLOCATOR_CELL {
            return true;
        }
        i += 1;
    }
    false
}

/// Stack words looked at for a return address into the allocator wrappers: the
/// library's frames between the fault and that address take 17 to 21 words on Redis
/// 6.2 (`_int_malloc` under `malloc`). Not just the first code address: those frames
/// have slots that still hold return addresses of earlier, deeper calls (measured:
/// `setCommand+116` 3 words above the stack pointer in `_int_malloc`).
const ALLOCATOR_WINDOW: usize = 24;

/// [`in_allocator`] for a user-mode fault inside a command, from the saved user
/// registers; the stack is read (only its window) when the instruction is outside the
/// executable.
#[inline(always)]
pub fn in_allocator_at(layout: &ServerLayout) -> bool {
    let regs = user_regs();
    // SAFETY: loads at constant offsets of the typed `pt_regs` pointer (see `user_regs`).
    let (ip, sp) = unsafe { ((*regs)[PT_REGS_IP], (*regs)[PT_REGS_SP]) };
    in_allocator(layout, ip, || read_stack(sp, ALLOCATOR_WINDOW))
}

/// Per-CPU scratch: what [`scan_stack`] found, `[range, word index]`.
#[map]
static FOUND: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

/// A live client of `tgid` among the stack words below index `below` (the frames the
/// parsing function called, where they saved its registers), reported in
/// [`CLIENT_FOUND`] with its word index.
#[inline(always)]
fn on_stack(below: usize, tgid: u32, words: &[u64; STACK_WORDS], out: &mut [u64; 2]) {
    let mut i = 0;
    while i < STACK_WORDS {
        if verifier::below(i as u64, below as u64) && clients::is_live(words[i], tgid) {
            *out = [words[i], i as u64 + 16];
            return;
        }
        i += 1;
    }
}

/// Per-CPU scratch: the client found, and where (as in [`find_client`]).
#[map]
static CLIENT_FOUND: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);
