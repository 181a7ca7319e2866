//! The symbols of a running redis-server, at their run-time addresses.
//!
//! The binary is read through `/proc/PID/exe`, so a server in another mount namespace (a
//! container) works too; the load bias comes from `/proc/PID/maps`, matched by inode.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf};

use object::{Object, ObjectSegment, ObjectSymbol};

/// Errors reading a server's symbols.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// The executable could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// Not an ELF file object can parse.
    #[error("cannot parse {path} as ELF: {reason}")]
    Parse {
        /// What was parsed.
        path: PathBuf,
        /// Why it failed.
        reason: String,
    },
    /// The executable is not mapped in the process (it exited, or exe was replaced).
    #[error("the executable of pid {0} is not mapped in its address space")]
    NotMapped(u32),
}

/// A symbol at its run-time address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol {
    /// Run-time start address.
    pub addr: u64,
    /// Size in bytes (from the symbol table).
    pub size: u64,
}

/// The exported symbols of a running server.
#[derive(Debug, Clone)]
pub struct ServerSymbols {
    /// `/proc/PID/exe` as read.
    pub exe: PathBuf,
    /// Added to a symbol's link-time address to get its run-time one.
    pub bias: u64,
    /// The executable's code as mapped (run-time addresses, end exclusive).
    pub text: (u64, u64),
    symbols: HashMap<String, Symbol>,
    /// Function symbols by run-time address, for naming return addresses.
    by_addr: Vec<(u64, u64, String)>,
}

impl ServerSymbols {
    /// Reads the dynamic (and, when present, static) symbols of `pid`'s executable.
    pub fn read(pid: u32) -> Result<ServerSymbols, SymbolError> {
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let read_err = |source| SymbolError::Read {
            path: exe.clone(),
            source,
        };
        let data = std::fs::read(&exe).map_err(read_err)?;
        let inode = std::fs::metadata(&exe).map_err(read_err)?.ino();
        let file = object::File::parse(&*data).map_err(|e| SymbolError::Parse {
            path: exe.clone(),
            reason: e.to_string(),
        })?;
        // The segment mapped from file offset 0 anchors the bias (PIE or not).
        let first_vaddr = file
            .segments()
            .filter(|s| s.file_range().0 == 0)
            .map(|s| s.address() & !0xfff)
            .min()
            .unwrap_or(0);
        let maps = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.maps())
            .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
        let base = maps
            .iter()
            .filter(|m| m.inode == inode && m.offset == 0)
            .map(|m| m.address.0)
            .min()
            .ok_or(SymbolError::NotMapped(pid))?;
        let bias = base.wrapping_sub(first_vaddr);
        let text = maps
            .iter()
            .filter(|m| {
                m.inode == inode && m.perms.contains(procfs::process::MMPermissions::EXECUTE)
            })
            .fold((u64::MAX, 0), |(lo, hi), m| {
                (lo.min(m.address.0), hi.max(m.address.1))
            });
        let mut symbols = HashMap::new();
        let mut by_addr = Vec::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() || !sym.is_definition() || sym.address() == 0 {
                continue;
            }
            let at = Symbol {
                addr: sym.address().wrapping_add(bias),
                size: sym.size(),
            };
            if sym.kind() == object::SymbolKind::Text && at.size > 0 {
                by_addr.push((at.addr, at.size, name.to_string()));
            }
            symbols.entry(name.to_string()).or_insert(at);
        }
        by_addr.sort();
        by_addr.dedup_by_key(|s| s.0);
        Ok(ServerSymbols {
            exe,
            bias,
            text: if text.0 < text.1 { text } else { (0, 0) },
            symbols,
            by_addr,
        })
    }

    /// (device, inode) of the executable: the same build in two processes is one binary.
    pub fn identity(&self) -> std::io::Result<(u64, u64)> {
        let m = std::fs::metadata(&self.exe)?;
        Ok((m.dev(), m.ino()))
    }

    /// The function containing run-time address `addr`.
    pub fn function_at(&self, addr: u64) -> Option<&str> {
        let i = self
            .by_addr
            .partition_point(|s| s.0 <= addr)
            .checked_sub(1)?;
        let (start, size, name) = &self.by_addr[i];
        (addr < start + size).then_some(name.as_str())
    }

    /// Every function symbol: run-time start, size and name, by address.
    pub fn functions(&self) -> impl Iterator<Item = (u64, u64, &str)> {
        self.by_addr.iter().map(|(a, n, s)| (*a, *n, s.as_str()))
    }

    /// A symbol by name.
    pub fn get(&self, name: &str) -> Option<Symbol> {
        self.symbols.get(name).copied()
    }

    /// Number of symbols found.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// True when the binary exports nothing usable.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}
