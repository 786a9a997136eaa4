//! `hotshard cluster accept-loss`: an operator accepts that chains with no replica holding
//! every write they acknowledged (every such replica's node down for good) serve again from
//! what is left. Nothing is given up silently: the coordinator never does this by itself,
//! `cluster status` lists the chains as lost until then, and each acceptance names the chain
//! version the operator looked at, so that it applies to that state only.

use etcd_client::Client;

use crate::coordinator::read_map;
use crate::error::{ClusterError, ClusterResult};
use crate::keys::ClusterKeys;
use crate::status::lost_chains;

/// Accepts the loss of `partitions` (each must have no serving replica); with none named,
/// of every unavailable chain that waits only for node `gone` (its stranded replicas are
/// all there: the operator says that node will not come back), or with no node either, of
/// every lost chain. Returns what was done, for the operator.
pub async fn accept_loss(
    client: &Client,
    keys: &ClusterKeys,
    partitions: &[u32],
    gone: Option<u32>,
) -> ClusterResult<String> {
    let Some((map, _)) = read_map(client, keys).await? else {
        return Err(ClusterError::Refused("the cluster has not formed yet".into()));
    };
    let unavailable = hotshard_placement::health(&map.chains, 1).unavailable;
    let chosen = if let Some(node) = gone.filter(|_| partitions.is_empty()) {
        let stranded_on = |c: &hotshard_placement::Chain| -> Vec<u32> {
            c.replicas
                .iter()
                .filter(|r| r.state == hotshard_placement::ReplicaState::Stranded)
                .filter_map(|r| map.shards.get(r.shard as usize).map(|s| s.node))
                .collect()
        };
        unavailable
            .iter()
            .copied()
            .filter(|&p| {
                map.chain(p).is_some_and(|c| {
                    let on = stranded_on(c);
                    !on.is_empty() && on.iter().all(|&n| n == node)
                })
            })
            .collect()
    } else if partitions.is_empty() {
        lost_chains(&map, &unavailable)
    } else {
        if let Some(p) = partitions.iter().find(|p| !unavailable.contains(p)) {
            return Err(ClusterError::Refused(if map.chain(*p).is_none() {
                format!("partition {p} does not exist ({} partitions)", map.chains.len())
            } else {
                format!("partition {p} has a serving replica: nothing to accept")
            }));
        }
        partitions.to_vec()
    };
    if chosen.is_empty() {
        return Ok(match gone {
            Some(n) => format!("no unavailable chain waits only for node {n}: nothing to accept"),
            None => "no chain is lost: nothing to accept".into(),
        });
    }
    for chunk in chosen.chunks(100) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .filter_map(|&p| {
                let version = map.chain(p)?.version;
                Some(etcd_client::TxnOp::put(
                    keys.accept_loss(p),
                    version.to_string(),
                    None,
                ))
            })
            .collect();
        client.clone().txn(etcd_client::Txn::new().and_then(ops)).await?;
    }
    Ok(format!(
        "accepted the loss of {} chains: the coordinator serves them again from what is left \
         (writes only the lost replicas held are gone)",
        chosen.len()
    ))
}
