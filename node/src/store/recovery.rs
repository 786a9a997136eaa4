//! Opening a store: read (or write) the superblock, find the written segments, scan them
//! in the order they were written, and rebuild the index.

use std::collections::HashMap;
use std::time::Instant;

use hotshard_nvme::{BlockQueue, Durability};

use super::cache::Cache;
use super::config::StoreConfig;
use super::engine::{State, Store};
use super::error::{StoreError, StoreResult};
use super::format::{
    RecordKind, SegmentHeader, Superblock, RECORD_HEADER_BYTES, SEGMENTS_START, SUPERBLOCK_BYTES,
};
use super::group_commit::Writer;
use super::index::{Index, IndexEntry};
use super::scan::{scan_segment, ScanEnd};
use super::segments::SegmentTable;

/// What opening the store found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub formatted: bool,
    pub segments_scanned: u32,
    pub records_replayed: u64,
    pub objects: usize,
    pub live_bytes: u64,
    pub bytes_scanned: u64,
    pub torn_tails: u32,
    pub seconds: f64,
}

fn new_uuid() -> [u8; 16] {
    let mut uuid = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut uuid))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let a = xxhash_rust::xxh3::xxh3_64(&t.as_nanos().to_le_bytes());
        let b = xxhash_rust::xxh3::xxh3_64(&std::process::id().to_le_bytes()) ^ a.rotate_left(17);
        uuid[..8].copy_from_slice(&a.to_le_bytes());
        uuid[8..].copy_from_slice(&b.to_le_bytes());
    }
    uuid
}

