//! Lenient field reads for the `from_json` readers next to each timeline type: a missing,
//! null or mistyped field is `None` (or `false`), never an error, so `report` and
//! `export` still read an older or newer timeline.

use serde_json::Value;

/// An unsigned integer field.
pub fn u64_at(v: &Value, k: &str) -> Option<u64> {
    v.get(k)?.as_u64()
}

/// An unsigned integer field that fits 32 bits (pids, ids).
pub fn u32_at(v: &Value, k: &str) -> Option<u32> {
    u32::try_from(u64_at(v, k)?).ok()
}

/// A boolean field that is `true`.
pub fn flag_at(v: &Value, k: &str) -> bool {
    v.get(k).and_then(Value::as_bool) == Some(true)
}
