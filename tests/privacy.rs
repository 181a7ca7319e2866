//! `--keys hash|none`: no key name reaches any output. A secret key, `public:N` keys and
//! populated `key:N` keys are written while a BGSAVE child lives (so their writes fault
//! and get attributed); the same workload with `--keys full` proves the keys are seen,
//! then every output of the hashed and keyless runs (JSON timeline, NDJSON stream,
//! Perfetto trace, terminal report, HTML report, the tracer's own stderr) is searched for
//! them. Values, including values sent as a command's first argument (which the kernel
//! reads), reach no output either.
//!
//! Redis 7.0 only (`by_label("redis-7.0")`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use testkit::{Recording, Server, by_label, read_timeline, require_root, tracer};

const SECRET: &str = "s3cr3t-customer-4711";
/// `SECRET` hashed with `--key-salt pepper-1`: the first 16 bytes of the BLAKE3 keyed
/// hash of (length as u64 little-endian, key) under `derive_key(CONTEXT, salt)`, computed
/// with BLAKE3's reference implementation (the unit test
/// `key_privacy::tests::hash_of_a_fixed_salt_and_key_is_pinned` pins the same value).
const SECRET_PEPPER_1: &str = "h:fd381eaf5a8b850c3232896bc1b92724";
/// The fingerprint of the salt `pepper-1` (same unit test).
const PEPPER_1_FINGERPRINT: &str = "4793ef981649905d";
/// `public:N` keys written by [`run`], for N in `0..WRITES`.
const WRITES: u64 = 300;
/// Populated `key:N` keys; [`run`] rewrites `key:{N * KEY_STRIDE}` for N in `0..WRITES`.
const POPULATED: u64 = 20_000;
const KEY_STRIDE: u64 = 61;

/// One recording of the workload; returns (timeline path, tracer stderr).
fn run(server: &Server, dir: &Path, name: &str, extra: &[&str]) -> (std::path::PathBuf, String) {
    let out = dir.join(name);
    let rec = Recording::start(server, &out, extra);
    let mut con = server.client();
    let big = vec![b'v'; 64 * 1024];
    // The secret's 16 pages exist before the fork, and are then written in place: each
    // page is copied once, so the secret is always among the top CoW keys (a value set
    // anew during the fork may land on fresh pages and copy none).
    let _: () = redis::cmd("SET")
        .arg(SECRET)
        .arg(&big[..])
        .query(&mut con)
        .unwrap();
    server.config_set("rdb-key-save-delay", "50");
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    for i in 0..WRITES {
        let _: u64 = redis::cmd("SETRANGE")
            .arg(SECRET)
            .arg((i % 16) * 4096 + 100)
            .arg("x")
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("public:{i}"))
            .arg(&big[..4096])
            .query(&mut con)
            .unwrap();
        let len: u64 = redis::cmd("SETRANGE")
            .arg(format!("key:{}", i * KEY_STRIDE))
            .arg(0)
            .arg("x")
            .query(&mut con)
            .unwrap();
        assert_eq!(len, 512, "key:{} is a populated key", i * KEY_STRIDE);
    }
    server.config_set("rdb-key-save-delay", "0");
    server.wait_bgsave_done(Duration::from_secs(60));
    let stderr = rec.stop();
    (out, stderr)
}

/// The key names [`run`] writes, by (length, cluster slot): what a hashed key, which
/// keeps both, can be.
fn written_names() -> BTreeMap<(u64, u64), Vec<String>> {
    let mut names = vec![SECRET.to_string()];
    names.extend((0..WRITES).map(|i| format!("public:{i}")));
    names.extend((0..WRITES).map(|i| format!("key:{}", i * KEY_STRIDE)));
    let mut by = BTreeMap::<_, Vec<String>>::new();
    for n in names {
        by.entry((n.len() as u64, slot(n.as_bytes())))
            .or_default()
            .push(n);
    }
    by
}

