//! The launcher against every build of the manifest (Redis and Valkey): each starts by
//! its manifest path with its environment, answers PING, reports the manifest's version
//! and allocator, is the process the tracer would see, populates, forks a BGSAVE into its
//! own folder, and stops leaving nothing behind. No eBPF, no tracer.

use std::{path::Path, time::Duration};

use testkit::{Allocator, Build, Server, builds};

#[test]
fn every_build_starts_answers_reports_its_version_and_stops_cleanly() {
    let all = builds();
    eprintln!(
        "{} builds: {:?}",
        all.len(),
        all.iter().map(|b| &b.label).collect::<Vec<_>>()
    );
    for build in all {
        let label = &build.label;
        let mut server = Server::start(&build, &[]);
        let pong: String = server.query(&redis::cmd("PING"));
        assert_eq!(pong, "PONG", "{label}");
        let info = server.info("server");
        assert_eq!(
            info.get(build.version_field()),
            Some(&build.version),
            "{label}: INFO server {info:?}"
        );
        assert_eq!(info["tcp_port"], server.port.to_string(), "{label}");
        let allocator = server.info("memory")["mem_allocator"].clone();
        assert_eq!(
            Allocator::from_name(&allocator),
            Some(build.allocator),
            "{label}: {allocator}"
        );
        // The tracer reads symbols from /proc/PID/exe: the server itself, not a loader.
        assert_eq!(
            std::fs::read_link(format!("/proc/{}/exe", server.pid)).ok(),
            std::fs::canonicalize(&build.server).ok(),
            "{label}: pid {} is not {}",
            server.pid,
            build.server.display()
        );

        server.populate(5000, "k", 100);
        let size: u64 = server.query(&redis::cmd("DBSIZE"));
        assert_eq!(size, 5000, "{label}");
        let len: u64 = server.query(redis::cmd("STRLEN").arg("k:4999"));
        assert_eq!(len, 100, "{label}");
        let _: String = server.query(&redis::cmd("BGSAVE"));
        let (status, _cow) = server.wait_bgsave_done(Duration::from_secs(30));
        assert_eq!(status, "ok", "{label}: {}", server.log());
        assert!(
            server.dir.path().join("dump.rdb").exists(),
            "{label}: BGSAVE wrote no dump.rdb in the server's folder"
        );

        let (pid, dir) = (server.pid, server.dir.path().to_path_buf());
        assert!(server.is_running());
        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{label}: server {pid} still running after drop"
        );
        assert!(!dir.exists(), "{label}: {} left behind", dir.display());
    }
}

#[test]
fn every_build_describes_itself_as_the_manifest_does() {
    for build in builds() {
        let seen = Build::from_binary(&build.label, &build.server, &build.env)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen, build);
    }
}

#[test]
fn a_server_under_requirepass_is_ready_and_still_stopped() {
    let build = testkit::by_label("redis-7.0");
    let mut server = Server::start(&build, &["--requirepass", "hunter2"]);
    let err = server
        .try_query::<String>(&redis::cmd("PING"))
        .expect_err("PING without the password");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
    let pid = server.pid;
    assert!(server.is_running());
    // SHUTDOWN is refused without the password: SIGTERM stops it.
    drop(server);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn a_killed_server_is_gone_at_once() {
    let mut server = Server::start(&testkit::by_label("redis-7.0"), &[]);
    let pid = server.pid;
    server.kill();
    assert!(!server.is_running());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
