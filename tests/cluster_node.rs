//! A cluster node as a process against a real etcd and a `hotshard coordinator` process:
//! it keeps a node id with its data, registers under its lease, serves nothing until the
//! coordinator's map gives it partitions, serves them once it does, leaves the cluster at
//! once on a clean stop (its lease revoked: its chains go offline), and comes back as
//! itself on restart.

mod common;

#[path = "common/cluster_bed.rs"]
mod cluster_bed;

#[path = "../node/cluster/tests/common/mod.rs"]
mod etcd;

use std::process::{Command, Stdio};
use std::time::Duration;

use cluster_bed::*;
use common::*;
use hotshard_net::blocking::BlockingClient;

fn status(endpoint: &str) -> serde_json::Value {
    let out = Command::new(binary())
        .args([
            "cluster",
            "status",
            "--etcd",
            endpoint,
            "--cluster",
            "proc",
            "--replication",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn put_works(addr: &str, key: &[u8]) -> bool {
    BlockingClient::connect(addr, Duration::from_secs(2))
        .and_then(|mut c| c.put(key, b"value"))
        .is_ok()
}

/// `count` GETs naming `epoch`, pipelined on one connection: their statuses, and how long
/// until the last came back.
fn gets_naming_epoch(
    addr: &str,
    map: &hotshard_placement::ShardMap,
    epoch: u64,
    count: u64,
) -> (Vec<hotshard_net::Status>, Duration) {
    use hotshard_net::codec::{access_response, encode_request, parse_frame};
    use std::io::{Read, Write};
    let mut out = Vec::new();
    for id in 0..count {
        let key = format!("epoch-{id}").into_bytes();
        let target = hotshard_net::Target {
            partition: map.partition(&key),
            epoch,
        };
        let get = hotshard_net::Request::Get {
            key,
            range: None,
            target,
        };
        out.extend(encode_request(id, &get, 0).unwrap());
    }
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&out).unwrap();
    let (mut buf, mut statuses) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 8192];
    while statuses.len() < count as usize {
        while let Some(f) = parse_frame(&buf).unwrap() {
            statuses.push(access_response(&f.header).unwrap().status());
            buf.drain(..f.consumed);
        }
        if statuses.len() < count as usize {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed after {} answers", statuses.len());
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    (statuses, started.elapsed())
}

/// Replicate, SyncManifest and Reassert for a key's partition, sent to `addr` but naming a
/// node other than `node`: each refused (WrongShard), and the key stays unwritten.
fn refuses_misaddressed(addr: &str, map: &hotshard_placement::ShardMap, node: u32, peer_key: Vec<u8>) {
    use hotshard_net::{Recipient, Request, Status};
    let key = b"misaddressed".to_vec();
    let partition = map.partition(&key);
    let chain_version = map.chain(partition).unwrap().version;
    let to = Recipient {
        node: node + 1,
        shard: 0,
    };
    let requests = [
        Request::Replicate {
            to,
            key: key.clone(),
            partition,
            chain_version,
            version: 1 << 40,
            tombstone: false,
            expires_ms: 0,
        },
        Request::SyncManifest {
            to,
            partition,
            chain_version,
            after: Vec::new(),
        },
        Request::Reassert {
            to,
            key: key.clone(),
            partition,
            floor: 1 << 40,
        },
    ];
    // As a node of the cluster (a plain client's are refused before they are looked at:
    // `chain_replication`'s `no_client_writes_what_only_nodes_may`).
    let mut c = BlockingClient::connect(addr, Duration::from_secs(5))
        .unwrap()
        .as_peer(peer_key);
    for r in &requests {
        let payload: &[u8] = if matches!(r, Request::Replicate { .. }) {
            b"forged"
        } else {
            &[]
        };
        let (resp, _) = c.call_at(addr, r, payload).unwrap();
        assert!(
            matches!(resp.status(), Status::WrongShard { .. }),
            "{r:?}: {:?}",
            resp.status()
        );
    }
    assert_eq!(c.get(&key, None).unwrap(), None);
}

#[test]
fn a_cluster_node_serves_only_what_the_coordinator_gives_it_and_stays_itself() {
    let etcd = etcd::Etcd::start();
    let dir = test_dir();
    let port = ports();
    let cluster = cluster_section(&etcd.endpoint, "proc");
    let cfg = write_config_with(dir.path(), port, &cluster);
    let mut node = start(&cfg, port);
    let id: u64 = std::fs::read_to_string(dir.path().join("data/node.id"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // Registered, but no map yet: nothing is served.
    eventually(Duration::from_secs(10), "the node registers", || {
        status(&etcd.endpoint)["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == id && n["alive"] == true))
    });
    assert!(
        !put_works(&node.addr(0), b"early"),
        "served before the cluster gave it partitions"
    );
    // A client that fetched the map before the cluster formed (no owner for anything).
    let mut early = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    assert_eq!(early.shard_map().epoch, 0);

    let coordinator = Coordinator::start(&etcd.endpoint, "proc");
    eventually(Duration::from_secs(10), "PUT once the map is formed", || {
        put_works(&node.addr(0), b"k")
    });
    // It refreshes its map on finding no owner, and goes on without reconnecting.
    early.put(b"late", b"v").unwrap();
    assert_eq!(early.shard_map().epoch, 1);
    // A client naming an epoch no map will have for ages holds nothing: Busy at once,
    // not after the frame timeout (10 s) each.
    let (statuses, took) = gets_naming_epoch(&node.addr(0), early.shard_map(), u64::MAX, 200);
    assert!(
        statuses.iter().all(|s| *s == hotshard_net::Status::Busy),
        "{statuses:?}"
    );
    assert!(took < Duration::from_secs(2), "200 answers took {took:?}");
    // Node-to-node requests meant for another node (a wiped node back on this one's
    // listeners would get them) are refused, counted, and write nothing.
    refuses_misaddressed(
        &node.addr(0),
        early.shard_map(),
        id as u32,
        peer_key_of(&etcd.endpoint, "proc"),
    );
    assert_eq!(
        metric(&scrape(node.port + 3), "hotshard_misaddressed_total{shard=\"0\"}"),
        3.0
    );
    let s = status(&etcd.endpoint);
    assert_eq!(s["epoch"], 1);
    assert_eq!(s["nodes"][0]["chains"]["head"], 4096);
    // The node's metrics say the same, shard by shard.
    let metrics = scrape(node.port + 3);
    let value = |name: &str| metric(&metrics, name);
    assert_eq!(value("hotshard_map_epoch{shard=\"0\"}"), 1.0);
    assert_eq!(value("hotshard_fenced{shard=\"1\"}"), 0.0);
    let heads = value("hotshard_chains{shard=\"0\",role=\"head\"}")
        + value("hotshard_chains{shard=\"1\",role=\"head\"}");
    assert_eq!(heads, 4096.0);
    assert!(value("hotshard_lease_age_seconds{shard=\"0\"}") < 1.0);
    // Every metric the cluster dashboard queries, a cluster node exports.
    assert_dashboard_matches("node/dashboards/hotshard-cluster.json", &metrics);

    // A clean stop revokes the lease: the coordinator takes the node's chains offline
    // without waiting for the TTL.
    node.stop();
    let took = eventually(
        Duration::from_secs(10),
        "the stopped node's chains offline",
        || {
            let s = status(&etcd.endpoint);
            s["nodes"][0]["alive"] == false && s["unavailable"].as_array().is_some_and(|u| u.len() == 4096)
        },
    );
    assert!(
        took < Duration::from_secs(2),
        "a clean stop took {took:?} to show"
    );

    // Restarted on the same data: the same node id, registered again, and serving again
    // what it held (it held every acknowledged write of its chains: it was their last
    // serving replica). Before the stranded-chain rule its chains stayed offline for good.
    let node = start(&cfg, port);
    eventually(Duration::from_secs(10), "the node back as itself", || {
        let s = status(&etcd.endpoint);
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1 && n[0]["id"] == id && n[0]["alive"] == true)
    });
    let took = eventually(Duration::from_secs(10), "the restarted node serves", || {
        put_works(&node.addr(0), b"after-restart")
    });
    eprintln!("a single-node cluster served writes again {took:?} after it registered");
    let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    assert_eq!(c.get(b"late", None).unwrap().unwrap().0, b"v");
    assert!(status(&etcd.endpoint)["unavailable"]
        .as_array()
        .unwrap()
        .is_empty());
    drop((node, coordinator));

    // The same data pointed at another cluster (a new etcd, formed anew): refused before
    // it serves anything, naming both clusters.
    let other = etcd::Etcd::start();
    let _other_coordinator = Coordinator::start(&other.endpoint, "proc");
    let cfg = write_config_with(dir.path(), port, &cluster_section(&other.endpoint, "proc"));
    let mut refused = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut exit = None;
    eventually(Duration::from_secs(15), "a node of another cluster stops", || {
        exit = refused.try_wait().unwrap();
        exit.is_some()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(refused.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(exit.unwrap().code(), Some(2), "{err}");
    assert!(err.contains("belongs to cluster"), "{err}");
}

fn signal(node: &Node, sig: i32) {
    let pid = node.child.as_ref().expect("running").id() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

/// Self-fencing: a node paused past its lease answers nothing when it wakes (the cluster
/// may have given its chains away meanwhile), and a node that loses etcd stops answering
/// within half its lease.
#[test]
fn a_node_that_cannot_confirm_its_lease_answers_nothing() {
    let mut etcd = Some(etcd::Etcd::start());
    let endpoint = etcd.as_ref().unwrap().endpoint.clone();
    let dir = test_dir();
    let port = ports();
    let cluster = cluster_section(&endpoint, "proc");
    let cfg = write_config_with(dir.path(), port, &cluster);
    let node = start(&cfg, port);
    let _coordinator = Coordinator::start(&endpoint, "proc");
    eventually(Duration::from_secs(10), "PUT once the map is formed", || {
        put_works(&node.addr(0), b"k")
    });

    // Paused for twice its lease: the coordinator takes its chains offline meanwhile.
    signal(&node, libc::SIGSTOP);
    eventually(
        Duration::from_secs(10),
        "the paused node's chains offline",
        || {
            status(&endpoint)["unavailable"]
                .as_array()
                .is_some_and(|u| u.len() == 4096)
        },
    );
    // A client already waiting when it wakes: its first answer must not be the old value.
    let addr = node.addr(0);
    let reader = std::thread::spawn(move || {
        let mut c = BlockingClient::connect(&addr, Duration::from_secs(10)).unwrap();
        c.get(b"k", None)
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&node, libc::SIGCONT);
    let first = reader.join().unwrap();
    assert!(
        first.is_err(),
        "a node woken after its lease expired answered: {first:?}"
    );

    // Back and registered again (a new lease). It was the last serving replica of its
    // chains (stranded), so it holds every write they acknowledged: they come back
    // through it, under its new registration.
    eventually(Duration::from_secs(10), "the woken node registered again", || {
        status(&endpoint)["nodes"][0]["alive"] == true
    });
    eventually(Duration::from_secs(10), "the woken node serves again", || {
        put_works(&node.addr(0), b"k2")
    });

    // etcd goes away: a serving node stops answering within half its lease. A second
    // cluster on the same etcd, so that its node serves before etcd goes.
    drop(node);
    let dir2 = test_dir();
    let port2 = ports();
    let cluster2 = cluster_section(&endpoint, "proc2");
    let node2 = start(&write_config_with(dir2.path(), port2, &cluster2), port2);
    let _coordinator2 = Coordinator::start(&endpoint, "proc2");
    eventually(Duration::from_secs(10), "node 2 serves", || {
        put_works(&node2.addr(0), b"k")
    });
    let get = |addr: &str| {
        BlockingClient::connect(addr, Duration::from_secs(2)).and_then(|mut c| c.get(b"k", None))
    };
    assert!(get(&node2.addr(0)).unwrap().is_some());
    drop(etcd.take());
    let fenced_after = eventually(Duration::from_secs(5), "node 2 fenced once etcd is gone", || {
        get(&node2.addr(0)).is_err()
    });
    // Half the 2 s lease after its last renewal (at most 2/3 s before etcd went).
    assert!(
        fenced_after <= Duration::from_millis(1500),
        "fenced after {fenced_after:?}"
    );
}
