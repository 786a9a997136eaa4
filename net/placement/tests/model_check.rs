//! A model check of the placement protocol (issue 30, item 6): the coordinator's rules
//! (`healing::next_map`, the code the coordinator runs) driven together with a model of the
//! nodes, in a seeded randomized search of the schedules. Nodes adopt published maps as
//! separate steps, each arbitrarily late and never backwards; clients hold maps of their
//! own (any of the last few published) and write through the head they name and read from
//! any serving replica they name; processes die, leases expire, nodes restart with a new
//! registration, a node joins, nodes are declared down for good. The nodes follow the
//! node's rules (`node/src/chain_view.rs`, `route.rs`, `map_cell.rs`): a write passes down
//! the replicas that take writes from the head, each hop refusing a chain version other
//! than its own; a replica reads only while its own map says it serves, its lease is
//! confirmed, and its map records its current registration; a request naming a newer epoch
//! than the node's waits. A write is one step (it goes through whole, or nowhere), or,
//! since session 20, a write in flight: taken by its head, then passed down hop by hop in
//! later steps, maps changing between, each holder deciding by its own map of that moment
//! what follows (`chain_view::next_hop`: send it on under its chain version, acknowledge
//! it as the last replica, or give it up so that the one before it sends it again), with
//! hop timeouts and holders killed.
//!
//! Checked: every read returns the newest acknowledged write of its key (a stale read is a
//! violation: reads here are of acknowledged values only, the dirty-key wait of the real
//! node being outside the model); and, once faults stop and every node is back, every
//! chain serves reads and writes again with every acknowledged write (a chain unavailable
//! for good is a violation).
//!
//! Against the old rules it must find the trim bug of issue 30 item 1 (a live serving
//! replica dropped in one step: `Rules::OneStepTrim` drops every replica the rules make
//! leaving) and the stuck chains of item 2 (no record of the last replicas to serve:
//! `Rules::NoStranding`), and nothing against the current ones. It found a third: a
//! draining node's head, dropped in one step, answered reads from its old map while the
//! next replica took writes without it (`Rules::OneStepHeadTrim`; it now leaves in two
//! steps like any other replica). With writes in flight it found a fourth, in the node's
//! hops (`Rules::RouteByNewerVersion`): a replica routing a record passed to it under one
//! chain version by a later one, which had put it behind a replica the record never
//! reached. `HOTSHARD_MODEL_RUNS`
//! sets the number of schedules searched per configuration (CI runs the default).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};
use std::time::Instant;

use hotshard_placement::chain_plan::{form_map, order, CaughtUpReport};
use hotshard_placement::healing::{next_map, ClusterView, Member, Policy};
use hotshard_placement::{NodeIncarnation, ReplicaState, ShardMap};

/// The coordinator's rules the search runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    Current,
    /// Before issue 30: a replica the rules make leaving is dropped at once.
    OneStepTrim,
    /// Before issue 30: no record of the last replicas to serve a chain.
    NoStranding,
    /// Before the model check found it: a draining node's head dropped at once (the other
    /// replicas leave in two steps).
    OneStepHeadTrim,
    /// Before session 20's second fix: a replica holding a record passed down under one
    /// chain version routes it by a later one (passes it on, or acknowledges it as the last
    /// replica), even when that version put it behind replicas the record never reached.
    RouteByNewerVersion,
}

/// A write on its way down a chain: the replicas holding it, each waiting on the next
/// (the head first, the one passing it on last), each with the chain version it was
/// passed down under (None: the head's own write).
#[derive(Debug, Clone, Hash)]
struct InFlight {
    p: usize,
    seq: u64,
    holders: Vec<(usize, Option<u64>)>,
}

/// One configuration of the search.
#[derive(Debug, Clone, Copy)]
struct Setup {
    nodes: u32,
    replication: usize,
    partition_bits: u8,
    /// A node more joins during the run.
    join: bool,
    /// Operators drain nodes (and undrain them).
    drains: bool,
    steps: usize,
}

