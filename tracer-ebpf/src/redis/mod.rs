//! Redis attribution: nothing runs per command. When a fault of a Redis server begins,
//! the faulting thread is the one doing the work, in Redis's own address space, so what it
//! is executing is read from the global `server` right then; a context event goes out only
//! when it differs from the thread's previous one.
//!
//! - [`args`]: a client's command name and first key, read from its `argv`.
//! - [`phase`]: outside a command, which Redis function the main thread is in (stack scan)
//!   and, while it reads client input, which client (registers and stack, checked against
//!   [`clients`]).
//! - [`clients`]: the live client table, kept by probes on `linkClient`/`unlinkClient`.
//! - [`calibrate`]: the one-off probe on `call()` the loader learns field offsets from.

pub mod args;
pub mod calibrate;
pub mod clients;
pub mod phase;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_probe_read_user},
};
use tracer_common::{
    ContextEvent, NAME_CAP, ServerLayout, ThreadSlot, cost_stage, counter, kind, phase as ph,
};

use crate::{
    emit::header,
    maps::{CONFIG, EVENTS, SERVERS, bump, cfg},
};

/// Reads a `T` at `addr` of the current process. Never faults: a bad or non-resident
/// address is `None`.
#[inline(always)]
pub fn read_user<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_user copies with page faults disabled and reports failure.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The context a fault of a Redis thread starts in. Called at every fault entry of a
/// thread whose slot names a server.
///
/// # Safety
/// `slot` is the current thread's own slot.
#[inline(always)]
pub unsafe fn on_fault(slot: *mut ThreadSlot, id: u64, ts_ns: u64) {
    // SAFETY: the caller's slot, read only here.
    let Some(layout) = SERVERS.get(u32::from(unsafe { (*slot).server })) else {
        return;
    };
    let tgid = (id >> 32) as u32;
    if layout.tgid != tgid {
        return; // attribution not (or no longer) on for this process
    }
    // SAFETY: as above.
    let slot = unsafe { &mut *slot };
    if id as u32 != tgid {
        // Not the main thread (bio, I/O threads, allocator): its name says what it is.
        if slot.ctx_phase != ph::THREAD + 1 {
            slot.ctx_phase = ph::THREAD + 1;
            emit(id, ts_ns, &Found::phase(ph::THREAD), layout);
        }
        return;
    }
    if stopped_at(cost_stage::SERVER) {
        return;
    }
    let (client, seq) = client_and_seq(layout);
    if stopped_at(cost_stage::CURRENT) {
        return;
    }
    match (client, seq) {
        (Some(c), Some(s)) if c != 0 => {
            if stopped_at(cost_stage::STACK) || stopped_at(cost_stage::CLIENT) {
                return; // stages of the way outside commands
            }
            if slot.flags & tracer_common::fault_flags::KERNEL_MODE == 0
                && layout.features & tracer_common::features::ALLOCATOR != 0
                && phase::in_allocator_at(layout)
            {
                slot.flags |= tracer_common::fault_flags::IN_ALLOCATOR;
            }
            // A new `argv` is a new command even with the same client and counter: EXEC
            // runs its first queued command before counting itself.
            let args = args::own(c, layout);
            let argv = args.map_or(0, |a| a.argv as u32);
            if slot.ctx_phase == ph::COMMAND + 1
                && slot.ctx_client == c
                && slot.ctx_seq == s
                && slot.ctx_argc == argv
            {
                return;
            }
            slot.ctx_phase = ph::COMMAND + 1;
            slot.ctx_client = c;
            slot.ctx_seq = s;
            slot.ctx_argc = argv;
            emit(
                id,
                ts_ns,
                &Found {
                    phase: ph::COMMAND,
                    client: c,
                    seq: s,
                    args,
                    queue: args::queue(c, layout),
                    ..Found::default()
                },
                layout,
            );
        }
        (Some(_), Some(s)) => phase::outside_command(slot, layout, id, ts_ns, s),
        _ => {
            if slot.ctx_phase != ph::UNREADABLE + 1 {
                slot.ctx_phase = ph::UNREADABLE + 1;
                emit(id, ts_ns, &Found::phase(ph::UNREADABLE), layout);
            }
        }
    }
}

/// Whether this run's attribution stops after `stage` ([`cost_stage`]; a constant to the
/// verifier, which drops the branch not taken).
#[inline(always)]
pub fn stopped_at(stage: u32) -> bool {
    cfg(&CONFIG.cost_stage) == stage
}

/// `server.current_client` and `server.stat_numcommands`. Two reads: one read spanning
/// both (472 bytes apart on 7.0) measured slower, as it pulls in cold cache lines.
#[inline(always)]
fn client_and_seq(layout: &ServerLayout) -> (Option<u64>, Option<u64>) {
    let server = layout.server_addr;
    (
        read_user::<u64>(server + u64::from(layout.off_current_client)),
        read_user::<u64>(server + u64::from(layout.off_seq)),
    )
}

/// What a fault's context was found to be.
#[derive(Clone, Copy, Default)]
pub struct Found {
    /// One of [`ph`].
    pub phase: u32,
    /// The layout's range index for [`ph::RANGE`].
    pub range: u32,
    /// The client executing or being read (0: none).
    pub client: u64,
    /// `server.stat_numcommands`.
    pub seq: u64,
    /// [`tracer_common::context_flags`].
    pub flags: u32,
    /// The client's command as parsed so far, already read.
    pub args: Option<args::Args>,
    /// The client's queue of parsed commands (see [`args::queue`]).
    pub queue: u32,
}

impl Found {
    /// A context without a client.
    #[inline(always)]
    pub fn phase(phase: u32) -> Found {
        Found {
            phase,
            ..Found::default()
        }
    }
}

/// Writes a context event straight into the ring buffer (it is too large for the stack),
/// with the name and key of the arguments the caller read.
#[inline(always)]
pub fn emit(id: u64, ts_ns: u64, found: &Found, layout: &ServerLayout) {
    let Some(mut entry) = EVENTS.reserve::<ContextEvent>(0) else {
        bump(counter::LOST);
        return;
    };
    // SAFETY: reserved ring-buffer memory of the right size. The fields before `name`
    // are zeroed here and set below; of `name` and `key` only the bytes `name_len` and
    // `key_captured` count are written, and userspace reads no others (the rest holds
    // older records of this ring, never zeroing 288 bytes per context).
    let ev = unsafe {
        let raw = entry.as_mut_ptr();
        core::ptr::write_bytes(
            raw.cast::<u8>(),
            0,
            core::mem::offset_of!(ContextEvent, name),
        );
        &mut *raw
    };
    ev.header = header(kind::CONTEXT, id, ts_ns, found.flags);
    ev.phase = found.phase;
    ev.range = found.range;
    ev.client = found.client;
    ev.seq = found.seq;
    if found.phase == ph::THREAD {
        if let Ok(comm) = bpf_get_current_comm() {
            let n = comm.len().min(NAME_CAP);
            ev.name[..n].copy_from_slice(&comm[..n]);
            ev.name_len = n as u32;
        }
    } else if found.client != 0 {
        ev.queue = found.queue;
        if let Some(a) = found.args {
            args::fill(ev, a, layout);
            if found.phase == ph::RANGE {
                // -1 between arguments; a big argument is read straight into its own
                // buffer.
                ev.bulk_len = a.bulk.clamp(0, u32::MAX as i64) as u32;
            }
        }
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}
