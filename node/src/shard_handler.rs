//! A shard's answer to each request, in named stages: `route` (this shard, a peer shard,
//! or WrongShard; `route.rs`), `execute` on this shard's store, and the reply built from
//! the store's result (`reply_*`). Forwarding between shards is in `forwarding.rs`.

use std::rc::Rc;
use std::time::Instant;

use hotshard_net::runtime::{Glommio, Runtime};
use hotshard_net::server::{Handler, Reply};
use hotshard_net::{Request, Response, Status};
use hotshard_nvme::BlockQueue;

use crate::chain_expiry::ExpiryRule;
use crate::peers::Peers;
use crate::put_payload::PutPayload;
use crate::route::{has_replicas, owns, route, store_partition, Route};
use crate::shard_stats::ShardStats;
use crate::store::{ObjectStat, Store, StoreError, StoreResult, Value};
use crate::waitable_count::{Counted, WaitableCount};

/// A response payload: a value straight from the store (DMA buffer or cache), bytes, or
/// the shard's encoded map (shared, encoded once per epoch).
pub enum OutBuf {
    Value(Value),
    Bytes(Vec<u8>),
    Map(Rc<Vec<u8>>),
    /// A reply's bytes counted against a budget until the reply is gone (written, or
    /// dropped with its connection).
    Charged(Box<OutBuf>, Charge),
}

impl AsRef<[u8]> for OutBuf {
    fn as_ref(&self) -> &[u8] {
        match self {
            OutBuf::Value(v) => v.as_slice(),
            OutBuf::Bytes(b) => b,
            OutBuf::Map(b) => b,
            OutBuf::Charged(b, _) => b.as_ref().as_ref(),
        }
    }
}

/// Bytes counted against a budget while this lives; given back by `release` on drop.
pub struct Charge {
    release: Rc<dyn Fn(usize)>,
    bytes: usize,
}

impl Charge {
    /// `bytes` counted from now on (the caller has counted them); `release` gives them back.
    pub fn new(bytes: usize, release: Rc<dyn Fn(usize)>) -> Charge {
        Charge { release, bytes }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        (self.release)(self.bytes);
    }
}

pub struct ShardHandler<Q: BlockQueue> {
    pub shard: usize,
    pub node_id: u32,
    pub store: Store<Q>,
    /// This shard's copy of the map (replaced by newer epochs from the control thread).
    pub map: Rc<crate::map_cell::MapCell>,
    pub peers: Rc<Peers>,
    pub stats: Rc<ShardStats>,
    /// Requests being answered right now (a stopping shard waits for them).
    pub in_flight: WaitableCount,
    /// The budget of requests arriving from connections (over it: Busy).
    pub admission: crate::admission::Admission,
    /// The shared secret connections must prove, if any.
    pub secret: Option<Vec<u8>>,
    /// Keys with a write on its way down their chain (reads of them wait).
    pub dirty: crate::dirty_keys::DirtyKeys,
    /// Connections to the replicas after this shard in its chains.
    pub links: crate::chain_links::ChainLinks,
    /// How long a write waits for the rest of its chain before it is answered
    /// OutcomeUnknown (the frame timeout).
    pub answer_wait: std::time::Duration,
    /// Keys with an `Update` running here: the next one waits (`key_update`).
    pub updating: crate::dirty_keys::DirtyKeys,
    /// Resync progress (`partition_sync`).
    pub sync: crate::partition_sync::SyncCounters,
    /// The most a resync copies per second (0: no limit).
    pub sync_bytes_per_sec: u64,
    /// Entries past which a bucket index in a partition this shard heads is split (0: never).
    pub split_entries: u64,
    /// Writes executing here, for a split's fenced copy.
    pub started_writes: crate::started_writes::StartedWrites,
    /// Index splits this shard copies into (`split_copy`).
    pub splits: crate::split_copy::SplitProgress,
}

