//! Gathers the facts the verdicts need: privileges, kernel features, host settings, and
//! optionally one Redis process. Loading the real eBPF object is the decisive test of
//! the kernel side: what attaches is what `record` gets.

use std::{path::Path, time::Duration};

use super::verdicts::{self, Check};
use crate::{
    kernel::host::HostInfo,
    kernel::loader::{self, ProbeOptions, Probes},
    kernel::tracefs,
    redis::{
        info::RedisConn,
        locate,
        session::{Kernel, RedisSession},
        symbols::ServerSymbols,
    },
};

/// Runs every check. `pid` or `redis` add the per-server checks.
pub fn gather(pid: Option<u32>, redis: Option<&str>) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    let euid = nix::unistd::geteuid().as_raw();
    let privileged = euid == 0;
    checks.push(verdicts::privileges(
        euid,
        crate::kernel::privileges::effective(),
    ));
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    checks.push(verdicts::kernel(&release));
    checks.push(if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check::pass("BTF", "/sys/kernel/btf/vmlinux present")
    } else {
        Check::fail(
            "BTF",
            "no /sys/kernel/btf/vmlinux: the fault programs read task registers through BTF",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    });
    checks.extend(tracepoints(privileged));
    checks.push(
        if Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
            Check::pass("uprobes", "uprobe PMU present (fork() call timing)")
        } else {
            Check::warn(
                "uprobes",
                "no uprobe PMU: fork() is timed by its syscall only",
                "use a kernel with CONFIG_UPROBE_EVENTS=y",
            )
        },
    );
    if privileged {
        checks.extend(load_everything());
    }
    let host = HostInfo::read();
    checks.push(verdicts::thp(host.thp_enabled.as_deref()));
    checks.push(verdicts::overcommit(host.overcommit_memory));
    checks.push(verdicts::swap(
        host.swap_devices.len(),
        host.swap_total_bytes.unwrap_or(0),
        host.swap_free_bytes.unwrap_or(0),
        host.swappiness,
    ));

    let mut conn = None;
    let target = match (pid, redis) {
        (Some(pid), _) => Some(pid),
        (None, Some(spec)) => {
            let resolved = locate::resolve_redis(spec, Duration::from_secs(2))?;
            for w in &resolved.warnings {
                checks.push(Check::warn("redis", w.clone(), "see the message"));
            }
            conn = resolved.conn;
            Some(resolved.pid)
        }
        (None, None) => None,
    };
    if let Some(pid) = target {
        checks.extend(server(pid, conn, host.mem_total_bytes.unwrap_or(0))?);
        if privileged {
            checks.push(attribution(pid, redis));
        }
    }
    Ok(checks)
}

/// tracefs and each tracepoint the programs use.
fn tracepoints(privileged: bool) -> Vec<Check> {
    let root = if privileged {
        tracefs::ensure_mounted().ok()
    } else {
        tracefs::find_mounted()
    };
    let Some(root) = root else {
        return vec![Check::fail(
            "tracefs",
            "not mounted and cannot be mounted",
            "mount -t tracefs tracefs /sys/kernel/tracing (as root)",
        )];
    };
    let mut out = vec![Check::pass("tracefs", format!("at {}", root.display()))];
    for (category, name, loses) in loader::tracepoints() {
        let what = format!("tracepoint {category}:{name}");
        out.push(if tracefs::exists(&root, category, name) {
            Check::pass(&what, "present")
        } else {
            match loses {
                None => Check::fail(&what, "missing (required)", "use a kernel that has it"),
                Some(loss) => Check::warn(
                    &what,
                    format!("missing: {loss}"),
                    "use a kernel that has it",
                ),
            }
        });
    }
    out
}

/// Loads and attaches the real programs (perf events and the fork() uprobe included),
/// then detaches them.
fn load_everything() -> Vec<Check> {
    let started = std::time::Instant::now();
    match Probes::attach(ProbeOptions {
        ring_buffer_bytes: 1 << 20,
        cost_stage: tracer_common::cost_stage::FULL,
    }) {
        Ok(mut probes) => {
            let mut out = vec![Check::pass(
                "eBPF programs",
                format!(
                    "loaded and attached in {:.0} ms (then detached)",
                    started.elapsed().as_secs_f64() * 1e3
                ),
            )];
            for d in &probes.degraded {
                out.push(Check::warn(
                    "eBPF programs",
                    d.clone(),
                    "use a kernel that has it",
                ));
            }
            let fork = crate::kernel::libc_fork::locate(std::process::id())
                .map_err(|e| e.to_string())
                .and_then(|obj| probes.attach_fork_call(&obj).map_err(|e| e.to_string()));
            out.push(match fork {
                Ok(()) => Check::pass("fork() uprobe", "attached to libc fork"),
                Err(e) => Check::warn(
                    "fork() uprobe",
                    e,
                    "fork durations will be the clone syscall only",
                ),
            });
            out
        }
        Err(e) => vec![Check::fail(
            "eBPF programs",
            format!("cannot load: {e}"),
            "see the error; `check` lists the missing kernel features above",
        )],
    }
}

