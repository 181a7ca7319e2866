//! The one kernel struct field the programs read, located in the kernel's own type
//! information (BTF, `/sys/kernel/btf/vmlinux`): `task_struct.pagefault_disabled`.
//!
//! aya parses BTF only for its own relocations and keeps the types private, and the BTF
//! crates on crates.io are LGPL; finding one member of one struct needs only the type
//! section's record sizes (`include/uapi/linux/btf.h`), so it is read here.

use std::path::Path;

/// Where the running kernel's BTF is.
const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Why a field could not be located.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("not BTF (bad header)")]
    Header,
    #[error("BTF type {0} has unknown kind {1}")]
    UnknownKind(u32, u32),
    #[error("BTF is truncated")]
    Truncated,
    #[error("no struct {0} with a member {1}")]
    NotFound(String, String),
}

/// Byte offset of `task_struct.pagefault_disabled` in the running kernel.
pub fn task_pagefault_disabled() -> Result<u32, BtfError> {
    let bytes = std::fs::read(Path::new(VMLINUX))
        .map_err(|e| BtfError::Read(VMLINUX.into(), e.to_string()))?;
    member_offset(&bytes, "task_struct", "pagefault_disabled")
}

/// Byte offset of member `member` of struct `name` (a direct, non-bitfield member).
pub fn member_offset(btf: &[u8], name: &str, member: &str) -> Result<u32, BtfError> {
    let u32_at = |at: usize| -> Result<u32, BtfError> {
        btf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(BtfError::Truncated)
    };
    if btf.len() < 24 || u16::from_le_bytes([btf[0], btf[1]]) != MAGIC {
        return Err(BtfError::Header);
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let string_is = |off: u32, want: &str| -> bool {
        let start = strings + off as usize;
        btf.get(start..start + want.len() + 1)
            .is_some_and(|s| &s[..want.len()] == want.as_bytes() && s[want.len()] == 0)
    };
    let (mut at, end, mut id) = (types, types + type_len, 1u32);
    while at < end {
        let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let body = at + 12;
        if kind == KIND_STRUCT && string_is(name_off, name) {
            let bitfields = info >> 31 != 0;
            for m in 0..vlen {
                let rec = body + m * 12;
                if string_is(u32_at(rec)?, member) {
                    let bits = u32_at(rec + 8)?;
                    let bits = if bitfields { bits & 0xff_ffff } else { bits };
                    if bits % 8 == 0 {
                        return Ok(bits / 8);
                    }
                }
            }
        }
        at = body + extra_bytes(kind, vlen).ok_or(BtfError::UnknownKind(id, kind))?;
        id += 1;
    }
    Err(BtfError::NotFound(name.into(), member.into()))
}

/// Bytes that follow a type record of `kind` with `vlen` items.
fn extra_bytes(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        // ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // int, var, decl_tag
        1 | 14 | 17 => 4,
        3 => 12,              // array
        4 | 5 => 12 * vlen,   // struct, union: members
        6 | 13 => 8 * vlen,   // enum, func_proto: values, parameters
        15 | 19 => 12 * vlen, // datasec, enum64
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: an int, then `struct task_struct { int a; int pagefault_disabled; }`
    /// with the second member at `bit_offset`.
    fn fixture(bit_offset: u32) -> Vec<u8> {
        let strings = b"\0int\0task_struct\0a\0pagefault_disabled\0";
        let mut types = Vec::new();
        let mut put = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] int: name "int", kind 1, size 4, encoding word.
        put(1);
        put(1 << 24);
        put(4);
        put(32);
        // [2] struct task_struct, 2 members, size 8.
        put(5);
        put((4 << 24) | 2);
        put(8);
        put(17); // "a"
        put(1);
        put(0);
        put(19); // "pagefault_disabled"
        put(1);
        put(bit_offset);
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&types);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn finds_a_member_by_struct_and_name() {
        assert_eq!(
            member_offset(&fixture(32), "task_struct", "pagefault_disabled"),
            Ok(4)
        );
        assert_eq!(member_offset(&fixture(32), "task_struct", "a"), Ok(0));
        assert!(matches!(
            member_offset(&fixture(32), "task_struct", "pagefault"),
            Err(BtfError::NotFound(..))
        ));
        assert!(matches!(
            member_offset(&fixture(32), "int", "a"),
            Err(BtfError::NotFound(..))
        ));
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert_eq!(member_offset(b"", "t", "m"), Err(BtfError::Header));
        let mut b = fixture(32);
        b[0] = 0;
        assert_eq!(member_offset(&b, "t", "m"), Err(BtfError::Header));
        let mut b = fixture(32);
        b.truncate(40);
        assert_eq!(
            member_offset(&b, "task_struct", "pagefault_disabled"),
            Err(BtfError::Truncated)
        );
    }

    /// The offset agrees with bpftool's own reading of the running kernel's BTF.
    #[test]
    fn the_running_kernel_agrees_with_bpftool() {
        let Ok(out) = std::process::Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX, "format", "raw"])
            .output()
        else {
            return; // no bpftool here: the fixtures above still run
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let bits = text
            .split("STRUCT 'task_struct'")
            .nth(1)
            .and_then(|s| s.split("'pagefault_disabled'").nth(1))
            .and_then(|s| s.split("bits_offset=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse::<u32>().ok())
            .expect("bpftool lists task_struct.pagefault_disabled");
        assert_eq!(task_pagefault_disabled(), Ok(bits / 8));
    }
}
