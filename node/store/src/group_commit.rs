//! Group commit: records are staged into the open batch (aligned DMA buffers); one
//! batch at a time is written with FUA (or write + flush), and every record in it is
//! acknowledged only when that write completes. Batches are written strictly in order, so
//! an acknowledged batch never sits behind a torn one. Whoever waits for a batch while no
//! write is in flight becomes the leader and writes the next batch.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use hotshard_nvme::{BlockQueue, DmaBuffer, Durability};

use super::config::CommitDurability;
use super::engine::{Inner, State};
use super::error::{StoreError, StoreResult};
use super::format::{
    value_crc, BatchHeader, RecordHeader, RecordKind, SegmentHeader, BATCH_HEADER_BYTES, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::index::IndexEntry;
use super::metrics::bump;
use super::value_buf::StageValue;
use crate::limits::GC_RESERVED_SEGMENTS;
use hotshard_nvme::limits::MAX_IOVECS;

/// Batches sealed and waiting for their write; beyond this, puts answer Busy.
const MAX_SEALED_BATCHES: usize = 8;

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

/// One record staged into a batch.
pub struct Staged {
    pub key: Box<[u8]>,
    pub version: u64,
    pub tombstone: bool,
    pub inline: bool,
    /// Inline: offset from the batch header; otherwise offset in the value area.
    pub value_at: u32,
    pub value_len: u32,
    pub value_crc: u32,
    pub partition: u16,
    /// A GC move: the index is updated only if it still points at this (segment, offset).
    pub moved_from: Option<(u32, u32)>,
}

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
    pub records: Vec<Staged>,
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
}

/// Where the log goes next.
pub struct Writer {
    pub next_lsn: u64,
    pub active: Option<u32>,
    /// Start of the next batch to be opened in the active segment.
    pub plan_pos: u64,
    pub open: Option<Batch>,
    pub sealed: VecDeque<Batch>,
    pub in_flight: bool,
    /// The completion of the batch sealed last (it may be written already).
    pub last_sealed: Option<Rc<BatchDone>>,
}

impl Writer {
    pub fn new(next_lsn: u64) -> Self {
        Writer {
            next_lsn,
            active: None,
            plan_pos: 0,
            open: None,
            sealed: VecDeque::new(),
            in_flight: false,
            last_sealed: None,
        }
    }
}

