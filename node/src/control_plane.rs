//! A cluster node's control thread (tokio, off the shard cores): registers the node in
//! etcd under its lease, keeps the lease alive, and posts every newer cluster map on the
//! shards' `MapBoard`. Until the cluster's map arrives the shards serve nothing of it
//! (their starting map has no serving replica).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotshard_cluster::coordinator::{map_revision, read_cluster_id, read_map, read_peer_key};
use hotshard_cluster::etcd_client::{Txn, TxnOp};
use hotshard_cluster::registration::{register_again, NodeRecord};
use hotshard_cluster::{connect, ClusterError, ClusterKeys};

use crate::config::NodeConfig;
use crate::map_cell::MapBoard;

/// How long a node keeps trying to register an id that etcd says is alive: a node that
/// restarts within its old lease's TTL finds its previous registration still there.
fn id_taken_patience(ttl_secs: i64) -> Duration {
    Duration::from_secs(2 * ttl_secs as u64 + 1)
}

/// Starts the control thread. It ends when `shutdown` is set (revoking the lease, so that
/// the node's replicas leave their chains at once), or ends the process if another live
/// node holds this node's id.
pub fn start(
    cfg: &NodeConfig,
    record: NodeRecord,
    board: Arc<MapBoard>,
    shutdown: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    let c = cfg.cluster.clone();
    let keys = ClusterKeys::new(&c.name)?;
    let partition_bits = cfg.node.partition_bits;
    let data_dir = cfg.node.data_dir.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("hotshard: control thread: {e}");
                    std::process::exit(1);
                }
            };
            let ctx = Context {
                node_id: record.id,
                keys,
                partition_bits,
                data_dir,
                board,
                seen_revision: std::cell::Cell::new(0),
            };
            rt.block_on(control_loop(c, ctx, record, shutdown));
        })
        .map_err(|e| format!("starting the control thread: {e}"))
}

/// Reads the cluster map and posts it for the shards if it is newer and its partition
/// count matches the store's; the first time, the cluster's id is kept with the data, and
/// data of another cluster ends the process before anything is served. Returns whether
/// etcd answered.
async fn post_map(
    client: &hotshard_cluster::etcd_client::Client,
    ctx: &Context,
    warned_bits: &mut bool,
) -> bool {
    // The map is fetched and decoded only when it was written since the last look.
    match map_revision(client, &ctx.keys).await {
        Ok(rev) if rev == ctx.seen_revision.get() => return true,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!("reading the cluster map's revision: {e}");
            return false;
        }
    }
    let map = match read_map(client, &ctx.keys).await {
        Ok(Some((map, rev))) => {
            ctx.seen_revision.set(rev);
            map
        }
        Ok(None) => return true,
        Err(e) => {
            tracing::warn!("reading the cluster map: {e}");
            return false;
        }
    };
    if map.partition_bits != ctx.partition_bits {
        if !*warned_bits {
            eprintln!(
                "hotshard: the cluster map has 2^{} partitions and this node's store 2^{}: not adopted",
                map.partition_bits, ctx.partition_bits
            );
            *warned_bits = true;
        }
        return true;
    }
    if ctx.board.peer_key().is_none() {
        match read_peer_key(client, &ctx.keys).await {
            Ok(Some(key)) => ctx.board.set_peer_key(key),
            // Made before the map: a coordinator of an older release formed this cluster.
            // Nodes cannot replicate to each other until one of this release makes it.
            Ok(None) => tracing::warn!("the cluster has a map but no peer key yet"),
            Err(e) => {
                tracing::warn!("reading the cluster's peer key: {e}");
                return false;
            }
        }
    }
    if map.epoch > ctx.board.epoch() {
        match read_cluster_id(client, &ctx.keys).await {
            Ok(Some(id)) => {
                if let Err(e) = crate::node_identity::check_cluster(&ctx.data_dir, &id) {
                    eprintln!("hotshard: {e}");
                    std::process::exit(2);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("reading the cluster id: {e}");
                return false;
            }
        }
    }
    #[cfg(feature = "planted-faults")]
    delay_a_map_that_stops_reads_here(ctx, &map).await;
    let epoch = map.epoch;
    if ctx.board.post(map) {
        tracing::info!(epoch, "cluster map posted to the shards");
    }
    true
}

