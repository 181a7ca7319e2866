//! Redis Cluster awareness: which node owns which hash slot, as one node sees it.
//!
//! [`ClusterMap`] is a pure value read from `CLUSTER SHARDS` (Redis 7.0+, Valkey) or
//! `CLUSTER NODES` (older servers) by parsers that never panic; [`ClusterQuery`] runs
//! them on a [`RedisConn`]; [`Captures`] keeps the maps a recording saw, one per change.
//!
//! Maps are normalized (nodes sorted by id, slot ranges sorted and merged) so that two
//! reads of an unchanged cluster compare equal whatever order the server listed them in.

use serde::{Deserialize, Serialize};

use super::info::{InfoError, RedisConn};

/// Hash slots of a Redis Cluster: 0 ..= 16383.
pub const SLOTS: u32 = 16384;

/// Captures a recording keeps at most: the first and the latest `MAX_CAPTURES - 1`.
pub const MAX_CAPTURES: usize = 256;

/// Why a cluster map could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The command failed (connection, timeout, denied).
    #[error(transparent)]
    Query(#[from] InfoError),
    /// The reply is not what the server sends.
    #[error("{command} reply not understood: {why}")]
    Malformed {
        /// `CLUSTER SHARDS` or `CLUSTER NODES`.
        command: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    /// The 40-character node id.
    pub id: String,
    /// `ip:port` the node announces for clients (`:0` when it has no address yet).
    pub addr: String,
    /// `master` or `replica`.
    pub role: String,
    /// The master a replica replicates from; `None` for a master.
    pub primary_id: Option<String>,
    /// Slots served, as inclusive ranges, sorted; empty for replicas and slotless masters.
    pub slots: Vec<(u16, u16)>,
    /// This is the node the map was read from.
    pub myself: bool,
}

/// The cluster as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Every master and replica, sorted by id.
    pub nodes: Vec<ClusterNode>,
}

impl ClusterMap {
    /// The master serving `slot`, if any node claims it.
    pub fn owner_of(&self, slot: u16) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| {
            n.role == "master" && n.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
        })
    }

    /// The node the map was read from.
    pub fn myself(&self) -> Option<&ClusterNode> {
        self.nodes.iter().find(|n| n.myself)
    }

    /// Masters and replicas in the map.
    pub fn counts(&self) -> (usize, usize) {
        let masters = self.nodes.iter().filter(|n| n.role == "master").count();
        (masters, self.nodes.len() - masters)
    }

    /// Sorts nodes by id and merges each node's slot ranges.
    fn normalized(mut self) -> ClusterMap {
        self.nodes.sort_by(|a, b| a.id.cmp(&b.id));
        for n in &mut self.nodes {
            n.slots = merge_ranges(std::mem::take(&mut n.slots));
        }
        self
    }

    /// Parses a `CLUSTER NODES` reply. Slots being migrated or imported (`[N->-id]`,
    /// `[N-<-id]`) are still served by the node listing them as a plain range, so those
    /// entries are skipped; nodes still in handshake (temporary ids) and nodes that are
    /// neither master nor replica are left out, as `CLUSTER SHARDS` leaves them out.
    pub fn from_cluster_nodes(text: &str) -> Result<ClusterMap, ClusterError> {
        let mut nodes = Vec::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(node) = node_line(line).map_err(|why| ClusterError::Malformed {
                command: "CLUSTER NODES",
                why: format!("{why} in line `{}`", clip(line)),
            })? {
                nodes.push(node);
            }
        }
        Ok(ClusterMap { nodes }.normalized())
    }

    /// Parses a `CLUSTER SHARDS` reply (RESP2 arrays of key/value pairs or RESP3 maps).
    /// The reply does not say which node answered: `myself` is false everywhere until
    /// [`ClusterMap::mark_myself`].
    pub fn from_cluster_shards(reply: redis::Value) -> Result<ClusterMap, ClusterError> {
        let malformed = |why: String| ClusterError::Malformed {
            command: "CLUSTER SHARDS",
            why,
        };
        let shards = items(reply).ok_or_else(|| malformed("not an array of shards".into()))?;
        let mut nodes = Vec::new();
        for (i, shard) in shards.into_iter().enumerate() {
            nodes.extend(shard_nodes(shard).map_err(|why| malformed(format!("shard {i}: {why}")))?);
        }
        Ok(ClusterMap { nodes }.normalized())
    }

    /// Marks the node with `id` as the one the map was read from; false if no node has it.
    pub fn mark_myself(&mut self, id: &str) -> bool {
        let mut found = false;
        for n in &mut self.nodes {
            n.myself = n.id == id;
            found |= n.myself;
        }
        found
    }
}

