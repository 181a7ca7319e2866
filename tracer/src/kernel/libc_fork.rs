//! Where a process's `fork()` lives, so its duration can be measured the way the caller
//! sees it (Redis's `latest_fork_usec` times the libc call, not the syscall).
//!
//! The object is found among the files mapped by the process: the executable itself when
//! it defines `fork` (a static build), otherwise the C library. Paths go through
//! `/proc/PID/root`, so a process in another mount namespace is probed in its own libc.

use std::path::PathBuf;

use object::{Object, ObjectSymbol};

/// The function probed.
pub const SYMBOL: &str = "fork";

/// Why `fork` could not be located.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// `/proc/PID/maps` could not be read.
    #[error("cannot read the mappings of pid {pid}: {reason}")]
    Maps {
        /// The process.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// No mapped file defines `fork`.
    #[error("no file mapped by pid {0} defines `fork` (static binary without symbols?)")]
    NotFound(u32),
}

/// Where `fork` of a process that has just exec'd stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterExec {
    /// This file defines it.
    Found(PathBuf),
    /// The executable is dynamically linked and its loader has not mapped the C library
    /// yet: ask again shortly.
    NotYetMapped,
}

/// Locates `fork` for a process that exec'd moments ago. A dynamically linked program is
/// probed right after its `execve`, before its loader (`PT_INTERP`) has mapped libc: that
/// is not an error, only "not yet". A static executable that does not define `fork` is.
pub fn locate_after_exec(pid: u32) -> Result<AfterExec, LocateError> {
    match locate(pid) {
        Ok(path) => Ok(AfterExec::Found(path)),
        // Mid-exec the new executable is named before it is mapped, and `/proc/PID/exe`
        // can refuse to open until the exec is done: only a readable executable without
        // an interpreter is a static one.
        Err(LocateError::NotFound(_))
            if has_interpreter(&PathBuf::from(format!("/proc/{pid}/exe"))) != Some(false) =>
        {
            Ok(AfterExec::NotYetMapped)
        }
        Err(e) => Err(e),
    }
}

/// Whether the ELF file at `path` names a program interpreter (is dynamically linked);
/// `None` when it cannot be read as ELF.
pub fn has_interpreter(path: &std::path::Path) -> Option<bool> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let data = std::fs::read(path).ok()?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data).ok()?;
    let endian = elf.endian();
    Some(
        elf.elf_program_headers()
            .iter()
            .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP),
    )
}

/// The file (as seen from this namespace) that defines `fork` for `pid`.
pub fn locate(pid: u32) -> Result<PathBuf, LocateError> {
    let maps = procfs::process::Process::new(pid as i32)
        .and_then(|p| p.maps())
        .map_err(|e| LocateError::Maps {
            pid,
            reason: e.to_string(),
        })?;
    let mut seen: Vec<PathBuf> = Vec::new();
    for m in maps.iter() {
        let procfs::process::MMapPath::Path(path) = &m.pathname else {
            continue;
        };
        if seen.contains(path) {
            continue;
        }
        seen.push(path.clone());
    }
    // The executable first (a static build has its own fork), then libc-like names.
    seen.sort_by_key(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        !name.is_some_and(|n| n.starts_with("libc.") || n.starts_with("libc-"))
    });
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    std::iter::once(exe)
        .chain(seen.iter().map(|p| in_root(pid, p)))
        .find(|candidate| defines(candidate, SYMBOL))
        .ok_or(LocateError::NotFound(pid))
}

/// `path` of process `pid`, reached through its root (its mount namespace).
fn in_root(pid: u32, path: &std::path::Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    PathBuf::from(format!("/proc/{pid}/root")).join(rel)
}

/// Whether the ELF file at `path` defines (not merely imports) function `symbol`.
pub fn defines(path: &std::path::Path, symbol: &str) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    file.dynamic_symbols()
        .chain(file.symbols())
        .any(|s| s.is_definition() && s.name() == Ok(symbol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_forks_through_libc() {
        let path = locate(std::process::id()).unwrap();
        assert!(
            path.to_string_lossy().contains("libc"),
            "{}",
            path.display()
        );
        assert!(defines(&path, "fork"));
        // Our own executable imports fork but does not define it.
        assert!(!defines(std::path::Path::new("/proc/self/exe"), "fork"));
    }

    #[test]
    fn dynamic_and_static_executables_are_told_apart() {
        // This test binary is dynamically linked; a static one has no PT_INTERP.
        assert_eq!(
            has_interpreter(std::path::Path::new("/proc/self/exe")),
            Some(true)
        );
        // Unreadable is not "static": the caller asks again.
        assert_eq!(has_interpreter(std::path::Path::new("/nonexistent")), None);
        assert_eq!(
            locate_after_exec(std::process::id()).unwrap(),
            AfterExec::Found(locate(std::process::id()).unwrap())
        );
    }

    #[test]
    fn unknown_pid_is_an_error() {
        assert!(matches!(
            locate(u32::MAX - 1),
            Err(LocateError::Maps { .. })
        ));
    }
}
