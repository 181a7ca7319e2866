//! `--keys hash|none`: no key name reaches any output. A secret key is written while a
//! BGSAVE child lives (so its writes fault and get attributed); the same workload with
//! `--keys full` proves the key is seen, then every output of the hashed and keyless runs
//! (JSON timeline, NDJSON stream, Perfetto trace, terminal report, HTML report, the
//! tracer's own stderr) is searched for it.

use std::{path::Path, process::Command, time::Duration};

use testkit::{Recording, Server, by_label, read_timeline, require_root, tracer};

const SECRET: &str = "s3cr3t-customer-4711";

/// One recording of the workload; returns (timeline path, tracer stderr).
fn run(server: &Server, dir: &Path, name: &str, extra: &[&str]) -> (std::path::PathBuf, String) {
    let out = dir.join(name);
    let rec = Recording::start(server, &out, extra);
    let mut con = server.client();
    server.config_set("rdb-key-save-delay", "50");
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    let big = vec![b'v'; 64 * 1024];
    for i in 0..300 {
        let _: () = redis::cmd("SET")
            .arg(SECRET)
            .arg(&big[..])
            .query(&mut con)
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("public:{i}"))
            .arg(&big[..4096])
            .query(&mut con)
            .unwrap();
    }
    server.config_set("rdb-key-save-delay", "0");
    server.wait_bgsave_done(Duration::from_secs(60));
    let stderr = rec.stop();
    (out, stderr)
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
    server.populate(20_000, "key", 512);
    let dir = tempfile::tempdir().unwrap();

    // Control: the workload makes the secret key visible with --keys full.
    let (full, _) = run(&server, dir.path(), "full.json", &[]);
    let t = read_timeline(&full);
    assert_eq!(
        secret_row(&t)["key"],
        SECRET,
        "control run must see the key"
    );
    let secret_slot = secret_row(&t)["slot"].clone();
    assert!(secret_slot.is_u64());

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
    assert!(
        hashed.len() == 34
            && hashed.strip_prefix("h:").is_some_and(|h| h
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
        "h: and 32 hex digits: {k1}"
    );
    assert_eq!(k1["hashed"], true);
    assert_eq!(k1["key"], k2["key"], "same salt, same hash");
    assert_eq!(k1["key_len"].as_u64(), Some(SECRET.len() as u64));
    assert_eq!(k1["slot"], secret_slot, "the slot of the real key is kept");
    assert_eq!(
        t1["run"]["options"]["key_salt_fingerprint"],
        t2["run"]["options"]["key_salt_fingerprint"]
    );
    let t3 = memtrace_ndjson_trailer(&h3);
    assert_ne!(
        t3["run"]["options"]["key_salt_fingerprint"],
        t1["run"]["options"]["key_salt_fingerprint"]
    );
    let hashed_events = t1["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key_hashed"] == true)
        .count();
    assert!(hashed_events > 0, "fault records carry hashed keys");

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
        for (what, text) in all_outputs(path, dir.path(), tag) {
            assert!(!text.contains(SECRET), "{tag}: {what} leaks the key");
            assert!(!text.contains("pepper"), "{tag}: {what} leaks the salt");
            searched += text.len();
        }
    }
    assert!(searched > 100_000, "searched only {searched} bytes");
}

/// The NDJSON stream reassembled by the tracer's own reader rules: header + trailer.
fn memtrace_ndjson_trailer(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "header");
    first
}

/// Values never reach an output: values carrying a marker are written while a fork child lives
/// (so the writes fault and are attributed, with `--keys full`) and read back, and no
/// output contains the marker.
#[test]
fn values_never_reach_an_output() {
    require_root();
    const MARKER: &str = "v4lue-m4rker-0917";
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(20_000, "key", 512);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("values.json");
    let rec = Recording::start(&server, &out, &[]);
    let mut con = server.client();
    let stopped = testkit::fork_child::bgsave_stopped(&server, &mut con);
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
    drop(stopped);
    server.wait_bgsave_done(Duration::from_secs(60));
    let stderr = rec.stop();
    let t = read_timeline(&out);
    // Control: the writes were seen, under their keys.
    let seen = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["activity"] == "SET" && f["key"].as_str().is_some_and(|k| k.starts_with("value:"))
        })
        .count();
    assert!(seen > 0, "no fault of the SETs was attributed");
    let mut outputs = all_outputs(&out, dir.path(), "values");
    outputs.push(("stderr".into(), stderr));
    for (name, text) in outputs {
        assert!(!text.contains(MARKER), "a value reached the {name}");
    }
}
