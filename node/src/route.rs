//! The first stage of a keyed request: its key is hashed once (xxh3, placement's hash), the
//! partition the client named is checked against it, and the request is sent where it is
//! answered: this shard, another shard of this node (over the peer channel), or not this
//! node (WrongShard, so that the client refreshes its map). Later stages take the checked
//! partition from the request's target and never hash the key for placement again.

use hotshard_net::{Status, Target};
use hotshard_placement::{ReplicaState, ShardMap};

/// Where a keyed request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This shard's store.
    Here,
    /// Shard `n` of this node, over the peer channel.
    Peer(usize),
    /// Another node: the client's map is out of date.
    Elsewhere,
}

/// The partition as the store keeps it (16 bits: the most partitions a map may have).
pub fn store_partition(partition: u32) -> Result<u16, Status> {
    u16::try_from(partition).map_err(|_| Status::BadRequest {
        reason: format!("partition {partition} is beyond 2^16 partitions"),
    })
}

/// Routes a request for `key` that names `target`, by `map`, from shard `shard` of node
/// `node_id`. Writes go to the partition's head; `reads` go to any of its serving replicas
/// (this shard if it is one, else one on this node, else the first).
pub fn route(
    map: &ShardMap,
    node_id: u32,
    shard: usize,
    key: &[u8],
    target: Target,
    reads: bool,
) -> Result<Route, Status> {
    let partition = map.partition(key);
    if partition != target.partition {
        // A client whose map is older than a split of the key's index: it fetches the map
        // again and goes where the key is now.
        if target.epoch < map.epoch {
            return Err(Status::WrongShard { epoch: map.epoch });
        }
        return Err(Status::BadRequest {
            reason: format!("key is in partition {partition}, not {}", target.partition),
        });
    }
    store_partition(partition)?;
    if reads && has_replicas(map, partition) {
        if serves(map, node_id, shard, partition) {
            return Ok(Route::Here);
        }
        if let Some(local) = crate::chain_view::local_replica(map, partition, node_id) {
            return Ok(Route::Peer(local));
        }
    }
    // Two integers of the owner, not a clone of its address (a String) per request. A
    // read's is a serving replica: the head may be leaving (a draining node's), which
    // takes writes and answers no reads.
    let owner = if reads {
        map.reader(partition, 0)
    } else {
        map.owner(partition)
    };
    let (node, owner) = owner
        .map(|o| (o.node, o.shard as usize))
        // No serving replica (the cluster has not given this partition out yet, or every
        // replica of its chain is down): nothing can answer now; the client retries.
        .ok_or(Status::Busy)?;
    Ok(if node != node_id {
        Route::Elsewhere
    } else if owner == shard {
        Route::Here
    } else {
        Route::Peer(owner)
    })
}

/// Whether `partition`'s chain has more than one serving replica by `map`.
pub fn has_replicas(map: &ShardMap, partition: u32) -> bool {
    map.chain(partition).is_some_and(|c| {
        c.replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Serving)
            .nth(1)
            .is_some()
    })
}

/// Whether shard `shard` of node `node_id` is a serving replica of `partition` by `map`:
/// it may answer the partition's reads.
pub fn serves(map: &ShardMap, node_id: u32, shard: usize, partition: u32) -> bool {
    map.chain(partition).is_some_and(|c| {
        c.replicas.iter().any(|r| {
            r.state == ReplicaState::Serving
                && map
                    .shards
                    .get(r.shard as usize)
                    .is_some_and(|s| s.node == node_id && s.shard as usize == shard)
        })
    })
}

/// Whether shard `shard` of node `node_id` takes `partition`'s writes by `map`: what a
/// shard checks, by its own copy of the map, before it answers a forwarded request.
pub fn owns(map: &ShardMap, node_id: u32, shard: usize, partition: u32) -> bool {
    map.owner(partition)
        .is_some_and(|o| o.node == node_id && o.shard as usize == shard)
}
