//! Findings: problems the timeline shows, each with the evidence (real numbers from the
//! run) and the fix. A check fires only on evidence in the file; a setting the file does
//! not record (older timelines have no `run.host`) is not guessed.

use super::{
    format::{bytes, pages_mib, percent},
    model::Model,
};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Memory is at risk now (swap, a fork close to the RAM limit).
    Critical,
    /// A setting or condition known to hurt forks or latency.
    Warning,
    /// Worth knowing; may be harmless.
    Info,
}

impl Severity {
    /// Short tag printed in front of the title.
    pub fn tag(self) -> &'static str {
        match self {
            Severity::Critical => "CRITICAL",
            Severity::Warning => "WARNING",
            Severity::Info => "INFO",
        }
    }
}

/// One problem found in the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// Stable identifier (`thp`, `swap`, `fork-ram`, `overcommit`, `fragmentation`,
    /// `on-commands`, `lost-events`, `approximate`), for tests and HTML anchors.
    pub id: &'static str,
    /// One line.
    pub title: String,
    /// Why it matters, with the numbers of this run.
    pub reason: String,
    /// What to do.
    pub fix: String,
}

/// Parent+child RSS above this share of RAM during a fork is a finding (percent).
pub const FORK_RAM_PERCENT: u64 = 70;

/// `mem_fragmentation_ratio` above this is high fragmentation.
pub const FRAG_HIGH: f64 = 1.5;

/// `mem_fragmentation_ratio` below this means part of the data is not in RAM.
pub const FRAG_LOW: f64 = 1.0;

/// Fragmentation matters only when RSS and used memory differ by at least this much:
/// a small server's ratio swings wildly on a few MiB (Redis's MEMORY DOCTOR uses the
/// same 10 MiB floor).
pub const FRAG_MIN_BYTES: u64 = 10 << 20;

/// Commands whose cost grows with the size of a key or of the keyspace.
pub const ON_COMMANDS: &[&str] = &[
    "KEYS",
    "SAVE",
    "FLUSHALL",
    "FLUSHDB",
    "SMEMBERS",
    "SUNION",
    "SINTER",
    "SDIFF",
    "SUNIONSTORE",
    "SINTERSTORE",
    "SDIFFSTORE",
    "HGETALL",
    "HKEYS",
    "HVALS",
    "LRANGE",
    "SORT",
    "SORT_RO",
    "ZRANGE",
    "ZREVRANGE",
    "ZRANGEBYSCORE",
    "ZREVRANGEBYSCORE",
    "ZRANGEBYLEX",
    "ZREVRANGEBYLEX",
    "ZUNIONSTORE",
    "ZINTERSTORE",
];

/// Every finding of `m`, most severe first (ties keep the order of the checks).
pub fn findings(m: &Model) -> Vec<Finding> {
    let mut out: Vec<Finding> = [
        swap(m),
        fork_ram(m),
        thp(m),
        overcommit(m),
        fragmentation(m),
        lost_events(m),
        approximate(m),
        on_commands(m),
    ]
    .into_iter()
    .flatten()
    .collect();
    out.sort_by_key(|f| f.severity);
    out
}

