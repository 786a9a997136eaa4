//! Garbage collection: move the live records out of a mostly-dead segment, drop
//! tombstones that nothing older can outlive, then erase the segment's header so that it
//! is free (and recovery never replays it again).

use std::rc::Rc;

use hotshard_nvme::{BlockQueue, Durability};

use super::engine::Store;
use super::error::StoreResult;
use super::format::{RecordKind, TOMBSTONE_VALUE_BYTES};
use super::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::group_commit::{commit, live_size, newest_staged_batch, Origin, StageRequest};
use super::metrics::bump;
use super::scan::{scan_segment, ScanLimits, SegmentLife};
use super::value_buf::StageValue;
use crate::limits::GC_RESERVED_SEGMENTS;

/// A segment this empty is worth collecting even when space is plentiful.
const CHEAP_LIVE_FRACTION: f64 = 0.1;
/// When a write would otherwise be refused for want of space, GC collects segments up to
/// this live: moving much costs bandwidth, but failing a write while most of the device is
/// garbage is worse.
const URGENT_LIVE_FRACTION: f64 = 0.9;
/// A write waits for GC while at most this many segments beyond the reserve are free.
const WRITE_STALL_FREE_SEGMENTS: u32 = 1;
/// GC steps a stalled write runs (or waits for) before it lets the write fail.
const WRITE_STALL_MAX_STEPS: u32 = 64;

/// What one GC step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcOutcome {
    /// No segment is worth collecting.
    Idle,
    /// The segment is free again.
    Freed {
        segment: u32,
        moved_records: u64,
        moved_bytes: u64,
        dropped_tombstones: u64,
    },
    /// Some records could not move yet (a newer write of the key is in flight, or a read
    /// of the segment is); the next step retries.
    Deferred { segment: u32 },
}

impl<Q: BlockQueue> Store<Q> {
    /// Collects one segment, if any is at most `gc_max_live_fraction` live.
    pub async fn gc_step(&self) -> StoreResult<GcOutcome> {
        self.gc_step_up_to(None).await
    }

    /// Before a write: while free segments are down to the reserve (plus one), collect in
    /// the foreground, so that writers slow to GC's pace instead of being refused while
    /// the device is mostly garbage. Stalled writes pass in arrival order (`WriteGate`),
    /// and once one waits, later ones queue behind it. Returns at once when space is
    /// plentiful; gives up (the write then meets `NoSpace`) when nothing is collectible.
    /// The caller must stage its write without awaiting anything after this returns.
    pub(crate) async fn make_room_for_write(&self) {
        let inner = &self.inner;
        let has_room = || {
            inner.state.borrow().segments().free_count() > GC_RESERVED_SEGMENTS + WRITE_STALL_FREE_SEGMENTS
        };
        if inner.write_gate.is_empty() && has_room() {
            return;
        }
        let _pass = inner.write_gate.enter().await;
        for _ in 0..WRITE_STALL_MAX_STEPS {
            if has_room() {
                break;
            }
            bump(&inner.metrics.write_stalls, 1);
            match self.gc_step_up_to(Some(URGENT_LIVE_FRACTION)).await {
                // Nothing collectible, or GC cannot read or write another segment: this
                // write is not GC's, so it goes ahead (and meets NoSpace if it must).
                Ok(GcOutcome::Idle) | Err(_) => break,
                Ok(GcOutcome::Freed { .. }) => {}
                // Records still on their way or being read: let them finish.
                Ok(GcOutcome::Deferred { .. }) => futures_lite::future::yield_now().await,
            }
        }
    }

