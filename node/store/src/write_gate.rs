//! `WriteGate`: while writes are stalled waiting for GC to free space, they pass one at a
//! time in the order they arrived, so that a stall never reorders two writes (a pipelined
//! put then delete of one key takes effect in that order, as it does without a stall).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::task::{Poll, Waker};

#[derive(Default)]
pub struct WriteGate {
    next_ticket: Cell<u64>,
    /// Tickets waiting or passing, oldest first; the front one may pass.
    queue: RefCell<VecDeque<(u64, Option<Waker>)>>,
}

/// The right to pass; dropping it (or the future waiting for it) lets the next one pass.
pub struct GatePass<'a> {
    gate: &'a WriteGate,
    ticket: u64,
}

impl WriteGate {
    /// Whether no write is waiting or passing (a write may then skip the gate).
    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Waits for every write that entered before this one to pass.
    pub async fn enter(&self) -> GatePass<'_> {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        self.queue.borrow_mut().push_back((ticket, None));
        let pass = GatePass { gate: self, ticket };
        futures_lite::future::poll_fn(|cx| {
            let mut q = self.queue.borrow_mut();
            if q.front().is_some_and(|(t, _)| *t == ticket) {
                return Poll::Ready(());
            }
            if let Some(slot) = q.iter_mut().find(|(t, _)| *t == ticket) {
                slot.1 = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        pass
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut q = self.gate.queue.borrow_mut();
        let was_front = q.front().is_some_and(|(t, _)| *t == self.ticket);
        q.retain(|(t, _)| *t != self.ticket);
        let next = if was_front {
            q.front_mut().and_then(|(_, w)| w.take())
        } else {
            None
        };
        drop(q);
        if let Some(w) = next {
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
    fn writes_pass_in_arrival_order_and_a_cancelled_one_does_not_block_the_rest() {
        let gate = WriteGate::default();
        assert!(gate.is_empty());
        let first = block_on(gate.enter());
        let mut second = Box::pin(gate.enter());
        let mut third = Box::pin(gate.enter());
        assert!(second.as_mut().now_or_never().is_none());
        assert!(third.as_mut().now_or_never().is_none());
        drop(first);
        drop(second); // cancelled while waiting
        assert!(third.as_mut().now_or_never().is_some(), "next in line passes");
        assert!(gate.is_empty());
    }
}
