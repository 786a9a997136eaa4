//! Opening a store: read (or write) the superblock, find the written segments, scan them
//! in the order they were written, and rebuild the index.

use std::time::Instant;

use hotshard_nvme::queue::join_all;
use hotshard_nvme::{BlockQueue, Durability};

use super::cache::Cache;
use super::config::StoreConfig;
use super::engine::Store;
use super::error::{StoreError, StoreResult};
use super::format::{
    RecordKind, SegmentHeader, Superblock, FORMAT_VERSION, SEGMENTS_START, SUPERBLOCK_BYTES,
};
use super::group_commit::live_size;
use super::group_commit::Writer;
use super::index::{Index, IndexEntry, Upsert};
use super::scan::{scan_segment, ScanEnd, ScanLimits, SegmentLife};
use super::segments::SegmentTable;
use super::state::State;

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
    /// Batches whose LSNs did not follow the ones before them in their segment; replayed
    /// anyway (see `scan_segment`). Nonzero means a defect or corruption to look into.
    pub lsn_anomalies: u32,
    /// Freed segments whose marks were read for the LSN and sequence high-water marks.
    pub freed_marks: u32,
    /// The format version the store was written in, when it was older and upgraded.
    pub upgraded_from: Option<u32>,
    pub seconds: f64,
}

