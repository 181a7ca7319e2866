//! The edge between a recording and a live Redis server: turning attribution on
//! (discovering the layout, feeding the kernel), and labelling forks with Redis's own
//! numbers. Everything here is I/O; the pure parts live in `attribution`, `analysis` and
//! `redis::discover`.

use std::{
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;
use tracer_common::{ForkCallEvent, KEY_CAP, PHASE_RANGES, ServerLayout, features};

use super::{
    cluster,
    discover::{Calibration, Discovered, DiscoveryError, walk_list},
    info::{ConnSpec, RedisConn},
    phases::{self, Range},
    process_memory::{Memory, ProcessMemory},
    symbols::{ServerSymbols, SymbolError},
};
use crate::{
    analysis::fork_epochs::EpochRedisInfo,
    analysis::stream::AttributionOptions,
    json_fields::{str_at, u64_at},
    kernel::{events::KernelEvent, loader::Probes},
};

/// Timeout for every INFO round trip: a slow server must never stall tracing for long.
const INFO_TIMEOUT: Duration = Duration::from_millis(500);

/// Why attribution cannot be turned on for a server (the server is still traced).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No usable symbols.
    #[error("{0}")]
    Symbols(#[from] SymbolError),
    /// The binary does not export `server`.
    #[error(
        "the binary exports no `server` symbol (not redis-server/valkey-server, or built without -rdynamic)"
    )]
    NoServerSymbol,
    /// No connection to calibrate with.
    #[error("the layout was not discovered: {0}")]
    NoConnection(String),
    /// Discovery failed.
    #[error("the layout was not discovered: {0}")]
    Discovery(#[from] DiscoveryError),
    /// The server's memory could not be opened.
    #[error("cannot read the server's memory: {0}")]
    Memory(#[from] std::io::Error),
    /// The kernel refused the layout.
    #[error("{0}")]
    Probe(#[from] crate::kernel::loader::LoadError),
    /// A cluster node whose slots could not be found, or that serves none.
    #[error("the layout was not discovered: {0}")]
    Cluster(String),
}

/// Which server a run traced: the part of the timeline's `redis` object that every
/// reader shows (written flattened into it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedisIdentity {
    /// `redis` or `valkey` (from INFO).
    pub product: String,
    /// The server's version (`valkey_version` for Valkey, else `redis_version`); empty
    /// when a file does not say.
    pub version: String,
    /// INFO `role` at start.
    pub role: Option<String>,
    /// TCP port INFO was read on.
    pub port: Option<u16>,
}

impl RedisIdentity {
    /// Reads a timeline's `redis` object leniently: absent or mistyped fields are
    /// unknown (`product` is absent in files from before Valkey support: `redis`).
    pub fn from_json(r: &Value) -> RedisIdentity {
        RedisIdentity {
            product: str_at(r, "product").unwrap_or("redis").to_string(),
            version: str_at(r, "version").unwrap_or_default().to_string(),
            role: str_at(r, "role").map(str::to_string),
            port: u64_at(r, "port").and_then(|p| u16::try_from(p).ok()),
        }
    }
}

/// What the timeline records about the Redis side of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RedisRunInfo {
    /// Product, version, role and port.
    #[serde(flatten)]
    pub server: RedisIdentity,
    /// The offsets attribution reads, as discovered and proved on this process.
    pub layout: Discovered,
    /// INFO `mem_allocator`.
    pub allocator: Option<String>,
    /// Observations that proved the layout.
    pub checks: Vec<String>,
    /// True when INFO was reachable.
    pub info_reachable: bool,
    /// Phases the build's symbols allow (labels of the stack ranges).
    pub phases: Vec<&'static str>,
    /// Whether parse-stage faults look for their client (`linkClient`/`unlinkClient`
    /// probed and the client table seeded).
    pub client_search: bool,
}

/// A Redis server being traced with attribution on.
pub struct RedisSession {
    pid: u32,
    symbols: ServerSymbols,
    spec: Option<ConnSpec>,
    conn: Option<RedisConn>,
    kernel: ServerLayout,
    ranges: Vec<Range>,
    /// Children whose exit we saw, waiting for Redis to publish the fork's CoW size.
    pending_cow: Vec<(u32, String, Instant)>,
    /// Run facts for the timeline.
    pub info: RedisRunInfo,
}

impl std::fmt::Debug for RedisSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSession")
            .field("pid", &self.pid)
            .field("version", &self.info.server.version)
            .finish()
    }
}

/// What the session needs from the recording to calibrate.
pub struct Kernel<'a> {
    /// The loaded programs.
    pub probes: &'a mut Probes,
    /// Decoded ring-buffer records.
    pub events: &'a Receiver<Vec<KernelEvent>>,
    /// Records that arrived meanwhile and are not the session's: the caller processes them.
    pub stash: &'a mut Vec<KernelEvent>,
}

