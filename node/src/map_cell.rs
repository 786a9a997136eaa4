//! How a shard map reaches the shards and changes under them: the control thread posts
//! the newest map on a `MapBoard` (shared, only a newer epoch replaces the one there);
//! each shard keeps its own copy in a `MapCell` and adopts a posted map only if its epoch
//! is newer than its own. A request reads the shard's copy once (`current`) and routes by
//! it to the end, so a change never lands half-way through one. A request that names a
//! newer epoch than the shard's waits for it here (`taken`), woken when the shard adopts.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hotshard_placement::ShardMap;

/// How far past the newest epoch this node knows (the shard's or the board's) a request's
/// epoch may be and still be waited for. The coordinator makes one epoch per map change and
/// the control thread posts each within milliseconds, so a sender is at most a few ahead;
/// a larger claim is answered Busy at once instead of holding the request.
pub const EPOCH_WAIT_AHEAD: u64 = 16;

/// A shard's own map, the board it is fenced by (in a cluster), the map's encoding once
/// asked for (the map a WrongShard or GetShardMap answer carries) with its epoch, and the
/// requests waiting for a newer epoch.
pub struct MapCell {
    map: RefCell<Rc<ShardMap>>,
    board: Option<Arc<MapBoard>>,
    encoded: RefCell<Option<(u64, Rc<Vec<u8>>)>>,
    waiters: RefCell<BTreeMap<u64, Waker>>,
    next_waiter: Cell<u64>,
    /// The shard's map-adopting loop, woken when a first request starts to wait.
    looker: RefCell<Option<Waker>>,
}

impl MapCell {
    pub fn new(map: ShardMap) -> MapCell {
        MapCell::with_board(map, None)
    }

    /// A cluster shard's map: it answers nothing while `board` says the node's lease is
    /// not confirmed recently enough (`MapBoard::fenced`).
    pub fn fenced_by(map: ShardMap, board: Arc<MapBoard>) -> MapCell {
        MapCell::with_board(map, Some(board))
    }

    fn with_board(map: ShardMap, board: Option<Arc<MapBoard>>) -> MapCell {
        MapCell {
            map: RefCell::new(Rc::new(map)),
            board,
            encoded: RefCell::new(None),
            waiters: RefCell::new(BTreeMap::new()),
            next_waiter: Cell::new(0),
            looker: RefCell::new(None),
        }
    }

    /// The cluster's peer key, once the node holds it (None on a single node: it has no
    /// peers).
    pub fn peer_key(&self) -> Option<&[u8]> {
        self.board.as_ref()?.peer_key()
    }

    /// The board this shard is fenced by (in a cluster).
    pub fn board(&self) -> Option<&Arc<MapBoard>> {
        self.board.as_ref()
    }

    /// Whether a request naming `epoch` may wait for it: in a cluster (a single node's
    /// map never changes), and no more than `EPOCH_WAIT_AHEAD` past the newest epoch the
    /// shard or its board holds.
    pub fn may_wait_for(&self, epoch: u64) -> bool {
        let Some(board) = self.board.as_ref() else {
            return false;
        };
        epoch <= self.epoch().max(board.epoch()).saturating_add(EPOCH_WAIT_AHEAD)
    }