/// Segment headers read at once when looking for written segments.
const HEADER_READS_IN_FLIGHT: usize = 32;

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
        let copies = Superblock::decode_copies(&buf);
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
        if (sb.shard_index, sb.shard_count) != (cfg.shard_index, cfg.shard_count) {
            // Regions are cut from the device by shard count: another count puts this region
            // over other shards' data, and keys would be looked for on the wrong shard.
            return Err(StoreError::Open(format!(
                "this region holds shard {} of {}; the node runs it as shard {} of {}",
                sb.shard_index, sb.shard_count, cfg.shard_index, cfg.shard_count
            )));
        }
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
        // A superblock passed its checksum, but its layout must still fit its own region:
        // nothing read from the disk may send I/O outside this shard's region.
        let layout_end = (sb.segment_count as u64)
            .checked_mul(sb.segment_bytes)
            .and_then(|b| b.checked_add(SEGMENTS_START));
        if layout_end.is_none_or(|end| end > sb.region_bytes) || sb.block_size as u64 != block {
            return Err(StoreError::Open(format!(
                "superblock layout does not fit its region ({} segments of {} bytes in {} bytes, block {})",
                sb.segment_count, sb.segment_bytes, sb.region_bytes, sb.block_size
            )));
        }
        if sb.format_version < FORMAT_VERSION {
            // Version 2 records read as version 3 ones with no expiry. Marked upgraded
            // before anything is written: a record with an expiry must never reach a build
            // that would misread it.
            Self::write_superblock(&queue, &cfg, &sb).await?;
            report.upgraded_from = Some(sb.format_version);
        }
        let mut segments = SegmentTable::new(
            sb.segment_count,
            cfg.region_offset + SEGMENTS_START,
            sb.segment_bytes,
        );
        let mut index = Index::default();
        let mut max_lsn = 0u64;

        // Find written segments by their headers (many reads in flight), then replay them
        // in the order written, reading the next segment while scanning the current one.
        let mut found = Vec::new();
        for chunk in (0..sb.segment_count)
            .collect::<Vec<_>>()
            .chunks(HEADER_READS_IN_FLIGHT)
        {
            let reads = chunk.iter().map(|&seg| {
                let (queue, offset) = (&queue, segments.device_offset(seg));
                async move {
                    let head = queue.pool().alloc(block as usize).await?;
                    queue.read_at(offset, head).await
                }
            });
            for (&seg, head) in chunk.iter().zip(join_all(reads.collect()).await) {
                match SegmentHeader::decode(&head?, &sb.uuid, seg) {
                    Some(h) if h.freed => {
                        report.freed_marks += 1;
                        max_lsn = max_lsn.max(h.first_lsn);
                        segments.note_seq(h.seq);
                    }
                    Some(h) => found.push(h),
                    None => {}
                }
            }
        }
        found.sort_by_key(|h| h.seq);
        let limits = ScanLimits {
            block: block as usize,
            max_key: cfg.max_key_bytes,
            max_value: cfg.max_value_bytes,
        };
        let read_segment = |seg: u32| {
            let (queue, offset, bytes) = (&queue, segments.device_offset(seg), sb.segment_bytes as usize);
            async move {
                let image = queue.pool().alloc(bytes).await?;
                queue.read_at(offset, image).await
            }
        };
        let mut live = vec![0u64; sb.segment_count as usize];
        let mut restored = Vec::new();
        let mut prefetched = None;
        for (i, h) in found.iter().enumerate() {
            let image = match prefetched.take() {
                Some(image) => image,
                None => read_segment(h.segment_index).await?,
            };
            let next = found.get(i + 1).map(|n| read_segment(n.segment_index));
            let read_next = async move {
                match next {
                    Some(read) => Some(read.await),
                    None => None,
                }
            };
            let scan_this = async {
                let seg = h.segment_index;
                let life = SegmentLife {
                    uuid: sb.uuid,
                    seq: h.seq,
                    first_lsn: h.first_lsn,
                };
                let summary = scan_segment(&image, &life, limits, |r| {
                    report.records_replayed += 1;
                    // A version kept from elsewhere may be ahead of every LSN here: new
                    // versions must outrank it after a restart too.
                    max_lsn = max_lsn.max(r.header.lsn).max(r.header.version);
                    let rh = &r.header;
                    let entry = IndexEntry::new(
                        rh.version,
                        seg,
                        r.value_offset,
                        rh.value_len,
                        rh.value_crc,
                        rh.kind == RecordKind::Tombstone,
                    )
                    .expiring_at(rh.expires_ms);
                    // A GC copy keeps its version; never let an older version win.
                    match index.insert_unless_older(r.key, rh.partition, entry) {
                        Upsert::KeptNewer => return,
                        Upsert::Replaced(Some(old)) => {
                            let l = &mut live[old.segment as usize];
                            let size = live_size(r.key, old.value_len());
                            debug_assert!(*l >= size, "segment {}: live bytes below zero", old.segment);
                            *l = l.saturating_sub(size);
                        }
                        Upsert::Replaced(None) => {}
                    }
                    live[seg as usize] += live_size(r.key, rh.value_len);
                });
                report.bytes_scanned += image.len() as u64;
                report.segments_scanned += 1;
                if summary.how == ScanEnd::Torn {
                    report.torn_tails += 1;
                }
                if summary.lsn_anomalies > 0 {
                    report.lsn_anomalies += summary.lsn_anomalies;
                    tracing::warn!(
                        segment = seg,
                        seq = h.seq,
                        batches = summary.lsn_anomalies,
                        "recovery: batches whose LSNs do not follow; replayed (their CRC binds them to this segment)"
                    );
                }
                (summary.end as u64).div_ceil(block) * block
            };
            let (next_image, written) = futures_lite::future::zip(read_next, scan_this).await;
            prefetched = next_image.transpose()?;
            max_lsn = max_lsn.max(h.first_lsn);
            restored.push((h.segment_index, h.seq, h.first_lsn, written));
        }
        for (seg, seq, first_lsn, written) in restored {
            segments.restore(seg, seq, first_lsn, written);
        }
        for (seg, bytes) in live.into_iter().enumerate() {
            segments.add_live(seg as u32, bytes);
        }
        report.objects = index.live_objects();
        report.live_bytes = segments.live_bytes();
        let state = State::new(
            index,
            segments,
            Writer::new(max_lsn + 1),
            Cache::new(cfg.cache_bytes),
        );
        let store = Store::from_parts(queue, cfg, sb.uuid, state);
        store
            .inner
            .metrics
            .recovery_lsn_anomalies
            .set(report.lsn_anomalies as u64);
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
            format_version: FORMAT_VERSION,
        };
        Self::write_superblock(queue, cfg, &sb).await?;
        Ok(sb)
    }

    /// Both superblock copies, durably, in this build's format version.
    async fn write_superblock(queue: &Q, cfg: &StoreConfig, sb: &Superblock) -> StoreResult<()> {
        let mut buf = queue.pool().alloc(SEGMENTS_START as usize).await?;
        buf.fill(0);
        sb.encode(&mut buf[..SUPERBLOCK_BYTES as usize]);
        sb.encode(&mut buf[SUPERBLOCK_BYTES as usize..]);
        queue.write_at(cfg.region_offset, buf, Durability::Fua).await?;
        Ok(())
    }
}
