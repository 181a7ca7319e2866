//! The Redis functions whose presence on the main thread's stack names what it does
//! outside a command, taken from whatever symbols the build has (names differ between
//! Redis and Valkey versions; a symbol that is absent or a jump stub is skipped).

use tracer_common::PHASE_RANGES;

use super::symbols::ServerSymbols;
use crate::attribution::context::{Input, PhaseRange};

/// Symbols smaller than this are jump stubs to a private copy (the copy's code is not
/// the symbol's), or functions compiled out.
const MIN_FUNCTION_BYTES: u64 = 24;

/// Functions that name a phase: (symbols, label, what they do with client input). The
/// first symbol found of each group is used; innermost on the stack wins.
const PHASE_FUNCTIONS: &[(&[&str], &str, Input)] = &[
    // Moving bytes into and within a client's query buffer.
    (&["readQueryFromClient"], "networking-read", Input::Read),
    (&["processInputBuffer"], "networking-read", Input::Read),
    (&["handleReadResult"], "networking-read", Input::Read),
    // Turning those bytes into a command's arguments.
    (
        &["processMultibulkBuffer", "parseMultibulkBuffer"],
        "networking-read",
        Input::Parse,
    ),
    (
        &["processInlineBuffer", "parseInlineBuffer"],
        "networking-read",
        Input::Parse,
    ),
    (&["parseInputBuffer"], "networking-read", Input::Parse),
    (
        &["writeToClient", "_writeToClient"],
        "networking-write",
        Input::None,
    ),
    (&["activeExpireCycle"], "active-expire", Input::None),
    // Valkey 9 scans in helpers too deep below `activeExpireCycle` for the stack window;
    // the scan's per-key callback is right above the deletions.
    (&["expireScanCallback"], "active-expire", Input::None),
    (&["performEvictions"], "eviction", Input::None),
    (&["activeDefragCycle"], "active-defrag", Input::None),
    (&["readSyncBulkPayload"], "replica-load", Input::None),
    (&["clientsCron"], "cron", Input::None),
    (&["serverCron"], "cron", Input::None),
    (&["beforeSleep"], "before-sleep", Input::None),
];

/// One range for the kernel: start, end (exclusive), and what it stands for.
#[derive(Debug, Clone)]
pub struct Range {
    /// Run-time start address.
    pub lo: u64,
    /// Run-time end address (exclusive).
    pub hi: u64,
    /// What it stands for.
    pub phase: PhaseRange,
}

/// The ranges this build offers, at most [`PHASE_RANGES`].
pub fn ranges(symbols: &ServerSymbols) -> Vec<Range> {
    let mut out = Vec::new();
    for (names, label, input) in PHASE_FUNCTIONS {
        let found = names
            .iter()
            .filter_map(|n| symbols.get(n))
            .find(|s| s.size >= MIN_FUNCTION_BYTES);
        if let Some(sym) = found {
            out.push(Range {
                lo: sym.addr,
                hi: sym.addr + sym.size,
                phase: PhaseRange {
                    label,
                    input: *input,
                },
            });
        }
    }
    out.truncate(PHASE_RANGES);
    out
}

/// The server's allocator wrappers: every function of `zmalloc.c` that calls the C
/// library's `malloc`, `calloc`, `realloc` or `free` (names of Redis 6.2 to 8 and
/// Valkey 7 to 9; compiler clones such as `zmalloc_usable.constprop.0` included).
const ALLOCATOR_WRAPPERS: &[&str] = &[
    "zmalloc",
    "ztrymalloc",
    "zmalloc_usable",
    "ztrymalloc_usable",
    "ztrymalloc_usable_internal",
    "zmalloc_no_tcache",
    "zmalloc_cache_aligned",
    "zcalloc",
    "ztrycalloc",
    "zcalloc_usable",
    "ztrycalloc_usable",
    "zcalloc_num",
    "zrealloc",
    "ztryrealloc",
    "zrealloc_usable",
    "ztryrealloc_usable",
    "ztryrealloc_usable_internal",
    "zfree",
    "zfree_usable",
    "zfree_with_size",
    "zfree_no_tcache",
    "zlibc_free",
    "zstrdup",
    "valkey_malloc",
    "valkey_malloc_cache_aligned",
    "valkey_calloc",
    "valkey_realloc",
    "valkey_free",
];

/// The code of the allocator wrappers in `functions` (run-time start, size, name), as
/// spans for the phase table.
pub fn allocator_wrappers<'a>(
    functions: impl IntoIterator<Item = (u64, u64, &'a str)>,
) -> Vec<(u64, u64)> {
    functions
        .into_iter()
        .filter(|(_, size, name)| {
            *size > 0 && ALLOCATOR_WRAPPERS.contains(&name.split('.').next().unwrap_or(name))
        })
        .map(|(addr, size, _)| (addr, addr + size))
        .collect()
}

/// Why Redis forked, from the return addresses on the stack of its `fork()` call (the
/// functions that call `redisFork`/`serverFork` are named for what they do).
pub fn fork_reason<'a>(functions: impl IntoIterator<Item = &'a str>) -> Option<&'static str> {
    let names: Vec<&str> = functions.into_iter().collect();
    let has = |n: &[&str]| names.iter().any(|f| n.contains(f));
    if has(&[
        "startBgsaveForReplication",
        "rdbSaveToSlavesSockets",
        "rdbSaveToReplicasSockets",
    ]) {
        Some("replication")
    } else if has(&["rdbSaveBackground"]) {
        Some("bgsave")
    } else if has(&["rewriteAppendOnlyFileBackground"]) {
        Some("aof-rewrite")
    } else if has(&["RM_Fork", "VM_Fork", "moduleFork"]) {
        Some("module")
    } else if has(&[
        "ldbStartSession",
        "scriptingEngineDebuggerStartSession",
        "slotExportJobBeginSnapshotToTargetSocket",
    ]) {
        Some("other")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_wrappers_are_the_zmalloc_functions_and_their_clones() {
        let functions = [
            (0x100, 0x40, "ztrymalloc_usable"),
            (0x140, 0x20, "zfree"),
            (0x160, 0x30, "createPidFile"),
            (0x190, 0x10, "zmalloc_usable.constprop.0"),
            (0x1a0, 0x10, "zmalloc_used_memory"),
            (0x1b0, 0, "zcalloc"),
        ];
        assert_eq!(
            allocator_wrappers(functions),
            vec![(0x100, 0x140), (0x140, 0x160), (0x190, 0x1a0)]
        );
    }

    #[test]
    fn fork_callers_name_the_reason() {
        assert_eq!(
            fork_reason(["redisFork", "rdbSaveBackground", "bgsaveCommand"]),
            Some("bgsave")
        );
        assert_eq!(
            fork_reason([
                "redisFork",
                "rdbSaveBackground",
                "startBgsaveForReplication"
            ]),
            Some("replication")
        );
        assert_eq!(
            fork_reason(["serverFork", "rdbSaveToReplicasSockets"]),
            Some("replication")
        );
        assert_eq!(
            fork_reason(["serverFork", "rewriteAppendOnlyFileBackground"]),
            Some("aof-rewrite")
        );
        assert_eq!(fork_reason(["VM_Fork"]), Some("module"));
        assert_eq!(fork_reason(["main"]), None);
    }
}
