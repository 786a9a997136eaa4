//! Walking the records of one segment image: shared by recovery and GC. Stops cleanly at
//! the end of the written log or at the first record that is torn or damaged.

use super::format::{RecordError, RecordHeader, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Why a scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// Never-written or padded space at a batch boundary: the log ends here.
    Clean,
    /// A record failed its checks (torn write or corruption).
    Torn,
    /// The end of the segment.
    Full,
}

/// Calls `f(offset, header, record_bytes)` for each valid record of a segment whose
/// header said `first_lsn`, in order; returns where and why it stopped.
pub fn scan_segment(
    seg: &[u8],
    first_lsn: u64,
    block: usize,
    max_key: usize,
    max_value: usize,
    mut f: impl FnMut(u32, &RecordHeader, &[u8]),
) -> (usize, ScanEnd) {
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut last_lsn = first_lsn.saturating_sub(1);
    let mut started = false;
    loop {
        if pos + RECORD_HEADER_BYTES > seg.len() {
            return (seg.len(), ScanEnd::Full);
        }
        match RecordHeader::decode(&seg[pos..], max_key, max_value) {
            Err(RecordError::NoRecord) => {
                // A batch starts at a block boundary; zeros before the boundary are padding.
                if pos.is_multiple_of(block) {
                    return (pos, ScanEnd::Clean);
                }
                pos = pos.div_ceil(block) * block;
            }
            Err(_) => return (pos, ScanEnd::Torn),
            Ok(h) => {
                let len = h.record_len();
                let stale = started && h.lsn <= last_lsn || h.lsn < first_lsn;
                if pos + len > seg.len() || stale || h.verify(&seg[pos..]).is_err() {
                    // A record from an older life of this segment is where the new log ends.
                    return (pos, if stale { ScanEnd::Clean } else { ScanEnd::Torn });
                }
                f(pos as u32, &h, &seg[pos..pos + len]);
                last_lsn = h.lsn;
                started = true;
                pos += len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::RecordKind;
    use super::*;

    fn put(seg: &mut [u8], at: usize, lsn: u64, key: &[u8], value: &[u8]) -> usize {
        let h = RecordHeader {
            kind: RecordKind::Put,
            key_len: key.len() as u16,
            value_len: value.len() as u32,
            lsn,
            version: 1,
            partition: 0,
        };
        h.encode_record(key, value, &mut seg[at..at + h.record_len()]);
        at + h.record_len()
    }

    fn keys(seg: &[u8], first_lsn: u64) -> (Vec<Vec<u8>>, ScanEnd) {
        let mut out = Vec::new();
        let (_, end) = scan_segment(seg, first_lsn, 4096, 1024, 1 << 20, |_, h, rec| {
            out.push(rec[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + h.key_len as usize].to_vec())
        });
        (out, end)
    }

    #[test]
    fn scans_across_padding_and_stops_at_the_end() {
        let mut seg = vec![0u8; 64 * 1024];
        let end = put(&mut seg, SEGMENT_HEADER_BYTES, 10, b"a", b"1");
        assert!(end < 4096);
        put(&mut seg, 4096, 11, b"b", &[2; 5000]); // next batch, next block
        let (k, how) = keys(&seg, 10);
        assert_eq!(k, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(how, ScanEnd::Clean);
    }

    #[test]
    fn a_torn_record_ends_the_scan() {
        let mut seg = vec![0u8; 16 * 1024];
        let next = put(&mut seg, SEGMENT_HEADER_BYTES, 10, b"a", b"1");
        let after = put(&mut seg, next, 11, b"b", &[2; 600]);
        put(&mut seg, after, 12, b"c", b"3");
        seg[next + RECORD_HEADER_BYTES + 100] ^= 1; // inside b's value
        let (k, how) = keys(&seg, 10);
        assert_eq!(k, vec![b"a".to_vec()]);
        assert_eq!(how, ScanEnd::Torn);
    }

    #[test]
    fn records_of_an_older_life_are_not_replayed() {
        let mut seg = vec![0u8; 16 * 1024];
        // The previous incarnation wrote lsn 5..7; the new one starts at 50 and wrote one.
        let mut at = SEGMENT_HEADER_BYTES;
        for (i, k) in [b"x", b"y", b"z"].iter().enumerate() {
            at = put(&mut seg, at, 5 + i as u64, *k, b"old");
        }
        let next = put(&mut seg, SEGMENT_HEADER_BYTES, 50, b"n", b"new");
        assert!(next < at);
        let (k, how) = keys(&seg, 50);
        assert_eq!(
            k,
            vec![b"n".to_vec()],
            "stale records after the new log are ignored"
        );
        assert_eq!(how, ScanEnd::Clean, "a stale record marks the end of the new log");
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 1u64;
        for _ in 0..200 {
            let mut seg = vec![0u8; 8192];
            for b in seg.iter_mut() {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (state >> 56) as u8;
            }
            // A valid magic in random places makes the decoder work harder.
            seg[64..68].copy_from_slice(&super::super::format::RECORD_MAGIC.to_le_bytes());
            let _ = keys(&seg, 0);
        }
    }
}
