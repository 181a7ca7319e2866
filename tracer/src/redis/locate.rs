//! Finding the redis-server process to trace: by the socket it listens on, by scanning
//! /proc, or from a `--redis` target (whose `INFO` names its own PID, as seen from its own
//! PID namespace).
//!
//! The decisions (which holder of a socket is the server, which processes are servers
//! rather than fork children, which PID a `--redis` target resolves to) are pure
//! functions over facts gathered from /proc, so they are unit-tested without processes.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, ToSocketAddrs, UdpSocket},
    path::{Path, PathBuf},
    time::Duration,
};

use procfs::{
    ProcError,
    net::TcpState,
    process::{FDTarget, Process},
};

use super::info::{ConnSpec, InfoError, RedisConn, parse_target};

/// Process titles Redis gives its fork children (`redisSetProcTitle`).
const FORK_CHILD_TITLES: [&str; 9] = [
    "redis-rdb-bgsave",
    "redis-aof-rewrite",
    "redis-rdb-to-slaves",
    "redis-rdb-to-replicas",
    "redis-module-fork",
    "valkey-rdb-bgsave",
    "valkey-aof-rewrite",
    "valkey-rdb-to-replicas",
    "valkey-module-fork",
];

/// Names (comm or executable) of the servers looked for.
pub const SERVER_NAMES: [&str; 2] = ["redis-server", "valkey-server"];

/// Errors locating the Redis process.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// A /proc file could not be read.
    #[error("cannot read {what}: {why}")]
    Proc {
        /// The file.
        what: String,
        /// The reason.
        why: String,
    },
    /// No redis-server process is running.
    #[error("no redis-server process found: pass --pid or --redis")]
    NoServer,
    /// Several redis-server processes are running.
    #[error("{} redis-server processes found ({}): pass --pid with one of them", .0.len(), list_processes(.0))]
    Several(Vec<RedisProcess>),
    /// A socket is listening, but the process holding it cannot be seen.
    #[error(
        "a socket listens on {what} but no visible process holds it (reading other processes' /proc/PID/fd needs root): pass --pid"
    )]
    Hidden {
        /// The port or socket path.
        what: String,
    },
    /// The `--redis` target is not usable (syntax, unreachable, authentication).
    #[error(transparent)]
    Redis(#[from] InfoError),
    /// The target answered, but runs on another machine.
    #[error(
        "Redis at {target} is not on this machine (its process_id there is {pid}): run redis-memtrace on the Redis host"
    )]
    Remote {
        /// The target, password removed.
        target: String,
        /// The PID Redis reported.
        pid: u32,
    },
    /// The target answered, but no process here could be identified as it.
    #[error(
        "Redis at {target} answered, but {why}: pass --pid with its PID as seen from this machine"
    )]
    NotHere {
        /// The target, password removed.
        target: String,
        /// What was found instead.
        why: String,
    },
}

fn list_processes(procs: &[RedisProcess]) -> String {
    procs
        .iter()
        .map(|p| format!("pid {}: {}", p.pid, p.cmdline))
        .collect::<Vec<_>>()
        .join("; ")
}

fn proc_error(what: impl Into<String>, e: &ProcError) -> LocateError {
    LocateError::Proc {
        what: what.into(),
        why: e.to_string(),
    }
}

/// A running redis-server (not a fork child, not a thread, not a sentinel).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RedisProcess {
    /// Process id.
    pub pid: u32,
    /// Command line, arguments joined by spaces (Redis rewrites it to `redis-server *:PORT`).
    pub cmdline: String,
    /// Executable (on Debian `redis-server` is a symlink to `redis-check-rdb`, so this may
    /// not end in `redis-server`); empty when unreadable.
    pub exe: PathBuf,
}

/// One process as read from /proc, the input of the pure selection functions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProcFacts {
    pid: u32,
    ppid: u32,
    /// Clock ticks after boot.
    start: u64,
    state: char,
    comm: String,
    exe: PathBuf,
    cmdline: String,
}

impl ProcFacts {
    fn read(proc: &Process) -> Option<ProcFacts> {
        let stat = proc.stat().ok()?;
        Some(ProcFacts {
            pid: u32::try_from(stat.pid).ok()?,
            ppid: u32::try_from(stat.ppid).unwrap_or(0),
            start: stat.starttime,
            state: stat.state,
            comm: stat.comm,
            exe: proc.exe().unwrap_or_default(),
            cmdline: proc.cmdline().map(|a| a.join(" ")).unwrap_or_default(),
        })
    }

