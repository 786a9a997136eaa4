//! Building a ring with the best flags this kernel accepts, falling back cleanly.

use io_uring::IoUring;

use crate::error::{NvmeError, Result};
use crate::limits::{DEFAULT_POOL_BYTES, DEFAULT_RING_ENTRIES, MAX_RING_ENTRIES};

/// How to build a queue's ring. A hardware profile sets these.
#[derive(Debug, Clone)]
pub struct UringOptions {
    /// Submission ring entries; also the most operations in flight.
    pub entries: u32,
    /// Bytes of DMA buffers the queue owns.
    pub pool_bytes: usize,
    /// Kernel submission polling thread with this idle time in ms (SQPOLL).
    pub sqpoll_idle_ms: Option<u32>,
    /// Polled completions (IOPOLL); only for block devices that offer poll queues.
    pub iopoll: bool,
    /// Ask for SINGLE_ISSUER and DEFER_TASKRUN (completions run only when we ask).
    pub defer_taskrun: bool,
    /// Register the DMA arena so reads and writes use fixed buffers.
    pub register_buffers: bool,
    /// Poller only: after this many consecutive polls that found nothing, block in
    /// `io_uring_enter` for one completion (up to `wait_timeout_us`) instead of spinning.
    /// 0 spins forever. Blocking holds the executor thread, so other tasks on the core
    /// wait up to the timeout.
    pub wait_after_idle_polls: u32,
    /// Longest block when waiting, in microseconds.
    pub wait_timeout_us: u32,
    /// Poller only, on glommio: after `IDLE_POLLS_BEFORE_SLEEP` polls that found nothing,
    /// sleep this long on a glommio timer instead of spinning, so that the executor's other
    /// tasks (network connections) get the core. 0 spins.
    pub idle_sleep_us: u32,
    /// Hold entries until the next reap so that one `io_uring_enter` carries many (true),
    /// or enter the kernel for each entry as it is queued (false).
    pub batch_submissions: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        UringOptions {
            entries: DEFAULT_RING_ENTRIES,
            pool_bytes: DEFAULT_POOL_BYTES,
            sqpoll_idle_ms: None,
            iopoll: false,
            defer_taskrun: true,
            register_buffers: true,
            wait_after_idle_polls: 0,
            wait_timeout_us: 100,
            idle_sleep_us: 0,
            batch_submissions: false,
        }
    }
}

/// What the ring was actually built with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingFeatures {
    pub single_issuer: bool,
    pub defer_taskrun: bool,
    pub sqpoll: bool,
    pub iopoll: bool,
    pub fixed_buffers: bool,
    pub fixed_file: bool,
}

/// Builds the ring, trying the strongest flag set first.
pub(crate) fn build_ring(opts: &UringOptions) -> Result<(IoUring, RingFeatures)> {
    if opts.entries == 0 || opts.entries > MAX_RING_ENTRIES {
        return Err(NvmeError::Config(format!(
            "ring entries {} must be between 1 and {MAX_RING_ENTRIES}",
            opts.entries
        )));
    }
    // Each attempt: (single_issuer, defer_taskrun). SQPOLL cannot defer task work.
    let attempts: &[(bool, bool)] = if opts.sqpoll_idle_ms.is_some() || !opts.defer_taskrun {
        &[(true, false), (false, false)]
    } else {
        &[(true, true), (true, false), (false, false)]
    };
    let mut last_err = None;
    for &(single_issuer, defer_taskrun) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(opts.entries * 2);
        if single_issuer {
            b.setup_single_issuer();
        }
        if defer_taskrun {
            // TASKRUN_FLAG lets us see pending completions without a syscall.
            b.setup_defer_taskrun().setup_taskrun_flag();
        }
        if let Some(idle) = opts.sqpoll_idle_ms {
            b.setup_sqpoll(idle);
        }
        if opts.iopoll {
            b.setup_iopoll();
        }
        match b.build(opts.entries) {
            Ok(ring) => {
                let features = RingFeatures {
                    single_issuer,
                    defer_taskrun,
                    sqpoll: opts.sqpoll_idle_ms.is_some(),
                    iopoll: opts.iopoll,
                    ..RingFeatures::default()
                };
                return Ok((ring, features));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!(
                    single_issuer,
                    defer_taskrun,
                    "io_uring setup refused, falling back"
                );
                last_err = Some(e);
            }
            Err(e) => return Err(NvmeError::io("io_uring_setup", e)),
        }
    }
    Err(NvmeError::io(
        "io_uring_setup",
        last_err.unwrap_or_else(|| std::io::Error::other("no attempt")),
    ))
}
