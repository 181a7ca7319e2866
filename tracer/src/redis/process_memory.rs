//! Reads of another process's memory through `/proc/PID/mem`, used to verify a layout
//! and to label forks. Never writes.

use std::{fs::File, os::unix::fs::FileExt};

/// Reads of some process's memory: the live one ([`ProcessMemory`]) or, in tests, a
/// recorded image.
pub trait Memory {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// Reads a little-endian u64.
    fn u64(&self, addr: u64) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian i32.
    fn i32(&self, addr: u64) -> std::io::Result<i32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(i32::from_le_bytes(b))
    }

    /// `len` bytes at `addr`.
    fn bytes(&self, addr: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.read(addr, &mut b)?;
        Ok(b)
    }
}

/// Read access to a process's address space through `/proc/PID/mem`.
#[derive(Debug)]
pub struct ProcessMemory {
    file: File,
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }
}

impl ProcessMemory {
    /// Opens `pid`'s memory (needs the same privileges as ptrace-attach; root has them).
    pub fn open(pid: u32) -> std::io::Result<ProcessMemory> {
        Ok(ProcessMemory {
            file: File::open(format!("/proc/{pid}/mem"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file is open for reading only: a write through it fails with EBADF, whatever
    /// the caller's privileges.
    #[test]
    fn proc_mem_is_opened_read_only() {
        let target = 0x5a5a_5a5a_u64;
        let m = ProcessMemory::open(std::process::id()).unwrap();
        assert_eq!(m.u64(std::ptr::addr_of!(target) as u64).unwrap(), target);
        let e = m
            .file
            .write_at(&[0], std::ptr::addr_of!(target) as u64)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
        assert_eq!(target, 0x5a5a_5a5a);
    }
}
