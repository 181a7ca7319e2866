//! Safe to attach to a production Redis: signals stop cleanly, a second signal leaves no
//! partial file, SIGKILL leaves no BPF program behind while Redis keeps serving, and a
//! server that exits mid-trace still gets a complete timeline with its epochs closed.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use testkit::{
    Recording, Server, by_label,
    programs::{
        PROGRAM_NAMES, links, maps_held_by, our_program_types, our_programs_after_exit,
        our_programs_loaded,
    },
    read_timeline, require_root,
};

fn server() -> Server {
    let s = Server::start(&by_label("redis-7.0"), &[]);
    s.populate(20_000, "key", 256);
    s
}

#[test]
fn sigint_and_sigterm_write_a_complete_timeline() {
    require_root();
    let server = server();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let mut con = server.client();
        for i in 0..100 {
            let _: () = redis::cmd("SET")
                .arg(format!("k{i}"))
                .arg("v")
                .query(&mut con)
                .unwrap();
        }
        rec.signal(sig);
        let (status, rest) = rec.exit();
        assert!(status.success(), "signal {sig}: {status:?} {rest}");
        assert!(rest.contains("stopped (signal)"), "{rest}");
        let t = read_timeline(&out);
        assert_eq!(t["end"]["reason"], "signal");
        assert!(t["summary"]["faults"]["first_touch"].is_u64());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the timeline is left: {names:?}");
    }
}

#[test]
fn second_signal_exits_at_once_without_a_partial_file() {
    require_root();
    let server = server();
    // JSON: the destination never appears, the temporary file is removed.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let trace = dir.path().join("trace.json");
    let rec = Recording::start(&server, &out, &["--perfetto", trace.to_str().unwrap()]);
    // Two different signals: two of the same kind sent at once may be merged into one.
    rec.signal(libc::SIGINT);
    rec.signal(libc::SIGTERM);
    let (status, _) = rec.exit();
    assert_eq!(status.code(), Some(130), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");

    // NDJSON: what was written is valid line by line.
    let out = dir.path().join("t.ndjson");
    let rec = Recording::start(&server, &out, &["--format", "ndjson"]);
    let mut con = server.client();
    for i in 0..2000 {
        let _: () = redis::cmd("SET")
            .arg(format!("n{i}"))
            .arg(i)
            .query(&mut con)
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    rec.signal(libc::SIGTERM);
    rec.signal(libc::SIGINT);
    assert_eq!(rec.exit().0.code(), Some(130));
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.ends_with('\n'), "the last line is whole");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines[0]["type"], "header");
    assert!(lines.len() >= 2, "records were streamed before the signal");
}

