//! Everything that knows about a running redis-server: where it is, how its memory is
//! laid out, and what INFO says.

pub mod cluster;
pub mod discover;
pub mod info;
pub mod locate;
pub mod objects;
pub mod phases;
pub mod process_memory;
pub mod session;
pub mod symbols;
