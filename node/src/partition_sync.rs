//! Resync (issue 20): a replica the coordinator put back into a chain as syncing catches up
//! with the chain's last serving replica (its source), then reports it, and the
//! coordinator makes it serving. New writes reach it down the chain from the moment it
//! joined (`chain_view`); the catch-up brings what it missed before.
//!
//! A pass compares the partition's manifest at the source (key, version, checksum, page by
//! page) with this replica's own index, key by key:
//! - the same version and checksum: nothing moves (a node back from a short absence moves
//!   only what changed);
//! - the source's is newer: its record is copied (a tombstone as a tombstone), through the
//!   engine's seam for versioned records, at a bounded rate;
//! - this replica's is newer, or the key (a tombstone included) is here and not at the
//!   source, and it has not changed since the pass began: it is a write that reached this replica and no further
//!   before it left the chain (never acknowledged). Versions only grow, so it cannot be
//!   undone here: the chain's head is asked to write the key again as it has it
//!   (`Reassert`), with a version past this one, down the whole chain.
//!
//! Every page and the report name the chain version the pass runs under; if the chain
//! changes meanwhile, the pass is done again under the new one.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotshard_net::server::Reply;
use hotshard_net::{Recipient, Request, Response, Status, Target};
use hotshard_nvme::BlockQueue;
use hotshard_placement::{ReplicaState, ShardMap};

use crate::chain_view::ChainPlace;
use crate::manifest_page::{decode_page, encode_page};
use crate::map_cell::{CaughtUp, MapBoard};
use crate::route::{owns, store_partition};
use crate::shard_handler::{status_of, OutBuf, ShardHandler};
use crate::store::{ManifestEntry, StoreError};

/// Most bytes in one page of a manifest.
const PAGE_BYTES: usize = 256 << 10;
/// How often a shard looks for chains it has to catch up with.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Passes a shard runs at once (a pass with nothing to copy is one round trip per page).
const SYNCS_AT_ONCE: usize = 16;
/// Keys a pass compares and copies at once.
const KEYS_AT_ONCE: usize = 8;
/// How long a caught-up report waits for the coordinator before it is made again.
const REPORT_AGAIN: Duration = Duration::from_secs(5);
/// How long one call to the source or the head may take.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// A shard's resync counters (for metrics and `cluster status`).
#[derive(Default)]
pub struct SyncCounters {
    /// Chains this shard is syncing in now.
    pub syncing: std::cell::Cell<u64>,
    /// Of those, the ones not yet caught up under their chain's version.
    pub to_go: std::cell::Cell<u64>,
    pub passes: std::cell::Cell<u64>,
    pub objects_copied: std::cell::Cell<u64>,
    pub bytes_copied: std::cell::Cell<u64>,
    /// Keys the head was asked to write again.
    pub reasserted: std::cell::Cell<u64>,
    /// Keys compared and found the same.
    pub unchanged: std::cell::Cell<u64>,
    /// Partition -> the chain version this shard last reported caught up under, and when.
    reported: std::cell::RefCell<HashMap<u32, (u64, Instant)>>,
    /// The map epoch of the last look that found nothing to do.
    idle_epoch: std::cell::Cell<u64>,
    /// The map epoch of the last look that found no chain this shard is leaving.
    leaving_idle_epoch: std::cell::Cell<u64>,
    pace: Pace,
}

impl std::fmt::Display for PassError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PassError::ChainMoved => write!(f, "the chain changed"),
            PassError::Call(why) => write!(f, "{why}"),
            PassError::Store(e) => write!(f, "store: {e}"),
        }
    }
}

