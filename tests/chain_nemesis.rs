//! Nemesis runs on three node processes (replication factor 3) under a mixed workload:
//! clients write unique values and read, every operation is recorded with its invocation
//! and response times and what it returned, and each key's history is checked for
//! linearizability (`common::linearizability`, shown able to fail in
//! `linearizability_checker.rs`). Faults: kill -9 of a node (the head of some chains, a
//! middle of others, the tail of the rest), the acting coordinator killed (the other takes
//! over), etcd killed and restarted, a node paused past its lease and woken. After each
//! run the serving replicas of every key hold the same version. The same workload against
//! a build with a planted bug (a head that acknowledges before the tail has the write)
//! must be caught.

mod common;

#[path = "common/cluster_bed.rs"]
mod cluster_bed;

#[path = "../node/cluster/tests/common/mod.rs"]
mod etcd;

use std::time::Duration;

use cluster_bed::*;
use common::binary;
use common::nemesis::*;
use hotshard_net::blocking::BlockingClient;
use hotshard_net::{Request, Status, Target};

fn acting_coordinator(bed: &Bed, cluster: &str) -> Option<String> {
    let out = std::process::Command::new(binary())
        .args([
            "cluster",
            "status",
            "--etcd",
            &bed.etcd.endpoint,
            "--cluster",
            cluster,
            "--json",
        ])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    s["coordinator"].as_str().map(str::to_string)
}