    /// Resolves once the shard holds a map of at least `epoch` (adopting a posted one
    /// first). It is woken when the shard adopts a map, never polled on a timer of its
    /// own; the caller bounds the wait. Dropping it forgets its waker.
    pub fn taken(&self, epoch: u64) -> EpochTaken<'_> {
        let id = self.next_waiter.get();
        self.next_waiter.set(id.wrapping_add(1));
        EpochTaken {
            cell: self,
            id,
            epoch,
        }
    }

    /// Whether any request waits for a newer epoch (the shard then looks at the board
    /// more often).
    pub fn has_waiters(&self) -> bool {
        !self.waiters.borrow().is_empty()
    }

    /// Resolves once a request waits for a newer epoch (the shard's map-adopting loop
    /// then looks at the board more often).
    pub async fn first_waiter(&self) {
        std::future::poll_fn(|cx| {
            if self.has_waiters() {
                return Poll::Ready(());
            }
            *self.looker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn wake_waiters(&self) {
        let woken = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, waker) in woken {
            waker.wake();
        }
    }

    /// Seconds since etcd last confirmed the node's lease (None: not in a cluster, or never).
    pub fn lease_age_secs(&self) -> Option<f64> {
        let at = self.board.as_ref()?.lease_confirmed_ms.load(Ordering::Acquire);
        (at != 0).then(|| coarse_now_ms().saturating_sub(at) as f64 / 1000.0)
    }

    /// Whether the shard must not answer keyed requests now: the node's lease is not
    /// confirmed recently enough. A newer map posted than the one this shard holds is
    /// adopted here first (the shard also picks it up every `MAP_CHECK_EVERY`), so that
    /// nothing is routed by a stale map and nothing is refused for the moment in between;
    /// only if the cell is borrowed right now (it never is when this is called) does a
    /// newer map fence instead.
    pub fn fenced(&self) -> bool {
        let Some(board) = self.board.as_ref() else {
            return false;
        };
        if board.fenced() {
            return true;
        }
        let posted = board.epoch.load(Ordering::Acquire);
        let Ok(mut cur) = self.map.try_borrow_mut() else {
            return posted > self.epoch();
        };
        if posted > cur.epoch {
            if let Some(map) = board.newer_than(cur.epoch) {
                *cur = Rc::new((*map).clone());
                drop(cur);
                self.wake_waiters();
            }
        }
        false
    }

    /// The map as it is now (a request keeps this one to its end).
    pub fn current(&self) -> Rc<ShardMap> {
        self.map.borrow().clone()
    }

    /// The map for one synchronous step (routing a request): no reference count touched.
    /// Never held across an await (a newer map could not be adopted meanwhile).
    pub fn borrow(&self) -> std::cell::Ref<'_, Rc<ShardMap>> {
        self.map.borrow()
    }

    pub fn epoch(&self) -> u64 {
        self.map.borrow().epoch
    }

    /// The current map encoded for the wire, encoded once per epoch (a map of 4,096
    /// chains is about 100 KB).
    pub fn encoded(&self) -> Result<Rc<Vec<u8>>, hotshard_placement::MapError> {
        let map = self.current();
        if let Some((epoch, bytes)) = &*self.encoded.borrow() {
            if *epoch == map.epoch {
                return Ok(bytes.clone());
            }
        }
        let bytes = Rc::new(map.to_bytes()?);
        *self.encoded.borrow_mut() = Some((map.epoch, bytes.clone()));
        Ok(bytes)
    }

    /// Takes `map` if its epoch is newer than the current one's; says whether it did.
    pub fn adopt(&self, map: ShardMap) -> bool {
        let mut cur = self.map.borrow_mut();
        if map.epoch <= cur.epoch {
            return false;
        }
        *cur = Rc::new(map);
        drop(cur);
        self.wake_waiters();
        true
    }
}

/// A wait for the shard to hold a map of at least an epoch (`MapCell::taken`).
pub struct EpochTaken<'a> {
    cell: &'a MapCell,
    id: u64,
    epoch: u64,
}

impl Future for EpochTaken<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // `fenced` adopts a posted map first (and wakes the others waiting).
        let fenced = self.cell.fenced();
        if !fenced && self.cell.epoch() >= self.epoch {
            return Poll::Ready(());
        }
        let first = {
            let mut waiters = self.cell.waiters.borrow_mut();
            waiters.insert(self.id, cx.waker().clone());
            waiters.len() == 1
        };
        if first {
            if let Some(looker) = self.cell.looker.borrow_mut().take() {
                looker.wake();
            }
        }
        Poll::Pending
    }
}

impl Drop for EpochTaken<'_> {
    fn drop(&mut self) {
        self.cell.waiters.borrow_mut().remove(&self.id);
    }
}