fn add(c: &std::cell::Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

/// Why a pass stopped early (it is tried again).
#[derive(Debug)]
enum PassError {
    /// The chain changed or this shard is no longer syncing in it.
    ChainMoved,
    Call(String),
    Store(StoreError),
}

/// A replica a pass calls: its listener, and the node and shard it is (named in the
/// requests, which any other shard refuses).
#[derive(Debug, Clone)]
struct Replica {
    addr: String,
    to: Recipient,
}

/// The ends of `partition`'s chain: its head (where a reassertion is written: it may be
/// a leaving one, `ShardMap::owner`) and its last serving replica (the source of a pass).
fn serving_ends(map: &ShardMap, partition: u32) -> Option<(Replica, Replica)> {
    let chain = map.chain(partition)?;
    let head = map.owner(partition)?;
    let last = chain
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Serving)
        .filter_map(|r| map.shards.get(r.shard as usize))
        .next_back()?;
    let replica = |s: &hotshard_placement::ShardAddr| Replica {
        addr: s.addr.clone(),
        to: Recipient {
            node: s.node,
            shard: s.shard,
        },
    };
    Some((replica(head), replica(last)))
}

/// A version or floor a node-to-node request carries, refused (BadRequest) past the
/// largest a log may reach, before anything touches the writer: a next log position near
/// u64::MAX would wrap the next write's version.
pub(crate) fn version_out_of_bounds(version: u64) -> Option<Reply<OutBuf>> {
    (version > crate::store::limits::MAX_VERSION).then(|| {
        Reply::status(Status::BadRequest {
            reason: format!(
                "version {version} is past the largest a log may reach ({})",
                crate::store::limits::MAX_VERSION
            ),
        })
    })
}

/// The entries of a partition's manifest that `map` places in it: a store may keep keys of
/// a split index's range in the partition they came from (issue 33: left behind at a
/// replica of the old chain, or kept there by one of both chains until the move), and no
/// resync copies or writes them again there.
fn placed_in(map: &ShardMap, partition: u32, mut entries: Vec<ManifestEntry>) -> Vec<ManifestEntry> {
    if !map.splits.is_empty() {
        entries.retain(|e| map.partition(&e.key) == partition);
    }
    entries
}

fn same(a: &ManifestEntry, b: &ManifestEntry) -> bool {
    a.version == b.version && a.crc32c == b.crc32c && a.tombstone == b.tombstone
}

/// Spaces a shard's copies while it has foreground work (client requests, or writes
/// coming down its chains, in the last `BUSY_WITHIN`): one copy at a time, each followed by
/// its share of time at `bytes_per_sec`, so that a burst of copies never queues ahead of a
/// foreground write on the device. With none, copies go at full speed, many at once.
struct Pace {
    next_free: std::cell::Cell<Option<Instant>>,
    /// The shard's foreground operation count at the last look, and when it last moved.
    foreground_seen: std::cell::Cell<(u64, Option<Instant>)>,
    /// Held by the one copy allowed at a time while busy.
    one_at_a_time: glommio::sync::Semaphore,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace {
            next_free: Default::default(),
            foreground_seen: Default::default(),
            one_at_a_time: glommio::sync::Semaphore::new(1),
        }
    }
}

/// Foreground work this recent makes a shard busy.
const BUSY_WITHIN: Duration = Duration::from_millis(100);

impl Pace {
    /// Whether the shard has had foreground work lately (`foreground_ops`: its count now).
    fn busy(&self, foreground_ops: u64) -> bool {
        let (seen, mut moved) = self.foreground_seen.get();
        if seen != foreground_ops {
            moved = Some(Instant::now());
        }
        self.foreground_seen.set((foreground_ops, moved));
        moved.is_some_and(|t| t.elapsed() < BUSY_WITHIN)
    }