/// What to stage (the value is passed beside it: staging may take its buffer).
pub struct StageRequest<'a> {
    pub key: &'a [u8],
    /// The object's partition, as the writer named it (kept by GC moves).
    pub partition: u16,
    /// None: the record's own LSN becomes its version (new writes); Some: kept (GC moves).
    pub version: Option<u64>,
    pub kind: RecordKind,
    pub moved_from: Option<(u32, u32)>,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl<Q: BlockQueue> Inner<Q> {
    /// Values shorter than this ride inline behind their key; longer ones start on a block
    /// so that a get reads only their blocks.
    pub(crate) fn inline_max(&self) -> usize {
        self.block as usize / 2
    }

    /// Appends a record to the open batch (opening a batch or a segment if needed) and
    /// returns the batch's completion. Nothing is written yet.
    ///
    /// Every check and allocation that can fail comes before the record's LSN is taken:
    /// an early return leaves the writer as it found it, apart from sealing a full batch
    /// (which holds records) or opening a segment (which holds none until a batch is
    /// written). A batch it opened and could not fill is discarded, never sealed: an empty
    /// batch on the device once hid every later batch of its segment from recovery.
    pub(crate) fn stage(
        &self,
        st: &mut State,
        req: &StageRequest<'_>,
        value: &mut StageValue<'_>,
    ) -> StoreResult<Rc<BatchDone>> {
        let value_len = value.bytes().len();
        let inline = value_len < self.inline_max();
        let meta_add = RECORD_HEADER_BYTES + req.key.len() + if inline { value_len } else { 0 };
        let values_add = if inline {
            0
        } else {
            round_up(value_len as u64, self.block) as usize
        };
        // A value received into its own buffer becomes an iovec of the batch; any other
        // value that does not ride inline is copied into a buffer the batch's values share.
        let in_place = !inline && matches!(value, StageValue::Buf(Some(_)));
        let copied = !inline && !in_place;
        let seg_bytes = st.segments.segment_bytes();
        let block = self.block;
        let batch_bytes = self.cfg.batch_bytes;
        let fits = |b: &Batch| {
            let meta_ok = b.meta_used + meta_add <= b.meta.capacity();
            // The value area holds up to `batch_bytes`, or one larger value alone; one
            // iovec per buffer, the meta buffer first.
            let values_ok = values_add == 0
                || ((b.values_used == 0 || b.values_used + values_add <= batch_bytes)
                    && b.values.len() + 2 <= MAX_IOVECS);
            let end = round_up(b.write_start + (b.meta_used + meta_add) as u64, block)
                + (b.values_used + values_add) as u64;
            meta_ok && values_ok && end <= seg_bytes
        };
        if st.writer.open.as_ref().is_some_and(|b| !fits(b)) {
            self.seal_open(st);
        }
        // A copied value needs room in the batch's copy buffer, or a new buffer, taken
        // before a batch is opened so that running out of DMA buffers leaves no batch
        // behind.
        let mut copy_buf = None;
        if copied && st.writer.open.as_ref().is_none_or(|b| b.copy_room < values_add) {
            let used = st.writer.open.as_ref().map_or(0, |b| b.values_used);
            let want = round_up(values_add.max(batch_bytes.saturating_sub(used)) as u64, block) as usize;
            let mut v = self
                .queue
                .pool()
                .try_alloc(want)
                .map_err(|_| StoreError::Busy("DMA buffers"))?;
            v.set_len(0).map_err(|_| StoreError::Busy("value buffer"))?;
            copy_buf = Some(v);
        }
        if st.writer.open.is_none() {
            self.open_batch(st, meta_add, values_add, req.moved_from.is_some())?;
        }
        let batch = st.writer.open.as_mut().expect("opened above");
        if !fits(batch) {
            // Only a batch opened for this record can be here (a full one was sealed): the
            // record cannot fit even an empty batch.
            let empty = batch.records.is_empty();
            if empty {
                self.discard_empty_open(st);
            }
            return Err(StoreError::Busy("batch buffers"));
        }
        let lsn = st.writer.next_lsn;
        st.writer.next_lsn += 1;
        let batch = st.writer.open.as_mut().expect("checked above");
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
            version: req.version.unwrap_or(lsn),
            value_at,
            value_crc: value_crc(value.bytes()),
            partition: req.partition,
        };
        let at = batch.meta_used;
        // `fits` checked both capacities: these lengths cannot fail.
        batch
            .meta
            .set_len(at + meta_add)
            .expect("meta capacity checked by fits");
        header.encode(req.key, &mut batch.meta[at..at + meta_add]);
        if inline {
            batch.meta[at + RECORD_HEADER_BYTES + req.key.len()..at + meta_add]
                .copy_from_slice(value.bytes());
            bump(&self.metrics.value_bytes_copied, value_len as u64);
        } else if in_place {
            let StageValue::Buf(slot) = value else {
                unreachable!("in_place is a buffer")
            };
            let buf = slot.take().expect("in_place has a buffer");
            debug_assert_eq!(buf.padded_len(), values_add);
            batch.values.push(buf.into_padded());
            batch.copy_room = 0;
            batch.values_used += values_add;
            bump(&self.metrics.value_bytes_in_place, value_len as u64);
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
            bump(&self.metrics.value_bytes_copied, value_len as u64);
        }
        batch.meta_used += meta_add;
        if batch.records.is_empty() {
            batch.first_lsn = lsn;
        }
        batch.last_lsn = lsn;
        batch.records.push(Staged {
            key: req.key.into(),
            version: header.version,
            tombstone: req.kind == RecordKind::Tombstone,
            inline,
            value_at,
            value_len: header.value_len,
            value_crc: header.value_crc,
            partition: req.partition,
            moved_from: req.moved_from,
        });
        Ok(batch.done.clone())
    }

    /// Seals the open batch for writing; an open batch without records is discarded.
    fn seal_open(&self, st: &mut State) {
        if st.writer.open.as_ref().is_some_and(|b| b.records.is_empty()) {
            self.discard_empty_open(st);
            return;
        }
        if let Some(b) = st.writer.open.take() {
            st.writer.plan_pos = b.end(self.block);
            st.writer.last_sealed = Some(b.done.clone());
            st.writer.sealed.push_back(b);
        }
    }

    /// Undoes `open_batch` for a batch that holds no record: its buffers go back to the
    /// pool and the next batch starts where it would have.
    fn discard_empty_open(&self, st: &mut State) {
        if let Some(b) = st.writer.open.take() {
            debug_assert!(b.records.is_empty());
            st.segments.get_mut(b.segment).batches_outstanding -= 1;
            // Nobody can wait on it (a completion is handed out only with a record), but
            // nothing is left pending if someone did.
            b.done.finish(Ok(()));
        }
    }

    fn open_batch(
        &self,
        st: &mut State,
        meta_add: usize,
        values_add: usize,
        for_gc: bool,
    ) -> StoreResult<()> {
        if st.writer.sealed.len() >= MAX_SEALED_BATCHES {
            return Err(StoreError::Busy("too many batches waiting for the device"));
        }
        let seg_bytes = st.segments.segment_bytes();
        let need = |pos: u64, base: usize| {
            round_up(pos + (base + BATCH_HEADER_BYTES + meta_add) as u64, self.block) + values_add as u64
        };
        let new_segment = match st.writer.active {
            None => true,
            Some(_) => need(st.writer.plan_pos, 0) > seg_bytes,
        };
        if new_segment {
            if let Some(old) = st.writer.active.take() {
                st.segments.seal(old);
            }
            let reserve = if for_gc { 0 } else { GC_RESERVED_SEGMENTS };
            if st.segments.free_count() <= reserve {
                bump(&self.metrics.no_space, 1);
                return Err(StoreError::NoSpace);
            }
            let first_lsn = st.writer.next_lsn;
            let (seg, _) = st.segments.open_free(first_lsn).ok_or(StoreError::NoSpace)?;
            st.writer.active = Some(seg);
            st.writer.plan_pos = 0;
        }
        let seg = st.writer.active.expect("active segment");
        let meta_base = if st.writer.plan_pos == 0 {
            SEGMENT_HEADER_BYTES
        } else {
            0
        };
        let room = seg_bytes - st.writer.plan_pos;
        let want = round_up(
            (meta_base + BATCH_HEADER_BYTES + meta_add).max(self.cfg.batch_bytes / 4) as u64,
            self.block,
        )
        .min(room);
        let mut meta = self
            .queue
            .pool()
            .try_alloc(want as usize)
            .map_err(|_| StoreError::Busy("DMA buffers"))?;
        meta.set_len(meta_base + BATCH_HEADER_BYTES)
            .map_err(|_| StoreError::Busy("batch buffer"))?;
        if meta_base > 0 {
            let info = st.segments.get(seg);
            let h = SegmentHeader {
                seq: info.seq,
                first_lsn: info.first_lsn,
                segment_index: seg,
                uuid: self.uuid,
                freed: false,
            };
            h.encode(&mut meta[..SEGMENT_HEADER_BYTES]);
        }
        st.segments.get_mut(seg).batches_outstanding += 1;
        let segment_seq = st.segments.get(seg).seq;
        st.writer.open = Some(Batch {
            segment: seg,
            segment_seq,
            write_start: st.writer.plan_pos,
            meta_base,
            meta,
            meta_used: meta_base + BATCH_HEADER_BYTES,
            values: Vec::new(),
            values_used: 0,
            copy_room: 0,
            records: Vec::new(),
            first_lsn: 0,
            last_lsn: 0,
            done: Rc::new(BatchDone::default()),
        });
        Ok(())
    }

    /// Waits until the batch behind `done` is durable, writing batches while nobody else is.
    pub(crate) async fn commit(self: &Rc<Self>, done: Rc<BatchDone>) -> StoreResult<()> {
        loop {
            if let Some(r) = done.result() {
                return r.map_err(StoreError::WriteFailed);
            }
            let next = {
                let mut st = self.state.borrow_mut();
                if st.writer.in_flight {
                    None
                } else {
                    if st.writer.sealed.is_empty() {
                        self.seal_open(&mut st);
                    }
                    let b = st.writer.sealed.pop_front();
                    st.writer.in_flight = b.is_some();
                    b
                }
            };
            match next {
                Some(batch) => self.write_batch(batch).await,
                None => WaitForWake::new(&done).await,
            }
        }
    }

    async fn write_batch(self: &Rc<Self>, mut batch: Batch) {
        let block = self.block;
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
            &self.uuid,
            &mut batch.meta[batch.meta_base..batch.meta_base + BATCH_HEADER_BYTES],
        );
        let Batch {
            segment,
            write_start,
            mut meta,
            meta_used,
            values,
            records,
            done,
            ..
        } = batch;
        let meta_len = (value_area_at - write_start) as usize;
        let padded = meta.set_len(meta_len).is_ok();
        if padded {
            meta[meta_used..].fill(0);
        }
        let offset = self.state.borrow().segments.device_offset(segment) + write_start;
        let mut guard = LeaderGuard {
            inner: self.clone(),
            segment,
            records: Some(records),
            done: done.clone(),
        };
        let durability = match self.cfg.durability {
            CommitDurability::Fua => Durability::Fua,
            CommitDurability::WriteThenFlush => Durability::Volatile,
        };
        let result = if !padded {
            Err("batch buffer too small for padding".to_string())
        } else {
            let written = if values.is_empty() {
                self.queue.write_at(offset, meta, durability).await.map(drop)
            } else {
                let mut iov = Vec::with_capacity(1 + values.len());
                iov.push(meta);
                iov.extend(values);
                self.queue.writev_at(offset, iov, durability).await.map(drop)
            };
            match (written, self.cfg.durability) {
                (Ok(()), CommitDurability::WriteThenFlush) => self.queue.flush().await,
                (other, _) => other,
            }
            .map_err(|e| e.to_string())
        };
        let records = guard
            .records
            .take()
            .expect("records present until the write ends");
        drop(guard);
        let mut st = self.state.borrow_mut();
        st.writer.in_flight = false;
        st.segments.get_mut(segment).batches_outstanding -= 1;
        match &result {
            Ok(()) => {
                bump(&self.metrics.batches, 1);
                bump(&self.metrics.batched_records, records.len() as u64);
                bump(&self.metrics.bytes_written, end - write_start);
                let info = st.segments.get_mut(segment);
                info.written = info.written.max(end);
                apply_batch(&mut st, segment, batch_at, value_area_at, records);
            }
            Err(_) => {
                bump(&self.metrics.write_errors, 1);
                forget_pending(&mut st, &records);
                fail_segment(&mut st, segment, "an earlier batch in its segment failed");
            }
        }
        let queued = queued_batch_dones(&st);
        drop(st);
        done.finish(result);
        for next in queued {
            next.wake_all();
        }
    }
}

