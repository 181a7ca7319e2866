//! `redis-benchmark` as the Redis benches run it: one test against 127.0.0.1 with random
//! keys of a fixed size, and the requests/s and latencies of its `--csv` output.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::interrupt;

/// One redis-benchmark run, all but the server's port.
pub struct Load {
    /// `-t`: `set` or `get`.
    pub test: &'static str,
    /// `-c`.
    pub clients: u32,
    /// `-n`.
    pub requests: u64,
    /// `-P`; `None` leaves the flag out (redis-benchmark's default, no pipelining).
    pub pipeline: Option<u32>,
    /// `-r`: the key space, `key:000000000000` and up.
    pub keys: u64,
    /// `-d`: value size in bytes.
    pub value_size: usize,
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Load {
    /// The arguments after `-h 127.0.0.1 -p PORT`: what the JSON reports record, since
    /// the port changes from run to run.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "-c".to_string(),
            self.clients.to_string(),
            "-n".to_string(),
            self.requests.to_string(),
            "-t".to_string(),
            self.test.to_string(),
        ];
        if let Some(p) = self.pipeline {
            args.extend(["-P".to_string(), p.to_string()]);
        }
        args.extend([
            "-r".to_string(),
            self.keys.to_string(),
            "-d".to_string(),
            self.value_size.to_string(),
            "--csv".to_string(),
        ]);
        args
    }

    /// The whole command line against the server on `port`.
    pub fn command_line(&self, port: u16) -> Vec<String> {
        let mut args = vec![
            "-h".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            port.to_string(),
        ];
        args.extend(self.args());
        args
    }

    /// Runs it against the server on `port`. Checks for Ctrl-C before and after: a run
    /// the terminal's SIGINT cut short must fail rather than count.
    pub fn run(&self, port: u16) -> Result<Sample> {
        interrupt::check()?;
        let args = self.command_line(port);
        let o = Command::new("redis-benchmark")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .context("running redis-benchmark (run `cargo xtask setup`)")?;
        interrupt::check()?;
        if !o.status.success() {
            bail!(
                "redis-benchmark {} failed with {}: {}",
                args.join(" "),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        parse_csv(&String::from_utf8_lossy(&o.stdout), self.test)
    }
}

/// Parses redis-benchmark's `--csv` output: the header row names the columns, so their
/// order may change between versions.
pub fn parse_csv(text: &str, test: &str) -> Result<Sample> {
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split(',').map(|f| f.trim().trim_matches('"')).collect())
        .collect();
    let header = rows
        .iter()
        .find(|r| r.first() == Some(&"test"))
        .with_context(|| format!("no CSV header in redis-benchmark output: {text}"))?;
    // The row is named in capitals (`SET`) while `-t` takes any case.
    let row = rows
        .iter()
        .find(|r| r.first().is_some_and(|f| f.eq_ignore_ascii_case(test)))
        .with_context(|| format!("no {test} row in redis-benchmark output: {text}"))?;
    let col = |name: &str| -> Result<f64> {
        let i = header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no {name} column in redis-benchmark output: {text}"))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad {name} value in redis-benchmark output: {text}"))
    };
    Ok(Sample {
        rps: col("rps")?,
        p50_ms: col("p50_latency_ms")?,
        p99_ms: col("p99_latency_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"63877.36\",\"0.428\",\"0.192\",\"0.383\",\"0.791\",\"1.055\",\"4.559\"\n";
        let s = parse_csv(out, "set").unwrap();
        assert_eq!(s.rps, 63877.36);
        assert_eq!(s.p50_ms, 0.383);
        assert_eq!(s.p99_ms, 1.055);
        assert!(parse_csv(out, "get").is_err());
        assert!(parse_csv("garbage", "set").is_err());
        // A header without the latency columns is refused, not read as zeros.
        assert!(parse_csv("\"test\",\"rps\"\n\"SET\",\"1\"\n", "set").is_err());
    }

    #[test]
    fn command_line_with_and_without_pipelining() {
        let mut load = Load {
            test: "set",
            clients: 50,
            requests: 1000,
            pipeline: Some(16),
            keys: 100_000,
            value_size: 64,
        };
        assert_eq!(
            load.command_line(7000).join(" "),
            "-h 127.0.0.1 -p 7000 -c 50 -n 1000 -t set -P 16 -r 100000 -d 64 --csv"
        );
        load.pipeline = None;
        assert_eq!(
            load.args().join(" "),
            "-c 50 -n 1000 -t set -r 100000 -d 64 --csv"
        );
    }
}
