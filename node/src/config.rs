//! The node's configuration: a TOML profile (see hw-configs/) or the embedded default.
//! Unknown keys and impossible values are refused with a message that names the key.

use std::path::PathBuf;

use serde::Deserialize;

/// The embedded default, written out as hw-configs/default.toml.
pub const DEFAULT_PROFILE: &str = include_str!("../../hw-configs/default.toml");

/// Cap on the data file the embedded default creates: large enough to show the node
/// working, small enough to create in seconds and never fill a developer's disk.
pub const DEFAULT_DATA_CAP_BYTES: u64 = 1 << 30;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub queue: QueueSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub net: NetSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub cluster: ClusterSection,
    #[serde(default)]
    pub resp: RespSection,
    #[serde(default)]
    pub s3: S3Section,
}

/// The S3 gateway inside `serve` (issue 34): a tokio thread pool off the shard cores, talking
/// to the shards through the client like any gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Section {
    /// Where it listens (`127.0.0.1:9000` in the embedded default); empty: no gateway.
    pub listen: String,
    /// Its credentials (SigV4). `HOTSHARD_S3_ACCESS_KEY` and `HOTSHARD_S3_SECRET_KEY`
    /// override them; with neither, keys are generated once into the data directory.
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// Chunk size of new objects, in KiB (at most the node's value limit, 8 MiB).
    pub chunk_kib: u64,
    /// Threads for HTTP and threads holding node clients.
    pub threads: usize,
    /// How often the gateway sweeps chunks a crash left without an entry (0: never), and
    /// how old a PUT's intent must be before the sweep settles it.
    pub sweep_every_secs: u64,
    pub orphan_after_secs: u64,
}

impl Default for S3Section {
    fn default() -> Self {
        S3Section {
            listen: String::new(),
            access_key: None,
            secret_key: None,
            chunk_kib: 1024,
            threads: 1,
            sweep_every_secs: 300,
            orphan_after_secs: 3600,
        }
    }
}

/// The Redis-protocol front (issue 21): every shard accepts on `node.resp_port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RespSection {
    /// KEYS is refused when the node holds more keys than this (SCAN walks any number).
    pub keys_limit: u64,
    /// Whether FLUSHALL may delete every key (off: it is refused).
    pub allow_flushall: bool,
    /// Bytes of values one shard's multi-key replies (MGET) may hold in memory before they
    /// are written: each value is copied out of its device buffer as it is read (so that a
    /// command never holds more than one buffer of the DMA pool and cannot wait on
    /// itself), and the copies count here until the reply has gone. A command that would
    /// pass it is answered an error. Redis's nearest is `client-output-buffer-limit`.
    pub max_reply_mib: usize,
}

impl Default for RespSection {
    fn default() -> Self {
        RespSection {
            keys_limit: 10_000,
            allow_flushall: false,
            max_reply_mib: 512,
        }
    }
}

/// Membership of a cluster whose state lives in etcd. With no endpoints the node runs
/// alone (the Quick start), owning every partition.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// etcd endpoints (`http://host:port`); empty: no cluster.
    pub etcd: Vec<String>,
    /// The cluster's name: its state lives under /hotshard/<name>/ in etcd.
    pub name: String,
    /// The IP other nodes and clients reach this node at; empty: node.listen (which must
    /// then not be a wildcard).
    pub advertise: String,
    /// The node's lease: if etcd hears nothing from it for this long, its replicas are
    /// taken out of their chains. At least 2 (etcd's minimum).
    pub lease_ttl_secs: i64,
    /// The most bytes per second a shard copies while it catches up with a chain it
    /// rejoined (0: no limit), so that the foreground keeps most of the device.
    pub sync_bytes_per_sec: u64,
    /// A bucket index (keys that begin with one `{tag}`) that grows past this many entries
    /// in one partition is split by key onto another chain (issue 33); 0: never.
    pub split_entries: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            etcd: Vec::new(),
            name: "hotshard".into(),
            advertise: String::new(),
            lease_ttl_secs: 3,
            sync_bytes_per_sec: 64 << 20,
            split_entries: 200_000,
        }
    }
}

impl ClusterSection {
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }
}

