//! `Store`: one shard's crash-safe log-structured object store on a `BlockQueue`:
//! put, get (with ranges), delete, stat, and the keys of a partition.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use hotshard_nvme::BlockQueue;

use super::cache::CacheStats;
use super::config::{CommitDurability, StoreConfig};
use super::error::{StoreError, StoreResult};
use super::format::{value_crc, RecordKind, MAX_EXPIRES_MS};
use super::gc_lock::GcLock;
use super::group_commit::{
    commit, done_pending, inline_max, newest_staged_batch, stage, BatchDone, DurableBatch, LogHost,
    LogRecord, Origin, StageRequest, Writer,
};
use super::index::{now_ms, IndexEntry, KeyHash};
use super::metrics::{bump, StoreCounters, StoreMetrics};
use super::segments::SegmentTable;
use super::state::State;
use super::value::Value;
use super::value_buf::{StageValue, ValueBuf};
use super::write_gate::WriteGate;

pub(crate) struct Inner<Q: BlockQueue> {
    pub queue: Q,
    pub cfg: StoreConfig,
    pub uuid: [u8; 16],
    pub block: u64,
    pub state: RefCell<State>,
    pub metrics: StoreMetrics,
    /// Held by the GC step in progress (background or a stalled write's).
    pub gc_lock: GcLock,
    /// Writes stalled for space pass here in arrival order.
    pub write_gate: WriteGate,
    /// Device reads of gets in flight (at most `cfg.reads_in_flight`).
    pub read_slots: super::read_slots::ReadSlots,
    /// A batch of GC's own head was written (and published) since the last flush: the
    /// next victim freed flushes first.
    pub gc_unflushed: std::cell::Cell<bool>,
}

impl<Q: BlockQueue> LogHost for Inner<Q> {
    type Queue = Q;

    fn queue(&self) -> &Q {
        &self.queue
    }

    fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    fn uuid(&self) -> &[u8; 16] {
        &self.uuid
    }

    fn block(&self) -> u64 {
        self.block
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    fn caches_written(&self, key: &[u8], hash: KeyHash, len: usize) -> bool {
        self.cfg.caches(len) && self.state.borrow().cache_admits_write(key, hash)
    }

    fn with_log<R>(&self, f: impl FnOnce(&mut Writer, &mut SegmentTable) -> R) -> R {
        let mut st = self.state.borrow_mut();
        let (w, segs) = st.log_mut();
        f(w, segs)
    }

    fn publish(&self, batch: DurableBatch) {
        self.state.borrow_mut().publish(batch);
    }

    fn forget(&self, records: &[LogRecord]) {
        self.state.borrow_mut().forget(records);
    }
}

/// GC's own log head as group commit sees it: the store's device and settings, GC's
/// writer, and batches written without FUA (GC flushes once before it frees a victim).
pub(crate) struct GcHead<Q: BlockQueue>(pub Rc<Inner<Q>>);

impl<Q: BlockQueue> LogHost for GcHead<Q> {
    type Queue = Q;

    fn queue(&self) -> &Q {
        &self.0.queue
    }

    fn config(&self) -> &StoreConfig {
        &self.0.cfg
    }

    fn uuid(&self) -> &[u8; 16] {
        &self.0.uuid
    }

    fn block(&self) -> u64 {
        self.0.block
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.0.metrics
    }

    fn caches_written(&self, _key: &[u8], _hash: KeyHash, _len: usize) -> bool {
        // A move leaves the cache as it is (`State::publish`): nothing to copy out.
        false
    }

    fn batch_durability(&self) -> Option<CommitDurability> {
        None
    }

    fn with_log<R>(&self, f: impl FnOnce(&mut Writer, &mut SegmentTable) -> R) -> R {
        self.0.state.borrow_mut().with_gc_head(f)
    }

    /// A GC batch is written (not yet durable): the index may point at its records from
    /// now on, so the next freed mark must come after a flush.
    fn publish(&self, batch: DurableBatch) {
        self.0.gc_unflushed.set(true);
        self.0.state.borrow_mut().publish(batch);
    }

    fn forget(&self, records: &[LogRecord]) {
        self.0.state.borrow_mut().forget(records);
    }
}

impl<Q: BlockQueue> Inner<Q> {
    /// Stages a record into the log (see `group_commit::stage`).
    pub(crate) fn stage(
        &self,
        st: &mut State,
        req: &StageRequest<'_>,
        value: &mut StageValue<'_>,
    ) -> StoreResult<Rc<BatchDone>> {
        let (w, segs) = st.log_mut();
        stage(self, w, segs, req, value)
    }

    /// Stages a record GC moves: into GC's own head (`own_head`; the move is not durable
    /// until GC's flush) or into the log's batches.
    pub(crate) fn stage_moved(
        &self,
        st: &mut State,
        req: &StageRequest<'_>,
        value: &mut StageValue<'_>,
        own_head: bool,
    ) -> StoreResult<Rc<BatchDone>> {
        if own_head {
            st.with_gc_head(|w, segs| stage(self, w, segs, req, value))
        } else {
            self.stage(st, req, value)
        }
    }
}

/// One shard's store. Cheap to clone (a handle); not `Send`: it lives on its core.
pub struct Store<Q: BlockQueue> {
    pub(crate) inner: Rc<Inner<Q>>,
}

impl<Q: BlockQueue> Clone for Store<Q> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
        }
    }
}