impl RedisSession {
    /// Discovers `pid`'s layout and hands it to the kernel under index `server`. `spec` is
    /// the user's `--redis` target; without it, `127.0.0.1:<listening port>` is tried.
    /// Returns the warnings to print once.
    pub fn start(
        pid: u32,
        spec: Option<ConnSpec>,
        key_max: usize,
        server: u32,
        kernel: Kernel<'_>,
    ) -> Result<(RedisSession, Vec<String>), SessionError> {
        let symbols = ServerSymbols::read(pid)?;
        let server_sym = symbols.get("server").ok_or(SessionError::NoServerSymbol)?;
        let spec = spec.or_else(|| {
            let port = super::locate::tcp_ports_of(pid).into_iter().next()?;
            super::info::parse_target(&format!("127.0.0.1:{port}")).ok()
        });
        let mut open = {
            let spec = spec.clone();
            move || -> Option<RedisConn> {
                spec.as_ref()
                    .and_then(|s| RedisConn::open(s, INFO_TIMEOUT).ok())
            }
        };
        let mut conn = open().ok_or_else(|| {
            SessionError::NoConnection(match &spec {
                Some(s) => format!(
                    "Redis at {s} is unreachable (calibration needs a connection; pass --redis redis://user:pass@host:port)"
                ),
                None => "the server listens on no TCP port (pass --redis)".into(),
            })
        })?;
        let key_tag = cluster_key_tag(&mut conn)?;
        let mem = ProcessMemory::open(pid)?;
        let (discovered, _) = Calibration {
            pid,
            exe: symbols.exe.clone(),
            server: server_sym,
            mem: &mem,
            probes: &mut *kernel.probes,
            events: kernel.events,
            stash: &mut *kernel.stash,
            key_tag,
        }
        .run(&mut open)?;
        let mut warnings = Vec::new();
        let list = server_sym.addr + u64::from(discovered.clients);
        let client_search = match kernel.probes.attach_client_probes(&symbols.exe, pid) {
            Ok(()) => {
                seed_live_clients(&mut *kernel.probes, &mem, pid, list)?;
                true
            }
            Err(e) => {
                warnings.push(format!(
                    "cannot probe createClient/linkClient/unlinkClient ({e}): faults while Redis reads a command have no client, key or command"
                ));
                false
            }
        };
        let (product, version, allocator, role) = describe(&mut conn);
        let ranges = phases::ranges(&symbols);
        let spans: Vec<(u64, u64)> = ranges.iter().map(|r| (r.lo, r.hi)).collect();
        let wrappers = phases::allocator_wrappers(symbols.functions());
        let phase_base =
            kernel
                .probes
                .load_phase_table(symbols.identity()?, symbols.text, &spans, &wrappers)?;
        let mut layout = kernel_layout(
            pid,
            server_sym.addr,
            &symbols,
            &discovered,
            &ranges,
            key_max,
            client_search,
        );
        layout.phase_base = phase_base;
        // Only an allocator outside the executable is told apart (by where the faulting
        // instruction is); jemalloc builds link theirs in.
        if allocator.as_deref().is_some_and(|a| a.starts_with("libc")) && !wrappers.is_empty() {
            layout.features |= features::ALLOCATOR;
        }
        kernel.probes.set_server(server, layout)?;
        let info = RedisRunInfo {
            server: RedisIdentity {
                product: product.into(),
                version,
                role,
                port: spec.as_ref().and_then(|s| s.tcp()).map(|(_, p)| p),
            },
            allocator,
            checks: discovered.checks.clone(),
            layout: discovered,
            info_reachable: true,
            phases: distinct_labels(&ranges),
            client_search,
        };
        Ok((
            RedisSession {
                pid,
                symbols,
                spec,
                conn: Some(conn),
                kernel: layout,
                ranges,
                pending_cow: Vec::new(),
                info,
            },
            warnings,
        ))
    }

    /// What the kernel got.
    pub fn kernel_layout(&self) -> ServerLayout {
        self.kernel
    }

    /// What the analyzer needs.
    pub fn attribution_options(
        &self,
        top_n: usize,
        keys: crate::attribution::key_privacy::KeyPolicy,
    ) -> AttributionOptions {
        AttributionOptions {
            keys,
            ranges: self.ranges.iter().map(|r| r.phase.clone()).collect(),
            key_max: self.kernel.key_max as usize,
            top_n,
            key_capacity: (top_n * 50).clamp(1000, 20_000),
        }
    }

