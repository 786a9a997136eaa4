//! The segment table: which segments are free, being written or sealed, how many live
//! bytes each holds, and where each sits on the device.

/// Life of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// No valid header on the device; may be opened for writing.
    Free,
    /// Batches are being appended to it.
    Active,
    /// Complete; GC may collect it.
    Sealed,
}

#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub state: SegmentState,
    pub seq: u64,
    pub first_lsn: u64,
    /// Bytes written so far (segment header, records, padding), block aligned.
    pub written: u64,
    /// Bytes of records the index still points at.
    pub live_bytes: u64,
    /// Reads in flight; GC does not reuse a segment while any remain.
    pub readers: u32,
    /// Batches planned into this segment and not yet completed.
    pub batches_outstanding: u32,
    /// Bytes GC moved in, and when their data was written (an LSN; the bytes-weighted
    /// mean of their victims' data ages): with the segment's first LSN for the rest of
    /// what it holds, this gives its data age (`data_born`).
    moved_in: u64,
    moved_born: u64,
}

impl SegmentInfo {
    /// When its data was written, as a point of the log (an LSN), the mean over the bytes
    /// it holds: what was written here counts as written when the segment opened, what GC
    /// moved here as old as its victim's data, so that data keeps its age across moves.
    /// Recovery restarts it at the segment's first LSN.
    pub fn data_born(&self) -> u64 {
        let total = self.written.max(self.moved_in);
        if total == 0 {
            return self.first_lsn;
        }
        let moved = self.moved_in as f64 / total as f64;
        (self.moved_born as f64 * moved + self.first_lsn as f64 * (1.0 - moved)).round() as u64
    }

    fn free() -> Self {
        SegmentInfo {
            state: SegmentState::Free,
            seq: 0,
            first_lsn: 0,
            written: 0,
            live_bytes: 0,
            readers: 0,
            batches_outstanding: 0,
            moved_in: 0,
            moved_born: 0,
        }
    }
}

/// How GC picks its next victim among the sealed segments under the live fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VictimChoice {
    /// The least live: the most space for the least copying, now.
    Greedy,
    /// The most space freed per byte copied, weighted by the data's age (Rosenblum and
    /// Ousterhout's LFS cost-benefit: (1 - u) * age / (1 + u)): cold data that GC moved
    /// before is left alone until much of it is dead, so it stops being moved again.
    CostBenefit,
}

pub struct SegmentTable {
    segments: Vec<SegmentInfo>,
    /// Device offset of segment 0.
    base: u64,
    segment_bytes: u64,
    next_seq: u64,
}

impl SegmentTable {
    pub fn new(count: u32, base: u64, segment_bytes: u64) -> Self {
        SegmentTable {
            segments: vec![SegmentInfo::free(); count as usize],
            base,
            segment_bytes,
            next_seq: 1,
        }
    }

    pub fn count(&self) -> u32 {
        self.segments.len() as u32
    }

    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Device offset of the start of segment `index`.
    pub fn device_offset(&self, index: u32) -> u64 {
        self.base + index as u64 * self.segment_bytes
    }

    pub fn get(&self, index: u32) -> &SegmentInfo {
        &self.segments[index as usize]
    }

    /// A read of segment `index` begins: GC does not reuse it until the read ends.
    pub fn pin_reader(&mut self, index: u32) {
        self.segments[index as usize].readers += 1;
    }

    pub fn unpin_reader(&mut self, index: u32) {
        let s = &mut self.segments[index as usize];
        debug_assert!(s.readers > 0, "segment {index}: a read ended that never began");
        s.readers = s.readers.saturating_sub(1);
    }

    /// A batch is planned into segment `index` (GC leaves the segment alone until it ends).
    pub fn batch_planned(&mut self, index: u32) {
        self.segments[index as usize].batches_outstanding += 1;
    }

    /// A batch planned into segment `index` is written, failed or discarded; if written,
    /// the segment holds valid data up to `written_to`.
    pub fn batch_ended(&mut self, index: u32, written_to: Option<u64>) {
        let s = &mut self.segments[index as usize];
        debug_assert!(
            s.batches_outstanding > 0,
            "segment {index}: a batch ended that was never planned"
        );
        s.batches_outstanding = s.batches_outstanding.saturating_sub(1);
        if let Some(end) = written_to {
            s.written = s.written.max(end);
        }
    }

