//! The coordinator's chain arithmetic, with no etcd, executor or socket: building the
//! chains of a cluster that forms, taking a lost node's replicas out of them, bringing a
//! returning node's replicas back as syncing and promoting them once caught up (issue 20),
//! and saying which chains are short of replicas. The coordinator (issue 19) writes what these return
//! into etcd; tests check them directly.

use std::collections::BTreeMap;

use crate::shard_map::{Chain, Replica, ReplicaState, ShardAddr, ShardMap};

/// Why chains cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// No shard to place anything on.
    NoShards,
    /// Replicas name shards by a u16 index.
    TooManyShards(usize),
    /// A replication factor of 0 places nothing.
    NoReplicas,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::NoShards => write!(f, "the cluster has no shard to place partitions on"),
            PlanError::TooManyShards(n) => write!(f, "{n} shards: at most {} fit the map", u16::MAX),
            PlanError::NoReplicas => write!(f, "the replication factor must be at least 1"),
        }
    }
}

impl std::error::Error for PlanError {}

/// The shards of `shards` (indexes) interleaved by node: the first shard of every node
/// (nodes in id order), then every node's second shard, and so on. Consecutive entries sit
/// on different nodes wherever the nodes have shards left.
fn interleaved_by_node(shards: &[ShardAddr]) -> Vec<u16> {
    let mut by_node: BTreeMap<u32, Vec<u16>> = BTreeMap::new();
    for (i, s) in shards.iter().enumerate() {
        by_node.entry(s.node).or_default().push(i as u16);
    }
    for list in by_node.values_mut() {
        list.sort_by_key(|&i| shards[i as usize].shard);
    }
    let rounds = by_node.values().map(Vec::len).max().unwrap_or(0);
    (0..rounds)
        .flat_map(|r| by_node.values().filter_map(move |list| list.get(r).copied()))
        .collect()
}

/// A chain for each of `partitions` partitions over `shards` (every shard of every node),
/// each of `replication` serving replicas on distinct nodes (fewer if the cluster has
/// fewer nodes: those chains are degraded, see `health`), chain version 1.
///
/// Partition p's chain starts at entry p of the shards interleaved by node and takes the
/// next entries on nodes it does not use yet. With the same shard count on every node,
/// every shard holds each position of a chain (head, each middle, tail) equally often over
/// any run of `shards.len()` partitions: heads, middles and tails are spread evenly.
pub fn build_chains(
    shards: &[ShardAddr],
    partitions: usize,
    replication: usize,
) -> Result<Vec<Chain>, PlanError> {
    if shards.is_empty() {
        return Err(PlanError::NoShards);
    }
    if shards.len() > u16::MAX as usize {
        return Err(PlanError::TooManyShards(shards.len()));
    }
    if replication == 0 {
        return Err(PlanError::NoReplicas);
    }
    let order = interleaved_by_node(shards);
    let n = order.len();
    let chains = (0..partitions)
        .map(|p| {
            let mut replicas: Vec<Replica> = Vec::with_capacity(replication);
            for i in 0..n {
                let shard = order[(p + i) % n];
                let node = shards[shard as usize].node;
                if replicas.iter().all(|r| shards[r.shard as usize].node != node) {
                    replicas.push(Replica {
                        shard,
                        state: ReplicaState::Serving,
                    });
                    if replicas.len() == replication {
                        break;
                    }
                }
            }
            Chain { version: 1, replicas }
        })
        .collect();
    Ok(chains)
}

