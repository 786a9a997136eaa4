//! Keys with a write in flight down their chain (CRAQ's dirty versions): marked before a
//! replica applies the write, clean again once every replica after it has the write
//! durably. A read of a dirty key waits until it is clean, so that no replica answers
//! with a version the tail might never get.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};

#[derive(Default)]
struct Entry {
    writes: u32,
    waiters: Vec<Waker>,
}

/// One shard's dirty keys. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct DirtyKeys {
    keys: Rc<RefCell<HashMap<Rc<[u8]>, Entry>>>,
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
}
