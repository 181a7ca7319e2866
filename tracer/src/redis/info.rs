//! Talking to a running Redis: the `--redis` target syntax, a synchronous connection with
//! timeouts, and the `INFO` text format.
//!
//! The parsers ([`parse_target`], [`Info::parse`]) are pure and never panic; only
//! [`RedisConn`] does IO. No text produced here (Display, Debug, errors) ever contains the
//! password of a target.

use std::{collections::HashMap, fmt, net::Ipv6Addr, path::Path, time::Duration};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

/// What a target accepts, repeated in every syntax error so the fix is on the same line.
const TARGET_SYNTAX: &str =
    "expected HOST:PORT, [IPv6]:PORT, redis://[user:pass@]host:port[/db] or unix:///path";

/// Errors parsing a target, connecting to Redis or running a command on it.
#[derive(Debug, thiserror::Error)]
pub enum InfoError {
    /// The target string is not a Redis address.
    #[error("bad Redis target `{spec}`: {why} ({TARGET_SYNTAX})")]
    BadTarget {
        /// The target as given, password removed.
        spec: String,
        /// What is wrong with it.
        why: String,
    },
    /// Nothing answered at the address (refused, no route, name not found).
    #[error("Redis at {target} is unreachable: {why}")]
    Unreachable {
        /// The target, password removed.
        target: String,
        /// The operating system's reason.
        why: String,
    },
    /// The server did not answer in time.
    #[error("Redis at {target} did not answer {what} within {} ms", timeout.as_millis())]
    Timeout {
        /// The target, password removed.
        target: String,
        /// What was waited for (`connect`, a command name).
        what: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server refused the credentials, or wants some, or denies a command to this user.
    #[error("Redis at {target} denied {what} ({code}): {hint}")]
    Denied {
        /// The target, password removed.
        target: String,
        /// What was denied (`AUTH`, a command name).
        what: String,
        /// The Redis error code: `WRONGPASS`, `NOAUTH`, `NOPERM`, `ERR`.
        code: String,
        /// What to do about it.
        hint: String,
    },
    /// A command failed for another reason, or its reply was not what Redis sends.
    #[error("Redis at {target}: {what} failed: {why}")]
    Command {
        /// The target, password removed.
        target: String,
        /// The command.
        what: String,
        /// The reason, password removed.
        why: String,
    },
}

/// A parsed Redis target: where to connect and with which credentials.
///
/// `Display` and `Debug` never show the password.
#[derive(Clone)]
pub struct ConnSpec {
    info: ConnectionInfo,
}

impl ConnSpec {
    /// The connection parameters for the `redis` crate (includes the password).
    pub fn connection_info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Host and port for a TCP target, `None` for a unix socket.
    pub fn tcp(&self) -> Option<(&str, u16)> {
        match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => Some((host.as_str(), *port)),
            ConnectionAddr::TcpTls { host, port, .. } => Some((host.as_str(), *port)),
            _ => None,
        }
    }

    /// Socket path for a unix-socket target, `None` for TCP.
    pub fn unix_path(&self) -> Option<&Path> {
        match self.info.addr() {
            ConnectionAddr::Unix(path) => Some(path.as_path()),
            _ => None,
        }
    }

    /// ACL user name, if one was given.
    pub fn username(&self) -> Option<&str> {
        self.info.redis_settings().username()
    }

    /// Whether a password was given (the password itself is only in
    /// [`connection_info`](Self::connection_info)).
    pub fn has_password(&self) -> bool {
        self.info.redis_settings().password().is_some()
    }

    /// Database number to `SELECT` (0 unless the target names one).
    pub fn db(&self) -> i64 {
        self.info.redis_settings().db()
    }

    fn password(&self) -> Option<&str> {
        self.info.redis_settings().password()
    }
}

