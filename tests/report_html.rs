//! `redis-memtrace report` end to end: a real Redis 7.0 BGSAVE under writes, recorded by
//! the real tracer; the text report is checked number by number against the timeline
//! (and the findings against the host's own settings); the HTML report is opened in
//! headless Chromium, which must run its script, draw every chart without an error and
//! paint a non-blank page. Bad timelines give one error line, never a panic.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use testkit::{
    Guarded, Recording, Server, by_label, fails_in_one_line, names_in, read_timeline,
    recording::ATTRIBUTION_ON, require_root, tracer,
};

const CHROMIUM: &str = "/usr/bin/chromium";
const MIB: f64 = 1024.0 * 1024.0;

/// Runs `cmd`, killing it after `limit` (a hung browser must fail the test, not hang it).
fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut child = Guarded::kill_on_drop(child);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "{cmd:?} still running after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

/// Headless Chromium with a throwaway profile inside `profile`.
fn chromium(profile: &Path, args: &[&str], page: &Path) -> Output {
    let out = run_with_timeout(
        Command::new(CHROMIUM)
            .args(["--no-sandbox", "--headless=new", "--disable-gpu"])
            .args([
                "--no-first-run",
                "--disable-extensions",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(format!("file://{}", page.display())),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24, "PNG too short: {} bytes", png.len());
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&png[16..20]), be(&png[20..24]))
}

/// `data-NAME="VALUE"` of the `<body>` start tag in a dumped DOM.
fn body_attr(dom: &str, name: &str) -> Option<String> {
    let start = dom.find("<body")?;
    let tag = &dom[start..start + dom[start..].find('>')?];
    let key = format!("data-{name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(tag[at..at + tag[at..].find('"')?].to_string())
}

/// The report's duration format (same rules as `report::format::duration_ns`).
fn fmt_duration(ns: u64) -> String {
    let f = ns as f64;
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} us", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", f / 1e6),
        _ => format!("{:.2} s", f / 1e9),
    }
}

fn mib(pages: u64) -> String {
    format!("{:.1} MiB", pages as f64 * 4096.0 / MIB)
}

/// RFC 3339 UTC with milliseconds, computed by `date(1)` (independent of the tracer).
fn rfc3339_by_date(unix_ns: u128) -> String {
    let secs = unix_ns / 1_000_000_000;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    assert!(out.status.success());
    format!(
        "{}.{:03}Z",
        String::from_utf8_lossy(&out.stdout).trim(),
        unix_ns % 1_000_000_000 / 1_000_000
    )
}

/// The rows of the table under `title` (after its header and dashes, up to a blank line).
fn table_rows<'a>(report: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = report.lines().skip_while(|l| *l != title);
    assert_eq!(
        lines.next(),
        Some(title),
        "no {title:?} section in\n{report}"
    );
    let _header = lines.next();
    let dashes = lines.next().unwrap_or_default();
    if !dashes.trim().starts_with('-') || !dashes.chars().all(|c| c == '-' || c == ' ') {
        // An empty table: a single message line, no header.
        return Vec::new();
    }
    // Rows end at the blank line, or at the note indented under the table.
    lines
        .take_while(|l| !l.is_empty() && !l.starts_with("    "))
        .collect()
}

