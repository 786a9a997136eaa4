//! Keys with a write in flight down their chain (CRAQ's dirty versions): marked before a
//! replica applies the write, clean again once every replica after it has the write
//! durably. A read of a dirty key waits until it is clean, so that no replica answers
//! with a version the tail might never get.
//!
//! A write this replica applied and could not get acknowledged (its chain changed under
//! it: `chain_view::next_hop` answered Abandoned) is not clean either: the replicas after
//! this one may never have had it, and its predecessor is about to send it again by the
//! new chain. Its guard is parked (`park`) until that write, or a newer one of the key, is
//! acknowledged here (`settled`), or until a time limit (`expire_parked`; a predecessor
//! that died sends nothing again). Dropping the guard at once let a replica answer the
//! write's value while the replicas after it still answered the one before (two
//! nemesis histories of fresh-clone CI, session 21: a read of the new value, then one of
//! the old at the next replica, the write still in flight).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

#[derive(Default)]
struct Entry {
    writes: u32,
    waiters: Vec<Waker>,
}

/// A parked guard: the version of the write it stands for and until when it is kept.
struct Parked {
    version: u64,
    until: Instant,
    guard: DirtyGuard,
}

/// One shard's dirty keys. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct DirtyKeys {
    keys: Rc<RefCell<HashMap<Rc<[u8]>, Entry>>>,
    parked: Rc<RefCell<Vec<Parked>>>,
}

/// A write of one key in flight; the key is clean again when every guard of it is gone.
/// It shares the table's copy of the key (one allocation per dirty key, not per write).
pub struct DirtyGuard {
    keys: DirtyKeys,
    key: Rc<[u8]>,
}

impl DirtyKeys {
    /// Marks `key` dirty until the returned guard is dropped.
    pub fn mark(&self, key: &[u8]) -> DirtyGuard {
        let mut keys = self.keys.borrow_mut();
        let key = match keys.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Rc::from(key),
        };
        keys.entry(key.clone()).or_default().writes += 1;
        DirtyGuard {
            keys: self.clone(),
            key,
        }
    }

    pub fn is_dirty(&self, key: &[u8]) -> bool {
        self.keys.borrow().contains_key(key)
    }

    /// Keys dirty now.
    pub fn len(&self) -> usize {
        self.keys.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.borrow().is_empty()
    }

    /// Keeps `guard`'s key dirty for a write of `version` this replica applied and could
    /// not get acknowledged: until a write of the key at `version` or later is
    /// acknowledged here (`settled`), or `until` has passed (`expire_parked`).
    pub fn park(&self, guard: DirtyGuard, version: u64, until: Instant) {
        self.parked.borrow_mut().push(Parked {
            version,
            until,
            guard,
        });
    }

    /// A write of `key` at `version` is acknowledged here: the parked writes of the key
    /// at that version or before are the chain's (or superseded by it).
    pub fn settled(&self, key: &[u8], version: u64) {
        self.release(|p| &*p.guard.key == key && p.version <= version);
    }

    /// Lets go of the parked writes whose time limit is `now` or before.
    pub fn expire_parked(&self, now: Instant) {
        self.release(|p| p.until <= now);
    }

    /// Parked writes now.
    pub fn parked(&self) -> usize {
        self.parked.borrow().len()
    }

    fn release(&self, done: impl Fn(&Parked) -> bool) {
        if self.parked.borrow().is_empty() {
            return;
        }
        // Dropped once the table is no longer borrowed (a guard's drop wakes readers).
        let released: Vec<Parked> = {
            let mut parked = self.parked.borrow_mut();
            let (gone, kept) = std::mem::take(&mut *parked).into_iter().partition(|p| done(p));
            *parked = kept;
            gone
        };
        drop(released);
    }

    /// Resolves once `key` is clean (at once if it is).
    pub async fn clean(&self, key: &[u8]) {
        futures_lite::future::poll_fn(|cx| match self.keys.borrow_mut().get_mut(key) {
            None => Poll::Ready(()),
            Some(e) => {
                if !e.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    e.waiters.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
        .await
    }
}

impl DirtyGuard {
    /// The key this guard keeps dirty.
    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl Drop for DirtyGuard {
    fn drop(&mut self) {
        let mut keys = self.keys.keys.borrow_mut();
        let Some(e) = keys.get_mut(&self.key) else {
            return;
        };
        e.writes -= 1;
        if e.writes == 0 {
            let e = keys.remove(&self.key).expect("just found");
            drop(keys);
            e.waiters.into_iter().for_each(Waker::wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Context;

    #[test]
    fn a_key_is_clean_when_its_last_write_is_done() {
        let d = DirtyKeys::default();
        let a = d.mark(b"k");
        let b = d.mark(b"k");
        assert!(d.is_dirty(b"k") && !d.is_dirty(b"j"));
        let mut wait = Box::pin(d.clean(b"k"));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        drop(a);
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "one write still in flight"
        );
        drop(b);
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        assert_eq!(d.len(), 0);
        let mut other = Box::pin(d.clean(b"j"));
        assert!(other.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_parked_write_keeps_its_key_dirty_until_it_or_a_newer_one_settles_or_time_is_up() {
        let d = DirtyKeys::default();
        let now = Instant::now();
        let later = now + std::time::Duration::from_secs(10);
        d.park(d.mark(b"k"), 7, later);
        d.park(d.mark(b"j"), 3, now);
        assert!(d.is_dirty(b"k") && d.is_dirty(b"j"));
        d.settled(b"k", 6);
        assert!(d.is_dirty(b"k"), "an older write settling settles nothing");
        d.settled(b"x", 9);
        assert!(d.is_dirty(b"k"), "another key");
        let mut wait = Box::pin(d.clean(b"k"));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        d.settled(b"k", 7);
        assert!(!d.is_dirty(b"k"));
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // A newer write settles it too; a write in flight beside it keeps the key dirty.
        d.park(d.mark(b"k"), 8, later);
        let in_flight = d.mark(b"k");
        d.settled(b"k", 12);
        assert!(d.is_dirty(b"k"));
        drop(in_flight);
        assert!(!d.is_dirty(b"k"));
        // Time: only the parked writes whose limit has passed.
        assert!(d.is_dirty(b"j"));
        d.park(d.mark(b"k"), 20, later);
        d.expire_parked(now);
        assert!(!d.is_dirty(b"j") && d.is_dirty(b"k"));
        d.expire_parked(later);
        assert_eq!((d.len(), d.parked()), (0, 0));
    }
}
