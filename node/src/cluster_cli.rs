//! The control-plane commands of the `hotshard` binary: `coordinator` (run one; exactly one
//! of those running acts), `cluster status`, `cluster drain` / `undrain`, `cluster accept-loss` and `cluster history`. Each runs a tokio runtime on this thread;
//! no shard runs in these processes.

use std::time::Duration;

use hotshard_cluster::coordinator::{run_coordinator, CoordinatorConfig};
use hotshard_cluster::{cluster_status, connect, ClusterKeys};

/// Where the cluster's state lives.
#[derive(clap::Args, Debug, Clone)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated: http://host:port[,http://host:port...]
    #[arg(long, value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
    /// The cluster's name: its state lives under /hotshard/<name>/ in etcd.
    #[arg(long, default_value = "hotshard")]
    pub cluster: String,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Form the cluster only once this many nodes have registered (so that two
    /// half-started clusters cannot form).
    #[arg(long)]
    pub expect_nodes: usize,
    #[arg(long, default_value_t = 3)]
    pub replication: usize,
    /// 2^bits partitions; fixed when the cluster forms (the nodes' stores must agree).
    #[arg(long, default_value_t = hotshard_placement::DEFAULT_PARTITION_BITS)]
    pub partition_bits: u8,
    /// The coordinator's lease, seconds (etcd's minimum is 2).
    #[arg(long, default_value_t = 3)]
    pub lease_ttl: i64,
    /// Names this coordinator in `cluster status` (default: host name and process id).
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a node may stay gone before its replicas are rebuilt on the other nodes
    /// (`cluster.down_out`).
    #[arg(long, default_value_t = 600)]
    pub down_out: u64,
    /// Most replicas syncing onto one node at a time (each of its shards runs 16 passes at
    /// once; copies are paced by `cluster.sync_bytes_per_sec` while it has foreground work).
    #[arg(long, default_value_t = 512)]
    pub max_syncing_per_node: usize,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the control runtime: {e}"))
}

fn keys(a: &EtcdArgs) -> Result<ClusterKeys, String> {
    ClusterKeys::new(&a.cluster)
}

