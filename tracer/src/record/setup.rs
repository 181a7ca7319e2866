//! Everything a recording sets up before its loop, owned by one [`Recorder`] that
//! detaches the programs, stops the reader and abandons temporary outputs on every path
//! that does not reach [`Recorder::finish`].

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracer_common::role;

use super::{
    RecordOptions, TargetSpec,
    target::{ForkProbe, SERVER_INDEX, Target},
};
use crate::{
    analysis::clock,
    analysis::event_cap::EventCap,
    analysis::stream::{Analyzer, TimelineEvent},
    kernel::target::{self, Launched, ProcessId},
    kernel::{
        events::KernelEvent,
        libc_fork,
        loader::{KernelCounterMap, ProbeOptions, Probes},
        reader::{self, ReaderStats},
    },
    metrics::{self, Metrics},
    output_file::AtomicFile,
    record::status_line::{Progress, StatusLine},
    redis::{info::parse_target, locate, session::Kernel},
    timeline::{RunInfo, TargetInfo, Writer},
};

/// A recording in progress.
pub struct Recorder<'o> {
    pub(super) opts: &'o RecordOptions,
    /// `None` once detached (stopping).
    pub(super) probes: Option<Probes>,
    pub(super) events: Receiver<Vec<KernelEvent>>,
    reader_stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<ReaderStats>>,
    pub(super) counters: KernelCounterMap,
    /// `None` once finished.
    pub(super) timeline: Option<Writer>,
    pub(super) perfetto: Option<AtomicFile>,
    pub(super) analyzer: Analyzer,
    pub(super) target: Target,
    pub(super) launched: Option<Launched>,
    pub(super) warnings: Vec<String>,
    pub(super) run_info: RunInfo,
    pub(super) signalled: Arc<AtomicBool>,
    pub(super) start_mono: u64,
    /// Kernel records received while calibrating, to process before the next batch.
    pub(super) stash: Vec<KernelEvent>,
    /// Scratch: records yielded by one kernel event.
    pub(super) records: Vec<TimelineEvent>,
    pub(super) cap: EventCap,
    pub(super) progress: Progress,
    pub(super) status: StatusLine,
    pub(super) exited: HashSet<u32>,
    pub(super) exit_status: Option<i32>,
    /// Epochs whose reason is still unknown: (epoch, child, since).
    pub(super) unlabelled: Vec<(u32, u32, Instant)>,
    /// Live Prometheus metrics (`--metrics`), and their server.
    pub(super) metrics: Option<(Metrics, metrics::serve::Server)>,
}

