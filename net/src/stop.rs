//! A stop signal shared by the connections of one executor: when it fires, each connection
//! finishes the request it is reading, answers everything it has read, and closes.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Fired once by the owner (a shard that is shutting down); watched by every connection.
#[derive(Default)]
pub struct StopSignal {
    stopped: Cell<bool>,
    /// One slot per watching connection: the waker of its current wait, if any.
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl StopSignal {
    pub fn new() -> Rc<StopSignal> {
        Rc::new(StopSignal::default())
    }

    /// Fires the signal and wakes every connection waiting on it.
    pub fn stop(&self) {
        self.stopped.set(true);
        let wakers: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// A connection's view of the signal; its slot is given back when dropped.
    pub fn watch(self: &Rc<Self>) -> StopWatch {
        let slot = match self.free.borrow_mut().pop() {
            Some(s) => s,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(None);
                slots.len() - 1
            }
        };
        StopWatch {
            signal: self.clone(),
            slot,
        }
    }
}

pub struct StopWatch {
    signal: Rc<StopSignal>,
    slot: usize,
}

impl StopWatch {
    pub fn is_stopped(&self) -> bool {
        self.signal.is_stopped()
    }

    /// Resolves once the signal has fired.
    pub fn stopped(&self) -> impl Future<Output = ()> + '_ {
        futures_lite::future::poll_fn(move |cx| {
            if self.signal.is_stopped() {
                return Poll::Ready(());
            }
            let mut slots = self.signal.slots.borrow_mut();
            match &slots[self.slot] {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slots[self.slot] = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.signal.slots.borrow_mut()[self.slot] = None;
        self.signal.free.borrow_mut().push(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_wakes_every_watcher_and_slots_are_reused() {
        let signal = StopSignal::new();
        let (a, b) = (signal.watch(), signal.watch());
        let mut wait = Box::pin(a.stopped());
        let mut cx = std::task::Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(!b.is_stopped());
        drop(wait);
        let slot_b = b.slot;
        drop(b);
        assert_eq!(signal.watch().slot, slot_b, "a dropped watcher's slot is reused");
        signal.stop();
        assert!(a.is_stopped());
        assert!(futures_lite::future::block_on(async {
            a.stopped().await;
            true
        }));
        assert!(
            signal.slots.borrow().iter().all(Option::is_none),
            "the stop took every waker"
        );
    }
}