/// The newest map the control thread knows, for the shards to pick up, and when etcd last
/// confirmed the node's lease (for self-fencing).
#[derive(Default)]
pub struct MapBoard {
    epoch: AtomicU64,
    map: Mutex<Option<Arc<ShardMap>>>,
    /// Coarse monotonic milliseconds of the last confirmation of the lease; 0: never.
    lease_confirmed_ms: AtomicU64,
    /// Fence once the last confirmation is older than this; 0: never fence.
    fence_after_ms: AtomicU64,
    /// Chains the shards have caught up with, for the control thread to report in etcd.
    caught_up: Mutex<Vec<CaughtUp>>,
    /// Split copies the shards have done (issue 33), for the control thread to report.
    split_done: Mutex<Vec<hotshard_placement::SplitDone>>,
    /// Splits the shards ask for (first keys of the ranges to split off).
    split_wanted: Mutex<Vec<Vec<u8>>>,
    /// This node's id and its current registration (its etcd lease; 0: not registered).
    node: AtomicU64,
    incarnation: AtomicU64,
    /// Whether the map posted last records this node under its current registration. A
    /// node that restarted (or lost its lease and registered again) finds maps that still
    /// name it serving under its previous registration: it was serving then, with a
    /// dirty-key set and writes in flight it no longer has, and the coordinator has not
    /// yet said what it is now. Until a map records the current registration, the node
    /// treats every replica of its own as offline: it answers nothing of the cluster.
    recorded: std::sync::atomic::AtomicBool,
    /// The cluster's peer key (from etcd): what this node's shards prove to other nodes,
    /// and require of a connection before any node-to-node request.
    peer_key: std::sync::OnceLock<Vec<u8>>,
}

/// A shard caught up with a partition's chain at a chain version (issue 20's resync).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaughtUp {
    pub partition: u32,
    pub node: u32,
    pub shard: u32,
    pub chain_version: u64,
}

/// CLOCK_MONOTONIC_COARSE in milliseconds: a few nanoseconds to read, a few milliseconds of
/// resolution, and it keeps counting while the process is stopped (SIGSTOP), so a node
/// that wakes after its lease expired fences itself before answering anything.
pub fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

impl MapBoard {
    /// A board whose shards fence themselves once the lease is unconfirmed for `after`
    /// (half the lease TTL: before the coordinator could give the node's chains away).
    pub fn fencing_after(after: std::time::Duration) -> MapBoard {
        let board = MapBoard::default();
        board
            .fence_after_ms
            .store(after.as_millis().max(1) as u64, Ordering::Relaxed);
        board
    }

    /// etcd confirmed the lease `ago` before now.
    pub fn lease_confirmed(&self, ago: std::time::Duration) {
        let at = coarse_now_ms().saturating_sub(ago.as_millis() as u64).max(1);
        self.lease_confirmed_ms.fetch_max(at, Ordering::Release);
    }

    /// Whether the node must answer nothing of the cluster: its lease is unconfirmed for
    /// longer than the fencing limit, or the map posted does not record its current
    /// registration (`registered`).
    pub fn fenced(&self) -> bool {
        let after = self.fence_after_ms.load(Ordering::Relaxed);
        if after == 0 {
            return false;
        }
        if !self.recorded.load(Ordering::Acquire) {
            return true;
        }
        let at = self.lease_confirmed_ms.load(Ordering::Acquire);
        at == 0 || coarse_now_ms().saturating_sub(at) > after
    }

    /// The cluster's peer key, read from etcd (kept once: a node belongs to one cluster).
    pub fn set_peer_key(&self, key: Vec<u8>) {
        let _ = self.peer_key.set(key);
    }

    pub fn peer_key(&self) -> Option<&[u8]> {
        self.peer_key.get().map(Vec::as_slice)
    }

    /// The node registered as `node` under `incarnation` (its lease): until a map posted
    /// records that, the board fences the node's shards.
    pub fn registered(&self, node: u32, incarnation: u64) {
        let Ok(slot) = self.map.lock() else {
            return;
        };
        self.node.store(node as u64, Ordering::Release);
        self.incarnation.store(incarnation, Ordering::Release);
        self.note_recorded(slot.as_deref());
    }

