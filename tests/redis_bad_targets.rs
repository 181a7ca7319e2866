//! Bad targets end to end, real eBPF, as root: an unreachable `--redis`, a wrong
//! password, a server without the `server` symbol, a server whose layout is unknown, a
//! process that is not Redis. Each is one error line, or a run that counts faults
//! without attribution and says why, once.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::record_pid;
use serde_json::Value;
use testkit::{
    Build, Recording, Server, by_label, commands::info_on, names_in, read_timeline,
    recording::TRACING_PID, require_root, run_in, timeline::faults, wait::wait_until,
};

/// The row of docs/robustness.md as printed there: port 1 (tcpmux), which nothing
/// listens on, refuses the connection.
#[test]
fn unreachable_redis_is_one_error_line_and_no_timeline() {
    require_root();
    let cwd = tempfile::tempdir().unwrap();
    let (code, stderr, stdout) = run_in(
        cwd.path(),
        &["record", "--redis", "127.0.0.1:1", "-o", "t.json"],
    );
    eprintln!("port 1: exit {code:?}: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "redis-memtrace: error: Redis at 127.0.0.1:1 is unreachable: Connection refused \
         (os error 111)\n"
    );
    assert_eq!(stdout, "");
    assert!(!cwd.path().join("t.json").exists(), "t.json written");
    assert_eq!(
        names_in(cwd.path()),
        Vec::<String>::new(),
        "files left in the working folder"
    );
}

#[test]
fn wrong_password_traces_the_listener_and_never_shows_the_password() {
    require_root();
    const GOOD: &str = "GoodSecret-5d1c";
    const BAD: &str = "WrongPass-93af";
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(50_000, "key", 1024);
    // Set the password on an open connection: it stays authenticated.
    let mut con = server.client();
    server.config_set("requirepass", GOOD);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let target = format!("redis://default:{BAD}@{}", server.url());
    let rec = Recording::start_with(&["--redis", &target], &out, &[], TRACING_PID);
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    let value = vec![b'w'; 1024];
    let mut pipe = redis::pipe();
    for i in 0..5000 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(&value).ignore();
    }
    pipe.query::<()>(&mut con).unwrap();
    wait_until(
        "BGSAVE",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || info_on(&mut con, "persistence")["rdb_bgsave_in_progress"] == "0",
    );
    let stderr = rec.stop();
    eprintln!("{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let t: Value = serde_json::from_str(&text).unwrap();
    for secret in [BAD, GOOD] {
        assert!(!stderr.contains(secret), "password on stderr: {stderr}");
        assert!(!text.contains(secret), "password in the timeline");
    }
    // The auth failure is named, once as the reason the listener is traced.
    let warnings: Vec<&str> = t["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("WRONGPASS") && w.contains(&format!("PID {}", server.pid))),
        "{warnings:?}"
    );
    // Attribution is off, and says why: discovering the layout needs a connection.
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Redis attribution off")
                && w.contains("calibration needs a connection")),
        "{warnings:?}"
    );
    assert!(warnings.len() <= 3, "warning spam: {warnings:?}");
    let stderr_warnings = stderr.lines().filter(|l| l.contains("warning:")).count();
    assert_eq!(stderr_warnings, warnings.len(), "{stderr}");
    // Tracing worked: the listener was traced, its copies counted.
    assert_eq!(t["target"]["pid"], server.pid);
    assert!(t["redis"].is_null(), "{}", t["redis"]);
    let cow = faults(&t)
        .iter()
        .filter(|f| f["kind"] == "cow_copy" && f["role"] == "parent")
        .count();
    assert!(cow >= 500, "only {cow} parent cow_copy faults");
    assert_eq!(t["epochs"].as_array().unwrap().len(), 1);
}

/// Rewrites the symbol table entries named `name` (`.dynsym` and `.symtab`) of an ELF64
/// little-endian file with `patch(entry)`; returns how many were patched.
fn patch_symbol(elf: &mut [u8], name: &str, patch: impl Fn(&mut [u8])) -> usize {
    assert_eq!(&elf[..5], b"\x7fELF\x02", "not ELF64");
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum) = (u64_at(elf, 0x28), u16_at(elf, 0x3a), u16_at(elf, 0x3c));
    let mut patched = 0;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let sh_type = u32_at(elf, sh + 4);
        if sh_type != 2 && sh_type != 11 {
            continue; // SHT_SYMTAB, SHT_DYNSYM
        }
        let (off, size, link, entsize) = (
            u64_at(elf, sh + 0x18),
            u64_at(elf, sh + 0x20),
            u32_at(elf, sh + 0x28),
            u64_at(elf, sh + 0x38),
        );
        let strtab = u64_at(elf, shoff + link * shentsize + 0x18);
        for s in (off..off + size).step_by(entsize) {
            let start = strtab + u32_at(elf, s);
            let end = start + elf[start..].iter().position(|&b| b == 0).unwrap();
            if &elf[start..end] == name.as_bytes() {
                patch(&mut elf[s..s + entsize]);
                patched += 1;
            }
        }
    }
    patched
}

