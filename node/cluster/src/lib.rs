//! hotshard-cluster: the control plane's side of etcd. Cluster state lives in etcd: the
//! acting coordinator holds a lease-bound key, and every write it makes to the cluster
//! state is a transaction that checks it still holds that key (`Leadership::guarded`), so
//! a deposed coordinator cannot write. Runs on one tokio thread, off the shard cores; no
//! home-made consensus and no home-made failure detector.

pub mod accept_loss;
pub mod coordinator;
pub mod drain;
pub mod error;
pub mod history;
pub mod keys;
pub mod leadership;
pub mod lease;
pub mod registration;
pub mod status;

pub use error::{ClusterError, ClusterResult};
pub use keys::ClusterKeys;
pub use leadership::Leadership;
pub use lease::KeptLease;
pub use status::{cluster_status, ClusterStatus};

/// A client of the cluster's etcd (`endpoints`: one or more `http://host:port`), once one
/// answers; the error names every endpoint tried.
pub async fn connect(endpoints: &[String]) -> ClusterResult<etcd_client::Client> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(std::time::Duration::from_secs(3))
        .with_timeout(std::time::Duration::from_secs(5));
    let named = || endpoints.join(",");
    let mut client = etcd_client::Client::connect(endpoints, Some(options))
        .await
        .map_err(|source| ClusterError::Etcd {
            endpoints: named(),
            source,
        })?;
    client.status().await.map_err(|source| ClusterError::Etcd {
        endpoints: named(),
        source,
    })?;
    Ok(client)
}

/// The etcd client this crate speaks through (its `Client` appears in the API).
pub use etcd_client;
