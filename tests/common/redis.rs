//! Real Redis servers for the integration tests.
//!
//! [`RedisServer::start`] runs a `redis-server` binary in the foreground on a free
//! loopback port, with its working folder, RDB files and log in a fresh temporary folder,
//! no save points and no AOF, and returns once it answers `PING`. Dropping the value stops
//! the server (SIGTERM, then SIGKILL after 5 s) and removes the folder, whether the test
//! passed or panicked, so nothing is left running and no `dump.rdb` lands in the checkout.
//!
//! [`binaries`] lists the servers to run every compatibility test against: Debian's 7.0,
//! and 6.2 when `cargo xtask test` exported `MEMTRACE_REDIS62`.
//!
//! ```ignore
//! for (label, binary) in common::redis::binaries() {
//!     let server = RedisServer::start(&binary, &[]);
//!     server.populate(10_000, "key", 64);
//!     let mut con = server.client();
//!     let _: () = redis::cmd("BGSAVE").query(&mut con).unwrap();
//!     let (status, cow) = server.wait_bgsave_done(Duration::from_secs(30));
//!     assert_eq!(status, "ok", "{label}");
//! }
//! ```

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The `redis` crate, re-exported. Test files `use common::*;`, which brings this module
/// into scope as `redis` and hides the crate of that name; with this re-export
/// `redis::cmd(..)`, `redis::Connection`, `redis::Commands` ... still work in expressions
/// and types there. A `use` of the crate next to `use common::*;` must be written
/// `use ::redis::Commands;` (plain `use redis::...` is ambiguous, error E0659).
#[allow(unused_imports, reason = "for the test files")]
pub use ::redis::*;

/// Debian's Redis 7.0, installed by `cargo xtask setup`.
pub const REDIS_70: &str = "/usr/bin/redis-server";

/// Environment variable with the path of the Redis 6.2 server (set by `cargo xtask test`).
pub const REDIS62_ENV: &str = "MEMTRACE_REDIS62";

/// Read and write timeout of [`RedisServer::client`] connections: long enough for a large
/// `DEBUG POPULATE` or `DEBUG RELOAD`, short enough that a stuck server fails the test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`RedisServer::start`] waits for the first `PING` reply.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The servers to test against, as (label, binary): `"7.0"` is always there; `"6.2"` is
/// added from `MEMTRACE_REDIS62`.
///
/// Without `MEMTRACE_REDIS62` this panics under CI (`CI=true`), where both versions must
/// be covered, and otherwise prints a note and returns 7.0 only.
pub fn binaries() -> Vec<(String, PathBuf)> {
    let v70 = PathBuf::from(REDIS_70);
    assert!(
        v70.exists(),
        "{REDIS_70} missing: run `cargo xtask setup` (it installs redis-server)"
    );
    let mut out = vec![("7.0".to_string(), v70)];
    match std::env::var_os(REDIS62_ENV) {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "{REDIS62_ENV}={} does not exist: run `cargo xtask setup`",
                p.display()
            );
            out.push(("6.2".to_string(), p));
        }
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            assert!(
                !ci,
                "{REDIS62_ENV} is not set: run the tests via `cargo xtask test`, which installs \
                 Redis 6.2 and exports it"
            );
            eprintln!(
                "note: {REDIS62_ENV} is not set, testing Redis 7.0 only (`cargo xtask test` \
                 also tests 6.2)"
            );
        }
    }
    out
}

/// `X.Y.Z` from `binary --version` (`Redis server v=X.Y.Z sha=...`).
pub fn binary_version(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --version: {e}", binary.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or_else(|| panic!("{} --version printed no v=: {text}", binary.display()))
        .to_string()
}

/// Major version number of `X.Y.Z`.
fn major(version: &str) -> u32 {
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("bad Redis version {version:?}"))
}

/// A free loopback port: bound, read, released (the server binds it right after; a lost
/// race is retried by [`RedisServer::start`]).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port on 127.0.0.1")
        .port()
}

