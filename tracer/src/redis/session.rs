//! The edge between a recording and a live Redis server: turning attribution on, and
//! labelling forks with Redis's own numbers. Everything here is I/O; the pure parts
//! live in `attribution` and `analysis`.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    info::{ConnSpec, RedisConn},
    layout::{RDB_CHILD_TYPE_SOCKET, child_type},
    remote::RemoteMemory,
    verify::{self, Prepared},
};
use crate::{analysis::AttributionOptions, fork_epochs::EpochRedisInfo};

/// Timeout for every INFO round trip: a slow server must never stall tracing for long.
const INFO_TIMEOUT: Duration = Duration::from_millis(500);

/// What the timeline records about the Redis side of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RedisRunInfo {
    /// `redis_version` from INFO, or the layout's family when INFO was unreachable.
    pub version: String,
    /// Layout used for attribution (`7.0`, `6.2`), absent when attribution is off.
    pub layout: Option<&'static str>,
    /// INFO `role` at start.
    pub role: Option<String>,
    /// TCP port the server listens on (from its memory).
    pub port: Option<u16>,
    /// Checks that proved the layout.
    pub checks: Vec<String>,
    /// True when a live client was read back at the layout's offsets.
    pub client_verified: bool,
    /// True when INFO was reachable.
    pub info_reachable: bool,
}

/// A Redis server being traced with attribution on.
pub struct RedisSession {
    pid: u32,
    prepared: Prepared,
    mem: RemoteMemory,
    spec: Option<ConnSpec>,
    conn: Option<RedisConn>,
    /// Children whose exit we saw, waiting for Redis to publish the fork's CoW size.
    pending_cow: Vec<(u32, String, Instant)>,
    /// Run facts for the timeline.
    pub info: RedisRunInfo,
}

impl std::fmt::Debug for RedisSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSession")
            .field("pid", &self.pid)
            .field("layout", &self.prepared.layout.version)
            .finish()
    }
}

impl RedisSession {
    /// Proves a layout for `pid` and opens what labelling needs. `spec` is the user's
    /// `--redis` target; without it, `127.0.0.1:<server.port>` is tried. Returns the
    /// warnings to print once.
    pub fn start(
        pid: u32,
        spec: Option<ConnSpec>,
        key_max: usize,
    ) -> Result<(RedisSession, Vec<String>), verify::VerifyError> {
        let mut warnings = Vec::new();
        // The port comes from the server's memory once the layout is known, so the first
        // attempt may need it: find it from the symbols first.
        let spec = match spec {
            Some(s) => Some(s),
            None => port_from_memory(pid)
                .and_then(|port| super::info::parse_target(&format!("127.0.0.1:{port}")).ok()),
        };
        let mut factory = {
            let spec = spec.clone();
            move || -> Option<RedisConn> {
                spec.as_ref()
                    .and_then(|s| RedisConn::open(s, INFO_TIMEOUT).ok())
            }
        };
        let conn = factory();
        if conn.is_none() {
            warnings.push(match &spec {
                Some(s) => format!(
                    "Redis INFO at {s} is unreachable: tracing goes on from the pid, without \
                     INFO samples or Redis's own fork numbers (pass --redis redis://user:pass@host:port)"
                ),
                None => "Redis INFO unavailable (no TCP port): tracing goes on from the pid"
                    .to_string(),
            });
        }
        let probe: Option<&mut dyn FnMut() -> Option<RedisConn>> = if conn.is_some() {
            Some(&mut factory)
        } else {
            None
        };
        let (prepared, notes) = verify::prepare(pid, key_max, probe)?;
        warnings.extend(notes);
        let mem = RemoteMemory::open(pid)?;
        let port = mem
            .i32(prepared.server_addr + prepared.layout.server_port as u64)
            .ok()
            .and_then(|p| u16::try_from(p).ok());
        let mut conn = conn;
        let (version, role) = match conn.as_mut().and_then(|c| c.info("server").ok()) {
            Some(i) => (
                i.get("redis_version").unwrap_or("").to_string(),
                conn.as_mut()
                    .and_then(|c| c.info("replication").ok())
                    .and_then(|r| r.get("role").map(str::to_string)),
            ),
            None => (prepared.layout.version.to_string(), None),
        };
        let info = RedisRunInfo {
            version,
            layout: Some(prepared.layout.version),
            role,
            port,
            checks: prepared.checks.clone(),
            client_verified: prepared.client_verified,
            info_reachable: conn.is_some(),
        };
        Ok((
            RedisSession {
                pid,
                prepared,
                mem,
                spec,
                conn,
                pending_cow: Vec::new(),
                info,
            },
            warnings,
        ))
    }

