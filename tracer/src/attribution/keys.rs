//! Redis keys as byte strings, and a lossless text form for them.
//!
//! Redis keys are binary-safe: any byte sequence is a valid key, including NUL, newlines,
//! quotes and invalid UTF-8. Reports (terminal tables, JSON, Perfetto) need text, and a
//! lossy conversion would merge distinct keys and make a reported key impossible to look
//! up again. [`escape_key`] therefore produces the same quoted-string body `redis-cli`
//! prints for a key (plain printable ASCII, so it also JSON-escapes trivially), and
//! [`unescape_key`] turns it back into the exact bytes.
//!
//! The kernel side captures only a bounded prefix of each key, so [`KeyBytes`] carries the
//! key's real length next to the captured bytes: a truncated key is never mistaken for a
//! shorter, different key.

use std::fmt::Write as _;

/// Escapes `bytes` into plain printable ASCII, the way `redis-cli` shows a key inside
/// double quotes (without the quotes).
///
/// Bytes `0x20..=0x7e` other than `\` and `"` are copied; `\` becomes `\\`, `"` becomes
/// `\"`, newline, carriage return and tab become `\n`, `\r`, `\t`, and every other byte
/// becomes `\xNN` with lowercase hex digits. The mapping is injective and
/// [`unescape_key`] inverts it.
pub fn escape_key(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            // Writing to a String cannot fail; ignoring the Result avoids an unwrap.
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// Value of one ASCII hex digit (either case), or `None`.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Turns the output of [`escape_key`] back into the key's bytes:
/// `unescape_key(&escape_key(b)) == Some(b.to_vec())` for every `b`.
///
/// Returns `None` on malformed input: a character outside printable ASCII, an unescaped
/// `"`, a trailing `\`, an unknown escape, or `\x` not followed by two hex digits.
/// Because keys are also typed by hand (for example to filter a report), a few spellings
/// [`escape_key`] never produces are accepted too: `\xNN` with uppercase digits or for a
/// printable byte, and `redis-cli`'s `\a` (0x07) and `\b` (0x08).
pub fn unescape_key(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                let decoded = match bytes.next()? {
                    b'\\' => b'\\',
                    b'"' => b'"',
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'a' => 0x07,
                    b'b' => 0x08,
                    b'x' => {
                        let hi = hex_value(bytes.next()?)?;
                        let lo = hex_value(bytes.next()?)?;
                        (hi << 4) | lo
                    }
                    _ => return None,
                };
                out.push(decoded);
            }
            // A bare quote would have been escaped; accepting it would hide a
            // copy-paste mistake (such as including redis-cli's surrounding quotes).
            b'"' => return None,
            0x20..=0x7e => out.push(b),
            // Control characters and non-ASCII (including UTF-8 continuation bytes)
            // never appear in escaped output.
            _ => return None,
        }
    }
    Some(out)
}

/// A key as captured: at most a bounded prefix of its bytes, plus its real length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyBytes {
    /// The captured bytes: the whole key, or a prefix of it when [`KeyBytes::truncated`].
    pub bytes: Vec<u8>,
    /// The key's full length in bytes, as Redis knows it.
    pub original_len: u64,
    /// `bytes` is a keyed hash of the key (`--keys hash`), not the key.
    pub hashed: bool,
}

impl KeyBytes {
    /// Keeps at most `max_len` bytes of `captured` (never more than `captured` holds) for
    /// a key whose full length is `original_len`.
    ///
    /// If `original_len` is smaller than the number of bytes kept (inconsistent input),
    /// it is raised to that number, so `original_len >= bytes.len()` always holds for a
    /// value built here.
    pub fn new(captured: &[u8], original_len: u64, max_len: usize) -> Self {
        let kept = captured.get(..max_len).unwrap_or(captured);
        // usize -> u64 is lossless on every target Rust supports; saturate regardless
        // rather than assume it.
        let kept_len = u64::try_from(kept.len()).unwrap_or(u64::MAX);
        Self {
            bytes: kept.to_vec(),
            original_len: original_len.max(kept_len),
            hashed: false,
        }
    }

