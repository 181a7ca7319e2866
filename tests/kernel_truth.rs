//! Kernel ground truth: the tracer's copy-on-write count for a Redis server equals the
//! count the kernel keeps for that process itself, `wpcopy_count` of taskstats.
//!
//! `wpcopy_count` is +1 per `wp_page_copy()` of a task (copy-on-write copies of shared
//! anonymous pages, plus writes to zero-page entries and first writes to private file
//! pages: every write to a present page that allocated a new one, which is how the
//! tracer defines `cow_copy`). It is kept per thread, only for threads forked while delay
//! accounting was on; a `TASKSTATS_CMD_ATTR_TGID` query sums it over every thread of the
//! process, the exited ones included. So the tracer side is every `cow_copy` record of
//! the server's pid (any thread) with role `parent`, and the fork child's copies, which
//! the kernel charges to the child's own tgid, are left out of both.
//!
//! Real kernel, real Redis 7.0, real eBPF, as root. The taskstats query is a small
//! generic-netlink client below; the offset of `wpcopy_count` in `struct taskstats` is
//! read from the kernel's own BTF, not compiled in.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use testkit::{
    Recording, Server, by_label,
    clock::mono_ns,
    process::{children_of, signal},
    read_timeline, require_root,
};

/// Keys written under the BGSAVE: one page-sized value each, so each write copies one
/// page of its own.
const KEYS: u64 = 20_000;
/// Just under a page: with its sds header and terminator (4,006 bytes) a value takes a
/// 4 KiB jemalloc slot, a page of its own.
const VALUE_BYTES: usize = 4000;
/// Microseconds the fork child sleeps per key it saves (`rdb-key-save-delay`, an int):
/// 1000 s after the first key, so the child keeps every page shared, whatever the machine's
/// speed, until the test ends it with SIGUSR1 once the writes are done (Redis's own way
/// to cancel a child without flagging an error).
const KEY_SAVE_DELAY_US: &str = "1000000000";
/// Keys per pipeline of writes.
const BATCH: u64 = 1000;

/// `kernel.task_delayacct`, switched on for the test and restored when dropped (also on
/// a panic): taskstats' delay counters, `wpcopy_count` among them, only count while it
/// is on, and only for tasks forked after it went on.
struct DelayAccounting {
    before: String,
}

const DELAYACCT: &str = "/proc/sys/kernel/task_delayacct";

impl DelayAccounting {
    fn on() -> DelayAccounting {
        let before = std::fs::read_to_string(DELAYACCT)
            .unwrap_or_else(|e| panic!("{DELAYACCT}: {e} (kernel without delay accounting?)"));
        std::fs::write(DELAYACCT, "1").unwrap_or_else(|e| panic!("writing {DELAYACCT}: {e}"));
        DelayAccounting {
            before: before.trim().to_string(),
        }
    }
}

impl Drop for DelayAccounting {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(DELAYACCT, &self.before) {
            eprintln!("could not restore {DELAYACCT} to {}: {e}", self.before);
        }
    }
}

/// Where `struct taskstats` keeps what the test reads, from the running kernel's BTF
/// (`bpftool btf dump file /sys/kernel/btf/vmlinux`): the struct is append-only UAPI,
/// but reading the offset from the kernel itself proves the decoder right on this one.
struct Layout {
    /// `sizeof(struct taskstats)`.
    size: usize,
    /// Byte offset of `__u64 wpcopy_count`.
    wpcopy_count: usize,
    /// Byte offset of `__u16 version`.
    version: usize,
}

