//! The acting coordinator's rules for a formed cluster (issue 20), with no etcd, executor
//! or socket: `next_map` takes the map and what etcd says of the nodes and returns the
//! next map. Every placement change (a node lost, back, restarted, new, drained, or gone
//! for good, and shards out of balance) is made by one mechanism: a replica is added to a
//! chain as syncing, made serving once it reports caught up, and only then is a replica it
//! replaces removed. A chain never has fewer serving replicas than before a change began.
//!
//! The rules are stateless (they look only at the map and the view), so a coordinator that
//! takes over from one that died mid-move resumes where the map says it is.

use std::collections::{BTreeMap, BTreeSet};

use crate::chain_plan::{
    drop_left, order, promote_synced, rejoin_as_syncing, revive_stranded, strand_last_holders,
    take_node_offline, CaughtUpReport,
};
use crate::index_split::{
    leading_tag, pick_partition, IndexSplit, SplitDone, SplitState, MAX_SPLITS, MAX_SPLIT_KEY_BYTES,
};
use crate::limits::MAX_REPLICAS;
use crate::partition::partition_of;
use crate::shard_map::{Chain, NodeIncarnation, Replica, ReplicaState, ShardAddr, ShardMap};

/// A registered node: its id, each shard's listener, and its registration (a new one
/// after every start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u32,
    pub shards: Vec<String>,
    pub incarnation: u64,
}

/// What etcd says of the cluster besides the map.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Registered nodes (their leases alive).
    pub members: Vec<Member>,
    /// Nodes an operator asked to drain: their replicas move elsewhere.
    pub draining: BTreeSet<u32>,
    /// Nodes down for longer than `cluster.down_out`: their replicas are rebuilt elsewhere.
    pub down_out: BTreeSet<u32>,
    pub caught_up: Vec<CaughtUpReport>,
    /// Chains whose loss an operator accepted (`hotshard cluster accept-loss`): partition
    /// and the chain version it was accepted at (a later version is another state of the
    /// chain, not the one the operator looked at).
    pub accepted_loss: Vec<(u32, u64)>,
    /// Splits asked for (issue 33): the first key of each range to split off.
    pub split_wanted: Vec<Vec<u8>>,
    /// Replicas that finished a split's copy for a state.
    pub split_done: Vec<SplitDone>,
}

/// The cluster's placement settings.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub replication: usize,
    /// Most replicas syncing onto one node at a time (its shards run a few passes at once
    /// each; this bounds how many chains wait on it).
    pub max_syncing_per_node: usize,
}

/// The next map (epoch + 1), or None if nothing changes. In order: nodes lost (replicas
/// offline); nodes restarted (offline, then back as syncing), new (shards added) or back
/// (syncing); caught-up replicas made serving; then `settle`.
pub fn next_map(map: &ShardMap, view: &ClusterView, policy: &Policy) -> Option<ShardMap> {
    let mut next = map.clone();
    let alive: BTreeSet<u32> = view.members.iter().map(|m| m.id).collect();
    let in_map: BTreeSet<u32> = next.shards.iter().map(|s| s.node).collect();
    for &n in in_map.difference(&alive) {
        take_node_offline(&mut next.chains, &next.shards, n);
    }
    for m in &view.members {
        match next.incarnations.iter_mut().find(|i| i.node == m.id) {
            Some(known) if known.incarnation != m.incarnation => {
                // Restarted since the map last saw it (it may have lost writes it held
                // but never passed on): its replicas sync before they serve again.
                take_node_offline(&mut next.chains, &next.shards, m.id);
                known.incarnation = m.incarnation;
            }
            Some(_) => {}
            None => next.incarnations.push(NodeIncarnation {
                node: m.id,
                incarnation: m.incarnation,
            }),
        }
        // A listener another registered node holds (a wiped node back on the addresses of
        // one whose registration still lives) is not given to this one: a request meant
        // for either would reach whichever process has the socket. It waits until the
        // other's lease is gone.
        let held_by_other = |addr: &String| {
            view.members.iter().any(|o| {
                o.id != m.id
                    && o.shards.contains(addr)
                    && (in_map.contains(&o.id) || (!in_map.contains(&m.id) && o.id < m.id))
            })
        };
        if in_map.contains(&m.id) {
            for s in next.shards.iter_mut().filter(|s| s.node == m.id) {
                if let Some(addr) = m.shards.get(s.shard as usize) {
                    if *addr != s.addr && !held_by_other(addr) {
                        s.addr = addr.clone();
                    }
                }
            }
        } else if m.shards.iter().any(held_by_other) {
            continue;
        } else if next.shards.len() + m.shards.len() <= u16::MAX as usize {
            // A new node: its shards join the map, empty; `settle` moves chains onto them.
            next.shards
                .extend(m.shards.iter().enumerate().map(|(s, addr)| ShardAddr {
                    node: m.id,
                    shard: s as u32,
                    addr: addr.clone(),
                }));
        }
    }
    // A chain that lost every replica holding all it acknowledged keeps a record of them
    // (stranded), and comes back through the first of them to return.
    for (before, after) in map.chains.iter().zip(next.chains.iter_mut()) {
        strand_last_holders(before, after);
        revive_stranded(after, &next.shards, |n| alive.contains(&n));
    }
    for m in &view.members {
        rejoin_as_syncing(&mut next.chains, &next.shards, m.id);
    }
    for &(partition, node, shard, chain_version) in &view.caught_up {
        let index = next
            .shards
            .iter()
            .position(|s| s.node == node && s.shard == shard);
        if let (Some(i), Some(chain)) = (index, next.chains.get_mut(partition as usize)) {
            // A syncing replica's report says it caught up; a leaving one's, that it has
            // adopted the map that made it leaving.
            if !promote_synced(chain, i as u16, chain_version) {
                drop_left(chain, i as u16, chain_version);
            }
        }
    }
    settle(&mut next, view, policy);
    advance_splits(&mut next, view);
    if next.chains == map.chains
        && next.shards == map.shards
        && next.incarnations == map.incarnations
        && next.splits == map.splits
    {
        return None;
    }
    next.epoch = map.epoch + 1;
    next.refresh_heads();
    Some(next)
}

