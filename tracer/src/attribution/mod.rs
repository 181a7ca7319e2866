//! Attribution of faults to Redis commands, keys, cluster slots and internal phases.

pub mod aggregate;
pub mod context;
pub mod key_privacy;
pub mod keys;
pub mod keyslot;
pub mod pending;
pub mod top_n;
