//! Ctrl-C during a bench. The children (server, tracer, redis-benchmark) get the
//! terminal's SIGINT too and stop; we must not die of it ourselves, or the server and
//! tracer guards would never run and a server could be left behind. So SIGINT only sets
//! a flag: the bench checks it between steps and fails, and the guards clean up as the
//! error unwinds.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};

/// Set by SIGINT.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Replaces SIGINT's default (die) with setting the flag, for the rest of the process.
pub fn install() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
}

/// An error once SIGINT came, so that the bench stops at the next step.
pub fn check() -> Result<()> {
    if happened() {
        bail!("interrupted");
    }
    Ok(())
}

/// Whether SIGINT came, to tell the user why the bench stopped.
pub fn happened() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
