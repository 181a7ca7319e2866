//! redis-memtrace: which fork, which command, which key caused this memory?
//!
//! The kernel side (`tracer-ebpf`) reports every page fault of a Redis process and its
//! fork children with the evidence needed to classify it. This crate loads it, classifies
//! and attributes the faults (pure functions over the event stream), and writes
//! timelines.

pub mod analysis;
pub mod attribution;
pub mod check;
pub mod export;
pub mod json_fields;
pub mod kernel;
pub mod merge;
pub mod metrics;
pub mod output_file;
pub mod record;
pub mod redis;
pub mod report;
pub mod timeline;