/// Moves the split in progress on once every replica in its new chain's write path has
/// reported the copy of its state done (copying, then fenced, then moved), or, with none in
/// progress, starts the first split asked for that is well formed: its range goes to a
/// partition none of the tag's ranges use, whose chain is whole (every replica serving).
pub fn advance_splits(next: &mut ShardMap, view: &ClusterView) {
    let epoch = next.epoch + 1;
    if let Some(i) = next.splits.iter().position(|s| s.state != SplitState::Moved) {
        let s = &next.splits[i];
        let Some(chain) = next.chains.get(s.partition as usize) else {
            return;
        };
        let mut writers = chain
            .replicas
            .iter()
            .filter(|r| r.state.takes_writes())
            .peekable();
        if writers.peek().is_none() {
            return;
        }
        let all_done = writers.all(|r| {
            let Some(addr) = next.shards.get(r.shard as usize) else {
                return false;
            };
            view.split_done
                .iter()
                .any(|&(id, n, sh, st)| id == s.id && n == addr.node && sh == addr.shard && st == s.state)
        });
        if all_done {
            let s = &mut next.splits[i];
            s.state = match s.state {
                SplitState::Copying => SplitState::Fenced,
                _ => SplitState::Moved,
            };
        }
        return;
    }
    let bits = next.partition_bits;
    for from in &view.split_wanted {
        let Some(tag) = leading_tag(from) else { continue };
        if from.len() > MAX_SPLIT_KEY_BYTES
            || next.splits.len() >= MAX_SPLITS
            || next.splits.iter().any(|s| s.tag == tag && s.from == *from)
        {
            continue;
        }
        let used: BTreeSet<u32> = next
            .splits
            .iter()
            .filter(|s| s.tag == tag)
            .map(|s| s.partition)
            .chain([partition_of(tag, bits)])
            .collect();
        let whole = |p: u32| {
            next.chains.get(p as usize).is_some_and(|c| {
                !c.replicas.is_empty() && c.replicas.iter().all(|r| r.state == ReplicaState::Serving)
            })
        };
        let Some(partition) = pick_partition(tag, from, bits, |p| !used.contains(&p) && whole(p)) else {
            continue;
        };
        let split = IndexSplit {
            id: epoch,
            tag: tag.to_vec(),
            from: from.clone(),
            partition,
            state: SplitState::Copying,
        };
        let at = next
            .splits
            .partition_point(|s| (&s.tag, &s.from) < (&split.tag, &split.from));
        next.splits.insert(at, split);
        return;
    }
}

/// The shards' states as `settle` sees them.
struct Shards<'a> {
    shards: &'a [ShardAddr],
    view: &'a ClusterView,
    alive: BTreeSet<u32>,
    /// Serving and syncing replicas per shard.
    load: Vec<usize>,
    syncing_per_node: BTreeMap<u32, usize>,
}

impl Shards<'_> {
    fn node(&self, shard: u16) -> u32 {
        self.shards[shard as usize].node
    }

    /// May take replicas: alive and not draining.
    fn usable(&self, shard: u16) -> bool {
        let n = self.node(shard);
        self.alive.contains(&n) && !self.view.draining.contains(&n)
    }

    /// Counts towards the chain's replication: serving or syncing on a usable shard, or
    /// offline on a node that may come back (not down for good, not draining).
    fn counts(&self, r: &Replica) -> bool {
        let n = self.node(r.shard);
        match r.state {
            ReplicaState::Serving | ReplicaState::Syncing | ReplicaState::SyncingHolder => {
                self.usable(r.shard)
            }
            ReplicaState::Offline | ReplicaState::Stranded => {
                !self.view.down_out.contains(&n) && !self.view.draining.contains(&n)
            }
            // On its way out: its place is being taken.
            ReplicaState::Leaving => false,
        }
    }

    /// A usable shard, not on a node of `chain`, whose node may take one more syncing
    /// replica, with the least load.
    fn least_loaded_for(&self, chain: &Chain, policy: &Policy) -> Option<u16> {
        let in_chain: BTreeSet<u32> = chain.replicas.iter().map(|r| self.node(r.shard)).collect();
        (0..self.shards.len() as u16)
            .filter(|&i| self.usable(i) && !in_chain.contains(&self.node(i)))
            .filter(|&i| {
                self.syncing_per_node.get(&self.node(i)).copied().unwrap_or(0) < policy.max_syncing_per_node
            })
            .min_by_key(|&i| (self.load[i as usize], i))
    }

    fn add_syncing(&mut self, chain: &mut Chain, shard: u16) {
        chain.replicas.push(Replica {
            shard,
            state: ReplicaState::Syncing,
        });
        order(chain);
        chain.version += 1;
        self.load[shard as usize] += 1;
        *self.syncing_per_node.entry(self.node(shard)).or_default() += 1;
    }
}

fn serving(chain: &Chain) -> usize {
    chain
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Serving)
        .count()
}

