//! Expiry across a chain whose nodes' clocks disagree (issue 30, item 5): the head's clock
//! alone decides when an object has expired. Node 2's expiry clock runs 8 s behind the
//! others' (a planted fault, `HOTSHARD_PLANTED_CLOCK_OFFSET_MS`). Every replica answers an
//! expiring object alike while the head holds it live, whatever its own clock says; once
//! the head has answered it absent, no replica answers it live; and an EX given to a
//! node's RESP front is taken by the head's clock, not by the front's.

mod common;

#[path = "common/cluster_bed.rs"]
mod cluster_bed;

#[path = "../node/cluster/tests/common/mod.rs"]
mod etcd;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_bed::*;
use common::nemesis::held_by_replicas;
use hotshard_net::blocking::BlockingClient;
use hotshard_net::expiry::expires_in;
use hotshard_net::{Request, Status, Target};
use hotshard_placement::ShardMap;

/// How far behind node 2's expiry clock runs.
const SLOW_BY_MS: i64 = 8_000;

fn real_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Keys `prefix-N` whose chain head is (or is not) on `node`, with `node` in the chain.
fn keys_headed(map: &ShardMap, prefix: &str, node: u32, by_it: bool, count: usize) -> Vec<Vec<u8>> {
    (0..)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .filter(|k| {
            let p = map.partition(k);
            let in_chain = map
                .chain(p)
                .unwrap()
                .replicas
                .iter()
                .any(|r| map.shards[r.shard as usize].node == node);
            in_chain && map.owner(p).is_some_and(|o| (o.node == node) == by_it)
        })
        .take(count)
        .collect()
}

/// The expiry (Unix ms) the head of `key`'s chain holds for it.
fn expiry_at_head(c: &mut BlockingClient, map: &ShardMap, key: &[u8]) -> u64 {
    let partition = map.partition(key);
    let head = map.owner(partition).unwrap();
    let stat = Request::Stat {
        key: key.to_vec(),
        target: Target {
            partition,
            epoch: map.epoch,
        },
    };
    let (r, _) = c.call_at(&head.addr, &stat, &[]).unwrap();
    assert_eq!(r.status(), Status::Ok, "stat at the head");
    r.expires_ms
}

#[test]
fn the_heads_clock_alone_decides_when_an_object_has_expired() {
    let slow = [("HOTSHARD_PLANTED_CLOCK_OFFSET_MS", "-8000")];
    assert_eq!(slow[0].1.parse::<i64>().unwrap(), -SLOW_BY_MS);
    let bed = Bed::start_with_env_on("clocks", 3, 3, 1, &slow, 2);
    let mut c = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(5)).unwrap();
    let map = c.shard_map().clone();
    let slow_node = bed.node_id(2);

    // 1. Chains headed by the slow node: an object given 4 s there expires 4 s before now
    // by the other nodes' clocks. Its replicas answer it live, as the head does, until the
    // head's burial comes down (before: they answered NotFound by their own clocks).
    for key in keys_headed(&map, "slow-head", slow_node, true, 40) {
        let version = c.put_expiring(&key, b"live", expires_in(4_000)).unwrap();
        for (addr, status, v, body) in held_by_replicas(&mut c, &map, &key) {
            assert_eq!(
                (status, v, body.as_slice()),
                (Status::Ok, version, &b"live"[..]),
                "{addr} answered {} unlike its chain's head",
                String::from_utf8_lossy(&key)
            );
        }
    }

    // 2. Chains headed by a node on time, with the slow node after it: once the head has
    // answered an expired object absent, the slow replica (for which it has 8 s to go) no
    // longer answers it live: the head buried it down the chain before answering.
    let keys = keys_headed(&map, "slow-replica", slow_node, false, 40);
    let ttl = 1_500;
    for key in &keys {
        c.put_expiring(key, b"short", expires_in(ttl)).unwrap();
    }
    // From the last write's answer: every key's expiry (taken by its head when it wrote
    // it) is before then + ttl. (From the first write, a slow machine read the last keys
    // before they had expired, and their heads rightly answered them live.)
    let written = Instant::now();
    let left = Duration::from_millis(ttl + 100).saturating_sub(written.elapsed());
    std::thread::sleep(left);
    for key in &keys {
        let replicas = held_by_replicas(&mut c, &map, key);
        let head = map.owner(map.partition(key)).unwrap().addr.clone();
        assert_eq!(replicas[0].0, head, "the chain's head is asked first");
        for (addr, status, _, _) in replicas {
            assert_eq!(
                status,
                Status::NotFound,
                "{addr} answered {} after its head answered it absent",
                String::from_utf8_lossy(key)
            );
        }
    }

    // 3. The slow node's RESP front proxies a SET with PX and an EXPIRE to heads on time:
    // the expiry is the head's now plus the time given (before: the front's now, 8 s
    // short).
    let front = format!("127.0.0.1:{}", bed.nodes[2].port + 2);
    let proxied = keys_headed(&map, "proxied", slow_node, false, 2);
    let (set_key, expire_key) = (
        String::from_utf8(proxied[0].clone()).unwrap(),
        String::from_utf8(proxied[1].clone()).unwrap(),
    );
    let before = real_now_ms();
    assert_eq!(resp(&front, &["SET", &set_key, "v", "PX", "60000"]), "+OK");
    assert_eq!(resp(&front, &["SET", &expire_key, "v"]), "+OK");
    assert_eq!(resp(&front, &["EXPIRE", &expire_key, "60"]), ":1");
    let after = real_now_ms();
    for key in &proxied {
        let at = expiry_at_head(&mut c, &map, key);
        assert!(
            (before + 60_000..=after + 60_000).contains(&at),
            "{} expires at {at}, not 60 s after it was set ({before}..{after}): off by {} ms",
            String::from_utf8_lossy(key),
            at as i64 - (before + 60_000) as i64
        );
    }
    // An absolute expiry is kept as given.
    let at = real_now_ms() + 90_000;
    assert_eq!(
        resp(&front, &["SET", &set_key, "v", "PXAT", &at.to_string()]),
        "+OK"
    );
    assert_eq!(expiry_at_head(&mut c, &map, &proxied[0]), at);
}

