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
    pub key: Option<KeyBytes>,
    /// Cluster hash slot of `key`.
    pub slot: Option<u16>,
    /// Arguments of the command (`argc`), 0 for phases.
    pub argc: u32,
    /// `parse` when the fault happened while Redis read and parsed this command's
    /// arguments (before it ran); `None` while it ran.
    pub stage: Option<&'static str>,
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
        }
    }

    /// True for the phase in which Redis reads and parses client input: its faults
    /// belong to the command being parsed, which is only known once it runs.
    pub fn is_parsing(&self) -> bool {
        !self.is_command && self.activity == "networking-read"
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

/// Per-thread latest contexts of one Redis server.
#[derive(Debug, Default)]
pub struct Attributor {
    phases: Vec<Option<&'static str>>,
    key_max: usize,
    keys: KeyPolicy,
    current: HashMap<u32, Arc<Attribution>>,
    /// Per thread: the client and attribution of the last command that had a name.
    last_command: HashMap<u32, (u64, Arc<Attribution>)>,
    contexts_seen: u64,
}

impl Attributor {
    /// `phases[i]` names the function range `i` the kernel reports; `key_max` bounds the
    /// key bytes kept; `keys` says what of a key is kept at all.
    pub fn new(phases: Vec<Option<&'static str>>, key_max: usize, keys: KeyPolicy) -> Attributor {
        Attributor {
            phases,
            key_max,
            keys,
            current: HashMap::new(),
            last_command: HashMap::new(),
            contexts_seen: 0,
        }
    }

    /// Context events processed.
    pub fn contexts_seen(&self) -> u64 {
        self.contexts_seen
    }

    /// Records the new context of a thread.
    pub fn on_context(&mut self, ev: &ContextEvent) {
        self.contexts_seen += 1;
        // After a command ran, Redis frees its arguments (`argc` 0, `cmd` NULL) while the
        // client is still current: those faults finish the same command.
        if ev.phase == phase::COMMAND
            && ev.argc == 0
            && ev.name_len == 0
            && let Some((client, last)) = self.last_command.get(&ev.tid)
            && *client == ev.client
        {
            let cleanup = Arc::new(Attribution {
                stage: Some("cleanup"),
                ..(**last).clone()
            });
            self.current.insert(ev.tid, cleanup);
            return;
        }
        let attribution = Arc::new(self.decode(ev));
        if attribution.is_command && ev.name_len > 0 {
            self.last_command
                .insert(ev.tid, (ev.client, Arc::clone(&attribution)));
        }
        self.current.insert(ev.tid, attribution);
    }

    /// Forgets a thread that exited (bounds memory by live threads).
    pub fn on_thread_exit(&mut self, tid: u32) {
        self.current.remove(&tid);
        self.last_command.remove(&tid);
    }

    /// Attribution of a fault of the server's thread `tid` (`None` before any context).
    pub fn for_thread(&self, tid: u32) -> Option<Arc<Attribution>> {
        self.current.get(&tid).cloned()
    }

    fn decode(&self, ev: &ContextEvent) -> Attribution {
        let name_len = (ev.name_len as usize).min(ev.name.len());
        let name = String::from_utf8_lossy(&ev.name[..name_len]).into_owned();
        match ev.phase {
            phase::COMMAND => {
                let lower = name.to_ascii_lowercase();
                let keyed = ev.flags & context_flags::HAS_KEY != 0
                    && !lower.is_empty()
                    && !KEYLESS_FIRST_ARG.contains(&lower.as_str());
                let int_text;
                let (captured, len): (&[u8], u64) = if ev.flags & context_flags::KEY_INT != 0 {
                    int_text = (ev.key_len as i64).to_string().into_bytes();
                    (&int_text, int_text.len() as u64)
                } else {
                    let n = (ev.key_captured as usize).min(ev.key.len());
                    (&ev.key[..n], ev.key_len)
                };
                // The slot comes from the real key, before it is hidden or cut to
                // --key-bytes; a slot of a key longer than the capture would be wrong.
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
                    key,
                    argc: ev.argc,
                    stage: None,
                }
            }
            phase::THREAD => Attribution::phase(thread_activity(&name)),
            phase::MAIN_OTHER => Attribution::phase("main-other"),
            phase::UNREADABLE => Attribution::phase("unknown"),
            p => {
                let slot = p.wrapping_sub(phase::FIRST_RANGE) as usize;
                let label = self.phases.get(slot).copied().flatten();
                Attribution::phase(label.unwrap_or("unknown"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(tid: u32, ph: u32, name: &[u8], key: &[u8], key_len: u64, flags: u32) -> ContextEvent {
        let mut ev = ContextEvent::zeroed();
        ev.tid = tid;
        ev.phase = ph;
        ev.name[..name.len()].copy_from_slice(name);
        ev.name_len = name.len() as u32;
        ev.key[..key.len()].copy_from_slice(key);
        ev.key_captured = key.len() as u32;
        ev.key_len = key_len;
        ev.flags = flags;
        ev.argc = 3;
        ev
    }

    #[test]
    fn commands_keys_slots_and_phases() {
        let mut a = Attributor::new(
            vec![Some("active-expire"), None, Some("cron")],
            128,
            KeyPolicy::Full,
        );
        a.on_context(&ctx(
            1,
            phase::COMMAND,
            b"set",
            b"{user1}:a",
            9,
            context_flags::HAS_KEY,
        ));
        let at = a.for_thread(1).unwrap();
        assert_eq!(at.activity, "SET");
        assert!(at.is_command);
        assert_eq!(at.key.as_ref().unwrap().bytes, b"{user1}:a");
        assert_eq!(at.slot, Some(key_hash_slot(b"user1")));

        // A keyless command keeps no key even though argv[1] was read.
        a.on_context(&ctx(
            1,
            phase::COMMAND,
            b"evalsha",
            b"abc",
            3,
            context_flags::HAS_KEY,
        ));
        assert_eq!(a.for_thread(1).unwrap().key, None);

        // Integer-encoded key.
        a.on_context(&ctx(
            1,
            phase::COMMAND,
            b"get",
            b"",
            12345,
            context_flags::HAS_KEY | context_flags::KEY_INT,
        ));
        assert_eq!(
            a.for_thread(1).unwrap().key.as_ref().unwrap().bytes,
            b"12345"
        );

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
        let at = a2.for_thread(1).unwrap();
        let k = at.key.as_ref().unwrap();
        assert_eq!(k.bytes.len(), 16);
        assert_eq!(k.original_len, 1 << 20);
        assert!(k.truncated());
        assert_eq!(at.slot, None);

        a.on_context(&ctx(1, phase::FIRST_RANGE + 2, b"", b"", 0, 0));
        assert_eq!(a.for_thread(1).unwrap().activity, "cron");
        a.on_context(&ctx(1, phase::FIRST_RANGE + 1, b"", b"", 0, 0));
        assert_eq!(a.for_thread(1).unwrap().activity, "unknown");
        a.on_context(&ctx(2, phase::THREAD, b"bio_lazy_free", b"", 0, 0));
        assert_eq!(a.for_thread(2).unwrap().activity, "lazyfree");
        a.on_thread_exit(2);
        assert_eq!(a.for_thread(2), None);
        // Garbage lengths from a corrupt record never panic.
        let mut bad = ctx(3, phase::COMMAND, b"set", b"x", 1, context_flags::HAS_KEY);
        bad.name_len = 9999;
        bad.key_captured = 9999;
        a.on_context(&bad);
        assert!(a.for_thread(3).is_some());
    }
}
