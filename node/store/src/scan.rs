//! Walking the batches of one segment image: shared by recovery and GC. A batch counts
//! only if its header, every record header and every value check out; the walk stops
//! cleanly at the end of the written log or at the first torn or damaged batch.

use super::format::{
    value_crc, BatchHeader, RecordError, RecordHeader, BATCH_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

/// Why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Never-written space, or a batch from an older life of the segment: the log ends.
    Clean,
    /// A batch failed its checks (torn write or corruption).
    Torn,
    /// The end of the segment image.
    Full,
}

/// One record found by a scan.
pub struct ScannedRecord<'a> {
    pub header: RecordHeader,
    pub key: &'a [u8],
    /// Offset of the value within the segment.
    pub value_offset: u32,
    pub value: &'a [u8],
}

/// Limits a scan checks records against.
#[derive(Debug, Clone, Copy)]
pub struct ScanLimits {
    pub block: usize,
    pub max_key: usize,
    pub max_value: usize,
}

/// The incarnation of a segment being scanned, from its segment header.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLife {
    pub uuid: [u8; 16],
    pub seq: u64,
    pub first_lsn: u64,
}

/// What a scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    /// End of the valid log within the image.
    pub end: usize,
    pub how: ScanEnd,
    /// Batches of this incarnation whose LSNs did not follow the ones before them. They
    /// are replayed anyway (see `scan_segment`), and reported.
    pub lsn_anomalies: u32,
}

/// Calls `f` for each record of each valid batch of one incarnation of a segment, in log
/// order, and says where and why the log ends.
///
/// A batch whose LSNs do not follow is not taken for the end of the log. Its header's CRC
/// covers the store's uuid and it names this incarnation's sequence number, so this store
/// wrote it into this life of the segment, after the batches before it: its records are
/// acknowledged data. Stopping there would silently drop it and every batch after it
/// (issue 16: an empty batch with LSN 0 hid every later write of its segment). Replaying it
/// is safe because the index keeps the highest version of each key, whatever the order.
pub fn scan_segment(
    seg: &[u8],
    life: &SegmentLife,
    limits: ScanLimits,
    mut f: impl FnMut(&ScannedRecord<'_>),
) -> ScanSummary {
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut last_lsn = life.first_lsn.saturating_sub(1);
    let mut records = Vec::new();
    let mut lsn_anomalies = 0;
    let summary = |end: usize, how: ScanEnd, lsn_anomalies: u32| ScanSummary {
        end,
        how,
        lsn_anomalies,
    };
    loop {
        if pos + BATCH_HEADER_BYTES > seg.len() {
            return summary(pos.min(seg.len()), ScanEnd::Full, lsn_anomalies);
        }
        let bh = match BatchHeader::decode(&seg[pos..], &life.uuid) {
            Ok(bh) => bh,
            Err(RecordError::NoRecord) => return summary(pos, ScanEnd::Clean, lsn_anomalies),
            Err(_) => return summary(pos, ScanEnd::Torn, lsn_anomalies),
        };
        if bh.segment_seq != life.seq {
            // Written by an earlier life of this segment: the current log ends here.
            return summary(pos, ScanEnd::Clean, lsn_anomalies);
        }
        records.clear();
        if !parse_batch(seg, pos, &bh, limits, &mut records) {
            return summary(pos, ScanEnd::Torn, lsn_anomalies);
        }
        if bh.first_lsn <= last_lsn || bh.first_lsn < life.first_lsn {
            lsn_anomalies += 1;
        }
        for r in &records {
            f(r);
        }
        last_lsn = last_lsn.max(bh.last_lsn);
        pos += bh.batch_len as usize;
    }
}

/// Checks one batch completely; fills `out` only if every part of it is valid.
fn parse_batch<'a>(
    seg: &'a [u8],
    pos: usize,
    bh: &BatchHeader,
    limits: ScanLimits,
    out: &mut Vec<ScannedRecord<'a>>,
) -> bool {
    let meta_end = pos + bh.meta_len as usize;
    let batch_end = pos + bh.batch_len as usize;
    let value_area = meta_end.div_ceil(limits.block) * limits.block;
    if batch_end > seg.len() || value_area > batch_end {
        return false;
    }
    let mut rpos = pos + BATCH_HEADER_BYTES;
    let mut prev_lsn = bh.first_lsn.saturating_sub(1);
    for _ in 0..bh.record_count {
        if rpos >= meta_end {
            return false;
        }
        let Ok(h) = RecordHeader::decode(&seg[rpos..meta_end], limits.max_key, limits.max_value) else {
            return false;
        };
        if h.lsn <= prev_lsn || h.lsn > bh.last_lsn {
            return false;
        }
        let key_at = rpos + super::format::RECORD_HEADER_BYTES;
        let key = &seg[key_at..key_at + h.key_len as usize];
        let (v_at, v_end_limit) = if h.inline {
            (pos + h.value_at as usize, meta_end)
        } else {
            (value_area + h.value_at as usize, batch_end)
        };
        if h.inline && v_at != key_at + h.key_len as usize {
            return false;
        }
        let v_end = v_at + h.value_len as usize;
        if v_end > v_end_limit || value_crc(&seg[v_at..v_end]) != h.value_crc {
            return false;
        }
        out.push(ScannedRecord {
            header: h,
            key,
            value_offset: v_at as u32,
            value: &seg[v_at..v_end],
        });
        prev_lsn = h.lsn;
        rpos += h.meta_len();
    }
    rpos == meta_end && prev_lsn == bh.last_lsn
}