    fn of_pid(pid: u32) -> Option<ProcFacts> {
        ProcFacts::read(&Process::new(i32::try_from(pid).ok()?).ok()?)
    }

    fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }

    fn exe_name_is(&self, name: &str) -> bool {
        self.exe.file_name().is_some_and(|n| n == name)
    }

    /// Looks like a Redis or Valkey server, by comm or executable name.
    fn is_redis_server(&self) -> bool {
        SERVER_NAMES
            .iter()
            .any(|n| self.comm == *n || self.exe_name_is(n))
    }
}

/// Looks like some Redis-compatible server (for messages about a process found by port).
fn is_redis_like(comm: &str) -> bool {
    ["redis", "valkey", "keydb"]
        .iter()
        .any(|p| comm.starts_with(p))
}

/// Inodes of the listening sockets on `port`, from (is_listen, local_port, inode) rows.
fn listen_inodes(rows: impl IntoIterator<Item = (bool, u16, u64)>, port: u16) -> HashSet<u64> {
    rows.into_iter()
        .filter(|&(listen, p, inode)| listen && p == port && inode != 0)
        .map(|(_, _, inode)| inode)
        .collect()
}

/// Of the processes holding one socket, the one whose parent does not hold it (a fork
/// child inherits the listening fd); among several such, the oldest.
fn pick_oldest_holder(holders: &[ProcFacts]) -> Option<u32> {
    let pids: HashSet<u32> = holders.iter().map(|h| h.pid).collect();
    let roots = holders.iter().filter(|h| !pids.contains(&h.ppid));
    roots
        .min_by_key(|h| (h.start, h.pid))
        // Unreachable unless /proc changed between reads so that parents form a cycle.
        .or_else(|| holders.iter().min_by_key(|h| (h.start, h.pid)))
        .map(|h| h.pid)
}

/// The PID of the process listening on TCP `port` (IPv4 or IPv6) in this network
/// namespace, `None` when nothing listens there.
///
/// When several processes hold the socket (a fork child inherits it), the oldest ancestor
/// among them is returned.
pub fn pid_listening_on(port: u16) -> Result<Option<u32>, LocateError> {
    let mut inodes = HashSet::new();
    let mut failures = Vec::new();
    for (name, table) in [
        ("/proc/net/tcp", procfs::net::tcp()),
        ("/proc/net/tcp6", procfs::net::tcp6()),
    ] {
        match table {
            Ok(rows) => inodes.extend(listen_inodes(
                rows.iter()
                    .map(|r| (r.state == TcpState::Listen, r.local_address.port(), r.inode)),
                port,
            )),
            // tcp6 is absent when IPv6 is disabled.
            Err(e) => failures.push((name, e)),
        }
    }
    if failures.len() == 2 {
        let (name, e) = &failures[0];
        return Err(proc_error(*name, e));
    }
    holder_of(&inodes, &format!("TCP port {port}"))
}

/// The TCP ports process `pid` listens on (in its own network namespace), lowest first.
pub fn tcp_ports_of(pid: u32) -> Vec<u16> {
    let Ok(proc) = Process::new(pid as i32) else {
        return Vec::new();
    };
    let owned: HashSet<u64> = proc
        .fd()
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| match fd.target {
                    FDTarget::Socket(inode) => Some(inode),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports: Vec<u16> = [proc.tcp(), proc.tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|r| r.state == TcpState::Listen && owned.contains(&r.inode))
        .map(|r| r.local_address.port())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The PID of the process listening on the unix socket at `path`, `None` when no socket
/// is bound there.
pub fn pid_listening_on_unix(path: &Path) -> Result<Option<u32>, LocateError> {
    let rows = procfs::net::unix().map_err(|e| proc_error("/proc/net/unix", &e))?;
    // /proc/net/unix shows the path as bound, which may be relative or via a symlink.
    let canonical = path.canonicalize().ok();
    let inodes: HashSet<u64> = rows
        .iter()
        .filter(|r| {
            r.path
                .as_deref()
                .is_some_and(|p| p == path || Some(p) == canonical.as_deref())
        })
        .map(|r| r.inode)
        .collect();
    holder_of(&inodes, &path.display().to_string())
}

/// The process holding one of `inodes` as an open socket, scanning /proc/*/fd.
fn holder_of(inodes: &HashSet<u64>, what: &str) -> Result<Option<u32>, LocateError> {
    if inodes.is_empty() {
        return Ok(None);
    }
    let procs = procfs::process::all_processes().map_err(|e| proc_error("/proc", &e))?;
    let mut holders = Vec::new();
    let mut denied = false;
    for proc in procs.flatten() {
        let fds = match proc.fd() {
            Ok(fds) => fds,
            Err(ProcError::PermissionDenied(_)) => {
                denied = true;
                continue;
            }
            // Exited meanwhile, or a kernel thread.
            Err(_) => continue,
        };
        let holds = fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(inode) if inodes.contains(&inode)));
        if holds {
            holders.extend(ProcFacts::read(&proc));
        }
    }
    match pick_oldest_holder(&holders) {
        Some(pid) => Ok(Some(pid)),
        None if denied => Err(LocateError::Hidden {
            what: what.to_string(),
        }),
        None => Ok(None),
    }
}