/// Trims, fills and balances the chains of `map`:
/// - trim: a chain with more serving replicas than the replication factor (a move or a
///   rebuild done) loses one: on a draining node first, else on the most loaded shard
///   other than the head. It leaves in two steps: it becomes leaving (still in the write
///   path, no longer a reader) and is dropped once it reports adopting that (`next_map`),
///   so that a node that has not yet taken the new map, and still reads from it, reads a
///   replica that every write still reaches. A draining head leaves the same way: in
///   place, at the front, it stays the chain's head for writes (`ShardMap::owner`) and
///   answers no reads, and the next replica becomes the head once it is dropped (it was a
///   stale reader for as long as its node lagged, when it was dropped in one step: the
///   model check, `tests/model_check.rs`, found it). A chain with
///   enough serving replicas drops its offline replicas of nodes down for good, and
///   syncing replicas on draining nodes go;
/// - fill: a chain with fewer replicas than the factor that may come back (a node down
///   for good, a drained one, or a cluster that grew to enough nodes) gets a syncing
///   replica on the least loaded usable shard of a node not in it;
/// - balance: while the most and least loaded usable shards are more than 5 % (and more
///   than one replica) from even, a chain on the most loaded gets a syncing replica on
///   the least loaded (the trim removes the other once it serves).
fn settle(map: &mut ShardMap, view: &ClusterView, policy: &Policy) {
    let rf = policy.replication.max(1);
    let mut load = vec![0usize; map.shards.len()];
    let mut syncing_per_node: BTreeMap<u32, usize> = BTreeMap::new();
    for c in &map.chains {
        for r in c.replicas.iter().filter(|r| !r.state.is_offline()) {
            load[r.shard as usize] += 1;
            if r.state.is_syncing() {
                *syncing_per_node
                    .entry(map.shards[r.shard as usize].node)
                    .or_default() += 1;
            }
        }
    }
    let alive = view.members.iter().map(|m| m.id).collect();
    let mut s = Shards {
        shards: &map.shards,
        view,
        alive,
        load,
        syncing_per_node,
    };
    for chain in map.chains.iter_mut() {
        while serving(chain) > rf {
            // The head (the first serving replica) only when it is on a node that must go.
            let leaving = chain
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.state == ReplicaState::Serving)
                .filter(|&(i, r)| i > 0 || !s.usable(r.shard))
                .max_by_key(|&(i, r)| (!s.usable(r.shard), i > 0, s.load[r.shard as usize], i))
                .map(|(i, _)| i);
            let Some(i) = leaving else { break };
            chain.replicas[i].state = ReplicaState::Leaving;
            order(chain);
            chain.version += 1;
        }
        let before = chain.replicas.len();
        let enough = serving(chain) >= rf;
        chain.replicas.retain(|r| {
            let n = s.node(r.shard);
            let gone_for_good = r.state == ReplicaState::Offline
                && (view.down_out.contains(&n) || view.draining.contains(&n));
            let syncing_away = r.state.is_syncing() && view.draining.contains(&n);
            !((enough && gone_for_good) || syncing_away)
        });
        if chain.replicas.len() != before {
            chain.version += 1;
        }
    }
    for &(p, version) in &view.accepted_loss {
        if let Some(chain) = map.chains.get_mut(p as usize) {
            if chain.version == version && serving(chain) == 0 {
                serve_what_is_left(chain, &mut s, policy);
            }
        }
    }
    for chain in map.chains.iter_mut() {
        let present = chain.replicas.iter().filter(|r| s.counts(r)).count();
        if present >= rf || serving(chain) == 0 || chain.replicas.len() >= MAX_REPLICAS {
            continue;
        }
        if let Some(to) = s.least_loaded_for(chain, policy) {
            s.add_syncing(chain, to);
        }
    }
    balance(&mut map.chains, &mut s, policy);
}

/// An accepted loss: a chain with no serving replica and none that holds every write it
/// acknowledged serves again from the replica that holds the most of what is left (a
/// syncing one on a usable shard: it took every write since it joined; else an offline or
/// stranded one whose node is back), or, with none, from an empty replica on the least
/// loaded usable shard. The others resync from it (what only they held is given up).
fn serve_what_is_left(chain: &mut Chain, s: &mut Shards<'_>, policy: &Policy) {
    let rank = |st: ReplicaState| match st {
        ReplicaState::Syncing | ReplicaState::SyncingHolder => 0,
        _ => 1,
    };
    let best = chain
        .replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| s.usable(r.shard))
        .min_by_key(|&(i, r)| (rank(r.state), i))
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let mut r = chain.replicas.remove(i);
            if r.state.is_offline() {
                s.load[r.shard as usize] += 1;
            }
            r.state = ReplicaState::Serving;
            chain.replicas.insert(0, r);
        }
        None => {
            let Some(to) = s.least_loaded_for(chain, policy) else {
                return;
            };
            chain.replicas.insert(
                0,
                Replica {
                    shard: to,
                    state: ReplicaState::Serving,
                },
            );
            s.load[to as usize] += 1;
        }
    }
    for r in chain
        .replicas
        .iter_mut()
        .filter(|r| r.state == ReplicaState::Stranded)
    {
        r.state = ReplicaState::Offline;
    }
    order(chain);
    chain.version += 1;
}

