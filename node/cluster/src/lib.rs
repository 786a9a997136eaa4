//! hotshard-cluster: the control plane's side of etcd. Cluster state lives in etcd: the
//! acting coordinator holds a lease-bound key, and every write it makes to the cluster
//! state is a transaction that checks it still holds that key (`Leadership::guarded`), so
//! a deposed coordinator cannot write. Runs on one tokio thread, off the shard cores; no
//! home-made consensus and no home-made failure detector.

pub mod coordinator;
pub mod error;
pub mod keys;
pub mod leadership;
pub mod lease;
pub mod registration;

pub use error::{ClusterError, ClusterResult};
pub use keys::ClusterKeys;
pub use leadership::Leadership;
pub use lease::KeptLease;
