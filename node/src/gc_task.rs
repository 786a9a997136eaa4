//! Runs GC in the background of a shard, as a task beside the requests on the shard's
//! one task queue: each GC step yields at every device access (its reads, its batch writes,
//! the free mark), every 16K index slots of its walk and every 64 records it stages. When
//! the background falls behind, writes collect in the foreground
//! (`Store::make_room_for_write`).
//!
//! Not in a task queue of its own with fewer shares, as it was until issue 36: glommio
//! brings a queue that went idle back with the lowest virtual runtime plus one, behind the
//! foreground's queue, which the device poller keeps busy while I/O is in flight, so GC got
//! one turn (one await) per foreground turn of up to the preemption period (100 ms). GC ran
//! in bursts and starved between them: the free pool fell to the stall point and writes
//! waited 160-230 ms for it. Measured in BENCHMARKS.md (issue 36).

use std::time::Duration;

use hotshard_nvme::BlockQueue;

use hotshard_store::{GcOutcome, Store};

/// Pause before retrying a victim whose records were busy.
const DEFERRED_RETRY: Duration = Duration::from_millis(1);

/// How GC paces itself.
#[derive(Debug, Clone, Copy)]
pub struct GcPacing {
    /// Sleep between steps when there was nothing to collect.
    pub idle_sleep: Duration,
    /// Sleep between steps after an error (the device may be failing).
    pub error_sleep: Duration,
}

impl Default for GcPacing {
    fn default() -> Self {
        GcPacing {
            idle_sleep: Duration::from_millis(100),
            error_sleep: Duration::from_secs(1),
        }
    }
}

/// Starts the GC loop on the current glommio executor's current task queue; it ends when
/// the returned task is dropped or cancelled.
pub fn start_background_gc<Q: BlockQueue + 'static>(store: Store<Q>, pacing: GcPacing) -> glommio::Task<()> {
    glommio::spawn_local(async move {
        loop {
            match store.gc_step().await {
                Ok(GcOutcome::Freed { .. }) => {}
                Ok(GcOutcome::Idle) => glommio::timer::sleep(pacing.idle_sleep).await,
                // Records of the victim are still being written or read: retry soon rather
                // than after the idle pause (writers may be waiting on space).
                Ok(GcOutcome::Deferred { .. }) => glommio::timer::sleep(DEFERRED_RETRY).await,
                Err(e) => {
                    tracing::warn!("gc step failed: {e}");
                    glommio::timer::sleep(pacing.error_sleep).await;
                }
            }
        }
    })
}