#[test]
fn sigkill_leaves_nothing_attached_and_redis_keeps_serving() {
    require_root();
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let stop = Arc::new(AtomicBool::new(false));
    let pings = Arc::new(AtomicU64::new(0));
    let pinger = {
        let (stop, pings) = (Arc::clone(&stop), Arc::clone(&pings));
        let mut con = server.client();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let pong: String = redis::cmd("PING").query(&mut con).expect("Redis answers");
                assert_eq!(pong, "PONG");
                pings.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let rec = Recording::start(&server, &out, &[]);
    // Positive control: while it runs, every program is loaded (so the check below can
    // fail).
    let mut loaded = our_programs_loaded();
    loaded.sort();
    loaded.dedup();
    assert_eq!(loaded.len(), PROGRAM_NAMES.len(), "loaded: {loaded:?}");
    let our_links: Vec<u64> = links()
        .into_iter()
        .filter(|l| PROGRAM_NAMES.contains(&l.program.as_str()))
        .map(|l| l.prog_id)
        .collect();
    assert!(our_links.len() >= 15, "the links were found: {our_links:?}");
    let before = pings.load(Ordering::Relaxed);
    rec.signal(libc::SIGKILL);
    rec.exit();
    // The kernel frees programs when the last reference (the killed process's fds) goes.
    let left = our_programs_after_exit();
    assert!(left.is_empty(), "programs left after SIGKILL: {left:?}");
    // A link (raw tracepoint, or the perf event of a tracepoint, uprobe or software
    // event) names its program by id.
    let left: Vec<_> = links()
        .into_iter()
        .filter(|l| our_links.contains(&l.prog_id))
        .collect();
    assert!(left.is_empty(), "links left after SIGKILL: {left:?}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    pinger.join().expect("Redis answered every PING");
    assert!(pings.load(Ordering::Relaxed) > before, "Redis kept serving");
}

/// What the kernel itself lists as attached for the tracer's process: the hooks the
/// README names, fork() timed by a uprobe pair on libc (not a syscall tracepoint), and
/// nothing else; its maps keep the sizes they were created with while Redis is traced.
#[test]
fn the_kernel_lists_only_the_named_hooks_and_fixed_maps() {
    require_root();
    let server = server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let rec = Recording::start(&server, &out, &[]);
    let maps_at_start = maps_held_by(rec.pid());
    let mut linked: Vec<(String, String, Option<String>)> = links()
        .into_iter()
        .filter(|l| PROGRAM_NAMES.contains(&l.program.as_str()))
        .map(|l| (l.kind, l.program, l.tp_name))
        .collect();
    linked.sort();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut expected: Vec<(String, String, Option<String>)> = Vec::new();
    for raw in ["mm_page_alloc", "page_fault_kernel", "page_fault_user"] {
        expected.push(("raw_tracepoint".into(), raw.into(), Some(raw.into())));
    }
    // Tracepoints, uprobes (fork() in libc, client creation and release in Redis) and the
    // completion software events (one per CPU) are perf-event links.
    for (program, n) in [
        ("client_linked", 1),
        ("client_unlinked", 1),
        ("fault_done_major", cpus),
        ("fault_done_minor", cpus),
        ("fork_call_enter", 1),
        ("fork_call_exit", 1),
        ("mm_vmscan_write_folio", 1),
        ("reclaim_begin", 2),
        ("reclaim_end", 2),
        ("rss_stat", 1),
        ("sched_process_exit", 1),
        ("task_newtask", 1),
    ] {
        expected.extend(std::iter::repeat_n(
            ("perf_event".into(), program.into(), None),
            n,
        ));
    }
    expected.sort();
    assert_eq!(linked, expected, "the tracer's links");
    // What each program is: the tracepoint programs are the loader's tracepoint hooks
    // (none a syscall's: the loader's unit test), fork() is timed by uprobes.
    let types = our_program_types();
    let of_type = |t: &str| -> Vec<&str> {
        types
            .iter()
            .filter(|(_, v)| *v == t)
            .map(|(k, _)| k.as_str())
            .collect()
    };
    assert_eq!(
        of_type("tracepoint"),
        [
            "mm_vmscan_write_folio",
            "reclaim_begin",
            "reclaim_end",
            "rss_stat",
            "sched_process_exit",
            "task_newtask"
        ]
    );
    assert_eq!(
        of_type("kprobe"),
        [
            "calibrate_call",
            "client_linked",
            "client_unlinked",
            "fork_call_enter",
            "fork_call_exit"
        ]
    );
    assert_eq!(
        of_type("raw_tracepoint"),
        ["mm_page_alloc", "page_fault_kernel", "page_fault_user"]
    );
    assert_eq!(
        of_type("perf_event"),
        ["fault_done_major", "fault_done_minor"]
    );
    assert_eq!(types.len(), PROGRAM_NAMES.len(), "{types:?}");
    // Traffic and a fork while attached: the maps must not change.
    server.populate(20_000, "after", 512);
    let mut con = server.client();
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    let (status, _) = server.wait_bgsave_done(Duration::from_secs(60));
    assert_eq!(status, "ok");
    let maps_at_end = maps_held_by(rec.pid());
    rec.stop();
    assert_eq!(maps_at_start, maps_at_end, "maps changed while tracing");
    let total: u64 = maps_at_start.iter().map(|m| m.memlock).sum();
    eprintln!("{} maps, {} KiB", maps_at_start.len(), total >> 10);
    assert!(
        maps_at_start.len() >= 10,
        "the maps were found: {maps_at_start:?}"
    );
    assert!(total <= 32 << 20, "maps take {total} bytes");
}

/// Besides its eBPF programs (which never call `bpf_probe_write_user`: the loader's unit
/// test) and `/proc/PID/mem` (opened read-only: `redis::remote`'s unit test), the only
/// ways to write another process's memory are `ptrace` and `process_vm_writev`: the
/// tracer's binary imports neither.
#[test]
fn the_tracer_imports_no_call_that_writes_another_process() {
    use object::{Object, read::ObjectSymbol};
    let bytes = std::fs::read(testkit::recording::tracer()).expect("the tracer's binary");
    let file = object::File::parse(&*bytes).expect("an ELF file");
    let imports: Vec<String> = file
        .dynamic_symbols()
        .filter(|s| s.is_undefined())
        .filter_map(|s| {
            s.name()
                .ok()
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
        .collect();
    // Positive control: the C library's calls are seen here.
    assert!(imports.iter().any(|n| n == "read"), "imports: {imports:?}");
    for forbidden in ["ptrace", "process_vm_writev"] {
        assert!(
            !imports.iter().any(|n| n == forbidden),
            "imports {forbidden}"
        );
    }
}

#[test]
fn redis_exiting_mid_trace_closes_epochs_and_the_timeline() {
    require_root();
    let mut server = server();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let rec = Recording::start(&server, &out, &[]);
    let mut con = server.client();
    server.config_set("rdb-key-save-delay", "1000");
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The server goes away while its fork child is saving.
    let _ = redis::cmd("SHUTDOWN").arg("NOSAVE").query::<()>(&mut con);
    let (status, rest) = rec.exit();
    assert!(status.success(), "{rest}");
    assert!(rest.contains("stopped (target_exit)"), "{rest}");
    assert!(!server.is_running());
    let t = read_timeline(&out);
    assert_eq!(t["end"]["reason"], "target_exit");
    let epochs = t["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1);
    assert_eq!(epochs[0]["reason"], "bgsave");
    assert!(epochs[0]["end_ns"].is_u64(), "epoch closed: {}", epochs[0]);
}

#[test]
fn follow_finds_the_restarted_server_in_a_new_segment() {
    require_root();
    let build = by_label("redis-7.0");
    let first = server();
    let port = first.port;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let mut rec = Recording::start(&first, &out, &["--follow"]);
    let first_pid = first.pid;
    drop(first); // SHUTDOWN NOSAVE, SIGTERM: the server exits
    let mut seen = rec.wait_for("waiting for a server");
    // A new server on the same address: found again, traced with attribution.
    let second = Server::start_on_port(&build, Some(port), &[]);
    second.populate(20_000, "key", 256);
    seen += &rec.wait_for("attribution on");
    assert!(seen.contains(&format!("as pid {}", second.pid)), "{seen}");
    let mut con = second.client();
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    for i in 0..2000 {
        let _: () = redis::cmd("SET")
            .arg(format!("key:{i}"))
            .arg("x".repeat(300))
            .query(&mut con)
            .unwrap();
    }
    second.wait_bgsave_done(Duration::from_secs(60));
    rec.signal(libc::SIGINT);
    let (status, rest) = rec.exit();
    assert!(status.success(), "{seen}{rest}");
    let t = read_timeline(&out);
    let segments = t["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert_eq!(segments[0]["pid"].as_u64(), Some(first_pid as u64));
    assert_eq!(segments[0]["end_reason"], "target_exit");
    assert_eq!(segments[1]["pid"].as_u64(), Some(second.pid as u64));
    assert_eq!(segments[1]["end_reason"], "signal");
    assert_eq!(t["end"]["reason"], "signal");
    // The second server's BGSAVE is an epoch of the second server, labelled.
    let epochs = t["epochs"].as_array().unwrap();
    let e = epochs.last().expect("an epoch");
    assert_eq!(e["parent_pid"].as_u64(), Some(second.pid as u64));
    assert_eq!(e["reason"], "bgsave");
    // Faults of the second server are attributed to its commands.
    let set_faults = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["pid"].as_u64() == Some(second.pid as u64) && f["activity"] == "SET")
        .count();
    assert!(set_faults > 0, "no SET faults of the second server");
}

/// `--follow` and a reused pid: the server exits and a new one starts on the same
/// address with the same pid. It is a new process (its start time differs), so it is a
/// new segment, traced with attribution, and never mistaken for the old one.
#[test]
fn follow_takes_a_new_server_with_the_old_pid_as_a_new_segment() {
    require_root();
    let build = by_label("redis-7.0");
    let first = server();
    let (port, pid) = (first.port, first.pid);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let mut rec = Recording::start(&first, &out, &["--follow"]);
    drop(first);
    let mut seen = rec.wait_for("waiting for a server");
    let second = Server::start_as_pid(&build, port, pid);
    seen += &rec.wait_for("attribution on");
    assert!(seen.contains(&format!("as pid {pid}")), "{seen}");
    let mut con = second.client();
    testkit::commands::setrange(&mut con, b"after-reuse", (1 << 20) - 1);
    rec.signal(libc::SIGINT);
    let (status, rest) = rec.exit();
    assert!(status.success(), "{seen}{rest}");
    let t = read_timeline(&out);
    let segments = t["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert_eq!(segments[0]["pid"], segments[1]["pid"]);
    assert_eq!(segments[0]["end_reason"], "target_exit");
    assert_ne!(
        segments[0]["start_time_ticks"], segments[1]["start_time_ticks"],
        "{segments:?}"
    );
    assert_eq!(segments[1]["end_reason"], "signal");
    // The new process's 1 MiB zero-fill is attributed to its SETRANGE.
    let setrange = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["activity"] == "SETRANGE" && f["key"] == "after-reuse")
        .count();
    assert!(
        setrange >= 192,
        "{setrange} SETRANGE faults of the new process"
    );
}

/// `INFO commandstats` as `command -> calls`, read over a bare socket so that reading it
/// sends nothing but `AUTH` (with `password`) and this `INFO`.
fn command_calls(port: u16, password: Option<&str>) -> BTreeMap<String, u64> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    if let Some(pw) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len());
        sock.write_all(auth.as_bytes()).unwrap();
        while !reply.ends_with(b"\r\n") {
            let n = sock.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed after AUTH");
            reply.extend_from_slice(&buf[..n]);
        }
        assert_eq!(reply, b"+OK\r\n", "{}", String::from_utf8_lossy(&reply));
        reply.clear();
    }
    sock.write_all(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .unwrap();
    // `$LEN\r\n` then LEN bytes and `\r\n`.
    loop {
        let n = sock.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&reply)
        );
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, body)) = text.split_once("\r\n") {
            let len: usize = head.trim_start_matches('$').parse().unwrap();
            if body.len() >= len + 2 {
                return testkit::commands::parse_info(&body[..len])
                    .into_iter()
                    .filter_map(|(name, stats)| {
                        let command = name.strip_prefix("cmdstat_")?.to_string();
                        let calls = stats
                            .split(',')
                            .find_map(|kv| kv.strip_prefix("calls="))?
                            .parse()
                            .ok()?;
                        Some((command, calls))
                    })
                    .collect();
            }
        }
    }
}

