//! Self-healing (issue 20) on three node processes (replication factor 3) under the
//! nemesis workload: a node killed and started again rejoins its chains as syncing,
//! catches up with only what changed while it was away (compared by version), and serves
//! again with no command; every history is linearizable and every replica holds the same
//! objects and versions at the end.

mod common;

#[path = "common/cluster_bed.rs"]
mod cluster_bed;

#[path = "../node/cluster/tests/common/mod.rs"]
mod etcd;

use std::time::Duration;

use cluster_bed::*;
use common::nemesis::*;
use hotshard_net::blocking::BlockingClient;
use hotshard_placement::{ReplicaState, ShardMap};

fn seeds(bed: &Bed) -> Vec<String> {
    bed.nodes.iter().map(|n| n.addr(0)).collect()
}

/// Chains whose replicas are all serving.
fn whole_chains(map: &ShardMap, replication: usize) -> usize {
    map.chains
        .iter()
        .filter(|c| {
            c.replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Serving)
                .count()
                == replication
        })
        .count()
}

/// Writes `count` objects of `len` bytes named `prefix-N` through any node.
fn write_objects(bed: &Bed, prefix: &str, count: usize, len: usize) -> Vec<Vec<u8>> {
    let mut c = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(2)).unwrap();
    (0..count)
        .map(|i| {
            let key = format!("{prefix}-{i}").into_bytes();
            let value = vec![(i % 251) as u8; len];
            let mut tries = 0;
            while let Err(e) = c.put(&key, &value) {
                tries += 1;
                assert!(tries < 50, "put {}: {e:?}", String::from_utf8_lossy(&key));
                std::thread::sleep(Duration::from_millis(100));
            }
            key
        })
        .collect()
}

#[test]
fn a_killed_node_comes_back_resyncs_what_changed_and_serves_again() {
    let mut bed = Bed::start("heal", 3, 3, 1, &[]);
    let partitions = bed.map().chains.len();
    let before = write_objects(&bed, "before", 300, 4096);
    let run = "heal";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), seeds(&bed));
    std::thread::sleep(Duration::from_secs(2));

    bed.nodes[1].kill9();
    eventually(Duration::from_secs(15), "the lost node's chains repaired", || {
        whole_chains(&bed.map(), 2) == partitions
    });
    // Written while it is away: new keys, and some of the old ones again.
    let away = write_objects(&bed, "away", 60, 4096);
    let rewritten = write_objects(&bed, "before", 40, 4096);

    bed.restart(1);
    let took = eventually(Duration::from_secs(60), "every chain whole again", || {
        let map = bed.map();
        let states = |s| {
            map.chains
                .iter()
                .flat_map(|c| &c.replicas)
                .filter(|r| r.state == s)
                .count()
        };
        eprintln!(
            "epoch {}: {} serving, {} syncing, {} offline",
            map.epoch,
            states(ReplicaState::Serving),
            states(ReplicaState::Syncing),
            states(ReplicaState::Offline)
        );
        whole_chains(&map, 3) == partitions
    });
    eprintln!("heal: every chain serving on three replicas {took:?} after the restart");
    std::thread::sleep(Duration::from_secs(2));
    verify_run(run, load, &seeds(&bed), &keys, || bed.logs());
    let all: Vec<Vec<u8>> = before.iter().chain(&away).cloned().collect();
    replicas_agree(&seeds(&bed), &all);

    // Only what changed moved: the keys written while the node was away (and the
    // workload's), not the 300 it already had.
    let copied = bed.node_metric(1, "hotshard_sync_objects_copied_total");
    let unchanged = bed.node_metric(1, "hotshard_sync_unchanged_total");
    let bytes = bed.node_metric(1, "hotshard_sync_bytes_copied_total");
    eprintln!("heal: {copied} objects ({bytes} bytes) copied, {unchanged} found unchanged");
    assert!(
        copied >= (away.len() + rewritten.len()) as f64,
        "{copied} copied: fewer than were written while away"
    );
    assert!(
        copied < (away.len() + rewritten.len() + 120) as f64,
        "{copied} copied: more than changed"
    );
    assert!(unchanged >= 200.0, "{unchanged} compared equal");
}
