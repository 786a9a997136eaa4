//! hotshard-store: the storage engine of one shard, a crash-safe log-structured object
//! store on a `BlockQueue`. It knows nothing of the network, of placement or of any
//! executor: it is tested on `SimDevice` with a plain local executor.

pub mod cache;
pub mod config;
pub mod engine;
pub mod error;
pub mod format;
pub mod gc;
mod gc_lock;
pub mod group_commit;
pub mod index;
pub mod limits;
pub mod metrics;
pub mod ordered;
pub mod read_slots;
pub mod recovery;
pub mod scan;
pub mod segments;
mod state;
pub mod value;
mod value_buf;
mod write_gate;

pub use config::{CommitDurability, GcWrites, StoreConfig, VictimChoice};
pub use engine::{ManifestEntry, ObjectStat, SpaceStats, Store};
pub use error::{StoreError, StoreResult};
pub use gc::GcOutcome;
pub use recovery::RecoveryReport;
pub use value::Value;
pub use value_buf::ValueBuf;