/// An optional shared secret: when set, every connection must prove it (HMAC
/// challenge-response) before any request. Never logged, printed or exported.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// The secret itself (at least 16 bytes).
    pub secret: Option<String>,
    /// Or a file holding it (trailing newline ignored); keeps it out of the profile.
    pub secret_file: Option<PathBuf>,
    /// A cluster node listening on an address other than loopback with no secret lets
    /// anyone who reaches it read and write every key: it refuses to start unless this
    /// says that is meant (a private network, a test bed).
    pub insecure: bool,
}

impl std::fmt::Debug for AuthSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSection")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Minimum secret length: short secrets fall to offline guessing of captured proofs.
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Directory for the data file and the lock.
    pub data_dir: PathBuf,
    /// Size of the data file; 0 = from free space, capped at 1 GiB.
    pub data_bytes: u64,
    /// A block device or file to use instead of `data_dir/data.img`.
    pub device: Option<PathBuf>,
    /// Address the shards listen on (loopback by default).
    pub listen: String,
    /// Shard i listens on base_port + i.
    pub base_port: u16,
    /// Prometheus metrics and health on this port; 0 = off.
    pub admin_port: u16,
    /// The Redis protocol (RESP2) on this port, one socket every shard accepts from; 0 = off.
    pub resp_port: u16,
    /// Cores to run shards on; empty = every core.
    pub cores: Vec<usize>,
    /// 2^bits partitions in the cluster, fixed at creation.
    pub partition_bits: u8,
    /// Node id in the shard map.
    pub node_id: u32,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            data_dir: PathBuf::from("hotshard-data"),
            data_bytes: 0,
            device: None,
            listen: "127.0.0.1".into(),
            base_port: 7400,
            admin_port: 7480,
            resp_port: 6400,
            cores: Vec::new(),
            partition_bits: crate::limits::DEFAULT_PARTITION_BITS,
            node_id: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    /// "uring" or "dmafile".
    pub backend: String,
    pub entries: u32,
    pub pool_mib: usize,
    /// Kernel submission polling idle time in ms; 0 = off.
    pub sqpoll_idle_ms: u32,
    pub iopoll: bool,
    /// Block for a completion after this many idle polls; 0 = never block the core.
    pub wait_after_idle_polls: u32,
    /// Sleep this long (µs) when the device poller finds nothing while I/O is in flight;
    /// 0 = poll on every executor turn (the default: a 5 µs glommio timer sleeps much
    /// longer than 5 µs, and device GET and durable PUT measured 14-20% faster without
    /// it, BENCHMARKS.md). With nothing in flight the poller parks either way.
    pub poll_sleep_us: u32,
}

