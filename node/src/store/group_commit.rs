//! Group commit: records are staged into the open batch (one aligned DMA buffer); one
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
use super::format::{RecordHeader, RecordKind, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::index::IndexEntry;
use super::metrics::bump;
use crate::limits::GC_RESERVED_SEGMENTS;

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
    /// Offset of the record inside the batch buffer.
    pub rel: u32,
    pub len: u32,
    pub version: u64,
    pub partition: u16,
    pub tombstone: bool,
    /// A GC move: the index is updated only if it still points here.
    pub moved_from: Option<(u32, u32)>,
}

pub struct Batch {
    pub segment: u32,
    /// Offset of the batch within its segment (block aligned).
    pub start: u64,
    pub buf: DmaBuffer,
    pub used: usize,
    pub records: Vec<Staged>,
    pub done: Rc<BatchDone>,
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
        }
    }
}

/// What to stage.
pub struct StageRequest<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// None: the record's own LSN becomes its version (new writes); Some: kept (GC moves).
    pub version: Option<u64>,
    pub partition: u32,
    pub kind: RecordKind,
    pub moved_from: Option<(u32, u32)>,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl<Q: BlockQueue> Inner<Q> {
    /// Appends a record to the open batch (opening a batch or a segment if needed) and
    /// returns the batch's completion. Nothing is written yet.
    pub(crate) fn stage(&self, st: &mut State, req: &StageRequest<'_>) -> StoreResult<Rc<BatchDone>> {
        let len = RECORD_HEADER_LEN + req.key.len() + req.value.len();
        let seg_bytes = st.segments.segment_bytes();
        let fits =
            |b: &Batch| b.used + len <= b.buf.capacity() && b.start + (b.used + len) as u64 <= seg_bytes;
        if st.writer.open.as_ref().is_some_and(|b| !fits(b)) {
            self.seal_open(st);
        }
        if st.writer.open.is_none() {
            self.open_batch(st, len, req.moved_from.is_some())?;
        }
        let lsn = st.writer.next_lsn;
        st.writer.next_lsn += 1;
        let batch = st.writer.open.as_mut().expect("opened above");
        let header = RecordHeader {
            kind: req.kind,
            key_len: req.key.len() as u16,
            value_len: req.value.len() as u32,
            lsn,
            version: req.version.unwrap_or(lsn),
            partition: req.partition,
        };
        let at = batch.used;
        batch
            .buf
            .set_len(at + len)
            .map_err(|_| StoreError::Busy("batch buffer"))?;
        header.encode_record(req.key, req.value, &mut batch.buf[at..at + len]);
        batch.used += len;
        batch.records.push(Staged {
            key: req.key.into(),
            rel: at as u32,
            len: len as u32,
            version: header.version,
            partition: req.partition as u16,
            tombstone: req.kind == RecordKind::Tombstone,
            moved_from: req.moved_from,
        });
        Ok(batch.done.clone())
    }

    fn seal_open(&self, st: &mut State) {
        if let Some(b) = st.writer.open.take() {
            st.writer.plan_pos = round_up(b.start + b.used as u64, self.block);
            st.writer.sealed.push_back(b);
        }
    }

    fn open_batch(&self, st: &mut State, len: usize, for_gc: bool) -> StoreResult<()> {
        if st.writer.sealed.len() >= MAX_SEALED_BATCHES {
            return Err(StoreError::Busy("too many batches waiting for the device"));
        }
        let seg_bytes = st.segments.segment_bytes();
        let new_segment = match st.writer.active {
            None => true,
            Some(_) => st.writer.plan_pos + len as u64 > seg_bytes,
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
        let header = if st.writer.plan_pos == 0 {
            SEGMENT_HEADER_BYTES
        } else {
            0
        };
        let room = seg_bytes - st.writer.plan_pos;
        let want = round_up((header + len).max(self.cfg.batch_bytes) as u64, self.block).min(room);
        let mut buf = self
            .queue
            .pool()
            .try_alloc(want as usize)
            .map_err(|_| StoreError::Busy("DMA buffers"))?;
        if header > 0 {
            let info = st.segments.get(seg);
            let h = SegmentHeader {
                seq: info.seq,
                first_lsn: info.first_lsn,
                segment_index: seg,
                uuid: self.uuid,
            };
            buf.set_len(SEGMENT_HEADER_BYTES)
                .map_err(|_| StoreError::Busy("batch buffer"))?;
            h.encode(&mut buf[..SEGMENT_HEADER_BYTES]);
        } else {
            buf.set_len(0).map_err(|_| StoreError::Busy("batch buffer"))?;
        }
        st.segments.get_mut(seg).batches_outstanding += 1;
        st.writer.open = Some(Batch {
            segment: seg,
            start: st.writer.plan_pos,
            buf,
            used: header,
            records: Vec::new(),
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

    async fn write_batch(self: &Rc<Self>, batch: Batch) {
        let Batch {
            segment,
            start,
            mut buf,
            used,
            records,
            done,
        } = batch;
        let len = round_up(used as u64, self.block) as usize;
        let padded = buf.set_len(len).is_ok();
        buf[used..].fill(0);
        let offset = self.state.borrow().segments.device_offset(segment) + start;
        let mut guard = LeaderGuard {
            inner: self.clone(),
            segment,
            records: Some(records),
            done: done.clone(),
        };
        let result = if !padded {
            Err("batch buffer too small for padding".to_string())
        } else {
            match self.cfg.durability {
                CommitDurability::Fua => self.queue.write_at(offset, buf, Durability::Fua).await.map(drop),
                CommitDurability::WriteThenFlush => {
                    match self.queue.write_at(offset, buf, Durability::Volatile).await {
                        Ok(_) => self.queue.flush().await,
                        Err(e) => Err(e),
                    }
                }
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
                bump(&self.metrics.bytes_written, len as u64);
                let info = st.segments.get_mut(segment);
                info.written = info.written.max(start + len as u64);
                apply_batch(&mut st, segment, start, records);
            }
            Err(_) => {
                bump(&self.metrics.write_errors, 1);
                forget_pending(&mut st, &records);
                fail_segment(&mut st, segment, "an earlier batch in its segment failed");
            }
        }
        let next = st
            .writer
            .sealed
            .front()
            .map(|b| b.done.clone())
            .or_else(|| st.writer.open.as_ref().map(|b| b.done.clone()));
        drop(st);
        done.finish(result);
        if let Some(next) = next {
            next.wake_all();
        }
    }
}

const RECORD_HEADER_LEN: usize = super::format::RECORD_HEADER_BYTES;

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
        let next = st
            .writer
            .sealed
            .front()
            .map(|b| b.done.clone())
            .or_else(|| st.writer.open.as_ref().map(|b| b.done.clone()));
        drop(st);
        self.done
            .finish(Err("the write was abandoned before it completed".into()));
        if let Some(next) = next {
            next.wake_all();
        }
    }
}

/// Publishes a durable batch: index, live bytes, pending versions, cache.
fn apply_batch(st: &mut State, segment: u32, start: u64, records: Vec<Staged>) {
    for r in records {
        let entry = IndexEntry {
            version: r.version,
            segment,
            offset: (start + r.rel as u64) as u32,
            record_len: r.len,
            partition: r.partition,
            tombstone: r.tombstone,
        };
        match r.moved_from {
            None => {
                if let Some(old) = st.index.insert(&r.key, entry) {
                    debug_assert!(old.version < entry.version, "versions grow per key");
                    st.segments.sub_live(old.segment, old.record_len as u64);
                }
                st.segments.add_live(segment, r.len as u64);
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
                    .is_some_and(|e| e.segment == from_seg && e.offset == from_off);
                if still_there {
                    st.index.insert(&r.key, entry);
                    st.segments.sub_live(from_seg, r.len as u64);
                    st.segments.add_live(segment, r.len as u64);
                }
            }
        }
    }
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
