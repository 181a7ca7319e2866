//! A client's command name and first key, read from its `argv` as parsed so far.
//!
//! A Redis string object is `{type:4 encoding:4 lru:24; refcount or flags; ptr}` (16
//! bytes); short strings (`EMBSTR`) keep their sds right behind the header, so one read of
//! [`HEAD_READ`] bytes at the object yields the header, the length and the bytes
//! themselves. Every read of user memory is a helper call (about 100 ns on the
//! benchmark host), so reads are combined wherever the data lies together. Valkey 9
//! keeps values of up to 116 bytes inline at +8 instead of a pointer
//! (`features::INLINE_VALUES`).

use aya_ebpf::helpers::generated;
use tracer_common::{ContextEvent, KEY_CAP, NAME_CAP, ServerLayout, context_flags, features};

use super::read_user;

/// Bytes read at an object: header, pointer, optional expire, sds header and the start
/// of inline bytes.
const HEAD_READ: usize = 64;

const OBJ_STRING: u32 = 0;
const OBJ_ENCODING_RAW: u32 = 0;
const OBJ_ENCODING_INT: u32 = 1;
const OBJ_ENCODING_EMBSTR: u32 = 8;

/// A command's arguments as parsed so far.
#[derive(Clone, Copy, Default)]
pub struct Args {
    pub argc: i32,
    pub argv: u64,
    /// `client.bulklen` (the length of the argument being read, -1 between arguments;
    /// 0 on builds without it).
    pub bulk: i64,
}

/// Bytes read at once around a client's `argc`, `argv` and `bulklen` (each read of user
/// memory costs a helper call, and these fields lie within a few dozen bytes).
const CLIENT_WINDOW: u32 = 128;
const WINDOW_WORDS: usize = CLIENT_WINDOW as usize / 8;

/// The client's own `argc`, `argv` and `bulklen`: the command running, or the one parsed
/// first. One read when the three fields fit in [`CLIENT_WINDOW`] bytes, else one each.
#[inline(always)]
pub fn own(client: u64, layout: &ServerLayout) -> Option<Args> {
    let (argc, argv, bulk) = (layout.off_argc, layout.off_argv, layout.off_bulklen);
    let lo = argc.min(argv).min(if bulk != 0 { bulk } else { argc }) & !7;
    let hi = argc.max(argv).max(bulk) + 8;
    if hi - lo > CLIENT_WINDOW {
        return Some(Args {
            argc: read_user::<i32>(client + argc as u64)?,
            argv: read_user::<u64>(client + argv as u64)?,
            bulk: if bulk != 0 {
                read_user::<i64>(client + bulk as u64).unwrap_or(0)
            } else {
                0
            },
        });
    }
    let w = read_user::<[u64; WINDOW_WORDS]>(client + lo as u64)?;
    // Client structs are 8-byte aligned: `off & 4` is where a 4-byte int sits in its word.
    let word = |off: u32| w[((off - lo) / 8) as usize % WINDOW_WORDS];
    Some(Args {
        argc: (word(argc) >> ((argc & 4) * 8)) as u32 as i32,
        argv: word(argv),
        bulk: if bulk != 0 { word(bulk) as i64 } else { 0 },
    })
}

/// The client's queue of parsed commands, `len | off << 16` (0 on builds without one).
#[inline(always)]
pub fn queue(client: u64, layout: &ServerLayout) -> u32 {
    if layout.off_queue == 0 {
        return 0;
    }
    read_user::<u32>(client + layout.off_queue as u64).unwrap_or(0)
}

/// The command being parsed, given the client's own arguments `own`: while Valkey 9
/// parses a pipelined batch, the queue's last entry (the first command of the batch is
/// parsed into the client itself).
#[inline(always)]
pub fn parsing(client: u64, layout: &ServerLayout, queue: u32, own: Args) -> Option<Args> {
    let len = u64::from(queue & 0xffff);
    if len == 0 {
        return Some(own);
    }
    // The queue's array pointer is the word before its length.
    let cmds = read_user::<u64>(client + layout.off_queue as u64 - 8)?;
    let entry = cmds + (len - 1) * u64::from(layout.queue_stride);
    Some(Args {
        argc: read_user::<i32>(entry + u64::from(layout.queue_argc))?,
        argv: read_user::<u64>(entry + u64::from(layout.queue_argv))?,
        bulk: own.bulk,
    })
}

/// Fills `argc`, `name` and `key` from `args`.
#[inline(always)]
pub fn fill(ev: &mut ContextEvent, args: Args, layout: &ServerLayout) {
    let argc = args.argc;
    ev.argc = argc.max(0) as u32;
    if argc < 1 || args.argv == 0 {
        return;
    }
    let argv = args.argv;
    let (arg0, arg1) = if argc >= 2 {
        match read_user::<[u64; 2]>(argv) {
            Some(a) => (a[0], a[1]),
            None => return,
        }
    } else {
        (read_user::<u64>(argv).unwrap_or(0), 0)
    };
    if let Some(s) = string(arg0, layout, ev.name.as_mut_ptr(), NAME_CAP as u32) {
        ev.name_len = s.captured;
    }
    if argc < 2 {
        return;
    }
    let cap = if layout.key_max < KEY_CAP as u32 {
        layout.key_max
    } else {
        KEY_CAP as u32
    };
    // argv[1] is the first key of nearly every keyed command (userspace knows which
    // commands have none).
    if let Some(s) = string(arg1, layout, ev.key.as_mut_ptr(), cap) {
        ev.key_len = s.len;
        ev.key_captured = s.captured;
        ev.header.flags |= context_flags::HAS_KEY;
    }
}

