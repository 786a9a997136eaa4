//! The shard's in-memory state and the only code that changes it: the index, the hot-object
//! cache, the versions staged but not yet durable, the segment table and the log writer.
//! Every change goes through a method here, so that they stay consistent with one another:
//! a live record's bytes are counted in exactly one segment, and every staged record of a
//! key is counted pending until its batch is published or forgotten.

use std::rc::Rc;

use hashbrown::HashTable;

use super::cache::{Cache, CacheStats};
use super::group_commit::{live_size, DurableBatch, LogRecord, Origin, Writer};
use super::index::{Index, IndexEntry, KeyHash, Upsert};
use super::segments::SegmentTable;

/// Versions staged but not yet durable, for one key.
struct Pending {
    key: Box<[u8]>,
    hash: u64,
    /// The newest staged version.
    version: u64,
    /// Staged records of this key still waiting for their batch.
    count: u32,
}

pub(crate) struct State {
    index: Index,
    segments: SegmentTable,
    pending: HashTable<Pending>,
    writer: Writer,
    /// GC's own log head (`GcWrites::OwnHead`): its open segment and batches. It draws
    /// LSNs from the log's one sequence (`with_gc_head`).
    gc_writer: Writer,
    cache: Cache,
}

impl State {
    pub(crate) fn new(index: Index, segments: SegmentTable, writer: Writer, cache: Cache) -> Self {
        State {
            index,
            segments,
            pending: HashTable::new(),
            gc_writer: Writer::new(writer.next_lsn),
            writer,
            cache,
        }
    }

    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    pub(crate) fn segments(&self) -> &SegmentTable {
        &self.segments
    }

    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// For group commit: the writer and the segment table it writes into.
    pub(crate) fn log_mut(&mut self) -> (&mut Writer, &mut SegmentTable) {
        (&mut self.writer, &mut self.segments)
    }

    /// For GC's own head: its writer and the segment table, with the two writers' LSNs
    /// kept one sequence (each record's LSN is above every LSN taken before it by either),
    /// so that a segment's first LSN still bounds every record in it and the tombstone
    /// rule (`min_first_lsn_excluding`) holds across both heads.
    pub(crate) fn with_gc_head<R>(&mut self, f: impl FnOnce(&mut Writer, &mut SegmentTable) -> R) -> R {
        let next = self.writer.next_lsn.max(self.gc_writer.next_lsn);
        self.gc_writer.next_lsn = next;
        let r = f(&mut self.gc_writer, &mut self.segments);
        self.writer.next_lsn = self.gc_writer.next_lsn;
        r
    }

    pub(crate) fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The cached value of `key` at `version`, if any.
    pub(crate) fn cached(
        &mut self,
        key: &[u8],
        h: KeyHash,
        version: u64,
        count_miss: bool,
    ) -> Option<Rc<[u8]>> {
        self.cache.get(key, h, version, count_miss)
    }

    pub(crate) fn cache_insert(&mut self, key: &[u8], h: KeyHash, version: u64, bytes: Rc<[u8]>) {
        self.cache.insert(key, h, version, bytes);
    }

    /// A read of `segment` begins (GC leaves it alone until `unpin_reader`).
    pub(crate) fn pin_reader(&mut self, segment: u32) {
        self.segments.pin_reader(segment);
    }

    pub(crate) fn unpin_reader(&mut self, segment: u32) {
        self.segments.unpin_reader(segment);
    }

    pub(crate) fn is_pending(&self, key: &[u8], h: KeyHash) -> bool {
        self.pending_version(key, h).is_some()
    }

    /// The newest version of `key` staged but not yet durable, if any.
    pub(crate) fn pending_version(&self, key: &[u8], h: KeyHash) -> Option<u64> {
        self.pending.find(h.0, |p| *p.key == *key).map(|p| p.version)
    }

    /// A record of `key` at `version` was staged; it stays pending until its batch is
    /// published or forgotten.
    pub(crate) fn note_staged(&mut self, key: &[u8], h: KeyHash, version: u64) {
        match self.pending.find_mut(h.0, |p| *p.key == *key) {
            Some(p) => {
                p.version = p.version.max(version);
                p.count += 1;
            }
            None => {
                self.pending.insert_unique(
                    h.0,
                    Pending {
                        key: key.into(),
                        hash: h.0,
                        version,
                        count: 1,
                    },
                    |p| p.hash,
                );
            }
        }
    }

