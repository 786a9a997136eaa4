//! The shard map: for each partition, which (node, shard) owns it, and an epoch that grows
//! with every change. Sent as the payload of a GetShardMap response, archived with rkyv.

use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::WireError;
use crate::limits::MAX_SHARD_MAP_BYTES;
use crate::placement::partition_of;

/// One shard's address: a node and the shard's listener on it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct ShardAddr {
    pub node: u32,
    pub shard: u32,
    /// `host:port` of the shard's listener.
    pub addr: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ShardMap {
    pub epoch: u64,
    pub partition_bits: u8,
    pub shards: Vec<ShardAddr>,
    /// `owners[p]` indexes `shards`.
    pub owners: Vec<u16>,
}

impl ShardMap {
    /// A map that spreads `2^bits` partitions over `shards` round-robin.
    pub fn spread(epoch: u64, partition_bits: u8, shards: Vec<ShardAddr>) -> ShardMap {
        let n = shards.len().max(1);
        let owners = (0..1usize << partition_bits).map(|p| (p % n) as u16).collect();
        ShardMap {
            epoch,
            partition_bits,
            shards,
            owners,
        }
    }

    pub fn partition(&self, key: &[u8]) -> u32 {
        partition_of(key, self.partition_bits)
    }

    /// The shard owning `partition`.
    pub fn owner(&self, partition: u32) -> Option<&ShardAddr> {
        let i = *self.owners.get(partition as usize)?;
        self.shards.get(i as usize)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let bytes = rkyv::to_bytes::<RkyvError>(self).map_err(|e| WireError::Malformed(e.to_string()))?;
        Ok(bytes.to_vec())
    }

    /// Checks a received map completely before trusting it.
    pub fn from_bytes(bytes: &[u8]) -> Result<ShardMap, WireError> {
        if bytes.len() > MAX_SHARD_MAP_BYTES {
            return Err(WireError::TooLarge {
                what: "shard map",
                len: bytes.len(),
                limit: MAX_SHARD_MAP_BYTES,
            });
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let archived = rkyv::access::<ArchivedShardMap, RkyvError>(&aligned)
            .map_err(|e| WireError::Malformed(format!("invalid shard map: {e}")))?;
        let map: ShardMap = rkyv::deserialize::<ShardMap, RkyvError>(archived)
            .map_err(|e| WireError::Malformed(e.to_string()))?;
        let bits_ok = (1..=16).contains(&map.partition_bits);
        if !bits_ok
            || map.owners.len() != 1usize << map.partition_bits
            || map.owners.iter().any(|&o| o as usize >= map.shards.len())
        {
            return Err(WireError::Malformed("shard map is inconsistent".into()));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_routing() {
        let shards = (0..3)
            .map(|s| ShardAddr {
                node: 0,
                shard: s,
                addr: format!("127.0.0.1:{}", 7400 + s),
            })
            .collect();
        let map = ShardMap::spread(4, 12, shards);
        let back = ShardMap::from_bytes(&map.to_bytes().unwrap()).unwrap();
        assert_eq!(back, map);
        let p = map.partition(b"key");
        assert_eq!(map.owner(p).unwrap().shard, p % 3);
        let mut bad = map.clone();
        bad.owners[5] = 9;
        assert!(ShardMap::from_bytes(&bad.to_bytes().unwrap()).is_err());
        assert!(ShardMap::from_bytes(b"garbage").is_err());
    }
}