/// Runs a coordinator until the process is stopped.
pub fn coordinator(a: CoordinatorArgs) -> Result<(), String> {
    if a.expect_nodes == 0 || a.replication == 0 {
        return Err("--expect-nodes and --replication must be at least 1".into());
    }
    if !(1..=hotshard_placement::limits::MAX_PARTITION_BITS).contains(&a.partition_bits) {
        return Err(format!(
            "--partition-bits must be 1..={}",
            hotshard_placement::limits::MAX_PARTITION_BITS
        ));
    }
    if a.lease_ttl < hotshard_cluster::lease::MIN_TTL_SECS {
        return Err(format!(
            "--lease-ttl must be at least {} s (etcd's minimum)",
            hotshard_cluster::lease::MIN_TTL_SECS
        ));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", host.trim(), std::process::id()));
    let cfg = CoordinatorConfig {
        keys: keys(&a.etcd)?,
        name,
        lease_ttl_secs: a.lease_ttl,
        expect_nodes: a.expect_nodes,
        replication: a.replication,
        partition_bits: a.partition_bits,
        check_every: Duration::from_millis((a.lease_ttl as u64 * 1000 / 6).max(100)),
        down_out: Duration::from_secs(a.down_out),
        max_syncing_per_node: a.max_syncing_per_node.max(1),
    };
    runtime()?.block_on(async {
        let client = connect(&a.etcd.etcd).await.map_err(|e| e.to_string())?;
        eprintln!(
            "coordinator {} for cluster {} on etcd {}: campaigning",
            cfg.name,
            a.etcd.cluster,
            a.etcd.etcd.join(",")
        );
        run_coordinator(client, cfg).await;
        Ok(())
    })
}

/// Prints the cluster's state (text, or JSON with `json`).
pub fn status(a: EtcdArgs, replication: usize, json: bool) -> Result<(), String> {
    runtime()?.block_on(async {
        let client = connect(&a.etcd).await.map_err(|e| e.to_string())?;
        let s = cluster_status(&client, &keys(&a)?, &a.cluster, replication)
            .await
            .map_err(|e| e.to_string())?;
        if json {
            println!("{}", serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?);
        } else {
            print!("{s}");
        }
        Ok(())
    })
}

/// `cluster split KEY`: asks the coordinator to split the bucket index KEY names (a key
/// that begins with its tag, `{bucket}...`) so that the keys from KEY on move to another
/// chain; waits until the split has moved (or `wait` passes) and prints where it stands.
pub fn split(a: EtcdArgs, from: String, wait: std::time::Duration) -> Result<(), String> {
    let from = from.into_bytes();
    if hotshard_placement::index_split::leading_tag(&from).is_none() {
        return Err("a split key begins with its index tag, as {bucket}/key".into());
    }
    if from.len() > hotshard_placement::index_split::MAX_SPLIT_KEY_BYTES {
        return Err("a split key of more than 1,024 bytes".into());
    }
    runtime()?.block_on(async {
        let client = connect(&a.etcd).await.map_err(|e| e.to_string())?;
        let keys = keys(&a)?;
        client
            .clone()
            .put(keys.split_wanted(&from), "", None)
            .await
            .map_err(|e| e.to_string())?;
        let started = std::time::Instant::now();
        loop {
            let map = hotshard_cluster::coordinator::read_map(&client, &keys)
                .await
                .map_err(|e| e.to_string())?
                .map(|(m, _)| m);
            let state = map.as_ref().and_then(|m| {
                m.splits
                    .iter()
                    .find(|s| s.from == from)
                    .map(|s| (s.state, s.partition))
            });
            if let Some((hotshard_placement::SplitState::Moved, p)) = state {
                println!("split: moved to partition {p}");
                return Ok(());
            }
            if started.elapsed() > wait {
                let now = state.map_or("asked".to_string(), |(s, _)| s.name().to_string());
                println!("split: {now}");
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

/// `cluster drain NODE` (with the replication factor) or `cluster undrain NODE` (None).
pub fn drain(a: EtcdArgs, node: u32, replication: Option<usize>) -> Result<(), String> {
    runtime()?.block_on(async {
        let client = connect(&a.etcd).await.map_err(|e| e.to_string())?;
        let keys = keys(&a)?;
        let said = match replication {
            Some(rf) => hotshard_cluster::drain::drain(&client, &keys, node, rf).await,
            None => hotshard_cluster::drain::undrain(&client, &keys, node).await,
        }
        .map_err(|e| e.to_string())?;
        println!("{said}");
        Ok(())
    })
}

/// `cluster accept-loss [PARTITION...] [--node N]`.
pub fn accept_loss(a: EtcdArgs, partitions: &[u32], gone: Option<u32>) -> Result<(), String> {
    runtime()?.block_on(async {
        let client = connect(&a.etcd).await.map_err(|e| e.to_string())?;
        let said = hotshard_cluster::accept_loss::accept_loss(&client, &keys(&a)?, partitions, gone)
            .await
            .map_err(|e| e.to_string())?;
        println!("{said}");
        Ok(())
    })
}

/// `cluster history PARTITION`.
pub fn history(a: EtcdArgs, partition: u32) -> Result<(), String> {
    runtime()?.block_on(async {
        let client = connect(&a.etcd).await.map_err(|e| e.to_string())?;
        let maps = hotshard_cluster::history::map_history(&client, &keys(&a)?)
            .await
            .map_err(|e| e.to_string())?;
        if maps.is_empty() {
            return Err("the cluster has not formed yet".into());
        }
        print!("{}", hotshard_cluster::history::chain_history(&maps, partition));
        Ok(())
    })
}
