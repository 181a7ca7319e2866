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

    /// The official BLAKE3 test vectors (`test_vectors/test_vectors.json` of
    /// github.com/BLAKE3-team/BLAKE3): input `i % 251` for `i` in `0..input_len`, the
    /// first 32 bytes of each extended output, which are the default-length output.
    const VECTOR_KEY: &[u8; 32] = b"whats the Elvish word for friend";
    const VECTOR_CONTEXT: &str = "BLAKE3 2019-12-27 16:29:52 test vectors context";
    /// (input_len, keyed_hash, derive_key).
    const VECTORS: [(usize, &str, &str); 4] = [
        (
            0,
            "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26",
            "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d",
        ),
        (
            1,
            "6d7878dfff2f485635d39013278ae14f1454b8c0a3a2d34bc1ab38228a80c95b",
            "b3e2e340a117a499c6cf2398a19ee0d29cca2bb7404c73063382693bf66cb06c",
        ),
        (
            1023,
            "c951ecdf03288d0fcc96ee3413563d8a6d3589547f2c2fb36d9786470f1b9d6e",
            "74a16c1c3d44368a86e1ca6df64be6a2f64cce8f09220787450722d85725dea5",
        ),
        (
            1024,
            "75c46f6f3d9eb4f55ecaaee480db732e6c2105546f1e675003687c31719c7ba4",
            "7356cd7720d5b66b6d0697eb3177d9f8d73a4a5c5e968896eb6a689684302706",
        ),
    ];

    /// The primitives `KeyPolicy` calls are BLAKE3's: `derive_key`, `keyed_hash` and a
    /// keyed `Hasher` fed in two pieces (as `apply` feeds the length, then the key) give
    /// the official test vectors.
    #[test]
    fn primitives_give_the_official_blake3_vectors() {
        for (len, keyed, derived) in VECTORS {
            let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(
                hex(blake3::keyed_hash(VECTOR_KEY, &input).as_bytes()),
                keyed,
                "keyed_hash, input_len {len}"
            );
            let split = len.min(8);
            let mut h = blake3::Hasher::new_keyed(VECTOR_KEY);
            h.update(&input[..split]);
            h.update(&input[split..]);
            assert_eq!(
                hex(h.finalize().as_bytes()),
                keyed,
                "keyed Hasher, input_len {len}"
            );
            assert_eq!(
                hex(&blake3::derive_key(VECTOR_CONTEXT, &input)),
                derived,
                "derive_key, input_len {len}"
            );
        }
    }

    /// A fixed (salt, key) gives a fixed hash: `h:` + the first 16 bytes, in hex, of the
    /// BLAKE3 keyed hash of (key length as u64 little-endian, key bytes) under the key
    /// `derive_key(CONTEXT, salt)`; the fingerprint is the first 8 bytes of the keyed hash
    /// of `fingerprint`. The literals were computed apart from this crate, with BLAKE3's
    /// reference implementation (`reference_impl/reference_impl.rs` of the repository
    /// above); `tests/privacy.rs` checks the same hash of the same key end to end.
    #[test]
    fn hash_of_a_fixed_salt_and_key_is_pinned() {
        let policy = KeyPolicy::hash_with_salt(b"pepper-1");
        let derived = blake3::derive_key("redis-memtrace 2026-11 key hash v1", b"pepper-1");
        assert_eq!(
            hex(&derived),
            "d46531847a896bf880d1173a9bc17365501143c38be344babbe775d4fda6921b"
        );
        assert_eq!(policy, KeyPolicy::Hash { key: derived });
        for (name, pinned) in [
            (
                &b"s3cr3t-customer-4711"[..],
                "h:fd381eaf5a8b850c3232896bc1b92724",
            ),
            (b"public:7", "h:ceff80047e51277258638452fb8908d8"),
        ] {
            let len = name.len() as u64;
            let mut input = len.to_le_bytes().to_vec();
            input.extend_from_slice(name);
            let composed = format!(
                "h:{}",
                hex(&blake3::keyed_hash(&derived, &input).as_bytes()[..16])
            );
            assert_eq!(composed, pinned);
            let k = policy.apply(name, len, 128).unwrap();
            assert_eq!(String::from_utf8(k.bytes.clone()).unwrap(), pinned);
            assert!(k.hashed && !k.truncated());
            assert_eq!(k.original_len, len);
        }
        assert_eq!(policy.fingerprint().as_deref(), Some("4793ef981649905d"));
        // A key longer than the capture (`--key-bytes`, at most 256) is hashed from its
        // length and the bytes captured: keys of one length that share those bytes share
        // a hash.
        let captured = [b'k'; 128];
        let mut input = 300u64.to_le_bytes().to_vec();
        input.extend_from_slice(&captured);
        let k = policy.apply(&captured, 300, 128).unwrap();
        assert_eq!(
            String::from_utf8(k.bytes.clone()).unwrap(),
            format!(
                "h:{}",
                hex(&blake3::keyed_hash(&derived, &input).as_bytes()[..16])
            )
        );
        assert_eq!(k.original_len, 300);
        assert!(k.hashed && !k.truncated());
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
