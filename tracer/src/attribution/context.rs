//! Turns the kernel's context events into what each fault is attributed to.
//!
//! The kernel emits a context for a Redis thread only when it changes (a new command, a
//! new phase), at the entry of the fault that saw it; a fault belongs to the latest
//! context of its thread. Pure: no I/O.

use std::{collections::HashMap, sync::Arc};

use tracer_common::{ContextEvent, context_flags, phase};

use super::{key_privacy::KeyPolicy, keys::KeyBytes, keyslot::key_hash_slot};

/// What a fault is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attribution {
    /// A Redis command (`SET`), or an internal phase (`cron`, `active-expire`,
    /// `lazyfree`, `fork-child`, `unknown`, ...).
    pub activity: String,
    /// True when `activity` is a command.
    pub is_command: bool,
    /// The command's first key, when it has one.
    /// Shared: every fault of the context carries it, and the key tables keep it.
    pub key: Option<Arc<KeyBytes>>,
    /// Cluster hash slot of `key`.
    pub slot: Option<u16>,
    /// Arguments of the command (`argc`), 0 for phases.
    pub argc: u32,
    /// `parse` when the fault happened while Redis read and parsed this command's
    /// arguments (before it ran), `cleanup` while it freed them; `None` while it ran.
    pub stage: Option<&'static str>,
    /// For a command that names several keys: how many. `key` is the first of them (the
    /// kernel reads `argv[1]` only).
    pub keys_in_command: Option<u32>,
}

impl Attribution {
    /// An internal phase with no key.
    pub fn phase(name: &str) -> Attribution {
        Attribution {
            activity: name.to_string(),
            is_command: false,
            key: None,
            slot: None,
            argc: 0,
            stage: None,
            keys_in_command: None,
        }
    }

    /// The same attribution in another stage.
    pub fn in_stage(&self, stage: &'static str) -> Attribution {
        Attribution {
            stage: Some(stage),
            ..self.clone()
        }
    }
}

/// Commands whose `argv[1]` is not a key (or that have no key at all), lowercase.
/// Their faults are attributed to the command without a key.
const KEYLESS_FIRST_ARG: &[&str] = &[
    "acl",
    "auth",
    "bgrewriteaof",
    "bgsave",
    "bitop",
    "client",
    "cluster",
    "command",
    "config",
    "dbsize",
    "debug",
    "discard",
    "echo",
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "exec",
    "failover",
    "fcall",
    "fcall_ro",
    "flushall",
    "flushdb",
    "function",
    "hello",
    "info",
    "keys",
    "lastsave",
    "latency",
    "lolwut",
    "memory",
    "migrate",
    "module",
    "monitor",
    "multi",
    "object",
    "ping",
    "psubscribe",
    "psync",
    "publish",
    "pubsub",
    "punsubscribe",
    "quit",
    "randomkey",
    "readonly",
    "readwrite",
    "replconf",
    "replicaof",
    "reset",
    "role",
    "save",
    "scan",
    "script",
    "select",
    "shutdown",
    "slaveof",
    "slowlog",
    "spublish",
    "ssubscribe",
    "subscribe",
    "sunsubscribe",
    "swapdb",
    "sync",
    "time",
    "unsubscribe",
    "unwatch",
    "wait",
    "waitaof",
    "xgroup",
    "xinfo",
    "xread",
    "xreadgroup",
];

/// Classifies a thread by the name Redis gives it.
fn thread_activity(name: &str) -> &'static str {
    if name.starts_with("bio_lazy_free") {
        "lazyfree"
    } else if name.starts_with("bio_") {
        "bio"
    } else if name.starts_with("io_thd") {
        "io-thread"
    } else if name.starts_with("jemalloc") {
        "allocator"
    } else {
        "other-thread"
    }
}

/// Commands that name several keys starting at `argv[1]`, with how many from `argc`.
fn keys_in_command(command: &str, argc: u32) -> Option<u32> {
    let n = match command {
        "mset" | "msetnx" => argc.saturating_sub(1) / 2,
        "del" | "unlink" | "exists" | "mget" | "touch" | "watch" | "sinter" | "sunion"
        | "sdiff" | "sinterstore" | "sunionstore" | "sdiffstore" | "pfcount" | "pfmerge" => {
            argc.saturating_sub(1)
        }
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" => argc.saturating_sub(2),
        "rename" | "renamenx" | "smove" | "lmove" | "blmove" | "rpoplpush" | "brpoplpush"
        | "copy" => 2,
        _ => return None,
    };
    (n > 1).then_some(n)
}

