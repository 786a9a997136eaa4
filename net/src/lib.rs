//! hotshard-net: the wire protocol, placement and the shard-aware client (issue 4).

pub mod placement;