    /// Whether `map` records this node under its current registration (kept for `fenced`).
    /// Called with the map slot locked, so that a post and a registration do not cross.
    fn note_recorded(&self, map: Option<&ShardMap>) {
        let incarnation = self.incarnation.load(Ordering::Acquire);
        let node = self.node.load(Ordering::Acquire) as u32;
        let recorded = incarnation != 0 && map.is_some_and(|m| m.incarnation(node) == Some(incarnation));
        self.recorded.store(recorded, Ordering::Release);
    }

    /// Posts `map` if it is newer than the one posted; says whether it was.
    pub fn post(&self, map: ShardMap) -> bool {
        let Ok(mut slot) = self.map.lock() else {
            return false;
        };
        if slot.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
            return false;
        }
        self.epoch.store(map.epoch, Ordering::Release);
        self.note_recorded(Some(&map));
        *slot = Some(Arc::new(map));
        true
    }

    /// A shard reports a chain caught up with.
    pub fn report_caught_up(&self, c: CaughtUp) {
        if let Ok(mut list) = self.caught_up.lock() {
            list.push(c);
        }
    }

    /// The reports not yet written to etcd, taken.
    pub fn take_caught_up(&self) -> Vec<CaughtUp> {
        self.caught_up
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// A shard reports a split's copy done for a state.
    pub fn report_split_done(&self, d: hotshard_placement::SplitDone) {
        if let Ok(mut list) = self.split_done.lock() {
            list.push(d);
        }
    }

    /// A shard asks for a split of a bucket index that grew past its limit.
    pub fn ask_split(&self, from: Vec<u8>) {
        if let Ok(mut list) = self.split_wanted.lock() {
            list.push(from);
        }
    }

    /// The split requests not yet written to etcd, taken.
    pub fn take_split_wanted(&self) -> Vec<Vec<u8>> {
        self.split_wanted
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// The split reports not yet written to etcd, taken.
    pub fn take_split_done(&self) -> Vec<hotshard_placement::SplitDone> {
        self.split_done
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// The epoch of the map posted last (0: none).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
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

    /// A map of node 1's one shard, recording node 1 under registration 7.
    fn map(epoch: u64) -> ShardMap {
        map_recording(epoch, 7)
    }

    fn map_recording(epoch: u64, incarnation: u64) -> ShardMap {
        let shard = ShardAddr {
            node: 1,
            shard: 0,
            addr: "127.0.0.1:7400".into(),
        };
        let mut map = ShardMap::spread(epoch, 4, vec![shard]);
        map.incarnations = vec![hotshard_placement::NodeIncarnation { node: 1, incarnation }];
        map
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

    #[test]
    fn a_shard_is_fenced_until_the_lease_is_confirmed_and_once_it_is_stale() {
        assert!(
            !MapBoard::default().fenced(),
            "a board without fencing never fences"
        );
        let board = Arc::new(MapBoard::fencing_after(std::time::Duration::from_millis(200)));
        board.post(map(1));
        board.registered(1, 7);
        let cell = MapCell::fenced_by(map(1), board.clone());
        assert!(cell.fenced(), "never confirmed");
        board.lease_confirmed(std::time::Duration::ZERO);
        assert!(!cell.fenced());
        board.lease_confirmed(std::time::Duration::from_millis(500));
        assert!(!cell.fenced(), "an older confirmation never moves the mark back");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(cell.fenced(), "unconfirmed for longer than the limit");
        assert!(!MapCell::new(map(1)).fenced());
        // Fresh lease, and a newer map posted than the shard holds: adopted by the check
        // itself, never answered from the older one.
        board.lease_confirmed(std::time::Duration::ZERO);
        assert!(!cell.fenced());
        board.post(map(2));
        assert!(!cell.fenced());
        assert_eq!(cell.epoch(), 2, "the posted map adopted by the check");
        // While the cell is borrowed it cannot adopt: a newer map fences instead.
        board.post(map(3));
        let held = cell.borrow();
        assert!(cell.fenced());
        drop(held);
        assert!(!cell.fenced());
        assert_eq!(cell.epoch(), 3);
    }

    /// A waker that counts its wakes.
    struct CountingWaker(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_request_waits_for_a_newer_epoch_only_near_what_the_node_knows_and_is_woken_by_adoption() {
        let board = Arc::new(MapBoard::fencing_after(std::time::Duration::from_secs(60)));
        board.registered(1, 7);
        board.lease_confirmed(std::time::Duration::ZERO);
        let cell = MapCell::fenced_by(map(5), board.clone());
        assert!(cell.may_wait_for(5 + EPOCH_WAIT_AHEAD));
        assert!(
            !cell.may_wait_for(6 + EPOCH_WAIT_AHEAD),
            "an epoch far past anything the node knows is not waited for"
        );
        assert!(!cell.may_wait_for(u64::MAX));
        assert!(
            !MapCell::new(map(5)).may_wait_for(6),
            "a single node's map never changes: nothing to wait for"
        );
        board.post(map(40));
        assert!(
            cell.may_wait_for(40 + EPOCH_WAIT_AHEAD),
            "the board's epoch counts too"
        );

        let counter = Arc::new(CountingWaker(Default::default()));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut wait = Box::pin(cell.taken(41));
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "the posted 40 adopted, 41 not yet"
        );
        assert_eq!(cell.epoch(), 40);
        assert!(cell.has_waiters());
        let mut looker = Box::pin(cell.first_waiter());
        assert!(
            looker.as_mut().poll(&mut cx).is_ready(),
            "the shard's loop sees a waiter"
        );
        assert!(cell.adopt(map(41)));
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "woken by the adoption");
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        drop(wait);

        let mut never = Box::pin(cell.taken(50));
        assert!(never.as_mut().poll(&mut cx).is_pending());
        assert!(never.as_mut().poll(&mut cx).is_pending());
        assert_eq!(cell.waiters.borrow().len(), 1, "one waker per waiting request");
        drop(never);
        assert!(!cell.has_waiters(), "a wait that timed out leaves nothing behind");

        let mut looker = Box::pin(cell.first_waiter());
        assert!(looker.as_mut().poll(&mut cx).is_pending());
        let before = counter.0.load(Ordering::SeqCst);
        let mut wait = Box::pin(cell.taken(42));
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            before + 1,
            "the first waiter wakes the shard's loop"
        );
    }

    #[test]
    fn a_node_answers_nothing_until_a_map_records_its_current_registration() {
        let board = Arc::new(MapBoard::fencing_after(std::time::Duration::from_secs(60)));
        board.lease_confirmed(std::time::Duration::ZERO);
        let cell = MapCell::fenced_by(map_recording(1, 7), board.clone());
        board.post(map_recording(1, 7));
        assert!(cell.fenced(), "not registered yet");
        board.registered(1, 7);
        assert!(!cell.fenced(), "the map records this registration");
        // Restarted (or its lease lost and registered again): the map etcd holds still
        // names it under the old registration, where it served with writes in flight and a
        // dirty-key set it no longer has. It serves nothing of it.
        board.registered(1, 8);
        assert!(cell.fenced());
        assert!(cell.fenced(), "the same map again changes nothing");
        let stale = map_recording(2, 7);
        board.post(stale);
        assert!(
            cell.fenced(),
            "a newer map that still records the old registration"
        );
        board.post(map_recording(3, 8));
        assert!(
            !cell.fenced(),
            "the coordinator has recorded the new registration"
        );
        assert_eq!(cell.epoch(), 3);
        let elsewhere = MapBoard::fencing_after(std::time::Duration::from_secs(60));
        elsewhere.registered(2, 8);
        elsewhere.lease_confirmed(std::time::Duration::ZERO);
        elsewhere.post(map_recording(3, 8));
        assert!(elsewhere.fenced(), "a map recording only another node");
    }
}
