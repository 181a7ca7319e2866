//! Everything that knows about a running redis-server: where it is, how its memory is
//! laid out, and what INFO says.

pub mod info;
pub mod layout;
pub mod locate;
pub mod remote;
pub mod session;
pub mod symbols;
pub mod verify;
