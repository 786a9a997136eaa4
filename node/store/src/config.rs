//! How a shard's store is laid out and tuned.

use crate::error::{StoreError, StoreResult};
use crate::format::{BATCH_HEADER_BYTES, RECORD_HEADER_BYTES, SEGMENTS_START, SEGMENT_HEADER_BYTES};
use crate::limits::{
    DEFAULT_BATCH_BYTES, DEFAULT_CACHE_BYTES, DEFAULT_SEGMENT_BYTES, MAX_KEY_BYTES, MAX_PARTITION_BITS,
    MAX_VALUE_BYTES, MIN_SEGMENT_BYTES,
};
pub use crate::segments::VictimChoice;

/// How an acknowledged batch is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitDurability {
    /// The batch write carries FUA (RWF_DSYNC).
    Fua,
    /// A plain write followed by a flush (fdatasync) that covers it.
    WriteThenFlush,
}

/// Where GC writes the records it moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcWrites {
    /// Into the log's own batches, durable as every batch is (FUA or write + flush).
    Shared,
    /// Into a log head of GC's own (its own open segment and batches), written without FUA
    /// and made durable by one flush before the victim they came from is freed: until
    /// then the victim still holds every record, so a power cut loses nothing. Meant for
    /// devices with FUA, where a durable write leaves the rest of the cache alone; on a
    /// device without it (every FUA write a full cache flush, as the test machine's disk)
    /// it measured no different from `Shared` (BENCHMARKS.md, issue 36, session 23).
    OwnHead,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Where this shard's region starts on the device.
    pub region_offset: u64,
    pub region_bytes: u64,
    pub segment_bytes: u64,
    pub batch_bytes: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub partition_bits: u8,
    pub shard_index: u32,
    pub shard_count: u32,
    pub cache_bytes: usize,
    /// Memory the index may hold before writes of new keys answer `NoSpace` (overwrites
    /// and deletes of indexed keys still go through). Checked against the index's current
    /// allocation, so one more growth step of its table may pass it.
    pub index_budget_bytes: usize,
    pub durability: CommitDurability,
    /// Where GC writes the records it moves.
    pub gc_writes: GcWrites,
    /// How GC picks its victims (a write waiting for room always takes the least live).
    pub gc_victims: VictimChoice,
    /// GC collects a sealed segment whose live bytes are at most this fraction of it.
    pub gc_max_live_fraction: f64,
    /// Format the region if it holds no superblock.
    pub format_if_empty: bool,
    /// GC turns an expired object into a tombstone by this store's clock. A store that is
    /// one replica of a chain must not (the node sets it false): expiry is the chain
    /// head's decision, and it comes down the chain as a burial.
    pub gc_buries_expired: bool,
    /// How long a write may wait inside the engine for buffers or batch slots (in arrival
    /// order) before it is answered `Busy`: only a device that stops completing writes
    /// should reach it. The node sets it to its frame timeout.
    pub max_write_wait: std::time::Duration,
    /// Batch writes the log keeps in flight at once. Small batches go one at a time (so
    /// that records gather behind a write); large ones overlap, up to this many.
    pub writes_in_flight: usize,
    /// Device reads of gets in flight at once; more wait their turn (`ReadSlots`). Below
    /// the device queue's ring size, which answers reads past it with an error.
    pub reads_in_flight: usize,
}

impl StoreConfig {
    pub fn new(region_offset: u64, region_bytes: u64) -> Self {
        StoreConfig {
            region_offset,
            region_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            batch_bytes: DEFAULT_BATCH_BYTES,
            max_key_bytes: MAX_KEY_BYTES,
            max_value_bytes: MAX_VALUE_BYTES,
            partition_bits: crate::limits::DEFAULT_PARTITION_BITS,
            shard_index: 0,
            shard_count: 1,
            cache_bytes: DEFAULT_CACHE_BYTES,
            index_budget_bytes: usize::MAX,
            durability: CommitDurability::Fua,
            gc_writes: GcWrites::Shared,
            gc_victims: VictimChoice::Greedy,
            gc_max_live_fraction: 0.5,
            format_if_empty: true,
            gc_buries_expired: true,
            max_write_wait: crate::limits::DEFAULT_MAX_WRITE_WAIT,
            writes_in_flight: crate::limits::DEFAULT_WRITES_IN_FLIGHT,
            reads_in_flight: 128,
        }
    }

    /// Whether values of `len` bytes enter the cache (on a read, and when a write of one
    /// is durable): at most a 64th of its budget each, so that no few large values flush
    /// the hot set.
    pub fn caches(&self, len: usize) -> bool {
        len <= self.cache_bytes / 64
    }

    /// Segments that fit in the region.
    pub fn segment_count(&self) -> u32 {
        (self.region_bytes.saturating_sub(SEGMENTS_START) / self.segment_bytes) as u32
    }

    pub fn validate(&self, block_size: u64) -> StoreResult<()> {
        let bad = |m: String| Err(StoreError::Open(m));
        if !self.region_offset.is_multiple_of(block_size) {
            return bad(format!(
                "region offset {} is not block aligned",
                self.region_offset
            ));
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES || !self.segment_bytes.is_multiple_of(block_size) {
            return bad(format!(
                "segment size {} must be a multiple of {block_size} and at least {MIN_SEGMENT_BYTES}",
                self.segment_bytes
            ));
        }
        // The largest record alone in a batch at the start of a segment: headers and key
        // rounded up to a block, then the value's blocks.
        let biggest = ((SEGMENT_HEADER_BYTES + BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + self.max_key_bytes)
            as u64)
            .div_ceil(block_size)
            * block_size
            + (self.max_value_bytes as u64).div_ceil(block_size) * block_size;
        if biggest > self.segment_bytes {
            return bad(format!(
                "segment size {} cannot hold the largest record ({biggest} bytes)",
                self.segment_bytes
            ));
        }
        if self.batch_bytes == 0 || self.batch_bytes > crate::limits::MAX_BATCH_BYTES {
            return bad(format!(
                "batch size {} must be 1..={}",
                self.batch_bytes,
                crate::limits::MAX_BATCH_BYTES
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > u16::MAX as usize {
            return bad(format!("key limit {} must be 1..=65535", self.max_key_bytes));
        }
        if self.partition_bits == 0 || self.partition_bits > MAX_PARTITION_BITS {
            return bad(format!(
                "partition bits {} must be 1..={MAX_PARTITION_BITS}",
                self.partition_bits
            ));
        }
        if self.segment_count() < 4 {
            return bad(format!(
                "region of {} bytes holds {} segments of {}; at least 4 are needed",
                self.region_bytes,
                self.segment_count(),
                self.segment_bytes
            ));
        }
        if self.writes_in_flight == 0 || self.writes_in_flight > crate::limits::MAX_WRITES_IN_FLIGHT {
            return bad(format!(
                "writes in flight {} must be 1..={}",
                self.writes_in_flight,
                crate::limits::MAX_WRITES_IN_FLIGHT
            ));
        }
        if !(0.0..1.0).contains(&self.gc_max_live_fraction) {
            return bad("gc live fraction must be in [0, 1)".into());
        }
        Ok(())
    }
}
