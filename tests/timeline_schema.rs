//! The timeline format against its published contract, `docs/timeline.schema.json`,
//! checked on real runs by an independent validator: Python's `jsonschema`
//! (`Draft202012Validator`, Debian package `python3-jsonschema`), not by our own reader.
//!
//! Cases: a fault-gen run with a fork, copy-on-write, reuse and swap; a real
//! redis-server BGSAVE under writes with attribution; mutations of a real timeline that
//! must be rejected (so the check can fail); and an NDJSON stream, line by line against
//! the header, event and trailer definitions.
//!
//! Needs root and python3 with jsonschema. Run serially (`--test-threads=1`).

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{record_command, record_command_env};
use serde_json::Value;
use testkit::{
    Recording, Server, SwapGuard, attribution_builds, by_label, cluster::Cluster, read_timeline,
    require_root,
};

/// The validator, run as `python3 -c VALIDATOR SCHEMA FILE [ndjson]`. Exit 0: valid;
/// 1: invalid, the errors on stdout; anything else: the validator itself failed.
///
/// `json` mode validates the whole document. `ndjson` mode checks the stream's shape
/// (header line first, trailer line last with every required trailer key and no key the
/// schema does not name, records between them) and validates line 1 against `#/$defs/header`, the records against
/// `#/$defs/event` and the last line against `#/$defs/trailer`. Duplicate keys in any
/// object are errors too (JSON Schema cannot see them; the records are hand-formatted).
const VALIDATOR: &str = r##"
import json, sys
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

schema_path, path = sys.argv[1], sys.argv[2]
mode = sys.argv[3] if len(sys.argv) > 3 else "json"
with open(schema_path, encoding="utf-8") as f:
    schema = json.load(f)
Draft202012Validator.check_schema(schema)

def validator(name=None):
    if name is None:
        return Draft202012Validator(schema)
    return Draft202012Validator(
        {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/" + name})

errors = []
def error(msg):
    errors.append(msg)

# Record kind -> the definition of its variant, read from the schema's `event.oneOf`, to
# explain a record that matches no variant by the errors of the one its kind selects.
variant = {}
for ref in schema["$defs"]["event"]["oneOf"]:
    name = ref["$ref"].split("/")[-1]
    kind = schema["$defs"][name]["properties"]["kind"]
    if "$ref" in kind:
        kind = schema["$defs"][kind["$ref"].split("/")[-1]]
    for k in ([kind["const"]] if "const" in kind else kind["enum"]):
        variant[k] = name

def check(v, instance, where):
    for e in v.iter_errors(instance):
        loc = where + "/" + "/".join(str(p) for p in e.absolute_path)
        if e.validator == "oneOf" and isinstance(e.instance, dict) \
                and e.instance.get("kind") in variant:
            name = variant[e.instance["kind"]]
            sub = [x for x in validator(name).iter_errors(e.instance)]
            for x in sub:
                sub_loc = loc + "".join("/" + str(p) for p in x.absolute_path)
                error("%s: as a %s: %.300s" % (sub_loc, name, x.message))
            if not sub:
                error(loc + ": matches more than one record variant")
            continue
        msg = e.message
        if e.context:
            # Skip the `null` alternative: the other branch says what is wrong.
            real = [c for c in e.context if c.validator != "type"] or e.context
            best = best_match(real)
            where = "/".join(str(p) for p in best.relative_path)
            # The message starts with the whole instance: keep its end, which says why.
            msg = "not valid under any of the given schemas [closest: at /%s: ...%s]" % (where, best.message[-200:])
        if len(msg) > 500:
            msg = msg[:500] + "..."
        error(loc + ": " + msg)

def no_duplicates(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise ValueError("duplicate key " + repr(k))
        seen.add(k)
    return dict(pairs)

def parse(text):
    return json.loads(text, object_pairs_hook=no_duplicates)

records = 0
if mode == "json":
    with open(path, encoding="utf-8") as f:
        doc = parse(f.read())
    check(validator(), doc, "")
    records = len(doc.get("events", []))
elif mode == "ndjson":
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.endswith("\n"):
        error("the stream does not end with a newline")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    objs = []
    for i, line in enumerate(lines, 1):
        try:
            objs.append(parse(line))
        except ValueError as e:
            error("line %d is not one JSON object: %s: %.200s" % (i, e, line))
            objs.append(None)
    if len(objs) < 2:
        error("%d lines: a header and a trailer at least are expected" % len(objs))
    else:
        head, tail = objs[0], objs[-1]
        if isinstance(head, dict):
            if head.get("type") != "header":
                error("line 1 is not the header: type %r" % head.get("type"))
            if set(head) != {"type", "schema_version", "run", "target"}:
                error("header keys %s" % sorted(head))
            check(validator("header"), head, "line 1")
        if isinstance(tail, dict):
            if tail.get("type") != "trailer":
                error("last line is not the trailer (type %r): the run did not finish"
                      % tail.get("type"))
            # Every required key, and no key the schema does not name (optional ones, as
            # `cluster`, appear only for some targets).
            trailer = schema["$defs"]["trailer"]
            required = set(trailer["required"]) | {"type"}
            known = set(trailer["properties"]) | {"type"}
            if not required <= set(tail) <= known:
                error("trailer keys %s, expected %s and optionally %s"
                      % (sorted(tail), sorted(required), sorted(known - required)))
            check(validator("trailer"), tail, "line %d" % len(objs))
        event = validator("event")
        for i, obj in enumerate(objs[1:-1], 2):
            if obj is not None:
                check(event, obj, "line %d" % i)
        records = len(objs) - 2
elif mode == "nodes":
    with open(path, encoding="utf-8") as f:
        doc = parse(f.read())
    check(validator("nodes"), doc, "")
    for i, node in enumerate(doc.get("nodes", [])):
        timeline = node.get("timeline") if isinstance(node, dict) else None
        check(validator(), timeline, "/nodes/%d/timeline" % i)
        if isinstance(timeline, dict):
            records += len(timeline.get("events", []))
else:
    sys.exit("unknown mode " + mode)

if errors:
    print("%s: INVALID, %d errors" % (path, len(errors)))
    for e in errors[:30]:
        print("  " + e)
    if len(errors) > 30:
        print("  ... %d more" % (len(errors) - 30))
    sys.exit(1)
print("%s: valid %s timeline, %d records" % (path, mode, records))
"##;

/// `docs/timeline.schema.json` in this checkout.
fn schema_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/timeline.schema.json")
}

/// Fails the test with a clear message when python3 or its jsonschema is missing.
/// Debian's interpreter on purpose: `cargo xtask setup` installs python3-jsonschema for
/// it, and another python3 earlier on PATH (pyenv) may lack the module.
fn require_validator() {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "from jsonschema import Draft202012Validator; print('ok')",
        ])
        .output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "python3 with jsonschema (Draft 2020-12) is needed: apt-get install python3-jsonschema ({out:?})"
    );
    assert!(
        schema_path().exists(),
        "{} missing",
        schema_path().display()
    );
}

