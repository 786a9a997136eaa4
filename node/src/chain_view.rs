//! A shard's place in one partition's chain, read from its copy of the map: whether it
//! serves the partition at all, whether it takes writes (the head), and where a write goes
//! next (its successor among the serving replicas). Pure: no I/O, no executor.

use hotshard_placement::{ReplicaState, ShardMap};

/// Where shard `shard` of node `node` stands in a partition's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainPlace {
    /// Not in the chain, or offline in it.
    Outside,
    /// A serving replica: `is_head` if it takes the partition's writes, the chain's
    /// version, and the replica a write goes to next (an index into the map's shards;
    /// None: this is the last replica taking writes).
    Serving {
        is_head: bool,
        version: u64,
        successor: Option<u16>,
    },
    /// A syncing replica (issue 20): it takes every write passed down the chain and is
    /// being filled with what it lacks, but answers no reads. `successor` as above (another
    /// syncing replica).
    Syncing { version: u64, successor: Option<u16> },
    /// A replica leaving its chain: it takes every write passed down the chain, as it did
    /// while serving, and answers no reads; it reports that it has seen this (the
    /// coordinator drops it then). `successor` as above.
    Leaving { version: u64, successor: Option<u16> },
}

impl ChainPlace {
    /// The place of (`node`, `shard`) in `partition`'s chain by `map`. Writes go down
    /// the serving replicas, then the syncing ones (the chain keeps them in that order):
    /// the last serving replica passes each write on to the first syncing one, and waits
    /// for it, so that a write acknowledged after a replica joined is on that replica.
    pub fn of(map: &ShardMap, partition: u32, node: u32, shard: usize) -> ChainPlace {
        let Some(chain) = map.chain(partition) else {
            return ChainPlace::Outside;
        };
        let is_me = |i: u16| {
            map.shards
                .get(i as usize)
                .is_some_and(|s| s.node == node && s.shard as usize == shard)
        };
        let mut taking_writes = chain
            .replicas
            .iter()
            .filter(|r| r.state.takes_writes())
            .filter(|r| (r.shard as usize) < map.shards.len());
        let mut is_head = true;
        while let Some(r) = taking_writes.next() {
            if is_me(r.shard) {
                let successor = taking_writes.next().map(|n| n.shard);
                let version = chain.version;
                return match r.state {
                    ReplicaState::Serving => ChainPlace::Serving {
                        is_head,
                        version,
                        successor,
                    },
                    ReplicaState::Leaving => ChainPlace::Leaving { version, successor },
                    _ => ChainPlace::Syncing { version, successor },
                };
            }
            // The head is the first replica serving or leaving (`ShardMap::owner`).
            is_head &= !matches!(r.state, ReplicaState::Serving | ReplicaState::Leaving);
        }
        ChainPlace::Outside
    }

    /// Whether this place has replicas after it (a write here must be passed down).
    pub fn has_successor(&self) -> bool {
        self.takes_writes().is_some_and(|(_, next)| next.is_some())
    }

    /// The chain version and the next replica, for a place that takes writes.
    pub fn takes_writes(&self) -> Option<(u64, Option<u16>)> {
        match *self {
            ChainPlace::Outside => None,
            ChainPlace::Serving {
                version, successor, ..
            }
            | ChainPlace::Syncing { version, successor }
            | ChainPlace::Leaving { version, successor } => Some((version, successor)),
        }
    }
}

/// What a replica holding a record does next to get it acknowledged (`next_hop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// Every replica the record must reach has it: acknowledge it.
    Acknowledged,
    /// This shard can no longer get the record acknowledged (it left the chain, or the
    /// head's own write outlived its headship): answer that it was not.
    Abandoned,
    /// Send it to shard `next` (an index into the map's shards) under chain `version`.
    Send { version: u64, next: u16 },
}

/// How a shard came to hold a record it must get acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Its own write as the chain's head.
    OwnWrite,
    /// Passed down to it under this chain version.
    PassedUnder(u64),
}

/// The next step for a record held by (`node`, `shard`) in `partition`'s chain by `map`.
///
/// A head's own write is the chain's only while this shard still heads the chain: a head
/// that lost its place and came back behind the others (a node paused past its lease
/// returns as a syncing replica at the end) has replicas before it that never got the
/// record, and being last must not read as "every replica after me has it" (issue 30: a
/// write acknowledged after the pause, then read as the value before it from the serving
/// replicas).
///
/// A record passed down under chain version V is this shard's to pass on or acknowledge
/// only while its chain is still at V. A later version may have taken it out of the chain
/// (a leaving replica dropped: then "nothing follows me" acknowledged records the tail
/// never got, session 20's stale read during a join), or put it back behind replicas the
/// record never reached (a replica whose lease lapsed returns as the syncing tail, with
/// the replicas that followed it now before it: the model check's schedule, session 20).
/// Either way only the replica before it can route the record again by its own map: the
/// answer is Abandoned, and the predecessor, refused, sends it again; at the head, under
/// the chain's version of the moment.
pub fn next_hop(map: &ShardMap, partition: u32, node: u32, shard: usize, holding: Holding) -> Hop {
    if holding == Holding::OwnWrite
        && !map
            .owner(partition)
            .is_some_and(|o| o.node == node && o.shard as usize == shard)
    {
        return Hop::Abandoned;
    }
    match ChainPlace::of(map, partition, node, shard).takes_writes() {
        None => Hop::Abandoned,
        Some((version, _)) if holding != Holding::OwnWrite && holding != Holding::PassedUnder(version) => {
            Hop::Abandoned
        }
        Some((_, None)) => Hop::Acknowledged,
        Some((version, Some(next))) => Hop::Send { version, next },
    }
}

