//! Named limits of the node. The engine's limits live in `hotshard-store` and are
//! re-exported here; where the wire protocol restates one, the two are tied together at
//! compile time, so that they cannot drift apart.

pub use hotshard_store::limits::*;

// A value the wire accepts is a value the engine stores, and no more.
const _: () = assert!(hotshard_net::limits::MAX_PAYLOAD_BYTES == MAX_VALUE_BYTES);
const _: () = assert!(hotshard_net::limits::MAX_KEY_BYTES == MAX_KEY_BYTES);
// One placement default: the partition count a new store records is the one clients use;
// and one bound: a map's partition is what an index slot and a record header hold (u16).
const _: () = assert!(hotshard_placement::DEFAULT_PARTITION_BITS == DEFAULT_PARTITION_BITS);
const _: () = assert!(hotshard_placement::limits::MAX_PARTITION_BITS == MAX_PARTITION_BITS);
const _: () = assert!(MAX_PARTITION_BITS <= u16::BITS as u8);

/// Smallest segment the config accepts, MiB: the largest value and its headers (a few KiB)
/// in whole MiB.
pub const MIN_SEGMENT_MIB: u64 = MAX_VALUE_BYTES.div_ceil(1 << 20) as u64 + 1;

/// Smallest DMA pool the config accepts, MiB: recovery reads two default segments at once.
pub const MIN_POOL_MIB: usize = 2 * (DEFAULT_SEGMENT_BYTES >> 20) as usize;

// The default segment holds the largest value; the default pool holds two of them.
const _: () = assert!(DEFAULT_SEGMENT_BYTES >> 20 >= MIN_SEGMENT_MIB);
