//! The one-off probe the loader learns a server's field offsets from: attached to `call()`
//! for a moment while the loader's own connection sends harmless commands (no writes), it
//! copies `server` and the client when the client is the loader's, so the loader can find
//! which fields hold that client and its arguments.

use aya_ebpf::{helpers::generated, macros::uprobe, programs::ProbeContext};
use tracer_common::{CALIBRATION_CLIENT_CAP, CALIBRATION_SERVER_CAP, kind};

use super::read_user;
use crate::{
    emit::{Wake, header, now_ns, output, pid_tgid},
    maps::{CALIBRATE, CALIBRATION},
};

/// `call(client *c, int flags)`.
#[uprobe]
pub fn calibrate_call(ctx: ProbeContext) -> u32 {
    let id = pid_tgid();
    // SAFETY: value copied out immediately.
    let Some(target) = (unsafe { CALIBRATE.get((id >> 32) as u32) }).copied() else {
        return 0;
    };
    let Some(client) = ctx.arg::<u64>(0) else {
        return 0;
    };
    let wanted = (target.client_id_hi as u64) << 32 | target.client_id_lo as u64;
    // `client.id` is the first field in every Redis and Valkey.
    if read_user::<u64>(client) != Some(wanted) {
        return 0;
    }
    let Some(ev) = CALIBRATION.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, exclusively ours while the program runs.
    let ev = unsafe { &mut *ev };
    ev.header = header(kind::CALIBRATION, id, now_ns(), 0);
    ev.client = client;
    let mut n = target.server_len;
    if n > CALIBRATION_SERVER_CAP as u32 {
        n = CALIBRATION_SERVER_CAP as u32;
    }
    // SAFETY: bounded copies into our own buffers; the helper never faults.
    ev.server_len = if unsafe {
        generated::bpf_probe_read_user(
            ev.server_bytes.as_mut_ptr().cast(),
            n,
            target.server_addr as *const core::ffi::c_void,
        )
    } == 0
    {
        n
    } else {
        0
    };
    // SAFETY: as above.
    ev.client_len = if unsafe {
        generated::bpf_probe_read_user(
            ev.client_bytes.as_mut_ptr().cast(),
            CALIBRATION_CLIENT_CAP as u32,
            client as *const core::ffi::c_void,
        )
    } == 0
    {
        CALIBRATION_CLIENT_CAP as u32
    } else {
        0
    };
    output(&*ev, Wake::Now);
    0
}
