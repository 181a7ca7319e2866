//! Every map and global of the kernel side, in one place.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    CLIENT_SLOTS, CalibrationEvent, CalibrationTarget, ClientSlot, Config, MAX_SERVERS,
    PHASE_TABLE_WORDS, STACK_WORDS, ServerLayout, ThreadSlot, counter,
};

/// Tracepoint field offsets and sizes; overwritten by the loader before load (read-only,
/// so the verifier knows every value).
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::ABSENT;

/// Records to userspace. Sized by the loader (`--ring-buffer-mb`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Traced threads, direct-mapped by `tid & CONFIG.thread_mask`; resized by the loader.
#[map]
pub static THREADS: Array<ThreadSlot> = Array::with_max_entries(1, 0);

/// Traced threads whose direct slot holds another traced thread, by tid.
#[map]
pub static SPILL: HashMap<u32, ThreadSlot> = HashMap::with_max_entries(4096, 0);

/// `[0]`: 1 once anything was put in [`SPILL`].
#[map]
pub static SPILLED: Array<u64> = Array::with_max_entries(1, 0);

/// tgid -> role: the processes being traced (read on rare events only).
#[map]
pub static TRACED: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// tid -> start of an in-progress libc `fork()` call of a traced process.
#[map]
pub static FORK_CALLS: LruHashMap<u32, crate::fork_call::CallStart> =
    LruHashMap::with_max_entries(1024, 0);

/// rss_stat mm_id -> owning tgid, learnt from the owner's own events, so changes made
/// from other contexts (kswapd, process_madvise) can be attributed.
#[map]
pub static MM_OWNER: LruHashMap<u32, u32> = LruHashMap::with_max_entries(4096, 0);

/// Redis servers with attribution on, by the index in their threads' slots (0 unused).
#[map]
pub static SERVERS: Array<ServerLayout> = Array::with_max_entries(MAX_SERVERS, 0);

/// Phase range of each 8-byte cell of the traced binaries' code, 16 cells per word.
#[map]
pub static PHASE_TABLE: Array<u64> = Array::with_max_entries(PHASE_TABLE_WORDS, 0);

/// Live clients of traced Redis servers (open addressing from `client_home`).
#[map]
pub static CLIENTS: Array<ClientSlot> = Array::with_max_entries(CLIENT_SLOTS, 0);

/// tgid -> the client the calibration probe waits for.
#[map]
pub static CALIBRATE: HashMap<u32, CalibrationTarget> = HashMap::with_max_entries(64, 0);

/// Per-CPU scratch: user stack words scanned outside commands.
#[map]
pub static STACK: PerCpuArray<[u64; STACK_WORDS]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch: a calibration record under construction.
#[map]
pub static CALIBRATION: PerCpuArray<CalibrationEvent> = PerCpuArray::with_max_entries(1, 0);

/// Kernel-side counters (see `tracer_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Reads a field of [`CONFIG`].
#[inline(always)]
pub fn cfg(field: &u32) -> u32 {
    // SAFETY: reading our own global; volatile so the loader-written value is used
    // instead of the compile-time constant.
    unsafe { core::ptr::read_volatile(field) }
}

/// Adds one to counter `index`.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(ptr) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *ptr += 1 };
    }
}
