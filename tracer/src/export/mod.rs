//! Conversions of a timeline to other tools' formats.

pub mod perfetto;