impl Default for QueueSection {
    fn default() -> Self {
        QueueSection {
            backend: "uring".into(),
            entries: 256,
            pool_mib: 128,
            sqpoll_idle_ms: 0,
            iopoll: false,
            wait_after_idle_polls: 0,
            poll_sleep_us: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    pub segment_mib: u64,
    pub batch_kib: usize,
    pub cache_mib: usize,
    /// Index memory per shard, MiB; past it, writes of new keys answer NoSpace. 0 =
    /// automatic: half of the machine's memory shared among the shards.
    pub index_mib: usize,
    /// "fua" or "flush".
    pub durability: String,
    /// Where GC writes the records it moves: "shared" (the log's durable batches) or
    /// "own" (a log head of its own, written without FUA and flushed once before each
    /// victim is freed: for devices with FUA; untested for speed here, see BENCHMARKS.md).
    pub gc_head: String,
    /// How GC picks victims: "greedy" (the least live) or "cost-benefit" (space freed per
    /// byte moved, weighted by the data's age).
    pub gc_victims: String,
    pub gc_max_live_fraction: f64,
    /// Batch writes in flight at once: small batches go one at a time, large ones (a
    /// quarter of batch_kib or more) overlap up to this many.
    pub writes_in_flight: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            segment_mib: crate::limits::DEFAULT_SEGMENT_BYTES >> 20,
            batch_kib: crate::limits::DEFAULT_BATCH_BYTES >> 10,
            cache_mib: crate::limits::DEFAULT_CACHE_BYTES >> 20,
            index_mib: 0,
            durability: "fua".into(),
            gc_head: "shared".into(),
            gc_victims: "greedy".into(),
            gc_max_live_fraction: 0.5,
            writes_in_flight: hotshard_store::limits::DEFAULT_WRITES_IN_FLIGHT,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetSection {
    pub max_in_flight: usize,
    pub max_connections: usize,
    /// Requests a shard answers at once (all connections); more are answered Busy.
    pub max_pending_requests: usize,
    /// Bytes those requests may hold (payloads in, values out), MiB; more are answered
    /// Busy. 0 = automatic: a quarter of queue.pool_mib, at least one largest value.
    pub max_pending_mib: usize,
    /// A begun frame must arrive whole, and replies must be read, within this time.
    pub frame_timeout_ms: u64,
    /// While a shard polls its sockets with nothing to do, let any other thread ready on
    /// its core run first (`sched_yield`). For hosts where shards share cores (several
    /// nodes on one machine, as in the test bed); off when each shard owns its core.
    pub yield_when_idle: bool,
}

impl Default for NetSection {
    fn default() -> Self {
        NetSection {
            max_in_flight: hotshard_net::limits::DEFAULT_MAX_IN_FLIGHT,
            max_connections: 1024,
            max_pending_requests: 4096,
            max_pending_mib: 0,
            frame_timeout_ms: 10_000,
            yield_when_idle: false,
        }
    }
}

fn bad(key: &str, why: impl std::fmt::Display) -> String {
    format!("config key `{key}`: {why}")
}

impl NodeConfig {
    /// Parses and checks a profile; the error names the offending key.
    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| {
            // A parse error quotes the offending line; never let that be the secret.
            let msg: Vec<String> = e
                .to_string()
                .trim()
                .lines()
                .map(|l| {
                    if l.contains("secret") && l.contains('=') {
                        "   | <line with the secret, not shown>".to_string()
                    } else {
                        l.to_string()
                    }
                })
                .collect();
            format!("config: {}", msg.join("\n"))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: Option<&std::path::Path>) -> Result<NodeConfig, String> {
        match path {
            None => NodeConfig::parse(DEFAULT_PROFILE),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
                NodeConfig::parse(&text)
            }
        }
    }

    fn validate(&self) -> Result<(), String> {
        let s3 = &self.s3;
        if !s3.listen.is_empty() && s3.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad("s3.listen", "must be an address and port, as 127.0.0.1:9000"));
        }
        if s3.access_key.is_some() != s3.secret_key.is_some() {
            return Err(bad("s3", "access_key and secret_key go together"));
        }
        if s3.chunk_kib == 0 || s3.chunk_kib > (hotshard_net::limits::MAX_PAYLOAD_BYTES >> 10) as u64 {
            return Err(bad("s3.chunk_kib", "must be 1 to 8192 (the node's value limit)"));
        }
        if s3.threads == 0 || s3.threads > 64 {
            return Err(bad("s3.threads", "must be 1 to 64"));
        }
        if self.auth.secret.is_some() {
            self.secret()?;
        }
        let c = &self.cluster;
        if c.enabled() {
            hotshard_cluster::ClusterKeys::new(&c.name).map_err(|e| bad("cluster.name", e))?;
            if c.lease_ttl_secs < hotshard_cluster::lease::MIN_TTL_SECS {
                return Err(bad(
                    "cluster.lease_ttl_secs",
                    "must be at least 2 (etcd's minimum)",
                ));
            }
            if let Some(e) = c
                .etcd
                .iter()
                .find(|e| !e.starts_with("http://") && !e.starts_with("https://"))
            {
                return Err(bad(
                    "cluster.etcd",
                    format!("'{e}' is not an http:// or https:// URL"),
                ));
            }
            let open = self.auth.secret.is_none() && self.auth.secret_file.is_none();
            let loopback = |a: &str| a.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if open
                && !self.auth.insecure
                && !(loopback(&self.node.listen) && loopback(&self.advertised_host()))
            {
                return Err(bad(
                    "auth",
                    format!(
                        "a cluster node listening on {} with no secret lets anyone who reaches it read \
                         and write every key: set auth.secret (or auth.secret_file), or \
                         auth.insecure = true to run it open on purpose",
                        self.node.listen
                    ),
                ));
            }
            let host = self.advertised_host();
            match host.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_unspecified() => {
                    return Err(bad(
                        "cluster.advertise",
                        "set the address other nodes reach this node at (node.listen is a wildcard)",
                    ))
                }
                Ok(_) => {}
                Err(_) => return Err(bad("cluster.advertise", format!("'{host}' is not an IP address"))),
            }
        }
        let n = &self.node;
        if n.base_port == 0 {
            return Err(bad("node.base_port", "must be a port number above 0"));
        }
        if n.listen.parse::<std::net::IpAddr>().is_err() {
            return Err(bad("node.listen", format!("'{}' is not an IP address", n.listen)));
        }
        if !(1..=crate::limits::MAX_PARTITION_BITS).contains(&n.partition_bits) {
            return Err(bad(
                "node.partition_bits",
                format!("must be between 1 and {}", crate::limits::MAX_PARTITION_BITS),
            ));
        }
        let cores = crate::config::online_cores();
        if let Some(c) = n.cores.iter().find(|c| **c >= cores) {
            return Err(bad(
                "node.cores",
                format!("core {c} does not exist (this machine has {cores})"),
            ));
        }
        if let Some((i, c)) = n
            .cores
            .iter()
            .enumerate()
            .find(|(i, c)| n.cores[..*i].contains(c))
        {
            return Err(bad(
                "node.cores",
                format!("core {c} is listed twice (entry {i}): one shard per core"),
            ));
        }
        if n.data_bytes != 0 && n.data_bytes < (64 << 20) {
            return Err(bad("node.data_bytes", "must be 0 (automatic) or at least 64 MiB"));
        }
        let q = &self.queue;
        if q.backend != "uring" && q.backend != "dmafile" {
            return Err(bad(
                "queue.backend",
                format!("'{}' is not one of uring, dmafile", q.backend),
            ));
        }
        if q.entries == 0 || q.entries > 32768 || !q.entries.is_power_of_two() {
            return Err(bad("queue.entries", "must be a power of two between 1 and 32768"));
        }
        if q.poll_sleep_us > 10_000 {
            return Err(bad("queue.poll_sleep_us", "must be at most 10000 (10 ms)"));
        }
        if q.pool_mib < crate::limits::MIN_POOL_MIB || q.pool_mib > 1024 {
            return Err(bad(
                "queue.pool_mib",
                format!(
                    "must be between {} and 1024 (it must hold two segments)",
                    crate::limits::MIN_POOL_MIB
                ),
            ));
        }
        let s = &self.store;
        if s.segment_mib < crate::limits::MIN_SEGMENT_MIB || s.segment_mib > 1024 {
            return Err(bad(
                "store.segment_mib",
                format!(
                    "must be between {} (the largest value and its headers) and 1024",
                    crate::limits::MIN_SEGMENT_MIB
                ),
            ));
        }
        if s.segment_mib as usize * 2 > q.pool_mib {
            return Err(bad(
                "store.segment_mib",
                "two segments must fit in queue.pool_mib (recovery reads ahead)",
            ));
        }
        let max_batch_kib = crate::limits::MAX_BATCH_BYTES >> 10;
        if s.batch_kib < 4 || s.batch_kib > max_batch_kib {
            return Err(bad(
                "store.batch_kib",
                format!("must be between 4 and {max_batch_kib}"),
            ));
        }
        let max_writes = hotshard_store::limits::MAX_WRITES_IN_FLIGHT;
        if s.writes_in_flight == 0 || s.writes_in_flight > max_writes {
            return Err(bad(
                "store.writes_in_flight",
                format!("must be between 1 and {max_writes}"),
            ));
        }
        if s.durability != "fua" && s.durability != "flush" {
            return Err(bad(
                "store.durability",
                format!("'{}' is not one of fua, flush", s.durability),
            ));
        }
        if s.gc_head != "own" && s.gc_head != "shared" {
            return Err(bad(
                "store.gc_head",
                format!("'{}' is not one of own, shared", s.gc_head),
            ));
        }
        if s.gc_victims != "greedy" && s.gc_victims != "cost-benefit" {
            return Err(bad(
                "store.gc_victims",
                format!("'{}' is not one of greedy, cost-benefit", s.gc_victims),
            ));
        }
        if !(0.0..1.0).contains(&s.gc_max_live_fraction) {
            return Err(bad(
                "store.gc_max_live_fraction",
                "must be at least 0 and below 1",
            ));
        }
        if self.net.max_in_flight == 0 || self.net.max_in_flight > 4096 {
            return Err(bad("net.max_in_flight", "must be between 1 and 4096"));
        }
        if self.net.max_connections == 0 {
            return Err(bad("net.max_connections", "must be at least 1"));
        }
        if self.net.max_pending_requests == 0 {
            return Err(bad("net.max_pending_requests", "must be at least 1"));
        }
        let max_value_mib = crate::limits::MAX_VALUE_BYTES.div_ceil(1 << 20);
        let pending = self.net.max_pending_mib;
        if pending != 0 && (pending < max_value_mib || pending > self.queue.pool_mib / 2) {
            return Err(bad(
                "net.max_pending_mib",
                format!(
                    "must be between {max_value_mib} (one largest value) and half of queue.pool_mib ({}), \
                     so that writes and GC always find DMA buffers",
                    self.queue.pool_mib / 2
                ),
            ));
        }
        if !(100..=3_600_000).contains(&self.net.frame_timeout_ms) {
            return Err(bad("net.frame_timeout_ms", "must be between 100 and 3600000"));
        }
        Ok(())
    }

    /// The shared secret, if one is configured (read from `secret_file` if given there).
    pub fn secret(&self) -> Result<Option<Vec<u8>>, String> {
        let secret = match (&self.auth.secret, &self.auth.secret_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err(bad("auth.secret", "give secret or secret_file, not both")),
            (Some(s), None) => s.as_bytes().to_vec(),
            (None, Some(p)) => {
                let mut b =
                    std::fs::read(p).map_err(|e| bad("auth.secret_file", format!("{}: {e}", p.display())))?;
                while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                    b.pop();
                }
                b
            }
        };
        if secret.len() < MIN_SECRET_BYTES {
            return Err(bad(
                "auth.secret",
                format!("must be at least {MIN_SECRET_BYTES} bytes"),
            ));
        }
        Ok(Some(secret))
    }

    /// The pending budget of one shard, in bytes (see `net.max_pending_mib`).
    pub fn pending_bytes(&self) -> usize {
        let mib = match self.net.max_pending_mib {
            0 => (self.queue.pool_mib / 4).max(crate::limits::MAX_VALUE_BYTES.div_ceil(1 << 20)),
            n => n,
        };
        mib << 20
    }

    /// The index budget of one shard, in bytes (see `store.index_mib`).
    pub fn index_budget_bytes(&self) -> usize {
        match self.store.index_mib {
            0 => (memory_bytes() / 2 / self.shard_cores().len().max(1) as u64) as usize,
            n => n << 20,
        }
    }

    /// The cores shards run on.
    /// The IP this node's shards are reached at by other nodes and clients.
    pub fn advertised_host(&self) -> String {
        if self.cluster.advertise.is_empty() {
            self.node.listen.clone()
        } else {
            self.cluster.advertise.clone()
        }
    }

    pub fn shard_cores(&self) -> Vec<usize> {
        if self.node.cores.is_empty() {
            (0..online_cores()).collect()
        } else {
            self.node.cores.clone()
        }
    }
}

