//! redis-memtrace: which fork, which command, which key caused this memory?
//!
//! The kernel side (`tracer-ebpf`) reports every page fault of a Redis process and its
//! fork children with the evidence needed to classify it. This crate loads it, classifies
//! and attributes the faults (pure functions over the event stream), and writes
//! timelines.

pub mod analysis;
pub mod attribution;
pub mod check;
pub mod classify;
pub mod clock;
pub mod counts;
pub mod event_cap;
pub mod export;
pub mod fork_epochs;
pub mod host;
pub mod json_fields;
pub mod kernel;
pub mod output_file;
pub mod privileges;
pub mod record;
pub mod redis;
pub mod report;
pub mod samples;
pub mod signals;
pub mod status_line;
pub mod target;
pub mod timeline;
