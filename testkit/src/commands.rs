//! Redis commands the tests run on a connection of their own (a new connection would add
//! its own handshake to what is traced), and `CLUSTER KEYSLOT`.

use std::collections::HashMap;

use redis::{Connection, ToRedisArgs};

use crate::{Build, Server};

/// `INFO` text as `field -> value` (comment and empty lines skipped).
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// `INFO section` on a given connection, as `field -> value`.
pub fn info_on(con: &mut Connection, section: &str) -> HashMap<String, String> {
    let text: String = redis::cmd("INFO").arg(section).query(con).unwrap();
    parse_info(&text)
}

/// A numeric `INFO` field on a given connection, panicking if absent or not a number.
pub fn info_u64_on(con: &mut Connection, section: &str, field: &str) -> u64 {
    let info = info_on(con, section);
    info.get(field)
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
        .parse()
        .unwrap_or_else(|_| panic!("INFO {section} {field} is not a number"))
}

/// `SETRANGE key OFFSET x` on a new key: Redis zero-fills a string of OFFSET + 1 bytes
/// while the command runs, so it writes about OFFSET / 4096 pages under the command and
/// its key, on every allocator (the argument itself is tiny: nothing large is read,
/// parsed or freed).
pub fn setrange(con: &mut Connection, key: &[u8], offset: usize) {
    let len: u64 = redis::cmd("SETRANGE")
        .arg(key)
        .arg(offset)
        .arg("x")
        .query(con)
        .unwrap();
    assert_eq!(len, offset as u64 + 1);
}

/// `CLUSTER KEYSLOT` of each key, in order, from a throwaway cluster-enabled server of
/// `build` (the command answers "cluster support disabled" otherwise).
pub fn cluster_keyslots<K: ToRedisArgs>(build: &Build, keys: &[K]) -> Vec<u64> {
    // Relative to the server's own folder (its --dir), removed with it.
    let args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
    ];
    let server = Server::start(build, &args);
    keys.iter()
        .map(|k| server.query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_text_becomes_fields() {
        let info = parse_info("# Server\r\nredis_version:7.0.15\r\n\r\ntcp_port:6379\r\n");
        assert_eq!(info.len(), 2);
        assert_eq!(info["redis_version"], "7.0.15");
        assert_eq!(info["tcp_port"], "6379");
    }
}