pub fn online_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The machine's memory (MemTotal), or 4 GiB if /proc/meminfo cannot say.
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(4 << 30, |kib| kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_default_parses() {
        let cfg = NodeConfig::parse(DEFAULT_PROFILE).unwrap();
        assert_eq!(cfg.node.base_port, 7400);
        assert_eq!(cfg.node.listen, "127.0.0.1");
    }

    #[test]
    fn every_shipped_profile_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hw-configs");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed: Result<NodeConfig, _> = toml::from_str(&text);
            assert!(parsed.is_ok(), "{}: {:?}", path.display(), parsed.err());
        }
    }

    #[test]
    fn unknown_keys_and_impossible_values_name_the_key() {
        let e = NodeConfig::parse("[node]\nbase_prot = 1\n").unwrap_err();
        assert!(e.contains("base_prot"), "{e}");
        let e = NodeConfig::parse("[store]\ndurability = \"maybe\"\n").unwrap_err();
        assert!(e.contains("store.durability"), "{e}");
        let e = NodeConfig::parse("[store]\ngc_head = \"theirs\"\n").unwrap_err();
        assert!(e.contains("store.gc_head"), "{e}");
        let e = NodeConfig::parse("[store]\ngc_victims = \"random\"\n").unwrap_err();
        assert!(e.contains("store.gc_victims"), "{e}");
        let e = NodeConfig::parse("[queue]\nentries = 100\n").unwrap_err();
        assert!(e.contains("queue.entries"), "{e}");
        let e = NodeConfig::parse("[node]\ncores = [999]\n").unwrap_err();
        assert!(e.contains("node.cores"), "{e}");
        let e = NodeConfig::parse("[node]\ncores = [0, 0]\n").unwrap_err();
        assert!(e.contains("node.cores") && e.contains("twice"), "{e}");
        let e = NodeConfig::parse("[bogus]\nx = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = NodeConfig::parse("[net]\nmax_pending_mib = 100\n[queue]\npool_mib = 128\n").unwrap_err();
        assert!(e.contains("net.max_pending_mib"), "{e}");
        let e = NodeConfig::parse("[net]\nframe_timeout_ms = 5\n").unwrap_err();
        assert!(e.contains("net.frame_timeout_ms"), "{e}");
    }

    #[test]
    fn the_s3_section_is_checked_and_off_unless_given() {
        assert_eq!(NodeConfig::parse("").unwrap().s3.listen, "");
        assert_eq!(
            NodeConfig::parse(DEFAULT_PROFILE).unwrap().s3.listen,
            "127.0.0.1:9000"
        );
        for (bad, key) in [
            ("[s3]\nlisten = \"localhost\"\n", "s3.listen"),
            ("[s3]\naccess_key = \"a\"\n", "s3"),
            ("[s3]\nchunk_kib = 0\n", "s3.chunk_kib"),
            ("[s3]\nchunk_kib = 8193\n", "s3.chunk_kib"),
            ("[s3]\nthreads = 0\n", "s3.threads"),
        ] {
            let e = NodeConfig::parse(bad).unwrap_err();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn the_secret_is_checked_and_never_shown() {
        let cfg = NodeConfig::parse("[auth]\nsecret = \"0123456789abcdef-xyz\"\n").unwrap();
        assert_eq!(cfg.secret().unwrap().unwrap(), b"0123456789abcdef-xyz");
        assert!(
            !format!("{cfg:?}").contains("0123456789abcdef"),
            "Debug shows the secret"
        );
        let e = NodeConfig::parse("[auth]\nsecret = \"short\"\n").unwrap_err();
        assert!(e.contains("auth.secret") && !e.contains("short"), "{e}");
        let e = NodeConfig::parse("[auth]\nsecret = \"0123456789abcdef-xyz\" junk\n").unwrap_err();
        assert!(!e.contains("0123456789abcdef"), "{e}");
        assert_eq!(NodeConfig::parse("").unwrap().secret().unwrap(), None);
    }

    #[test]
    fn a_cluster_node_open_to_the_network_starts_only_with_a_secret_or_insecure_said() {
        let cluster = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n";
        let open = format!("[node]\nlisten = \"0.0.0.0\"\n{cluster}advertise = \"10.0.0.5\"\n");
        let e = NodeConfig::parse(&open).unwrap_err();
        assert!(e.contains("auth") && e.contains("insecure"), "{e}");
        let said = format!("{open}[auth]\ninsecure = true\n");
        assert!(NodeConfig::parse(&said).is_ok());
        let secret = format!("{open}[auth]\nsecret = \"0123456789abcdef-xyz\"\n");
        assert!(NodeConfig::parse(&secret).is_ok());
        // Loopback (the embedded default and the tests' clusters), or no cluster: as before.
        assert!(NodeConfig::parse(cluster).is_ok());
        assert!(NodeConfig::parse("[node]\nlisten = \"0.0.0.0\"\n").is_ok());
    }

    #[test]
    fn the_index_budget_is_half_the_memory_over_the_shards_unless_set() {
        let auto = NodeConfig::parse("[node]\ncores = [0, 1]\n").unwrap();
        assert_eq!(auto.index_budget_bytes() as u64, memory_bytes() / 4);
        let set = NodeConfig::parse("[store]\nindex_mib = 300\n").unwrap();
        assert_eq!(set.index_budget_bytes(), 300 << 20);
    }

    #[test]
    fn the_pending_budget_follows_the_pool_unless_set() {
        let cfg = NodeConfig::parse("[queue]\npool_mib = 128\n").unwrap();
        assert_eq!(cfg.pending_bytes(), 32 << 20);
        let cfg = NodeConfig::parse("[queue]\npool_mib = 32\n").unwrap();
        assert_eq!(cfg.pending_bytes(), 8 << 20, "at least one largest value");
        let cfg = NodeConfig::parse("[net]\nmax_pending_mib = 40\n").unwrap();
        assert_eq!(cfg.pending_bytes(), 40 << 20);
    }
}