#[cfg(test)]
mod tests {
    use super::super::format::{RecordKind, RECORD_HEADER_BYTES};
    use super::*;

    const LIMITS: ScanLimits = ScanLimits {
        block: 4096,
        max_key: 1024,
        max_value: 1 << 20,
    };
    const UUID: [u8; 16] = [7; 16];

    fn life(seq: u64, first_lsn: u64) -> SegmentLife {
        SegmentLife {
            uuid: UUID,
            seq,
            first_lsn,
        }
    }

    /// Writes a batch of incarnation `seq` at `pos` holding (lsn, key, value, inline)
    /// records, bound to `uuid`; returns its end.
    fn batch_of(
        seg: &mut [u8],
        pos: usize,
        uuid: &[u8; 16],
        seq: u64,
        recs: &[(u64, &[u8], &[u8], bool)],
    ) -> usize {
        let mut meta = pos + BATCH_HEADER_BYTES;
        let mut values = Vec::new();
        for &(lsn, key, value, inline) in recs {
            let value_at = if inline {
                (meta - pos + RECORD_HEADER_BYTES + key.len()) as u32
            } else {
                values.len() as u32
            };
            let h = RecordHeader {
                kind: RecordKind::Put,
                inline,
                key_len: key.len() as u16,
                value_len: value.len() as u32,
                lsn,
                version: lsn,
                value_at,
                value_crc: value_crc(value),
                partition: 0,
                expires_ms: 0,
            };
            h.encode(key, &mut seg[meta..]);
            if inline {
                seg[meta + RECORD_HEADER_BYTES + key.len()..meta + h.meta_len()].copy_from_slice(value);
            } else {
                values.extend_from_slice(value);
                values.resize(values.len().div_ceil(4096) * 4096, 0);
            }
            meta += h.meta_len();
        }
        let value_area = meta.div_ceil(4096) * 4096;
        seg[value_area..value_area + values.len()].copy_from_slice(&values);
        let end = value_area + values.len();
        let bh = BatchHeader {
            record_count: recs.len() as u32,
            meta_len: (meta - pos) as u32,
            batch_len: (end - pos) as u32,
            first_lsn: recs[0].0,
            last_lsn: recs[recs.len() - 1].0,
            segment_seq: seq,
        };
        bh.encode(uuid, &mut seg[pos..]);
        end
    }

    /// A batch of incarnation 1 of this store.
    fn batch(seg: &mut [u8], pos: usize, recs: &[(u64, &[u8], &[u8], bool)]) -> usize {
        batch_of(seg, pos, &UUID, 1, recs)
    }

    fn keys_in(seg: &[u8], life: SegmentLife) -> (Vec<Vec<u8>>, ScanSummary) {
        let mut out = Vec::new();
        let summary = scan_segment(seg, &life, LIMITS, |r| out.push(r.key.to_vec()));
        (out, summary)
    }

    fn keys(seg: &[u8], first_lsn: u64) -> (Vec<Vec<u8>>, ScanEnd) {
        let (k, summary) = keys_in(seg, life(1, first_lsn));
        (k, summary.how)
    }

    #[test]
    fn scans_batches_with_inline_and_aligned_values() {
        let mut seg = vec![0u8; 64 * 1024];
        let big = vec![9u8; 5000];
        let next = batch(
            &mut seg,
            SEGMENT_HEADER_BYTES,
            &[(10, b"a", b"1", true), (11, b"b", &big, false)],
        );
        assert_eq!(next % 4096, 0);
        batch(&mut seg, next, &[(12, b"c", b"3", true)]);
        let mut values = Vec::new();
        let summary = scan_segment(&seg, &life(1, 10), LIMITS, |r| {
            if !r.header.inline {
                assert_eq!(r.value_offset % 4096, 0, "large values start on a block");
            }
            values.push(r.value.to_vec())
        });
        assert_eq!(values, vec![b"1".to_vec(), big, b"3".to_vec()]);
        assert_eq!(summary.how, ScanEnd::Clean);
        assert_eq!(summary.lsn_anomalies, 0);
    }

