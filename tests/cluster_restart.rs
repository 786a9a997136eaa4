//! Whole-cluster restarts on three node processes (replication factor 3) under the nemesis
//! workload: every node killed (kill -9) and started again in a random order, and etcd down
//! for three times the lease. A chain that lost every serving replica keeps a record of the
//! last ones (stranded) and comes back through the first of them to return; before that
//! rule every chain stayed unavailable for good. Histories are checked for linearizability,
//! objects written before the faults are read back, and the serving replicas agree.

mod common;

#[path = "common/cluster_bed.rs"]
mod cluster_bed;

#[path = "../node/cluster/tests/common/mod.rs"]
mod etcd;

use std::time::{Duration, Instant};

use cluster_bed::*;
use common::nemesis::*;
use hotshard_net::blocking::BlockingClient;

/// Whether a PUT of every one of `keys` succeeds now (through any seed).
fn every_put_works(bed: &Bed, keys: &[Vec<u8>]) -> bool {
    let Ok(mut c) = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(2)) else {
        return false;
    };
    keys.iter().all(|k| c.put(k, b"back").is_ok())
}

/// One key per partition of a sample spread over every chain's head.
fn probe_keys(bed: &Bed) -> Vec<Vec<u8>> {
    let map = bed.map();
    let mut seen = std::collections::BTreeSet::new();
    (0..100_000)
        .map(|i| format!("probe-{i}").into_bytes())
        .filter(|k| seen.insert(map.owner(map.partition(k)).map(|o| o.node)))
        .take(8)
        .chain((0..64).map(|i| format!("probe-spread-{i}").into_bytes()))
        .collect()
}

/// Every object written before reads back with its value.
fn objects_intact(bed: &Bed, objects: &[Vec<u8>], len: usize) {
    let mut c = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(5)).unwrap();
    for (i, key) in objects.iter().enumerate() {
        let got = c.get(key, None).unwrap_or_else(|e| panic!("get {i}: {e:?}"));
        assert_eq!(
            got.map(|(v, _)| v),
            Some(vec![(i % 251) as u8; len]),
            "object {i} after the restart"
        );
    }
}

/// A seed for the order of kills and starts, printed so that a failing order can be
/// replayed (`HOTSHARD_TEST_SEED`).
fn order_seed() -> u64 {
    let seed = std::env::var("HOTSHARD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u64
        });
    eprintln!("order seed {seed} (HOTSHARD_TEST_SEED={seed} replays it)");
    seed
}

fn shuffled(n: usize, rng: &mut hotshard_nvme::SplitMix64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.next_u64() as usize % (i + 1));
    }
    order
}

