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

/// A signed integer field (`ret`, deltas).
pub fn i64_at(v: &Value, k: &str) -> Option<i64> {
    v.get(k)?.as_i64()
}

/// A string field, borrowed from the document.
pub fn str_at<'v>(v: &'v Value, k: &str) -> Option<&'v str> {
    v.get(k)?.as_str()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn mistyped_fields_are_none() {
        let v = json!({"n": 5, "neg": -5, "big": 1u64 << 32, "f": 1.5, "s": "x", "b": true,
                       "null": null});
        assert_eq!(
            (u64_at(&v, "n"), u64_at(&v, "neg"), u64_at(&v, "f")),
            (Some(5), None, None)
        );
        assert_eq!((u32_at(&v, "n"), u32_at(&v, "big")), (Some(5), None));
        assert_eq!((i64_at(&v, "neg"), i64_at(&v, "s")), (Some(-5), None));
        assert_eq!(
            (str_at(&v, "s"), str_at(&v, "n"), str_at(&v, "null")),
            (Some("x"), None, None)
        );
        assert_eq!(
            (flag_at(&v, "b"), flag_at(&v, "s"), flag_at(&v, "gone")),
            (true, false, false)
        );
        assert_eq!(str_at(&json!([1]), "s"), None);
    }
}