    #[test]
    fn a_torn_batch_is_dropped_whole() {
        let mut seg = vec![0u8; 32 * 1024];
        let next = batch(&mut seg, SEGMENT_HEADER_BYTES, &[(10, b"a", b"1", true)]);
        let end = batch(
            &mut seg,
            next,
            &[(11, b"b", b"2", true), (12, b"c", &[7u8; 3000], false)],
        );
        seg[end - 4096 + 100] ^= 1; // inside c's value: the whole second batch goes
        let (k, how) = keys(&seg, 10);
        assert_eq!(k, vec![b"a".to_vec()]);
        assert_eq!(how, ScanEnd::Torn);
    }

    #[test]
    fn batches_of_an_older_life_are_not_replayed() {
        let mut seg = vec![0u8; 64 * 1024];
        let mut pos = SEGMENT_HEADER_BYTES;
        for lsn in 5..8u64 {
            pos = batch_of(&mut seg, pos, &UUID, 3, &[(lsn, b"old", b"x", true)]);
        }
        // The new life (sequence 9) writes one batch over the first old one. The old
        // batches after it check out as batches of this store, but of incarnation 3.
        batch_of(
            &mut seg,
            SEGMENT_HEADER_BYTES,
            &UUID,
            9,
            &[(50, b"new", b"y", true)],
        );
        let (k, summary) = keys_in(&seg, life(9, 50));
        assert_eq!(k, vec![b"new".to_vec()]);
        assert_eq!(summary.how, ScanEnd::Clean);
        // Even with LSNs that would follow (an emptied store whose LSNs began again).
        let mut seg = vec![0u8; 64 * 1024];
        let next = batch_of(
            &mut seg,
            SEGMENT_HEADER_BYTES,
            &UUID,
            9,
            &[(1, b"new", b"y", true)],
        );
        batch_of(&mut seg, next, &UUID, 3, &[(2, b"old", b"x", true)]);
        assert_eq!(keys_in(&seg, life(9, 1)).0, vec![b"new".to_vec()]);
    }

    #[test]
    fn a_batch_forged_without_the_store_uuid_is_not_replayed() {
        // A client's value laid out as a batch (CRC32C is public), but it cannot know the
        // store's uuid.
        let mut seg = vec![0u8; 64 * 1024];
        let next = batch(&mut seg, SEGMENT_HEADER_BYTES, &[(10, b"a", b"1", true)]);
        batch_of(&mut seg, next, &[0; 16], 1, &[(11, b"victim", b"forged", true)]);
        let (k, how) = keys(&seg, 10);
        assert_eq!(k, vec![b"a".to_vec()]);
        assert_eq!(how, ScanEnd::Torn);
    }

    #[test]
    fn lsns_that_do_not_follow_are_reported_and_replayed_past() {
        // Issue 16: a batch with unexpected LSNs used to end the scan as if it were the end
        // of the log, hiding every acknowledged batch after it.
        let mut seg = vec![0u8; 64 * 1024];
        let mut pos = batch(&mut seg, SEGMENT_HEADER_BYTES, &[(10, b"a", b"1", true)]);
        pos = batch(&mut seg, pos, &[(4, b"odd", b"2", true)]);
        batch(&mut seg, pos, &[(11, b"b", b"3", true)]);
        let (k, summary) = keys_in(&seg, life(1, 10));
        assert_eq!(k, vec![b"a".to_vec(), b"odd".to_vec(), b"b".to_vec()]);
        assert_eq!(summary.how, ScanEnd::Clean);
        assert_eq!(summary.lsn_anomalies, 1);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 1u64;
        for round in 0..300 {
            let mut seg = vec![0u8; 16384];
            batch(
                &mut seg,
                SEGMENT_HEADER_BYTES,
                &[(1, b"k", &[3u8; 100], true), (2, b"l", &[4u8; 5000], false)],
            );
            // Damage a few random bytes, sometimes many.
            let n = if round % 10 == 0 { 4000 } else { 1 + round % 7 };
            for _ in 0..n {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let at = (state >> 33) as usize % seg.len();
                seg[at] = (state >> 20) as u8;
            }
            let _ = keys(&seg, 1);
        }
    }
}
