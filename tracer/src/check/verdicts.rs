//! Pure verdicts: facts in, [`Check`] out. Unit-tested without a kernel or a Redis.

use crate::kernel::privileges::cap;

/// How a check came out. Ordered: the worst decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Pass,
    /// Tracing works, but something is degraded or risky for Redis.
    Warn,
    /// Tracing cannot work.
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name (`privileges`, `THP`, ...).
    pub name: String,
    /// Verdict.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// One line telling what to do, for warn and fail.
    pub fix: Option<String>,
}

impl Check {
    /// A check with no fix.
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with its fix.
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            level: Level::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// `[pass] name: detail` (and `  fix: ...` for warn/fail), coloured on a terminal.
    pub fn render(&self, color: bool) -> String {
        let (tag, code) = match self.level {
            Level::Pass => ("pass", "32"),
            Level::Warn => ("warn", "33"),
            Level::Fail => ("FAIL", "31"),
        };
        let tag = if color {
            format!("\x1b[{code}m[{tag}]\x1b[0m")
        } else {
            format!("[{tag}]")
        };
        let mut line = format!("{tag} {}: {}", self.name, self.detail);
        if let Some(fix) = &self.fix {
            line.push_str(" -- fix: ");
            line.push_str(fix);
        }
        line
    }
}

/// Privileges from the effective uid and the `CapEff` mask of `/proc/self/status`.
pub fn privileges(euid: u32, cap_eff: u64) -> Check {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    if euid == 0 && has(cap::BPF) && has(cap::PERFMON) && has(cap::SYS_ADMIN) {
        return Check::pass(
            "privileges",
            "root with CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN",
        );
    }
    let missing: Vec<&str> = [
        (cap::BPF, "CAP_BPF"),
        (cap::PERFMON, "CAP_PERFMON"),
        (cap::SYS_PTRACE, "CAP_SYS_PTRACE"),
    ]
    .into_iter()
    .filter(|&(c, _)| !has(c))
    .map(|(_, n)| n)
    .collect();
    if missing
        .iter()
        .any(|m| *m == "CAP_BPF" || *m == "CAP_PERFMON")
    {
        Check::fail(
            "privileges",
            format!("missing {}", missing.join(", ")),
            "run as root (sudo redis-memtrace ...)",
        )
    } else if !missing.is_empty() || euid != 0 {
        Check::warn(
            "privileges",
            format!(
                "not root{}",
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(", missing {}", missing.join(", "))
                }
            ),
            "record needs root today; run it with sudo",
        )
    } else {
        Check::pass("privileges", "root")
    }
}

/// Kernel release: BPF ring buffers need 5.8, `bpf_task_pt_regs` 5.15.
pub fn kernel(release: &str) -> Check {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (5, 15) {
        Check::pass("kernel", format!("Linux {release}"))
    } else if (major, minor) >= (5, 8) {
        Check::warn(
            "kernel",
            format!("Linux {release}: attribution of faults taken in kernel mode needs 5.15"),
            "use a 5.15+ kernel for full attribution",
        )
    } else {
        Check::fail(
            "kernel",
            format!("Linux {release}: BPF ring buffers need 5.8"),
            "use a 5.8+ kernel (5.15+ recommended)",
        )
    }
}

/// Transparent huge pages: `always` makes every CoW fault copy 2 MiB.
pub fn thp(enabled: Option<&str>) -> Check {
    match enabled {
        Some("always") => Check::warn(
            "THP",
            "transparent_hugepage=always: a write after fork copies 2 MiB, not 4 KiB, and latency spikes",
            "echo never > /sys/kernel/mm/transparent_hugepage/enabled (Redis's own advice)",
        ),
        Some(v) => Check::pass("THP", format!("transparent_hugepage={v}")),
        None => Check::pass("THP", "transparent huge pages not available"),
    }
}

/// `vm.overcommit_memory`: Redis asks for 1 so a fork of a large dataset is not refused.
pub fn overcommit(v: Option<u32>) -> Check {
    match v {
        Some(1) => Check::pass("overcommit", "vm.overcommit_memory=1"),
        Some(v) => Check::warn(
            "overcommit",
            format!(
                "vm.overcommit_memory={v}: BGSAVE/BGREWRITEAOF can fail to fork under memory pressure"
            ),
            "sysctl vm.overcommit_memory=1",
        ),
        None => Check::warn(
            "overcommit",
            "vm.overcommit_memory unreadable",
            "check /proc/sys/vm/overcommit_memory",
        ),
    }
}

