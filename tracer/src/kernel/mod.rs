//! The kernel edge: loading and attaching the eBPF programs, the tracefs formats they
//! need, draining the ring buffer and decoding its records. It moves bytes; meaning is
//! given in `analysis` and `attribution`.

pub mod btf;
pub mod events;
pub mod host;
pub mod libc_fork;
pub mod loader;
pub mod privileges;
pub mod reader;
pub mod target;
pub mod tracefs;