/// Takes every replica on `node` out of service: each chain that had one there gets it
/// marked offline and moved behind its serving replicas (which keep their order, so the
/// chain shrinks to them), and its version grows. Returns how many chains changed.
pub fn take_node_offline(chains: &mut [Chain], shards: &[ShardAddr], node: u32) -> usize {
    let on_node = |r: &Replica| shards.get(r.shard as usize).is_some_and(|s| s.node == node);
    let mut changed = 0;
    for chain in chains.iter_mut() {
        if !chain.replicas.iter().any(|r| on_node(r) && !r.state.is_offline()) {
            continue;
        }
        for r in chain.replicas.iter_mut().filter(|r| on_node(r)) {
            if !r.state.is_offline() {
                r.state = ReplicaState::Offline;
            }
        }
        // Stable: serving (and syncing) replicas first in their order, offline ones last.
        chain.replicas.sort_by_key(|r| r.state.is_offline());
        chain.version += 1;
        changed += 1;
    }
    changed
}

/// A returning node's replicas rejoin their chains (issue 20's one mechanism for moving
/// data): each offline replica on `node` becomes syncing and moves behind the serving and
/// syncing replicas already there, so that it receives every new write of the chain from
/// the replica before it while it catches up, and serves no reads; the chain version
/// grows. A chain with no serving replica is left as it is (there is nothing to sync from:
/// it stays unavailable, reported). Returns how many chains changed.
pub fn rejoin_as_syncing(chains: &mut [Chain], shards: &[ShardAddr], node: u32) -> usize {
    let on_node = |r: &Replica| shards.get(r.shard as usize).is_some_and(|s| s.node == node);
    let mut changed = 0;
    for chain in chains.iter_mut() {
        let serving = chain.replicas.iter().any(|r| r.state == ReplicaState::Serving);
        let returning = chain
            .replicas
            .iter()
            .any(|r| on_node(r) && r.state == ReplicaState::Offline);
        if !serving || !returning {
            continue;
        }
        for r in chain.replicas.iter_mut().filter(|r| on_node(r)) {
            if r.state == ReplicaState::Offline {
                r.state = ReplicaState::Syncing;
            }
        }
        // Stable: serving first, then syncing (the rejoined one last), offline at the end.
        order(chain);
        chain.version += 1;
        changed += 1;
    }
    changed
}

/// Serving and leaving replicas first (in their order: a replica that starts leaving keeps
/// its place, so that no write in flight is passed past a replica by a reordered chain),
/// then syncing, then offline. The write path runs down the first three. Stable.
pub fn order(chain: &mut Chain) {
    chain.replicas.sort_by_key(|r| match r.state {
        ReplicaState::Serving | ReplicaState::Leaving => 0,
        ReplicaState::Syncing | ReplicaState::SyncingHolder => 1,
        ReplicaState::Offline | ReplicaState::Stranded => 2,
    });
}

/// `after` is `before` (the same partition's chain in the map last published) once its
/// lost replicas were taken offline. If that left it with no replica in the write path
/// holding every acknowledged write (none serving, none leaving), the replicas that were
/// serving or leaving in `before` and are offline now become stranded: they hold every
/// write the chain acknowledged, and the chain comes back through one of them
/// (`revive_stranded`). Says whether it stranded any.
pub fn strand_last_holders(before: &Chain, after: &mut Chain) -> bool {
    let holds_all = ReplicaState::holds_every_ack;
    if after.replicas.iter().any(|r| holds_all(r.state)) {
        return false;
    }
    let mut stranded = false;
    for r in after.replicas.iter_mut() {
        let held = before
            .replicas
            .iter()
            .any(|b| b.shard == r.shard && holds_all(b.state));
        if held && r.state == ReplicaState::Offline {
            r.state = ReplicaState::Stranded;
            stranded = true;
        }
    }
    // In the order they had while serving, ahead of the plain offline ones, so that the
    // first to come back, all else equal, is the old head (heads stay spread as they were).
    let place_before = |shard: u16| before.replicas.iter().position(|b| b.shard == shard);
    after.replicas.sort_by_key(|r| match r.state {
        ReplicaState::Stranded => (1, place_before(r.shard)),
        s if s.takes_writes() => (0, None),
        _ => (2, None),
    });
    stranded
}