fn signal(node: &common::Node, sig: i32) {
    let pid = node.child.as_ref().expect("running").id() as i32;
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn kill_a_node_the_coordinator_and_etcd_under_load() {
    let mut bed = Bed::start("nemesis", 3, 3, 2, &[]);
    let run = "kill";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    std::thread::sleep(Duration::from_secs(2));

    // The acting coordinator dies; the other takes over.
    let acting = acting_coordinator(&bed, "nemesis").expect("a coordinator acts");
    let i: usize = acting.trim_start_matches('c').parse().unwrap();
    let _ = bed.coordinators[i].0.kill();
    let _ = bed.coordinators[i].0.wait();
    eventually(Duration::from_secs(10), "the other coordinator acts", || {
        acting_coordinator(&bed, "nemesis").is_some_and(|c| c != acting)
    });

    // etcd down for a second and back on the same data: nodes fence, then go on.
    bed.etcd.restart(Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(3));

    // kill -9 of a node: a head, a middle or a tail depending on the chain.
    bed.nodes[0].kill9();
    std::thread::sleep(Duration::from_secs(6));

    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
}

#[test]
fn a_node_paused_past_its_lease_answers_nothing_stale() {
    let bed = Bed::start("pause", 3, 3, 1, &[]);
    let run = "pause";
    let keys = keys(&bed.nodes[0].addr(0), run);
    let load = workload(keys.clone(), bed.seeds());
    std::thread::sleep(Duration::from_secs(2));
    signal(&bed.nodes[1], libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    signal(&bed.nodes[1], libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(4));
    verify_run(run, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
}

/// A GET that reaches a head while the head's own write of the key is on its way (the key
/// dirty: the GET waits), and the head is then paused past its lease: the cluster drops the
/// head and goes on without the write, so when the head wakes and its write ends
/// unacknowledged, the GET must not be answered with it (the next GET at a serving replica
/// answers the value before it). The head holds its write 1.5 s before passing it on
/// (`HOTSHARD_PLANTED_BUG=hold-at-head`), so the pause lands inside that window every time.
/// Before the fix the GET returned the write the chain never had (soak seed 19).
#[test]
fn a_read_queued_behind_a_paused_heads_write_answers_nothing_the_chain_lacks() {
    let bed = Bed::start_with_env_on(
        "queued",
        3,
        3,
        1,
        &[("HOTSHARD_PLANTED_BUG", "hold-at-head:held-:1500")],
        0,
    );
    let map = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    let head_node = bed.node_id(0);
    let key = (0..100_000)
        .map(|i| format!("held-{i}").into_bytes())
        .find(|k| map.owner(map.partition(k)).is_some_and(|o| o.node == head_node))
        .unwrap();
    let partition = map.partition(&key);
    let head_addr = map.owner(partition).unwrap().addr.clone();
    let connect = |addr: &str| BlockingClient::connect(addr, Duration::from_secs(20)).unwrap();
    connect(&head_addr).put(&key, b"before").unwrap();
    // Read once, so that the head's cache holds the key and its writes update it there.
    let front = format!("127.0.0.1:{}", bed.nodes[0].port + 2);
    let key_text = String::from_utf8(key.clone()).unwrap();
    assert_eq!(
        resp(&front, &["GET", &key_text]),
        "$6",
        "the head answers \"before\""
    );
    // The write the pause will strand, held at the head.
    let writer = {
        let (addr, key) = (head_addr.clone(), key.clone());
        std::thread::spawn(move || connect(&addr).put(&key, b"after"))
    };
    std::thread::sleep(Duration::from_millis(300));
    // A GET at the head: the key is dirty there, so it waits.
    let reader = {
        let (addr, key, epoch) = (head_addr.clone(), key.clone(), map.epoch);
        std::thread::spawn(move || {
            let get = Request::Get {
                key,
                range: None,
                target: Target { partition, epoch },
            };
            connect(&addr).call_at(&addr, &get, &[])
        })
    };
    // And a GET through the head's RESP front, which answers a clean cached key in place
    // (`read_at_once`): a dirty one must go the full way and wait as the native GET does.
    let resp_reader = std::thread::spawn(move || resp(&front, &["GET", &key_text]));
    std::thread::sleep(Duration::from_millis(200));
    signal(&bed.nodes[0], libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    signal(&bed.nodes[0], libc::SIGCONT);
    let read = reader.join().unwrap();
    let resp_read = resp_reader.join().unwrap();
    let wrote = writer.join().unwrap();
    eprintln!("the queued GET: {read:?}; the RESP GET: {resp_read}; the held PUT: {wrote:?}");
    if let Ok((response, body)) = &read {
        assert!(
            !(response.status() == Status::Ok && body == b"after"),
            "the head answered a write the chain never acknowledged"
        );
    }
    // "$5" heads the bulk reply "after" ("before" is "$6").
    assert_ne!(
        resp_read, "$5",
        "the head's RESP front answered a write the chain never acknowledged"
    );
    assert!(wrote.is_err(), "the stranded write was acknowledged: {wrote:?}");
    // The serving replicas hold the value before it.
    let other = bed.nodes[1].addr(0);
    eventually(Duration::from_secs(20), "a serving replica answers", || {
        connect(&other).get(&key, None).is_ok()
    });
    let mut c = connect(&other);
    assert_eq!(
        c.get(&key, None).unwrap().map(|(v, _)| v),
        Some(b"before".to_vec())
    );
}

/// The checker on this workload catches a head that acknowledges before the tail has the
/// write (a planted bug of the tests' `planted-faults` build; see `replication::planted_early_ack`).
#[test]
fn a_head_that_acknowledges_early_is_caught() {
    let bed = Bed::start("planted", 3, 3, 1, &[("HOTSHARD_PLANTED_BUG", "ack-at-head")]);
    let load = workload(keys(&bed.nodes[0].addr(0), "planted"), bed.seeds());
    std::thread::sleep(Duration::from_secs(4));
    let h = load.finish();
    report("planted", &h);
    assert!(
        !violations(&h).is_empty(),
        "{} acknowledged writes and {} reads, and no violation found",
        h.acked,
        h.reads
    );
}

/// The checker catches a listing that shows a write the chain has not acknowledged: with
/// `list-ignores-dirty` planted, a page is answered without waiting for its keys' writes in
/// flight, and each write of a listed key is held 200 ms at its head (`hold-at-head`), so a
/// listing at the head shows it while GETs at the other replicas still answer the value
/// before it. Only the listed keys' histories may fail (the other keys are not listed).
#[test]
fn a_listing_that_shows_unacknowledged_writes_is_caught() {
    let planted = format!("hold-at-head:{}:200+list-ignores-dirty", listed_prefix("listing"));
    let bed = Bed::start("listing", 3, 3, 1, &[("HOTSHARD_PLANTED_BUG", &planted)]);
    let load = workload(keys(&bed.nodes[0].addr(0), "listing"), bed.seeds());
    std::thread::sleep(Duration::from_secs(6));
    let h = load.finish();
    report("listing", &h);
    let bad = violations(&h);
    assert!(
        bad.iter().any(|&k| k >= KEYS),
        "{} listings and no violation found among the listed keys",
        h.lists
    );
    assert!(
        bad.iter().all(|&k| k >= KEYS),
        "keys never listed failed: {bad:?}"
    );
}

/// The soak: `HOTSHARD_NEMESIS_MINUTES` minutes (1 by default) of fresh three-node
/// clusters, each under the workload for two random faults of the list above on distinct
/// nodes (a node killed, a node paused past its lease, the acting coordinator killed,
/// etcd restarted, a node killed and started again, a node's disk replaced; since issue 30
/// every node killed and started again in a random order, etcd down for three leases, a
/// node started again at once after its kill), one cluster in three with a node that
/// posts maps removing it from a chain 600 ms late, every history checked and the
/// replicas compared after each.
/// `HOTSHARD_NEMESIS_MINUTES=10 cargo test --release --test chain_nemesis soak -- --ignored --nocapture`
#[test]
#[ignore]
fn soak() {
    let minutes: u64 = std::env::var("HOTSHARD_NEMESIS_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let seed: u64 = std::env::var("HOTSHARD_NEMESIS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rng = hotshard_nvme::SplitMix64::new(seed);
    let forced: Option<Vec<u64>> = std::env::var("HOTSHARD_NEMESIS_FAULTS")
        .ok()
        .map(|v| v.split(',').filter_map(|f| f.trim().parse().ok()).collect());
    let started = std::time::Instant::now();
    let (mut runs, mut faults, mut total) = (0, 0, History::default());
    while started.elapsed() < Duration::from_secs(60 * minutes) {
        let run = format!("soak{runs}");
        // One cluster in three has a node whose maps that remove it from a chain are
        // posted 600 ms late (the planted slow-to-leave fault).
        let slow = [("HOTSHARD_PLANTED_BUG", "slow-to-leave:600")];
        let mut bed = match rng.next_u64() % 3 {
            0 => Bed::start_with_env_on(&run, 3, 3, 2, &slow, (rng.next_u64() % 3) as usize),
            _ => Bed::start(&run, 3, 3, 2, &[]),
        };
        let keys = keys(&bed.nodes[0].addr(0), &run);
        let load = workload(keys.clone(), bed.seeds());
        std::thread::sleep(Duration::from_secs(2));
        let first = (rng.next_u64() % 3) as usize;
        let mut done = Vec::new();
        // Nodes killed for good (kill -9 with no restart).
        let mut killed = Vec::new();
        for node in [first, (first + 1) % 3] {
            let drawn = rng.next_u64() % 9;
            // HOTSHARD_NEMESIS_FAULTS=a,b replays two faults of the list (by number).
            let fault = forced
                .as_ref()
                .and_then(|f: &Vec<u64>| f.get(done.len()).copied())
                .unwrap_or(drawn);
            match fault {
                0 => {
                    bed.nodes[node].kill9();
                    killed.push(node);
                }
                1 => {
                    signal(&bed.nodes[node], libc::SIGSTOP);
                    std::thread::sleep(Duration::from_secs(5));
                    signal(&bed.nodes[node], libc::SIGCONT);
                }
                2 => {
                    if let Some(c) = acting_coordinator(&bed, &run) {
                        let i: usize = c.trim_start_matches('c').parse().unwrap();
                        let _ = bed.coordinators[i].0.kill();
                        let _ = bed.coordinators[i].0.wait();
                        // A coordinator again for the next fault.
                        bed.coordinators[i] = Coordinator::named(&bed.etcd.endpoint, &run, 3, 3, &c, 2);
                    }
                }
                3 => bed.etcd.restart(Duration::from_secs(1)),
                // Issue 20: back after a crash (resync), or with its disk replaced (a new
                // node, filled; the old one is down for good).
                4 => {
                    bed.nodes[node].kill9();
                    std::thread::sleep(Duration::from_secs(3));
                    bed.restart(node);
                }
                // A wiped node back at once, on the addresses of one whose lease lives.
                5 => bed.wipe(node),
                // Issue 30: every node killed and started again in a random order.
                6 => {
                    for i in 0..3 {
                        bed.nodes[i].kill9();
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    let first = (rng.next_u64() % 3) as usize;
                    for i in 0..3 {
                        bed.restart((first + i) % 3);
                        std::thread::sleep(Duration::from_millis(300));
                    }
                }
                // etcd down for three leases: every lease lost, every chain stranded.
                7 => bed.etcd.restart(Duration::from_secs(6)),
                // Back before the coordinator has seen it go (a new registration while
                // its map still names the old one).
                _ => {
                    bed.nodes[node].kill9();
                    bed.restart(node);
                }
            }
            done.push(
                [
                    "kill -9",
                    "pause",
                    "coordinator",
                    "etcd",
                    "restart",
                    "wipe",
                    "whole-cluster restart",
                    "etcd down past the lease",
                    "fast restart",
                ][fault as usize],
            );
            faults += 1;
            std::thread::sleep(Duration::from_secs(4));
        }
        // Faults that stop the whole cluster (every node killed, etcd down past the
        // lease) leave it to come back by itself: wait for that before the checks.
        let name = format!("{run} (seed {seed}: {})", done.join(", "));
        let mut back = std::time::Instant::now();
        while !bed.seeds().iter().any(|addr| {
            hotshard_net::blocking::BlockingClient::connect(addr, Duration::from_secs(2))
                .and_then(|mut c| c.put(b"soak-probe", b"back"))
                .is_ok()
        }) {
            // Chains that came back through one node after a whole-cluster restart or an
            // etcd outage hold writes acknowledged since only there until the other
            // replicas catch up from it: if that node is killed first, they wait for it
            // (ARCHITECTURE.md), as an operator would restart it. Restarted once.
            if back.elapsed() > Duration::from_secs(60) && !killed.is_empty() {
                let (_, status) = bed.cluster_cli(&["status"]);
                let waited: Vec<usize> = killed
                    .drain(..)
                    .filter(|&i| status.contains(&format!("node {} (", bed.node_id(i))))
                    .collect();
                for &i in &waited {
                    eprintln!("{run}: chains wait for killed node {i}, which holds writes only it has; restarting it");
                    bed.restart(i);
                }
                if !waited.is_empty() {
                    back = std::time::Instant::now();
                }
            }
            if back.elapsed() > Duration::from_secs(60) {
                let (_, status) = bed.cluster_cli(&["status"]);
                panic!(
                    "{name}: the cluster does not serve again within 60 s\n{status}\n{}",
                    bed.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let h = verify_run(&name, load, &bed.seeds(), &keys, |bad| bed.logs_and_history(bad));
        total.acked += h.acked;
        total.unknown += h.unknown;
        total.refused += h.refused;
        total.reads += h.reads;
        runs += 1;
    }
    eprintln!(
        "soak: {runs} clusters, {faults} faults in {:?}: {} writes acknowledged, {} unknown, {} refused, {} reads, 0 violations, replicas agree",
        started.elapsed(),
        total.acked,
        total.unknown,
        total.refused,
        total.reads
    );
}
