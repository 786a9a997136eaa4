//! Named limits of the wire protocol, each with the reason for its value. Every length a
//! peer sends is checked against one of these before anything is allocated.

/// Largest key: the store's limit (keys live in memory in every shard's index).
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest payload (a value): the store's 8 MiB value limit.
pub const MAX_PAYLOAD_BYTES: usize = 8 << 20;

/// Largest rkyv header. A request header holds a key and a few integers; 4 KiB leaves
/// room for the largest key and the shard map request with no way to pin much memory.
pub const MAX_HEADER_BYTES: usize = 4096;

/// Largest shard map and most replicas in a chain: placement's limits.
pub use hotshard_placement::limits::{MAX_REPLICAS, MAX_SHARD_MAP_BYTES};

/// Requests in flight per connection before the server stops reading (backpressure).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;

/// Most partitions one key listing (`Request::ListKeys`) names: with a pattern of the
/// largest key's size it still fits a header (4 bytes each).
pub const MAX_LIST_PARTITIONS: usize = 512;

/// Most items (keys and common prefixes) one page of an ordered index holds
/// (`Request::List`), as S3's ListObjectsV2 allows: with keys of at most `MAX_KEY_BYTES`, a
/// page is at most about 1 MiB.
pub const MAX_LIST_ITEMS: u32 = 1000;
