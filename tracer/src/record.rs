//! `redis-memtrace record`: attach, stream events through the analyzer into the timeline,
//! stop on duration, signal or target exit, and always leave a complete timeline.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tracer_common::role;

use crate::{
    analysis::{Analyzer, Record, Summary},
    clock,
    fork_epochs::Epoch,
    loader::{ProbeOptions, Probes},
    reader::{self, Raw},
    redis::{
        info::{ConnSpec, parse_target},
        locate,
        session::RedisSession,
    },
    samples::Sampler,
    status_line::{Progress, StatusLine},
    target::{self, ProcessId},
    timeline::{EndInfo, RunInfo, Segment, Trailer, Writer},
};

/// What to trace.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// An existing process.
    Pid(u32),
    /// A command to launch and trace from its first instruction.
    Command(Vec<String>),
    /// A Redis server by address (`HOST:PORT` or a `redis://` URL); must run here.
    Redis(String),
    /// The only redis-server running on this machine.
    AutoRedis,
}

/// Options of one recording.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// What to trace.
    pub target: TargetSpec,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Timeline path.
    pub output: PathBuf,
    /// Ring buffer size, MiB (power of two).
    pub ring_buffer_mb: u32,
    /// How often the ring buffer is drained.
    pub poll_interval: Duration,
    /// No progress output.
    pub quiet: bool,
    /// Attribute faults of a Redis target to commands, keys and phases.
    pub attribution: bool,
    /// Key bytes kept per key.
    pub key_max: usize,
    /// Rows of each top-N table.
    pub top_n: usize,
    /// Memory sampling interval.
    pub interval: Duration,
    /// Write NDJSON (one object per line, live) instead of one JSON document.
    pub ndjson: bool,
    /// Also write a Perfetto / Chrome Trace Event file here when the run ends.
    pub perfetto: Option<PathBuf>,
    /// What of key names is kept (`--keys`).
    pub keys: crate::attribution::key_privacy::KeyPolicy,
    /// At most this many fault records in `events`.
    pub max_events: Option<u64>,
    /// At most this many fault records per second of trace time in `events`.
    pub max_rate: Option<u64>,
    /// With `--redis`: when the server exits, wait for one at the same address and go on
    /// tracing it in a new segment.
    pub follow: bool,
}

/// Outcome of a recording, for callers that want the numbers.
#[derive(Debug)]
pub struct RecordOutcome {
    /// Where the timeline went.
    pub output: PathBuf,
    /// Totals.
    pub summary: Summary,
    /// Epochs.
    pub epochs: Vec<Epoch>,
    /// Events lost in the kernel.
    pub lost_events: u64,
    /// Exit status of a launched command.
    pub target_exit_status: Option<i32>,
}

