//! How a shard map reaches the shards and changes under them: the control thread posts
//! the newest map on a `MapBoard` (shared, only a newer epoch replaces the one there);
//! each shard keeps its own copy in a `MapCell` and adopts a posted map only if its epoch
//! is newer than its own. A request reads the shard's copy once (`current`) and routes by
//! it to the end, so a change never lands half-way through one.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hotshard_placement::ShardMap;

/// A shard's own map.
pub struct MapCell(RefCell<Rc<ShardMap>>);

impl MapCell {
    pub fn new(map: ShardMap) -> MapCell {
        MapCell(RefCell::new(Rc::new(map)))
    }

    /// The map as it is now (a request keeps this one to its end).
    pub fn current(&self) -> Rc<ShardMap> {
        self.0.borrow().clone()
    }

    /// The map for one synchronous step (routing a request): no reference count touched.
    /// Never held across an await (a newer map could not be adopted meanwhile).
    pub fn borrow(&self) -> std::cell::Ref<'_, Rc<ShardMap>> {
        self.0.borrow()
    }

    pub fn epoch(&self) -> u64 {
        self.0.borrow().epoch
    }

    /// Takes `map` if its epoch is newer than the current one's; says whether it did.
    pub fn adopt(&self, map: ShardMap) -> bool {
        let mut cur = self.0.borrow_mut();
        if map.epoch <= cur.epoch {
            return false;
        }
        *cur = Rc::new(map);
        true
    }
}

/// The newest map the control thread knows, for the shards to pick up.
#[derive(Default)]
pub struct MapBoard {
    epoch: AtomicU64,
    map: Mutex<Option<Arc<ShardMap>>>,
}

impl MapBoard {
    /// Posts `map` if it is newer than the one posted; says whether it was.
    pub fn post(&self, map: ShardMap) -> bool {
        let Ok(mut slot) = self.map.lock() else {
            return false;
        };
        if slot.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
            return false;
        }
        self.epoch.store(map.epoch, Ordering::Release);
        *slot = Some(Arc::new(map));
        true
    }

    /// The posted map if it is newer than `epoch` (one atomic load when it is not).
    pub fn newer_than(&self, epoch: u64) -> Option<Arc<ShardMap>> {
        if self.epoch.load(Ordering::Acquire) <= epoch {
            return None;
        }
        self.map.lock().ok()?.clone().filter(|m| m.epoch > epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotshard_placement::ShardAddr;

    fn map(epoch: u64) -> ShardMap {
        let shard = ShardAddr {
            node: 1,
            shard: 0,
            addr: "127.0.0.1:7400".into(),
        };
        ShardMap::spread(epoch, 4, vec![shard])
    }

    #[test]
    fn only_a_newer_epoch_replaces_a_map() {
        let board = MapBoard::default();
        assert!(board.newer_than(0).is_none());
        assert!(board.post(map(3)));
        assert!(!board.post(map(3)), "the same epoch again");
        assert!(!board.post(map(2)), "an older epoch");
        let cell = MapCell::new(map(1));
        let held = cell.current();
        let posted = board.newer_than(cell.epoch()).unwrap();
        assert!(cell.adopt((*posted).clone()));
        assert_eq!(
            (cell.epoch(), held.epoch),
            (3, 1),
            "a request keeps the map it started with"
        );
        assert!(board.newer_than(cell.epoch()).is_none());
        assert!(!cell.adopt(map(2)));
        assert_eq!(cell.epoch(), 3);
    }
}