impl<'o> Recorder<'o> {
    /// Resolves the target, opens the outputs, loads the programs and starts tracing.
    pub fn setup(opts: &'o RecordOptions) -> Result<Recorder<'o>> {
        // Launch before any thread exists (fork in a single-threaded process).
        let mut warnings = Vec::new();
        let (launched, info, id, spec) = resolve_target(opts, &mut warnings)?;
        // Every output is opened before anything is attached, so a bad path fails early.
        // The metrics port first: taken, it fails the run before any file is created.
        let metrics = match opts.metrics {
            Some(addr) => {
                let listener = metrics::serve::bind(addr)?;
                let m = Metrics::new(&node_name(&info, spec.as_ref()));
                let server = metrics::serve::Server::spawn(listener, m.registry())?;
                Some((m, server))
            }
            None => None,
        };
        let perfetto = match &opts.perfetto {
            Some(p) => Some(AtomicFile::create(p).with_context(|| {
                format!(
                    "cannot write the Perfetto trace to {} (choose a writable path)",
                    p.display()
                )
            })?),
            None => None,
        };
        let timeline = if opts.live {
            Writer::Discard
        } else {
            Writer::create(&opts.output, opts.ndjson).with_context(|| {
                format!(
                    "cannot write the timeline to {} (choose a writable path with -o)",
                    opts.output.display()
                )
            })?
        };
        let signalled = Arc::new(AtomicBool::new(false));
        let mut temp_files = Vec::new();
        if !opts.ndjson && !opts.live {
            temp_files.push(crate::output_file::temp_path(&opts.output));
        }
        if let Some(p) = &opts.perfetto {
            temp_files.push(crate::output_file::temp_path(p));
        }
        crate::record::signals::install(Arc::clone(&signalled), &temp_files)
            .context("installing signal handlers")?;
        let mut probes = match Probes::attach(ProbeOptions {
            ring_buffer_bytes: opts.ring_buffer_mb << 20,
        }) {
            Ok(p) => p,
            Err(e) => {
                timeline.abandon();
                return Err(e.into());
            }
        };
        let ring = probes.take_events()?;
        let counters = probes.take_counters()?;
        // The reader runs before the target is added, so nothing emitted is left unread.
        let (tx, events) = mpsc::sync_channel(256);
        let reader_stop = Arc::new(AtomicBool::new(false));
        let reader = reader::spawn(ring, tx, Arc::clone(&reader_stop), opts.poll_interval)
            .context("starting the ring buffer reader")?;
        let start_mono = clock::monotonic_ns();
        let run_info = run_info(opts, &probes, start_mono);
        let mut analyzer = Analyzer::new(id.pid, target::swap_bytes(id.pid).or(Some(0)));
        analyzer.set_evidence(probes.evidence);
        let mut recorder = Recorder {
            opts,
            probes: Some(probes),
            events,
            reader_stop,
            reader: Some(reader),
            counters,
            timeline: Some(timeline),
            perfetto,
            analyzer,
            target: Target::new(id, info, spec, start_mono),
            launched,
            warnings,
            run_info,
            signalled,
            start_mono,
            stash: Vec::new(),
            records: Vec::new(),
            cap: EventCap::new(opts.max_events, opts.max_rate),
            progress: Progress::default(),
            status: StatusLine::new(!opts.quiet),
            exited: HashSet::new(),
            exit_status: None,
            unlabelled: Vec::new(),
            metrics,
        };
        recorder.start()?;
        Ok(recorder)
    }

    /// Probes `fork()`, turns attribution on, starts tracing, writes the header and
    /// releases a launched command.
    fn start(&mut self) -> Result<()> {
        if let Some(p) = self.probes.as_ref()
            && !self.opts.quiet
        {
            for d in &p.degraded {
                eprintln!("redis-memtrace: warning: {d}");
            }
        }
        let launched = self.launched.is_some();
        // A launched command has not exec'd yet: probe our own libc now (the same file
        // almost always, so its first fork is seen) and its own once it runs.
        let probe_pid = if launched {
            self.target.fork_probe = ForkProbe::AfterExec(None);
            std::process::id()
        } else {
            self.target.pid()
        };
        if let Err(w) = self.probe_fork_call(probe_pid)
            && !launched
        {
            self.warnings.push(w);
        }
        if self.opts.attribution && !launched {
            self.try_attribution();
        }
        self.target.attribution_pending = self.opts.attribution && launched;
        let pid = self.target.pid();
        let probes = self.probes.as_mut().context("programs detached")?;
        probes.trace(pid, role::TARGET, SERVER_INDEX)?;
        if !launched {
            target::still_running(self.target.id)?;
            for child in target::children(pid) {
                probes.trace(child, role::CHILD, 0)?;
                let id = self.analyzer.adopt_running_child(child, self.start_mono);
                if let Some(s) = self.target.session.as_mut() {
                    let (why, info) = s.on_fork(child);
                    self.analyzer.label_epoch(id, why, Some(info));
                }
            }
        }
        let timeline = self.timeline.as_mut().context("timeline closed")?;
        timeline
            .write_header(&self.run_info, &self.target.info)
            .context("writing the timeline")?;
        if let Some(l) = self.launched.as_mut() {
            l.release()?;
        }
        self.target
            .start_sampler(self.opts.interval, self.opts.live);
        self.announce();
        Ok(())
    }

    fn announce(&self) {
        if self.opts.quiet {
            return;
        }
        let attach = self
            .probes
            .as_ref()
            .map_or(0.0, |p| p.attach_time.as_secs_f64());
        eprintln!(
            "redis-memtrace: tracing pid {} ({}); attach took {:.1} ms; Ctrl-C to stop",
            self.target.pid(),
            self.target.info.comm,
            attach * 1e3
        );
        if let Some(s) = &self.target.session {
            announce_attribution(s);
        }
        for w in &self.warnings {
            eprintln!("redis-memtrace: warning: {w}");
        }
    }

    /// Probes the libc `fork()` of `pid`; `Err` is a warning saying what is lost.
    pub(super) fn probe_fork_call(&mut self, pid: u32) -> Result<(), String> {
        let lost = "fork() calls are not timed (epochs' fork_call_ns null)";
        let object = libc_fork::locate(pid).map_err(|e| format!("{e}: {lost}"))?;
        let probes = self.probes.as_mut().ok_or("programs detached")?;
        probes
            .attach_fork_call(&object)
            .map_err(|e| format!("cannot probe fork(): {e}: {lost}"))
    }

    /// Tries to turn attribution on for the target; returns whether it is now on.
    /// A failure is one warning.
    pub(super) fn try_attribution(&mut self) -> bool {
        let Some(probes) = self.probes.as_mut() else {
            return false;
        };
        let kernel = Kernel {
            probes,
            events: &self.events,
            stash: &mut self.stash,
        };
        match self
            .target
            .start_attribution(kernel, &mut self.analyzer, self.opts)
        {
            Ok(w) => {
                self.warnings.extend(w);
                self.target.session.is_some()
            }
            Err(w) => {
                self.warnings.push(w);
                false
            }
        }
    }

    /// Detaches the programs and lets the reader drain what is left and stop.
    pub(super) fn detach(&mut self) {
        drop(self.probes.take());
        self.reader_stop.store(true, Ordering::Release);
    }

    /// Waits for the reader (after [`Recorder::detach`]).
    pub(super) fn join_reader(&mut self) -> ReaderStats {
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        // Reached with outputs still open only when the run failed: leave nothing behind.
        self.detach();
        let _ = self.join_reader();
        if let Some(t) = self.timeline.take() {
            t.abandon();
        }
        if let Some(p) = self.perfetto.take() {
            p.abandon();
        }
    }
}

/// Prints that attribution is on, with how the layout was proven.
pub(super) fn announce_attribution(s: &crate::redis::session::RedisSession) {
    eprintln!(
        "redis-memtrace: {} {} attribution on (layout discovered and verified; {} phases{})",
        if s.info.server.product == "valkey" {
            "Valkey"
        } else {
            "Redis"
        },
        s.info.server.version,
        s.info.phases.len(),
        if s.info.client_search {
            ", parse-stage client search"
        } else {
            ""
        }
    );
}

/// The `node` label of the metrics: the server's address when it was given one, else
/// `comm:pid`.
fn node_name(info: &TargetInfo, spec: Option<&crate::redis::info::ConnSpec>) -> String {
    match spec {
        Some(s) => s.to_string(),
        None => format!("{}:{}", info.comm, info.pid),
    }
}

/// The process to trace: launched (held at its gate), or found.
fn resolve_target(
    opts: &RecordOptions,
    warnings: &mut Vec<String>,
) -> Result<(
    Option<Launched>,
    TargetInfo,
    ProcessId,
    Option<crate::redis::info::ConnSpec>,
)> {
    Ok(match &opts.target {
        TargetSpec::Pid(pid) => {
            let (info, id) = target::describe(*pid)?;
            (None, info, id, None)
        }
        TargetSpec::Redis(spec) => {
            let resolved = locate::resolve_redis(spec, Duration::from_secs(2))?;
            warnings.extend(resolved.warnings);
            let conn = resolved
                .conn
                .map(|c| c.spec().clone())
                .or_else(|| parse_target(spec).ok());
            let (info, id) = target::describe(resolved.pid)?;
            (None, info, id, conn)
        }
        TargetSpec::AutoRedis => {
            let server = locate::auto_select()?;
            let (info, id) = target::describe(server.pid)?;
            (None, info, id, None)
        }
        TargetSpec::Command(argv) => {
            let (l, info) = target::launch(argv, opts.to_stdout())?;
            let id = ProcessId {
                pid: l.pid,
                start_ticks: info.start_time_ticks,
            };
            (Some(l), info, id, None)
        }
    })
}

fn run_info(opts: &RecordOptions, probes: &Probes, start_mono: u64) -> RunInfo {
    RunInfo {
        tracer_version: env!("CARGO_PKG_VERSION"),
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        monotonic_start_ns: start_mono,
        wall_start_unix_ns: clock::wall_ns(),
        attach_ns: probes.attach_time.as_nanos() as u64,
        options: serde_json::json!({
            "duration_ns": opts.duration.map(|d| d.as_nanos() as u64),
            "ring_buffer_mb": opts.ring_buffer_mb,
            "poll_interval_ns": opts.poll_interval.as_nanos() as u64,
            "degraded": probes.degraded,
            "approximate_kinds": probes
                .evidence
                .approximate_kinds()
                .into_iter()
                .map(crate::analysis::classify::FaultKind::name)
                .collect::<Vec<_>>(),
            "attribution": opts.attribution,
            "key_max_bytes": opts.key_max,
            "top_n": opts.top_n,
            "interval_ns": opts.interval.as_nanos() as u64,
            "keys": opts.keys.name(),
            "max_events": opts.max_events,
            "max_rate": opts.max_rate,
            "key_salt_fingerprint": opts.keys.fingerprint(),
        }),
        host: crate::kernel::host::HostInfo::read(),
    }
}