/// Checks of one server process.
fn server(pid: u32, conn: Option<RedisConn>, ram: u64) -> anyhow::Result<Vec<Check>> {
    let mut out = Vec::new();
    let (info, _) = crate::kernel::target::describe(pid)?;
    out.push(Check::pass(
        "target",
        format!("pid {pid} ({}, {})", info.comm, info.exe),
    ));
    out.push(match ServerSymbols::read(pid) {
        Ok(syms) => match syms.get("server") {
            Some(s) => Check::pass(
                "attribution symbols",
                format!("`server` is {} bytes; {} symbols", s.size, syms.len()),
            ),
            None => Check::warn(
                "attribution symbols",
                "no exported `server` symbol (not redis-server/valkey-server, or stripped of .dynsym)",
                "faults are counted without attribution",
            ),
        },
        Err(e) => Check::warn(
            "attribution symbols",
            e.to_string(),
            "faults are counted without attribution",
        ),
    });
    match crate::analysis::samples::read_proc_mem(pid) {
        Ok(m) => {
            let huge = m.anon_huge_bytes.unwrap_or(0);
            if huge > 0 {
                out.push(Check::warn(
                    "THP in Redis",
                    format!("{} MiB of huge pages mapped", huge >> 20),
                    "echo never > /sys/kernel/mm/transparent_hugepage/enabled and restart Redis",
                ));
            }
            out.push(if m.swap_bytes > 0 {
                Check::warn(
                    "Redis in swap",
                    format!("{} KiB of pid {pid} is in swap", m.swap_bytes >> 10),
                    "every touch of those pages is a disk read: add RAM or lower maxmemory",
                )
            } else {
                Check::pass("Redis in swap", "nothing swapped out")
            });
        }
        Err(e) => out.push(Check::warn(
            "Redis memory",
            e.to_string(),
            "run as root to read /proc/PID/smaps_rollup",
        )),
    }
    if let Some(mut c) = conn {
        match c.info("memory") {
            Ok(i) => out.push(verdicts::maxmemory(
                i.get_u64("maxmemory").unwrap_or(0),
                i.get_u64("used_memory").unwrap_or(0),
                ram,
            )),
            Err(e) => out.push(Check::warn(
                "maxmemory",
                e.to_string(),
                "give --redis with the password (redis://user:pass@host:port)",
            )),
        }
    }
    Ok(out)
}

/// Discovers the server's layout as `record` would (the programs loaded, a probe on
/// `call` for a moment, two connections blocked in BLPOP and released) and reports the
/// build, its allocator and whether the layout was found and verified.
fn attribution(pid: u32, redis: Option<&str>) -> Check {
    let what = "attribution layout";
    let spec = redis.and_then(|s| crate::redis::info::parse_target(s).ok());
    let mut probes = match Probes::attach(ProbeOptions {
        ring_buffer_bytes: 1 << 20,
        cost_stage: tracer_common::cost_stage::FULL,
    }) {
        Ok(p) => p,
        Err(e) => return Check::fail(what, format!("cannot load the programs: {e}"), "see above"),
    };
    let ring = match probes.take_events() {
        Ok(r) => r,
        Err(e) => return Check::fail(what, e.to_string(), "see above"),
    };
    let (tx, events) = std::sync::mpsc::sync_channel(16);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let Ok(reader) = crate::kernel::reader::spawn(
        ring,
        tx,
        std::sync::Arc::clone(&stop),
        Duration::from_millis(2),
    ) else {
        return Check::fail(what, "cannot start the ring buffer reader", "see above");
    };
    let mut stash = Vec::new();
    let started = RedisSession::start(
        pid,
        spec,
        128,
        1,
        Kernel {
            probes: &mut probes,
            events: &events,
            stash: &mut stash,
        },
    );
    drop(probes);
    stop.store(true, std::sync::atomic::Ordering::Release);
    drop(events);
    let _ = reader.join();
    match started {
        Ok((session, warnings)) => {
            let i = &session.info;
            let mut detail = format!(
                "{} {} ({} allocator): layout discovered and verified; phases: {}",
                i.server.product,
                i.server.version,
                i.allocator.as_deref().unwrap_or("unknown"),
                i.phases.join(", ")
            );
            for w in warnings {
                detail.push_str("; ");
                detail.push_str(&w);
            }
            Check::pass(what, detail)
        }
        Err(e) => Check::warn(
            what,
            e.to_string(),
            "faults are counted without command/key attribution",
        ),
    }
}
