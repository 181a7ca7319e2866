//! Bad input: every case exits non-zero with one line naming the problem and the fix,
//! never panics, and leaves no timeline or temporary file behind.

use std::process::Command;

use testkit::{require_root, tracer, tracer_fails};

fn one_line_error(args: &[&str], env: &[(&str, &str)], needle: &str) {
    let (code, stderr) = tracer_fails(args, env);
    assert_ne!(code, 0, "expected failure for {args:?}");
    assert!(!stderr.contains("panicked"), "panic for {args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected for {args:?}: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: expected {needle:?} in {stderr:?}"
    );
}

#[test]
fn unknown_pid() {
    require_root();
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let pid = (pid_max + 1).to_string();
    one_line_error(
        &["record", "--pid", &pid, "-o", out.to_str().unwrap()],
        &[],
        "no process with PID",
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files left behind"
    );
}

#[test]
fn pid_that_exited_before_attach() {
    require_root();
    // A zombie: exited, not yet reaped, so its /proc entry still exists.
    let mut child = Command::new("true").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let pid = child.id().to_string();
    one_line_error(
        &["record", "--pid", &pid, "-o", out.to_str().unwrap()],
        &[],
        "exited before tracing started",
    );
    child.wait().unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files left behind"
    );
}

#[test]
fn unwritable_output_is_checked_before_attaching() {
    require_root();
    let me = std::process::id().to_string();
    one_line_error(
        &[
            "record",
            "--pid",
            &me,
            "-o",
            "/proc/no-such-dir/timeline.json",
        ],
        &[],
        "cannot write the timeline to /proc/no-such-dir/timeline.json",
    );
}

#[test]
fn not_root() {
    require_root();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(tracer())
        .args(["record", "--pid", "1", "-o", "/tmp/never-written.json"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "needs CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, CAP_SYS_PTRACE"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!std::path::Path::new("/tmp/never-written.json").exists());

    // Root without one capability: exactly that one is named.
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-bpf", "--"])
        .arg(tracer())
        .args(["record", "--pid", "1", "-o", "/tmp/never-written.json"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs CAP_BPF ("), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!std::path::Path::new("/tmp/never-written.json").exists());
}

#[test]
fn tracepoint_missing_on_this_kernel() {
    require_root();
    // A tracefs with no exceptions/ category stands in for a kernel without it.
    let fake = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fake.path().join("events/sched")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let me = std::process::id().to_string();
    one_line_error(
        &["record", "--pid", &me, "-o", out.to_str().unwrap()],
        &[("MEMTRACE_TRACEFS", fake.path().to_str().unwrap())],
        "tracepoint exceptions:page_fault_user is not available on this kernel",
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "files left behind"
    );
}

#[test]
fn nothing_to_trace_and_missing_command() {
    require_root();
    one_line_error(
        &["record", "-o", "/tmp/x.json"],
        &[],
        "no redis-server process found",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    one_line_error(
        &[
            "record",
            "-o",
            out.to_str().unwrap(),
            "--",
            "no-such-command-xyz",
        ],
        &[],
        "cannot start no-such-command-xyz: not found in PATH",
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// The command-line rows of docs/robustness.md, as printed there: refused before anything
/// is attached or written (run in an empty folder, which stays empty). Our own checks are
/// one line and exit 1; clap's usage errors exit 2.
#[test]
fn malformed_options_are_refused_before_anything_happens() {
    require_root();
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["record", "--format", "jsn", "--", "true"],
            2,
            "error: invalid value 'jsn' for '--format <FORMAT>'",
        ),
        (
            &["record", "-o", "-", "--", "true"],
            1,
            "redis-memtrace: error: -o - (stdout) needs --format ndjson: a JSON document is only complete at the end",
        ),
        (
            &["record", "--ring-buffer-mb", "3", "--", "true"],
            1,
            "redis-memtrace: error: --ring-buffer-mb must be a power of two between 1 and 1024, not 3",
        ),
        (
            &["record", "--key-bytes", "0", "--", "true"],
            2,
            "error: invalid value '0' for '--key-bytes <KEY_BYTES>': 0 is not in 1..=256",
        ),
        (
            &["record", "--keys", "none", "--key-salt", "x", "--", "true"],
            1,
            "redis-memtrace: error: --key-salt only applies to --keys hash",
        ),
    ];
    for (args, code, first_line) in cases {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(tracer())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().next(), Some(first_line), "{args:?}");
        if code == 1 {
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{args:?}: files left behind"
        );
    }
}
