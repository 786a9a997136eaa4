//! Group commit: records are staged into the open batch (aligned DMA buffers) and each
//! batch is written with FUA (or write + flush). Small batches go one at a time, so that
//! records arriving during a write are grouped behind it; a large batch (a quarter of
//! `batch_bytes` or more: large values) is written at once, beside the writes in flight,
//! up to `writes_in_flight`. Batches are retired strictly in log order whatever order the
//! device completes them in: a batch is acknowledged (and published) only once every
//! batch before it is durable, so an acknowledged batch never sits behind a torn one.
//! Whoever waits for a batch while the device may take another becomes its leader.
//!
//! The log knows nothing of the index, the cache or pending versions: it reaches the
//! engine through `LogHost` only. A durable batch is handed over whole (`publish`), a
//! failed one is handed back (`forget`); each record says where it came from (a new
//! write, a replica's copy that keeps its version, a GC move), and the engine applies it
//! accordingly.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use hotshard_nvme::limits::MAX_IOVECS;
use hotshard_nvme::{BlockQueue, DmaBuffer, Durability};

use super::config::{CommitDurability, StoreConfig};
use super::error::{StoreError, StoreResult};
use super::format::{
    value_crc, BatchHeader, RecordHeader, RecordKind, SegmentHeader, BATCH_HEADER_BYTES, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::index::KeyHash;
use super::metrics::{bump, StoreMetrics};
use super::segments::SegmentTable;
use super::value_buf::StageValue;
use crate::limits::GC_RESERVED_SEGMENTS;

/// The engine as the log sees it: the device, the settings, the log's own state (writer
/// and segment table), and where durable and failed batches go.
pub(crate) trait LogHost {
    type Queue: BlockQueue;
    fn queue(&self) -> &Self::Queue;
    fn config(&self) -> &StoreConfig;
    fn uuid(&self) -> &[u8; 16];
    /// The unit of I/O and alignment (at least 4 KiB).
    fn block(&self) -> u64;
    fn metrics(&self) -> &StoreMetrics;
    /// Whether the value of a durable write of `key` (`len` bytes) should be copied out
    /// for the engine's cache.
    fn caches_written(&self, key: &[u8], hash: KeyHash, len: usize) -> bool;
    /// How this log's batches reach the device: the store's commit durability, or, for
    /// GC's own head, `None` (plain writes; GC flushes once before freeing a victim).
    fn batch_durability(&self) -> Option<CommitDurability> {
        Some(self.config().durability)
    }
    /// Runs `f` on the log's writer and the segment table it writes into.
    fn with_log<R>(&self, f: impl FnOnce(&mut Writer, &mut SegmentTable) -> R) -> R;
    /// A batch is on the device: apply its records (in order).
    fn publish(&self, batch: DurableBatch);
    /// Records that will never be durable (their batch failed or was abandoned).
    fn forget(&self, records: &[LogRecord]);
}

/// Where a record came from, which decides how the engine applies it once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A new write here: its version is its LSN, newer than anything indexed for the key.
    Write,
    /// A record written first elsewhere (a replica applying what its predecessor wrote):
    /// it keeps its version and replaces the indexed one only if newer.
    Replica,
    /// A GC copy of the record at (segment, offset): applied only if the index still
    /// points there.
    Moved { segment: u32, offset: u32 },
}

/// One record of a batch, as the engine receives it.
#[derive(Debug)]
pub struct LogRecord {
    pub key: Box<[u8]>,
    /// The key's hash for the in-memory tables, taken once when the write began.
    pub hash: KeyHash,
    pub partition: u16,
    pub version: u64,
    pub tombstone: bool,
    pub expires_ms: u64,
    /// Segment offset of the value once the batch is placed (set when it is written).
    pub value_offset: u32,
    pub value_len: u32,
    pub value_crc: u32,
    pub origin: Origin,
    /// A copy of the value once the batch is durable, if the engine's cache takes it
    /// (`LogHost::caches_written`): a write leaves its value in the cache.
    pub value: Option<Rc<[u8]>>,
}

