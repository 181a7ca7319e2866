//! Where the analysis tools `cargo xtask setup` installs for the tests are found.
//!
//! Setup (`xtask/src/tools.rs`) unpacks DuckDB's pinned Python wheel into
//! [`duckdb_dir`]'s default folder, and `cargo xtask test` exports that folder in
//! [`DUCKDB_ENV`], as it exports the server manifest in `MEMTRACE_BUILDS`. Both sides
//! name the folder through this module, so the test and the installer cannot disagree.

use std::path::PathBuf;

/// The DuckDB release the tests query timelines with; `xtask/src/tools.rs` pins its
/// wheel (a unit test there checks that the two agree).
pub const DUCKDB_VERSION: &str = "2.0.1";

/// The variable `cargo xtask test` sets to the DuckDB folder (for `PYTHONPATH`).
pub const DUCKDB_ENV: &str = "MEMTRACE_DUCKDB";

/// Debian's interpreter, which the DuckDB wheel is built for (cp311): another python3
/// earlier on PATH (pyenv) could be another version.
pub const PYTHON: &str = "/usr/bin/python3";

/// `$XDG_CACHE_HOME/redis-memtrace`, else `$HOME/.cache/redis-memtrace`: where setup
/// keeps what it downloads, outside the checkout, so a fresh clone reuses it. `None`
/// when neither variable is usable.
pub fn cache_root() -> Option<PathBuf> {
    // The XDG spec says to ignore a relative XDG_CACHE_HOME.
    let base = match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".cache"),
    };
    Some(base.join("redis-memtrace"))
}

/// Where setup installs DuckDB's Python package: `<cache>/tools/duckdb-<version>`.
pub fn duckdb_install_dir() -> Option<PathBuf> {
    Some(cache_root()?.join(format!("tools/duckdb-{DUCKDB_VERSION}")))
}

/// The folder to put on `PYTHONPATH` so that [`PYTHON`] imports `duckdb`:
/// `$MEMTRACE_DUCKDB` when set, else [`duckdb_install_dir`].
pub fn duckdb_dir() -> Option<PathBuf> {
    match std::env::var_os(DUCKDB_ENV) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => duckdb_install_dir(),
    }
}
