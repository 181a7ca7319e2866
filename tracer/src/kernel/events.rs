//! Decoding ring-buffer records into typed events.
//!
//! Records are copied out of the ring buffer (never cast in place) after their length
//! and kind are checked (`tracer_common::Wire`); anything else is kept as `Unknown` with
//! its header so it is counted, not fatal.

use tracer_common::{
    CalibrationEvent, ClientGoneEvent, ContextEvent, ExitEvent, FaultEvent, ForkCallEvent,
    ForkEvent, HEADER_SIZE, Header, SwapLevelEvent, SwapWriteEvent, Wire, kind,
};

/// One record from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// A fault of a traced process.
    Fault(FaultEvent),
    /// A traced process created a process.
    Fork(ForkEvent),
    /// A `fork()` call returned in the parent.
    ForkCall(ForkCallEvent),
    /// A traced thread exited.
    Exit(ExitEvent),
    /// The swap level of a traced process changed.
    SwapLevel(SwapLevelEvent),
    /// Reclaim wrote a page to swap on a traced thread.
    SwapWrite(SwapWriteEvent),
    /// What a Redis thread was doing (boxed: it is large).
    Context(Box<ContextEvent>),
    /// A calibration copy of a Redis server's state (boxed: 17 KiB).
    Calibration(Box<CalibrationEvent>),
    /// A Redis client left `server.clients`.
    ClientGone(ClientGoneEvent),
    /// A record of a kind this version does not know, or too short for its kind.
    Unknown(Header),
}

impl KernelEvent {
    /// The record's header.
    pub fn header(&self) -> &Header {
        match self {
            KernelEvent::Fault(e) => &e.header,
            KernelEvent::Fork(e) => &e.header,
            KernelEvent::ForkCall(e) => &e.header,
            KernelEvent::Exit(e) => &e.header,
            KernelEvent::SwapLevel(e) => &e.header,
            KernelEvent::SwapWrite(e) => &e.header,
            KernelEvent::Context(e) => &e.header,
            KernelEvent::Calibration(e) => &e.header,
            KernelEvent::ClientGone(e) => &e.header,
            KernelEvent::Unknown(h) => h,
        }
    }
}

/// Decodes one ring-buffer record; `None` when it is shorter than a header.
pub fn decode(bytes: &[u8]) -> Option<KernelEvent> {
    if bytes.len() < HEADER_SIZE {
        return None;
    }
    // SAFETY: at least HEADER_SIZE bytes; Header is repr(C) integers only, read without
    // alignment assumptions.
    let header = unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Header>()) };
    let known = match header.kind {
        kind::FAULT => FaultEvent::from_bytes(bytes).map(KernelEvent::Fault),
        kind::FORK => ForkEvent::from_bytes(bytes).map(KernelEvent::Fork),
        kind::FORK_CALL => ForkCallEvent::from_bytes(bytes).map(KernelEvent::ForkCall),
        kind::EXIT => ExitEvent::from_bytes(bytes).map(KernelEvent::Exit),
        kind::SWAP_LEVEL => SwapLevelEvent::from_bytes(bytes).map(KernelEvent::SwapLevel),
        kind::SWAP_WRITE => SwapWriteEvent::from_bytes(bytes).map(KernelEvent::SwapWrite),
        kind::CONTEXT => ContextEvent::from_bytes(bytes).map(|c| KernelEvent::Context(Box::new(c))),
        kind::CALIBRATION => {
            CalibrationEvent::from_bytes(bytes).map(|c| KernelEvent::Calibration(Box::new(c)))
        }
        kind::CLIENT_GONE => ClientGoneEvent::from_bytes(bytes).map(KernelEvent::ClientGone),
        _ => None,
    };
    Some(known.unwrap_or(KernelEvent::Unknown(header)))
}

#[cfg(test)]
mod tests {
    use tracer_common::{FORK_FRAMES, context_flags, fault_flags, phase};

    use super::*;

    /// Bytes of a header, written field by field as the kernel lays them out.
    fn header_bytes(ts: u64, kind: u32, tgid: u32, tid: u32, flags: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&ts.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&tgid.to_le_bytes());
        b.extend_from_slice(&tid.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b
    }

    fn u64s(b: &mut Vec<u8>, values: &[u64]) {
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }

