//! Loads the embedded eBPF object into the kernel and attaches every hook.
//!
//! The loader only moves bytes: it fills the object's `CONFIG` with tracepoint offsets read
//! from this kernel, loads, attaches, and hands the ring buffer and counter maps to the
//! caller. Dropping [`Probes`] detaches everything.

use std::{path::Path, time::Instant};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        PerfEvent, RawTracePoint, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::{UProbeLinkId, UProbeScope},
    },
};
use tracer_common::{
    CONFIG_GLOBAL, CalibrationTarget, ClientSlot, Config, FIELD_ABSENT, MAX_SERVERS, ServerLayout,
    ThreadSlot, counter, maps,
};

use crate::analysis::classify::Evidence;
use crate::kernel::{
    btf,
    tracefs::{self, Format, TracefsError},
};

/// The eBPF object built from `tracer-ebpf`, embedded at compile time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Most entries of the direct-mapped thread table; beyond `pid_max` of this size, two
/// traced threads can share an entry and the later one goes to the spill hash.
const MAX_THREAD_SLOTS: u32 = 1 << 16;

/// Errors loading or attaching the eBPF programs.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// tracefs problem (not mounted, tracepoint or field missing).
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    /// The kernel refused the object.
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("{what}: {source}")]
    Program {
        /// Which program and hook.
        what: String,
        /// Cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map was missing, had the wrong type, or an update failed.
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
    /// Listing CPUs failed.
    #[error("cannot list online CPUs ({0}): {1}")]
    Cpus(&'static str, std::io::Error),
}

/// Tunables of the kernel side.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// Where Redis attribution stops ([`tracer_common::cost_stage`]; `FULL` but in
    /// benchmarks).
    pub cost_stage: u32,
}

/// The attached programs and the maps userspace reads or writes.
pub struct Probes {
    ebpf: Ebpf,
    traced: BpfHashMap<MapData, u32, u32>,
    threads: Array<MapData, ThreadSlot>,
    thread_mask: u32,
    /// Hooks that could not be attached on this kernel, with what is lost.
    pub degraded: Vec<String>,
    /// What the fault classification can rely on with the hooks attached.
    pub evidence: Evidence,
    /// Time from opening the object to the last attach.
    pub attach_time: std::time::Duration,
    /// Objects (device, inode) whose `fork` is probed.
    fork_call_objects: Vec<(u64, u64)>,
    /// Binaries (device, inode) in the phase table, with their first word.
    phase_binaries: Vec<((u64, u64), u32)>,
    /// First unused word of the phase table.
    phase_next: u32,
}

/// A tracepoint hook: program name, category, event, and whether it can be missed.
struct Hook {
    program: &'static str,
    category: &'static str,
    name: &'static str,
    /// `None` when required; otherwise what is lost without it.
    loses: Option<&'static str>,
}

const ALLOC_LOSS: &str = "copy-on-write copies are told from reuses by the fork epoch (approximate); huge-page faults are not flagged";
const RSS_LOSS: &str = "swap-ins are counted from major faults (approximate: swap-cache hits missed) and first touches from page allocations; swap level events are not recorded";

/// Raw tracepoints: the hottest hooks (no trace record is built). Their arguments are the
/// tracepoint's C prototype, stable since each was added.
const RAW_HOOKS: &[Hook] = &[
    Hook {
        program: "page_fault_user",
        category: "exceptions",
        name: "page_fault_user",
        loses: None,
    },
    Hook {
        program: "page_fault_kernel",
        category: "exceptions",
        name: "page_fault_kernel",
        loses: Some("faults taken in kernel mode (e.g. read() into a buffer) are not seen"),
    },
    Hook {
        program: "mm_page_alloc",
        category: "kmem",
        name: "mm_page_alloc",
        loses: Some(ALLOC_LOSS),
    },
];