/// A chain with no serving replica comes back through one that holds every acknowledged
/// write and can answer again: a leaving replica or a syncing holder (both still in the
/// write path), else a stranded one whose node `alive` says is registered (its current
/// registration; it holds what it held, plus perhaps writes it took as head but never
/// passed on, which the others' resync from it settles). It becomes the chain's only
/// serving replica, at the front; the version grows. Once a chain has a serving replica,
/// its other stranded replicas on registered nodes become syncing holders (they too hold
/// every acknowledged write, and every write from now on passes them), the rest plain
/// offline (they rejoin as syncing with their nodes, holders no more: writes are
/// acknowledged without them meanwhile). Says whether the chain changed.
pub fn revive_stranded(chain: &mut Chain, shards: &[ShardAddr], alive: impl Fn(u32) -> bool) -> bool {
    let node_alive = |r: &Replica| shards.get(r.shard as usize).is_some_and(|s| alive(s.node));
    let serving = chain.replicas.iter().any(|r| r.state == ReplicaState::Serving);
    let mut changed = false;
    if !serving {
        let back = chain
            .replicas
            .iter()
            .position(|r| r.state == ReplicaState::Leaving)
            .or_else(|| {
                chain
                    .replicas
                    .iter()
                    .position(|r| r.state == ReplicaState::SyncingHolder)
            })
            .or_else(|| {
                chain
                    .replicas
                    .iter()
                    .position(|r| r.state == ReplicaState::Stranded && node_alive(r))
            });
        let Some(at) = back else {
            return false;
        };
        let mut replica = chain.replicas.remove(at);
        replica.state = ReplicaState::Serving;
        chain.replicas.insert(0, replica);
        changed = true;
    }
    for r in chain.replicas.iter_mut() {
        if r.state == ReplicaState::Stranded {
            r.state = match node_alive(r) {
                true => ReplicaState::SyncingHolder,
                false => ReplicaState::Offline,
            };
            changed = true;
        }
    }
    if changed {
        order(chain);
        chain.version += 1;
    }
    changed
}

/// A syncing replica (`shard`, an index into the map's shards) that has caught up with the
/// chain as it was at `chain_version` becomes serving, behind the serving replicas (the
/// chain's new tail); the chain version grows. Refused (false, nothing changed) if the
/// replica is not syncing in `chain`, or if the chain has changed since `chain_version`: a
/// catch-up reported against another shape of the chain proves nothing about this one.
pub fn promote_synced(chain: &mut Chain, shard: u16, chain_version: u64) -> bool {
    if chain.version != chain_version {
        return false;
    }
    let Some(at) = chain
        .replicas
        .iter()
        .position(|r| r.shard == shard && r.state.is_syncing())
    else {
        return false;
    };
    let mut replica = chain.replicas.remove(at);
    replica.state = ReplicaState::Serving;
    // Behind the serving and leaving replicas, where it was in the write path.
    let behind_serving = chain
        .replicas
        .iter()
        .take_while(|r| matches!(r.state, ReplicaState::Serving | ReplicaState::Leaving))
        .count();
    chain.replicas.insert(behind_serving, replica);
    chain.version += 1;
    true
}

/// A leaving replica (`shard`) that has reported adopting the chain as it is at
/// `chain_version` (so it answers no reads of it any more) leaves the chain; the chain
/// version grows. Refused (false, nothing changed) if the replica is not leaving in
/// `chain`, or if the chain has changed since: a report about another shape of the chain
/// proves nothing about this one.
pub fn drop_left(chain: &mut Chain, shard: u16, chain_version: u64) -> bool {
    if chain.version != chain_version {
        return false;
    }
    let Some(at) = chain
        .replicas
        .iter()
        .position(|r| r.shard == shard && r.state == ReplicaState::Leaving)
    else {
        return false;
    };
    chain.replicas.remove(at);
    chain.version += 1;
    true
}

/// Chains short of replicas, by partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainHealth {
    /// Fewer serving replicas than the replication factor, but at least one.
    pub degraded: Vec<u32>,
    /// No serving replica: the partition can be neither read nor written. Reported, never
    /// reassigned to an empty replica.
    pub unavailable: Vec<u32>,
}