/// What a range of the layout stands for.
#[derive(Debug, Clone)]
pub struct PhaseRange {
    /// The phase label (`networking-read`, `cron`, ...).
    pub label: &'static str,
    /// What it does with client input (the kernel searches for the client unless
    /// `None`).
    pub input: Input,
}

/// What a function does with client input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Nothing.
    None,
    /// Reads bytes into the client's query buffer, grows or trims it: memory of the
    /// connection, shared by every command in the buffer, except while Redis reads one
    /// big argument straight into the buffer that becomes that argument.
    Read,
    /// Turns buffered bytes into a command's arguments (allocates them).
    Parse,
}

/// Redis reads an argument at least this long into a buffer of its own that becomes the
/// argument (`PROTO_MBULK_BIG_ARG`, the same in Redis 6.2 to 8 and Valkey).
pub const BIG_ARG: u32 = 32 * 1024;

/// The batch index of the command being parsed, from its client's queue: the first
/// command is parsed into the client itself (queue empty), the next ones into queue
/// entries (the queue's length is then the index).
fn parsing_batch(queue: u32) -> u16 {
    (queue & 0xffff) as u16
}

/// The activity of a main-thread fault taken in a system call (`range`: its x86-64
/// number plus one) whose caller the stack window did not reach: the calls that only
/// move socket data name the direction; anything else stays `main-other`.
fn syscall_activity(range: u32) -> &'static str {
    const READV: u32 = 19;
    const WRITEV: u32 = 20;
    const SENDTO: u32 = 44;
    const RECVFROM: u32 = 45;
    const SENDMSG: u32 = 46;
    const RECVMSG: u32 = 47;
    match range.checked_sub(1) {
        Some(WRITEV | SENDTO | SENDMSG) => "networking-write",
        Some(READV | RECVFROM | RECVMSG) => "networking-read",
        _ => "main-other",
    }
}

/// What the latest context of a thread says about its next faults.
#[derive(Debug, Clone)]
pub enum ThreadContext {
    /// Faults are attributed right away.
    Ready(Arc<Attribution>),
    /// Client `client` is being read or parsed and its key is not parsed yet: faults wait
    /// for that client's own command.
    Awaiting(Awaiting),
}

/// A client whose command is not known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaiting {
    /// The `client *`.
    pub client: u64,
    /// Arguments parsed so far.
    pub argc: u32,
    /// `stat_numcommands` while it is parsed: no command runs between a client's parse
    /// and its own commands, so the command will run with `seq + batch`.
    pub seq: u64,
    /// Which command of a batch parsed ahead is being parsed (Valkey 9 queues a
    /// pipeline's commands before running the first): 0 is the first; always 0 on
    /// builds that parse one command at a time.
    pub batch: u16,
    /// What the faults get if the command never shows: the command name when parsed
    /// (without key), else `unknown-command`; stage `parse`.
    pub fallback: Arc<Attribution>,
}

/// What a context reveals about a client's commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reveal {
    /// The client's command with this `stat_numcommands` runs (commands with a lower
    /// one have run).
    Running { seq: u64 },
    /// The command at `batch` of the batch parsed at `seq` has its key parsed.
    Parsed { seq: u64, batch: u16 },
}

/// A client's command became known: its waiting faults get `command`.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The `client *`.
    pub client: u64,
    /// Arguments parsed so far (faults that waited at more are of an earlier command).
    pub argc: u32,
    /// Which of the client's commands it is.
    pub reveal: Reveal,
    /// The command, in stage `parse`.
    pub command: Arc<Attribution>,
}

/// Per-thread latest contexts of one Redis server.
#[derive(Debug, Default)]
pub struct Attributor {
    ranges: Vec<PhaseRange>,
    key_max: usize,
    keys: KeyPolicy,
    current: HashMap<u32, ThreadContext>,
    /// Per thread: the client, `stat_numcommands` and attribution of the last command
    /// that had a name.
    last_command: HashMap<u32, (u64, u64, Arc<Attribution>)>,
    contexts_seen: u64,
}

impl Attributor {
    /// `ranges[i]` says what the kernel's range `i` is; `key_max` bounds the key bytes
    /// kept; `keys` says what of a key is kept at all.
    pub fn new(ranges: Vec<PhaseRange>, key_max: usize, keys: KeyPolicy) -> Attributor {
        Attributor {
            ranges,
            key_max,
            keys,
            ..Attributor::default()
        }
    }

