//! Reads of another process's memory through `/proc/PID/mem`, used to verify a layout
//! and to label forks. Never writes.

use std::{fs::File, os::unix::fs::FileExt};

/// Read access to a process's address space.
#[derive(Debug)]
pub struct RemoteMemory {
    file: File,
}

impl RemoteMemory {
    /// Opens `pid`'s memory (needs the same privileges as ptrace-attach; root has them).
    pub fn open(pid: u32) -> std::io::Result<RemoteMemory> {
        Ok(RemoteMemory {
            file: File::open(format!("/proc/{pid}/mem"))?,
        })
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    /// Reads a little-endian u64.
    pub fn u64(&self, addr: u64) -> std::io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian i32.
    pub fn i32(&self, addr: u64) -> std::io::Result<i32> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(i32::from_le_bytes(b))
    }

    /// Reads a NUL-terminated string of at most `max` bytes.
    pub fn c_string(&self, addr: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        // The string may end near the end of a mapping: shrink until a read succeeds.
        let mut len = max;
        loop {
            match self.read(addr, &mut buf[..len]) {
                Ok(()) => break,
                Err(e) if len <= 8 => return Err(e),
                Err(_) => len /= 2,
            }
        }
        buf.truncate(len);
        if let Some(end) = buf.iter().position(|&b| b == 0) {
            buf.truncate(end);
        }
        Ok(buf)
    }

    /// Reads a Redis string object (`robj` with a raw/embstr sds, or an integer).
    pub fn robj_string(&self, obj: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let head = self.i32(obj)? as u32;
        let ptr = self.u64(obj + 8)?;
        match (head >> 4) & 0xf {
            1 => Ok((ptr as i64).to_string().into_bytes()),
            0 | 8 => {
                let len = self.sds_len(ptr)?;
                let n = (len as usize).min(max);
                let mut buf = vec![0u8; n];
                self.read(ptr, &mut buf)?;
                Ok(buf)
            }
            other => Err(std::io::Error::other(format!(
                "object encoding {other} is not a string"
            ))),
        }
    }

    /// Length of an sds string from its header.
    pub fn sds_len(&self, s: u64) -> std::io::Result<u64> {
        let mut flags = [0u8; 1];
        self.read(s - 1, &mut flags)?;
        let f = flags[0];
        let mut b = [0u8; 8];
        Ok(match f & 7 {
            0 => (f >> 3) as u64,
            1 => {
                self.read(s - 3, &mut b[..1])?;
                b[0] as u64
            }
            2 => {
                self.read(s - 5, &mut b[..2])?;
                u16::from_le_bytes([b[0], b[1]]) as u64
            }
            3 => {
                self.read(s - 9, &mut b[..4])?;
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64
            }
            4 => self.u64(s - 17)?,
            t => return Err(std::io::Error::other(format!("bad sds type {t}"))),
        })
    }
}
