//! What `hotshard cluster status` shows: the acting coordinator, every node (registered or
//! only named by the map), the map's epoch, each node's chains by role, and the chains
//! short of replicas.

use std::collections::BTreeMap;

use etcd_client::Client;
use hotshard_placement::{health, ReplicaState, ShardMap};
use serde::Serialize;

use crate::coordinator::{read_map, registered_nodes};
use crate::error::ClusterResult;
use crate::keys::ClusterKeys;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Roles {
    pub head: usize,
    pub middle: usize,
    pub tail: usize,
    pub syncing: usize,
    /// Leaving: still taking writes, no longer read, dropped once it confirms.
    pub leaving: usize,
    pub offline: usize,
    /// Offline, and the last holder of every acknowledged write of a chain with no serving
    /// replica: the chain comes back when this node does.
    pub stranded: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub id: u32,
    pub addr: String,
    /// Registered (its lease alive).
    pub alive: bool,
    pub shards: usize,
    pub chains: Roles,
    /// Marked draining (`hotshard cluster drain`).
    pub draining: bool,
    /// Draining and holding no replica any more: the node may be stopped for good.
    pub removable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    pub coordinator: Option<String>,
    /// None until the cluster has formed.
    pub epoch: Option<u64>,
    pub partitions: usize,
    pub nodes: Vec<NodeStatus>,
    /// Partitions with fewer serving replicas than the replication factor.
    pub degraded: Vec<u32>,
    /// Partitions with no serving replica.
    pub unavailable: Vec<u32>,
    /// Unavailable partitions no replica of which holds every acknowledged write any more
    /// (none stranded): only `hotshard cluster accept-loss` brings them back, serving what
    /// is left.
    pub lost: Vec<u32>,
}

/// Every node's roles over the map's chains: the first serving replica is the head, the
/// last the tail (a chain of one serving replica counts it as head only).
pub fn roles_by_node(map: &ShardMap) -> BTreeMap<u32, Roles> {
    let mut roles: BTreeMap<u32, Roles> = BTreeMap::new();
    for s in &map.shards {
        roles.entry(s.node).or_default();
    }
    for c in &map.chains {
        let serving: Vec<_> = c
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Serving)
            .collect();
        for (i, r) in serving.iter().enumerate() {
            let node = map.shards[r.shard as usize].node;
            let e = roles.entry(node).or_default();
            if i == 0 {
                e.head += 1;
            } else if i + 1 == serving.len() {
                e.tail += 1;
            } else {
                e.middle += 1;
            }
        }
        for r in c.replicas.iter().filter(|r| r.state != ReplicaState::Serving) {
            let e = roles.entry(map.shards[r.shard as usize].node).or_default();
            if r.state.is_syncing() {
                e.syncing += 1;
            } else if r.state == ReplicaState::Leaving {
                e.leaving += 1;
            } else if r.state == ReplicaState::Stranded {
                e.stranded += 1;
            } else {
                e.offline += 1;
            }
        }
    }
    roles
}

