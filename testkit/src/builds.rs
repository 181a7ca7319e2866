//! The Redis and Valkey server builds the tests run against.
//!
//! `cargo xtask setup` installs a matrix of builds and writes their manifest
//! (`xtask/src/servers.rs` describes it); `cargo xtask test` exports its path in
//! `MEMTRACE_BUILDS`. Without it, under CI (`CI=true`) [`builds`] panics; elsewhere it
//! prints a note and falls back to Debian's `/usr/bin/redis-server` as `redis-7.0`, plus
//! the server in `MEMTRACE_REDIS62`, when set, as `redis-6.2`.
//!
//! ```ignore
//! for build in testkit::attribution_builds() {
//!     let server = testkit::Server::start(&build, &[]);
//!     assert_eq!(server.info("server")[build.version_field()], build.version);
//! }
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use serde::Deserialize;

use crate::Error;

/// The variable `cargo xtask test` sets to the manifest's path.
pub const MANIFEST_ENV: &str = "MEMTRACE_BUILDS";
/// Without a manifest: a Redis 6.2 server to test as `redis-6.2`.
pub const REDIS62_ENV: &str = "MEMTRACE_REDIS62";
/// Without a manifest: Debian's Redis 7.0, tested as `redis-7.0`.
pub const SYSTEM_REDIS: &str = "/usr/bin/redis-server";

/// A comma-separated list of labels the attribution tests are narrowed to while working
/// on one build (`MEMTRACE_ONLY_BUILDS=valkey-9.1`); CI never sets it.
pub const ONLY_ENV: &str = "MEMTRACE_ONLY_BUILDS";

/// Which server it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    Redis,
    Valkey,
}

impl Product {
    /// The name the server reports in INFO (`redis_version` / `valkey_version`).
    pub fn name(self) -> &'static str {
        match self {
            Product::Redis => "redis",
            Product::Valkey => "valkey",
        }
    }
}

/// The allocator the server was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Allocator {
    Jemalloc,
    Libc,
}

impl Allocator {
    /// From `mem_allocator` (`INFO memory`) or `malloc=` (`--version`): `jemalloc-5.3.0`,
    /// `libc`; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Allocator> {
        if name.starts_with("jemalloc") {
            Some(Allocator::Jemalloc)
        } else {
            (name == "libc").then_some(Allocator::Libc)
        }
    }

    /// The manifest's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Allocator::Jemalloc => "jemalloc",
            Allocator::Libc => "libc",
        }
    }
}

/// One server build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Build {
    /// `redis-7.0`, `valkey-8.1` ...
    pub label: String,
    pub product: Product,
    /// Exactly what `--version` and `INFO server` report, e.g. `7.0.15`.
    pub version: String,
    /// The server binary. Start it by this very path: Debian's `redis-server` and
    /// `valkey-server` are links to `*-check-rdb`, which picks its mode from its name.
    pub server: PathBuf,
    /// Variables the server needs in its environment (`LD_LIBRARY_PATH`).
    pub env: Vec<(String, String)>,
    pub allocator: Allocator,
}

impl Build {
    /// The major version number (`7` for `7.0.15`); 0 if the version does not start with
    /// one (every build read by this module does).
    pub fn major(&self) -> u32 {
        major(&self.version).unwrap_or(0)
    }