/// The servers among `procs`: Redis processes that are alive, not sentinels, and not
/// fork children (retitled `redis-rdb-bgsave` etc., or children of another server).
fn select_servers(procs: &[ProcFacts]) -> Vec<RedisProcess> {
    let redis: Vec<&ProcFacts> = procs
        .iter()
        .filter(|p| p.is_redis_server() && p.alive())
        .collect();
    let redis_pids: HashSet<u32> = redis.iter().map(|p| p.pid).collect();
    let mut out: Vec<RedisProcess> = redis
        .into_iter()
        .filter(|p| {
            let retitled = FORK_CHILD_TITLES.iter().any(|t| p.cmdline.starts_with(t));
            // A sentinel holds no data set worth tracing.
            let sentinel = p.cmdline.contains("[sentinel]");
            !retitled && !sentinel && !redis_pids.contains(&p.ppid)
        })
        .map(|p| RedisProcess {
            pid: p.pid,
            cmdline: p.cmdline.clone(),
            exe: p.exe.clone(),
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Every running redis-server on this machine (in this PID namespace), by PID.
///
/// A process counts when its comm or executable name is `redis-server`; fork children
/// (BGSAVE, AOF rewrite, replica sync), sentinels and zombies are left out. Threads never
/// appear: /proc lists only thread-group leaders. Unreadable /proc yields an empty list.
pub fn find_redis_servers() -> Vec<RedisProcess> {
    let Ok(procs) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let facts: Vec<ProcFacts> = procs
        .flatten()
        .filter_map(|p| ProcFacts::read(&p))
        .collect();
    select_servers(&facts)
}

fn pick_one(mut servers: Vec<RedisProcess>) -> Result<RedisProcess, LocateError> {
    match servers.len() {
        0 => Err(LocateError::NoServer),
        1 => Ok(servers.remove(0)),
        _ => Err(LocateError::Several(servers)),
    }
}

/// The only redis-server running; an error naming the choices when there are none or
/// several.
pub fn auto_select() -> Result<RedisProcess, LocateError> {
    pick_one(find_redis_servers())
}

/// A `--redis` target resolved to a local process.
#[derive(Debug)]
pub struct Resolved {
    /// The PID to trace, as seen from this machine.
    pub pid: u32,
    /// An open connection when INFO works on it, for sampling.
    pub conn: Option<RedisConn>,
    /// Things the user should know (PID namespace mismatch, INFO unavailable, ...).
    pub warnings: Vec<String>,
}

/// Where a target is, as far as this machine can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locality {
    /// Loopback, an address of this machine, or a unix socket.
    Local,
    /// Some other machine.
    Remote,
}

/// A host is local if it is loopback or one of this machine's addresses: binding a UDP
/// socket to an address succeeds only for local addresses, which avoids enumerating
/// interfaces.
fn locality(spec: &ConnSpec) -> Locality {
    let Some((host, port)) = spec.tcp() else {
        return Locality::Local;
    };
    let ips: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (host, port)
            .to_socket_addrs()
            .map(|addrs| addrs.map(|a| a.ip()).collect())
            .unwrap_or_default(),
    };
    let local = ips
        .iter()
        .any(|ip| ip.is_loopback() || UdpSocket::bind((*ip, 0)).is_ok());
    if local {
        Locality::Local
    } else {
        Locality::Remote
    }
}

/// What `INFO server` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reported {
    pid: u32,
    port: Option<u16>,
}

