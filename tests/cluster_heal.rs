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

/// One line on where the moves stand: epoch, chains done, replicas by state, load per shard.
fn moves(map: &ShardMap) -> String {
    let count = |s| {
        map.chains
            .iter()
            .flat_map(|c| &c.replicas)
            .filter(|r| r.state == s)
            .count()
    };
    format!(
        "epoch {} whole {} syncing {} leaving {} offline {} nodes {:?} loads {:?}",
        map.epoch,
        whole_chains(map, 3),
        count(ReplicaState::Syncing),
        count(ReplicaState::Leaving),
        count(ReplicaState::Offline),
        map.shards.iter().map(|s| s.node).collect::<Vec<_>>(),
        hotshard_placement::healing::replicas_per_shard(map)
    )
}

#[test]
fn a_killed_node_comes_back_resyncs_what_changed_and_serves_again() {
    let mut bed = Bed::start("heal", 3, 3, 1, &[]);
    let partitions = bed.map().chains.len();
    let before = bed.write_objects("before", 300, 4096);
    let run = "heal";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    std::thread::sleep(Duration::from_secs(2));

    bed.nodes[1].kill9();
    eventually(Duration::from_secs(15), "the lost node's chains repaired", || {
        whole_chains(&bed.map(), 2) == partitions
    });
    // Written while it is away: new keys, and some of the old ones again.
    let away = bed.write_objects("away", 60, 4096);
    let rewritten = bed.write_objects("before", 40, 4096);

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
    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
    let all: Vec<Vec<u8>> = before.iter().chain(&away).cloned().collect();
    replicas_agree(&bed.seeds(), &all);

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
    assert_eq!(bed.node_metric(1, "hotshard_sync_chains_to_go"), 0.0);
    assert_eq!(bed.node_metric(1, "hotshard_syncing_chains"), 0.0);
}

/// Replicas per shard of the nodes in `on` are within 5 % (or one replica) of even, and no
/// other shard holds any.
fn balanced_over(map: &ShardMap, on: &[u32]) -> bool {
    let load = hotshard_placement::healing::replicas_per_shard(map);
    let mine: Vec<usize> = map
        .shards
        .iter()
        .zip(&load)
        .filter(|(s, _)| on.contains(&s.node))
        .map(|(_, &l)| l)
        .collect();
    let others: usize = map
        .shards
        .iter()
        .zip(&load)
        .filter(|(s, _)| !on.contains(&s.node))
        .map(|(_, &l)| l)
        .sum();
    let mean = mine.iter().sum::<usize>() as f64 / mine.len().max(1) as f64;
    // Every node named is in the map with chains of its own (a node whose shards are not
    // in the map yet would pass as "balanced" over the others).
    let present = on.iter().all(|n| map.shards.iter().any(|s| s.node == *n));
    present
        && mine.iter().all(|&l| l > 0)
        && others == 0
        && mine
            .iter()
            .all(|&l| (l as f64 - mean).abs() <= (0.05 * mean).max(1.0))
}

/// The acting coordinator's name.
fn acting_coordinator(bed: &Bed) -> Option<String> {
    let (_, out) = bed.cluster_cli(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&out).ok()?;
    s["coordinator"].as_str().map(str::to_string)
}