/// Classic tracepoints (their record fields are read at offsets from tracefs).
const HOOKS: &[Hook] = &[
    Hook {
        program: "rss_stat",
        category: "kmem",
        name: "rss_stat",
        loses: Some(RSS_LOSS),
    },
    Hook {
        program: "task_newtask",
        category: "task",
        name: "task_newtask",
        loses: None,
    },
    Hook {
        program: "sched_process_exit",
        category: "sched",
        name: "sched_process_exit",
        loses: None,
    },
    Hook {
        program: "reclaim_begin",
        category: "vmscan",
        name: "mm_vmscan_direct_reclaim_begin",
        loses: Some("swap-outs by direct reclaim inside a fault may be counted as swap-ins"),
    },
    Hook {
        program: "reclaim_end",
        category: "vmscan",
        name: "mm_vmscan_direct_reclaim_end",
        loses: Some("swap-outs by direct reclaim inside a fault may be counted as swap-ins"),
    },
    Hook {
        program: "reclaim_begin",
        category: "vmscan",
        name: "mm_vmscan_memcg_reclaim_begin",
        loses: Some("swap-outs by memcg reclaim inside a fault may be counted as swap-ins"),
    },
    Hook {
        program: "reclaim_end",
        category: "vmscan",
        name: "mm_vmscan_memcg_reclaim_end",
        loses: Some("swap-outs by memcg reclaim inside a fault may be counted as swap-ins"),
    },
    Hook {
        program: "mm_vmscan_write_folio",
        category: "vmscan",
        name: "mm_vmscan_write_folio",
        loses: Some("swap writes are not counted"),
    },
];

/// Entries of the thread table for this machine: `pid_max` rounded up to a power of
/// two, at most [`MAX_THREAD_SLOTS`] (`MEMTRACE_THREAD_SLOTS` overrides, for tests of the
/// spill path).
pub fn thread_slots() -> u32 {
    if let Some(n) = std::env::var("MEMTRACE_THREAD_SLOTS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| n.is_power_of_two())
    {
        return n;
    }
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(MAX_THREAD_SLOTS);
    pid_max.next_power_of_two().min(MAX_THREAD_SLOTS)
}

/// Reads every tracepoint layout the programs need from `root` (tracefs); the offset of
/// `task_struct.pagefault_disabled`, when BTF gave it, goes in as it is.
pub fn read_config(root: &Path, pagefault_disabled: Option<u32>) -> Result<Config, TracefsError> {
    let fmt = |c: &str, n: &str| tracefs::read_format(root, c, n);
    let optional = |f: Result<Format, TracefsError>, field: &str| {
        f.ok()
            .and_then(|f| f.optional(field))
            .unwrap_or(FIELD_ABSENT)
    };
    // The fault hooks are raw tracepoints (arguments, not record fields); the format is
    // still read to confirm the tracepoint exists with the fields its prototype feeds.
    let fault = fmt("exceptions", "page_fault_user")?;
    fault.require("address")?;
    fault.require("error_code")?;
    let newtask = fmt("task", "task_newtask")?;
    // Optional hooks: their fields stay absent when the tracepoint is (see `HOOKS`).
    let hook = |c: &str, n: &str| -> Result<Option<Format>, TracefsError> {
        if tracefs::exists(root, c, n) {
            fmt(c, n).map(Some)
        } else {
            Ok(None)
        }
    };
    let field =
        |f: &Option<Format>, name: &str| f.as_ref().map_or(Ok(FIELD_ABSENT), |f| f.require(name));
    let rss = hook("kmem", "rss_stat")?;
    if let Some(alloc) = hook("kmem", "mm_page_alloc")? {
        alloc.require("order")?;
        alloc.require("gfp_flags")?;
    }
    Ok(Config {
        fork_child_pid: FIELD_ABSENT,
        newtask_pid: newtask.require("pid")?,
        newtask_clone_flags: newtask.require("clone_flags")?,
        exit_group_dead: optional(fmt("sched", "sched_process_exit"), "group_dead"),
        rss_mm_id: field(&rss, "mm_id")?,
        rss_curr: field(&rss, "curr")?,
        rss_member: field(&rss, "member")?,
        rss_size: field(&rss, "size")?,
        write_folio_pfn: optional(fmt("vmscan", "mm_vmscan_write_folio"), "pfn"),
        write_folio_flags: optional(fmt("vmscan", "mm_vmscan_write_folio"), "reclaim_flags"),
        thread_mask: thread_slots() - 1,
        task_pagefault_disabled: pagefault_disabled.unwrap_or(FIELD_ABSENT),
        cost_stage: tracer_common::cost_stage::FULL,
    })
}

/// Every tracepoint the programs hook, as (category, event, what is lost without it;
/// `None` = required). For `check`.
pub fn tracepoints() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    RAW_HOOKS
        .iter()
        .chain(HOOKS)
        .map(|h| (h.category, h.name, h.loses))
        .collect()
}