impl Layout {
    fn from_btf() -> Layout {
        let out = Command::new("bpftool")
            .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux"])
            .output()
            .expect("running bpftool (cargo xtask setup installs it)");
        assert!(out.status.success(), "bpftool btf dump: {out:?}");
        parse_btf_dump(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The `taskstats` struct in bpftool's raw BTF dump:
/// `[1020] STRUCT 'taskstats' size=560 vlen=72` then one
/// `\t'name' type_id=N bits_offset=B` line per member.
fn parse_btf_dump(dump: &str) -> Layout {
    let mut lines = dump
        .lines()
        .skip_while(|l| !l.contains("] STRUCT 'taskstats' "));
    let head = lines
        .next()
        .expect("no struct taskstats in the kernel's BTF");
    let size = field(head, "size=").expect("struct taskstats size");
    let offset_of = |name: &str| -> Option<usize> {
        let member = format!("'{name}' ");
        lines
            .clone()
            .take_while(|l| l.starts_with('\t'))
            .find(|l| l.trim_start().starts_with(&member))
            .and_then(|l| field(l, "bits_offset="))
            .map(|bits| {
                assert_eq!(bits % 8, 0, "{name} is a bit field");
                bits / 8
            })
    };
    Layout {
        size,
        wpcopy_count: offset_of("wpcopy_count")
            .expect("struct taskstats has no wpcopy_count (kernel older than 6.1?)"),
        version: offset_of("version").expect("struct taskstats has no version"),
    }
}

/// The number after `name` (`size=560`) among the words of `line`.
fn field(line: &str, name: &str) -> Option<usize> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .and_then(|v| v.parse().ok())
}

/// A minimal generic-netlink client for the `TASKSTATS` family (linux/genetlink.h,
/// linux/taskstats.h).
mod netlink {
    use super::*;

    const NLMSG_HDRLEN: usize = 16;
    const GENL_HDRLEN: usize = 4;
    const NLA_HDRLEN: usize = 4;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    /// Attribute type bits that are flags (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
    const NLA_TYPE_MASK: u16 = 0x3fff;

    const GENL_ID_CTRL: u16 = 0x10;
    const CTRL_CMD_GETFAMILY: u8 = 3;
    const CTRL_ATTR_FAMILY_ID: u16 = 1;
    const CTRL_ATTR_FAMILY_NAME: u16 = 2;

    const TASKSTATS_GENL_NAME: &[u8] = b"TASKSTATS\0";
    const TASKSTATS_GENL_VERSION: u8 = 1;
    const TASKSTATS_CMD_GET: u8 = 1;
    const TASKSTATS_CMD_ATTR_TGID: u16 = 2;
    const TASKSTATS_TYPE_TGID: u16 = 2;
    const TASKSTATS_TYPE_STATS: u16 = 3;
    const TASKSTATS_TYPE_AGGR_TGID: u16 = 5;

    fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// One request: netlink header, genetlink header, one attribute.
    fn request(family: u16, cmd: u8, version: u8, seq: u32, attr: u16, value: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + GENL_HDRLEN + align4(NLA_HDRLEN + value.len());
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
        m.extend_from_slice(&[cmd, version, 0, 0]);
        m.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&attr.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(len, 0);
        m
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// The attributes in `b`: (type without flag bits, payload).
    fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while b.len() >= NLA_HDRLEN {
            let len = usize::from(u16_at(b, 0));
            assert!(
                (NLA_HDRLEN..=b.len()).contains(&len),
                "bad netlink attribute"
            );
            out.push((u16_at(b, 2) & NLA_TYPE_MASK, &b[NLA_HDRLEN..len]));
            b = &b[align4(len).min(b.len())..];
        }
        out
    }

    pub struct Socket {
        fd: OwnedFd,
        seq: u32,
        family: u16,
    }

    impl Socket {
        /// A NETLINK_GENERIC socket with the TASKSTATS family resolved.
        pub fn open() -> io::Result<Socket> {
            // SAFETY: plain socket(2); the fd is owned right below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_GENERIC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a new descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // A reply that never comes fails the test instead of hanging it.
            let timeout = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            // SAFETY: valid option value of the size given.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut s = Socket {
                fd,
                seq: 0,
                family: GENL_ID_CTRL,
            };
            let reply = s.call(
                GENL_ID_CTRL,
                CTRL_CMD_GETFAMILY,
                1,
                CTRL_ATTR_FAMILY_NAME,
                TASKSTATS_GENL_NAME,
            )?;
            let id = attrs(&reply)
                .into_iter()
                .find(|(t, v)| *t == CTRL_ATTR_FAMILY_ID && v.len() >= 2)
                .map(|(_, v)| u16_at(v, 0))
                .ok_or_else(|| io::Error::other("no TASKSTATS family id in the reply"))?;
            s.family = id;
            Ok(s)
        }

        /// Sends one request and returns the attributes of its reply (after the
        /// genetlink header).
        fn call(
            &mut self,
            family: u16,
            cmd: u8,
            version: u8,
            attr: u16,
            value: &[u8],
        ) -> io::Result<Vec<u8>> {
            self.seq += 1;
            let msg = request(family, cmd, version, self.seq, attr, value);
            // SAFETY: msg is a valid buffer of msg.len() bytes; to the kernel (no address
            // needed: an unbound netlink socket is bound on first send).
            let sent =
                unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: buf is writable for buf.len() bytes.
                let n = unsafe {
                    libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                let b = &buf[..n as usize];
                if b.len() < NLMSG_HDRLEN {
                    return Err(io::Error::other("short netlink reply"));
                }
                let len = (u32_at(b, 0) as usize).min(b.len());
                if u32_at(b, 8) != self.seq {
                    continue; // a late answer to an earlier request
                }
                if u16_at(b, 4) == NLMSG_ERROR {
                    let errno = i32::from_ne_bytes(b[16..20].try_into().unwrap());
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                return Ok(b[NLMSG_HDRLEN + GENL_HDRLEN..len].to_vec());
            }
        }

        /// `struct taskstats` of the whole process `tgid` (all its threads, exited ones
        /// included), as the kernel's bytes.
        pub fn tgid_stats(&mut self, tgid: u32) -> io::Result<Vec<u8>> {
            let reply = self.call(
                self.family,
                TASKSTATS_CMD_GET,
                TASKSTATS_GENL_VERSION,
                TASKSTATS_CMD_ATTR_TGID,
                &tgid.to_ne_bytes(),
            )?;
            let aggr = attrs(&reply)
                .into_iter()
                .find(|(t, _)| *t == TASKSTATS_TYPE_AGGR_TGID)
                .ok_or_else(|| io::Error::other("no TASKSTATS_TYPE_AGGR_TGID in the reply"))?
                .1;
            let inner = attrs(aggr);
            let got = inner
                .iter()
                .find(|(t, v)| *t == TASKSTATS_TYPE_TGID && v.len() == 4)
                .map(|(_, v)| u32_at(v, 0));
            if got != Some(tgid) {
                return Err(io::Error::other(format!(
                    "reply for tgid {got:?}, not {tgid}"
                )));
            }
            inner
                .into_iter()
                .find(|(t, _)| *t == TASKSTATS_TYPE_STATS)
                .map(|(_, v)| v.to_vec())
                .ok_or_else(|| io::Error::other("no TASKSTATS_TYPE_STATS in the reply"))
        }
    }
}

/// `wpcopy_count` of process `pid`, all threads.
fn wpcopy_count(sock: &mut netlink::Socket, layout: &Layout, pid: u32) -> u64 {
    let stats = sock
        .tgid_stats(pid)
        .unwrap_or_else(|e| panic!("taskstats of tgid {pid}: {e}"));
    assert_eq!(
        stats.len(),
        layout.size,
        "struct taskstats from netlink vs the kernel's BTF"
    );
    let version = u16::from_ne_bytes(
        stats[layout.version..layout.version + 2]
            .try_into()
            .unwrap(),
    );
    // wpcopy_count and wpcopy_delay_total came with TASKSTATS_VERSION 13 (Linux 6.1).
    assert!(version >= 13, "taskstats version {version}");
    let at = layout.wpcopy_count;
    u64::from_ne_bytes(stats[at..at + 8].try_into().unwrap())
}

/// Parent `cow_copy` records of process `pid` stamped inside `[from, to]`.
fn tracer_parent_copies(t: &Value, pid: u32, from: u64, to: u64) -> u64 {
    t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "cow_copy" && e["role"] == "parent" && e["pid"] == pid)
        .filter(|e| (from..=to).contains(&e["ts_ns"].as_u64().unwrap()))
        .count() as u64
}

#[test]
fn bgsave_cow_copies_equal_the_kernels_wpcopy_count() {
    require_root();
    let layout = Layout::from_btf();
    // Before the server starts: its tasks must be forked with delay accounting on.
    let _delayacct = DelayAccounting::on();
    let server = Server::start(&by_label("redis-7.0"), &[]);
    let mut sock = netlink::Socket::open().expect("a TASKSTATS netlink socket");
    server.populate(KEYS, "key", VALUE_BYTES);
    server.config_set("rdb-key-save-delay", KEY_SAVE_DELAY_US);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.json");
    let rec = Recording::start(&server, &out, &[]);
    let mut con = server.client();

    // The window both sides cover: from just after the first taskstats reply to just
    // before the second request. Nothing writes to Redis at either edge.
    let kernel_before = wpcopy_count(&mut sock, &layout, server.pid);
    let from = mono_ns();
    let reply: String = redis::cmd("BGSAVE").query(&mut con).unwrap();
    assert!(reply.contains("started"), "{reply}");
    // One write to every value: SETRANGE changes the value in place, so each write
    // dirties the value's own page, shared with the child until copied.
    let mut key = 0;
    while key < KEYS {
        let mut pipe = redis::pipe();
        for k in key..(key + BATCH).min(KEYS) {
            pipe.cmd("SETRANGE")
                .arg(format!("key:{k}"))
                .arg(0)
                .arg("w")
                .ignore();
        }
        pipe.query::<()>(&mut con).unwrap();
        key += BATCH;
    }
    let children = children_of(server.pid);
    assert_eq!(children.len(), 1, "one fork child: {children:?}");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", children[0])).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).starts_with("redis-rdb-bgsave"),
        "{cmdline:?}"
    );
    assert!(signal(children[0], libc::SIGUSR1));
    let (status, _) = server.wait_bgsave_done(Duration::from_secs(120));
    // A child ended by SIGUSR1 leaves the last status as it was ("ok"), any other end
    // but success makes it "err".
    assert_eq!(status, "ok");
    // wait_bgsave_done returns once Redis reaped the child: the child has exited and the
    // writes are over.
    let to = mono_ns();
    let kernel_after = wpcopy_count(&mut sock, &layout, server.pid);
    // The tracer drains what the kernel already wrote before it exits.
    let stderr = rec.stop();

