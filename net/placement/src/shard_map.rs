//! The shard map: for each partition, its chain of replicas (node, shard), head first, with
//! a chain version, and an epoch that grows with every change of the map. Sent as the
//! payload of a GetShardMap response, archived with rkyv, and checked whole on arrival.

use rkyv::rancor::Error as RkyvError;
use rkyv::{Archive, Deserialize, Serialize};

use crate::error::MapError;
use crate::index_split::{self, IndexSplit, KeyRange};
use crate::limits::{MAX_PARTITION_BITS, MAX_REPLICAS, MAX_SHARD_MAP_BYTES};
use crate::partition::partition_of;

/// One shard's address: a node and the shard's listener on it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct ShardAddr {
    pub node: u32,
    pub shard: u32,
    /// `host:port` of the shard's listener.
    pub addr: String,
}

/// A replica's part in its chain.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ReplicaState {
    /// Holds the partition and answers for it.
    Serving,
    /// Receiving the partition (every new write, and a stream of what it lacks); serves
    /// no reads.
    Syncing,
    /// Down or cut off; takes no part until it rejoins as syncing.
    Offline,
    /// On its way out of a live chain: still in the write path, at the place it had (it
    /// takes every write, as it did while serving), but no longer a reader. Dropped once it has reported adopting
    /// the chain version that made it leaving (or once its node's lease has expired: it is
    /// then offline), so that no map the cluster publishes lets it answer reads while
    /// writes pass it by. (Appended: the archived tags of the others stay as they were.)
    Leaving,
    /// Offline, and one of the replicas that were serving (or leaving) in the last version
    /// of a chain that then lost every serving replica: it holds every write the chain
    /// acknowledged (a write is acknowledged only once every serving replica has it). The
    /// chain comes back through it: once its node is registered again it serves again and
    /// the others resync from it. (Appended, like `Leaving`.)
    Stranded,
    /// Syncing, and holding every write the chain acknowledged: a stranded replica whose
    /// node was registered when its chain came back through another (`revive_stranded`).
    /// It held every write acknowledged before the chain was lost, none was acknowledged
    /// while the chain had no serving replica, and it has been in the write path since the
    /// chain came back, so it has every acknowledged write; it may lack only writes never
    /// acknowledged, which its catch-up settles. If the chain's serving replicas are lost
    /// before it has caught up, the chain comes back through it, not through an operator's
    /// acceptance of a loss (a disk lost just after a whole-cluster restart, while the
    /// others were catching up with the first to return, left chains unavailable for good
    /// before; the soak found it). Taken offline, it is a plain offline replica again.
    /// (Appended, like `Leaving`.)
    SyncingHolder,
}

impl ReplicaState {
    /// Whether a replica in this state is in its chain's write path (takes every write
    /// passed down the chain): serving, leaving and syncing ones.
    pub fn takes_writes(self) -> bool {
        matches!(
            self,
            ReplicaState::Serving
                | ReplicaState::Leaving
                | ReplicaState::Syncing
                | ReplicaState::SyncingHolder
        )
    }

    /// Syncing: catching up (answers no reads), a holder of every acknowledged write or not.
    pub fn is_syncing(self) -> bool {
        matches!(self, ReplicaState::Syncing | ReplicaState::SyncingHolder)
    }

    /// In the write path and holding every write the chain acknowledged: serving, leaving,
    /// or syncing as a holder. A chain with none of these has lost its last holders.
    pub fn holds_every_ack(self) -> bool {
        matches!(
            self,
            ReplicaState::Serving | ReplicaState::Leaving | ReplicaState::SyncingHolder
        )
    }

    /// Offline, stranded or not.
    pub fn is_offline(self) -> bool {
        matches!(self, ReplicaState::Offline | ReplicaState::Stranded)
    }
}

/// One replica of a partition: a shard (an index into the map's `shards`) and its state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Replica {
    pub shard: u16,
    pub state: ReplicaState,
}

