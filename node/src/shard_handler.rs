//! A shard's answer to each request: its own partitions from its store, other local
//! shards' partitions forwarded to them, other nodes' partitions answered WrongShard.

use std::rc::Rc;
use std::time::Instant;

use hotshard_net::server::{Handler, Reply};
use hotshard_net::{Request, Response, Status};
use hotshard_nvme::BlockQueue;
use hotshard_placement::shard_map::ShardMap;

use crate::peers::Peers;
use crate::put_payload::PutPayload;
use crate::shard_stats::ShardStats;
use crate::store::{Store, StoreError, Value};
use crate::waitable_count::{Counted, WaitableCount};

/// A response payload: a value straight from the store (DMA buffer or cache), or bytes.
pub enum OutBuf {
    Value(Value),
    Bytes(Vec<u8>),
}

impl AsRef<[u8]> for OutBuf {
    fn as_ref(&self) -> &[u8] {
        match self {
            OutBuf::Value(v) => v.as_slice(),
            OutBuf::Bytes(b) => b,
        }
    }
}

pub struct ShardHandler<Q: BlockQueue> {
    pub shard: usize,
    pub node_id: u32,
    pub store: Store<Q>,
    pub map: Rc<ShardMap>,
    pub peers: Rc<Peers>,
    pub stats: Rc<ShardStats>,
    /// Requests being answered right now (a stopping shard waits for them).
    pub in_flight: WaitableCount,
    /// The budget of requests arriving from connections (over it: Busy).
    pub admission: crate::admission::Admission,
    /// The shared secret connections must prove, if any.
    pub secret: Option<Vec<u8>>,
}

/// The key and target of a request that names a key.
fn keyed(request: &Request) -> Option<(&[u8], hotshard_net::Target)> {
    match request {
        Request::Put { key, target, .. }
        | Request::Get { key, target, .. }
        | Request::Delete { key, target, .. }
        | Request::Stat { key, target, .. } => Some((key.as_slice(), *target)),
        _ => None,
    }
}

/// The partition as the store keeps it (16 bits: the most partitions a map may have).
fn store_partition(partition: u32) -> Option<u16> {
    u16::try_from(partition).ok()
}

fn partition_too_large(partition: u32) -> Status {
    Status::BadRequest {
        reason: format!("partition {partition} is beyond 2^16 partitions"),
    }
}

fn status_of(e: &StoreError) -> Status {
    match e {
        StoreError::NotFound => Status::NotFound,
        StoreError::VersionMismatch { current } => Status::VersionMismatch { current: *current },
        StoreError::TooLarge { .. } => Status::TooLarge,
        StoreError::NoSpace => Status::NoSpace,
        StoreError::Busy(_) => Status::Busy,
        StoreError::Corrupt(_) => Status::Corrupt,
        StoreError::BadRequest(r) => Status::BadRequest {
            reason: (*r).to_string(),
        },
        StoreError::Device(_) | StoreError::WriteFailed(_) | StoreError::Open(_) => Status::Internal,
    }
}