/// Runs the validator on `file`; `Ok(report)` when valid, `Err(report)` when not.
/// Panics if the validator itself could not run (a broken schema, a crash).
fn validate(file: &Path, ndjson: bool) -> Result<String, String> {
    validate_as(file, if ndjson { "ndjson" } else { "json" })
}

/// [`validate`] in the validator's `mode` (`json`, `ndjson` or `nodes`).
fn validate_as(file: &Path, mode: &str) -> Result<String, String> {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c")
        .arg(VALIDATOR)
        .arg(schema_path())
        .arg(file)
        .arg(mode);
    let out = cmd.output().expect("run python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(text),
        Some(1) => Err(text),
        _ => panic!("the validator failed to run ({}): {text}", out.status),
    }
}

/// Asserts that `file` is valid, printing the validator's errors otherwise.
fn assert_valid(file: &Path, ndjson: bool) {
    match validate(file, ndjson) {
        Ok(report) => eprint!("{report}"),
        Err(report) => panic!("timeline does not match docs/timeline.schema.json:\n{report}"),
    }
}

/// The fault-gen workload of cases (a) and (d): a fork with copy-on-write, reuses after
/// the child exited, and swap-ins.
fn fault_gen_args() -> Vec<String> {
    [
        "--pages", "2000", "--cow", "500", "--reuse", "500", "--swap", "200",
    ]
    .map(String::from)
    .to_vec()
}

/// Asserts that the records cover every kind the fault-gen workload produces, so the
/// validation exercised each of their definitions.
fn assert_fault_gen_kinds(events: &[Value]) {
    let kinds: BTreeSet<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in [
        "first_touch",
        "cow_copy",
        "wp_reuse",
        "swap_in",
        "fork",
        "fork_return",
        "exit",
        "swap_level",
        "swap_write",
    ] {
        assert!(kinds.contains(k), "no `{k}` record (kinds seen: {kinds:?})");
    }
}