/// Sorted ranges, overlapping or adjacent ones merged.
fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The start of a line for an error message (a reply may hold megabytes in one line).
fn clip(line: &str) -> String {
    line.chars().take(120).collect()
}

/// A slot number, checked against the 16384 slots.
fn slot(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|&s| u32::from(s) < SLOTS)
        .ok_or_else(|| format!("`{}` is not a slot", clip(text)))
}

/// An inclusive range, checked to be in order.
fn range(lo: u16, hi: u16) -> Result<(u16, u16), String> {
    if lo <= hi {
        Ok((lo, hi))
    } else {
        Err(format!("slot range {lo}-{hi} is reversed"))
    }
}

/// One line of `CLUSTER NODES`:
/// `id ip:port@cport[,hostname...] flags primary ping pong epoch link slot...`.
/// `None` for a node left out (handshake, no role).
fn node_line(line: &str) -> Result<Option<ClusterNode>, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let [
        id,
        addr,
        flags,
        primary,
        _ping,
        _pong,
        _epoch,
        _link,
        slots @ ..,
    ] = fields.as_slice()
    else {
        return Err(format!("{} fields, at least 8 expected", fields.len()));
    };
    let flags: Vec<&str> = flags.split(',').collect();
    let role = if flags.contains(&"master") {
        "master"
    } else if flags.contains(&"slave") || flags.contains(&"replica") {
        "replica"
    } else {
        return Ok(None);
    };
    if flags.contains(&"handshake") {
        return Ok(None);
    }
    // The client address ends at the bus port (`@`, Redis 4+) or the hostname (`,`).
    let addr = addr.split(['@', ',']).next().unwrap_or_default();
    let mut ranges = Vec::new();
    for entry in slots.iter().filter(|s| !s.starts_with('[')) {
        ranges.push(match entry.split_once('-') {
            Some((lo, hi)) => range(slot(lo)?, slot(hi)?)?,
            None => (slot(entry)?, slot(entry)?),
        });
    }
    Ok(Some(ClusterNode {
        id: id.to_string(),
        addr: addr.to_string(),
        role: role.to_string(),
        primary_id: (*primary != "-").then(|| primary.to_string()),
        slots: ranges,
        myself: flags.contains(&"myself"),
    }))
}

/// The elements of an array (or set) reply.
fn items(v: redis::Value) -> Option<Vec<redis::Value>> {
    match v {
        redis::Value::Array(a) | redis::Value::Set(a) => Some(a),
        _ => None,
    }
}

/// The key/value pairs of a RESP3 map or of a RESP2 flat array `[k1, v1, k2, v2, ...]`.
fn pairs(v: redis::Value) -> Result<Vec<(String, redis::Value)>, String> {
    let raw = match v {
        redis::Value::Map(m) => m,
        redis::Value::Array(a) if a.len() % 2 == 0 => {
            let mut it = a.into_iter();
            let mut out = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        }
        _ => return Err("not a map of fields".into()),
    };
    raw.into_iter()
        .map(|(k, v)| Ok((text(&k).ok_or("a field name is not a string")?, v)))
        .collect()
}

/// A string or integer reply as text.
fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        redis::Value::VerbatimString { text, .. } => Some(text.clone()),
        redis::Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A slot number reply (an integer, or its text).