/// Redis Cluster's slot of a key without a hash tag: CRC16 (XMODEM) modulo 16384.
fn slot(key: &[u8]) -> u64 {
    let mut crc: u16 = 0;
    for &b in key {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    u64::from(crc & 0x3fff)
}

/// The records of a timeline: `events` of a JSON document, the lines between header and
/// trailer of an NDJSON stream.
fn records(path: &Path, ndjson: bool) -> Vec<Value> {
    if !ndjson {
        return read_timeline(path)["events"].as_array().unwrap().clone();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.first().unwrap()["type"], "header");
    assert_eq!(lines.last().unwrap()["type"], "trailer");
    lines[1..lines.len() - 1].to_vec()
}

/// The `public:N` and `key:N` names (N: decimal digits) that occur in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for prefix in ["public:", "key:"] {
        for (at, _) in text.match_indices(prefix) {
            let digits: String = text[at + prefix.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if !digits.is_empty() {
                found.insert(format!("{prefix}{digits}"));
            }
        }
    }
    found
}

/// Checks the keys of a `--keys hash` run: every record that carries a key carries a
/// hash (`h:` + 32 hex digits, `key_hashed`), each hash stands for one (length, slot)
/// that a key [`run`] wrote has, and hashes stand for `public:N` keys, `key:N` keys and
/// the secret. Returns hash -> (length, slot).
fn hashed_keys(recs: &[Value], tag: &str) -> BTreeMap<String, (u64, u64)> {
    let written = written_names();
    let mut hashes = BTreeMap::new();
    for r in recs.iter().filter(|r| r.get("key").is_some()) {
        let key = r["key"].as_str().unwrap();
        assert!(is_hash(key), "{tag}: a key that is no hash: {r}");
        assert_eq!(r["key_hashed"], true, "{tag}: {r}");
        let at = (r["key_len"].as_u64().unwrap(), r["slot"].as_u64().unwrap());
        assert!(
            written.contains_key(&at),
            "{tag}: no key written has the length and slot of {r}"
        );
        let first = hashes.entry(key.to_string()).or_insert(at);
        assert_eq!(*first, at, "{tag}: one hash for two keys");
    }
    // The kind of key each hash stands for, where its (length, slot) tells.
    let kinds: BTreeSet<&str> = hashes
        .values()
        .filter_map(|at| {
            let names = &written[at];
            let k = kind(&names[0]);
            names.iter().all(|n| kind(n) == k).then_some(k)
        })
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["key", "public", "secret"]),
        "{tag}: hashed keys stand for the secret, `public:N` and `key:N` ({} hashes)",
        hashes.len()
    );
    hashes
}

/// `secret`, `public` or `key`: which of the names [`run`] writes `name` is.
fn kind(name: &str) -> &'static str {
    if name == SECRET {
        "secret"
    } else if name.starts_with("public:") {
        "public"
    } else {
        "key"
    }
}

