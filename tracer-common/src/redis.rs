//! What the kernel side knows about a traced Redis (or Valkey) server, and the records it
//! emits about one. Every offset here was discovered by the loader on the live process
//! (calibration) and verified before the kernel gets it; nothing is compiled in.

use crate::events::Header;

/// Longest key prefix the kernel copies (userspace may keep less).
pub const KEY_CAP: usize = 256;
/// Longest command or thread name the kernel copies.
pub const NAME_CAP: usize = 32;
/// Code ranges (functions) a [`ServerLayout`] can name as phases (a 4-bit cell holds the
/// index plus one; [`ALLOCATOR_CELL`] is taken).
pub const PHASE_RANGES: usize = 14;
/// The phase-table cell value of the server's allocator wrappers (`zmalloc`, `zfree`, ...,
/// the functions that call the C library's allocator): not a phase, but what tells a
/// fault taken inside `malloc`/`free` from one in the code that called it.
pub const ALLOCATOR_CELL: u64 = 0xf;
/// Stack words scanned for return addresses when the main thread is outside a command.
pub const STACK_WORDS: usize = 64;
/// Entries of the client table (a power of two).
pub const CLIENT_SLOTS: u32 = 1 << 16;
/// Slots probed from a client's home slot.
pub const CLIENT_PROBES: u32 = 8;
/// Redis servers traced with attribution at once.
pub const MAX_SERVERS: u32 = 64;
/// Bytes of code per cell of the phase table: function starts are at least 8-aligned, so
/// a cell belongs to one function.
pub const PHASE_CELL_BYTES: u64 = 8;
/// Cells per word of the phase table (4 bits each: the range index plus one, 0 for none,
/// so the zeroed table means "no phase").
pub const PHASE_CELLS_PER_WORD: u64 = 16;
/// Words of the phase table, for every traced binary together (covers 16 MiB of code).
pub const PHASE_TABLE_WORDS: u32 = 1 << 17;

/// Values of [`ContextEvent::phase`]: what the faulting Redis thread was doing.
pub mod phase {
    /// Executing a command: `client`, `argc`, `name` and `key` are filled in.
    pub const COMMAND: u32 = 0;
    /// The main thread outside a command, inside the function of range
    /// [`super::ContextEvent::range`]. For ranges that read or parse client input, `client`
    /// is the client found in the thread's registers or stack (0: not found), and `argc`,
    /// `name`, `key` are its arguments as parsed so far.
    pub const RANGE: u32 = 1;
    /// The main thread outside a command, in nothing recognised. For a fault the kernel
    /// takes inside a system call, [`super::ContextEvent::range`] is the call's number
    /// plus one (0: none known).
    pub const MAIN_OTHER: u32 = 100;
    /// A thread other than the main one; `name` holds its name (`comm`).
    pub const THREAD: u32 = 101;
    /// The server's memory could not be read (e.g. the page holding `server` is not
    /// resident).
    pub const UNREADABLE: u32 = 102;
}

/// Bits of [`Header::flags`] for [`crate::kind::CONTEXT`].
pub mod context_flags {
    // Bit 0 is unused: it marked integer-encoded keys, which are no longer read as keys
    // (arguments are always strings; see tracer-ebpf's `redis/args.rs`).
    /// The command has a key argument (`argc > 1`) and it was read.
    pub const HAS_KEY: u32 = 1 << 1;
    /// The user stack could not be read for phase detection.
    pub const NO_STACK: u32 = 1 << 2;
    /// The range reads client input: a client was searched for.
    pub const CLIENT_SEARCHED: u32 = 1 << 3;
    /// The client was found in a callee-saved register.
    pub const CLIENT_IN_REGS: u32 = 1 << 4;
    /// The client was found in a stack word.
    pub const CLIENT_ON_STACK: u32 = 1 << 5;
    /// The fault was taken in kernel mode (e.g. inside `read()`).
    pub const KERNEL_MODE: u32 = 1 << 6;
}