fn slot_value(v: &redis::Value) -> Result<u16, String> {
    slot(&text(v).ok_or("a slot is not a number")?)
}

/// One shard: `slots` (flat `[start, end, ...]`) and `nodes`; the slots go to its
/// master, and its replicas get the master's id.
fn shard_nodes(shard: redis::Value) -> Result<Vec<ClusterNode>, String> {
    let mut slots = Vec::new();
    let mut nodes = Vec::new();
    for (key, value) in pairs(shard)? {
        match key.as_str() {
            "slots" => {
                let flat = items(value).ok_or("`slots` is not an array")?;
                if flat.len() % 2 != 0 {
                    return Err("`slots` has an odd number of bounds".into());
                }
                for pair in flat.chunks(2) {
                    slots.push(range(slot_value(&pair[0])?, slot_value(&pair[1])?)?);
                }
            }
            "nodes" => {
                for node in items(value).ok_or("`nodes` is not an array")? {
                    nodes.push(shard_node(node)?);
                }
            }
            // Valkey's shard `id`, and whatever later versions add.
            _ => {}
        }
    }
    let primary = nodes
        .iter()
        .find(|n| n.role == "master")
        .map(|n| n.id.clone());
    for n in &mut nodes {
        if n.role == "master" {
            n.slots = slots.clone();
        } else {
            n.primary_id = primary.clone();
        }
    }
    Ok(nodes)
}

/// One node of a shard: `id`, `ip`, `port` (or `tls-port`), `role`; other fields
/// (`endpoint`, `hostname`, `health`, `replication-offset`) are not kept.
fn shard_node(node: redis::Value) -> Result<ClusterNode, String> {
    let (mut id, mut ip, mut port, mut tls_port, mut role) = (None, None, None, None, None);
    for (key, value) in pairs(node)? {
        let field = match key.as_str() {
            "id" => &mut id,
            "ip" => &mut ip,
            "port" => &mut port,
            "tls-port" => &mut tls_port,
            "role" => &mut role,
            _ => continue,
        };
        *field = Some(text(&value).ok_or_else(|| format!("node field `{key}` is not text"))?);
    }
    let id = id.ok_or("a node has no id")?;
    let role = match role.as_deref() {
        Some("master") => "master",
        Some("replica" | "slave") => "replica",
        other => return Err(format!("node {id} has role {other:?}")),
    };
    let port = port.or(tls_port).unwrap_or_else(|| "0".into());
    Ok(ClusterNode {
        addr: format!("{}:{port}", ip.unwrap_or_default()),
        id,
        role: role.into(),
        primary_id: None,
        slots: Vec::new(),
        myself: false,
    })
}

/// Reads the cluster map from one connection, remembering what it learnt: that the
/// server has no `CLUSTER SHARDS` (each refused command would count in its error
/// statistics) and its node id.
#[derive(Debug, Default)]
pub struct ClusterQuery {
    /// `CLUSTER SHARDS` was refused: use `CLUSTER NODES`.
    nodes_only: bool,
    /// `CLUSTER MYID`, for the `myself` flag `CLUSTER SHARDS` does not give.
    myid: Option<String>,
}

impl ClusterQuery {
    /// The map, from a server known to run in cluster mode.
    pub fn read(&mut self, conn: &mut RedisConn) -> Result<ClusterMap, ClusterError> {
        if !self.nodes_only {
            match redis::cmd("CLUSTER").arg("SHARDS").query(conn.raw()) {
                Ok(reply) => {
                    return self.with_myself(conn, ClusterMap::from_cluster_shards(reply)?);
                }
                // The server answered an error (older than 7.0): it will not learn it.
                Err(e) if e.code().is_some() => self.nodes_only = true,
                Err(e) => return Err(conn.error("CLUSTER SHARDS", &e).into()),
            }
        }
        let text: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(conn.raw())
            .map_err(|e| conn.error("CLUSTER NODES", &e))?;
        ClusterMap::from_cluster_nodes(&text)
    }