fn ok_with(version: u64, object_len: u64, crc32c: u32) -> Response {
    let mut r = Response::new(Status::Ok);
    r.version = version;
    r.object_len = object_len;
    r.crc32c = crc32c;
    r
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// This shard's Prometheus text: counters, latencies, store, and the pending budget.
    pub fn render_metrics(&self) -> String {
        let mut out = self.stats.render(self.shard, &self.store);
        let (requests, bytes) = self.admission.in_use();
        let l = format!("shard=\"{}\"", self.shard);
        out.push_str(&format!(
            "hotshard_pending_requests{{{l}}} {requests}\nhotshard_pending_bytes{{{l}}} {bytes}\n"
        ));
        out
    }

    /// Runs a keyed request on this shard's store.
    pub async fn execute(&self, request: Request, payload: Option<PutPayload>) -> Reply<OutBuf> {
        let started = Instant::now();
        let micros = || started.elapsed().as_micros() as u64;
        match request {
            Request::Put {
                key,
                if_version,
                target,
            } => {
                let Some(partition) = store_partition(target.partition) else {
                    return Reply::status(partition_too_large(target.partition));
                };
                let len = payload.as_ref().map_or(0, PutPayload::len);
                let r = match payload {
                    Some(PutPayload::InPlace(buf)) => {
                        self.store.put_buf(&key, partition, buf, if_version).await
                    }
                    Some(PutPayload::Heap(v)) => self.store.put(&key, partition, &v, if_version).await,
                    None => self.store.put(&key, partition, &[], if_version).await,
                };
                self.stats.put.record(micros(), len as u64, r.is_ok());
                match r {
                    Ok(v) => Reply {
                        response: ok_with(v, len as u64, 0),
                        payload: None,
                    },
                    Err(e) => Reply::status(status_of(&e)),
                }
            }
            Request::Get { key, range, .. } => {
                let r = self.store.get(&key, range.map(|r| (r.offset, r.len))).await;
                match r {
                    Ok((value, version)) => {
                        // The whole object's length: only a range read needs another lookup.
                        let total = if range.is_some() {
                            self.store.stat(&key).map(|s| s.len).unwrap_or(value.len() as u64)
                        } else {
                            value.len() as u64
                        };
                        self.stats.get.record(micros(), value.len() as u64, true);
                        Reply {
                            response: ok_with(version, total, 0),
                            payload: Some(OutBuf::Value(value)),
                        }
                    }
                    Err(e) => {
                        self.stats
                            .get
                            .record(micros(), 0, matches!(e, StoreError::NotFound));
                        Reply::status(status_of(&e))
                    }
                }
            }
            Request::Delete {
                key,
                if_version,
                target,
            } => {
                let Some(partition) = store_partition(target.partition) else {
                    return Reply::status(partition_too_large(target.partition));
                };
                let r = self.store.delete(&key, partition, if_version).await;
                self.stats.delete.record(micros(), 0, r.is_ok());
                match r {
                    Ok(v) => Reply {
                        response: ok_with(v, 0, 0),
                        payload: None,
                    },
                    Err(e) => Reply::status(status_of(&e)),
                }
            }
            Request::Stat { key, .. } => {
                let r = self.store.stat(&key);
                self.stats.stat.record(micros(), 0, r.is_ok());
                match r {
                    Ok(s) => Reply {
                        response: ok_with(s.version, s.len, s.crc32c),
                        payload: None,
                    },
                    Err(e) => Reply::status(status_of(&e)),
                }
            }
            Request::Stats => Reply {
                response: Response::new(Status::Ok),
                payload: Some(OutBuf::Bytes(self.render_metrics().into_bytes())),
            },
            // Already authenticated, or no secret configured: nothing to prove.
            Request::Ping | Request::AuthChallenge | Request::AuthProof { .. } => Reply::status(Status::Ok),
            Request::GetShardMap => match self.map.to_bytes() {
                Ok(b) => Reply {
                    response: Response::new(Status::Ok),
                    payload: Some(OutBuf::Bytes(b)),
                },
                Err(_) => Reply::status(Status::Internal),
            },
        }
    }
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// Answers a request another local shard forwarded here. It is admitted against this
    /// shard's own budget, like a request from one of its connections (Busy over it), and
    /// counted in flight while it is answered: otherwise one shard's clients could flood
    /// another shard past its budget. The budget is held until the answer is ready (its body
    /// then travels back as a copy, charged to the forwarding connection's shard).
    pub async fn answer_forwarded(
        self: Rc<Self>,
        request: Request,
        payload: Option<Vec<u8>>,
    ) -> (Response, Vec<u8>) {
        // The forwarding shard routed by its own copy of the map; this shard checks that
        // it owns the partition by its copy. If they differ (a map change reached one
        // first), the client is sent to refresh its map, and nothing is written here.
        if let Some((_, target)) = keyed(&request) {
            let mine = self
                .map
                .owner(target.partition)
                .is_some_and(|o| o.node == self.node_id && o.shard as usize == self.shard);
            if !mine {
                self.stats.wrong_shard.set(self.stats.wrong_shard.get() + 1);
                tracing::warn!(
                    shard = self.shard,
                    partition = target.partition,
                    "a forwarded request for a partition this shard does not own"
                );
                return (
                    Response::new(Status::WrongShard {
                        epoch: self.map.epoch,
                    }),
                    Vec::new(),
                );
            }
        }
        let len = payload.as_ref().map_or(0, Vec::len);
        let held = match self.admit(&request, len) {
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
struct Held<'a> {
    admission: &'a crate::admission::Admission,
    bytes: usize,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.admission.release(self.bytes);
    }
}

impl<Q: BlockQueue + 'static> Handler for ShardHandler<Q> {
    type In = PutPayload;
    type Out = OutBuf;

    fn admit(&self, request: &Request, payload_len: usize) -> Result<Option<usize>, Status> {
        // Control requests (ping, shard map, stats, auth) carry nothing and are always
        // answered, so a client can still find its way while the shard sheds load.
        if !matches!(
            request,
            Request::Put { .. } | Request::Get { .. } | Request::Delete { .. } | Request::Stat { .. }
        ) {
            return Ok(None);
        }
        // A Get's value is charged when its reply is ready (`hold`), not looked up here:
        // a second index lookup per Get cost 7% of cache-hit throughput.
        if self.admission.try_admit(payload_len) {
            Ok(Some(payload_len))
        } else {
            self.stats.busy.set(self.stats.busy.get() + 1);
            Err(Status::Busy)
        }
    }

    fn hold(&self, bytes: usize) {
        self.admission.hold(bytes);
    }

    fn release(&self, bytes: usize) {
        self.admission.release(bytes);
    }

    fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }

    /// A PUT whose key this shard owns is received into a buffer of its DMA pool, which the
    /// batch writes from; any other payload (a key of another shard or node, a value short
    /// enough to ride inline, a pool with no room now) into an ordinary one. Nothing is
    /// refused for want of a DMA buffer.
    fn payload_buffer(&self, request: &Request, len: usize) -> Result<PutPayload, Status> {
        if len > self.store.config().max_value_bytes {
            return Err(Status::TooLarge);
        }
        let mine = keyed(request).is_some_and(|(_, target)| {
            self.map
                .owner(target.partition)
                .is_some_and(|o| o.node == self.node_id && o.shard as usize == self.shard)
        });
        if mine {
            if let Some(buf) = self.store.value_buffer(len) {
                return Ok(PutPayload::InPlace(buf));
            }
        }
        Ok(PutPayload::Heap(vec![0; len]))
    }

    fn payload_received(&self, buffered: usize, direct: usize) {
        let s = &self.stats;
        s.payload_bytes_buffered
            .set(s.payload_bytes_buffered.get() + buffered as u64);
        s.payload_bytes_direct
            .set(s.payload_bytes_direct.get() + direct as u64);
    }

    async fn handle(self: Rc<Self>, request: Request, payload: Option<PutPayload>) -> Reply<OutBuf> {
        let _counted = Counted::new(&self.in_flight);
        let Some((key, target)) = keyed(&request) else {
            return self.execute(request, payload).await;
        };
        let partition = self.map.partition(key);
        if partition != target.partition {
            return Reply::status(Status::BadRequest {
                reason: format!("key is in partition {partition}, not {}", target.partition),
            });
        }
        // Two integers of the owner, not a clone of its address (a String) per request.
        let Some((owner_node, owner_shard)) = self.map.owner(partition).map(|o| (o.node, o.shard)) else {
            return Reply::status(Status::Internal);
        };
        if owner_node != self.node_id {
            self.stats.wrong_shard.set(self.stats.wrong_shard.get() + 1);
            return Reply::status(Status::WrongShard {
                epoch: self.map.epoch,
            });
        }
        if owner_shard as usize == self.shard {
            return self.execute(request, payload).await;
        }
        self.stats.forwarded.set(self.stats.forwarded.get() + 1);
        // The peer channel crosses cores: the payload goes as an ordinary vector (received
        // into one by `payload_buffer` unless the map changed in between).
        let payload = payload.map(PutPayload::into_vec);
        match self.peers.forward(owner_shard as usize, request, payload).await {
            Some((response, body)) => Reply {
                response,
                payload: (!body.is_empty()).then_some(OutBuf::Bytes(body)),
            },
            None => Reply::status(Status::Busy),
        }
    }
}
