//! Discovering where a live Redis or Valkey server keeps what attribution reads, instead
//! of tabling it per version.
//!
//! The binary's symbols give `server` (address and size) and the functions to probe. The
//! rest is measured on the live process with commands whose arguments we choose, none of
//! which writes data:
//!
//! - **`server.current_client`**: a probe on `call()`, attached for a moment, copies
//!   `server` when our own connection's command runs (it knows the connection by its
//!   `CLIENT ID`, which is the first field of every client struct). The field holding
//!   that client pointer, for two different connections, is `current_client`.
//! - **`client.argc` / `client.argv`**: both connections block in `BLPOP` on keys that do
//!   not exist, with 3 and 5 arguments; a blocked client keeps its arguments. The int
//!   that reads 3 and 5, and the pointer whose array decodes to exactly the arguments
//!   sent, are `argc` and `argv`. Both are released with `CLIENT UNBLOCK` at once.
//! - **`server.stat_numcommands`**: the counter that lies between two readings of INFO's
//!   `total_commands_processed` (`before < v <= after`), in four windows: nothing, 10
//!   pipelined PINGs, 3 PINGs inside MULTI/EXEC, 10 PINGs again.
//! - **`client.bulklen`**: a third connection sends a `BLPOP` whose second argument is
//!   announced as 34,567 bytes and never completed; the field of its client that holds
//!   34,567 is `bulklen`. The connection is then closed.
//! - **`server.clients`**: the list whose nodes hold both blocked connections.
//!
//! Every offset is accepted only when its observations agree and no other offset fits
//! them; the finders are pure functions over memory images, unit-tested below.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use serde::Serialize;
use tracer_common::CalibrationTarget;

use super::{
    info::{InfoError, RedisConn},
    objects::{ValueLayout, string_object},
    process_memory::Memory,
    symbols::Symbol,
};
use crate::kernel::{events::KernelEvent, loader::Probes};

/// `list.head`, `listNode.next`, `listNode.value`, `list.len` (adlist.h, unchanged since
/// 2.x).
pub const LIST_HEAD: u64 = 0;
/// See [`LIST_HEAD`].
pub const LISTNODE_NEXT: u64 = 8;
/// See [`LIST_HEAD`].
pub const LISTNODE_VALUE: u64 = 16;
/// See [`LIST_HEAD`].
pub const LIST_LEN: u64 = 40;
/// Bytes of a client read when looking for its fields (every field used is in the first
/// few hundred bytes of every version).
pub const CLIENT_BYTES: usize = 1024;
/// Longest list walked.
const MAX_CLIENTS: u64 = 1_000_000;

/// What attribution reads, found on the live process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discovered {
    /// Size of `server` (`sizeof(struct redisServer)` / `valkeyServer`).
    pub server_size: u64,
    /// `server.current_client`.
    pub current_client: u32,
    /// `server.stat_numcommands`.
    pub stat_numcommands: u32,
    /// `server.clients`.
    pub clients: u32,
    /// `client.argc`.
    pub client_argc: u32,
    /// `client.argv`.
    pub client_argv: u32,
    /// `client.bulklen`.
    pub client_bulklen: u32,
    /// `pointer` or `inline` (Valkey 9 values).
    pub values: &'static str,
    /// Valkey 9's queue of parsed commands, when the build has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_queue: Option<QueueLayout>,
    /// The observations that proved each, in words.
    #[serde(skip)]
    pub checks: Vec<String>,
}

/// Why discovery failed: one line naming what could not be found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No connection to the server (INFO unreachable, wrong password).
    #[error("no connection to the server to calibrate with")]
    NoConnection,
    /// A command the calibration needs failed.
    #[error("{0}")]
    Command(#[from] InfoError),
    /// The calibration probe could not be attached or fed.
    #[error("the calibration probe on `call` failed: {0}")]
    Probe(String),
    /// The probe never saw our command.
    #[error("the probe on `call` did not see our {0} within 2 s")]
    NotSeen(&'static str),
    /// Memory could not be read.
    #[error("reading the server's memory: {0}")]
    Memory(#[from] std::io::Error),
    /// No offset fits the observations.
    #[error("{field} not found: {why}")]
    NotFound {
        /// The field.
        field: &'static str,
        /// What was observed.
        why: String,
    },
    /// Several offsets fit: none is used.
    #[error("{field} ambiguous: offsets {offsets:?} all fit")]
    Ambiguous {
        /// The field.
        field: &'static str,
        /// The candidates.
        offsets: Vec<u32>,
    },
}

/// The one offset in `candidates`, or why there is not one.
fn unique(field: &'static str, candidates: Vec<u32>, why: &str) -> Result<u32, DiscoveryError> {
    match candidates.as_slice() {
        [one] => Ok(*one),
        [] => Err(DiscoveryError::NotFound {
            field,
            why: why.to_string(),
        }),
        _ => Err(DiscoveryError::Ambiguous {
            field,
            offsets: candidates,
        }),
    }
}

fn word(bytes: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(off..off + 8)?.try_into().ok()?,
    ))
}

fn int(bytes: &[u8], off: usize) -> Option<i32> {
    Some(i32::from_le_bytes(
        bytes.get(off..off + 4)?.try_into().ok()?,
    ))
}

