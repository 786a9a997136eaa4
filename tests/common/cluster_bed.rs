//! Pieces of a cluster for process tests: a coordinator process, a node's `[cluster]`
//! section, scraping a node's metrics, and polling until something holds.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::binary;

/// A coordinator process, killed when dropped.
pub struct Coordinator(pub Child);

impl Coordinator {
    /// A coordinator of cluster `name` that forms it with one node, replication 1.
    pub fn start(endpoint: &str, name: &str) -> Coordinator {
        Coordinator::forming(endpoint, name, 1, 1)
    }

    /// A coordinator of cluster `name` that forms it once `nodes` nodes are registered,
    /// with chains of `replication` replicas (2 s leases).
    pub fn forming(endpoint: &str, name: &str, nodes: usize, replication: usize) -> Coordinator {
        Coordinator(
            Command::new(binary())
                .args(["coordinator", "--etcd", endpoint, "--cluster", name])
                .args(["--expect-nodes", &nodes.to_string()])
                .args(["--replication", &replication.to_string(), "--lease-ttl", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `[cluster]` section of a node of cluster `name` on `endpoint`, with a 2 s lease.
pub fn cluster_section(endpoint: &str, name: &str) -> String {
    format!("[cluster]\netcd = [\"{endpoint}\"]\nname = \"{name}\"\nlease_ttl_secs = 2\n")
}

/// The node's Prometheus text from its admin port.
pub fn scrape(admin_port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin_port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// The value of the first sample of `metrics` whose line starts with `name`.
pub fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {metrics}"))
}

/// Polls `f` every 100 ms until it returns true, for at most `within`.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}
