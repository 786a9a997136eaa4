//! The acting coordinator against a real etcd: it forms the map only once the expected
//! nodes registered, takes a lost node's replicas offline (chain versions and the epoch
//! grow), and another coordinator carries on when it dies. Node ids are unique among live
//! nodes.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hotshard_cluster::coordinator::{read_map, run_coordinator, CoordinatorConfig};
use hotshard_cluster::registration::{register, NodeRecord, Registration};
use hotshard_cluster::{cluster_status, ClusterError, ClusterKeys};
use hotshard_placement::{health, ReplicaState, ShardMap};

const TTL: i64 = 2;

fn record(id: u32) -> NodeRecord {
    NodeRecord {
        id,
        addr: format!("10.0.0.{id}:7400"),
        shards: vec![format!("10.0.0.{id}:7400")],
        lease: 0,
    }
}

fn config(keys: &ClusterKeys, name: &str) -> CoordinatorConfig {
    CoordinatorConfig {
        keys: keys.clone(),
        name: name.into(),
        lease_ttl_secs: TTL,
        expect_nodes: 3,
        replication: 3,
        partition_bits: 4,
        check_every: Duration::from_millis(200),
        down_out: Duration::from_secs(600),
        max_syncing_per_node: 128,
    }
}

/// Polls the map in etcd until `ok` holds, for at most `within`.
async fn wait_for_map(
    client: &etcd_client::Client,
    keys: &ClusterKeys,
    within: Duration,
    ok: impl Fn(&ShardMap) -> bool,
) -> (ShardMap, Duration) {
    let started = Instant::now();
    loop {
        if let Some((map, _)) = read_map(client, keys).await.unwrap() {
            if ok(&map) {
                return (map, started.elapsed());
            }
        }
        assert!(
            started.elapsed() < within,
            "the map did not reach the expected state within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offline_nodes(map: &ShardMap) -> BTreeSet<u32> {
    map.chains
        .iter()
        .flat_map(|c| c.replicas.iter())
        .filter(|r| r.state == ReplicaState::Offline)
        .map(|r| map.shards[r.shard as usize].node)
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn the_coordinator_forms_the_map_repairs_it_and_hands_over() {
    let etcd = common::Etcd::start();
    let client = common::connect(&etcd.endpoint).await;
    let keys = ClusterKeys::new("coordinator-test").unwrap();

    let mut nodes: Vec<Registration> = Vec::new();
    for id in [1, 2] {
        nodes.push(register(&client, &keys, record(id), TTL).await.unwrap());
    }
    // The same id again while its owner lives: refused.
    match register(&client, &keys, record(2), TTL).await {
        Err(ClusterError::NodeIdTaken(2)) => {}
        Err(e) => panic!("a second node 2: {e}"),
        Ok(_) => panic!("a second node 2 was registered"),
    }

    let a = tokio::spawn(run_coordinator(client.clone(), config(&keys, "a")));
    // Two of the three expected nodes: no cluster yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        read_map(&client, &keys).await.unwrap().is_none(),
        "formed with 2 of 3 nodes"
    );

    nodes.push(register(&client, &keys, record(3), TTL).await.unwrap());
    let (map, _) = wait_for_map(&client, &keys, Duration::from_secs(10), |_| true).await;
    assert_eq!(map.epoch, 1);
    assert_eq!(map.chains.len(), 16);
    assert!(map.chains.iter().all(|c| c.replicas.len() == 3 && c.version == 1));
    assert_eq!(health(&map.chains, 3), Default::default());

    // Node 2 stops renewing (killed): its replicas go offline within its TTL and a check.
    nodes[1].lease.stop_renewing();
    let (map, took) = wait_for_map(&client, &keys, Duration::from_secs(10), |m| m.epoch > 1).await;
    assert_eq!(offline_nodes(&map), BTreeSet::from([2]));
    assert!(map.chains.iter().all(|c| c.version == 2));
    assert_eq!(health(&map.chains, 3).degraded.len(), 16);
    assert!(
        took <= Duration::from_secs(TTL as u64 + 2),
        "repair took {took:?}"
    );
    let status = cluster_status(&client, &keys, "coordinator-test", 3)
        .await
        .unwrap();
    assert_eq!(status.coordinator.as_deref(), Some("a"));
    assert_eq!(status.epoch, Some(2));
    assert_eq!(status.degraded.len(), 16);
    let by_id = |id: u32| status.nodes.iter().find(|n| n.id == id).unwrap().clone();
    assert!(!by_id(2).alive && by_id(1).alive && by_id(3).alive);
    assert_eq!(by_id(2).chains.offline, 16);
    let (n1, n3) = (by_id(1).chains, by_id(3).chains);
    // Two serving replicas per chain: each chain has one head and one tail among 1 and 3.
    assert_eq!(
        (n1.head + n3.head, n1.tail + n3.tail, n1.middle + n3.middle),
        (16, 16, 0)
    );
    assert!(status.to_string().contains("chains degraded: 16, unavailable: 0"));

    // Coordinator a dies; b, waiting, acts once a's lease expires, and repairs the next
    // loss.
    let b = tokio::spawn(run_coordinator(client.clone(), config(&keys, "b")));
    a.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    nodes[0].lease.stop_renewing();
    let (map, _) = wait_for_map(&client, &keys, Duration::from_secs(15), |m| m.epoch > 2).await;
    assert_eq!(offline_nodes(&map), BTreeSet::from([1, 2]));
    // Node 3 alone serves every chain, as their head and tail.
    assert!((0..16).all(|p| map.owner(p).is_some_and(|o| o.node == 3)));
    let status = cluster_status(&client, &keys, "coordinator-test", 3)
        .await
        .unwrap();
    assert_eq!(status.coordinator.as_deref(), Some("b"));
    b.abort();
}