impl fmt::Display for ConnSpec {
    /// `[user@]host:port[/db]`, `[v6]:port`, or `unix:///path[?db=N]`; never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let db = self.db();
        match self.info.addr() {
            ConnectionAddr::Unix(path) => {
                write!(f, "unix://{}", path.display())?;
                if db != 0 {
                    write!(f, "?db={db}")?;
                }
                Ok(())
            }
            addr => {
                if let Some(user) = self.username() {
                    write!(f, "{user}@")?;
                }
                match addr {
                    ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. }
                        if host.contains(':') =>
                    {
                        write!(f, "[{host}]:{port}")?
                    }
                    other => write!(f, "{other}")?,
                }
                if db != 0 {
                    write!(f, "/{db}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSpec")
            .field("addr", self.info.addr())
            .field("username", &self.username())
            .field("password", &self.has_password().then_some("<redacted>"))
            .field("db", &self.db())
            .finish()
    }
}

/// Parses a `--redis` target: `HOST:PORT`, `[v6]:PORT`,
/// `redis://[user:pass@]host[:port][/db]`, `unix:///path[?db=N&user=U&pass=P]`.
///
/// Pure: no name resolution, no IO.
pub fn parse_target(spec: &str) -> Result<ConnSpec, InfoError> {
    let bad = |why: &str| InfoError::BadTarget {
        spec: redact_spec(spec),
        why: why.to_string(),
    };
    let spec_trimmed = spec.trim();
    if spec_trimmed.is_empty() {
        return Err(bad("empty"));
    }
    let info = if spec_trimmed.contains("://") {
        spec_trimmed
            .into_connection_info()
            // The crate's messages name the problem but never echo the URL.
            .map_err(|e| bad(&redis_error_text(&e)))?
    } else {
        let (host, port) = split_host_port(spec_trimmed).map_err(bad)?;
        (host, port)
            .into_connection_info()
            .map_err(|e| bad(&redis_error_text(&e)))?
    };
    if let ConnectionAddr::Tcp(host, port) = info.addr() {
        if host == "0.0.0.0" || host == "::" {
            return Err(bad(
                "a wildcard address names no server: use 127.0.0.1 or ::1 for this machine",
            ));
        }
        if *port == 0 {
            return Err(bad("port 0"));
        }
    }
    Ok(ConnSpec { info })
}

/// Splits `HOST:PORT` or `[v6]:PORT`.
fn split_host_port(spec: &str) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(rest) = spec.strip_prefix('[') {
        let (v6, port) = rest
            .split_once("]:")
            .ok_or("IPv6 address without `]:PORT`")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address inside [ ]")?;
        (v6, port)
    } else {
        let (host, port) = spec.rsplit_once(':').ok_or("no :PORT")?;
        if host.contains(':') {
            return Err("put an IPv6 address in brackets: [addr]:PORT");
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("no host before :PORT");
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '?' | '#'))
    {
        return Err("host contains a character no host name has");
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| "port is not a number from 1 to 65535")?;
    Ok((host.to_string(), port))
}

/// The target with any password replaced by `***`, for error messages about a target that
/// did not parse (so the parsed form is not available).
///
/// Conservative: everything before the last `@` of a URL's authority part is treated as
/// credentials, and `pass=`/`password=` query values are hidden.
pub fn redact_spec(spec: &str) -> String {
    let Some((scheme, rest)) = spec.split_once("://") else {
        return spec.to_string();
    };
    let (location, query) = match rest.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    // A password may contain unencoded `/` or `?`, so look for the last `@` anywhere before
    // the query rather than only in a well-formed authority.
    match location.rfind('@') {
        Some(at) => {
            let userinfo = &location[..at];
            match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '#']) => {
                    out.push_str(user);
                    out.push_str(":***@");
                }
                Some(_) => out.push_str("***@"),
                // `user@host`: no password to hide.
                None => {
                    out.push_str(userinfo);
                    out.push('@');
                }
            }
            out.push_str(&location[at + 1..]);
        }
        None => out.push_str(location),
    }
    if let Some(query) = query {
        out.push('?');
        let parts: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ if kv.contains('@') => "***".to_string(),
                _ => kv.to_string(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}

/// One-line text of a `redis` crate error, without the crate's ` - InvalidClientConfig`
/// style kind suffix (the variant of [`InfoError`] already says what kind it is).
fn redis_error_text(e: &redis::RedisError) -> String {
    let kind = format!(" - {:?}", e.kind());
    e.to_string().replace(&kind, "").replace(['\r', '\n'], " ")
}

/// Removes every occurrence of `secret` from `text`.
fn scrub(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "***"),
        _ => text.to_string(),
    }
}

