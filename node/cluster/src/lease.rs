//! An etcd lease kept alive from a tokio task: renewed every TTL/3, and known lost once
//! etcd says so or once a whole TTL has passed since etcd last confirmed it (etcd may have
//! expired it while we could not reach it). Dropping it stops the renewals without a
//! revoke, as a crash would: the lease then ends a TTL later. `revoke` ends it now.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ClusterError, ClusterResult};

/// etcd refuses shorter leases (its minimum TTL).
pub const MIN_TTL_SECS: i64 = 2;

/// When etcd last confirmed a lease, readable apart from the lease.
#[derive(Clone)]
pub struct Confirmations(Arc<Mutex<Instant>>);

impl Confirmations {
    pub fn since_confirmed(&self) -> Duration {
        self.0.lock().map(|t| t.elapsed()).unwrap_or(Duration::MAX)
    }
}

/// A granted lease and the task that keeps it alive.
pub struct KeptLease {
    id: i64,
    ttl: Duration,
    client: Client,
    confirmed: Arc<Mutex<Instant>>,
    alive: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl KeptLease {
    /// Grants a lease of `ttl_secs` and starts renewing it.
    pub async fn grant(client: &Client, ttl_secs: i64) -> ClusterResult<KeptLease> {
        if ttl_secs < MIN_TTL_SECS {
            return Err(ClusterError::TtlTooShort(ttl_secs));
        }
        let mut client = client.clone();
        let granted = client.lease_grant(ttl_secs, None).await?;
        let (id, ttl) = (granted.id(), Duration::from_secs(granted.ttl().max(1) as u64));
        let confirmed = Arc::new(Mutex::new(Instant::now()));
        let (tx, alive) = watch::channel(true);
        let task = tokio::spawn(renew(client.clone(), id, ttl, confirmed.clone(), tx));
        Ok(KeptLease {
            id,
            ttl,
            client,
            confirmed,
            alive,
            task,
        })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the lease may still be held: etcd confirmed it less than a TTL ago and
    /// never said it was gone.
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow() && self.since_confirmed() < self.ttl
    }

    /// Time since etcd last confirmed the lease (for self-fencing: a node that cannot
    /// confirm its lease for TTL/2 stops answering).
    pub fn since_confirmed(&self) -> Duration {
        self.confirmed
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX)
    }

    /// A handle that reads `since_confirmed` from another task.
    pub fn confirmations(&self) -> Confirmations {
        Confirmations(self.confirmed.clone())
    }

    /// Resolves when the lease is known lost.
    pub async fn lost(&self) {
        let mut alive = self.alive.clone();
        let _ = alive.wait_for(|a| !*a).await;
    }

    /// Stops renewing without telling etcd, as a paused or dead process would: the lease
    /// ends a TTL after its last confirmation. For fault-injection tests.
    #[doc(hidden)]
    pub fn stop_renewing(&self) {
        self.task.abort();
    }

    /// Ends the lease now (a clean stop): every key bound to it goes at once.
    pub async fn revoke(mut self) -> ClusterResult<()> {
        self.task.abort();
        self.client.lease_revoke(self.id).await?;
        Ok(())
    }
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Renews every TTL/3 until etcd says the lease is gone or a TTL passes without a
/// confirmation; a broken stream is reopened.
async fn renew(
    mut client: Client,
    id: i64,
    ttl: Duration,
    confirmed: Arc<Mutex<Instant>>,
    alive: watch::Sender<bool>,
) {
    let every = ttl / 3;
    let last = |c: &Arc<Mutex<Instant>>| c.lock().map(|t| t.elapsed()).unwrap_or(Duration::MAX);
    'reopen: loop {
        if last(&confirmed) >= ttl {
            break;
        }
        let (mut keeper, mut stream) = match client.lease_keep_alive(id).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(lease = id, "lease keep-alive: {e}; retrying");
                tokio::time::sleep(every.min(Duration::from_millis(200))).await;
                continue 'reopen;
            }
        };
        loop {
            let asked = Instant::now();
            if keeper.keep_alive().await.is_err() {
                continue 'reopen;
            }
            match tokio::time::timeout(every, stream.message()).await {
                Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                    // Valid for a TTL from when we asked, not from when the answer came.
                    if let Ok(mut t) = confirmed.lock() {
                        *t = asked;
                    }
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease = id, "etcd says the lease is gone");
                    let _ = alive.send(false);
                    return;
                }
                _ => {
                    if last(&confirmed) >= ttl {
                        break 'reopen;
                    }
                    continue 'reopen;
                }
            }
            tokio::time::sleep(every.saturating_sub(asked.elapsed())).await;
        }
    }
    tracing::warn!(lease = id, "lease not confirmed for a whole TTL: taken as lost");
    let _ = alive.send(false);
}
