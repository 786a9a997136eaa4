//! A GET answered in the command's own poll (issue 32): a value in the cache, or a key the
//! index lacks, needs no I/O, so a RESP GET of one is answered without a task, a copy of
//! its key, or the native request the full path builds — whenever nothing would make the
//! full path (`ShardHandler::handle`, then `execute`) wait or answer otherwise. Every
//! condition that path checks before a read is checked here first, and any that does not
//! hold sends the read the full way.

use hotshard_net::Target;
use hotshard_nvme::BlockQueue;

use crate::route::{has_replicas, owns, route, Route};
use crate::shard_handler::{reply_value, OutBuf, ShardHandler};
use hotshard_net::server::Reply;

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// The reply to a GET of `key` if this shard can give it now with no I/O and no wait:
    /// not fenced, with room in its admission budget, a serving replica of the key's
    /// chain by its newest map, no write of the key on its way down the chain, no burial
    /// due (an expired object at a head with replicas), and the value cached or absent.
    /// None otherwise: the read then goes the full way, which answers it the same.
    pub(crate) fn read_at_once(&self, key: &[u8]) -> Option<Reply<OutBuf>> {
        if self.map.fenced() || !self.admission.has_room() {
            return None;
        }
        if !self.dirty.is_empty() && self.dirty.is_dirty(key) {
            return None;
        }
        let (partition, heads, alone) = {
            let map = self.map.borrow();
            let partition = map.partition(key);
            let target = Target {
                partition,
                epoch: map.epoch,
            };
            if !matches!(
                route(&map, self.node_id, self.shard, key, target, true),
                Ok(Route::Here)
            ) {
                return None;
            }
            (
                partition,
                owns(&map, self.node_id, self.shard, partition),
                !has_replicas(&map, partition),
            )
        };
        // As `expiry_rule`: a replica after the head answers an expired object live until
        // its burial comes; a head with replicas buries it first (the full way).
        let ignoring_expiry = !heads && !alone;
        if heads && self.passes_writes_down(partition) && self.store.is_expired(key) {
            return None;
        }
        let r = self.store.get_at_once(key, None, ignoring_expiry)?;
        let bytes = r.as_ref().map_or(0, |(v, _)| v.len() as u64);
        let ok = matches!(r, Ok(_) | Err(crate::store::StoreError::NotFound));
        // Answered within this poll: under the microsecond the latency histogram counts in.
        self.stats.get.record(0, bytes, ok);
        Some(reply_value(r))
    }
}