/// What the probe on `call()` saw: the client and a copy of `server` at that moment.
#[derive(Debug, Clone)]
pub struct CallObservation {
    /// `call()`'s client.
    pub client: u64,
    /// `server` at the call.
    pub server: Vec<u8>,
}

/// The field of `server` holding the calling client in every observation.
pub fn current_client_offset(obs: &[CallObservation]) -> Result<u32, DiscoveryError> {
    let distinct: HashSet<u64> = obs.iter().map(|o| o.client).collect();
    if distinct.len() < 2 {
        return Err(DiscoveryError::NotFound {
            field: "server.current_client",
            why: "needs two different clients observed".into(),
        });
    }
    let len = obs.iter().map(|o| o.server.len()).min().unwrap_or(0);
    let fits = offsets_where(len, 8, |off| {
        obs.iter().all(|o| word(&o.server, off) == Some(o.client))
    });
    unique(
        "server.current_client",
        fits,
        "no field held the calling client in every observation",
    )
}

/// INFO's `total_commands_processed` before and after a copy of `server`.
#[derive(Debug, Clone)]
pub struct CounterWindow {
    /// INFO before the copy.
    pub before: u64,
    /// `server`.
    pub server: Vec<u8>,
    /// INFO after the copy.
    pub after: u64,
}

/// The field of `server` that lies inside every window and grows from window to window.
///
/// INFO reports the counter before counting itself, so the field is above `before`: a
/// copy of the counter taken when the event loop woke up (`el_cmd_cnt_start` since Redis
/// 7.2) equals `before` and is ruled out.
pub fn stat_numcommands_offset(windows: &[CounterWindow]) -> Result<u32, DiscoveryError> {
    if windows.len() < 2 {
        return Err(DiscoveryError::NotFound {
            field: "server.stat_numcommands",
            why: "needs two windows".into(),
        });
    }
    let len = windows.iter().map(|w| w.server.len()).min().unwrap_or(0);
    let fits = offsets_where(len, 8, |off| {
        let values: Vec<Option<u64>> = windows.iter().map(|w| word(&w.server, off)).collect();
        windows
            .iter()
            .zip(&values)
            .all(|(w, v)| v.is_some_and(|v| w.before < v && v <= w.after))
            && values.windows(2).all(|p| p[0] < p[1])
    });
    unique(
        "server.stat_numcommands",
        fits,
        "no counter lay between INFO's total_commands_processed readings",
    )
}

/// A client blocked in a command whose arguments are known.
#[derive(Debug, Clone)]
pub struct BlockedClient {
    /// The client.
    pub client: u64,
    /// Its first [`CLIENT_BYTES`] bytes.
    pub bytes: Vec<u8>,
    /// The arguments it sent.
    pub args: Vec<Vec<u8>>,
}

/// The int field that holds every blocked client's argument count.
pub fn argc_offset(clients: &[BlockedClient]) -> Result<u32, DiscoveryError> {
    let counts: HashSet<usize> = clients.iter().map(|c| c.args.len()).collect();
    if counts.len() < 2 {
        return Err(DiscoveryError::NotFound {
            field: "client.argc",
            why: "needs two argument counts observed".into(),
        });
    }
    let len = clients.iter().map(|c| c.bytes.len()).min().unwrap_or(0);
    let fits = offsets_where(len, 4, |off| {
        clients
            .iter()
            .all(|c| int(&c.bytes, off) == Some(c.args.len() as i32))
    });
    unique("client.argc", fits, "no int held every argument count")
}

/// The length the partial client announces for its second argument: big enough that
/// Redis reads it into a buffer of its own (over 32 KiB), unlike any other field, and
/// small enough that the buffer comes from the heap (glibc serves 128 KiB and more with
/// `mmap` and, once such a block is freed, raises that threshold for good).
pub const PARTIAL_BULK: i64 = 34_567;

/// The `long long` field that holds the announced length of the argument being read:
/// [`PARTIAL_BULK`] in `partial`, -1 (between arguments) in every blocked client.
pub fn bulklen_offset(
    partial: &BlockedClient,
    blocked: &[BlockedClient],
) -> Result<u32, DiscoveryError> {
    let len = blocked
        .iter()
        .map(|c| c.bytes.len())
        .fold(partial.bytes.len(), usize::min);
    let fits = offsets_where(len, 8, |off| {
        long(&partial.bytes, off) == Some(PARTIAL_BULK)
            && blocked.iter().all(|c| long(&c.bytes, off) == Some(-1))
    });
    unique(
        "client.bulklen",
        fits,
        "no field held the announced argument length",
    )
}

/// The offsets below `len`, every `step` bytes, where `fits` holds.
fn offsets_where(len: usize, step: usize, fits: impl Fn(usize) -> bool) -> Vec<u32> {
    (0..len)
        .step_by(step)
        .filter(|&off| fits(off))
        .map(|off| off as u32)
        .collect()
}

fn long(bytes: &[u8], off: usize) -> Option<i64> {
    word(bytes, off).map(|w| w as i64)
}