/// Swap devices, use, and swappiness.
pub fn swap(devices: usize, total: u64, free: u64, swappiness: Option<u32>) -> Check {
    let used = total.saturating_sub(free);
    let sw = swappiness.map_or("?".to_string(), |s| s.to_string());
    if devices == 0 {
        Check::pass(
            "swap",
            format!(
                "no swap devices (swap-ins cannot happen; vm.swappiness={sw}); add one to study swap"
            ),
        )
    } else if used > 0 {
        Check::warn(
            "swap",
            format!(
                "{devices} device(s), {} of {} used, vm.swappiness={sw}",
                mib(used),
                mib(total)
            ),
            "pages in swap make Redis read from disk: find whose with `record`, then add RAM or lower maxmemory",
        )
    } else {
        Check::pass(
            "swap",
            format!(
                "{devices} device(s), {} free, vm.swappiness={sw}",
                mib(total)
            ),
        )
    }
}

/// Redis `maxmemory` against physical RAM: a fork can need up to twice the dataset.
pub fn maxmemory(maxmemory: u64, used: u64, ram: u64) -> Check {
    if ram == 0 {
        return Check::warn("maxmemory", "physical RAM unknown", "check /proc/meminfo");
    }
    if maxmemory == 0 {
        let pct = used * 100 / ram;
        return Check::warn(
            "maxmemory",
            format!(
                "no maxmemory; used_memory {} = {pct}% of RAM {}",
                mib(used),
                mib(ram)
            ),
            "set maxmemory to at most ~50-60% of RAM so a fork's copy-on-write fits",
        );
    }
    let pct = maxmemory * 100 / ram;
    if pct > 60 {
        Check::warn(
            "maxmemory",
            format!("maxmemory {} = {pct}% of RAM {}", mib(maxmemory), mib(ram)),
            "lower maxmemory to ~50-60% of RAM: copy-on-write during BGSAVE can double RSS",
        )
    } else {
        Check::pass(
            "maxmemory",
            format!("maxmemory {} = {pct}% of RAM {}", mib(maxmemory), mib(ram)),
        )
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: u64 = u64::MAX;

    #[test]
    fn privileges_cases() {
        assert_eq!(privileges(0, ALL).level, Level::Pass);
        let no_bpf = ALL & !(1 << cap::BPF);
        let c = privileges(1000, no_bpf);
        assert_eq!(c.level, Level::Fail);
        assert!(c.detail.contains("CAP_BPF"), "{}", c.detail);
        assert!(!c.detail.contains("CAP_PERFMON"));
        let c = privileges(1000, 0);
        assert!(c.detail.contains("CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE"));
        assert_eq!(privileges(1000, ALL).level, Level::Warn);
    }

    #[test]
    fn kernel_cases() {
        assert_eq!(kernel("6.18.44-fc").level, Level::Pass);
        assert_eq!(kernel("5.15.0-91-generic").level, Level::Pass);
        assert_eq!(kernel("5.10.0").level, Level::Warn);
        assert_eq!(kernel("4.19.0").level, Level::Fail);
        assert_eq!(kernel("garbage").level, Level::Fail);
    }

    #[test]
    fn settings() {
        assert_eq!(thp(Some("always")).level, Level::Warn);
        assert_eq!(thp(Some("madvise")).level, Level::Pass);
        assert_eq!(thp(None).level, Level::Pass);
        assert_eq!(overcommit(Some(1)).level, Level::Pass);
        assert_eq!(overcommit(Some(0)).level, Level::Warn);
        assert_eq!(overcommit(None).level, Level::Warn);
        assert_eq!(swap(0, 0, 0, Some(60)).level, Level::Pass);
        assert_eq!(swap(1, 1 << 30, 1 << 30, Some(60)).level, Level::Pass);
        let c = swap(1, 1 << 30, 1 << 29, Some(60));
        assert_eq!(c.level, Level::Warn);
        assert!(
            c.detail.contains("512.0 MiB of 1024.0 MiB used"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn maxmemory_cases() {
        let gib = 1u64 << 30;
        assert_eq!(maxmemory(0, gib, 8 * gib).level, Level::Warn);
        assert_eq!(maxmemory(4 * gib, gib, 8 * gib).level, Level::Pass);
        let c = maxmemory(6 * gib, gib, 8 * gib);
        assert_eq!(c.level, Level::Warn);
        assert!(c.detail.contains("75% of RAM"), "{}", c.detail);
        assert_eq!(maxmemory(1, 1, 0).level, Level::Warn);
    }

    #[test]
    fn render_plain_and_colored() {
        let c = Check::warn("THP", "always", "echo never");
        assert_eq!(c.render(false), "[warn] THP: always -- fix: echo never");
        assert!(c.render(true).starts_with("\x1b[33m[warn]\x1b[0m THP"));
    }
}