/// A synchronous connection to one Redis server, with read, write and connect timeouts.
pub struct RedisConn {
    conn: redis::Connection,
    spec: ConnSpec,
    timeout: Duration,
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConn")
            .field("target", &self.spec)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Parses `spec` (see [`parse_target`]) and connects, authenticates and selects the
/// database, each step bounded by `timeout`.
pub fn connect(spec: &str, timeout: Duration) -> Result<RedisConn, InfoError> {
    RedisConn::open(&parse_target(spec)?, timeout)
}

impl RedisConn {
    /// Connects to a parsed target. `timeout` bounds the TCP connect and every later read
    /// and write (zero is taken as 1 ms: the socket API has no zero timeout).
    pub fn open(spec: &ConnSpec, timeout: Duration) -> Result<RedisConn, InfoError> {
        let timeout = timeout.max(Duration::from_millis(1));
        // Authenticate and SELECT ourselves rather than through the crate, whose handshake
        // folds WRONGPASS, NOAUTH and "no password configured" into one error. No
        // CLIENT SETINFO either: on Redis < 7.2 it counts as an error reply in the
        // server's own statistics, and a tracer should leave no marks.
        let bare = spec
            .info
            .clone()
            .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
        let client = redis::Client::open(bare).map_err(|e| InfoError::BadTarget {
            spec: spec.to_string(),
            why: redis_error_text(&e),
        })?;
        let mut this = RedisConn {
            conn: client
                .get_connection_with_timeout(timeout)
                .map_err(|e| classify(spec, "connect", timeout, &e))?,
            spec: spec.clone(),
            timeout,
        };
        this.conn
            .set_read_timeout(Some(timeout))
            .and_then(|()| this.conn.set_write_timeout(Some(timeout)))
            .map_err(|e| classify(spec, "connect", timeout, &e))?;
        if let Some(password) = spec.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = spec.username() {
                auth.arg(user);
            }
            auth.arg(password);
            auth.query::<()>(&mut this.conn)
                .map_err(|e| this.error("AUTH", &e))?;
        }
        if spec.db() != 0 {
            redis::cmd("SELECT")
                .arg(spec.db())
                .query::<()>(&mut this.conn)
                .map_err(|e| this.error("SELECT", &e))?;
        }
        // Without a password, a server that wants one accepts the connection and refuses
        // the first command: find out now, with a message that says what to do.
        redis::cmd("PING")
            .query::<()>(&mut this.conn)
            .map_err(|e| this.error("PING", &e))?;
        Ok(this)
    }

    /// Opens a fresh connection to the same target (after a timeout the old one may hold
    /// a late reply and cannot be reused).
    pub fn reconnect(&mut self) -> Result<(), InfoError> {
        *self = RedisConn::open(&self.spec, self.timeout)?;
        Ok(())
    }

    /// The target this connection was opened to.
    pub fn spec(&self) -> &ConnSpec {
        &self.spec
    }

    /// The connect/read/write timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `INFO section` (plain `INFO` when `section` is empty) and parses the reply.
    pub fn info(&mut self, section: &str) -> Result<Info, InfoError> {
        let mut cmd = redis::cmd("INFO");
        if !section.is_empty() {
            cmd.arg(section);
        }
        let text: String = cmd
            .query(&mut self.conn)
            .map_err(|e| self.error("INFO", &e))?;
        Ok(Info::parse(&text))
    }

    /// Runs `CLIENT ID`: this connection's id on the server.
    pub fn client_id(&mut self) -> Result<u64, InfoError> {
        redis::cmd("CLIENT")
            .arg("ID")
            .query(&mut self.conn)
            .map_err(|e| self.error("CLIENT ID", &e))
    }

    /// The underlying connection, for other commands. Its read and write timeouts are
    /// set; use [`error`](Self::error) to turn a failure into an [`InfoError`].
    pub fn raw(&mut self) -> &mut redis::Connection {
        &mut self.conn
    }