/// A running `redis-server`, stopped and cleaned up when dropped.
pub struct RedisServer {
    /// The server's pid (the `redis-server` process itself; trace this).
    pub pid: u32,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its working folder (`--dir`): RDB files and `redis.log`. Removed on drop, after
    /// the server stopped.
    pub dir: tempfile::TempDir,
    child: Child,
    /// `redis_version` from `INFO server`, e.g. `7.0.15` or `6.2.14`.
    pub version: String,
}

impl RedisServer {
    /// Starts `binary` with `--port P --bind 127.0.0.1 --save '' --appendonly no --dir TMP
    /// --daemonize no` (plus `--enable-debug-command yes` on 7.0 and later, so `DEBUG`
    /// works; 6.2 allows it by default and has no such option), then `extra_args`, which
    /// come last and so override single-valued options (e.g. `&["--maxmemory", "100mb"]`).
    ///
    /// Returns once the server answers `PING`; panics with the server's log if it does not
    /// within 10 s.
    pub fn start(binary: &Path, extra_args: &[&str]) -> RedisServer {
        RedisServer::start_with_port(binary, None, extra_args)
    }

    /// [`RedisServer::start`] on `port` (a free one when `None`); a given port is not
    /// retried elsewhere.
    pub fn start_with_port(binary: &Path, fixed: Option<u16>, extra_args: &[&str]) -> RedisServer {
        let binary_version = binary_version(binary);
        let mut last_log = String::new();
        // A port taken between `free_port` and the server's bind is retried.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("memtrace-redis-")
                .tempdir()
                .expect("create a temporary folder for redis-server");
            let port = fixed.unwrap_or_else(free_port);
            let log_path = dir.path().join("redis.log");
            let log = std::fs::File::create(&log_path).expect("create redis.log");
            let mut cmd = Command::new(binary);
            cmd.arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .args(["--daemonize", "no"]);
            if major(&binary_version) >= 7 {
                cmd.args(["--enable-debug-command", "yes"]);
            }
            let child = cmd
                .args(extra_args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            let mut server = RedisServer {
                pid: child.id(),
                port,
                dir,
                child,
                version: String::new(),
            };
            match server.wait_ready(START_TIMEOUT) {
                Ok(()) => {
                    server.version = server
                        .info("server")
                        .remove("redis_version")
                        .expect("INFO server has redis_version");
                    return server;
                }
                Err(reason) => {
                    last_log = format!("{reason}\n--- redis.log ---\n{}", server.log());
                    let port_taken = last_log.contains("Address already in use");
                    drop(server);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!(
            "{} {extra_args:?} did not start: {last_log}",
            binary.display()
        );
    }

    /// Waits until `PING` answers `PONG`; an error if the server exits or time runs out.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("redis-server exited with {st}"));
            }
            let pong = redis::Client::open(format!("redis://{}/", self.url()))
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            if pong.as_deref() == Ok("PONG") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {timeout:?} (last: {pong:?})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT` (for `redis-cli -h`/`-p`, prefix `redis://` for a URL).
    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A new synchronous connection, with [`CLIENT_TIMEOUT`] read and write timeouts.
    pub fn client(&self) -> redis::Connection {
        let con = redis::Client::open(format!("redis://{}/", self.url()))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("cannot connect to redis at {}: {e}", self.url()));
        con.set_read_timeout(Some(CLIENT_TIMEOUT))
            .expect("set read timeout");
        con.set_write_timeout(Some(CLIENT_TIMEOUT))
            .expect("set write timeout");
        con
    }

    /// Runs one command on a new connection and converts its reply; panics on error.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.client())
            .unwrap_or_else(|e| panic!("redis command failed on {}: {e}", self.url()))
    }

