//! A swap file for the demo and benchmark when the machine has none, removed on drop.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::run;

/// Swap turned on by us (if any), turned off and deleted on drop.
pub struct Swap {
    file: Option<PathBuf>,
}

fn swap_total_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl Swap {
    /// Makes sure swap is on, creating a `size_mb` swap file if there is none.
    pub fn ensure(size_mb: u64) -> Result<Swap> {
        if swap_total_kb() > 0 {
            return Ok(Swap { file: None });
        }
        let file = PathBuf::from(format!(
            "/var/tmp/memtrace-xtask-{}.swap",
            std::process::id()
        ));
        eprintln!(
            "xtask: no swap on this machine; using {} for this run",
            file.display()
        );
        let guard = Swap {
            file: Some(file.clone()),
        };
        run(Command::new("fallocate")
            .arg("-l")
            .arg(format!("{size_mb}M"))
            .arg(&file))?;
        run(Command::new("chmod").arg("600").arg(&file))?;
        run(Command::new("mkswap").arg("-q").arg(&file))?;
        run(Command::new("swapon").arg(&file))?;
        Ok(guard)
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = Command::new("swapoff").arg(&file).status();
            let _ = std::fs::remove_file(&file);
            eprintln!("xtask: removed {}", file.display());
        }
    }
}
