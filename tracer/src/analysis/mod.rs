//! The core: pure functions over the event stream, unit-tested without a kernel. Kernel
//! events go in ([`stream::Analyzer`]); classified, epoch-assigned, attributed
//! [`stream::TimelineEvent`]s come out, with the counts, epochs and samples the timeline
//! keeps.

pub mod classify;
pub mod clock;
pub mod counts;
pub mod event_cap;
pub mod fork_epochs;
pub mod samples;
pub mod stream;