/// The pointer field whose array decodes to every blocked client's arguments, and how
/// the build stores short values.
pub fn argv_offset(
    mem: &dyn Memory,
    clients: &[BlockedClient],
) -> Result<(u32, ValueLayout), DiscoveryError> {
    let len = clients.iter().map(|c| c.bytes.len()).min().unwrap_or(0);
    let mut fits = Vec::new();
    for layout in [ValueLayout::Pointer, ValueLayout::Inline] {
        for off in (0..len).step_by(8) {
            if clients.iter().all(|c| argv_matches(mem, c, off, layout)) {
                fits.push((off as u32, layout));
            }
        }
        if !fits.is_empty() {
            break; // the plain layout explains it: do not also try inline values
        }
    }
    match fits.as_slice() {
        [one] => Ok(*one),
        [] => Err(DiscoveryError::NotFound {
            field: "client.argv",
            why: "no pointer led to the arguments sent".into(),
        }),
        _ => Err(DiscoveryError::Ambiguous {
            field: "client.argv",
            offsets: fits.iter().map(|f| f.0).collect(),
        }),
    }
}

fn argv_matches(mem: &dyn Memory, c: &BlockedClient, off: usize, layout: ValueLayout) -> bool {
    word(&c.bytes, off).is_some_and(|argv| argv_decodes(mem, argv, &c.args, layout))
}

/// Whether the `argv` array at `argv` holds exactly `args`.
fn argv_decodes(mem: &dyn Memory, argv: u64, args: &[Vec<u8>], layout: ValueLayout) -> bool {
    if argv <= 0x10000 || argv & 7 != 0 {
        return false;
    }
    args.iter().enumerate().all(|(i, want)| {
        mem.u64(argv + 8 * i as u64)
            .and_then(|obj| string_object(mem, obj, layout, want.len() + 1))
            .is_ok_and(|got| got.eq_ignore_ascii_case(want))
    })
}

/// Walks the list at `list`: its members, or why it is not a well-formed list.
pub fn walk_list(mem: &dyn Memory, list: u64) -> Result<Vec<u64>, String> {
    if list == 0 || list & 7 != 0 {
        return Err("not a pointer".into());
    }
    let read = |a: u64| mem.u64(a).map_err(|e| format!("reading {a:#x}: {e}"));
    let len = read(list + LIST_LEN)?;
    if len > MAX_CLIENTS {
        return Err(format!("implausible length {len}"));
    }
    let mut node = read(list + LIST_HEAD)?;
    let mut out = Vec::new();
    while node != 0 && (out.len() as u64) < len {
        out.push(read(node + LISTNODE_VALUE)?);
        node = read(node + LISTNODE_NEXT)?;
    }
    if out.len() as u64 != len || node != 0 {
        return Err(format!("says {len} members but {} were linked", out.len()));
    }
    Ok(out)
}

/// The field of `server` pointing to a well-formed list that holds every client in
/// `wanted`; with the list's members.
pub fn clients_list_offset(
    mem: &dyn Memory,
    server: &[u8],
    wanted: &[u64],
) -> Result<(u32, Vec<u64>), DiscoveryError> {
    let mut fits = Vec::new();
    for off in (0..server.len()).step_by(8) {
        let Some(list) = word(server, off) else {
            continue;
        };
        if list < 0x10000 {
            continue;
        }
        if let Ok(members) = walk_list(mem, list)
            && wanted.iter().all(|c| members.contains(c))
        {
            fits.push((off as u32, members));
        }
    }
    match fits.len() {
        1 => Ok(fits.remove(0)),
        0 => Err(DiscoveryError::NotFound {
            field: "server.clients",
            why: "no list held both calibration clients".into(),
        }),
        _ => Err(DiscoveryError::Ambiguous {
            field: "server.clients",
            offsets: fits.iter().map(|f| f.0).collect(),
        }),
    }
}

/// The live-process side of discovery.
pub struct Calibration<'a> {
    /// The server.
    pub pid: u32,
    /// Its executable (probed through `/proc/PID/exe`).
    pub exe: PathBuf,
    /// The `server` symbol.
    pub server: Symbol,
    /// Its memory.
    pub mem: &'a dyn Memory,
    /// The loaded programs (for the probe on `call`).
    pub probes: &'a mut Probes,
    /// The ring buffer's decoded records.
    pub events: &'a Receiver<Vec<KernelEvent>>,
    /// Records seen while waiting that are not ours: the caller processes them.
    pub stash: &'a mut Vec<KernelEvent>,
    /// On a cluster node, a hash tag whose slot the node serves: the blocking commands'
    /// keys carry it, so they all hash to that slot (otherwise they would be refused as
    /// `CROSSSLOT`, or redirected as `MOVED`, instead of blocking).
    pub key_tag: Option<String>,
}

/// Where a build that parses pipelined commands ahead (Valkey 9) queues them: in the
/// client, an array pointer followed by `u16 len, u16 off`; in each array entry, `argc`
/// and `argv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueLayout {
    /// Offset in the client of the queue's `len` (the array pointer is 8 bytes before).
    pub len: u32,
    /// Bytes per entry.
    pub stride: u32,
    /// `argc` in an entry.
    pub argc: u32,
    /// `argv` in an entry.
    pub argv: u32,
}

