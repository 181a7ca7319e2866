//! `--keys full|hash|none`: what of a key name may leave the process.
//!
//! `hash` replaces each key by a keyed BLAKE3 hash (128 bits, `h:` + 32 hex digits). The
//! hash key is derived from `--key-salt`, or from a random per-run salt: with the same
//! salt two runs give the same hash for the same key and can be compared; the salt itself
//! is never written, only a fingerprint of it (so a reader can tell whether two runs
//! share a salt). `none` drops keys entirely. In both modes the cluster slot, computed
//! from the real key before it is hidden, is kept: it names no key.

use super::keys::KeyBytes;

/// Context string of the key derivation (changing it changes every hash).
const CONTEXT: &str = "redis-memtrace 2026-11 key hash v1";

/// How keys are written.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum KeyPolicy {
    /// The key bytes, escaped and truncated to `--key-bytes`.
    #[default]
    Full,
    /// A keyed hash of the captured key bytes and the key's length.
    Hash {
        /// BLAKE3 key derived from the salt.
        key: [u8; 32],
    },
    /// No key at all.
    Omit,
}

impl std::fmt::Debug for KeyPolicy {
    // Never print the derived key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl KeyPolicy {
    /// `hash` with a key derived from `salt`.
    pub fn hash_with_salt(salt: &[u8]) -> KeyPolicy {
        KeyPolicy::Hash {
            key: blake3::derive_key(CONTEXT, salt),
        }
    }

    /// `hash` with a random salt (keys of this run only compare within it).
    pub fn hash_random() -> std::io::Result<KeyPolicy> {
        use std::io::Read;
        let mut salt = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
        Ok(KeyPolicy::hash_with_salt(&salt))
    }

    /// `full`, `hash` or `none`.
    pub fn name(&self) -> &'static str {
        match self {
            KeyPolicy::Full => "full",
            KeyPolicy::Hash { .. } => "hash",
            KeyPolicy::Omit => "none",
        }
    }

    /// 16 hex digits identifying the salt (a hash of the derived key), for `hash`.
    pub fn fingerprint(&self) -> Option<String> {
        match self {
            KeyPolicy::Hash { key } => {
                let h = blake3::keyed_hash(key, b"fingerprint");
                Some(hex(&h.as_bytes()[..8]))
            }
            _ => None,
        }
    }

    /// What is kept of a key whose captured bytes are `captured` (up to the kernel's
    /// capture limit, before `--key-bytes` truncation) and whose length is `len`.
    pub fn apply(&self, captured: &[u8], len: u64, key_max: usize) -> Option<KeyBytes> {
        match self {
            KeyPolicy::Full => Some(KeyBytes::new(captured, len, key_max)),
            KeyPolicy::Hash { key } => {
                let mut h = blake3::Hasher::new_keyed(key);
                h.update(&len.to_le_bytes());
                h.update(captured);
                let digest = h.finalize();
                Some(KeyBytes::hashed(
                    format!("h:{}", hex(&digest.as_bytes()[..16])),
                    len,
                ))
            }
            KeyPolicy::Omit => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_keeps_and_truncates() {
        let k = KeyPolicy::Full.apply(b"user:1000", 9, 4).unwrap();
        assert_eq!(k.bytes, b"user");
        assert!(k.truncated());
    }

    #[test]
    fn hash_is_stable_per_salt_and_hides_the_key() {
        let a = KeyPolicy::hash_with_salt(b"s1");
        let b = KeyPolicy::hash_with_salt(b"s1");
        let c = KeyPolicy::hash_with_salt(b"s2");
        let ka = a.apply(b"secret:key", 10, 128).unwrap();
        assert_eq!(ka, b.apply(b"secret:key", 10, 128).unwrap());
        assert_ne!(ka, c.apply(b"secret:key", 10, 128).unwrap());
        assert_ne!(ka, a.apply(b"secret:kez", 10, 128).unwrap());
        let text = String::from_utf8(ka.bytes.clone()).unwrap();
        assert!(text.starts_with("h:") && text.len() == 34, "{text}");
        assert!(!text.contains("secret"));
        assert!(ka.hashed && !ka.truncated());
        assert_eq!(ka.original_len, 10);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().unwrap().len(), 16);
        assert!(!format!("{a:?}").contains(&hex(&blake3::derive_key(CONTEXT, b"s1"))));
    }

    #[test]
    fn random_salts_differ_and_none_drops() {
        let a = KeyPolicy::hash_random().unwrap();
        let b = KeyPolicy::hash_random().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(KeyPolicy::Omit.apply(b"k", 1, 128), None);
        assert_eq!(KeyPolicy::Full.fingerprint(), None);
    }
}
