//! Pieces of a cluster for process tests: a coordinator process, a node's `[cluster]`
//! section, scraping a node's metrics, and polling until something holds.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::binary;
use hotshard_net::blocking::BlockingClient;
use hotshard_placement::{ReplicaState, ShardMap};

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
        Coordinator::named(endpoint, name, nodes, replication, "coordinator", 2)
    }

    /// `forming`, naming itself `me` in the cluster's state, with leases of `ttl` seconds.
    pub fn named(
        endpoint: &str,
        name: &str,
        nodes: usize,
        replication: usize,
        me: &str,
        ttl: u64,
    ) -> Coordinator {
        Coordinator::with_args(endpoint, name, nodes, replication, me, ttl, &[])
    }

    /// `named` with more arguments (`--down-out 3`, ...).
    pub fn with_args(
        endpoint: &str,
        name: &str,
        nodes: usize,
        replication: usize,
        me: &str,
        ttl: u64,
        extra: &[&str],
    ) -> Coordinator {
        Coordinator(
            Command::new(binary())
                .args(["coordinator", "--etcd", endpoint, "--cluster", name, "--name", me])
                .args(["--expect-nodes", &nodes.to_string()])
                .args(["--replication", &replication.to_string()])
                .args(["--lease-ttl", &ttl.to_string()])
                .args(extra)
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
    cluster_section_ttl(endpoint, name, 2)
}

/// `cluster_section` with a lease of `ttl` seconds. The nodes of a test share two cores,
/// so their shards yield while they poll idle (`net.yield_when_idle`).
pub fn cluster_section_ttl(endpoint: &str, name: &str, ttl: u64) -> String {
    format!(
        "[cluster]\netcd = [\"{endpoint}\"]\nname = \"{name}\"\nlease_ttl_secs = {ttl}\n\
         [net]\nyield_when_idle = true\n"
    )
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

/// A cluster of node processes on loopback: etcd, coordinators and nodes of two shards
/// each, all stopped when dropped.
pub struct Bed {
    pub etcd: crate::etcd::Etcd,
    pub coordinators: Vec<Coordinator>,
    pub nodes: Vec<crate::common::Node>,
    pub dirs: Vec<tempfile::TempDir>,
    /// The cluster's name and the nodes' `[cluster]` section.
    pub name: String,
    pub section: String,
    /// The nodes' `node.partition_bits`, if not the default.
    pub partition_bits: Option<u8>,
}

/// How a `Bed` starts, beyond its name, node count and replication factor.
struct Spec<'a> {
    coordinators: usize,
    /// Each node's extra environment, by index.
    env_of: &'a dyn Fn(usize) -> &'a [(&'a str, &'a str)],
    ttl: u64,
    coordinator_args: &'a [&'a str],
    partition_bits: Option<u8>,
    /// More lines for the nodes' `[cluster]` section.
    cluster_extra: &'a str,
}

impl Bed {
    /// `nodes` nodes (with `env` in their environment) formed into cluster `name` with
    /// replication factor `replication` by `coordinators` coordinators (named c0, c1, ...),
    /// once a client can write.
    pub fn start(
        name: &str,
        nodes: usize,
        replication: usize,
        coordinators: usize,
        env: &[(&str, &str)],
    ) -> Bed {
        Bed::start_with_ttl(name, nodes, replication, coordinators, env, 2)
    }

    /// `start` with leases of `ttl` seconds.
    pub fn start_with_ttl(
        name: &str,
        nodes: usize,
        replication: usize,
        coordinators: usize,
        env: &[(&str, &str)],
        ttl: u64,
    ) -> Bed {
        Bed::start_with_args(name, nodes, replication, coordinators, env, ttl, &[])
    }

    /// `start` with `env` in node `on`'s environment only.
    pub fn start_with_env_on(
        name: &str,
        nodes: usize,
        replication: usize,
        coordinators: usize,
        env: &[(&str, &str)],
        on: usize,
    ) -> Bed {
        let env_of = |i: usize| if i == on { env } else { &[] };
        Bed::start_full(
            name,
            nodes,
            replication,
            Spec {
                coordinators,
                env_of: &env_of,
                ttl: 2,
                coordinator_args: &[],
                partition_bits: None,
                cluster_extra: "",
            },
        )
    }

    /// `start` with 2^`bits` partitions (nodes and coordinators agree): fewer chains to
    /// resync when every chain moves, for tests that wait for that on two cores.
    pub fn start_with_partition_bits(name: &str, nodes: usize, replication: usize, bits: u8) -> Bed {
        let bits_arg = bits.to_string();
        Bed::start_full(
            name,
            nodes,
            replication,
            Spec {
                coordinators: 1,
                env_of: &|_| &[],
                ttl: 2,
                coordinator_args: &["--partition-bits", &bits_arg],
                partition_bits: Some(bits),
                cluster_extra: "",
            },
        )
    }