    /// After a copy of `bytes` made while busy: waits out its share of time.
    async fn copied(&self, bytes: u64, bytes_per_sec: u64) {
        if bytes_per_sec == 0 {
            return;
        }
        let now = Instant::now();
        let start = self.next_free.get().filter(|&t| t > now).unwrap_or(now);
        let share = Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
        self.next_free.set(Some(start + share));
        glommio::timer::sleep(start + share - now).await;
    }
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// The source's side: a page of `partition`'s manifest after `after`, if this shard
    /// serves the partition in a chain at `chain_version`.
    pub(crate) fn answer_sync_manifest(&self, request: Request) -> Reply<OutBuf> {
        let Request::SyncManifest {
            to,
            partition,
            chain_version,
            after,
        } = request
        else {
            return Reply::status(Status::Internal);
        };
        if let Some(busy) = self.fenced_reply() {
            return busy;
        }
        if let Some(refused) = self.misaddressed(to) {
            return refused;
        }
        let place = ChainPlace::of(&self.map.borrow(), partition, self.node_id, self.shard);
        match place {
            ChainPlace::Serving { version, .. } if version == chain_version => {}
            other => {
                let mut reply = self.wrong_shard();
                reply.response.version = other.takes_writes().map_or(0, |(v, _)| v);
                return reply;
            }
        }
        let sp = match store_partition(partition) {
            Ok(p) => p,
            Err(status) => return Reply::status(status),
        };
        // A range moved into this partition and not yet gathered here would be missing.
        let ungathered = self.map.borrow().splits.iter().any(|s| {
            s.partition == partition
                && s.state == hotshard_placement::SplitState::Moved
                && !self.splits.listable(s.id)
        });
        if ungathered {
            return Reply::status(Status::Busy);
        }
        let manifest = placed_in(&self.map.borrow(), partition, self.store.partition_manifest(sp));
        let (page, more) = encode_page(&manifest, &after, PAGE_BYTES);
        let mut response = Response::new(Status::Ok);
        response.arg = u64::from(more);
        Reply {
            response,
            payload: Some(OutBuf::Bytes(page)),
        }
    }

    /// The head's side: `key` written again as the head has it, with a version past
    /// `floor`, down the chain (see the module's comment).
    pub(crate) async fn answer_reassert(self: &Rc<Self>, request: Request) -> Reply<OutBuf> {
        let Request::Reassert {
            to,
            key,
            partition,
            floor,
        } = request
        else {
            return Reply::status(Status::Internal);
        };
        if let Some(refused) = version_out_of_bounds(floor) {
            return refused;
        }
        if let Some(busy) = self.fenced_reply() {
            return busy;
        }
        if let Some(refused) = self.misaddressed(to) {
            return refused;
        }
        if !owns(&self.map.borrow(), self.node_id, self.shard, partition) {
            return self.wrong_shard();
        }
        if let Err(e) = self.store.raise_versions_past(floor) {
            return Reply::status(status_of(&e));
        }
        let write = match self.store.get(&key, None).await {
            Ok((value, version)) => crate::replication::ChainWrite::Put {
                payload: Some(crate::put_payload::PutPayload::Heap(value.as_slice().to_vec())),
                if_version: Some(version),
                expires_ms: value.expires_ms(),
            },
            Err(StoreError::NotFound) => crate::replication::ChainWrite::Bury,
            Err(e) => return Reply::status(status_of(&e)),
        };
        let reply = self.write_down_chain(key, partition, write).await;
        // A write of the key got in first: it has a version past `floor` as well.
        if matches!(reply.response.status(), Status::VersionMismatch { .. }) {
            return Reply::status(Status::Ok);
        }
        reply
    }