impl Probes {
    /// Loads and attaches everything. Nothing is traced until [`Probes::trace`] is called.
    pub fn attach(opts: ProbeOptions) -> Result<Probes, LoadError> {
        let started = Instant::now();
        let root = tracefs::ensure_mounted()?;
        let pagefault_disabled = btf::task_pagefault_disabled();
        let config = Config {
            cost_stage: opts.cost_stage,
            ..read_config(&root, pagefault_disabled.as_ref().ok().copied())?
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(maps::EVENTS, opts.ring_buffer_bytes)
            .map_max_entries(maps::THREADS, config.thread_mask + 1)
            .load(EBPF_OBJECT)
            .map_err(LoadError::Load)?;
        let mut degraded = Vec::new();
        if let Err(e) = pagefault_disabled {
            degraded.push(format!(
                "task_struct.pagefault_disabled not found in BTF ({e}): a non-faulting read \
                 of the target's memory by another eBPF program can be counted as a fault"
            ));
        }
        let mut evidence = Evidence::FULL;
        for hook in RAW_HOOKS.iter().chain(HOOKS) {
            if !tracefs::exists(&root, hook.category, hook.name) {
                let Some(loss) = hook.loses else {
                    return Err(TracefsError::MissingTracepoint(
                        format!("{}:{}", hook.category, hook.name),
                        root.join("events").join(hook.category).join(hook.name),
                    )
                    .into());
                };
                degraded.push(format!(
                    "{}:{} unavailable: {loss}",
                    hook.category, hook.name
                ));
                match hook.program {
                    "mm_page_alloc" => evidence.page_alloc = false,
                    "rss_stat" => evidence.rss_stat = false,
                    _ => {}
                }
                continue;
            }
            if let Err(e) = attach_hook(&mut ebpf, hook) {
                match (hook.loses, e) {
                    (Some(loss), LoadError::Program { source, .. }) => degraded.push(format!(
                        "{}:{} unavailable ({source}): {loss}",
                        hook.category, hook.name
                    )),
                    (_, e) => return Err(e),
                }
            }
        }
        attach_completions(&mut ebpf)?;
        let traced = take(&mut ebpf, maps::TRACED, BpfHashMap::try_from)?;
        let threads = take(&mut ebpf, maps::THREADS, Array::try_from)?;
        Ok(Probes {
            ebpf,
            traced,
            threads,
            thread_mask: config.thread_mask,
            degraded,
            evidence,
            attach_time: started.elapsed(),
            fork_call_objects: Vec::new(),
            phase_binaries: Vec::new(),
            phase_next: 0,
        })
    }

    /// Starts tracing process `pid` (every thread it has now; new ones are picked up by
    /// the kernel) with `role` (`tracer_common::role`). `server` is the index of its Redis
    /// layout in `SERVERS` (0: none), set before or after with [`Probes::set_server`].
    pub fn trace(&mut self, pid: u32, role: u32, server: u32) -> Result<(), LoadError> {
        self.traced
            .insert(pid, role, 0)
            .map_err(|e| LoadError::Map(maps::TRACED, e.to_string()))?;
        let tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_else(|_| vec![pid]);
        for tid in tids {
            self.claim(tid, pid, role, server)?;
        }
        Ok(())
    }

    /// Gives thread `tid` of `tgid` a slot (the kernel does this itself for threads and
    /// processes created while tracing).
    fn claim(&mut self, tid: u32, tgid: u32, role: u32, server: u32) -> Result<(), LoadError> {
        let slot = ThreadSlot {
            tid,
            tgid,
            role,
            server: server as u16,
            ..ThreadSlot::default()
        };
        let index = tid & self.thread_mask;
        let owner = self.threads.get(&index, 0).map(|s| s.tid).unwrap_or(0);
        if owner == 0 || owner == tid {
            return self
                .threads
                .set(index, slot, 0)
                .map_err(|e| LoadError::Map(maps::THREADS, e.to_string()));
        }
        let mut spill: BpfHashMap<_, u32, ThreadSlot> = map_mut(&mut self.ebpf, maps::SPILL)?;
        spill
            .insert(tid, slot, 0)
            .map_err(|e| LoadError::Map(maps::SPILL, e.to_string()))?;
        let mut spilled: Array<_, u64> = map_mut(&mut self.ebpf, maps::SPILLED)?;
        spilled
            .set(0, 1, 0)
            .map_err(|e| LoadError::Map(maps::SPILLED, e.to_string()))
    }

    /// Turns attribution on for the server whose threads carry index `server`.
    pub fn set_server(&mut self, server: u32, layout: ServerLayout) -> Result<(), LoadError> {
        if server == 0 || server >= MAX_SERVERS {
            return Err(LoadError::Map(
                maps::SERVERS,
                format!("index {server} out of range"),
            ));
        }
        let mut servers: Array<_, ServerLayout> = map_mut(&mut self.ebpf, maps::SERVERS)?;
        servers
            .set(server, layout, 0)
            .map_err(|e| LoadError::Map(maps::SERVERS, e.to_string()))
    }

    /// Puts the phase ranges of the binary `id` (device, inode), whose code spans
    /// `text` (run-time addresses of this process), in the phase table; returns the first
    /// word of its part. A binary already there (another server of the same build) is
    /// reused: cells are relative to the start of its code.
    pub fn load_phase_table(
        &mut self,
        id: (u64, u64),
        text: (u64, u64),
        ranges: &[(u64, u64)],
        allocator: &[(u64, u64)],
    ) -> Result<u32, LoadError> {
        use tracer_common::{PHASE_CELL_BYTES, PHASE_CELLS_PER_WORD, PHASE_TABLE_WORDS};
        if let Some(&(_, base)) = self.phase_binaries.iter().find(|(b, _)| *b == id) {
            return Ok(base);
        }
        let cells = text.1.saturating_sub(text.0).div_ceil(PHASE_CELL_BYTES);
        let words = cells.div_ceil(PHASE_CELLS_PER_WORD);
        let base = self.phase_next;
        if u64::from(base) + words > u64::from(PHASE_TABLE_WORDS) {
            return Err(LoadError::Map(
                maps::PHASE_TABLE,
                format!("no room for {words} more words (traced binaries' code over 16 MiB)"),
            ));
        }
        let mut merged: std::collections::BTreeMap<u64, u64> = Default::default();
        for (word, bits) in tracer_common::phase_table_words(text.0, ranges, allocator) {
            *merged.entry(word).or_default() |= bits;
        }
        let mut table: Array<_, u64> = map_mut(&mut self.ebpf, maps::PHASE_TABLE)?;
        for (word, bits) in merged {
            table
                .set(base + word as u32, bits, 0)
                .map_err(|e| LoadError::Map(maps::PHASE_TABLE, e.to_string()))?;
        }
        self.phase_next = base + words as u32;
        self.phase_binaries.push((id, base));
        Ok(base)
    }

    /// Adds clients of process `tgid` that exist already to the client table (the
    /// `linkClient` probe adds later ones). Uses the kernel's own probing order.
    pub fn seed_clients(&mut self, tgid: u32, clients: &[u64]) -> Result<usize, LoadError> {
        use tracer_common::{CLIENT_PROBES, CLIENT_SLOTS, client_home, client_slot_state as st};
        let mut table: Array<_, ClientSlot> = map_mut(&mut self.ebpf, maps::CLIENTS)?;
        let mut added = 0;
        'clients: for &ptr in clients {
            let home = client_home(ptr, tgid);
            for i in 0..CLIENT_PROBES {
                let idx = (home + i) & (CLIENT_SLOTS - 1);
                let cur = table.get(&idx, 0).unwrap_or_default();
                if cur.state == st::LIVE && cur.ptr == ptr && cur.tgid == tgid {
                    continue 'clients;
                }
                if cur.state != st::LIVE {
                    let slot = ClientSlot {
                        ptr,
                        tgid,
                        state: st::LIVE,
                    };
                    table
                        .set(idx, slot, 0)
                        .map_err(|e| LoadError::Map(maps::CLIENTS, e.to_string()))?;
                    added += 1;
                    continue 'clients;
                }
            }
        }
        Ok(added)
    }

