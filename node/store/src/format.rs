//! The on-disk format of a shard's region: superblock, segment header and record header.
//! All integers are little-endian; every structure carries a CRC32C.
//!
//! ```text
//! region:  [superblock copy 0][superblock copy 1][segment 0][segment 1]...
//! segment: [segment header, 64 B][batch][batch]...          (batches start on blocks)
//! batch:   [batch header][record header + key (+ small value)]...[pad][large values]
//! ```
//!
//! Large values start on a block boundary so that a get reads exactly the value's blocks
//! and checks it against the CRC32C that the index keeps.

/// Version of the format this code writes and reads. 2: batch headers carry their
/// segment's sequence number and their CRC covers the store's uuid; a freed segment keeps a
/// header that records the LSN and sequence high-water marks; a record header (48 bytes)
/// carries its object's partition. 3: a record header carries its object's expiry (bytes
/// 42..48, zero in version 2, so a version-2 store is upgraded at open by rewriting its
/// superblock: a version-2 build then refuses it instead of misreading an expiry).
pub const FORMAT_VERSION: u32 = 3;
/// The oldest format this build opens (and upgrades).
pub const OLDEST_READABLE_FORMAT: u32 = 2;
/// Largest expiry a record holds: 48 bits of Unix milliseconds (the year 10889).
pub const MAX_EXPIRES_MS: u64 = (1 << 48) - 1;
/// Size of one superblock copy; two copies sit at the start of the region.
pub const SUPERBLOCK_BYTES: u64 = 4096;
/// Where segment 0 starts within the region.
pub const SEGMENTS_START: u64 = 2 * SUPERBLOCK_BYTES;
pub const SEGMENT_HEADER_BYTES: usize = 64;
pub const RECORD_HEADER_BYTES: usize = 48;
pub const BATCH_HEADER_BYTES: usize = 48;
/// A tombstone's value: the LSN at which the delete was first written.
pub const TOMBSTONE_VALUE_BYTES: usize = 8;

const SUPERBLOCK_MAGIC: [u8; 8] = *b"HSHARDSB";
const SEGMENT_MAGIC: [u8; 8] = *b"HSSEGMT1";
/// "HSR2" as a little-endian u32.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"HSR2");
/// "HSB1" as a little-endian u32.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"HSB1");

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// What a shard's region is: written once at format time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub block_size: u32,
    pub uuid: [u8; 16],
    pub created_unix_secs: u64,
    pub shard_index: u32,
    pub shard_count: u32,
    pub region_bytes: u64,
    pub segment_bytes: u64,
    pub segment_count: u32,
    pub partition_bits: u8,
    /// The format version it was written with (encode always writes `FORMAT_VERSION`).
    pub format_version: u32,
}

impl Superblock {
    const ENCODED: usize = 76;