    /// Context events processed.
    pub fn contexts_seen(&self) -> u64 {
        self.contexts_seen
    }

    /// Records the new context of a thread. Returns the client whose command it reveals,
    /// if any (its waiting faults belong to that command).
    pub fn on_context(&mut self, ev: &ContextEvent) -> Option<Resolved> {
        self.contexts_seen += 1;
        let tid = ev.header.tid;
        let (context, resolved) = match ev.phase {
            phase::COMMAND => self.command_context(ev),
            phase::RANGE => self.range_context(ev),
            _ => (ThreadContext::Ready(Arc::new(self.phase_of(ev))), None),
        };
        self.current.insert(tid, context);
        resolved
    }

    fn command_context(&mut self, ev: &ContextEvent) -> (ThreadContext, Option<Resolved>) {
        let tid = ev.header.tid;
        // After a command ran, Redis frees its arguments (`argc` 0, no name) while the
        // client is still current: those faults finish the same command.
        let last = self.last_command.get(&tid);
        if ev.argc == 0
            && ev.name_len == 0
            && let Some((client, _, last)) = last
            && *client == ev.client
        {
            let cleanup = Arc::new(last.in_stage("cleanup"));
            return (ThreadContext::Ready(cleanup), None);
        }
        let command = Arc::new(self.decode_command(ev));
        if let Some((client, seq, last)) = last
            && *client == ev.client
        {
            // The same client and counter with new arguments: a command Redis rewrote
            // for propagation (SET EX as SET PXAT, SPOP as SREM, GETDEL as DEL) is still
            // the command that runs. Except EXEC's: its queued commands run under its
            // client, the first one before EXEC is counted.
            if *seq == ev.seq && last.activity != "EXEC" {
                return (ThreadContext::Ready(Arc::clone(last)), None);
            }
            // Counted, with its arguments still there: Redis is freeing them (`argc`
            // drops to 0 only once all are freed).
            if ev.seq == seq.wrapping_add(1)
                && command.activity == last.activity
                && command.key == last.key
            {
                let cleanup = Arc::new(last.in_stage("cleanup"));
                return (ThreadContext::Ready(cleanup), None);
            }
        }
        if ev.name_len > 0 {
            self.last_command
                .insert(tid, (ev.client, ev.seq, Arc::clone(&command)));
        }
        let resolved = Resolved {
            client: ev.client,
            argc: ev.argc,
            reveal: Reveal::Running { seq: ev.seq },
            command: Arc::new(command.in_stage("parse")),
        };
        (ThreadContext::Ready(command), Some(resolved))
    }

    fn range_context(&mut self, ev: &ContextEvent) -> (ThreadContext, Option<Resolved>) {
        let range = self.ranges.get(ev.range as usize);
        let label = range.map_or("unknown", |r| r.label);
        let input = range.map_or(Input::None, |r| r.input);
        let big_arg = ev.client != 0 && ev.bulk_len >= BIG_ARG;
        if input == Input::None || (input == Input::Read && !big_arg) {
            // Buffer work belongs to the connection, not to one of its commands.
            return (
                ThreadContext::Ready(Arc::new(Attribution::phase(label))),
                None,
            );
        }
        if ev.client == 0 {
            // Parsing input of a client the kernel could not find: never guessed.
            let unknown = Attribution::phase(label).in_stage("parse");
            return (ThreadContext::Ready(Arc::new(unknown)), None);
        }
        let command = self.decode_command(ev);
        if command.key.is_some() || ev.header.flags & context_flags::HAS_KEY != 0 {
            let parse = Arc::new(command.in_stage("parse"));
            let resolved = Resolved {
                client: ev.client,
                argc: ev.argc,
                reveal: Reveal::Parsed {
                    seq: ev.seq,
                    batch: parsing_batch(ev.queue),
                },
                command: Arc::clone(&parse),
            };
            return (ThreadContext::Ready(parse), Some(resolved));
        }
        let fallback = if ev.name_len > 0 {
            command.in_stage("parse")
        } else {
            Attribution {
                activity: "unknown-command".into(),
                is_command: true,
                ..Attribution::phase("")
            }
            .in_stage("parse")
        };
        let awaiting = Awaiting {
            client: ev.client,
            argc: ev.argc,
            seq: ev.seq,
            batch: parsing_batch(ev.queue),
            fallback: Arc::new(fallback),
        };
        (ThreadContext::Awaiting(awaiting), None)
    }

