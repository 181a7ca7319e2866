//! Types shared by the redis-memtrace eBPF programs (`tracer-ebpf`) and the loader (`tracer`).
//!
//! Everything here crosses the kernel/user boundary as raw bytes, so every struct is
//! `#[repr(C)]`, uses fixed-width fields with explicit padding, and has its size checked at
//! compile time. Changing a layout means changing both sides at once: they are built together.
#![no_std]

/// Names of the BPF maps, shared so the loader never guesses a string.
pub mod maps {
    /// Ring buffer carrying [`crate::Event`]s to userspace.
    pub const EVENTS: &str = "EVENTS";
    /// `tgid -> role` for every process being traced (target and fork children).
    pub const TRACED: &str = "TRACED";
    /// Per-CPU kernel-side counters, indexed by [`crate::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `tgid -> RedisLayout` for traced Redis servers (attribution on).
    pub const REDIS: &str = "REDIS";
}

/// Name of the global [`Config`] variable in the eBPF object.
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// Values of [`Event::kind`].
pub mod kind {
    /// A page fault of a traced process, emitted when it completes.
    pub const FAULT: u32 = 1;
    /// A traced process created a new process (not a thread).
    pub const FORK: u32 = 2;
    /// A `clone`/`clone3` syscall, or a libc `fork()` call
    /// ([`crate::fork_ret_flags::LIBC_CALL`]), of a traced process returned.
    pub const FORK_RET: u32 = 3;
    /// A thread of a traced process exited.
    pub const EXIT: u32 = 4;
    /// The MM_SWAPENTS counter (pages in swap) of a traced process changed.
    pub const SWAP_ENTS: u32 = 5;
    /// Reclaim wrote an anonymous page to swap from a traced process's context.
    pub const SWAP_WRITE: u32 = 6;
    /// What a Redis thread was doing when a fault began; a [`crate::ContextEvent`].
    pub const CONTEXT: u32 = 7;
}

/// Bits of [`Event::flags`] for [`kind::FAULT`]: what the kernel did while the fault ran.
pub mod fault_flags {
    /// A movable (user data) page was allocated during the fault.
    pub const ALLOC: u32 = 1 << 0;
    /// The allocation was a folio of order >= 1 (a huge or multi-size THP page).
    pub const ALLOC_HUGE: u32 = 1 << 1;
    /// The anonymous RSS counter (MM_ANONPAGES) changed: new anonymous memory was mapped.
    pub const ANON_RSS: u32 = 1 << 2;
    /// A file or shmem RSS counter changed.
    pub const FILE_RSS: u32 = 1 << 3;
    /// MM_SWAPENTS changed outside reclaim: a swap entry was turned back into a page.
    pub const SWAP_ENTS: u32 = 1 << 4;
    /// The fault completed as a major fault (I/O or a retry).
    pub const MAJOR: u32 = 1 << 5;
    /// The fault was taken in kernel mode on a user address (e.g. `copy_to_user`).
    pub const KERNEL_MODE: u32 = 1 << 6;
    /// A new fault began on the thread before this one completed (error or signal).
    pub const INCOMPLETE: u32 = 1 << 7;
    /// Direct or memcg reclaim ran inside the fault (its swap-outs are not swap-ins).
    pub const RECLAIM: u32 = 1 << 8;
    /// Internal: reclaim is running right now on the faulting thread.
    pub const IN_RECLAIM: u32 = 1 << 9;
}

/// Bits of [`Event::flags`] for [`kind::EXIT`].
pub mod exit_flags {
    /// The whole thread group is gone (the last thread exited).
    pub const GROUP_DEAD: u32 = 1 << 0;
}

/// Bits of [`Event::flags`] for [`kind::FORK_RET`].
pub mod fork_ret_flags {
    /// Measured around the libc `fork()` call (uprobe/uretprobe), not the syscall: the
    /// stall the caller sees, atfork handlers and scheduling delays included.
    pub const LIBC_CALL: u32 = 1 << 0;
}

