//! Analysis tools the tests query timelines with: DuckDB's Python package, which runs the
//! SQL of `docs/analysis.md` in `tests/duckdb_analysis.rs`.
//!
//! Pinned like the server builds (`servers`): one PyPI wheel, its exact file and SHA-256,
//! downloaded by pip and unpacked into `<cache>/tools/duckdb-<version>/`, the folder
//! `testkit::tools` names for the tests (`cargo xtask test` exports it in
//! `MEMTRACE_DUCKDB`). The wheel is unpacked in a staging folder and renamed into place
//! only after Debian's python3 imported it from there and reported the pinned version, so
//! an interrupted install never counts as installed; later runs only import it again.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use testkit::tools::{DUCKDB_VERSION, PYTHON};

use crate::servers::{Wheel, download_wheel, remove_any, remove_stale, run_checked};

/// DuckDB for CPython 3.11 (Debian 12's python3) on x86_64 with glibc 2.28 or later
/// (Debian 12 has 2.36).
const DUCKDB_WHEEL: &Wheel = &Wheel {
    requirement: "duckdb==2.0.1",
    platform: "manylinux_2_28_x86_64",
    file: "duckdb-2.0.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    sha256: "eb32b389d99d14cbbec4c110f58237c77eacefc65ef6f737619f413c97a91a77",
};

/// Installs DuckDB's Python package unless it is in place; the folder to put on
/// `PYTHONPATH`.
pub fn ensure() -> Result<PathBuf> {
    let home = testkit::tools::duckdb_install_dir()
        .context("neither XDG_CACHE_HOME nor HOME is set: no cache folder for DuckDB")?;
    if std::fs::symlink_metadata(&home).is_ok_and(|m| m.is_dir()) && imports(&home).is_ok() {
        return Ok(home);
    }
    install(&home).with_context(|| {
        format!(
            "installing DuckDB (PyPI {}) into {}",
            DUCKDB_WHEEL.requirement,
            home.display()
        )
    })?;
    Ok(home)
}

/// Checks that [`PYTHON`] with `dir` on `PYTHONPATH` imports `duckdb` from `dir` itself
/// (not a copy installed elsewhere) and that it is the pinned version.
fn imports(dir: &Path) -> Result<()> {
    let out = Command::new(PYTHON)
        .args([
            "-c",
            "import duckdb; print(duckdb.__version__); print(duckdb.__file__)",
        ])
        .env("PYTHONPATH", dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {PYTHON} (Debian's python3)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (version, file) = (lines.next(), lines.next().map(Path::new));
    if !out.status.success() {
        bail!(
            "{PYTHON} cannot import duckdb from {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if version != Some(DUCKDB_VERSION) || !file.is_some_and(|f| f.starts_with(dir)) {
        bail!(
            "{PYTHON} with PYTHONPATH={} imports duckdb {version:?} from {file:?}, \
             expected {DUCKDB_VERSION} from that folder",
            dir.display()
        );
    }
    Ok(())
}

/// Downloads and unpacks the wheel in a staging folder next to `home`, checks that it
/// imports, and renames it into place.
fn install(home: &Path) -> Result<()> {
    let parent = home.parent().context("the DuckDB folder has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    remove_stale(parent)?;
    eprintln!(
        "setup: installing DuckDB (PyPI {}) into {}",
        DUCKDB_WHEEL.requirement,
        home.display()
    );
    let name = home.file_name().unwrap_or_default().to_string_lossy();
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    remove_any(&staging)?;
    let result = stage(&staging).and_then(|()| {
        // Whatever is at the final path failed the check in `ensure`.
        remove_any(home)?;
        std::fs::rename(&staging, home)
            .with_context(|| format!("moving {} to {}", staging.display(), home.display()))
    });
    if result.is_err() {
        let _ = remove_any(&staging);
    }
    result
}

/// Downloads, checks and unpacks the wheel into `staging`, then imports it from there.
fn stage(staging: &Path) -> Result<()> {
    let downloads = staging.join(".downloads");
    std::fs::create_dir_all(&downloads)
        .with_context(|| format!("creating {}", downloads.display()))?;
    let wheel = download_wheel(DUCKDB_WHEEL, &downloads)?;
    // A wheel is a zip whose top level goes on sys.path as it is.
    run_checked(
        Command::new(PYTHON)
            .args(["-m", "zipfile", "-e"])
            .arg(&wheel)
            .arg(staging),
    )?;
    std::fs::remove_dir_all(&downloads)
        .with_context(|| format!("removing {}", downloads.display()))?;
    imports(staging)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test kit looks for the version the wheel installs.
    #[test]
    fn the_pinned_wheel_is_the_version_the_test_kit_names() {
        let pin = format!("duckdb=={DUCKDB_VERSION}");
        assert_eq!(DUCKDB_WHEEL.requirement, pin);
        let prefix = format!("duckdb-{DUCKDB_VERSION}-cp311-cp311-");
        assert!(
            DUCKDB_WHEEL.file.starts_with(&prefix),
            "{}",
            DUCKDB_WHEEL.file
        );
        assert!(DUCKDB_WHEEL.file.contains(DUCKDB_WHEEL.platform));
        let dir = testkit::tools::duckdb_install_dir().unwrap();
        assert!(dir.ends_with(format!("tools/duckdb-{DUCKDB_VERSION}")));
    }
}
