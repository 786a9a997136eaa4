//! `GcLock`: lets one GC step run at a time on a shard (the background task's or a
//! stalled write's), without depending on an executor.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct GcLock {
    held: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

/// Releases the lock when the step ends, however it ends.
pub struct GcGuard<'a> {
    lock: &'a GcLock,
}

impl GcLock {
    /// Waits until no other step holds the lock, then holds it.
    pub async fn lock(&self) -> GcGuard<'_> {
        futures_lite::future::poll_fn(|cx| {
            if self.held.replace(true) {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        GcGuard { lock: self }
    }
}

impl Drop for GcGuard<'_> {
    fn drop(&mut self) {
        self.lock.held.set(false);
        // Every waiter retries: waking only one could pick a waiter that is gone.
        let waiters = std::mem::take(&mut *self.lock.waiters.borrow_mut());
        for w in waiters {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::FutureExt;

    #[test]
    fn a_second_step_waits_until_the_first_ends() {
        let lock = GcLock::default();
        let first = block_on(lock.lock());
        let mut second = Box::pin(lock.lock());
        assert!(second.as_mut().now_or_never().is_none(), "held by the first");
        drop(first);
        assert!(second.as_mut().now_or_never().is_some(), "free again");
    }
}
