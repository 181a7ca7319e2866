//! Keys, against real servers (`testkit::attribution_builds`: Redis 7.0 and 6.2), real
//! eBPF, as root: a 1 MiB key name is cut to `--key-bytes` with its real length kept,
//! binary keys (NUL, invalid UTF-8, quotes, control bytes) are escaped exactly and get
//! the slot `CLUSTER KEYSLOT` gives.
//!
//! Forks are kept alive by stopping the child with SIGSTOP (its pages stay shared, so
//! every write of the parent is a copy-on-write) and resumed with SIGCONT, also when a
//! test fails (see `testkit::fork_child::StoppedChild`). Time windows compare fault
//! `ts_ns` with the test's own CLOCK_MONOTONIC readings: the kernel stamps faults with
//! the same clock.

use std::time::Duration;

use serde_json::Value;
use testkit::{
    Recording, Server, attribution_builds, by_label,
    commands::{cluster_keyslots, setrange},
    fork_child::bgsave_stopped,
    read_timeline, require_root,
    timeline::faults,
};

/// A key, the bytes of it kept, truncated or not, its slot, pages written under it.
type KeyCase<'a> = (&'a [u8], &'a [u8], bool, Option<u64>, usize);

/// The escaping of `tracer/src/attribution/keys.rs`, written out again from its
/// documentation (docs/timeline.md, "Keys: escaping and truncation").
fn expected_escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

