//! The one server launcher: any [`Build`] of the manifest, Redis or Valkey.
//!
//! [`Server::start`] runs the build's server in the foreground on a free loopback port,
//! with the build's environment, its working folder, RDB files and log in a fresh
//! temporary folder, no save points and no AOF, and returns once it answers `PING`.
//! Dropping it stops the server (`SHUTDOWN NOSAVE`, SIGTERM, SIGKILL after 5 s, fork
//! children included) and removes the folder, whether the test passed or panicked, so
//! nothing is left running and no `dump.rdb` lands in the checkout.
//!
//! ```ignore
//! let server = Server::start(&testkit::by_label("redis-7.0"), &["--maxmemory", "100mb"]);
//! server.populate(10_000, "key", 64);
//! let _: String = server.query(&redis::cmd("BGSAVE"));
//! let (status, cow) = server.wait_bgsave_done(Duration::from_secs(30));
//! ```

use std::{
    collections::HashMap,
    fs::File,
    path::Path,
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Build, Error,
    commands::parse_info,
    process::{children_of, signal, try_free_port, wait_exit},
};

/// Read and write timeout of [`Server::client`] connections: long enough for a large
/// `DEBUG POPULATE` or `DEBUG RELOAD`, short enough that a stuck server fails the test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`Server::start`] waits for the first `PING` reply.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts on a free port; a port taken between choosing and binding it is retried.
const START_ATTEMPTS: u32 = 3;
/// How long a dropped server has to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The server's stdout and stderr, in its folder.
const LOG: &str = "redis.log";
/// Keys per pipeline in [`Server::try_populate_benchmark_keys`].
const PIPELINE_KEYS: u64 = 10_000;

