//! Issue 16's engine defects, each replayed deterministically on SimDevice: an empty batch
//! that hid later writes from recovery, a queued batch nobody drove, versions decided while
//! not yet durable, batches of a reused segment's earlier life, LSNs that restarted on an
//! emptied store, and a store that must always drain back to idle under pool pressure.
//!
//! Every test takes its seed from `HOTSHARD_PRESSURE_SEED` (default fixed) and prints it.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use common::*;
use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use hotshard_nvme::{BlockQueue, SimDevice, SimQueue, SplitMix64};
use hotshard_store::{GcOutcome, Store, StoreConfig, StoreError};

fn seed() -> u64 {
    let seed = std::env::var("HOTSHARD_PRESSURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    eprintln!("HOTSHARD_PRESSURE_SEED={seed}");
    seed
}

fn open(dev: &SimDevice, pool_bytes: usize, cfg: &StoreConfig) -> Store<SimQueue> {
    let q = dev.queue(pool_bytes).unwrap();
    block_on(Store::open(q, cfg.clone())).unwrap().0
}

/// Power cut now, then the device back with what was durable, and the store reopened.
fn power_cycle(dev: &SimDevice, store: Store<SimQueue>, cfg: &StoreConfig) -> Store<SimQueue> {
    dev.cut_power();
    drop(store);
    dev.recover();
    open(dev, 4 << 20, cfg)
}

fn read(store: &Store<SimQueue>, key: &[u8]) -> Option<u64> {
    match block_on(store.get(key, None)) {
        Ok((v, _)) => Some(check_value(v.as_slice()).expect("self-checking value")),
        Err(StoreError::NotFound) => None,
        Err(e) => panic!("get {:?}: {e}", String::from_utf8_lossy(key)),
    }
}

/// Polls the inner future at most `polls` times, then drops it: a request whose connection
/// went away while it was being answered.
struct Abandon<F> {
    inner: Option<Pin<Box<F>>>,
    polls: u32,
}

impl<F: Future> Future for Abandon<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            self.inner = None;
            return Poll::Ready(None);
        }
        self.polls -= 1;
        let inner = self.inner.as_mut().expect("polled after it ended");
        match inner.as_mut().poll(cx) {
            Poll::Ready(out) => Poll::Ready(Some(out)),
            Poll::Pending => {
                // Come back soon, so that the request is dropped while it still waits.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

/// A waker that records whether it was woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn flag_waker() -> (Arc<Flag>, Waker) {
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    (flag.clone(), Waker::from(flag))
}

fn poll_once<T>(fut: &mut Pin<Box<dyn Future<Output = T> + '_>>, waker: &Waker) -> Poll<T> {
    fut.as_mut().poll(&mut Context::from_waker(waker))
}

/// The loss of issue 16, step by step: the DMA pool has room for a batch's records but not
/// for its value buffer, so a large put is refused Busy. The old `stage` had already opened
/// a batch (and taken an LSN); the next large put sealed it empty, it was written with LSN
/// 0, and recovery took it for the end of its segment. Everything after it in that segment
/// was lost: a small key's newer version (the older one came back) and GC's copy of a key
/// whose original segment GC then erased (not found).
#[test]
fn a_refused_large_put_never_hides_later_writes_from_recovery() {
    let seed = seed();
    let cfg = small_config(SIM_BYTES);
    let dev = SimDevice::new(SIM_BYTES, 4096, seed).unwrap();
    let pool_bytes = 256 << 10;
    let store = open(&dev, pool_bytes, &cfg);
    let mut ids = SplitMix64::new(seed);
    let mut id = || ids.next_u64() >> 8;

    // Segment 0: b (v1), g, and filler overwritten until the log moves to segment 1.
    let b1 = id();
    block_on(store.put(b"b", 0, &make_value(b1, 40), None)).unwrap();
    let g = id();
    block_on(store.put(b"g", 0, &make_value(g, 40), None)).unwrap();
    for _ in 0..8 {
        block_on(store.put(b"filler", 0, &make_value(id(), 20 << 10), None)).unwrap();
    }

    // Exhaust the pool: room for a batch's meta buffer (8 KiB), not for a value buffer.
    let pool = store.queue().pool().clone();
    let hog = pool.try_alloc(pool.free_bytes() - (16 << 10)).unwrap();
    let mut local = LocalPool::new();
    let refused = Rc::new(RefCell::new(None));
    {
        let (store, refused) = (store.clone(), refused.clone());
        let big = make_value(id(), 20 << 10);
        local
            .spawner()
            .spawn_local(async move {
                *refused.borrow_mut() = Some(store.put(b"big", 0, &big, None).await.map(drop));
            })
            .unwrap();
    }
    local.run_until_stalled();
    drop(hog);
    local.run();
    match refused.borrow_mut().take().expect("the put ended") {
        // The fixed engine waits for buffers instead; Busy is acceptable only if nothing
        // was left behind (checked by what follows).
        Ok(()) | Err(StoreError::Busy(_)) => {}
        Err(e) => panic!("large put under pool pressure: {e}"),
    }

    // A large put (sealed the empty batch in the old engine), b's new version, then GC
    // moves g out of segment 0 into the same segment and frees segment 0.
    let big2 = id();
    block_on(store.put(b"big2", 0, &make_value(big2, 20 << 10), None)).unwrap();
    let b2 = id();
    block_on(store.put(b"b", 0, &make_value(b2, 40), None)).unwrap();
    let mut freed = false;
    for _ in 0..8 {
        if let GcOutcome::Freed { .. } = block_on(store.gc_step()).unwrap() {
            freed = true;
            break;
        }
    }
    assert!(freed, "GC freed segment 0 (seed {seed})");

    let store = power_cycle(&dev, store, &cfg);
    assert_eq!(
        read(&store, b"b"),
        Some(b2),
        "b's acknowledged version (seed {seed})"
    );
    assert_eq!(read(&store, b"g"), Some(g), "g, moved by GC (seed {seed})");
    assert_eq!(read(&store, b"big2"), Some(big2), "big2 (seed {seed})");
    assert_eq!(store.counters().recovery_lsn_anomalies, 0);
}

/// A batch whose only waiter went away (its request was dropped) must not strand the
/// batches queued behind it: when a write ends, every queued batch's waiters are woken.
/// The old engine woke only the next batch's, and the put behind it waited for ever.
#[test]
fn a_batch_without_waiters_does_not_strand_the_ones_behind_it() {
    let seed = seed();
    let mut cfg = small_config(SIM_BYTES);
    // One write at a time, so that B's batch queues behind A's without a leader of its
    // own (overlapped writes: `overlapped_writes.rs`).
    cfg.writes_in_flight = 1;
    let dev = SimDevice::new(SIM_BYTES, 4096, seed).unwrap();
    let store = open(&dev, 4 << 20, &cfg);
    let noop = futures::task::noop_waker();
    let value = |id: u64| make_value(id, 20 << 10);
    let (va, vb, vc) = (value(1), value(2), value(3));

    // A leads: its batch is being written.
    let mut a: Pin<Box<dyn Future<Output = _>>> = Box::pin(store.put(b"a", 0, &va, None));
    assert!(poll_once(&mut a, &noop).is_pending());
    // B stages into the next batch and waits; C's value does not fit B's batch, which is
    // sealed, and C waits on a third batch.
    let mut b: Pin<Box<dyn Future<Output = _>>> = Box::pin(store.put(b"b", 0, &vb, None));
    assert!(poll_once(&mut b, &noop).is_pending());
    let mut c: Pin<Box<dyn Future<Output = _>>> = Box::pin(store.put(b"c", 0, &vc, None));
    let (c_woken, c_waker) = flag_waker();
    assert!(poll_once(&mut c, &c_waker).is_pending());
    // B's request goes away (its connection closed): nobody waits on the second batch.
    drop(b);
    let mut spins = 0;
    while poll_once(&mut a, &noop).is_pending() {
        spins += 1;
        assert!(spins < 100, "A's write never ended");
    }
    assert!(
        c_woken.0.load(Ordering::SeqCst),
        "C was never woken after A's batch ended: it would wait for an unrelated write (seed {seed})"
    );
    let mut spins = 0;
    let result = loop {
        if let Poll::Ready(r) = poll_once(&mut c, &c_waker) {
            break r;
        }
        spins += 1;
        assert!(spins < 100, "C never finished");
    };
    result.unwrap();
    drop((a, c));
    let store = power_cycle(&dev, store, &cfg);
    assert_eq!(read(&store, b"c"), Some(3));
}

/// A conditional write is decided against durable versions only. The old engine decided
/// against a version still waiting for its batch and answered `VersionMismatch` with it;
/// when that batch then failed, the client had been told of a version that never existed
/// (and a write conditioned on it could be acknowledged).
#[test]
fn conditional_writes_are_decided_on_durable_versions_only() {
    let seed = seed();
    let cfg = small_config(SIM_BYTES);
    let dev = SimDevice::new(SIM_BYTES, 4096, seed).unwrap();
    let store = open(&dev, 4 << 20, &cfg);
    let v0 = block_on(store.put(b"k", 0, &make_value(10, 40), None)).unwrap();
    let noop = futures::task::noop_waker();

    // An unrelated put leads (its batch is being written); v1 is staged into the next
    // batch and waits...
    let x_value = make_value(20, 40);
    let mut x: Pin<Box<dyn Future<Output = _>>> = Box::pin(store.put(b"x", 0, &x_value, None));
    assert!(poll_once(&mut x, &noop).is_pending());
    let v1_value = make_value(11, 40);
    let mut v1: Pin<Box<dyn Future<Output = _>>> = Box::pin(store.put(b"k", 0, &v1_value, None));
    assert!(poll_once(&mut v1, &noop).is_pending());
    // ...when a put conditioned on v0 and a delete conditioned on v0 arrive.
    let newer = make_value(12, 40);
    let mut cond: Pin<Box<dyn Future<Output = _>>> = Box::pin(store.put(b"k", 0, &newer, Some(v0)));
    let mut del: Pin<Box<dyn Future<Output = _>>> = Box::pin(store.delete(b"k", 0, Some(v0)));
    let early_put = poll_once(&mut cond, &noop);
    let early_del = poll_once(&mut del, &noop);
    for (what, early) in [("put", early_put), ("delete", early_del)] {
        if let Poll::Ready(Err(StoreError::VersionMismatch { current })) = early {
            panic!("conditional {what} was answered with version {current}, which is not durable (v0 is {v0}; seed {seed})");
        }
    }
    // Every write from now on fails: v1's batch is refused by the device, so v1 never
    // existed. (x's write had already started and completes.)
    dev.fail_writes(0..SIM_BYTES);
    let mut futs = [x, v1, cond, del];
    let mut results: Vec<Option<Result<u64, StoreError>>> = (0..futs.len()).map(|_| None).collect();
    for _ in 0..1000 {
        for (f, r) in futs.iter_mut().zip(results.iter_mut()) {
            if r.is_none() {
                if let Poll::Ready(out) = poll_once(f, &noop) {
                    *r = Some(out);
                }
            }
        }
    }
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every write finished"))
        .collect();
    assert!(results[0].is_ok(), "x: {:?}", results[0]);
    assert!(results[1].is_err(), "v1's batch failed");
    for (what, result) in [("put", &results[2]), ("delete", &results[3])] {
        assert!(
            !matches!(result, Err(StoreError::VersionMismatch { current }) if *current != v0),
            "conditional {what} was decided against a version that never became durable: {result:?} (seed {seed})"
        );
        assert!(
            result.is_err(),
            "every write after the fault fails: {what} {result:?}"
        );
    }
    drop(futs);
    dev.clear_faults();
    let store = power_cycle(&dev, store, &cfg);
    assert_eq!(read(&store, b"k"), Some(10));
}

/// Bytes a client chose, laid out as batches of this store's format (CRC32C is public),
/// must never be replayed from a reused segment; nor may an emptied store's LSNs restart
/// at 1, which made the previous life's batches look like the continuation of the log.
#[test]
fn batches_of_a_reused_segments_earlier_life_are_never_replayed() {
    let seed = seed();
    let cfg = small_config(SIM_BYTES);
    let dev = SimDevice::new(SIM_BYTES, 4096, seed).unwrap();
    let store = open(&dev, 4 << 20, &cfg);
    // Fill every segment with keys, then delete them all and collect everything: the
    // store is empty, and every segment's old log is still on the device past its first
    // block.
    let segments = store.space().segments;
    let mut n = 0u64;
    while store.space().free_segments > segments / 2 {
        block_on(store.put(format!("old-{n}").as_bytes(), 0, &make_value(n, 3000), None)).unwrap();
        n += 1;
    }
    for i in 0..n {
        block_on(store.delete(format!("old-{i}").as_bytes(), 0, None)).unwrap();
    }
    // After a restart every segment is sealed (none is being appended to), so GC can take
    // them all; tombstones GC had to move go once their segment is the last one.
    let mut store = store;
    for _ in 0..4 {
        store = power_cycle(&dev, store, &cfg);
        for _ in 0..4 * segments {
            if block_on(store.gc_step()).unwrap() == GcOutcome::Idle {
                break;
            }
        }
    }
    assert_eq!(store.space().free_segments, segments, "the store is empty");
    let store = power_cycle(&dev, store, &cfg);
    // The old engine: nothing left on the device said how far the LSNs had gone, so they
    // began again at 1 and the old batches that followed a new write looked like its
    // continuation. (A value of 3000 bytes makes the new batch end where the old life's
    // second batch begins.)
    block_on(store.put(b"fresh", 0, &make_value(u64::MAX >> 8, 3000), None)).unwrap();
    let store = power_cycle(&dev, store, &cfg);
    for i in 0..n {
        let key = format!("old-{i}");
        assert_eq!(
            read(&store, key.as_bytes()),
            None,
            "{key} was deleted and collected, yet replayed (seed {seed})"
        );
    }
    assert_eq!(read(&store, b"fresh"), Some(u64::MAX >> 8));
}

/// The wedge of issue 16: under a full DMA pool, batches that nobody drove (their requests
/// gone) held the pool, and every later put was Busy at staging and never drove them.
/// Many large and small writers on a small pool, with GC, some requests dropped while they
/// wait: every write ends, the store drains to idle (the whole pool free) and then takes a
/// small put.
#[test]
fn a_store_under_pool_pressure_always_drains_and_takes_writes_again() {
    let seed = seed();
    let mut cfg = small_config(8 << 20);
    cfg.max_value_bytes = 96 << 10;
    let dev = SimDevice::new(8 << 20, 4096, seed).unwrap();
    let pool_bytes = 320 << 10;
    let store = open(&dev, pool_bytes, &cfg);
    let mut local = LocalPool::new();
    let busy = Rc::new(RefCell::new(0u64));
    let done = Rc::new(RefCell::new(0u64));
    let mut rng = SplitMix64::new(seed);
    for w in 0..12 {
        let (store, busy, done) = (store.clone(), busy.clone(), done.clone());
        let mut rng = SplitMix64::new(rng.next_u64());
        local
            .spawner()
            .spawn_local(async move {
                for i in 0..60 {
                    if w == 0 && i % 5 == 0 {
                        let _ = store.gc_step().await;
                    }
                    let len = if rng.chance(1, 3) {
                        (32 << 10) + rng.below(64 << 10) as usize
                    } else {
                        8 + rng.below(600) as usize
                    };
                    let key = format!("k{}", rng.below(40));
                    let value = make_value(rng.next_u64() >> 8, len);
                    let put = store.put(key.as_bytes(), 0, &value, None);
                    let polls = if rng.chance(1, 8) {
                        1 + rng.below(3) as u32
                    } else {
                        u32::MAX
                    };
                    let abandon = Abandon {
                        inner: Some(Box::pin(put)),
                        polls,
                    };
                    match abandon.await {
                        None | Some(Ok(_)) => {}
                        Some(Err(StoreError::Busy(_))) => *busy.borrow_mut() += 1,
                        // A request dropped mid-write fails the batch it led.
                        Some(Err(StoreError::WriteFailed(_))) => {}
                        Some(Err(e)) => panic!("put: {e} (seed {seed})"),
                    }
                }
                *done.borrow_mut() += 1;
            })
            .unwrap();
    }
    local.run();
    assert_eq!(*done.borrow(), 12, "every writer finished (seed {seed})");
    assert_eq!(
        store.queue().pool().free_bytes(),
        store.queue().pool().capacity(),
        "idle store holds no DMA buffer (seed {seed})"
    );
    block_on(store.put(b"after", 0, &make_value(7, 5), None)).expect("a small put on the idle store");
    eprintln!("Busy answers under pressure: {} of 720", busy.borrow());
}
