//! `redis-memtrace check`: every line's verdict agrees with an independent reading of
//! the same fact, and the exit code is the worst verdict (0 pass, 1 warn, 2 fail).

use std::process::Command;

use testkit::{Server, by_label, programs::our_programs_after_exit, require_root, tracer};

/// Runs `check` with `args` (as the current user, or through setpriv as nobody).
fn check(args: &[&str], as_nobody: bool) -> (i32, Vec<String>, String) {
    let out = if as_nobody {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(tracer())
            .arg("check")
            .args(args)
            .output()
            .unwrap()
    } else {
        Command::new(tracer())
            .arg("check")
            .args(args)
            .output()
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        stdout.lines().map(str::to_string).collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The verdict of the line for `name`.
fn verdict<'a>(lines: &'a [String], name: &str) -> &'a str {
    let prefix = |tag: &str| format!("[{tag}] {name}:");
    for tag in ["pass", "warn", "FAIL"] {
        if lines.iter().any(|l| l.starts_with(&prefix(tag))) {
            return match tag {
                "FAIL" => "fail",
                t => t,
            };
        }
    }
    panic!("no line for {name} in {lines:#?}")
}

fn exit_code_matches(code: i32, lines: &[String]) {
    let worst = if lines.iter().any(|l| l.starts_with("[FAIL]")) {
        2
    } else if lines.iter().any(|l| l.starts_with("[warn]")) {
        1
    } else {
        0
    };
    assert_eq!(code, worst, "exit code vs lines {lines:#?}");
    for l in &lines[..lines.len() - 1] {
        assert!(
            l.starts_with("[pass] ") || l.starts_with("[warn] ") || l.starts_with("[FAIL] "),
            "{l}"
        );
        if !l.starts_with("[pass]") {
            assert!(l.contains(" -- fix: "), "a warn/fail line names a fix: {l}");
        }
    }
}

#[test]
fn host_checks_agree_with_proc_and_sysfs() {
    require_root();
    let (code, lines, stderr) = check(&[], false);
    assert!(stderr.is_empty(), "{stderr}");
    exit_code_matches(code, &lines);
    assert_eq!(verdict(&lines, "privileges"), "pass");
    assert_eq!(verdict(&lines, "eBPF programs"), "pass");
    assert_eq!(
        verdict(&lines, "tracepoint exceptions:page_fault_user"),
        "pass"
    );
    let overcommit = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
    assert_eq!(
        verdict(&lines, "overcommit"),
        if overcommit.trim() == "1" {
            "pass"
        } else {
            "warn"
        }
    );
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    assert_eq!(
        verdict(&lines, "THP"),
        if thp.contains("[always]") {
            "warn"
        } else {
            "pass"
        }
    );
    // Nothing of the load test stays attached.
    let left = our_programs_after_exit();
    assert!(left.is_empty(), "programs still loaded: {left:?}");
}

#[test]
fn unprivileged_fails_naming_the_capability() {
    require_root();
    let (code, lines, _) = check(&[], true);
    assert_eq!(code, 2, "{lines:#?}");
    assert_eq!(verdict(&lines, "privileges"), "fail");
    let line = lines.iter().find(|l| l.contains("privileges:")).unwrap();
    assert!(
        line.contains("CAP_BPF") && line.contains("CAP_PERFMON"),
        "{line}"
    );
    exit_code_matches(code, &lines);
}

#[test]
fn redis_server_checks() {
    require_root();
    let ram: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        * 1024;
    // maxmemory at 10% of RAM passes; 0 (no limit) warns.
    let tenth = (ram / 10).to_string();
    for (maxmemory, expected) in [(tenth.as_str(), "pass"), ("0", "warn")] {
        let server = Server::start(&by_label("redis-7.0"), &["--maxmemory", maxmemory]);
        let (code, lines, stderr) = check(&["--redis", &server.url()], false);
        assert!(stderr.is_empty(), "{stderr}");
        exit_code_matches(code, &lines);
        assert_eq!(verdict(&lines, "maxmemory"), expected, "{lines:#?}");
        assert_eq!(verdict(&lines, "attribution symbols"), "pass");
        let sym = lines
            .iter()
            .find(|l| l.contains("attribution symbols"))
            .unwrap();
        assert!(sym.contains("`server` is 4368 bytes"), "{sym}");
        // `check` discovers the layout as `record` does and names build and allocator.
        assert_eq!(verdict(&lines, "attribution layout"), "pass", "{lines:#?}");
        let layout = lines
            .iter()
            .find(|l| l.contains("attribution layout"))
            .unwrap();
        assert!(
            layout.contains(
                "redis 7.0.15 (jemalloc-5.3.0 allocator): layout discovered and verified"
            ),
            "{layout}"
        );
        assert_eq!(verdict(&lines, "Redis in swap"), "pass");
    }
}

/// The two `check` rows of docs/robustness.md, as printed there, each in an empty working
/// folder: exit 1, exactly that line on stderr, nothing on stdout, the folder still empty.
/// PID 4194305 is above PID_MAX_LIMIT (4194304 on 64-bit kernels, the highest value
/// pid_max can take), so no process has it; nothing listens on port 1 (tcpmux).
#[test]
fn bad_targets_are_one_line_errors() {
    require_root();
    for (args, line) in [
        (
            ["--pid", "4194305"],
            "redis-memtrace: error: no process with PID 4194305 (check the PID with `pgrep \
             redis-server`)",
        ),
        (
            ["--redis", "127.0.0.1:1"],
            "redis-memtrace: error: Redis at 127.0.0.1:1 is unreachable: Connection refused \
             (os error 111)",
        ),
    ] {
        let cwd = tempfile::tempdir().unwrap();
        let out = Command::new(tracer())
            .arg("check")
            .args(args)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("check {args:?}: exit {:?}: {stderr}", out.status.code());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr, format!("{line}\n"), "{args:?}");
        assert!(
            out.stdout.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            std::fs::read_dir(cwd.path()).unwrap().count(),
            0,
            "{args:?}: files left in the working folder"
        );
    }
}
