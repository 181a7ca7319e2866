//! Memory samples on the timeline: the server's and its fork child's memory from
//! /proc/PID/smaps_rollup, Redis's own view from `INFO`, and machine-wide swap traffic
//! from /proc/vmstat, taken by a background thread at a fixed interval.
//!
//! Every `ts_ns` is CLOCK_MONOTONIC ([`crate::analysis::clock::monotonic_ns`]), the clock of the
//! fault events, so samples and events share one time axis.
//!
//! Cost on the target: reading smaps_rollup walks the process's page tables under its
//! mmap lock (a cost that grows with the heap, and a writer of the mapping waits
//! meanwhile), so only every [`SMAPS_EVERY`]-th sample reads it; the others
//! take RSS and swap from /proc/PID/status, which reads the kernel's counters. `INFO`
//! runs on Redis's main thread; intervals of 100 ms or more keep it negligible.
//!
//! On a server in cluster mode (INFO `cluster_enabled:1`) each sample also reads the
//! cluster map (`CLUSTER SHARDS`, or `CLUSTER NODES` on servers before 7.0) and keeps it
//! when it differs from the last one kept ([`Captures`]).

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use procfs::process::{Process, SmapsRollup};
use serde_json::Value;

use crate::{
    analysis::clock,
    json_fields::u64_at,
    redis::{
        cluster::{Captures, ClusterError, ClusterQuery, MAX_CAPTURES},
        info::{Info, InfoError, RedisConn},
    },
};

/// Every how many samples smaps_rollup is read (the first sample always reads it). At
/// the default 1 s interval: every 10 s. Read every second, it was about 40% of the
/// tracer's CPU in a perf profile of the tracer during a BGSAVE of 1,000,000 keys under
/// `redis-benchmark`.
pub const SMAPS_EVERY: u64 = 10;

/// Samples kept at most (about 200 bytes each); later ones are counted, not kept.
pub const MAX_SAMPLES: usize = 1_000_000;

/// How often a lost Redis connection is retried while sampling.
const INFO_RETRY: Duration = Duration::from_secs(10);

/// Errors taking one sample.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// /proc/PID/smaps_rollup or /proc/PID/status could not be read (process gone,
    /// kernel without smaps_rollup).
    #[error("cannot read /proc/{pid}/{file}: {why}")]
    Proc {
        /// The process.
        pid: u32,
        /// The file.
        file: &'static str,
        /// The reason.
        why: String,
    },
    /// `INFO` failed.
    #[error(transparent)]
    Info(#[from] InfoError),
}

/// One process's memory, from /proc/PID/smaps_rollup, or from /proc/PID/status without
/// the two fields only smaps_rollup has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcMem {
    /// Resident set size (`Rss`, or `VmRSS`).
    pub rss_bytes: u64,
    /// Swapped out anonymous memory (`Swap`, or `VmSwap`).
    pub swap_bytes: u64,
    /// Resident transparent huge pages (`AnonHugePages`); smaps_rollup only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anon_huge_bytes: Option<u64>,
    /// Dirty pages mapped only by this process (`Private_Dirty`): in a fork child these
    /// are the pages it has copied; in the parent, the ones no longer shared.
    /// smaps_rollup only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_dirty_bytes: Option<u64>,
}

impl ProcMem {
    /// Extracts the fields from a parsed smaps_rollup; `None` if it holds no mapping
    /// (an exiting process reads as empty).
    pub fn from_rollup(rollup: &SmapsRollup) -> Option<ProcMem> {
        let map = &rollup.memory_map_rollup.0.first()?.extension.map;
        // procfs has already converted the kB values to bytes.
        let get = |key: &str| map.get(key).copied().unwrap_or(0);
        Some(ProcMem {
            rss_bytes: get("Rss"),
            swap_bytes: get("Swap"),
            anon_huge_bytes: Some(get("AnonHugePages")),
            private_dirty_bytes: Some(get("Private_Dirty")),
        })
    }
}

/// Reads RSS and swap of process `pid` from /proc/PID/status: the kernel's counters, no
/// page-table walk.
pub fn read_proc_counters(pid: u32) -> Result<ProcMem, SampleError> {
    let fail = |why: String| SampleError::Proc {
        pid,
        file: "status",
        why,
    };
    let proc_pid = i32::try_from(pid).map_err(|_| fail("not a PID".into()))?;
    let status = Process::new(proc_pid)
        .and_then(|p| p.status())
        .map_err(|e| fail(e.to_string()))?;
    // Kernel threads and exiting processes have no memory lines.
    let rss_kb = status
        .vmrss
        .ok_or_else(|| fail("no VmRSS (process exiting?)".into()))?;
    Ok(ProcMem {
        rss_bytes: rss_kb * 1024,
        swap_bytes: status.vmswap.unwrap_or(0) * 1024,
        anon_huge_bytes: None,
        private_dirty_bytes: None,
    })
}