/// A batch on the device: its segment and its records in log order.
pub struct DurableBatch {
    pub segment: u32,
    pub records: Vec<LogRecord>,
}

/// Copied values share buffers of this size (or one value's, if larger): a batch that
/// copies a few values takes a few pages, not `batch_bytes` at once (a 1 MiB buffer for a
/// batch of one 4 KiB put cost a 256-page search of the pool's bitmap each time).
const COPY_BUFFER_BYTES: usize = 64 << 10;

/// Batches sealed and waiting for their write; beyond this, puts wait (then answer Busy).
const MAX_SEALED_BATCHES: usize = 8;

/// A batch written while others are in flight: issued, and retired (acknowledged or
/// failed) only after every batch issued before it.
pub struct Writing {
    segment: u32,
    /// Segment offsets where the batch starts and just past it.
    start: u64,
    end: u64,
    done: Rc<BatchDone>,
    /// Set when the device answers (or the write is abandoned).
    outcome: RefCell<Option<WriteOutcome>>,
    /// An earlier batch of the same segment failed: this one fails too, whatever the
    /// device says (recovery would stop before it).
    doomed: std::cell::Cell<bool>,
}

struct WriteOutcome {
    result: Result<(), String>,
    records: Vec<LogRecord>,
}

/// Outcome of one batch, shared by everyone waiting on it.
#[derive(Default)]
pub struct BatchDone {
    result: RefCell<Option<Result<(), String>>>,
    waiters: RefCell<Vec<Waker>>,
}

impl BatchDone {
    fn finish(&self, result: Result<(), String>) {
        *self.result.borrow_mut() = Some(result);
        self.wake_all();
    }

    fn wake_all(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    fn result(&self) -> Option<Result<(), String>> {
        self.result.borrow().clone()
    }
}

/// One record staged into a batch: the record, and where its value sits in the batch
/// (inline: from the batch header; otherwise in the value area).
struct Staged {
    record: LogRecord,
    inline: bool,
    value_at: u32,
}

/// A batch being filled or waiting for its write.
pub struct Batch {
    pub segment: u32,
    /// Sequence number of the segment's incarnation, which binds the batch to it.
    pub segment_seq: u64,
    /// Segment offset where `meta` starts (block aligned).
    pub write_start: u64,
    /// Where the batch header sits in `meta`: after the segment header in a new segment.
    pub meta_base: usize,
    /// Segment header (if first), batch header, record headers, keys and inline values.
    pub meta: DmaBuffer,
    pub meta_used: usize,
    /// The value area, written right behind `meta` as further iovecs: values received
    /// into their own DMA buffers (handed over as they are) and buffers that copied values
    /// share. Every length is a whole number of blocks.
    pub values: Vec<DmaBuffer>,
    pub values_used: usize,
    /// Room left in the last buffer of `values` if it takes copies (0 otherwise).
    pub copy_room: usize,
    records: Vec<Staged>,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub done: Rc<BatchDone>,
}

impl Batch {
    /// Segment offset of the batch header.
    fn batch_at(&self) -> u64 {
        self.write_start + self.meta_base as u64
    }

    /// Segment offset of the value area.
    fn value_area_at(&self, block: u64) -> u64 {
        round_up(self.write_start + self.meta_used as u64, block)
    }

    /// Segment offset just past the batch.
    fn end(&self, block: u64) -> u64 {
        self.value_area_at(block) + self.values_used as u64
    }

