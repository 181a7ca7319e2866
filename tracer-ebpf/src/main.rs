//! Kernel side of redis-memtrace.
//!
//! Only threads with a slot in `THREADS` (the target and its fork children) do any work
//! beyond one array load. Nothing about the kernel's tracepoint layout or Redis's struct
//! layout is compiled in: offsets arrive in `CONFIG` and `SERVERS`, written by the loader.
//!
//! - [`faults`]: fault entry and completion; [`evidence`]: what happens in between.
//! - [`swap`]: RSS counter changes and swap writes.
//! - [`lifecycle`]: which processes and threads are traced; [`threads`]: their slots.
//! - [`fork_call`]: timing `fork()` and who called it.
//! - [`redis`]: attribution to Redis commands, keys, clients and phases.
#![no_std]
#![no_main]

mod emit;
mod evidence;
mod faults;
mod fork_call;
mod lifecycle;
mod maps;
mod redis;
mod swap;
mod threads;
mod verifier;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program with a reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}