/// A planted fault, for the test of a replica leaving its chain: with
/// `HOTSHARD_PLANTED_BUG=slow-to-leave:MS`, a map in which this node stops serving reads of
/// a partition it reads by the map posted now is posted MS milliseconds late, as a node
/// whose shards lag the cluster's map does. Only in builds with the `planted-faults`
/// feature.
#[cfg(feature = "planted-faults")]
async fn delay_a_map_that_stops_reads_here(ctx: &Context, map: &hotshard_placement::ShardMap) {
    use hotshard_placement::{ReplicaState, ShardMap};
    static DELAY: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| crate::planted::fault("slow-to-leave")?.parse().ok());
    let (Some(ms), Some(posted)) = (delay, ctx.board.newer_than(0)) else {
        return;
    };
    let reads_here = |m: &ShardMap, p: usize| {
        m.chains.get(p).is_some_and(|c| {
            c.replicas.iter().any(|r| {
                r.state == ReplicaState::Serving
                    && m.shards
                        .get(r.shard as usize)
                        .is_some_and(|s| s.node == ctx.node_id)
            })
        })
    };
    if (0..posted.chains.len()).any(|p| reads_here(&posted, p) && !reads_here(map, p)) {
        tracing::info!(epoch = map.epoch, ms, "planted: posting a map late");
        tokio::time::sleep(Duration::from_millis(*ms)).await;
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the control loop works with besides the cluster section.
struct Context {
    #[cfg_attr(not(feature = "planted-faults"), allow(dead_code))]
    node_id: u32,
    keys: ClusterKeys,
    /// The store's partition count: a map with another is not adopted.
    partition_bits: u8,
    /// Where the cluster id is kept with the data.
    data_dir: std::path::PathBuf,
    board: Arc<MapBoard>,
    /// Revision of the map last fetched (0: none).
    seen_revision: std::cell::Cell<i64>,
}

async fn control_loop(
    c: crate::config::ClusterSection,
    ctx: Context,
    record: NodeRecord,
    shutdown: Arc<AtomicBool>,
) {
    let (keys, board) = (&ctx.keys, &ctx.board);
    let every = Duration::from_millis((c.lease_ttl_secs as u64 * 1000 / 6).max(100));
    let mut warned_unreachable = false;
    let mut id_taken_since: Option<Instant> = None;
    // The lease of this process's last registration: a record still bound to it is ours.
    let mut previous_lease: Option<i64> = None;
    'connect: while !shutdown.load(Ordering::Relaxed) {
        let client = match connect(&c.etcd).await {
            Ok(client) => client,
            Err(e) => {
                id_taken_since = None;
                if !warned_unreachable {
                    eprintln!("hotshard: {e}; retrying (serving nothing of the cluster until registered)");
                    warned_unreachable = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let registration = match register_again(
            &client,
            keys,
            record.clone(),
            c.lease_ttl_secs,
            previous_lease,
        )
        .await
        {
            Ok(r) => r,
            Err(ClusterError::NodeIdTaken(id)) => {
                let since = *id_taken_since.get_or_insert_with(Instant::now);
                if since.elapsed() > id_taken_patience(c.lease_ttl_secs) {
                    eprintln!(
                        "hotshard: node id {id} (from the data directory) is registered by another live node: \
                         two processes cannot be one node; stopping"
                    );
                    std::process::exit(2);
                }
                tokio::time::sleep(every).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("registering: {e}; retrying");
                // Patience for a twin counts while etcd answers, not across an outage.
                id_taken_since = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        previous_lease = Some(registration.lease.id());
        eprintln!(
            "hotshard: node {} registered in cluster {} (etcd {})",
            record.id,
            c.name,
            c.etcd.join(",")
        );
        warned_unreachable = false;
        id_taken_since = None;
        // The shards answer nothing until a map records this registration (the coordinator
        // decides what a restarted node's replicas are first).
        board.registered(record.id, registration.lease.id() as u64);
        // The map as the cluster has it now, posted before the shards may answer again
        // under this lease: the one they hold may be from before a lost lease.
        let mut warned_bits = false;
        if !post_map(&client, &ctx, &mut warned_bits).await {
            continue 'connect;
        }
        // Tells the shards how fresh the lease is, apart from the loop below (which may
        // wait on etcd): they fence themselves once it is older than half the TTL.
        let stamp = {
            let (board, confirmations) = (board.clone(), registration.lease.confirmations());
            tokio::spawn(async move {
                loop {
                    board.lease_confirmed(confirmations.since_confirmed());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let _stop_stamping = AbortOnDrop(stamp);
        // Chains the shards caught up with, written to etcd for the coordinator (kept and
        // tried again while etcd does not answer).
        let reports = {
            let (board, client, keys) = (board.clone(), client.clone(), keys.clone());
            tokio::spawn(async move {
                let mut unwritten = Vec::new();
                let mut splits_unwritten = Vec::new();
                loop {
                    for from in board.take_split_wanted() {
                        if let Err(e) = client.clone().put(keys.split_wanted(&from), "", None).await {
                            tracing::warn!("asking for a split: {e}");
                        }
                    }
                    splits_unwritten.extend(board.take_split_done());
                    if !splits_unwritten.is_empty() {
                        let puts: Vec<TxnOp> = splits_unwritten
                            .iter()
                            .take(100)
                            .map(|&(id, n, s, st)| TxnOp::put(keys.split_done(id, n, s, st), "", None))
                            .collect();
                        let n = puts.len();
                        match client.clone().txn(Txn::new().and_then(puts)).await {
                            Ok(_) => drop(splits_unwritten.drain(..n)),
                            Err(e) => tracing::warn!("reporting split copies: {e}"),
                        }
                    }
                    unwritten.extend(board.take_caught_up());
                    // Many at once (a node back after a crash catches up thousands of
                    // chains), in transactions of at most 100 writes (etcd's limit: 128).
                    while !unwritten.is_empty() {
                        let n = unwritten.len().min(100);
                        let puts: Vec<TxnOp> = unwritten[..n]
                            .iter()
                            .map(|c| {
                                let key = keys.caught_up(c.partition, c.node, c.shard);
                                TxnOp::put(key, c.chain_version.to_string(), None)
                            })
                            .collect();
                        match client.clone().txn(Txn::new().and_then(puts)).await {
                            Ok(_) => drop(unwritten.drain(..n)),
                            Err(e) => {
                                tracing::warn!("reporting caught-up chains: {e}");
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let _stop_reporting = AbortOnDrop(reports);
        // Told as soon as the map changes, so that a repaired chain reaches the shards
        // without waiting for the next look; the look every TTL/6 stays, in case the
        // watch is lost.
        let mut map_watch = client.clone().watch(keys.map(), None).await.ok();
        loop {
            if shutdown.load(Ordering::Relaxed) {
                let _ = registration.lease.revoke().await;
                return;
            }
            if !registration.lease.is_alive() {
                eprintln!("hotshard: node {}: lease lost; registering again", record.id);
                continue 'connect;
            }
            post_map(&client, &ctx, &mut warned_bits).await;
            match map_watch.as_mut() {
                Some(watch) => tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    event = watch.message() => {
                        if !matches!(event, Ok(Some(_))) {
                            map_watch = None;
                        }
                    }
                },
                None => tokio::time::sleep(every).await,
            }
        }
    }
}
