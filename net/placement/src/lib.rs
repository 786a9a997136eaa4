//! hotshard-placement: which partition a key belongs to (xxh3 of the key), and the shard
//! map (per partition a chain of replicas with a version, and the map's epoch). Clients,
//! nodes and the coordinator share it; it needs no executor and no socket.

pub mod chain_plan;
pub mod error;
pub mod healing;
pub mod index_split;
pub mod limits;
pub mod partition;
pub mod shard_map;

pub use chain_plan::{
    build_chains, health, promote_synced, rejoin_as_syncing, take_node_offline, ChainHealth, PlanError,
};
pub use error::MapError;
pub use index_split::{IndexSplit, KeyRange, SplitDone, SplitState};
pub use partition::{index_tag, key_hash, partition_of, DEFAULT_PARTITION_BITS};
pub use shard_map::{Chain, NodeIncarnation, Replica, ReplicaState, ShardAddr, ShardMap};
