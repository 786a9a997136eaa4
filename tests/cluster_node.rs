//! A cluster node as a process against a real etcd and a `hotshard coordinator` process:
//! it keeps a node id with its data, registers under its lease, serves nothing until the
//! coordinator's map gives it partitions, serves them once it does, leaves the cluster at
//! once on a clean stop (its lease revoked: its chains go offline), and comes back as
//! itself on restart.

mod common;

#[path = "../node/cluster/tests/common/mod.rs"]
mod etcd;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hotshard_net::blocking::BlockingClient;

/// A coordinator process, killed when dropped.
struct Coordinator(Child);

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// Polls `f` every 100 ms until it returns true, for at most `within`.
fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn put_works(addr: &str, key: &[u8]) -> bool {
    BlockingClient::connect(addr, Duration::from_secs(2))
        .and_then(|mut c| c.put(key, b"value"))
        .is_ok()
}

#[test]
fn a_cluster_node_serves_only_what_the_coordinator_gives_it_and_stays_itself() {
    let etcd = etcd::Etcd::start();
    let dir = test_dir();
    let port = ports();
    let cluster = format!(
        "[cluster]\netcd = [\"{}\"]\nname = \"proc\"\nlease_ttl_secs = 2\n",
        etcd.endpoint
    );
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

    let coordinator = Coordinator(
        Command::new(binary())
            .args(["coordinator", "--etcd", &etcd.endpoint, "--cluster", "proc"])
            .args(["--expect-nodes", "1", "--replication", "1", "--lease-ttl", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(Duration::from_secs(10), "PUT once the map is formed", || {
        put_works(&node.addr(0), b"k")
    });
    let s = status(&etcd.endpoint);
    assert_eq!(s["epoch"], 1);
    assert_eq!(s["nodes"][0]["chains"]["head"], 4096);

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

    // Restarted on the same data: the same node id, registered again.
    let _node = start(&cfg, port);
    eventually(Duration::from_secs(10), "the node back as itself", || {
        let s = status(&etcd.endpoint);
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1 && n[0]["id"] == id && n[0]["alive"] == true)
    });
    drop(coordinator);
}
