//! Requests between the shards of one node, both ways: a shard sends a request for another
//! shard's partition over the peer channel (its payload as an ordinary vector: the
//! channel crosses cores), and a shard answers what another forwarded to it, after
//! checking by its own map that it owns the partition, within its own admission budget.

use std::rc::Rc;

use hotshard_net::server::Reply;
use hotshard_net::{Request, Response, Status};
use hotshard_nvme::BlockQueue;

use crate::put_payload::PutPayload;
use crate::route::{owns, serves};
use crate::shard_handler::{keyed, OutBuf, ShardHandler};
use crate::waitable_count::Counted;

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// Sends a request this shard routed to shard `to` and waits for its answer. The
    /// payload was received into an ordinary vector for this (`payload_buffer`), unless
    /// the map changed in between: then it is copied once here.
    pub(crate) async fn forward(
        &self,
        to: usize,
        request: Request,
        payload: Option<PutPayload>,
    ) -> Reply<OutBuf> {
        self.stats.forwarded.set(self.stats.forwarded.get() + 1);
        let payload = payload.map(PutPayload::into_vec);
        match self.peers.forward(to, request, payload).await {
            Some((response, body)) => Reply {
                response,
                payload: (!body.is_empty()).then_some(OutBuf::Bytes(body)),
            },
            None => Reply::status(Status::Busy),
        }
    }

    /// Answers a request another local shard forwarded here. The forwarding shard routed
    /// it by its copy of the map; this shard checks by its own that it owns the partition
    /// (if the copies differ, a map change reached one first: the client is sent to
    /// refresh its map and nothing is written). It is admitted against this shard's own
    /// budget, like a request from one of its connections (Busy over it), and counted in
    /// flight while it is answered: otherwise one shard's clients could flood another
    /// shard past its budget. The budget is held until the answer is ready (its body then
    /// travels back as a copy, charged to the forwarding connection's shard).
    pub async fn answer_forwarded(
        self: Rc<Self>,
        request: Request,
        payload: Option<Vec<u8>>,
    ) -> (Response, Vec<u8>) {
        if let Some((_, target)) = keyed(&request) {
            if self.map.fenced() {
                self.stats.fenced.set(self.stats.fenced.get() + 1);
                return (Response::new(Status::Busy), Vec::new());
            }
            let reads = request.is_read();
            let answers = {
                let map = self.map.borrow();
                if reads {
                    serves(&map, self.node_id, self.shard, target.partition)
                } else {
                    owns(&map, self.node_id, self.shard, target.partition)
                }
            };
            if !answers {
                tracing::warn!(
                    shard = self.shard,
                    partition = target.partition,
                    "a forwarded request for a partition this shard does not own"
                );
                let reply = self.wrong_shard();
                let map = reply.payload.map(|p| p.as_ref().to_vec()).unwrap_or_default();
                return (reply.response, map);
            }
        }
        let len = payload.as_ref().map_or(0, Vec::len);
        let held = match hotshard_net::server::Handler::admit(&*self, &request, len) {
            Ok(held) => held,
            Err(status) => return (Response::new(status), Vec::new()),
        };
        let _release = held.map(|bytes| Held {
            admission: &self.admission,
            bytes,
        });
        let _counted = Counted::new(&self.in_flight);
        let reply = self.execute(request, payload.map(PutPayload::Heap)).await;
        let body = reply.payload.map(|p| p.as_ref().to_vec()).unwrap_or_default();
        (reply.response, body)
    }
}

/// Gives an admitted forwarded request's budget back, however its answer ends.
pub(crate) struct Held<'a> {
    pub(crate) admission: &'a crate::admission::Admission,
    pub(crate) bytes: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.admission.release(self.bytes);
    }
}
