//! A node in etcd: its record (id, advertised address, one listener per shard) under
//! `nodes/<id>`, bound to the node's lease, so that the record goes when the node does.
//! A node id already registered (another process alive with it) is refused.

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::error::{ClusterError, ClusterResult};
use crate::keys::ClusterKeys;
use crate::lease::KeptLease;

/// Longest node record accepted from etcd (a few hundred shards' addresses).
pub const MAX_NODE_RECORD_BYTES: usize = 64 << 10;

/// What a node says of itself in etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u32,
    /// `host:port` clients use for the node (its first shard's listener).
    pub addr: String,
    /// `host:port` of each shard's listener, by shard index.
    pub shards: Vec<String>,
    /// The lease the record is bound to, as etcd reports it (not stored): a new one after
    /// every start of the node, so the coordinator tells a restarted node from one that
    /// stayed up.
    #[serde(skip)]
    pub lease: i64,
}

impl NodeRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a node record always encodes")
    }

    /// Checked before use: a record from etcd is input like any other.
    pub fn decode(bytes: &[u8]) -> Result<NodeRecord, String> {
        if bytes.len() > MAX_NODE_RECORD_BYTES {
            return Err(format!(
                "{} bytes, more than {MAX_NODE_RECORD_BYTES}",
                bytes.len()
            ));
        }
        let r: NodeRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.shards.is_empty() || r.shards.len() > u16::MAX as usize {
            return Err(format!("node {}: {} shards", r.id, r.shards.len()));
        }
        Ok(r)
    }
}

/// A node's registration: alive as long as its lease.
pub struct Registration {
    pub record: NodeRecord,
    pub lease: KeptLease,
}

/// Registers `record` under a new lease of `ttl_secs`. Refused if a live node holds the
/// same id: two processes must never answer as one node.
pub async fn register(
    client: &Client,
    keys: &ClusterKeys,
    record: NodeRecord,
    ttl_secs: i64,
) -> ClusterResult<Registration> {
    register_again(client, keys, record, ttl_secs, None).await
}

/// `register`, by a process that held the id under `previous` (a lease it took as lost:
/// etcd unreachable for a TTL). A record still bound to that lease is this process's own
/// (etcd extends leases when it restarts, so it may outlive the outage): the lease is
/// revoked and the id taken at once. Before, the process waited for it as for another
/// node's, and after two outages in a row took its own old record for a live twin and
/// stopped: every node of a cluster did, and no chain came back.
pub async fn register_again(
    client: &Client,
    keys: &ClusterKeys,
    record: NodeRecord,
    ttl_secs: i64,
    previous: Option<i64>,
) -> ClusterResult<Registration> {
    let lease = KeptLease::grant(client, ttl_secs).await?;
    let key = keys.node(record.id);
    let txn = || {
        Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                record.encode(),
                Some(PutOptions::new().with_lease(lease.id())),
            )])
    };
    let mut client = client.clone();
    if client.txn(txn()).await?.succeeded() {
        return Ok(Registration { record, lease });
    }
    if let Some(previous) = previous {
        let held_by = client
            .get(key.clone(), None)
            .await?
            .kvs()
            .first()
            .map(|kv| kv.lease());
        if held_by == Some(previous) {
            let _ = client.lease_revoke(previous).await;
            if client.txn(txn()).await?.succeeded() {
                return Ok(Registration { record, lease });
            }
        }
    }
    let _ = lease.revoke().await;
    Err(ClusterError::NodeIdTaken(record.id))
}