    /// The INFO connection spec, if any (for the sampler's own connection).
    pub fn spec(&self) -> Option<&ConnSpec> {
        self.spec.as_ref()
    }

    /// Why Redis forked, from the return addresses of its `fork()` call: the reason and
    /// how it was found.
    pub fn fork_reason(&mut self, call: &ForkCallEvent) -> Option<(String, &'static str)> {
        let n = (call.frame_count as usize).min(call.frames.len());
        let functions = call.frames[..n]
            .iter()
            .filter_map(|&a| self.symbols.function_at(a));
        let reason = phases::fork_reason(functions)?;
        // A full sync started by a replica while a BGSAVE already runs shares that save:
        // replicas waiting for it tell.
        if reason == "bgsave"
            && let Some(conn) = self.conn.as_mut()
            && let Ok(repl) = conn.info("replication")
            && repl.replicas().iter().any(|r| r.state == "wait_bgsave")
        {
            return Some(("replication".into(), "fork() caller + INFO replication"));
        }
        Some((reason.to_string(), "fork() caller"))
    }

    /// Redis's own numbers for a fork just made, and its reason when the stack did not
    /// name it (the title the child gives itself).
    pub fn on_fork(&mut self, child: u32) -> (Option<String>, EpochRedisInfo) {
        let mut info = EpochRedisInfo::default();
        if let Some(conn) = self.conn.as_mut()
            && let Ok(stats) = conn.info("stats")
        {
            info.latest_fork_usec = stats.get_u64("latest_fork_usec");
        }
        let reason = child_title_reason(child);
        if reason.is_some() {
            info.reason_source = "child process title".into();
        }
        (reason.map(str::to_string), info)
    }

    /// Starts waiting for the CoW size Redis reports for the fork of `child` (`reason`
    /// says which INFO field).
    pub fn expect_cow_size(&mut self, child: u32, reason: &str) {
        if !self.pending_cow.iter().any(|(c, _, _)| *c == child) {
            self.pending_cow
                .push((child, reason.to_string(), Instant::now()));
        }
    }

    /// Whether the CoW size of `child`'s fork is still awaited.
    pub fn awaits_cow_size(&self, child: u32) -> bool {
        self.pending_cow.iter().any(|(c, _, _)| *c == child)
    }

    /// True while some exited child's CoW size is still awaited.
    pub fn has_pending(&self, exited: &dyn Fn(u32) -> bool) -> bool {
        self.conn.is_some() && self.pending_cow.iter().any(|(c, _, _)| exited(*c))
    }

    /// Checks, without blocking, whether Redis has published the CoW size of forks whose
    /// children exited; returns `(child, bytes)` for each one now known.
    pub fn poll_cow_sizes(&mut self, exited: &dyn Fn(u32) -> bool) -> Vec<(u32, u64)> {
        let mut done = Vec::new();
        let Some(conn) = self.conn.as_mut() else {
            self.pending_cow.clear();
            return done;
        };
        if self.pending_cow.iter().all(|(c, _, _)| !exited(*c)) {
            return done;
        }
        let Ok(p) = conn.info("persistence") else {
            return done;
        };
        let mut keep = Vec::new();
        for (child, reason, since) in self.pending_cow.drain(..) {
            if !exited(child) {
                keep.push((child, reason, since));
                continue;
            }
            let (busy, size) = if reason == "aof-rewrite" {
                (
                    p.get_flag("aof_rewrite_in_progress"),
                    p.get_u64("aof_last_cow_size"),
                )
            } else {
                (
                    p.get_flag("rdb_bgsave_in_progress"),
                    p.get_u64("rdb_last_cow_size"),
                )
            };
            match (busy, size) {
                (Some(false), Some(bytes)) => done.push((child, bytes)),
                _ if since.elapsed() > Duration::from_secs(30) => {}
                _ => keep.push((child, reason, since)),
            }
        }
        self.pending_cow = keep;
        done
    }
}

/// On a node in cluster mode, the hash tag calibration's keys need (its blocking
/// commands must run on this node); `None` outside cluster mode.
fn cluster_key_tag(conn: &mut RedisConn) -> Result<Option<String>, SessionError> {
    let map = match cluster::query(conn) {
        Ok(Some(map)) => map,
        Ok(None) => return Ok(None),
        Err(e) => {
            return Err(SessionError::Cluster(format!(
                "cluster map unreadable: {e}"
            )));
        }
    };
    cluster::served_hash_tag(&map).map(Some).ok_or_else(|| {
        SessionError::Cluster(
            "this cluster node serves no hash slot (a replica, or a master without slots): \
             the calibration's blocking commands would be redirected to another node"
                .into(),
        )
    })
}