/// The replicas of one partition in chain order, head first, and a version that grows
/// with every change of the chain (a request naming an older one is refused).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Chain {
    pub version: u64,
    pub replicas: Vec<Replica>,
}

/// The map of a cluster: its epoch (grows with every change of the map), the partition
/// count, every shard's address, and a chain per partition. On one node with no cluster,
/// each chain is one serving replica.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ShardMap {
    pub epoch: u64,
    pub partition_bits: u8,
    pub shards: Vec<ShardAddr>,
    /// `chains[p]` is partition p's chain.
    pub chains: Vec<Chain>,
    /// The registration each node in the map was last seen with (the coordinator's record:
    /// a node seen with another has restarted, and its replicas must sync before serving).
    pub incarnations: Vec<NodeIncarnation>,
    /// The bucket indexes split by key (issue 33, `index_split`), sorted by tag then first
    /// key; at most one in progress.
    pub splits: Vec<IndexSplit>,
    /// Derived, not sent: `heads[p]` indexes `shards` with the head of `chains[p]`, so that
    /// routing a request reads one u16 instead of following a chain's replica list (that
    /// extra hop cost 3-6% of cache-hit GETs). Built by `spread` and `from_bytes`; after
    /// changing `chains` by hand, call `refresh_heads`.
    #[rkyv(with = rkyv::with::Skip)]
    heads: Vec<u16>,
}

/// A node and the registration (its etcd lease) it was last seen with.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NodeIncarnation {
    pub node: u32,
    pub incarnation: u64,
}

/// One replica per partition, partition p on shard p mod `shards`, all in `state`.
fn round_robin(partition_bits: u8, shards: usize, state: ReplicaState, version: u64) -> Vec<Chain> {
    let n = shards.max(1);
    (0..1usize << partition_bits)
        .map(|p| Chain {
            version,
            replicas: vec![Replica {
                shard: (p % n) as u16,
                state,
            }],
        })
        .collect()
}

impl ShardMap {
    /// A map that spreads `2^bits` partitions over `shards` round-robin, one serving
    /// replica each.
    pub fn spread(epoch: u64, partition_bits: u8, shards: Vec<ShardAddr>) -> ShardMap {
        let chains = round_robin(partition_bits, shards.len(), ReplicaState::Serving, 1);
        ShardMap::with_chains(epoch, partition_bits, shards, chains)
    }

    /// A map of `shards` in which no partition has a serving replica (epoch 0): what a
    /// cluster node serves by until the cluster's map arrives, so that it answers for no
    /// partition the cluster has not given it.
    pub fn unassigned(partition_bits: u8, shards: Vec<ShardAddr>) -> ShardMap {
        let chains = round_robin(partition_bits, shards.len(), ReplicaState::Offline, 0);
        ShardMap::with_chains(0, partition_bits, shards, chains)
    }

    /// A map of the given chains (a cluster's, built by the coordinator).
    pub fn with_chains(
        epoch: u64,
        partition_bits: u8,
        shards: Vec<ShardAddr>,
        chains: Vec<Chain>,
    ) -> ShardMap {
        let mut map = ShardMap {
            epoch,
            partition_bits,
            shards,
            chains,
            incarnations: Vec::new(),
            splits: Vec::new(),
            heads: Vec::new(),
        };
        map.refresh_heads();
        map
    }

    /// Recomputes the head of every chain (`u16::MAX` if none): its first replica serving
    /// or leaving. A leaving replica is first only when it was the head and is leaving
    /// (a draining node's) or the replicas before it were lost: it takes the chain's
    /// writes and passes them down until the coordinator drops it, and answers no reads.
    pub fn refresh_heads(&mut self) {
        self.heads = self
            .chains
            .iter()
            .map(|c| {
                c.replicas
                    .iter()
                    .find(|r| matches!(r.state, ReplicaState::Serving | ReplicaState::Leaving))
                    .map_or(u16::MAX, |r| r.shard)
            })
            .collect();
    }