    /// `start` with more lines in the nodes' `[cluster]` section.
    pub fn start_with_cluster_lines(name: &str, nodes: usize, replication: usize, lines: &str) -> Bed {
        Bed::start_full(
            name,
            nodes,
            replication,
            Spec {
                coordinators: 1,
                env_of: &|_| &[],
                ttl: 2,
                coordinator_args: &[],
                partition_bits: None,
                cluster_extra: lines,
            },
        )
    }

    /// `start_with_ttl` with more arguments for the coordinators.
    pub fn start_with_args(
        name: &str,
        nodes: usize,
        replication: usize,
        coordinators: usize,
        env: &[(&str, &str)],
        ttl: u64,
        coordinator_args: &[&str],
    ) -> Bed {
        Bed::start_full(
            name,
            nodes,
            replication,
            Spec {
                coordinators,
                env_of: &|_| env,
                ttl,
                coordinator_args,
                partition_bits: None,
                cluster_extra: "",
            },
        )
    }

    fn start_full(name: &str, nodes: usize, replication: usize, spec: Spec<'_>) -> Bed {
        use crate::common::{ports, start_with_env, test_dir};
        let Spec {
            coordinators,
            env_of,
            ttl,
            coordinator_args,
            partition_bits,
            cluster_extra,
        } = spec;
        let etcd = crate::etcd::Etcd::start();
        let section = cluster_section_ttl(&etcd.endpoint, name, ttl).replacen(
            "[net]",
            &format!("{cluster_extra}[net]"),
            1,
        );
        let mut bed = Bed {
            coordinators: Vec::new(),
            nodes: Vec::new(),
            dirs: Vec::new(),
            etcd,
            name: name.to_string(),
            section: section.clone(),
            partition_bits,
        };
        for i in 0..nodes {
            let dir = test_dir();
            let port = ports();
            let cfg = bed.write_config(dir.path(), port);
            bed.nodes.push(start_with_env(&cfg, port, env_of(i)));
            bed.dirs.push(dir);
        }
        for i in 0..coordinators {
            let me = format!("c{i}");
            let c = Coordinator::with_args(
                &bed.etcd.endpoint,
                name,
                nodes,
                replication,
                &me,
                ttl,
                coordinator_args,
            );
            bed.coordinators.push(c);
        }
        let addr = bed.nodes[0].addr(0);
        eventually(Duration::from_secs(20), "the cluster serves", || {
            hotshard_net::blocking::BlockingClient::connect(&addr, Duration::from_secs(2))
                .and_then(|mut c| c.put(b"first", b"v"))
                .is_ok()
        });
        bed
    }