pub fn health(chains: &[Chain], replication: usize) -> ChainHealth {
    let mut h = ChainHealth::default();
    for (p, c) in chains.iter().enumerate() {
        let serving = c
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Serving)
            .count();
        if serving == 0 {
            h.unavailable.push(p as u32);
        } else if serving < replication {
            h.degraded.push(p as u32);
        }
    }
    h
}

/// How many chains give each shard each position among their serving replicas:
/// `roles[shard][i]` counts chains where the shard is the i-th serving replica (0 = head;
/// the last index of a chain of that length is its tail).
pub fn positions_per_shard(chains: &[Chain], shard_count: usize, replication: usize) -> Vec<Vec<usize>> {
    let mut roles = vec![vec![0usize; replication.max(1)]; shard_count];
    for c in chains {
        let serving = c.replicas.iter().filter(|r| r.state == ReplicaState::Serving);
        for (i, r) in serving.enumerate() {
            if let Some(row) = roles.get_mut(r.shard as usize) {
                if let Some(n) = row.get_mut(i) {
                    *n += 1;
                }
            }
        }
    }
    roles
}

/// The map of a cluster that forms: `nodes` as (id, each shard's listener address), in any
/// order; shards listed by node id, then shard index; chains by `build_chains`; epoch 1.
pub fn form_map(
    nodes: &[(u32, Vec<String>)],
    partition_bits: u8,
    replication: usize,
) -> Result<ShardMap, PlanError> {
    let mut nodes = nodes.to_vec();
    nodes.sort_by_key(|(id, _)| *id);
    let shards: Vec<ShardAddr> = nodes
        .iter()
        .flat_map(|(id, addrs)| {
            addrs.iter().enumerate().map(|(s, addr)| ShardAddr {
                node: *id,
                shard: s as u32,
                addr: addr.clone(),
            })
        })
        .collect();
    let chains = build_chains(&shards, 1usize << partition_bits, replication)?;
    Ok(ShardMap::with_chains(1, partition_bits, shards, chains))
}

/// `map` with every replica on a node not in `alive` taken offline, and a newer epoch; None
/// if no chain changes.
pub fn without_lost_nodes(map: &ShardMap, alive: &std::collections::BTreeSet<u32>) -> Option<ShardMap> {
    let lost: std::collections::BTreeSet<u32> = map
        .shards
        .iter()
        .map(|s| s.node)
        .filter(|n| !alive.contains(n))
        .collect();
    let mut next = map.clone();
    let changed: usize = lost
        .iter()
        .map(|&n| take_node_offline(&mut next.chains, &map.shards, n))
        .sum();
    if changed == 0 {
        return None;
    }
    next.epoch += 1;
    next.refresh_heads();
    Some(next)
}

