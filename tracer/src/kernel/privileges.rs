//! What `record` needs from the kernel's permission model, checked before anything else
//! so a missing capability is one line naming it.
//!
//! Used for: CAP_BPF (load programs, create maps), CAP_PERFMON (tracepoint and perf-event
//! programs, uprobes, reading kernel memory from BPF), CAP_SYS_ADMIN (mount tracefs when it
//! is not mounted), CAP_DAC_OVERRIDE (tracefs format files are root-only), CAP_SYS_PTRACE
//! (read Redis's memory through /proc/PID/mem and its /proc/PID/exe). Root has them all.

/// Capability numbers (`linux/capability.h`).
pub mod cap {
    /// CAP_SYS_ADMIN (mounting tracefs; BPF on kernels before 5.8).
    pub const SYS_ADMIN: u32 = 21;
    /// CAP_SYS_PTRACE (reading Redis's memory through /proc/PID/mem).
    pub const SYS_PTRACE: u32 = 19;
    /// CAP_DAC_OVERRIDE (reading root-only tracefs files).
    pub const DAC_OVERRIDE: u32 = 1;
    /// CAP_PERFMON (perf events, tracepoint programs).
    pub const PERFMON: u32 = 38;
    /// CAP_BPF (loading programs, creating maps).
    pub const BPF: u32 = 39;
}

/// The capabilities `record` uses, with their names.
pub const NEEDED: [(u32, &str); 5] = [
    (cap::BPF, "CAP_BPF"),
    (cap::PERFMON, "CAP_PERFMON"),
    (cap::SYS_ADMIN, "CAP_SYS_ADMIN"),
    (cap::DAC_OVERRIDE, "CAP_DAC_OVERRIDE"),
    (cap::SYS_PTRACE, "CAP_SYS_PTRACE"),
];

/// `CapEff` of this process (0 if unreadable).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The names of the needed capabilities missing from `cap_eff`.
pub fn missing(cap_eff: u64) -> Vec<&'static str> {
    NEEDED
        .iter()
        .filter(|&&(c, _)| cap_eff & (1u64 << c) == 0)
        .map(|&(_, n)| n)
        .collect()
}

/// `Err` with one line naming what is missing.
pub fn require() -> Result<(), String> {
    let missing = missing(effective());
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "redis-memtrace record needs {} (it loads eBPF programs and reads Redis's memory): run it as root, e.g. with sudo",
        missing.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_exactly_the_missing_ones() {
        assert!(missing(u64::MAX).is_empty());
        assert_eq!(missing(0).len(), 5);
        let only_bpf_missing = !(1u64 << cap::BPF);
        assert_eq!(missing(only_bpf_missing), vec!["CAP_BPF"]);
    }
}
