//! Runs GC in the background of a shard: a glommio task queue with few shares and no
//! latency requirement, so foreground requests keep the core when both want it. When the
//! background falls behind, writes collect in the foreground (`Store::make_room_for_write`).

use std::time::Duration;

use glommio::{Latency, Shares, TaskQueueHandle};
use hotshard_nvme::BlockQueue;

use hotshard_store::{GcOutcome, Store};

/// Shares of the GC task queue against the foreground's default 1000.
const GC_SHARES: usize = 100;
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

/// Starts the GC loop on the current glommio executor; it ends when the returned task is
/// dropped or cancelled. Returns the task queue so callers can inspect its statistics.
pub fn start_background_gc<Q: BlockQueue + 'static>(
    store: Store<Q>,
    pacing: GcPacing,
) -> glommio::Result<(TaskQueueHandle, glommio::Task<()>), ()> {
    let tq = glommio::executor().create_task_queue(Shares::Static(GC_SHARES), Latency::NotImportant, "gc");
    let task = glommio::spawn_local_into(
        async move {
            loop {
                match store.gc_step().await {
                    Ok(GcOutcome::Freed { .. }) => {}
                    Ok(GcOutcome::Idle) => glommio::timer::sleep(pacing.idle_sleep).await,
                    // Records of the victim are still being written or read: retry soon
                    // rather than after the idle pause (writers may be waiting on space).
                    Ok(GcOutcome::Deferred { .. }) => glommio::timer::sleep(DEFERRED_RETRY).await,
                    Err(e) => {
                        tracing::warn!("gc step failed: {e}");
                        glommio::timer::sleep(pacing.error_sleep).await;
                    }
                }
            }
        },
        tq,
    )?;
    Ok((tq, task))
}