    /// Keeps the client table current for process `pid`: probes on `linkClient`, the
    /// return of `createClient` (which may have `linkClient` inlined) and `unlinkClient`
    /// of its executable (`binary`, reached through `/proc/PID/exe`).
    pub fn attach_client_probes(&mut self, binary: &Path, pid: u32) -> Result<(), LoadError> {
        for (program, symbol) in [
            ("client_linked", "linkClient"),
            ("client_created", "createClient"),
            ("client_unlinked", "unlinkClient"),
        ] {
            self.attach_uprobe(program, symbol, binary, Some(pid))?;
        }
        Ok(())
    }

    /// Attaches the calibration probe on `call()` of `pid`'s executable and tells it which
    /// client to wait for. Detach with [`Probes::end_calibration`].
    pub fn begin_calibration(
        &mut self,
        binary: &Path,
        pid: u32,
        target: CalibrationTarget,
    ) -> Result<UProbeLinkId, LoadError> {
        let mut targets: BpfHashMap<_, u32, CalibrationTarget> =
            map_mut(&mut self.ebpf, maps::CALIBRATE)?;
        targets
            .insert(pid, target, 0)
            .map_err(|e| LoadError::Map(maps::CALIBRATE, e.to_string()))?;
        self.attach_uprobe("calibrate_call", "call", binary, Some(pid))
    }