/// Runs the failure path if the leader's future is dropped while its write is in flight:
/// the outcome of that write is unknown, so nothing in it is acknowledged and its segment
/// takes no more batches.
struct LeaderGuard<Q: BlockQueue> {
    inner: Rc<Inner<Q>>,
    segment: u32,
    records: Option<Vec<Staged>>,
    done: Rc<BatchDone>,
}

impl<Q: BlockQueue> Drop for LeaderGuard<Q> {
    fn drop(&mut self) {
        let Some(records) = self.records.take() else {
            return;
        };
        let mut st = self.inner.state.borrow_mut();
        st.writer.in_flight = false;
        st.segments.get_mut(self.segment).batches_outstanding -= 1;
        forget_pending(&mut st, &records);
        fail_segment(
            &mut st,
            self.segment,
            "the write of an earlier batch was abandoned",
        );
        let queued = queued_batch_dones(&st);
        drop(st);
        self.done
            .finish(Err("the write was abandoned before it completed".into()));
        for next in queued {
            next.wake_all();
        }
    }
}

/// Publishes a durable batch: index, live bytes, pending versions, cache.
fn apply_batch(st: &mut State, segment: u32, batch_at: u64, value_area_at: u64, records: Vec<Staged>) {
    for r in records {
        let value_offset = if r.inline {
            batch_at + r.value_at as u64
        } else {
            value_area_at + r.value_at as u64
        };
        let entry = IndexEntry::new(
            r.version,
            segment,
            value_offset as u32,
            r.value_len,
            r.value_crc,
            r.tombstone,
        );
        let size = live_size(&r.key, r.value_len);
        match r.moved_from {
            None => {
                if let Some(old) = st.index.insert(&r.key, r.partition, entry) {
                    debug_assert!(old.version < entry.version, "versions grow per key");
                    st.segments
                        .sub_live(old.segment, live_size(&r.key, old.value_len()));
                }
                st.segments.add_live(segment, size);
                st.cache.remove(&r.key);
                if let Some(p) = st.pending.get_mut(&r.key) {
                    p.count -= 1;
                    if p.count == 0 {
                        st.pending.remove(&r.key);
                    }
                }
            }
            Some((from_seg, from_off)) => {
                let still_there = st
                    .index
                    .get(&r.key)
                    .is_some_and(|e| e.segment == from_seg && e.value_offset == from_off);
                if still_there {
                    st.index.insert(&r.key, r.partition, entry);
                    st.segments.sub_live(from_seg, size);
                    st.segments.add_live(segment, size);
                }
            }
        }
    }
}