/// Reads the memory of process `pid` from /proc/PID/smaps_rollup (Linux 4.14+).
pub fn read_proc_mem(pid: u32) -> Result<ProcMem, SampleError> {
    let fail = |why: String| SampleError::Proc {
        pid,
        file: "smaps_rollup",
        why,
    };
    let proc_pid = i32::try_from(pid).map_err(|_| fail("not a PID".into()))?;
    let rollup = Process::new(proc_pid)
        .and_then(|p| p.smaps_rollup())
        .map_err(|e| fail(e.to_string()))?;
    ProcMem::from_rollup(&rollup).ok_or_else(|| fail("empty (process exiting?)".into()))
}

/// Redis's view of its memory, from `INFO`. Fields a server version does not report are
/// `None` (e.g. `current_cow_size` is new in 6.2/7.0).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct InfoMem {
    /// Bytes allocated by Redis (`used_memory`).
    pub used_memory: Option<u64>,
    /// RSS as Redis sees it (`used_memory_rss`).
    pub used_memory_rss: Option<u64>,
    /// `used_memory_rss / used_memory`.
    pub mem_fragmentation_ratio: Option<f64>,
    /// Allocator's allocated bytes.
    pub allocator_allocated: Option<u64>,
    /// Allocator's active pages, bytes.
    pub allocator_active: Option<u64>,
    /// Allocator's resident bytes.
    pub allocator_resident: Option<u64>,
    /// Configured limit, 0 for none.
    pub maxmemory: Option<u64>,
    /// Copy-on-write bytes of the running fork child.
    pub current_cow_size: Option<u64>,
    /// Copy-on-write bytes of the last RDB child.
    pub rdb_last_cow_size: Option<u64>,
    /// Duration of the last fork() call, µs.
    pub latest_fork_usec: Option<u64>,
    /// Forks since start (tells a fork between two samples).
    pub total_forks: Option<u64>,
    /// An RDB save (BGSAVE or replica full sync) is running.
    pub rdb_bgsave_in_progress: bool,
    /// An AOF rewrite is running.
    pub aof_rewrite_in_progress: bool,
}

impl InfoMem {
    /// Picks the memory fields out of a parsed `INFO` reply (memory, persistence and stats
    /// sections).
    pub fn from_info(info: &Info) -> InfoMem {
        InfoMem {
            used_memory: info.get_u64("used_memory"),
            used_memory_rss: info.get_u64("used_memory_rss"),
            mem_fragmentation_ratio: info.get_f64("mem_fragmentation_ratio"),
            allocator_allocated: info.get_u64("allocator_allocated"),
            allocator_active: info.get_u64("allocator_active"),
            allocator_resident: info.get_u64("allocator_resident"),
            maxmemory: info.get_u64("maxmemory"),
            current_cow_size: info.get_u64("current_cow_size"),
            rdb_last_cow_size: info.get_u64("rdb_last_cow_size"),
            latest_fork_usec: info.get_u64("latest_fork_usec"),
            total_forks: info.get_u64("total_forks"),
            rdb_bgsave_in_progress: info.get_flag("rdb_bgsave_in_progress").unwrap_or(false),
            aof_rewrite_in_progress: info.get_flag("aof_rewrite_in_progress").unwrap_or(false),
        }
    }
}

/// Runs `INFO` (default sections: one round trip, and multi-section `INFO a b` needs
/// Redis 7) and extracts [`InfoMem`].
pub fn query_info(conn: &mut RedisConn) -> Result<InfoMem, SampleError> {
    Ok(InfoMem::from_info(&conn.info("")?))
}

/// One point on the timeline.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Sample {
    /// CLOCK_MONOTONIC, ns.
    pub ts_ns: u64,
    /// The server's memory; `None` if /proc could not be read.
    pub server: Option<ProcMem>,
    /// A live fork child (PID, memory), if one exists.
    pub child: Option<(u32, ProcMem)>,
    /// Redis's `INFO`, when a connection was given and works.
    pub info: Option<InfoMem>,
    /// Pages swapped in machine-wide since the previous sample (`pswpin`).
    pub pswpin_delta: Option<u64>,
    /// Pages swapped out machine-wide since the previous sample (`pswpout`).
    pub pswpout_delta: Option<u64>,
}

