//! The live clients of traced Redis servers: an open-addressing table in an array map, so
//! a membership test is a few inlined array loads. Seeded by the loader from
//! `server.clients`, kept current by probes on `linkClient` (a new connection joins
//! `server.clients`) and `unlinkClient` (it leaves): once per connection, not per command.
//! `unlinkClient`, not `freeClient`, because Valkey 8 calls a private copy of `freeClient`.
//! The return of `createClient` too: builds that inline `linkClient` into it (the Redis
//! 7.4 and Valkey 8.1 builds here) never call the probed copy.

use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    CLIENT_PROBES, CLIENT_SLOTS, ClientGoneEvent, ClientSlot, client_home, client_slot_state as st,
    counter, kind,
};

use crate::{
    emit::{Wake, header, now_ns, output, pid_tgid},
    maps::{CLIENTS, bump},
    threads::current_slot,
};

/// Whether `ptr` is a live client of process `tgid`.
#[inline(always)]
pub fn is_live(ptr: u64, tgid: u32) -> bool {
    memtrace_is_live_client(ptr, u64::from(tgid)) != 0
}

/// [`is_live`] as a global BPF function: the verifier checks it once, on its own, and
/// sees each call as returning an unknown number. Inlined, its several exits (one per
/// probe) made every search that calls it in a loop branch into states that never merge.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn memtrace_is_live_client(ptr: u64, tgid: u64) -> u64 {
    let tgid = tgid as u32;
    // Clients are 8-byte aligned heap pointers: most words fail here.
    if ptr & 7 != 0 || !crate::verifier::within(ptr, 0x10000, 1 << 48) {
        return 0;
    }
    let home = client_home(ptr, tgid);
    let mut i = 0;
    while i < CLIENT_PROBES {
        let Some(s) = CLIENTS.get((home + i) & (CLIENT_SLOTS - 1)) else {
            return 0;
        };
        let differs = (s.ptr ^ ptr) | u64::from(s.tgid ^ tgid) | u64::from(s.state ^ st::LIVE);
        if differs == 0 {
            return 1;
        }
        if s.state == st::EMPTY {
            return 0;
        }
        i += 1;
    }
    0
}

/// `linkClient(client *c)`: a connection joined `server.clients`.
#[uprobe]
pub fn client_linked(ctx: ProbeContext) -> u32 {
    let id = pid_tgid();
    if current_slot(id).is_none() {
        return 0;
    }
    if let Some(c) = ctx.arg::<u64>(0) {
        insert(c, (id >> 32) as u32);
    }
    0
}

/// `createClient()` returned `c` (a connection's client, linked inside when `linkClient`
/// is inlined; or a fake client, never searched for, removed by `unlinkClient` as well).
#[uretprobe]
pub fn client_created(ctx: RetProbeContext) -> u32 {
    let id = pid_tgid();
    if current_slot(id).is_none() {
        return 0;
    }
    let c = ctx.ret::<u64>();
    if c != 0 {
        insert(c, (id >> 32) as u32);
    }
    0
}

/// `unlinkClient(client *c)`: a connection is leaving `server.clients`.
#[uprobe]
pub fn client_unlinked(ctx: ProbeContext) -> u32 {
    let id = pid_tgid();
    if current_slot(id).is_none() {
        return 0;
    }
    if let Some(c) = ctx.arg::<u64>(0) {
        remove(c, (id >> 32) as u32);
        output(
            &ClientGoneEvent {
                header: header(kind::CLIENT_GONE, id, now_ns(), 0),
                client: c,
            },
            Wake::No,
        );
    }
    0
}

#[inline(always)]
fn insert(ptr: u64, tgid: u32) {
    let home = client_home(ptr, tgid);
    let mut reuse = u32::MAX;
    let mut i = 0;
    while i < CLIENT_PROBES {
        let idx = (home + i) & (CLIENT_SLOTS - 1);
        let Some(s) = CLIENTS.get_ptr_mut(idx) else {
            return;
        };
        // SAFETY: a map value; clients are linked and unlinked on the server's main
        // thread, one at a time.
        let s = unsafe { &mut *s };
        match s.state {
            st::LIVE if s.ptr == ptr && s.tgid == tgid => return,
            st::EMPTY => {
                let at = if reuse != u32::MAX { reuse } else { idx };
                put(at, ptr, tgid);
                return;
            }
            st::FREED if reuse == u32::MAX => reuse = idx,
            _ => {}
        }
        i += 1;
    }
    if reuse != u32::MAX {
        put(reuse, ptr, tgid);
    } else {
        bump(counter::CLIENTS_FULL);
    }
}

#[inline(always)]
fn put(idx: u32, ptr: u64, tgid: u32) {
    if let Some(s) = CLIENTS.get_ptr_mut(idx) {
        // SAFETY: a map value (see `insert`).
        unsafe {
            *s = ClientSlot {
                ptr,
                tgid,
                state: st::LIVE,
            }
        };
    }
}

#[inline(always)]
fn remove(ptr: u64, tgid: u32) {
    let home = client_home(ptr, tgid);
    let mut i = 0;
    while i < CLIENT_PROBES {
        let Some(s) = CLIENTS.get_ptr_mut((home + i) & (CLIENT_SLOTS - 1)) else {
            return;
        };
        // SAFETY: a map value (see `insert`).
        let s = unsafe { &mut *s };
        if s.state == st::EMPTY {
            return;
        }
        if s.state == st::LIVE && s.ptr == ptr && s.tgid == tgid {
            s.state = st::FREED;
            return;
        }
        i += 1;
    }
}