/// A copy of Debian's redis-server, `strip --strip-all`ed, with its `server` symbol
/// patched by `patch`, in `dir` under the name `redis-server`: redis-7.0 but for that.
fn patched_redis(dir: &Path, patch: impl Fn(&mut [u8])) -> Build {
    let base = by_label("redis-7.0");
    let path = dir.join("redis-server");
    std::fs::copy(&base.server, &path).unwrap();
    let st = Command::new("strip")
        .arg("--strip-all")
        .arg(&path)
        .status()
        .expect("strip (binutils)");
    assert!(st.success());
    let mut elf = std::fs::read(&path).unwrap();
    assert!(
        patch_symbol(&mut elf, "server", patch) >= 1,
        "no `server` symbol left after strip"
    );
    std::fs::write(&path, &elf).unwrap();
    Build {
        server: path,
        ..base
    }
}

/// Traces `server` with `record --redis` while a BGSAVE copies pages; returns the
/// timeline and stderr. Attribution is expected off.
fn record_without_attribution(server: &Server, out: &Path) -> (Value, String) {
    let rec = Recording::start_with(&["--redis", &server.url()], out, &[], TRACING_PID);
    server.bgsave_and_overwrite(5000, b'n', 1024);
    std::thread::sleep(Duration::from_millis(300));
    let stderr = rec.stop();
    (read_timeline(out), stderr)
}

fn assert_counted_without_attribution(t: &Value, stderr: &str, warning: &str) {
    assert!(!stderr.contains("attribution on"), "{stderr}");
    assert!(t["redis"].is_null(), "{}", t["redis"]);
    let warnings: Vec<&str> = t["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings, [warning], "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("warning:")).count(),
        1,
        "{stderr}"
    );
    let fs = faults(t);
    let cow = fs
        .iter()
        .filter(|f| f["kind"] == "cow_copy" && f["role"] == "parent")
        .count();
    assert!(cow >= 500, "only {cow} parent cow_copy faults: {stderr}");
    for f in &fs {
        for field in ["activity", "key", "slot", "stage"] {
            assert!(f.get(field).is_none(), "{field} without attribution: {f}");
        }
    }
    let e = &t["epochs"][0];
    assert!(e["reason"].is_null(), "{e}");
    assert!(e["redis"].is_null(), "{e}");
    assert!(e["attribution"].is_null(), "{e}");
    assert!(t["summary"]["attribution"].is_null());
}

#[test]
fn redis_server_without_server_symbol_is_traced_without_attribution() {
    require_root();
    let bindir = tempfile::tempdir().unwrap();
    // strip --strip-all keeps .dynsym (the exported `server`): take its name away too.
    let build = patched_redis(bindir.path(), |sym| {
        sym[..4].copy_from_slice(&0u32.to_le_bytes())
    });
    let server = Server::start(&build, &[]);
    server.populate(50_000, "key", 1024);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let (t, stderr) = record_without_attribution(&server, &out);
    eprintln!("{stderr}");
    assert_counted_without_attribution(
        &t,
        &stderr,
        "Redis attribution off, faults are still counted (attribution `unknown`): the binary \
         exports no `server` symbol (not redis-server/valkey-server, or built without -rdynamic)",
    );
}

#[test]
fn redis_server_whose_layout_is_not_found_is_traced_without_attribution() {
    require_root();
    let bindir = tempfile::tempdir().unwrap();
    // A build whose `server` symbol claims 64 bytes: no field there behaves like the
    // command counter, so discovery finds nothing and says which field.
    let size = 64u64;
    let build = patched_redis(bindir.path(), |sym| {
        sym[16..24].copy_from_slice(&size.to_le_bytes())
    });
    let server = Server::start(&build, &[]);
    server.populate(50_000, "key", 1024);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let (t, stderr) = record_without_attribution(&server, &out);
    eprintln!("{stderr}");
    assert_counted_without_attribution(
        &t,
        &stderr,
        "Redis attribution off, faults are still counted (attribution `unknown`): the \
         layout was not discovered: server.stat_numcommands not found: no counter lay \
         between INFO's total_commands_processed readings",
    );
}