/// What a local write does: a put, a delete (of a live key: `NotFound` otherwise), or a
/// tombstone whether or not the key is live (`bury_if_absent`, whose `if_version` of 0
/// leaves a live key alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    /// With the object's expiry (Unix milliseconds; 0: never).
    Put {
        expires_ms: u64,
    },
    Delete,
    Bury,
}

impl Intent {
    fn kind(self) -> RecordKind {
        match self {
            Intent::Put { .. } => RecordKind::Put,
            Intent::Delete | Intent::Bury => RecordKind::Tombstone,
        }
    }
}

/// One key of a partition as a replica holds it (`Store::partition_manifest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub key: Vec<u8>,
    pub version: u64,
    /// CRC32C of the value (of the tombstone's stamp for a tombstone).
    pub crc32c: u32,
    pub tombstone: bool,
}

/// What `stat` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    pub len: u64,
    pub version: u64,
    /// CRC32C of the value bytes.
    pub crc32c: u32,
    /// When it expires, Unix milliseconds; 0: never.
    pub expires_ms: u64,
}

/// Space and objects, for stats.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaceStats {
    pub objects: usize,
    pub index_entries: usize,
    pub index_heap_bytes: usize,
    pub live_bytes: u64,
    pub segments: u32,
    pub free_segments: u32,
    pub segment_bytes: u64,
}

/// Decrements a segment's reader count when a read ends, however it ends.
struct ReadPin<'a, Q: BlockQueue> {
    inner: &'a Inner<Q>,
    segment: u32,
}

impl<Q: BlockQueue> Drop for ReadPin<'_, Q> {
    fn drop(&mut self) {
        self.inner.state.borrow_mut().unpin_reader(self.segment);
    }
}