/// The kernel's view of a server.
fn kernel_layout(
    pid: u32,
    server_addr: u64,
    symbols: &ServerSymbols,
    d: &Discovered,
    ranges: &[Range],
    key_max: usize,
    client_search: bool,
) -> ServerLayout {
    let mut features = 0;
    if d.values == "inline" {
        features |= features::INLINE_VALUES;
    }
    if client_search {
        features |= features::CLIENT_SEARCH;
    }
    let mut layout = ServerLayout {
        server_addr,
        text_lo: symbols.text.0,
        text_hi: symbols.text.1,
        tgid: pid,
        features,
        off_current_client: d.current_client,
        off_seq: d.stat_numcommands,
        off_argc: d.client_argc,
        off_argv: d.client_argv,
        off_bulklen: d.client_bulklen,
        off_queue: d.client_queue.map_or(0, |q| q.len),
        queue_stride: d.client_queue.map_or(0, |q| q.stride),
        queue_argc: d.client_queue.map_or(0, |q| q.argc as u16),
        queue_argv: d.client_queue.map_or(0, |q| q.argv as u16),
        key_max: key_max.min(KEY_CAP) as u32,
        range_count: ranges.len().min(PHASE_RANGES) as u32,
        ..ServerLayout::default()
    };
    for (i, r) in ranges.iter().take(PHASE_RANGES).enumerate() {
        if r.phase.input != crate::attribution::context::Input::None {
            layout.range_client_mask |= 1 << i;
        }
    }
    layout
}

/// The phase labels of `ranges`, each once, in order (several functions share a label).
/// Puts the server's live clients in the kernel's table. Walked once the probes are on:
/// a client freed before (the calibration's own connections) must not stay in the
/// table, where its reused memory would pass for a client.
fn seed_live_clients(
    probes: &mut Probes,
    mem: &ProcessMemory,
    pid: u32,
    list_field: u64,
) -> Result<(), SessionError> {
    let list = mem.u64(list_field)?;
    let live = walk_list(mem, list).unwrap_or_default();
    probes.seed_clients(pid, &live)?;
    Ok(())
}

/// Product, version, allocator and role, from INFO (empty or `None` where it fails).
fn describe(conn: &mut RedisConn) -> (&'static str, String, Option<String>, Option<String>) {
    let server_info = conn.info("server").ok();
    let valkey = server_info.as_ref().and_then(|i| i.get("valkey_version"));
    let version = valkey
        .or_else(|| server_info.as_ref().and_then(|i| i.get("redis_version")))
        .unwrap_or("")
        .to_string();
    let product = if valkey.is_some() { "valkey" } else { "redis" };
    let allocator = conn
        .info("memory")
        .ok()
        .and_then(|i| i.get("mem_allocator").map(str::to_string));
    let role = conn
        .info("replication")
        .ok()
        .and_then(|r| r.get("role").map(str::to_string));
    (product, version, allocator, role)
}

fn distinct_labels(ranges: &[Range]) -> Vec<&'static str> {
    let mut labels: Vec<&'static str> = Vec::new();
    for r in ranges {
        if !labels.contains(&r.phase.label) {
            labels.push(r.phase.label);
        }
    }
    labels
}

fn child_title_reason(child: u32) -> Option<&'static str> {
    let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
    let title = String::from_utf8_lossy(&cmdline);
    let title = title
        .strip_prefix("redis-")
        .or_else(|| title.strip_prefix("valkey-"))?;
    if title.starts_with("rdb-to-slaves") || title.starts_with("rdb-to-replicas") {
        Some("replication")
    } else if title.starts_with("rdb-bgsave") {
        Some("bgsave")
    } else if title.starts_with("aof-rewrite") {
        Some("aof-rewrite")
    } else if title.starts_with("module-fork") {
        Some("module")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::RedisIdentity;

    #[test]
    fn the_identity_reads_back_what_it_writes() {
        let id = RedisIdentity {
            product: "valkey".into(),
            version: "9.1.2".into(),
            role: Some("master".into()),
            port: Some(6379),
        };
        let written = serde_json::to_value(&id).unwrap();
        assert_eq!(RedisIdentity::from_json(&written), id);
    }

    #[test]
    fn the_identity_is_read_leniently() {
        // A file from before Valkey support has no product; a hand-made one may have
        // anything.
        let old = RedisIdentity::from_json(&json!({"version": "7.0.15", "port": 6379}));
        assert_eq!(
            (old.product.as_str(), old.version.as_str(), old.port),
            ("redis", "7.0.15", Some(6379))
        );
        let odd = RedisIdentity::from_json(&json!({"version": 7, "role": 1, "port": 70000}));
        assert_eq!(
            odd,
            RedisIdentity {
                product: "redis".into(),
                ..RedisIdentity::default()
            }
        );
    }
}