/// The shard of node `node` that is a serving replica of `partition`, if any: where a read
/// that reached another shard of the node is sent.
pub fn local_replica(map: &ShardMap, partition: u32, node: u32) -> Option<usize> {
    let chain = map.chain(partition)?;
    chain
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Serving)
        .filter_map(|r| map.shards.get(r.shard as usize))
        .find(|s| s.node == node)
        .map(|s| s.shard as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotshard_placement::{Chain, Replica, ShardAddr};

    fn map(states: [ReplicaState; 3]) -> ShardMap {
        let shards = (0..3)
            .map(|n| ShardAddr {
                node: n + 1,
                shard: 0,
                addr: format!("10.0.0.{n}:7400"),
            })
            .collect();
        let replicas = states
            .iter()
            .enumerate()
            .map(|(i, &state)| Replica {
                shard: i as u16,
                state,
            })
            .collect();
        ShardMap::with_chains(
            5,
            1,
            shards,
            vec![
                Chain { version: 7, replicas },
                Chain {
                    version: 1,
                    replicas: vec![Replica {
                        shard: 2,
                        state: ReplicaState::Serving,
                    }],
                },
            ],
        )
    }

    use Holding::{OwnWrite, PassedUnder};
    use ReplicaState::{Leaving, Offline, Serving, Syncing};

    #[test]
    fn a_heads_own_write_is_acknowledged_only_while_it_heads_the_chain() {
        // Node 3 wrote as head, was paused, and is back as the chain's syncing tail: the
        // serving replicas before it never got the record.
        let back = map([Serving, Serving, Syncing]);
        assert_eq!(next_hop(&back, 0, 3, 0, OwnWrite), Hop::Abandoned);
        // A record passed down to it is the chain's once it, the last, has it.
        assert_eq!(next_hop(&back, 0, 3, 0, PassedUnder(7)), Hop::Acknowledged);
        // The head passes its write down, and acknowledges it alone only as the last.
        assert_eq!(
            next_hop(&back, 0, 1, 0, OwnWrite),
            Hop::Send { version: 7, next: 1 }
        );
        let alone = map([Serving, Offline, Offline]);
        assert_eq!(next_hop(&alone, 0, 1, 0, OwnWrite), Hop::Acknowledged);
        // A leaving head still heads the chain (it takes writes until dropped).
        let leaving = map([Leaving, Serving, Serving]);
        assert_eq!(
            next_hop(&leaving, 0, 1, 0, OwnWrite),
            Hop::Send { version: 7, next: 1 }
        );
        // Out of the chain: nothing more to do.
        assert_eq!(
            next_hop(&map([Offline, Serving, Serving]), 0, 1, 0, OwnWrite),
            Hop::Abandoned
        );
        // A replica that headed the chain and now follows a serving replica.
        let demoted = map([Syncing, Serving, Serving]);
        assert_eq!(next_hop(&demoted, 0, 1, 0, OwnWrite), Hop::Abandoned);
    }

    #[test]
    fn a_record_passed_down_is_routed_only_under_the_version_it_came_with() {
        let chain = map([Serving, Serving, Serving]);
        assert_eq!(
            next_hop(&chain, 0, 2, 0, PassedUnder(7)),
            Hop::Send { version: 7, next: 2 }
        );
        assert_eq!(next_hop(&chain, 0, 3, 0, PassedUnder(7)), Hop::Acknowledged);
        // The chain changed since: the middle replica (now, say, the syncing tail behind
        // replicas the record never reached) neither passes it on nor acknowledges it.
        assert_eq!(next_hop(&chain, 0, 2, 0, PassedUnder(6)), Hop::Abandoned);
        assert_eq!(next_hop(&chain, 0, 3, 0, PassedUnder(6)), Hop::Abandoned);
        let back = map([Serving, Serving, Syncing]);
        assert_eq!(next_hop(&back, 0, 3, 0, PassedUnder(6)), Hop::Abandoned);
        // Dropped from the chain while it held the record: not "nothing follows me".
        let dropped = map([Serving, Serving, Offline]);
        assert_eq!(next_hop(&dropped, 0, 3, 0, PassedUnder(7)), Hop::Abandoned);
        // The head's own write goes under whatever version the chain has now.
        assert_eq!(
            next_hop(&chain, 0, 1, 0, OwnWrite),
            Hop::Send { version: 7, next: 1 }
        );
    }

    #[test]
    fn head_middle_tail_and_outside() {
        let m = map([Serving, Serving, Serving]);
        let place = |node| ChainPlace::of(&m, 0, node, 0);
        assert_eq!(
            place(1),
            ChainPlace::Serving {
                is_head: true,
                version: 7,
                successor: Some(1)
            }
        );
        assert_eq!(
            place(2),
            ChainPlace::Serving {
                is_head: false,
                version: 7,
                successor: Some(2)
            }
        );
        assert_eq!(
            place(3),
            ChainPlace::Serving {
                is_head: false,
                version: 7,
                successor: None
            }
        );
        assert_eq!(place(4), ChainPlace::Outside);
        assert_eq!(ChainPlace::of(&m, 1, 1, 0), ChainPlace::Outside);
        assert_eq!(
            ChainPlace::of(&m, 9, 1, 0),
            ChainPlace::Outside,
            "no such partition"
        );
        assert_eq!(
            ChainPlace::of(&m, 0, 1, 1),
            ChainPlace::Outside,
            "another shard of the node"
        );
    }

    #[test]
    fn offline_replicas_are_skipped() {
        let m = map([Offline, Serving, Serving]);
        assert_eq!(ChainPlace::of(&m, 0, 1, 0), ChainPlace::Outside);
        assert!(matches!(
            ChainPlace::of(&m, 0, 2, 0),
            ChainPlace::Serving { is_head: true, .. }
        ));
        let m = map([Serving, Offline, Serving]);
        assert_eq!(
            ChainPlace::of(&m, 0, 1, 0),
            ChainPlace::Serving {
                is_head: true,
                version: 7,
                successor: Some(2)
            },
            "the head passes writes to the next serving replica"
        );
        assert_eq!(local_replica(&m, 0, 2), None);
        assert_eq!(local_replica(&m, 0, 3), Some(0));
    }

    #[test]
    fn writes_pass_from_the_last_serving_replica_to_the_syncing_ones() {
        let m = map([Serving, Serving, Syncing]);
        assert_eq!(
            ChainPlace::of(&m, 0, 2, 0),
            ChainPlace::Serving {
                is_head: false,
                version: 7,
                successor: Some(2)
            },
            "the last serving replica passes writes on"
        );
        assert_eq!(
            ChainPlace::of(&m, 0, 3, 0),
            ChainPlace::Syncing {
                version: 7,
                successor: None
            }
        );
        assert_eq!(local_replica(&m, 0, 3), None, "a syncing replica serves no reads");
        // A syncing replica ahead of a serving one in the list is never the head.
        let m = map([Syncing, Serving, Offline]);
        assert!(matches!(
            ChainPlace::of(&m, 0, 2, 0),
            ChainPlace::Serving { is_head: true, .. }
        ));
    }

    #[test]
    fn a_leaving_replica_takes_writes_and_serves_no_reads() {
        // A middle replica starts leaving: the write path is as it was.
        let m = map([Serving, Leaving, Serving]);
        assert_eq!(
            ChainPlace::of(&m, 0, 1, 0),
            ChainPlace::Serving {
                is_head: true,
                version: 7,
                successor: Some(1)
            },
            "the head passes writes to the leaving replica, as before"
        );
        assert_eq!(
            ChainPlace::of(&m, 0, 2, 0),
            ChainPlace::Leaving {
                version: 7,
                successor: Some(2)
            },
            "which passes them on to the tail, as before"
        );
        assert_eq!(local_replica(&m, 0, 2), None, "a leaving replica serves no reads");
        assert!(!crate::route::serves(&m, 2, 0, 0));
        for pick in 0..4 {
            assert_ne!(
                m.reader(0, pick).map(|s| s.node),
                Some(2),
                "no reads routed to it"
            );
        }
    }

    #[test]
    fn a_leaving_head_takes_the_chains_writes_and_routes_reads_to_a_serving_replica() {
        use crate::route::{route, Route};
        use hotshard_net::Target;
        // A draining node's head starts leaving in place: still the head for writes.
        let m = map([Leaving, Serving, Offline]);
        assert_eq!(m.owner(0).map(|s| s.node), Some(1), "writes go to it");
        assert_eq!(
            ChainPlace::of(&m, 0, 1, 0),
            ChainPlace::Leaving {
                version: 7,
                successor: Some(1)
            },
            "it passes them on"
        );
        assert_eq!(
            ChainPlace::of(&m, 0, 2, 0),
            ChainPlace::Serving {
                is_head: false,
                version: 7,
                successor: None
            }
        );
        for pick in 0..4 {
            assert_eq!(
                m.reader(0, pick).map(|s| s.node),
                Some(2),
                "reads go to the serving one"
            );
        }
        let key = (0..)
            .map(|i: u32| i.to_le_bytes().to_vec())
            .find(|k| m.partition(k) == 0)
            .unwrap();
        let target = Target {
            partition: 0,
            epoch: m.epoch,
        };
        assert_eq!(route(&m, 1, 0, &key, target, false), Ok(Route::Here));
        assert_eq!(
            route(&m, 1, 0, &key, target, true),
            Ok(Route::Elsewhere),
            "the leaving head answers no read"
        );
        assert_eq!(route(&m, 2, 0, &key, target, true), Ok(Route::Here));
    }
}
