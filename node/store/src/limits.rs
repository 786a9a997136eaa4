//! Named limits of the storage engine, each with the reason for its value. The node and
//! the wire protocol refer to these (and assert at compile time that theirs agree).

/// Largest key. Keys live in memory in the index, so they are kept small; 1 KiB covers
/// object paths and chunk ids with room to spare.
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest value. Chunk servers store chunks of at most a few MiB; 8 MiB bounds the DMA
/// memory one request can pin.
pub const MAX_VALUE_BYTES: usize = 8 << 20;

/// Largest record version (a version is a log position: one per write). A version kept
/// from elsewhere moves this log's next position past it, so one near u64::MAX would wrap
/// the next write's; 2^62 is 14,000 years of writes at ten million a second. Versions
/// above it are refused before they touch the writer.
pub const MAX_VERSION: u64 = 1 << 62;

/// Default segment size. A segment must hold the largest record (header + 1 KiB key +
/// 8 MiB value) plus its segment header, and be large enough that GC moves data in big
/// sequential reads.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

/// Smallest segment: below this the segment header and padding waste too much space.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;

/// Bytes a group-commit batch collects before it is written even if the device is idle
/// and more puts are coming; larger batches amortise the FUA better, smaller ones bound
/// the latency of the first put in the batch.
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;

/// Largest batch the config accepts: a batch write is its meta buffer (up to a quarter of
/// the batch size, or one record's headers and key) and its value area (up to the batch
/// size, or one largest value alone), and it must stay one device I/O.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

// The largest batch write fits the device layer's largest I/O, whichever fills it.
const _: () = {
    let block = hotshard_nvme::limits::IO_ALIGN;
    let meta = (MAX_BATCH_BYTES / 4).div_ceil(block) * block
        + (crate::format::SEGMENT_HEADER_BYTES
            + crate::format::BATCH_HEADER_BYTES
            + crate::format::RECORD_HEADER_BYTES
            + MAX_KEY_BYTES)
            .div_ceil(block)
            * block;
    let values = if MAX_BATCH_BYTES > MAX_VALUE_BYTES {
        MAX_BATCH_BYTES
    } else {
        MAX_VALUE_BYTES.div_ceil(block) * block
    };
    assert!(meta + values <= hotshard_nvme::limits::MAX_IO_BYTES);
};

/// How long a write waits inside the engine for buffers or a batch slot before it is
/// refused: long enough that only a stuck device reaches it (the node's frame timeout).
pub const DEFAULT_MAX_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Batch writes in flight at once by default: enough to keep a device busy with large
/// values (fio's randwrite reaches its bandwidth here from QD 8), while small batches
/// still go one at a time.
pub const DEFAULT_WRITES_IN_FLIGHT: usize = 8;

/// Most batch writes in flight the config accepts: each pins up to a batch of DMA memory.
pub const MAX_WRITES_IN_FLIGHT: usize = 64;

/// Free segments kept back from foreground writes so that GC can always move data and
/// make progress when the device is full.
pub const GC_RESERVED_SEGMENTS: u32 = 2;

/// Default byte budget of the hot-object cache per shard.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Largest partition-bit count: partitions are stored as u16 in the index.
pub const MAX_PARTITION_BITS: u8 = 16;

/// Partition bits of a new store unless the node says otherwise (the node's placement
/// default; the node asserts that the two agree). Fixed when the store is created.
pub const DEFAULT_PARTITION_BITS: u8 = 12;
