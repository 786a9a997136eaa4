//! The coordinator: stateless, any number may run, exactly one acts (`Leadership`). The
//! acting one forms the cluster map once the expected nodes have registered, then keeps
//! it true as nodes' leases expire (their replicas go offline, chain versions and the
//! epoch grow). Every write is guarded by its term and by the map's revision, so neither a
//! deposed coordinator nor a lost update can change the map. Never on the data path.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use hotshard_placement::chain_plan::{form_map, CaughtUpReport};
use hotshard_placement::healing::{next_map, ClusterView, Member, Policy};
use hotshard_placement::{ShardMap, SplitDone, SplitState};
use std::collections::{BTreeMap, BTreeSet};

use crate::error::{ClusterError, ClusterResult};
use crate::keys::ClusterKeys;
use crate::leadership::Leadership;
use crate::registration::NodeRecord;

/// What the coordinator needs to know about the cluster it keeps.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub keys: ClusterKeys,
    /// Names this coordinator in etcd (for `cluster status`).
    pub name: String,
    pub lease_ttl_secs: i64,
    /// The cluster is formed only once this many nodes have registered, so that two
    /// half-started clusters cannot form.
    pub expect_nodes: usize,
    pub replication: usize,
    pub partition_bits: u8,
    /// How often the acting coordinator compares the map with the registered nodes.
    pub check_every: Duration,
    /// How long a node may stay gone before its replicas are rebuilt on the others.
    pub down_out: Duration,
    /// Most replicas syncing onto one node at a time.
    pub max_syncing_per_node: usize,
}