    /// Detaches the calibration probe of `pid`.
    pub fn end_calibration(&mut self, pid: u32, link: UProbeLinkId) {
        if let Ok(prog) = typed::<UProbe>(&mut self.ebpf, "calibrate_call", "calibrate_call") {
            let _ = prog.detach(link);
        }
        if let Ok(mut targets) =
            map_mut::<BpfHashMap<_, u32, CalibrationTarget>>(&mut self.ebpf, maps::CALIBRATE)
        {
            let _ = targets.remove(&pid);
        }
    }

    fn attach_uprobe(
        &mut self,
        program: &str,
        symbol: &str,
        binary: &Path,
        pid: Option<u32>,
    ) -> Result<UProbeLinkId, LoadError> {
        let what = format!("uprobe {program} on {}:{symbol}", binary.display());
        let prog: &mut UProbe = typed(&mut self.ebpf, program, &what)?;
        if prog.fd().is_err() {
            prog.load().map_err(failed(&what))?;
        }
        let scope = match pid.and_then(std::num::NonZeroU32::new) {
            Some(p) => UProbeScope::OneProcess(p),
            None => UProbeScope::AllProcesses,
        };
        prog.attach(symbol, binary, scope)
            .map_err(|source| LoadError::Program { what, source })
    }

    /// Measures libc `fork()` calls in `object` (see [`crate::kernel::libc_fork`]): a
    /// uprobe and a uretprobe on `fork`, attached for every process mapping that file and
    /// filtered to traced ones in the kernel. Attaching the same object twice is a no-op.
    pub fn attach_fork_call(&mut self, object: &Path) -> Result<(), LoadError> {
        // The same file reached by two paths (two processes' roots) is one probe.
        let id = std::fs::metadata(object)
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            })
            .map_err(|e| LoadError::Map("fork probe", format!("{}: {e}", object.display())))?;
        if self.fork_call_objects.contains(&id) {
            return Ok(());
        }
        for name in ["fork_call_enter", "fork_call_exit"] {
            self.attach_uprobe(name, crate::kernel::libc_fork::SYMBOL, object, None)?;
        }
        self.fork_call_objects.push(id);
        Ok(())
    }

    /// Takes the ring buffer out, so it can be drained after the programs detach.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        take(&mut self.ebpf, maps::EVENTS, RingBuf::try_from)
    }

    /// The kernel's run time and run count of all our programs so far (both 0 unless
    /// BPF statistics are on: `kernel.bpf_stats_enabled=1` or a `BPF_ENABLE_STATS` fd).
    pub fn run_totals(&self) -> (std::time::Duration, u64) {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok())
            .fold((std::time::Duration::ZERO, 0), |(t, n), i| {
                (t + i.run_time(), n + i.run_count())
            })
    }

    /// Takes the counters out, so they can be read after the programs detach.
    pub fn take_counters(&mut self) -> Result<KernelCounterMap, LoadError> {
        take(&mut self.ebpf, maps::COUNTERS, PerCpuArray::try_from).map(KernelCounterMap)
    }
}