fn join_and(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn thp(m: &Model) -> Option<Finding> {
    let setting = m.host.as_ref().and_then(|h| h.thp_enabled.as_deref());
    let huge_rss = m
        .samples
        .iter()
        .flat_map(|s| [s.server_huge(), s.child_huge()])
        .flatten()
        .max()
        .filter(|&b| b > 0);
    let huge_faults = m.huge_faults.filter(|&n| n > 0);
    if setting != Some("always") && huge_rss.is_none() && huge_faults.is_none() {
        return None;
    }
    let mut evidence = Vec::new();
    if setting == Some("always") {
        evidence.push(
            "/sys/kernel/mm/transparent_hugepage/enabled is `always` on this host".to_string(),
        );
    }
    if let Some(b) = huge_rss {
        evidence.push(format!(
            "Redis had up to {} in transparent huge pages (AnonHugePages)",
            bytes(b)
        ));
    }
    if let Some(n) = huge_faults {
        evidence.push(format!("{n} faults were served with a huge page"));
    }
    Some(Finding {
        severity: Severity::Warning,
        id: "thp",
        title: "Transparent huge pages are enabled for Redis".into(),
        reason: format!(
            "{}. After a fork, a write to a huge page copies 2 MiB instead of 4 KiB, so \
             copy-on-write memory and write latency during BGSAVE, AOF rewrite and \
             replication grow by up to 512 times.",
            join_and(&evidence)
        ),
        fix: "echo never > /sys/kernel/mm/transparent_hugepage/enabled (as root; add \
              transparent_hugepage=never to the kernel command line to keep it after a \
              reboot), then restart Redis."
            .into(),
    })
}

fn swap(m: &Model) -> Option<Finding> {
    let in_swap = [m.swap.server_swap_max, m.swap.swap_level_max]
        .into_iter()
        .flatten()
        .max()
        .filter(|&b| b > 0);
    let swap_ins = m.faults.swap_in.max(m.swap.pages_in.unwrap_or(0));
    if in_swap.is_none() && swap_ins == 0 {
        return None;
    }
    let mut evidence = Vec::new();
    if let Some(b) = in_swap {
        evidence.push(format!("up to {} of the server was in swap", bytes(b)));
    }
    if swap_ins > 0 {
        evidence.push(format!(
            "{swap_ins} pages ({}) were read back from swap, each a disk read that \
             stalls the event loop",
            pages_mib(swap_ins)
        ));
    }
    let maxmemory = match m.last_info().and_then(|i| i.maxmemory) {
        Some(0) => " (maxmemory is 0: no limit)".to_string(),
        Some(b) => format!(" (maxmemory is {})", bytes(b)),
        None => String::new(),
    };
    Some(Finding {
        severity: Severity::Critical,
        id: "swap",
        title: "Redis pages are in swap".into(),
        reason: format!(
            "{}. A command touching a swapped-out key waits for the disk: latency jumps \
             from microseconds to milliseconds.",
            join_and(&evidence)
        ),
        fix: format!(
            "Keep the dataset in RAM: add memory, or lower maxmemory{maxmemory} so the \
             data plus the copy-on-write of a fork fit; lower vm.swappiness \
             (sysctl vm.swappiness=1) so the kernel drops page cache before Redis memory. \
             The top swap-in keys and commands show what was read back."
        ),
    })
}

fn fork_ram(m: &Model) -> Option<Finding> {
    let ram = m.mem_total()?;
    let over: Vec<_> = m
        .epochs
        .iter()
        .filter_map(|e| Some((e, e.peak?)))
        .filter(|(_, p)| (p.total() as u128) * 100 > (ram as u128) * FORK_RAM_PERCENT as u128)
        .collect();
    let (worst, peak) = over.iter().max_by_key(|(_, p)| p.total())?;
    let ids: Vec<String> = over.iter().map(|(e, _)| format!("#{}", e.id)).collect();
    let maxmemory = match m.last_info().and_then(|i| i.maxmemory) {
        Some(0) => "maxmemory is 0 (no limit)".to_string(),
        Some(b) => format!("maxmemory is {}", bytes(b)),
        None => "maxmemory is unknown".to_string(),
    };
    Some(Finding {
        severity: Severity::Critical,
        id: "fork-ram",
        title: format!(
            "A fork brought parent+child RSS above {FORK_RAM_PERCENT}% of RAM (epoch {})",
            ids.join(", ")
        ),
        reason: format!(
            "During epoch #{} ({}) the server's RSS {} plus the child's {} reached {}, {} of \
             {} RAM; {maxmemory}. RSS counts shared pages twice, so this is the memory \
             needed if every shared page were written: the closer to RAM, the closer to \
             swapping or the OOM killer.",
            worst.id,
            worst.reason.as_deref().unwrap_or("unknown reason"),
            bytes(peak.parent_rss),
            peak.child_rss.map_or("(not sampled)".to_string(), bytes),
            bytes(peak.total()),
            percent(peak.total(), ram).unwrap_or_default(),
            bytes(ram),
        ),
        fix: "Set maxmemory to at most 50-60% of RAM on a host that forks (BGSAVE, AOF \
              rewrite, full resync); avoid bulk writes while a BGSAVE runs (the top keys \
              show which writes copied pages), or persist from a replica instead of the \
              primary; disable transparent huge pages."
            .into(),
    })
}

fn overcommit(m: &Model) -> Option<Finding> {
    let v = m.host.as_ref()?.overcommit_memory?;
    if v == 1 {
        return None;
    }
    let why = match v {
        0 => "heuristic overcommit (0): the kernel refuses a fork that looks like it \
              cannot be backed by free memory, so a large Redis fails BGSAVE with \
              \"Can't save in background: fork: Cannot allocate memory\""
            .to_string(),
        2 => "strict accounting (2): a fork must reserve commit room for a full copy of \
              Redis's memory, and fails otherwise, even though copy-on-write rarely needs it"
            .to_string(),
        other => format!("the unknown mode {other}"),
    };
    Some(Finding {
        severity: Severity::Warning,
        id: "overcommit",
        title: format!("vm.overcommit_memory is {v}, not 1"),
        reason: format!("This host uses {why}."),
        fix: "sysctl vm.overcommit_memory=1 (and add vm.overcommit_memory = 1 to \
              /etc/sysctl.conf), as Redis's own startup warning advises."
            .into(),
    })
}

fn fragmentation(m: &Model) -> Option<Finding> {
    let info = m.last_info()?;
    let (ratio, used, rss) = (
        info.mem_fragmentation_ratio?,
        info.used_memory?,
        info.used_memory_rss?,
    );
    if ratio > FRAG_HIGH && rss.saturating_sub(used) >= FRAG_MIN_BYTES {
        Some(Finding {
            severity: Severity::Warning,
            id: "fragmentation",
            title: format!("Memory fragmentation ratio is high ({ratio:.2})"),
            reason: format!(
                "Redis holds {} of data (used_memory) in {} of RSS: {} is fragmentation or \
                 freed memory the allocator kept. It counts against RAM and is copied on \
                 write like data during a fork.",
                bytes(used),
                bytes(rss),
                bytes(rss - used)
            ),
            fix: "CONFIG SET activedefrag yes (jemalloc builds) to defragment live; \
                  MEMORY PURGE to return free pages to the OS; if it stays high, restart \
                  or fail over to a replica, which loads the data compactly."
                .into(),
        })
    } else if ratio < FRAG_LOW && used.saturating_sub(rss) >= FRAG_MIN_BYTES {
        Some(Finding {
            severity: Severity::Warning,
            id: "fragmentation",
            title: format!("Memory fragmentation ratio is below 1 ({ratio:.2})"),
            reason: format!(
                "Redis uses {} (used_memory) but only {} is resident (RSS): {} of its \
                 memory is not in RAM, which almost always means it is in swap.",
                bytes(used),
                bytes(rss),
                bytes(used - rss)
            ),
            fix: "Bring the data back into RAM: keep used_memory well under physical \
                  memory (maxmemory), lower vm.swappiness (sysctl vm.swappiness=1), add \
                  RAM; see the swap section."
                .into(),
        })
    } else {
        None
    }
}

fn lost_events(m: &Model) -> Option<Finding> {
    let h = &m.header;
    let nonzero = |v: Option<u64>| v.filter(|&n| n > 0);
    // A completion without its start (a fault in flight at attach) is not counted here:
    // it happens in healthy runs and loses nothing that was asked for.
    let (lost, untracked) = (nonzero(h.lost_events), nonzero(h.threads_full));
    let mut causes = Vec::new();
    if let Some(n) = lost {
        causes.push(format!(
            "{n} events were dropped because the ring buffer was full"
        ));
    }
    if let Some(n) = untracked {
        causes.push(format!(
            "{n} threads of the traced processes were not traced because the thread table was full"
        ));
    }
    let title = match (lost, untracked) {
        (Some(n), _) => format!("{n} events were lost"),
        (None, Some(n)) => format!("{n} threads were not traced"),
        (None, None) => return None,
    };
    Some(Finding {
        severity: Severity::Warning,
        id: "lost-events",
        title,
        reason: format!(
            "{}: fault counts, rates and top lists are lower bounds.",
            join_and(&causes)
        ),
        fix: "Record again with a larger ring buffer (--ring-buffer-mb 256) and drain it \
              more often (--poll-ms 1); fewer threads faulting at once (io-threads) avoids \
              untracked faults."
            .into(),
    })
}

fn approximate(m: &Model) -> Option<Finding> {
    let h = &m.header;
    if h.approximate_kinds.is_empty() {
        return None;
    }
    Some(Finding {
        severity: Severity::Warning,
        id: "approximate",
        title: format!(
            "{} counts are approximate on this kernel",
            h.approximate_kinds.join(", ")
        ),
        reason: if h.degraded.is_empty() {
            "a kernel hook the classification relies on was unavailable.".into()
        } else {
            format!("{}.", h.degraded.join("; "))
        },
        fix: "Run `redis-memtrace check` to see which tracepoints are missing; a kernel \
              with kmem:mm_page_alloc and kmem:rss_stat (every kernel since 5.5) gives \
              exact counts."
            .into(),
    })
}

fn on_commands(m: &Model) -> Option<Finding> {
    let seen: Vec<String> = m
        .attribution
        .by_activity
        .iter()
        .filter(|a| {
            ON_COMMANDS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&a.activity))
        })
        .map(|a| {
            let f = &a.faults;
            let total = f
                .cow_copy
                .saturating_add(f.wp_reuse)
                .saturating_add(f.swap_in)
                .saturating_add(f.first_touch)
                .saturating_add(f.other);
            format!("{} ({total} faults)", a.activity.to_ascii_uppercase())
        })
        .collect();
    if seen.is_empty() {
        return None;
    }
    Some(Finding {
        severity: Severity::Info,
        id: "on-commands",
        title: format!("O(n) commands ran: {}", seen.join(", ")),
        reason: format!(
            "Seen: {}. Each walks a whole key or the whole keyspace on the event loop, \
             blocking every other client while it runs. Only commands that took a page \
             fault appear in a trace, so this says nothing about how often they ran, and \
             other O(n) calls may have run unseen.",
            join_and(&seen)
        ),
        fix: "Use SCAN, SSCAN, HSCAN and ZSCAN instead of KEYS, SMEMBERS and HGETALL on \
              large keys; bounded ranges for LRANGE, ZRANGE and SORT (LIMIT); BGSAVE \
              instead of SAVE; FLUSHALL ASYNC / FLUSHDB ASYNC. SLOWLOG GET shows the slow \
              calls."
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixture::{base, model};
    use serde_json::json;

    fn ids(v: serde_json::Value) -> Vec<&'static str> {
        findings(&model(v)).iter().map(|f| f.id).collect()
    }

    #[test]
    fn healthy_run_has_no_findings() {
        assert_eq!(ids(base()), Vec::<&str>::new());
        // Nothing recorded about the host: no guesses.
        let mut v = base();
        v["run"]["host"] = json!(null);
        assert_eq!(ids(v), Vec::<&str>::new());
    }

    #[test]
    fn thp_always_or_huge_pages_in_samples() {
        let mut v = base();
        v["run"]["host"]["thp_enabled"] = json!("always");
        assert_eq!(ids(v), ["thp"]);
        let mut v = base();
        v["run"]["host"]["thp_enabled"] = json!("never");
        v["samples"][1]["server"]["anon_huge_bytes"] = json!(2 << 20);
        let f = findings(&model(v));
        assert_eq!(f[0].id, "thp");
        assert!(
            f[0].reason.contains("2.0 MiB in transparent huge pages"),
            "{f:?}"
        );
        assert!(
            f[0].fix
                .contains("echo never > /sys/kernel/mm/transparent_hugepage/enabled")
        );
        let mut v = base();
        v["samples"][2]["child"][1]["anon_huge_bytes"] = json!(4 << 20);
        assert_eq!(ids(v), ["thp"]);
        let mut v = base();
        v["summary"]["huge_faults"] = json!(3);
        assert_eq!(ids(v), ["thp"]);
        let mut v = base();
        v["run"]["host"]["thp_enabled"] = json!("madvise");
        assert_eq!(ids(v), Vec::<&str>::new());
    }

    #[test]
    fn swap_from_samples_or_swap_in_faults() {
        let mut v = base();
        v["samples"][2]["server"]["swap_bytes"] = json!(64 << 20);
        let f = findings(&model(v));
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].id, f[0].severity), ("swap", Severity::Critical));
        assert!(
            f[0].reason
                .contains("up to 64.0 MiB of the server was in swap")
        );
        assert!(f[0].fix.contains("vm.swappiness") && f[0].fix.contains("maxmemory is 0"));
        let mut v = base();
        v["summary"]["faults"]["swap_in"] = json!(25);
        let f = findings(&model(v));
        assert_eq!(f[0].id, "swap");
        assert!(
            f[0].reason.contains("25 pages (0.1 MiB) were read back"),
            "{f:?}"
        );
        let mut v = base();
        v["events"]
            .as_array_mut()
            .unwrap()
            .push(json!({"ts_ns": 2_000_000_000u64, "kind": "swap_level", "swap_bytes": 8192}));
        assert_eq!(ids(v), ["swap"]);
    }

    #[test]
    fn fork_above_70_percent_of_ram() {
        // 1 GiB + 768 MiB = 1.75 GiB of 2.5 GiB is exactly 70%: not above.
        let mut v = base();
        v["run"]["host"]["mem_total_bytes"] = json!(2_684_354_560u64);
        assert_eq!(ids(v), Vec::<&str>::new());
        let mut v = base();
        v["run"]["host"]["mem_total_bytes"] = json!(2_684_354_559u64);
        let f = findings(&model(v));
        assert_eq!(f[0].id, "fork-ram");
        assert!(f[0].title.contains("epoch #0"));
        assert!(
            f[0].reason.contains("reached 1.8 GiB, 70.0% of 2.5 GiB"),
            "{}",
            f[0].reason
        );
        assert!(f[0].fix.contains("50-60% of RAM"));
        // Unknown RAM: no finding.
        let mut v = base();
        v["run"]["host"]["mem_total_bytes"] = json!(null);
        assert_eq!(ids(v.clone()), Vec::<&str>::new());
        v["run"]["host"]["mem_total_bytes"] = json!(0);
        assert_eq!(ids(v), Vec::<&str>::new());
    }

    #[test]
    fn overcommit_other_than_1() {
        for (value, fires) in [(json!(0), true), (json!(2), true), (json!(1), false)] {
            let mut v = base();
            v["run"]["host"]["overcommit_memory"] = value.clone();
            let f = findings(&model(v));
            assert_eq!(f.iter().any(|f| f.id == "overcommit"), fires, "{value}");
            if fires {
                assert!(f[0].fix.starts_with("sysctl vm.overcommit_memory=1"));
                assert!(f[0].title.contains(&format!("is {value}")));
            }
        }
    }

    #[test]
    fn fragmentation_far_from_1_with_real_numbers() {
        let set = |ratio: f64, used: u64, rss: u64| {
            let mut v = base();
            for s in v["samples"].as_array_mut().unwrap() {
                s["info"]["mem_fragmentation_ratio"] = json!(ratio);
                s["info"]["used_memory"] = json!(used);
                s["info"]["used_memory_rss"] = json!(rss);
            }
            findings(&model(v))
        };
        let f = set(2.0, 100 << 20, 200 << 20);
        assert_eq!(f[0].id, "fragmentation");
        assert!(f[0].title.contains("high (2.00)"));
        assert!(f[0].reason.contains("100.0 MiB of data"));
        assert!(f[0].fix.contains("activedefrag") && f[0].fix.contains("MEMORY PURGE"));
        let f = set(0.5, 400 << 20, 200 << 20);
        assert!(f[0].title.contains("below 1 (0.50)"));
        assert!(
            f[0].reason
                .contains("200.0 MiB of its memory is not in RAM")
        );
        // A small server's wild ratio is noise.
        assert!(set(4.0, 1 << 20, 4 << 20).is_empty());
        assert!(set(1.4, 1 << 30, 1_503_238_553).is_empty());
        assert!(
            set(0.99, 1 << 30, (1 << 30) - (20 << 20))
                .iter()
                .any(|f| f.id == "fragmentation")
        );
    }

    #[test]
    fn on_commands_seen_in_attribution() {
        let mut v = base();
        v["summary"]["attribution"]["by_activity"]
            .as_array_mut()
            .unwrap()
            .push(json!({"activity": "KEYS", "is_command": true,
                "faults": {"cow_copy": 1, "first_touch": 2}}));
        let f = findings(&model(v));
        assert_eq!(f[0].id, "on-commands");
        assert!(f[0].title.contains("KEYS (3 faults)"));
        assert!(
            f[0].reason
                .contains("Only commands that took a page fault appear")
        );
        assert!(f[0].fix.contains("SCAN"));
    }

    #[test]
    fn lost_events_are_a_finding() {
        let mut v = base();
        v["lost_events"] = json!(12);
        v["kernel"]["ring_buffer_full"] = json!(12);
        let f = findings(&model(v));
        assert_eq!(f[0].id, "lost-events");
        assert_eq!(f[0].title, "12 events were lost");
        assert!(
            f[0].reason
                .starts_with("12 events were dropped because the ring buffer")
        );
        assert!(f[0].fix.contains("--ring-buffer-mb"));
        // Untracked faults are not in lost_events but are a loss too.
        let mut v = base();
        v["kernel"]["threads_full"] = json!(3);
        let f = findings(&model(v));
        assert_eq!(f[0].title, "3 threads were not traced");
        // A fault in flight at attach is normal.
        let mut v = base();
        v["kernel"]["unmatched_completions"] = json!(1);
        assert!(findings(&model(v)).is_empty());
    }

    #[test]
    fn approximate_kinds_are_a_finding() {
        let mut v = base();
        v["run"]["options"]["approximate_kinds"] = json!(["cow_copy", "wp_reuse"]);
        v["run"]["options"]["degraded"] =
            json!(["kmem:mm_page_alloc unavailable: copies are told from reuses by the epoch"]);
        let f = findings(&model(v));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].id, "approximate");
        assert_eq!(
            f[0].title,
            "cow_copy, wp_reuse counts are approximate on this kernel"
        );
        assert!(f[0].reason.starts_with("kmem:mm_page_alloc unavailable"));
    }

    #[test]
    fn most_severe_first() {
        let mut v = base();
        v["run"]["host"]["overcommit_memory"] = json!(0);
        v["samples"][2]["server"]["swap_bytes"] = json!(4096);
        assert_eq!(ids(v), ["swap", "overcommit"]);
    }
}
