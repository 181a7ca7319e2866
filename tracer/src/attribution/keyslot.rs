//! Redis Cluster hash slots, computed exactly as Redis computes them.
//!
//! Faults attributed to a key can be rolled up per cluster slot, which tells an operator
//! which slots (and so which shards, and which slots are worth migrating) drive
//! copy-on-write and swap traffic. That is only meaningful if our slot for a key is the
//! slot Redis itself assigns, so this module reproduces `crc16()` from Redis's
//! `src/crc16.c` (CRC16-XMODEM) and `keyHashSlot()` from `src/cluster.c`, hash tags
//! included, byte for byte.

/// Number of hash slots in a Redis Cluster; slots are `0..CLUSTER_SLOTS`.
pub const CLUSTER_SLOTS: u16 = 16384;

/// CRC16-XMODEM polynomial (x^16 + x^12 + x^5 + 1), as in Redis's `src/crc16.c`.
const POLY: u16 = 0x1021;

/// Lookup table for the byte-at-a-time CRC, built at compile time so there is no runtime
/// initialisation and no chance of it disagreeing with the bitwise definition.
const TABLE: [u16; 256] = build_table();

/// Builds the CRC table for a non-reflected CRC16 with [`POLY`]: entry `i` is the CRC
/// register after shifting byte `i` through a zero register MSB first.
const fn build_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ POLY
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// CRC16-XMODEM of `data`: polynomial 0x1021, initial value 0, no input or output
/// reflection, no final XOR. This is the CRC Redis Cluster uses for key hashing
/// (`crc16(b"123456789") == 0x31C3`).
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &byte| {
        // The table is indexed by the top byte of the register XORed with the input byte,
        // which is the standard MSB-first (non-reflected) table-driven form.
        (crc << 8) ^ TABLE[usize::from((crc >> 8) as u8 ^ byte)]
    })
}

/// The part of `key` Redis hashes: the bytes between the first `{` and the first `}` after
/// it, if that span is non-empty; otherwise the whole key. Mirrors `keyHashSlot()`.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    let rest = key.get(open + 1..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'}') {
        // `{}` (empty tag) means "no tag": Redis hashes the whole key in that case, and
        // does not go looking for a later `{...}`.
        Some(0) | None => key,
        Some(close) => rest.get(..close).unwrap_or(key),
    }
}

/// The Redis Cluster hash slot (`0..16384`) of `key`, exactly as Redis's `keyHashSlot()`
/// computes it: if the key contains `{` followed later by `}` with at least one byte
/// between them, only the bytes between the first `{` and the first `}` after it are
/// hashed (the hash tag); otherwise the whole key is. The slot is the CRC16 masked to 14
/// bits.
pub fn key_hash_slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) & (CLUSTER_SLOTS - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference bitwise CRC, to check the table-driven one against.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut crc = 0u16;
        for &byte in data {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ POLY
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc16_check_value() {
        // The standard CRC16-XMODEM check value, also asserted in Redis's crc16.c comment.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(crc16(b""), 0);
    }

    #[test]
    fn known_slots() {
        // Values as returned by `CLUSTER KEYSLOT`.
        assert_eq!(key_hash_slot(b"foo"), 12182);
        assert_eq!(key_hash_slot(b"bar"), 5061);
        assert_eq!(key_hash_slot(b""), 0);
    }

    #[test]
    fn hash_tags() {
        assert_eq!(
            key_hash_slot(b"{user1000}.following"),
            key_hash_slot(b"{user1000}.followers")
        );
        assert_eq!(
            key_hash_slot(b"{user1000}.following"),
            key_hash_slot(b"user1000")
        );
        // Empty first tag: the whole key is hashed, the later `{bar}` is not a tag.
        assert_eq!(key_hash_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") & 16383);
        assert_ne!(key_hash_slot(b"foo{}{bar}"), key_hash_slot(b"bar"));
        // The tag runs from the first `{` to the first `}` after it.
        assert_eq!(key_hash_slot(b"foo{{bar}}zap"), key_hash_slot(b"{bar"));
        assert_eq!(key_hash_slot(b"foo{{bar}}zap"), crc16(b"{bar") & 16383);
        assert_eq!(key_hash_slot(b"foo{bar}{zap}"), key_hash_slot(b"bar"));
        // No closing brace, or a closing brace only before the opening one: whole key.
        assert_eq!(key_hash_slot(b"foo{bar"), crc16(b"foo{bar") & 16383);
        assert_eq!(key_hash_slot(b"}foo{"), crc16(b"}foo{") & 16383);
        assert_eq!(key_hash_slot(b"{"), crc16(b"{") & 16383);
        assert_eq!(key_hash_slot(b"{}"), crc16(b"{}") & 16383);
    }

    proptest! {
        #[test]
        fn table_matches_bitwise(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            prop_assert_eq!(crc16(&data), crc16_bitwise(&data));
        }

        #[test]
        fn slot_in_range(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(key_hash_slot(&key) < CLUSTER_SLOTS);
        }

        #[test]
        fn tag_decides_slot(
            prefix in proptest::collection::vec(any::<u8>().prop_filter("no {", |&b| b != b'{'), 0..16),
            tag in proptest::collection::vec(
                any::<u8>().prop_filter("no braces", |&b| b != b'{' && b != b'}'),
                1..32,
            ),
            // The suffix may hold anything, braces included: only the first tag counts.
            suffix in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut key = prefix.clone();
            key.push(b'{');
            key.extend_from_slice(&tag);
            key.push(b'}');
            key.extend_from_slice(&suffix);
            prop_assert_eq!(key_hash_slot(&key), key_hash_slot(&tag));
        }
    }
}
