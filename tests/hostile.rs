//! Hostile conditions, each with its defined outcome: the server or its fork child killed
//! while the child saves, the tracer starved of ring-buffer space, the output filesystem
//! full, and two tracers on one server at once.
//!
//! Needs root. Run serially (`--test-threads=1`, as `cargo xtask test` does).

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{PausedGenerator, fault_gen};
use serde_json::Value;
use testkit::{
    Recording, Server, by_label,
    fork_child::bgsave_stopped,
    process::{child_of, signal},
    read_timeline,
    recording::TRACING_PID,
    require_root, tracer,
};

/// Keys of the saving server; with `rdb-key-save-delay` 1000 us its child saves for
/// about 20 s, so the test decides how the save ends.
const KEYS: u64 = 20_000;

/// A Redis 7.0 server with [`KEYS`] keys whose BGSAVE child lives about 20 s.
fn saving_server() -> (Server, redis::Connection) {
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(KEYS, "key", 256);
    let con = server.client();
    server.config_set("rdb-key-save-delay", "1000");
    (server, con)
}

/// BGSAVE; the child's pid once it exists.
fn bgsave(server: &Server, con: &mut redis::Connection) -> u32 {
    let reply: String = redis::cmd("BGSAVE").query(con).unwrap();
    assert!(reply.contains("Background saving started"), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(kid) = child_of(server.pid) {
            return kid;
        }
        assert!(Instant::now() < deadline, "no BGSAVE child appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Overwrites keys `from..to` (existing before the fork: each copies a page or two).
fn overwrite(con: &mut redis::Connection, from: u64, to: u64) {
    for i in from..to {
        let _: () = redis::cmd("SET")
            .arg(format!("key:{i}"))
            .arg("y".repeat(256))
            .query(con)
            .unwrap();
    }
}

/// Waits until `pid` is gone (reaped by whoever is its parent now).
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// One fault as [`fault_differences`] compares it: tid, address, error code, kind, and
/// entry time (which is not compared: two tracers stamp the same fault differently).
type Fault = (u64, u64, u64, String, u64);

/// The faults of one timeline that the other has not, each as a [`Fault`]: what tells
/// two tracers' disagreement apart (a missed completion, an evidence hook skipped, a
/// boundary).
fn fault_differences(a: &Value, b: &Value) -> String {
    let faults = |t: &Value| -> Vec<Fault> {
        let mut v: Vec<_> = t["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e.get("addr").is_some() && e.get("epoch").is_some())
            .map(|e| {
                let n = |k: &str| e[k].as_u64().unwrap_or(0);
                let kind = e["kind"].as_str().unwrap_or("?").to_string();
                (n("tid"), n("addr"), n("error_code"), kind, n("ts_ns"))
            })
            .collect();
        v.sort();
        v
    };
    let (fa, fb) = (faults(a), faults(b));
    let key = |f: &Fault| (f.0, f.1, f.2, f.3.clone());
    let only = |x: &[Fault], y: &[Fault]| {
        let mut rest: Vec<_> = y.iter().map(key).collect();
        x.iter()
            .filter(|f| match rest.iter().position(|r| *r == key(f)) {
                Some(i) => {
                    rest.swap_remove(i);
                    false
                }
                None => true,
            })
            .map(|f| format!("{f:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "only in the first [{}]; only in the second [{}]",
        only(&fa, &fb),
        only(&fb, &fa)
    )
}

fn epochs(t: &Value) -> &Vec<Value> {
    t["epochs"].as_array().expect("epochs array")
}

#[test]
fn redis_killed_while_its_child_saves_ends_the_run_with_the_epoch_closed() {
    require_root();
    let (mut server, mut con) = saving_server();
    // The child reports its progress to the parent after its first key and then every
    // 1,024 keys, and exits when that write fails (the parent is gone): at 1 ms per key
    // that can be a second after the kill, inside the run (seen once). At 20 ms per key
    // the next report is 20 s away, once the first one was made: a child starved of the
    // CPU on this 2-CPU machine until after the kill made its first report then and
    // exited (seen once in a fresh-clone run), so the kill waits for Redis to have it
    // (INFO's `current_save_keys_processed`).
    server.config_set("rdb-key-save-delay", "20000");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let rec = Recording::start(&server, &out, &[]);
    let kid = bgsave(&server, &mut con);
    overwrite(&mut con, 0, 2_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.info_u64("persistence", "current_save_keys_processed") == 0 {
        assert!(
            Instant::now() < deadline,
            "no progress report from child {kid}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.kill();
    let (status, stderr) = rec.exit();
    // The orphaned child saves on (its writes copy nothing now): the test ends it.
    let orphan_alive = Path::new(&format!("/proc/{kid}")).exists();
    signal(kid, libc::SIGKILL);
    assert!(
        wait_gone(kid, Duration::from_secs(10)),
        "child {kid} still there"
    );
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("stopped (target_exit)"), "{stderr}");
    assert!(orphan_alive, "the child outlives a SIGKILLed parent");
    let t = read_timeline(&out);
    assert_eq!(t["end"]["reason"], "target_exit");
    assert_eq!(t["lost_events"], 0);
    let e = &epochs(&t)[..];
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0]["child_pid"].as_u64(), Some(u64::from(kid)));
    assert_eq!(e[0]["reason"], "bgsave");
    // The run ended with the server, the child still alive: closed at the run's end.
    assert_eq!(e[0]["end_reason"], "trace_end", "{}", e[0]);
    assert!(e[0]["end_ns"].is_u64());
    let cow = e[0]["faults"]["parent"]["cow_copy"].as_u64().unwrap();
    // 256-byte values, about 14 to a page: 2,000 of them fill about 140 pages.
    assert!(
        cow >= 100,
        "2,000 overwrites during the save copied {cow} pages"
    );
}

#[test]
fn a_fork_child_killed_mid_save_closes_its_epoch_at_its_death() {
    require_root();
    let (server, mut con) = saving_server();
    // SIGUSR1 is Redis's own way to end a save (the last status stays "ok"); SIGKILL is
    // a crash ("err").
    for (sig, status) in [(libc::SIGUSR1, "ok"), (libc::SIGKILL, "err")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("t.json");
        let rec = Recording::start(&server, &out, &[]);
        let kid = bgsave(&server, &mut con);
        overwrite(&mut con, 0, 1_000);
        assert!(signal(kid, sig));
        server.wait_bgsave_done(Duration::from_secs(30));
        assert_eq!(
            server.info("persistence")["rdb_last_bgsave_status"],
            status,
            "Redis's own verdict on a child ended by signal {sig}"
        );
        // After the child's death the same keys are written again: no copy, no epoch.
        overwrite(&mut con, 0, 1_000);
        rec.stop();
        let t = read_timeline(&out);
        assert_eq!(t["lost_events"], 0);
        let e = &epochs(&t)[..];
        assert_eq!(e.len(), 1, "signal {sig}: {e:?}");
        assert_eq!(e[0]["child_pid"].as_u64(), Some(u64::from(kid)));
        assert_eq!(e[0]["reason"], "bgsave");
        assert_eq!(e[0]["end_reason"], "exit", "signal {sig}: {}", e[0]);
        let end = e[0]["end_ns"].as_u64().unwrap();
        let cow = e[0]["faults"]["parent"]["cow_copy"].as_u64().unwrap();
        assert!(
            cow >= 50,
            "signal {sig}: 1,000 overwrites copied {cow} pages"
        );
        // After the child's exit event its memory is still released for a moment, and
        // the parent's writes there still copy: those copies are the epoch's, and the
        // only faults after its end charged to it. Then the pages the parent had not
        // written yet are its own again (reuses, no epoch).
        let (mut late, mut reuses) = (0, 0);
        for f in t["events"].as_array().unwrap() {
            let Some(ts) = f["ts_ns"].as_u64() else {
                continue;
            };
            if f["kind"] == "cow_copy" {
                assert_eq!(f["epoch"], 0, "signal {sig}: a copy outside the epoch: {f}");
            }
            if ts > end && f["epoch"] == 0 {
                assert_eq!(f["kind"], "cow_copy", "signal {sig}: {f}");
                late += 1;
            }
            if ts > end && f["pid"].as_u64() == Some(u64::from(server.pid)) {
                reuses += u32::from(f["kind"] == "wp_reuse");
            }
        }
        eprintln!("signal {sig}: {cow} copies, {late} after the exit event, then {reuses} reuses");
        assert!(
            reuses > 0,
            "signal {sig}: no write-protect reuse after the child died"
        );
    }
}

/// The tracer starved: stopped (SIGSTOP) while the generator takes 60,000 faults into a
/// 1 MiB ring buffer (room for about 20,000), then stopped for good by SIGINT before the
/// generator runs again. Every fault of the generator in that window is either recorded
/// or counted lost: recorded + lost equals the kernel's own count of its faults.
#[test]
fn a_starved_tracer_counts_exactly_what_it_lost() {
    require_root();
    const PAGES: u64 = 60_000;
    let mut paused = PausedGenerator::start(&["--pages", &PAGES.to_string(), "--no-fork"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let rec = Recording::start_with(
        &["--pid", &paused.pid().to_string()],
        &out,
        &["--ring-buffer-mb", "1"],
        TRACING_PID,
    );
    let before = paused.kernel_faults();
    assert!(signal(rec.pid(), libc::SIGSTOP));
    paused.touch();
    let taken = paused.kernel_faults() - before;
    // The generator waits, so nothing more happens until the tracer has ended.
    assert!(signal(rec.pid(), libc::SIGINT));
    assert!(signal(rec.pid(), libc::SIGCONT));
    let (status, stderr) = rec.exit();
    let region = paused.finish();
    assert!(status.success(), "{stderr}");
    let t = read_timeline(&out);
    let faults_of = |pred: &dyn Fn(&Value) -> bool| {
        t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["addr"].is_u64() && pred(e))
            .count() as u64
    };
    let recorded = faults_of(&|_| true);
    let in_region = faults_of(&|e| {
        e["kind"] == "first_touch"
            && e["addr"]
                .as_u64()
                .is_some_and(|a| (region.0..region.1).contains(&a))
    });
    let lost = t["lost_events"].as_u64().unwrap();
    eprintln!("{taken} faults ({PAGES} in the region): {recorded} recorded, {lost} lost");
    assert!(taken >= PAGES, "the kernel counted {taken}");
    assert!(
        lost > 0 && in_region > 0,
        "{in_region} recorded, {lost} lost"
    );
    assert_eq!(recorded + lost, taken, "{stderr}");
    assert!(stderr.contains(&format!("{lost} lost")), "{stderr}");
    let warned = t["warnings"].as_array().unwrap().iter().any(|w| {
        w.as_str().is_some_and(|w| {
            w.contains(&format!("{lost} events lost")) && w.contains("lower bounds")
        })
    });
    assert!(warned, "no lower-bound warning: {}", t["warnings"]);
    let counted = t["summary"]["faults"]["first_touch"].as_u64().unwrap();
    assert!(
        counted >= in_region,
        "summary {counted} < {in_region} recorded"
    );
}

/// A size-limited tmpfs mounted on a fresh folder, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "memtrace-full",
            ])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        SmallFs { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn entries(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_output_filesystem_is_one_error_line_and_no_partial_file() {
    require_root();
    for format in ["json", "ndjson"] {
        let fs = SmallFs::mount("4m");
        let out = fs.path().join(format!("t.{format}"));
        let output = Command::new(tracer())
            .args(["record", "-q", "--format", format, "-o"])
            .arg(&out)
            .arg("--")
            .arg(fault_gen())
            .args(["--pages", "50000", "--no-fork"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{format}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{format}: {stderr}");
        assert!(
            lines[0].starts_with("redis-memtrace: error: ") && lines[0].contains("No space left"),
            "{format}: {stderr}"
        );
        if format == "json" {
            // The document is written to a temporary name and renamed when complete.
            assert_eq!(fs.entries(), Vec::<String>::new(), "files left");
        } else {
            // A stream is written live: what was seen stays, as whole lines, without the
            // trailer that marks a finished run.
            assert_eq!(fs.entries(), vec!["t.ndjson".to_string()]);
            let text = std::fs::read_to_string(&out).unwrap();
            assert!(text.ends_with('\n'), "a cut line at the end");
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            assert_eq!(lines[0]["type"], "header");
            assert!(lines.len() > 1_000, "{} lines", lines.len());
            assert!(lines.iter().all(|l| l["type"] != "trailer"));
        }
        let left = testkit::programs::our_programs_after_exit();
        assert!(left.is_empty(), "{format}: programs left: {left:?}");
    }
}

#[test]
fn two_tracers_on_one_server_both_complete_and_agree() {
    require_root();
    let server = Server::start(&by_label("redis-7.0"), &[]);
    server.populate(KEYS, "key", 256);
    let dir = tempfile::tempdir().unwrap();
    let (a_out, b_out) = (dir.path().join("a.json"), dir.path().join("b.json"));
    // No INFO sampling during the run (it would be a command of the server's).
    let opts = ["--top", "50", "--interval", "600s"];
    let a = Recording::start(&server, &a_out, &opts);
    let b = Recording::start(&server, &b_out, &opts);
    let mut con = server.client();
    let child = bgsave_stopped(&server, &mut con);
    for i in 0..50u64 {
        // Hot keys, written 20 times each: the top tables have a clear order.
        for _ in 0..20 {
            overwrite(&mut con, i * 100, i * 100 + 1);
        }
    }
    overwrite(&mut con, 10_000, 13_000);
    // The epoch ends at the child's exit, which each tracer stamps with its own clock
    // read: a parent fault within a microsecond of it can fall inside one tracer's epoch
    // and after the other's. So nothing is sent to the server until the child has exited
    // (a zombie or gone); Redis's own work on it (reaping, the save's completion) comes
    // later, when its cron notices.
    let pid = child.0;
    drop(child);
    testkit::wait::wait_until(
        "the BGSAVE child to exit",
        Duration::from_secs(60),
        Duration::from_millis(5),
        || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
        },
    );
    server.wait_bgsave_done(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    let (a_err, b_err) = (a.stop(), b.stop());
    let (ta, tb) = (read_timeline(&a_out), read_timeline(&b_out));
    for (t, err) in [(&ta, &a_err), (&tb, &b_err)] {
        assert_eq!(t["lost_events"], 0, "{err}");
        assert_eq!(epochs(t).len(), 1, "{err}");
        assert_eq!(epochs(t)[0]["end_reason"], "exit");
    }
    let (ea, eb) = (&epochs(&ta)[0], &epochs(&tb)[0]);
    assert_eq!(ea["child_pid"], eb["child_pid"]);
    assert_eq!(ea["reason"], eb["reason"]);
    assert_eq!(
        ea["faults"],
        eb["faults"],
        "the epoch's counts; faults seen differently: {}",
        fault_differences(&ta, &tb)
    );
    let cow = ea["faults"]["parent"]["cow_copy"].as_u64().unwrap();
    assert!(cow >= 200, "{cow}");
    let top = |e: &Value| e["attribution"]["top_keys_cow"].clone();
    assert_eq!(top(ea), top(eb), "the epoch's top keys");
    assert!(
        top(ea).as_array().is_some_and(|k| k.len() >= 50),
        "{}",
        top(ea)
    );
}