    let t = read_timeline(&out);
    // Nothing was dropped on the way, nor left untraced. `kernel.unmatched_completions`
    // is not asserted: faults in flight while the programs are being attached (in no set
    // order) can complete without their entry having been seen; a fault inside the
    // window whose entry was missed would show up below as a shortfall against the
    // kernel's count anyway.
    assert_eq!(t["lost_events"], 0, "{stderr}");
    assert_eq!(t["kernel"]["threads_full"], 0, "{stderr}");
    // cow_copy is exact only when the page-allocation hook is there.
    assert_eq!(
        t["run"]["options"]["approximate_kinds"],
        serde_json::json!([]),
        "{stderr}"
    );
    let epochs = t["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1, "one fork: {stderr}");
    assert_eq!(epochs[0]["reason"], "bgsave");
    assert_eq!(epochs[0]["end_reason"], "exit");
    assert_eq!(epochs[0]["parent_pid"], server.pid);

    let kernel = kernel_after - kernel_before;
    let tracer = tracer_parent_copies(&t, server.pid, from, to);
    println!(
        "server pid {}: kernel taskstats wpcopy_count +{kernel} ({kernel_before} -> \
         {kernel_after}), tracer parent cow_copy {tracer} (epoch 0 parent cow_copy {}, \
         whole run {}, unmatched completions {})",
        server.pid,
        epochs[0]["faults"]["parent"]["cow_copy"],
        tracer_parent_copies(&t, server.pid, 0, u64::MAX),
        t["kernel"]["unmatched_completions"],
    );
    // Each write hit a page of its own while the child still shared it (the child was
    // alive until after the last write): at least one copy per write, so the comparison
    // below is about thousands of copies, not two zeros.
    assert!(
        kernel >= KEYS,
        "only {kernel} copies for {KEYS} writes under BGSAVE"
    );
    let diff = tracer.abs_diff(kernel);
    assert!(
        diff * 100 <= kernel,
        "tracer {tracer} vs kernel {kernel} parent copies: {diff} apart, more than 1%"
    );
}

#[test]
fn btf_dump_parsing() {
    let dump = "[1019] PTR '(anon)' type_id=5\n\
                [1020] STRUCT 'taskstats' size=560 vlen=72\n\
                \t'version' type_id=18 bits_offset=0\n\
                \t'wpcopy_count' type_id=26 bits_offset=3200\n\
                [1021] STRUCT 'other' size=8 vlen=1\n\
                \t'wpcopy_count' type_id=26 bits_offset=0\n";
    let l = parse_btf_dump(dump);
    assert_eq!((l.size, l.version, l.wpcopy_count), (560, 0, 400));
}
