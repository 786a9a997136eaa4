//! The partition of a key. xxh3 over the raw key bytes, never a
//! hasher whose output can change between versions or machines.

/// Default partitions per cluster: 2^12 = 4096.
pub const DEFAULT_PARTITION_BITS: u8 = 12;

/// The stored and routed hash of a key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Partition of `key` among `2^bits` partitions (`bits` in 1..=`MAX_PARTITION_BITS`).
pub fn partition_of(key: &[u8], bits: u8) -> u32 {
    debug_assert!((1..=crate::limits::MAX_PARTITION_BITS).contains(&bits));
    (key_hash(key) >> (64 - bits as u32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_placement() {
        // Pinned: a change here moves every stored key to another partition.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"hotshard"), key_hash(b"hotshard"));
        let p = partition_of(b"object/0001", DEFAULT_PARTITION_BITS);
        assert!(p < 4096);
        assert_eq!(p, (key_hash(b"object/0001") >> 52) as u32);
    }
}
