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
    program_names_by_id()
        .into_values()
        .filter(|n| PROGRAM_NAMES.contains(&n.as_str()))
        .collect()
}

/// One BPF link the kernel lists (`bpftool link show`): a program tied to a hook.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// The kernel's link type: `raw_tracepoint`, `perf_event` (tracepoints, uprobes and
    /// software events), ...
    pub kind: String,
    /// The linked program's name.
    pub program: String,
    /// The program's id.
    pub prog_id: u64,
    /// A raw tracepoint link's tracepoint.
    pub tp_name: Option<String>,
}

/// Every BPF link of the host.
pub fn links() -> Vec<Link> {
    let names = program_names_by_id();
    bpftool_json(&["link", "show"])
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|l| {
            let prog_id = l["prog_id"].as_u64().unwrap_or_default();
            Link {
                kind: l["type"].as_str().unwrap_or_default().to_string(),
                program: names.get(&prog_id).cloned().unwrap_or_default(),
                prog_id,
                tp_name: l["tp_name"].as_str().map(str::to_string),
            }
        })
        .collect()
}

/// The kernel's type of each loaded program of ours (`tracepoint`, `raw_tracepoint`,
/// `kprobe` for uprobes, `perf_event`), by name.
pub fn our_program_types() -> std::collections::BTreeMap<String, String> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["type"].as_str()?.to_string(),
            ))
        })
        .filter(|(n, _)| PROGRAM_NAMES.contains(&n.as_str()))
        .collect()
}

/// One BPF map a process holds, from its descriptors' `/proc/PID/fdinfo`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldMap {
    pub map_id: u64,
    /// The kernel's map type number (`enum bpf_map_type`).
    pub map_type: u64,
    pub max_entries: u64,
    /// The memory the kernel charges for it, bytes.
    pub memlock: u64,
}

/// The BPF maps `pid` holds, sorted by id.
pub fn maps_held_by(pid: u32) -> Vec<HeldMap> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the process's fds");
    let mut maps: Vec<HeldMap> = fds
        .filter_map(|fd| {
            let fd = fd.ok()?;
            let target = std::fs::read_link(fd.path()).ok()?;
            if !target.to_string_lossy().contains("bpf-map") {
                return None;
            }
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_str()?))
                    .ok()?;
            let field = |k: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            Some(HeldMap {
                map_id: field("map_id")?,
                map_type: field("map_type")?,
                max_entries: field("max_entries")?,
                memlock: field("memlock")?,
            })
        })
        .collect();
    maps.sort();
    maps.dedup();
    maps
}

fn program_names_by_id() -> std::collections::BTreeMap<u64, String> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()?, p["name"].as_str()?.to_string())))
        .collect()
}

/// `bpftool -j ARGS`, parsed.
fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool (cargo xtask setup installs it)");
    assert!(out.status.success(), "bpftool {args:?} failed");
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON")
}