fn cells(row: &str) -> Vec<&str> {
    row.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn report_of_a_real_bgsave_matches_the_timeline_and_renders_in_chromium() {
    require_root();
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} missing: apt-get install chromium"
    );
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(40_000, "key", 1024);
    // A few seconds of child life (a sleep per key saved), so samples land inside the
    // epoch and the writes below copy pages while the child lives.
    server.config_set("rdb-key-save-delay", "20");
    let dir = tempfile::tempdir().unwrap();
    let timeline = dir.path().join("timeline.json");
    // Stopped by SIGINT once the child has exited; --duration only caps a stuck run.
    let rec = Recording::start_with(
        &["--pid", &server.pid.to_string()],
        &timeline,
        &["--duration", "120s", "--interval", "200ms"],
        ATTRIBUTION_ON,
    );
    std::thread::sleep(Duration::from_millis(1000));
    let mut con = server.client();
    let _: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    let mut pipe = redis::pipe();
    let value = vec![b'w'; 1024];
    for i in (0..40_000).step_by(5) {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(&value).ignore();
    }
    pipe.query::<()>(&mut con).unwrap();
    let persistence: String = redis::cmd("INFO")
        .arg("persistence")
        .query(&mut con)
        .unwrap();
    assert!(
        persistence.contains("rdb_bgsave_in_progress:1"),
        "the SETs must land while the child lives"
    );
    let (status, _) = server.wait_bgsave_done(Duration::from_secs(60));
    assert_eq!(status, "ok", "{}", server.log());
    std::thread::sleep(Duration::from_millis(600));
    rec.stop();
    let t = read_timeline(&timeline);

    // The text report.
    let html = dir.path().join("report.html");
    let out = run_with_timeout(
        Command::new(tracer())
            .arg("report")
            .arg(&timeline)
            .arg("--html")
            .arg(&html)
            .args(["--top", "5"]),
        Duration::from_secs(60),
    );
    let report = String::from_utf8(out.stdout).expect("report is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "report failed: {stderr}");
    assert!(stderr.contains("HTML report written to"), "{stderr}");
    assert!(!report.contains('\x1b'), "colour codes in a pipe");
    eprintln!("{report}");

    // Header.
    assert!(report.contains(&format!(
        "  target    pid {} (redis-server), /usr/bin/redis-",
        server.pid
    )));
    assert!(report.contains(&format!(
        "  redis     {} {}, master, port {}",
        server.build.product.name(),
        server.build.version,
        server.port
    )));
    let events = t["events"].as_array().unwrap().len();
    let lost = t["lost_events"].as_u64().unwrap();
    assert!(
        report.contains(&format!(
            "  events    {events} recorded, {lost} lost, attribution on"
        )),
        "events line"
    );
    let start_wall = t["run"]["wall_start_unix_ns"].as_u64().unwrap() as u128;
    let mono0 = t["run"]["monotonic_start_ns"].as_u64().unwrap();
    let duration = t["end"]["monotonic_end_ns"].as_u64().unwrap() - mono0;
    assert!(report.contains(&format!(
        "  run       {}, {} (ended: signal)",
        rfc3339_by_date(start_wall),
        fmt_duration(duration)
    )));
    assert!(report.contains(&format!(
        "  kernel    {}",
        t["run"]["kernel_release"].as_str().unwrap()
    )));

    // Epochs: exactly the one BGSAVE, with the timeline's numbers.
    let epochs = t["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    let e = &epochs[0];
    assert_eq!(e["reason"], "bgsave");
    let rows = table_rows(&report, "Fork epochs");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let c = cells(rows[0]);
    assert_eq!(c[0], "0");
    assert_eq!(c[1], "bgsave");
    assert_eq!(c[2], e["child_pid"].as_u64().unwrap().to_string());
    let start_ns = e["start_ns"].as_u64().unwrap();
    assert_eq!(
        c[3],
        rfc3339_by_date(start_wall + (start_ns - mono0) as u128)
    );
    let end_ns = e["end_ns"].as_u64().unwrap();
    assert_eq!(e["end_reason"], "exit", "the child exited within the run");
    assert_eq!(c[4], fmt_duration(end_ns - start_ns));
    let fork_ns = e["fork_call_ns"]
        .as_u64()
        .or(e["fork_duration_ns"].as_u64())
        .expect("a fork time");
    assert_eq!(c[5], fmt_duration(fork_ns));
    let redis_fork = e["redis"]["latest_fork_usec"].as_u64().unwrap();
    assert_eq!(c[6], fmt_duration(redis_fork * 1000));
    let parent_cow = e["faults"]["parent"]["cow_copy"].as_u64().unwrap();
    let child_cow = e["faults"]["child"]["cow_copy"].as_u64().unwrap();
    assert!(
        parent_cow > 1000,
        "writes during BGSAVE copy pages: {parent_cow}"
    );
    assert_eq!(c[7], mib(parent_cow), "CoW parent MiB");
    assert_eq!(c[8], mib(child_cow), "CoW child MiB");
    // Peak parent+child RSS among the samples of the epoch, against RAM.
    let child_pid = e["child_pid"].as_u64().unwrap();
    let peak = t["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| (start_ns..=end_ns).contains(&s["ts_ns"].as_u64().unwrap()))
        .map(|s| {
            let child = if s["child"][0].as_u64() == Some(child_pid) {
                s["child"][1]["rss_bytes"].as_u64().unwrap_or(0)
            } else {
                0
            };
            s["server"]["rss_bytes"].as_u64().unwrap() + child
        })
        .max()
        .expect("samples inside the epoch");
    let ram = t["run"]["host"]["mem_total_bytes"].as_u64().unwrap();
    assert_eq!(
        c[11],
        format!("{:.1}%", peak as f64 * 100.0 / ram as f64),
        "peak {peak} of RAM {ram}"
    );

    // Top commands, keys and slots: the timeline's rows, at most --top 5.
    let attribution = &t["summary"]["attribution"];
    let set = attribution["by_activity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["activity"] == "SET")
        .expect("SET faulted");
    let rows = table_rows(
        &report,
        "Top commands and activities by copy-on-write (cow_copy)",
    );
    assert!(!rows.is_empty() && rows.len() <= 5);
    let set_row = rows
        .iter()
        .map(|r| cells(r))
        .find(|c| c[0] == "SET")
        .expect("SET row");
    assert_eq!(
        set_row[2],
        set["faults"]["cow_copy"].as_u64().unwrap().to_string()
    );
    let keys = attribution["top_keys_cow"].as_array().unwrap();
    let rows = table_rows(&report, "Top keys by copy-on-write (cow_copy)");
    assert_eq!(rows.len(), keys.len().min(5));
    let first = cells(rows[0]);
    assert_eq!(first[1], keys[0]["key"].as_str().unwrap());
    assert_eq!(first[2], keys[0]["pages"].as_u64().unwrap().to_string());
    assert_eq!(first[3], mib(keys[0]["pages"].as_u64().unwrap()));
    assert!(first[1].starts_with("key:"), "{first:?}");
    let slots = attribution["top_slots_cow"].as_array().unwrap();
    let rows = table_rows(&report, "Top slots by copy-on-write (cow_copy)");
    assert_eq!(rows.len(), slots.len().min(5));
    assert_eq!(
        cells(rows[0])[1],
        slots[0]["slot"].as_u64().unwrap().to_string()
    );
    assert_eq!(
        cells(rows[0])[2],
        slots[0]["pages"].as_u64().unwrap().to_string()
    );

    // Swap section.
    let swap_in = t["summary"]["faults"]["swap_in"].as_u64().unwrap();
    assert!(report.contains(&format!("  swap-in faults  {swap_in} ({})", mib(swap_in))));

    // Findings follow this host's real settings.
    let has = |title: &str| {
        report
            .lines()
            .any(|l| l.contains("] ") && l.contains(title))
    };
    let overcommit = sysctl("/proc/sys/vm/overcommit_memory");
    assert_eq!(
        has(&format!("vm.overcommit_memory is {overcommit}, not 1")),
        overcommit != "1",
        "overcommit {overcommit}"
    );
    if overcommit != "1" {
        assert!(report.contains("fix: sysctl vm.overcommit_memory=1"));
    }
    let thp = sysctl("/sys/kernel/mm/transparent_hugepage/enabled");
    let huge_in_samples = t["samples"].as_array().unwrap().iter().any(|s| {
        s["server"]["anon_huge_bytes"].as_u64().unwrap_or(0) > 0
            || s["child"][1]["anon_huge_bytes"].as_u64().unwrap_or(0) > 0
    });
    let thp_expected = thp.contains("[always]")
        || huge_in_samples
        || t["summary"]["huge_faults"].as_u64().unwrap_or(0) > 0;
    assert_eq!(
        has("Transparent huge pages are enabled"),
        thp_expected,
        "THP {thp}"
    );
    let swapped = swap_in > 0
        || t["samples"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["server"]["swap_bytes"].as_u64().unwrap_or(0) > 0);
    assert_eq!(has("Redis pages are in swap"), swapped);
    let untracked = t["kernel"]["threads_full"].as_u64().unwrap_or(0);
    assert_eq!(has("events were lost"), lost > 0);
    assert_eq!(has("threads were not traced"), lost == 0 && untracked > 0);
    // Exactly the expected findings, no others.
    let expected = [
        overcommit != "1",
        thp_expected,
        swapped,
        lost > 0 || untracked > 0,
    ]
    .iter()
    .filter(|b| **b)
    .count();
    assert!(
        report.contains(&format!("\nFindings ({expected})\n")),
        "expected {expected} findings"
    );

    // The HTML file: private, self-contained.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&html).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let page = std::fs::read_to_string(&html).unwrap();
    for (i, _) in page.match_indices("://") {
        assert_eq!(
            &page[i.saturating_sub(4)..i + 22],
            "http://www.w3.org/2000/svg",
            "only the SVG namespace may look like a URL"
        );
    }
    let expected_charts = 2 + [
        "top_keys_cow",
        "top_slots_cow",
        "top_keys_swap_in",
        "top_slots_swap_in",
    ]
    .iter()
    .filter(|k| attribution[**k].as_array().is_some_and(|a| !a.is_empty()))
    .count();
    assert!(expected_charts >= 4, "CoW keys and slots charts expected");

    // Chromium runs the script: every chart drawn, no error.
    let profile = tempfile::tempdir().unwrap();
    let dom = chromium(profile.path(), &["--dump-dom"], &html);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(body_attr(&dom, "error"), None, "script error in the page");
    assert_eq!(
        body_attr(&dom, "rendered").as_deref(),
        Some(expected_charts.to_string().as_str()),
        "charts drawn"
    );
    assert_eq!(
        body_attr(&dom, "charts").as_deref(),
        Some(expected_charts.to_string().as_str())
    );
    assert_eq!(
        dom.matches("<figure class=\"chart\"").count(),
        expected_charts
    );
    assert!(dom.matches("<path ").count() >= 4, "lines drawn");
    assert!(dom.contains("class=\"epoch\""), "the fork epoch is shaded");
    assert!(
        dom.contains(keys[0]["key"].as_str().unwrap()),
        "top key in the DOM"
    );

    // The screenshot is a real page, not a blank one.
    let shot = dir.path().join("report.png");
    let blank_html = dir.path().join("blank.html");
    std::fs::write(&blank_html, "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank = dir.path().join("blank.png");
    for (page, png) in [(&html, &shot), (&blank_html, &blank)] {
        chromium(
            profile.path(),
            &[
                &format!("--screenshot={}", png.display()),
                "--window-size=1400,2000",
            ],
            page,
        );
    }
    let shot_bytes = std::fs::read(&shot).expect("screenshot written");
    let blank_bytes = std::fs::read(&blank).expect("blank screenshot written");
    assert_eq!(png_size(&shot_bytes), (1400, 2000));
    assert_eq!(png_size(&blank_bytes), (1400, 2000));
    eprintln!(
        "screenshot {} bytes, blank page {} bytes",
        shot_bytes.len(),
        blank_bytes.len()
    );
    assert!(
        shot_bytes.len() > 10 * blank_bytes.len() && shot_bytes.len() > 50_000,
        "the report screenshot ({} bytes) looks blank (blank page: {} bytes)",
        shot_bytes.len(),
        blank_bytes.len()
    );
    if let Some(keep) = std::env::var_os("MEMTRACE_KEEP_REPORT") {
        let keep = PathBuf::from(keep);
        let _ = std::fs::copy(&html, keep.join("report.html"));
        let _ = std::fs::copy(&shot, keep.join("report.png"));
        let _ = std::fs::copy(&timeline, keep.join("timeline.json"));
    }
}

/// The `report` rows of docs/robustness.md, as printed there (the files named in them,
/// in the working folder), each also with `--html`; an array as a timeline; and the
/// unwritable `--html /nonexistent/r.html` row.
#[test]
fn bad_timelines_give_one_error_line() {
    assert!(tracer().exists(), "{} missing", tracer().display());
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let good = r#"{"schema_version":1,"run":{"monotonic_start_ns":1,"wall_start_unix_ns":2},"target":{"pid":1},"events":[],"epochs":[],"summary":{}}"#;
    let v3 = good.replace(r#""schema_version":1"#, r#""schema_version":3"#);
    let cases: [(&str, &[u8], &str); 6] = [
        (
            "empty.json",
            b"",
            "redis-memtrace: error: empty.json is empty: not a redis-memtrace timeline",
        ),
        (
            "trunc.json",
            &good.as_bytes()[..28],
            "redis-memtrace: error: trunc.json is truncated at byte 28: the timeline is incomplete",
        ),
        (
            "notjson.json",
            b"hello, world\n",
            "redis-memtrace: error: notjson.json is not a redis-memtrace timeline: expected \
             value at line 1 column 1",
        ),
        (
            "v3.json",
            v3.as_bytes(),
            "redis-memtrace: error: v3.json has schema_version 3; this redis-memtrace reads \
             versions 1 (one server) and 2 (several, from merge)",
        ),
        (
            "binary.json",
            b"\x7fELF\x02\x01\x01\x00\xff\xfe",
            "redis-memtrace: error: binary.json is not a redis-memtrace timeline: not UTF-8 text",
        ),
        (
            "array.json",
            b"[1, 2, 3]",
            "redis-memtrace: error: array.json is not a redis-memtrace timeline: the top level \
             is not an object",
        ),
    ];
    for (name, bytes, line) in cases {
        std::fs::write(cwd.join(name), bytes).unwrap();
        fails_in_one_line(cwd, &["report", name], line);
        let html = format!("{name}.html");
        fails_in_one_line(cwd, &["report", name, "--html", &html], line);
        assert!(!cwd.join(&html).exists(), "{name}: HTML written");
    }
    fails_in_one_line(
        cwd,
        &["report", "missing.json"],
        "redis-memtrace: error: cannot read missing.json: No such file or directory (os error \
         2)",
    );

    // A valid minimal timeline reports; an unwritable HTML destination is one line.
    std::fs::write(cwd.join("timeline.json"), good).unwrap();
    let out = Command::new(tracer())
        .args(["report", "timeline.json"])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Fork epochs"));
    let missing = Path::new("/nonexistent");
    assert!(
        std::fs::symlink_metadata(missing).is_err(),
        "{} exists on this machine: the case needs it absent",
        missing.display()
    );
    fails_in_one_line(
        cwd,
        &["report", "timeline.json", "--html", "/nonexistent/r.html"],
        "redis-memtrace: error: cannot write the HTML report to /nonexistent/r.html: No such \
         file or directory (os error 2)",
    );
    assert!(
        std::fs::symlink_metadata(missing).is_err(),
        "{} was created",
        missing.display()
    );
    // Only the files this test wrote are left (no HTML, no temporary file).
    assert_eq!(
        names_in(cwd),
        [
            "array.json",
            "binary.json",
            "empty.json",
            "notjson.json",
            "timeline.json",
            "trunc.json",
            "v3.json"
        ]
    );
}