    /// One GC step; `urgent` raises the live fraction a victim may have.
    async fn gc_step_up_to(&self, urgent: Option<f64>) -> StoreResult<GcOutcome> {
        // One step at a time: two steps on one victim would both release it.
        let _step = self.inner.gc_lock.lock().await;
        let inner = &self.inner;
        let (victim, seg_off, written) = {
            let st = inner.state.borrow();
            // Moving live data costs device bandwidth: while free segments are plentiful,
            // only collect segments that are nearly empty; below the watermark, collect
            // anything under the configured live fraction.
            let low_watermark = (GC_RESERVED_SEGMENTS * 2).max(st.segments().count() / 8);
            let threshold = if st.segments().free_count() > low_watermark {
                inner.cfg.gc_max_live_fraction.min(CHEAP_LIVE_FRACTION)
            } else {
                inner.cfg.gc_max_live_fraction
            };
            let threshold = urgent.map_or(threshold, |u| u.max(threshold));
            let Some(victim) = st.segments().gc_candidate(threshold) else {
                return Ok(GcOutcome::Idle);
            };
            let info = st.segments().get(victim);
            (
                victim,
                st.segments().device_offset(victim),
                info.written.max(inner.block),
            )
        };
        bump(&inner.metrics.gc_runs, 1);
        if self.nothing_live_in(victim) {
            // Every record in it is superseded: nothing to read or move.
            return self.free_segment(victim, seg_off, (0, 0, 0)).await;
        }
        bump(&inner.metrics.gc_read_bytes, written);
        let image = inner.queue.pool().alloc(written as usize).await?;
        let image = inner.queue.read_at(seg_off, image).await?;
        let life = {
            let st = inner.state.borrow();
            let info = st.segments().get(victim);
            SegmentLife {
                uuid: inner.uuid,
                seq: info.seq,
                first_lsn: info.first_lsn,
            }
        };

        // Find what is still live, in log order.
        let limits = ScanLimits {
            block: inner.block as usize,
            max_key: inner.cfg.max_key_bytes,
            max_value: inner.cfg.max_value_bytes,
        };
        // Where each record's key and value sit in the image; only live ones are copied,
        // and only by staging them.
        let mut live = Vec::new();
        let base = image.as_ptr() as usize;
        scan_segment(&image, &life, limits, |r| {
            let key_at = r.key.as_ptr() as usize - base;
            live.push((r.value_offset, r.header, key_at));
        });
        let mut dones = Vec::new();
        let (mut moved_records, mut moved_bytes, mut dropped, mut deferred) = (0u64, 0u64, 0u64, false);
        for (off, h, key_at) in live {
            let key = &image[key_at..key_at + h.key_len as usize];
            let value = &image[off as usize..off as usize + h.value_len as usize];
            let mut st = inner.state.borrow_mut();
            let kh = st.index().hash(key);
            let points_here = st
                .index()
                .get_hashed(key, kh)
                .is_some_and(|e| e.segment == victim && e.value_offset == off);
            if !points_here {
                continue;
            }
            if st.is_pending(key, kh) {
                // A newer version is on its way; moving this one now could let its copy
                // outrank the newer record in the log.
                deferred = true;
                continue;
            }
            let size = live_size(key, h.value_len);
            if h.kind == RecordKind::Tombstone && value.len() == TOMBSTONE_VALUE_BYTES {
                let deleted_at = u64::from_le_bytes(value.try_into().expect("8 bytes"));
                if deleted_at < st.segments().min_first_lsn_excluding(victim) {
                    // Every segment that could hold an older version of the key is gone.
                    st.drop_tombstone(key, kh, victim, size);
                    dropped += 1;
                    continue;
                }
            }
            let req = StageRequest {
                key,
                hash: kh,
                partition: h.partition,
                version: Some(h.version),
                kind: h.kind,
                origin: Origin::Moved {
                    segment: victim,
                    offset: off,
                },
            };
            match inner.stage(&mut st, &req, &mut StageValue::Bytes(value)) {
                Ok(done) => {
                    if !dones.iter().any(|d| Rc::ptr_eq(d, &done)) {
                        dones.push(done);
                    }
                    moved_records += 1;
                    moved_bytes += size;
                }
                Err(_) => deferred = true,
            }
        }
        drop(image);
        // Every batch is awaited even after one fails, so that no batch of this step is
        // left for someone else to drive.
        let mut failed = None;
        for done in dones {
            if let Err(e) = commit(inner, done).await {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        bump(&inner.metrics.gc_moved_records, moved_records);
        bump(&inner.metrics.gc_moved_bytes, moved_bytes);
        bump(&inner.metrics.gc_dropped_tombstones, dropped);
        if deferred {
            // The keys left behind have newer versions staged: once those are durable the
            // records here are dead, and the retry frees the segment without reading it
            // again (instead of re-reading the whole segment while they are on their way).
            // (The state's borrow must end before the await: `commit` borrows it too.)
            let newest = newest_staged_batch(inner.state.borrow().writer());
            if let Some(newest) = newest {
                let _ = commit(inner, newest).await;
            }
        }
        if !self.nothing_live_in(victim) {
            return Ok(GcOutcome::Deferred { segment: victim });
        }
        self.free_segment(victim, seg_off, (moved_records, moved_bytes, dropped))
            .await
    }

    /// No indexed record is in `victim` and no read of it is in flight.
    fn nothing_live_in(&self, victim: u32) -> bool {
        let st = self.inner.state.borrow();
        let info = st.segments().get(victim);
        let free = info.live_bytes == 0 && info.readers == 0;
        debug_assert!(
            !free || st.index().iter().all(|(_, e)| e.segment != victim),
            "segment {victim} counted empty while the index points into it"
        );
        free
    }

    /// Replaces the header durably with a freed mark, then gives the segment back: a free
    /// segment must never be replayed. The mark keeps the store's LSN and sequence
    /// high-water marks, so that they never restart, even when every segment is free.
    async fn free_segment(
        &self,
        victim: u32,
        seg_off: u64,
        moved: (u64, u64, u64),
    ) -> StoreResult<GcOutcome> {
        let inner = &self.inner;
        let mut mark = inner.queue.pool().alloc(inner.block as usize).await?;
        mark.fill(0);
        {
            let st = inner.state.borrow();
            SegmentHeader {
                seq: st.segments().last_seq(),
                first_lsn: st.writer().next_lsn,
                segment_index: victim,
                uuid: inner.uuid,
                freed: true,
            }
            .encode(&mut mark[..SEGMENT_HEADER_BYTES]);
        }
        inner.queue.write_at(seg_off, mark, Durability::Fua).await?;
        inner.state.borrow_mut().release_segment(victim);
        bump(&inner.metrics.gc_freed_segments, 1);
        let (moved_records, moved_bytes, dropped_tombstones) = moved;
        Ok(GcOutcome::Freed {
            segment: victim,
            moved_records,
            moved_bytes,
            dropped_tombstones,
        })
    }
}
