//! Loads the embedded eBPF object into the kernel and attaches every hook.
//!
//! The loader only moves bytes: it fills the object's `CONFIG` with tracepoint offsets read
//! from this kernel, loads, attaches, and hands the ring buffer and counter maps to the
//! caller. Dropping [`Probes`] detaches everything.

use std::{path::Path, time::Instant};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        PerfEvent, RawTracePoint, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
        uprobe::UProbeScope,
    },
};
use tracer_common::{CONFIG_GLOBAL, Config, FIELD_ABSENT, RedisLayout, counter, maps};

use crate::classify::Evidence;
use crate::tracefs::{self, Format, TracefsError};

/// The eBPF object built from `tracer-ebpf`, embedded at compile time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

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
    /// A map was missing or had the wrong type.
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
}

/// The attached programs and the maps userspace reads.
pub struct Probes {
    ebpf: Ebpf,
    traced: BpfHashMap<MapData, u32, u32>,
    /// Hooks that could not be attached on this kernel, with what is lost.
    pub degraded: Vec<String>,
    /// What the fault classification can rely on with the hooks attached.
    pub evidence: Evidence,
    /// Time from opening the object to the last attach.
    pub attach_time: std::time::Duration,
    /// Objects (device, inode) whose `fork` is probed.
    fork_call_objects: Vec<(u64, u64)>,
}

/// A tracepoint hook: program name, category, event, and whether it can be missed.
struct Hook {
    program: &'static str,
    category: &'static str,
    name: &'static str,
    /// `None` when required; otherwise what is lost without it.
    loses: Option<&'static str>,
}

/// Raw tracepoints (program, event, what is lost without it; `None` = required).
const RAW_HOOKS: &[(&str, &str, Option<&str>)] = &[
    ("page_fault_user", "page_fault_user", None),
    (
        "page_fault_kernel",
        "page_fault_kernel",
        Some("faults taken in kernel mode (e.g. read() into a buffer) are not seen"),
    ),
];