    pub fn encode(&self, out: &mut [u8]) {
        out[..Self::ENCODED].fill(0);
        out[0..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        out[16..32].copy_from_slice(&self.uuid);
        out[32..40].copy_from_slice(&self.created_unix_secs.to_le_bytes());
        out[40..44].copy_from_slice(&self.shard_index.to_le_bytes());
        out[44..48].copy_from_slice(&self.shard_count.to_le_bytes());
        out[48..56].copy_from_slice(&self.region_bytes.to_le_bytes());
        out[56..64].copy_from_slice(&self.segment_bytes.to_le_bytes());
        out[64..68].copy_from_slice(&self.segment_count.to_le_bytes());
        out[68] = self.partition_bits;
        let c = crc(&out[..72]);
        out[72..76].copy_from_slice(&c.to_le_bytes());
    }

    /// Both copies at the start of a region (`head` holds its first `SEGMENTS_START`
    /// bytes), each decoded as by `decode`.
    pub fn decode_copies(head: &[u8]) -> [Result<Option<Superblock>, String>; 2] {
        let at = SUPERBLOCK_BYTES as usize;
        [Self::decode(&head[..at]), Self::decode(&head[at..])]
    }

    /// `Ok(None)` for a never-formatted region (no magic); an error for a damaged or
    /// foreign one.
    pub fn decode(b: &[u8]) -> Result<Option<Superblock>, String> {
        if b.len() < Self::ENCODED || b[0..8] != SUPERBLOCK_MAGIC {
            return Ok(None);
        }
        if crc(&b[..72]) != u32_at(b, 72) {
            return Err("superblock checksum mismatch".into());
        }
        let version = u32_at(b, 8);
        if !(OLDEST_READABLE_FORMAT..=FORMAT_VERSION).contains(&version) {
            return Err(format!(
                "format version {version}; this build reads {OLDEST_READABLE_FORMAT} to {FORMAT_VERSION}"
            ));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        Ok(Some(Superblock {
            block_size: u32_at(b, 12),
            uuid,
            created_unix_secs: u64_at(b, 32),
            shard_index: u32_at(b, 40),
            shard_count: u32_at(b, 44),
            region_bytes: u64_at(b, 48),
            segment_bytes: u64_at(b, 56),
            segment_count: u32_at(b, 64),
            partition_bits: b[68],
            format_version: version,
        }))
    }
}

/// Starts every segment that has ever been written. A segment in use holds the log of one
/// incarnation; a freed one (`freed`) holds no log, only the high-water marks, so that LSNs
/// and sequence numbers never restart even when every segment is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Order in which segments were opened for writing (freed: the last one opened).
    pub seq: u64,
    /// Every record in this incarnation of the segment has an LSN at least this (freed:
    /// the next LSN the store would have given when the segment was freed).
    pub first_lsn: u64,
    pub segment_index: u32,
    pub uuid: [u8; 16],
    /// GC gave the segment back: nothing in it is replayed.
    pub freed: bool,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut [u8]) {
        out[..SEGMENT_HEADER_BYTES].fill(0);
        out[0..8].copy_from_slice(&SEGMENT_MAGIC);
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[24..28].copy_from_slice(&self.segment_index.to_le_bytes());
        out[28] = self.freed as u8;
        out[32..48].copy_from_slice(&self.uuid);
        let c = crc(&out[..48]);
        out[48..52].copy_from_slice(&c.to_le_bytes());
    }

    /// The header if `b` starts with a valid one for this region and segment.
    pub fn decode(b: &[u8], uuid: &[u8; 16], segment_index: u32) -> Option<SegmentHeader> {
        if b.len() < SEGMENT_HEADER_BYTES || b[0..8] != SEGMENT_MAGIC || crc(&b[..48]) != u32_at(b, 48) {
            return None;
        }
        if b[28] > 1 {
            return None;
        }
        let h = SegmentHeader {
            seq: u64_at(b, 8),
            first_lsn: u64_at(b, 16),
            segment_index: u32_at(b, 24),
            uuid: b[32..48].try_into().ok()?,
            freed: b[28] == 1,
        };
        (h.uuid == *uuid && h.segment_index == segment_index).then_some(h)
    }
}

/// Put or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Put = 1,
    Tombstone = 2,
}

/// Heads every group-commit batch. A batch is all-or-nothing at recovery: it is replayed
/// only if its header, every record header and every value check out.
///
/// A batch is bound to the incarnation of the segment that wrote it: it carries the
/// segment's sequence number, and its CRC also covers the store's uuid (which never leaves
/// the node). Bytes that merely look like a batch (a value a client chose, or the log of an
/// earlier life of a reused segment) do not pass as one.
///
/// ```text
/// batch: [batch header 48 B][record header 48 B + key (+ inline value)]... [zeros to a block]
///        [value area: each large value starts on a block boundary, padded to a block]
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub record_count: u32,
    /// Bytes from the batch start to the end of the last record header (and inline value).
    pub meta_len: u32,
    /// Whole batch, block aligned: meta area rounded up, then the value area.
    pub batch_len: u32,
    pub first_lsn: u64,
    pub last_lsn: u64,
    /// Sequence number of the segment incarnation that wrote the batch.
    pub segment_seq: u64,
}

/// CRC32C of a batch header's fields (bytes 8..48), then of the store's uuid.
fn batch_crc(fields: &[u8], uuid: &[u8; 16]) -> u32 {
    crc32c::crc32c_append(crc(fields), uuid)
}

/// Why bytes are not a valid batch or record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// No magic: never-written space or the end of the log.
    NoRecord,
    /// Lengths impossible under the limits or past the end of the space.
    BadLength,
    /// The checksum does not match: torn or corrupted.
    Checksum,
    /// Unknown kind byte or flag.
    BadKind,
}