    /// The `INFO server` field that holds [`Build::version`]: Valkey reports a Redis
    /// compatibility version in `redis_version` and its own in `valkey_version`.
    pub fn version_field(&self) -> &'static str {
        match self.product {
            Product::Redis => "redis_version",
            Product::Valkey => "valkey_version",
        }
    }

    /// `Command` for the server, with the build's environment applied.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.server);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Describes the binary at `server`, run with `env`, from its `--version` line
    /// (`Redis server v=7.0.15 sha=... malloc=jemalloc-5.3.0 ...`).
    pub fn from_binary(
        label: &str,
        server: &Path,
        env: &[(String, String)],
    ) -> Result<Build, Error> {
        let bad = |reason: String| Error::Binary {
            server: server.to_path_buf(),
            reason,
        };
        let out = Command::new(server)
            .arg("--version")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| bad(format!("cannot run --version: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (product, version, allocator) =
            parse_version_line(&text).ok_or_else(|| bad(format!("--version printed {text:?}")))?;
        Ok(Build {
            label: label.to_string(),
            product,
            version,
            server: server.to_path_buf(),
            env: env.to_vec(),
            allocator,
        })
    }
}

/// Product, version and allocator from a `--version` line.
fn parse_version_line(line: &str) -> Option<(Product, String, Allocator)> {
    let mut words = line.split_whitespace();
    let product = match words.next()? {
        "Redis" => Product::Redis,
        "Valkey" => Product::Valkey,
        _ => return None,
    };
    let field = |name: &str| line.split_whitespace().find_map(|w| w.strip_prefix(name));
    let version = field("v=").filter(|v| major(v).is_some())?.to_string();
    let allocator = Allocator::from_name(field("malloc=")?)?;
    Some((product, version, allocator))
}

fn major(version: &str) -> Option<u32> {
    version.split('.').next()?.parse().ok()
}

/// One entry of `manifest.json`, as xtask writes it.
#[derive(Deserialize)]
struct Entry {
    label: String,
    product: Product,
    version: String,
    server: PathBuf,
    env: BTreeMap<String, String>,
    allocator: Allocator,
}

#[derive(Deserialize)]
struct Manifest {
    builds: Vec<Entry>,
}

/// Parses a manifest's text; `path` names it in errors.
pub fn parse_manifest(path: &Path, text: &str) -> Result<Vec<Build>, Error> {
    let bad = |reason: String| Error::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    let manifest: Manifest = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    if manifest.builds.is_empty() {
        return Err(bad("no builds".into()));
    }
    manifest
        .builds
        .into_iter()
        .map(|e| {
            if major(&e.version).is_none() {
                return Err(bad(format!("{}: bad version {:?}", e.label, e.version)));
            }
            Ok(Build {
                label: e.label,
                product: e.product,
                version: e.version,
                server: e.server,
                env: e.env.into_iter().collect(),
                allocator: e.allocator,
            })
        })
        .collect()
}

/// Reads the manifest at `path` and checks that every server it names exists.
pub fn read_manifest(path: &Path) -> Result<Vec<Build>, Error> {
    let bad = |reason: String| Error::Manifest {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let builds = parse_manifest(path, &text)?;
    if let Some(b) = builds.iter().find(|b| !b.server.exists()) {
        let reason = format!(
            "{} names {}, which does not exist",
            b.label,
            b.server.display()
        );
        return Err(bad(reason + ": run `cargo xtask setup`"));
    }
    Ok(builds)
}

/// Every build of the manifest (or the fallback), in the manifest's order. Read once per
/// test process. Panics with the reason when the builds cannot be found.
pub fn builds() -> Vec<Build> {
    static BUILDS: OnceLock<Vec<Build>> = OnceLock::new();
    BUILDS.get_or_init(load).clone()
}

/// The build labelled `label` (`"redis-7.0"`); panics naming the labels there are.
pub fn by_label(label: &str) -> Build {
    let all = builds();
    let labels: Vec<&str> = all.iter().map(|b| b.label.as_str()).collect();
    let found = all.iter().find(|b| b.label == label);
    found
        .cloned()
        .unwrap_or_else(|| panic!("no build {label:?} (there are {labels:?})"))
}

/// The builds the attribution tests run on: every build of the matrix (narrowed by
/// [`ONLY_ENV`] when set).
pub fn attribution_builds() -> Vec<Build> {
    let only = std::env::var(ONLY_ENV).unwrap_or_default();
    let wanted: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    let chosen: Vec<Build> = builds()
        .into_iter()
        .filter(|b| wanted.is_empty() || wanted.contains(&b.label.as_str()))
        .collect();
    assert!(!chosen.is_empty(), "no build among {wanted:?}");
    chosen
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn load() -> Vec<Build> {
    match std::env::var_os(MANIFEST_ENV) {
        Some(p) if !p.is_empty() => read_manifest(Path::new(&p)).unwrap_or_else(|e| panic!("{e}")),
        _ => {
            assert!(
                !under_ci(),
                "{MANIFEST_ENV} is not set: run the tests via `cargo xtask test`, which \
                 installs the Redis/Valkey builds and exports their manifest"
            );
            fallback()
        }
    }
}

/// Debian's Redis 7.0, and the 6.2 of `MEMTRACE_REDIS62` when set.
fn fallback() -> Vec<Build> {
    let describe = |label: &str, server: &Path| {
        Build::from_binary(label, server, &[])
            .unwrap_or_else(|e| panic!("{e}: run `cargo xtask setup` (it installs {label})"))
    };
    let mut out = vec![describe("redis-7.0", Path::new(SYSTEM_REDIS))];
    if let Some(p) = std::env::var_os(REDIS62_ENV).filter(|p| !p.is_empty()) {
        out.push(describe("redis-6.2", Path::new(&p)));
    }
    let labels: Vec<&str> = out.iter().map(|b| b.label.as_str()).collect();
    eprintln!(
        "note: {MANIFEST_ENV} is not set: testing {labels:?} only ({SYSTEM_REDIS}, and \
         {REDIS62_ENV} when set); `cargo xtask test` tests every build"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"{"builds": [
        {"label": "redis-7.4", "product": "redis", "version": "7.4.1",
         "server": "/x/redis-server", "env": {"LD_LIBRARY_PATH": "/x/lib"},
         "allocator": "jemalloc", "source": "PyPI"},
        {"label": "valkey-8.1", "product": "valkey", "version": "8.1.8",
         "server": "/y/valkey-server", "env": {}, "allocator": "libc", "source": "PyPI"}
    ]}"#;

    #[test]
    fn manifest_entries_become_builds() {
        let builds = parse_manifest(Path::new("m.json"), MANIFEST).unwrap();
        assert_eq!(builds.len(), 2);
        assert_eq!(builds[0].label, "redis-7.4");
        assert_eq!(builds[0].major(), 7);
        assert_eq!(builds[0].env, [("LD_LIBRARY_PATH".into(), "/x/lib".into())]);
        assert_eq!(builds[0].version_field(), "redis_version");
        assert_eq!(builds[1].product, Product::Valkey);
        assert_eq!(builds[1].allocator, Allocator::Libc);
        assert_eq!(builds[1].version_field(), "valkey_version");
    }

    #[test]
    fn bad_manifests_are_errors_naming_the_file() {
        for text in [
            "",
            "{}",
            r#"{"builds": []}"#,
            &MANIFEST.replace("7.4.1", "x"),
        ] {
            let e = parse_manifest(Path::new("m.json"), text).unwrap_err();
            assert!(e.to_string().starts_with("build manifest m.json: "), "{e}");
        }
    }

    #[test]
    fn version_lines() {
        let line = "Valkey server v=8.0.1 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=39f";
        assert_eq!(
            parse_version_line(line),
            Some((Product::Valkey, "8.0.1".into(), Allocator::Jemalloc))
        );
        let line = "Redis server v=6.2.14 sha=40305114:0 malloc=libc bits=64 build=dff";
        assert_eq!(
            parse_version_line(line),
            Some((Product::Redis, "6.2.14".into(), Allocator::Libc))
        );
        assert_eq!(parse_version_line("KeyDB server v=6.3.4 malloc=libc"), None);
        assert_eq!(
            parse_version_line("Redis server v=7.0.15 malloc=tcmalloc"),
            None
        );
    }
}
