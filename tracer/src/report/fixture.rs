//! A small but complete synthetic timeline shared by the report's unit tests.

use serde_json::{Value, json};

use super::model::Model;
use crate::timeline::read::Timeline;

/// A small but complete timeline: one BGSAVE epoch, three samples, host facts.
pub fn base() -> Value {
    json!({
        "schema_version": 1,
        "run": {
            "tracer_version": "0.1.0", "kernel_release": "6.1.0",
            "monotonic_start_ns": 1_000_000_000u64,
            "wall_start_unix_ns": 1_795_600_652_154_357_348u64,
            "options": {"attribution": true},
            "host": {
                "mem_total_bytes": 8u64 << 30, "mem_available_bytes": 6u64 << 30,
                "swap_total_bytes": 1u64 << 30, "swap_free_bytes": 1u64 << 30,
                "swap_devices": [{"path": "/swapfile", "kind": "file",
                    "size_bytes": 1u64 << 30, "used_bytes": 0, "priority": -2}],
                "thp_enabled": "madvise", "thp_defrag": "madvise",
                "overcommit_memory": 1, "swappiness": 60, "cpus": 2
            }
        },
        "target": {"pid": 42, "comm": "redis-server", "exe": "/usr/bin/redis-server"},
        "events": [
            {"ts_ns": 1_500_000_000u64, "kind": "fork", "child_pid": 43, "epoch": 0},
            {"ts_ns": 1_600_000_000u64, "kind": "cow_copy", "role": "parent", "epoch": 0, "activity": "SET", "key": "k1", "slot": 1},
            {"ts_ns": 1_650_000_000u64, "kind": "cow_copy", "role": "parent", "epoch": 0, "activity": "SET", "key": "k1", "slot": 1},
            {"ts_ns": 2_500_000_000u64, "kind": "first_touch", "role": "parent", "epoch": null, "activity": "GET"}
        ],
        "end": {"reason": "duration", "monotonic_end_ns": 4_000_000_000u64},
        "epochs": [{
            "id": 0, "parent_pid": 42, "child_pid": 43,
            "start_ns": 1_500_000_000u64, "end_ns": 3_500_000_000u64, "end_reason": "exit",
            "fork_duration_ns": 20_000_000u64, "fork_call_ns": 21_500_000u64,
            "reason": "bgsave", "started_before_trace": false,
            "redis": {"latest_fork_usec": 21_400, "last_cow_size": 8192},
            "faults": {"parent": {"cow_copy": 2, "wp_reuse": 0, "swap_in": 0, "first_touch": 0, "other": 0},
                       "child": {"cow_copy": 0, "wp_reuse": 0, "swap_in": 0, "first_touch": 0, "other": 0}}
        }],
        "kernel": {"ring_buffer_full": 0, "threads_full": 0, "clients_full": 0, "system_swap_writes": 0},
        "lost_events": 0,
        "redis": {"product": "redis", "version": "7.0.15", "role": "master", "port": 6379},
        "samples": [
            {"ts_ns": 1_000_000_000u64, "server": {"rss_bytes": 1u64 << 30, "swap_bytes": 0, "anon_huge_bytes": 0, "private_dirty_bytes": 0},
             "child": null, "info": {"used_memory": 1_000_000_000u64, "used_memory_rss": 1_050_000_000u64, "mem_fragmentation_ratio": 1.05, "maxmemory": 0},
             "pswpin_delta": null, "pswpout_delta": null},
            {"ts_ns": 2_000_000_000u64, "server": {"rss_bytes": 1u64 << 30, "swap_bytes": 0, "anon_huge_bytes": 0, "private_dirty_bytes": 0},
             "child": [43, {"rss_bytes": 1u64 << 29, "swap_bytes": 0, "anon_huge_bytes": 0, "private_dirty_bytes": 0}],
             "info": {"used_memory": 1_000_000_000u64, "used_memory_rss": 1_050_000_000u64, "mem_fragmentation_ratio": 1.05, "maxmemory": 0},
             "pswpin_delta": 0, "pswpout_delta": 0},
            {"ts_ns": 3_000_000_000u64, "server": {"rss_bytes": 1u64 << 30, "swap_bytes": 0, "anon_huge_bytes": 0, "private_dirty_bytes": 0},
             "child": [43, {"rss_bytes": 3u64 << 28, "swap_bytes": 0, "anon_huge_bytes": 0, "private_dirty_bytes": 0}],
             "info": {"used_memory": 1_000_000_000u64, "used_memory_rss": 1_050_000_000u64, "mem_fragmentation_ratio": 1.05, "maxmemory": 0},
             "pswpin_delta": 0, "pswpout_delta": 0}
        ],
        "summary": {
            "faults": {"cow_copy": 2, "wp_reuse": 0, "swap_in": 0, "first_touch": 1, "other": 0},
            "huge_faults": 0,
            "swap": {"pages_in": 0, "pages_out": 0, "pages_discarded": 0},
            "attribution": {
                "by_activity": [
                    {"activity": "SET", "is_command": true, "faults": {"cow_copy": 2, "wp_reuse": 0, "swap_in": 0, "first_touch": 0, "other": 0}},
                    {"activity": "GET", "is_command": true, "faults": {"cow_copy": 0, "wp_reuse": 0, "swap_in": 0, "first_touch": 1, "other": 0}}
                ],
                "top_keys_cow": [{"key": "k1", "key_len": 2, "truncated": false, "pages": 2, "slot": 1}],
                "top_keys_swap_in": [],
                "top_slots_cow": [{"slot": 1, "pages": 2}],
                "top_slots_swap_in": []
            }
        },
        "warnings": []
    })
}

/// [`Model::build`] on a JSON value (skipping the reader's checks on purpose).
pub fn model(v: Value) -> Model {
    Model::build(&Timeline(v), 10)
}