/// A process seen here: its PID and comm.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    pid: u32,
    comm: String,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PID {} ({})", self.pid, self.comm)
    }
}

/// Everything [`decide`] needs, gathered by [`resolve_redis`].
#[derive(Debug)]
struct Evidence {
    /// The target, password removed.
    target: String,
    locality: Locality,
    /// `TCP port N` or the socket path: where we connected.
    endpoint: String,
    /// INFO's process_id/tcp_port, or why INFO is unavailable.
    reported: Result<Reported, InfoError>,
    /// The process here listening where we connected (local targets only).
    listener: Result<Option<Seen>, LocateError>,
    /// The process here with the reported PID, if it is a redis-server listening on the
    /// reported port or socket (left false when `listener` already is that PID).
    reported_confirmed: bool,
    /// The process here with the reported PID, if it looks like a Redis server at all.
    reported_is_redis_here: bool,
}

/// Picks the PID for a `--redis` target from the evidence.
fn decide(ev: Evidence) -> Result<(u32, Vec<String>), LocateError> {
    let mut warnings = Vec::new();
    match ev.reported {
        Ok(rep) => {
            match &ev.listener {
                Ok(Some(l)) if l.pid == rep.pid => return Ok((rep.pid, warnings)),
                Ok(Some(l)) if is_redis_like(&l.comm) => {
                    warnings.push(format!(
                        "Redis at {} reports process_id {}, but the process listening on {} here is {l}: \
                         Redis runs in another PID namespace (a container?); tracing PID {}",
                        ev.target, rep.pid, ev.endpoint, l.pid
                    ));
                    return Ok((l.pid, warnings));
                }
                Ok(Some(l)) if ev.reported_confirmed => {
                    warnings.push(format!(
                        "{} here is held by {l}, not by Redis (a proxy?); tracing PID {}, the process_id Redis reports, \
                         which is a redis-server listening on its reported port",
                        ev.endpoint, rep.pid
                    ));
                    return Ok((rep.pid, warnings));
                }
                Ok(Some(l)) => {
                    return Err(LocateError::NotHere {
                        target: ev.target,
                        why: format!(
                            "{} here is held by {l}, not a redis-server, and its process_id {} is not a redis-server here",
                            ev.endpoint, rep.pid
                        ),
                    });
                }
                _ => {}
            }
            if ev.reported_confirmed {
                if ev.locality == Locality::Remote {
                    warnings.push(format!(
                        "{} does not look like an address of this machine, but PID {} here is a redis-server \
                         listening on Redis's reported port; tracing it",
                        ev.target, rep.pid
                    ));
                }
                return Ok((rep.pid, warnings));
            }
            if ev.locality == Locality::Remote {
                return Err(LocateError::Remote {
                    target: ev.target,
                    pid: rep.pid,
                });
            }
            if ev.reported_is_redis_here {
                let why = match &ev.listener {
                    Err(e) => format!(" ({e})"),
                    Ok(_) => String::new(),
                };
                warnings.push(format!(
                    "could not confirm from its listening socket that PID {} is Redis at {}{why}; \
                     tracing it because it is a redis-server",
                    rep.pid, ev.target
                ));
                return Ok((rep.pid, warnings));
            }
            Err(LocateError::NotHere {
                target: ev.target,
                why: format!(
                    "no process here listens on {} and its process_id {} is not a redis-server here",
                    ev.endpoint, rep.pid
                ),
            })
        }
        Err(info_error) => match ev.listener {
            Ok(Some(l)) => {
                let not_redis = if is_redis_like(&l.comm) {
                    ""
                } else {
                    " (its name does not look like a Redis server)"
                };
                warnings.push(format!(
                    "cannot query Redis: {info_error}; tracing {l} listening on {}{not_redis}; \
                     no INFO samples",
                    ev.endpoint
                ));
                Ok((l.pid, warnings))
            }
            _ => Err(LocateError::Redis(info_error)),
        },
    }
}