/// `h:` and 32 lowercase hex digits.
fn is_hash(key: &str) -> bool {
    key.len() == 34
        && key.strip_prefix("h:").is_some_and(|h| {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// The row of the secret key among the top CoW keys: the only key of its length (the
/// others are `public:N` and `key:N`), whatever its rank.
fn secret_row(t: &serde_json::Value) -> serde_json::Value {
    let rows = &t["summary"]["attribution"]["top_keys_cow"];
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["key_len"].as_u64() == Some(SECRET.len() as u64))
        .cloned()
        .unwrap_or_else(|| panic!("no row of the secret key's length in {rows}"))
}

/// Every output derived from `timeline`, as text.
fn all_outputs(timeline: &Path, dir: &Path, tag: &str) -> Vec<(String, String)> {
    let trace = dir.join(format!("{tag}-trace.json"));
    let html = dir.join(format!("{tag}-report.html"));
    let ok = Command::new(tracer())
        .args(["export", "--perfetto"])
        .arg(timeline)
        .arg("-o")
        .arg(&trace)
        .status()
        .unwrap();
    assert!(ok.success());
    let report = Command::new(tracer())
        .arg("report")
        .arg(timeline)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert!(report.status.success());
    vec![
        (
            "timeline".into(),
            std::fs::read_to_string(timeline).unwrap(),
        ),
        ("perfetto".into(), std::fs::read_to_string(&trace).unwrap()),
        (
            "report".into(),
            String::from_utf8_lossy(&report.stdout).into_owned()
                + &String::from_utf8_lossy(&report.stderr),
        ),
        ("html".into(), std::fs::read_to_string(&html).unwrap()),
    ]
}

#[test]
fn no_key_name_leaves_with_hash_or_none() {
    require_root();
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(POPULATED, "key", 512);
    let dir = tempfile::tempdir().unwrap();

    // Control: the workload makes the secret key visible with --keys full, and with it
    // `public:N` and `key:N` keys, each with its slot; the search for names finds them.
    let (full, _) = run(&server, dir.path(), "full.json", &[]);
    let t = read_timeline(&full);
    assert_eq!(
        secret_row(&t)["key"],
        SECRET,
        "control run must see the key"
    );
    let secret_slot = secret_row(&t)["slot"].clone();
    assert_eq!(secret_slot.as_u64(), Some(slot(SECRET.as_bytes())));
    let written: BTreeSet<String> = written_names().into_values().flatten().collect();
    let mut seen = BTreeSet::new();
    for e in t["events"].as_array().unwrap() {
        if let Some(key) = e["key"].as_str() {
            assert!(
                written.contains(key),
                "a key the workload did not write: {e}"
            );
            assert_eq!(e["slot"].as_u64(), Some(slot(key.as_bytes())), "{e}");
            seen.insert(kind(key));
        }
    }
    assert_eq!(seen, BTreeSet::from(["key", "public", "secret"]));
    let found = names_in(&std::fs::read_to_string(&full).unwrap());
    assert!(
        found.iter().any(|n| n.starts_with("public:"))
            && found.iter().any(|n| n.starts_with("key:")),
        "the control timeline names `public:N` and `key:N` keys: {found:?}"
    );

    // Two hashed runs with one salt, one with another salt, one without keys.
    let salt = ["--keys", "hash", "--key-salt", "pepper-1"];
    let (h1, e1) = run(&server, dir.path(), "h1.json", &salt);
    let (h2, e2) = run(&server, dir.path(), "h2.json", &salt);
    let (h3, e3) = run(
        &server,
        dir.path(),
        "h3.ndjson",
        &[
            "--keys",
            "hash",
            "--key-salt",
            "pepper-2",
            "--format",
            "ndjson",
        ],
    );
    let (none, e4) = run(&server, dir.path(), "none.json", &["--keys", "none"]);

    let (t1, t2) = (read_timeline(&h1), read_timeline(&h2));
    let (k1, k2) = (secret_row(&t1), secret_row(&t2));
    let hashed = k1["key"].as_str().unwrap();
    assert!(is_hash(hashed), "h: and 32 hex digits: {k1}");
    assert_eq!(hashed, SECRET_PEPPER_1, "the keyed BLAKE3 hash of the key");
    assert_eq!(k1["hashed"], true);
    assert_eq!(k1["key"], k2["key"], "same salt, same hash");
    assert_eq!(k1["key_len"].as_u64(), Some(SECRET.len() as u64));
    assert_eq!(k1["slot"], secret_slot, "the slot of the real key is kept");
    assert_eq!(
        t1["run"]["options"]["key_salt_fingerprint"],
        PEPPER_1_FINGERPRINT
    );
    assert_eq!(
        t1["run"]["options"]["key_salt_fingerprint"],
        t2["run"]["options"]["key_salt_fingerprint"]
    );
    let t3 = ndjson_header(&h3);
    assert_ne!(
        t3["run"]["options"]["key_salt_fingerprint"],
        t1["run"]["options"]["key_salt_fingerprint"]
    );
    // Every key of every record is hashed, and the hashes stand for the keys written:
    // the secret, `public:N` and `key:N`. Same salt: a hash stands for the same key in
    // both runs; another salt hashes the secret otherwise.
    let m1 = hashed_keys(t1["events"].as_array().unwrap(), "h1");
    let m2 = hashed_keys(t2["events"].as_array().unwrap(), "h2");
    let m3 = hashed_keys(&records(&h3, true), "h3");
    for (hash, at) in &m2 {
        if let Some(a1) = m1.get(hash) {
            assert_eq!(a1, at, "{hash} stands for two keys in h1 and h2");
        }
    }
    let secret_at = (SECRET.len() as u64, slot(SECRET.as_bytes()));
    assert_eq!(m1.get(SECRET_PEPPER_1), Some(&secret_at));
    assert_eq!(m2.get(SECRET_PEPPER_1), Some(&secret_at));
    assert!(
        !m3.contains_key(SECRET_PEPPER_1),
        "pepper-2 hashes as pepper-1"
    );
    assert!(m3.values().any(|at| *at == secret_at));
    eprintln!(
        "hashed keys: h1 {}, h2 {}, h3 {}",
        m1.len(),
        m2.len(),
        m3.len()
    );

    let tn = read_timeline(&none);
    assert!(
        tn["summary"]["attribution"]["top_keys_cow"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        tn["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e.get("key").is_none()),
        "--keys none writes no key"
    );
    assert!(
        !tn["summary"]["attribution"]["top_slots_cow"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let mut searched = 0;
    for (path, stderr, tag) in [
        (&h1, e1, "h1"),
        (&h2, e2, "h2"),
        (&h3, e3, "h3"),
        (&none, e4, "none"),
    ] {
        assert!(
            !stderr.contains(SECRET),
            "{tag}: tracer stderr leaks the key"
        );
        assert!(!stderr.contains("pepper"), "{tag}: the salt is printed");
        let names = names_in(&stderr);
        assert!(names.is_empty(), "{tag}: tracer stderr names {names:?}");
        for (what, text) in all_outputs(path, dir.path(), tag) {
            assert!(!text.contains(SECRET), "{tag}: {what} leaks the key");
            assert!(!text.contains("pepper"), "{tag}: {what} leaks the salt");
            let names = names_in(&text);
            assert!(names.is_empty(), "{tag}: {what} names {names:?}");
            searched += text.len();
        }
    }
    assert!(searched > 100_000, "searched only {searched} bytes");
}

/// The header line of an NDJSON stream.
fn ndjson_header(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "header");
    first
}

/// A marker that every value of [`values_workload`] starts with or repeats.
const MARKER: &str = "v4lue-m4rker-0917";
/// PUBLISH's channel and SPUBLISH's shard channel: first arguments that are values.
const CHANNEL: &str = "v4lue-ch4nnel-3306";
const SHARD_CHANNEL: &str = "v4lue-sh4rd-ch4nnel-8124";
/// The commands [`values_workload`] sends a value to as their first argument (`argv[1]`,
/// which the kernel reads).
const FIRST_ARG_VALUES: [&str; 5] = ["ECHO", "PING", "PUBLISH", "SPUBLISH", "EVAL"];

/// `SUBSCRIBE`/`SSUBSCRIBE` (`how`) `channel` on `sub`, checking the confirmation.
fn subscribe(sub: &mut redis::Connection, how: &str, channel: &str) {
    sub.send_packed_command(&redis::cmd(how).arg(channel).get_packed_command())
        .unwrap();
    let reply: Vec<redis::Value> = redis::from_redis_value(sub.recv_response().unwrap()).unwrap();
    let head: Vec<u8> = redis::from_redis_value_ref(&reply[0]).unwrap();
    let name: Vec<u8> = redis::from_redis_value_ref(&reply[1]).unwrap();
    assert_eq!(
        (head, name),
        (
            how.to_ascii_lowercase().into_bytes(),
            channel.as_bytes().to_vec()
        )
    );
}

/// Reads the next message on `sub`: `kind` (`message`/`smessage`) on `channel` of `msg`.
fn expect_message(sub: &mut redis::Connection, kind: &str, channel: &str, msg: &[u8]) {
    let got: Vec<Vec<u8>> = redis::from_redis_value(sub.recv_response().unwrap()).unwrap();
    assert_eq!(
        got,
        [kind.as_bytes(), channel.as_bytes(), msg],
        "{kind} on {channel}"
    );
}

/// One recording with full attribution and `--keys full` while a BGSAVE child is held
/// stopped (every first write of the server to a page is a copy-on-write): values carrying
/// [`MARKER`] as `argv[2]` (200 `SET value:N` of 5,100 bytes, each read back) and as
/// `argv[1]` (20 rounds of ECHO, PING, PUBLISH, SPUBLISH of a value of 4 to 23 pages that
/// starts with the marker, to a subscriber on each channel, and EVAL of a script that
/// starts with it and returns it repeated over as many pages). Returns the tracer's
/// stderr.
fn values_workload(server: &Server, out: &Path, extra: &[&str]) -> String {
    let rec = Recording::start(server, out, extra);
    let mut con = server.client();
    let mut sub = server.client();
    subscribe(&mut sub, "SUBSCRIBE", CHANNEL);
    subscribe(&mut sub, "SSUBSCRIBE", SHARD_CHANNEL);
    let stopped = testkit::fork_child::bgsave_stopped(server, &mut con);
    let value = MARKER.repeat(300);
    for i in 0..200 {
        let key = format!("value:{i}");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .query(&mut con)
            .unwrap();
        let back: String = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
        assert_eq!(back, value);
    }
    for i in 0..20usize {
        let pages = 4 + i;
        let mut msg = format!("{MARKER}:{i}:").repeat(pages * 4096 / MARKER.len());
        msg.truncate(pages * 4096);
        // Each of a pair goes first every other round (the second may reuse pages the
        // first already copied).
        let (first, second) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
        for cmd in [["ECHO", "PING"][first], ["ECHO", "PING"][second]] {
            let back: Vec<u8> = redis::cmd(cmd).arg(&msg).query(&mut con).unwrap();
            assert!(back == msg.as_bytes(), "{cmd} answered otherwise");
        }
        let publish = [
            ("PUBLISH", CHANNEL, "message"),
            ("SPUBLISH", SHARD_CHANNEL, "smessage"),
        ];
        for (cmd, channel, kind) in [publish[first], publish[second]] {
            let receivers: u64 = redis::cmd(cmd)
                .arg(channel)
                .arg(&msg)
                .query(&mut con)
                .unwrap();
            assert_eq!(receivers, 1, "{cmd} reached the subscriber");
            expect_message(&mut sub, kind, channel, msg.as_bytes());
        }
        let times = pages * 4096 / MARKER.len();
        let script = format!("-- {MARKER} {i}\nreturn string.rep('{MARKER}', {times})");
        let back: Vec<u8> = redis::cmd("EVAL")
            .arg(&script)
            .arg(0)
            .query(&mut con)
            .unwrap();
        assert!(
            back == MARKER.repeat(times).as_bytes(),
            "EVAL answered otherwise"
        );
    }
    drop(stopped);
    server.wait_bgsave_done(Duration::from_secs(60));
    rec.stop()
}

/// Values never reach an output: values carrying a marker are written and read back, and
/// sent as the first argument of ECHO, PING, PUBLISH, SPUBLISH (the channel) and EVAL (the
/// script), while a fork child lives (so the commands fault and are attributed, with
/// `--keys full`); once with the JSON timeline and once with the NDJSON stream, each with
/// a Perfetto trace written by `record --perfetto`. No output contains the marker or the
/// channels.
#[test]
fn values_never_reach_an_output() {
    require_root();
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(20_000, "key", 512);
    let dir = tempfile::tempdir().unwrap();
    for (name, ndjson) in [("values.json", false), ("values.ndjson", true)] {
        let out = dir.path().join(name);
        let live_trace = dir.path().join(format!("{name}-live-trace.json"));
        let mut extra = vec!["--perfetto", live_trace.to_str().unwrap()];
        if ndjson {
            extra.extend(["--format", "ndjson"]);
        }
        let stderr = values_workload(&server, &out, &extra);
        let recs = records(&out, ndjson);
        // Control: the commands were seen and faulted: the SETs under their keys, each
        // command with a value as first argument under its name.
        let count = |f: &dyn Fn(&Value) -> bool| recs.iter().filter(|e| f(e)).count();
        let sets = count(&|e| {
            e["activity"] == "SET" && e["key"].as_str().is_some_and(|k| k.starts_with("value:"))
        });
        assert!(sets > 0, "{name}: no fault of the SETs was attributed");
        for cmd in FIRST_ARG_VALUES {
            let n = count(&|e| e["activity"] == cmd);
            eprintln!("{name}: {n} records of {cmd}");
            assert!(n > 0, "{name}: no fault of {cmd} was attributed");
            let keyed = count(&|e| e["activity"] == cmd && e.get("key").is_some());
            assert_eq!(keyed, 0, "{name}: {cmd}'s first argument written as a key");
        }
        let mut outputs = all_outputs(&out, dir.path(), name);
        outputs.push(("stderr".into(), stderr));
        outputs.push((
            "record --perfetto".into(),
            std::fs::read_to_string(&live_trace).unwrap(),
        ));
        for (what, text) in outputs {
            for secret in [MARKER, CHANNEL, SHARD_CHANNEL] {
                assert!(
                    !text.contains(secret),
                    "{name}: {secret} reached the {what}"
                );
            }
        }
    }
}