    /// `INFO section` as `field -> value` (comment and empty lines skipped).
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let text: String = self.query(redis::cmd("INFO").arg(section));
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect()
    }

    /// Numeric `INFO` field, panicking if absent or not a number.
    pub fn info_u64(&self, section: &str, field: &str) -> u64 {
        let info = self.info(section);
        let v = info
            .get(field)
            .unwrap_or_else(|| panic!("INFO {section} has no {field} (Redis {})", self.version));
        v.parse()
            .unwrap_or_else(|_| panic!("INFO {section} {field} is not a number: {v}"))
    }

    /// `DEBUG POPULATE count prefix value_size`: keys `prefix:0` .. `prefix:{count-1}`
    /// with string values of `value_size` bytes (existing keys are left as they are).
    /// Asserts the first and last keys exist afterwards.
    pub fn populate(&self, count: u64, prefix: &str, value_size: usize) {
        let mut con = self.client();
        redis::cmd("DEBUG")
            .arg("POPULATE")
            .arg(count)
            .arg(prefix)
            .arg(value_size)
            .query::<()>(&mut con)
            .unwrap_or_else(|e| panic!("DEBUG POPULATE on Redis {}: {e}", self.version));
        if count > 0 {
            let exist: u64 = redis::cmd("EXISTS")
                .arg(format!("{prefix}:0"))
                .arg(format!("{prefix}:{}", count - 1))
                .query(&mut con)
                .expect("EXISTS");
            // EXISTS counts a key named twice twice, so 2 also when count is 1.
            assert_eq!(
                exist,
                2,
                "DEBUG POPULATE {count} {prefix} did not create {prefix}:0 and {prefix}:{}",
                count - 1
            );
        }
    }

    /// Polls `INFO persistence` until no BGSAVE is in progress; returns
    /// (`rdb_last_bgsave_status`, `rdb_last_cow_size`), e.g. `("ok", 1048576)`.
    /// Panics after `timeout`.
    ///
    /// Call it after `BGSAVE` returned: the fork happens before the reply, so a BGSAVE just
    /// started is always seen in progress.
    pub fn wait_bgsave_done(&self, timeout: Duration) -> (String, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.info("persistence");
            if info.get("rdb_bgsave_in_progress").map(String::as_str) == Some("0") {
                let status = info
                    .get("rdb_last_bgsave_status")
                    .cloned()
                    .expect("INFO persistence has rdb_last_bgsave_status");
                let cow = info
                    .get("rdb_last_cow_size")
                    .and_then(|v| v.parse().ok())
                    .expect("INFO persistence has rdb_last_cow_size");
                return (status, cow);
            }
            assert!(
                Instant::now() < deadline,
                "BGSAVE still in progress after {timeout:?} on Redis {}",
                self.version
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Whether the server process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child, which has not been reaped.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // `dir` is removed after this, when the fields drop.
    }
}

/// Checks the harness against every server of [`binaries`]: version, `DEBUG POPULATE`,
/// `INFO`, a BGSAVE that forks, and a clean stop. Call it from a `#[test]` of the Redis
/// test file (it is not a `#[test]` here, or it would run in every test binary).
pub fn self_test() {
    for (label, binary) in binaries() {
        let mut server = RedisServer::start(&binary, &[]);
        assert!(
            server.version.starts_with(&format!("{label}.")),
            "{} reports {} for label {label}",
            binary.display(),
            server.version
        );
        assert_eq!(server.version, binary_version(&binary));
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/exe", server.pid)).ok(),
            std::fs::canonicalize(&binary).ok(),
            "pid {} is not {}",
            server.pid,
            binary.display()
        );
        assert_eq!(server.info("server")["tcp_port"], server.port.to_string());

        server.populate(5000, "k", 100);
        assert!(
            server.info("keyspace")["db0"].starts_with("keys=5000,"),
            "{label}: {:?}",
            server.info("keyspace")
        );
        let size: u64 = server.query(&redis::cmd("DBSIZE"));
        assert_eq!(size, 5000, "{label}");
        let len: u64 = server.query(redis::cmd("STRLEN").arg("k:4999"));
        assert_eq!(len, 100, "{label}");

        let _: String = server.query(&redis::cmd("BGSAVE"));
        let (status, _cow) = server.wait_bgsave_done(Duration::from_secs(30));
        assert_eq!(status, "ok", "{label}: {}", server.log());
        assert!(
            server.dir.path().join("dump.rdb").exists(),
            "{label}: BGSAVE wrote no dump.rdb in the server's folder"
        );
        assert_eq!(
            server.info_u64("persistence", "rdb_changes_since_last_save"),
            0,
            "{label}"
        );

        let (pid, dir) = (server.pid, server.dir.path().to_path_buf());
        assert!(server.is_running());
        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{label}: redis-server {pid} still running after drop"
        );
        assert!(!dir.exists(), "{label}: {} left behind", dir.display());
    }
}
