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
    #[error("lease TTL {0} s: etcd's minimum is 2 s")]
    TtlTooShort(i64),
}

pub type ClusterResult<T> = Result<T, ClusterError>;
