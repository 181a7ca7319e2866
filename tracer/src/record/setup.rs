//! Everything a recording sets up before its loop, owned by one [`Recorder`] that
//! detaches the programs, stops the reader and abandons temporary outputs on every path
//! that does not reach [`Recorder::finish`].

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
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
    target::{FIRST_SERVER_INDEX, ForkProbe, Target},
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

/// One traced server and everything kept for it: `record` traces one, or several with
/// `--redis A --redis B` / `--all` (each gets its own timeline, merged at the end).
pub struct Node {
    /// Its row in the kernel's `SERVERS` table.
    pub(super) index: u32,
    pub(super) target: Target,
    pub(super) analyzer: Analyzer,
    /// `None` once finished.
    pub(super) timeline: Option<Writer>,
    pub(super) cap: EventCap,
    pub(super) warnings: Vec<String>,
    pub(super) exited: HashSet<u32>,
    /// Epochs whose reason is still unknown: (epoch, child, since).
    pub(super) unlabelled: Vec<(u32, u32, Instant)>,
    /// Live Prometheus metrics (`--metrics`) of this node.
    pub(super) metrics: Option<Metrics>,
    /// With several servers: when this one exited (the others are still traced).
    pub(super) ended_ns: Option<u64>,
    /// The address the user gave (`--follow` finds a restarted server there).
    pub(super) follow_spec: Option<String>,
}

/// A recording in progress.
pub struct Recorder<'o> {
    pub(super) opts: &'o RecordOptions,
    /// `None` once detached (stopping).
    pub(super) probes: Option<Probes>,
    pub(super) events: Receiver<Vec<KernelEvent>>,
    reader_stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<ReaderStats>>,
    pub(super) counters: KernelCounterMap,
    /// The servers traced (one unless several were asked for).
    pub(super) nodes: Vec<Node>,
    /// Which node each traced process belongs to (several servers only).
    pub(super) owners: HashMap<u32, usize>,
    pub(super) perfetto: Option<AtomicFile>,
    /// Serves every node's metrics (`--metrics`) until dropped with the recorder.
    _metrics_server: Option<metrics::serve::Server>,
    pub(super) launched: Option<Launched>,
    pub(super) run_info: RunInfo,
    pub(super) signalled: Arc<AtomicBool>,
    pub(super) start_mono: u64,
    /// Kernel records received while calibrating, to process before the next batch.
    pub(super) stash: Vec<KernelEvent>,
    /// Scratch: records yielded by one kernel event.
    pub(super) records: Vec<TimelineEvent>,
    pub(super) progress: Progress,
    pub(super) status: StatusLine,
    pub(super) exit_status: Option<i32>,
}

