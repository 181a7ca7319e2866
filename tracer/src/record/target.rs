//! The traced process: who it is, whether attribution is on for it, its memory sampler
//! and the segments of `--follow`.

use std::time::{Duration, Instant};

use crate::{
    analysis::samples::{Sample, Sampled, Sampler},
    analysis::stream::Analyzer,
    kernel::target::{self, ProcessId},
    kernel::{
        libc_fork::{self, AfterExec},
        loader::Probes,
    },
    redis::{
        cluster::{Captures, ClusterCapture, MAX_CAPTURES},
        info::{ConnSpec, RedisConn},
        session::{Kernel, RedisSession, SessionError},
    },
    timeline::{Segment, TargetInfo},
};

/// The first server's row in the kernel's `SERVERS` table (row 0 means "no server"); a
/// recording of several servers gives them the rows that follow.
pub const FIRST_SERVER_INDEX: u32 = 1;

/// How long after its exec a dynamically linked command may take to map its C library.
const LOADER_GRACE: Duration = Duration::from_secs(10);
/// How long the run's announcement waits for the first memory sample (INFO times out at
/// 500 ms).
const FIRST_SAMPLE_WAIT: Duration = Duration::from_secs(1);

/// Where probing the target's `fork()` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkProbe {
    /// Probed, or nothing left to probe.
    Done,
    /// A launched command: probe its own `fork()` once it has exec'd (since then).
    AfterExec(Option<Instant>),
}

/// The traced process and what belongs to it.
pub struct Target {
    /// Who it is (pid and start time).
    pub id: ProcessId,
    /// What the timeline says about it.
    pub info: TargetInfo,
    /// The Redis address given by the user (`--redis`), for INFO.
    pub spec: Option<ConnSpec>,
    /// Attribution, when on.
    pub session: Option<RedisSession>,
    /// Whether attribution is still to be tried (a launched server, once it serves).
    pub attribution_pending: bool,
    /// Memory sampling.
    pub sampler: Option<Sampler>,
    /// Samples of earlier segments.
    pub earlier_samples: Vec<Sample>,
    /// Cluster maps seen so far, while no sampler holds them (one set for the whole run,
    /// so a restarted server's unchanged map is not kept twice).
    cluster: Option<Captures>,
    /// Servers traced one after the other (`--follow`).
    pub segments: Vec<Segment>,
    /// Since when the target is gone and a restart is awaited (`--follow`).
    pub waiting_since: Option<Instant>,
    /// The `fork()` probe of a launched command.
    pub fork_probe: ForkProbe,
}