impl<Q: BlockQueue> Store<Q> {
    pub(crate) fn from_parts(queue: Q, cfg: StoreConfig, uuid: [u8; 16], state: State) -> Self {
        let block = queue.info().logical_block_size.max(4096) as u64;
        let reads_in_flight = cfg.reads_in_flight;
        Store {
            inner: Rc::new(Inner {
                queue,
                cfg,
                uuid,
                block,
                state: RefCell::new(state),
                metrics: StoreMetrics::default(),
                gc_lock: GcLock::default(),
                write_gate: WriteGate::default(),
                read_slots: super::read_slots::ReadSlots::new(reads_in_flight),
                gc_unflushed: std::cell::Cell::new(false),
            }),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    pub fn queue(&self) -> &Q {
        &self.inner.queue
    }

    /// The key's hash for the shard's in-memory tables: taken once per operation.
    fn hash(&self, key: &[u8]) -> KeyHash {
        self.inner.state.borrow().index().hash(key)
    }

    fn check_key(&self, key: &[u8]) -> StoreResult<()> {
        if key.is_empty() {
            return Err(StoreError::BadRequest("empty key"));
        }
        if key.len() > self.inner.cfg.max_key_bytes {
            return Err(StoreError::TooLarge {
                what: "key",
                len: key.len(),
                limit: self.inner.cfg.max_key_bytes,
            });
        }
        Ok(())
    }

    fn check_partition(&self, partition: u16) -> StoreResult<()> {
        if u32::from(partition) >= 1u32 << self.inner.cfg.partition_bits {
            return Err(StoreError::BadRequest(
                "partition beyond the store's partition count",
            ));
        }
        Ok(())
    }

    /// (version, exists) as of what is durable. `write` calls it only when no write of
    /// the key is pending.
    fn current(st: &State, key: &[u8], h: KeyHash) -> (u64, bool) {
        debug_assert!(!st.is_pending(key, h), "decided on a pending version");
        st.index()
            .get_hashed(key, h)
            .map_or((0, false), |e| (e.version, e.live_at(now_ms())))
    }

    fn stage_versioned(
        &self,
        key: &[u8],
        h: KeyHash,
        partition: u16,
        value: &mut StageValue<'_>,
        if_version: Option<u64>,
        intent: Intent,
    ) -> StoreResult<(u64, Rc<BatchDone>)> {
        let kind = intent.kind();
        let mut st = self.inner.state.borrow_mut();
        // An unconditional put does not depend on what is there: skipping the lookup saves
        // an index probe (three cache misses) per put.
        let unconditional_put = if_version.is_none() && kind == RecordKind::Put;
        let (version, exists) = if unconditional_put {
            (0, false)
        } else {
            Self::current(&st, key, h)
        };
        let live_version = if exists { version } else { 0 };
        if let Some(expected) = if_version {
            if expected != live_version {
                return Err(StoreError::VersionMismatch {
                    current: live_version,
                });
            }
        }
        if intent == Intent::Delete && !exists {
            return Err(StoreError::NotFound);
        }
        if kind == RecordKind::Put
            && st.index().heap_bytes() >= self.inner.cfg.index_budget_bytes
            && !st.is_pending(key, h)
            && st.index().get_hashed(key, h).is_none()
        {
            // The index is full: a new key would grow it, an indexed one does not.
            bump(&self.inner.metrics.no_space, 1);
            return Err(StoreError::NoSpace);
        }
        // The version is the record's LSN: it grows per key, never restarts (not even after
        // GC forgets a tombstone), and outranks every record already on the device.
        let new_version = st.writer().next_lsn;
        debug_assert!(new_version > version);
        let req = StageRequest {
            key,
            hash: h,
            partition,
            version: None,
            kind,
            origin: Origin::Write,
            expires_ms: match intent {
                Intent::Put { expires_ms } => expires_ms,
                Intent::Delete | Intent::Bury => 0,
            },
        };
        let done = if kind == RecordKind::Tombstone {
            let tomb_value = new_version.to_le_bytes();
            self.inner
                .stage(&mut st, &req, &mut StageValue::Bytes(&tomb_value))?
        } else {
            self.inner.stage(&mut st, &req, value)?
        };
        st.note_staged(key, h, new_version);
        Ok((new_version, done))
    }

    /// Stores `value` under `key` in `partition` (the caller's placement: the engine keeps
    /// it with the object and never computes it); with `if_version`, only if the current
    /// version is that (0: only if absent). Returns the new version once it is durable.
    pub async fn put(
        &self,
        key: &[u8],
        partition: u16,
        value: &[u8],
        if_version: Option<u64>,
    ) -> StoreResult<u64> {
        self.put_value(key, partition, StageValue::Bytes(value), if_version, 0)
            .await
    }

    /// `put` of an object that expires at `expires_ms` (Unix milliseconds; 0: never): it
    /// reads as absent from then on, and GC reclaims it.
    pub async fn put_expiring(
        &self,
        key: &[u8],
        partition: u16,
        value: &[u8],
        if_version: Option<u64>,
        expires_ms: u64,
    ) -> StoreResult<u64> {
        self.put_value(key, partition, StageValue::Bytes(value), if_version, expires_ms)
            .await
    }

    /// `put` of a value received into a buffer from `value_buffer`: the batch writes the
    /// value from that buffer, with no copy.
    pub async fn put_buf(
        &self,
        key: &[u8],
        partition: u16,
        value: ValueBuf,
        if_version: Option<u64>,
    ) -> StoreResult<u64> {
        self.put_value(key, partition, StageValue::Buf(Some(value)), if_version, 0)
            .await
    }

    /// `put_buf` of an object that expires at `expires_ms` (`put_expiring`).
    pub async fn put_buf_expiring(
        &self,
        key: &[u8],
        partition: u16,
        value: ValueBuf,
        if_version: Option<u64>,
        expires_ms: u64,
    ) -> StoreResult<u64> {
        self.put_value(
            key,
            partition,
            StageValue::Buf(Some(value)),
            if_version,
            expires_ms,
        )
        .await
    }

    /// A buffer of the store's DMA pool for a value of `len` bytes, to receive it into
    /// and hand to `put_buf`; None when a copy costs no more (a value short enough to ride
    /// inline behind its key), when `len` is over the value limit, or when the pool has
    /// no room now (then receive it anywhere and `put` it: one copy, no refusal).
    pub fn value_buffer(&self, len: usize) -> Option<ValueBuf> {
        if len < inline_max(self.inner.block) || len > self.inner.cfg.max_value_bytes {
            return None;
        }
        let padded = len.div_ceil(self.inner.block as usize) * self.inner.block as usize;
        let mut buf = self.inner.queue.pool().try_alloc(padded).ok()?;
        buf.set_len(padded).ok()?;
        Some(ValueBuf::new(buf, len))
    }

    async fn put_value(
        &self,
        key: &[u8],
        partition: u16,
        mut value: StageValue<'_>,
        if_version: Option<u64>,
        expires_ms: u64,
    ) -> StoreResult<u64> {
        if expires_ms > MAX_EXPIRES_MS {
            return Err(StoreError::BadRequest("expiry past the year 10889"));
        }
        self.check_key(key)?;
        self.check_partition(partition)?;
        let len = value.bytes().len();
        if len > self.inner.cfg.max_value_bytes {
            return Err(StoreError::TooLarge {
                what: "value",
                len,
                limit: self.inner.cfg.max_value_bytes,
            });
        }
        let version = self
            .write(key, partition, &mut value, if_version, Intent::Put { expires_ms })
            .await?;
        bump(&self.inner.metrics.puts, 1);
        Ok(version)
    }

    /// Writes a record first written elsewhere, keeping its `version`: a replica applying
    /// what its predecessor in the chain wrote, or a resync. `value` None is a tombstone.
    /// Skipped (`Ok(false)`, nothing written) when this store already has that version of
    /// the key or a newer one durably: if the newer one is only staged, it first waits for
    /// that write to end (and looks again if it failed), so that either answer means a
    /// read here now sees this version or a newer one. A replica acknowledges a record on
    /// the strength of this: answering for a version staged behind a newer one that is
    /// not yet durable let a read at the tail return an older value than one already
    /// acknowledged (the nemesis test's history caught it). Otherwise returns `Ok(true)`
    /// once it is durable. Versions made here afterwards outrank it.
    ///
    /// A record older than a tombstone that GC has already forgotten looks like a new key:
    /// whoever sends records must send what the source holds now, not a stale copy.
    pub async fn apply_versioned(
        &self,
        key: &[u8],
        partition: u16,
        value: Option<&[u8]>,
        version: u64,
    ) -> StoreResult<bool> {
        self.apply_versioned_expiring(key, partition, value, version, 0)
            .await
    }

    /// `apply_versioned` of an object that expires at `expires_ms` (Unix milliseconds;
    /// 0: never), as the record first written elsewhere does.
    pub async fn apply_versioned_expiring(
        &self,
        key: &[u8],
        partition: u16,
        value: Option<&[u8]>,
        version: u64,
        expires_ms: u64,
    ) -> StoreResult<bool> {
        if expires_ms > MAX_EXPIRES_MS {
            return Err(StoreError::BadRequest("expiry past the year 10889"));
        }
        self.check_key(key)?;
        self.check_partition(partition)?;
        let len = value.map_or(0, <[u8]>::len);
        if len > self.inner.cfg.max_value_bytes {
            return Err(StoreError::TooLarge {
                what: "value",
                len,
                limit: self.inner.cfg.max_value_bytes,
            });
        }
        if version == 0 {
            return Err(StoreError::BadRequest("version 0 means absent"));
        }
        if version > crate::limits::MAX_VERSION {
            return Err(StoreError::BadRequest("version past the largest a log may reach"));
        }
        let kind = if value.is_some() {
            RecordKind::Put
        } else {
            RecordKind::Tombstone
        };
        let h = self.hash(key);
        let req = StageRequest {
            key,
            hash: h,
            partition,
            version: Some(version),
            kind,
            origin: Origin::Replica,
            expires_ms: if value.is_some() { expires_ms } else { 0 },
        };
        let deadline = Instant::now() + self.inner.cfg.max_write_wait;
        let mut pass = None;
        while Instant::now() < deadline {
            if pass.is_none() {
                self.make_room_for_write().await;
            } else {
                self.collect_until_room().await;
            }
            // A newer record of the key is staged: once the newest batch (and so every one
            // before it) has ended, the index says whether this one is covered. Only that
            // batch is waited for, not every later write of the key.
            let behind_staged = {
                let st = self.inner.state.borrow();
                if version <= st.index().get_hashed(key, h).map_or(0, |e| e.version) {
                    return Ok(false);
                }
                (version <= st.pending_version(key, h).unwrap_or(0)).then(|| newest_staged_batch(st.writer()))
            };
            if let Some(newest) = behind_staged {
                match newest {
                    Some(done) => drop(commit(&self.inner, done).await),
                    None => self.wait_until_not_pending(key, h, deadline).await?,
                }
                continue;
            }
            // Nothing awaits from here until the record is staged.
            let staged = {
                let mut st = self.inner.state.borrow_mut();
                let indexed = st.index().get_hashed(key, h).map_or(0, |e| e.version);
                if version <= indexed {
                    return Ok(false);
                }
                // A tombstone's value is the LSN it is written at (GC's test for when it
                // may be forgotten); staging takes exactly the writer's next LSN.
                let stamp = st.writer().next_lsn.to_le_bytes();
                let mut v = StageValue::Bytes(value.unwrap_or(&stamp));
                let r = self.inner.stage(&mut st, &req, &mut v);
                if r.is_ok() {
                    st.note_staged(key, h, version);
                }
                r
            };
            match staged {
                Ok(done) => {
                    drop(pass);
                    commit(&self.inner, done).await?;
                    bump(&self.inner.metrics.versioned_writes, 1);
                    return Ok(true);
                }
                Err(StoreError::Busy(_)) => {
                    if pass.is_none() {
                        pass = Some(self.inner.write_gate.enter().await);
                    }
                    self.drain_staged_or_wait_for_buffers(len).await
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.busy("no room to stage a versioned record"))
    }

    /// Deletes `key` (with `if_version`, only at that version). Returns the tombstone's
    /// version once it is durable.
    pub async fn delete(&self, key: &[u8], partition: u16, if_version: Option<u64>) -> StoreResult<u64> {
        self.check_key(key)?;
        self.check_partition(partition)?;
        let version = self
            .write(
                key,
                partition,
                &mut StageValue::Bytes(&[]),
                if_version,
                Intent::Delete,
            )
            .await?;
        bump(&self.inner.metrics.deletes, 1);
        Ok(version)
    }

    /// Writes a tombstone for `key` only if it has no live version (a live one:
    /// `VersionMismatch`), with a new version: how the head of a chain tells a replica
    /// that holds a copy the chain never had (a write that reached it and no further) to
    /// drop it. Returns the tombstone's version once it is durable.
    pub async fn bury_if_absent(&self, key: &[u8], partition: u16) -> StoreResult<u64> {
        self.check_key(key)?;
        self.check_partition(partition)?;
        let empty = &mut StageValue::Bytes(&[]);
        let version = self.write(key, partition, empty, Some(0), Intent::Bury).await?;
        bump(&self.inner.metrics.deletes, 1);
        Ok(version)
    }

    /// Moves `key`'s live object, at the same version, into `partition` (issue 33): a split
    /// index's range is moving to another partition's chain, and this store, a replica of
    /// both chains, already holds the key under the partition it came from. A record of
    /// the same key and version, in the new partition, written after the old: the index,
    /// and recovery (which replays in log order and lets an equal version replace), keep
    /// the later one. Returns whether it moved (not if the key is absent, a tombstone,
    /// expired, or already there).
    pub async fn rehome(&self, key: &[u8], partition: u16) -> StoreResult<bool> {
        self.check_key(key)?;
        self.check_partition(partition)?;
        let h = self.hash(key);
        for _ in 0..8 {
            let found = {
                let st = self.inner.state.borrow();
                match st.index().get_hashed(key, h) {
                    Some(e) if !e.tombstone() && st.index().partition_of(key) != Some(partition) => {
                        Some(e.version)
                    }
                    _ => None,
                }
            };
            let Some(version) = found else {
                return Ok(false);
            };
            let (value, v) = match self.get_ignoring_expiry(key, None).await {
                Ok(got) => got,
                Err(StoreError::NotFound) => return Ok(false),
                Err(e) => return Err(e),
            };
            if v != version {
                continue;
            }
            self.make_room_for_write().await;
            let req = StageRequest {
                key,
                hash: h,
                partition,
                version: Some(version),
                kind: RecordKind::Put,
                origin: Origin::Replica,
                expires_ms: value.expires_ms(),
            };
            let staged = {
                let mut st = self.inner.state.borrow_mut();
                let still = st.index().get_hashed(key, h).map(|e| e.version) == Some(version)
                    && st.pending_version(key, h).is_none();
                if !still {
                    continue;
                }
                let mut v = StageValue::Bytes(value.as_slice());
                let r = self.inner.stage(&mut st, &req, &mut v);
                if r.is_ok() {
                    st.note_staged(key, h, version);
                }
                r
            };
            commit(&self.inner, staged?).await?;
            return Ok(true);
        }
        Err(self.busy("the key kept changing while it was moved to another partition"))
    }

    /// Makes every version written here from now on greater than `version`: a head about
    /// to rewrite a key that a replica holds at `version` (`bury_if_absent`, or a put of the
    /// same value) so that the replica takes the rewrite. The same rule as a versioned
    /// record's (the next LSN moves past it); nothing is written.
    /// A version past `MAX_VERSION` is refused (nothing changes).
    pub fn raise_versions_past(&self, version: u64) -> StoreResult<()> {
        if version > crate::limits::MAX_VERSION {
            return Err(StoreError::BadRequest("version past the largest a log may reach"));
        }
        let mut st = self.inner.state.borrow_mut();
        let (writer, _) = st.log_mut();
        writer.next_lsn = writer.next_lsn.max(version.saturating_add(1));
        Ok(())
    }

    /// Stages one write and waits until it is durable.
    ///
    /// A write that depends on the key's current state (a conditional put, any delete)
    /// first waits until no write of that key is pending, so that it is decided against a
    /// durable version only: a version that is staged but not yet written may still fail,
    /// and a write acknowledged on the strength of it would then rest on nothing.
    ///
    /// `Busy` from inside the engine (every DMA buffer taken, too many batches queued) is
    /// a wait, not an answer: the write takes its place at the write gate (later writes
    /// queue behind it, so waiting writes go in arrival order), drives the queued batches
    /// to the device (or waits for buffers to come back) and tries again, for up to
    /// `max_write_wait`; only then is it answered `Busy`, counted with its reason.
    async fn write(
        &self,
        key: &[u8],
        partition: u16,
        value: &mut StageValue<'_>,
        if_version: Option<u64>,
        intent: Intent,
    ) -> StoreResult<u64> {
        let kind = intent.kind();
        let decides = if_version.is_some() || kind == RecordKind::Tombstone;
        // One hash of the key for every in-memory table this write touches, to the end.
        let h = self.hash(key);
        let deadline = Instant::now() + self.inner.cfg.max_write_wait;
        // Held once this write has had to wait for buffers or a batch slot: later writes
        // queue behind it at the gate, so that waiting writes go in arrival order.
        let mut pass = None;
        loop {
            if decides {
                self.wait_until_not_pending(key, h, deadline).await?;
            }
            if pass.is_none() {
                self.make_room_for_write().await;
            } else {
                self.collect_until_room().await;
            }
            // Nothing awaits from here until the record is staged.
            if decides && self.inner.state.borrow().is_pending(key, h) {
                // A write of the key was staged while this one waited for room.
                if Instant::now() >= deadline {
                    return Err(self.busy("writes of the key keep arriving"));
                }
                continue;
            }
            match self.stage_versioned(key, h, partition, value, if_version, intent) {
                Ok((version, done)) => {
                    drop(pass);
                    commit(&self.inner, done).await?;
                    return Ok(version);
                }
                Err(StoreError::Busy(why)) => {
                    if Instant::now() >= deadline {
                        return Err(self.busy(why));
                    }
                    if pass.is_none() {
                        pass = Some(self.inner.write_gate.enter().await);
                    }
                    // A value in its own buffer needs none for itself, only the batch's.
                    let copied_len = match value {
                        StageValue::Bytes(b) => b.len(),
                        StageValue::Buf(_) => 0,
                    };
                    self.drain_staged_or_wait_for_buffers(copied_len).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn busy(&self, why: &'static str) -> StoreError {
        self.inner.metrics.count_busy(why);
        StoreError::Busy(why)
    }

    /// Waits until every staged write of `key` has reached the device (or failed).
    async fn wait_until_not_pending(&self, key: &[u8], h: KeyHash, deadline: Instant) -> StoreResult<()> {
        while Instant::now() < deadline {
            let newest = {
                let st = self.inner.state.borrow();
                if !st.is_pending(key, h) {
                    return Ok(());
                }
                newest_staged_batch(st.writer())
            };
            // A failed batch forgets its pending records: either way the key moves on.
            match newest {
                Some(done) => drop(commit(&self.inner, done).await),
                None => return Ok(()),
            }
        }
        Err(self.busy("writes of the key keep arriving"))
    }

    /// After a `Busy` from staging: writes out what is queued (its buffers return to the
    /// pool when its write ends), or, with nothing queued, waits until the pool has room
    /// for a batch and a copied value of `value_len` bytes (reads and GC hold buffers only
    /// while they run).
    async fn drain_staged_or_wait_for_buffers(&self, value_len: usize) {
        let newest = newest_staged_batch(self.inner.state.borrow().writer());
        match newest {
            Some(done) if done_pending(&done) => drop(commit(&self.inner, done).await),
            _ => {
                let block = self.inner.block as usize;
                let want = value_len.max(self.inner.cfg.batch_bytes).div_ceil(block) * block;
                drop(self.inner.queue.pool().alloc(want).await);
            }
        }
    }

    /// The value of `key` (or `range` = (offset, length) of it) and its version.
    pub async fn get(&self, key: &[u8], range: Option<(u64, u64)>) -> StoreResult<(Value, u64)> {
        self.get_as_of(key, range, now_ms()).await
    }

    /// `get`, with an expired object not yet buried still live: how a replica of a chain
    /// answers, for which expiry is the head's decision and comes down as a burial.
    pub async fn get_ignoring_expiry(
        &self,
        key: &[u8],
        range: Option<(u64, u64)>,
    ) -> StoreResult<(Value, u64)> {
        self.get_as_of(key, range, 0).await
    }

    /// `get` (`ignoring_expiry`: `get_ignoring_expiry`) if it needs no I/O: the value from
    /// the cache, or the error the index alone gives (NotFound). None when the value must
    /// be read from the device: then nothing was counted, and `get` does the whole read.
    pub fn get_at_once(
        &self,
        key: &[u8],
        range: Option<(u64, u64)>,
        ignoring_expiry: bool,
    ) -> Option<StoreResult<(Value, u64)>> {
        let now = if ignoring_expiry { 0 } else { now_ms() };
        match self.find_for_read(key, range, now, false) {
            Ok(Found::OnDevice(..)) => None,
            Ok(Found::Ready(value, version)) => {
                bump(&self.inner.metrics.gets, 1);
                Some(Ok((value, version)))
            }
            Err(e) => {
                bump(&self.inner.metrics.gets, 1);
                Some(Err(e))
            }
        }
    }

    /// What a read of `key` live at `now` finds without I/O: the value in the cache, or
    /// the index entry to read it by. A cache miss is counted only if `count_miss` (a
    /// read that stops at a miss and comes back through `get` is counted there once).
    fn find_for_read(
        &self,
        key: &[u8],
        range: Option<(u64, u64)>,
        now: u64,
        count_miss: bool,
    ) -> StoreResult<Found> {
        self.check_key(key)?;
        let mut st = self.inner.state.borrow_mut();
        // One hash of the key for the index and the cache.
        let h = st.index().hash(key);
        let Some(entry) = st.index().get_hashed(key, h).filter(|e| e.live_at(now)).copied() else {
            bump(&self.inner.metrics.not_found, 1);
            return Err(StoreError::NotFound);
        };
        let (start, len) = clamp_range(range, entry.value_len() as u64)?;
        match st.cached(key, h, entry.version, count_miss) {
            Some(bytes) => Ok(Found::Ready(
                Value::Cached {
                    bytes,
                    start: start as usize,
                    len: len as usize,
                    object_len: entry.value_len(),
                    expires_ms: entry.expires_ms,
                },
                entry.version,
            )),
            None => Ok(Found::OnDevice(entry, h)),
        }
    }

    /// `get` with objects live at `now` (Unix ms; 0: every object not deleted).
    async fn get_as_of(&self, key: &[u8], range: Option<(u64, u64)>, now: u64) -> StoreResult<(Value, u64)> {
        bump(&self.inner.metrics.gets, 1);
        let (entry, h) = match self.find_for_read(key, range, now, true)? {
            Found::Ready(value, version) => return Ok((value, version)),
            Found::OnDevice(entry, h) => (entry, h),
        };
        self.inner.state.borrow_mut().pin_reader(entry.segment);
        let (buf, value_at) = {
            let _pin = ReadPin {
                inner: &self.inner,
                segment: entry.segment,
            };
            self.read_record(key, &entry).await?
        };
        let value_len = entry.value_len() as usize;
        if self.inner.cfg.caches(value_len) {
            let bytes: Rc<[u8]> = buf[value_at..value_at + value_len].into();
            self.inner
                .state
                .borrow_mut()
                .cache_insert(key, h, entry.version, bytes);
        }
        let (start, len) = clamp_range(range, value_len as u64)?;
        Ok((
            Value::Dma {
                buf,
                start: value_at + start as usize,
                len: len as usize,
                object_len: entry.value_len(),
                expires_ms: entry.expires_ms,
            },
            entry.version,
        ))
    }

    /// Reads the blocks holding the value `entry` points at and checks it against the
    /// CRC32C the index keeps; returns the buffer and where the value starts in it.
    async fn read_record(
        &self,
        _key: &[u8],
        entry: &IndexEntry,
    ) -> StoreResult<(hotshard_nvme::DmaBuffer, usize)> {
        let block = self.inner.block;
        let seg_off = self.inner.state.borrow().segments().device_offset(entry.segment);
        let at = seg_off + entry.value_offset as u64;
        let len = entry.value_len() as u64;
        let first = at / block * block;
        let end = (at + len).div_ceil(block).max(1) * block;
        let end = end.max(first + block);
        // A turn on the device first, then a buffer: a read waiting for its turn holds none.
        let _slot = self.inner.read_slots.take().await;
        let buf = self
            .inner
            .queue
            .pool()
            .alloc((end - first) as usize)
            .await
            .map_err(StoreError::Device)?;
        let buf = match self.inner.queue.read_at(first, buf).await {
            Ok(b) => b,
            Err(e) => {
                bump(&self.inner.metrics.read_errors, 1);
                return Err(StoreError::Device(e));
            }
        };
        let rel = (at - first) as usize;
        if value_crc(&buf[rel..rel + len as usize]) != entry.value_crc {
            bump(&self.inner.metrics.corrupt_reads, 1);
            return Err(StoreError::Corrupt(format!(
                "value of {len} bytes at segment {} offset {} fails its checksum",
                entry.segment, entry.value_offset
            )));
        }
        Ok((buf, rel))
    }

    /// Length, version and value checksum of `key`, from the index alone.
    pub fn stat(&self, key: &[u8]) -> StoreResult<ObjectStat> {
        self.stat_as_of(key, now_ms())
    }

    /// `stat`, with an expired object not yet buried still live (`get_ignoring_expiry`).
    pub fn stat_ignoring_expiry(&self, key: &[u8]) -> StoreResult<ObjectStat> {
        self.stat_as_of(key, 0)
    }

    /// Whether `key`'s object has expired by this store's clock and is not yet buried.
    pub fn is_expired(&self, key: &[u8]) -> bool {
        let st = self.inner.state.borrow();
        st.index()
            .get(key)
            .is_some_and(|e| !e.tombstone() && e.expired(now_ms()))
    }

    fn stat_as_of(&self, key: &[u8], now: u64) -> StoreResult<ObjectStat> {
        self.check_key(key)?;
        let st = self.inner.state.borrow();
        let e = st
            .index()
            .get(key)
            .filter(|e| e.live_at(now))
            .ok_or(StoreError::NotFound)?;
        Ok(ObjectStat {
            len: e.value_len() as u64,
            version: e.version,
            crc32c: e.value_crc,
            expires_ms: e.expires_ms,
        })
    }

    /// The live keys of `partition`, with versions: a walk of that partition's list of
    /// index slots (no key is hashed).
    pub fn keys_in_partition(&self, partition: u16) -> Vec<(Vec<u8>, u64)> {
        let st = self.inner.state.borrow();
        let now = now_ms();
        st.index()
            .iter_partition(partition)
            .filter(|(_, e)| e.live_at(now))
            .map(|(k, e)| (k.to_vec(), e.version))
            .collect()
    }

    /// Up to `limit` keys whose objects have expired (not yet buried), with partition and
    /// version: one walk of the index slots, skipped at once while no object the index
    /// has taken (written, replicated or recovered) has carried an expiry.
    pub fn expired_keys(&self, limit: usize) -> Vec<(Vec<u8>, u16, u64)> {
        let st = self.inner.state.borrow();
        if !st.index().has_expiring() {
            return Vec::new();
        }
        let now = now_ms();
        st.index()
            .iter_with_partition()
            .filter(|(_, _, e)| !e.tombstone() && e.expired(now))
            .take(limit)
            .map(|(k, p, e)| (k.to_vec(), p, e.version))
            .collect()
    }

    /// A page of the live keys of `partition` that `keep` accepts, in the order of `hash`
    /// (a listing's resumable order: SCAN's, `ListKeys`'), from hash `from` on: the keys of
    /// the smallest hashes whose bytes (each key's length + 2) fit `soft` (at least those of
    /// the smallest hash), and the hash the next page starts at, None if this one ends the partition.
    /// Keys of one hash are never split between pages. One walk of the partition's list
    /// with a heap of the page's size: no key is copied but the page's, and nothing is
    /// sorted but the page (SCAN of a one-tag partition of a million keys took 200 ms a
    /// call when every key was copied and sorted).
    pub fn partition_keys_by_hash(
        &self,
        partition: u16,
        from: u64,
        soft: usize,
        hash: impl Fn(&[u8]) -> u64,
        keep: impl Fn(&[u8]) -> bool,
    ) -> (Vec<Vec<u8>>, Option<u64>) {
        let st = self.inner.state.borrow();
        let now = now_ms();
        let mut page: std::collections::BinaryHeap<(u64, &[u8])> = std::collections::BinaryHeap::new();
        let (mut bytes, mut cut, mut lowest) = (0usize, u64::MAX, u64::MAX);
        for (k, e) in st.index().iter_partition(partition) {
            if !e.live_at(now) {
                continue;
            }
            let h = hash(k);
            if h < from || h >= cut || !keep(k) {
                continue;
            }
            page.push((h, k));
            bytes += k.len() + 2;
            lowest = lowest.min(h);
            // Past the page's size: the largest hashes leave it, and the page ends before
            // them; the keys of its lowest hash stay whatever their size (progress).
            while bytes > soft && page.peek().is_some_and(|&(top, _)| top > lowest) {
                let (h, k) = page.pop().expect("a page with a key above its lowest");
                bytes -= k.len() + 2;
                cut = cut.min(h);
            }
        }
        let keys = page
            .into_sorted_vec()
            .into_iter()
            .take_while(|&(h, _)| h < cut)
            .map(|(_, k)| k.to_vec())
            .collect();
        (keys, (cut != u64::MAX).then_some(cut))
    }

    /// Every key of `partition` the index holds, tombstones included, with version and
    /// value checksum, in key order: what a replica compares with another's to resync
    /// (issue 20). A walk of that partition's list of index slots (no key is hashed), so a
    /// page costs the partition, not the shard (issue 31).
    pub fn partition_manifest(&self, partition: u16) -> Vec<ManifestEntry> {
        let st = self.inner.state.borrow();
        let mut entries: Vec<ManifestEntry> = st
            .index()
            .iter_partition(partition)
            .map(|(k, e)| ManifestEntry {
                key: k.to_vec(),
                version: e.version,
                crc32c: e.value_crc,
                tombstone: e.tombstone(),
            })
            .collect();
        entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        entries
    }

    /// A page of `partition`'s keys that name an index tag, in key order (issue 33):
    /// live objects only, each with its version, length and value checksum
    /// (`ordered::OrderedKeys::list` says what the query means).
    pub fn list(
        &self,
        partition: u16,
        q: &crate::ordered::ListQuery<'_>,
    ) -> crate::ordered::Listing<ObjectStat> {
        self.list_watching(partition, q, |_| {})
    }

    /// `list`, calling `passed` with every key the listing looks at (listed or not), so
    /// that the caller can tell whether one has a write in flight.
    pub fn list_watching(
        &self,
        partition: u16,
        q: &crate::ordered::ListQuery<'_>,
        passed: impl Fn(&[u8]),
    ) -> crate::ordered::Listing<ObjectStat> {
        let st = self.inner.state.borrow();
        let page = st.index().list_watching(partition, q, now_ms(), passed);
        crate::ordered::Listing {
            items: page
                .items
                .into_iter()
                .map(|i| match i {
                    crate::ordered::Listed::Key(k, e) => crate::ordered::Listed::Key(
                        k,
                        ObjectStat {
                            len: e.value_len() as u64,
                            version: e.version,
                            crc32c: e.value_crc,
                            expires_ms: e.expires_ms,
                        },
                    ),
                    crate::ordered::Listed::Prefix(p) => crate::ordered::Listed::Prefix(p),
                })
                .collect(),
            next: page.next,
        }
    }

    /// `key` as the index holds it (a tombstone included), for comparing with another
    /// replica's manifest entry.
    /// The ordered keys (those naming an index tag, tombstones included) kept in
    /// `partition`.
    pub fn ordered_in_partition(&self, partition: u16) -> usize {
        self.inner.state.borrow().index().ordered_in_partition(partition)
    }

    pub fn manifest_entry(&self, key: &[u8]) -> Option<ManifestEntry> {
        let st = self.inner.state.borrow();
        st.index().get(key).map(|e| ManifestEntry {
            key: key.to_vec(),
            version: e.version,
            crc32c: e.value_crc,
            tombstone: e.tombstone(),
        })
    }

    pub fn counters(&self) -> StoreCounters {
        self.inner.metrics.snapshot()
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.inner.state.borrow().cache_stats()
    }

    pub fn space(&self) -> SpaceStats {
        let st = self.inner.state.borrow();
        SpaceStats {
            objects: st.index().live_objects(),
            index_entries: st.index().entries(),
            index_heap_bytes: st.index().heap_bytes(),
            live_bytes: st.segments().live_bytes(),
            segments: st.segments().count(),
            free_segments: st.segments().free_count(),
            segment_bytes: st.segments().segment_bytes(),
        }
    }
}

/// Checks a byte range against the value's length.
fn clamp_range(range: Option<(u64, u64)>, value_len: u64) -> StoreResult<(u64, u64)> {
    match range {
        None => Ok((0, value_len)),
        Some((start, len)) => {
            if start > value_len {
                return Err(StoreError::BadRequest("range starts past the end of the value"));
            }
            Ok((start, len.min(value_len - start)))
        }
    }
}

/// What a read finds before any I/O (`Store::find_for_read`).
enum Found {
    /// The value (from the cache) and its version.
    Ready(Value, u64),
    /// The index entry to read the value by, and the key's hash.
    OnDevice(IndexEntry, KeyHash),
}