    /// A key replaced by `digest` (printable), keeping the key's length.
    pub fn hashed(digest: String, original_len: u64) -> Self {
        Self {
            bytes: digest.into_bytes(),
            original_len,
            hashed: true,
        }
    }

    /// Whether only a prefix of the key was kept (the key is longer than `bytes`).
    pub fn truncated(&self) -> bool {
        !self.hashed && u64::try_from(self.bytes.len()).is_ok_and(|len| self.original_len > len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escape_examples() {
        assert_eq!(escape_key(b"user:1000"), "user:1000");
        assert_eq!(escape_key(b""), "");
        assert_eq!(escape_key(b"a\\b\"c"), "a\\\\b\\\"c");
        assert_eq!(escape_key(b"\n\r\t"), "\\n\\r\\t");
        assert_eq!(
            escape_key(b"\x00\x07\x1f\x7f\x80\xff"),
            "\\x00\\x07\\x1f\\x7f\\x80\\xff"
        );
        assert_eq!(escape_key("é".as_bytes()), "\\xc3\\xa9");
        assert_eq!(escape_key(b" ~"), " ~");
    }

    #[test]
    fn unescape_examples() {
        assert_eq!(unescape_key("a\\\\b\\\"c"), Some(b"a\\b\"c".to_vec()));
        assert_eq!(unescape_key("\\x00\\xFF\\x41"), Some(vec![0, 0xff, b'A']));
        assert_eq!(unescape_key("\\a\\b"), Some(vec![7, 8]));
        assert_eq!(unescape_key(""), Some(vec![]));
    }

    #[test]
    fn unescape_rejects_malformed() {
        for bad in [
            "\\", "abc\\", "\\x", "\\x4", "\\xg0", "\\x0g", "\\q", "\"", "a\"b", "\n", "é",
            "\u{7f}",
        ] {
            assert_eq!(unescape_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_bytes_truncation() {
        let k = KeyBytes::new(b"abcdef", 6, 4);
        assert_eq!(k.bytes, b"abcd");
        assert_eq!(k.original_len, 6);
        assert!(k.truncated());

        let k = KeyBytes::new(b"abc", 3, 16);
        assert_eq!(k.bytes, b"abc");
        assert!(!k.truncated());

        // The kernel captured a prefix only: longer original, capture shorter than max.
        let k = KeyBytes::new(b"abc", 1000, 16);
        assert_eq!(k.bytes, b"abc");
        assert!(k.truncated());

        // Inconsistent input: the original length cannot be below what was kept.
        let k = KeyBytes::new(b"abc", 1, 16);
        assert_eq!(k.original_len, 3);
        assert!(!k.truncated());

        let k = KeyBytes::new(b"abc", 3, 0);
        assert!(k.bytes.is_empty());
        assert!(k.truncated());
    }

    #[test]
    fn key_bytes_distinguishes_truncated_from_short() {
        assert_ne!(KeyBytes::new(b"abcd", 4, 4), KeyBytes::new(b"abcdef", 6, 4));
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let escaped = escape_key(&bytes);
            prop_assert_eq!(unescape_key(&escaped), Some(bytes));
        }

        #[test]
        fn escaped_is_printable_ascii(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let escaped = escape_key(&bytes);
            prop_assert!(escaped.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{escaped:?}");
        }

        #[test]
        fn unescape_never_panics(s in ".{0,64}") {
            if let Some(bytes) = unescape_key(&s) {
                // Whatever it accepts, it accepts consistently with the canonical form.
                prop_assert_eq!(unescape_key(&escape_key(&bytes)), Some(bytes));
            }
        }

        #[test]
        fn key_bytes_bounds(
            captured in proptest::collection::vec(any::<u8>(), 0..64),
            original_len in any::<u64>(),
            max_len in 0usize..80,
        ) {
            let k = KeyBytes::new(&captured, original_len, max_len);
            prop_assert!(k.bytes.len() <= max_len.min(captured.len()));
            prop_assert_eq!(k.bytes.len(), max_len.min(captured.len()));
            prop_assert!(captured.starts_with(&k.bytes));
            prop_assert!(k.original_len >= k.bytes.len() as u64);
        }
    }
}
