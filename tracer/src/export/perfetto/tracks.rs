//! Processes, fork epochs and fork calls.

use serde_json::{Map, Value};

use super::{
    Builder,
    input::{EpochSpan, ForkCall, Parsed},
};

/// Each `fork` event as an instant on the forking thread.
pub fn fork_instants(b: &mut Builder, p: &Parsed) {
    for f in &p.forks {
        let mut args = Map::new();
        // A timeline without the child reads as PID 0, which no child has.
        if f.child_pid != 0 {
            args.insert("child_pid".into(), f.child_pid.into());
        }
        if let Some(epoch) = f.epoch {
            args.insert("epoch".into(), epoch.into());
        }
        b.instant(f.pid, f.tid, "fork", "fork", f.ts_ns, args);
    }
}

/// The target process's name, and every epoch: its slice on a `fork epochs` lane of the
/// parent, the child's process and lifetime slice, and the `fork()` call slice.
pub fn epochs(b: &mut Builder, p: &Parsed) {
    b.name_process(b.target_pid, p.target_name.clone(), 0);

    let mut order: Vec<&EpochSpan> = p.epochs.iter().collect();
    order.sort_by_key(|e| (e.start_ns, e.id));
    // (parent pid, end of the lane's last epoch, lane tid)
    let mut lanes: Vec<(u32, u64, u32)> = Vec::new();
    for (rank, e) in order.into_iter().enumerate() {
        let free = lanes
            .iter_mut()
            .find(|(pid, end, _)| *pid == e.parent_pid && *end <= e.start_ns);
        let lane = match free {
            Some(lane) => {
                lane.1 = e.shown_end_ns;
                lane.2
            }
            None => {
                let n = lanes.iter().filter(|l| l.0 == e.parent_pid).count();
                let name = match n {
                    0 => "fork epochs".to_string(),
                    n => format!("fork epochs (lane {})", n + 1),
                };
                let tid = b.synthetic_thread(e.parent_pid, name, 2 + n as i64);
                lanes.push((e.parent_pid, e.shown_end_ns, tid));
                tid
            }
        };
        let reason = e.reason_or_fork();
        let args = epoch_args(e);
        b.slice(
            e.parent_pid,
            lane,
            "epoch",
            &format!("{reason} epoch {}", e.id),
            e.start_ns,
            e.shown_end_ns,
            args.clone(),
        );
        if let Some(child) = e.child() {
            b.name_process(
                child,
                format!("fork child {child} ({reason})"),
                1 + rank as i64,
            );
            b.name_thread(child, child, "child main thread".into(), 0);
            b.slice(
                child,
                child,
                "epoch_child",
                &format!("{reason} child (epoch {})", e.id),
                e.start_ns,
                e.shown_end_ns,
                args,
            );
        }
        fork_call(b, p, e);
    }
}

/// Args shared by an epoch's parent and child slices.
fn epoch_args(e: &EpochSpan) -> Map<String, Value> {
    let mut a = Map::new();
    a.insert("epoch".into(), e.id.into());
    if let Some(reason) = &e.reason {
        a.insert("reason".into(), reason.as_str().into());
    }
    if let Some(child) = e.child() {
        a.insert("child_pid".into(), child.into());
    }
    a.insert("parent_pid".into(), e.parent_pid.into());
    a.insert("parent_tid".into(), e.parent_tid.into());
    a.insert(
        "duration_ms".into(),
        ((e.shown_end_ns - e.start_ns) as f64 / 1e6).into(),
    );
    a.insert(
        "end_reason".into(),
        match (e.end_reason, e.open()) {
            (Some(r), _) => r.into(),
            (None, true) => "open at trace end".into(),
            (None, false) => Value::Null,
        },
    );
    a.insert("started_before_trace".into(), e.started_before_trace.into());
    let faults = &e.faults;
    for (key, side) in [
        ("cow_pages_parent", &faults.parent),
        ("cow_pages_child", &faults.child),
    ] {
        a.insert(key.into(), side.cow_copy.into());
    }
    for (key, side) in [
        ("faults_parent", &faults.parent),
        ("faults_child", &faults.child),
    ] {
        if let Ok(v) = serde_json::to_value(side) {
            a.insert(key.into(), v);
        }
    }
    let us = |ns: Option<u64>| ns.map(|ns| Value::from(ns as f64 / 1e3));
    for (key, val) in [
        ("fork_syscall_us", us(e.fork_duration_ns)),
        ("fork_call_us", us(e.fork_call_ns)),
        ("latest_fork_usec", e.redis_fork_usec().map(Value::from)),
        (
            "fork_usec_difference",
            e.redis
                .as_ref()
                .and_then(|r| r.fork_usec_difference)
                .map(Value::from),
        ),
        (
            "redis_last_cow_size_bytes",
            e.redis_cow_bytes().map(Value::from),
        ),
    ] {
        if let Some(v) = val.filter(|v| !v.is_null()) {
            a.insert(key.into(), v);
        }
    }
    a
}

/// The fork call as a slice on the thread that forked. It starts at the clone syscall's
/// start (the `fork_return` event of this child) and lasts the libc call when that was
/// measured (it contains the syscall; its own start is not recorded), else the syscall
/// (`fork_duration_ns`, or the `fork_return` event's own duration).
/// Without a `fork_return` event it ends at the epoch start (`sched_process_fork`, near
/// the end of the syscall). A child found running at attach has no known fork.
fn fork_call(b: &mut Builder, p: &Parsed, e: &EpochSpan) {
    if e.started_before_trace {
        return;
    }
    let syscall = e.child().and_then(|child| {
        let mine = |r: &&ForkCall| r.pid == e.parent_pid && r.ret == i64::from(child);
        p.fork_returns
            .iter()
            .filter(mine)
            .find(|r| r.tid == e.parent_tid)
            .or_else(|| p.fork_returns.iter().find(mine))
    });
    let syscall_ns = e
        .fork_duration_ns
        .or_else(|| syscall.and_then(ForkCall::duration_ns));
    let Some(dur) = e.fork_call_ns.or(syscall_ns) else {
        return;
    };
    let (tid, start) = match syscall {
        Some(r) => (r.tid, r.ts_ns),
        None => (e.parent_tid, e.start_ns.saturating_sub(dur)),
    };
    let mut args = Map::new();
    args.insert("epoch".into(), e.id.into());
    if let Some(child) = e.child() {
        args.insert("child_pid".into(), child.into());
    }
    args.insert(
        "measured".into(),
        match e.fork_call_ns {
            Some(_) => "libc fork() call",
            None => "clone syscall",
        }
        .into(),
    );
    if let Some(ns) = e.fork_call_ns {
        args.insert("fork_call_us".into(), (ns as f64 / 1e3).into());
    }
    if let Some(ns) = syscall_ns {
        args.insert("fork_syscall_us".into(), (ns as f64 / 1e3).into());
    }
    if let Some(v) = e.redis_fork_usec() {
        args.insert("latest_fork_usec".into(), v.into());
    }
    b.slice(
        e.parent_pid,
        tid,
        "fork",
        "fork()",
        start,
        start.saturating_add(dur),
        args,
    );
}