impl<'o> Recorder<'o> {
    /// Resolves the targets, opens the outputs, loads the programs and starts tracing.
    pub fn setup(opts: &'o RecordOptions) -> Result<Recorder<'o>> {
        // Launch before any thread exists (fork in a single-threaded process).
        let mut warnings = Vec::new();
        let (launched, found) = resolve_targets(opts, &mut warnings)?;
        // Every output is opened before anything is attached, so a bad path fails early.
        // The metrics port first: taken, it fails the run before any file is created.
        let (mut node_metrics, metrics_server) = match opts.metrics {
            Some(addr) => {
                let listener = metrics::serve::bind(addr)?;
                let mut root = metrics::registry();
                let per_node: Vec<Option<Metrics>> = found
                    .iter()
                    .map(|(info, _, spec)| {
                        Some(Metrics::register(
                            &mut root,
                            &node_name(info, spec.as_ref()),
                        ))
                    })
                    .collect();
                let server = metrics::serve::Server::spawn(listener, Arc::new(root))?;
                (per_node, Some(server))
            }
            None => (found.iter().map(|_| None).collect(), None),
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
        let dests = node_destinations(opts, found.len());
        let mut writers = Vec::new();
        for dest in &dests {
            writers.push(open_writer(opts, dest)?);
        }
        let signalled = Arc::new(AtomicBool::new(false));
        let mut temp_files: Vec<PathBuf> = Vec::new();
        if !opts.ndjson && !opts.live {
            temp_files.extend(dests.iter().map(|d| crate::output_file::temp_path(d)));
            // Several servers: the node files themselves are temporary too.
            if dests.len() > 1 {
                temp_files.extend(dests.iter().cloned());
            }
        }
        if let Some(p) = &opts.perfetto {
            temp_files.push(crate::output_file::temp_path(p));
        }
        crate::record::signals::install(Arc::clone(&signalled), &temp_files)
            .context("installing signal handlers")?;
        let mut probes = match Probes::attach(ProbeOptions {
            ring_buffer_bytes: opts.ring_buffer_mb << 20,
            cost_stage: opts.cost_stage,
        }) {
            Ok(p) => p,
            Err(e) => {
                writers.into_iter().for_each(Writer::abandon);
                return Err(e.into());
            }
        };
        if opts.cost_stage != tracer_common::cost_stage::FULL {
            probes.degraded.push(format!(
                "--cost-stage {}: Redis attribution stops early in the kernel (benchmarking \
                 only); no fault is attributed",
                tracer_common::cost_stage::name(opts.cost_stage)
            ));
        }
        let ring = probes.take_events()?;
        let counters = probes.take_counters()?;
        // The reader runs before the targets are added, so nothing emitted is left unread.
        let (tx, events) = mpsc::sync_channel(256);
        let reader_stop = Arc::new(AtomicBool::new(false));
        let reader = reader::spawn(ring, tx, Arc::clone(&reader_stop), opts.poll_interval)
            .context("starting the ring buffer reader")?;
        let start_mono = clock::monotonic_ns();
        let run_info = run_info(opts, &probes, start_mono);
        let evidence = probes.evidence;
        let nodes = found
            .into_iter()
            .zip(writers)
            .enumerate()
            .map(|(i, ((info, id, spec), timeline))| {
                let mut analyzer = Analyzer::new(id.pid, target::swap_bytes(id.pid).or(Some(0)));
                analyzer.set_evidence(evidence);
                Node {
                    index: FIRST_SERVER_INDEX + i as u32,
                    target: Target::new(id, info, spec, start_mono),
                    analyzer,
                    timeline: Some(timeline),
                    cap: EventCap::new(opts.max_events, opts.max_rate),
                    warnings: if i == 0 {
                        std::mem::take(&mut warnings)
                    } else {
                        warnings.clone()
                    },
                    exited: HashSet::new(),
                    unlabelled: Vec::new(),
                    metrics: node_metrics[i].take(),
                    ended_ns: None,
                    follow_spec: user_address(&opts.target, i),
                }
            })
            .collect();
        let mut recorder = Recorder {
            opts,
            probes: Some(probes),
            events,
            reader_stop,
            reader: Some(reader),
            counters,
            nodes,
            owners: HashMap::new(),
            perfetto,
            _metrics_server: metrics_server,
            launched,
            run_info,
            signalled,
            start_mono,
            stash: Vec::new(),
            records: Vec::new(),
            progress: Progress::default(),
            status: StatusLine::new(!opts.quiet),
            exit_status: None,
        };
        recorder.start()?;
        Ok(recorder)
    }

    /// Whether several servers are traced (records are routed to their node by pid).
    pub(super) fn several(&self) -> bool {
        self.nodes.len() > 1
    }

    /// Probes `fork()`, turns attribution on, starts tracing, writes the headers and
    /// releases a launched command.
    fn start(&mut self) -> Result<()> {
        if let Some(p) = self.probes.as_ref()
            && !self.opts.quiet
        {
            for d in &p.degraded {
                eprintln!("redis-memtrace: warning: {d}");
            }
        }
        for i in 0..self.nodes.len() {
            self.start_node(i)?;
        }
        if let Some(l) = self.launched.as_mut() {
            l.release()?;
        }
        for n in &mut self.nodes {
            n.target.start_sampler(self.opts.interval, self.opts.live);
        }
        self.announce();
        Ok(())
    }

    /// Node `i`: its `fork()` probe, attribution, tracing, children and header.
    fn start_node(&mut self, i: usize) -> Result<()> {
        let launched = self.launched.is_some();
        // A launched command has not exec'd yet: probe our own libc now (the same file
        // almost always, so its first fork is seen) and its own once it runs.
        let probe_pid = if launched {
            self.nodes[i].target.fork_probe = ForkProbe::AfterExec(None);
            std::process::id()
        } else {
            self.nodes[i].target.pid()
        };
        if let Err(w) = self.probe_fork_call(probe_pid)
            && !launched
        {
            self.nodes[i].warnings.push(w);
        }
        if self.opts.attribution && !launched {
            self.try_attribution(i);
        }
        let start_mono = self.start_mono;
        let several = self.several();
        let node = &mut self.nodes[i];
        node.target.attribution_pending = self.opts.attribution && launched;
        let pid = node.target.pid();
        let probes = self.probes.as_mut().context("programs detached")?;
        probes.trace(pid, role::TARGET, node.index)?;
        if several {
            self.owners.insert(pid, i);
        }
        if !launched {
            target::still_running(node.target.id)?;
            for child in target::children(pid) {
                probes.trace(child, role::CHILD, 0)?;
                if several {
                    self.owners.insert(child, i);
                }
                let id = node.analyzer.adopt_running_child(child, start_mono);
                if let Some(s) = node.target.session.as_mut() {
                    let (why, info) = s.on_fork(child);
                    node.analyzer.label_epoch(id, why, Some(info));
                }
            }
        }
        let timeline = node.timeline.as_mut().context("timeline closed")?;
        timeline
            .write_header(&self.run_info, &node.target.info)
            .context("writing the timeline")?;
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
        for n in &self.nodes {
            eprintln!(
                "redis-memtrace: tracing pid {} ({}); attach took {:.1} ms; Ctrl-C to stop",
                n.target.pid(),
                n.target.info.comm,
                attach * 1e3
            );
            if let Some(s) = &n.target.session {
                announce_attribution(s);
            }
            for w in &n.warnings {
                eprintln!("redis-memtrace: warning: {w}");
            }
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

    /// Tries to turn attribution on for node `i`; returns whether it is now on.
    /// A failure is one warning.
    pub(super) fn try_attribution(&mut self, i: usize) -> bool {
        let Some(probes) = self.probes.as_mut() else {
            return false;
        };
        let kernel = Kernel {
            probes,
            events: &self.events,
            stash: &mut self.stash,
        };
        let node = &mut self.nodes[i];
        match node
            .target
            .start_attribution(kernel, node.index, &mut node.analyzer, self.opts)
        {
            Ok(w) => {
                node.warnings.extend(w);
                node.target.session.is_some()
            }
            Err(w) => {
                node.warnings.push(w);
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
        for n in &mut self.nodes {
            if let Some(t) = n.timeline.take() {
                t.abandon();
            }
        }
        if let Some(p) = self.perfetto.take() {
            p.abandon();
        }
    }
}

/// The address given for node `i`, if it was given one.
fn user_address(target: &TargetSpec, i: usize) -> Option<String> {
    match target {
        TargetSpec::Redis(spec) => Some(spec.clone()),
        TargetSpec::Redises(specs) => specs.get(i).cloned(),
        _ => None,
    }
}

/// Where each node's timeline goes: the output itself for one server; for several,
/// hidden files next to it, merged into it at the end.
fn node_destinations(opts: &RecordOptions, count: usize) -> Vec<PathBuf> {
    if count <= 1 {
        return vec![opts.output.clone()];
    }
    let name = opts
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "timeline".into());
    (0..count)
        .map(|i| {
            opts.output
                .with_file_name(format!(".{name}.node{i}-{}", std::process::id()))
        })
        .collect()
}

fn open_writer(opts: &RecordOptions, dest: &std::path::Path) -> Result<Writer> {
    if opts.live {
        return Ok(Writer::Discard);
    }
    Writer::create(dest, opts.ndjson).with_context(|| {
        format!(
            "cannot write the timeline to {} (choose a writable path with -o)",
            opts.output.display()
        )
    })
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

/// A server found to trace: what the timeline says of it, who it is, its address.
type Found = (TargetInfo, ProcessId, Option<crate::redis::info::ConnSpec>);

/// The processes to trace: launched (held at its gate), or found.
fn resolve_targets(
    opts: &RecordOptions,
    warnings: &mut Vec<String>,
) -> Result<(Option<Launched>, Vec<Found>)> {
    let found = match &opts.target {
        TargetSpec::Pid(pid) => {
            let (info, id) = target::describe(*pid)?;
            vec![(info, id, None)]
        }
        TargetSpec::Redis(spec) => vec![resolve_redis(spec, warnings)?],
        TargetSpec::Redises(specs) => {
            let mut out: Vec<Found> = Vec::new();
            for spec in specs {
                let f = resolve_redis(spec, warnings)?;
                if let Some(same) = out.iter().find(|o| o.1 == f.1) {
                    anyhow::bail!(
                        "--redis {spec} is pid {}, already traced as {}: give each server once",
                        f.1.pid,
                        node_name(&same.0, same.2.as_ref())
                    );
                }
                out.push(f);
            }
            out
        }
        TargetSpec::AutoRedis => {
            let server = locate::auto_select()?;
            let (info, id) = target::describe(server.pid)?;
            vec![(info, id, None)]
        }
        TargetSpec::AllRedis => {
            let servers = locate::find_redis_servers();
            if servers.is_empty() {
                anyhow::bail!(
                    "--all found no redis-server or valkey-server running on this host (in this PID namespace)"
                );
            }
            // A server that exited since it was listed is not an error of `--all`.
            let out: Vec<Found> = servers
                .iter()
                .filter_map(|s| target::describe(s.pid).ok())
                .map(|(info, id)| (info, id, None))
                .collect();
            if out.is_empty() {
                anyhow::bail!("--all: every server found exited before tracing started");
            }
            out
        }
        TargetSpec::Command(argv) => {
            let (l, info) = target::launch(argv, opts.to_stdout())?;
            let id = ProcessId {
                pid: l.pid,
                start_ticks: info.start_time_ticks,
            };
            return Ok((Some(l), vec![(info, id, None)]));
        }
    };
    Ok((None, found))
}

/// A `--redis` address resolved to a local server.
fn resolve_redis(spec: &str, warnings: &mut Vec<String>) -> Result<Found> {
    let resolved = locate::resolve_redis(spec, Duration::from_secs(2))?;
    warnings.extend(resolved.warnings);
    let conn = resolved
        .conn
        .map(|c| c.spec().clone())
        .or_else(|| parse_target(spec).ok());
    let (info, id) = target::describe(resolved.pid)?;
    Ok((info, id, conn))
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
