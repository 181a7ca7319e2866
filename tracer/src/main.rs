//! The `redis-memtrace` command.

mod cli;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use memtrace::record::{RecordOptions, TargetSpec, record};

use crate::cli::{
    CheckArgs, Cli, Command, ExportArgs, Format, KeysMode, MergeArgs, RecordArgs, ReportArgs,
    ServeArgs,
};
use memtrace::attribution::key_privacy::KeyPolicy;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(args) => run_record(args),
        Command::Report(args) => run_report(args),
        Command::Export(args) => run_export(args),
        Command::Check(args) => run_check(args),
        Command::Serve(args) => run_serve(args),
        Command::Merge(args) => run_merge(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line: the outermost context, then its causes.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                line.push_str(": ");
                line.push_str(&cause.to_string());
            }
            eprintln!("redis-memtrace: error: {line}");
            ExitCode::FAILURE
        }
    }
}

fn run_record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    let target = match (args.pid, args.command.is_empty()) {
        (Some(pid), true) => TargetSpec::Pid(pid),
        (None, false) => TargetSpec::Command(args.command),
        (None, true) if args.all => TargetSpec::AllRedis,
        (None, true) => match <[String; 1]>::try_from(args.redis) {
            Ok([addr]) => TargetSpec::Redis(addr),
            Err(addrs) if addrs.is_empty() => TargetSpec::AutoRedis,
            Err(addrs) => TargetSpec::Redises(addrs),
        },
        (Some(_), false) => anyhow::bail!("give either --pid or a command, not both"),
    };
    let keys = key_policy(args.keys, args.key_salt.as_deref())?;
    let opts = RecordOptions {
        target,
        duration: args.duration,
        output: args.output,
        ring_buffer_mb: args.ring.ring_buffer_mb,
        cost_stage: args.cost_stage.kernel(),
        poll_interval: Duration::from_millis(args.ring.poll_ms.max(1)),
        quiet: args.quiet,
        attribution: !args.no_attribution,
        key_max: args.key_bytes as usize,
        top_n: args.top.max(1),
        interval: args.interval.max(Duration::from_millis(10)),
        ndjson: args.format == Format::Ndjson,
        perfetto: args.perfetto,
        keys,
        max_events: args.max_events,
        max_rate: args.max_rate,
        follow: args.follow,
        metrics: args.metrics,
        live: false,
    };
    record(&opts)?;
    Ok(ExitCode::SUCCESS)
}

/// `--keys` and `--key-salt` as a policy.
fn key_policy(mode: KeysMode, salt: Option<&str>) -> anyhow::Result<KeyPolicy> {
    Ok(match (mode, salt) {
        (KeysMode::Full, None) => KeyPolicy::Full,
        (KeysMode::None, None) => KeyPolicy::Omit,
        (KeysMode::Hash, Some(salt)) => KeyPolicy::hash_with_salt(salt.as_bytes()),
        (KeysMode::Hash, None) => KeyPolicy::hash_random()
            .map_err(|e| anyhow::anyhow!("cannot read a random salt from /dev/urandom: {e}"))?,
        (_, Some(_)) => anyhow::bail!("--key-salt only applies to --keys hash"),
    })
}

/// `serve`: `record --redis ADDR --follow --metrics HOST:PORT` with no timeline and
/// nothing kept that grows with time.
fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let target = match <[String; 1]>::try_from(args.redis) {
        Ok([addr]) => TargetSpec::Redis(addr),
        Err(addrs) => TargetSpec::Redises(addrs),
    };
    let opts = RecordOptions {
        target,
        duration: args.duration,
        output: std::path::PathBuf::new(),
        ring_buffer_mb: args.ring.ring_buffer_mb,
        cost_stage: tracer_common::cost_stage::FULL,
        poll_interval: Duration::from_millis(args.ring.poll_ms.max(1)),
        quiet: args.quiet,
        attribution: !args.no_attribution,
        key_max: args.key_bytes as usize,
        // As many rows as the top gauges show.
        top_n: memtrace::metrics::TOP_ROWS,
        interval: args.interval.max(Duration::from_millis(10)),
        ndjson: false,
        perfetto: None,
        keys: key_policy(args.keys, args.key_salt.as_deref())?,
        max_events: None,
        max_rate: None,
        follow: true,
        metrics: Some(args.metrics),
        live: true,
    };
    record(&opts)?;
    Ok(ExitCode::SUCCESS)
}

fn run_report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    memtrace::report::run(&args.timeline, args.html.as_deref(), args.top.max(1))?;
    Ok(ExitCode::SUCCESS)
}

fn run_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    memtrace::export::perfetto::export(&args.perfetto, &args.output)?;
    Ok(ExitCode::SUCCESS)
}

fn run_merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let set = memtrace::merge::run(&args.timelines, &args.output)?;
    eprintln!(
        "redis-memtrace: wrote {} ({} nodes; {})",
        args.output.display(),
        set.nodes.len(),
        set.alignment.note
    );
    Ok(ExitCode::SUCCESS)
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    use memtrace::check::Level;
    Ok(
        match memtrace::check::run(args.pid, args.redis.as_deref())? {
            Level::Pass => ExitCode::SUCCESS,
            Level::Warn => ExitCode::from(1),
            Level::Fail => ExitCode::from(2),
        },
    )
}