impl Target {
    /// A target about to be traced from `start_ns`.
    pub fn new(id: ProcessId, info: TargetInfo, spec: Option<ConnSpec>, start_ns: u64) -> Target {
        Target {
            id,
            segments: vec![Segment::begin(&info, start_ns)],
            info,
            spec,
            session: None,
            attribution_pending: false,
            sampler: None,
            earlier_samples: Vec::new(),
            cluster: None,
            waiting_since: None,
            fork_probe: ForkProbe::Done,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.id.pid
    }

    /// Proves a layout for a Redis target and hands it to the kernel. `Ok(false)`: not a
    /// Redis server (nothing to attribute); `Err`: a warning saying why attribution is off.
    pub fn start_attribution(
        &mut self,
        kernel: Kernel<'_>,
        index: u32,
        analyzer: &mut Analyzer,
        opts: &super::RecordOptions,
    ) -> Result<Vec<String>, String> {
        let pid = self.pid();
        let comm = target::comm(pid).unwrap_or_default();
        match RedisSession::start(pid, self.spec.clone(), opts.key_max, index, kernel) {
            Ok((session, warnings)) => {
                analyzer
                    .enable_attribution(session.attribution_options(opts.top_n, opts.keys.clone()));
                self.session = Some(session);
                Ok(warnings)
            }
            Err(SessionError::NoServerSymbol)
                if !crate::redis::locate::SERVER_NAMES.contains(&comm.as_str()) =>
            {
                Ok(Vec::new())
            }
            Err(e) => Err(format!(
                "Redis attribution off, faults are still counted (attribution `unknown`): {e}"
            )),
        }
    }

    /// Starts sampling memory (and INFO when attribution found a connection); with
    /// `live` (`serve`), only the latest sample is kept.
    pub fn start_sampler(&mut self, interval: Duration, live: bool) {
        let conn = self
            .session
            .as_ref()
            .and_then(|s| s.spec())
            .and_then(|spec| RedisConn::open(spec, Duration::from_millis(500)).ok());
        let (cap, maps) = if live {
            (0, 1)
        } else {
            (crate::analysis::samples::MAX_SAMPLES, MAX_CAPTURES)
        };
        let cluster = self.cluster.take().unwrap_or_else(|| Captures::new(maps));
        self.sampler = Sampler::spawn_capped(self.pid(), conn, interval, cap, cluster).ok();
        // The first sample (its INFO included) before the run is announced: once the
        // tracer says it is tracing, its only commands are the periodic INFOs.
        if let Some(s) = &self.sampler {
            s.wait_first(FIRST_SAMPLE_WAIT);
        }
    }

    /// Stops sampling; returns the warnings it had.
    pub fn stop_sampler(&mut self) -> Vec<String> {
        let Some(old) = self.sampler.take() else {
            return Vec::new();
        };
        let Sampled {
            samples,
            warnings,
            cluster,
        } = old.stop();
        self.earlier_samples.extend(samples);
        self.cluster = Some(cluster);
        warnings
    }

    /// The cluster maps of the run (call after [`Target::stop_sampler`]).
    pub fn take_cluster(&mut self) -> Vec<ClusterCapture> {
        self.cluster
            .as_mut()
            .map(Captures::take)
            .unwrap_or_default()
    }

    /// Probes `fork()` in the launched command once it has exec'd. Right after `execve` a
    /// dynamic executable has only itself and the loader mapped: that is a retry, not a
    /// failure (the probe on our own libc, attached before the exec, covers its first
    /// forks when it maps the same file, which is the usual case). A command that exits
    /// meanwhile leaves nothing to probe, and no warning. Returns a warning when the
    /// probe cannot be placed.
    pub fn retry_fork_probe(&mut self, probes: &mut Probes) -> Option<String> {
        let ForkProbe::AfterExec(seen) = self.fork_probe else {
            return None;
        };
        if !target::has_exec_d(self.pid()) {
            return None;
        }
        let since = seen.unwrap_or_else(Instant::now);
        let lost = "fork() calls are not timed (epochs' fork_call_ns null)";
        let outcome = match libc_fork::locate_after_exec(self.pid()) {
            Ok(AfterExec::Found(object)) => probes
                .attach_fork_call(&object)
                .map_err(|e| format!("cannot probe fork(): {e}: {lost}")),
            Ok(AfterExec::NotYetMapped) if since.elapsed() < LOADER_GRACE => {
                self.fork_probe = ForkProbe::AfterExec(Some(since));
                return None;
            }
            Ok(AfterExec::NotYetMapped) => Err(format!(
                "pid {} mapped no file defining `fork` within {} s of its exec: {lost}",
                self.pid(),
                LOADER_GRACE.as_secs()
            )),
            Err(e) => Err(format!("{e}: {lost}")),
        };
        self.fork_probe = ForkProbe::Done;
        // Its files are read through /proc/PID: once it has exited they are gone, and so
        // is anything left to time.
        match outcome {
            Err(w) if target::still_running(self.id).is_ok() => Some(w),
            _ => None,
        }
    }

    /// Closes the current segment at `now` (the server exited).
    pub fn end_segment(&mut self, now: u64, reason: &'static str) {
        if let Some(last) = self.segments.last_mut()
            && last.end_ns.is_none()
        {
            last.end_ns = Some(now);
            last.end_reason = Some(reason);
        }
    }

    /// Follows a server restarted as `id` (`--follow`): a new segment, traced afresh.
    pub fn restart(&mut self, info: TargetInfo, id: ProcessId, now: u64) {
        self.segments.push(Segment::begin(&info, now));
        self.info = info;
        self.id = id;
        self.session = None;
        self.waiting_since = None;
    }
}
