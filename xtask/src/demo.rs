//! The main job: trace a workload whose memory behaviour is known (fault, fork,
//! copy-on-write, reuse, swap) and show what the tracer saw next to what it did.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{bin, run, swap::Swap};

/// Runs the demo, leaving `timeline.json` in `out`.
pub fn demo(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let timeline = out.join("timeline.json");
    let _swap = Swap::ensure(512)?;
    eprintln!(
        "xtask: tracing fault-gen: 20000 pages touched, fork, 5000 copied, 5000 reused, 2000 swapped and read back"
    );
    run(Command::new(bin("redis-memtrace"))
        .args(["record", "-o"])
        .arg(&timeline)
        .arg("--")
        .arg(bin("fault-gen"))
        .args([
            "--pages", "20000", "--cow", "5000", "--reuse", "5000", "--swap", "2000",
        ]))?;
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&timeline)?)?;
    println!("\nsummary.faults: {}", t["summary"]["faults"]);
    println!("epochs: {}", t["epochs"].as_array().map_or(0, Vec::len));
    println!("lost events: {}", t["lost_events"]);
    println!("timeline: {}", timeline.display());
    Ok(())
}