impl BatchHeader {
    pub fn encode(&self, uuid: &[u8; 16], out: &mut [u8]) {
        out[..BATCH_HEADER_BYTES].fill(0);
        out[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        out[8..12].copy_from_slice(&self.record_count.to_le_bytes());
        out[12..16].copy_from_slice(&self.meta_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.batch_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.first_lsn.to_le_bytes());
        out[32..40].copy_from_slice(&self.last_lsn.to_le_bytes());
        out[40..48].copy_from_slice(&self.segment_seq.to_le_bytes());
        let c = batch_crc(&out[8..BATCH_HEADER_BYTES], uuid);
        out[4..8].copy_from_slice(&c.to_le_bytes());
    }

    /// Checks the header against the store's uuid. A batch of an older incarnation of the
    /// segment passes here; the caller compares `segment_seq` with the segment's own.
    pub fn decode(b: &[u8], uuid: &[u8; 16]) -> Result<BatchHeader, RecordError> {
        if b.len() < BATCH_HEADER_BYTES || u32_at(b, 0) != BATCH_MAGIC {
            return Err(RecordError::NoRecord);
        }
        if batch_crc(&b[8..BATCH_HEADER_BYTES], uuid) != u32_at(b, 4) {
            return Err(RecordError::Checksum);
        }
        let h = BatchHeader {
            record_count: u32_at(b, 8),
            meta_len: u32_at(b, 12),
            batch_len: u32_at(b, 16),
            first_lsn: u64_at(b, 24),
            last_lsn: u64_at(b, 32),
            segment_seq: u64_at(b, 40),
        };
        if (h.meta_len as usize) < BATCH_HEADER_BYTES
            || h.batch_len < h.meta_len
            || h.last_lsn < h.first_lsn
            || h.record_count == 0
        {
            return Err(RecordError::BadLength);
        }
        Ok(h)
    }
}

/// The fixed part of a record; the key follows it, then the value if it is inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    /// The value follows the key (small values) instead of sitting in the value area.
    pub inline: bool,
    pub key_len: u16,
    pub value_len: u32,
    /// Log sequence number: strictly increasing within a shard.
    pub lsn: u64,
    /// Per-key version: the LSN of the write that created it (kept when GC moves it).
    pub version: u64,
    /// Inline: offset of the value from the batch start. Otherwise: offset in the value area.
    pub value_at: u32,
    /// CRC32C of the value bytes.
    pub value_crc: u32,
    /// The object's partition, as its writer named it: recovery, GC and replication keep
    /// it without knowing how keys are placed.
    pub partition: u16,
    /// When the object expires, Unix milliseconds (48 bits); 0: never.
    pub expires_ms: u64,
}

impl RecordHeader {
    /// Bytes in the meta area: header, key and an inline value.
    pub fn meta_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.key_len as usize + if self.inline { self.value_len as usize } else { 0 }
    }

    /// Writes the header and key into `out` (at least `RECORD_HEADER_BYTES + key.len()`).
    pub fn encode(&self, key: &[u8], out: &mut [u8]) {
        debug_assert_eq!(key.len(), self.key_len as usize);
        out[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        out[8] = self.kind as u8;
        out[9] = self.inline as u8;
        out[10..12].copy_from_slice(&self.key_len.to_le_bytes());
        out[12..16].copy_from_slice(&self.value_len.to_le_bytes());
        out[16..24].copy_from_slice(&self.lsn.to_le_bytes());
        out[24..32].copy_from_slice(&self.version.to_le_bytes());
        out[32..36].copy_from_slice(&self.value_at.to_le_bytes());
        out[36..40].copy_from_slice(&self.value_crc.to_le_bytes());
        out[40..42].copy_from_slice(&self.partition.to_le_bytes());
        debug_assert!(self.expires_ms <= MAX_EXPIRES_MS);
        out[42..48].copy_from_slice(&self.expires_ms.to_le_bytes()[..6]);
        let k_end = RECORD_HEADER_BYTES + key.len();
        out[RECORD_HEADER_BYTES..k_end].copy_from_slice(key);
        let c = crc(&out[8..k_end]);
        out[4..8].copy_from_slice(&c.to_le_bytes());
    }

    /// Reads and checks the header and key at the start of `b` (lengths against the
    /// limits and `b`, then the CRC over header and key).
    pub fn decode(b: &[u8], max_key: usize, max_value: usize) -> Result<RecordHeader, RecordError> {
        if b.len() < RECORD_HEADER_BYTES || u32_at(b, 0) != RECORD_MAGIC {
            return Err(RecordError::NoRecord);
        }
        let kind = match b[8] {
            1 => RecordKind::Put,
            2 => RecordKind::Tombstone,
            _ => return Err(RecordError::BadKind),
        };
        if b[9] > 1 {
            return Err(RecordError::BadKind);
        }
        let h = RecordHeader {
            kind,
            inline: b[9] == 1,
            key_len: u16::from_le_bytes([b[10], b[11]]),
            value_len: u32_at(b, 12),
            lsn: u64_at(b, 16),
            version: u64_at(b, 24),
            value_at: u32_at(b, 32),
            value_crc: u32_at(b, 36),
            partition: u16::from_le_bytes([b[40], b[41]]),
            expires_ms: {
                let mut e = [0u8; 8];
                e[..6].copy_from_slice(&b[42..48]);
                u64::from_le_bytes(e)
            },
        };
        let value_ok = match kind {
            RecordKind::Put => h.value_len as usize <= max_value,
            RecordKind::Tombstone => h.value_len as usize == TOMBSTONE_VALUE_BYTES && h.inline,
        };
        if h.key_len == 0 || h.key_len as usize > max_key || !value_ok {
            return Err(RecordError::BadLength);
        }
        let k_end = RECORD_HEADER_BYTES + h.key_len as usize;
        if b.len() < k_end {
            return Err(RecordError::BadLength);
        }
        if crc(&b[8..k_end]) != u32_at(b, 4) {
            return Err(RecordError::Checksum);
        }
        Ok(h)
    }
}