    /// Starts node `i` again (after a kill) on its data directory, config and ports.
    pub fn restart(&mut self, i: usize) {
        let cfg = self.dirs[i].path().join("node.toml");
        let port = self.nodes[i].port;
        self.nodes[i].kill9();
        // The log of the run before is kept beside the new one.
        let log = self.dirs[i].path().join("node.log");
        let before = std::fs::read_to_string(&log).unwrap_or_default();
        let mut kept = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dirs[i].path().join("node.before.log"))
            .unwrap();
        std::io::Write::write_all(&mut kept, before.as_bytes()).unwrap();
        self.nodes[i] = crate::common::start_with_env(&cfg, port, &[]);
    }

    /// A node's config in `dir` for this cluster.
    fn write_config(&self, dir: &std::path::Path, port: u16) -> std::path::PathBuf {
        let cfg = crate::common::write_config_with(dir, port, &self.section);
        if let Some(bits) = self.partition_bits {
            let text = std::fs::read_to_string(&cfg).unwrap();
            let text = text.replacen("[node]\n", &format!("[node]\npartition_bits = {bits}\n"), 1);
            std::fs::write(&cfg, text).unwrap();
        }
        cfg
    }

    /// Starts one more node of the cluster (a new id, empty); returns its index.
    pub fn add_node(&mut self) -> usize {
        use crate::common::{ports, start_with_env, test_dir};
        let dir = test_dir();
        let port = ports();
        let cfg = self.write_config(dir.path(), port);
        self.nodes.push(start_with_env(&cfg, port, &[]));
        self.dirs.push(dir);
        self.nodes.len() - 1
    }

    /// Stops node `i`, empties its data directory (a replaced disk: it comes back with a
    /// new id) and starts it again.
    pub fn wipe(&mut self, i: usize) {
        self.nodes[i].kill9();
        let data = self.dirs[i].path().join("data");
        std::fs::remove_dir_all(&data).unwrap();
        self.restart(i);
    }

    /// The cluster's peer key, as the nodes read it from etcd (tests that speak as a node).
    pub fn peer_key(&self) -> Vec<u8> {
        peer_key_of(&self.etcd.endpoint, &self.name)
    }

    /// `hotshard cluster ARGS --etcd ... --cluster ...`: (succeeded, stdout + stderr).
    pub fn cluster_cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(binary())
            .arg("cluster")
            .args(args)
            .args(["--etcd", &self.etcd.endpoint, "--cluster", &self.name])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Every node's first shard: where clients start.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr(0)).collect()
    }

    /// Writes `count` objects of `len` bytes named `prefix-N` through any node.
    pub fn write_objects(&self, prefix: &str, count: usize, len: usize) -> Vec<Vec<u8>> {
        let mut c = BlockingClient::connect(&self.nodes[0].addr(0), Duration::from_secs(2)).unwrap();
        (0..count)
            .map(|i| {
                let key = format!("{prefix}-{i}").into_bytes();
                let value = vec![(i % 251) as u8; len];
                let mut tries = 0;
                while let Err(e) = c.put(&key, &value) {
                    tries += 1;
                    assert!(tries < 50, "put {}: {e:?}", String::from_utf8_lossy(&key));
                    std::thread::sleep(Duration::from_millis(100));
                }
                key
            })
            .collect()
    }

    /// The node id of node `i`, as the cluster knows it.
    pub fn node_id(&self, i: usize) -> u32 {
        let id = std::fs::read_to_string(self.dirs[i].path().join("data").join("node.id")).unwrap();
        id.trim().parse().unwrap()
    }

    /// The newest map any node answers with (epoch 0 if none answers).
    pub fn map(&self) -> hotshard_placement::ShardMap {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter_map(|n| {
                hotshard_net::blocking::BlockingClient::connect(&n.addr(0), Duration::from_secs(2)).ok()
            })
            .map(|c| c.shard_map().clone())
            .max_by_key(|m| m.epoch)
            .unwrap_or_else(|| hotshard_placement::ShardMap::unassigned(1, Vec::new()))
    }

    /// Node `i`'s metric `name`, summed over its shards.
    pub fn node_metric(&self, i: usize, name: &str) -> f64 {
        let text = scrape(self.nodes[i].port + 3);
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Every node's log so far, then the chain history (`cluster history`) of each of
    /// `keys`' partitions.
    pub fn logs_and_history(&self, keys: &[Vec<u8>]) -> String {
        let map = self.map();
        let mut out = self.logs();
        for key in keys {
            let p = map.partition(key);
            let (_, history) = self.cluster_cli(&["history", &p.to_string()]);
            out.push_str(&format!(
                "\nchain history of partition {p} (key {}):\n{history}",
                String::from_utf8_lossy(key)
            ));
        }
        out
    }

    /// Every node's log so far.
    pub fn logs(&self) -> String {
        self.dirs
            .iter()
            .flat_map(|d| ["node.before.log", "node.log"].map(|f| d.path().join(f)))
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Chains with `replication` serving replicas and no move under way.
pub fn whole_chains(map: &ShardMap, replication: usize) -> usize {
    map.chains
        .iter()
        // None syncing or leaving (offline ones may stay).
        .filter(|c| {
            c.replicas
                .iter()
                .filter(|r| r.state == ReplicaState::Serving)
                .count()
                == replication
                && c.replicas
                    .iter()
                    .all(|r| matches!(r.state, ReplicaState::Serving | ReplicaState::Offline))
        })
        .count()
}

/// Cluster `name`'s peer key in the etcd at `endpoint` (made by its coordinator).
pub fn peer_key_of(endpoint: &str, name: &str) -> Vec<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = hotshard_cluster::connect(&[endpoint.to_string()]).await.unwrap();
        let keys = hotshard_cluster::ClusterKeys::new(name).unwrap();
        hotshard_cluster::coordinator::read_peer_key(&client, &keys)
            .await
            .unwrap()
            .expect("the coordinator made the peer key")
    })
}

/// One RESP command to the front at `addr`; its reply's first line.
pub fn resp(addr: &str, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(out.as_bytes()).unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "the front closed the connection");
        reply.push(byte[0]);
    }
    String::from_utf8_lossy(&reply).trim_end().to_string()
}