    /// Describes a failed command on this connection as a one-line [`InfoError`].
    pub fn error(&self, what: &str, e: &redis::RedisError) -> InfoError {
        classify(&self.spec, what, self.timeout, e)
    }
}

/// Sorts a `redis` crate error into unreachable / timeout / denied / failed, with a hint.
fn classify(spec: &ConnSpec, what: &str, timeout: Duration, e: &redis::RedisError) -> InfoError {
    let target = spec.to_string();
    let why = scrub(&redis_error_text(e), spec.password());
    if e.is_timeout() {
        return InfoError::Timeout {
            target,
            what: what.to_string(),
            timeout,
        };
    }
    let detail = e.detail().unwrap_or("");
    let denied = |code: &str, hint: String| InfoError::Denied {
        target: target.clone(),
        what: what.to_string(),
        code: code.to_string(),
        hint,
    };
    match e.code() {
        Some("WRONGPASS") => {
            return denied(
                "WRONGPASS",
                "wrong user name or password: check the credentials in the redis:// URL".into(),
            );
        }
        Some("NOAUTH") => {
            return denied(
                "NOAUTH",
                "the server requires a password: use redis://[user]:PASSWORD@host:port".into(),
            );
        }
        Some("NOPERM") => {
            return denied(
                "NOPERM",
                format!("the ACL user may not run {what}: grant it or use another user"),
            );
        }
        Some("ERR") if what == "AUTH" && detail.contains("without any password configured") => {
            return denied(
                "ERR",
                "the server has no password configured: remove it from the target".into(),
            );
        }
        Some("ERR") if what == "AUTH" && detail.contains("wrong number of arguments") => {
            return denied(
                "ERR",
                "the server predates ACL users (Redis < 6): give only a password".into(),
            );
        }
        _ => {}
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return denied("AUTH", why);
    }
    if what == "connect" || e.is_connection_refusal() || e.is_connection_dropped() {
        return InfoError::Unreachable { target, why };
    }
    InfoError::Command {
        target,
        what: what.to_string(),
        why,
    }
}

/// One `slaveN:` line of `INFO replication`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaInfo {
    /// The `N` of `slaveN`.
    pub index: u32,
    /// Replica address as the master sees it.
    pub ip: String,
    /// Replica listening port.
    pub port: u16,
    /// `wait_bgsave`, `send_bulk`, `online`, ...
    pub state: String,
    /// Replication offset acknowledged by the replica.
    pub offset: Option<i64>,
    /// Seconds since the last acknowledgement.
    pub lag: Option<i64>,
}

/// A parsed `INFO` reply: `# Section` headers and `key:value` lines.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    /// (section, key, value) in reply order.
    entries: Vec<(String, String, String)>,
    /// key -> index into `entries` (first occurrence).
    index: HashMap<String, usize>,
}

impl Info {
    /// Parses INFO text. Accepts LF or CRLF; ignores lines that are neither a header nor
    /// `key:value` with a non-empty key. Never panics.
    pub fn parse(text: &str) -> Info {
        let mut info = Info::default();
        let mut section = String::new();
        for line in text.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some(name) = line.strip_prefix('#') {
                section = name.trim().to_string();
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            if key.is_empty() || key.contains(char::is_whitespace) {
                continue;
            }
            let i = info.entries.len();
            info.index.entry(key.to_string()).or_insert(i);
            info.entries
                .push((section.clone(), key.to_string(), value.to_string()));
        }
        info
    }