/// Bits of [`ServerLayout::features`].
pub mod features {
    /// Valkey 9 objects: a string value of up to 116 bytes is stored inline at +8 when bit
    /// 2 of byte 4 (`hasembval`) is set, instead of behind the pointer at +8.
    pub const INLINE_VALUES: u32 = 1 << 0;
    /// The client table is maintained (`linkClient`/`unlinkClient` probed): parse-stage
    /// faults look for their client.
    pub const CLIENT_SEARCH: u32 = 1 << 1;
    /// The allocator is the C library's (outside the executable): a user-mode fault
    /// whose instruction is outside the executable, under a frame of the allocator
    /// wrappers ([`super::ALLOCATOR_CELL`]), is marked `IN_ALLOCATOR`.
    pub const ALLOCATOR: u32 = 1 << 2;
}

/// Where a running Redis server keeps what attribution needs, in its own address space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerLayout {
    /// Run-time address of the global `server`.
    pub server_addr: u64,
    /// The executable's code: stack words outside it are not return addresses.
    pub text_lo: u64,
    /// End of the executable's code (exclusive).
    pub text_hi: u64,
    /// The server's process id (its main thread's id).
    pub tgid: u32,
    /// [`features`] bits.
    pub features: u32,
    /// `server.current_client`.
    pub off_current_client: u32,
    /// `server.stat_numcommands`.
    pub off_seq: u32,
    /// `client.argc`.
    pub off_argc: u32,
    /// `client.argv`.
    pub off_argv: u32,
    /// Key bytes to copy (at most [`KEY_CAP`]).
    pub key_max: u32,
    /// Ranges in use.
    pub range_count: u32,
    /// Bit `i` set: range `i` reads or parses client input (search for the client).
    pub range_client_mask: u32,
    /// First word of this binary's part of the phase table: the cell of a code address
    /// `a` is `(a - text_lo) / PHASE_CELL_BYTES`, in word `phase_base + cell / 16`,
    /// nibble `cell % 16`, which holds the range index plus one (0: none).
    pub phase_base: u32,
    /// `client.bulklen` (0: unknown).
    pub off_bulklen: u32,
    /// Valkey 9's queue of parsed commands: offset in the client of the queue's
    /// `{u16 len; u16 off}` (its array pointer is the word before); 0: no queue.
    pub off_queue: u32,
    /// Bytes per queued command (`sizeof(parsedCommand)`).
    pub queue_stride: u32,
    /// `argc` within a queued command.
    pub queue_argc: u16,
    /// `argv` within a queued command.
    pub queue_argv: u16,
}
const _: () = assert!(core::mem::size_of::<ServerLayout>() == 80);

/// One entry of the client table: a live client of a traced server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientSlot {
    /// The `client *` (0: empty).
    pub ptr: u64,
    /// The server's process.
    pub tgid: u32,
    /// [`client_slot_state`].
    pub state: u32,
}
const _: () = assert!(core::mem::size_of::<ClientSlot>() == 16);

/// Values of [`ClientSlot::state`].
pub mod client_slot_state {
    /// Never used: a lookup stops here.
    pub const EMPTY: u32 = 0;
    /// Holds a live client.
    pub const LIVE: u32 = 1;
    /// Held a client that was freed: a lookup goes on past it, an insert may reuse it.
    pub const FREED: u32 = 2;
}

/// Home slot of client `ptr` of process `tgid` in the client table.
#[inline(always)]
pub fn client_home(ptr: u64, tgid: u32) -> u32 {
    let mixed = (ptr >> 4) ^ ((tgid as u64) << 40);
    (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48) as u32 & (CLIENT_SLOTS - 1)
}

/// What a Redis thread was doing when one of its faults began. Emitted at fault entry
/// only when it differs from the thread's previous context, so a fault belongs to the
/// latest context of its thread with `ts_ns` at or before the fault's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextEvent {
    /// `ts_ns`: the entry of the fault that found this context; `flags`:
    /// [`context_flags`].
    pub header: Header,
    /// One of [`phase`].
    pub phase: u32,
    /// `client.argc` (as parsed so far outside a command).
    pub argc: u32,
    /// The client executing (`server.current_client`) or being read (0: none found).
    pub client: u64,
    /// `server.stat_numcommands` at the fault.
    pub seq: u64,
    /// Original key length in bytes.
    pub key_len: u64,
    /// Bytes of `key` that are valid.
    pub key_captured: u32,
    /// Bytes of `name` that are valid.
    pub name_len: u32,
    /// The layout's range index for [`phase::RANGE`].
    pub range: u32,
    /// With a client outside a command: the length of the argument Redis is reading
    /// (`client.bulklen`, at most `u32::MAX`); 0 between arguments.
    pub bulk_len: u32,
    /// With a client, on builds that queue parsed commands (Valkey 9): the queue's
    /// length (low 16 bits) and next index to run (high 16); 0 otherwise.
    pub queue: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Command name (`argv[0]` as sent) or thread name.
    pub name: [u8; NAME_CAP],
    /// First key argument, truncated to `key_captured` bytes.
    pub key: [u8; KEY_CAP],
}
/// Size of [`ContextEvent`] on the wire.
pub const CONTEXT_SIZE: usize = 368;

