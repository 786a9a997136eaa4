//! hotshard-node: the data node. `store` is one shard's storage engine (the `hotshard-store`
//! crate, re-exported).

pub mod admin;
pub mod admission;
pub mod chain_expiry;
pub mod chain_links;
pub mod chain_view;
pub mod cluster_cli;
pub mod config;
pub mod control_plane;
pub mod data_lock;
pub mod dirty_keys;
pub mod expiry_sweep;
pub mod fd_limit;
pub mod forwarding;
pub mod gc_task;
pub mod key_listing;
pub mod key_update;
pub mod limits;
pub mod listener;
pub mod manifest_page;
pub mod map_cell;
pub mod node_identity;
pub mod partition_sync;
pub mod peers;
pub mod put_payload;
pub mod redis_strings;
pub mod replication;
pub mod resp_front;
pub mod route;
pub mod serve;
pub mod shard;
pub mod shard_handler;
pub mod shard_stats;
pub mod stats_summary;
pub mod waitable_count;
pub use hotshard_store as store;
