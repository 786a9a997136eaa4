//! The partition of a key. xxh3 over the raw key bytes (or over its index tag, below),
//! never a hasher whose output can change between versions or machines.
//!
//! Keys that list together live together (issue 33): a key naming an index tag, as Redis
//! Cluster's hash tags do (`{photos}/2026/a.jpg`: the bytes between the first `{` and the
//! first `}` after it, at least one), is placed by the tag alone, so every key of one
//! bucket index lands on one partition, one chain, and lists in order there.

/// Default partitions per cluster: 2^12 = 4096.
pub const DEFAULT_PARTITION_BITS: u8 = 12;

/// The stored and routed hash of a key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The index tag `key` names (Redis Cluster's rule: between the first `{` and the first
/// `}` after it, not empty), if any.
pub fn index_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// Partition of `key` among `2^bits` partitions (`bits` in 1..=`MAX_PARTITION_BITS`): by
/// its index tag if it names one, else by the whole key.
pub fn partition_of(key: &[u8], bits: u8) -> u32 {
    debug_assert!((1..=crate::limits::MAX_PARTITION_BITS).contains(&bits));
    (key_hash(index_tag(key).unwrap_or(key)) >> (64 - bits as u32)) as u32
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

    #[test]
    fn keys_of_one_index_tag_share_a_partition() {
        let bits = DEFAULT_PARTITION_BITS;
        let p = partition_of(b"{photos}/2026/a.jpg", bits);
        assert_eq!(partition_of(b"{photos}/2027/zzz", bits), p);
        assert_eq!(partition_of(b"x{photos}y", bits), p);
        assert_eq!(p, (key_hash(b"photos") >> 52) as u32);
        // Redis Cluster's edge cases: the first `{`, the first `}` after it, not empty.
        assert_eq!(index_tag(b"{a}{b}"), Some(&b"a"[..]));
        assert_eq!(index_tag(b"{{a}}"), Some(&b"{a"[..]));
        assert_eq!(index_tag(b"{}{a}"), None);
        assert_eq!(index_tag(b"{a"), None);
        assert_eq!(index_tag(b"a}{"), None);
        assert_eq!(
            partition_of(b"{}x", bits),
            (key_hash(b"{}x") >> 52) as u32,
            "an empty tag places by the whole key"
        );
    }
}