/// CRC32C of a value, as stored in its record header and in the index.
pub fn value_crc(value: &[u8]) -> u32 {
    crc(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_record_and_batch_bytes() {
        let h = RecordHeader {
            kind: RecordKind::Put,
            inline: true,
            key_len: 3,
            value_len: 5,
            lsn: 7,
            version: 7,
            value_at: 0x5b,
            value_crc: value_crc(b"value"),
            partition: 0x0a0b,
            expires_ms: 1_800_000_000_123,
        };
        let mut out = vec![0u8; h.meta_len()];
        h.encode(b"key", &mut out);
        out[51..].copy_from_slice(b"value");
        assert_eq!(
            hex(&out),
            concat!(
                "48535232",
                // CRC32C of bytes 8..51, computed apart from this code (a bitwise
                // Castagnoli in Python) from the bytes below.
                "d8b90eee",
                "01",
                "01",
                "0300",
                "05000000",
                "0700000000000000",
                "0700000000000000",
                "5b000000",
                "6303e0e1",
                "0b0a",
                "7b505c18a301",
                "6b6579",
                "76616c7565"
            )
        );
        let back = RecordHeader::decode(&out, 1024, 1 << 23).unwrap();
        assert_eq!(back, h);

        let b = BatchHeader {
            record_count: 2,
            meta_len: 200,
            batch_len: 8192,
            first_lsn: 7,
            last_lsn: 8,
            segment_seq: 5,
        };
        let uuid = [0x11; 16];
        let mut out = [0u8; BATCH_HEADER_BYTES];
        b.encode(&uuid, &mut out);
        assert_eq!(
            hex(&out),
            concat!(
                "48534231",
                "ff697395",
                "02000000",
                "c8000000",
                "00200000",
                "00000000",
                "0700000000000000",
                "0800000000000000",
                "0500000000000000"
            )
        );
        assert_eq!(BatchHeader::decode(&out, &uuid), Ok(b));
        assert_eq!(
            BatchHeader::decode(&out, &[0x12; 16]),
            Err(RecordError::Checksum),
            "another store's batch"
        );
    }

    #[test]
    fn golden_segment_header_bytes() {
        let h = SegmentHeader {
            seq: 9,
            first_lsn: 100,
            segment_index: 3,
            uuid: [0x11; 16],
            freed: false,
        };
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        h.encode(&mut out);
        assert_eq!(
            hex(&out),
            concat!(
                "4853534547 4d5431",
                "0900000000000000",
                "6400000000000000",
                "03000000",
                "00000000",
                "11111111111111111111111111111111",
                "e9ea1dd1",
                "000000000000000000000000"
            )
            .replace(' ', "")
        );
        assert_eq!(u32_at(&out, 48), crc(&out[..48]));
        assert_eq!(SegmentHeader::decode(&out, &[0x11; 16], 3), Some(h));
        assert_eq!(
            SegmentHeader::decode(&out, &[0x12; 16], 3),
            None,
            "foreign region"
        );
        assert_eq!(SegmentHeader::decode(&out, &[0x11; 16], 4), None, "wrong slot");
        let freed = SegmentHeader { freed: true, ..h };
        freed.encode(&mut out);
        assert_eq!(out[28], 1);
        assert_eq!(SegmentHeader::decode(&out, &[0x11; 16], 3), Some(freed));
    }

    #[test]
    fn golden_superblock_bytes() {
        let sb = Superblock {
            block_size: 4096,
            uuid: [0xab; 16],
            created_unix_secs: 1_800_000_000,
            shard_index: 1,
            shard_count: 2,
            region_bytes: 1 << 30,
            segment_bytes: 16 << 20,
            segment_count: 63,
            partition_bits: 12,
            format_version: FORMAT_VERSION,
        };
        let mut out = [0u8; 4096];
        sb.encode(&mut out);
        assert_eq!(&out[0..8], b"HSHARDSB");
        assert_eq!(
            hex(&out[8..72]),
            concat!(
                "03000000",
                "00100000",
                "abababababababababababababababab",
                "00d2496b00000000",
                "01000000",
                "02000000",
                "0000004000000000",
                "0000000100000000",
                "3f000000",
                "0c000000"
            )
        );
        assert_eq!(Superblock::decode(&out).unwrap(), Some(sb));
        out[20] ^= 1;
        assert!(Superblock::decode(&out).is_err());
        assert_eq!(Superblock::decode(&[0u8; 4096]).unwrap(), None);
    }

    #[test]
    fn damaged_records_are_rejected() {
        let h = RecordHeader {
            kind: RecordKind::Put,
            inline: false,
            key_len: 1,
            value_len: 4,
            lsn: 1,
            version: 1,
            value_at: 0,
            value_crc: 0,
            partition: 3,
            expires_ms: 0,
        };
        let mut out = vec![0u8; RECORD_HEADER_BYTES + 1];
        h.encode(b"k", &mut out);
        let mut flipped = out.clone();
        flipped[RECORD_HEADER_BYTES] ^= 0x10;
        assert_eq!(
            RecordHeader::decode(&flipped, 1024, 100),
            Err(RecordError::Checksum)
        );
        assert_eq!(RecordHeader::decode(&out, 1024, 3), Err(RecordError::BadLength));
        let mut bad_kind = out.clone();
        bad_kind[8] = 9;
        assert_eq!(
            RecordHeader::decode(&bad_kind, 1024, 100),
            Err(RecordError::BadKind)
        );
        assert_eq!(
            RecordHeader::decode(&[0u8; 64], 1024, 100),
            Err(RecordError::NoRecord)
        );
        assert_eq!(
            RecordHeader::decode(&out[..10], 1024, 100),
            Err(RecordError::NoRecord)
        );
        assert_eq!(
            RecordHeader::decode(&out[..RECORD_HEADER_BYTES], 1024, 100),
            Err(RecordError::BadLength)
        );
        let mut expiry = out.clone();
        expiry[45] = 1;
        assert_eq!(
            RecordHeader::decode(&expiry, 1024, 100),
            Err(RecordError::Checksum),
            "the CRC covers the expiry"
        );
        let mut moved = out.clone();
        moved[40] ^= 1;
        assert_eq!(
            RecordHeader::decode(&moved, 1024, 100),
            Err(RecordError::Checksum),
            "the CRC covers the partition"
        );
        let b = BatchHeader {
            record_count: 1,
            meta_len: 40,
            batch_len: 4096,
            first_lsn: 1,
            last_lsn: 1,
            segment_seq: 1,
        };
        let mut bb = [0u8; BATCH_HEADER_BYTES];
        b.encode(&[0; 16], &mut bb);
        assert_eq!(
            BatchHeader::decode(&bb, &[0; 16]),
            Err(RecordError::BadLength),
            "meta shorter than its header"
        );
        let empty = BatchHeader {
            record_count: 0,
            meta_len: 48,
            ..b
        };
        let mut eb = [0u8; BATCH_HEADER_BYTES];
        empty.encode(&[0; 16], &mut eb);
        assert_eq!(
            BatchHeader::decode(&eb, &[0; 16]),
            Err(RecordError::BadLength),
            "a batch holds at least one record"
        );
        bb[9] ^= 1;
        assert_eq!(BatchHeader::decode(&bb, &[0; 16]), Err(RecordError::Checksum));
    }
}
