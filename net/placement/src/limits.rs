//! Named limits of placement, each with the reason for its value.

/// Most partitions bits a map may have: a partition is a `u16` wherever it is stored (the
/// engine's index slot, the record header).
pub const MAX_PARTITION_BITS: u8 = 16;

/// Largest shard map, archived: 65,536 partitions of a chain each (version, list head and
/// up to `MAX_REPLICAS` replicas: about 36 bytes archived) plus shard addresses.
pub const MAX_SHARD_MAP_BYTES: usize = 4 << 20;

/// Most replicas a partition's chain may list: the replication factor (3) plus one being
/// synced in and one being replaced during a move.
pub const MAX_REPLICAS: usize = 5;