#[test]
fn huge_and_binary_keys_are_cut_escaped_and_slotted_exactly() {
    require_root();
    // A 1 MiB key name: a..z repeated, so the cut point is visible.
    let huge: Vec<u8> = (0..1_048_576u32).map(|i| b'a' + (i % 26) as u8).collect();
    let bin1: &[u8] = b"a\x00b\xff\xfe";
    let bin2: &[u8] = b"q\"\\\n\r\t\x7f \x80~";
    let k16: &[u8] = b"sixteen-bytes-16";
    let k17: &[u8] = b"seventeen-bytes17";
    let k40: Vec<u8> = (0..40u8)
        .map(|i| if i == 10 { 0 } else { b'A' + i })
        .collect();
    assert_eq!(k16.len(), 16);
    assert_eq!(k17.len(), 17);
    let slots = cluster_keyslots(&by_label("redis-7.0"), &[bin1, bin2, k16]);
    assert_eq!(
        expected_escape(bin1),
        "a\\x00b\\xff\\xfe",
        "the documented escaping"
    );
    assert_eq!(expected_escape(bin2), "q\\\"\\\\\\n\\r\\t\\x7f \\x80~");

    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        server.populate(50_000, "key", 1024);
        let mut con = server.client();
        let dir = tempfile::tempdir().unwrap();

        // Default --key-bytes (128).
        let out = dir.path().join("default.json");
        let rec = Recording::start(&server, &out, &[]);
        let stopped = bgsave_stopped(&server, &mut con);
        setrange(&mut con, bin1, 128 << 10);
        setrange(&mut con, bin2, 256 << 10);
        let _: () = redis::cmd("SET")
            .arg(&huge)
            .arg("v")
            .query(&mut con)
            .unwrap();
        let len: u64 = redis::cmd("STRLEN").arg(&huge).query(&mut con).unwrap();
        assert_eq!(len, 1);
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(t["run"]["options"]["key_max_bytes"], 128);
        let fs = faults(&t);

        for (raw, slot, pages) in [(bin1, slots[0], 32), (bin2, slots[1], 64)] {
            let esc = expected_escape(raw);
            let hits: Vec<&&Value> = fs.iter().filter(|f| f["key"] == esc.as_str()).collect();
            eprintln!("[{label}] SETRANGE {esc}: {} faults", hits.len());
            assert!(
                hits.len() >= pages,
                "[{label}] SETRANGE {esc}: {} faults, {pages} pages zero-filled",
                hits.len()
            );
            for f in hits {
                assert_eq!(f["activity"], "SETRANGE", "[{label}] {f}");
                assert_eq!(f["key_len"], raw.len(), "[{label}] {f}");
                assert_eq!(f["key_truncated"], false, "[{label}] {f}");
                assert_eq!(f["slot"], slot, "[{label}] slot of {esc}: {f}");
            }
        }
        let huge_faults: Vec<&&Value> =
            fs.iter().filter(|f| f["key_len"] == 1_048_576u64).collect();
        let huge_sets = huge_faults
            .iter()
            .filter(|f| f["activity"] == "SET")
            .count();
        eprintln!(
            "[{label}] <1 MiB key>: {} faults, {huge_sets} under SET",
            huge_faults.len()
        );
        // dbAdd copies the key (sdsdup): 256 pages written while SET runs.
        assert!(
            huge_sets >= 256,
            "[{label}] {huge_sets} faults under SET <1 MiB key>"
        );
        let prefix = String::from_utf8(huge[..128].to_vec()).unwrap();
        for f in &huge_faults {
            // STRLEN <1 MiB key> reads it into a query buffer too.
            assert!(
                f["activity"] == "SET" || f["activity"] == "STRLEN",
                "[{label}] {f}"
            );
            assert_eq!(f["key"], prefix.as_str(), "[{label}] {f}");
            assert_eq!(f["key_truncated"], true, "[{label}] {f}");
            assert!(
                f.get("slot").is_none(),
                "[{label}] a truncated key has no slot: {f}"
            );
        }

        // --key-bytes 16: at the limit, one past it, and a binary key well past it.
        let out = dir.path().join("k16.json");
        let rec = Recording::start(&server, &out, &["--key-bytes", "16"]);
        let stopped = bgsave_stopped(&server, &mut con);
        setrange(&mut con, k16, 128 << 10);
        setrange(&mut con, k17, 256 << 10);
        setrange(&mut con, &k40, 512 << 10);
        drop(stopped);
        server.wait_bgsave_done(Duration::from_secs(60));
        let stderr = rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0, "[{label}] {stderr}");
        assert_eq!(t["run"]["options"]["key_max_bytes"], 16);
        let fs = faults(&t);
        // (key, bytes kept, truncated, slot, pages zero-filled)
        let cases: [KeyCase; 3] = [
            (k16, k16, false, Some(slots[2]), 32),
            (k17, &k17[..16], true, None, 64),
            (&k40[..], &k40[..16], true, None, 128),
        ];
        for (raw, kept, truncated, slot, pages) in cases {
            let esc = expected_escape(kept);
            let hits: Vec<&&Value> = fs
                .iter()
                .filter(|f| f["key_len"] == raw.len() && f["key"].is_string())
                .collect();
            eprintln!(
                "[{label}] --key-bytes 16, {} byte key: {} faults",
                raw.len(),
                hits.len()
            );
            assert!(
                hits.len() >= pages,
                "[{label}] {} byte key: {} faults",
                raw.len(),
                hits.len()
            );
            for f in hits {
                assert_eq!(f["activity"], "SETRANGE", "[{label}] {f}");
                assert_eq!(f["key"], esc.as_str(), "[{label}] {f}");
                assert_eq!(f["key_truncated"], truncated, "[{label}] {f}");
                match slot {
                    Some(s) => assert_eq!(f["slot"], s, "[{label}] {f}"),
                    None => assert!(f.get("slot").is_none(), "[{label}] {f}"),
                }
            }
        }
        // Every key kept in this run is at most 16 bytes once unescaped.
        for f in &fs {
            if let Some(k) = f["key"].as_str() {
                assert!(unescaped_len(k) <= 16, "[{label}] {f}");
            }
        }
    }
}

/// Bytes of an escaped key (each `\xNN`, `\n`, `\\`... is one byte).
fn unescaped_len(escaped: &str) -> usize {
    let b = escaped.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        i += match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'x')) => 4,
            (b'\\', _) => 2,
            _ => 1,
        };
        n += 1;
    }
    n
}
