//! Named limits of the wire protocol, each with the reason for its value. Every length a
//! peer sends is checked against one of these before anything is allocated.

/// Largest key: the store's limit (keys live in memory in every shard's index).
pub const MAX_KEY_BYTES: usize = 1024;

/// Largest payload (a value): the store's 8 MiB value limit.
pub const MAX_PAYLOAD_BYTES: usize = 8 << 20;

/// Largest rkyv header. A request header holds a key and a few integers; 4 KiB leaves
/// room for the largest key and the shard map request with no way to pin much memory.
pub const MAX_HEADER_BYTES: usize = 4096;

/// Largest shard-map payload: 65,536 partitions of a chain each (version, list head and
/// up to `MAX_REPLICAS` replicas: about 36 bytes archived) plus shard addresses.
pub const MAX_SHARD_MAP_BYTES: usize = 4 << 20;

/// Most replicas a partition's chain may list: the replication factor (3) plus one being
/// synced in and one being replaced during a move.
pub const MAX_REPLICAS: usize = 5;

/// Requests in flight per connection before the server stops reading (backpressure).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 128;
