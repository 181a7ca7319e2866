//! Choosing and proving a layout against the live server before the kernel uses it.
//!
//! Three checks, from cheapest to strongest:
//! 1. the `server` symbol's size names a known layout and `server.pid` holds the pid;
//! 2. `server.clients` is a well-formed list of clients with sane `argc`, and
//!    `current_client` is NULL or one of them;
//! 3. with a Redis connection: INFO's version matches, `stat_numcommands` lies between
//!    two `total_commands_processed` readings, and a client blocked in
//!    `BLPOP <probe key>` is found in memory with `argc == 3`, `argv` = `BLPOP key` and
//!    `cmd` named `blpop`. The probe key never exists, so nothing is written; the client
//!    is released with `CLIENT UNBLOCK`.

use std::time::{Duration, Instant};

use tracer_common::{KEY_CAP, PHASE_RANGES, RedisLayout};

use super::{
    info::RedisConn,
    layout::{self, LIST_HEAD, LIST_LEN, LISTNODE_NEXT, LISTNODE_VALUE, Layout},
    remote::RemoteMemory,
    symbols::ServerSymbols,
};

/// Why attribution cannot be turned on for a server.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No usable symbols.
    #[error("{0}")]
    Symbols(#[from] super::symbols::SymbolError),
    /// The binary does not export `server`.
    #[error("the binary exports no `server` symbol (not redis-server, or built without -rdynamic)")]
    NoServerSymbol,
    /// No layout for this build.
    #[error("unsupported Redis build: `struct redisServer` is {0} bytes; supported: {1}")]
    Unsupported(u64, String),
    /// The memory read back does not match the layout.
    #[error("Redis {version} layout does not match the process: {what}")]
    Mismatch {
        /// Layout tried.
        version: &'static str,
        /// What did not match.
        what: String,
    },
    /// Memory could not be read.
    #[error("cannot read the server's memory: {0}")]
    Memory(#[from] std::io::Error),
}

/// A layout ready for the kernel, with how it was proven.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The layout used.
    pub layout: &'static Layout,
    /// What the kernel gets.
    pub kernel: RedisLayout,
    /// Names of the phase ranges found (index = range slot), for userspace labels.
    pub phases: Vec<Option<&'static str>>,
    /// Checks passed, in words (recorded in the timeline).
    pub checks: Vec<String>,
    /// True when the live-client probe (check 3) passed.
    pub client_verified: bool,
    /// Run-time address of `server`.
    pub server_addr: u64,
}