/// Bits of [`Event::flags`] for [`kind::SWAP_ENTS`].
pub mod swap_flags {
    /// The change happened in the owning process's own context.
    pub const CURR: u32 = 1 << 0;
    /// The change happened during a fault of the owning thread, outside reclaim.
    pub const IN_FAULT: u32 = 1 << 1;
}

/// Values of the [`maps::TRACED`] map: why a process is traced.
pub mod role {
    /// The process the user asked to trace.
    pub const TARGET: u32 = 1;
    /// A process forked by a traced process.
    pub const CHILD: u32 = 2;
    /// Or-ed into the role of a Redis server whose layout is in [`crate::maps::REDIS`]:
    /// its faults carry a [`crate::ContextEvent`].
    pub const ATTRIBUTE: u32 = 0x100;
    /// The role without flag bits.
    pub const MASK: u32 = 0xff;
}

/// Values of [`ContextEvent::phase`]: what the faulting Redis thread was doing.
pub mod phase {
    /// Executing a command: `cmd`, `argc` and `key` are filled in.
    pub const COMMAND: u32 = 0;
    /// The main thread outside a command; the innermost Redis function recognised on its
    /// stack is `FIRST_RANGE + i` for the layout's range `i`.
    pub const FIRST_RANGE: u32 = 1;
    /// The main thread outside a command, in nothing recognised.
    pub const MAIN_OTHER: u32 = 100;
    /// A thread other than the main one; `cmd` holds the thread's name (`comm`).
    pub const THREAD: u32 = 101;
    /// The server's memory could not be read (e.g. the page holding `server` is not
    /// resident).
    pub const UNREADABLE: u32 = 102;
}

/// Bits of [`ContextEvent::flags`].
pub mod context_flags {
    /// The key argument is an integer-encoded object: `key_len` holds the value.
    pub const KEY_INT: u32 = 1 << 0;
    /// The command has a key argument (`argc > 1`) and it was read.
    pub const HAS_KEY: u32 = 1 << 1;
    /// The user stack could not be read for phase detection.
    pub const NO_STACK: u32 = 1 << 2;
}

/// Longest key prefix the kernel copies (userspace may keep less).
pub const KEY_CAP: usize = 256;
/// Longest command or thread name the kernel copies.
pub const NAME_CAP: usize = 32;
/// Phase ranges a [`RedisLayout`] can carry. The stack scan compares every word with
/// every range: 10 ranges already exceed the verifier's complexity limit.
pub const PHASE_RANGES: usize = 8;
/// Stack words scanned for return addresses when the main thread is outside a command.
pub const STACK_WORDS: usize = 192;

/// Where a running Redis server keeps what attribution needs, in its own address space:
/// the address of the global `server` and the offsets of a few fields of Redis's
/// `struct redisServer`, `client` and `redisCommand`. Derived by the loader from the
/// binary's symbols and verified against the live process before use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisLayout {
    /// Run-time address of `server`.
    pub server_addr: u64,
    /// `server.current_client` (client executing a command, or NULL).
    pub off_current_client: u32,
    /// `server.stat_numcommands` (changes between commands: dedups context events).
    pub off_stat_numcommands: u32,
    /// `client.argc`.
    pub off_client_argc: u32,
    /// `client.argv`.
    pub off_client_argv: u32,
    /// `client.cmd`.
    pub off_client_cmd: u32,
    /// `redisCommand` name pointer (`declared_name` in 7.x, `name` in 6.x).
    pub off_cmd_name: u32,
    /// Key bytes to copy (at most [`KEY_CAP`]).
    pub key_max: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Start addresses of the functions that name a phase (0 = unused).
    pub range_lo: [u64; PHASE_RANGES],
    /// End addresses (exclusive).
    pub range_hi: [u64; PHASE_RANGES],
}
const _: () = assert!(core::mem::size_of::<RedisLayout>() == 168);

