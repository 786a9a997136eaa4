//! What the control plane's calls to etcd can fail with.

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd: {0}")]
    Call(#[from] etcd_client::Error),
    /// The lease behind this process's key expired or was revoked: whatever it held is
    /// another's now.
    #[error("the lease {0:#x} is gone (expired or revoked)")]
    LeaseLost(i64),
    /// A guarded write found that this coordinator no longer leads: nothing was written.
    #[error("deposed: another coordinator acts now; nothing was written")]
    Deposed,
    /// Another live process is registered with this node id.
    #[error("node id {0} is already registered by a live node: two processes cannot be one node")]
    NodeIdTaken(u32),
    /// The map changed between reading it and writing it: read it again.
    #[error("the cluster map changed while this coordinator was updating it")]
    MapChanged,
    /// What etcd holds cannot be used (a map that does not decode, chains that cannot form).
    #[error("cluster state: {0}")]
    BadState(String),
    /// An operator's command that would do harm or makes no sense; nothing was written.
    #[error("{0}")]
    Refused(String),
    #[error("lease TTL {0} s: etcd's minimum is 2 s")]
    TtlTooShort(i64),
}

pub type ClusterResult<T> = Result<T, ClusterError>;