/// The balance step of `settle`.
fn balance(chains: &mut [Chain], s: &mut Shards<'_>, policy: &Policy) {
    let usable: Vec<u16> = (0..s.shards.len() as u16).filter(|&i| s.usable(i)).collect();
    if usable.len() < 2 {
        return;
    }
    // Replicas already on their way off a shard (moves not yet trimmed), so that one
    // shard is not picked again and again.
    let mut leaving = vec![0usize; s.shards.len()];
    for c in chains.iter() {
        for r in c.replicas.iter().filter(|r| r.state == ReplicaState::Leaving) {
            leaving[r.shard as usize] += 1;
        }
        if c.replicas.iter().any(|r| r.state.is_syncing()) {
            if let Some(top) = c
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Serving)
                .max_by_key(|r| s.load[r.shard as usize])
            {
                leaving[top.shard as usize] += 1;
            }
        }
    }
    loop {
        let effective = |i: u16| s.load[i as usize] - leaving[i as usize].min(s.load[i as usize]);
        let total: usize = usable.iter().map(|&i| effective(i)).sum();
        let mean = total as f64 / usable.len() as f64;
        let slack = (0.05 * mean).max(1.0);
        let (Some(&most), Some(&least)) = (
            usable.iter().max_by_key(|&&i| (effective(i), i)),
            usable.iter().min_by_key(|&&i| (effective(i), i)),
        ) else {
            return;
        };
        let (hi, lo) = (effective(most), effective(least));
        if hi <= lo + 1 || (hi as f64 <= mean + slack && lo as f64 >= mean - slack) {
            return;
        }
        // A move goes from a shard to one on another node. The most and the least loaded
        // shards may share a node (two shards a node): then the least loaded takes from the
        // most loaded shard of the other nodes, or the most loaded gives to the least
        // loaded shard of the other nodes. (Moving only from the most to the least loaded
        // stopped for good when they shared a node: seen as a join that never balanced.)
        let other_node = |of: u16, pick_max: bool| {
            let candidates = usable.iter().copied().filter(|&i| s.node(i) != s.node(of));
            if pick_max {
                candidates.max_by_key(|&i| (effective(i), i))
            } else {
                candidates.min_by_key(|&i| (effective(i), i))
            }
        };
        let pairs = [
            (Some(most), Some(least)),
            (other_node(least, true), Some(least)),
            (Some(most), other_node(most, false)),
        ];
        let mut moved = false;
        for (from, to) in pairs {
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            if s.node(from) == s.node(to) || effective(from) <= effective(to) + 1 {
                continue;
            }
            let to_node = s.node(to);
            if s.syncing_per_node.get(&to_node).copied().unwrap_or(0) >= policy.max_syncing_per_node {
                continue;
            }
            let chain = chains.iter_mut().find(|c| {
                c.replicas.len() < MAX_REPLICAS
                    && c.replicas.iter().all(|r| r.state == ReplicaState::Serving)
                    // Not as the head: the trim takes a replica off `from` only where it is
                    // not the head.
                    && c.replicas.iter().skip(1).any(|r| r.shard == from)
                    && c.replicas.iter().all(|r| s.node(r.shard) != to_node)
            });
            if let Some(chain) = chain {
                s.add_syncing(chain, to);
                leaving[from as usize] += 1;
                moved = true;
                break;
            }
        }
        if !moved {
            return;
        }
    }
}