    /// Runs for the shard's life in a cluster: catches up every chain this shard is
    /// syncing in, `SYNCS_AT_ONCE` at a time, and reports each on `board` for the control
    /// thread to write to etcd.
    pub async fn keep_syncing(
        self: Rc<Self>,
        board: Arc<MapBoard>,
        shutdown: Arc<std::sync::atomic::AtomicBool>,
    ) {
        glommio::spawn_local(
            self.clone()
                .keep_reporting_leaving(board.clone(), shutdown.clone()),
        )
        .detach();
        while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            let due = self.due_passes();
            if due.is_empty() {
                glommio::timer::sleep(LOOK_EVERY).await;
                continue;
            }
            let queue = Rc::new(std::cell::RefCell::new(due));
            let workers: Vec<_> = (0..SYNCS_AT_ONCE)
                .map(|_| {
                    let (me, queue, board) = (self.clone(), queue.clone(), board.clone());
                    glommio::spawn_local(async move {
                        loop {
                            let next = queue.borrow_mut().pop();
                            let Some((partition, chain_version)) = next else {
                                break;
                            };
                            me.pass_and_report(partition, chain_version, &board).await;
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await;
            }
        }
    }

    async fn pass_and_report(self: &Rc<Self>, partition: u32, chain_version: u64, board: &MapBoard) {
        let started = Instant::now();
        let already = self
            .sync
            .reported
            .borrow()
            .get(&partition)
            .is_some_and(|&(v, _)| v == chain_version);
        let pass = if already {
            Ok(())
        } else {
            self.catch_up(partition, chain_version).await
        };
        match pass {
            Ok(()) => {
                self.sync
                    .reported
                    .borrow_mut()
                    .insert(partition, (chain_version, Instant::now()));
                tracing::debug!(
                    partition,
                    chain_version,
                    ms = started.elapsed().as_millis() as u64,
                    "caught up; reporting"
                );
                board.report_caught_up(CaughtUp {
                    partition,
                    node: self.node_id,
                    shard: self.shard as u32,
                    chain_version,
                });
            }
            Err(e) => {
                tracing::info!(partition, chain_version, "resync pass stopped: {e}; trying again");
                glommio::timer::sleep(LOOK_EVERY * 5).await;
            }
        }
    }

    /// Runs beside `keep_syncing` (whose passes can take seconds): `report_leaving` every
    /// look.
    async fn keep_reporting_leaving(
        self: Rc<Self>,
        board: Arc<MapBoard>,
        shutdown: Arc<std::sync::atomic::AtomicBool>,
    ) {
        while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            self.report_leaving(&board);
            glommio::timer::sleep(LOOK_EVERY).await;
        }
    }

    /// Reports every chain this shard is leaving, by the map it has adopted (so it answers
    /// no reads of it any more), under the chain's version: the coordinator drops it from
    /// the chain on that report (`drop_left`). Reported again now and then, as catch-ups
    /// are, in case a report was lost.
    fn report_leaving(&self, board: &MapBoard) {
        let map = self.map.current();
        if self.sync.leaving_idle_epoch.get() == map.epoch {
            return;
        }
        let mut reported = self.sync.reported.borrow_mut();
        let mut leaving = 0;
        for p in 0..map.chains.len() as u32 {
            if let ChainPlace::Leaving { version, .. } = ChainPlace::of(&map, p, self.node_id, self.shard) {
                leaving += 1;
                let fresh = reported
                    .get(&p)
                    .is_some_and(|&(v, at)| v == version && at.elapsed() < REPORT_AGAIN);
                if !fresh {
                    reported.insert(p, (version, Instant::now()));
                    board.report_caught_up(CaughtUp {
                        partition: p,
                        node: self.node_id,
                        shard: self.shard as u32,
                        chain_version: version,
                    });
                }
            }
        }
        if leaving == 0 {
            self.sync.leaving_idle_epoch.set(map.epoch);
        }
    }

    /// The chains this shard syncs in and has not reported caught up under their version
    /// (or reported long enough ago that the report may have been lost).
    fn due_passes(&self) -> Vec<(u32, u64)> {
        let map = self.map.current();
        if self.sync.idle_epoch.get() == map.epoch && self.sync.syncing.get() == 0 {
            return Vec::new();
        }
        let reported = self.sync.reported.borrow();
        let (mut syncing, mut to_go) = (0, 0);
        let mut due = Vec::new();
        for p in (0..map.chains.len() as u32).rev() {
            if let ChainPlace::Syncing { version, .. } = ChainPlace::of(&map, p, self.node_id, self.shard) {
                syncing += 1;
                to_go += u64::from(reported.get(&p).is_none_or(|&(v, _)| v != version));
                // Reported under this version: still caught up (every write since went
                // through this replica). Reported again now and then, in case the report
                // was lost (a control thread that reconnected, a coordinator that died).
                let fresh = reported
                    .get(&p)
                    .is_some_and(|&(v, at)| v == version && at.elapsed() < REPORT_AGAIN);
                if !fresh {
                    due.push((p, version));
                }
            }
        }
        self.sync.syncing.set(syncing);
        self.sync.to_go.set(to_go);
        if syncing == 0 {
            self.sync.idle_epoch.set(map.epoch);
        }
        due
    }

    fn still_syncing(&self, partition: u32, chain_version: u64) -> Result<(), PassError> {
        match ChainPlace::of(&self.map.borrow(), partition, self.node_id, self.shard) {
            ChainPlace::Syncing { version, .. } if version == chain_version => Ok(()),
            _ => Err(PassError::ChainMoved),
        }
    }

    /// One pass over `partition` under `chain_version` (see the module's comment).
    async fn catch_up(self: &Rc<Self>, partition: u32, chain_version: u64) -> Result<(), PassError> {
        self.still_syncing(partition, chain_version)?;
        let sp = store_partition(partition).map_err(|s| PassError::Call(format!("{s:?}")))?;
        let (head, source) = serving_ends(&self.map.borrow(), partition).ok_or(PassError::ChainMoved)?;
        add(&self.sync.passes, 1);
        // This replica's keys as the pass begins: a key still as it was then, and not at
        // the source, is a write the chain never had.
        let mut before: HashMap<Vec<u8>, ManifestEntry> =
            placed_in(&self.map.borrow(), partition, self.store.partition_manifest(sp))
                .into_iter()
                .map(|e| (e.key.clone(), e))
                .collect();
        let mut after = Vec::new();
        loop {
            self.still_syncing(partition, chain_version)?;
            let request = Request::SyncManifest {
                to: source.to,
                partition,
                chain_version,
                after: std::mem::take(&mut after),
            };
            let (response, page) = self.call(&source.addr, &request).await?;
            let entries = decode_page(&page, hotshard_net::limits::MAX_KEY_BYTES).map_err(PassError::Call)?;
            let last = entries.last().map(|e| e.key.clone());
            // `KEYS_AT_ONCE` keys in flight (each a round trip to the source and a durable
            // write here when it differs).
            let mut copies = Vec::with_capacity(KEYS_AT_ONCE);
            for theirs in entries {
                let was = before.remove(&theirs.key);
                let (me, head, source) = (self.clone(), head.clone(), source.clone());
                copies.push(glommio::spawn_local(async move {
                    me.sync_key(&theirs, was, partition, &head, &source).await
                }));
                if copies.len() == KEYS_AT_ONCE {
                    for c in copies.drain(..) {
                        c.await?;
                    }
                }
            }
            for c in copies {
                c.await?;
            }
            match last {
                Some(last) if response.arg == 1 => after = last,
                _ => break,
            }
        }
        // Here and not at the source (nor a tombstone there). A tombstone too: one the
        // chain never had may carry a version above the head's (a delete that went no
        // further before this replica left), and a later write of the key with a smaller
        // version would be skipped here.
        for (key, was) in before {
            if self
                .store
                .manifest_entry(&key)
                .is_some_and(|now| same(&now, &was))
            {
                self.reassert(&head, key, partition, was.version).await?;
            }
        }
        self.still_syncing(partition, chain_version)
    }

    /// Brings one key in line with the source's entry `theirs`; `was` is this replica's
    /// entry as the pass began.
    async fn sync_key(
        self: &Rc<Self>,
        theirs: &ManifestEntry,
        was: Option<ManifestEntry>,
        partition: u32,
        head: &Replica,
        source: &Replica,
    ) -> Result<(), PassError> {
        let sp = partition as u16;
        let now = self.store.manifest_entry(&theirs.key);
        if now.as_ref().is_some_and(|n| same(n, theirs)) {
            add(&self.sync.unchanged, 1);
            return Ok(());
        }
        let mine = now.as_ref().map_or(0, |n| n.version);
        if theirs.version > mine {
            if theirs.tombstone {
                return self.apply_tombstone(theirs, sp).await;
            }
            let st = &self.stats;
            let foreground = [&st.put, &st.get, &st.delete, &st.stat, &st.replicate]
                .iter()
                .map(|o| o.count.get())
                .sum();
            let paced = self.sync_bytes_per_sec > 0 && self.sync.pace.busy(foreground);
            let _turn = match paced {
                true => self.sync.pace.one_at_a_time.acquire_permit(1).await.ok(),
                false => None,
            };
            let get = Request::Get {
                key: theirs.key.clone(),
                range: None,
                target: Target {
                    partition,
                    epoch: self.map.epoch(),
                },
            };
            let (response, value) = self.call(&source.addr, &get).await?;
            match response.status() {
                Status::Ok => {}
                // Deleted since the page was made, or expired by the source's clock (then
                // a head, which buried it before answering; `chain_expiry`): either way
                // absent at the version the page named. A tombstone at that version, not
                // this replica's older live copy, is what it keeps: nothing else may come
                // down the chain for an expired object. A newer write that came down in
                // the meantime stays (the store keeps the newer version).
                Status::NotFound => return self.apply_tombstone(theirs, sp).await,
                other => return Err(PassError::Call(format!("get from {}: {other:?}", source.addr))),
            }
            self.store
                .apply_versioned_expiring(
                    &theirs.key,
                    sp,
                    Some(&value),
                    response.version,
                    response.expires_ms,
                )
                .await
                .map_err(PassError::Store)?;
            add(&self.sync.objects_copied, 1);
            add(&self.sync.bytes_copied, value.len() as u64);
            if paced {
                self.sync
                    .pace
                    .copied(value.len() as u64, self.sync_bytes_per_sec)
                    .await;
            }
            return Ok(());
        }
        // This replica's version is newer than the source's, or the same version differs.
        // Changed since the pass began: it came down the chain, the source has it too.
        let unchanged = match (&now, &was) {
            (Some(n), Some(w)) => same(n, w),
            _ => false,
        };
        if unchanged {
            self.reassert(head, theirs.key.clone(), partition, mine).await?;
        }
        Ok(())
    }

    /// A tombstone at the version `theirs` names (the store keeps a newer version).
    async fn apply_tombstone(&self, theirs: &ManifestEntry, sp: u16) -> Result<(), PassError> {
        self.store
            .apply_versioned(&theirs.key, sp, None, theirs.version)
            .await
            .map_err(PassError::Store)?;
        add(&self.sync.objects_copied, 1);
        Ok(())
    }

    async fn reassert(
        &self,
        head: &Replica,
        key: Vec<u8>,
        partition: u32,
        floor: u64,
    ) -> Result<(), PassError> {
        let request = Request::Reassert {
            to: head.to,
            key,
            partition,
            floor,
        };
        let (response, _) = self.call(&head.addr, &request).await?;
        if response.status() != Status::Ok {
            return Err(PassError::Call(format!(
                "reassert at {}: {:?}",
                head.addr,
                response.status()
            )));
        }
        add(&self.sync.reasserted, 1);
        Ok(())
    }

    async fn call(
        &self,
        addr: &str,
        request: &Request,
    ) -> Result<hotshard_net::connection::Answer, PassError> {
        let answer = self
            .links
            .call(addr, request, &[], CALL_LIMIT)
            .await
            .map_err(|e| PassError::Call(format!("{addr}: {e:?}")))?;
        match answer.0.status() {
            Status::WrongShard { .. } => Err(PassError::ChainMoved),
            _ => Ok(answer),
        }
    }
}