/// What [`string`] found.
struct Str {
    /// Length in bytes.
    len: u64,
    /// Bytes copied.
    captured: u32,
}

/// Copies up to `cap` bytes of string object `obj` to `dst`.
#[inline(always)]
fn string(obj: u64, layout: &ServerLayout, dst: *mut u8, cap: u32) -> Option<Str> {
    if obj == 0 {
        return None;
    }
    let mut buf = [0u8; HEAD_READ];
    let full = read_into(buf.as_mut_ptr(), HEAD_READ as u32, obj);
    if !full && !read_into(buf.as_mut_ptr(), 16, obj) {
        return None;
    }
    let head = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let flags4 = buf[4];
    let word = u64::from_le_bytes([
        buf[8], buf[9], buf[10], buf[11], buf[12], buf[13], buf[14], buf[15],
    ]);
    if head & 0xf != OBJ_STRING {
        return None;
    }
    if layout.features & features::INLINE_VALUES != 0 && flags4 & 4 != 0 {
        // Valkey 9 `hasembval`: [expire if hasexpire] sdshdr8 chars, from +8. Argument
        // objects never embed a key (`hasembkey`).
        if flags4 & 2 != 0 || !full {
            return None;
        }
        let at: u64 = if flags4 & 1 != 0 { 16 } else { 8 };
        let len = buf[at as usize & 31] as u64;
        return Some(copy(obj + at + 3, len, dst, cap));
    }
    match (head >> 4) & 0xf {
        // The protocol parser makes every argument a raw or embedded string; an
        // integer-encoded object in an argument slot is not an argument as parsed (seen
        // once on Valkey 9.1 as the "key" 747575680 of a SET on `hot:*` keys): no key.
        OBJ_ENCODING_INT => None,
        OBJ_ENCODING_EMBSTR => {
            // The sds follows the header (after an 8-byte expire in Valkey 8.1): an sdshdr8,
            // whose length byte is 3 bytes before the string.
            let rel = word.wrapping_sub(obj);
            if full && (16..=40).contains(&rel) {
                let len = buf[(rel - 3) as usize & 63] as u64;
                Some(
                    copy_head(&buf, rel, len, dst, cap)
                        .unwrap_or_else(|| copy(word, len, dst, cap)),
                )
            } else {
                sds(word, dst, cap)
            }
        }
        OBJ_ENCODING_RAW => sds(word, dst, cap),
        _ => None,
    }
}

/// Copies `min(len, cap)` bytes at user address `src` to `dst`.
#[inline(always)]
fn copy(src: u64, len: u64, dst: *mut u8, cap: u32) -> Str {
    let mut n = if len < cap as u64 { len as u32 } else { cap };
    if n > KEY_CAP as u32 {
        n = KEY_CAP as u32;
    }
    let captured = if n > 0 && read_into(dst, n, src) {
        n
    } else {
        0
    };
    Str { len, captured }
}

/// Copies `min(len, cap)` bytes at `from` of the header already read, without another
/// read of user memory; `None` when they are not all in it. An EMBSTR argument (up to 44
/// bytes: every command name and most keys) always is.
#[inline(always)]
fn copy_head(buf: &[u8; HEAD_READ], from: u64, len: u64, dst: *mut u8, cap: u32) -> Option<Str> {
    let n = len.min(u64::from(cap)).min(KEY_CAP as u64);
    if from + n > HEAD_READ as u64 {
        return None;
    }
    let mut i = 0;
    while i < HEAD_READ {
        if i as u64 >= n {
            break;
        }
        // SAFETY: `i < n <= cap`, the size of the destination (see `read_into`).
        unsafe { *dst.add(i) = buf[(from as usize + i) % HEAD_READ] };
        i += 1;
    }
    Some(Str {
        len,
        captured: n as u32,
    })
}

/// A separately allocated sds: its header type is the byte before the string.
#[inline(always)]
fn sds(s: u64, dst: *mut u8, cap: u32) -> Option<Str> {
    let flags = read_user::<u8>(s.wrapping_sub(1))?;
    let len = match flags & 7 {
        0 => (flags >> 3) as u64,
        1 => read_user::<u8>(s - 3)? as u64,
        2 => read_user::<u16>(s - 5)? as u64,
        3 => read_user::<u32>(s - 9)? as u64,
        4 => read_user::<u64>(s - 17)?,
        _ => return None,
    };
    Some(copy(s, len, dst, cap))
}

/// `bpf_probe_read_user` of `n` bytes at `src` into `dst`; true on success.
#[inline(always)]
fn read_into(dst: *mut u8, n: u32, src: u64) -> bool {
    // SAFETY: callers pass a destination of at least `n` bytes (a stack buffer, or an
    // event field with `n` bounded by its size); the helper never faults on `src`.
    unsafe { generated::bpf_probe_read_user(dst.cast(), n, src as *const core::ffi::c_void) == 0 }
}
