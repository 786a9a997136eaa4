//! hotshard-node: the data node. `store` is one shard's storage engine.

pub mod config;
pub mod limits;
pub mod store;