    /// The value of `key`, from whichever section holds it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.index
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, _, v)| v.as_str())
    }

    /// `key` as an unsigned integer.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.trim().parse().ok()
    }

    /// `key` as a signed integer (INFO uses -1 for "never").
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.trim().parse().ok()
    }

    /// `key` as a float; a trailing `%` (as in `used_memory_peak_perc`) is dropped.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        let v = self.get(key)?.trim();
        v.strip_suffix('%').unwrap_or(v).parse().ok()
    }

    /// `key` as a 0/1 flag.
    pub fn get_flag(&self, key: &str) -> Option<bool> {
        match self.get(key)?.trim() {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        }
    }

    /// The `a=1,b=2` sub-fields of `key` (as in `slave0`, `db0`, `cmdstat_get`).
    pub fn get_fields(&self, key: &str) -> Option<Vec<(&str, &str)>> {
        self.get(key).map(parse_fields)
    }

    /// Names of the sections seen, in order (a key before any header has section "").
    pub fn sections(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for (s, _, _) in &self.entries {
            if out.last() != Some(&s.as_str()) && !out.contains(&s.as_str()) {
                out.push(s);
            }
        }
        out
    }

    /// All (section, key, value) entries in reply order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.entries
            .iter()
            .map(|(s, k, v)| (s.as_str(), k.as_str(), v.as_str()))
    }

    /// Number of `key:value` entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry was parsed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The replicas listed by a master's `INFO replication` (`slaveN:` lines), by `N`.
    /// Lines without a valid ip and port are skipped.
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        let mut out: Vec<ReplicaInfo> = self
            .entries
            .iter()
            .filter_map(|(_, key, value)| {
                let index = key.strip_prefix("slave")?.parse::<u32>().ok()?;
                parse_replica(index, value)
            })
            .collect();
        out.sort_by_key(|r| r.index);
        out
    }
}

/// Splits `a=1,b=2` into pairs, skipping parts without `=`.
pub fn parse_fields(value: &str) -> Vec<(&str, &str)> {
    value
        .split(',')
        .filter_map(|part| part.split_once('='))
        .collect()
}