/// A running server, stopped and cleaned up when dropped.
pub struct Server {
    /// What runs.
    pub build: Build,
    /// The server's pid (the server process itself; trace this).
    pub pid: u32,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// Its working folder (`--dir`): RDB files and `redis.log`. Removed on drop, after
    /// the server stopped.
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Server {
    /// Starts `build` with `--port P --bind 127.0.0.1 --save '' --appendonly no --dir TMP
    /// --daemonize no` (plus `--enable-debug-command yes` from 7.0 on, so `DEBUG` works;
    /// 6.2 allows it by default and has no such option), then `extra_args`, which come
    /// last and so override single-valued options (e.g. `&["--maxmemory", "100mb"]`).
    ///
    /// Returns once the server answers `PING` (or `NOAUTH`, under `--requirepass`);
    /// panics with the server's log if it does not within 10 s.
    pub fn start(build: &Build, extra_args: &[&str]) -> Server {
        Server::start_on_port(build, None, extra_args)
    }

    /// [`Server::start`] on `port` (a free one when `None`).
    pub fn start_on_port(build: &Build, port: Option<u16>, extra_args: &[&str]) -> Server {
        Server::try_start(build, port, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Server::start_on_port`], returning an error instead of panicking. A given port is
    /// not retried elsewhere.
    pub fn try_start(
        build: &Build,
        port: Option<u16>,
        extra_args: &[&str],
    ) -> Result<Server, Error> {
        let mut attempt = 1;
        loop {
            let p = match port {
                Some(p) => p,
                None => try_free_port()?,
            };
            match Server::launch(build, p, extra_args, None) {
                Err(Error::ServerStart { log, .. })
                    if port.is_none()
                        && attempt < START_ATTEMPTS
                        && log.contains("Address already in use") =>
                {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    /// Starts `build` on `port` as process `pid`, a pid the kernel has freed (what a
    /// restart that reuses the old pid looks like). The kernel's next pid is set just
    /// below it (`/proc/sys/kernel/ns_last_pid`, root only); a start that got another pid
    /// (something else forked in between) fails before it runs the server and is tried
    /// again, so no other server ever listens on `port`.
    pub fn start_as_pid(build: &Build, port: u16, pid: u32) -> Server {
        for _ in 0..PID_ATTEMPTS {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .unwrap_or_else(|e| panic!("setting ns_last_pid: {e}"));
            match Server::launch(build, port, &[], Some(pid)) {
                Ok(server) => return server,
                Err(Error::Io { source, .. }) if source.raw_os_error() == Some(NOT_THE_PID) => {}
                Err(e) => panic!("{e}"),
            }
        }
        panic!("could not start {} as pid {pid}", build.label);
    }

    fn launch(
        build: &Build,
        port: u16,
        extra_args: &[&str],
        pid: Option<u32>,
    ) -> Result<Server, Error> {
        let dir = tempfile::Builder::new()
            .prefix("memtrace-redis-")
            .tempdir()
            .map_err(Error::io("creating a temporary folder for the server"))?;
        let child = spawn(build, port, dir.path(), extra_args, pid)?;
        let mut server = Server {
            build: build.clone(),
            pid: child.id(),
            port,
            dir,
            child,
        };
        match server.wait_ready(START_TIMEOUT) {
            Ok(()) => Ok(server),
            Err(reason) => Err(Error::ServerStart {
                server: build.server.clone(),
                extra: extra_args.iter().map(|a| a.to_string()).collect(),
                reason,
                log: server.log(),
            }),
        }
    }

    /// Waits until `PING` answers `PONG` (or `NOAUTH`: the server is up and wants a
    /// password); the reason if the server exits or time runs out.
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("the server exited with {st}"));
            }
            let pong = self
                .connect(Duration::from_millis(500))
                .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con));
            match &pong {
                Ok(p) if p == "PONG" => return Ok(()),
                Err(e) if e.code() == Some("NOAUTH") => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!("no PONG within {timeout:?} (last: {pong:?})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://{}/", self.url()))?
            .get_connection_with_timeout(timeout)
    }

    /// redis-benchmark SET and GET on 100,000 random keys of 512 B, 20 clients, without
    /// pause until dropped (killed then).
    pub fn benchmark_loop(&self) -> crate::Guarded {
        crate::Guarded::kill_on_drop(
            std::process::Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-t", "set,get", "-r", "100000", "-d", "512", "-c", "20"])
                .args(["-n", "1000000000", "-q", "-l"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-benchmark"),
        )
    }

    /// `127.0.0.1:PORT` (for `redis-cli -h`/`-p`, prefix `redis://` for a URL).
    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A new synchronous connection, with [`CLIENT_TIMEOUT`] read and write timeouts.
    pub fn try_client(&self) -> Result<redis::Connection, Error> {
        let redis_error = |source| Error::Redis {
            what: "connecting".into(),
            url: self.url(),
            source,
        };
        let con = self.connect(Duration::from_secs(5)).map_err(redis_error)?;
        con.set_read_timeout(Some(CLIENT_TIMEOUT))
            .and_then(|()| con.set_write_timeout(Some(CLIENT_TIMEOUT)))
            .map_err(redis_error)?;
        Ok(con)
    }

    /// [`Server::try_client`], panicking on failure.
    pub fn client(&self) -> redis::Connection {
        self.try_client().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs one command on a new connection and converts its reply.
    pub fn try_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        cmd.query(&mut self.try_client()?)
            .map_err(|source| Error::Redis {
                what: "a command failed".into(),
                url: self.url(),
                source,
            })
    }

    /// [`Server::try_query`], panicking on failure.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        self.try_query(cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `CONFIG SET name value`.
    pub fn try_config_set(&self, name: &str, value: impl redis::ToRedisArgs) -> Result<(), Error> {
        self.try_query(redis::cmd("CONFIG").arg("SET").arg(name).arg(value))
    }

    /// [`Server::try_config_set`], panicking on failure.
    pub fn config_set(&self, name: &str, value: impl redis::ToRedisArgs) {
        self.try_config_set(name, value)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `INFO section` as `field -> value` (comment and empty lines skipped).
    pub fn try_info(&self, section: &str) -> Result<HashMap<String, String>, Error> {
        let text: String = self.try_query(redis::cmd("INFO").arg(section))?;
        Ok(parse_info(&text))
    }

    /// [`Server::try_info`], panicking on failure.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        self.try_info(section).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Numeric `INFO` field, panicking if absent or not a number.
    pub fn info_u64(&self, section: &str, field: &str) -> u64 {
        let info = self.info(section);
        let v = info
            .get(field)
            .unwrap_or_else(|| panic!("INFO {section} has no {field} ({})", self.build.label));
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
            .unwrap_or_else(|e| panic!("DEBUG POPULATE on {}: {e}", self.build.label));
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

    /// `keys` keys of `value_size` bytes named as `redis-benchmark -r N` names them
    /// (`key:%012d`), so that every benchmark GET hits and every SET overwrites a value of
    /// the same size; checks `DBSIZE` afterwards.
    pub fn try_populate_benchmark_keys(&self, keys: u64, value_size: usize) -> Result<(), Error> {
        let mut con = self.try_client()?;
        let value = vec![b'x'; value_size];
        let mut next = 0;
        while next < keys {
            let end = (next + PIPELINE_KEYS).min(keys);
            let mut pipe = redis::pipe();
            for i in next..end {
                pipe.cmd("SET")
                    .arg(format!("key:{i:012}"))
                    .arg(&value)
                    .ignore();
            }
            pipe.query::<()>(&mut con).map_err(|source| Error::Redis {
                what: "populating".into(),
                url: self.url(),
                source,
            })?;
            next = end;
        }
        let size: u64 = self.try_query(&redis::cmd("DBSIZE"))?;
        if size != keys {
            return Err(Error::Unexpected {
                what: format!("DBSIZE is {size} after populating, expected {keys}"),
                url: self.url(),
            });
        }
        Ok(())
    }

    /// Polls `INFO persistence` until no BGSAVE is in progress; returns
    /// (`rdb_last_bgsave_status`, `rdb_last_cow_size`), e.g. `("ok", 1048576)`.
    ///
    /// Call it after `BGSAVE` returned: the fork happens before the reply, so a BGSAVE just
    /// started is always seen in progress.
    pub fn try_wait_bgsave_done(&self, timeout: Duration) -> Result<(String, u64), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.try_info("persistence")?;
            if info.get("rdb_bgsave_in_progress").map(String::as_str) == Some("0") {
                let status = info.get("rdb_last_bgsave_status").cloned();
                let cow = info.get("rdb_last_cow_size").and_then(|v| v.parse().ok());
                return status.zip(cow).ok_or_else(|| Error::Unexpected {
                    what: format!("INFO persistence lacks rdb_last_bgsave_status or rdb_last_cow_size: {info:?}"),
                    url: self.url(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("BGSAVE still in progress on {}", self.build.label),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the main dictionary of db 0 is not being rehashed (`DEBUG HTSTATS 0`
    /// shows no rehashing target). While a fork child lives Redis stops rehashing in
    /// `serverCron` and each lookup moves one bucket instead, writing entries all over
    /// the heap: a test that counts a command's pages waits for this first.
    pub fn try_wait_rehashed(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats: String = self.try_query(redis::cmd("DEBUG").arg("HTSTATS").arg(0))?;
            if !htstats_rehashing(&stats) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "{}: db 0 still rehashing ({})",
                        self.build.label,
                        stats.trim()
                    ),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Server::try_wait_rehashed`], panicking on failure.
    pub fn wait_rehashed(&self, timeout: Duration) {
        self.try_wait_rehashed(timeout)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts a BGSAVE, overwrites `key:0` to `key:{n - 1}` with `size` bytes of `fill`
    /// in one pipeline while the child lives, and waits for the save to end.
    pub fn bgsave_and_overwrite(&self, n: u64, fill: u8, size: usize) {
        let mut con = self.client();
        let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
        let value = vec![fill; size];
        let mut pipe = redis::pipe();
        for i in 0..n {
            pipe.cmd("SET").arg(format!("key:{i}")).arg(&value).ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
        self.wait_bgsave_done(Duration::from_secs(60));
    }

    /// [`Server::try_wait_bgsave_done`], panicking on failure.
    pub fn wait_bgsave_done(&self, timeout: Duration) -> (String, u64) {
        self.try_wait_bgsave_done(timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default()
    }

    /// Whether the server process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the server and reaps it, as a crash would end it (its folder stays until
    /// drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `SHUTDOWN NOSAVE` on a short-lived connection; whatever happens is fine (the
    /// server may want a password, or be hung): SIGTERM and SIGKILL follow.
    fn shutdown_nosave(&self) {
        if let Ok(mut con) = self.connect(Duration::from_secs(1)) {
            let _ = con.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut con);
        }
    }
}

/// Starts the server process of `build` in `dir`, its output in `dir/redis.log`.
/// What a start as a given pid fails with when the child got another pid.
const NOT_THE_PID: i32 = libc::EAGAIN;
/// Starts tried by [`Server::start_as_pid`].
const PID_ATTEMPTS: u32 = 50;

fn spawn(
    build: &Build,
    port: u16,
    dir: &Path,
    extra_args: &[&str],
    pid: Option<u32>,
) -> Result<Child, Error> {
    let log = File::create(dir.join(LOG)).map_err(Error::io("creating redis.log"))?;
    let log_too = log.try_clone().map_err(Error::io("cloning redis.log"))?;
    let mut cmd = build.command();
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no"]);
    if build.major() >= 7 {
        cmd.args(["--enable-debug-command", "yes"]);
    }
    if let Some(want) = pid {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec; getpid is async-signal-safe and
        // nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if libc::getpid() as u32 == want {
                    Ok(())
                } else {
                    Err(std::io::Error::from_raw_os_error(NOT_THE_PID))
                }
            });
        }
    }
    cmd.args(extra_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_too)
        .stderr(log)
        .spawn()
        .map_err(Error::io(format!("starting {}", build.server.display())))
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.is_running() {
            return;
        }
        self.shutdown_nosave();
        signal(self.pid, libc::SIGTERM);
        if wait_exit(&mut self.child, STOP_GRACE).is_some() {
            return;
        }
        // A fork child would outlive its killed parent: kill it first.
        for kid in children_of(self.pid) {
            signal(kid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed after this, when the fields drop.
    }
}

/// Whether `DEBUG HTSTATS` output shows a rehash under way: a second table shown as the
/// "rehashing target" (Redis, Valkey 8), or a "rehashing index" other than -1 (Valkey 9
/// prints the line, as -1, also when idle).
fn htstats_rehashing(stats: &str) -> bool {
    stats.lines().any(|line| {
        let line = line.trim().to_ascii_lowercase();
        line.contains("rehashing target")
            || line
                .strip_prefix("rehashing index:")
                .is_some_and(|v| v.trim() != "-1")
    })
}