// Reading samples back from a timeline (`report`, `export`), leniently: a missing or
// mistyped field is `None`, never an error.

impl ProcMem {
    /// A process's memory in a timeline sample; `None` without `rss_bytes` (a missing
    /// swap reads as 0).
    pub fn from_json(v: &Value) -> Option<ProcMem> {
        Some(ProcMem {
            rss_bytes: u64_at(v, "rss_bytes")?,
            swap_bytes: u64_at(v, "swap_bytes").unwrap_or(0),
            anon_huge_bytes: u64_at(v, "anon_huge_bytes"),
            private_dirty_bytes: u64_at(v, "private_dirty_bytes"),
        })
    }
}

impl InfoMem {
    /// A sample's `info` object.
    pub fn from_json(i: &Value) -> InfoMem {
        let flag = |k: &str| i.get(k).and_then(Value::as_bool).unwrap_or(false);
        InfoMem {
            used_memory: u64_at(i, "used_memory"),
            used_memory_rss: u64_at(i, "used_memory_rss"),
            mem_fragmentation_ratio: i
                .get("mem_fragmentation_ratio")
                .and_then(Value::as_f64)
                .filter(|r| r.is_finite()),
            allocator_allocated: u64_at(i, "allocator_allocated"),
            allocator_active: u64_at(i, "allocator_active"),
            allocator_resident: u64_at(i, "allocator_resident"),
            maxmemory: u64_at(i, "maxmemory"),
            current_cow_size: u64_at(i, "current_cow_size"),
            rdb_last_cow_size: u64_at(i, "rdb_last_cow_size"),
            latest_fork_usec: u64_at(i, "latest_fork_usec"),
            total_forks: u64_at(i, "total_forks"),
            rdb_bgsave_in_progress: flag("rdb_bgsave_in_progress"),
            aof_rewrite_in_progress: flag("aof_rewrite_in_progress"),
        }
    }
}

impl Sample {
    /// One element of a timeline's `samples`; `None` without `ts_ns`.
    pub fn from_json(s: &Value) -> Option<Sample> {
        // `child` is `[pid, {rss_bytes, ...}]` or null.
        let child = s.get("child").and_then(Value::as_array).and_then(|pair| {
            let pid = u32::try_from(pair.first()?.as_u64()?).ok()?;
            Some((pid, ProcMem::from_json(pair.get(1)?)?))
        });
        Some(Sample {
            ts_ns: u64_at(s, "ts_ns")?,
            server: s.get("server").and_then(ProcMem::from_json),
            child,
            info: s
                .get("info")
                .filter(|i| i.is_object())
                .map(InfoMem::from_json),
            pswpin_delta: u64_at(s, "pswpin_delta"),
            pswpout_delta: u64_at(s, "pswpout_delta"),
        })
    }

    /// The server's RSS.
    pub fn server_rss(&self) -> Option<u64> {
        self.server.map(|m| m.rss_bytes)
    }

    /// The server's swapped-out bytes.
    pub fn server_swap(&self) -> Option<u64> {
        self.server.map(|m| m.swap_bytes)
    }

    /// The server's resident huge pages (smaps samples only).
    pub fn server_huge(&self) -> Option<u64> {
        self.server.and_then(|m| m.anon_huge_bytes)
    }

    /// The live fork child's PID.
    pub fn child_pid(&self) -> Option<u32> {
        self.child.map(|(pid, _)| pid)
    }

    /// The live fork child's RSS.
    pub fn child_rss(&self) -> Option<u64> {
        self.child.map(|(_, m)| m.rss_bytes)
    }

    /// The live fork child's resident huge pages (smaps samples only).
    pub fn child_huge(&self) -> Option<u64> {
        self.child.and_then(|(_, m)| m.anon_huge_bytes)
    }
}