const HOOKS: &[Hook] = &[
    Hook {
        program: "mm_page_alloc",
        category: "kmem",
        name: "mm_page_alloc",
        loses: Some(
            "copy-on-write copies are told from reuses by the fork epoch (approximate); huge-page faults are not flagged",
        ),
    },
    Hook {
        program: "rss_stat",
        category: "kmem",
        name: "rss_stat",
        loses: Some(
            "swap-ins are counted from major faults (approximate: swap-cache hits missed) and first touches from page allocations; swap level events are not recorded",
        ),
    },
    Hook {
        program: "task_newtask",
        category: "task",
        name: "task_newtask",
        loses: None,
    },
    Hook {
        program: "sched_process_fork",
        category: "sched",
        name: "sched_process_fork",
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

/// Reads every tracepoint layout the programs need from `root` (tracefs).
pub fn read_config(root: &Path) -> Result<Config, TracefsError> {
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
    let fork = fmt("sched", "sched_process_fork")?;
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
    let alloc = hook("kmem", "mm_page_alloc")?;
    Ok(Config {
        fork_child_pid: fork.require("child_pid")?,
        newtask_pid: newtask.require("pid")?,
        newtask_clone_flags: newtask.require("clone_flags")?,
        exit_group_dead: optional(fmt("sched", "sched_process_exit"), "group_dead"),
        rss_mm_id: field(&rss, "mm_id")?,
        rss_curr: field(&rss, "curr")?,
        rss_member: field(&rss, "member")?,
        rss_size: field(&rss, "size")?,
        alloc_order: field(&alloc, "order")?,
        alloc_gfp: field(&alloc, "gfp_flags")?,
        write_folio_pfn: optional(fmt("vmscan", "mm_vmscan_write_folio"), "pfn"),
        write_folio_flags: optional(fmt("vmscan", "mm_vmscan_write_folio"), "reclaim_flags"),
        _pad: 0,
    })
}

/// Every tracepoint the programs hook, as (category, event, what is lost without it;
/// `None` = required). For `check`.
pub fn tracepoints() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    RAW_HOOKS
        .iter()
        .map(|&(_, event, loses)| ("exceptions", event, loses))
        .chain(HOOKS.iter().map(|h| (h.category, h.name, h.loses)))
        .collect()
}

impl Probes {
    /// Loads and attaches everything. Nothing is traced until [`Probes::trace`] is called.
    pub fn attach(opts: ProbeOptions) -> Result<Probes, LoadError> {
        let started = Instant::now();
        let root = tracefs::ensure_mounted()?;
        let config = read_config(&root)?;
        let mut ebpf = EbpfLoader::new()
            .override_global(CONFIG_GLOBAL, &config, true)
            .map_max_entries(maps::EVENTS, opts.ring_buffer_bytes)
            .load(EBPF_OBJECT)
            .map_err(LoadError::Load)?;

        let mut degraded = Vec::new();
        let mut evidence = Evidence::FULL;
        for &(name, event, loses) in RAW_HOOKS {
            let what = format!("raw tracepoint {event} (program {name})");
            let prog: &mut RawTracePoint = typed(&mut ebpf, name, &what)?;
            prog.load().map_err(failed(&what))?;
            if let Err(source) = prog.attach(event) {
                match loses {
                    None => return Err(LoadError::Program { what, source }),
                    Some(loss) => degraded.push(format!("{event} unavailable ({source}): {loss}")),
                }
            }
        }
        for hook in HOOKS {
            let what = format!(
                "tracepoint {}:{} (program {})",
                hook.category, hook.name, hook.program
            );
            let available = tracefs::exists(&root, hook.category, hook.name);
            if !available {
                match hook.loses {
                    None => {
                        return Err(TracefsError::MissingTracepoint(
                            format!("{}:{}", hook.category, hook.name),
                            root.join("events").join(hook.category).join(hook.name),
                        )
                        .into());
                    }
                    Some(loss) => {
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
                }
            }
            let prog: &mut TracePoint = typed(&mut ebpf, hook.program, &what)?;
            if prog.fd().is_err() {
                prog.load().map_err(failed(&what))?;
            }
            prog.attach(hook.category, hook.name)
                .map_err(|source| LoadError::Program { what, source })?;
        }

        let cpus = aya::util::online_cpus().map_err(|(what, e)| LoadError::Cpus(what, e))?;
        for (name, event) in [
            ("fault_done_minor", SoftwareEvent::PageFaultsMin),
            ("fault_done_major", SoftwareEvent::PageFaultsMaj),
        ] {
            let what = format!("perf event {event:?} (program {name})");
            let prog: &mut PerfEvent = typed(&mut ebpf, name, &what)?;
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

        let traced = ebpf
            .take_map(maps::TRACED)
            .ok_or(LoadError::Map(maps::TRACED, "missing".into()))
            .and_then(|m| {
                BpfHashMap::try_from(m).map_err(|e| LoadError::Map(maps::TRACED, e.to_string()))
            })?;
        Ok(Probes {
            ebpf,
            traced,
            degraded,
            evidence,
            attach_time: started.elapsed(),
            fork_call_objects: Vec::new(),
        })
    }

    /// Gives the kernel the layout of the Redis server `pid`; trace it afterwards with
    /// `role::TARGET | role::ATTRIBUTE` to turn attribution on.
    pub fn set_redis_layout(&mut self, pid: u32, layout: RedisLayout) -> Result<(), LoadError> {
        let mut map: BpfHashMap<_, u32, RedisLayout> = self
            .ebpf
            .map_mut(maps::REDIS)
            .ok_or(LoadError::Map(maps::REDIS, "missing".into()))
            .and_then(|m| {
                BpfHashMap::try_from(m).map_err(|e| LoadError::Map(maps::REDIS, e.to_string()))
            })?;
        map.insert(pid, layout, 0)
            .map_err(|e| LoadError::Map(maps::REDIS, e.to_string()))
    }

    /// Measures libc `fork()` calls in `object` (see [`crate::libc_fork`]): a uprobe and
    /// a uretprobe on `fork`, attached for every process mapping that file and filtered
    /// to traced ones in the kernel. Attaching the same object twice is a no-op.
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
            let what = format!(
                "uprobe {name} on {}:{}",
                object.display(),
                crate::libc_fork::SYMBOL
            );
            let prog: &mut UProbe = typed(&mut self.ebpf, name, &what)?;
            if prog.fd().is_err() {
                prog.load().map_err(failed(&what))?;
            }
            prog.attach(crate::libc_fork::SYMBOL, object, UProbeScope::AllProcesses)
                .map_err(|source| LoadError::Program { what, source })?;
        }
        self.fork_call_objects.push(id);
        Ok(())
    }

    /// Starts tracing `pid` with `role` (`tracer_common::role`).
    pub fn trace(&mut self, pid: u32, role: u32) -> Result<(), LoadError> {
        self.traced
            .insert(pid, role, 0)
            .map_err(|e| LoadError::Map(maps::TRACED, e.to_string()))
    }

    /// Takes the ring buffer out, so it can be drained after the programs detach.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(maps::EVENTS)
            .ok_or(LoadError::Map(maps::EVENTS, "missing".into()))?;
        RingBuf::try_from(map).map_err(|e| LoadError::Map(maps::EVENTS, e.to_string()))
    }

    /// Takes the counters out, so they can be read after the programs detach.
    pub fn take_counters(&mut self) -> Result<KernelCounterMap, LoadError> {
        let map = self
            .ebpf
            .take_map(maps::COUNTERS)
            .ok_or(LoadError::Map(maps::COUNTERS, "missing".into()))?;
        PerCpuArray::try_from(map)
            .map(KernelCounterMap)
            .map_err(|e| LoadError::Map(maps::COUNTERS, e.to_string()))
    }
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
    program(ebpf, name)?.try_into().map_err(failed(what))
}

fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> Result<&'a mut aya::programs::Program, LoadError> {
    ebpf.program_mut(name)
        .ok_or_else(|| LoadError::Map("program", format!("{name} missing from the eBPF object")))
}

/// The per-CPU counter array of the kernel side.
pub struct KernelCounterMap(PerCpuArray<MapData, u64>);

impl KernelCounterMap {
    /// Sum over CPUs of counter `index` (`tracer_common::counter`).
    pub fn sum(&self, index: u32) -> u64 {
        self.0
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }

    /// All counters.
    pub fn read(&self) -> crate::timeline::KernelCounters {
        crate::timeline::KernelCounters {
            ring_buffer_full: self.sum(counter::LOST),
            inflight_map_full: self.sum(counter::INFLIGHT_FULL),
            unmatched_completions: self.sum(counter::UNMATCHED),
            system_swap_writes: self.sum(counter::SYS_SWAP_WRITES),
        }
    }
}