/// Runs one recording.
pub fn record(opts: &RecordOptions) -> Result<RecordOutcome> {
    crate::privileges::require().map_err(anyhow::Error::msg)?;
    if !opts.ring_buffer_mb.is_power_of_two() || opts.ring_buffer_mb > 1024 {
        bail!(
            "--ring-buffer-mb must be a power of two between 1 and 1024, not {}",
            opts.ring_buffer_mb
        );
    }

    // Launch before any thread exists (fork in a single-threaded process).
    let mut warnings: Vec<String> = Vec::new();
    let mut redis_spec: Option<ConnSpec> = None;
    let (mut launched, target_info, target_id) = match &opts.target {
        TargetSpec::Pid(pid) => {
            let (info, id) = target::describe(*pid)?;
            (None, info, id)
        }
        TargetSpec::Redis(spec) => {
            let resolved = locate::resolve_redis(spec, Duration::from_secs(2))?;
            warnings.extend(resolved.warnings);
            redis_spec = resolved.conn.map(|c| c.spec().clone());
            if redis_spec.is_none() {
                redis_spec = parse_target(spec).ok();
            }
            let (info, id) = target::describe(resolved.pid)?;
            (None, info, id)
        }
        TargetSpec::AutoRedis => {
            let server = locate::auto_select()?;
            let (info, id) = target::describe(server.pid)?;
            (None, info, id)
        }
        TargetSpec::Command(argv) => {
            let (l, info) = target::launch(argv, opts.output == std::path::Path::new("-"))?;
            let id = ProcessId {
                pid: l.pid,
                start_ticks: info.start_time_ticks,
            };
            (Some(l), info, id)
        }
    };
    let mut target_id = target_id;
    let mut pid = target_id.pid;
    if opts.follow && !matches!(opts.target, TargetSpec::Redis(_)) {
        bail!("--follow needs --redis HOST:PORT (the address the restarted server is found at)");
    }

    let stdout = opts.output == std::path::Path::new("-");
    if stdout && !opts.ndjson {
        bail!("-o - (stdout) needs --format ndjson: a JSON document is only complete at the end");
    }
    if stdout && opts.perfetto.is_some() {
        bail!("--perfetto reads the finished timeline back: write it to a file with -o");
    }
    // Every output is opened before anything is attached, so a bad path fails early.
    let mut perfetto_file = match &opts.perfetto {
        Some(p) => Some(crate::output_file::AtomicFile::create(p).with_context(|| {
            format!(
                "cannot write the Perfetto trace to {} (choose a writable path)",
                p.display()
            )
        })?),
        None => None,
    };
    let mut timeline = Writer::create(&opts.output, opts.ndjson).with_context(|| {
        format!(
            "cannot write the timeline to {} (choose a writable path with -o)",
            opts.output.display()
        )
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut temp_files = Vec::new();
    if !opts.ndjson {
        temp_files.push(crate::output_file::temp_path(&opts.output));
    }
    if let Some(p) = &opts.perfetto {
        temp_files.push(crate::output_file::temp_path(p));
    }
    crate::signals::install(Arc::clone(&stop), &temp_files)
        .context("installing signal handlers")?;

    let setup = (|| -> Result<_> {
        let mut probes = Probes::attach(ProbeOptions {
            ring_buffer_bytes: opts.ring_buffer_mb << 20,
        })?;
        let ring = probes.take_events()?;
        let counters = probes.take_counters()?;
        Ok((probes, ring, counters))
    })();
    let (mut probes, ring, counters) = match setup {
        Ok(v) => v,
        Err(e) => {
            timeline.abandon();
            return Err(e);
        }
    };
    if !opts.quiet {
        for d in &probes.degraded {
            eprintln!("redis-memtrace: warning: {d}");
        }
    }

    // The reader runs before the target is added, so nothing emitted is left unread.
    let (tx, rx) = mpsc::sync_channel(256);
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = reader::spawn(ring, tx, Arc::clone(&reader_stop), opts.poll_interval)
        .context("starting the ring buffer reader")?;

    let start_mono = clock::monotonic_ns();
    let run = RunInfo {
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
                .map(crate::classify::FaultKind::name)
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
        host: crate::host::HostInfo::read(),
    };
    let mut analyzer = Analyzer::new(pid, target::swap_bytes(pid).or(Some(0)));
    analyzer.set_evidence(probes.evidence);

    // The fork() call as the caller sees it; a launched command only after its exec.
    // A launched command has not exec'd yet: probe our own libc now (the same file
    // almost always, so its first fork is seen) and its own once it runs.
    let mut fork_call_pending = launched.is_some();
    let mut exec_seen: Option<Instant> = None;
    let probe_pid = if launched.is_some() {
        std::process::id()
    } else {
        pid
    };
    if let Err(w) = probe_fork_call(&mut probes, probe_pid)
        && launched.is_none()
    {
        warnings.push(w);
    }

    // Attribution for a running Redis: prove the layout, give it to the kernel, then
    // start tracing with the attribution role. A launched command is tried once it runs.
    let mut session: Option<RedisSession> = None;
    let mut attribution_pending = opts.attribution && launched.is_some();
    if opts.attribution && launched.is_none() {
        match try_attribution(&mut probes, pid, redis_spec.clone(), opts, &mut analyzer) {
            Ok(Some((s, w))) => {
                warnings.extend(w);
                session = Some(s);
            }
            Ok(None) => {}
            Err(w) => warnings.push(w),
        }
    }
    let target_role = if session.is_some() {
        role::TARGET | role::ATTRIBUTE
    } else {
        role::TARGET
    };

    let started = (|| -> Result<()> {
        probes.trace(pid, target_role)?;
        if launched.is_none() {
            target::still_running(target_id)?;
            for child in target::children(pid) {
                probes.trace(child, role::CHILD)?;
                analyzer.adopt_running_child(child, start_mono);
                if let Some(s) = session.as_mut() {
                    let (why, info) = s.on_fork(child);
                    analyzer.label_epoch(child, why, Some(info));
                }
            }
        }
        timeline
            .write_header(&run, &target_info)
            .context("writing the timeline")?;
        if let Some(l) = launched.as_mut() {
            l.release()?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        drop(probes);
        reader_stop.store(true, Ordering::Release);
        drop(rx);
        let _ = reader.join();
        timeline.abandon();
        return Err(e);
    }
    if !opts.quiet {
        eprintln!(
            "redis-memtrace: tracing pid {pid} ({}); attach took {:.1} ms; Ctrl-C to stop",
            target_info.comm,
            probes.attach_time.as_secs_f64() * 1e3
        );
        if let Some(s) = &session {
            eprintln!(
                "redis-memtrace: Redis {} attribution on ({} layout, {})",
                s.info.version,
                s.info.layout.unwrap_or("?"),
                if s.info.client_verified {
                    "verified against a live client"
                } else {
                    "verified from process memory"
                }
            );
        }
        for w in &warnings {
            eprintln!("redis-memtrace: warning: {w}");
        }
    }
    let mut sampler = start_sampler(pid, session.as_ref(), opts.interval);
    let mut progress = Progress::default();
    // `--follow`: the servers traced one after the other, and since when none is.
    let mut segments = vec![Segment::begin(&target_info, start_mono)];
    let mut waiting_since: Option<Instant> = None;
    let mut last_follow_try = Instant::now();
    let mut earlier_samples = Vec::new();
    let mut cap = crate::event_cap::EventCap::new(opts.max_events, opts.max_rate);
    let mut status = StatusLine::new(!opts.quiet);
    let mut exited_children: std::collections::HashSet<u32> = Default::default();
    let mut last_attribution_try = Instant::now();

    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut exit_status = None;
    let mut reason: Option<&'static str> = None;
    let mut probes = Some(probes);
    let mut last_liveness = Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(batch) => {
                for raw in &batch {
                    let ev = match raw {
                        Raw::Context(c) => {
                            for record in analyzer.process_context(c) {
                                progress.observe(&record);
                                write_capped(&mut timeline, &mut cap, &record)?;
                            }
                            continue;
                        }
                        Raw::Event(ev) => ev,
                    };
                    let Some(record) = analyzer.process(ev) else {
                        continue;
                    };
                    match &record {
                        Record::Fork {
                            child_pid,
                            epoch: Some(_),
                            ..
                        } => {
                            if let Some(s) = session.as_mut() {
                                let (why, info) = s.on_fork(*child_pid);
                                analyzer.label_epoch(*child_pid, why, Some(info));
                            }
                        }
                        Record::Exit {
                            pid: p,
                            process_exit: true,
                            ..
                        } => {
                            exited_children.insert(*p);
                        }
                        _ => {}
                    }
                    progress.observe(&record);
                    write_capped(&mut timeline, &mut cap, &record)?;
                }
                timeline.flush_live().context("writing the timeline")?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        status.tick(&progress, || counters.read().ring_buffer_full);
        if let Some(s) = session.as_mut() {
            for (child, bytes) in s.poll_cow_sizes(&|c| exited_children.contains(&c)) {
                if let Some(r) = analyzer.epoch_redis_mut(child) {
                    r.last_cow_size = Some(bytes);
                }
            }
        }
        if fork_call_pending
            && reason.is_none()
            && let Some(p) = probes.as_mut()
            && target::has_exec_d(pid)
        {
            let since = *exec_seen.get_or_insert_with(Instant::now);
            match probe_fork_call_after_exec(p, target_id, since.elapsed()) {
                ForkProbe::Done => fork_call_pending = false,
                ForkProbe::Retry => {}
                ForkProbe::Failed(w) => {
                    fork_call_pending = false;
                    if !opts.quiet {
                        eprintln!("redis-memtrace: warning: {w}");
                    }
                    warnings.push(w);
                }
            }
        }
        if attribution_pending
            && reason.is_none()
            && last_attribution_try.elapsed() >= Duration::from_millis(200)
            && let Some(p) = probes.as_mut()
        {
            // A launched server: try once it has exec'd and set itself up.
            last_attribution_try = Instant::now();
            if target::comm(pid).as_deref() == Some("redis-server") {
                match try_attribution(p, pid, None, opts, &mut analyzer) {
                    Ok(Some((s, w))) => {
                        if let Err(e) = p.trace(pid, role::TARGET | role::ATTRIBUTE) {
                            warnings.push(format!("cannot turn attribution on: {e}"));
                        }
                        if !opts.quiet {
                            eprintln!(
                                "redis-memtrace: Redis {} attribution on ({} layout)",
                                s.info.version,
                                s.info.layout.unwrap_or("?")
                            );
                            for w in &w {
                                eprintln!("redis-memtrace: warning: {w}");
                            }
                        }
                        warnings.extend(w);
                        if sampler.is_none() {
                            sampler = start_sampler(pid, Some(&s), opts.interval);
                        }
                        session = Some(s);
                        attribution_pending = false;
                    }
                    Ok(None) => attribution_pending = false,
                    // Not listening yet, or memory not set up: try again shortly.
                    Err(_) => {}
                }
            }
        }
        if let (Some(since), Some(p), TargetSpec::Redis(spec)) =
            (waiting_since, probes.as_mut(), &opts.target)
            && reason.is_none()
            && last_follow_try.elapsed() >= Duration::from_millis(500)
        {
            last_follow_try = Instant::now();
            if let Some(found) = find_restarted(spec, target_id) {
                let (info, id) = found;
                let now = clock::monotonic_ns();
                if !opts.quiet {
                    eprintln!(
                        "redis-memtrace: following: a server is back at {} as pid {} ({:.1} s after the last one exited)",
                        crate::redis::info::redact_spec(spec),
                        id.pid,
                        since.elapsed().as_secs_f64()
                    );
                }
                for record in analyzer.retarget(id.pid, target::swap_bytes(id.pid)) {
                    write_capped(&mut timeline, &mut cap, &record)?;
                }
                target_id = id;
                pid = id.pid;
                segments.push(Segment::begin(&info, now));
                p.trace(pid, role::TARGET)?;
                if let Err(w) = probe_fork_call(p, pid) {
                    warnings.push(w);
                }
                if opts.attribution {
                    match try_attribution(p, pid, redis_spec.clone(), opts, &mut analyzer) {
                        Ok(Some((s, w))) => {
                            p.trace(pid, role::TARGET | role::ATTRIBUTE)?;
                            if !opts.quiet {
                                eprintln!(
                                    "redis-memtrace: Redis {} attribution on ({} layout)",
                                    s.info.version,
                                    s.info.layout.unwrap_or("?")
                                );
                            }
                            warnings.extend(w);
                            session = Some(s);
                        }
                        Ok(None) => session = None,
                        Err(w) => {
                            warnings.push(w);
                            session = None;
                        }
                    }
                }
                if let Some(old) = sampler.take() {
                    let (samples, w) = old.stop();
                    earlier_samples.extend(samples);
                    warnings.extend(w);
                }
                sampler = start_sampler(pid, session.as_ref(), opts.interval);
                waiting_since = None;
            }
        }
        if reason.is_none() {
            if stop.load(Ordering::Relaxed) {
                reason = Some("signal");
            } else if waiting_since.is_some() {
                // Following: only a signal or the duration ends the run.
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    reason = Some("duration");
                }
            } else if analyzer.target_exited() && opts.follow {
                target_gone(&mut segments, &mut waiting_since, pid, opts.quiet);
            } else if analyzer.target_exited() {
                reason = Some("target_exit");
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                reason = Some("duration");
            } else if last_liveness.elapsed() >= Duration::from_millis(200) {
                // Backstop in case the exit event itself was lost.
                last_liveness = Instant::now();
                let gone = match launched.as_ref() {
                    Some(l) => {
                        exit_status = exit_status.or_else(|| l.try_status());
                        exit_status.is_some()
                    }
                    None => target::still_running(target_id).is_err(),
                };
                if gone && opts.follow {
                    target_gone(&mut segments, &mut waiting_since, pid, opts.quiet);
                } else if gone {
                    reason = Some("target_exit");
                }
            }
            if reason.is_some() {
                // Detach first, then let the reader drain what is left and hang up.
                drop(probes.take());
                reader_stop.store(true, Ordering::Release);
            }
        }
    }
    status.clear();
    let stats = reader.join().unwrap_or_default();
    let end_mono = clock::monotonic_ns();
    if let Some(l) = launched.as_ref()
        && exit_status.is_none()
    {
        exit_status = if reason == Some("target_exit") {
            l.wait()
        } else {
            l.try_status()
        };
    }

    // Redis publishes a fork's CoW size shortly after reaping the child: give it a second.
    if let Some(s) = session.as_mut() {
        let until = Instant::now() + Duration::from_secs(1);
        loop {
            for (child, bytes) in s.poll_cow_sizes(&|c| exited_children.contains(&c)) {
                if let Some(r) = analyzer.epoch_redis_mut(child) {
                    r.last_cow_size = Some(bytes);
                }
            }
            if !s.has_pending(&|c| exited_children.contains(&c)) || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for record in analyzer.flush_pending() {
        write_capped(&mut timeline, &mut cap, &record)?;
    }
    let (samples, sample_warnings) = sampler.take().map(Sampler::stop).unwrap_or_default();
    if !opts.quiet {
        for w in &sample_warnings {
            eprintln!("redis-memtrace: warning: {w}");
        }
    }
    earlier_samples.extend(samples);
    let samples = earlier_samples;
    if let Some(last) = segments.last_mut()
        && last.end_ns.is_none()
    {
        last.end_ns = Some(end_mono);
        last.end_reason = Some(reason.unwrap_or("signal"));
    }
    warnings.extend(sample_warnings);
    let kernel = counters.read();
    let lost = kernel.ring_buffer_full;
    let (mut epochs, summary) = analyzer.finish(end_mono);
    for e in &mut epochs {
        if let (Some(r), Some(ours)) = (e.redis.as_mut(), e.fork_call_ns)
            && let Some(theirs) = r.latest_fork_usec
        {
            r.fork_usec_difference = Some((ours / 1000) as i64 - theirs as i64);
        }
    }
    let trailer = Trailer {
        epochs: epochs.clone(),
        lost_events: lost,
        kernel,
        summary: summary.clone(),
        redis: session.as_ref().map(|s| s.info.clone()),
        samples,
        warnings,
        event_cap: cap.report(),
        segments,
        end: EndInfo {
            reason: reason.unwrap_or("signal").to_string(),
            monotonic_end_ns: end_mono,
            target_exit_status: exit_status,
        },
    };
    let output = timeline
        .finish(&trailer)
        .with_context(|| format!("finishing the timeline at {}", opts.output.display()))?;
    if let Some(file) = perfetto_file.take() {
        write_perfetto(&output, file)?;
    }
    if !opts.quiet {
        print_summary(
            &trailer,
            stats.delivered,
            end_mono.saturating_sub(start_mono),
            &output,
        );
    }
    Ok(RecordOutcome {
        output,
        summary,
        epochs,
        lost_events: lost,
        target_exit_status: exit_status,
    })
}

/// The traced server went away under `--follow`: close its segment, start waiting.
fn target_gone(
    segments: &mut [Segment],
    waiting_since: &mut Option<Instant>,
    pid: u32,
    quiet: bool,
) {
    if let Some(last) = segments.last_mut() {
        last.end_ns = Some(clock::monotonic_ns());
        last.end_reason = Some("target_exit");
    }
    *waiting_since = Some(Instant::now());
    if !quiet {
        eprintln!(
            "redis-memtrace: pid {pid} exited; waiting for a server at the same address (--follow)"
        );
    }
}

/// A server at `spec` that is not `old` (another pid, or the same pid reused by a new
/// process: the start time tells them apart).
fn find_restarted(spec: &str, old: ProcessId) -> Option<(crate::timeline::TargetInfo, ProcessId)> {
    let resolved = locate::resolve_redis(spec, Duration::from_millis(500)).ok()?;
    let (info, id) = target::describe(resolved.pid).ok()?;
    (id != old).then_some((info, id))
}

/// Writes `record` unless `--max-events` / `--max-rate` leave it out.
fn write_capped(
    timeline: &mut Writer,
    cap: &mut crate::event_cap::EventCap,
    record: &Record,
) -> Result<()> {
    if cap.admit(record) {
        timeline
            .write_record(record)
            .context("writing the timeline")?;
    }
    Ok(())
}

/// Converts the finished timeline at `timeline` into the Perfetto file opened at start.
fn write_perfetto(
    timeline: &std::path::Path,
    mut file: crate::output_file::AtomicFile,
) -> Result<()> {
    use std::io::Write;
    let t = crate::timeline::read::load(timeline)?;
    let trace = crate::export::perfetto::to_chrome_trace(&t);
    let bytes = crate::export::perfetto::encode(&trace).context("encoding the Perfetto trace")?;
    file.writer()
        .write_all(&bytes)
        .context("writing the Perfetto trace")?;
    file.commit().context("writing the Perfetto trace")?;
    Ok(())
}

/// Probes the libc `fork()` of `pid`; `Err` is a warning saying what is lost.
fn probe_fork_call(probes: &mut Probes, pid: u32) -> Result<(), String> {
    let lost = "fork() calls are not timed (epochs' fork_call_ns null)";
    let object = crate::libc_fork::locate(pid).map_err(|e| format!("{e}: {lost}"))?;
    probes
        .attach_fork_call(&object)
        .map_err(|e| format!("cannot probe fork(): {e}: {lost}"))
}

/// How long after its exec a dynamically linked command may take to map its C library.
const LOADER_GRACE: Duration = Duration::from_secs(10);

/// Outcome of one attempt to probe `fork()` in a command that has exec'd.
#[derive(Debug, PartialEq, Eq)]
enum ForkProbe {
    /// Probed, or nothing left to probe.
    Done,
    /// The loader has not mapped libc yet.
    Retry,
    /// A warning saying what is lost.
    Failed(String),
}

/// Probes `fork()` in the command launched as `id`, `elapsed` after its exec was seen.
/// Right after `execve` a dynamic executable has only itself and the loader mapped: that
/// is a retry, not a failure (the probe on our own libc, attached before the exec, covers
/// its first forks when it maps the same file, which is the usual case). A command that
/// exits meanwhile leaves nothing to probe, and no warning.
fn probe_fork_call_after_exec(probes: &mut Probes, id: ProcessId, elapsed: Duration) -> ForkProbe {
    use crate::libc_fork::AfterExec;
    let lost = "fork() calls are not timed (epochs' fork_call_ns null)";
    let outcome = match crate::libc_fork::locate_after_exec(id.pid) {
        Ok(AfterExec::Found(object)) => match probes.attach_fork_call(&object) {
            Ok(()) => ForkProbe::Done,
            Err(e) => ForkProbe::Failed(format!("cannot probe fork(): {e}: {lost}")),
        },
        Ok(AfterExec::NotYetMapped) if elapsed < LOADER_GRACE => ForkProbe::Retry,
        Ok(AfterExec::NotYetMapped) => ForkProbe::Failed(format!(
            "pid {} mapped no file defining `fork` within {} s of its exec: {lost}",
            id.pid,
            LOADER_GRACE.as_secs()
        )),
        Err(e) => ForkProbe::Failed(format!("{e}: {lost}")),
    };
    // Its files are read through /proc/PID: once it has exited they are gone, and so is
    // anything left to time.
    match outcome {
        ForkProbe::Failed(_) if target::still_running(id).is_err() => ForkProbe::Done,
        other => other,
    }
}

/// Proves a layout for a Redis target and hands it to the kernel. `Ok(None)`: not a
/// Redis server (nothing to attribute); `Err`: a warning saying why attribution is off.
fn try_attribution(
    probes: &mut Probes,
    pid: u32,
    spec: Option<ConnSpec>,
    opts: &RecordOptions,
    analyzer: &mut Analyzer,
) -> Result<Option<(RedisSession, Vec<String>)>, String> {
    let comm = target::comm(pid).unwrap_or_default();
    match RedisSession::start(pid, spec, opts.key_max) {
        Ok((session, warnings)) => {
            probes
                .set_redis_layout(pid, session.kernel_layout())
                .map_err(|e| format!("attribution off: {e}"))?;
            analyzer.enable_attribution(session.attribution_options(opts.top_n, opts.keys.clone()));
            Ok(Some((session, warnings)))
        }
        Err(crate::redis::verify::VerifyError::NoServerSymbol) if comm != "redis-server" => {
            Ok(None)
        }
        Err(e) => Err(format!(
            "Redis attribution off, faults are still counted (attribution `unknown`): {e}"
        )),
    }
}

fn start_sampler(pid: u32, session: Option<&RedisSession>, interval: Duration) -> Option<Sampler> {
    let conn = session.and_then(|s| s.spec()).and_then(|spec| {
        crate::redis::info::RedisConn::open(spec, Duration::from_millis(500)).ok()
    });
    Sampler::spawn(pid, conn, interval).ok()
}

fn print_summary(t: &Trailer, delivered: u64, elapsed_ns: u64, output: &std::path::Path) {
    let f = &t.summary.faults;
    eprintln!(
        "redis-memtrace: stopped ({}) after {:.2} s: {} events, {} lost",
        t.end.reason,
        elapsed_ns as f64 / 1e9,
        delivered,
        t.lost_events
    );
    eprintln!(
        "  faults: cow_copy={} wp_reuse={} swap_in={} first_touch={} other={}",
        f.cow_copy, f.wp_reuse, f.swap_in, f.first_touch, f.other
    );
    for e in &t.epochs {
        eprintln!(
            "  epoch {}: child {} lived {:.3} s, fork {} us, parent cow_copy={} child cow_copy={}",
            e.id,
            e.child_pid,
            e.end_ns.unwrap_or(e.start_ns).saturating_sub(e.start_ns) as f64 / 1e9,
            e.fork_call_ns
                .map_or("?".into(), |d| (d / 1000).to_string()),
            e.faults.parent.cow_copy,
            e.faults.child.cow_copy,
        );
    }
    eprintln!("  timeline: {}", output.display());
}
