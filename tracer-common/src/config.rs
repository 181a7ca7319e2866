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
    /// Where Redis attribution stops ([`cost_stage`]): [`cost_stage::FULL`] except when
    /// `bench-fork --stages` measures what each stage costs.
    pub cost_stage: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 52);

/// How far the fault entry's Redis attribution goes, for measuring each stage's cost
/// (`cargo xtask bench-fork --stages`). Every stage before [`FULL`] sends no context, so
/// its timelines have no attribution. The loader writes the stage into the read-only
/// `CONFIG`, so the verifier drops the code of the stages not run: the default costs
/// nothing.
pub mod cost_stage {
    /// Everything (the default).
    pub const FULL: u32 = 0;
    /// Stop once the fault is known to be a traced server's (no read of its memory).
    pub const SERVER: u32 = 1;
    /// Also read `server.current_client` and `server.stat_numcommands`.
    pub const CURRENT: u32 = 2;
    /// Outside a command, also copy the registers and stack and find the innermost
    /// phase range (inside one, as [`CURRENT`]).
    pub const STACK: u32 = 3;
    /// Outside a command, also search the stack and registers for the client being read.
    pub const CLIENT: u32 = 4;

    /// The stage's name on `record --cost-stage`.
    pub fn name(stage: u32) -> &'static str {
        match stage {
            FULL => "full",
            SERVER => "server",
            CURRENT => "current",
            STACK => "stack",
            CLIENT => "client",
            _ => "unknown",
        }
    }
}

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
        cost_stage: cost_stage::FULL,
    };
}