    #[test]
    fn fault_fixture() {
        let mut b = header_bytes(7, kind::FAULT, 10, 11, fault_flags::ALLOC);
        u64s(&mut b, &[0x7f00_0000_1000, 7, 1234]);
        let KernelEvent::Fault(f) = decode(&b).unwrap() else {
            panic!("not a fault")
        };
        assert_eq!((f.header.ts_ns, f.header.tgid, f.header.tid), (7, 10, 11));
        assert_eq!(f.header.flags, fault_flags::ALLOC);
        assert_eq!(
            (f.addr, f.error_code, f.latency_ns),
            (0x7f00_0000_1000, 7, 1234)
        );
        // One byte short of a fault: counted as unknown, not misread.
        assert!(matches!(
            decode(&b[..b.len() - 1]),
            Some(KernelEvent::Unknown(h)) if h.kind == kind::FAULT
        ));
    }

    #[test]
    fn fork_exit_swap_fixtures() {
        let mut b = header_bytes(1, kind::FORK, 10, 10, 0);
        b.extend_from_slice(&42u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        u64s(&mut b, &[0x1200011]);
        assert!(matches!(
            decode(&b),
            Some(KernelEvent::Fork(ForkEvent {
                child_pid: 42,
                clone_flags: 0x1200011,
                ..
            }))
        ));

        let b = header_bytes(2, kind::EXIT, 42, 42, 1);
        assert!(matches!(decode(&b), Some(KernelEvent::Exit(e)) if e.header.flags == 1));

        let mut b = header_bytes(3, kind::SWAP_LEVEL, 10, 99, 3);
        u64s(&mut b, &[8192]);
        assert!(matches!(
            decode(&b),
            Some(KernelEvent::SwapLevel(s)) if s.bytes == 8192 && s.header.tid == 99
        ));

        let mut b = header_bytes(4, kind::SWAP_WRITE, 10, 10, 0);
        u64s(&mut b, &[0xabc]);
        assert!(matches!(decode(&b), Some(KernelEvent::SwapWrite(s)) if s.pfn == 0xabc));

        let mut b = header_bytes(5, kind::CLIENT_GONE, 10, 10, 0);
        u64s(&mut b, &[0xc11e47]);
        assert!(matches!(decode(&b), Some(KernelEvent::ClientGone(c)) if c.client == 0xc11e47));
    }

    #[test]
    fn fork_call_fixture() {
        let mut b = header_bytes(5, kind::FORK_CALL, 10, 10, 0);
        u64s(&mut b, &[(-1i64) as u64, 650_000]);
        let frames: Vec<u64> = (0..FORK_FRAMES as u64).map(|i| 0x5000 + i).collect();
        u64s(&mut b, &frames);
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        let KernelEvent::ForkCall(c) = decode(&b).unwrap() else {
            panic!("not a fork call")
        };
        assert_eq!((c.ret, c.duration_ns, c.frame_count), (-1, 650_000, 3));
        assert_eq!(c.frames[2], 0x5002);
    }

    #[test]
    fn context_fixture() {
        let mut b = header_bytes(6, kind::CONTEXT, 10, 10, context_flags::HAS_KEY);
        b.extend_from_slice(&phase::COMMAND.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes()); // argc
        u64s(&mut b, &[0xc11e47, 77, 5]); // client, seq, key_len
        b.extend_from_slice(&5u32.to_le_bytes()); // key_captured
        b.extend_from_slice(&3u32.to_le_bytes()); // name_len
        b.extend_from_slice(&0u32.to_le_bytes()); // range
        b.extend_from_slice(&0u32.to_le_bytes()); // bulk_len
        b.extend_from_slice(&(2u32 | 1 << 16).to_le_bytes()); // queue: 2 queued, 1 ran
        b.extend_from_slice(&0u32.to_le_bytes()); // pad
        let mut name = [0u8; tracer_common::NAME_CAP];
        name[..3].copy_from_slice(b"set");
        b.extend_from_slice(&name);
        let mut key = [0u8; tracer_common::KEY_CAP];
        key[..5].copy_from_slice(b"hot:1");
        b.extend_from_slice(&key);
        let KernelEvent::Context(c) = decode(&b).unwrap() else {
            panic!("not a context")
        };
        assert_eq!((c.client, c.seq, c.argc), (0xc11e47, 77, 3));
        assert_eq!(c.queue, 2 | 1 << 16);
        assert_eq!(&c.name[..c.name_len as usize], b"set");
        assert_eq!(&c.key[..c.key_captured as usize], b"hot:1");
    }

    #[test]
    fn unknown_kinds_and_short_records() {
        assert_eq!(decode(&[0u8; 10]), None);
        let b = header_bytes(1, 99, 1, 1, 0);
        assert!(matches!(decode(&b), Some(KernelEvent::Unknown(h)) if h.kind == 99));
    }
}
