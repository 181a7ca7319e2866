//! Machine setup. Idempotent: each step checks first and does nothing when done.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{root, run};

/// Debian packages the tests, benchmark and demo use.
const PACKAGES: &[&str] = &[
    "redis-server",
    "redis-tools",
    "bpftool",
    "util-linux",
    "python3-jsonschema",
    "chromium",
    // Points trixie's Redis 8.0 at its own loader and libraries (see servers.rs).
    "patchelf",
];

/// Runs every setup step.
pub fn setup() -> Result<()> {
    if !is_root() {
        bail!("setup needs root (it installs packages and mounts tracefs): run as root");
    }
    tracefs()?;
    rust_src()?;
    bpf_linker()?;
    packages()?;
    crate::servers::ensure()?;
    crate::prometheus::ensure()?;
    crate::tools::ensure()?;
    Ok(())
}

/// Makes `/dev/null` the null device again when it is not. Some container runtimes
/// leave a regular file there, which keeps whatever is written to it; every cargo
/// below us opens `/dev/null` as the stdin of its `rustc - --print ...` target probe,
/// and rustc then parses that text and fails ("couldn't read from stdin"). Runs before
/// anything else in xtask; `.ci/run` does the same before cargo starts.
pub fn repair_dev_null() -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    const NULL: &str = "/dev/null";
    let null_dev = libc::makedev(1, 3);
    let is_null = |m: &std::fs::Metadata| m.file_type().is_char_device() && m.rdev() == null_dev;
    if std::fs::metadata(NULL).is_ok_and(|m| is_null(&m)) {
        return Ok(());
    }
    if !is_root() {
        bail!("{NULL} is not the null device; as root: rm -f {NULL} && mknod -m 666 {NULL} c 1 3");
    }
    eprintln!("setup: {NULL} is not the null device (a regular file?); recreating it (c 1 3)");
    let tmp = "/dev/.null.redis-memtrace";
    let _ = std::fs::remove_file(tmp);
    // SAFETY: a NUL-terminated path literal and plain mode/device numbers.
    if unsafe {
        libc::mknod(
            c"/dev/.null.redis-memtrace".as_ptr(),
            libc::S_IFCHR | 0o666,
            null_dev,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("mknod /dev/null (c 1 3)");
    }
    // mknod applies the umask; the null device must be writable by everyone.
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("chmod 666 {tmp}"))?;
    // rename(2) replaces the broken file atomically: no moment without a /dev/null.
    std::fs::rename(tmp, NULL).with_context(|| format!("renaming {tmp} to {NULL}"))?;
    Ok(())
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(());
    }
    eprintln!("setup: mounting tracefs at /sys/kernel/tracing");
    run(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]))
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("rustup has no nightly toolchain; the eBPF build needs one (rustup toolchain install nightly)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must link with the same LLVM as the nightly rustc. It is built against the
/// toolchain's own libLLVM through a prefix folder of symlinks, named from the toolchain
/// so a toolchain update is picked up.
fn bpf_linker() -> Result<()> {
    if output(Command::new("bpf-linker").arg("--version")).is_some() {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("cannot ask the nightly rustc for its sysroot")?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    // The versioned soname ("libLLVM.so.22.1-rust-1.97.0-nightly") is the one to link.
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major: String = llvm
        .trim_start_matches("libLLVM.so.")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    if major.is_empty() {
        bail!("cannot tell the LLVM version of {llvm}");
    }
    let prefix = root().join("target/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so".to_string(), llvm.clone()] {
        let link = prefix_lib.join(&name);
        let _ = std::fs::remove_file(&link);
        symlink(lib.join(&llvm), &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!("setup: building bpf-linker against rustc's LLVM {major} ({llvm})");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