    /// The partition `key` belongs to: by the hash of its index tag or of the whole key,
    /// unless its tag's index has split (then by the range it falls in).
    pub fn partition(&self, key: &[u8]) -> u32 {
        if self.splits.is_empty() {
            return partition_of(key, self.partition_bits);
        }
        self.range_of(key).partition
    }

    /// The range `key` falls in under the moved splits: partition and bounds.
    pub fn range_of(&self, key: &[u8]) -> KeyRange<'_> {
        index_split::range_of(&self.splits, key, self.partition_bits)
    }

    /// Whether `key`'s writes are refused at its head for now: its range is being moved
    /// and is fenced.
    pub fn write_fenced(&self, key: &[u8]) -> bool {
        !self.splits.is_empty() && index_split::is_fenced(&self.splits, key, self.partition_bits)
    }

    /// Partition `partition`'s chain.
    pub fn chain(&self, partition: u32) -> Option<&Chain> {
        self.chains.get(partition as usize)
    }

    /// The shard that takes `partition`'s writes: its chain's head, the first replica
    /// serving or leaving (`refresh_heads`). Reads go to `reader`.
    pub fn owner(&self, partition: u32) -> Option<&ShardAddr> {
        let head = *self.heads.get(partition as usize)?;
        self.shards.get(head as usize)
    }

    /// A serving replica of `partition` to read from: the `pick`-th (modulo their number),
    /// so that a client turning `pick` spreads its reads over the chain. Every serving
    /// replica answers reads linearizably (a key with a write in flight waits).
    pub fn reader(&self, partition: u32, pick: usize) -> Option<&ShardAddr> {
        let chain = self.chains.get(partition as usize)?;
        let serving = chain.replicas.iter().filter(|r| r.state == ReplicaState::Serving);
        let n = serving.clone().count();
        let r = serving.clone().nth(pick % n.max(1))?;
        self.shards.get(r.shard as usize)
    }

    /// The incarnation `node` was last seen with (None: not recorded).
    pub fn incarnation(&self, node: u32) -> Option<u64> {
        self.incarnations
            .iter()
            .find(|i| i.node == node)
            .map(|i| i.incarnation)
    }

    /// How many partitions shard `index` (of `shards`) heads.
    pub fn partitions_headed_by(&self, index: usize) -> usize {
        self.heads.iter().filter(|&&h| h as usize == index).count()
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, MapError> {
        let bytes = rkyv::to_bytes::<RkyvError>(self).map_err(|e| MapError::Malformed(e.to_string()))?;
        Ok(bytes.to_vec())
    }

    /// Checks a received map completely before trusting it.
    pub fn from_bytes(bytes: &[u8]) -> Result<ShardMap, MapError> {
        if bytes.len() > MAX_SHARD_MAP_BYTES {
            return Err(MapError::TooLarge {
                len: bytes.len(),
                limit: MAX_SHARD_MAP_BYTES,
            });
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        let archived = rkyv::access::<ArchivedShardMap, RkyvError>(&aligned)
            .map_err(|e| MapError::Malformed(e.to_string()))?;
        let mut map: ShardMap = rkyv::deserialize::<ShardMap, RkyvError>(archived)
            .map_err(|e| MapError::Malformed(e.to_string()))?;
        let bits_ok = (1..=MAX_PARTITION_BITS).contains(&map.partition_bits);
        // Every chain names known shards, each at most once. A chain with no serving
        // replica is kept (unavailable: reported, and requests for it refused), never
        // silently reassigned.
        let chain_ok = |c: &Chain| {
            !c.replicas.is_empty()
                && c.replicas.len() <= MAX_REPLICAS
                && c.replicas.iter().enumerate().all(|(i, r)| {
                    (r.shard as usize) < map.shards.len()
                        && !c.replicas[..i].iter().any(|o| o.shard == r.shard)
                })
        };
        if !bits_ok
            || map.chains.len() != 1usize << map.partition_bits
            || !map.chains.iter().all(chain_ok)
            || !index_split::well_formed(&map.splits, map.chains.len())
        {
            return Err(MapError::Malformed("the map is inconsistent".into()));
        }
        map.refresh_heads();
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_turn_over_the_serving_replicas() {
        let shards: Vec<ShardAddr> = (0..3)
            .map(|s| ShardAddr {
                node: s,
                shard: 0,
                addr: format!("10.0.0.{s}:7400"),
            })
            .collect();
        let replica = |shard, state| Replica { shard, state };
        let chain = Chain {
            version: 3,
            replicas: vec![
                replica(0, ReplicaState::Offline),
                replica(1, ReplicaState::Serving),
                replica(2, ReplicaState::Serving),
            ],
        };
        let map = ShardMap::with_chains(2, 1, shards, vec![chain.clone(), chain]);
        let picked: Vec<u32> = (0..4).map(|i| map.reader(1, i).unwrap().node).collect();
        assert_eq!(picked, [1, 2, 1, 2], "never the offline replica");
        assert_eq!(map.owner(1).unwrap().node, 1);
        assert!(map.reader(2, 0).is_none(), "no such partition");
    }

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
        assert_eq!(map.chain(p).unwrap().version, 1);
        assert_eq!(map.partitions_headed_by(0), 4096usize.div_ceil(3));
        // Refused on arrival: an unknown shard, a shard twice in a chain, an empty chain, a
        // missing chain.
        let replica = |shard, state| Replica { shard, state };
        let broken: [&dyn Fn(&mut ShardMap); 4] = [
            &|m| m.chains[5].replicas[0].shard = 9,
            &|m| {
                let head = m.chains[5].replicas[0];
                m.chains[5]
                    .replicas
                    .push(replica(head.shard, ReplicaState::Syncing))
            },
            &|m| m.chains[5].replicas.clear(),
            &|m| {
                m.chains.pop();
            },
        ];
        for (i, breaks) in broken.iter().enumerate() {
            let mut bad = map.clone();
            breaks(&mut bad);
            assert!(
                ShardMap::from_bytes(&bad.to_bytes().unwrap()).is_err(),
                "case {i}"
            );
        }
        assert!(ShardMap::from_bytes(b"garbage").is_err());
        // The largest map (2^16 partitions of three replicas) fits the payload limit.
        let mut big = ShardMap::spread(
            1,
            16,
            (0..3)
                .map(|s| ShardAddr {
                    node: s,
                    shard: 0,
                    addr: "10.0.0.1:7400".into(),
                })
                .collect(),
        );
        for (p, c) in big.chains.iter_mut().enumerate() {
            c.replicas = (0..3)
                .map(|i| replica(((p + i) % 3) as u16, ReplicaState::Serving))
                .collect();
        }
        let bytes = big.to_bytes().unwrap();
        assert!(bytes.len() <= MAX_SHARD_MAP_BYTES, "{} bytes", bytes.len());
        assert_eq!(ShardMap::from_bytes(&bytes).unwrap(), big);
        // A chain whose head is offline routes writes to its first serving replica.
        let mut m = map.clone();
        m.chains[7].replicas = vec![
            replica(1, ReplicaState::Offline),
            replica(2, ReplicaState::Serving),
        ];
        let m = ShardMap::from_bytes(&m.to_bytes().unwrap()).unwrap();
        assert_eq!(m.owner(7).unwrap().shard, 2);
        // A chain with no serving replica arrives intact and has no owner.
        let mut m = map.clone();
        m.chains[7].replicas = vec![
            replica(1, ReplicaState::Offline),
            replica(2, ReplicaState::Syncing),
        ];
        let m = ShardMap::from_bytes(&m.to_bytes().unwrap()).unwrap();
        assert!(m.owner(7).is_none());
    }
}