    /// Marks this node in a map from `CLUSTER SHARDS`. The id is asked again when no
    /// node has the one remembered (`CLUSTER RESET HARD` gives a node a new id).
    fn with_myself(
        &mut self,
        conn: &mut RedisConn,
        mut map: ClusterMap,
    ) -> Result<ClusterMap, ClusterError> {
        if let Some(id) = &self.myid
            && map.mark_myself(id)
        {
            return Ok(map);
        }
        let id: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query(conn.raw())
            .map_err(|e| conn.error("CLUSTER MYID", &e))?;
        map.mark_myself(&id);
        self.myid = Some(id);
        Ok(map)
    }
}

/// The cluster map of the server behind `conn`; `None` when it does not run in cluster
/// mode (INFO `cluster_enabled` is not 1).
pub fn query(conn: &mut RedisConn) -> Result<Option<ClusterMap>, ClusterError> {
    if conn.info("cluster")?.get_flag("cluster_enabled") != Some(true) {
        return Ok(None);
    }
    ClusterQuery::default().read(conn).map(Some)
}

/// A hash tag (`memtrace-N`) whose keys hash to a slot the map's `myself` serves; `None`
/// when it serves none (a replica, or a master without slots). Commands on keys in that
/// tag run on this node instead of being redirected.
pub fn served_hash_tag(map: &ClusterMap) -> Option<String> {
    let me = map
        .myself()
        .filter(|n| n.role == "master" && !n.slots.is_empty())?;
    // Each candidate lands on a pseudo-random slot: a node serving even one slot is
    // found within a few times 16384 tries.
    (0..SLOTS * 64)
        .map(|n| format!("memtrace-{n}"))
        .find(|tag| {
            let slot = crate::attribution::keyslot::key_hash_slot(tag.as_bytes());
            me.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
        })
}

/// The cluster map at one instant of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCapture {
    /// CLOCK_MONOTONIC when the reply arrived, ns (the clock of the events).
    pub ts_ns: u64,
    /// The map.
    pub map: ClusterMap,
}

/// The maps a recording saw: the first, then one per change, at most `cap` (the first
/// and the latest `cap - 1`; with a cap of 1, only the latest).
#[derive(Debug, Clone)]
pub struct Captures {
    list: Vec<ClusterCapture>,
    cap: usize,
    /// Changes left out to stay under the cap.
    dropped: u64,
}

impl Captures {
    /// Keeping at most `cap` captures (at least 1).
    pub fn new(cap: usize) -> Captures {
        Captures {
            list: Vec::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    /// Adds `map` seen at `ts_ns` if it differs from the latest one. Returns a warning
    /// the first time a capture has to be left out (never with a cap of 1, which is
    /// meant to keep only the latest).
    pub fn observe(&mut self, ts_ns: u64, map: ClusterMap) -> Option<String> {
        if self.list.last().is_some_and(|c| c.map == map) {
            return None;
        }
        let mut warning = None;
        if self.list.len() >= self.cap {
            // Keep the first map (the one at record start) and the most recent ones.
            self.list.remove(if self.cap == 1 { 0 } else { 1 });
            if self.cap > 1 && self.dropped == 0 {
                warning = Some(format!(
                    "the cluster map changed more than {} times: only the first and the \
                     latest {} maps are kept",
                    self.cap,
                    self.cap - 1
                ));
            }
            self.dropped += 1;
        }
        self.list.push(ClusterCapture { ts_ns, map });
        warning
    }

    /// The captures kept, oldest first.
    pub fn list(&self) -> &[ClusterCapture] {
        &self.list
    }

    /// Takes the captures kept, leaving none (the cap and the drop count stay).
    pub fn take(&mut self) -> Vec<ClusterCapture> {
        std::mem::take(&mut self.list)
    }
}

#[cfg(test)]
mod tests;