/// Loads (once) and attaches one tracepoint hook.
fn attach_hook(ebpf: &mut Ebpf, hook: &Hook) -> Result<(), LoadError> {
    let raw = RAW_HOOKS.iter().any(|h| std::ptr::eq(h, hook));
    let what = format!(
        "{}tracepoint {}:{} (program {})",
        if raw { "raw " } else { "" },
        hook.category,
        hook.name,
        hook.program
    );
    let attached = if raw {
        let prog: &mut RawTracePoint = typed(ebpf, hook.program, &what)?;
        if prog.fd().is_err() {
            prog.load().map_err(failed(&what))?;
        }
        prog.attach(hook.name).map(drop)
    } else {
        let prog: &mut TracePoint = typed(ebpf, hook.program, &what)?;
        if prog.fd().is_err() {
            prog.load().map_err(failed(&what))?;
        }
        prog.attach(hook.category, hook.name).map(drop)
    };
    attached.map_err(|source| LoadError::Program { what, source })
}

/// The completion hooks: the minor/major page-fault software events on every CPU.
fn attach_completions(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let cpus = aya::util::online_cpus().map_err(|(what, e)| LoadError::Cpus(what, e))?;
    for (name, event) in [
        ("fault_done_minor", SoftwareEvent::PageFaultsMin),
        ("fault_done_major", SoftwareEvent::PageFaultsMaj),
    ] {
        let what = format!("perf event {event:?} (program {name})");
        let prog: &mut PerfEvent = typed(ebpf, name, &what)?;
        prog.load().map_err(failed(&what))?;
        for &cpu in &cpus {
            prog.attach(
                PerfEventConfig::Software(event),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Period(1),
                false,
            )
            .map_err(|source| LoadError::Program {
                what: format!("{what} on CPU {cpu}"),
                source,
            })?;
        }
    }
    Ok(())
}

/// Takes map `name` out of the object as type `M`.
fn take<M, E: std::fmt::Display>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<M, E>,
) -> Result<M, LoadError> {
    let map = ebpf
        .take_map(name)
        .ok_or(LoadError::Map(name, "missing".into()))?;
    convert(map).map_err(|e| LoadError::Map(name, e.to_string()))
}

/// Map `name`, borrowed from the object as type `M`.
fn map_mut<'a, M>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<M, LoadError>
where
    M: TryFrom<&'a mut aya::maps::Map>,
    <M as TryFrom<&'a mut aya::maps::Map>>::Error: std::fmt::Display,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(LoadError::Map(name, "missing".into()))?;
    M::try_from(map).map_err(|e| LoadError::Map(name, e.to_string()))
}