    pub fn free_count(&self) -> u32 {
        self.segments
            .iter()
            .filter(|s| s.state == SegmentState::Free)
            .count() as u32
    }

    /// Opens the lowest free segment for writing, with the next sequence number.
    pub fn open_free(&mut self, first_lsn: u64) -> Option<(u32, u64)> {
        let index = self.segments.iter().position(|s| s.state == SegmentState::Free)? as u32;
        let seq = self.next_seq;
        self.next_seq += 1;
        let s = &mut self.segments[index as usize];
        *s = SegmentInfo {
            state: SegmentState::Active,
            seq,
            first_lsn,
            ..SegmentInfo::free()
        };
        Some((index, seq))
    }

    /// The sequence number of the segment opened last (0 before any).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Records a sequence number recovery found in a freed segment's mark: the next
    /// segment opened gets a greater one.
    pub fn note_seq(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Records a segment found valid by recovery.
    pub fn restore(&mut self, index: u32, seq: u64, first_lsn: u64, written: u64) {
        let s = &mut self.segments[index as usize];
        *s = SegmentInfo {
            state: SegmentState::Sealed,
            seq,
            first_lsn,
            written,
            ..SegmentInfo::free()
        };
        self.next_seq = self.next_seq.max(seq + 1);
    }

    pub fn seal(&mut self, index: u32) {
        let s = &mut self.segments[index as usize];
        if s.state == SegmentState::Active {
            s.state = SegmentState::Sealed;
        }
    }

    pub fn release(&mut self, index: u32) {
        let s = &self.segments[index as usize];
        debug_assert!(
            s.readers == 0 && s.batches_outstanding == 0,
            "segment {index} released with reads or batches in flight"
        );
        self.segments[index as usize] = SegmentInfo::free();
    }

    pub fn add_live(&mut self, index: u32, bytes: u64) {
        self.segments[index as usize].live_bytes += bytes;
    }

    /// GC moved `bytes` of records from `from` into `to`: `to`'s data age takes theirs in.
    pub fn note_moved(&mut self, from: u32, to: u32, bytes: u64) {
        let born = self.segments[from as usize].data_born();
        let s = &mut self.segments[to as usize];
        let weight = s.moved_in.saturating_add(bytes);
        if weight > 0 {
            // A running mean: no product of an LSN and a byte count to overflow.
            let shift = (born as f64 - s.moved_born as f64) * bytes as f64 / weight as f64;
            s.moved_born = (s.moved_born as f64 + shift).max(0.0).round() as u64;
        }
        s.moved_in = weight;
    }

    /// Takes `bytes` of records that are no longer live out of segment `index`. Taking
    /// more than it holds is an accounting defect (a record counted twice, or never): it
    /// fails tests, and a release build keeps the segment at zero rather than wrap.
    pub fn sub_live(&mut self, index: u32, bytes: u64) {
        let s = &mut self.segments[index as usize];
        debug_assert!(
            s.live_bytes >= bytes,
            "segment {index}: {bytes} live bytes taken from {}",
            s.live_bytes
        );
        s.live_bytes = s.live_bytes.saturating_sub(bytes);
    }

    /// The smallest first LSN of any written segment other than `except`: no record older
    /// than this survives outside `except`.
    pub fn min_first_lsn_excluding(&self, except: u32) -> u64 {
        self.segments
            .iter()
            .enumerate()
            .filter(|(i, s)| *i as u32 != except && s.state != SegmentState::Free)
            .map(|(_, s)| s.first_lsn)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The sealed segment GC should collect next among those at most `max_live_fraction`
    /// live: the least live (`Greedy`), or the best cost-benefit at log position `now`.
    pub fn gc_candidate(&self, max_live_fraction: f64, choice: VictimChoice, now: u64) -> Option<u32> {
        let candidates = self
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state == SegmentState::Sealed && s.batches_outstanding == 0)
            .map(|(i, s)| (i as u32, s, s.live_bytes as f64 / self.segment_bytes as f64))
            .filter(|(_, _, u)| *u <= max_live_fraction);
        match choice {
            VictimChoice::Greedy => candidates.min_by(|a, b| a.2.total_cmp(&b.2)).map(|(i, _, _)| i),
            VictimChoice::CostBenefit => candidates
                .map(|(i, s, u)| {
                    // At least 1: two segments of the same age still rank by their space.
                    let age = now.saturating_sub(s.data_born()).max(1) as f64;
                    (i, (1.0 - u) * age / (1.0 + u))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i),
        }
    }

    /// Bytes of live records in all segments.
    pub fn live_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.live_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_open_seal_and_release() {
        let mut t = SegmentTable::new(4, 8192, 1 << 20);
        assert_eq!(t.device_offset(2), 8192 + (2 << 20));
        let (a, seq_a) = t.open_free(10).unwrap();
        let (b, seq_b) = t.open_free(20).unwrap();
        assert!(seq_b > seq_a);
        assert_eq!(t.free_count(), 2);
        t.add_live(a, 100);
        t.seal(a);
        assert_eq!(t.gc_candidate(0.5, VictimChoice::Greedy, 30), Some(a));
        assert_eq!(t.min_first_lsn_excluding(a), 20);
        t.sub_live(a, 100);
        t.release(a);
        assert_eq!(t.free_count(), 3);
        assert_eq!(
            t.gc_candidate(0.5, VictimChoice::CostBenefit, 30),
            None,
            "an active segment is never a candidate"
        );
        t.seal(b);
        assert_eq!(t.gc_candidate(0.5, VictimChoice::Greedy, 30), Some(b));
    }

    #[test]
    fn cost_benefit_leaves_cold_moved_data_alone_until_much_of_it_is_dead() {
        let seg = 1000;
        let mut t = SegmentTable::new(4, 0, seg);
        // An old segment, 40 % live, whose data GC moved into `cold` (which inherits its
        // age), and a young segment 30 % live.
        let (old, _) = t.open_free(100).unwrap();
        let (cold, _) = t.open_free(5_000).unwrap();
        t.note_moved(old, cold, 400);
        t.add_live(cold, 400);
        assert_eq!(t.get(cold).data_born(), 100, "moved data keeps its age");
        // The young segment's own writes count as written when it opened.
        t.seal(cold);
        let (young, _) = t.open_free(9_000).unwrap();
        t.batch_planned(young);
        t.batch_ended(young, Some(300));
        t.add_live(young, 300);
        assert_eq!(t.get(young).data_born(), 9_000);
        t.seal(young);
        t.seal(old); // empty: freed without moving anything in both choices
        t.release(old);
        // Greedy takes the least live; cost-benefit the old data, which at 40 % live frees
        // 0.6 * 9,900 / 1.4 per byte against 0.7 * 1,000 / 1.3 for the young segment.
        assert_eq!(t.gc_candidate(0.5, VictimChoice::Greedy, 10_000), Some(young));
        assert_eq!(t.gc_candidate(0.5, VictimChoice::CostBenefit, 10_000), Some(cold));
    }

    #[test]
    fn a_segment_of_moved_data_is_as_old_as_its_bytes_on_average() {
        let mut t = SegmentTable::new(3, 0, 1000);
        let (a, _) = t.open_free(100).unwrap();
        let (b, _) = t.open_free(5_000).unwrap();
        let (g, _) = t.open_free(9_000).unwrap();
        t.note_moved(a, g, 100);
        t.note_moved(b, g, 300);
        assert_eq!(t.get(g).data_born(), (100 * 100 + 5_000 * 300) / 400);
        // New writes beside the moves (GC sharing the log's head) weigh in too.
        t.batch_planned(g);
        t.batch_ended(g, Some(800));
        let mean = (100 * 100 + 5_000 * 300 + 9_000 * 400) as f64 / 800.0;
        assert!(
            (t.get(g).data_born() as f64 - mean).abs() <= 1.0,
            "{}",
            t.get(g).data_born()
        );
    }
}
