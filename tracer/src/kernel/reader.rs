//! Drains the ring buffer on a short timer and hands batches of decoded events on.
//!
//! The kernel side never wakes us (a wakeup per event costs an IPI inside the faulting
//! thread), so a dedicated thread polls. The channel is bounded: if analysis falls
//! behind, the ring buffer fills and the kernel counts what it drops.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

use super::events::{KernelEvent, decode};

/// Events per batch handed to the analysis thread.
const BATCH: usize = 8192;

/// Longest sleep between drains while nothing arrives.
pub const IDLE_WAIT: Duration = Duration::from_millis(32);

/// Sleeps until the kernel signals the ring buffer (a forced wakeup) or `wait` passes.
fn wait_readable(ring: &RingBuf<MapData>, wait: Duration) {
    use std::os::fd::{AsFd, AsRawFd};
    let mut pfd = libc::pollfd {
        fd: ring.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call. An error (EINTR) just
    // means an earlier drain.
    unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(i32::MAX as u128) as i32) };
}

/// What the reader saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderStats {
    /// Events decoded and delivered.
    pub delivered: u64,
    /// Records too short to be an event (should stay 0).
    pub malformed: u64,
}

/// Starts the reader. After `stop` is set (and the programs are detached) it drains
/// what is left once more and returns.
pub fn spawn(
    mut ring: RingBuf<MapData>,
    tx: SyncSender<Vec<KernelEvent>>,
    stop: Arc<AtomicBool>,
    interval: Duration,
) -> std::io::Result<JoinHandle<ReaderStats>> {
    std::thread::Builder::new()
        .name("ringbuf-reader".into())
        .spawn(move || {
            let mut stats = ReaderStats::default();
            let mut wait = interval;
            loop {
                let stopping = stop.load(Ordering::Acquire);
                let mut batch = Vec::new();
                while let Some(item) = ring.next() {
                    if batch.capacity() == 0 {
                        batch.reserve_exact(BATCH);
                    }
                    match decode(&item) {
                        Some(raw) => batch.push(raw),
                        None => stats.malformed += 1,
                    }
                    if batch.len() == BATCH {
                        stats.delivered += batch.len() as u64;
                        if tx
                            .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                            .is_err()
                        {
                            return stats;
                        }
                    }
                }
                // Busy: drain every `interval`. Idle: back off up to IDLE_WAIT, so an idle
                // Redis does not pay for hundreds of wakeups a second; the kernel wakes us
                // early for fork/exit, and the ring buffer holds far more than a
                // IDLE_WAIT-long burst.
                wait = if batch.is_empty() {
                    (wait * 2).min(IDLE_WAIT.max(interval))
                } else {
                    interval
                };
                if !batch.is_empty() {
                    stats.delivered += batch.len() as u64;
                    if tx.send(batch).is_err() {
                        return stats;
                    }
                }
                if stopping {
                    return stats;
                }
                wait_readable(&ring, wait);
            }
        })
}