/// Sent besides when the target URL has a password and a database.
const WITH_URL: &[&str] = &["auth", "select"];

/// The commands the README lists for a run without password or database, as Redis
/// counts them (6.2 counts subcommands under their container).
const SENT: &[&str] = &[
    "info",
    "ping",
    "client",
    "client|id",
    "client|unblock",
    "blpop",
    "multi",
    "exec",
];

/// The tracer sends only the commands the README lists, and none writes: over a whole
/// run (discovery, INFO samples, stop) on every build, `INFO commandstats` grows only by
/// them (and by the test's own first `INFO`) and the data set's digest is unchanged.
#[test]
fn the_tracer_sends_only_the_listed_commands_and_writes_nothing() {
    require_root();
    for build in testkit::attribution_builds() {
        commands_sent(&build, None);
    }
}

/// The same with a password and a database in the target URL: `AUTH` and `SELECT` join
/// the commands sent (each connection authenticates and selects), nothing else does.
#[test]
fn with_a_password_and_a_database_only_auth_and_select_are_added() {
    require_root();
    for build in testkit::attribution_builds() {
        commands_sent(&build, Some("pw-of-the-test"));
    }
}

/// One run against `build`, with `password` set on the server and database 3 in the
/// target URL when given, checked as the two tests above say.
fn commands_sent(build: &testkit::Build, password: Option<&str>) {
    let label = &build.label;
    let server = Server::start(build, &[]);
    server.populate(5_000, "key", 128);
    let url = match password {
        Some(pw) => {
            server.config_set("requirepass", pw);
            format!("redis://:{pw}@127.0.0.1:{}/3", server.port)
        }
        None => format!("redis://{}", server.url()),
    };
    // The whole data set's digest (every database), over the URL's own credentials.
    let digest = || -> String {
        let mut con = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .unwrap();
        redis::cmd("DEBUG").arg("DIGEST").query(&mut con).unwrap()
    };
    let before_digest = digest();
    let before = command_calls(server.port, password);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let rec = Recording::start_with(
        &["--redis", &url],
        &out,
        &["--interval", "100ms"],
        testkit::recording::ATTRIBUTION_ON,
    );
    std::thread::sleep(Duration::from_millis(500));
    rec.stop();
    let after = command_calls(server.port, password);
    let grown: BTreeMap<&String, u64> = after
        .iter()
        .map(|(c, n)| (c, n - before.get(c).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    let allowed = |c: &str| SENT.contains(&c) || (password.is_some() && WITH_URL.contains(&c));
    let others: Vec<&&String> = grown.keys().filter(|c| !allowed(c.as_str())).collect();
    assert!(
        others.is_empty(),
        "[{label}] commands the README does not list: {grown:?}"
    );
    let calls = |c: &str| grown.get(&c.to_string()).copied().unwrap_or(0);
    assert!(calls("blpop") >= 2, "[{label}] {grown:?}");
    assert!(calls("info") >= 3, "[{label}] {grown:?}");
    if password.is_some() {
        // The test's own second AUTH is one of them.
        assert!(calls("auth") >= 2, "[{label}] {grown:?}");
        assert!(calls("select") >= 1, "[{label}] {grown:?}");
    }
    assert_eq!(digest(), before_digest, "[{label}] the data set changed");
}