/// What a Redis thread was doing when one of its faults began. Emitted at fault entry
/// only when it differs from the thread's previous context, so a fault is attributed to
/// the latest context of its thread with `ts_ns` at or before the fault's own.
///
/// The first 20 bytes match [`Event`] (`ts_ns`, `kind`, `tgid`, `tid`), so a reader can
/// tell the two apart by `kind`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEvent {
    /// Monotonic timestamp: the entry of the fault that found this context.
    pub ts_ns: u64,
    /// Always [`kind::CONTEXT`].
    pub kind: u32,
    /// Process id.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// One of [`phase`].
    pub phase: u32,
    /// `server.current_client` (0 outside commands).
    pub client: u64,
    /// `server.stat_numcommands` at the fault.
    pub seq: u64,
    /// `client.argc`.
    pub argc: u32,
    /// [`context_flags`].
    pub flags: u32,
    /// Original key length in bytes (or the integer value with `KEY_INT`).
    pub key_len: u64,
    /// Bytes of `key` that are valid.
    pub key_captured: u32,
    /// Bytes of `name` that are valid.
    pub name_len: u32,
    /// Command name (lowercase as Redis declares it) or thread name.
    pub name: [u8; NAME_CAP],
    /// First key argument, truncated to `key_captured` bytes.
    pub key: [u8; KEY_CAP],
}
/// Size of [`ContextEvent`] on the wire.
pub const CONTEXT_SIZE: usize = 352;
const _: () = assert!(core::mem::size_of::<ContextEvent>() == CONTEXT_SIZE);

impl ContextEvent {
    /// Decodes a context event from ring-buffer bytes by copy; `None` when too short or
    /// not a context.
    pub fn from_bytes(bytes: &[u8]) -> Option<ContextEvent> {
        if bytes.len() < CONTEXT_SIZE {
            return None;
        }
        // SAFETY: length checked; plain old data of integers and byte arrays, no invalid
        // bit patterns; read_unaligned makes no alignment assumption.
        let ev = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<ContextEvent>()) };
        (ev.kind == kind::CONTEXT).then_some(ev)
    }

    /// An all-zero context (for tests and builders).
    pub const fn zeroed() -> ContextEvent {
        ContextEvent {
            ts_ns: 0,
            kind: kind::CONTEXT,
            tgid: 0,
            tid: 0,
            phase: 0,
            client: 0,
            seq: 0,
            argc: 0,
            flags: 0,
            key_len: 0,
            key_captured: 0,
            name_len: 0,
            name: [0; NAME_CAP],
            key: [0; KEY_CAP],
        }
    }
}

/// Indices into the [`maps::COUNTERS`] per-CPU array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const LOST: u32 = 0;
    /// Faults not tracked because the in-flight map was full.
    pub const INFLIGHT_FULL: u32 = 1;
    /// Anonymous pages written to swap system-wide (all processes).
    pub const SYS_SWAP_WRITES: u32 = 2;
    /// Fault completions with no matching fault entry (should stay 0).
    pub const UNMATCHED: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
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

/// One record in the ring buffer. Field meaning depends on [`Event::kind`]:
///
/// | kind | `addr` | `arg` | `duration_ns` |
/// |---|---|---|---|
/// | FAULT | faulting address | x86 error code | entry to completion |
/// | FORK | child pid | clone flags | 0 |
/// | FORK_RET | 0 | syscall return value (child pid or -errno) | syscall duration |
/// | EXIT | 0 | 0 | 0 |
/// | SWAP_ENTS | 0 | new MM_SWAPENTS value, bytes | 0 |
/// | SWAP_WRITE | page frame number | 0 | 0 |
///
/// `tgid`/`tid` are the process and thread the event belongs to (for SWAP_ENTS, the
/// owner of the memory, which may differ from the thread that changed it).
/// `ts_ns` is `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`); for FAULT and FORK_RET it is the
/// start of the fault or syscall.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Monotonic timestamp, nanoseconds.
    pub ts_ns: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Kind-specific flags ([`fault_flags`], [`exit_flags`], [`swap_flags`]).
    pub flags: u32,
    /// Kind-specific address (see the table).
    pub addr: u64,
    /// Kind-specific argument (see the table).
    pub arg: u64,
    /// Kind-specific duration (see the table).
    pub duration_ns: u64,
}

/// Size of [`Event`] on the wire.
pub const EVENT_SIZE: usize = 48;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);

