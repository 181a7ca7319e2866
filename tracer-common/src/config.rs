//! Load-time configuration of the eBPF programs: written by the loader into the object's
//! read-only `CONFIG` before load, so nothing kernel-specific is compiled in.

/// Name of the global [`Config`] variable in the eBPF object.
pub const CONFIG_GLOBAL: &str = "CONFIG";

/// Marks a tracepoint field that this kernel does not have.
pub const FIELD_ABSENT: u32 = u32::MAX;

/// Byte offsets of tracepoint fields (read from tracefs `format` files) and sizes chosen
/// by the loader.
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
    /// `vmscan:mm_vmscan_write_folio` `pfn`.
    pub write_folio_pfn: u32,
    /// `vmscan:mm_vmscan_write_folio` `reclaim_flags`.
    pub write_folio_flags: u32,
    /// Entries of the `THREADS` map minus one (a power of two minus one): a thread's slot
    /// is `tid & thread_mask`.
    pub thread_mask: u32,
    /// Byte offset of `task_struct.pagefault_disabled` (from the kernel's BTF), or
    /// [`FIELD_ABSENT`]: a fault taken with page faults disabled is a non-faulting read
    /// (another eBPF program's `bpf_probe_read_user`, perf's user-stack copy), never
    /// handled as a fault of the process, so it is not one.
    pub task_pagefault_disabled: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 48);

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
        write_folio_pfn: FIELD_ABSENT,
        write_folio_flags: FIELD_ABSENT,
        thread_mask: 0,
        task_pagefault_disabled: FIELD_ABSENT,
    };
}
