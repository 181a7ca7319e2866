//! The tracer's eBPF programs as the kernel lists them (`bpftool`), to check that none is
//! left behind.

use std::process::Command;

/// Every program of the tracer's eBPF object, as `bpftool -j` names them.
pub const PROGRAM_NAMES: &[&str] = &[
    "page_fault_user",
    "page_fault_kernel",
    "fault_done_minor",
    "fault_done_major",
    "mm_page_alloc",
    "rss_stat",
    "reclaim_begin",
    "reclaim_end",
    "mm_vmscan_write_folio",
    "task_newtask",
    "sched_process_exit",
    "fork_call_enter",
    "fork_call_exit",
    "client_linked",
    "client_unlinked",
    "calibrate_call",
];

/// Our programs still loaded once the tracer has exited, waiting up to 5 s: the kernel
/// frees a program after the last fd closes, but raw tracepoint and perf-event detach
/// waits for an RCU grace period, so a listing taken the instant the process is reaped
/// can still show one.
pub fn our_programs_after_exit() -> Vec<String> {
    let mut left = our_programs_loaded();
    for _ in 0..50 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = our_programs_loaded();
    }
    left
}

/// Names of the tracer's programs the kernel still has loaded (`bpftool prog show -j`).
pub fn our_programs_loaded() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(out.status.success(), "bpftool prog show failed");
    let progs: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON");
    let loaded: Vec<String> = progs
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    loaded
        .into_iter()
        .filter(|n| PROGRAM_NAMES.contains(&n.as_str()))
        .collect()
}
