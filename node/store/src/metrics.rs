//! Counters of one shard's store. Plain cells: a store belongs to one core.

use std::cell::Cell;

#[derive(Default)]
pub struct StoreMetrics {
    pub puts: Cell<u64>,
    pub deletes: Cell<u64>,
    pub gets: Cell<u64>,
    pub not_found: Cell<u64>,
    pub corrupt_reads: Cell<u64>,
    pub read_errors: Cell<u64>,
    pub write_errors: Cell<u64>,
    pub no_space: Cell<u64>,
    pub batches: Cell<u64>,
    pub batched_records: Cell<u64>,
    pub bytes_written: Cell<u64>,
    pub gc_runs: Cell<u64>,
    pub gc_moved_records: Cell<u64>,
    pub gc_moved_bytes: Cell<u64>,
    /// Bytes of segments GC read to find their live records.
    pub gc_read_bytes: Cell<u64>,
    pub gc_freed_segments: Cell<u64>,
    /// Flushes GC issued before freeing a victim (its own head's writes are not FUA).
    pub gc_flushes: Cell<u64>,
    pub gc_dropped_tombstones: Cell<u64>,
    /// GC steps a write ran (or waited for) because free space was down to the reserve.
    pub write_stalls: Cell<u64>,
    /// Writes that waited for GC (at the write gate, or collecting), and for how long in
    /// all, in microseconds.
    pub stalled_writes: Cell<u64>,
    pub stalled_write_us: Cell<u64>,
    /// Time GC steps spent reading victims' live records, moving them (staging and
    /// committing their batches) and marking victims free, in microseconds.
    pub gc_read_us: Cell<u64>,
    pub gc_move_us: Cell<u64>,
    pub gc_free_us: Cell<u64>,
    /// Writes answered Busy by the engine after waiting `max_write_wait` for buffers or
    /// batches, in all and by reason.
    pub busy: Cell<u64>,
    pub busy_reasons: std::cell::RefCell<Vec<(&'static str, u64)>>,
    /// Batches replayed at open whose LSNs did not follow the ones before them.
    pub recovery_lsn_anomalies: Cell<u64>,
    /// Value bytes staging copied into a batch (inline values, GC moves, values that did
    /// not arrive in a buffer of the pool).
    pub value_bytes_copied: Cell<u64>,
    /// Value bytes a batch wrote from the buffer they were received into (no copy).
    pub value_bytes_in_place: Cell<u64>,
    /// Records written with a version made elsewhere (`apply_versioned`).
    pub versioned_writes: Cell<u64>,
}

impl StoreMetrics {
    /// Counts a `Busy` answered from inside the engine, and its reason.
    pub fn count_busy(&self, why: &'static str) {
        bump(&self.busy, 1);
        let mut reasons = self.busy_reasons.borrow_mut();
        match reasons.iter_mut().find(|(w, _)| *w == why) {
            Some((_, n)) => *n += 1,
            None => reasons.push((why, 1)),
        }
    }
}

pub fn bump(c: &Cell<u64>, by: u64) {
    c.set(c.get() + by);
}

/// Adds the microseconds since `since` to `c`.
pub fn bump_us(c: &Cell<u64>, since: std::time::Instant) {
    bump(c, since.elapsed().as_micros() as u64);
}

/// A copy of the counters for reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCounters {
    pub puts: u64,
    pub deletes: u64,
    pub gets: u64,
    pub not_found: u64,
    pub corrupt_reads: u64,
    pub read_errors: u64,
    pub write_errors: u64,
    pub no_space: u64,
    pub batches: u64,
    pub batched_records: u64,
    pub bytes_written: u64,
    pub gc_runs: u64,
    pub gc_moved_records: u64,
    pub gc_moved_bytes: u64,
    pub gc_read_bytes: u64,
    pub gc_freed_segments: u64,
    pub gc_flushes: u64,
    pub gc_dropped_tombstones: u64,
    pub write_stalls: u64,
    pub stalled_writes: u64,
    pub stalled_write_us: u64,
    pub gc_read_us: u64,
    pub gc_move_us: u64,
    pub gc_free_us: u64,
    pub busy: u64,
    pub busy_reasons: Vec<(&'static str, u64)>,
    pub recovery_lsn_anomalies: u64,
    pub value_bytes_copied: u64,
    pub value_bytes_in_place: u64,
    pub versioned_writes: u64,
}

impl StoreMetrics {
    pub fn snapshot(&self) -> StoreCounters {
        StoreCounters {
            puts: self.puts.get(),
            deletes: self.deletes.get(),
            gets: self.gets.get(),
            not_found: self.not_found.get(),
            corrupt_reads: self.corrupt_reads.get(),
            read_errors: self.read_errors.get(),
            write_errors: self.write_errors.get(),
            no_space: self.no_space.get(),
            batches: self.batches.get(),
            batched_records: self.batched_records.get(),
            bytes_written: self.bytes_written.get(),
            gc_runs: self.gc_runs.get(),
            gc_moved_records: self.gc_moved_records.get(),
            gc_moved_bytes: self.gc_moved_bytes.get(),
            gc_read_bytes: self.gc_read_bytes.get(),
            gc_freed_segments: self.gc_freed_segments.get(),
            gc_flushes: self.gc_flushes.get(),
            gc_dropped_tombstones: self.gc_dropped_tombstones.get(),
            write_stalls: self.write_stalls.get(),
            stalled_writes: self.stalled_writes.get(),
            stalled_write_us: self.stalled_write_us.get(),
            gc_read_us: self.gc_read_us.get(),
            gc_move_us: self.gc_move_us.get(),
            gc_free_us: self.gc_free_us.get(),
            busy: self.busy.get(),
            busy_reasons: self.busy_reasons.borrow().clone(),
            recovery_lsn_anomalies: self.recovery_lsn_anomalies.get(),
            value_bytes_copied: self.value_bytes_copied.get(),
            value_bytes_in_place: self.value_bytes_in_place.get(),
            versioned_writes: self.versioned_writes.get(),
        }
    }
}
