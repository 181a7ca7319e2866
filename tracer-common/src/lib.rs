//! Types shared by the redis-memtrace eBPF programs (`tracer-ebpf`) and the loader (`tracer`).
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every struct is
//! `#[repr(C)]`, uses fixed-width fields with explicit padding, and has its size checked at
//! compile time. Changing a layout means changing both sides at once: they are built together.
#![no_std]

pub mod config;
pub mod events;
pub mod redis;
pub mod threads;

pub use config::{CONFIG_GLOBAL, Config, FIELD_ABSENT, cost_stage};
pub use events::*;
pub use redis::{
    ALLOCATOR_CELL, CALIBRATION_CLIENT_CAP, CALIBRATION_SERVER_CAP, CLIENT_PROBES, CLIENT_SLOTS,
    CalibrationTarget, ClientSlot, KEY_CAP, MAX_SERVERS, NAME_CAP, PHASE_CELL_BYTES,
    PHASE_CELLS_PER_WORD, PHASE_RANGES, PHASE_TABLE_WORDS, STACK_WORDS, ServerLayout, client_home,
    client_slot_state, context_flags, features, phase, phase_table_words,
};
pub use threads::ThreadSlot;

/// Names of the BPF maps, shared so the loader never guesses a string.
pub mod maps {
    /// Ring buffer carrying events to userspace.
    pub const EVENTS: &str = "EVENTS";
    /// Per-thread state of traced threads, direct-mapped by thread id
    /// ([`crate::ThreadSlot`]).
    pub const THREADS: &str = "THREADS";
    /// Slots of traced threads whose direct slot belongs to another traced thread.
    pub const SPILL: &str = "SPILL";
    /// `[0]`: 1 once a thread was put in [`SPILL`] (0: never look there).
    pub const SPILLED: &str = "SPILLED";
    /// `tgid -> role` for every traced process (target and fork children).
    pub const TRACED: &str = "TRACED";
    /// Per-CPU kernel-side counters, indexed by [`crate::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Redis servers with attribution on, indexed by the server index in a thread's slot.
    pub const SERVERS: &str = "SERVERS";
    /// Live Redis clients (open addressing, [`crate::ClientSlot`]).
    pub const CLIENTS: &str = "CLIENTS";
    /// tgid -> client id the calibration probe on `call` waits for.
    pub const CALIBRATE: &str = "CALIBRATE";
    /// Which phase range each cell of the traced binaries' code belongs to.
    pub const PHASE_TABLE: &str = "PHASE_TABLE";
}

/// Indices into the [`maps::COUNTERS`] per-CPU array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Traced threads that got no slot (direct slot taken and spill map full).
    pub const THREADS_FULL: u32 = 1;
    /// Anonymous pages written to swap system-wide (all processes).
    pub const SYS_SWAP_WRITES: u32 = 2;
    /// Fault completions with no matching fault entry (should stay 0).
    pub const UNMATCHED: u32 = 3;
    /// Clients the client table had no room for (their parse faults stay unattributed).
    pub const CLIENTS_FULL: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
}

/// Values of the [`maps::TRACED`] map and of [`ThreadSlot::role`]: why a process is traced.
pub mod role {
    /// The process the user asked to trace.
    pub const TARGET: u32 = 1;
    /// A process forked by a traced process.
    pub const CHILD: u32 = 2;
    /// Or-ed into the role of a Redis server whose layout is in [`crate::maps::SERVERS`]:
    /// its main thread's faults carry a [`crate::ContextEvent`].
    pub const ATTRIBUTE: u32 = 0x100;
    /// The role without flag bits.
    pub const MASK: u32 = 0xff;
}

/// `__GFP_MOVABLE`: set on allocations of user data pages, never on page tables or slab.
pub const GFP_MOVABLE: u64 = 0x08;

/// `CLONE_THREAD`: the new task is a thread of the caller, not a new process.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// rss_stat `member` values (`enum NR_MM_COUNTERS` order, stable since 4.x).
pub mod rss_member {
    /// MM_FILEPAGES
    pub const FILE: u32 = 0;
    /// MM_ANONPAGES
    pub const ANON: u32 = 1;
    /// MM_SWAPENTS
    pub const SWAPENTS: u32 = 2;
    /// MM_SHMEMPAGES
    pub const SHMEM: u32 = 3;
}

/// `reclaim_flags` bit of `mm_vmscan_write_folio` meaning the folio is anonymous.
pub const RECLAIM_WB_ANON: u32 = 0x0001;

#[cfg(feature = "user")]
mod user {
    // SAFETY (all): repr(C), fixed-size, explicit padding, integers and byte arrays only.
    unsafe impl aya::Pod for super::ThreadSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServerLayout {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CalibrationTarget {}
}