/// A live fork child of `pid` that is Redis: its comm is `redis-server` or the server's
/// own comm (a fork without exec keeps it), which leaves out helpers that exec'd
/// something else.
fn redis_child(pid: u32, server_comm: Option<&str>, have_children_file: bool) -> Option<u32> {
    let kids = if have_children_file {
        crate::kernel::target::children(pid)
    } else {
        // Without CONFIG_PROC_CHILDREN: find processes whose parent is `pid`.
        procfs::process::all_processes()
            .ok()?
            .flatten()
            .filter_map(|p| p.stat().ok())
            .filter(|s| u32::try_from(s.ppid).ok() == Some(pid))
            .filter_map(|s| u32::try_from(s.pid).ok())
            .collect()
    };
    kids.into_iter().find(|&kid| {
        i32::try_from(kid)
            .ok()
            .and_then(|k| Process::new(k).and_then(|p| p.stat()).ok())
            .is_some_and(|s| {
                (s.comm == "redis-server" || Some(s.comm.as_str()) == server_comm)
                    && !matches!(s.state, 'Z' | 'X')
            })
    })
}

/// `(pswpin, pswpout)` from /proc/vmstat.
fn swap_counters() -> Option<(i64, i64)> {
    let vm = procfs::vmstat().ok()?;
    Some((*vm.get("pswpin")?, *vm.get("pswpout")?))
}

/// What a sampler hands back when it stops.
#[derive(Debug)]
pub struct Sampled {
    /// Every sample kept.
    pub samples: Vec<Sample>,
    /// Warnings to print once.
    pub warnings: Vec<String>,
    /// The cluster maps seen (the ones given to the sampler, plus its own).
    pub cluster: Captures,
}

/// The sampling thread's state.
struct Worker {
    pid: u32,
    conn: Option<RedisConn>,
    /// The last INFO said `cluster_enabled:1`.
    cluster_enabled: bool,
    /// The server refused the cluster commands (an ACL): they are not sent again.
    cluster_refused: bool,
    cluster_query: ClusterQuery,
    cluster: Captures,
    /// The "cluster map unavailable" warning was given.
    cluster_warned: bool,
    /// INFO failed and has not worked since.
    info_down: bool,
    /// The "INFO unavailable" warning was given (it is given once per run).
    info_warned: bool,
    last_info_retry: Option<Instant>,
    /// The server's comm, read at start.
    server_comm: Option<String>,
    have_children_file: bool,
    prev_swap: Option<(i64, i64)>,
    samples: Vec<Sample>,
    cap: usize,
    dropped: u64,
    warnings: Vec<String>,
    proc_warned: bool,
    /// Samples taken so far.
    taken: u64,
}

/// Whether `pid` exists and is not a zombie.
fn still_alive(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .is_ok_and(|st| !matches!(st.state, 'Z' | 'X'))
}

impl Worker {
    fn sample(&mut self) -> Sample {
        let ts_ns = clock::monotonic_ns();
        let read = if self.taken.is_multiple_of(SMAPS_EVERY) {
            read_proc_mem
        } else {
            read_proc_counters
        };
        self.taken += 1;
        let server = match read(self.pid) {
            Ok(m) => Some(m),
            Err(e) => {
                // A server that exited (or is exiting) is the run ending, not a problem
                // worth a warning.
                if !self.proc_warned && still_alive(self.pid) {
                    self.proc_warned = true;
                    self.warnings
                        .push(format!("{e}; later samples without it are not reported"));
                }
                None
            }
        };
        let child = redis_child(
            self.pid,
            self.server_comm.as_deref(),
            self.have_children_file,
        )
        .and_then(|kid| read(kid).ok().map(|m| (kid, m)));
        let info = self.info();
        if info.is_some() && self.cluster_enabled && !self.cluster_refused {
            self.read_cluster();
        }
        let swap = swap_counters();
        let delta = |f: fn((i64, i64)) -> i64| {
            let (prev, now) = (self.prev_swap?, swap?);
            u64::try_from(f(now) - f(prev)).ok()
        };
        let (pswpin_delta, pswpout_delta) = (delta(|s| s.0), delta(|s| s.1));
        self.prev_swap = swap;
        Sample {
            ts_ns,
            server,
            child,
            info,
            pswpin_delta,
            pswpout_delta,
        }
    }

    fn info(&mut self) -> Option<InfoMem> {
        let conn = self.conn.as_mut()?;
        if self.info_down {
            let now = Instant::now();
            if self
                .last_info_retry
                .is_some_and(|t| now.duration_since(t) < INFO_RETRY)
            {
                return None;
            }
            self.last_info_retry = Some(now);
            // After a failure the old connection may still owe a reply: start afresh.
            conn.reconnect().ok()?;
        }
        match conn.info("") {
            Ok(info) => {
                self.info_down = false;
                self.cluster_enabled = info.get_flag("cluster_enabled") == Some(true);
                Some(InfoMem::from_info(&info))
            }
            Err(e) => {
                if !self.info_warned {
                    self.info_warned = true;
                    self.warnings.push(format!(
                        "Redis INFO unavailable: {e}; samples continue from /proc"
                    ));
                }
                self.info_down = true;
                self.last_info_retry = Some(Instant::now());
                None
            }
        }
    }

