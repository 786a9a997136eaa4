//! A nemesis run on the local test bed (`tests/cluster/local.sh`): three hosts in network
//! namespaces, etcd and a coordinator on the host, replication factor 3. Under the mixed
//! workload of `common::nemesis`, one host is cut off from the network for longer than
//! its lease (its chains go on without it) and reconnected (its replicas sync and serve
//! again); every key's history must be linearizable and the serving replicas must agree. Needs root (CI runs as root); elsewhere it says so and fails.

mod common;

use std::process::Command;
use std::time::Duration;

use common::binary;
use common::nemesis::*;

/// The test bed's script (tests run in the node package's directory).
const LOCAL_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/cluster/local.sh");

/// The test bed, brought down (namespaces removed) when dropped.
struct LocalBed {
    dir: tempfile::TempDir,
}

impl LocalBed {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(LOCAL_SH)
            .args(args)
            .env("BIN", binary())
            .env("HOTSHARD_BED", self.dir.path().join("bed"))
            .env("LEASE_TTL", "2")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "local.sh {args:?}: {text}");
        text
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("bed/node{i}/log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for LocalBed {
    fn drop(&mut self) {
        let _ = Command::new(LOCAL_SH)
            .arg("down")
            .env("HOTSHARD_BED", self.dir.path().join("bed"))
            .output();
    }
}

#[test]
fn a_host_cut_off_past_its_lease_and_reconnected() {
    // SAFETY: getuid has no preconditions.
    assert_eq!(
        unsafe { libc::getuid() },
        0,
        "the test bed needs root (network namespaces); CI runs as root"
    );
    let bed = LocalBed {
        dir: common::test_dir(),
    };
    // Left over from an interrupted run (the bed's names are fixed).
    let _ = Command::new(LOCAL_SH).arg("down").output();
    bed.run(&["up", "3"]);
    let seeds: Vec<String> = (1..=3).map(|i| format!("10.77.0.{}:7400", 10 + i)).collect();
    let started = std::time::Instant::now();
    while hotshard_net::blocking::BlockingClient::connect(&seeds[0], Duration::from_secs(2))
        .and_then(|mut c| c.put(b"first", b"v"))
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the bed does not serve"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let keys = keys(&seeds[0], "cut");
    let load = workload(keys.clone(), seeds.clone());
    std::thread::sleep(Duration::from_secs(2));
    bed.run(&["stop-net", "2"]);
    std::thread::sleep(Duration::from_secs(5));
    // Its chains went on without it.
    let status = bed.run(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        s["degraded"].as_array().is_some_and(|d| !d.is_empty()),
        "the cut-off host's chains were not repaired: {status}"
    );
    bed.run(&["start-net", "2"]);
    // Back on the network: its replicas sync and serve again (issue 20), under the load.
    let started = std::time::Instant::now();
    loop {
        let status = bed.run(&["status", "--json"]);
        let s: serde_json::Value = serde_json::from_str(&status).unwrap();
        let whole = s["degraded"].as_array().is_some_and(|d| d.is_empty())
            && s["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .all(|n| n["alive"] == true && n["chains"]["syncing"] == 0 && n["chains"]["offline"] == 0)
            });
        if whole {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reconnected host's chains are not whole again: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    verify_run("network cut", load, &seeds, &keys, |_| bed.logs());
}