#[test]
fn a_process_that_is_not_redis_gets_no_attribution_and_no_warning() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    // Sampling every 10 ms: a sample taken after the target exited must not turn into a
    // warning either (the run ends because the target exited: nothing is wrong).
    let run = record_pid(
        &out,
        &["--pages", "800", "--cow", "300"],
        &["--interval", "10ms"],
    );
    let t = read_timeline(&out);
    assert!(
        !run.stderr.contains("warning"),
        "warnings for a non-Redis process: {}",
        run.stderr
    );
    assert_eq!(t["warnings"], serde_json::json!([]));
    assert!(t["redis"].is_null());
    assert_eq!(t["target"]["comm"], "fault-gen");
    let (lo, hi) = run.region();
    let in_region = |f: &&Value| {
        let a = f["addr"].as_u64().unwrap();
        a >= lo && a < hi
    };
    let fs = faults(&t);
    let touch = fs
        .iter()
        .filter(|f| in_region(f))
        .filter(|f| f["kind"] == "first_touch")
        .count();
    let cow = fs
        .iter()
        .filter(|f| in_region(f))
        .filter(|f| f["kind"] == "cow_copy" && f["role"] == "parent")
        .count();
    assert_eq!((touch, cow), (800, 300));
    for f in &fs {
        assert!(f.get("activity").is_none(), "{f}");
    }
    let e = &t["epochs"][0];
    assert!(e["reason"].is_null() && e["redis"].is_null(), "{e}");
}

#[test]
fn a_password_for_a_server_without_one_is_not_needed_and_never_shown() {
    require_root();
    const PASSWORD: &str = "Unneeded-7c2e";
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(10_000, "key", 256);
    let url = format!("redis://default:{PASSWORD}@127.0.0.1:{}", server.port);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    // Redis answers AUTH with "no password configured": taken as nothing to do.
    let rec = Recording::start_with(
        &["--redis", &url],
        &out,
        &["--interval", "100ms"],
        testkit::recording::ATTRIBUTION_ON,
    );
    let mut con = server.client();
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("key:{i}"))
            .arg("z".repeat(256))
            .query(&mut con)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let stderr = rec.stop();
    assert!(!stderr.contains("warning"), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!stderr.contains(PASSWORD) && !text.contains(PASSWORD));
    let t: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(t["warnings"], serde_json::json!([]));
    assert_eq!(t["redis"]["info_reachable"], true);
    let with_info = t["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["info"]["used_memory"].is_u64())
        .count();
    assert!(with_info >= 3, "{with_info} samples with INFO");
    let sets = faults(&t).iter().filter(|f| f["activity"] == "SET").count();
    assert!(sets > 0, "no fault attributed to SET");

    // The row of docs/robustness.md, on this server's port (a fixed port may be taken):
    // not an error, by design. Exit 0, the five lines of a normal run without a fork, and
    // the complete timeline as the only file in the working folder.
    let cwd = tempfile::tempdir().unwrap();
    let url = format!("redis://default:wrongpw@127.0.0.1:{}", server.port);
    let (code, stderr, _) = run_in(
        cwd.path(),
        &[
            "record",
            "--redis",
            &url,
            "--duration",
            "1s",
            "-o",
            "t.json",
        ],
    );
    eprintln!("wrongpw: exit {code:?}:\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("wrongpw"), "{stderr}");
    assert_eq!(names_in(cwd.path()), ["t.json"]);
    let text = std::fs::read_to_string(cwd.path().join("t.json")).unwrap();
    assert!(!text.contains("wrongpw"), "password in the timeline");
    let t: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(t["end"]["reason"], "duration", "{}", t["end"]);
    assert_eq!(t["target"]["pid"], server.pid);
    assert_eq!(t["warnings"], serde_json::json!([]));
    let f = &t["summary"]["faults"];
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "redis-memtrace: tracing pid {} (redis-server); attach took ",
            server.pid
        )) && lines[0].ends_with(" ms; Ctrl-C to stop"),
        "{stderr}"
    );
    assert_eq!(
        lines[1],
        format!(
            "redis-memtrace: Redis {} attribution on (layout discovered and verified; 7 phases, \
             parse-stage client search)",
            by_label("redis-7.0").version
        )
    );
    assert!(
        lines[2].starts_with("redis-memtrace: stopped (duration) after ")
            && lines[2].ends_with(&format!(" events, {} lost", t["lost_events"])),
        "{stderr}"
    );
    assert_eq!(
        lines[3],
        format!(
            "  faults: cow_copy={} wp_reuse={} swap_in={} first_touch={} other={}",
            f["cow_copy"], f["wp_reuse"], f["swap_in"], f["first_touch"], f["other"]
        )
    );
    assert_eq!(lines[4], "  timeline: t.json");
}
