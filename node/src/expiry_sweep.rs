//! Active expiry (issue 21): every few seconds a shard buries the objects that have expired
//! in the chains it heads (a tombstone written the way a delete is, down the chain when it
//! has replicas), so that their space becomes garbage GC collects. A head reads an expired
//! object as absent (burying it first, `chain_expiry`), a replica after it as live until
//! the burial comes. Replicas never bury on their own: a tombstone with a replica's own
//! version would differ from the chain's, and expiry is the head's clock's decision.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hotshard_nvme::BlockQueue;

use crate::replication::ChainWrite;
use crate::route::owns;
use crate::shard_handler::ShardHandler;

/// Between sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Most objects buried per sweep (each a durable write).
const SWEEP_LIMIT: usize = 10_000;

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// Buries what has expired in the partitions this shard heads, once; returns how many.
    pub async fn bury_expired(self: &Rc<Self>) -> usize {
        let mut buried = 0;
        if crate::chain_expiry::planted_no_burial() {
            return buried;
        }
        for (key, partition, _) in self.store.expired_keys(SWEEP_LIMIT) {
            let p = u32::from(partition);
            if self.map.fenced() || !owns(&self.map.borrow(), self.node_id, self.shard, p) {
                continue;
            }
            // `bury_if_absent` writes a tombstone only while the key has no live version:
            // a write that lands first keeps its value.
            let ok = if self.passes_writes_down(p) {
                let reply = self.write_down_chain(key, p, ChainWrite::Bury).await;
                reply.response.status() == hotshard_net::Status::Ok
            } else {
                self.store.bury_if_absent(&key, partition).await.is_ok()
            };
            buried += usize::from(ok);
        }
        self.stats
            .expired_buried
            .set(self.stats.expired_buried.get() + buried as u64);
        buried
    }

    /// Sweeps every `SWEEP_EVERY` until the shard stops.
    pub async fn keep_burying_expired(self: Rc<Self>, shutdown: Arc<AtomicBool>) {
        while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            glommio::timer::sleep(SWEEP_EVERY).await;
            self.bury_expired().await;
        }
    }
}