fn parse_replica(index: u32, value: &str) -> Option<ReplicaInfo> {
    let fields = parse_fields(value);
    let field = |name: &str| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    Some(ReplicaInfo {
        index,
        ip: field("ip").filter(|ip| !ip.is_empty())?.to_string(),
        port: field("port")?.parse().ok()?,
        state: field("state").unwrap_or("").to_string(),
        offset: field("offset").and_then(|v| v.parse().ok()),
        lag: field("lag").and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Trimmed `INFO everything` of a Redis 7.0.15 master with one replica attached,
    /// taken during a BGSAVE (CRLF line ends, as on the wire).
    pub(crate) const INFO_7_0: &str = "# Server\r\n\
redis_version:7.0.15\r\n\
redis_git_sha1:00000000\r\n\
redis_mode:standalone\r\n\
os:Linux 6.18.44-fc-v782 x86_64\r\n\
arch_bits:64\r\n\
multiplexing_api:epoll\r\n\
gcc_version:12.2.0\r\n\
process_id:31213\r\n\
process_supervised:no\r\n\
run_id:f9eb49087b6fa538cfbdbf93035cb0046c609dd4\r\n\
tcp_port:7391\r\n\
server_time_usec:1795597395402093\r\n\
uptime_in_seconds:2\r\n\
executable:/tmp/redis-server\r\n\
config_file:\r\n\
io_threads_active:0\r\n\
\r\n\
# Clients\r\n\
connected_clients:1\r\n\
maxclients:10000\r\n\
\r\n\
# Memory\r\n\
used_memory:1058528\r\n\
used_memory_human:1.01M\r\n\
used_memory_rss:12341248\r\n\
used_memory_rss_human:11.77M\r\n\
used_memory_peak:1058528\r\n\
used_memory_peak_perc:100.18%\r\n\
allocator_allocated:1850592\r\n\
allocator_active:2015232\r\n\
allocator_resident:4685824\r\n\
total_system_memory:25276063744\r\n\
maxmemory:0\r\n\
maxmemory_human:0B\r\n\
maxmemory_policy:noeviction\r\n\
allocator_frag_ratio:1.09\r\n\
mem_fragmentation_ratio:12.12\r\n\
mem_fragmentation_bytes:11322800\r\n\
mem_allocator:jemalloc-5.3.0\r\n\
\r\n\
# Persistence\r\n\
loading:0\r\n\
async_loading:0\r\n\
current_cow_peak:520192\r\n\
current_cow_size:520192\r\n\
current_cow_size_age:1\r\n\
current_fork_perc:0.02\r\n\
current_save_keys_processed:1\r\n\
current_save_keys_total:5001\r\n\
rdb_changes_since_last_save:1\r\n\
rdb_bgsave_in_progress:1\r\n\
rdb_last_save_time:1795597393\r\n\
rdb_last_bgsave_status:ok\r\n\
rdb_last_bgsave_time_sec:-1\r\n\
rdb_current_bgsave_time_sec:1\r\n\
rdb_last_cow_size:364544\r\n\
aof_enabled:0\r\n\
aof_rewrite_in_progress:0\r\n\
aof_last_cow_size:0\r\n\
module_fork_in_progress:0\r\n\
\r\n\
# Stats\r\n\
total_connections_received:3\r\n\
instantaneous_input_kbps:0.11\r\n\
sync_full:1\r\n\
latest_fork_usec:1076\r\n\
total_forks:4\r\n\
\r\n\
# Replication\r\n\
role:master\r\n\
connected_slaves:1\r\n\
slave0:ip=127.0.0.1,port=7392,state=online,offset=64,lag=1\r\n\
master_failover_state:no-failover\r\n\
master_replid:0a8630b1413cbef8e5386f7ea2c8508b81133452\r\n\
master_repl_offset:50\r\n\
second_repl_offset:-1\r\n\
\r\n\
# CPU\r\n\
used_cpu_sys:0.000000\r\n\
used_cpu_user:0.014275\r\n\
\r\n\
# Modules\r\n\
\r\n\
# Commandstats\r\n\
cmdstat_psync:calls=1,usec=37,usec_per_call=37.00,rejected_calls=0,failed_calls=0\r\n\
cmdstat_set:calls=1,usec=9,usec_per_call=9.00,rejected_calls=0,failed_calls=0\r\n\
\r\n\
# Errorstats\r\n\
\r\n\
# Latencystats\r\n\
latency_percentiles_usec_set:p50=9.023,p99=9.023,p99.9=9.023\r\n\
\r\n\
# Cluster\r\n\
cluster_enabled:0\r\n\
\r\n\
# Keyspace\r\n\
db0:keys=5001,expires=0,avg_ttl=0\r\n";

    #[test]
    fn parses_real_info() {
        let info = Info::parse(INFO_7_0);
        assert_eq!(info.get("redis_version"), Some("7.0.15"));
        assert_eq!(info.get_u64("process_id"), Some(31213));
        assert_eq!(info.get_u64("tcp_port"), Some(7391));
        assert_eq!(info.get("os"), Some("Linux 6.18.44-fc-v782 x86_64"));
        assert_eq!(info.get("config_file"), Some(""));
        assert_eq!(info.get_u64("used_memory"), Some(1_058_528));
        assert_eq!(info.get_f64("mem_fragmentation_ratio"), Some(12.12));
        assert_eq!(info.get_f64("used_memory_peak_perc"), Some(100.18));
        assert_eq!(info.get_i64("rdb_last_bgsave_time_sec"), Some(-1));
        assert_eq!(info.get_u64("rdb_last_bgsave_time_sec"), None);
        assert_eq!(info.get_flag("rdb_bgsave_in_progress"), Some(true));
        assert_eq!(info.get_flag("aof_rewrite_in_progress"), Some(false));
        assert_eq!(info.get("nonexistent"), None);
        assert_eq!(info.get_u64("used_memory_human"), None);
        assert_eq!(
            info.get_fields("db0"),
            Some(vec![("keys", "5001"), ("expires", "0"), ("avg_ttl", "0")])
        );
        assert_eq!(
            info.sections(),
            vec![
                "Server",
                "Clients",
                "Memory",
                "Persistence",
                "Stats",
                "Replication",
                "CPU",
                "Commandstats",
                "Latencystats",
                "Cluster",
                "Keyspace"
            ]
        );
        assert_eq!(
            info.replicas(),
            vec![ReplicaInfo {
                index: 0,
                ip: "127.0.0.1".into(),
                port: 7392,
                state: "online".into(),
                offset: Some(64),
                lag: Some(1),
            }]
        );
        // Values are never left with a CR.
        assert!(info.iter().all(|(_, _, v)| !v.contains('\r')));
    }

    #[test]
    fn parses_lf_only_and_ignores_garbage() {
        let info = Info::parse("garbage\n:novalue\nkey with space:1\n# S\na:1\na:2\nb:x:y\n#\nc:");
        assert_eq!(info.get("a"), Some("1"), "first occurrence wins");
        assert_eq!(info.get("b"), Some("x:y"));
        assert_eq!(info.get("c"), Some(""));
        assert_eq!(info.len(), 4);
        assert!(Info::parse("").is_empty());
    }

    #[test]
    fn replicas_sorted_and_malformed_skipped() {
        let info = Info::parse(
            "slave1:ip=::1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n\
             slave0:ip=10.0.0.2,port=7001,state=online,offset=123,lag=0\r\n\
             slave2:ip=10.0.0.3,state=online\r\n\
             slavex:ip=10.0.0.4,port=1\r\n\
             slave_read_only:1\r\n",
        );
        let r = info.replicas();
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].index, r[0].ip.as_str(), r[0].port),
            (0, "10.0.0.2", 7001)
        );
        assert_eq!(
            (r[1].ip.as_str(), r[1].state.as_str()),
            ("::1", "wait_bgsave")
        );
    }

    #[test]
    fn target_forms() {
        let t = parse_target("127.0.0.1:6379").unwrap();
        assert_eq!(t.tcp(), Some(("127.0.0.1", 6379)));
        assert_eq!(t.to_string(), "127.0.0.1:6379");
        let t = parse_target("localhost:7000").unwrap();
        assert_eq!(t.tcp(), Some(("localhost", 7000)));
        let t = parse_target("[::1]:6380").unwrap();
        assert_eq!(t.tcp(), Some(("::1", 6380)));
        assert_eq!(t.to_string(), "[::1]:6380");
        let t = parse_target("redis://alice:s3cret@10.1.2.3:6390/2").unwrap();
        assert_eq!(t.tcp(), Some(("10.1.2.3", 6390)));
        assert_eq!(t.username(), Some("alice"));
        assert!(t.has_password());
        assert_eq!(t.db(), 2);
        assert_eq!(t.to_string(), "alice@10.1.2.3:6390/2");
        let t = parse_target("redis://:pw@[::1]:6391").unwrap();
        assert_eq!(t.tcp(), Some(("::1", 6391)));
        assert_eq!(t.username(), None);
        let t = parse_target("redis://example.com").unwrap();
        assert_eq!(t.tcp(), Some(("example.com", 6379)));
        let t = parse_target("unix:///run/redis/redis.sock").unwrap();
        assert_eq!(t.unix_path(), Some(Path::new("/run/redis/redis.sock")));
        assert_eq!(t.tcp(), None);
        assert_eq!(t.to_string(), "unix:///run/redis/redis.sock");
    }

    #[test]
    fn bad_targets_are_one_line_and_redacted() {
        for bad in [
            "",
            "6379",
            "host",
            "host:",
            ":6379",
            "host:65536",
            "host:0",
            "::1:6379",
            "[::1]6379",
            "[nothex]:1",
            "0.0.0.0:6379",
            "http://x:1",
            "redis://u:topsecret@h:notaport",
            "redis://u:topsecret@h:1/notadb",
            "redis://:top/secret@h:1/x",
            "unix:///s?pass=topsecret&db=x",
            "rediss://u:topsecret@h:1",
        ] {
            let e = parse_target(bad).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, InfoError::BadTarget { .. }), "{bad}: {text}");
            assert!(!text.contains('\n'), "{text}");
            assert!(!text.contains("topsecret"), "{text}");
            assert!(!text.contains("secret@"), "{text}");
        }
    }

    #[test]
    fn password_never_shown() {
        let t = parse_target("redis://bob:hunter2@127.0.0.1:1/3").unwrap();
        assert!(!t.to_string().contains("hunter2"));
        assert!(!format!("{t:?}").contains("hunter2"));
        let t = parse_target("unix:///tmp/r.sock?user=bob&pass=hunter2").unwrap();
        assert!(t.has_password());
        assert!(!t.to_string().contains("hunter2"));
        assert!(!format!("{t:?}").contains("hunter2"));
        assert_eq!(
            redact_spec("redis://bob:hunter2@h:1/0"),
            "redis://bob:***@h:1/0"
        );
        assert_eq!(redact_spec("redis://h:1"), "redis://h:1");
        assert_eq!(redact_spec("h:1"), "h:1");
        assert_eq!(
            redact_spec("unix:///s?db=1&pass=hunter2"),
            "unix:///s?db=1&pass=***"
        );
        assert_eq!(scrub("x hunter2 y", Some("hunter2")), "x *** y");
    }

    #[test]
    fn unreachable_is_one_line() {
        // Port 1 on loopback: nothing listens there, so the connect is refused at once.
        let e = connect("redis://u:hunter2@127.0.0.1:1", Duration::from_secs(2)).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, InfoError::Unreachable { .. }), "{text}");
        assert!(
            text.starts_with("Redis at u@127.0.0.1:1 is unreachable"),
            "{text}"
        );
        assert!(!text.contains("hunter2") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn silent_server_times_out() {
        // The kernel completes the handshake from the backlog; nobody ever answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::time::Instant::now();
        let e = connect(&addr.to_string(), Duration::from_millis(200)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(
            e.to_string(),
            format!("Redis at {addr} did not answer PING within 200 ms")
        );
    }

    #[test]
    fn auth_errors_against_real_server() {
        let server = testkit::Server::start(
            &testkit::by_label("redis-7.0"),
            &["--requirepass", "hunter2"],
        );
        let t = Duration::from_secs(2);
        let addr = format!("127.0.0.1:{}", server.port);
        let e = connect(&addr, t).unwrap_err();
        assert!(
            matches!(&e, InfoError::Denied { code, .. } if code == "NOAUTH"),
            "{e}"
        );
        let e = connect(&format!("redis://:hunter3@{addr}"), t).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("Redis at {addr} denied AUTH (WRONGPASS)")),
            "{text}"
        );
        assert!(!text.contains("hunter3"), "{text}");
        let e = connect(&format!("redis://alice:hunter2@{addr}"), t).unwrap_err();
        assert!(e.to_string().contains("(WRONGPASS)"), "{e}");

        let mut c = connect(&format!("redis://:hunter2@{addr}/3"), t).unwrap();
        assert!(c.client_id().unwrap() > 0);
        let info = c.info("keyspace").unwrap();
        assert_eq!(info.sections(), Vec::<&str>::new(), "empty db");
        let info = c.info("server").unwrap();
        assert_eq!(info.get_u64("process_id"), Some(u64::from(server.pid)));
        let _: () = ::redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query(c.raw())
            .unwrap();
        assert!(
            c.info("keyspace").unwrap().get("db3").is_some(),
            "SELECT 3 applied"
        );
        let e = ::redis::cmd("NOSUCHCOMMAND")
            .query::<()>(c.raw())
            .map_err(|e| c.error("NOSUCHCOMMAND", &e))
            .unwrap_err();
        assert!(matches!(e, InfoError::Command { .. }), "{e}");
        c.reconnect().unwrap();
        assert!(!c.info("").unwrap().is_empty());
    }

    #[test]
    fn password_for_server_without_one() {
        let server = testkit::Server::start(&testkit::by_label("redis-7.0"), &[]);
        let e = connect(
            &format!("redis://:hunter2@127.0.0.1:{}", server.port),
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no password configured"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let info = Info::parse(&text);
            let _ = info.replicas();
            for (_, k, _) in info.iter() {
                let _ = (info.get_u64(k), info.get_i64(k), info.get_f64(k), info.get_fields(k));
            }
        }

        #[test]
        fn parse_never_panics_on_info_like_text(
            lines in proptest::collection::vec("(#|slave[0-9]|[a-z_]{1,8})[:=,#a-z0-9.\\r ]{0,30}", 0..40)
        ) {
            let text = lines.join("\r\n");
            let info = Info::parse(&text);
            let _ = info.replicas();
            let _ = info.sections();
        }

        #[test]
        fn target_parse_never_panics_or_leaks(spec in "\\PC*") {
            if let Err(e) = parse_target(&spec) {
                let _ = e.to_string();
            }
            let _ = redact_spec(&spec);
        }
    }
}