#[test]
fn every_node_killed_under_load_and_started_in_any_order_serves_again_with_nothing_lost() {
    let mut rng = hotshard_nvme::SplitMix64::new(order_seed());
    let mut bed = Bed::start("restart", 3, 3, 1, &[]);
    let partitions = bed.map().chains.len();
    let objects = bed.write_objects("before", 200, 1024);
    let run = "restart";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    std::thread::sleep(Duration::from_secs(1));

    // Killed one after another, each past the lease (2 s) so that the coordinator takes
    // them offline in turn: the last one killed is every chain's last serving replica.
    let kills = shuffled(3, &mut rng);
    for (n, &i) in kills.iter().enumerate() {
        bed.nodes[i].kill9();
        if n + 1 < kills.len() {
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    eventually(Duration::from_secs(15), "every chain unavailable", || {
        let (_, out) = bed.cluster_cli(&["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .ok()
            .and_then(|s| s["unavailable"].as_array().map(Vec::len))
            == Some(partitions)
    });
    let (_, status) = bed.cluster_cli(&["status"]);
    eprintln!("{status}");
    let last = bed.node_id(kills[2]);
    assert!(
        status.contains(&format!("node {last} ({partitions} chains)")),
        "status names the node every chain waits for:\n{status}"
    );

    // Started again in a random order, a second apart.
    let starts = shuffled(3, &mut rng);
    eprintln!("killed {kills:?}, starting {starts:?}");
    for (n, &i) in starts.iter().enumerate() {
        bed.restart(i);
        if n + 1 < starts.len() {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let started = Instant::now();
    let probes = probe_keys(&bed);
    let back = eventually(
        Duration::from_secs(30),
        "writes back on every chain probed",
        || every_put_works(&bed, &probes),
    );
    eprintln!("restart: writes back {back:?} after the last node started");
    assert!(back <= Duration::from_secs(10), "writes back only after {back:?}");
    let whole = eventually(Duration::from_secs(120), "every chain whole again", || {
        whole_chains(&bed.map(), 3) == partitions
    });
    eprintln!(
        "restart: every chain whole {:?} after the last start",
        started.elapsed().max(whole)
    );
    std::thread::sleep(Duration::from_secs(1));
    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
    objects_intact(&bed, &objects, 1024);
    replicas_agree(&bed.seeds(), &objects);
}

#[test]
fn etcd_down_twice_for_three_leases_and_back_the_cluster_serves_again_by_itself() {
    // 1,024 partitions: the resync after it is of every chain, and CI has two cores.
    let mut bed = Bed::start_with_partition_bits("etcdout", 3, 3, 10);
    let partitions = bed.map().chains.len();
    let objects = bed.write_objects("before", 200, 1024);
    let run = "etcdout";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    std::thread::sleep(Duration::from_secs(1));

    // Three leases (2 s each) without etcd: every node fences itself, and when etcd is back
    // the nodes may find their leases gone and register anew (new incarnations) all at once.
    // Twice, 4 s apart: etcd extends leases when it starts, so each node's old record may
    // still be there while it registers again. A node that took its own old record for a
    // live twin's waited for it, counted that wait across the second outage, and stopped:
    // every node did (the soak found it; this failed on its first run before).
    bed.etcd.restart(Duration::from_secs(6));
    std::thread::sleep(Duration::from_secs(4));
    bed.etcd.restart(Duration::from_secs(6));
    let probes = probe_keys(&bed);
    let back = eventually(
        Duration::from_secs(30),
        "writes back on every chain probed",
        || every_put_works(&bed, &probes),
    );
    eprintln!("etcdout: writes back {back:?} after etcd");
    let whole = eventually(Duration::from_secs(120), "every chain whole again", || {
        whole_chains(&bed.map(), 3) == partitions
    });
    eprintln!("etcdout: every chain whole {whole:?} after writes came back");
    std::thread::sleep(Duration::from_secs(1));
    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
    objects_intact(&bed, &objects, 1024);
    replicas_agree(&bed.seeds(), &objects);
}

/// The last serving replica of every chain is on a node whose disk is then replaced (a new
/// node id on its listeners): nothing that holds every acknowledged write can come back.
/// The chains stay unavailable, `cluster status` names the node they wait for, and only an
/// operator's `cluster accept-loss --node ID` serves them again, from what the other nodes
/// hold (everything written before the first kill).
#[test]
fn chains_whose_last_holder_is_gone_for_good_wait_for_an_operator_to_accept_the_loss() {
    let mut bed = Bed::start_with_partition_bits("lost", 3, 3, 8);
    let partitions = bed.map().chains.len();
    let objects = bed.write_objects("before", 100, 512);
    for i in 0..3 {
        bed.nodes[i].kill9();
        if i < 2 {
            std::thread::sleep(Duration::from_secs(3));
        }
    }
    let gone = bed.node_id(2);
    bed.restart(0);
    bed.restart(1);
    bed.wipe(2);
    assert_ne!(bed.node_id(2), gone);
    let probes = probe_keys(&bed);
    std::thread::sleep(Duration::from_secs(5));
    assert!(!every_put_works(&bed, &probes), "served without the last holder");
    let (_, status) = bed.cluster_cli(&["status"]);
    assert!(
        status.contains(&format!("node {gone} ({partitions} chains)")),
        "{status}"
    );
    let (ok, said) = bed.cluster_cli(&["accept-loss", "--node", &gone.to_string()]);
    assert!(ok, "{said}");
    assert!(
        said.contains(&format!("accepted the loss of {partitions} chains")),
        "{said}"
    );
    let back = eventually(
        Duration::from_secs(30),
        "writes back once the loss is accepted",
        || every_put_works(&bed, &probes),
    );
    eprintln!("lost: writes back {back:?} after accept-loss");
    eventually(Duration::from_secs(120), "every chain whole again", || {
        whole_chains(&bed.map(), 3) == partitions
    });
    objects_intact(&bed, &objects, 512);
    replicas_agree(&bed.seeds(), &objects);
    let (ok, said) = bed.cluster_cli(&["accept-loss"]);
    assert!(ok && said.contains("nothing to accept"), "{said}");
}

/// A head that took a write and never passed it on (the planted fault `stop-at-head`),
/// killed and started again while no coordinator acts: etcd's map still names it the head
/// under its previous registration, and its dirty-key set is gone. It answers nothing
/// until a map records its new registration; before that rule it answered the write no
/// client saw acknowledged (which the chain then undid: a read that went back in time).
#[test]
fn a_restarted_node_answers_nothing_until_the_map_records_its_new_registration() {
    let env = [("HOTSHARD_PLANTED_BUG", "stop-at-head:lost,gone")];
    let mut bed = Bed::start_with_args("incarn", 3, 3, 1, &env, 2, &[]);
    let head = bed.node_id(0);
    let map = bed.map();
    let lost = (0..100_000)
        .map(|i| format!("lost-{i}").into_bytes())
        .find(|k| map.owner(map.partition(k)).is_some_and(|o| o.node == head))
        .unwrap();
    let owner = map.owner(map.partition(&lost)).unwrap().addr.clone();
    let mut c = BlockingClient::connect(&bed.nodes[1].addr(0), Duration::from_secs(2)).unwrap();
    assert!(
        c.put(&lost, b"never acknowledged").is_err(),
        "stopped at the head"
    );

    for coordinator in &mut bed.coordinators {
        let _ = coordinator.0.kill();
        let _ = coordinator.0.wait();
    }
    bed.restart(0);
    // Its old registration lives until its lease runs out; then the new process registers.
    let log = bed.dirs[0].path().join("node.log");
    eventually(Duration::from_secs(20), "node 0 registered again", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("registered in cluster"))
    });
    // Registered, the map posted, the lease confirmed: still, nothing answered.
    std::thread::sleep(Duration::from_secs(1));
    assert!(bed.node_metric(0, "hotshard_lease_age_seconds") < 2.0);
    let get = hotshard_net::Request::Get {
        key: lost.clone(),
        range: None,
        target: hotshard_net::Target {
            partition: map.partition(&lost),
            epoch: map.epoch,
        },
    };
    let mut direct = BlockingClient::connect(&owner, Duration::from_secs(2)).unwrap();
    let (resp, body) = direct.call_at(&owner, &get, &[]).unwrap();
    assert_eq!(
        resp.status(),
        hotshard_net::Status::Busy,
        "answered under its previous registration: {:?}",
        String::from_utf8_lossy(&body)
    );
    assert!(bed.node_metric(0, "hotshard_fenced") >= 1.0);

    // The coordinator back: it records the registration, the node resyncs, and the write
    // no client saw acknowledged is nowhere.
    bed.coordinators[0] = Coordinator::forming(&bed.etcd.endpoint, "incarn", 3, 3);
    let partitions = map.chains.len();
    eventually(Duration::from_secs(60), "every chain whole again", || {
        whole_chains(&bed.map(), 3) == partitions
    });
    replicas_agree(&bed.seeds(), std::slice::from_ref(&lost));
    let mut c = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(2)).unwrap();
    assert_eq!(c.get(&lost, None).unwrap(), None);
}