impl ContextEvent {
    /// An all-zero context (for tests and builders).
    pub const fn zeroed() -> ContextEvent {
        ContextEvent {
            header: Header {
                ts_ns: 0,
                kind: crate::events::kind::CONTEXT,
                tgid: 0,
                tid: 0,
                flags: 0,
            },
            phase: 0,
            argc: 0,
            client: 0,
            seq: 0,
            key_len: 0,
            key_captured: 0,
            name_len: 0,
            range: 0,
            bulk_len: 0,
            queue: 0,
            _pad: 0,
            name: [0; NAME_CAP],
            key: [0; KEY_CAP],
        }
    }
}

/// Bytes of `server` a calibration record carries (the largest known is 8,424).
pub const CALIBRATION_SERVER_CAP: usize = 16384;
/// Bytes of the client a calibration record carries.
pub const CALIBRATION_CLIENT_CAP: usize = 1024;

/// What Redis's `call()` saw when the calibration client's command ran: the client
/// pointer, a copy of `server` and of the client. The loader finds field offsets in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalibrationEvent {
    /// The server's main thread.
    pub header: Header,
    /// `call()`'s first argument.
    pub client: u64,
    /// Valid bytes of `server_bytes`.
    pub server_len: u32,
    /// Valid bytes of `client_bytes`.
    pub client_len: u32,
    /// `server`, from its start.
    pub server_bytes: [u8; CALIBRATION_SERVER_CAP],
    /// The client, from its start.
    pub client_bytes: [u8; CALIBRATION_CLIENT_CAP],
}
/// Size of [`CalibrationEvent`] on the wire.
pub const CALIBRATION_SIZE: usize = 24 + 16 + CALIBRATION_SERVER_CAP + CALIBRATION_CLIENT_CAP;

/// What the calibration probe waits for, per server process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CalibrationTarget {
    /// Run-time address of `server`.
    pub server_addr: u64,
    /// Bytes of `server` to copy.
    pub server_len: u32,
    /// Client id (`client.id`, offset 0 in every Redis and Valkey) to wait for.
    pub client_id_lo: u32,
    /// High half of the client id.
    pub client_id_hi: u32,
    /// Explicit padding.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CalibrationTarget>() == 24);

/// The phase table words of one binary, `(word offset, bits)` for the non-zero words:
/// `ranges[i]` (run-time addresses, end exclusive) marks its cells with `i + 1`, each
/// span of `allocator` with [`ALLOCATOR_CELL`].
pub fn phase_table_words<'a>(
    text_lo: u64,
    ranges: &'a [(u64, u64)],
    allocator: &'a [(u64, u64)],
) -> impl Iterator<Item = (u64, u64)> + 'a {
    let phases = ranges
        .iter()
        .take(PHASE_RANGES)
        .enumerate()
        .map(|(i, &span)| (span, i as u64 + 1));
    let wrappers = allocator.iter().map(|&span| (span, ALLOCATOR_CELL));
    phases.chain(wrappers).flat_map(move |((lo, hi), value)| {
        let first = lo.saturating_sub(text_lo) / PHASE_CELL_BYTES;
        let last = hi.saturating_sub(1).saturating_sub(text_lo) / PHASE_CELL_BYTES;
        (first..=last).filter(move |_| hi > lo).map(move |cell| {
            let word = cell / PHASE_CELLS_PER_WORD;
            let shift = (cell % PHASE_CELLS_PER_WORD) * 4;
            (word, (value & 0xf) << shift)
        })
    })
}
