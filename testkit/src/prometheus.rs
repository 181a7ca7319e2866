//! A real Prometheus server (Debian 12's, unpacked by `cargo xtask setup`; its path in
//! `MEMTRACE_PROMETHEUS`) scraping one target on loopback, and its HTTP query API.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Guarded, free_port};

/// Where `cargo xtask setup` put the binary (`xtask/src/prometheus.rs`).
pub const ENV: &str = "MEMTRACE_PROMETHEUS";

/// How often the target is scraped.
pub const SCRAPE_INTERVAL: &str = "200ms";

/// One series of a query result: its labels (without `__name__`) and its value.
pub type Series = (BTreeMap<String, String>, f64);

/// A Prometheus server in a temporary folder, killed and removed on drop.
pub struct Prometheus {
    _process: Guarded,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`HOST:PORT`, path `/metrics`) every
    /// [`SCRAPE_INTERVAL`]; returns once it answers its readiness check.
    pub fn start(target: &str) -> Prometheus {
        let bin = std::env::var_os(ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("{ENV} is not set: run the tests with `cargo xtask test`"));
        let dir = tempfile::tempdir().expect("temporary folder");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n\
                 scrape_configs:\n  - job_name: memtrace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let port = free_port();
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let p = Prometheus {
            _process: Guarded::new(child, libc::SIGTERM, Duration::from_secs(10)),
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.get("/-/ready").is_some_and(|b| b.contains("Ready")) {
            assert!(Instant::now() < deadline, "Prometheus not ready after 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn get(&self, path_and_query: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path_and_query}", self.port);
        let mut resp = ureq::get(&url).call().ok()?;
        resp.body_mut().read_to_string().ok()
    }

    /// The instant vector of `query` now, through `/api/v1/query`.
    pub fn query(&self, query: &str) -> Vec<Series> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let body = ureq::get(&url)
            .query("query", query)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("querying Prometheus for {query:?}: {e}"));
        let v: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        assert_eq!(v["status"], "success", "query {query:?}: {body}");
        v["data"]["result"]
            .as_array()
            .expect("an instant vector")
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .filter(|(k, _)| *k != "__name__")
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|x| x.parse().ok())
                    .expect("a numeric sample");
                (labels, value)
            })
            .collect()
    }

    /// The single value of `query`, if it has exactly one series.
    pub fn value(&self, query: &str) -> Option<f64> {
        match self.query(query).as_slice() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }
}
