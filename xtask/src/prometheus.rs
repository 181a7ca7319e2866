//! The Prometheus server the metrics test scrapes the tracer with: Debian 12's own
//! `prometheus` package, pinned to one version and checked against its SHA-256, with only
//! its server binary unpacked into the cache (installing the package would pull in its
//! web assets and start a service).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::servers::{cache_root, check_sha256, run_checked};

const PACKAGE: &str = "prometheus";
/// Debian 12's version (bookworm and its point releases).
const VERSION: &str = "2.42.0+ds-5+deb12u1";
/// SHA-256 of `prometheus_2.42.0+ds-5+deb12u1_amd64.deb`, from Debian's package index.
const SHA256: &str = "81d59a24fce84f7fbe97a45a4f2914b6a5881b5cd1db2a6a0e129e515e1a5f55";

/// Tells the tests where the binary is.
pub use testkit::prometheus::ENV;

/// The Prometheus binary, unpacked first if missing.
pub fn ensure() -> Result<PathBuf> {
    let dir = cache_root()?.join(format!("tools/prometheus-{VERSION}"));
    let bin = dir.join("usr/bin/prometheus");
    if runs(&bin) {
        return Ok(bin);
    }
    eprintln!(
        "setup: unpacking Debian's {PACKAGE} {VERSION} into {}",
        dir.display()
    );
    let download = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)
        .with_context(|| format!("creating {}", download.display()))?;
    let want = format!("{PACKAGE}={VERSION}");
    let fetch = || {
        run_checked(
            Command::new("apt-get")
                .args(["download", "-qq", &want])
                .current_dir(&download),
        )
    };
    if fetch().is_err() {
        // A fresh machine may have no package lists yet.
        run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
        fetch()?;
    }
    let deb = download.join(format!(
        "{PACKAGE}_{}_amd64.deb",
        VERSION.replace(':', "%3a")
    ));
    check_sha256(&deb, SHA256)?;
    // Unpacked beside the cache folder and renamed into place once it runs, so an
    // interrupted setup never leaves a half-unpacked folder where the tests look.
    let staging = dir.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging))?;
    if !runs(&staging.join("usr/bin/prometheus")) {
        bail!("the prometheus of {want} does not run after unpacking");
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&staging, &dir)
        .with_context(|| format!("moving {} to {}", staging.display(), dir.display()))?;
    std::fs::remove_dir_all(&download)
        .with_context(|| format!("removing {}", download.display()))?;
    Ok(bin)
}

/// Whether `bin --version` succeeds.
fn runs(bin: &std::path::Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
