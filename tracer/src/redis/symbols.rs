//! The symbols of a running redis-server, at their run-time addresses.
//!
//! The binary is read through `/proc/PID/exe`, so a server in another mount namespace (a
//! container) works too; the load bias comes from `/proc/PID/maps`, matched by inode.

use std::{collections::HashMap, os::unix::fs::MetadataExt, path::PathBuf};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable};

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
    /// PLT stubs by the name of the library function they jump to.
    plt: HashMap<String, Symbol>,
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
        let plt = plt_stubs(&file, bias);
        Ok(ServerSymbols {
            exe,
            bias,
            text: if text.0 < text.1 { text } else { (0, 0) },
            symbols,
            by_addr,
            plt,
        })
    }

    /// The PLT stub through which the executable calls library function `name`.
    pub fn plt_stub(&self, name: &str) -> Option<Symbol> {
        self.plt.get(name).copied()
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

/// Bytes of a PLT entry (`.plt`, `.plt.sec`; `.plt.got` entries are 8 or 16).
const PLT_ENTRY: u64 = 16;

/// The PLT stubs of `file` by the library function they jump to, at run-time addresses.
/// A stub is an indirect jump through a GOT slot (`ff 25 disp32`, after an optional
/// `endbr64` and `bnd` prefix); the dynamic relocation of that slot names the function.
/// Stubs have no symbols of their own.
fn plt_stubs(file: &object::File, bias: u64) -> HashMap<String, Symbol> {
    let mut slots = HashMap::new();
    if let (Some(relocs), Some(dynsym)) = (file.dynamic_relocations(), file.dynamic_symbol_table())
    {
        for (slot, reloc) in relocs {
            if let object::RelocationTarget::Symbol(i) = reloc.target()
                && let Ok(name) = dynsym.symbol_by_index(i).and_then(|s| s.name())
            {
                slots.insert(slot, name.to_string());
            }
        }
    }
    let mut out = HashMap::new();
    for section in file.sections() {
        if !section.name().is_ok_and(|n| n.starts_with(".plt")) {
            continue;
        }
        let (Ok(data), base) = (section.data(), section.address()) else {
            continue;
        };
        let entry = if section.name() == Ok(".plt.got") {
            8
        } else {
            PLT_ENTRY
        };
        for start in (0..data.len() as u64).step_by(entry as usize) {
            let bytes = &data[start as usize..data.len().min((start + entry) as usize)];
            let Some(at) = bytes.windows(2).position(|w| w == [0xff, 0x25]) else {
                continue;
            };
            let Some(disp) = bytes.get(at + 2..at + 6) else {
                continue;
            };
            let disp = i32::from_le_bytes([disp[0], disp[1], disp[2], disp[3]]);
            let next = base + start + at as u64 + 6;
            if let Some(name) = slots.get(&next.wrapping_add_signed(i64::from(disp))) {
                out.entry(name.clone()).or_insert(Symbol {
                    addr: (base + start).wrapping_add(bias),
                    size: entry,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any dynamically linked system binary calls `malloc` and `free` through its PLT.
    #[test]
    fn plt_stubs_jump_through_the_slot_of_their_function() {
        let data = std::fs::read("/usr/bin/ls").unwrap();
        let file = object::File::parse(&*data).unwrap();
        let stubs = plt_stubs(&file, 0);
        let (free, malloc) = (stubs["free"], stubs["malloc"]);
        assert_ne!(free.addr, malloc.addr);
        for stub in [free, malloc] {
            let section = file
                .sections()
                .find(|s| (s.address()..s.address() + s.size()).contains(&stub.addr))
                .unwrap();
            assert!(section.name().unwrap().starts_with(".plt"), "{stub:?}");
            let at = (stub.addr - section.address()) as usize;
            let bytes = &section.data().unwrap()[at..at + stub.size as usize];
            assert!(bytes.windows(2).any(|w| w == [0xff, 0x25]), "{bytes:x?}");
        }
    }
}
