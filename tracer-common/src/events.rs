//! Ring-buffer records: one shared [`Header`], then a body per [`kind`].
//!
//! Each record type is `#[repr(C)]` with its size asserted; userspace decodes a record by
//! copying it out of the ring buffer after checking its length and kind ([`Wire`]).

/// Values of [`Header::kind`].
pub mod kind {
    /// A page fault of a traced process, emitted when it completes ([`super::FaultEvent`]).
    pub const FAULT: u32 = 1;
    /// A traced process created a new process, not a thread ([`super::ForkEvent`]).
    pub const FORK: u32 = 2;
    /// A libc `fork()` call of a traced process returned ([`super::ForkCallEvent`]).
    pub const FORK_CALL: u32 = 3;
    /// A thread of a traced process exited ([`super::ExitEvent`]).
    pub const EXIT: u32 = 4;
    /// The MM_SWAPENTS counter of a traced process changed ([`super::SwapLevelEvent`]).
    pub const SWAP_LEVEL: u32 = 5;
    /// Reclaim wrote an anonymous page to swap on a traced thread ([`super::SwapWriteEvent`]).
    pub const SWAP_WRITE: u32 = 6;
    /// What a Redis thread was doing when a fault began ([`crate::ContextEvent`]).
    pub const CONTEXT: u32 = 7;
    /// What Redis's `call()` saw for the calibration client ([`crate::CalibrationEvent`]).
    pub const CALIBRATION: u32 = 8;
    /// A Redis client left `server.clients` ([`super::ClientGoneEvent`]).
    pub const CLIENT_GONE: u32 = 9;
}

/// Bits of [`Header::flags`] for [`kind::FAULT`]: what the kernel did while the fault ran.
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
    /// A Redis server's fault taken inside its C library allocator (`malloc`, `free`,
    /// ...) under a call from the server's allocator wrappers: the allocator's own
    /// bookkeeping, or the block it was handing out.
    pub const IN_ALLOCATOR: u32 = 1 << 10;
    /// Internal: a fault is in progress on the thread.
    pub const ACTIVE: u32 = 1 << 31;
    /// Bits that never leave the kernel.
    pub const INTERNAL: u32 = IN_RECLAIM | ACTIVE;
}

/// Bits of [`Header::flags`] for [`kind::EXIT`].
pub mod exit_flags {
    /// The whole thread group is gone (the last thread exited).
    pub const GROUP_DEAD: u32 = 1 << 0;
}

/// Bits of [`Header::flags`] for [`kind::SWAP_LEVEL`].
pub mod swap_flags {
    /// The change happened in the owning process's own context.
    pub const CURR: u32 = 1 << 0;
    /// The change happened during a fault of the owning thread, outside reclaim.
    pub const IN_FAULT: u32 = 1 << 1;
}

/// The part every record starts with.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`): when the fault, call or change
    /// began (see each kind).
    pub ts_ns: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (thread group id); for [`kind::SWAP_LEVEL`], the memory's owner.
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Kind-specific bits.
    pub flags: u32,
}
/// Size of [`Header`].
pub const HEADER_SIZE: usize = 24;
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);

/// A record type: its kind and its decoding from ring-buffer bytes.
pub trait Wire: Copy {
    /// The [`Header::kind`] of this type.
    const KIND: u32;
    /// Size on the wire.
    const SIZE: usize;

    /// Decodes by copy (no alignment assumed); `None` when too short or another kind.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE || bytes.len() < HEADER_SIZE {
            return None;
        }
        // SAFETY: the length is checked above; every Wire type is repr(C) plain old data
        // (integers and byte arrays) with no invalid bit patterns; read_unaligned makes no
        // alignment assumption.
        let value = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) };
        // SAFETY: as above; every Wire type starts with a Header.
        let header = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Header>()) };
        (header.kind == Self::KIND).then_some(value)
    }

    /// The record's bytes, as the kernel writes them.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: a Wire type is repr(C) plain old data of exactly SIZE bytes without
        // implicit padding (asserted next to each type).
        unsafe { core::slice::from_raw_parts((self as *const Self).cast::<u8>(), Self::SIZE) }
    }
}

macro_rules! wire {
    ($ty:ident, $kind:expr, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
        impl Wire for $ty {
            const KIND: u32 = $kind;
            const SIZE: usize = $size;
        }
    };
}

/// A completed (or superseded) page fault. `header.ts_ns` is the fault's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultEvent {
    /// `flags`: [`fault_flags`].
    pub header: Header,
    /// Faulting address.
    pub addr: u64,
    /// x86 page-fault error code.
    pub error_code: u64,
    /// Entry to completion, nanoseconds (0 for an incomplete fault).
    pub latency_ns: u64,
}
wire!(FaultEvent, kind::FAULT, 48);

/// A traced process created a process. `header.ts_ns` is the fork tracepoint's time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkEvent {
    /// The forking process and thread.
    pub header: Header,
    /// The new process (as the kernel's root PID namespace sees it).
    pub child_pid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `clone` flags.
    pub clone_flags: u64,
}
wire!(ForkEvent, kind::FORK, 40);

/// Return addresses kept from the stack of a `fork()` call.
pub const FORK_FRAMES: usize = 8;

/// A libc `fork()` call of a traced process returned in the parent. `header.ts_ns` is the
/// call's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkCallEvent {
    /// The calling process and thread.
    pub header: Header,
    /// `fork()`'s return value (the child's pid in the caller's PID namespace, or -1).
    pub ret: i64,
    /// Entry to return, nanoseconds.
    pub duration_ns: u64,
    /// The innermost words of the caller's stack that point into its executable's code
    /// (Redis servers with attribution on): return addresses naming who forked.
    pub frames: [u64; FORK_FRAMES],
    /// Valid entries of `frames`.
    pub frame_count: u32,
    /// Explicit padding.
    pub _pad: u32,
}
wire!(ForkCallEvent, kind::FORK_CALL, 112);

/// A thread of a traced process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitEvent {
    /// `flags`: [`exit_flags`].
    pub header: Header,
}
wire!(ExitEvent, kind::EXIT, 24);

/// The pages in swap of a traced process changed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapLevelEvent {
    /// `tgid`: the memory's owner; `tid`: the thread that made the change; `flags`:
    /// [`swap_flags`].
    pub header: Header,
    /// New MM_SWAPENTS value, bytes.
    pub bytes: u64,
}
wire!(SwapLevelEvent, kind::SWAP_LEVEL, 32);

/// Reclaim wrote an anonymous page to swap on a traced thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapWriteEvent {
    /// The thread doing the reclaim.
    pub header: Header,
    /// Page frame number written.
    pub pfn: u64,
}
wire!(SwapWriteEvent, kind::SWAP_WRITE, 32);

/// A client of a traced Redis server was unlinked (disconnected or freed): faults still
/// waiting for its command never get one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientGoneEvent {
    /// The server's thread that unlinked it.
    pub header: Header,
    /// The `client *`.
    pub client: u64,
}
wire!(ClientGoneEvent, kind::CLIENT_GONE, 32);

pub use crate::redis::{CalibrationEvent, ContextEvent};
wire!(ContextEvent, kind::CONTEXT, crate::redis::CONTEXT_SIZE);
wire!(
    CalibrationEvent,
    kind::CALIBRATION,
    crate::redis::CALIBRATION_SIZE
);