impl<Q: BlockQueue> Store<Q> {
    /// Opens the store in `cfg`'s region of `queue`'s device, formatting an empty region
    /// if allowed, and recovers the index.
    pub async fn open(queue: Q, mut cfg: StoreConfig) -> StoreResult<(Store<Q>, RecoveryReport)> {
        let started = Instant::now();
        let block = queue.info().logical_block_size.max(4096) as u64;
        cfg.validate(block)?;
        if cfg.region_offset + cfg.region_bytes > queue.info().size {
            return Err(StoreError::Open(format!(
                "region {}+{} is past the end of the device ({} bytes)",
                cfg.region_offset,
                cfg.region_bytes,
                queue.info().size
            )));
        }
        let mut report = RecoveryReport::default();
        let buf = queue.pool().alloc(SEGMENTS_START as usize).await?;
        let buf = queue.read_at(cfg.region_offset, buf).await?;
        let copies = [
            Superblock::decode(&buf[..SUPERBLOCK_BYTES as usize]),
            Superblock::decode(&buf[SUPERBLOCK_BYTES as usize..]),
        ];
        drop(buf);
        let sb = match copies {
            [Ok(Some(sb)), _] | [_, Ok(Some(sb))] => sb,
            [Ok(None), Ok(None)] if cfg.format_if_empty => {
                report.formatted = true;
                Self::format(&queue, &cfg).await?
            }
            [Ok(None), Ok(None)] => return Err(StoreError::Open("the region holds no store".into())),
            [Err(e), _] | [_, Err(e)] => return Err(StoreError::Open(format!("damaged superblock: {e}"))),
        };
        if sb.segment_bytes != cfg.segment_bytes
            || sb.partition_bits != cfg.partition_bits
            || sb.region_bytes > cfg.region_bytes
        {
            // The layout on the device wins over the configuration for segment size; the
            // partition count is fixed at creation and must match.
            if sb.partition_bits != cfg.partition_bits {
                return Err(StoreError::Open(format!(
                    "the store has 2^{} partitions; the configuration says 2^{}",
                    sb.partition_bits, cfg.partition_bits
                )));
            }
            if sb.region_bytes > cfg.region_bytes {
                return Err(StoreError::Open(format!(
                    "the store needs {} bytes; the configured region has {}",
                    sb.region_bytes, cfg.region_bytes
                )));
            }
            cfg.segment_bytes = sb.segment_bytes;
            cfg.validate(block)?;
        }
        let mut segments = SegmentTable::new(
            sb.segment_count,
            cfg.region_offset + SEGMENTS_START,
            sb.segment_bytes,
        );
        let mut index = Index::default();
        let mut max_lsn = 0u64;

        // Find written segments by their headers, then replay them in the order written.
        let mut found = Vec::new();
        for seg in 0..sb.segment_count {
            let head = queue.pool().alloc(block as usize).await?;
            let head = queue.read_at(segments.device_offset(seg), head).await?;
            if let Some(h) = SegmentHeader::decode(&head, &sb.uuid, seg) {
                found.push(h);
            }
        }
        found.sort_by_key(|h| h.seq);
        let mut live: HashMap<u32, u64> = HashMap::new();
        for h in &found {
            let seg = h.segment_index;
            let image = queue.pool().alloc(sb.segment_bytes as usize).await?;
            let image = queue.read_at(segments.device_offset(seg), image).await?;
            report.bytes_scanned += image.len() as u64;
            report.segments_scanned += 1;
            let mut records = 0u64;
            let (end, how) = scan_segment(
                &image,
                h.first_lsn,
                block as usize,
                cfg.max_key_bytes,
                cfg.max_value_bytes,
                |off, rh, rec| {
                    records += 1;
                    max_lsn = max_lsn.max(rh.lsn);
                    let key = &rec[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + rh.key_len as usize];
                    let entry = IndexEntry {
                        version: rh.version,
                        segment: seg,
                        offset: off,
                        record_len: rh.record_len() as u32,
                        partition: rh.partition as u16,
                        tombstone: rh.kind == RecordKind::Tombstone,
                    };
                    // A GC copy keeps its version; never let an older version win.
                    if index.get(key).is_some_and(|old| old.version > entry.version) {
                        return;
                    }
                    if let Some(old) = index.insert(key, entry) {
                        let l = live.entry(old.segment).or_default();
                        *l = l.saturating_sub(old.record_len as u64);
                    }
                    *live.entry(seg).or_default() += entry.record_len as u64;
                },
            );
            report.records_replayed += records;
            if how == ScanEnd::Torn {
                report.torn_tails += 1;
            }
            max_lsn = max_lsn.max(h.first_lsn);
            segments.restore(seg, h.seq, h.first_lsn, (end as u64).div_ceil(block) * block);
        }
        for (seg, bytes) in live {
            segments.add_live(seg, bytes);
        }
        report.objects = index.live_objects();
        report.live_bytes = segments.live_bytes();
        let state = State {
            index,
            segments,
            pending: HashMap::default(),
            writer: Writer::new(max_lsn + 1),
            cache: Cache::new(cfg.cache_bytes),
        };
        let store = Store::from_parts(queue, cfg, sb.uuid, state);
        report.seconds = started.elapsed().as_secs_f64();
        Ok((store, report))
    }

    async fn format(queue: &Q, cfg: &StoreConfig) -> StoreResult<Superblock> {
        let sb = Superblock {
            block_size: queue.info().logical_block_size.max(4096),
            uuid: new_uuid(),
            created_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            shard_index: cfg.shard_index,
            shard_count: cfg.shard_count,
            region_bytes: cfg.region_bytes,
            segment_bytes: cfg.segment_bytes,
            segment_count: cfg.segment_count(),
            partition_bits: cfg.partition_bits,
        };
        let mut buf = queue.pool().alloc(SEGMENTS_START as usize).await?;
        buf.fill(0);
        sb.encode(&mut buf[..SUPERBLOCK_BYTES as usize]);
        sb.encode(&mut buf[SUPERBLOCK_BYTES as usize..]);
        queue.write_at(cfg.region_offset, buf, Durability::Fua).await?;
        Ok(sb)
    }
}