/// Builds the error for a failed load or attach of `what`.
fn failed(what: &str) -> impl FnOnce(aya::programs::ProgramError) -> LoadError + '_ {
    move |source| LoadError::Program {
        what: what.to_string(),
        source,
    }
}

/// The program `name`, as type `P`.
fn typed<'a, P>(ebpf: &'a mut Ebpf, name: &str, what: &str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Map("program", format!("{name} missing from the eBPF object")))?
        .try_into()
        .map_err(failed(what))
}

/// The per-CPU counter array of the kernel side.
pub struct KernelCounterMap(PerCpuArray<MapData, u64>);

/// Counters kept by the eBPF programs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelCounters {
    /// Events dropped because the ring buffer was full.
    pub ring_buffer_full: u64,
    /// Traced threads that got no slot (the thread table and its spill map were full):
    /// their faults are not recorded.
    pub threads_full: u64,
    /// Clients the client table had no room for: their parse-stage faults have no client.
    pub clients_full: u64,
    /// Fault completions with no recorded entry.
    pub unmatched_completions: u64,
    /// Anonymous pages written to swap by the whole machine during the run.
    pub system_swap_writes: u64,
}

impl KernelCounterMap {
    /// Sum over CPUs of counter `index` (`tracer_common::counter`).
    pub fn sum(&self, index: u32) -> u64 {
        self.0
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// All counters.
    pub fn read(&self) -> KernelCounters {
        KernelCounters {
            ring_buffer_full: self.sum(counter::LOST),
            threads_full: self.sum(counter::THREADS_FULL),
            clients_full: self.sum(counter::CLIENTS_FULL),
            unmatched_completions: self.sum(counter::UNMATCHED),
            system_swap_writes: self.sum(counter::SYS_SWAP_WRITES),
        }
    }
}

#[cfg(test)]
mod tests {
    use object::{Object, ObjectSection, SectionKind};

    use super::EBPF_OBJECT;

    /// Helper ids (`include/uapi/linux/bpf.h`).
    const PROBE_WRITE_USER: i32 = 36;
    const PROBE_READ_USER: i32 = 112;

    /// The tracepoints attached are the memory, task and reclaim ones the README names:
    /// no system call is traced (fork() is timed by uprobes on libc instead).
    #[test]
    fn no_syscall_tracepoint_is_attached() {
        let hooks: Vec<(&str, &str)> = super::RAW_HOOKS
            .iter()
            .chain(super::HOOKS)
            .map(|h| (h.category, h.name))
            .collect();
        for (category, name) in &hooks {
            assert!(
                matches!(
                    *category,
                    "exceptions" | "kmem" | "task" | "sched" | "vmscan"
                ),
                "{category}:{name}"
            );
            assert!(!name.starts_with("sys_"), "{category}:{name}");
        }
        assert_eq!(hooks.len(), 11);
    }

    /// Redis's memory is only read: no program of the embedded object calls the one
    /// helper that writes user memory. Every helper call of every program is checked.
    #[test]
    fn no_program_writes_user_memory() {
        let file = object::File::parse(EBPF_OBJECT).expect("the embedded eBPF object");
        let mut helpers = std::collections::BTreeMap::new();
        for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
            let code = section.data().expect("section data");
            for insn in code.chunks_exact(8) {
                // BPF_JMP | BPF_CALL with source register 0: a helper call, its id in
                // `imm` (BPF-to-BPF calls and kfuncs have another source register).
                if insn[0] == 0x85 && insn[1] >> 4 == 0 {
                    let id = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                    *helpers.entry(id).or_insert(0u32) += 1;
                }
            }
        }
        // The positive control: the reads are seen, so the scan reads the code.
        assert!(
            helpers.get(&PROBE_READ_USER).is_some_and(|&n| n >= 10),
            "{helpers:?}"
        );
        assert_eq!(helpers.get(&PROBE_WRITE_USER), None, "{helpers:?}");
    }
}