    /// Forgets a thread that exited (bounds memory by live threads).
    pub fn on_thread_exit(&mut self, tid: u32) {
        self.current.remove(&tid);
        self.last_command.remove(&tid);
    }

    /// The context of thread `tid` (`None` before any).
    pub fn for_thread(&self, tid: u32) -> Option<&ThreadContext> {
        self.current.get(&tid)
    }

    fn phase_of(&self, ev: &ContextEvent) -> Attribution {
        let name_len = (ev.name_len as usize).min(ev.name.len());
        match ev.phase {
            phase::THREAD => Attribution::phase(thread_activity(&String::from_utf8_lossy(
                &ev.name[..name_len],
            ))),
            phase::MAIN_OTHER => Attribution::phase(syscall_activity(ev.range)),
            _ => Attribution::phase("unknown"),
        }
    }

    fn decode_command(&self, ev: &ContextEvent) -> Attribution {
        let name_len = (ev.name_len as usize).min(ev.name.len());
        let lower = String::from_utf8_lossy(&ev.name[..name_len]).to_ascii_lowercase();
        let keyed = ev.header.flags & context_flags::HAS_KEY != 0
            && !lower.is_empty()
            && !KEYLESS_FIRST_ARG.contains(&lower.as_str());
        let n = (ev.key_captured as usize).min(ev.key.len());
        let (captured, len) = (&ev.key[..n], ev.key_len);
        // The slot comes from the real key, before it is hidden or cut to --key-bytes; a
        // slot of a key longer than the capture would be wrong.
        let whole = captured.len() as u64 >= len;
        let slot = (keyed && whole).then(|| key_hash_slot(captured));
        let key = if keyed {
            self.keys.apply(captured, len, self.key_max)
        } else {
            None
        };
        Attribution {
            activity: if lower.is_empty() {
                "unknown-command".into()
            } else {
                lower.to_ascii_uppercase()
            },
            is_command: true,
            slot,
            keys_in_command: keyed.then(|| keys_in_command(&lower, ev.argc)).flatten(),
            key: key.map(Arc::new),
            argc: ev.argc,
            stage: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn ctx(
        tid: u32,
        ph: u32,
        name: &[u8],
        key: &[u8],
        key_len: u64,
        flags: u32,
    ) -> ContextEvent {
        let mut ev = ContextEvent::zeroed();
        ev.header.tid = tid;
        ev.header.tgid = tid;
        ev.header.flags = flags;
        ev.phase = ph;
        ev.name[..name.len()].copy_from_slice(name);
        ev.name_len = name.len() as u32;
        ev.key[..key.len()].copy_from_slice(key);
        ev.key_captured = key.len() as u32;
        ev.key_len = key_len;
        ev.argc = 3;
        ev.client = 0xc1;
        // Each a command of its own unless a test says otherwise.
        ev.seq = NEXT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ev
    }

    static NEXT_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 32);

    fn ready(a: &Attributor, tid: u32) -> Arc<Attribution> {
        match a.for_thread(tid) {
            Some(ThreadContext::Ready(at)) => Arc::clone(at),
            other => panic!("not ready: {other:?}"),
        }
    }

    fn ranges() -> Vec<PhaseRange> {
        vec![
            PhaseRange {
                label: "active-expire",
                input: Input::None,
            },
            PhaseRange {
                label: "networking-read",
                input: Input::Parse,
            },
            PhaseRange {
                label: "cron",
                input: Input::None,
            },
            PhaseRange {
                label: "networking-read",
                input: Input::Read,
            },
        ]
    }

    #[test]
    fn kernel_work_in_a_socket_call_names_its_direction() {
        assert_eq!(syscall_activity(0), "main-other");
        assert_eq!(syscall_activity(20 + 1), "networking-write"); // writev
        assert_eq!(syscall_activity(46 + 1), "networking-write"); // sendmsg
        assert_eq!(syscall_activity(45 + 1), "networking-read"); // recvfrom
        // write(2) also writes files (AOF): not told apart, so not named.
        assert_eq!(syscall_activity(1 + 1), "main-other");
    }

    #[test]
    fn commands_keys_slots_and_phases() {
        let mut a = Attributor::new(ranges(), 128, KeyPolicy::Full);
        let r = a.on_context(&ctx(
            1,
            phase::COMMAND,
            b"set",
            b"{user1}:a",
            9,
            context_flags::HAS_KEY,
        ));
        let at = ready(&a, 1);
        assert_eq!(at.activity, "SET");
        assert!(at.is_command);
        assert_eq!(at.key.as_ref().unwrap().bytes, b"{user1}:a");
        assert_eq!(at.slot, Some(key_hash_slot(b"user1")));
        assert_eq!(at.keys_in_command, None);
        // A command context reveals its client's command, in the parse stage.
        let r = r.unwrap();
        assert_eq!((r.client, r.command.stage), (0xc1, Some("parse")));

        // A keyless command keeps no key even though argv[1] was read.
        a.on_context(&ctx(
            1,
            phase::COMMAND,
            b"evalsha",
            b"abc",
            3,
            context_flags::HAS_KEY,
        ));
        assert_eq!(ready(&a, 1).key, None);

        // A command outside the list (a module's, or unknown) keeps its first argument as
        // its key, as the README's Privacy section says.
        a.on_context(&ctx(
            1,
            phase::COMMAND,
            b"ft.search",
            b"idx",
            3,
            context_flags::HAS_KEY,
        ));
        assert_eq!(ready(&a, 1).key.as_ref().unwrap().bytes, b"idx");

        // A multi-key command names its first key and how many it has.
        let mut del = ctx(1, phase::COMMAND, b"del", b"k1", 2, context_flags::HAS_KEY);
        del.argc = 11;
        a.on_context(&del);
        assert_eq!(ready(&a, 1).keys_in_command, Some(10));

        // Truncated key: original length kept, no slot.
        let long = vec![b'k'; 200];
        let mut a2 = Attributor::new(vec![], 16, KeyPolicy::Full);
        a2.on_context(&ctx(
            1,
            phase::COMMAND,
            b"set",
            &long,
            1 << 20,
            context_flags::HAS_KEY,
        ));
        let at = ready(&a2, 1);
        let k = at.key.as_ref().unwrap();
        assert_eq!((k.bytes.len(), k.original_len), (16, 1 << 20));
        assert!(k.truncated());
        assert_eq!(at.slot, None);

        let mut cron = ctx(1, phase::RANGE, b"", b"", 0, 0);
        cron.range = 2;
        a.on_context(&cron);
        assert_eq!(ready(&a, 1).activity, "cron");
        cron.range = 9;
        a.on_context(&cron);
        assert_eq!(ready(&a, 1).activity, "unknown");
        a.on_context(&ctx(2, phase::THREAD, b"bio_lazy_free", b"", 0, 0));
        assert_eq!(ready(&a, 2).activity, "lazyfree");
        a.on_thread_exit(2);
        assert!(a.for_thread(2).is_none());
        // Garbage lengths from a corrupt record never panic.
        let mut bad = ctx(3, phase::COMMAND, b"set", b"x", 1, context_flags::HAS_KEY);
        bad.name_len = 9999;
        bad.key_captured = 9999;
        a.on_context(&bad);
        assert!(a.for_thread(3).is_some());
    }

    #[test]
    fn parsing_a_client_with_its_key_is_attributed_at_once() {
        let mut a = Attributor::new(ranges(), 128, KeyPolicy::Full);
        let mut parse = ctx(1, phase::RANGE, b"SET", b"k7", 2, context_flags::HAS_KEY);
        parse.range = 1;
        parse.argc = 2;
        let r = a.on_context(&parse).unwrap();
        let at = ready(&a, 1);
        assert_eq!((at.activity.as_str(), at.stage), ("SET", Some("parse")));
        assert_eq!(at.key.as_ref().unwrap().bytes, b"k7");
        assert_eq!((r.client, r.argc), (0xc1, 2));
    }

    #[test]
    fn reading_into_the_query_buffer_is_the_connection_unless_a_big_argument() {
        let mut a = Attributor::new(ranges(), 128, KeyPolicy::Full);
        let mut read = ctx(1, phase::RANGE, b"SET", b"k7", 2, context_flags::HAS_KEY);
        read.range = 3;
        read.argc = 2;
        read.bulk_len = 1024;
        assert!(a.on_context(&read).is_none());
        let at = ready(&a, 1);
        assert_eq!(
            (at.activity.as_str(), at.stage, at.key.is_none()),
            ("networking-read", None, true)
        );
        // A value of 32 KiB or more is read straight into the buffer that becomes it.
        read.bulk_len = BIG_ARG;
        let r = a.on_context(&read).unwrap();
        let at = ready(&a, 1);
        assert_eq!((at.activity.as_str(), at.stage), ("SET", Some("parse")));
        assert_eq!(at.key.as_ref().unwrap().bytes, b"k7");
        assert_eq!(r.client, 0xc1);
    }

    #[test]
    fn parsing_before_the_key_waits_for_the_client() {
        let mut a = Attributor::new(ranges(), 128, KeyPolicy::Full);
        let mut parse = ctx(1, phase::RANGE, b"SET", b"", 0, 0);
        parse.range = 1;
        parse.argc = 1;
        assert!(a.on_context(&parse).is_none());
        match a.for_thread(1) {
            Some(ThreadContext::Awaiting(w)) => {
                assert_eq!((w.client, w.argc), (0xc1, 1));
                assert_eq!(w.fallback.activity, "SET");
                assert_eq!(w.fallback.key, None);
            }
            other => panic!("{other:?}"),
        }
        // Nothing parsed yet: the fallback is an unknown command.
        parse.argc = 0;
        parse.name_len = 0;
        a.on_context(&parse);
        match a.for_thread(1) {
            Some(ThreadContext::Awaiting(w)) => assert_eq!(w.fallback.activity, "unknown-command"),
            other => panic!("{other:?}"),
        }
        // A client the kernel could not find is never guessed.
        parse.client = 0;
        a.on_context(&parse);
        let at = ready(&a, 1);
        assert_eq!(
            (at.activity.as_str(), at.stage, at.is_command),
            ("networking-read", Some("parse"), false)
        );
    }

    #[test]
    fn cleanup_after_a_command_is_that_command() {
        let mut a = Attributor::new(ranges(), 128, KeyPolicy::Full);
        a.on_context(&ctx(
            1,
            phase::COMMAND,
            b"set",
            b"k",
            1,
            context_flags::HAS_KEY,
        ));
        let mut cleanup = ctx(1, phase::COMMAND, b"", b"", 0, 0);
        cleanup.argc = 0;
        assert!(a.on_context(&cleanup).is_none());
        let at = ready(&a, 1);
        assert_eq!((at.activity.as_str(), at.stage), ("SET", Some("cleanup")));
        // Another client's freed arguments are not this command's.
        cleanup.client = 0xc2;
        a.on_context(&cleanup);
        assert_eq!(ready(&a, 1).activity, "unknown-command");
    }

    /// A command context with the client and counter of the one before it.
    fn same_command(name: &[u8], key: &[u8], seq: u64) -> ContextEvent {
        let mut ev = ctx(
            1,
            phase::COMMAND,
            name,
            key,
            key.len() as u64,
            context_flags::HAS_KEY,
        );
        ev.seq = seq;
        ev
    }

    #[test]
    fn a_rewritten_command_keeps_its_name_and_execs_commands_get_theirs() {
        let mut a = Attributor::new(ranges(), 128, KeyPolicy::Full);
        // SPOP rewritten as SREM for propagation: still SPOP.
        assert!(a.on_context(&same_command(b"spop", b"s", 7)).is_some());
        assert!(a.on_context(&same_command(b"srem", b"s", 7)).is_none());
        assert_eq!(ready(&a, 1).activity, "SPOP");
        // EXEC's first queued command runs before EXEC is counted: it is itself.
        a.on_context(&same_command(b"exec", b"", 8));
        a.on_context(&same_command(b"set", b"k1", 8));
        let at = ready(&a, 1);
        assert_eq!(at.activity, "SET");
        assert_eq!(at.key.as_ref().unwrap().bytes, b"k1");
        a.on_context(&same_command(b"set", b"k2", 9));
        assert_eq!(ready(&a, 1).key.as_ref().unwrap().bytes, b"k2");
    }

    #[test]
    fn freeing_a_commands_arguments_is_its_cleanup_and_the_next_command_is_new() {
        let mut a = Attributor::new(ranges(), 128, KeyPolicy::Full);
        a.on_context(&same_command(b"mset", b"m:0", 20));
        // Counted (21), arguments not yet freed: MSET's cleanup.
        assert!(a.on_context(&same_command(b"mset", b"m:0", 21)).is_none());
        let at = ready(&a, 1);
        assert_eq!((at.activity.as_str(), at.stage), ("MSET", Some("cleanup")));
        // The next command runs with that counter too: itself, not MSET's.
        assert!(a.on_context(&same_command(b"del", b"key:0", 21)).is_some());
        let at = ready(&a, 1);
        assert_eq!((at.activity.as_str(), at.stage), ("DEL", None));
        assert_eq!(at.key.as_ref().unwrap().bytes, b"key:0");
    }
}
