//! The writes executing on a shard, in the order they began: a split's fenced copy waits
//! until every write that began before it has finished (it is then in the index, dirty
//! until the tail has it, or it failed), so that the copy misses none the old range took.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

#[derive(Default)]
pub struct StartedWrites {
    next: Cell<u64>,
    running: RefCell<BTreeSet<u64>>,
}

/// A write running; it is finished when this is dropped.
pub struct WriteTicket<'a> {
    of: &'a StartedWrites,
    seq: u64,
}

impl StartedWrites {
    pub fn begin(&self) -> WriteTicket<'_> {
        let seq = self.next.get();
        self.next.set(seq + 1);
        self.running.borrow_mut().insert(seq);
        WriteTicket { of: self, seq }
    }

    /// A mark: the writes begun before it are those `done_before` waits for.
    pub fn mark(&self) -> u64 {
        self.next.get()
    }

    /// Whether every write begun before `mark` has finished.
    pub fn done_before(&self, mark: u64) -> bool {
        self.running.borrow().first().is_none_or(|&first| first >= mark)
    }
}

impl Drop for WriteTicket<'_> {
    fn drop(&mut self) {
        self.of.running.borrow_mut().remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_waits_only_for_writes_begun_before_it() {
        let w = StartedWrites::default();
        let a = w.begin();
        let mark = w.mark();
        let b = w.begin();
        assert!(!w.done_before(mark));
        drop(a);
        assert!(w.done_before(mark), "b began after the mark");
        drop(b);
        assert!(w.done_before(w.mark()));
    }
}