/// The registered nodes (their leases alive), by id.
pub async fn registered_nodes(client: &Client, keys: &ClusterKeys) -> ClusterResult<Vec<NodeRecord>> {
    let got = client
        .clone()
        .get(keys.nodes(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut nodes = Vec::new();
    for kv in got.kvs() {
        match NodeRecord::decode(kv.value()) {
            Ok(mut n) => {
                n.lease = kv.lease();
                nodes.push(n)
            }
            Err(e) => {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a malformed node record: {e}")
            }
        }
    }
    nodes.sort_by_key(|n| n.id);
    Ok(nodes)
}

/// A new cluster's id: 128 random bits in hex.
fn new_cluster_id() -> ClusterResult<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| ClusterError::BadState(format!("reading /dev/urandom: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Makes the cluster's peer key if there is none yet (a put only if the key was never
/// created: every coordinator may try, the first one's stays). Before the cluster forms,
/// so that every node that finds a map finds the key too; and for a cluster formed before
/// there were peer keys.
pub async fn ensure_peer_key(client: &Client, keys: &ClusterKeys) -> ClusterResult<()> {
    let mut b = [0u8; PEER_KEY_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| ClusterError::BadState(format!("reading /dev/urandom: {e}")))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let absent = Compare::create_revision(keys.peer_key(), CompareOp::Equal, 0);
    client
        .clone()
        .txn(
            Txn::new()
                .when([absent])
                .and_then([TxnOp::put(keys.peer_key(), hex, None)]),
        )
        .await?;
    Ok(())
}

/// Bytes of a peer key (as `hotshard_net::auth::PEER_KEY_BYTES`; this crate does not
/// depend on the wire crate).
const PEER_KEY_BYTES: usize = 32;

/// The cluster's peer key in etcd (None until a coordinator made it).
pub async fn read_peer_key(client: &Client, keys: &ClusterKeys) -> ClusterResult<Option<Vec<u8>>> {
    let got = client.clone().get(keys.peer_key(), None).await?;
    let Some(kv) = got.kvs().first() else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(kv.value());
    let bytes: Option<Vec<u8>> = text
        .len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten();
    match bytes {
        Some(b) if !b.is_empty() => Ok(Some(b)),
        _ => Err(ClusterError::BadState("the cluster's peer key is not hex".into())),
    }
}

/// The cluster's id in etcd (None until it forms).
pub async fn read_cluster_id(client: &Client, keys: &ClusterKeys) -> ClusterResult<Option<String>> {
    let got = client.clone().get(keys.cluster_id(), None).await?;
    Ok(got
        .kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

/// The revision the map was last written at (0: none yet), without fetching the map: a
/// node polling for changes fetches and decodes the map only when this moves.
pub async fn map_revision(client: &Client, keys: &ClusterKeys) -> ClusterResult<i64> {
    let got = client
        .clone()
        .get(keys.map(), Some(GetOptions::new().with_keys_only()))
        .await?;
    Ok(got.kvs().first().map_or(0, |kv| kv.mod_revision()))
}

/// The map in etcd and the revision it was last written at (0: none yet).
pub async fn read_map(client: &Client, keys: &ClusterKeys) -> ClusterResult<Option<(ShardMap, i64)>> {
    let got = client.clone().get(keys.map(), None).await?;
    let Some(kv) = got.kvs().first() else {
        return Ok(None);
    };
    let map = ShardMap::from_bytes(kv.value())
        .map_err(|e| ClusterError::BadState(format!("the cluster map: {e}")))?;
    Ok(Some((map, kv.mod_revision())))
}

/// Writes `map` if this coordinator still acts and the map is still the one it read
/// (`read_revision`, 0 for none).
/// With `also`, more writes in the same transaction (the cluster id, when it forms).
async fn write_map(
    leader: &Leadership,
    keys: &ClusterKeys,
    map: &ShardMap,
    read_revision: i64,
    also: Vec<TxnOp>,
) -> ClusterResult<()> {
    let bytes = map
        .to_bytes()
        .map_err(|e| ClusterError::BadState(format!("encoding the map: {e}")))?;
    let same = Compare::mod_revision(keys.map(), CompareOp::Equal, read_revision);
    let mut writes = vec![TxnOp::put(keys.map(), bytes, None)];
    writes.extend(also);
    let txn_ops = vec![TxnOp::txn(Txn::new().when([same]).and_then(writes))];
    let answer = leader.guarded(txn_ops).await?;
    // The inner transaction's outcome: someone else changed the map in between.
    let inner_ok = answer.op_responses().iter().all(|r| match r {
        etcd_client::TxnOpResponse::Txn(t) => t.succeeded(),
        _ => true,
    });
    if !inner_ok {
        return Err(ClusterError::MapChanged);
    }
    Ok(())
}

/// One pass of the acting coordinator: forms the map if there is none and enough nodes
/// registered; otherwise takes lost nodes' replicas out of their chains. Returns the map
/// now in etcd (None while waiting for nodes).
pub async fn reconcile_once(
    client: &Client,
    leader: &Leadership,
    cfg: &CoordinatorConfig,
) -> ClusterResult<Option<ShardMap>> {
    let nodes = registered_nodes(client, &cfg.keys).await?;
    match read_map(client, &cfg.keys).await? {
        None => {
            if nodes.len() < cfg.expect_nodes {
                tracing::info!(
                    registered = nodes.len(),
                    expected = cfg.expect_nodes,
                    "waiting for nodes"
                );
                return Ok(None);
            }
            let shards: Vec<(u32, Vec<String>)> = nodes.iter().map(|n| (n.id, n.shards.clone())).collect();
            let mut map = form_map(&shards, cfg.partition_bits, cfg.replication)
                .map_err(|e| ClusterError::BadState(format!("forming the cluster: {e}")))?;
            map.incarnations = nodes
                .iter()
                .map(|n| hotshard_placement::NodeIncarnation {
                    node: n.id,
                    incarnation: n.lease as u64,
                })
                .collect();
            let id = new_cluster_id()?;
            let also = vec![TxnOp::put(cfg.keys.cluster_id(), id.as_str(), None)];
            write_map(leader, &cfg.keys, &map, 0, also).await?;
            tracing::info!(nodes = nodes.len(), epoch = map.epoch, "cluster formed");
            Ok(Some(map))
        }
        Some((map, revision)) => {
            let (caught_up, report_keys) = caught_up_reports(client, &cfg.keys).await?;
            let split_wanted = split_requests(client, &cfg.keys).await?;
            let split_done = split_reports(client, &cfg.keys).await?;
            let view = ClusterView {
                members: nodes
                    .iter()
                    .map(|n| Member {
                        id: n.id,
                        shards: n.shards.clone(),
                        incarnation: n.lease as u64,
                    })
                    .collect(),
                draining: node_ids_under(client, &cfg.keys, &cfg.keys.draining_prefix())
                    .await?
                    .into_keys()
                    .collect(),
                down_out: down_for_good(client, leader, cfg, &map, &nodes).await?,
                caught_up,
                accepted_loss: accepted_losses(client, &cfg.keys).await?,
                split_wanted: split_wanted.iter().map(|(_, from)| from.clone()).collect(),
                split_done: split_done.iter().map(|(_, d)| *d).collect(),
            };
            let policy = Policy {
                replication: cfg.replication,
                max_syncing_per_node: cfg.max_syncing_per_node,
            };
            match next_map(&map, &view, &policy) {
                None => {
                    remove_reports(leader, report_keys).await?;
                    remove_past_acceptances(leader, &cfg.keys, &view.accepted_loss, &map).await?;
                    remove_past_splits(leader, &map, &split_wanted, &split_done).await?;
                    Ok(Some(map))
                }
                Some(next) => {
                    write_map(leader, &cfg.keys, &next, revision, Vec::new()).await?;
                    remove_reports(leader, report_keys).await?;
                    remove_past_acceptances(leader, &cfg.keys, &view.accepted_loss, &next).await?;
                    remove_past_splits(leader, &next, &split_wanted, &split_done).await?;
                    let h = hotshard_placement::chain_plan::health(&next.chains, cfg.replication);
                    tracing::warn!(
                        epoch = next.epoch,
                        degraded = h.degraded.len(),
                        unavailable = h.unavailable.len(),
                        "cluster map changed (lost, returning or caught-up replicas)"
                    );
                    Ok(Some(next))
                }
            }
        }
    }
}

/// The node ids of the keys under `prefix`, with their values.
async fn node_ids_under(
    client: &Client,
    keys: &ClusterKeys,
    prefix: &str,
) -> ClusterResult<BTreeMap<u32, String>> {
    let got = client
        .clone()
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let id = keys.node_of(&key, prefix)?;
            Some((id, String::from_utf8_lossy(kv.value()).into_owned()))
        })
        .collect())
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The nodes of `map` gone for longer than `cfg.down_out`, or replaced on their host (every
/// listener of theirs held by another live node: a replaced disk). Keeps `down_since/<id>` in
/// etcd: written when a node of the map is first seen gone, removed when it is back, so
/// that a coordinator taking over counts from when the node went, not from its own start.
async fn down_for_good(
    client: &Client,
    leader: &Leadership,
    cfg: &CoordinatorConfig,
    map: &ShardMap,
    nodes: &[NodeRecord],
) -> ClusterResult<BTreeSet<u32>> {
    let alive: BTreeSet<u32> = nodes.iter().map(|n| n.id).collect();
    let in_map: BTreeSet<u32> = map.shards.iter().map(|s| s.node).collect();
    let since = node_ids_under(client, &cfg.keys, &cfg.keys.down_since_prefix()).await?;
    let now = unix_secs();
    let mut ops = Vec::new();
    let mut out = BTreeSet::new();
    // Listeners a live node holds now: a gone node whose every listener another node holds
    // was replaced on its host (a new disk, a new id) and will not come back.
    let taken: BTreeSet<&str> = nodes
        .iter()
        .flat_map(|n| n.shards.iter().map(String::as_str))
        .collect();
    for &n in in_map.difference(&alive) {
        let replaced = map
            .shards
            .iter()
            .filter(|s| s.node == n)
            .all(|s| taken.contains(s.addr.as_str()));
        if replaced {
            out.insert(n);
        }
        match since.get(&n).and_then(|v| v.parse::<u64>().ok()) {
            Some(t) if now.saturating_sub(t) >= cfg.down_out.as_secs() => {
                out.insert(n);
            }
            Some(_) => {}
            None => ops.push(TxnOp::put(cfg.keys.down_since(n), now.to_string(), None)),
        }
    }
    for n in since.keys().filter(|n| alive.contains(n) || !in_map.contains(n)) {
        ops.push(TxnOp::delete(cfg.keys.down_since(*n), None));
    }
    for chunk in ops.chunks(100) {
        leader.guarded(chunk.to_vec()).await?;
    }
    Ok(out)
}

/// The caught-up reports in etcd (malformed ones are dropped with a warning) and the keys
/// they were read from.
async fn caught_up_reports(
    client: &Client,
    keys: &ClusterKeys,
) -> ClusterResult<(Vec<CaughtUpReport>, Vec<String>)> {
    let got = client
        .clone()
        .get(keys.caught_up_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut reports = Vec::new();
    let mut read = Vec::new();
    for kv in got.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let version = std::str::from_utf8(kv.value())
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        match (keys.parse_caught_up(&key), version) {
            (Some((p, n, s)), Some(v)) => reports.push((p, n, s, v)),
            _ => tracing::warn!(%key, "dropping a malformed caught-up report"),
        }
        read.push(key);
    }
    Ok((reports, read))
}

/// Removes the caught-up reports read (applied, or stale), 100 to a transaction (etcd
/// takes at most 128 operations in one). A report written again meanwhile by a replica
/// still syncing is removed unapplied; the replica makes it again (`partition_sync`).
/// The losses an operator accepted (`accept_loss/<partition>` = chain version).
async fn accepted_losses(client: &Client, keys: &ClusterKeys) -> ClusterResult<Vec<(u32, u64)>> {
    let prefix = keys.accept_loss_prefix();
    let got = client
        .clone()
        .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(got
        .kvs()
        .iter()
        .filter_map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let partition = keys.node_of(&key, &prefix)?;
            let version = std::str::from_utf8(kv.value()).ok()?.parse().ok()?;
            Some((partition, version))
        })
        .collect())
}

/// Removes the acceptances whose chain has moved past the version they name (applied, or
/// about a state of the chain that is gone): one is never applied to a later loss.
async fn remove_past_acceptances(
    leader: &Leadership,
    keys: &ClusterKeys,
    accepted: &[(u32, u64)],
    map: &ShardMap,
) -> ClusterResult<()> {
    let past: Vec<String> = accepted
        .iter()
        .filter(|&&(p, v)| map.chain(p).is_none_or(|c| c.version != v))
        .map(|&(p, _)| keys.accept_loss(p))
        .collect();
    remove_reports(leader, past).await
}

/// The splits asked for (key, first key of the range).
async fn split_requests(client: &Client, keys: &ClusterKeys) -> ClusterResult<Vec<(String, Vec<u8>)>> {
    let got = client
        .clone()
        .get(keys.split_wanted_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(got
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let from = keys.parse_split_wanted(&key).unwrap_or_default();
            (key, from)
        })
        .collect())
}

/// The split copies reported done (key, report); malformed ones are dropped with a warning
/// and removed.
async fn split_reports(client: &Client, keys: &ClusterKeys) -> ClusterResult<Vec<(String, SplitDone)>> {
    let got = client
        .clone()
        .get(keys.split_done_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(got
        .kvs()
        .iter()
        .map(|kv| {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let done = keys.parse_split_done(&key).unwrap_or_else(|| {
                tracing::warn!(%key, "dropping a malformed split report");
                (0, 0, 0, SplitState::Moved)
            });
            (key, done)
        })
        .collect())
}

/// Removes the split requests the map has made (or can never make: a key that does not
/// begin with its tag), and the reports about a state the split has left.
async fn remove_past_splits(
    leader: &Leadership,
    map: &ShardMap,
    wanted: &[(String, Vec<u8>)],
    done: &[(String, SplitDone)],
) -> ClusterResult<()> {
    let current = hotshard_placement::index_split::in_progress(&map.splits).map(|s| (s.id, s.state));
    let mut gone: Vec<String> = wanted
        .iter()
        .filter(|(_, from)| {
            hotshard_placement::index_split::leading_tag(from).is_none()
                || map.splits.iter().any(|s| s.from == *from)
        })
        .map(|(k, _)| k.clone())
        .collect();
    gone.extend(
        done.iter()
            .filter(|(_, (id, _, _, st))| current != Some((*id, *st)))
            .map(|(k, _)| k.clone()),
    );
    remove_reports(leader, gone).await
}

async fn remove_reports(leader: &Leadership, keys: Vec<String>) -> ClusterResult<()> {
    for chunk in keys.chunks(100) {
        let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::delete(k.as_str(), None)).collect();
        leader.guarded(ops).await?;
    }
    Ok(())
}

/// Runs a coordinator for ever: campaigns, acts while it leads, campaigns again when
/// deposed. Errors from etcd are retried after a pause.
pub async fn run_coordinator(client: Client, cfg: CoordinatorConfig) {
    loop {
        let leader = match Leadership::campaign(&client, &cfg.keys, &cfg.name, cfg.lease_ttl_secs).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("campaign: {e}; retrying");
                tokio::time::sleep(cfg.check_every).await;
                continue;
            }
        };
        // Told as soon as a node registers or its lease expires (its key goes), so that a
        // lost node's chains are repaired without waiting for the next check; the check
        // every `check_every` stays, in case the watch is lost.
        let nodes = WatchOptions::new().with_prefix();
        let mut node_watch = client.clone().watch(cfg.keys.nodes(), Some(nodes)).await.ok();
        // And as soon as a syncing replica reports it caught up.
        let reports = WatchOptions::new().with_prefix();
        let mut report_watch = client
            .clone()
            .watch(cfg.keys.caught_up_prefix(), Some(reports))
            .await
            .ok();
        let mut has_peer_key = false;
        while leader.is_acting() {
            // The peer key first: a map with no key beside it would leave nodes unable to
            // prove themselves to each other.
            if !has_peer_key {
                has_peer_key = match ensure_peer_key(&client, &cfg.keys).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("making the cluster's peer key: {e}; trying again");
                        false
                    }
                };
            }
            let reconciled = match has_peer_key {
                true => reconcile_once(&client, &leader, &cfg).await,
                false => Ok(None),
            };
            match reconciled {
                Ok(_) => {}
                Err(ClusterError::MapChanged) => {
                    tracing::info!("the map changed while updating it; reading it again")
                }
                Err(ClusterError::Deposed) => break,
                Err(e) => tracing::warn!("reconcile: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(cfg.check_every) => {}
                _ = told(&mut node_watch) => {}
                _ = told(&mut report_watch) => {}
                _ = leader.lost() => break,
            }
        }
        tracing::warn!(name = %cfg.name, "no longer acting");
    }
}

/// Waits for the watch's next event; a watch that ends is dropped (and then waits for
/// ever: the periodic check goes on).
async fn told(watch: &mut Option<etcd_client::WatchStream>) {
    match watch.as_mut() {
        Some(stream) => match stream.message().await {
            Ok(Some(_)) => {}
            _ => {
                *watch = None;
                std::future::pending::<()>().await
            }
        },
        None => std::future::pending::<()>().await,
    }
}