/// What each blocked client sends right behind its `BLPOP`, in the same packet, and the
/// arguments a build that parses ahead (Valkey 9) then holds in its queue while the
/// `BLPOP` blocks: complete `PING`s and a last one cut after its first argument, whose
/// `argc` (parsed) differs from its announced length. Other builds leave the bytes unread
/// until the client is released; nothing is written either way.
pub fn queued_behind(client: usize) -> (Vec<u8>, Vec<Vec<Vec<u8>>>) {
    let ping = || vec![b"PING".to_vec()];
    let hello = || vec![b"PING".to_vec(), b"hello".to_vec()];
    let (wire, queued) = match client {
        0 => (
            "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n*2\r\n$4\r\nPING\r\n",
            vec![ping(), hello(), ping()],
        ),
        _ => (
            "*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n*3\r\n$4\r\nPING\r\n$5\r\nhello\r\n",
            vec![hello(), ping(), ping(), hello()],
        ),
    };
    (wire.as_bytes().to_vec(), queued)
}

/// The client's command queue, if every blocked client shows the commands it queued (and
/// the partial client an empty queue) at exactly one offset with one entry layout.
/// `Ok(None)`: the build does not queue (nothing fits anywhere).
pub fn queue_layout(
    mem: &dyn Memory,
    blocked: &[BlockedClient],
    queued: &[Vec<Vec<Vec<u8>>>],
    partial: &BlockedClient,
) -> Result<Option<QueueLayout>, DiscoveryError> {
    let len = blocked
        .iter()
        .map(|c| c.bytes.len())
        .fold(partial.bytes.len(), usize::min);
    let mut fits = Vec::new();
    for off in (8..len.saturating_sub(4)).step_by(8) {
        let shows = |c: &BlockedClient, want: &[Vec<Vec<u8>>]| {
            // `len` is the command count and `off` (the next 16 bits) 0: none ran yet.
            if int(&c.bytes, off) != Some(want.len() as i32) {
                return None;
            }
            word(&c.bytes, off - 8)
                .filter(|&p| p > 0x10000)
                .and_then(|p| entry_layout(mem, p, want))
        };
        let found: Vec<_> = blocked
            .iter()
            .zip(queued)
            .map(|(c, q)| shows(c, q))
            .collect();
        if int(&partial.bytes, off) == Some(0)
            && let Some(Some(first)) = found.first()
            && found.iter().all(|f| f.as_ref() == Some(first))
        {
            fits.push(QueueLayout {
                len: off as u32,
                ..*first
            });
        }
    }
    match fits.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(DiscoveryError::Ambiguous {
            field: "client.cmd_queue",
            offsets: fits.iter().map(|f| f.len).collect(),
        }),
    }
}