/// Reads the cluster's state from etcd. `replication` is the factor chains are held to.
pub async fn cluster_status(
    client: &Client,
    keys: &ClusterKeys,
    cluster: &str,
    replication: usize,
) -> ClusterResult<ClusterStatus> {
    let coordinator = client
        .clone()
        .get(keys.coordinator(), None)
        .await?
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
    let registered = registered_nodes(client, keys).await?;
    let map = read_map(client, keys).await?.map(|(m, _)| m);
    let mut nodes: BTreeMap<u32, NodeStatus> = registered
        .iter()
        .map(|n| {
            (
                n.id,
                NodeStatus {
                    id: n.id,
                    addr: n.addr.clone(),
                    alive: true,
                    shards: n.shards.len(),
                    chains: Roles::default(),
                    draining: false,
                    removable: false,
                },
            )
        })
        .collect();
    let (mut degraded, mut unavailable, mut lost) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(map) = &map {
        for (id, roles) in roles_by_node(map) {
            let in_map = map.shards.iter().filter(|s| s.node == id).count();
            let n = nodes.entry(id).or_insert_with(|| NodeStatus {
                id,
                addr: map
                    .shards
                    .iter()
                    .find(|s| s.node == id)
                    .map(|s| s.addr.clone())
                    .unwrap_or_default(),
                alive: false,
                shards: in_map,
                chains: Roles::default(),
                draining: false,
                removable: false,
            });
            n.chains = roles;
        }
        for id in crate::drain::draining_nodes(client, keys).await? {
            if let Some(n) = nodes.get_mut(&id) {
                let c = &n.chains;
                n.draining = true;
                n.removable = c.head + c.middle + c.tail + c.syncing + c.leaving == 0;
            }
        }
        let h = health(&map.chains, replication);
        degraded = h.degraded;
        lost = lost_chains(map, &h.unavailable);
        unavailable = h.unavailable;
    }
    Ok(ClusterStatus {
        cluster: cluster.to_string(),
        coordinator,
        epoch: map.as_ref().map(|m| m.epoch),
        partitions: map.as_ref().map_or(0, |m| m.chains.len()),
        nodes: nodes.into_values().collect(),
        degraded,
        unavailable,
        lost,
    })
}

/// The partitions of `unavailable` with no stranded replica: nothing holds every write
/// they acknowledged.
pub fn lost_chains(map: &ShardMap, unavailable: &[u32]) -> Vec<u32> {
    unavailable
        .iter()
        .copied()
        .filter(|&p| {
            map.chain(p).is_some_and(|c| {
                !c.replicas
                    .iter()
                    .any(|r| matches!(r.state, ReplicaState::Stranded | ReplicaState::Leaving))
            })
        })
        .collect()
}

impl std::fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "cluster {}", self.cluster)?;
        writeln!(
            f,
            "coordinator: {}",
            self.coordinator.as_deref().unwrap_or("none acting")
        )?;
        match self.epoch {
            Some(e) => writeln!(f, "map: epoch {e}, {} partitions", self.partitions)?,
            None => writeln!(f, "map: not formed yet")?,
        }
        writeln!(
            f,
            "{:>10}  {:<22} {:>5} {:>6}  {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>8}  state",
            "node",
            "address",
            "alive",
            "shards",
            "head",
            "middle",
            "tail",
            "syncing",
            "leaving",
            "offline",
            "stranded"
        )?;
        for n in &self.nodes {
            let c = &n.chains;
            let state = match (n.draining, n.removable) {
                (true, true) => "drained: removable",
                (true, false) => "draining",
                _ => "",
            };
            writeln!(
                f,
                "{:>10}  {:<22} {:>5} {:>6}  {:>6} {:>6} {:>6} {:>7} {:>7} {:>7} {:>8}  {state}",
                n.id,
                n.addr,
                if n.alive { "yes" } else { "NO" },
                n.shards,
                c.head,
                c.middle,
                c.tail,
                c.syncing,
                c.leaving,
                c.offline,
                c.stranded
            )?;
        }
        writeln!(
            f,
            "chains degraded: {}, unavailable: {}",
            self.degraded.len(),
            self.unavailable.len()
        )?;
        let waiting: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.chains.stranded > 0)
            .map(|n| format!("node {} ({} chains)", n.id, n.chains.stranded))
            .collect();
        if !waiting.is_empty() {
            writeln!(
                f,
                "unavailable chains come back when a node holding every write they acknowledged \
                 returns: {} (one that will not: `hotshard cluster accept-loss --node ID`)",
                waiting.join(", ")
            )?;
        }
        if !self.lost.is_empty() {
            writeln!(
                f,
                "LOST: {} chains have no replica holding every write they acknowledged (partitions {}); \
                 `hotshard cluster accept-loss` serves them again from what is left",
                self.lost.len(),
                preview(&self.lost)
            )?;
        }
        Ok(())
    }
}

/// The first few of `list`, and how many more.
fn preview(list: &[u32]) -> String {
    let shown: Vec<String> = list.iter().take(8).map(u32::to_string).collect();
    match list.len().saturating_sub(8) {
        0 => shown.join(", "),
        more => format!("{}, and {more} more", shown.join(", ")),
    }
}