/// Replicas (serving or syncing) per shard of `map`.
pub fn replicas_per_shard(map: &ShardMap) -> Vec<usize> {
    let mut load = vec![0usize; map.shards.len()];
    for c in &map.chains {
        for r in c.replicas.iter().filter(|r| r.state != ReplicaState::Offline) {
            if let Some(l) = load.get_mut(r.shard as usize) {
                *l += 1;
            }
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain_plan::form_map;

    fn member(id: u32, shards: usize) -> Member {
        Member {
            id,
            shards: (0..shards).map(|s| format!("10.0.0.{id}:{}", 7400 + s)).collect(),
            incarnation: 1,
        }
    }

    fn formed(nodes: &[Member], bits: u8) -> ShardMap {
        let list: Vec<(u32, Vec<String>)> = nodes.iter().map(|m| (m.id, m.shards.clone())).collect();
        let mut map = form_map(&list, bits, 3).unwrap();
        map.incarnations = nodes
            .iter()
            .map(|m| NodeIncarnation {
                node: m.id,
                incarnation: m.incarnation,
            })
            .collect();
        map
    }

    const POLICY: Policy = Policy {
        replication: 3,
        max_syncing_per_node: 8,
    };

    /// Applies `next_map` until nothing changes, every syncing replica reporting caught up
    /// under its chain's version at each step (as the shards do). Returns the steps taken.
    fn settle_fully(map: &mut ShardMap, view: &mut ClusterView) -> usize {
        for step in 0..1000 {
            view.caught_up = Vec::new();
            for (p, c) in map.chains.iter().enumerate() {
                // Syncing replicas catch up; leaving ones adopt the map that made them so.
                for r in c
                    .replicas
                    .iter()
                    .filter(|r| r.state.is_syncing() || r.state == ReplicaState::Leaving)
                {
                    let s = &map.shards[r.shard as usize];
                    view.caught_up.push((p as u32, s.node, s.shard, c.version));
                }
            }
            match next_map(map, view, &POLICY) {
                Some(next) => {
                    assert_eq!(next.epoch, map.epoch + 1);
                    check_invariants(map, &next, view);
                    *map = next;
                }
                None => return step,
            }
        }
        panic!("no fixpoint after 1000 steps");
    }

    /// No chain has two replicas on one node; chains fit the limit; a changed chain has a
    /// newer version; and a serving replica on a live node never leaves the write path in
    /// one step (it becomes leaving first), the head of a draining node's chain included.
    fn check_invariants(before: &ShardMap, after: &ShardMap, view: &ClusterView) {
        let alive: BTreeSet<u32> = view.members.iter().map(|m| m.id).collect();
        for (b, a) in before.chains.iter().zip(&after.chains) {
            let in_write_path = |c: &Chain, shard: u16| {
                c.replicas
                    .iter()
                    .any(|r| r.shard == shard && r.state.takes_writes())
            };
            // Only a replica that holds every acknowledged write starts to serve: one that
            // served, was leaving or stranded, or one syncing that reported catching up.
            for r in a.replicas.iter().filter(|r| r.state == ReplicaState::Serving) {
                let was = b.replicas.iter().find(|x| x.shard == r.shard).map(|x| x.state);
                let holds = match was {
                    Some(
                        ReplicaState::Serving
                        | ReplicaState::Leaving
                        | ReplicaState::Stranded
                        | ReplicaState::SyncingHolder,
                    ) => true,
                    Some(ReplicaState::Syncing) => view.caught_up.iter().any(|&(p, n, sh, v)| {
                        let s = &after.shards[r.shard as usize];
                        before.chains.get(p as usize) == Some(b) && (n, sh, v) == (s.node, s.shard, b.version)
                    }),
                    Some(ReplicaState::Offline) | None => false,
                };
                let accepted = view
                    .accepted_loss
                    .iter()
                    .any(|&(p, v)| v == b.version && before.chains.get(p as usize) == Some(b));
                assert!(
                    holds || accepted,
                    "serving from a replica that may lack writes: {b:?} -> {a:?}"
                );
            }
            for r in &b.replicas {
                let node = before.shards[r.shard as usize].node;
                if r.state == ReplicaState::Serving && alive.contains(&node) {
                    assert!(
                        in_write_path(a, r.shard),
                        "a serving replica on live node {node} left the write path in one step: {b:?} -> {a:?}"
                    );
                }
            }
            assert!(a.replicas.len() <= MAX_REPLICAS, "{a:?}");
            let nodes: BTreeSet<u32> = a
                .replicas
                .iter()
                .map(|r| after.shards[r.shard as usize].node)
                .collect();
            assert_eq!(nodes.len(), a.replicas.len(), "two replicas on one node: {a:?}");
            if a != b {
                assert!(
                    a.version > b.version,
                    "a changed chain keeps its version: {b:?} -> {a:?}"
                );
            }
        }
    }

    fn assert_whole_and_even(map: &ShardMap, away: &[u32]) {
        for c in &map.chains {
            assert_eq!(serving(c), 3, "{c:?}");
            assert_eq!(c.replicas.len(), 3, "{c:?}");
            for r in &c.replicas {
                assert!(!away.contains(&map.shards[r.shard as usize].node), "{c:?}");
            }
        }
        let load = replicas_per_shard(map);
        let usable: Vec<usize> = map
            .shards
            .iter()
            .zip(&load)
            .filter(|(s, _)| !away.contains(&s.node))
            .map(|(_, &l)| l)
            .collect();
        let mean = usable.iter().sum::<usize>() as f64 / usable.len() as f64;
        for &l in &usable {
            assert!(
                (l as f64 - mean).abs() <= (0.05 * mean).max(1.0),
                "loads {usable:?}"
            );
        }
    }

    #[test]
    fn a_split_copies_then_fences_then_moves_once_every_writer_reports() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        let mut map = formed(&nodes, 6);
        let mut view = ClusterView {
            members: nodes.clone(),
            split_wanted: vec![b"{b}/m".to_vec(), b"x{b}".to_vec()],
            ..Default::default()
        };
        let step = |map: &mut ShardMap, view: &ClusterView| {
            if let Some(next) = next_map(
                map,
                view,
                &Policy {
                    replication: 3,
                    max_syncing_per_node: 4,
                },
            ) {
                *map = next;
            }
        };
        step(&mut map, &view);
        assert_eq!(map.splits.len(), 1, "only the key that begins with its tag");
        let s = map.splits[0].clone();
        assert_eq!(
            (s.state, s.id, &s.from[..]),
            (SplitState::Copying, map.epoch, &b"{b}/m"[..])
        );
        assert_ne!(s.partition, partition_of(b"b", 6));
        // Nothing routes to the new partition until it has moved.
        assert_eq!(map.partition(b"{b}/z"), partition_of(b"b", 6));
        // Asked again, the same split is not started twice; reports of two of the three
        // writers do not move it.
        let writers: Vec<(u32, u32)> = map.chains[s.partition as usize]
            .replicas
            .iter()
            .map(|r| {
                (
                    map.shards[r.shard as usize].node,
                    map.shards[r.shard as usize].shard,
                )
            })
            .collect();
        assert_eq!(writers.len(), 3);
        let report = |view: &mut ClusterView, n: usize, st| {
            view.split_done = writers[..n]
                .iter()
                .map(|&(node, shard)| (s.id, node, shard, st))
                .collect();
        };
        report(&mut view, 2, SplitState::Copying);
        step(&mut map, &view);
        assert_eq!(map.splits[0].state, SplitState::Copying);
        // A report for another state, or another split, does not count.
        view.split_done = writers
            .iter()
            .map(|&(n, sh)| (s.id + 1, n, sh, SplitState::Copying))
            .collect();
        step(&mut map, &view);
        assert_eq!(map.splits[0].state, SplitState::Copying);
        report(&mut view, 3, SplitState::Copying);
        step(&mut map, &view);
        assert_eq!(map.splits[0].state, SplitState::Fenced);
        assert!(map.write_fenced(b"{b}/m"));
        assert!(map.write_fenced(b"{b}/zz"));
        assert!(!map.write_fenced(b"{b}/a"));
        step(&mut map, &view);
        assert_eq!(
            map.splits[0].state,
            SplitState::Fenced,
            "the copying reports are not fenced ones"
        );
        report(&mut view, 3, SplitState::Fenced);
        step(&mut map, &view);
        assert_eq!(map.splits[0].state, SplitState::Moved);
        assert_eq!(map.partition(b"{b}/z"), s.partition);
        assert_eq!(map.partition(b"{b}/l"), partition_of(b"b", 6));
        assert!(!map.write_fenced(b"{b}/z"));
        let back = ShardMap::from_bytes(&map.to_bytes().unwrap()).unwrap();
        assert_eq!(back, map);
        // A second split of the moved range avoids both partitions the tag uses.
        view.split_wanted = vec![b"{b}/t".to_vec()];
        step(&mut map, &view);
        assert_eq!(map.splits.len(), 2);
        let t = &map.splits[1];
        assert!(t.partition != s.partition && t.partition != partition_of(b"b", 6));
    }

    #[test]
    fn a_fourth_node_joins_and_takes_its_share_moving_little() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 2)).collect();
        let mut map = formed(&nodes, 8);
        let mut view = ClusterView {
            members: nodes.clone(),
            ..Default::default()
        };
        assert_eq!(
            settle_fully(&mut map, &mut view),
            0,
            "a formed cluster is settled"
        );
        let before = map.clone();
        view.members.push(member(4, 2));
        settle_fully(&mut map, &mut view);
        assert_eq!(map.shards.len(), 8);
        assert_whole_and_even(&map, &[]);
        // Moved: about a quarter of the replicas (the new node's share), not more.
        let moved: usize = before
            .chains
            .iter()
            .zip(&map.chains)
            .map(|(b, a)| {
                a.replicas
                    .iter()
                    .filter(|r| !b.replicas.iter().any(|o| o.shard == r.shard))
                    .count()
            })
            .sum();
        let share = 256 * 3 / 4;
        assert!(
            moved >= share - 8 && moved <= share + 8,
            "moved {moved}, share {share}"
        );
    }

    #[test]
    fn a_node_down_for_good_is_rebuilt_elsewhere_and_a_drained_one_emptied() {
        let nodes: Vec<Member> = (1..=5).map(|id| member(id, 1)).collect();
        let mut map = formed(&nodes, 6);
        let mut view = ClusterView {
            members: nodes.clone(),
            ..Default::default()
        };
        // Node 5 dies: its replicas go offline, and nothing is rebuilt yet.
        view.members.retain(|m| m.id != 5);
        settle_fully(&mut map, &mut view);
        let offline = map
            .chains
            .iter()
            .flat_map(|c| &c.replicas)
            .filter(|r| r.state == ReplicaState::Offline)
            .count();
        assert!(offline > 0);
        assert!(map
            .chains
            .iter()
            .all(|c| c.replicas.iter().all(|r| r.state != ReplicaState::Syncing)));
        // Down for good: rebuilt on the other four, evenly.
        view.down_out.insert(5);
        settle_fully(&mut map, &mut view);
        assert_whole_and_even(&map, &[5]);
        // Node 2 drained: emptied, the rest even.
        view.draining.insert(2);
        settle_fully(&mut map, &mut view);
        assert_whole_and_even(&map, &[2, 5]);
        // Undrained: it takes its share again.
        view.draining.clear();
        settle_fully(&mut map, &mut view);
        assert_whole_and_even(&map, &[5]);
    }

    #[test]
    fn a_restarted_node_syncs_before_serving_and_a_returning_one_too() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        let map = formed(&nodes, 4);
        let mut view = ClusterView {
            members: nodes.clone(),
            ..Default::default()
        };
        view.members[1].incarnation = 2;
        let next = next_map(&map, &view, &POLICY).unwrap();
        for c in &next.chains {
            let r = c
                .replicas
                .iter()
                .find(|r| next.shards[r.shard as usize].node == 2)
                .unwrap();
            assert_eq!(r.state, ReplicaState::Syncing, "{c:?}");
            assert_eq!(c.replicas.last(), Some(r));
        }
        assert_eq!(next.incarnation(2), Some(2));
        assert!(next_map(&next, &view, &POLICY).is_none(), "until it reports");
        // Reports: one under an older chain version, one from an unknown node, one good;
        // and the node's listener moved.
        let v0 = next.chains[0].version;
        view.caught_up = vec![(0, 2, 0, v0 - 1), (1, 9, 0, 1), (0, 2, 0, v0)];
        view.members[1].shards[0] = "10.0.0.2:7500".into();
        let served = next_map(&next, &view, &POLICY).unwrap();
        assert_eq!(served.shards[1].addr, "10.0.0.2:7500");
        assert!(served.chains[0]
            .replicas
            .iter()
            .all(|r| r.state == ReplicaState::Serving));
        assert_eq!(served.chains[0].version, v0 + 1);
        assert_eq!(served.chains[1], next.chains[1], "no report for it");
        assert!(
            next_map(&served, &view, &POLICY).is_none(),
            "reports are not applied twice"
        );
    }

    /// The node ids holding a replica of `c` in `state`.
    fn nodes_in(map: &ShardMap, c: &Chain, state: ReplicaState) -> Vec<u32> {
        c.replicas
            .iter()
            .filter(|r| r.state == state)
            .map(|r| map.shards[r.shard as usize].node)
            .collect()
    }

    /// One step of `next_map` that must change the map, checked.
    fn step(map: &mut ShardMap, view: &ClusterView) {
        let next = next_map(map, view, &POLICY).expect("a change");
        check_invariants(map, &next, view);
        *map = next;
    }

    #[test]
    fn a_chain_whose_nodes_all_went_down_one_by_one_comes_back_through_the_last_to_serve() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        let mut map = formed(&nodes, 4);
        let mut view = ClusterView {
            members: nodes.clone(),
            ..Default::default()
        };
        // Nodes 1, 2, 3 lost, one map change each: the chains' last serving replica is on 3.
        for lost in 1..=3 {
            view.members.retain(|m| m.id != lost);
            step(&mut map, &view);
        }
        for c in &map.chains {
            assert_eq!(nodes_in(&map, c, ReplicaState::Stranded), vec![3], "{c:?}");
            assert_eq!(serving(c), 0);
        }
        // 1 and 2 return (new registrations): they lack writes acknowledged after they
        // left, so nothing serves yet.
        for back in 1..=2 {
            view.members.push(Member {
                incarnation: 2,
                ..member(back, 1)
            });
            step(&mut map, &view);
            for c in &map.chains {
                assert_eq!(serving(c), 0, "served without the last holder: {c:?}");
            }
        }
        assert!(next_map(&map, &view, &POLICY).is_none(), "it waits for node 3");
        // 3 returns: it serves every chain again at once, the others resync from it.
        view.members.push(Member {
            incarnation: 2,
            ..member(3, 1)
        });
        step(&mut map, &view);
        for c in &map.chains {
            assert_eq!(nodes_in(&map, c, ReplicaState::Serving), vec![3], "{c:?}");
            assert_eq!(nodes_in(&map, c, ReplicaState::Syncing).len(), 2, "{c:?}");
        }
        settle_fully(&mut map, &mut view);
        assert_whole_and_even(&map, &[]);
    }

    /// The whole cluster restarts (every lease lost at once) and every node is back by the
    /// next look: the chains come back through one holder, the others rejoin as syncing
    /// holders. That one's disk is then lost for good before they catch up: the chains
    /// serve again through a syncing holder, with no operator's acceptance of a loss
    /// (they stayed unavailable until `accept-loss` before; the soak found it). A holder
    /// back only after the chains came back holds no such claim.
    #[test]
    fn a_holder_lost_while_the_others_catch_up_after_a_whole_cluster_restart_leaves_no_chain_unavailable() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        let mut map = formed(&nodes, 4);
        let mut view = ClusterView::default();
        step(&mut map, &view);
        view.members = (1..=3)
            .map(|id| Member {
                incarnation: 2,
                ..member(id, 1)
            })
            .collect();
        step(&mut map, &view);
        for c in &map.chains {
            assert_eq!(serving(c), 1, "{c:?}");
        }
        // Each chain's serving replica's node is lost for good (not one node: heads are
        // spread, so lose them all one after the other, checking each step).
        let lost = nodes_in(&map, &map.chains[0], ReplicaState::Serving)[0];
        view.members.retain(|m| m.id != lost);
        step(&mut map, &view);
        for c in &map.chains {
            assert_eq!(serving(c), 1, "a chain waits for the lost node: {c:?}");
            assert!(!nodes_in(&map, c, ReplicaState::Serving).contains(&lost));
        }
        assert!(crate::health(&map.chains, 1).unavailable.is_empty());

        // A holder back late: node 3 is not registered when the chains come back.
        let mut map = formed(&nodes, 4);
        let mut view = ClusterView::default();
        step(&mut map, &view);
        view.members = (1..=2)
            .map(|id| Member {
                incarnation: 2,
                ..member(id, 1)
            })
            .collect();
        step(&mut map, &view);
        view.members.push(Member {
            incarnation: 2,
            ..member(3, 1)
        });
        step(&mut map, &view);
        for c in &map.chains {
            assert_eq!(nodes_in(&map, c, ReplicaState::Syncing), vec![3], "{c:?}");
        }
    }

    #[test]
    fn a_whole_cluster_lost_at_once_comes_back_through_whichever_holder_returns_first() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        for first in 1..=3u32 {
            let mut map = formed(&nodes, 4);
            let mut view = ClusterView::default();
            step(&mut map, &view);
            for c in &map.chains {
                assert_eq!(nodes_in(&map, c, ReplicaState::Stranded).len(), 3, "{c:?}");
            }
            view.members.push(Member {
                incarnation: 2,
                ..member(first, 1)
            });
            step(&mut map, &view);
            for c in &map.chains {
                assert_eq!(nodes_in(&map, c, ReplicaState::Serving), vec![first], "{c:?}");
                assert!(nodes_in(&map, c, ReplicaState::Stranded).is_empty(), "{c:?}");
            }
            for id in (1..=3).filter(|&id| id != first) {
                view.members.push(Member {
                    incarnation: 2,
                    ..member(id, 1)
                });
            }
            settle_fully(&mut map, &mut view);
            assert_whole_and_even(&map, &[]);
        }
    }

    #[test]
    fn a_cluster_whose_nodes_all_restart_between_two_looks_and_a_single_node_one_serve_again() {
        // Every node re-registered before the coordinator looked (an etcd outage longer
        // than the lease, or a fast restart of everything): each chain serves again from
        // its old head, the others resync.
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        let mut map = formed(&nodes, 4);
        let heads: Vec<u32> = map
            .chains
            .iter()
            .map(|c| nodes_in(&map, c, ReplicaState::Serving)[0])
            .collect();
        let mut view = ClusterView {
            members: nodes
                .iter()
                .map(|m| Member {
                    incarnation: 2,
                    ..m.clone()
                })
                .collect(),
            ..Default::default()
        };
        step(&mut map, &view);
        for (c, head) in map.chains.iter().zip(heads) {
            assert_eq!(nodes_in(&map, c, ReplicaState::Serving), vec![head], "{c:?}");
        }
        settle_fully(&mut map, &mut view);
        assert_whole_and_even(&map, &[]);

        let one = [member(1, 2)];
        let list: Vec<(u32, Vec<String>)> = one.iter().map(|m| (m.id, m.shards.clone())).collect();
        let mut map = form_map(&list, 4, 1).unwrap();
        map.incarnations = vec![NodeIncarnation {
            node: 1,
            incarnation: 1,
        }];
        let policy = Policy {
            replication: 1,
            ..POLICY
        };
        let restarted = ClusterView {
            members: vec![Member {
                incarnation: 2,
                ..member(1, 2)
            }],
            ..Default::default()
        };
        let next = next_map(&map, &restarted, &policy).unwrap();
        assert!(
            next.chains.iter().all(|c| serving(c) == 1),
            "{:?}",
            next.chains[0]
        );
        assert_eq!(next.incarnation(1), Some(2));
        assert!(next
            .chains
            .iter()
            .zip(&map.chains)
            .all(|(a, b)| a.version > b.version));
        assert!(next_map(&next, &restarted, &policy).is_none());
    }

    #[test]
    fn a_leaving_replica_left_alone_in_the_write_path_serves_again() {
        let nodes: Vec<Member> = (1..=2).map(|id| member(id, 1)).collect();
        let list: Vec<(u32, Vec<String>)> = nodes.iter().map(|m| (m.id, m.shards.clone())).collect();
        let mut map = form_map(&list, 2, 1).unwrap();
        // Partition 0: node 1 serving, node 2 leaving (a move not yet confirmed).
        map.chains[0].replicas = vec![
            Replica {
                shard: 0,
                state: ReplicaState::Serving,
            },
            Replica {
                shard: 1,
                state: ReplicaState::Leaving,
            },
        ];
        let view = ClusterView {
            members: vec![member(2, 1)],
            ..Default::default()
        };
        let policy = Policy {
            replication: 1,
            ..POLICY
        };
        let next = next_map(&map, &view, &policy).unwrap();
        check_invariants(&map, &next, &view);
        assert_eq!(nodes_in(&next, &next.chains[0], ReplicaState::Serving), vec![2]);
    }

    #[test]
    fn a_lost_chain_serves_again_only_once_its_loss_is_accepted_at_its_version() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        let mut map = formed(&nodes, 2);
        let mut view = ClusterView {
            members: nodes.clone(),
            ..Default::default()
        };
        // Nodes 1, 2, 3 lost in turn; 3 (every chain's last holder) is down for good, the
        // others come back.
        for lost in 1..=3 {
            view.members.retain(|m| m.id != lost);
            step(&mut map, &view);
        }
        view.down_out.insert(3);
        for back in 1..=2 {
            view.members.push(Member {
                incarnation: 2,
                ..member(back, 1)
            });
        }
        step(&mut map, &view);
        assert!(next_map(&map, &view, &POLICY).is_none(), "nothing invented");
        assert!(map.chains.iter().all(|c| serving(c) == 0));
        // Accepted at an older version of partition 0: ignored. At the current one of
        // partition 1: it serves from a replica on node 1 or 2; the others stay lost.
        view.accepted_loss = vec![(0, map.chains[0].version - 1), (1, map.chains[1].version)];
        step(&mut map, &view);
        assert_eq!(serving(&map.chains[0]), 0);
        assert_eq!(serving(&map.chains[1]), 1);
        assert!(nodes_in(&map, &map.chains[1], ReplicaState::Stranded).is_empty());
        assert!(!nodes_in(&map, &map.chains[1], ReplicaState::Serving).contains(&3));
        assert!(next_map(&map, &view, &POLICY).is_some_and(|n| serving(&n.chains[0]) == 0));
        // With no replica on a node that is back, an empty one serves.
        let mut alone = map.clone();
        alone.chains[2]
            .replicas
            .retain(|r| map.shards[r.shard as usize].node == 3);
        alone.chains[2].version += 1;
        let view2 = ClusterView {
            accepted_loss: vec![(2, alone.chains[2].version)],
            ..view.clone()
        };
        let next = next_map(&alone, &view2, &POLICY).unwrap();
        check_invariants(&alone, &next, &view2);
        assert_eq!(serving(&next.chains[2]), 1, "{:?}", next.chains[2]);
    }

    #[test]
    fn a_node_on_listeners_another_registered_node_holds_waits_until_that_one_is_gone() {
        let nodes: Vec<Member> = (1..=3).map(|id| member(id, 1)).collect();
        let mut map = formed(&nodes, 4);
        // Node 3's disk wiped: it comes back as node 4 on node 3's listener while node 3's
        // registration still lives.
        let wiped = Member {
            id: 4,
            shards: nodes[2].shards.clone(),
            incarnation: 1,
        };
        let mut view = ClusterView {
            members: vec![
                nodes[0].clone(),
                nodes[1].clone(),
                nodes[2].clone(),
                wiped.clone(),
            ],
            ..Default::default()
        };
        if let Some(next) = next_map(&map, &view, &POLICY) {
            map = next;
        }
        assert!(
            map.shards.iter().all(|s| s.node != 4),
            "placed on a listener node 3 still holds: {:?}",
            map.shards
        );
        // A node in the map does not take it over either.
        view.members[1].shards = nodes[2].shards.clone();
        if let Some(next) = next_map(&map, &view, &POLICY) {
            map = next;
        }
        assert_eq!(map.shards[1].addr, nodes[1].shards[0]);
        view.members[1] = nodes[1].clone();
        // Node 3's lease gone: node 4 joins and takes its share (node 3 is down for good: its
        // listeners are another's, the coordinator's `down_for_good`).
        view.members.retain(|m| m.id != 3);
        view.down_out.insert(3);
        step(&mut map, &view);
        assert!(map.shards.iter().any(|s| s.node == 4));
        settle_fully(&mut map, &mut view);
        assert_whole_and_even(&map, &[3]);
    }
}