/// Fields the current writer always emits although the schema keeps them optional (they
/// were added within schema_version 1, so older files lack them).
fn assert_current_fields(t: &Value) {
    assert!(t["run"]["host"].is_object(), "run.host missing");
    for e in t["epochs"].as_array().unwrap() {
        assert!(
            e.as_object().unwrap().contains_key("fork_call_ns"),
            "epochs[].fork_call_ns missing in {e}"
        );
    }
}

// (a)

#[test]
fn fault_gen_run_with_fork_cow_reuse_and_swap_matches_the_schema() {
    require_root();
    require_validator();
    let _swap = SwapGuard::ensure();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.json");
    record_command(&out, &fault_gen_args());
    let t = read_timeline(&out);
    assert_fault_gen_kinds(t["events"].as_array().unwrap());
    assert_eq!(t["epochs"].as_array().unwrap().len(), 1);
    assert_current_fields(&t);
    assert_valid(&out, false);
}

// (b)

#[test]
fn redis_bgsave_under_writes_with_attribution_matches_the_schema() {
    require_root();
    require_validator();
    for build in attribution_builds() {
        let label = &build.label;
        let server = Server::start(&build, &[]);
        server.populate(50_000, "key", 1024);
        // Keep the child alive while the writes land (microseconds per key saved).
        server.config_set("rdb-key-save-delay", "20");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("timeline.json");
        // 8 key bytes: `key:1234` is kept whole (with a slot), `key:12345` is truncated
        // (no slot), so both shapes of the attribution fields and key rows occur.
        let rec = Recording::start(
            &server,
            &out,
            &["--key-bytes", "8", "--top", "50", "--interval", "200ms"],
        );

        let mut con = server.client();
        let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
        let value = vec![b'v'; 1024];
        let mut pipe = redis::pipe();
        for i in (0..50_000).step_by(3) {
            pipe.cmd("SET").arg(format!("key:{i}")).arg(&value).ignore();
        }
        // A binary key (quote, backslash, newline, tab, NUL, non-UTF-8) with a large
        // value: its faults carry the escaped form.
        let big = vec![b'b'; 1 << 20];
        pipe.cmd("SET")
            .arg(&b"b\"\\\n\t\x00\xff"[..])
            .arg(&big)
            .ignore();
        pipe.query::<()>(&mut con).unwrap();
        let persistence: String = redis::cmd("INFO")
            .arg("persistence")
            .query(&mut con)
            .unwrap();
        assert!(
            persistence.contains("rdb_bgsave_in_progress:1"),
            "[{label}] the writes must land while the child lives"
        );
        let (status, _) = server.wait_bgsave_done(Duration::from_secs(120));
        assert_eq!(status, "ok", "[{label}]");
        std::thread::sleep(Duration::from_millis(500));
        let stderr = rec.stop();
        eprintln!("[{label}] {stderr}");

        let t = read_timeline(&out);
        assert!(t["redis"].is_object(), "[{label}] redis: {}", t["redis"]);
        let epochs = t["epochs"].as_array().unwrap();
        assert!(!epochs.is_empty(), "[{label}] no epoch");
        assert_eq!(epochs[0]["reason"], "bgsave", "[{label}]");
        assert!(epochs[0]["redis"].is_object(), "[{label}]");
        assert!(epochs[0]["attribution"].is_object(), "[{label}]");
        assert!(t["summary"]["attribution"].is_object(), "[{label}]");
        assert!(
            t["samples"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["info"].is_object() && s["server"].is_object()),
            "[{label}] no sample with INFO"
        );
        let faults: Vec<&Value> = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e.get("role").is_some())
            .collect();
        let with = |f: &dyn Fn(&Value) -> bool| faults.iter().filter(|e| f(e)).count();
        let (keyed, truncated, slotted, staged) = (
            with(&|e| e.get("key").is_some()),
            with(&|e| e["key_truncated"] == true),
            with(&|e| e.get("slot").is_some()),
            with(&|e| e.get("stage").is_some()),
        );
        let binary_key = with(&|e| e["key"] == "b\\\"\\\\\\n\\t\\x00\\xff");
        eprintln!(
            "[{label}] {} faults: {keyed} with a key ({truncated} truncated, {slotted} with a \
             slot), {staged} with a stage, {binary_key} on the binary key",
            faults.len()
        );
        assert!(
            truncated > 0 && slotted > 0,
            "[{label}] both truncated and whole keys expected"
        );
        assert_current_fields(&t);
        assert_valid(&out, false);
    }
}

// (c)

