//! Expiry is the chain head's decision (issue 30): the head's clock says when an object
//! has expired, and the chain learns it as a burial (a tombstone written down the chain
//! like a delete). A replica never drops a live object on its own clock: it answers an
//! expired object that is not yet buried as live, and its GC moves it as it is. So every
//! replica of a chain answers alike whatever its clock says, and a read at the head that
//! finds an object expired first buries it down the chain, so that no replica answers it
//! live after the head has answered it absent.

use std::rc::Rc;

use hotshard_net::{Status, UpdateOp};
use hotshard_nvme::BlockQueue;

use crate::replication::ChainWrite;
use crate::route::{has_replicas, owns};
use crate::shard_handler::ShardHandler;

/// How a read here treats an object whose expiry has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryRule {
    /// By this node's clock: this shard heads the chain, or answers its reads alone.
    ByClock,
    /// Live until its burial comes down the chain: a replica after the head.
    UntilBuried,
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// How a read of `key` in `partition` here treats expiry. At a head with replicas
    /// after it, an object expired by its clock is buried down the chain first (Busy, or
    /// the chain's answer, if that fails: the read must not answer it absent before every
    /// replica has the burial).
    pub(crate) async fn expiry_rule(
        self: &Rc<Self>,
        key: &[u8],
        partition: u32,
    ) -> Result<ExpiryRule, Status> {
        let (heads, alone) = {
            let map = self.map.borrow();
            (
                owns(&map, self.node_id, self.shard, partition),
                !has_replicas(&map, partition),
            )
        };
        if !heads && !alone {
            return Ok(ExpiryRule::UntilBuried);
        }
        // The index lookup last: a head with no replicas after it (a single node) pays
        // nothing more per read than the map's look.
        if heads && !planted_no_burial() && self.passes_writes_down(partition) && self.store.is_expired(key) {
            let reply = self
                .write_down_chain(key.to_vec(), partition, ChainWrite::Bury)
                .await;
            match reply.response.status() {
                // VersionMismatch: a write of the key came first; the read sees it.
                Status::Ok | Status::VersionMismatch { .. } => {}
                other => return Err(other),
            }
        }
        Ok(ExpiryRule::ByClock)
    }
}

/// A planted fault, for the test of a resync that finds an expired object not yet buried
/// at its source: with `HOTSHARD_PLANTED_BUG=no-expiry-burial` a head buries nothing, on
/// a read or in its sweep (a burial lost or late). Only in builds with the
/// `planted-faults` feature.
pub(crate) fn planted_no_burial() -> bool {
    static PLANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| crate::planted::fault("no-expiry-burial").is_some())
}

/// The absolute expiry of a field a request carries, relative ones taken by this node's
/// clock: called where the chain's head takes the request.
pub fn expiry_at_head(field: u64) -> u64 {
    hotshard_net::expiry::expiry_at(field, hotshard_store::index::now_ms())
}

/// `op` with its relative expiries taken by this node's clock (`expiry_at_head`).
pub fn update_at_head(op: UpdateOp) -> UpdateOp {
    match op {
        UpdateOp::Set {
            only_if,
            get,
            expires_ms,
            keep_ttl,
        } => UpdateOp::Set {
            only_if,
            get,
            expires_ms: expiry_at_head(expires_ms),
            keep_ttl,
        },
        UpdateOp::Expire { at_ms, cond, get } => UpdateOp::Expire {
            at_ms: expiry_at_head(at_ms),
            cond,
            get,
        },
        other => other,
    }
}