#[derive(Debug, Clone, Hash)]
struct Node {
    id: u32,
    /// The process runs.
    alive: bool,
    /// Its lease lives (registered in etcd).
    registered: bool,
    incarnation: u64,
    /// The newest map the node has adopted.
    map_epoch: u64,
    /// Per partition, the sequence number of the newest write it holds (0: none).
    store: Vec<u64>,
}

thread_local! {
    /// Maps published with a leaving replica (how often the search reached a trim).
    static LEAVING_MAPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Maps in which a syncing holder became serving (how often the search reached a chain
    /// coming back through one after the replica it came back through was lost).
    static HOLDER_PROMOTIONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Where a node stands in one partition's chain by a map (`ChainPlace` in the node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Outside,
    Serving { head: bool },
    Syncing,
    Leaving,
}

struct Model {
    rules: Rules,
    policy: Policy,
    nodes: Vec<Node>,
    /// Every map the coordinator published, in epoch order (index = epoch - 1).
    published: Vec<ShardMap>,
    reports: Vec<CaughtUpReport>,
    draining: BTreeSet<u32>,
    down_out: BTreeSet<u32>,
    /// Per partition, the newest acknowledged write's sequence number.
    acked: Vec<u64>,
    next_seq: u64,
    /// Writes taken by a head and not yet acknowledged or given up.
    in_flight: Vec<InFlight>,
    joined: bool,
    /// Chance of a fault at each step, per mille (each schedule draws its own).
    fault_per_mille: usize,
    drains: bool,
    log: Vec<String>,
}

fn addr(id: u32) -> String {
    format!("node{id}:7400")
}

impl Model {
    fn new(setup: &Setup, rules: Rules) -> Model {
        let list: Vec<(u32, Vec<String>)> = (1..=setup.nodes).map(|id| (id, vec![addr(id)])).collect();
        let mut map = form_map(&list, setup.partition_bits, setup.replication).unwrap();
        map.incarnations = (1..=setup.nodes)
            .map(|node| NodeIncarnation { node, incarnation: 1 })
            .collect();
        map.refresh_heads();
        let partitions = map.chains.len();
        let node = |id: u32, alive: bool| Node {
            id,
            alive,
            registered: alive,
            incarnation: 1,
            map_epoch: 0,
            store: vec![0; partitions],
        };
        let mut nodes: Vec<Node> = (1..=setup.nodes).map(|id| node(id, true)).collect();
        if setup.join {
            nodes.push(node(setup.nodes + 1, false));
        }
        Model {
            rules,
            policy: Policy {
                replication: setup.replication,
                max_syncing_per_node: 8,
            },
            nodes,
            published: vec![map],
            reports: Vec::new(),
            draining: BTreeSet::new(),
            down_out: BTreeSet::new(),
            acked: vec![0; partitions],
            next_seq: 1,
            in_flight: Vec::new(),
            joined: !setup.join,
            fault_per_mille: 0,
            drains: setup.drains,
            log: Vec::new(),
        }
    }

    fn latest(&self) -> &ShardMap {
        self.published.last().unwrap()
    }

    fn map_of(&self, n: usize) -> Option<&ShardMap> {
        let e = self.nodes[n].map_epoch;
        (e > 0).then(|| &self.published[e as usize - 1])
    }

    fn index_of(&self, id: u32) -> usize {
        self.nodes.iter().position(|n| n.id == id).unwrap()
    }

    /// A map a client may hold: one of the last four published.
    fn client_map(&self, rng: &mut SplitMix) -> &ShardMap {
        let back = rng.below(self.published.len().min(4));
        &self.published[self.published.len() - 1 - back]
    }

    fn place(map: &ShardMap, p: usize, node: u32) -> Place {
        let chain = &map.chains[p];
        let mut head = true;
        for r in chain.replicas.iter().filter(|r| r.state.takes_writes()) {
            if map.shards[r.shard as usize].node == node {
                return match r.state {
                    ReplicaState::Serving => Place::Serving { head },
                    ReplicaState::Leaving => Place::Leaving,
                    _ => Place::Syncing,
                };
            }
            head &= r.state != ReplicaState::Serving;
        }
        Place::Outside
    }

    /// Whether node `n` answers anything of the cluster: its process runs, its lease is
    /// confirmed, and the map it holds records its current registration.
    fn answers(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        node.alive
            && node.registered
            && self
                .map_of(n)
                .is_some_and(|m| m.incarnation(node.id) == Some(node.incarnation))
    }

    fn coordinator_step(&mut self) -> bool {
        let view = ClusterView {
            members: self
                .nodes
                .iter()
                .filter(|n| n.registered)
                .map(|n| Member {
                    id: n.id,
                    shards: vec![addr(n.id)],
                    incarnation: n.incarnation,
                })
                .collect(),
            draining: self.draining.clone(),
            down_out: self.down_out.clone(),
            caught_up: std::mem::take(&mut self.reports),
            ..Default::default()
        };
        let Some(mut next) = next_map(self.latest(), &view, &self.policy) else {
            return false;
        };
        for chain in next.chains.iter_mut() {
            match self.rules {
                Rules::Current | Rules::RouteByNewerVersion => {}
                Rules::OneStepTrim => chain.replicas.retain(|r| r.state != ReplicaState::Leaving),
                Rules::OneStepHeadTrim => {
                    if chain
                        .replicas
                        .first()
                        .is_some_and(|r| r.state == ReplicaState::Leaving)
                    {
                        chain.replicas.remove(0);
                    }
                }
                Rules::NoStranding => {
                    for r in chain.replicas.iter_mut() {
                        if r.state == ReplicaState::Stranded {
                            r.state = ReplicaState::Offline;
                        }
                    }
                    order(chain);
                }
            }
        }
        next.refresh_heads();
        self.log
            .push(format!("publish epoch {}: {:?}", next.epoch, chains(&next)));
        if next
            .chains
            .iter()
            .flat_map(|c| &c.replicas)
            .any(|r| r.state == ReplicaState::Leaving)
        {
            LEAVING_MAPS.with(|c| c.set(c.get() + 1));
        }
        if let Some(last) = self.published.last() {
            // A holder made serving because every serving replica was lost (not on its
            // own caught-up report).
            let promoted = last.chains.iter().zip(&next.chains).any(|(b, a)| {
                let was_holder = |shard: u16| {
                    b.replicas
                        .iter()
                        .any(|x| x.shard == shard && x.state == ReplicaState::SyncingHolder)
                };
                let serving_lost = b
                    .replicas
                    .iter()
                    .filter(|x| x.state == ReplicaState::Serving)
                    .all(|x| {
                        !a.replicas
                            .iter()
                            .any(|y| y.shard == x.shard && y.state == ReplicaState::Serving)
                    });
                serving_lost
                    && a.replicas
                        .iter()
                        .any(|r| r.state == ReplicaState::Serving && was_holder(r.shard))
            });
            if promoted {
                HOLDER_PROMOTIONS.with(|c| c.set(c.get() + 1));
            }
        }
        self.published.push(next);
        true
    }

    /// Node `n` adopts a newer published map (`latest`: the newest; else any newer one).
    fn adopt(&mut self, n: usize, latest: bool, rng: &mut SplitMix) -> bool {
        let have = self.nodes[n].map_epoch as usize;
        let newest = self.published.len();
        if !self.nodes[n].alive || have >= newest {
            return false;
        }
        let to = if latest {
            newest
        } else {
            have + 1 + rng.below(newest - have)
        };
        self.nodes[n].map_epoch = to as u64;
        self.log
            .push(format!("node {} adopts epoch {to}", self.nodes[n].id));
        true
    }

    /// A client with `map` writes partition `p` through the head it names.
    fn write(&mut self, map_epoch: u64, p: usize) -> Result<(), String> {
        let map = &self.published[map_epoch as usize - 1];
        let Some(head) = map.owner(p as u32).map(|s| s.node) else {
            return Err("no head".into());
        };
        let h = self.index_of(head);
        if !self.answers(h) || self.nodes[h].map_epoch < map_epoch {
            return Err(format!("node {head} does not answer"));
        }
        let hm = self.map_of(h).unwrap();
        if hm.owner(p as u32).map(|s| s.node) != Some(head) {
            return Err(format!("node {head} is not the head by its map"));
        }
        let chain = &hm.chains[p];
        let start = chain
            .replicas
            .iter()
            .position(|r| hm.shards[r.shard as usize].node == head)
            .unwrap();
        let path: Vec<usize> = chain.replicas[start..]
            .iter()
            .filter(|r| r.state.takes_writes())
            .map(|r| self.index_of(hm.shards[r.shard as usize].node))
            .collect();
        for &i in &path[1..] {
            let same_version = self
                .map_of(i)
                .is_some_and(|m| m.chains[p].version == chain.version);
            if !self.answers(i) || !same_version {
                return Err(format!("hop to node {} refused", self.nodes[i].id));
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        for &i in &path {
            self.nodes[i].store[p] = seq;
        }
        self.acked[p] = seq;
        let ids: Vec<u32> = path.iter().map(|&i| self.nodes[i].id).collect();
        self.log.push(format!(
            "write p{p} #{seq} acked via {ids:?} (client epoch {map_epoch})"
        ));
        Ok(())
    }

    /// A client with `map` starts a write of partition `p` at the head it names: the head
    /// holds it and passes it down in later steps (`advance`), each hop deciding by its own
    /// map of that moment, as `node/src/replication.rs` does.
    fn start_write(&mut self, map_epoch: u64, p: usize) {
        let map = &self.published[map_epoch as usize - 1];
        let Some(head) = map.owner(p as u32).map(|s| s.node) else {
            return;
        };
        let h = self.index_of(head);
        if !self.answers(h) || self.nodes[h].map_epoch < map_epoch {
            return;
        }
        let hm = self.map_of(h).unwrap();
        if hm.owner(p as u32).map(|s| s.node) != Some(head) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let held = &mut self.nodes[h].store[p];
        *held = (*held).max(seq);
        self.in_flight.push(InFlight {
            p,
            seq,
            holders: vec![(h, None)],
        });
        self.log.push(format!(
            "write p{p} #{seq} taken by head {head} (client epoch {map_epoch})"
        ));
    }

    /// One step of in-flight write `w`: its last holder decides by its own map what
    /// follows (`chain_view::next_hop`): send it on (taken if the next replica has the same
    /// chain version), acknowledge it (nothing follows), or give it up (outside the chain,
    /// or the head's own write once it no longer heads the chain), and then the holder
    /// before it sends it again by its own map. With `timeout`, instead, the holder before
    /// the last stops waiting (the hop's timeout) and will send it again.
    fn advance(&mut self, w: usize, timeout: bool) {
        let InFlight { p, seq, .. } = self.in_flight[w];
        if timeout {
            let holders = &mut self.in_flight[w].holders;
            if holders.len() > 1 {
                holders.pop();
            }
            return;
        }
        let (top, received) = *self.in_flight[w].holders.last().unwrap();
        let from_head = received.is_none();
        if !self.answers(top) {
            return;
        }
        let id = self.nodes[top].id;
        let m = self.map_of(top).unwrap();
        let path: Vec<u32> = m.chains[p]
            .replicas
            .iter()
            .filter(|r| r.state.takes_writes())
            .map(|r| m.shards[r.shard as usize].node)
            .collect();
        let version = m.chains[p].version;
        let heads = m.owner(p as u32).map(|s| s.node) == Some(id);
        let at = path.iter().position(|&n| n == id);
        enum Next {
            Ack,
            GiveUp,
            Send(u32),
        }
        let moved = received.is_some_and(|v| v != version);
        let next = match at {
            _ if from_head && !heads => Next::GiveUp,
            None => Next::GiveUp,
            Some(_) if moved && self.rules == Rules::Current => Next::GiveUp,
            Some(i) if i + 1 == path.len() => Next::Ack,
            Some(i) => Next::Send(path[i + 1]),
        };
        match next {
            Next::Ack => {
                self.acked[p] = self.acked[p].max(seq);
                self.in_flight.swap_remove(w);
                self.log
                    .push(format!("write p{p} #{seq} acknowledged at node {id}"));
            }
            Next::GiveUp => {
                self.in_flight[w].holders.pop();
                if self.in_flight[w].holders.is_empty() {
                    self.in_flight.swap_remove(w);
                }
                self.log.push(format!("write p{p} #{seq} given up by node {id}"));
            }
            Next::Send(to) => {
                let n = self.index_of(to);
                let taken = self.answers(n)
                    && self.map_of(n).is_some_and(|nm| {
                        nm.chains[p].version == version && Self::place(nm, p, to) != Place::Outside
                    });
                if taken {
                    let held = &mut self.nodes[n].store[p];
                    *held = (*held).max(seq);
                    self.in_flight[w].holders.push((n, Some(version)));
                    self.log.push(format!(
                        "write p{p} #{seq} passed from node {id} to node {to} at v{version}"
                    ));
                }
            }
        }
    }

    /// A node's process died: the writes it held go no further from it (a head's are gone).
    fn drop_holder(&mut self, n: usize) {
        for f in &mut self.in_flight {
            if let Some(i) = f.holders.iter().position(|&(h, _)| h == n) {
                f.holders.truncate(i);
            }
        }
        self.in_flight.retain(|f| !f.holders.is_empty());
    }

    /// A client with `map` reads partition `p` from the `pick`-th serving replica it names.
    /// Err: a stale read.
    fn read(&mut self, map_epoch: u64, p: usize, pick: usize) -> Result<Option<u64>, String> {
        let map = &self.published[map_epoch as usize - 1];
        let Some(reader) = map.reader(p as u32, pick).map(|s| s.node) else {
            return Ok(None);
        };
        let r = self.index_of(reader);
        if !self.answers(r) || self.nodes[r].map_epoch < map_epoch {
            return Ok(None);
        }
        if !matches!(
            Self::place(self.map_of(r).unwrap(), p, reader),
            Place::Serving { .. }
        ) {
            return Ok(None);
        }
        let got = self.nodes[r].store[p];
        self.log.push(format!(
            "read p{p} at node {reader} (client epoch {map_epoch}): #{got}"
        ));
        if got < self.acked[p] {
            return Err(format!(
                "stale read: node {reader} (at epoch {}) answered #{got} of partition {p}, #{} was acknowledged",
                self.nodes[r].map_epoch, self.acked[p]
            ));
        }
        Ok(Some(got))
    }

    /// Node `n` syncs partition `p` from the last serving replica of its map, and reports.
    fn sync(&mut self, n: usize, p: usize) -> bool {
        if !self.answers(n) {
            return false;
        }
        let m = self.map_of(n).unwrap();
        if Self::place(m, p, self.nodes[n].id) != Place::Syncing {
            return false;
        }
        let chain = &m.chains[p];
        let Some(source) = chain
            .replicas
            .iter()
            .rev()
            .find(|r| r.state == ReplicaState::Serving)
            .map(|r| m.shards[r.shard as usize].node)
        else {
            return false;
        };
        let s = self.index_of(source);
        let version = chain.version;
        if !self.answers(s) || self.map_of(s).unwrap().chains[p].version != version {
            return false;
        }
        let got = self.nodes[s].store[p];
        let held = &mut self.nodes[n].store[p];
        *held = (*held).max(got);
        self.reports.push((p as u32, self.nodes[n].id, 0, version));
        self.log.push(format!(
            "node {} synced p{p} from node {source} at v{version}",
            self.nodes[n].id
        ));
        true
    }

    /// Node `n` reports that it has adopted the version that made it leave chain `p`.
    fn report_leaving(&mut self, n: usize, p: usize) -> bool {
        if !self.answers(n) {
            return false;
        }
        let m = self.map_of(n).unwrap();
        if Self::place(m, p, self.nodes[n].id) != Place::Leaving {
            return false;
        }
        self.reports
            .push((p as u32, self.nodes[n].id, 0, m.chains[p].version));
        true
    }

    /// A node whose lease is gone registers again: a dead one is restarted (empty map, its
    /// data kept), a live one re-registers (a new lease).
    fn register(&mut self, n: usize) -> bool {
        let node = &mut self.nodes[n];
        if node.registered {
            return false;
        }
        if !node.alive {
            node.alive = true;
            node.map_epoch = 0;
        }
        node.registered = true;
        node.incarnation += 1;
        self.down_out.remove(&node.id);
        self.log.push(format!(
            "node {} registers (incarnation {})",
            node.id, node.incarnation
        ));
        true
    }

    /// One random step of the schedule.
    fn step(&mut self, rng: &mut SplitMix) -> Result<(), String> {
        let n = rng.below(self.nodes.len());
        let partitions = self.acked.len();
        let p = rng.below(partitions);
        if !self.joined && n == self.nodes.len() - 1 {
            // The joining node exists only once it has started.
            if rng.below(20) == 0 {
                self.joined = true;
                self.register(n);
            }
            return Ok(());
        }
        if rng.below(1000) < self.fault_per_mille {
            if self.drains && rng.below(4) == 0 {
                let id = self.nodes[n].id;
                if self.draining.remove(&id) {
                    self.log.push(format!("node {id} undrained"));
                } else if self.draining.is_empty() && self.nodes[n].registered {
                    self.draining.insert(id);
                    self.log.push(format!("node {id} draining"));
                }
                return Ok(());
            }
            match rng.below(10) {
                0..=2 => {
                    if self.nodes[n].alive {
                        self.nodes[n].alive = false;
                        self.drop_holder(n);
                        self.log.push(format!("node {} killed", self.nodes[n].id));
                    }
                }
                3..=4 => {
                    if self.nodes[n].registered {
                        self.nodes[n].registered = false;
                        self.log
                            .push(format!("node {}'s lease expires", self.nodes[n].id));
                    }
                }
                5..=8 => {
                    self.register(n);
                }
                _ => {
                    let node = &self.nodes[n];
                    if !node.registered && !node.alive {
                        self.down_out.insert(node.id);
                        self.log.push(format!("node {} down for good", node.id));
                    }
                }
            }
            return Ok(());
        }
        match rng.below(100) {
            0..=14 => {
                self.coordinator_step();
            }
            15..=39 => {
                self.adopt(n, false, rng);
            }
            // A write whose hops all happen before anything else does (one step), or (one
            // in three) one taken by its head and passed down in later steps, maps
            // changing between.
            40..=54 => {
                let epoch = self.client_map(rng).epoch;
                if rng.below(3) == 0 {
                    self.start_write(epoch, p);
                } else {
                    let _ = self.write(epoch, p);
                }
            }
            55..=79 => {
                let epoch = self.client_map(rng).epoch;
                let pick = rng.below(4);
                self.read(epoch, p, pick)?;
            }
            80..=91 => {
                self.sync(n, p);
            }
            _ => {
                self.report_leaving(n, p);
            }
        }
        // A hop of a write in flight, beside whatever else happened.
        if !self.in_flight.is_empty() && rng.below(2) == 0 {
            let w = rng.below(self.in_flight.len());
            let timeout = rng.below(10) == 0;
            self.advance(w, timeout);
        }
        Ok(())
    }

    /// Faults stop and every node comes back: the coordinator, the nodes' adoptions, syncs
    /// and reports run until nothing changes. Then every chain must take a write and answer
    /// it from every serving replica.
    fn heal(&mut self) -> Result<(), String> {
        self.down_out.clear();
        self.draining.clear();
        for n in 0..self.nodes.len() {
            if self.joined || n + 1 < self.nodes.len() {
                // A dead node's lease runs out; then it starts again.
                if !self.nodes[n].alive {
                    self.nodes[n].registered = false;
                }
                self.register(n);
            }
        }
        let mut quiet = 0;
        for _ in 0..500 {
            // Writes in flight go on (or are given up) as the maps settle.
            for w in (0..self.in_flight.len()).rev() {
                if w < self.in_flight.len() {
                    self.advance(w, false);
                }
            }
            let mut changed = self.coordinator_step();
            for n in 0..self.nodes.len() {
                changed |= self.adopt(n, true, &mut SplitMix(0));
            }
            for n in 0..self.nodes.len() {
                for p in 0..self.acked.len() {
                    self.sync(n, p);
                    self.report_leaving(n, p);
                }
            }
            quiet = if changed { 0 } else { quiet + 1 };
            if quiet == 2 {
                break;
            }
        }
        if quiet < 2 {
            return Err("the map never settled after the faults stopped".into());
        }
        let epoch = self.latest().epoch;
        for p in 0..self.acked.len() {
            let chain = self.latest().chains[p].clone();
            if self.latest().owner(p as u32).is_none() {
                return Err(format!(
                    "partition {p} unavailable for good with every node back: {chain:?}"
                ));
            }
            self.write(epoch, p)
                .map_err(|e| format!("partition {p} takes no write with every node back: {e}"))?;
            let serving = chain
                .replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Serving)
                .count();
            for pick in 0..serving {
                if self.read(epoch, p, pick)?.is_none() {
                    return Err(format!("partition {p}: a serving replica does not answer"));
                }
            }
        }
        Ok(())
    }

    /// A digest of the state, for counting the distinct states the search visited.
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        chains(self.latest()).hash(&mut h);
        self.nodes.hash(&mut h);
        self.reports.hash(&mut h);
        self.acked.hash(&mut h);
        self.in_flight.hash(&mut h);
        self.draining.hash(&mut h);
        self.down_out.hash(&mut h);
        h.finish()
    }
}

/// A map's chains, compactly: per chain its version and (node, state) replicas.
fn chains(map: &ShardMap) -> Vec<(u64, Vec<(u32, char)>)> {
    map.chains
        .iter()
        .map(|c| {
            let replicas = c
                .replicas
                .iter()
                .map(|r| {
                    let s = match r.state {
                        ReplicaState::Serving => 'S',
                        ReplicaState::Syncing => 'y',
                        ReplicaState::Offline => 'o',
                        ReplicaState::Leaving => 'L',
                        ReplicaState::Stranded => 's',
                        ReplicaState::SyncingHolder => 'h',
                    };
                    (map.shards[r.shard as usize].node, s)
                })
                .collect();
            (c.version, replicas)
        })
        .collect()
}

/// What a search found.
struct Found {
    runs: usize,
    states: usize,
    /// The first violation: its seed, what it was and the schedule that led to it.
    violation: Option<(u64, String, Vec<String>)>,
}

/// Searches `runs` seeded schedules of `setup` under `rules`; stops at the first violation.
fn search(setup: &Setup, rules: Rules, runs: usize) -> Found {
    let mut states = HashSet::new();
    for seed in 0..runs as u64 {
        let mut rng = SplitMix(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ rules as u64);
        let mut model = Model::new(setup, rules);
        model.fault_per_mille = [10, 40, 120][rng.below(3)];
        let mut outcome = Ok(());
        for _ in 0..setup.steps {
            outcome = model.step(&mut rng);
            states.insert(model.digest());
            if outcome.is_err() {
                break;
            }
        }
        let outcome = outcome.and_then(|()| model.heal());
        if let Err(what) = outcome {
            return Found {
                runs: seed as usize + 1,
                states: states.len(),
                violation: Some((seed, what, model.log)),
            };
        }
    }
    Found {
        runs,
        states: states.len(),
        violation: None,
    }
}

fn runs() -> usize {
    std::env::var("HOTSHARD_MODEL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000)
}

const SETUPS: [Setup; 3] = [
    // Three nodes, two replicas: a returning node's replica and the one that replaced it
    // both serve, and the chain is trimmed.
    Setup {
        nodes: 3,
        replication: 2,
        partition_bits: 2,
        join: false,
        drains: false,
        steps: 80,
    },
    // Three replicas on three nodes, and a fourth node joins: balance moves replicas.
    Setup {
        nodes: 3,
        replication: 3,
        partition_bits: 2,
        join: true,
        drains: false,
        steps: 80,
    },
    // Four nodes, three replicas, and operators draining nodes (one at a time) and
    // undraining them: heads move off draining nodes.
    Setup {
        nodes: 4,
        replication: 3,
        partition_bits: 2,
        join: false,
        drains: true,
        steps: 80,
    },
];

fn report(name: &str, setup: &Setup, rules: Rules, found: &Found, took: std::time::Duration) {
    eprintln!(
        "model check {name} {rules:?} {setup:?}: {} schedules, {} distinct states, {} maps with a leaving replica, {} with a syncing holder made serving, {:?}: {}",
        found.runs,
        found.states,
        LEAVING_MAPS.with(|c| c.replace(0)),
        HOLDER_PROMOTIONS.with(|c| c.replace(0)),
        took,
        match &found.violation {
            None => "no violation".to_string(),
            Some((seed, what, _)) => format!("seed {seed}: {what}"),
        }
    );
}

#[test]
fn the_current_rules_keep_every_read_fresh_and_every_chain_live() {
    for (i, setup) in SETUPS.iter().enumerate() {
        let started = Instant::now();
        let found = search(setup, Rules::Current, runs());
        report(
            &format!("setup {i}"),
            setup,
            Rules::Current,
            &found,
            started.elapsed(),
        );
        if let Some((seed, what, log)) = &found.violation {
            panic!("seed {seed}: {what}\nschedule:\n{}", log.join("\n"));
        }
    }
}

#[test]
fn the_search_finds_the_one_step_trim_of_a_live_replica() {
    let started = Instant::now();
    let found = search(&SETUPS[1], Rules::OneStepTrim, runs());
    report(
        "setup 1",
        &SETUPS[1],
        Rules::OneStepTrim,
        &found,
        started.elapsed(),
    );
    let (_, what, log) = found
        .violation
        .expect("no stale read found against the one-step trim");
    assert!(what.starts_with("stale read"), "{what}\n{}", log.join("\n"));
    eprintln!("the schedule that found it:\n{}", log.join("\n"));
}

#[test]
fn the_search_finds_chains_left_unavailable_without_stranded_replicas() {
    let started = Instant::now();
    let found = search(&SETUPS[0], Rules::NoStranding, runs());
    report(
        "setup 0",
        &SETUPS[0],
        Rules::NoStranding,
        &found,
        started.elapsed(),
    );
    let (_, what, _) = found.violation.expect("no stuck chain found without stranding");
    assert!(what.contains("unavailable for good"), "{what}");
}

#[test]
fn the_search_finds_a_draining_head_dropped_in_one_step() {
    let started = Instant::now();
    let found = search(&SETUPS[2], Rules::OneStepHeadTrim, 4 * runs());
    report(
        "setup 2",
        &SETUPS[2],
        Rules::OneStepHeadTrim,
        &found,
        started.elapsed(),
    );
    let (_, what, log) = found
        .violation
        .expect("no stale read found against the one-step drop of a draining head");
    assert!(what.starts_with("stale read"), "{what}\n{}", log.join("\n"));
}

/// Searches setup 1 (a join) under `rules`, `times` the usual number of schedules, for a
/// stale read.
fn finds_a_stale_read_in_flight(rules: Rules, times: usize) {
    let started = Instant::now();
    let found = search(&SETUPS[1], rules, times * runs());
    report("setup 1", &SETUPS[1], rules, &found, started.elapsed());
    let (_, what, log) = found
        .violation
        .unwrap_or_else(|| panic!("no stale read found against {rules:?}"));
    assert!(what.starts_with("stale read"), "{what}\n{}", log.join("\n"));
    eprintln!("the schedule that found it:\n{}", log.join("\n"));
}

/// Found at schedule 81,279 of setup 1 (session 20): a replica that held a record from
/// before its lease lapsed, back as the syncing tail, acknowledged it as the last replica;
/// the serving replica now before it never got it.
#[test]
fn the_search_finds_a_replica_routing_a_record_by_a_newer_chain_version() {
    finds_a_stale_read_in_flight(Rules::RouteByNewerVersion, 4);
}
