//! The one swap guard: swap on for as long as it lives, through a swap file of its own
//! when the machine has none (removed on drop).

use std::{path::PathBuf, process::Command};

use crate::Error;

/// Size of the swap file [`SwapGuard::ensure`] creates for a test.
pub const TEST_SWAP_MB: u64 = 256;

/// Swap turned on by us (if any), turned off and deleted on drop.
pub struct SwapGuard {
    file: Option<PathBuf>,
}

/// `SwapTotal` of `/proc/meminfo`, in KiB (0 when unreadable).
pub fn swap_total_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("SwapTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

impl SwapGuard {
    /// Makes sure swap is on, creating a [`TEST_SWAP_MB`] swap file if there is none;
    /// panics if that fails.
    pub fn ensure() -> SwapGuard {
        SwapGuard::try_ensure(TEST_SWAP_MB).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Makes sure swap is on, creating a `size_mb` swap file if there is none.
    pub fn try_ensure(size_mb: u64) -> Result<SwapGuard, Error> {
        if swap_total_kb() > 0 {
            return Ok(SwapGuard { file: None });
        }
        let file = PathBuf::from(format!("/var/tmp/memtrace-{}.swap", std::process::id()));
        eprintln!(
            "note: no swap on this machine; using {} meanwhile",
            file.display()
        );
        // From here on, drop cleans up whatever of it was made.
        let guard = SwapGuard {
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

fn run(cmd: &mut Command) -> Result<(), Error> {
    let command = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(Error::io(format!("running {command}")))?;
    if !status.success() {
        return Err(Error::Tool { command, status });
    }
    Ok(())
}

impl Drop for SwapGuard {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = Command::new("swapoff").arg(&file).status();
            let _ = std::fs::remove_file(&file);
            eprintln!("note: removed {}", file.display());
        }
    }
}