/// A fourth node joins a three-node cluster under load and gets its share, the acting
/// coordinator killed in the middle of the move (the other one finishes it); then a node
/// is drained (bad requests refused first) and stopped once removable.
///
/// Beside the workload, every write of `ReadEverywhere`'s keys is read back at each serving
/// replica. With the workload's listed keys this test found a stale read in one CI run in
/// three (bench/results/violation-grow-session19-key6.txt, ignored for session 19): a
/// leaving replica dropped from its chain while it passed a record on acknowledged the
/// record for the replicas after it. `a_replica_dropped_while_passing_a_record_on_...`
/// plants the timing.
#[test]
fn a_node_joins_then_one_is_drained_and_removed_under_load() {
    let mut bed = Bed::start("grow", 3, 3, 2, &[]);
    let partitions = bed.map().chains.len();
    let objects = bed.write_objects("obj", 200, 4096);
    let run = "grow";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    let everywhere = ReadEverywhere::start(bed.seeds(), read_everywhere_keys(run, 64), 4);
    std::thread::sleep(Duration::from_secs(1));

    let fourth = bed.add_node();
    let ids: Vec<u32> = (0..4).map(|i| bed.node_id(i)).collect();
    eventually(
        Duration::from_secs(30),
        "chains syncing onto the new node",
        || {
            let map = bed.map();
            map.chains
                .iter()
                .flat_map(|c| &c.replicas)
                .any(|r| r.state == ReplicaState::Syncing)
        },
    );
    let acting = acting_coordinator(&bed).expect("a coordinator acts");
    let i: usize = acting.trim_start_matches('c').parse().unwrap();
    let _ = bed.coordinators[i].0.kill();
    let _ = bed.coordinators[i].0.wait();
    eprintln!("grow: coordinator {acting} killed in the middle of the move");
    let mut last = std::time::Instant::now();
    let took = eventually(Duration::from_secs(120), "the new node holds its share", || {
        let map = bed.map();
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("grow: {}", moves(&map));
            last = std::time::Instant::now();
        }
        whole_chains(&map, 3) == partitions && balanced_over(&map, &ids)
    });
    eprintln!(
        "grow: node {} joined; balanced {took:?} after it started",
        ids[fourth]
    );

    // Bad requests, refused with a reason and changing nothing.
    let (ok, said) = bed.cluster_cli(&["drain", "12345"]);
    assert!(!ok && said.contains("not in the cluster"), "{said}");
    let (ok, said) = bed.cluster_cli(&["drain", &ids[1].to_string()]);
    assert!(ok, "{said}");
    let (ok, said) = bed.cluster_cli(&["drain", &ids[2].to_string()]);
    assert!(!ok && said.contains("one drain at a time"), "{said}");
    let took = eventually(Duration::from_secs(120), "node 1 drained", || {
        let map = bed.map();
        whole_chains(&map, 3) == partitions && balanced_over(&map, &[ids[0], ids[2], ids[3]])
    });
    let (_, status) = bed.cluster_cli(&["status"]);
    assert!(status.contains("drained: removable"), "{status}");
    eprintln!("grow: node {} drained in {took:?}", ids[1]);
    let (ok, said) = bed.cluster_cli(&["drain", &ids[2].to_string()]);
    assert!(!ok && said.contains("replication factor"), "{said}");
    bed.nodes[1].kill9();

    std::thread::sleep(Duration::from_secs(2));
    let live: Vec<String> = [0, 2, 3].iter().map(|&i| bed.nodes[i].addr(0)).collect();
    assert_read_everywhere(run, everywhere);
    verify_run(run, load, &live, &keys, |bad| bed.logs_and_history(bad));
    replicas_agree(&live, &objects);
}

/// Replicas slow to take the map that takes them out of their chains (a planted delay of
/// 600 ms in posting any map in which its node stops reading a partition, on one node of
/// the cluster while the others take maps at once; the `planted-faults` build) serve no stale read while a fourth node joins
/// and chains move onto it under the workload. When a move dropped a serving replica in
/// one map change, the checker found stale reads here (see RELIABILITY.md); it leaves in
/// two steps now (leaving, then dropped once its node reports the map that made it so).
#[test]
fn replicas_slow_to_take_their_removal_serve_no_stale_read() {
    let slow = [("HOTSHARD_PLANTED_BUG", "slow-to-leave:600")];
    let mut bed = Bed::start_with_env_on("slowleave", 3, 3, 1, &slow, 0);
    let partitions = bed.map().chains.len();
    let run = "slowleave";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    std::thread::sleep(Duration::from_secs(1));
    bed.add_node();
    let ids: Vec<u32> = (0..4).map(|i| bed.node_id(i)).collect();
    let mut last = std::time::Instant::now();
    let took = eventually(Duration::from_secs(120), "the new node holds its share", || {
        let map = bed.map();
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("slowleave: {}", moves(&map));
            last = std::time::Instant::now();
        }
        whole_chains(&map, 3) == partitions && balanced_over(&map, &ids)
    });
    eprintln!("slowleave: balanced {took:?} after the fourth node started");
    std::thread::sleep(Duration::from_secs(1));
    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
}

/// A replica dropped from its chain while it passes a record on does not acknowledge the
/// record for the replicas after it. Planted on every node (`leaving-hold:1500`): a leaving
/// replica waits 400 ms between applying a record and deciding where it goes, long enough
/// for the map that drops it to arrive, while a fourth node joins under the workload (each
/// chain that moves has its old replica leave from the middle, the new one at the tail).
/// When the replica decided by "nothing follows me" once outside the chain, it acknowledged
/// such records, and the new tail answered reads with the value before them
/// (bench/results/violation-grow-session19-key6.txt; this test found the same in 4 runs of
/// 4 without the fix, 3-4 stale reads each, and none in 4 with it).
#[test]
fn a_replica_dropped_while_passing_a_record_on_does_not_acknowledge_it() {
    let hold = [("HOTSHARD_PLANTED_BUG", "leaving-hold:1500")];
    let mut bed = Bed::start("leavehold", 3, 3, 1, &hold);
    let partitions = bed.map().chains.len();
    let run = "leavehold";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    let everywhere = ReadEverywhere::start(bed.seeds(), read_everywhere_keys(run, 64), 8);
    std::thread::sleep(Duration::from_secs(1));
    bed.add_node();
    let ids: Vec<u32> = (0..4).map(|i| bed.node_id(i)).collect();
    let took = eventually(Duration::from_secs(120), "the new node holds its share", || {
        let map = bed.map();
        whole_chains(&map, 3) == partitions && balanced_over(&map, &ids)
    });
    eprintln!("leavehold: balanced {took:?} after the fourth node started");
    std::thread::sleep(Duration::from_secs(1));
    assert_read_everywhere(run, everywhere);
    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
}