/// The key and target of a request that names a key.
pub(crate) fn keyed(request: &Request) -> Option<(&[u8], hotshard_net::Target)> {
    match request {
        Request::Put { key, target, .. }
        | Request::Get { key, target, .. }
        | Request::Delete { key, target, .. }
        | Request::Stat { key, target, .. }
        | Request::Update { key, target, .. } => Some((key.as_slice(), *target)),
        // Routed as the key naming the index's tag: its partition is the index's.
        Request::List { index, target, .. } => Some((index.as_slice(), *target)),
        _ => None,
    }
}

pub(crate) fn status_of(e: &StoreError) -> Status {
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

pub(crate) fn ok_with(version: u64, object_len: u64, crc32c: u32) -> Response {
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
        out.push_str(&self.render_cluster_metrics(&l));
        out.push_str(&self.render_split_metrics(&l));
        out
    }

    /// The shard's place in the cluster: its map's epoch, whether it is fenced, the age of
    /// the node's lease, and its chains by role (position among the serving replicas).
    fn render_cluster_metrics(&self, l: &str) -> String {
        let map = self.map.current();
        let me = map
            .shards
            .iter()
            .position(|s| s.node == self.node_id && s.shard as usize == self.shard);
        let (mut head, mut middle, mut tail, mut degraded) = (0, 0, 0, 0);
        for c in map.chains.iter() {
            let serving: Vec<u16> = c
                .replicas
                .iter()
                .filter(|r| r.state == hotshard_placement::ReplicaState::Serving)
                .map(|r| r.shard)
                .collect();
            let mine = serving.iter().position(|&s| Some(s as usize) == me);
            if mine.is_some() && serving.len() < c.replicas.len() {
                degraded += 1;
            }
            match mine {
                Some(0) => head += 1,
                Some(i) if i + 1 == serving.len() => tail += 1,
                Some(_) => middle += 1,
                None => {}
            }
        }
        let mut out = format!(
            "hotshard_map_epoch{{{l}}} {}\nhotshard_fenced{{{l}}} {}\n\
             hotshard_chains{{{l},role=\"head\"}} {head}\nhotshard_chains{{{l},role=\"middle\"}} {middle}\n\
             hotshard_chains{{{l},role=\"tail\"}} {tail}\nhotshard_chains_degraded{{{l}}} {degraded}\n",
            map.epoch,
            u8::from(self.map.fenced()),
        );
        out.push_str(&format!(
            "hotshard_writes_waiting_on_successor{{{l}}} {}\nhotshard_dirty_keys{{{l}}} {}\n\
             hotshard_chain_links{{{l}}} {}\n",
            self.stats.waiting_on_successor.get(),
            self.dirty.len(),
            self.links.open(),
        ));
        let y = &self.sync;
        out.push_str(&format!(
            "hotshard_syncing_chains{{{l}}} {}\nhotshard_sync_chains_to_go{{{l}}} {}\n\
             hotshard_sync_passes_total{{{l}}} {}\n\
             hotshard_sync_objects_copied_total{{{l}}} {}\nhotshard_sync_bytes_copied_total{{{l}}} {}\n\
             hotshard_sync_reasserted_total{{{l}}} {}\nhotshard_sync_unchanged_total{{{l}}} {}\n",
            y.syncing.get(),
            y.to_go.get(),
            y.passes.get(),
            y.objects_copied.get(),
            y.bytes_copied.get(),
            y.reasserted.get(),
            y.unchanged.get(),
        ));
        if let Some(age) = self.map.lease_age_secs() {
            out.push_str(&format!("hotshard_lease_age_seconds{{{l}}} {age:.3}\n"));
        }
        out
    }

    /// Runs a request on this shard's store: a keyed one routed here (its target's
    /// partition checked by `route`, or by the forwarding shard), or a control request.
    pub async fn execute(
        self: &Rc<Self>,
        mut request: Request,
        payload: Option<PutPayload>,
    ) -> Reply<OutBuf> {
        let started = Instant::now();
        let micros = || started.elapsed().as_micros() as u64;
        if let Request::Put { expires_ms, .. } = &mut request {
            // Writes run at the chain's head: a relative expiry is taken by its clock.
            *expires_ms = crate::chain_expiry::expiry_at_head(*expires_ms);
        }
        let _write = match &request {
            Request::Put { key, .. } | Request::Delete { key, .. } => {
                // A range of a split index being moved takes no new writes (the client
                // retries on Busy) until it is served by its new chain.
                if self.map.borrow().write_fenced(key) {
                    self.stats.busy.set(self.stats.busy.get() + 1);
                    return Reply::status(Status::Busy);
                }
                Some(self.started_writes.begin())
            }
            _ => None,
        };
        match request {
            Request::Put {
                key,
                if_version,
                target,
                expires_ms,
            } if self.passes_writes_down(target.partition) => {
                let write = crate::replication::ChainWrite::Put {
                    payload,
                    if_version,
                    expires_ms,
                };
                self.write_down_chain(key, target.partition, write).await
            }
            Request::Delete {
                key,
                if_version,
                target,
            } if self.passes_writes_down(target.partition) => {
                let write = crate::replication::ChainWrite::Delete { if_version };
                self.write_down_chain(key, target.partition, write).await
            }
            Request::Put {
                key,
                if_version,
                target,
                expires_ms,
            } => {
                let partition = match store_partition(target.partition) {
                    Ok(p) => p,
                    Err(status) => return Reply::status(status),
                };
                let len = payload.as_ref().map_or(0, PutPayload::len);
                let store = &self.store;
                let r = match payload {
                    Some(PutPayload::InPlace(buf)) => {
                        store
                            .put_buf_expiring(&key, partition, buf, if_version, expires_ms)
                            .await
                    }
                    Some(PutPayload::Heap(v)) => {
                        store
                            .put_expiring(&key, partition, &v, if_version, expires_ms)
                            .await
                    }
                    None => {
                        store
                            .put_expiring(&key, partition, &[], if_version, expires_ms)
                            .await
                    }
                };
                self.stats.put.record(micros(), len as u64, r.is_ok());
                reply_written(r, len as u64)
            }
            Request::Get { key, range, target } => {
                if let Err(status) = self.wait_until_clean(&key, target.partition).await {
                    return Reply::status(status);
                }
                let range = range.map(|r| (r.offset, r.len));
                let r = match self.expiry_rule(&key, target.partition).await {
                    Ok(rule) => self.read_within_deadline(&key, range, rule).await,
                    Err(status) => return Reply::status(status),
                };
                let bytes = r.as_ref().map_or(0, |(v, _)| v.len() as u64);
                self.stats
                    .get
                    .record(micros(), bytes, matches!(r, Ok(_) | Err(StoreError::NotFound)));
                reply_value(r)
            }
            Request::Delete {
                key,
                if_version,
                target,
            } => {
                let partition = match store_partition(target.partition) {
                    Ok(p) => p,
                    Err(status) => return Reply::status(status),
                };
                let r = self.store.delete(&key, partition, if_version).await;
                self.stats.delete.record(micros(), 0, r.is_ok());
                reply_written(r, 0)
            }
            Request::Stat { key, target } => {
                if let Err(status) = self.wait_until_clean(&key, target.partition).await {
                    return Reply::status(status);
                }
                let r = match self.expiry_rule(&key, target.partition).await {
                    Ok(ExpiryRule::ByClock) => self.store.stat(&key),
                    Ok(ExpiryRule::UntilBuried) => self.store.stat_ignoring_expiry(&key),
                    Err(status) => return Reply::status(status),
                };
                self.stats.stat.record(micros(), 0, r.is_ok());
                reply_stat(r)
            }
            Request::List {
                index,
                target,
                prefix,
                start,
                delimiter,
                limit,
            } => {
                if let Err(status) = self.settle_fenced_writes(&index).await {
                    return Reply::status(status);
                }
                let (start_after, start_at) = match start {
                    Some(hotshard_net::ListStart::After(k)) => (Some(k), None),
                    Some(hotshard_net::ListStart::At(k)) => (None, Some(k)),
                    None => (None, None),
                };
                // The range of a split index the request was routed by: listed alone, and
                // the page says where the next range takes over.
                let (lo, hi, gathered) = {
                    let map = self.map.borrow();
                    let r = map.range_of(&index);
                    // A moved range is listed here only once this shard has gathered it.
                    let gathered = r.lo.is_none_or(|lo| {
                        map.splits
                            .iter()
                            .find(|s| s.from == lo)
                            .is_none_or(|s| self.splits.listable(s.id))
                    });
                    (r.lo.map(<[u8]>::to_vec), r.hi.map(<[u8]>::to_vec), gathered)
                };
                if !gathered {
                    self.stats.busy.set(self.stats.busy.get() + 1);
                    return Reply::status(Status::Busy);
                }
                let start_at = match (start_at, lo) {
                    (Some(a), Some(l)) => Some(a.max(l)),
                    (a, l) => a.or(l),
                };
                let q = crate::store::ordered::ListQuery {
                    prefix: &prefix,
                    start_after: start_after.as_deref(),
                    delimiter: &delimiter,
                    limit: limit as usize,
                    start_at: start_at.as_deref(),
                    end: hi.as_deref(),
                };
                let r = self.list_when_clean(target.partition, &q).await;
                self.stats.get.record(micros(), 0, r.is_ok());
                match r {
                    Ok(reply) => reply,
                    Err(status) => Reply::status(status),
                }
            }
            // Boxed: an update runs `execute` for its read and its write.
            Request::Update { key, target, op } => {
                Box::pin(self.answer_update(key, target, op, payload)).await
            }
            replicate @ Request::Replicate { .. } => self.answer_replicate(replicate, payload).await,
            control => self.answer_control(control),
        }
    }

    /// Whether this shard heads `partition`'s chain with replicas after it: its writes go
    /// down the chain (`replication`).
    pub(crate) fn passes_writes_down(&self, partition: u32) -> bool {
        crate::chain_view::ChainPlace::of(&self.map.borrow(), partition, self.node_id, self.shard)
            .has_successor()
    }

    /// What this shard does next with a record passed down to it in `partition`'s chain
    /// under `chain_version`, by its map as it is now (`chain_view::next_hop`).
    pub(crate) fn next_hop_now(&self, partition: u32, chain_version: u64) -> crate::chain_view::Hop {
        crate::chain_view::next_hop(
            &self.map.borrow(),
            partition,
            self.node_id,
            self.shard,
            crate::chain_view::Holding::PassedUnder(chain_version),
        )
    }

    /// Waits until no write of `key` is on its way down its chain (at once when none is),
    /// for up to the frame timeout: Busy past it. A read that waited is answered only if
    /// this shard still serves `partition`'s reads and is not fenced once the write is
    /// done: the write may have ended unacknowledged because this shard left the chain
    /// meanwhile (a head paused past its lease, say), and then what it holds of the key is
    /// a write the chain never had (issue 30: a GET queued behind such a write at a paused
    /// head returned it after the pause, and the next GET, at a serving replica, the value
    /// before it).
    async fn wait_until_clean(&self, key: &[u8], partition: u32) -> Result<(), Status> {
        if self.dirty.is_empty() || !self.dirty.is_dirty(key) {
            return Ok(());
        }
        Glommio::timeout(self.answer_wait, self.dirty.clean(key))
            .await
            .ok_or(Status::Busy)?;
        self.still_serves_reads(partition)
    }

    /// Ok if this shard may answer `partition`'s reads now: not fenced, and a serving
    /// replica of its chain by the newest map it has.
    fn still_serves_reads(&self, partition: u32) -> Result<(), Status> {
        if self.map.fenced() || !crate::route::serves(&self.map.borrow(), self.node_id, self.shard, partition)
        {
            self.stats.busy.set(self.stats.busy.get() + 1);
            return Err(Status::Busy);
        }
        Ok(())
    }

    /// A page of `partition`'s ordered index, once no key it passes has a write on its way
    /// down the chain (CRAQ: a listing is a read of every key it passes, and waits as a
    /// read does; the page is listed again after each wait).
    async fn list_when_clean(
        &self,
        partition: u32,
        q: &crate::store::ordered::ListQuery<'_>,
    ) -> Result<Reply<OutBuf>, Status> {
        let sp = store_partition(partition)?;
        for _ in 0..64 {
            let dirty = std::cell::RefCell::new(None);
            let watch = !self.dirty.is_empty() && !planted_list_ignores_dirty();
            let page = self.store.list_watching(sp, q, |k| {
                if watch && dirty.borrow().is_none() && self.dirty.is_dirty(k) {
                    *dirty.borrow_mut() = Some(k.to_vec());
                }
            });
            if let Some(key) = dirty.into_inner() {
                self.wait_until_clean(&key, partition).await?;
                continue;
            }
            let items: Vec<hotshard_net::listing::ListItem> = page
                .items
                .into_iter()
                .map(|i| match i {
                    crate::store::ordered::Listed::Key(key, s) => hotshard_net::listing::ListItem::Key {
                        key,
                        version: s.version,
                        len: s.len,
                        crc32c: s.crc32c,
                    },
                    crate::store::ordered::Listed::Prefix(p) => hotshard_net::listing::ListItem::Prefix(p),
                })
                .collect();
            let mut response = Response::new(Status::Ok);
            let resume = match page.next {
                Some(_) => None,
                None => q.resume_past_end(items.last().map(hotshard_net::listing::ListItem::name)),
            };
            response.arg = match (&page.next, &resume) {
                (Some(_), _) => 1,
                (None, Some(_)) => 2,
                (None, None) => 0,
            };
            return Ok(Reply {
                response,
                payload: Some(OutBuf::Bytes(hotshard_net::listing::encode_page_resuming(
                    &items,
                    resume.as_deref(),
                ))),
            });
        }
        Err(Status::Busy)
    }

    /// A listing of an index whose range is fenced for a split waits until every write
    /// begun here before it has finished: the split's last copy (which names the fencing
    /// map's epoch in its target, so that this shard has the fence first) then sees every
    /// write the range took, in the index and dirty until the tail has it. Busy if that
    /// takes longer than a request may wait.
    async fn settle_fenced_writes(&self, index: &[u8]) -> Result<(), Status> {
        let fenced = {
            let map = self.map.borrow();
            let tag = hotshard_placement::index_split::leading_tag(index);
            hotshard_placement::index_split::in_progress(&map.splits)
                .is_some_and(|s| s.state == hotshard_placement::SplitState::Fenced && tag == Some(&s.tag[..]))
        };
        if !fenced {
            return Ok(());
        }
        let mark = self.started_writes.mark();
        let deadline = Instant::now() + self.answer_wait;
        while !self.started_writes.done_before(mark) {
            if Instant::now() > deadline {
                return Err(Status::Busy);
            }
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// Requests that name no key: answered at once, whatever the shard's load.
    pub(crate) fn answer_control(&self, request: Request) -> Reply<OutBuf> {
        match request {
            Request::Stats => Reply {
                response: Response::new(Status::Ok),
                payload: Some(OutBuf::Bytes(self.render_metrics().into_bytes())),
            },
            Request::GetShardMap => {
                // The newest map the node has (`fenced` adopts one posted since the last look).
                self.map.fenced();
                match self.map.encoded() {
                    Ok(b) => Reply {
                        response: Response::new(Status::Ok),
                        payload: Some(OutBuf::Map(b)),
                    },
                    Err(_) => Reply::status(Status::Internal),
                }
            }
            Request::ListKeys {
                partitions,
                pattern,
                from_hash,
            } => self.answer_list_keys(&partitions, &pattern, from_hash),
            // Already authenticated, or no secret configured: nothing to prove. (A keyed
            // request never gets here: `execute` answers it.)
            _ => Reply::status(Status::Ok),
        }
    }

    /// A read of `key`. With room in the DMA pool for the largest value, as it is (no
    /// timer on the hot path); short of room, within the frame timeout, then Busy: a
    /// read never waits without a deadline for a buffer that replies nobody reads (or a
    /// command waiting on itself) may hold. Dropping a read whose I/O is under way is
    /// safe: the queue keeps its buffer until the device is done with it.
    async fn read_within_deadline(
        &self,
        key: &[u8],
        range: Option<(u64, u64)>,
        rule: ExpiryRule,
    ) -> Result<(crate::store::Value, u64), StoreError> {
        let read = async {
            match rule {
                ExpiryRule::ByClock => self.store.get(key, range).await,
                ExpiryRule::UntilBuried => self.store.get_ignoring_expiry(key, range).await,
            }
        };
        let roomy =
            self.store.queue().pool().free_bytes() > crate::store::limits::MAX_VALUE_BYTES + (64 << 10);
        if roomy {
            return read.await;
        }
        match Glommio::timeout(self.answer_wait, read).await {
            Some(r) => r,
            None => {
                self.stats.busy.set(self.stats.busy.get() + 1);
                Err(StoreError::Busy(
                    "no DMA buffer for the read within the frame timeout",
                ))
            }
        }
    }

    /// Busy (counted) while the node's lease is unconfirmed (`MapCell::fenced`): the
    /// cluster may have given its chains to others already, so it answers nothing it holds.
    pub(crate) fn fenced_reply(&self) -> Option<Reply<OutBuf>> {
        if !self.map.fenced() {
            return None;
        }
        self.stats.fenced.set(self.stats.fenced.get() + 1);
        Some(Reply::status(Status::Busy))
    }

    /// Waits (up to the answer wait) until this shard has taken a map of at least `epoch`,
    /// which a request's sender already has: the control thread posts it once etcd's watch
    /// says so, usually within milliseconds. False at once for an epoch further ahead than
    /// any map the node could be about to take (`MapCell::may_wait_for`: a client cannot
    /// hold requests by naming a made-up epoch), and false if it did not come in time.
    async fn wait_for_epoch(&self, epoch: u64) -> bool {
        if !self.map.may_wait_for(epoch) {
            return false;
        }
        Glommio::timeout(self.answer_wait, self.map.taken(epoch))
            .await
            .is_some()
    }

    /// WrongShard (counted as misaddressed) for a node-to-node request meant for another
    /// node or shard: this shard holds a listener the sender's map gives to someone else
    /// (a node back on another's addresses), and must not apply or answer for it.
    pub(crate) fn misaddressed(&self, to: hotshard_net::Recipient) -> Option<Reply<OutBuf>> {
        if to.node == self.node_id && to.shard as usize == self.shard {
            return None;
        }
        self.stats.misaddressed.set(self.stats.misaddressed.get() + 1);
        tracing::debug!(to.node, to.shard, "refused a request meant for another replica");
        Some(self.wrong_shard())
    }

    /// WrongShard, with the shard's current map as the payload: the client takes it and
    /// sends again, one round trip (no GetShardMap).
    pub(crate) fn wrong_shard(&self) -> Reply<OutBuf> {
        self.stats.wrong_shard.set(self.stats.wrong_shard.get() + 1);
        let mut reply = Reply::status(Status::WrongShard {
            epoch: self.map.epoch(),
        });
        reply.payload = self.map.encoded().ok().map(OutBuf::Map);
        reply
    }
}

/// The reply to a put or a delete: the new version, and the value's length.
/// A planted bug, for proving that the nemesis's check of listings catches one: with
/// `HOTSHARD_PLANTED_BUG=list-ignores-dirty` a page is answered without waiting for the
/// writes of its keys still on their way down the chain (it may show a write the chain
/// has not acknowledged, and that a later read elsewhere does not see).
fn planted_list_ignores_dirty() -> bool {
    static PLANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| crate::planted::fault("list-ignores-dirty").is_some())
}

fn reply_written(r: StoreResult<u64>, len: u64) -> Reply<OutBuf> {
    match r {
        Ok(v) => Reply {
            response: ok_with(v, len, 0),
            payload: None,
        },
        Err(e) => Reply::status(status_of(&e)),
    }
}

/// The reply to a get: the value (or the range asked for) sent from where the store has it,
/// and the whole object's length.
pub(crate) fn reply_value(r: StoreResult<(Value, u64)>) -> Reply<OutBuf> {
    match r {
        Ok((value, version)) => {
            let mut response = ok_with(version, value.object_len(), 0);
            response.expires_ms = value.expires_ms();
            Reply {
                response,
                payload: Some(OutBuf::Value(value)),
            }
        }
        Err(e) => Reply::status(status_of(&e)),
    }
}

fn reply_stat(r: StoreResult<ObjectStat>) -> Reply<OutBuf> {
    match r {
        Ok(s) => {
            let mut response = ok_with(s.version, s.len, s.crc32c);
            response.expires_ms = s.expires_ms;
            Reply {
                response,
                payload: None,
            }
        }
        Err(e) => Reply::status(status_of(&e)),
    }
}

impl<Q: BlockQueue + 'static> Handler for ShardHandler<Q> {
    type In = PutPayload;
    type Out = OutBuf;

    fn admit(&self, request: &Request, payload_len: usize) -> Result<Option<usize>, Status> {
        // Control requests (ping, shard map, stats, auth) carry nothing and are always
        // answered, so a client can still find its way while the shard sheds load.
        if let Request::Replicate { .. } | Request::Reassert { .. } | Request::SyncManifest { .. } = request {
            return if self.admission.try_admit_replica(payload_len) {
                Ok(Some(payload_len))
            } else {
                self.stats.busy.set(self.stats.busy.get() + 1);
                Err(Status::Busy)
            };
        }
        if !matches!(
            request,
            Request::Put { .. }
                | Request::Get { .. }
                | Request::Delete { .. }
                | Request::Stat { .. }
                | Request::Update { .. }
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

    fn peer_key(&self) -> Option<&[u8]> {
        self.map.peer_key()
    }

    /// A PUT whose key this shard owns is received into a buffer of its DMA pool, which the
    /// batch writes from; any other payload (a key of another shard or node, a value short
    /// enough to ride inline, a pool with no room now) into an ordinary one. Nothing is
    /// refused for want of a DMA buffer. The client's target is trusted only for this
    /// choice: `route` checks it before anything is written.
    fn payload_buffer(&self, request: &Request, len: usize) -> Result<PutPayload, Status> {
        if len > self.store.config().max_value_bytes {
            return Err(Status::TooLarge);
        }
        // A value that goes down a chain is sent on from an ordinary buffer.
        let mine = keyed(request).is_some_and(|(_, target)| {
            let map = self.map.borrow();
            owns(&map, self.node_id, self.shard, target.partition) && !has_replicas(&map, target.partition)
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
        match request {
            Request::Replicate { .. } => return self.answer_replicate(request, payload).await,
            Request::SyncManifest { .. } => return self.answer_sync_manifest(request),
            Request::Reassert { .. } => return self.answer_reassert(request).await,
            _ => {}
        }
        let Some((key, target)) = keyed(&request) else {
            return self.answer_control(request);
        };
        if let Some(busy) = self.fenced_reply() {
            return busy;
        }
        if target.epoch > self.map.epoch() && !self.wait_for_epoch(target.epoch).await {
            // The sender knows a newer map than this shard has taken: this shard may have
            // left the partition's chain in it. Never answer from the older map.
            self.stats.busy.set(self.stats.busy.get() + 1);
            return Reply::status(Status::Busy);
        }
        // Routed under a short borrow of the map, released before any await: the map may
        // be replaced while the request waits.
        let reads = request.is_read();
        let routed = route(&self.map.borrow(), self.node_id, self.shard, key, target, reads);
        match routed {
            Ok(Route::Here) => self.execute(request, payload).await,
            Ok(Route::Peer(to)) => self.forward(to, request, payload).await,
            Ok(Route::Elsewhere) => self.wrong_shard(),
            Err(status) => Reply::status(status),
        }
    }
}
