//! Which processes and threads are traced: the target and everything it creates, from
//! creation to exit.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{CLONE_THREAD, ExitEvent, FIELD_ABSENT, ForkEvent, exit_flags, kind, role};

use crate::{
    emit::{Wake, header, now_ns, output, pid_tgid},
    maps::{CONFIG, TRACED, cfg},
    threads::{claim, current_slot, release},
};

#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    if offset == FIELD_ABSENT {
        return None;
    }
    // SAFETY: the offset comes from this tracepoint's own format file; `read_at` uses
    // bpf_probe_read (a loader-given offset cannot be a load's immediate), so a wrong
    // offset yields garbage or an error, never a fault.
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// `task_newtask` runs in the creator before the new task first runs, so its first fault
/// is seen. A new thread shares its creator's slot settings; a new process is a fork
/// child: traced, and reported.
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let id = pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: value copied out immediately.
    let Some(creator_role) = (unsafe { TRACED.get(tgid) }).copied() else {
        return 0;
    };
    let (Some(pid), Some(flags)) = (
        field::<u32>(&ctx, cfg(&CONFIG.newtask_pid)),
        field::<u64>(&ctx, cfg(&CONFIG.newtask_clone_flags)),
    ) else {
        return 0;
    };
    if flags & CLONE_THREAD != 0 {
        let server = current_slot(id).map_or(0, |s| {
            // SAFETY: the creator's own slot, read only.
            u32::from(unsafe { (*s).server })
        });
        claim(pid, tgid, creator_role, server);
        return 0;
    }
    let _ = TRACED.insert(pid, role::CHILD, 0);
    claim(pid, pid, role::CHILD, 0);
    output(
        &ForkEvent {
            header: header(kind::FORK, id, now_ns(), 0),
            child_pid: pid,
            _pad: 0,
            clone_flags: flags,
        },
        Wake::Now,
    );
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let id = pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    // A thread without a slot (the table was full) may still belong to a traced process.
    // SAFETY: only tested for presence.
    if current_slot(id).is_none() && unsafe { TRACED.get(tgid) }.is_none() {
        return 0;
    }
    release(tid);
    let group_dead = match field::<u8>(&ctx, cfg(&CONFIG.exit_group_dead)) {
        Some(v) => v != 0,
        None => tid == tgid, // older kernels: the leader's exit stands for the process
    };
    if group_dead {
        let _ = TRACED.remove(tgid);
    }
    let flags = if group_dead {
        exit_flags::GROUP_DEAD
    } else {
        0
    };
    output(
        &ExitEvent {
            header: header(kind::EXIT, id, now_ns(), flags),
        },
        Wake::Now,
    );
    0
}