/// A record a middle replica applied and could not get acknowledged (its chain changed
/// while it held it) keeps its key dirty there until its predecessor has sent it again by
/// the new chain, since the replicas after it may not have it yet. Planted on every node
/// (`middle-hold:MS`): a serving replica with a successor waits MS between applying a
/// record and deciding where it goes, and MS more before answering "not acknowledged",
/// while a fourth node joins under writes and then one is drained and taken back, `cycles`
/// times or until a stale read is found (each moving chain changes version with records
/// held). `ReadsInFlight` reads the keys at every serving replica while they are written.
/// Returns the writes and reads answered and the stale reads.
fn reads_while_middles_hold_records(planted: &str, run: &str, cycles: usize) -> (usize, Vec<String>) {
    let mut bed = Bed::start(run, 3, 3, 1, &[("HOTSHARD_PLANTED_BUG", planted)]);
    let partitions = bed.map().chains.len();
    let reads = ReadsInFlight::start(bed.seeds(), read_everywhere_keys(run, 24), 4);
    std::thread::sleep(Duration::from_secs(1));
    bed.add_node();
    let ids: Vec<u32> = (0..4).map(|i| bed.node_id(i)).collect();
    let balanced = |bed: &Bed, over: &[u32]| {
        let map = bed.map();
        whole_chains(&map, 3) == partitions && balanced_over(&map, over)
    };
    eventually(Duration::from_secs(120), "the new node holds its share", || {
        balanced(&bed, &ids)
    });
    for cycle in 0..cycles {
        if reads.found() > 0 {
            eprintln!("{run}: stale reads found after {cycle} drain cycles");
            break;
        }
        let (ok, said) = bed.cluster_cli(&["drain", &ids[1].to_string()]);
        assert!(ok, "{said}");
        let others = [ids[0], ids[2], ids[3]];
        eventually(Duration::from_secs(120), "node 1 drained", || {
            balanced(&bed, &others)
        });
        let (ok, said) = bed.cluster_cli(&["undrain", &ids[1].to_string()]);
        assert!(ok, "{said}");
        eventually(Duration::from_secs(120), "node 1 back", || balanced(&bed, &ids));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (n, stale) = reads.finish();
    eprintln!(
        "{run}: {n} writes and reads answered, {} stale reads",
        stale.len()
    );
    (n, stale)
}

/// Measured: with the planted bug below, stale reads in 4 runs of 6 of one to two drain
/// cycles (2-17 each) and, drained until found, after 7, 0 and 1 cycles; with the parking,
/// none in 9 runs (session 21).
#[test]
#[ignore = "run by hand (--ignored): its drain and undrain cycles under planted 300 ms holds timed out once under CI's parallel load (node 1 back: not within 120 s, fresh clone of c7fd8ae)"]
fn a_record_abandoned_by_a_middle_replica_is_not_read_before_the_chain_has_it() {
    let (n, stale) = reads_while_middles_hold_records("middle-hold:300", "midhold", 3);
    assert!(n > 300, "too few writes and reads to mean anything: {n}");
    assert!(stale.is_empty(), "stale reads:\n{}", stale.join("\n"));
}

#[test]
#[ignore = "run by hand (--ignored), with the test above: a search of up to 16 drain cycles under planted holds, too slow for CI's parallel load"]
fn a_record_abandoned_and_made_clean_at_once_is_caught() {
    let (_, stale) = reads_while_middles_hold_records("middle-hold:300+abandoned-is-clean", "midclean", 16);
    assert!(
        !stale.is_empty(),
        "the planted bug (a key clean at once) was not caught"
    );
}

/// A node that stays dead past `--down-out` has its replicas rebuilt on the others; its
/// disk replaced (data directory emptied), it comes back as a new node and is filled.
#[test]
fn a_dead_node_is_rebuilt_elsewhere_and_a_wiped_one_filled_as_new() {
    let mut bed = Bed::start_with_args("rebuild", 4, 3, 1, &[], 2, &["--down-out", "3"]);
    let partitions = bed.map().chains.len();
    let objects = bed.write_objects("obj", 200, 4096);
    let run = "rebuild";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds()[..3].to_vec());
    std::thread::sleep(Duration::from_secs(1));

    let old_id = bed.node_id(3);
    bed.nodes[3].kill9();
    let others: Vec<u32> = (0..3).map(|i| bed.node_id(i)).collect();
    let took = eventually(
        Duration::from_secs(120),
        "the dead node's replicas rebuilt",
        || {
            let map = bed.map();
            whole_chains(&map, 3) == partitions && balanced_over(&map, &others)
        },
    );
    eprintln!("rebuild: node {old_id} rebuilt elsewhere {took:?} after its kill");

    bed.wipe(3);
    let new_id = bed.node_id(3);
    assert_ne!(new_id, old_id, "an emptied data directory is a new node");
    let mut all = others.clone();
    all.push(new_id);
    let mut last = std::time::Instant::now();
    let took = eventually(Duration::from_secs(120), "the new node filled", || {
        let map = bed.map();
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("rebuild: {}", moves(&map));
            last = std::time::Instant::now();
        }
        whole_chains(&map, 3) == partitions && balanced_over(&map, &all)
    });
    eprintln!("rebuild: node {new_id} (the wiped disk) filled {took:?} after it started");
    std::thread::sleep(Duration::from_secs(1));
    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
    replicas_agree(&bed.seeds(), &objects);
}

