//! SIGINT and SIGTERM: the first asks `record` to stop (drain, finish the timeline, exit
//! 0); a second one exits at once with status 130. On that path nothing is flushed, so the
//! handler removes the temporary files of outputs that are renamed into place when
//! complete: the destination paths then hold either nothing or an earlier complete file,
//! never a partial one. (An NDJSON stream is written in whole lines and is kept.)

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

/// Installs the handlers. `temp_files` are unlinked by a second signal.
pub fn install(stop: Arc<AtomicBool>, temp_files: &[PathBuf]) -> std::io::Result<()> {
    // Built now: the handler may not allocate.
    let paths: Arc<Vec<CString>> = Arc::new(
        temp_files
            .iter()
            .filter_map(|p| CString::new(p.as_os_str().as_bytes()).ok())
            .collect(),
    );
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let stop = Arc::clone(&stop);
        let paths = Arc::clone(&paths);
        let handler = move || {
            if stop.swap(true, Ordering::SeqCst) {
                for p in paths.iter() {
                    // SAFETY: unlink and _exit are async-signal-safe; the strings were
                    // built before the handler was installed.
                    unsafe { libc::unlink(p.as_ptr()) };
                }
                // SAFETY: as above.
                unsafe { libc::_exit(130) };
            }
        };
        // SAFETY: the handler only does an atomic swap, unlink and _exit.
        unsafe { signal_hook::low_level::register(sig, handler) }?;
    }
    Ok(())
}