/// Applies `mutate` to a copy of `base`, writes it into `dir` and returns the
/// validator's report, which must be a rejection.
fn must_fail(dir: &Path, base: &Value, name: &str, mutate: impl Fn(&mut Value)) -> String {
    let mut t = base.clone();
    mutate(&mut t);
    assert_ne!(&t, base, "mutation {name} changed nothing");
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_vec(&t).unwrap()).unwrap();
    match validate(&path, false) {
        Ok(report) => panic!("mutation {name} was accepted: {report}"),
        Err(report) => {
            eprintln!("mutation {name} rejected as expected:\n{report}");
            report
        }
    }
}

/// The first fault record of a timeline.
fn first_fault(t: &mut Value) -> &mut Value {
    t["events"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e.get("role").is_some())
        .expect("a fault record")
}

#[test]
fn mutated_timelines_are_rejected() {
    require_root();
    require_validator();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("base.json");
    record_command(
        &out,
        &["--pages", "200", "--cow", "20", "--reuse", "20"].map(String::from),
    );
    // The control: the real timeline itself passes.
    assert_valid(&out, false);
    let base = read_timeline(&out);

    let r = must_fail(dir.path(), &base, "schema_version_2", |t| {
        t["schema_version"] = 2.into()
    });
    assert!(r.contains("schema_version"), "{r}");
    must_fail(dir.path(), &base, "schema_version_string", |t| {
        t["schema_version"] = "1".into()
    });
    let r = must_fail(dir.path(), &base, "kind_cow", |t| {
        first_fault(t)["kind"] = "cow".into()
    });
    assert!(r.contains("events/"), "{r}");
    let r = must_fail(dir.path(), &base, "negative_ts", |t| {
        first_fault(t)["ts_ns"] = (-1).into()
    });
    assert!(r.contains("-1"), "{r}");
    let r = must_fail(dir.path(), &base, "no_summary_cow_copy", |t| {
        t["summary"]["faults"]
            .as_object_mut()
            .unwrap()
            .remove("cow_copy");
    });
    assert!(r.contains("cow_copy"), "{r}");
    must_fail(dir.path(), &base, "fault_without_latency", |t| {
        first_fault(t).as_object_mut().unwrap().remove("latency_ns");
    });
    must_fail(dir.path(), &base, "role_string_typo", |t| {
        first_fault(t)["role"] = "parnet".into()
    });
    must_fail(dir.path(), &base, "kind_counts_typo", |t| {
        t["summary"]["by_role"]["parent"]["cow_cpy"] = 1.into()
    });
    must_fail(dir.path(), &base, "epoch_still_open", |t| {
        t["epochs"][0]["end_ns"] = Value::Null
    });
    must_fail(dir.path(), &base, "event_with_type", |t| {
        first_fault(t)["type"] = "header".into()
    });
    must_fail(dir.path(), &base, "hashed_flag_without_key", |t| {
        let f = first_fault(t).as_object_mut().unwrap();
        f.insert("activity".into(), "SET".into());
        f.insert("key_hashed".into(), true.into());
    });
    must_fail(dir.path(), &base, "unescaped_key", |t| {
        let f = first_fault(t).as_object_mut().unwrap();
        f.insert("activity".into(), "SET".into());
        f.insert("key".into(), "a\nb".into());
        f.insert("key_len".into(), 3.into());
        f.insert("key_truncated".into(), false.into());
    });
    must_fail(dir.path(), &base, "no_summary", |t| {
        t.as_object_mut().unwrap().remove("summary");
    });

    // The validator's NDJSON mode, on a stream built from the same real timeline: it
    // passes whole, and is rejected without its trailer or with the trailer moved up.
    let header = serde_json::json!({
        "type": "header",
        "schema_version": base["schema_version"],
        "run": base["run"],
        "target": base["target"],
    });
    let mut trailer = base.as_object().unwrap().clone();
    for k in ["schema_version", "run", "target", "events"] {
        trailer.remove(k);
    }
    trailer.insert("type".into(), "trailer".into());
    let trailer = Value::Object(trailer);
    let events = base["events"].as_array().unwrap();
    let stream = |lines: Vec<&Value>| -> String {
        lines
            .iter()
            .map(|v| serde_json::to_string(v).unwrap() + "\n")
            .collect()
    };
    let whole = std::iter::once(&header)
        .chain(events)
        .chain(std::iter::once(&trailer))
        .collect();
    let path = dir.path().join("stream.ndjson");
    std::fs::write(&path, stream(whole)).unwrap();
    assert_valid(&path, true);
    let unfinished = std::iter::once(&header).chain(events).collect();
    std::fs::write(&path, stream(unfinished)).unwrap();
    let r = validate(&path, true).expect_err("a stream without its trailer was accepted");
    assert!(r.contains("did not finish"), "{r}");
    let moved = std::iter::once(&header)
        .chain(std::iter::once(&trailer))
        .chain(events)
        .collect();
    std::fs::write(&path, stream(moved)).unwrap();
    validate(&path, true).expect_err("a trailer before the records was accepted");
}