/// Proves a layout for `pid`. `probe` is a connection factory for check 3 (None when
/// INFO is unreachable); its failure leaves checks 1 and 2 standing with a note.
pub fn prepare(
    pid: u32,
    key_max: usize,
    probe: Option<&mut dyn FnMut() -> Option<RedisConn>>,
) -> Result<(Prepared, Vec<String>), VerifyError> {
    let symbols = ServerSymbols::read(pid)?;
    let server = symbols.get("server").ok_or(VerifyError::NoServerSymbol)?;
    let layout = layout::by_server_size(server.size).ok_or_else(|| {
        VerifyError::Unsupported(
            server.size,
            layout::LAYOUTS
                .iter()
                .map(|l| format!("{} ({} bytes)", l.version, l.server_size))
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let mem = RemoteMemory::open(pid)?;
    let mismatch = |what: String| VerifyError::Mismatch {
        version: layout.version,
        what,
    };
    let mut checks = vec![format!(
        "`server` symbol is {} bytes: Redis {} layout",
        server.size, layout.version
    )];
    let mut notes = Vec::new();

    // 1. server.pid is getpid() in the server's own pid namespace.
    let own_pid = namespace_pid(pid);
    let stored = mem.i32(server.addr + layout.server_pid as u64)?;
    if stored as u32 != own_pid {
        return Err(mismatch(format!(
            "server.pid reads {stored}, expected {own_pid}"
        )));
    }
    checks.push(format!("server.pid == {own_pid}"));

    // 2. the client list.
    let clients = walk_clients(&mem, server.addr, layout).map_err(mismatch)?;
    let current = mem.u64(server.addr + layout.server_current_client as u64)?;
    if current != 0 && !clients.iter().any(|c| c.addr == current) {
        return Err(mismatch(format!(
            "current_client {current:#x} is not in server.clients"
        )));
    }
    checks.push(format!(
        "server.clients is a well-formed list of {} clients",
        clients.len()
    ));

    // 3. a live client.
    let mut client_verified = false;
    match probe {
        None => notes.push(format!(
            "Redis {} layout verified from process memory only (no INFO connection): \
             command and key offsets were not checked against a live client",
            layout.version
        )),
        Some(open) => match live_client_check(&mem, server.addr, layout, open) {
            Ok(done) => {
                checks.extend(done);
                client_verified = true;
            }
            Err(LiveCheck::Failed(what)) => return Err(mismatch(what)),
            Err(LiveCheck::Unavailable(why)) => notes.push(format!(
                "live-client layout check skipped ({why}); layout verified from process memory only"
            )),
        },
    }

    let mut kernel = RedisLayout {
        server_addr: server.addr,
        off_current_client: layout.server_current_client,
        off_stat_numcommands: layout.server_stat_numcommands,
        off_client_argc: layout.client_argc,
        off_client_argv: layout.client_argv,
        off_client_cmd: layout.client_cmd,
        off_cmd_name: layout.cmd_name,
        key_max: key_max.min(KEY_CAP) as u32,
        ..RedisLayout::default()
    };
    let mut phases = vec![None; PHASE_RANGES];
    for (i, (func, label)) in layout::PHASE_FUNCTIONS.iter().enumerate() {
        if let Some(sym) = symbols.get(func).filter(|s| s.size > 0) {
            kernel.range_lo[i] = sym.addr;
            kernel.range_hi[i] = sym.addr + sym.size;
            phases[i] = Some(*label);
        }
    }
    Ok((
        Prepared {
            layout,
            kernel,
            phases,
            checks,
            client_verified,
            server_addr: server.addr,
        },
        notes,
    ))
}

/// The pid as the process itself sees it (innermost pid namespace).
pub fn namespace_pid(pid: u32) -> u32 {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .ok()
        .and_then(|s| s.nspid)
        .and_then(|v| v.last().copied())
        .map(|p| p as u32)
        .unwrap_or(pid)
}

#[derive(Debug)]
struct ClientMem {
    addr: u64,
    id: u64,
    argc: i32,
}

/// Walks `server.clients`, checking it is a consistent list.
fn walk_clients(mem: &RemoteMemory, server: u64, l: &Layout) -> Result<Vec<ClientMem>, String> {
    let read = |a| mem.u64(a).map_err(|e| format!("reading {a:#x}: {e}"));
    let list = read(server + l.server_clients as u64)?;
    if list == 0 {
        return Err("server.clients is NULL".into());
    }
    let len = read(list + LIST_LEN)?;
    if len > 1_000_000 {
        return Err(format!("server.clients has an implausible length {len}"));
    }
    let mut node = read(list + LIST_HEAD)?;
    let mut out = Vec::new();
    while node != 0 && (out.len() as u64) < len {
        let c = read(node + LISTNODE_VALUE)?;
        let id = read(c + l.client_id as u64)?;
        let argc = mem
            .i32(c + l.client_argc as u64)
            .map_err(|e| e.to_string())?;
        if !(0..=(1 << 24)).contains(&argc) {
            return Err(format!("client {id} has an implausible argc {argc}"));
        }
        out.push(ClientMem { addr: c, id, argc });
        node = read(node + LISTNODE_NEXT)?;
    }
    if out.len() as u64 != len || node != 0 {
        return Err(format!(
            "server.clients says {len} clients but {} were linked",
            out.len()
        ));
    }
    Ok(out)
}

enum LiveCheck {
    /// The layout is wrong.
    Failed(String),
    /// The check could not run (permissions, timeouts): not evidence either way.
    Unavailable(String),
}

fn live_client_check(
    mem: &RemoteMemory,
    server: u64,
    l: &'static Layout,
    open: &mut dyn FnMut() -> Option<RedisConn>,
) -> Result<Vec<String>, LiveCheck> {
    let unavailable =
        |what: &str, e: &dyn std::fmt::Display| LiveCheck::Unavailable(format!("{what}: {e}"));
    let mut checks = Vec::new();
    let mut admin = open().ok_or_else(|| LiveCheck::Unavailable("cannot connect".into()))?;
    let info = admin
        .info("server")
        .map_err(|e| unavailable("INFO server", &e))?;
    let version = info.get("redis_version").unwrap_or("").to_string();
    if !version.starts_with(&format!("{}.", l.version)) {
        return Err(LiveCheck::Failed(format!(
            "INFO says redis_version {version}, the binary's `server` size says {}",
            l.version
        )));
    }
    checks.push(format!("INFO redis_version {version}"));

    // stat_numcommands between two readings of total_commands_processed.
    let before = admin
        .info("stats")
        .map_err(|e| unavailable("INFO stats", &e))?
        .get_u64("total_commands_processed");
    let inside = mem
        .u64(server + l.server_stat_numcommands as u64)
        .map_err(|e| unavailable("reading memory", &e))?;
    let after = admin
        .info("stats")
        .map_err(|e| unavailable("INFO stats", &e))?
        .get_u64("total_commands_processed");
    if let (Some(a), Some(c)) = (before, after) {
        if !(a..=c).contains(&inside) {
            return Err(LiveCheck::Failed(format!(
                "server.stat_numcommands reads {inside}, INFO said {a} then {c}"
            )));
        }
        checks.push("server.stat_numcommands agrees with INFO".into());
    }

    // A client blocked in BLPOP keeps argv and cmd until it is unblocked.
    let mut blocked = open().ok_or_else(|| LiveCheck::Unavailable("cannot connect".into()))?;
    let id: u64 = redis::cmd("CLIENT")
        .arg("ID")
        .query(blocked.raw())
        .map_err(|e| unavailable("CLIENT ID", &e))?;
    let key = format!(
        "__redis-memtrace:layout-probe:{}:{}",
        std::process::id(),
        crate::clock::monotonic_ns()
    );
    let packed = redis::cmd("BLPOP").arg(&key).arg(5).get_packed_command();
    blocked
        .raw()
        .send_packed_command(&packed)
        .map_err(|e| unavailable("sending BLPOP", &e))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let found = loop {
        let clients = walk_clients(mem, server, l).map_err(LiveCheck::Failed)?;
        if let Some(c) = clients.into_iter().find(|c| c.id == id && c.argc == 3) {
            break Some(c);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let verdict = match found {
        None => Err(LiveCheck::Failed(format!(
            "client {id} blocked in BLPOP never showed argc == 3 at client+{}",
            l.client_argc
        ))),
        Some(c) => check_blocked_client(mem, &c, l, &key),
    };
    // Release the probe client whatever happened.
    let _: Result<i64, _> = redis::cmd("CLIENT")
        .arg("UNBLOCK")
        .arg(id)
        .query(admin.raw());
    let _: Result<redis::Value, _> = blocked.raw().recv_response();
    checks.extend(verdict?);
    Ok(checks)
}

fn check_blocked_client(
    mem: &RemoteMemory,
    c: &ClientMem,
    l: &Layout,
    key: &str,
) -> Result<Vec<String>, LiveCheck> {
    let fail = |what: String| LiveCheck::Failed(what);
    let argv = mem
        .u64(c.addr + l.client_argv as u64)
        .map_err(|e| fail(format!("client.argv: {e}")))?;
    let arg = |i: u64| -> Result<Vec<u8>, LiveCheck> {
        let obj = mem
            .u64(argv + 8 * i)
            .map_err(|e| fail(format!("argv[{i}]: {e}")))?;
        mem.robj_string(obj, 256)
            .map_err(|e| fail(format!("argv[{i}] object: {e}")))
    };
    let a0 = arg(0)?;
    let a1 = arg(1)?;
    if !a0.eq_ignore_ascii_case(b"blpop") || a1 != key.as_bytes() {
        return Err(fail(format!(
            "client.argv reads {:?} {:?}, expected BLPOP {key}",
            String::from_utf8_lossy(&a0),
            String::from_utf8_lossy(&a1)
        )));
    }
    let cmd = mem
        .u64(c.addr + l.client_cmd as u64)
        .map_err(|e| fail(format!("client.cmd: {e}")))?;
    let name_ptr = mem
        .u64(cmd + l.cmd_name as u64)
        .map_err(|e| fail(format!("command name: {e}")))?;
    let name = mem
        .c_string(name_ptr, 64)
        .map_err(|e| fail(format!("command name: {e}")))?;
    if !name.eq_ignore_ascii_case(b"blpop") {
        return Err(fail(format!(
            "client.cmd name reads {:?}, expected blpop",
            String::from_utf8_lossy(&name)
        )));
    }
    Ok(vec![
        "a client blocked in BLPOP read back with argc, argv and cmd at the layout's offsets"
            .into(),
    ])
}

/// Reads the type of the fork child the server just started, once `server.child_pid`
/// shows it (set right after `fork()` returns in the parent). `None` when it does not
/// within `wait`.
pub fn read_child_job(
    mem: &RemoteMemory,
    server_addr: u64,
    l: &Layout,
    child: u32,
    wait: Duration,
) -> Option<(i32, i32)> {
    let deadline = Instant::now() + wait;
    loop {
        let pid = mem.i32(server_addr + l.server_child_pid as u64).ok()?;
        if pid as u32 == child {
            let ty = mem.i32(server_addr + l.server_child_type as u64).ok()?;
            let rdb = mem.i32(server_addr + l.server_rdb_child_type as u64).ok()?;
            return Some((ty, rdb));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
