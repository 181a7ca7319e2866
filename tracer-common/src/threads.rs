//! Per-thread state kept by the kernel side for every traced thread.

/// State of one traced thread: who it is, the fault in progress, and the Redis context
/// last reported for it. Lives in a direct-mapped array (`THREADS[tid & mask]`, one array
/// load on every hook instead of a hash lookup), or in the spill hash when two traced
/// threads share a slot. `tid` and `tgid` are checked on every access.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSlot {
    /// Owner thread (0: free).
    pub tid: u32,
    /// Owner process.
    pub tgid: u32,
    /// [`crate::role`] bits of the process.
    pub role: u32,
    /// [`crate::fault_flags`] of the fault in progress, with [`crate::fault_flags::ACTIVE`].
    pub flags: u32,
    /// Entry time of the fault in progress.
    pub ts_ns: u64,
    /// Faulting address.
    pub addr: u64,
    /// x86 page-fault error code (its defined bits fit in 16).
    pub error_code: u16,
    /// Index of the Redis server in `SERVERS` (attribution on).
    pub server: u16,
    /// Redis context last reported: client.
    pub ctx_client: u64,
    /// Redis context last reported: `stat_numcommands`.
    pub ctx_seq: u64,
    /// Redis context last reported: phase plus one (0: none yet).
    pub ctx_phase: u32,
    /// Redis context last reported: outside a command, `argc` (low 24 bits) and queued
    /// commands (high 8); inside one, the low 32 bits of the client's `argv`.
    pub ctx_argc: u32,
}
const _: () = assert!(core::mem::size_of::<ThreadSlot>() == 64);
