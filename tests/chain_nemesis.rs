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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cluster_bed::*;
use common::binary;
use common::linearizability::{check, Event, Op};
use hotshard_net::blocking::BlockingClient;
use hotshard_net::client::ClientError;
use hotshard_net::{Request, Status, Target};
use hotshard_nvme::SplitMix64;
use hotshard_placement::ReplicaState;

const KEYS: usize = 6;
const CLIENTS: u64 = 4;

/// Operations by key, and how writes ended.
#[derive(Default)]
struct History {
    by_key: Vec<Vec<Event>>,
    acked: usize,
    unknown: usize,
    refused: usize,
    reads: usize,
}

/// A refusal that wrote nothing: the write is left out of the history.
fn definitely_not_applied(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::NoOwner(_) => true,
        ClientError::Status(s) => matches!(
            s,
            Status::Busy
                | Status::WrongShard { .. }
                | Status::NoSpace
                | Status::TooLarge
                | Status::BadRequest { .. }
                | Status::Unauthorized
        ),
        _ => false,
    }
}

/// `KEYS` keys of `run`, the same number headed by each node (so that a fault on any node
/// hits writes in flight).
fn keys(bed: &Bed, run: &str) -> Vec<Vec<u8>> {
    let map = BlockingClient::connect(&bed.nodes[0].addr(0), Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    let nodes: Vec<u32> = {
        let mut n: Vec<u32> = map.shards.iter().map(|s| s.node).collect();
        n.dedup();
        n
    };
    let per_node = KEYS / nodes.len();
    let mut chosen = Vec::new();
    for node in nodes {
        let headed = (0..)
            .map(|i| format!("{run}-{i}").into_bytes())
            .filter(|k| map.owner(map.partition(k)).is_some_and(|o| o.node == node));
        chosen.extend(headed.take(per_node));
    }
    assert_eq!(chosen.len(), KEYS);
    chosen
}

/// What one client did: its operations by key index, and its counts of writes
/// acknowledged, unknown and refused, and of reads answered.
type ClientRecord = (Vec<(usize, Event)>, [usize; 4]);

struct Workload {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<ClientRecord>>,
}

/// Clients writing unique values to and reading `keys` through any of `seeds`.
fn workload(keys: Vec<Vec<u8>>, seeds: Vec<String>) -> Workload {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients = (0..CLIENTS)
        .map(|c| {
            let (stop, seeds, keys) = (stop.clone(), seeds.clone(), keys.clone());
            std::thread::spawn(move || {
                let now = || started.elapsed().as_micros() as u64;
                let mut rng = SplitMix64::new(c * 7919 + 1);
                let mut events = Vec::new();
                let mut counts = [0usize; 4];
                let mut client = None;
                let mut written = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if client.is_none() {
                        let seed = &seeds[rng.next_u64() as usize % seeds.len()];
                        client = BlockingClient::connect(seed, Duration::from_secs(5)).ok();
                        if client.is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    let cl = client.as_mut().unwrap();
                    let k = rng.next_u64() as usize % KEYS;
                    let call = now();
                    if rng.next_u64().is_multiple_of(2) {
                        written += 1;
                        let value = (c + 1) << 32 | written;
                        match cl.put(&keys[k], value.to_string().as_bytes()) {
                            Ok(_) => {
                                counts[0] += 1;
                                events.push((
                                    k,
                                    Event {
                                        op: Op::Put(value),
                                        call,
                                        ret: Some(now()),
                                    },
                                ));
                            }
                            Err(e) if definitely_not_applied(&e) => counts[2] += 1,
                            Err(_) => {
                                counts[1] += 1;
                                events.push((
                                    k,
                                    Event {
                                        op: Op::Put(value),
                                        call,
                                        ret: None,
                                    },
                                ));
                            }
                        }
                    } else {
                        // A failed read shows nothing.
                        if let Ok(found) = cl.get(&keys[k], None) {
                            counts[3] += 1;
                            let seen =
                                found.map(|(v, _)| std::str::from_utf8(&v).unwrap().parse::<u64>().unwrap());
                            events.push((
                                k,
                                Event {
                                    op: Op::Get(seen),
                                    call,
                                    ret: Some(now()),
                                },
                            ));
                        }
                    }
                }
                (events, counts)
            })
        })
        .collect();
    Workload { stop, clients }
}

impl Workload {
    fn finish(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let mut h = History {
            by_key: vec![Vec::new(); KEYS],
            ..History::default()
        };
        for c in self.clients {
            let (events, counts) = c.join().unwrap();
            for (k, e) in events {
                h.by_key[k].push(e);
            }
            h.acked += counts[0];
            h.unknown += counts[1];
            h.refused += counts[2];
            h.reads += counts[3];
        }
        h
    }
}

/// Keys whose history no order explains.
fn violations(h: &History) -> Vec<usize> {
    (0..KEYS).filter(|&k| !check(&h.by_key[k], None)).collect()
}

/// Every serving replica of each of `keys` holds the same version and value.
fn replicas_agree(bed: &Bed, keys: &[Vec<u8>]) {
    let seed = bed
        .nodes
        .iter()
        .filter(|n| n.child.is_some())
        .map(|n| n.addr(0))
        .find(|a| BlockingClient::connect(a, Duration::from_secs(2)).is_ok_and(|c| c.shard_map().epoch > 1))
        .expect("a serving node");
    let mut c = BlockingClient::connect(&seed, Duration::from_secs(5)).unwrap();
    let map = c.shard_map().clone();
    for key in keys {
        let key = key.clone();
        let partition = map.partition(&key);
        let mut held = Vec::new();
        for r in &map.chain(partition).unwrap().replicas {
            if r.state != ReplicaState::Serving {
                continue;
            }
            let addr = map.shards[r.shard as usize].addr.clone();
            let get = Request::Get {
                key: key.clone(),
                range: None,
                target: Target {
                    partition,
                    epoch: map.epoch,
                },
            };
            let (resp, body) = c.call_at(&addr, &get, &[]).unwrap();
            held.push((addr, resp.status(), resp.version, body));
        }
        assert!(
            held.windows(2)
                .all(|w| (w[0].1.clone(), w[0].2, &w[0].3) == (w[1].1.clone(), w[1].2, &w[1].3)),
            "replicas of {} differ: {held:?}",
            String::from_utf8_lossy(&key)
        );
    }
}

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

fn seeds(bed: &Bed) -> Vec<String> {
    bed.nodes.iter().map(|n| n.addr(0)).collect()
}

fn report(run: &str, h: &History) {
    eprintln!(
        "{run}: {} writes acknowledged, {} unknown, {} refused; {} reads",
        h.acked, h.unknown, h.refused, h.reads
    );
}

#[test]
fn kill_a_node_the_coordinator_and_etcd_under_load() {
    let mut bed = Bed::start("nemesis", 3, 3, 2, &[]);
    let run = "kill";
    let keys = keys(&bed, run);
    let load = workload(keys.clone(), seeds(&bed));
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

    let h = load.finish();
    report(run, &h);
    assert!(h.acked > 100, "too few acknowledged writes to mean anything");
    assert_eq!(violations(&h), Vec::<usize>::new(), "{}", bed.logs());
    replicas_agree(&bed, &keys);
}

#[test]
fn a_node_paused_past_its_lease_answers_nothing_stale() {
    let bed = Bed::start("pause", 3, 3, 1, &[]);
    let run = "pause";
    let keys = keys(&bed, run);
    let load = workload(keys.clone(), seeds(&bed));
    std::thread::sleep(Duration::from_secs(2));
    signal(&bed.nodes[1], libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(5));
    signal(&bed.nodes[1], libc::SIGCONT);
    std::thread::sleep(Duration::from_secs(4));
    let h = load.finish();
    report(run, &h);
    assert!(h.acked > 100, "too few acknowledged writes to mean anything");
    assert_eq!(violations(&h), Vec::<usize>::new(), "{}", bed.logs());
    replicas_agree(&bed, &keys);
}

/// The checker on this workload catches a head that acknowledges before the tail has the
/// write (the planted bug of debug builds; see `replication::planted_early_ack`).
#[test]
fn a_head_that_acknowledges_early_is_caught() {
    let bed = Bed::start("planted", 3, 3, 1, &[("HOTSHARD_PLANTED_BUG", "ack-at-head")]);
    let load = workload(keys(&bed, "planted"), seeds(&bed));
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
