//! The `redis-memtrace` command.

mod cli;

use std::{process::ExitCode, time::Duration};

use clap::Parser;
use memtrace::record::{RecordOptions, TargetSpec, record};

use crate::cli::{Cli, Command, RecordArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Record(args) => run_record(args),
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
        (None, true) => match args.redis {
            Some(addr) => TargetSpec::Redis(addr),
            None => TargetSpec::AutoRedis,
        },
        (Some(_), false) => anyhow::bail!("give either --pid or a command, not both"),
    };
    let opts = RecordOptions {
        target,
        duration: args.duration,
        output: args.output,
        ring_buffer_mb: args.ring_buffer_mb,
        poll_interval: Duration::from_millis(args.poll_ms.max(1)),
        quiet: args.quiet,
        attribution: !args.no_attribution,
        key_max: args.key_bytes as usize,
        top_n: args.top.max(1),
        interval: args.interval.max(Duration::from_millis(10)),
    };
    record(&opts)?;
    Ok(ExitCode::SUCCESS)
}
