//! Redis values as they lie in memory: string objects (`robj`) and sds strings, decoded
//! through any [`Memory`]. The kernel side decodes the same layouts (`redis/args.rs` of
//! tracer-ebpf); this is the userspace reading, used to prove a layout.

use std::io;

use super::process_memory::Memory;

const OBJ_STRING: u32 = 0;
const OBJ_ENCODING_RAW: u32 = 0;
const OBJ_ENCODING_INT: u32 = 1;
const OBJ_ENCODING_EMBSTR: u32 = 8;

/// How a build stores short string values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueLayout {
    /// `ptr` at +8 points to the string (Redis up to 8.0, Valkey 8).
    Pointer,
    /// Valkey 9: a value of up to 116 bytes is inline from +8 when bit 2 of byte 4
    /// (`hasembval`) is set; otherwise as [`ValueLayout::Pointer`].
    Inline,
}

/// The bytes of string object `obj` (at most `max`), or its integer value as text.
pub fn string_object(
    mem: &dyn Memory,
    obj: u64,
    layout: ValueLayout,
    max: usize,
) -> io::Result<Vec<u8>> {
    let head = mem.bytes(obj, 16)?;
    let kind = u32::from(head[0]) & 0xf;
    if kind != OBJ_STRING {
        return Err(io::Error::other(format!(
            "object type {kind} is not a string"
        )));
    }
    let flags4 = head[4];
    let word = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8]));
    if layout == ValueLayout::Inline && flags4 & 4 != 0 {
        if flags4 & 2 != 0 {
            return Err(io::Error::other("value with an embedded key"));
        }
        let at = obj + if flags4 & 1 != 0 { 16 } else { 8 };
        let len = mem.bytes(at, 1)?[0] as usize;
        return mem.bytes(at + 3, len.min(max));
    }
    match (u32::from(head[0]) >> 4) & 0xf {
        OBJ_ENCODING_INT => Ok((word as i64).to_string().into_bytes()),
        OBJ_ENCODING_RAW | OBJ_ENCODING_EMBSTR => {
            let len = sds_len(mem, word)?;
            mem.bytes(word, (len as usize).min(max))
        }
        other => Err(io::Error::other(format!(
            "object encoding {other} is not a string"
        ))),
    }
}

/// Length of an sds string from its header (the byte before the string holds the type).
pub fn sds_len(mem: &dyn Memory, s: u64) -> io::Result<u64> {
    let f = mem.bytes(s.wrapping_sub(1), 1)?[0];
    let le = |b: Vec<u8>| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(&b);
        u64::from_le_bytes(w)
    };
    Ok(match f & 7 {
        0 => u64::from(f >> 3),
        1 => le(mem.bytes(s - 3, 1)?),
        2 => le(mem.bytes(s - 5, 2)?),
        3 => le(mem.bytes(s - 9, 4)?),
        4 => mem.u64(s - 17)?,
        t => return Err(io::Error::other(format!("bad sds type {t}"))),
    })
}