/// The one entry layout `(stride, argc, argv)` under which the array at `array` holds
/// exactly the commands `want`.
fn entry_layout(mem: &dyn Memory, array: u64, want: &[Vec<Vec<u8>>]) -> Option<QueueLayout> {
    let mut fits = Vec::new();
    for stride in (16..=128u32).step_by(8) {
        let Ok(bytes) = mem.bytes(array, (stride as usize) * want.len()) else {
            continue;
        };
        for argv in (0..stride).step_by(8) {
            for argc in (0..stride).step_by(4) {
                let all = want.iter().enumerate().all(|(i, args)| {
                    let at = i * stride as usize;
                    int(&bytes, at + argc as usize) == Some(args.len() as i32)
                        && word(&bytes, at + argv as usize).is_some_and(|p| {
                            argv_decodes(mem, p, args, ValueLayout::Pointer)
                                || argv_decodes(mem, p, args, ValueLayout::Inline)
                        })
                });
                if all {
                    fits.push(QueueLayout {
                        len: 0,
                        stride,
                        argc,
                        argv,
                    });
                }
            }
        }
    }
    match fits.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// The two `BLPOP`s of the calibration, on keys no one uses (this process and instant
/// in their names), in the hash tag `{key_tag}` when given.
fn blocking_commands(key_tag: Option<&str>) -> [Vec<Vec<u8>>; 2] {
    let unique = format!(
        "{}:{}",
        std::process::id(),
        crate::analysis::clock::monotonic_ns()
    );
    let prefix = match key_tag {
        Some(t) => format!("__redis-memtrace:{{{t}}}:calibrate:{unique}"),
        None => format!("__redis-memtrace:calibrate:{unique}"),
    };
    let key = |suffix: &str| format!("{prefix}:{suffix}").into_bytes();
    [
        vec![b"BLPOP".to_vec(), key("a"), b"5".to_vec()],
        vec![
            b"BLPOP".to_vec(),
            key("b1"),
            key("b2"),
            key("b3"),
            b"5".to_vec(),
        ],
    ]
}

/// Two connections blocked in `BLPOP` with chosen arguments, released on drop.
struct Blockers {
    admin: RedisConn,
    blocked: Vec<(RedisConn, u64)>,
}

impl Drop for Blockers {
    fn drop(&mut self) {
        for (conn, id) in &mut self.blocked {
            let _: Result<i64, _> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(*id)
                .query(self.admin.raw());
            let _: Result<redis::Value, _> = conn.raw().recv_response();
        }
    }
}

impl Calibration<'_> {
    /// Finds every offset. `open` opens a new connection to the server.
    pub fn run(
        &mut self,
        open: &mut dyn FnMut() -> Option<RedisConn>,
    ) -> Result<(Discovered, Vec<u64>), DiscoveryError> {
        let mut admin = open().ok_or(DiscoveryError::NoConnection)?;
        let windows = self.counter_windows(&mut admin)?;
        let seq = stat_numcommands_offset(&windows)?;
        let plans = blocking_commands(self.key_tag.as_deref());
        let mut blockers = Blockers {
            admin,
            blocked: Vec::new(),
        };
        let mut calls = Vec::new();
        let mut clients = Vec::new();
        let mut queued = Vec::new();
        for (i, args) in plans.into_iter().enumerate() {
            let mut conn = open().ok_or(DiscoveryError::NoConnection)?;
            let id = conn.client_id()?;
            let (behind, queue) = queued_behind(i);
            queued.push(queue);
            let call = self.observe_call(&mut conn, id, &args, &behind)?;
            blockers.blocked.push((conn, id));
            clients.push(BlockedClient {
                client: call.client,
                bytes: self.blocked_client_bytes(call.client)?,
                args,
            });
            calls.push(call);
        }
        let current_client = current_client_offset(&calls)?;
        let server_now = self
            .mem
            .bytes(self.server.addr, self.server.size as usize)?;
        let wanted: Vec<u64> = clients.iter().map(|c| c.client).collect();
        let (list, members) = clients_list_offset(self.mem, &server_now, &wanted)?;
        // A third client stops after the first argument of three: its argument count (1)
        // differs from the arguments array's length (3, `argv_len` since Redis 7), which
        // blocked clients cannot tell apart.
        let mut partial = open().ok_or(DiscoveryError::NoConnection)?;
        let half = self.partial_client(&mut partial, list)?;
        let bulklen = bulklen_offset(&half, &clients)?;
        clients.push(half);
        let argc = argc_offset(&clients)?;
        let (argv, values) = argv_offset(self.mem, &clients)?;
        let client_queue = queue_layout(self.mem, &clients[..2], &queued, &clients[2])?;
        drop(partial);
        drop(blockers);
        let found = Discovered {
            server_size: self.server.size,
            current_client,
            stat_numcommands: seq,
            clients: list,
            client_argc: argc,
            client_argv: argv,
            client_bulklen: bulklen,
            values: values_name(values),
            client_queue,
            checks: Vec::new(),
        };
        let checks = proofs(&found, windows.len(), members.len());
        Ok((Discovered { checks, ..found }, members))
    }

    fn counter_windows(&self, admin: &mut RedisConn) -> Result<Vec<CounterWindow>, DiscoveryError> {
        let mut windows = Vec::new();
        for n in 0..4 {
            // Ten commands in one round trip: the command counter moves ten times as far
            // as the per-read and per-write counters, which otherwise keep pace with it
            // on a connection sending one command at a time. Three commands inside
            // MULTI/EXEC: it counts them, a counter of top-level calls does not (Redis
            // 7.2's duration statistics); attribution needs every command counted.
            let mut pipe = redis::pipe();
            match n {
                1 | 3 => {
                    for _ in 0..10 {
                        pipe.cmd("PING");
                    }
                }
                2 => {
                    pipe.cmd("MULTI").ignore();
                    for _ in 0..3 {
                        pipe.cmd("PING").ignore();
                    }
                    pipe.cmd("EXEC");
                }
                _ => {}
            }
            if n > 0 {
                let _: redis::Value = pipe
                    .query(admin.raw())
                    .map_err(|e| admin.error("PING", &e))?;
            }
            let before = admin.info("stats")?.get_u64("total_commands_processed");
            let server = self
                .mem
                .bytes(self.server.addr, self.server.size as usize)?;
            let after = admin.info("stats")?.get_u64("total_commands_processed");
            let (Some(before), Some(after)) = (before, after) else {
                return Err(DiscoveryError::NotFound {
                    field: "server.stat_numcommands",
                    why: "INFO stats has no total_commands_processed".into(),
                });
            };
            windows.push(CounterWindow {
                before,
                server,
                after,
            });
        }
        Ok(windows)
    }

    /// Sends `args` on `conn` (without waiting for the reply: it blocks) and returns what
    /// the probe on `call` saw for it.
    fn observe_call(
        &mut self,
        conn: &mut RedisConn,
        id: u64,
        args: &[Vec<u8>],
        behind: &[u8],
    ) -> Result<CallObservation, DiscoveryError> {
        let target = CalibrationTarget {
            server_addr: self.server.addr,
            server_len: self.server.size as u32,
            client_id_lo: id as u32,
            client_id_hi: (id >> 32) as u32,
            _pad: 0,
        };
        let link = self
            .probes
            .begin_calibration(&self.exe, self.pid, target)
            .map_err(|e| DiscoveryError::Probe(e.to_string()))?;
        let mut cmd = redis::cmd(&String::from_utf8_lossy(&args[0]));
        for a in &args[1..] {
            cmd.arg(a.as_slice());
        }
        let mut packet = cmd.get_packed_command();
        packet.extend_from_slice(behind);
        let sent = conn.raw().send_packed_command(&packet);
        let seen = sent
            .map_err(|e| conn.error("BLPOP", &e).into())
            .and_then(|()| self.wait_call());
        self.probes.end_calibration(self.pid, link);
        seen
    }

    fn wait_call(&mut self) -> Result<CallObservation, DiscoveryError> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let batch = match self.events.recv_timeout(left) {
                Ok(b) => b,
                Err(_) => return Err(DiscoveryError::NotSeen("BLPOP")),
            };
            let mut found = None;
            for ev in batch {
                match ev {
                    KernelEvent::Calibration(c) if c.header.tgid == self.pid && found.is_none() => {
                        let n = (c.server_len as usize).min(c.server_bytes.len());
                        found = Some(CallObservation {
                            client: c.client,
                            server: c.server_bytes[..n].to_vec(),
                        });
                    }
                    other => self.stash.push(other),
                }
            }
            if let Some(f) = found {
                return Ok(f);
            }
        }
    }

    /// A client that sent the first argument of a three-argument command and the length
    /// of the second ([`PARTIAL_BULK`]), and waits for the rest; found in
    /// `server.clients` by its id.
    fn partial_client(
        &self,
        conn: &mut RedisConn,
        list: u32,
    ) -> Result<BlockedClient, DiscoveryError> {
        let id = conn.client_id()?;
        conn.raw()
            .send_packed_command(format!("*3\r\n$5\r\nBLPOP\r\n${PARTIAL_BULK}\r\nab").as_bytes())
            .map_err(|e| conn.error("BLPOP", &e))?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let head = self.mem.u64(self.server.addr + u64::from(list))?;
            let members = walk_list(self.mem, head).unwrap_or_default();
            for c in members {
                if self.mem.u64(c).ok() != Some(id) {
                    continue;
                }
                let bytes = self.mem.bytes(c, CLIENT_BYTES)?;
                // Parsed once the second argument's length is in.
                if (0..CLIENT_BYTES)
                    .step_by(8)
                    .any(|o| long(&bytes, o) == Some(PARTIAL_BULK))
                {
                    return Ok(BlockedClient {
                        client: c,
                        bytes,
                        args: vec![b"BLPOP".to_vec()],
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(DiscoveryError::NotFound {
                    field: "client.argc",
                    why: "the client with a partial command was not found in server.clients".into(),
                });
            }
        }
    }

    /// The first bytes of a client once it is blocked (its arguments stay set).
    fn blocked_client_bytes(&self, client: u64) -> Result<Vec<u8>, DiscoveryError> {
        // The probe fired at call()'s entry; blocking follows within microseconds.
        std::thread::sleep(Duration::from_millis(20));
        Ok(self.mem.bytes(client, CLIENT_BYTES)?)
    }
}

/// One line per offset: the observations that proved it.
fn proofs(d: &Discovered, windows: usize, members: usize) -> Vec<String> {
    let bulk = PARTIAL_BULK;
    let mut checks = vec![
        format!(
            "server.current_client at {}: held each of 2 calling clients in call()",
            d.current_client
        ),
        format!(
            "server.stat_numcommands at {}: inside INFO's total_commands_processed in {windows} windows (around 10 pipelined PINGs, 3 PINGs in MULTI/EXEC)",
            d.stat_numcommands
        ),
        format!(
            "client.argc at {}: read 3, 5 and 1 for clients blocked with 3 and 5 arguments and one that sent 1 of 3",
            d.client_argc
        ),
        format!(
            "client.argv at {}: decoded to exactly the arguments of those three clients ({} values)",
            d.client_argv, d.values
        ),
        format!(
            "server.clients at {}: a well-formed list of {members} clients holding both",
            d.clients
        ),
        format!(
            "client.bulklen at {}: {bulk} for the client that announced a {bulk}-byte argument, -1 for the two blocked ones",
            d.client_bulklen
        ),
    ];
    checks.push(match d.client_queue {
        Some(q) => format!(
            "client.cmd_queue at {}: held the 3 and 4 commands pipelined behind the two BLPOPs (entries of {} bytes, argc at {}, argv at {}), empty for the partial client",
            q.len, q.stride, q.argc, q.argv
        ),
        None => "client.cmd_queue: none (commands pipelined behind a blocked BLPOP were not parsed ahead)".into(),
    });
    checks
}

fn values_name(v: ValueLayout) -> &'static str {
    match v {
        ValueLayout::Pointer => "pointer",
        ValueLayout::Inline => "inline",
    }
}