    /// Whether the batch is large enough to be written beside the writes in flight
    /// instead of waiting to be grouped behind them.
    fn overlaps(&self, block: u64, batch_bytes: usize) -> bool {
        self.end(block) - self.write_start >= (batch_bytes / 4) as u64
    }
}

/// Where the log goes next.
pub struct Writer {
    pub next_lsn: u64,
    pub active: Option<u32>,
    /// Start of the next batch to be opened in the active segment.
    pub plan_pos: u64,
    pub open: Option<Batch>,
    pub sealed: VecDeque<Batch>,
    /// Batches issued to the device and not yet retired, in log order.
    pub writing: VecDeque<Rc<Writing>>,
    /// The completion of the batch sealed last (it may be written already).
    pub last_sealed: Option<Rc<BatchDone>>,
    /// How many records the batch sealed last held: the next batch's list starts with
    /// room for as many, rather than growing through a copy per doubling.
    pub last_records: usize,
}

impl Writer {
    pub fn new(next_lsn: u64) -> Self {
        Writer {
            next_lsn,
            active: None,
            plan_pos: 0,
            open: None,
            sealed: VecDeque::new(),
            writing: VecDeque::new(),
            last_sealed: None,
            last_records: 0,
        }
    }
}

/// What to stage (the value is passed beside it: staging may take its buffer).
pub struct StageRequest<'a> {
    pub key: &'a [u8],
    /// `key`'s hash for the in-memory tables (`Index::hash`).
    pub hash: KeyHash,
    /// The object's partition, as the writer named it (kept by GC moves and replicas).
    pub partition: u16,
    /// None: the record's own LSN becomes its version (new writes); Some: kept.
    pub version: Option<u64>,
    pub kind: RecordKind,
    pub origin: Origin,
    /// When the object expires, Unix milliseconds; 0: never.
    pub expires_ms: u64,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Values shorter than this ride inline behind their key; longer ones start on a block so
/// that a get reads only their blocks.
pub(crate) fn inline_max(block: u64) -> usize {
    block as usize / 2
}

/// Appends a record to the open batch (opening a batch or a segment if needed) and returns
/// the batch's completion. Nothing is written yet.
///
/// Every check and allocation that can fail comes before the record's LSN is taken: an
/// early return leaves the writer as it found it, apart from sealing a full batch (which
/// holds records) or opening a segment (which holds none until a batch is written). A batch
/// it opened and could not fill is discarded, never sealed: an empty batch on the device
/// once hid every later batch of its segment from recovery.
pub(crate) fn stage<H: LogHost>(
    host: &H,
    w: &mut Writer,
    segs: &mut SegmentTable,
    req: &StageRequest<'_>,
    value: &mut StageValue<'_>,
) -> StoreResult<Rc<BatchDone>> {
    let block = host.block();
    let value_len = value.bytes().len();
    let inline = value_len < inline_max(block);
    let meta_add = RECORD_HEADER_BYTES + req.key.len() + if inline { value_len } else { 0 };
    let values_add = if inline {
        0
    } else {
        round_up(value_len as u64, block) as usize
    };
    // A value received into its own buffer becomes an iovec of the batch; any other value
    // that does not ride inline is copied into a buffer the batch's values share.
    let in_place = !inline && matches!(value, StageValue::Buf(Some(_)));
    let copied = !inline && !in_place;
    let seg_bytes = segs.segment_bytes();
    let batch_bytes = host.config().batch_bytes;
    let fits = |b: &Batch| {
        let meta_ok = b.meta_used + meta_add <= b.meta.capacity();
        // The value area holds up to `batch_bytes`, or one larger value alone; one iovec
        // per buffer, the meta buffer first.
        let values_ok = values_add == 0
            || ((b.values_used == 0 || b.values_used + values_add <= batch_bytes)
                && b.values.len() + 2 <= MAX_IOVECS);
        let end = round_up(b.write_start + (b.meta_used + meta_add) as u64, block)
            + (b.values_used + values_add) as u64;
        meta_ok && values_ok && end <= seg_bytes
    };
    if w.open.as_ref().is_some_and(|b| !fits(b)) {
        seal_open(w, segs, block);
    }
    // A copied value needs room in the batch's copy buffer, or a new buffer, taken before a
    // batch is opened so that running out of DMA buffers leaves no batch behind.
    let mut copy_buf = None;
    if copied && w.open.as_ref().is_none_or(|b| b.copy_room < values_add) {
        let used = w.open.as_ref().map_or(0, |b| b.values_used);
        let room = batch_bytes.saturating_sub(used).min(COPY_BUFFER_BYTES);
        let want = round_up(values_add.max(room) as u64, block) as usize;
        let mut v = host
            .queue()
            .pool()
            .try_alloc(want)
            .map_err(|_| StoreError::Busy("DMA buffers"))?;
        v.set_len(0).map_err(|_| StoreError::Busy("value buffer"))?;
        copy_buf = Some(v);
    }
    if w.open.is_none() {
        let for_gc = matches!(req.origin, Origin::Moved { .. });
        open_batch(host, w, segs, meta_add, values_add, for_gc)?;
    }
    let batch = w.open.as_mut().expect("opened above");
    if !fits(batch) {
        // Only a batch opened for this record can be here (a full one was sealed): the
        // record cannot fit even an empty batch.
        if batch.records.is_empty() {
            discard_empty_open(w, segs);
        }
        return Err(StoreError::Busy("batch buffers"));
    }
    let lsn = w.next_lsn;
    w.next_lsn += 1;
    let version = req.version.unwrap_or(lsn);
    // A version kept from elsewhere may be ahead of this log: every later version made
    // here must outrank it.
    w.next_lsn = w.next_lsn.max(version + 1);
    let batch = w.open.as_mut().expect("checked above");
    let value_at = if inline {
        (batch.meta_used - batch.meta_base + RECORD_HEADER_BYTES + req.key.len()) as u32
    } else {
        batch.values_used as u32
    };
    let header = RecordHeader {
        kind: req.kind,
        inline,
        key_len: req.key.len() as u16,
        value_len: value_len as u32,
        lsn,
        version,
        value_at,
        value_crc: value_crc(value.bytes()),
        partition: req.partition,
        expires_ms: req.expires_ms,
    };
    let at = batch.meta_used;
    // `fits` checked both capacities: these lengths cannot fail.
    batch
        .meta
        .set_len(at + meta_add)
        .expect("meta capacity checked by fits");
    header.encode(req.key, &mut batch.meta[at..at + meta_add]);
    let metrics = host.metrics();
    if inline {
        batch.meta[at + RECORD_HEADER_BYTES + req.key.len()..at + meta_add].copy_from_slice(value.bytes());
        bump(&metrics.value_bytes_copied, value_len as u64);
    } else if in_place {
        let StageValue::Buf(slot) = value else {
            unreachable!("in_place is a buffer")
        };
        let buf = slot.take().expect("in_place has a buffer");
        debug_assert_eq!(buf.padded_len(), values_add);
        batch.values.push(buf.into_padded());
        batch.copy_room = 0;
        batch.values_used += values_add;
        bump(&metrics.value_bytes_in_place, value_len as u64);
    } else {
        if let Some(v) = copy_buf {
            batch.copy_room = v.capacity();
            batch.values.push(v);
        }
        let v = batch.values.last_mut().expect("a copy buffer with room");
        let vat = v.len();
        v.set_len(vat + values_add).expect("copy room checked above");
        v[vat..vat + value_len].copy_from_slice(value.bytes());
        v[vat + value_len..vat + values_add].fill(0);
        batch.copy_room -= values_add;
        batch.values_used += values_add;
        bump(&metrics.value_bytes_copied, value_len as u64);
    }
    batch.meta_used += meta_add;
    if batch.records.is_empty() {
        batch.first_lsn = lsn;
    }
    batch.last_lsn = lsn;
    batch.records.push(Staged {
        record: LogRecord {
            key: req.key.into(),
            hash: req.hash,
            partition: req.partition,
            expires_ms: req.expires_ms,
            version,
            tombstone: req.kind == RecordKind::Tombstone,
            value_offset: 0,
            value_len: header.value_len,
            value_crc: header.value_crc,
            origin: req.origin,
            value: None,
        },
        inline,
        value_at,
    });
    Ok(batch.done.clone())
}

/// Seals the open batch for writing; an open batch without records is discarded.
fn seal_open(w: &mut Writer, segs: &mut SegmentTable, block: u64) {
    if w.open.as_ref().is_some_and(|b| b.records.is_empty()) {
        discard_empty_open(w, segs);
        return;
    }
    if let Some(b) = w.open.take() {
        w.plan_pos = b.end(block);
        w.last_sealed = Some(b.done.clone());
        w.last_records = b.records.len();
        w.sealed.push_back(b);
    }
}

/// Undoes `open_batch` for a batch that holds no record: its buffers go back to the pool
/// and the next batch starts where it would have.
fn discard_empty_open(w: &mut Writer, segs: &mut SegmentTable) {
    if let Some(b) = w.open.take() {
        debug_assert!(b.records.is_empty());
        segs.batch_ended(b.segment, None);
        // Nobody can wait on it (a completion is handed out only with a record), but
        // nothing is left pending if someone did.
        b.done.finish(Ok(()));
    }
}

fn open_batch<H: LogHost>(
    host: &H,
    w: &mut Writer,
    segs: &mut SegmentTable,
    meta_add: usize,
    values_add: usize,
    for_gc: bool,
) -> StoreResult<()> {
    if w.sealed.len() >= MAX_SEALED_BATCHES {
        return Err(StoreError::Busy("too many batches waiting for the device"));
    }
    let block = host.block();
    let seg_bytes = segs.segment_bytes();
    let need = |pos: u64, base: usize| {
        round_up(pos + (base + BATCH_HEADER_BYTES + meta_add) as u64, block) + values_add as u64
    };
    let new_segment = match w.active {
        None => true,
        Some(_) => need(w.plan_pos, 0) > seg_bytes,
    };
    if new_segment {
        if let Some(old) = w.active.take() {
            segs.seal(old);
        }
        let reserve = if for_gc { 0 } else { GC_RESERVED_SEGMENTS };
        if segs.free_count() <= reserve {
            bump(&host.metrics().no_space, 1);
            return Err(StoreError::NoSpace);
        }
        let (seg, _) = segs.open_free(w.next_lsn).ok_or(StoreError::NoSpace)?;
        w.active = Some(seg);
        w.plan_pos = 0;
    }
    let seg = w.active.expect("active segment");
    let meta_base = if w.plan_pos == 0 { SEGMENT_HEADER_BYTES } else { 0 };
    let room = seg_bytes - w.plan_pos;
    let want = round_up(
        (meta_base + BATCH_HEADER_BYTES + meta_add).max(host.config().batch_bytes / 4) as u64,
        block,
    )
    .min(room);
    let mut meta = host
        .queue()
        .pool()
        .try_alloc(want as usize)
        .map_err(|_| StoreError::Busy("DMA buffers"))?;
    meta.set_len(meta_base + BATCH_HEADER_BYTES)
        .map_err(|_| StoreError::Busy("batch buffer"))?;
    let info = segs.get(seg);
    if meta_base > 0 {
        let h = SegmentHeader {
            seq: info.seq,
            first_lsn: info.first_lsn,
            segment_index: seg,
            uuid: *host.uuid(),
            freed: false,
        };
        h.encode(&mut meta[..SEGMENT_HEADER_BYTES]);
    }
    let segment_seq = info.seq;
    segs.batch_planned(seg);
    w.open = Some(Batch {
        segment: seg,
        segment_seq,
        write_start: w.plan_pos,
        meta_base,
        meta,
        meta_used: meta_base + BATCH_HEADER_BYTES,
        values: Vec::new(),
        values_used: 0,
        copy_room: 0,
        records: Vec::with_capacity(w.last_records),
        first_lsn: 0,
        last_lsn: 0,
        done: Rc::new(BatchDone::default()),
    });
    Ok(())
}

/// Waits until the batch behind `done` is durable, writing batches while the device may
/// take them.
pub(crate) async fn commit<H: LogHost>(host: &Rc<H>, done: Rc<BatchDone>) -> StoreResult<()> {
    loop {
        if let Some(r) = done.result() {
            return r.map_err(StoreError::WriteFailed);
        }
        let block = host.block();
        let (limit, batch_bytes) = (host.config().writes_in_flight, host.config().batch_bytes);
        let next = host.with_log(|w, segs| {
            if w.writing.len() >= limit {
                return None;
            }
            if w.writing.is_empty() {
                if w.sealed.is_empty() {
                    seal_open(w, segs, block);
                }
            } else {
                // Beside writes in flight only a large batch goes; small records keep
                // gathering behind them.
                if w.sealed.is_empty() && w.open.as_ref().is_some_and(|b| b.overlaps(block, batch_bytes)) {
                    seal_open(w, segs, block);
                }
                if !w.sealed.front().is_some_and(|b| b.overlaps(block, batch_bytes)) {
                    return None;
                }
            }
            let batch = w.sealed.pop_front()?;
            // Issued in log order, under the same borrow that took it from the queue.
            let writing = Rc::new(Writing {
                segment: batch.segment,
                start: batch.write_start,
                end: batch.end(block),
                done: batch.done.clone(),
                outcome: RefCell::new(None),
                doomed: std::cell::Cell::new(false),
            });
            w.writing.push_back(writing.clone());
            Some((batch, writing))
        });
        match next {
            Some((batch, writing)) => write_batch(host, batch, writing).await,
            None => WaitForWake::new(&done).await,
        }
    }
}

async fn write_batch<H: LogHost>(host: &Rc<H>, mut batch: Batch, writing: Rc<Writing>) {
    let block = host.block();
    let (batch_at, value_area_at, end) = (batch.batch_at(), batch.value_area_at(block), batch.end(block));
    assert!(
        !batch.records.is_empty(),
        "a batch without records is never written"
    );
    let header = BatchHeader {
        record_count: batch.records.len() as u32,
        meta_len: (batch.meta_used - batch.meta_base) as u32,
        batch_len: (end - batch_at) as u32,
        first_lsn: batch.first_lsn,
        last_lsn: batch.last_lsn,
        segment_seq: batch.segment_seq,
    };
    header.encode(
        host.uuid(),
        &mut batch.meta[batch.meta_base..batch.meta_base + BATCH_HEADER_BYTES],
    );
    let Batch {
        segment,
        write_start,
        mut meta,
        meta_used,
        values,
        records,
        ..
    } = batch;
    // Where each value landed, now that the batch's place is fixed.
    let records: Vec<LogRecord> = records
        .into_iter()
        .map(|s| {
            let at = if s.inline { batch_at } else { value_area_at };
            LogRecord {
                value_offset: (at + s.value_at as u64) as u32,
                ..s.record
            }
        })
        .collect();
    let meta_len = (value_area_at - write_start) as usize;
    let padded = meta.set_len(meta_len).is_ok();
    if padded {
        meta[meta_used..].fill(0);
    }
    let offset = host.with_log(|_, segs| segs.device_offset(segment)) + write_start;
    let mut guard = WriteGuard {
        host: host.clone(),
        writing,
        records: Some(records),
    };
    let mode = host.batch_durability();
    let durability = match mode {
        Some(CommitDurability::Fua) => Durability::Fua,
        Some(CommitDurability::WriteThenFlush) | None => Durability::Volatile,
    };
    let queue = host.queue();
    let written = if !padded {
        Err("batch buffer too small for padding".to_string())
    } else {
        let written = if values.is_empty() {
            queue.write_at(offset, meta, durability).await.map(|b| vec![b])
        } else {
            let mut iov = Vec::with_capacity(1 + values.len());
            iov.push(meta);
            iov.extend(values);
            queue.writev_at(offset, iov, durability).await
        };
        match (written, mode) {
            (Ok(bufs), Some(CommitDurability::WriteThenFlush)) => queue.flush().await.map(|()| bufs),
            (other, _) => other,
        }
        .map_err(|e| e.to_string())
    };
    let mut records = guard
        .records
        .take()
        .expect("records present until the write ends");
    let result = written.map(|bufs| {
        copy_cacheable_values(&bufs, write_start, &mut records, |r| {
            host.caches_written(&r.key, r.hash, r.value_len as usize)
        });
    });
    debug_assert_eq!(end, guard.writing.end);
    guard.finish(result, records);
}

/// Retires written batches from the front of the log, in order, while their writes have
/// ended: a durable one is published and acknowledged; a failed one (or one behind a
/// failure in its segment) is forgotten and answered with the error, and the batches
/// still planned in its segment fail with it. Then wakes whoever waits to write next.
fn retire_written<H: LogHost>(host: &H) {
    loop {
        let next = host.with_log(|w, segs| {
            let front = w.writing.front()?;
            let outcome = front.outcome.borrow_mut().take()?;
            let writing = w.writing.pop_front().expect("front exists");
            let failed = outcome.result.is_err() || writing.doomed.get();
            let doomed = if failed {
                segs.batch_ended(writing.segment, None);
                fail_segment(w, segs, writing.segment)
            } else {
                segs.batch_ended(writing.segment, Some(writing.end));
                Vec::new()
            };
            Some((writing, outcome, doomed))
        });
        let Some((writing, WriteOutcome { result, records }, doomed)) = next else {
            break;
        };
        let metrics = host.metrics();
        let result = match result {
            Ok(()) if writing.doomed.get() => {
                host.forget(&records);
                Err("an earlier batch in its segment failed".to_string())
            }
            Ok(()) => {
                bump(&metrics.batches, 1);
                bump(&metrics.batched_records, records.len() as u64);
                bump(&metrics.bytes_written, writing.end - writing.start);
                host.publish(DurableBatch {
                    segment: writing.segment,
                    records,
                });
                Ok(())
            }
            Err(e) => {
                bump(&metrics.write_errors, 1);
                host.forget(&records);
                Err(e)
            }
        };
        fail_batches(host, doomed, "an earlier batch in its segment failed");
        writing.done.finish(result);
    }
    let queued = host.with_log(|w, _| queued_batch_dones(w));
    for next in queued {
        next.wake_all();
    }
}

/// Hands the outcome of one batch write to the retiring order. If the writer's future is
/// dropped while its write is in flight, the outcome is unknown: nothing in the batch is
/// acknowledged and its segment takes no more batches.
struct WriteGuard<H: LogHost> {
    host: Rc<H>,
    writing: Rc<Writing>,
    records: Option<Vec<LogRecord>>,
}

impl<H: LogHost> WriteGuard<H> {
    fn finish(mut self, result: Result<(), String>, records: Vec<LogRecord>) {
        self.records = None;
        *self.writing.outcome.borrow_mut() = Some(WriteOutcome { result, records });
        retire_written(&*self.host);
    }
}

impl<H: LogHost> Drop for WriteGuard<H> {
    fn drop(&mut self) {
        let Some(records) = self.records.take() else {
            return;
        };
        *self.writing.outcome.borrow_mut() = Some(WriteOutcome {
            result: Err("the write was abandoned before it completed".into()),
            records,
        });
        retire_written(&*self.host);
    }
}

/// Copies out of a written batch (`bufs`, laid out from segment offset `write_start`) the
/// values of new writes and replicas that the engine caches. A value never spans two
/// buffers: inline ones sit in the meta buffer, others in one value buffer each.
fn copy_cacheable_values(
    bufs: &[DmaBuffer],
    write_start: u64,
    records: &mut [LogRecord],
    caches: impl Fn(&LogRecord) -> bool,
) {
    let wanted = |r: &LogRecord| !r.tombstone && !matches!(r.origin, Origin::Moved { .. }) && caches(r);
    for r in records.iter_mut().filter(|r| wanted(r)) {
        let len = r.value_len as usize;
        let mut at = (u64::from(r.value_offset) - write_start) as usize;
        for b in bufs {
            if at < b.len() {
                if at + len <= b.len() {
                    r.value = Some(b[at..at + len].into());
                }
                break;
            }
            at -= b.len();
        }
    }
}

/// Bytes a record counts as live in its segment: header, key and value.
pub fn live_size(key: &[u8], value_len: u32) -> u64 {
    (RECORD_HEADER_BYTES + key.len()) as u64 + value_len as u64
}

/// The completion of the newest batch staged so far: batches are written in order, so once
/// it is durable every record staged before it is too (it may be durable already).
pub(crate) fn newest_staged_batch(w: &Writer) -> Option<Rc<BatchDone>> {
    w.open
        .as_ref()
        .filter(|b| !b.records.is_empty())
        .map(|b| b.done.clone())
        .or_else(|| w.last_sealed.clone())
}

/// Whether the batch behind `done` has yet to finish.
pub(crate) fn done_pending(done: &BatchDone) -> bool {
    done.result.borrow().is_none()
}

/// The completions of every batch still to be written, in order. When a write ends, all of
/// their waiters are woken and the first to run becomes the leader. Waking only the next
/// batch's waiters wedged the store when that batch had none (its writer gave up, or its
/// request was dropped): the batches behind it waited for an unrelated write.
fn queued_batch_dones(w: &Writer) -> Vec<Rc<BatchDone>> {
    w.sealed
        .iter()
        .chain(w.open.as_ref())
        .map(|b| b.done.clone())
        .collect()
}

/// After a failed write in `segment`, nothing after it there would be found by recovery:
/// takes every batch still planned in that segment out of the writer (the caller fails
/// them once the log is no longer borrowed) and moves the writer to a new segment.
fn fail_segment(w: &mut Writer, segs: &mut SegmentTable, segment: u32) -> Vec<Batch> {
    if w.active == Some(segment) {
        w.active = None;
        segs.seal(segment);
    }
    let mut doomed = Vec::new();
    let mut keep = VecDeque::new();
    for b in w.sealed.drain(..) {
        if b.segment == segment {
            doomed.push(b);
        } else {
            keep.push_back(b);
        }
    }
    w.sealed = keep;
    if w.open.as_ref().is_some_and(|b| b.segment == segment) {
        doomed.extend(w.open.take());
    }
    for b in &doomed {
        segs.batch_ended(b.segment, None);
    }
    // Batches of the segment already on their way fail when they are retired.
    for b in w.writing.iter().filter(|b| b.segment == segment) {
        b.doomed.set(true);
    }
    doomed
}

/// Fails batches `fail_segment` took out: their records are forgotten and their waiters
/// get the error.
fn fail_batches<H: LogHost>(host: &H, doomed: Vec<Batch>, why: &str) {
    for b in doomed {
        let records: Vec<LogRecord> = b.records.into_iter().map(|s| s.record).collect();
        host.forget(&records);
        b.done.finish(Err(why.to_string()));
    }
}

/// Pending until woken once (by the batch finishing, or by the leader handing over).
struct WaitForWake<'a> {
    done: &'a BatchDone,
    registered: bool,
}

impl<'a> WaitForWake<'a> {
    fn new(done: &'a BatchDone) -> Self {
        WaitForWake {
            done,
            registered: false,
        }
    }
}

impl Future for WaitForWake<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered || self.done.result.borrow().is_some() {
            return Poll::Ready(());
        }
        self.registered = true;
        self.done.waiters.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    }
}