    fn settle(&mut self, key: &[u8], h: KeyHash) {
        if let Ok(mut found) = self.pending.find_entry(h.0, |p| *p.key == *key) {
            let p = found.get_mut();
            debug_assert!(p.count > 0);
            p.count -= 1;
            if p.count == 0 {
                found.remove();
            }
        }
    }

    /// The log's hand-over: a batch is durable. Each record goes into the index as its
    /// origin says, moving its live bytes from the segment of the version it replaces.
    pub(crate) fn publish(&mut self, batch: DurableBatch) {
        let segment = batch.segment;
        for r in batch.records {
            let entry = IndexEntry::new(
                r.version,
                segment,
                r.value_offset,
                r.value_len,
                r.value_crc,
                r.tombstone,
            )
            .expiring_at(r.expires_ms);
            let size = live_size(&r.key, r.value_len);
            let h = r.hash;
            match r.origin {
                Origin::Write => {
                    if let Some(old) = self.index.insert_hashed(&r.key, h, r.partition, entry) {
                        debug_assert!(old.version < entry.version, "versions grow per key");
                        self.segments
                            .sub_live(old.segment, live_size(&r.key, old.value_len()));
                    }
                    self.segments.add_live(segment, size);
                    self.cache_written(&r.key, h, r.version, r.value);
                    self.settle(&r.key, h);
                }
                Origin::Replica => {
                    match self
                        .index
                        .insert_unless_older_hashed(&r.key, h, r.partition, entry)
                    {
                        // A newer version was published first: this record is dead on arrival.
                        Upsert::KeptNewer => {}
                        Upsert::Replaced(old) => {
                            if let Some(old) = old {
                                self.segments
                                    .sub_live(old.segment, live_size(&r.key, old.value_len()));
                            }
                            self.segments.add_live(segment, size);
                            self.cache_written(&r.key, h, r.version, r.value);
                        }
                    }
                    self.settle(&r.key, h);
                }
                Origin::Moved {
                    segment: from_seg,
                    offset: from_off,
                } => {
                    let still_there = self
                        .index
                        .get_hashed(&r.key, h)
                        .filter(|e| e.segment == from_seg && e.value_offset == from_off)
                        .copied();
                    if let Some(old) = still_there {
                        self.index.insert_hashed(&r.key, h, r.partition, entry);
                        // An expired object moves as a tombstone: smaller than it was.
                        self.segments
                            .sub_live(from_seg, live_size(&r.key, old.value_len()));
                        self.segments.add_live(segment, size);
                        self.segments.note_moved(from_seg, segment, size);
                        if r.tombstone && !old.tombstone() {
                            self.cache.remove(&r.key, h);
                        }
                    }
                }
            }
        }
    }

    /// Write-through: a cached key takes the value just made durable in place, a key in the
    /// cache's ghost enters as a read would put it (`Cache::admits_write` chose which
    /// values were copied out for this); a delete, or a write whose value was not kept,
    /// drops the key's stale copy.
    fn cache_written(&mut self, key: &[u8], h: KeyHash, version: u64, value: Option<Rc<[u8]>>) {
        match value {
            Some(v) => self.cache.update_written(key, h, version, v),
            None => self.cache.remove(key, h),
        }
    }

    /// Whether a durable write of `key` (`len` bytes) should leave its value in the cache.
    pub(crate) fn cache_admits_write(&self, key: &[u8], h: KeyHash) -> bool {
        self.cache.admits_write(key, h)
    }

    /// The log's hand-back: these records will never be durable.
    pub(crate) fn forget(&mut self, records: &[LogRecord]) {
        for r in records {
            if !matches!(r.origin, Origin::Moved { .. }) {
                self.settle(&r.key, r.hash);
            }
        }
    }

    /// GC: the tombstone of `key` in `segment` outlived every older version of the key; it
    /// leaves the index, and its bytes the segment's live count.
    pub(crate) fn drop_tombstone(&mut self, key: &[u8], h: KeyHash, segment: u32, size: u64) {
        let removed = self.index.remove_hashed(key, h);
        debug_assert!(removed.is_some_and(|e| e.tombstone() && e.segment == segment));
        self.segments.sub_live(segment, size);
    }

    /// GC: `segment` holds nothing live and no read or batch is in flight in it.
    pub(crate) fn release_segment(&mut self, segment: u32) {
        self.segments.release(segment);
    }
}
