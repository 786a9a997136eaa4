//! A count on one shard's thread that tasks can wait on (open connections, requests in
//! flight, peers drained): a stopping shard waits until it reaches a value instead of
//! sleeping in a loop and looking.

use std::cell::{Cell, RefCell};
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct WaitableCount {
    count: Cell<usize>,
    waiters: RefCell<Vec<Waker>>,
}

impl WaitableCount {
    pub fn get(&self) -> usize {
        self.count.get()
    }

    pub fn add(&self) {
        self.set(self.count.get() + 1);
    }

    pub fn sub(&self) {
        let now = self.count.get();
        debug_assert!(now > 0, "count below zero");
        self.set(now.saturating_sub(1));
    }

    fn set(&self, value: usize) {
        self.count.set(value);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Waits until `done(count)` holds (checked now and after every change).
    pub async fn wait_until(&self, done: impl Fn(usize) -> bool) {
        futures_lite::future::poll_fn(|cx| {
            if done(self.count.get()) {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// Counts one while alive: `add` now, `sub` when dropped, however the holder ends.
pub struct Counted<'a>(&'a WaitableCount);

impl<'a> Counted<'a> {
    pub fn new(count: &'a WaitableCount) -> Self {
        count.add();
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.sub();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};

    #[test]
    fn a_waiter_wakes_when_the_count_gets_there() {
        let c = WaitableCount::default();
        let held: Vec<_> = (0..3).map(|_| Counted::new(&c)).collect();
        assert_eq!(c.get(), 3);
        let mut wait = Box::pin(c.wait_until(|n| n == 0));
        assert!(
            block_on(poll_once(wait.as_mut())).is_none(),
            "three still counted"
        );
        drop(held);
        assert_eq!(c.get(), 0);
        assert!(block_on(poll_once(wait.as_mut())).is_some());
    }
}