/// A replica's report that it caught up with a partition's chain: (partition, node,
/// shard of the node, chain version it caught up under).
pub type CaughtUpReport = (u32, u32, u32, u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returning_node_rejoins_as_syncing_and_serves_once_caught_up() {
        use ReplicaState::{Offline, Serving, Syncing};
        let shards = cluster(&[1, 1, 1]);
        let replica = |shard, state| Replica { shard, state };
        let mut chains = build_chains(&shards, 6, 3).unwrap();
        assert_eq!(take_node_offline(&mut chains, &shards, 11), 6);
        // One chain has lost its other replicas too: nothing to sync from.
        chains[5].replicas.iter_mut().for_each(|r| r.state = Offline);
        let before = chains.clone();

        assert_eq!(rejoin_as_syncing(&mut chains, &shards, 11), 5);
        for (c, b) in chains.iter().zip(&before).take(5) {
            assert_eq!(c.version, b.version + 1);
            let states: Vec<ReplicaState> = c.replicas.iter().map(|r| r.state).collect();
            assert_eq!(states, [Serving, Serving, Syncing], "behind the serving replicas");
            assert_eq!(c.replicas[2].shard, 1, "node 11's shard");
        }
        assert_eq!(chains[5], before[5], "an unavailable chain is left alone");
        assert_eq!(rejoin_as_syncing(&mut chains, &shards, 11), 0, "already rejoined");

        let mut chain = chains[0].clone();
        let v = chain.version;
        assert!(
            !promote_synced(&mut chain, 1, v - 1),
            "caught up with an older chain"
        );
        assert!(!promote_synced(&mut chain, 0, v), "not syncing");
        assert!(promote_synced(&mut chain, 1, v));
        assert_eq!(chain.version, v + 1);
        assert!(chain.replicas.iter().all(|r| r.state == Serving));
        assert_eq!(chain.replicas[2], replica(1, Serving), "the new tail");
        // Behind the serving replicas, ahead of another syncing one.
        let mut chain = Chain {
            version: 4,
            replicas: vec![replica(0, Serving), replica(1, Syncing), replica(2, Syncing)],
        };
        assert!(promote_synced(&mut chain, 2, 4));
        assert_eq!(
            chain.replicas,
            [replica(0, Serving), replica(2, Serving), replica(1, Syncing)]
        );
    }

    /// `per_node[i]` shards on node i (ids 10, 11, ...), each with its own address.
    fn cluster(per_node: &[u32]) -> Vec<ShardAddr> {
        per_node
            .iter()
            .enumerate()
            .flat_map(|(n, &count)| {
                (0..count).map(move |s| ShardAddr {
                    node: 10 + n as u32,
                    shard: s,
                    addr: format!("10.0.0.{n}:{}", 7400 + s),
                })
            })
            .collect()
    }

    fn assert_distinct_nodes(chains: &[Chain], shards: &[ShardAddr]) {
        for (p, c) in chains.iter().enumerate() {
            for (i, r) in c.replicas.iter().enumerate() {
                let node = shards[r.shard as usize].node;
                assert!(
                    c.replicas[..i]
                        .iter()
                        .all(|o| shards[o.shard as usize].node != node),
                    "partition {p}: two replicas on node {node}: {c:?}"
                );
            }
        }
    }

    /// Every count of every position is within `slack` of the mean of that position.
    fn assert_even(roles: &[Vec<usize>], slack: usize) {
        for pos in 0..roles[0].len() {
            let counts: Vec<usize> = roles.iter().map(|r| r[pos]).collect();
            let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(hi - lo <= slack, "position {pos}: counts {counts:?}");
        }
    }

    #[test]
    fn three_nodes_of_one_shard_take_every_role_equally() {
        let shards = cluster(&[1, 1, 1]);
        let chains = build_chains(&shards, 4096, 3).unwrap();
        assert!(chains.iter().all(|c| c.replicas.len() == 3 && c.version == 1));
        assert_distinct_nodes(&chains, &shards);
        assert_even(&positions_per_shard(&chains, 3, 3), 1);
        assert_eq!(health(&chains, 3), ChainHealth::default());
    }

    #[test]
    fn several_shards_per_node_spread_roles_over_shards_and_nodes() {
        for per_node in [&[2, 2, 2][..], &[2, 2, 2, 2, 2], &[4, 4, 4, 4]] {
            let shards = cluster(per_node);
            let chains = build_chains(&shards, 4096, 3).unwrap();
            assert_distinct_nodes(&chains, &shards);
            assert_even(&positions_per_shard(&chains, shards.len(), 3), 1);
        }
    }

    #[test]
    fn uneven_nodes_still_never_put_two_replicas_on_one_node() {
        let shards = cluster(&[3, 1, 1, 2]);
        let chains = build_chains(&shards, 1024, 3).unwrap();
        assert!(chains.iter().all(|c| c.replicas.len() == 3));
        assert_distinct_nodes(&chains, &shards);
    }

    #[test]
    fn fewer_nodes_than_the_replication_factor_give_degraded_chains_not_an_error() {
        let shards = cluster(&[2, 2]);
        let chains = build_chains(&shards, 64, 3).unwrap();
        assert!(chains.iter().all(|c| c.replicas.len() == 2));
        assert_distinct_nodes(&chains, &shards);
        let h = health(&chains, 3);
        assert_eq!(h.degraded.len(), 64);
        assert!(h.unavailable.is_empty());
        assert_eq!(build_chains(&[], 64, 3), Err(PlanError::NoShards));
        assert_eq!(build_chains(&shards, 64, 0), Err(PlanError::NoReplicas));
    }

    #[test]
    fn a_lost_node_leaves_its_chains_with_the_serving_ones_in_order_and_a_newer_version() {
        let shards = cluster(&[1, 1, 1]);
        let mut chains = build_chains(&shards, 96, 3).unwrap();
        let before = chains.clone();
        let lost = 11;
        assert_eq!(take_node_offline(&mut chains, &shards, lost), 96);
        for (b, a) in before.iter().zip(&chains) {
            assert_eq!(a.version, b.version + 1);
            let serving: Vec<u16> = a
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Serving)
                .map(|r| r.shard)
                .collect();
            let kept: Vec<u16> = b
                .replicas
                .iter()
                .filter(|r| shards[r.shard as usize].node != lost)
                .map(|r| r.shard)
                .collect();
            assert_eq!(serving, kept, "the survivors keep their order");
            let last = a.replicas.last().unwrap();
            assert_eq!(last.state, ReplicaState::Offline);
            assert_eq!(shards[last.shard as usize].node, lost);
        }
        assert_eq!(health(&chains, 3).degraded.len(), 96);
        // Losing it again changes nothing; losing the others makes every chain unavailable.
        assert_eq!(take_node_offline(&mut chains, &shards, lost), 0);
        take_node_offline(&mut chains, &shards, 10);
        take_node_offline(&mut chains, &shards, 12);
        let h = health(&chains, 3);
        assert_eq!(h.unavailable.len(), 96);
        assert!(h.degraded.is_empty());
    }

    #[test]
    fn a_node_holding_no_replica_changes_no_chain() {
        let shards = cluster(&[1, 1, 1, 1]);
        let mut chains = build_chains(&shards, 4, 1).unwrap();
        // With one replica each, partition p sits on node 10 + p.
        let before = chains.clone();
        chains.truncate(3);
        assert_eq!(take_node_offline(&mut chains, &shards, 13), 0);
        assert_eq!(&chains[..], &before[..3]);
    }
    #[test]
    fn a_formed_map_changes_only_when_a_node_in_it_is_lost() {
        let nodes: Vec<(u32, Vec<String>)> = [7u32, 3, 5]
            .iter()
            .map(|&id| (id, vec![format!("10.0.0.{id}:7400"), format!("10.0.0.{id}:7401")]))
            .collect();
        let map = form_map(&nodes, 6, 3).unwrap();
        assert_eq!((map.epoch, map.chains.len(), map.shards.len()), (1, 64, 6));
        // Shards listed by node id, then shard index.
        let order: Vec<(u32, u32)> = map.shards.iter().map(|s| (s.node, s.shard)).collect();
        assert_eq!(order, vec![(3, 0), (3, 1), (5, 0), (5, 1), (7, 0), (7, 1)]);
        let all = [3, 5, 7].into_iter().collect();
        assert!(without_lost_nodes(&map, &all).is_none());
        // An unknown node alive, or one more registered, changes nothing either.
        let more = [3, 5, 7, 9].into_iter().collect();
        assert!(without_lost_nodes(&map, &more).is_none());
        let next = without_lost_nodes(&map, &[3, 7].into_iter().collect()).unwrap();
        assert_eq!(next.epoch, 2);
        assert!(next.chains.iter().all(|c| c.version == 2));
        assert!((0..64).all(|p| next.owner(p).is_some_and(|o| o.node != 5)));
        assert!(without_lost_nodes(&next, &[3, 7].into_iter().collect()).is_none());
    }
}
