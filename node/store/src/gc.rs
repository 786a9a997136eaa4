//! Garbage collection: move the live records out of a mostly-dead segment, drop
//! tombstones that nothing older can outlive, then erase the segment's header so that it
//! is free (and recovery never replays it again). The index says what is live in a victim
//! and where; GC reads only those records' blocks, not the whole segment.

use std::rc::Rc;

use hotshard_nvme::{BlockQueue, Durability};

use super::config::{GcWrites, VictimChoice};
use super::engine::{GcHead, Store};
use super::error::StoreResult;
use super::format::{value_crc, RecordKind, TOMBSTONE_VALUE_BYTES};
use super::format::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::group_commit::{commit, live_size, newest_staged_batch, Origin, StageRequest};
use super::index::{now_ms, IndexEntry};
use super::metrics::{bump, bump_us};
use super::value_buf::StageValue;
use crate::limits::GC_RESERVED_SEGMENTS;
use hotshard_nvme::queue::join_all;

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

/// Live records closer than this in a victim are read together. 0: only records in
/// adjacent or shared blocks. Measured on bench/steady-state.sh (4 KiB overwrites, 40 %
/// live): with 64 KiB (and 8 reads in flight) GC read nearly every victim whole in 1 MiB
/// pieces and the steady run did 83K PUT/s at p99.9 88 ms; with 0 (and 32 in flight) it
/// read 6.5x less than the whole-segment GC before it, at 99-103K PUT/s and p99.9 4 ms.
const GC_COALESCE_GAP: u64 = 0;
/// Largest single GC read.
const GC_MAX_READ: u64 = 1 << 20;
/// GC reads of one victim in flight at once (the device's queue depth for small reads).
const GC_READS_IN_FLIGHT: usize = 32;

/// Index slots a GC step walks between two yields (about 0.15 ms).
const GC_SLOTS_PER_TURN: usize = 16 << 10;
/// Live records a GC step stages between two yields (4 KiB each: about 0.1 ms).
const GC_RECORDS_PER_TURN: usize = 64;

/// A live record of a victim, as the index has it.
struct LiveRecord {
    key: Box<[u8]>,
    partition: u16,
    entry: IndexEntry,
}

/// A block-aligned byte range of a segment to read.
struct ReadRange {
    start: u64,
    end: u64,
}