/// A key `prefix-N` whose chain node `node` heads, by `map`.
fn headed_by(map: &ShardMap, node: u32, prefix: &str) -> Vec<u8> {
    (0..100_000)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .find(|k| map.owner(map.partition(k)).is_some_and(|o| o.node == node))
        .expect("a key headed by the node")
}

/// Writes that reached one replica and no further (a head that "dies" right after its own
/// write: the planted fault `stop-at-head` of the `planted-faults` build), then that node killed and
/// started again: its copies are not the chain's, and the resync has the new head write
/// those keys again, so that every replica ends the same. A PUT the chain never had is
/// buried; a DELETE it never had is undone (the key's value written again).
#[test]
fn writes_that_stopped_at_a_dead_head_are_undone_when_it_returns() {
    let env = [("HOTSHARD_PLANTED_BUG", "stop-at-head:lost,gone")];
    let mut bed = Bed::start("diverge", 3, 3, 1, &env);
    let partitions = bed.map().chains.len();
    let head = bed.node_id(0);
    let map = bed.map();
    let (lost, gone) = (headed_by(&map, head, "lost"), headed_by(&map, head, "gone"));
    let mut c = BlockingClient::connect(&bed.nodes[1].addr(0), Duration::from_secs(2)).unwrap();
    c.put(&gone, b"kept")
        .expect("a PUT of gone-* goes down the chain");
    // Each reaches node 0 (the head) and stops there: not acknowledged.
    assert!(c.put(&lost, b"never acknowledged").is_err());
    assert!(c.delete(&gone).is_err());

    bed.nodes[0].kill9();
    eventually(Duration::from_secs(15), "chains repaired without node 0", || {
        whole_chains(&bed.map(), 2) == partitions
    });
    bed.restart(0);
    eventually(Duration::from_secs(60), "every chain whole again", || {
        whole_chains(&bed.map(), 3) == partitions
    });
    let seeds = bed.seeds();
    replicas_agree(&seeds, &[lost.clone(), gone.clone()]);
    let mut c = BlockingClient::connect(&seeds[0], Duration::from_secs(2)).unwrap();
    assert_eq!(
        c.get(&lost, None).unwrap(),
        None,
        "the PUT no client saw acknowledged is gone"
    );
    let value = c.get(&gone, None).unwrap().map(|(v, _)| v);
    assert_eq!(
        value.as_deref(),
        Some(&b"kept"[..]),
        "the DELETE no client saw acknowledged is undone"
    );
    // The stray PUT is undone only by a reassertion (the head buries it). The stray DELETE
    // by one too, or, where the returning node's engine no longer holds the tombstone
    // (forgotten: the key is then simply absent there; seen in every run here), by a copy
    // of the chain's version. Without the DELETE nothing is copied.
    let reasserted = bed.node_metric(0, "hotshard_sync_reasserted_total");
    let copied = bed.node_metric(0, "hotshard_sync_objects_copied_total");
    eprintln!("diverge: {reasserted} keys reasserted, {copied} copied");
    assert!(
        reasserted >= 1.0 && reasserted + copied >= 2.0,
        "{reasserted} reasserted, {copied} copied"
    );
}