impl Event {
    /// Decodes one event from ring-buffer bytes by copy (no alignment assumed).
    /// Returns `None` when `bytes` is shorter than [`EVENT_SIZE`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < EVENT_SIZE {
            return None;
        }
        // SAFETY: the length is checked above, `Event` is `repr(C)` plain old data with
        // no invalid bit patterns, and `read_unaligned` makes no alignment assumption.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
    }

    /// The raw bytes of this event, as the kernel writes them.
    pub fn as_bytes(&self) -> &[u8; EVENT_SIZE] {
        // SAFETY: `Event` is `repr(C)`, exactly EVENT_SIZE bytes with no padding (all
        // fields are naturally aligned and the size assertion above holds).
        unsafe { &*(self as *const Event).cast::<[u8; EVENT_SIZE]>() }
    }
}

/// State of a fault between its entry tracepoint and its completion, keyed by tid. One
/// slot per traced thread, reused fault after fault (updated in place: no map update or
/// delete on the hot path), removed when the thread exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    /// Entry timestamp.
    pub ts_ns: u64,
    /// Faulting address.
    pub addr: u64,
    /// x86 page-fault error code.
    pub error_code: u64,
    /// [`fault_flags`] gathered so far.
    pub flags: u32,
    /// 1 while a fault is in progress on the thread, 0 between faults.
    pub active: u32,
    /// Client of the last context emitted for this thread.
    pub ctx_client: u64,
    /// `stat_numcommands` of the last context emitted for this thread.
    pub ctx_seq: u64,
    /// Phase of the last context emitted, plus one (0: none emitted yet).
    pub ctx_phase: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Inflight>() == 56);

/// Marks a tracepoint field that this kernel does not have.
pub const FIELD_ABSENT: u32 = u32::MAX;

/// Byte offsets of tracepoint fields, read by the loader from tracefs `format` files and
/// written into the eBPF object's [`CONFIG_GLOBAL`] before load, so no kernel layout is
/// compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `sched:sched_process_fork` `child_pid`.
    pub fork_child_pid: u32,
    /// `task:task_newtask` `pid`.
    pub newtask_pid: u32,
    /// `task:task_newtask` `clone_flags`.
    pub newtask_clone_flags: u32,
    /// `sched:sched_process_exit` `group_dead`, or [`FIELD_ABSENT`] on older kernels.
    pub exit_group_dead: u32,
    /// `kmem:rss_stat` `mm_id`.
    pub rss_mm_id: u32,
    /// `kmem:rss_stat` `curr`.
    pub rss_curr: u32,
    /// `kmem:rss_stat` `member`.
    pub rss_member: u32,
    /// `kmem:rss_stat` `size`.
    pub rss_size: u32,
    /// `kmem:mm_page_alloc` `order`.
    pub alloc_order: u32,
    /// `kmem:mm_page_alloc` `gfp_flags`.
    pub alloc_gfp: u32,
    /// `vmscan:mm_vmscan_write_folio` `pfn`.
    pub write_folio_pfn: u32,
    /// `vmscan:mm_vmscan_write_folio` `reclaim_flags`.
    pub write_folio_flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 52);

impl Config {
    /// A configuration with every field absent (the value compiled into the object).
    pub const ABSENT: Config = Config {
        fork_child_pid: FIELD_ABSENT,
        newtask_pid: FIELD_ABSENT,
        newtask_clone_flags: FIELD_ABSENT,
        exit_group_dead: FIELD_ABSENT,
        rss_mm_id: FIELD_ABSENT,
        rss_curr: FIELD_ABSENT,
        rss_member: FIELD_ABSENT,
        rss_size: FIELD_ABSENT,
        alloc_order: FIELD_ABSENT,
        alloc_gfp: FIELD_ABSENT,
        write_folio_pfn: FIELD_ABSENT,
        write_folio_flags: FIELD_ABSENT,
        _pad: 0,
    };
}

/// `reclaim_flags` bit of `mm_vmscan_write_folio` meaning the folio is anonymous.
pub const RECLAIM_WB_ANON: u32 = 0x0001;

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are repr(C), fixed-size, with explicit padding and no pointers.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Inflight {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RedisLayout {}
}