/// The reads that cover every live record's value (`live` sorted by offset): each value's
/// blocks, neighbours closer than `GC_COALESCE_GAP` merged, no read over `GC_MAX_READ`
/// unless one value is larger. Every indexed value lies in the written part of its
/// segment, so the reads do too.
fn coalesce(live: &[LiveRecord], block: u64) -> Vec<ReadRange> {
    let mut ranges: Vec<ReadRange> = Vec::new();
    for r in live {
        let at = u64::from(r.entry.value_offset);
        let start = at / block * block;
        // At least one block: an empty value still has its block read.
        let end = ((at + u64::from(r.entry.value_len())).div_ceil(block) * block).max(start + block);
        match ranges.last_mut() {
            Some(last) if start <= last.end + GC_COALESCE_GAP && end - last.start <= GC_MAX_READ => {
                last.end = last.end.max(end);
            }
            _ => ranges.push(ReadRange { start, end }),
        }
    }
    ranges
}

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
        let waited = std::time::Instant::now();
        bump(&inner.metrics.stalled_writes, 1);
        let _pass = inner.write_gate.enter().await;
        self.collect_until_room().await;
        bump_us(&inner.metrics.stalled_write_us, waited);
    }

    /// `make_room_for_write` for a write that already holds the gate.
    pub(crate) async fn collect_until_room(&self) {
        let inner = &self.inner;
        let has_room = || {
            inner.state.borrow().segments().free_count() > GC_RESERVED_SEGMENTS + WRITE_STALL_FREE_SEGMENTS
        };
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
        let (victim, seg_off) = {
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
            // A write waiting for room needs space now: the least live segment.
            let choice = if urgent.is_some() {
                VictimChoice::Greedy
            } else {
                inner.cfg.gc_victims
            };
            let now = st.writer().next_lsn;
            let Some(victim) = st.segments().gc_candidate(threshold, choice, now) else {
                return Ok(GcOutcome::Idle);
            };
            (victim, st.segments().device_offset(victim))
        };
        bump(&inner.metrics.gc_runs, 1);
        if self.nothing_live_in(victim) {
            // Every record in it is superseded: nothing to read or move.
            return self.free_segment(victim, seg_off, (0, 0, 0)).await;
        }
        // What is live in the victim, from the index (no read of the segment), in log order.
        // The walk of every slot is cut into pieces with a yield between them, so that
        // requests keep their turns (a whole walk of 230,000 keys took about 2 ms). A sealed
        // victim takes no new records, and slots move only within the table (a removal
        // swaps the last one in): a record missed because its slot moved behind the walk
        // keeps the victim from being freed (`nothing_live_in`), and the next step retries.
        let mut live: Vec<LiveRecord> = Vec::new();
        let mut from = 0;
        while from < inner.state.borrow().index().slot_count() {
            {
                let st = inner.state.borrow();
                live.extend(
                    st.index()
                        .iter_segment_slots(victim, from..from + GC_SLOTS_PER_TURN)
                        .map(|(key, partition, e)| LiveRecord {
                            key: key.into(),
                            partition,
                            entry: *e,
                        }),
                );
            }
            from += GC_SLOTS_PER_TURN;
            futures_lite::future::yield_now().await;
        }
        live.sort_unstable_by_key(|r| r.entry.value_offset);
        // Read only their bytes: neighbours coalesced, a few reads in flight at once.
        let began = std::time::Instant::now();
        let ranges = coalesce(&live, inner.block);
        let read_bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        bump(&inner.metrics.gc_read_bytes, read_bytes);
        let mut images = Vec::with_capacity(ranges.len());
        for chunk in ranges.chunks(GC_READS_IN_FLIGHT) {
            let reads = chunk.iter().map(|r| async move {
                let buf = inner.queue.pool().alloc((r.end - r.start) as usize).await?;
                inner.queue.read_at(seg_off + r.start, buf).await
            });
            for (r, image) in chunk.iter().zip(join_all(reads.collect()).await) {
                images.push((r.start, image?));
            }
        }
        let value_of = |e: &IndexEntry| -> &[u8] {
            let at = u64::from(e.value_offset);
            let i = images.partition_point(|(start, _)| *start <= at) - 1;
            let (start, image) = &images[i];
            let from = (at - start) as usize;
            &image[from..from + e.value_len() as usize]
        };

        bump_us(&inner.metrics.gc_read_us, began);
        let began = std::time::Instant::now();
        // Where the moves go: GC's own head (written without FUA, flushed before the
        // victim is freed), except for a write waiting for room: its step moves records
        // into the log the write goes to, so that the room the victim gives back is left
        // in the log's open segment rather than in GC's (with GC's head, collecting a
        // device full of live data only moved records from segment to segment).
        let own_head = inner.cfg.gc_writes == GcWrites::OwnHead && urgent.is_none();
        let mut dones = Vec::new();
        let (mut moved_records, mut moved_bytes, mut dropped, mut deferred) = (0u64, 0u64, 0u64, false);
        for (i, r) in live.iter().enumerate() {
            if i > 0 && i % GC_RECORDS_PER_TURN == 0 {
                // Staging is a copy and a checksum per record: let requests in between.
                futures_lite::future::yield_now().await;
            }
            let (key, e) = (&r.key[..], &r.entry);
            let value = value_of(e);
            if value_crc(value) != e.value_crc {
                // The device returned other bytes than were written: moving them would
                // give them a fresh checksum. The record stays (the segment is not freed)
                // and a read of it answers Corrupt, as before.
                bump(&inner.metrics.corrupt_reads, 1);
                deferred = true;
                continue;
            }
            let mut st = inner.state.borrow_mut();
            let kh = st.index().hash(key);
            let points_here = st
                .index()
                .get_hashed(key, kh)
                .is_some_and(|now| now.segment == victim && now.value_offset == e.value_offset);
            if !points_here {
                continue;
            }
            if st.is_pending(key, kh) {
                // A newer version is on its way; moving this one now could let its copy
                // outrank the newer record in the log.
                deferred = true;
                continue;
            }
            let size = live_size(key, e.value_len());
            // An expired object moves as a tombstone of its version (its value's space is
            // given back): dropping it instead could let an older version of the key, in a
            // segment not yet collected, come back at the next recovery. The tombstone is
            // forgotten later by the rule for every tombstone, so its value is what every
            // tombstone's is: the log position it is written at (staging takes exactly the
            // writer's next LSN), past every older version of the key here. Not the
            // record's version: on a replica that is the head's, which may be far below
            // this log's positions, and the tombstone was forgotten at once.
            // A replica's store leaves expiry to its chain's head (`gc_buries_expired`).
            let expired = inner.cfg.gc_buries_expired && !e.tombstone() && e.expired(now_ms());
            let stamp = st.writer().next_lsn.to_le_bytes();
            let value: &[u8] = if expired { &stamp } else { value };
            if e.tombstone() && value.len() == TOMBSTONE_VALUE_BYTES {
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
                partition: r.partition,
                version: Some(e.version),
                kind: if e.tombstone() || expired {
                    RecordKind::Tombstone
                } else {
                    RecordKind::Put
                },
                expires_ms: if expired { 0 } else { e.expires_ms },
                origin: Origin::Moved {
                    segment: victim,
                    offset: e.value_offset,
                },
            };
            match inner.stage_moved(&mut st, &req, &mut StageValue::Bytes(value), own_head) {
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
        drop(images);
        // Every batch is awaited even after one fails, so that no batch of this step is
        // left for someone else to drive.
        let mut failed = None;
        let gc_head = own_head.then(|| Rc::new(GcHead(inner.clone())));
        for done in dones {
            let written = match &gc_head {
                Some(head) => commit(head, done).await,
                None => commit(inner, done).await,
            };
            if let Err(e) = written {
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
        bump_us(&inner.metrics.gc_move_us, began);
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

    /// Flushes what GC's own head wrote (if anything since the last flush), replaces the
    /// header durably with a freed mark, then gives the segment back: a free
    /// segment must never be replayed. The mark keeps the store's LSN and sequence
    /// high-water marks, so that they never restart, even when every segment is free.
    async fn free_segment(
        &self,
        victim: u32,
        seg_off: u64,
        moved: (u64, u64, u64),
    ) -> StoreResult<GcOutcome> {
        let inner = &self.inner;
        let began = std::time::Instant::now();
        if inner.gc_unflushed.get() {
            // Records GC's own head moved are written but maybe not durable: one flush
            // covers every GC batch written so far before any victim they came from goes.
            // (A GC batch whose write ends during the flush sets the flag again; its
            // records cannot be this victim's, which nothing indexed points into.)
            inner.gc_unflushed.set(false);
            if let Err(e) = inner.queue.flush().await {
                inner.gc_unflushed.set(true);
                return Err(e.into());
            }
            bump(&inner.metrics.gc_flushes, 1);
        }
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
        bump_us(&inner.metrics.gc_free_us, began);
        let (moved_records, moved_bytes, dropped_tombstones) = moved;
        Ok(GcOutcome::Freed {
            segment: victim,
            moved_records,
            moved_bytes,
            dropped_tombstones,
        })
    }
}