/// A memory image of a few regions (tests and recorded observations).
#[derive(Debug, Default, Clone)]
pub struct Image {
    regions: Vec<(u64, Vec<u8>)>,
}

impl Image {
    /// Adds `bytes` at `addr`.
    pub fn put(&mut self, addr: u64, bytes: Vec<u8>) {
        self.regions.push((addr, bytes));
    }
}

impl Memory for Image {
    fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        for (start, bytes) in &self.regions {
            let off = addr.wrapping_sub(*start) as usize;
            if addr >= *start && off + buf.len() <= bytes.len() {
                buf.copy_from_slice(&bytes[off..off + buf.len()]);
                return Ok(());
            }
        }
        Err(std::io::Error::other(format!("unmapped {addr:#x}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_word(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn a_cluster_node_blocks_on_keys_of_one_served_slot() {
        use crate::attribution::keyslot::key_hash_slot;
        let [one, three] = blocking_commands(Some("memtrace-7"));
        let keys: Vec<&Vec<u8>> = one[1..2].iter().chain(&three[1..4]).collect();
        assert!(
            keys.iter()
                .all(|k| k.starts_with(b"__redis-memtrace:{memtrace-7}:calibrate:"))
        );
        let slot = key_hash_slot(b"memtrace-7");
        assert!(
            keys.iter().all(|k| key_hash_slot(k) == slot),
            "one slot, no CROSSSLOT"
        );
        assert_eq!((one.len(), three.len()), (3, 5));
        // Outside cluster mode the keys have no hash tag.
        let [plain, _] = blocking_commands(None);
        assert!(plain[1].starts_with(b"__redis-memtrace:calibrate:"));
        assert!(!plain[1].contains(&b'{'));
    }

    #[test]
    fn current_client_is_the_field_that_follows_the_caller() {
        let mut a = vec![0u8; 256];
        let mut b = vec![0u8; 256];
        put_word(&mut a, 96, 0xaaa0);
        put_word(&mut b, 96, 0xbbb0);
        // A field that held the first client only (a stale pointer) does not fit both.
        put_word(&mut a, 120, 0xaaa0);
        let obs = [
            CallObservation {
                client: 0xaaa0,
                server: a.clone(),
            },
            CallObservation {
                client: 0xbbb0,
                server: b.clone(),
            },
        ];
        assert_eq!(current_client_offset(&obs).unwrap(), 96);
        put_word(&mut b, 120, 0xbbb0);
        let obs = [
            CallObservation {
                client: 0xaaa0,
                server: a.clone(),
            },
            CallObservation {
                client: 0xbbb0,
                server: b,
            },
        ];
        assert!(matches!(
            current_client_offset(&obs),
            Err(DiscoveryError::Ambiguous { .. })
        ));
        // One client only proves nothing.
        let same = [
            CallObservation {
                client: 0xaaa0,
                server: a.clone(),
            },
            CallObservation {
                client: 0xaaa0,
                server: a,
            },
        ];
        assert!(matches!(
            current_client_offset(&same),
            Err(DiscoveryError::NotFound { .. })
        ));
    }

    #[test]
    fn the_command_counter_lies_in_every_window_and_grows() {
        let window = |v_seq: u64, v_other: u64, before: u64, after| {
            let mut s = vec![0u8; 64];
            put_word(&mut s, 16, v_seq);
            put_word(&mut s, 40, v_other); // constant: in the first window only
            put_word(&mut s, 48, before); // a copy taken before INFO counted itself
            CounterWindow {
                before,
                server: s,
                after,
            }
        };
        let w = [
            window(101, 101, 100, 102),
            window(205, 101, 200, 206),
            window(310, 101, 300, 320),
        ];
        assert_eq!(stat_numcommands_offset(&w).unwrap(), 16);
    }

    /// An image with two blocked clients whose argv arrays hold embstr objects.
    fn blocked_image(inline: bool) -> (Image, Vec<BlockedClient>) {
        let mut img = Image::default();
        let mut clients = Vec::new();
        let sets: [&[&[u8]]; 2] = [
            &[b"BLPOP", b"ka", b"5"],
            &[b"BLPOP", b"k1", b"k2", b"k3", b"5"],
        ];
        for (n, args) in sets.iter().enumerate() {
            let base = 0x10_0000 * (n as u64 + 1);
            let argv = base + 0x1000;
            let mut array = Vec::new();
            for (i, a) in args.iter().enumerate() {
                let obj = base + 0x2000 + 0x100 * i as u64;
                let mut o = vec![0u8; 64];
                o[0] = 8 << 4; // OBJ_STRING, EMBSTR
                if inline {
                    o[4] = 4; // hasembval
                    o[8] = a.len() as u8; // sdshdr8 len
                    o[11..11 + a.len()].copy_from_slice(a);
                } else {
                    put_word(&mut o, 8, obj + 19);
                    o[16] = a.len() as u8; // sdshdr8 len
                    o[18] = 1; // sds type 8
                    o[19..19 + a.len()].copy_from_slice(a);
                }
                img.put(obj, o);
                array.extend_from_slice(&obj.to_le_bytes());
            }
            img.put(argv, array);
            let mut c = vec![0u8; CLIENT_BYTES];
            c[72..76].copy_from_slice(&(args.len() as i32).to_le_bytes());
            put_word(&mut c, 80, argv);
            // A field that counts something else, equal to argc for one client only.
            c[200..204].copy_from_slice(&3i32.to_le_bytes());
            clients.push(BlockedClient {
                client: base,
                bytes: c,
                args: args.iter().map(|a| a.to_vec()).collect(),
            });
        }
        (img, clients)
    }

    #[test]
    fn argc_and_argv_are_found_from_two_blocked_clients() {
        let (img, clients) = blocked_image(false);
        assert_eq!(argc_offset(&clients).unwrap(), 72);
        assert_eq!(
            argv_offset(&img, &clients).unwrap(),
            (80, ValueLayout::Pointer)
        );
        let (img, clients) = blocked_image(true);
        assert_eq!(
            argv_offset(&img, &clients).unwrap(),
            (80, ValueLayout::Inline)
        );
        // One argument count proves nothing.
        assert!(argc_offset(&clients[..1]).is_err());
    }

    #[test]
    fn bulklen_is_the_announced_length_in_the_partial_client_only() {
        let (_, mut blocked) = blocked_image(false);
        for c in &mut blocked {
            put_word(&mut c.bytes, 96, u64::MAX); // -1: between arguments
            put_word(&mut c.bytes, 120, u64::MAX); // -1 too, but not in the partial one
        }
        let mut partial = blocked[0].clone();
        put_word(&mut partial.bytes, 96, PARTIAL_BULK as u64);
        assert_eq!(bulklen_offset(&partial, &blocked).unwrap(), 96);
        // A blocked client that still reads an argument is no proof.
        put_word(&mut blocked[1].bytes, 96, 7);
        assert!(bulklen_offset(&partial, &blocked).is_err());
    }

    /// Puts an embstr string object holding `bytes` at `at`.
    fn put_string(img: &mut Image, at: u64, bytes: &[u8]) {
        let mut o = vec![0u8; 64];
        o[0] = 8 << 4; // OBJ_STRING, EMBSTR
        put_word(&mut o, 8, at + 19);
        o[16] = bytes.len() as u8; // sdshdr8 len
        o[18] = 1; // sds type 8
        o[19..19 + bytes.len()].copy_from_slice(bytes);
        img.put(at, o);
    }

    /// Queues (Valkey 9's `parsedCommand`: 48 bytes, `argc` at 4, `argv` at 8, and
    /// `argv_len`, the announced count, at 16) for `clients`, the queue's `len` at 264.
    fn queue_image(img: &mut Image, clients: &mut [BlockedClient], with_queue: bool) {
        for (n, c) in clients.iter_mut().enumerate() {
            let (_, queued) = queued_behind(n);
            let base = 0x50_0000 * (n as u64 + 1);
            let mut array = vec![0u8; 48 * queued.len()];
            for (i, args) in queued.iter().enumerate() {
                let argv = base + 0x1000 * (i as u64 + 1);
                let mut words = Vec::new();
                for (j, a) in args.iter().enumerate() {
                    let obj = argv + 0x100 * (j as u64 + 1);
                    put_string(img, obj, a);
                    words.extend_from_slice(&obj.to_le_bytes());
                }
                img.put(argv, words);
                let e = &mut array[48 * i..48 * (i + 1)];
                e[4..8].copy_from_slice(&(args.len() as i32).to_le_bytes());
                put_word(e, 8, argv);
                // The last one was cut short: more announced than parsed.
                let announced = args.len() + usize::from(i + 1 == queued.len());
                e[16..20].copy_from_slice(&(announced as i32).to_le_bytes());
            }
            img.put(base, array);
            if with_queue {
                put_word(&mut c.bytes, 256, base);
                c.bytes[264..268].copy_from_slice(&(queued.len() as i32).to_le_bytes());
            }
        }
    }

    #[test]
    fn the_command_queue_is_found_with_its_entry_layout_or_is_absent() {
        let (mut img, mut blocked) = blocked_image(false);
        let partial = blocked[0].clone();
        queue_image(&mut img, &mut blocked, true);
        let q = queued_behind(0).1.len();
        assert_eq!(q, 3);
        let queued: Vec<_> = (0..2).map(|n| queued_behind(n).1).collect();
        assert_eq!(
            queue_layout(&img, &blocked, &queued, &partial).unwrap(),
            Some(QueueLayout {
                len: 264,
                stride: 48,
                argc: 4,
                argv: 8
            })
        );
        // A build that leaves pipelined commands unparsed has no queue.
        let (mut img, mut blocked) = blocked_image(false);
        queue_image(&mut img, &mut blocked, false);
        assert_eq!(
            queue_layout(&img, &blocked, &queued, &partial).unwrap(),
            None
        );
    }

    #[test]
    fn the_clients_list_is_the_one_holding_both() {
        let mut img = Image::default();
        let (list, n1, n2, other) = (0x9_0000u64, 0x9_1000u64, 0x9_2000u64, 0x9_3000u64);
        let mut l = vec![0u8; 48];
        put_word(&mut l, 0, n1);
        put_word(&mut l, 40, 2);
        img.put(list, l);
        let node = |next: u64, value: u64| {
            let mut n = vec![0u8; 24];
            put_word(&mut n, 8, next);
            put_word(&mut n, 16, value);
            n
        };
        img.put(n1, node(n2, 0xaaa0));
        img.put(n2, node(0, 0xbbb0));
        // A list holding one of them only.
        let mut l2 = vec![0u8; 48];
        put_word(&mut l2, 0, other);
        put_word(&mut l2, 40, 1);
        img.put(0xa_0000, l2);
        img.put(other, node(0, 0xaaa0));
        let mut server = vec![0u8; 128];
        put_word(&mut server, 64, list);
        put_word(&mut server, 72, 0xa_0000);
        let (off, members) = clients_list_offset(&img, &server, &[0xaaa0, 0xbbb0]).unwrap();
        assert_eq!((off, members), (64, vec![0xaaa0, 0xbbb0]));
        // A broken length is not a list.
        put_word(&mut img.regions[0].1, 40, 3);
        assert!(clients_list_offset(&img, &server, &[0xaaa0, 0xbbb0]).is_err());
    }
}
