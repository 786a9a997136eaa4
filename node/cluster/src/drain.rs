//! `hotshard cluster drain NODE` and `undrain NODE`: an operator marks a node draining in
//! etcd (`draining/<id>`); the acting coordinator then moves each of its replicas to other
//! nodes (add a syncing replica elsewhere, promote it once caught up, drop the drained
//! one), and `cluster status` shows it removable once it holds none. Checked before
//! anything is written: an unknown node, a drain that would leave fewer nodes than the
//! replication factor, and a second drain while one is under way are refused.

use etcd_client::{Client, GetOptions};

use crate::coordinator::{read_map, registered_nodes};
use crate::error::{ClusterError, ClusterResult};
use crate::keys::ClusterKeys;

/// Nodes marked draining.
pub async fn draining_nodes(client: &Client, keys: &ClusterKeys) -> ClusterResult<Vec<u32>> {
    let prefix = keys.draining_prefix();
    let got = client
        .clone()
        .get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| keys.node_of(&String::from_utf8_lossy(kv.key()), &prefix))
        .collect())
}

/// Marks `node` draining. Returns what was done, for the operator.
pub async fn drain(
    client: &Client,
    keys: &ClusterKeys,
    node: u32,
    replication: usize,
) -> ClusterResult<String> {
    let Some((map, _)) = read_map(client, keys).await? else {
        return Err(ClusterError::Refused(
            "the cluster has not formed yet: nothing to drain".into(),
        ));
    };
    let mut in_map: Vec<u32> = map.shards.iter().map(|s| s.node).collect();
    in_map.dedup();
    if !in_map.contains(&node) {
        return Err(ClusterError::Refused(format!(
            "node {node} is not in the cluster (its nodes: {})",
            in_map.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        )));
    }
    let draining = draining_nodes(client, keys).await?;
    if draining.contains(&node) {
        return Ok(format!("node {node} is already draining"));
    }
    let holding = |n: u32| {
        map.chains
            .iter()
            .filter(|c| {
                c.replicas
                    .iter()
                    .any(|r| !r.state.is_offline() && map.shards[r.shard as usize].node == n)
            })
            .count()
    };
    if let Some(&other) = draining.iter().find(|&&n| holding(n) > 0) {
        return Err(ClusterError::Refused(format!(
            "node {other} is still draining ({} chains left): one drain at a time (undrain it, or wait)",
            holding(other)
        )));
    }
    let alive: Vec<u32> = registered_nodes(client, keys)
        .await?
        .iter()
        .map(|n| n.id)
        .collect();
    let left = alive
        .iter()
        .filter(|n| **n != node && !draining.contains(n))
        .count();
    if left < replication {
        return Err(ClusterError::Refused(format!(
            "draining node {node} would leave {left} live nodes for a replication factor of {replication}: \
             add a node first"
        )));
    }
    client.clone().put(keys.draining(node), "1", None).await?;
    Ok(format!(
        "node {node} draining: its {} chains move to the other nodes (see `hotshard cluster status`)",
        holding(node)
    ))
}

/// Cancels a drain: the node keeps what it still holds and takes its share again.
pub async fn undrain(client: &Client, keys: &ClusterKeys, node: u32) -> ClusterResult<String> {
    let gone = client.clone().delete(keys.draining(node), None).await?;
    if gone.deleted() == 0 {
        return Err(ClusterError::Refused(format!("node {node} is not draining")));
    }
    Ok(format!("node {node} no longer draining"))
}