    /// What the kernel needs.
    pub fn kernel_layout(&self) -> tracer_common::RedisLayout {
        self.prepared.kernel
    }

    /// What the analyzer needs.
    pub fn attribution_options(
        &self,
        top_n: usize,
        keys: crate::attribution::key_privacy::KeyPolicy,
    ) -> AttributionOptions {
        AttributionOptions {
            keys,
            phases: self.prepared.phases.clone(),
            key_max: self.prepared.kernel.key_max as usize,
            top_n,
            key_capacity: (top_n * 50).clamp(1000, 20_000),
        }
    }

    /// The INFO connection spec, if any (for the sampler's own connection).
    pub fn spec(&self) -> Option<&ConnSpec> {
        self.spec.as_ref()
    }

    /// Labels a fork of the server: why it forked and what Redis says it cost.
    pub fn on_fork(&mut self, child: u32) -> (Option<String>, EpochRedisInfo) {
        let mut info = EpochRedisInfo::default();
        let child_ns = verify::namespace_pid(child);
        let job = verify::read_child_job(
            &self.mem,
            self.prepared.server_addr,
            self.prepared.layout,
            child_ns,
            Duration::from_millis(50),
        );
        let mut reason = match job {
            Some((child_type::RDB, RDB_CHILD_TYPE_SOCKET)) => Some("replication"),
            Some((child_type::RDB, _)) => Some("bgsave"),
            Some((child_type::AOF, _)) => Some("aof-rewrite"),
            Some((child_type::MODULE, _)) => Some("module"),
            Some(_) => Some("other"),
            None => None,
        };
        if job.is_some() {
            info.reason_source = "server.child_type".into();
        }
        if let Some(conn) = self.conn.as_mut() {
            if let Ok(stats) = conn.info("stats") {
                info.latest_fork_usec = stats.get_u64("latest_fork_usec");
            }
            // A disk-based full sync is an RDB save too: replicas waiting for it tell.
            if reason == Some("bgsave")
                && let Ok(repl) = conn.info("replication")
                && repl.replicas().iter().any(|r| r.state == "wait_bgsave")
            {
                reason = Some("replication");
                info.reason_source = "server.child_type + INFO replication".into();
            }
        }
        if reason.is_none() {
            // Fall back on the title the child gives itself.
            reason = child_title_reason(child);
            if reason.is_some() {
                info.reason_source = "child process title".into();
            }
        }
        if let Some(r) = reason {
            self.pending_cow
                .push((child, r.to_string(), Instant::now()));
        }
        (reason.map(str::to_string), info)
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

fn child_title_reason(child: u32) -> Option<&'static str> {
    let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).ok()?;
    let title = String::from_utf8_lossy(&cmdline);
    if title.starts_with("redis-rdb-to-slaves") {
        Some("replication")
    } else if title.starts_with("redis-rdb-bgsave") {
        Some("bgsave")
    } else if title.starts_with("redis-aof-rewrite") {
        Some("aof-rewrite")
    } else {
        None
    }
}

/// `server.port` read through the `server` symbol and the matching layout.
fn port_from_memory(pid: u32) -> Option<u16> {
    let symbols = super::symbols::ServerSymbols::read(pid).ok()?;
    let server = symbols.get("server")?;
    let layout = super::layout::by_server_size(server.size)?;
    let mem = RemoteMemory::open(pid).ok()?;
    let port = mem.i32(server.addr + layout.server_port as u64).ok()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}