/// A replica that comes back holding an older live version of a key whose newer version
/// expired at the chain's head and is not yet buried there (a planted fault: node 0 buries
/// nothing) learns that the key is absent: the resync's read of it at the head answers
/// NotFound, and the replica applies a tombstone at the version the head's manifest named
/// (before: it took NotFound for "deleted since", kept its older copy, and served it).
#[test]
fn a_resync_that_finds_an_expired_object_at_its_source_keeps_no_older_copy() {
    let no_burial = [("HOTSHARD_PLANTED_BUG", "no-expiry-burial")];
    let mut bed = Bed::start_with_env_on("resyncexp", 2, 2, 1, &no_burial, 0);
    let mut c = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(5)).unwrap();
    let map = c.shard_map().clone();
    let (a, b) = (bed.node_id(0), bed.node_id(1));
    let key = keys_headed(&map, "resync", a, true, 1).remove(0);
    let partition = map.partition(&key);
    let old = c.put(&key, b"old").unwrap();

    // Node 1 goes away; the key is written again at node 0 alone, expiring at once.
    bed.nodes[1].kill9();
    let serving = |m: &ShardMap, node: u32| {
        m.chain(partition).unwrap().replicas.iter().any(|r| {
            r.state == hotshard_placement::ReplicaState::Serving && m.shards[r.shard as usize].node == node
        })
    };
    eventually(Duration::from_secs(20), "node 1 out of the key's chain", || {
        !serving(&bed.map(), b)
    });
    let mut new = None;
    eventually(Duration::from_secs(20), "the key written at node 0 alone", || {
        let mut c = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(2)).unwrap();
        new = c.put_expiring(&key, b"new", expires_in(200)).ok();
        new.is_some()
    });
    assert!(new.unwrap() > old);
    std::thread::sleep(Duration::from_millis(400));

    // Node 1 back: once it serves the chain again, neither replica answers the key.
    bed.restart(1);
    eventually(
        Duration::from_secs(60),
        "node 1 serving the key's chain again",
        || {
            let m = bed.map();
            serving(&m, a) && serving(&m, b)
        },
    );
    let map = bed.map();
    let mut c = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(5)).unwrap();
    let replicas = held_by_replicas(&mut c, &map, &key);
    assert_eq!(replicas.len(), 2);
    for (addr, status, version, body) in replicas {
        assert_eq!(
            status,
            Status::NotFound,
            "{addr} answered version {version} ({}) of a key whose newest version expired",
            String::from_utf8_lossy(&body)
        );
    }
}
