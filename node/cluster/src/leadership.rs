//! The acting coordinator: exactly one holds the coordinator key, bound to its lease.
//! Every write to the cluster state goes through `guarded`, a transaction that succeeds
//! only while the key is still the one this coordinator created (same create revision),
//! so a coordinator whose lease expired (paused, cut off) cannot write after another took
//! over, even if it does not know yet.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnResponse};

use crate::error::{ClusterError, ClusterResult};
use crate::keys::ClusterKeys;
use crate::lease::KeptLease;

pub struct Leadership {
    client: Client,
    keys: ClusterKeys,
    lease: KeptLease,
    /// Create revision of the coordinator key this coordinator wrote: it names this term.
    revision: i64,
}

impl Leadership {
    /// Waits until this coordinator acts: takes the coordinator key if nobody holds it,
    /// otherwise tries again every TTL/6 (the key goes when its holder's lease does).
    pub async fn campaign(
        client: &Client,
        keys: &ClusterKeys,
        name: &str,
        ttl_secs: i64,
    ) -> ClusterResult<Leadership> {
        let key = keys.coordinator();
        loop {
            let lease = KeptLease::grant(client, ttl_secs).await?;
            let retry = lease.ttl() / 6;
            while lease.is_alive() {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        name,
                        Some(PutOptions::new().with_lease(lease.id())),
                    )]);
                let answer = client.clone().txn(txn).await?;
                if answer.succeeded() {
                    let revision = answer.header().map_or(0, |h| h.revision());
                    tracing::info!(name, revision, "acting coordinator");
                    return Ok(Leadership {
                        client: client.clone(),
                        keys: keys.clone(),
                        lease,
                        revision,
                    });
                }
                tokio::time::sleep(retry.max(Duration::from_millis(50))).await;
            }
        }
    }

    /// This term's number (the coordinator key's create revision): grows with every
    /// change of coordinator.
    pub fn term(&self) -> i64 {
        self.revision
    }

    /// Whether this coordinator may still act (its lease is confirmed). A guarded write
    /// is refused by etcd anyway once it does not.
    pub fn is_acting(&self) -> bool {
        self.lease.is_alive()
    }

    /// Resolves when the lease is lost: stop acting.
    pub async fn lost(&self) {
        self.lease.lost().await
    }

    /// Applies `ops` in one transaction, only if this coordinator still holds its key.
    pub async fn guarded(&self, ops: Vec<TxnOp>) -> ClusterResult<TxnResponse> {
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.keys.coordinator(),
                CompareOp::Equal,
                self.revision,
            )])
            .and_then(ops);
        let answer = self.client.clone().txn(txn).await?;
        if !answer.succeeded() {
            return Err(ClusterError::Deposed);
        }
        Ok(answer)
    }

    /// Stops renewing the lease as a paused coordinator would (fault-injection tests).
    #[doc(hidden)]
    pub fn stop_renewing(&self) {
        self.lease.stop_renewing();
    }

    /// Steps down now: the key goes with the lease, and another coordinator may act.
    pub async fn resign(self) -> ClusterResult<()> {
        self.lease.revoke().await
    }
}