    /// Reads the cluster map and keeps it if it changed. A timeout or a lost connection
    /// is handled as a failed INFO (the connection may still owe a reply: reconnect
    /// later); a refusal stops the cluster reads (each would count as an error in the
    /// server's statistics); a reply not understood is tried again. Warned once.
    fn read_cluster(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let e = match self.cluster_query.read(conn) {
            Ok(map) => {
                if let Some(w) = self.cluster.observe(clock::monotonic_ns(), map) {
                    self.warnings.push(w);
                }
                return;
            }
            Err(e) => e,
        };
        let then = match &e {
            ClusterError::Query(InfoError::Timeout { .. } | InfoError::Unreachable { .. }) => {
                self.info_down = true;
                self.last_info_retry = Some(Instant::now());
                "tried again each sample"
            }
            ClusterError::Query(_) => {
                self.cluster_refused = true;
                "not asked again"
            }
            ClusterError::Malformed { .. } => "tried again each sample",
        };
        if !self.cluster_warned {
            self.cluster_warned = true;
            self.warnings
                .push(format!("cluster map unavailable: {e}; {then}"));
        }
    }

    fn push(&mut self, sample: Sample) {
        if self.samples.len() < self.cap {
            self.samples.push(sample);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Sampled {
        // A cap of 0 keeps nothing on purpose (`serve`).
        if self.dropped > 0 && self.cap > 0 {
            self.warnings.push(format!(
                "{} memory samples dropped after the first {} (use a longer sampling interval)",
                self.dropped, self.cap
            ));
        }
        Sampled {
            samples: self.samples,
            warnings: self.warnings,
            cluster: self.cluster,
        }
    }
}

/// A background thread sampling one process at a fixed interval.
pub struct Sampler {
    stop_tx: Option<mpsc::Sender<()>>,
    handle: Option<JoinHandle<Sampled>>,
    latest: Arc<Mutex<Option<Sample>>>,
}

impl Sampler {
    /// Starts sampling `pid` (and its fork child, and Redis `INFO` through `conn` if
    /// given): one sample now, then one every `interval` (at least 1 ms).
    pub fn spawn(
        pid: u32,
        conn: Option<RedisConn>,
        interval: Duration,
    ) -> std::io::Result<Sampler> {
        Sampler::spawn_capped(
            pid,
            conn,
            interval,
            MAX_SAMPLES,
            Captures::new(MAX_CAPTURES),
        )
    }

    /// [`Sampler::spawn`] keeping at most `cap` samples (0: only the latest, for
    /// [`Sampler::latest`]), adding the cluster maps it sees to `cluster` (which carries
    /// the maps of earlier samplers of the run, and its own cap).
    pub fn spawn_capped(
        pid: u32,
        conn: Option<RedisConn>,
        interval: Duration,
        cap: usize,
        cluster: Captures,
    ) -> std::io::Result<Sampler> {
        let interval = interval.max(Duration::from_millis(1));
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let latest = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&latest);
        let mut worker = Worker {
            pid,
            conn,
            cluster_enabled: false,
            cluster_refused: false,
            cluster_query: ClusterQuery::default(),
            cluster,
            cluster_warned: false,
            info_down: false,
            info_warned: false,
            last_info_retry: None,
            server_comm: i32::try_from(pid)
                .ok()
                .and_then(|p| Process::new(p).and_then(|p| p.stat()).ok())
                .map(|s| s.comm),
            have_children_file: Path::new(&format!("/proc/{pid}/task/{pid}/children")).exists(),
            prev_swap: None,
            samples: Vec::new(),
            cap,
            dropped: 0,
            warnings: Vec::new(),
            proc_warned: false,
            taken: 0,
        };
        let handle = std::thread::Builder::new()
            .name("memtrace-sampler".into())
            .spawn(move || {
                let mut next = Instant::now();
                loop {
                    let sample = worker.sample();
                    match shared.lock() {
                        Ok(mut g) => *g = Some(sample.clone()),
                        Err(poisoned) => *poisoned.into_inner() = Some(sample.clone()),
                    }
                    worker.push(sample);
                    // Fixed schedule; ticks missed because a sample was slow are skipped
                    // rather than taken in a burst.
                    next += interval;
                    let now = Instant::now();
                    if next <= now {
                        next = now + interval;
                    }
                    match stop_rx.recv_timeout(next - now) {
                        Err(RecvTimeoutError::Timeout) => {}
                        // Stop asked, or the Sampler was dropped.
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                worker.finish()
            })?;
        Ok(Sampler {
            stop_tx: Some(stop_tx),
            handle: Some(handle),
            latest,
        })
    }

    /// The most recent sample.
    pub fn latest(&self) -> Option<Sample> {
        match self.latest.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Waits until the first sample is taken, for at most `limit`; whether it was.
    pub fn wait_first(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.latest().is_none() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Stops the thread (within one sample's time, not one interval) and returns every
    /// sample kept, the warnings and the cluster maps.
    pub fn stop(mut self) -> Sampled {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(out)) => out,
            Some(Err(_)) => Sampled {
                samples: Vec::new(),
                warnings: vec!["memory sampler thread panicked".into()],
                cluster: Captures::new(MAX_CAPTURES),
            },
            None => Sampled {
                samples: Vec::new(),
                warnings: Vec::new(),
                cluster: Captures::new(MAX_CAPTURES),
            },
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread; join so it does not outlive us.
        self.stop_tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use procfs::FromBufRead;

    use super::*;
    use crate::redis::info::tests::INFO_7_0;

    proptest::proptest! {
        /// smaps_rollup text of any shape: a value or `None`, never a panic.
        #[test]
        fn rollup_parsing_never_panics(s in "\\PC*") {
            if let Ok(r) = SmapsRollup::from_buf_read(s.as_bytes()) {
                let _ = ProcMem::from_rollup(&r);
            }
        }
    }

    #[test]
    fn proc_mem_from_rollup_text() {
        let text = "56132f3d1000-7fff028af000 ---p 00000000 00:00 0                          [rollup]\n\
Rss:                1608 kB\n\
Pss:                 422 kB\n\
Private_Dirty:       112 kB\n\
AnonHugePages:      2048 kB\n\
Swap:                  4 kB\n\
SwapPss:               4 kB\n";
        let rollup = SmapsRollup::from_buf_read(text.as_bytes()).unwrap();
        assert_eq!(
            ProcMem::from_rollup(&rollup),
            Some(ProcMem {
                rss_bytes: 1608 * 1024,
                swap_bytes: 4 * 1024,
                anon_huge_bytes: Some(2048 * 1024),
                private_dirty_bytes: Some(112 * 1024),
            })
        );
        let empty = SmapsRollup::from_buf_read(&b""[..]).unwrap();
        assert_eq!(ProcMem::from_rollup(&empty), None);
    }

    #[test]
    fn own_proc_mem() {
        let m = read_proc_mem(std::process::id()).unwrap();
        assert!(m.rss_bytes > 0, "{m:?}");
        assert!(
            m.private_dirty_bytes.is_some_and(|d| d <= m.rss_bytes),
            "{m:?}"
        );
        let e = read_proc_mem(u32::MAX).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read /proc/4294967295/smaps_rollup"),
            "{e}"
        );
        // The counters agree with smaps_rollup within what this process allocates
        // meanwhile (nothing here) and the counters' per-CPU batching (64 pages a CPU allowed).
        let c = read_proc_counters(std::process::id()).unwrap();
        let slack = 64 * 4096 * std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        assert!(c.rss_bytes.abs_diff(m.rss_bytes) <= slack, "{c:?} vs {m:?}");
        assert_eq!((c.anon_huge_bytes, c.private_dirty_bytes), (None, None));
        let e = read_proc_counters(u32::MAX).unwrap_err().to_string();
        assert!(e.starts_with("cannot read /proc/4294967295/status"), "{e}");
    }

    #[test]
    fn info_mem_from_captured_info() {
        let m = InfoMem::from_info(&Info::parse(INFO_7_0));
        assert_eq!(
            m,
            InfoMem {
                used_memory: Some(1_058_528),
                used_memory_rss: Some(12_341_248),
                mem_fragmentation_ratio: Some(12.12),
                allocator_allocated: Some(1_850_592),
                allocator_active: Some(2_015_232),
                allocator_resident: Some(4_685_824),
                maxmemory: Some(0),
                current_cow_size: Some(520_192),
                rdb_last_cow_size: Some(364_544),
                latest_fork_usec: Some(1076),
                total_forks: Some(4),
                rdb_bgsave_in_progress: true,
                aof_rewrite_in_progress: false,
            }
        );
        // An older server without the CoW fields.
        let m = InfoMem::from_info(&Info::parse(
            "used_memory:10\r\nrdb_bgsave_in_progress:0\r\n",
        ));
        assert_eq!(m.used_memory, Some(10));
        assert_eq!(m.current_cow_size, None);
        assert!(!m.rdb_bgsave_in_progress);
    }

    #[test]
    fn sampler_on_self() {
        let start = clock::monotonic_ns();
        let sampler = Sampler::spawn(std::process::id(), None, Duration::from_millis(100)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert!(sampler.latest().is_some());
        let t = Instant::now();
        let Sampled {
            samples, warnings, ..
        } = sampler.stop();
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "stop took {:?}",
            t.elapsed()
        );
        assert!(
            (3..=5).contains(&samples.len()),
            "{} samples",
            samples.len()
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(samples[0].ts_ns >= start);
        assert!(samples.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
        for (i, s) in samples.iter().enumerate() {
            assert!(s.server.is_some_and(|m| m.rss_bytes > 0));
            // smaps_rollup on the first sample and every SMAPS_EVERY-th after it.
            let smaps = (i as u64).is_multiple_of(SMAPS_EVERY);
            assert_eq!(
                s.server.and_then(|m| m.private_dirty_bytes).is_some(),
                smaps,
                "sample {i}"
            );
            // Other tests' redis-server children of this process may show up as `child`.
            assert!(s.info.is_none());
        }
        assert!(samples[0].pswpin_delta.is_none());
        assert!(samples[1..].iter().all(|s| s.pswpout_delta.is_some()));
        // Serializable as the timeline will need.
        let json = serde_json::to_value(&samples[0]).unwrap();
        assert!(json["server"]["rss_bytes"].as_u64().unwrap() > 0);
        assert!(json["server"]["private_dirty_bytes"].is_u64());
        let json = serde_json::to_value(&samples[1]).unwrap();
        assert!(
            json["server"].get("private_dirty_bytes").is_none(),
            "{json}"
        );
    }

    #[test]
    fn sampler_cap_counts_drops() {
        let sampler = Sampler::spawn_capped(
            std::process::id(),
            None,
            Duration::from_millis(5),
            2,
            Captures::new(1),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let Sampled {
            samples, warnings, ..
        } = sampler.stop();
        assert_eq!(samples.len(), 2);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("memory samples dropped"),
            "{warnings:?}"
        );
    }

    #[test]
    fn sampler_sees_redis_fork_child_and_info() {
        let server = testkit::Server::start(
            &testkit::by_label("redis-7.0"),
            &["--rdb-key-save-delay", "1000"],
        );
        let addr = format!("127.0.0.1:{}", server.port);
        let timeout = Duration::from_secs(2);
        let mut setup = crate::redis::info::connect(&addr, timeout).unwrap();
        for i in 0..1000 {
            let _: () = ::redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg("v")
                .query(setup.raw())
                .unwrap();
        }
        let conn = crate::redis::info::connect(&addr, timeout).unwrap();
        let sampler = Sampler::spawn(server.pid, Some(conn), Duration::from_millis(50)).unwrap();
        let _: String = ::redis::cmd("BGSAVE").query(setup.raw()).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let Sampled {
            samples,
            warnings,
            cluster,
        } = sampler.stop();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert!(cluster.list().is_empty(), "not in cluster mode: no map");
        assert!(
            samples
                .iter()
                .all(|s| s.info.as_ref().is_some_and(|i| i.used_memory.is_some()))
        );
        let forked: Vec<&Sample> = samples.iter().filter(|s| s.child.is_some()).collect();
        assert!(!forked.is_empty(), "no sample saw the BGSAVE child");
        let (kid, mem) = forked[0].child.unwrap();
        assert_ne!(kid, server.pid);
        assert!(mem.rss_bytes > 0);
        assert!(
            samples
                .iter()
                .any(|s| s.info.as_ref().is_some_and(|i| i.rdb_bgsave_in_progress))
        );
    }

    #[test]
    fn sampler_keeps_the_cluster_map_and_its_changes() {
        let cluster = testkit::cluster::Cluster::start(&testkit::by_label("redis-7.0"), 3);
        let node = &cluster.nodes()[0];
        let conn = crate::redis::info::connect(&node.url(), Duration::from_secs(2)).unwrap();
        let sampler = Sampler::spawn(node.pid, Some(conn), Duration::from_millis(20)).unwrap();
        assert!(sampler.wait_first(Duration::from_secs(2)));
        // Node 0 serves slots 0-5460; slot 5 holds no key.
        let before = clock::monotonic_ns();
        cluster.move_slot(5, 0, 1);
        let moved = clock::monotonic_ns();
        testkit::wait::wait_until(
            "a sample after the move",
            Duration::from_secs(10),
            Duration::from_millis(5),
            || sampler.latest().is_some_and(|s| s.ts_ns > moved),
        );
        let out = sampler.stop();
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
        let caps = out.cluster.list();
        assert_eq!(
            caps.len(),
            2,
            "the map at start and after the move: {caps:?}"
        );
        let owner = |i: usize, slot| caps[i].map.owner_of(slot).map(|n| n.addr.clone());
        assert_eq!(owner(0, 5), Some(node.url()));
        assert_eq!(owner(1, 5), Some(cluster.nodes()[1].url()));
        assert_eq!(owner(1, 4), Some(node.url()));
        assert!(caps[0].ts_ns < before && caps[1].ts_ns > before, "{caps:?}");
        for c in caps {
            assert_eq!(c.map.myself().map(|n| n.addr.clone()), Some(node.url()));
        }
    }

    #[test]
    fn a_user_denied_cluster_commands_still_gets_info() {
        let cluster = testkit::cluster::Cluster::start(&testkit::by_label("redis-7.0"), 3);
        let node = &cluster.nodes()[0];
        let _: () = node.query(
            ::redis::cmd("ACL")
                .arg("SETUSER")
                .arg("watcher")
                .arg("on")
                .arg(">pw")
                .arg("+info")
                .arg("+ping"),
        );
        let url = format!("redis://watcher:pw@{}", node.url());
        let conn = crate::redis::info::connect(&url, Duration::from_secs(2)).unwrap();
        let start = clock::monotonic_ns();
        let sampler = Sampler::spawn(node.pid, Some(conn), Duration::from_millis(20)).unwrap();
        testkit::wait::wait_until(
            "samples over 100 ms",
            Duration::from_secs(10),
            Duration::from_millis(5),
            || {
                sampler
                    .latest()
                    .is_some_and(|s| s.ts_ns > start + 100_000_000)
            },
        );
        let out = sampler.stop();
        assert!(
            out.samples.iter().all(|s| s.info.is_some()),
            "INFO on every sample"
        );
        assert!(out.cluster.list().is_empty());
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert!(
            out.warnings[0].starts_with("cluster map unavailable: Redis at watcher@")
                && out.warnings[0].contains("(NOPERM)")
                && out.warnings[0].ends_with("; not asked again"),
            "{:?}",
            out.warnings
        );
        // CLUSTER SHARDS refused, CLUSTER NODES tried (an ACL may allow one and not the
        // other) and refused, then nothing more over the following samples.
        let errors = node.info("errorstats");
        assert_eq!(
            errors.get("errorstat_NOPERM").map(String::as_str),
            Some("count=2")
        );
    }

    #[test]
    fn info_failure_warns_once_and_proc_continues() {
        let mut server = testkit::Server::start(&testkit::by_label("redis-7.0"), &[]);
        let pid = server.pid;
        let addr = format!("127.0.0.1:{}", server.port);
        let conn = crate::redis::info::connect(&addr, Duration::from_millis(500)).unwrap();
        let sampler = Sampler::spawn(pid, Some(conn), Duration::from_millis(30)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        server.kill();
        std::thread::sleep(Duration::from_millis(200));
        let Sampled {
            samples, warnings, ..
        } = sampler.stop();
        let info_warnings: Vec<_> = warnings
            .iter()
            .filter(|w| w.starts_with("Redis INFO unavailable: "))
            .collect();
        assert_eq!(info_warnings.len(), 1, "{warnings:?}");
        assert!(info_warnings[0].ends_with("; samples continue from /proc"));
        assert!(samples.first().is_some_and(|s| s.info.is_some()));
        assert!(
            samples
                .last()
                .is_some_and(|s| s.info.is_none() && s.server.is_none())
        );
        // Sampling went on after the failure.
        let after = samples.iter().filter(|s| s.info.is_none()).count();
        assert!(after >= 3, "{after} samples after the failure");
        // The server is gone: its missing smaps_rollup is the run ending, not a warning.
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
