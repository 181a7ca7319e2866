//! Throwaway processes for the benchmark and the demo: a `redis-server` on a free port in
//! a temporary folder, and child processes stopped (signal, grace, SIGKILL) on every path.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The Redis under test.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Sends `sig` to `child` and waits up to `grace` for it to exit, then SIGKILLs it.
/// Returns the exit status when the process ended within `grace`.
pub fn stop_child(
    child: &mut Child,
    sig: libc::c_int,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    // SAFETY: signalling our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A child process stopped (signal, grace period, SIGKILL) when dropped.
pub struct Guarded {
    child: Option<Child>,
    sig: libc::c_int,
    grace: Duration,
}

impl Guarded {
    pub fn new(child: Child, sig: libc::c_int, grace: Duration) -> Guarded {
        Guarded {
            child: Some(child),
            sig,
            grace,
        }
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until stopped")
    }

    /// Stops the child now; its exit status if it exited within the grace period.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        stop_child(&mut child, self.sig, self.grace)
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A folder removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh folder named `{name}-{pid}`.
    pub fn new(name: &str) -> Result<TempDir> {
        // Timelines can be large: keep them in memory when possible, like `bench`.
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The redis-server under test, stopped with SIGTERM (then SIGKILL after 5 s) when dropped.
pub struct Server {
    /// The server process.
    pub proc: Guarded,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Starts the server on a free port; returns once it answers PING.
    pub fn start(dir: &Path) -> Result<Server> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Server::start_once(dir) {
                // The port was taken between `free_port` and the server's bind: pick another.
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {}
                r => return r,
            }
        }
    }

    fn start_once(dir: &Path) -> Result<Server> {
        let log = dir.join("redis.log");
        let port = free_port()?;
        let child = Command::new(REDIS_SERVER)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir"])
            .arg(dir)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {REDIS_SERVER} (run `cargo xtask setup`)"))?;
        let mut server = Server {
            proc: Guarded::new(child, libc::SIGTERM, Duration::from_secs(5)),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.cli(&["PING"]).is_ok_and(|r| r.trim() == "PONG") {
                return Ok(server);
            }
            if let Ok(Some(st)) = server.proc.child().try_wait() {
                bail!("redis-server exited with {st}: {}", server.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not answer PING in 10 s: {}",
                    server.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's pid.
    pub fn pid(&mut self) -> u32 {
        self.proc.child().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One command through redis-cli; its reply as text.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let o = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli (run `cargo xtask setup`)")?;
        if !o.status.success() {
            bail!(
                "redis-cli {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `keys` keys of `value_size` bytes, named as redis-benchmark's `key:__rand_int__`
    /// expands (`%012d`).
    pub fn populate(&self, keys: u64, value_size: usize) -> Result<()> {
        let value = "x".repeat(value_size);
        let mut resp = Vec::with_capacity(keys as usize * (value_size + 50));
        for i in 0..keys {
            write!(
                resp,
                "*3\r\n$3\r\nSET\r\n$16\r\nkey:{i:012}\r\n${value_size}\r\n{value}\r\n"
            )?;
        }
        let mut child = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--pipe"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running redis-cli --pipe")?;
        let mut stdin = child.stdin.take().context("redis-cli stdin")?;
        let writer = std::thread::spawn(move || stdin.write_all(&resp));
        let out = child.wait_with_output()?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains(&format!("errors: 0, replies: {keys}")) {
            bail!(
                "populating failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let size: u64 = self.cli(&["DBSIZE"])?.trim().parse().unwrap_or(0);
        if size != keys {
            bail!("DBSIZE is {size} after populating, expected {keys}");
        }
        Ok(())
    }
}