// (d)

#[test]
fn ndjson_stream_matches_the_schema_line_by_line() {
    require_root();
    require_validator();
    let _swap = SwapGuard::ensure();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("timeline.ndjson");
    record_command_env(&out, &fault_gen_args(), &["-q", "--format", "ndjson"], &[]);
    assert_valid(&out, true);

    // The records are the events of a JSON timeline: the same coverage as case (a).
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_fault_gen_kinds(&lines[1..lines.len() - 1]);
    let trailer = lines.last().unwrap();
    assert_eq!(trailer["epochs"].as_array().unwrap().len(), 1);
    let mut doc = lines[0].clone();
    doc["epochs"] = trailer["epochs"].clone();
    assert_current_fields(&doc);
}

/// `record --redis A --redis B`: the multi-node document against `#/$defs/nodes`, and each
/// node against the version 1 schema; a node's timeline broken is found at its path.
#[test]
fn several_servers_in_one_timeline_match_the_schema() {
    require_root();
    require_validator();
    let build = testkit::by_label("redis-7.0");
    let servers: Vec<Server> = (0..2).map(|_| Server::start(&build, &[])).collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nodes.json");
    let (a, b) = (servers[0].url(), servers[1].url());
    let mut rec = Recording::start_with(
        &["--redis", &a, "--redis", &b],
        &out,
        &[],
        testkit::recording::ATTRIBUTION_ON,
    );
    rec.wait_for(testkit::recording::ATTRIBUTION_ON);
    for s in &servers {
        s.populate(2_000, "key", 1024);
        let _: String = s.query(&redis::cmd("BGSAVE"));
        s.wait_bgsave_done(Duration::from_secs(60));
    }
    rec.stop();
    match validate_as(&out, "nodes") {
        Ok(report) => eprint!("{report}"),
        Err(report) => panic!("does not match docs/timeline.schema.json:\n{report}"),
    }
    let mut set = read_timeline(&out);
    set["nodes"][1]["timeline"]["events"][0]["kind"] = "no-such-kind".into();
    std::fs::write(&out, set.to_string()).unwrap();
    let report = validate_as(&out, "nodes").expect_err("a broken node is invalid");
    assert!(report.contains("/nodes/1/timeline/events/0"), "{report}");
}

// (e)

/// A cluster node's timeline, JSON and NDJSON, carries the `cluster` maps, as the schema
/// describes them (two nodes recorded at once, one in each format).
#[test]
fn cluster_node_timelines_match_the_schema() {
    require_root();
    require_validator();
    let cluster = Cluster::start(&by_label("redis-7.0"), 3);
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("node0.json");
    let ndjson = dir.path().join("node1.ndjson");
    let recs = [
        Recording::start(&cluster.nodes()[0], &json, &["--interval", "100ms"]),
        Recording::start(
            &cluster.nodes()[1],
            &ndjson,
            &["--interval", "100ms", "--format", "ndjson"],
        ),
    ];
    for rec in recs {
        rec.stop();
    }
    assert_valid(&json, false);
    assert_valid(&ndjson, true);
    let t = read_timeline(&json);
    assert_eq!(
        t["cluster"].as_array().map(Vec::len),
        Some(1),
        "{}",
        t["cluster"]
    );
    let r = must_fail(dir.path(), &t, "cluster_role", |t| {
        t["cluster"][0]["map"]["nodes"][0]["role"] = "boss".into()
    });
    assert!(r.contains("cluster/0/map/nodes/0/role"), "{r}");
    must_fail(dir.path(), &t, "cluster_slot", |t| {
        t["cluster"][0]["map"]["nodes"][0]["slots"][0][1] = 16384.into()
    });
    let text = std::fs::read_to_string(&ndjson).unwrap();
    let trailer: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(trailer["cluster"].as_array().map(Vec::len), Some(1));
    // And a node outside cluster mode writes no `cluster` key (case (b) validates those).
    let server = Server::start(&by_label("redis-7.0"), &[]);
    let plain = dir.path().join("plain.json");
    Recording::start(&server, &plain, &[]).stop();
    assert!(read_timeline(&plain).get("cluster").is_none());
}
