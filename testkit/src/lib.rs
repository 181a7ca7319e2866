//! The one test kit of redis-memtrace, for the integration tests (`tests/`), xtask's
//! benchmarks and demo, and anything else that needs a real server or a real recording:
//!
//! - [`builds`]: the Redis/Valkey builds of the manifest (`MEMTRACE_BUILDS`);
//! - [`server`]: one of them running on a free loopback port, cleaned up on drop;
//! - [`cluster`]: several of them joined into a Redis Cluster by the build's `redis-cli`;
//! - [`recording`]: `redis-memtrace record` in the background, stopped by SIGINT;
//! - [`swap`], [`pageout`]: swap for the test, and a process's memory pushed into it;
//! - [`dwarf`]: struct layouts from a server binary's own debug information (an oracle);
//! - [`tools`]: where setup installed the analysis tools (DuckDB's Python package);
//! - [`fork_child`], [`commands`], [`timeline`], [`programs`], [`tracefs`], [`clock`],
//!   [`wait`], [`process`]: the smaller pieces the tests share.
//!
//! Test helpers panic with a clear message (a failing test keeps its backtrace); the
//! `try_` forms return an [`Error`] for xtask, whose users get an error, not a panic.
//! This crate does not depend on the tracer: it drives the tracer binary.

pub mod builds;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod dwarf;
pub mod error;
pub mod fork_child;
pub mod pageout;
pub mod process;
pub mod programs;
pub mod prometheus;
pub mod recording;
pub mod server;
pub mod soak;
pub mod swap;
pub mod timeline;
pub mod tools;
pub mod tracefs;
pub mod wait;

pub use builds::{Allocator, Build, Product, attribution_builds, builds, by_label};
pub use error::Error;
pub use pageout::page_out;
pub use process::{Guarded, free_port};
pub use recording::{
    Recording, fails_in_one_line, names_in, require_root, run_in, tracer, tracer_fails,
};
pub use redis;
pub use server::Server;
pub use swap::SwapGuard;
pub use timeline::read_timeline;