/// Resolves a `--redis` target to the PID to trace, as seen from this machine.
///
/// Connects (each step bounded by `timeout`) and reads `process_id` and `tcp_port` from
/// `INFO server`. For a local target (loopback, an address of this machine, a unix
/// socket) the process holding the listening socket confirms it; if that process differs
/// (Redis in another PID namespace) it wins and a warning says so. If Redis cannot be
/// queried but a local process listens on the target's port or socket, that process is
/// returned with `conn: None` and a warning. A target on another machine is an error.
pub fn resolve_redis(spec: &str, timeout: Duration) -> Result<Resolved, LocateError> {
    let spec = parse_target(spec)?;
    let locality = locality(&spec);
    let endpoint = match (spec.tcp(), spec.unix_path()) {
        (Some((_, port)), _) => format!("TCP port {port}"),
        (None, Some(path)) => path.display().to_string(),
        (None, None) => spec.to_string(),
    };
    let listener = if locality == Locality::Local {
        let pid = match (spec.tcp(), spec.unix_path()) {
            (Some((_, port)), _) => pid_listening_on(port),
            (None, Some(path)) => pid_listening_on_unix(path),
            (None, None) => Ok(None),
        };
        pid.map(|p| {
            p.map(|pid| Seen {
                pid,
                comm: ProcFacts::of_pid(pid).map(|f| f.comm).unwrap_or_default(),
            })
        })
    } else {
        Ok(None)
    };

    let mut conn = None;
    let reported = RedisConn::open(&spec, timeout).and_then(|mut c| {
        let info = c.info("server")?;
        let pid = info
            .get_u64("process_id")
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| InfoError::Command {
                target: spec.to_string(),
                what: "INFO server".into(),
                why: "no process_id in the reply".into(),
            })?;
        let port = info.get_u64("tcp_port").and_then(|p| u16::try_from(p).ok());
        conn = Some(c);
        Ok(Reported { pid, port })
    });

    let (reported_confirmed, reported_is_redis_here) = match &reported {
        Ok(rep) => {
            let here = ProcFacts::of_pid(rep.pid).filter(ProcFacts::alive);
            let is_redis = here.as_ref().is_some_and(|f| is_redis_like(&f.comm));
            // Skip a second /proc scan when the listener already is the reported PID.
            let listener_is_reported = matches!(&listener, Ok(Some(l)) if l.pid == rep.pid);
            let confirmed = is_redis
                && !listener_is_reported
                && match (spec.unix_path(), rep.port) {
                    (Some(path), _) => {
                        matches!(pid_listening_on_unix(path), Ok(Some(p)) if p == rep.pid)
                    }
                    (None, Some(port)) if port != 0 => {
                        matches!(pid_listening_on(port), Ok(Some(p)) if p == rep.pid)
                    }
                    _ => false,
                };
            (confirmed, is_redis)
        }
        Err(_) => (false, false),
    };

    let (pid, warnings) = decide(Evidence {
        target: spec.to_string(),
        locality,
        endpoint,
        reported,
        listener,
        reported_confirmed,
        reported_is_redis_here,
    })?;
    Ok(Resolved {
        pid,
        conn,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pid: u32, ppid: u32, start: u64, comm: &str, cmdline: &str) -> ProcFacts {
        ProcFacts {
            pid,
            ppid,
            start,
            state: 'S',
            comm: comm.into(),
            exe: PathBuf::from("/usr/bin/redis-check-rdb"),
            cmdline: cmdline.into(),
        }
    }

    #[test]
    fn listen_inodes_filters() {
        let rows = [
            (true, 6379, 10),
            (false, 6379, 11),
            (true, 6380, 12),
            (true, 6379, 0),
            (true, 6379, 13),
        ];
        assert_eq!(listen_inodes(rows, 6379), HashSet::from([10, 13]));
    }

    #[test]
    fn oldest_holder_wins() {
        // Server 100 and its BGSAVE child 200 both hold the socket.
        let h = [
            facts(200, 100, 50, "redis-server", "redis-rdb-bgsave *:6379"),
            facts(100, 1, 10, "redis-server", "redis-server *:6379"),
        ];
        assert_eq!(pick_oldest_holder(&h), Some(100));
        // Two unrelated holders (SO_REUSEPORT): the older one.
        let h = [facts(300, 1, 5, "a", ""), facts(100, 1, 10, "b", "")];
        assert_eq!(pick_oldest_holder(&h), Some(300));
        assert_eq!(pick_oldest_holder(&[]), None);
    }

    #[test]
    fn servers_exclude_children_sentinels_zombies() {
        let mut zombie = facts(500, 1, 1, "redis-server", "");
        zombie.state = 'Z';
        let mut by_exe = facts(600, 1, 1, "custom-title", "redis-server *:7000");
        by_exe.exe = PathBuf::from("/opt/redis/bin/redis-server");
        let procs = [
            facts(100, 1, 1, "redis-server", "redis-server *:6379"),
            facts(101, 100, 2, "redis-server", "redis-rdb-bgsave *:6379"),
            facts(102, 100, 2, "redis-server", "redis-aof-rewrite *:6379"),
            // A child not yet retitled: excluded by its parent.
            facts(103, 100, 2, "redis-server", "redis-server *:6379"),
            facts(200, 1, 1, "redis-server", "redis-server *:26379 [sentinel]"),
            facts(300, 1, 1, "bash", "bash"),
            zombie,
            by_exe,
            facts(50, 1, 1, "redis-server", "redis-server 127.0.0.1:6380"),
        ];
        let pids: Vec<u32> = select_servers(&procs).iter().map(|p| p.pid).collect();
        assert_eq!(pids, vec![50, 100, 600]);
    }

    #[test]
    fn auto_select_messages() {
        assert_eq!(
            pick_one(vec![]).unwrap_err().to_string(),
            "no redis-server process found: pass --pid or --redis"
        );
        let p = |pid, cmdline: &str| RedisProcess {
            pid,
            cmdline: cmdline.into(),
            exe: PathBuf::new(),
        };
        assert_eq!(pick_one(vec![p(7, "x")]).unwrap().pid, 7);
        let e = pick_one(vec![
            p(7, "redis-server *:6379"),
            p(9, "redis-server *:6380"),
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "2 redis-server processes found (pid 7: redis-server *:6379; pid 9: redis-server *:6380): \
             pass --pid with one of them"
        );
    }

    fn ev(reported: Result<Reported, InfoError>, listener: Option<Seen>) -> Evidence {
        Evidence {
            target: "127.0.0.1:6379".into(),
            locality: Locality::Local,
            endpoint: "TCP port 6379".into(),
            reported,
            listener: Ok(listener),
            reported_confirmed: false,
            reported_is_redis_here: false,
        }
    }

    fn rep(pid: u32) -> Result<Reported, InfoError> {
        Ok(Reported {
            pid,
            port: Some(6379),
        })
    }

    fn seen(pid: u32, comm: &str) -> Option<Seen> {
        Some(Seen {
            pid,
            comm: comm.into(),
        })
    }

    fn unreachable() -> Result<Reported, InfoError> {
        Err(InfoError::Unreachable {
            target: "127.0.0.1:6379".into(),
            why: "Connection refused".into(),
        })
    }

    #[test]
    fn decide_cases() {
        // Plain local server.
        assert_eq!(
            decide(ev(rep(42), seen(42, "redis-server"))).unwrap(),
            (42, vec![])
        );
        // Container with host networking: Redis says 1, the socket is held by 4242.
        let (pid, w) = decide(ev(rep(1), seen(4242, "redis-server"))).unwrap();
        assert_eq!(pid, 4242);
        assert!(w[0].contains("another PID namespace"), "{w:?}");
        // Port held by a proxy, Redis's own pid unknown here.
        let e = decide(ev(rep(1), seen(77, "docker-proxy"))).unwrap_err();
        assert!(matches!(e, LocateError::NotHere { .. }), "{e}");
        // Port held by a proxy, but the reported pid is a redis-server on its port here.
        let mut e2 = ev(rep(42), seen(77, "docker-proxy"));
        e2.reported_confirmed = true;
        e2.reported_is_redis_here = true;
        assert_eq!(decide(e2).unwrap().0, 42);
        // Remote host.
        let mut r = ev(rep(42), None);
        r.locality = Locality::Remote;
        assert!(matches!(
            decide(r).unwrap_err(),
            LocateError::Remote { pid: 42, .. }
        ));
        // Local, nothing listening here (other netns), pid is a redis-server here.
        let mut n = ev(rep(42), None);
        n.reported_is_redis_here = true;
        let (pid, w) = decide(n).unwrap();
        assert_eq!((pid, w.len()), (42, 1));
        // Local, nothing here at all.
        assert!(matches!(
            decide(ev(rep(42), None)).unwrap_err(),
            LocateError::NotHere { .. }
        ));
        // Unreachable but a process listens: use it, warn.
        let (pid, w) = decide(ev(unreachable(), seen(42, "redis-server"))).unwrap();
        assert_eq!(pid, 42);
        assert!(w[0].starts_with("cannot query Redis: Redis at 127.0.0.1:6379 is unreachable"));
        // Unreachable and nothing listens: the connection error.
        let e = decide(ev(unreachable(), None)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Redis at 127.0.0.1:6379 is unreachable"),
            "{e}"
        );
    }

    #[test]
    fn loopback_and_unix_are_local() {
        for t in [
            "127.0.0.1:1",
            "[::1]:1",
            "localhost:1",
            "unix:///nonexistent.sock",
        ] {
            assert_eq!(locality(&parse_target(t).unwrap()), Locality::Local, "{t}");
        }
        // TEST-NET-1 (RFC 5737) is never assigned to a host.
        assert_eq!(
            locality(&parse_target("192.0.2.1:6379").unwrap()),
            Locality::Remote
        );
    }

    #[test]
    fn real_server_is_found() {
        let server = testkit::Server::start(&testkit::by_label("redis-7.0"), &[]);
        assert_eq!(pid_listening_on(server.port).unwrap(), Some(server.pid));
        let servers = find_redis_servers();
        let ours = servers
            .iter()
            .find(|p| p.pid == server.pid)
            .unwrap_or_else(|| panic!("{servers:?}"));
        assert!(ours.cmdline.contains(&server.port.to_string()), "{ours:?}");

        let addr = format!("127.0.0.1:{}", server.port);
        let r = resolve_redis(&addr, Duration::from_secs(2)).unwrap();
        assert_eq!(r.pid, server.pid);
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let mut conn = r.conn.expect("connection");
        assert!(conn.client_id().unwrap() > 0);
    }

    #[test]
    fn fork_child_is_not_a_server_and_not_the_listener() {
        // A BGSAVE made slow (1 ms per key) keeps the child alive while we look.
        let server = testkit::Server::start(
            &testkit::by_label("redis-7.0"),
            &["--rdb-key-save-delay", "1000"],
        );
        let mut conn = crate::redis::info::connect(
            &format!("127.0.0.1:{}", server.port),
            Duration::from_secs(2),
        )
        .unwrap();
        for i in 0..2000 {
            let _: () = ::redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg("v")
                .query(conn.raw())
                .unwrap();
        }
        let _: String = ::redis::cmd("BGSAVE").query(conn.raw()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let child = loop {
            let kids = crate::kernel::target::children(server.pid);
            if let Some(&k) = kids.first() {
                break k;
            }
            assert!(std::time::Instant::now() < deadline, "no BGSAVE child");
            std::thread::sleep(Duration::from_millis(10));
        };
        let servers = find_redis_servers();
        assert!(servers.iter().any(|p| p.pid == server.pid));
        assert!(!servers.iter().any(|p| p.pid == child), "{servers:?}");
        // The child inherited the listening socket; the parent is still the answer.
        assert_eq!(pid_listening_on(server.port).unwrap(), Some(server.pid));
    }

    #[test]
    fn unix_socket_target() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("redis.sock");
        let sock_arg = sock.to_str().unwrap().to_string();
        let server = testkit::Server::start(
            &testkit::by_label("redis-7.0"),
            &["--unixsocket", &sock_arg],
        );
        assert_eq!(pid_listening_on_unix(&sock).unwrap(), Some(server.pid));
        let r = resolve_redis(&format!("unix://{sock_arg}"), Duration::from_secs(2)).unwrap();
        assert_eq!(r.pid, server.pid);
        assert!(
            r.conn.is_some() && r.warnings.is_empty(),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn wrong_password_falls_back_to_listener() {
        let server = testkit::Server::start(
            &testkit::by_label("redis-7.0"),
            &["--requirepass", "hunter2"],
        );
        let target = format!("redis://:badpass123@127.0.0.1:{}", server.port);
        let r = resolve_redis(&target, Duration::from_secs(2)).unwrap();
        assert_eq!(r.pid, server.pid);
        assert!(r.conn.is_none());
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("WRONGPASS"), "{:?}", r.warnings);
        assert!(!r.warnings[0].contains("badpass123"), "{:?}", r.warnings);
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let e = resolve_redis(&format!("127.0.0.1:{port}"), Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("Redis at 127.0.0.1:{port} is unreachable")),
            "{e}"
        );
        assert_eq!(pid_listening_on(port).unwrap(), None);
    }
}
