//! `ReadSlots`: at most `max` device reads for gets in flight on one store; the rest wait
//! their turn, first come first served, instead of failing. The device queue answers a
//! read past its ring's capacity with `RingFull`: a RESP pipeline of 50 connections × 16
//! GETs put 800 reads on one shard's 256-entry ring, and 262 of them were answered
//! "internal error" (`bench/resp-vs-redis.sh`, session 13).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Poll, Waker};

pub struct ReadSlots {
    max: usize,
    used: Cell<usize>,
    next_ticket: Cell<u64>,
    /// Reads waiting for a slot, oldest first.
    waiting: RefCell<VecDeque<(u64, Option<Waker>)>>,
}

/// A slot held by one read; dropping it lets the next waiting read go.
pub struct ReadSlot<'a> {
    slots: &'a ReadSlots,
}

/// A place in the line; dropped before its turn (a cancelled read), it leaves the line.
struct Waiting<'a> {
    slots: &'a ReadSlots,
    ticket: u64,
    done: bool,
}

impl ReadSlots {
    pub fn new(max: usize) -> ReadSlots {
        ReadSlots {
            max: max.max(1),
            used: Cell::new(0),
            next_ticket: Cell::new(0),
            waiting: RefCell::new(VecDeque::new()),
        }
    }

    /// Reads holding a slot now.
    pub fn in_use(&self) -> usize {
        self.used.get()
    }

    /// Waits for a slot (at once while there is room and nobody waits).
    pub async fn take(&self) -> ReadSlot<'_> {
        if self.used.get() < self.max && self.waiting.borrow().is_empty() {
            self.used.set(self.used.get() + 1);
            return ReadSlot { slots: self };
        }
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.waiting.borrow_mut().push_back((ticket, None));
        let mut place = Waiting {
            slots: self,
            ticket,
            done: false,
        };
        futures_lite::future::poll_fn(|cx| {
            let mut q = self.waiting.borrow_mut();
            if q.front().is_some_and(|(t, _)| *t == ticket) && self.used.get() < self.max {
                q.pop_front();
                self.used.set(self.used.get() + 1);
                place.done = true;
                return Poll::Ready(());
            }
            if let Some(slot) = q.iter_mut().find(|(t, _)| *t == ticket) {
                slot.1 = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        drop(place);
        self.wake_front();
        ReadSlot { slots: self }
    }

    fn wake_front(&self) {
        if self.used.get() >= self.max {
            return;
        }
        let w = self.waiting.borrow_mut().front_mut().and_then(|(_, w)| w.take());
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl Drop for ReadSlot<'_> {
    fn drop(&mut self) {
        self.slots.used.set(self.slots.used.get() - 1);
        self.slots.wake_front();
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.slots.waiting.borrow_mut().retain(|(t, _)| *t != self.ticket);
            self.slots.wake_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::FutureExt;

    #[test]
    fn reads_past_the_limit_wait_in_order_and_a_cancelled_one_leaves_the_line() {
        let slots = ReadSlots::new(2);
        let a = block_on(slots.take());
        let b = block_on(slots.take());
        let mut c = Box::pin(slots.take());
        let mut d = Box::pin(slots.take());
        let mut e = Box::pin(slots.take());
        assert!(c.as_mut().now_or_never().is_none());
        assert!(d.as_mut().now_or_never().is_none());
        assert!(e.as_mut().now_or_never().is_none());
        drop(d); // cancelled while waiting
        drop(a);
        let c = c.as_mut().now_or_never().expect("first in line, a slot free");
        assert!(e.as_mut().now_or_never().is_none(), "no slot free");
        drop(b);
        let e = e.as_mut().now_or_never().expect("next in line");
        assert_eq!(slots.in_use(), 2);
        drop((c, e));
        assert_eq!(slots.in_use(), 0);
    }
}
