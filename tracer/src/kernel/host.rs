//! Facts about the machine that decide how a fork behaves: RAM, swap devices, THP,
//! overcommit and swappiness. Recorded in every timeline (`run.host`) and used by
//! `report` and `check`.

use serde::Serialize;
use serde_json::Value;

use crate::json_fields::{i64_at, str_at, u32_at, u64_at};

/// Memory settings of the host at the start of a run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HostInfo {
    /// `MemTotal` in bytes.
    pub mem_total_bytes: Option<u64>,
    /// `MemAvailable` in bytes.
    pub mem_available_bytes: Option<u64>,
    /// `SwapTotal` in bytes.
    pub swap_total_bytes: Option<u64>,
    /// `SwapFree` in bytes.
    pub swap_free_bytes: Option<u64>,
    /// Active swap devices from `/proc/swaps`.
    pub swap_devices: Vec<SwapDevice>,
    /// The selected value of `/sys/kernel/mm/transparent_hugepage/enabled`
    /// (`always`, `madvise` or `never`).
    pub thp_enabled: Option<String>,
    /// The selected value of `/sys/kernel/mm/transparent_hugepage/defrag`.
    pub thp_defrag: Option<String>,
    /// `vm.overcommit_memory` (0 heuristic, 1 always, 2 strict).
    pub overcommit_memory: Option<u32>,
    /// `vm.swappiness`.
    pub swappiness: Option<u32>,
    /// Online CPUs.
    pub cpus: Option<usize>,
    /// The host's name (`merge` names nodes by it).
    pub hostname: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`: runs with the same one share one
    /// CLOCK_MONOTONIC, so `merge` aligns them exactly.
    pub boot_id: Option<String>,
}

/// One line of `/proc/swaps`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SwapDevice {
    /// Device or file path (as the kernel prints it, octal escapes kept).
    pub path: String,
    /// `partition` or `file`.
    pub kind: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Used bytes.
    pub used_bytes: u64,
    /// Priority.
    pub priority: i64,
}

impl SwapDevice {
    fn from_json(d: &Value) -> SwapDevice {
        let num = |k: &str| u64_at(d, k).unwrap_or(0);
        let text = |k: &str, or: &str| str_at(d, k).unwrap_or(or).to_string();
        SwapDevice {
            path: text("path", "?"),
            kind: text("kind", "?"),
            size_bytes: num("size_bytes"),
            used_bytes: num("used_bytes"),
            priority: i64_at(d, "priority").unwrap_or(0),
        }
    }
}

impl HostInfo {
    /// Reads `run.host` of a timeline back, leniently: a missing or mistyped field is
    /// `None` (a swap device's missing numbers 0, its path `?`), never an error.
    pub fn from_json(h: &Value) -> HostInfo {
        let num = |k: &str| u64_at(h, k);
        let text = |k: &str| str_at(h, k).map(str::to_string);
        let devices = h.get("swap_devices").and_then(Value::as_array);
        HostInfo {
            mem_total_bytes: num("mem_total_bytes"),
            mem_available_bytes: num("mem_available_bytes"),
            swap_total_bytes: num("swap_total_bytes"),
            swap_free_bytes: num("swap_free_bytes"),
            swap_devices: devices
                .into_iter()
                .flatten()
                .filter(|d| d.is_object())
                .map(SwapDevice::from_json)
                .collect(),
            thp_enabled: text("thp_enabled"),
            thp_defrag: text("thp_defrag"),
            overcommit_memory: u32_at(h, "overcommit_memory"),
            swappiness: u32_at(h, "swappiness"),
            cpus: num("cpus").and_then(|n| usize::try_from(n).ok()),
            hostname: text("hostname"),
            boot_id: text("boot_id"),
        }
    }

    /// Reads the current host state; anything unreadable is left `None`/empty.
    pub fn read() -> HostInfo {
        let meminfo = procfs::Current::current().ok();
        let mi: Option<&procfs::Meminfo> = meminfo.as_ref();
        HostInfo {
            mem_total_bytes: mi.map(|m| m.mem_total),
            mem_available_bytes: mi.and_then(|m| m.mem_available),
            swap_total_bytes: mi.map(|m| m.swap_total),
            swap_free_bytes: mi.map(|m| m.swap_free),
            swap_devices: std::fs::read_to_string("/proc/swaps")
                .map(|t| parse_swaps(&t))
                .unwrap_or_default(),
            thp_enabled: read_selected("/sys/kernel/mm/transparent_hugepage/enabled"),
            thp_defrag: read_selected("/sys/kernel/mm/transparent_hugepage/defrag"),
            overcommit_memory: read_u32("/proc/sys/vm/overcommit_memory"),
            swappiness: read_u32("/proc/sys/vm/swappiness"),
            cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
            hostname: read_line("/proc/sys/kernel/hostname"),
            boot_id: read_line("/proc/sys/kernel/random/boot_id"),
        }
    }
}

fn read_line(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim().to_string()).filter(|s| !s.is_empty())
}

fn read_u32(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_selected(path: &str) -> Option<String> {
    parse_selected(&std::fs::read_to_string(path).ok()?)
}

/// The bracketed choice of a sysfs multiple-choice file: `always [madvise] never`.
pub fn parse_selected(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = start + text[start..].find(']')?;
    let v = &text[start + 1..end];
    (!v.is_empty()).then(|| v.to_string())
}

/// Parses `/proc/swaps` (a header line, then `path type size used priority` in KiB).
/// Malformed lines are skipped.
pub fn parse_swaps(text: &str) -> Vec<SwapDevice> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let path = f.next()?.to_string();
            let kind = f.next()?.to_string();
            let size: u64 = f.next()?.parse().ok()?;
            let used: u64 = f.next()?.parse().ok()?;
            let priority: i64 = f.next()?.parse().ok()?;
            Some(SwapDevice {
                path,
                kind,
                size_bytes: size.checked_mul(1024)?,
                used_bytes: used.checked_mul(1024)?,
                priority,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn swaps_table() {
        let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                 /swapfile                               file\t\t1048572\t\t0\t\t-2\n\
                 /dev/vdb                                partition\t2097148\t\t512\t\t5\n\
                 garbage line\n";
        let d = parse_swaps(t);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].path, "/swapfile");
        assert_eq!(d[0].kind, "file");
        assert_eq!(d[0].size_bytes, 1048572 * 1024);
        assert_eq!(d[0].priority, -2);
        assert_eq!(d[1].used_bytes, 512 * 1024);
        assert!(parse_swaps("").is_empty());
    }

    #[test]
    fn selected_choice() {
        assert_eq!(
            parse_selected("always [madvise] never\n").as_deref(),
            Some("madvise")
        );
        assert_eq!(parse_selected("[never]").as_deref(), Some("never"));
        assert_eq!(parse_selected("always madvise never"), None);
        assert_eq!(parse_selected("[]"), None);
        assert_eq!(parse_selected("]["), None);
    }

    #[test]
    fn reads_this_host() {
        let h = HostInfo::read();
        assert!(h.mem_total_bytes.unwrap() > 0);
        assert!(matches!(h.overcommit_memory, Some(0..=2)));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_swaps(&s);
            let _ = parse_selected(&s);
        }
    }
}