/// Bytes a record counts as live in its segment: header, key and value.
pub fn live_size(key: &[u8], value_len: u32) -> u64 {
    (RECORD_HEADER_BYTES + key.len()) as u64 + value_len as u64
}

/// The completion of the newest batch staged so far: batches are written in order, so once
/// it is durable every record staged before it is too (it may be durable already).
pub(crate) fn newest_staged_batch(st: &State) -> Option<Rc<BatchDone>> {
    st.writer
        .open
        .as_ref()
        .filter(|b| !b.records.is_empty())
        .map(|b| b.done.clone())
        .or_else(|| st.writer.last_sealed.clone())
}

/// Whether the batch behind `done` has yet to finish.
pub(crate) fn done_pending(done: &BatchDone) -> bool {
    done.result.borrow().is_none()
}

/// The completions of every batch still to be written, in order. When a write ends, all of
/// their waiters are woken and the first to run becomes the leader. Waking only the next
/// batch's waiters wedged the store when that batch had none (its writer gave up, or its
/// request was dropped): the batches behind it waited for an unrelated write.
fn queued_batch_dones(st: &State) -> Vec<Rc<BatchDone>> {
    st.writer
        .sealed
        .iter()
        .chain(st.writer.open.as_ref())
        .map(|b| b.done.clone())
        .collect()
}

fn forget_pending(st: &mut State, records: &[Staged]) {
    for r in records.iter().filter(|r| r.moved_from.is_none()) {
        if let Some(p) = st.pending.get_mut(&r.key) {
            p.count -= 1;
            if p.count == 0 {
                st.pending.remove(&r.key);
            }
        }
    }
}

/// After a failed write in `segment`, nothing after it there would be found by recovery:
/// fail every batch still planned in that segment and move the writer to a new one.
fn fail_segment(st: &mut State, segment: u32, why: &str) {
    if st.writer.active == Some(segment) {
        st.writer.active = None;
        st.segments.seal(segment);
    }
    let mut doomed = Vec::new();
    let mut keep = VecDeque::new();
    for b in st.writer.sealed.drain(..) {
        if b.segment == segment {
            doomed.push(b);
        } else {
            keep.push_back(b);
        }
    }
    st.writer.sealed = keep;
    if st.writer.open.as_ref().is_some_and(|b| b.segment == segment) {
        doomed.extend(st.writer.open.take());
    }
    for b in doomed {
        st.segments.get_mut(segment).batches_outstanding -= 1;
        forget_pending(st, &b.records);
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
