//! Empty library target: it lets `tracer` declare a build-dependency on this crate, so
//! cargo rebuilds the tracer (and so the embedded eBPF object) when this crate changes.
//! The programs themselves are the `tracer-ebpf` binary (`src/main.rs`).
#![no_std]
