//! Issue 18: a write that meets a full DMA pool (or a full batch queue) waits for it, in
//! arrival order, and succeeds when buffers come back; it is answered Busy only after the
//! store's `max_write_wait`, and that Busy is counted with its reason.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use futures::executor::block_on;
use futures::task::LocalSpawnExt;
use hotshard_nvme::{BlockQueue, SimDevice, SimQueue};
use hotshard_store::{Store, StoreError};

fn open(dev: &SimDevice, wait: Duration) -> Store<SimQueue> {
    let mut cfg = small_config(SIM_BYTES);
    cfg.max_write_wait = wait;
    block_on(Store::open(dev.queue(4 << 20).unwrap(), cfg)).unwrap().0
}

/// Takes every free page of the store's pool.
fn hold_pool(s: &Store<SimQueue>) -> Vec<hotshard_nvme::DmaBuffer> {
    let pool = s.queue().pool();
    std::iter::from_fn(|| pool.try_alloc(4096).ok()).collect()
}

#[test]
fn writes_wait_for_a_full_pool_in_arrival_order_and_then_succeed() {
    let dev = SimDevice::new(SIM_BYTES, 4096, 1).unwrap();
    let s = open(&dev, Duration::from_secs(60));
    let held = hold_pool(&s);
    let mut pool = pool();
    let done = Rc::new(RefCell::new(Vec::new()));
    for i in 0..3u64 {
        let (s, done) = (s.clone(), done.clone());
        pool.spawner()
            .spawn_local(async move {
                let v = s.put(b"k", 0, &make_value(i, 3000), None).await.unwrap();
                done.borrow_mut().push((i, v));
            })
            .unwrap();
    }
    pool.run_until_stalled();
    assert!(
        done.borrow().is_empty(),
        "nothing can be staged while the pool is full"
    );
    drop(held);
    pool.run();
    let mut done = done.borrow().clone();
    assert_eq!(done.len(), 3);
    // Versions follow arrival order (they may be acknowledged together, in any order),
    // and the last write to arrive is the one that stays.
    done.sort();
    assert!(done.windows(2).all(|w| w[0].1 < w[1].1), "{done:?}");
    let (v, _) = block_on(s.get(b"k", None)).unwrap();
    assert_eq!(check_value(v.as_slice()), Some(2));
    assert_eq!(s.counters().busy, 0);
}

#[test]
fn a_write_past_its_wait_is_busy_and_counted_with_its_reason() {
    let dev = SimDevice::new(SIM_BYTES, 4096, 1).unwrap();
    let s = open(&dev, Duration::ZERO);
    let held = hold_pool(&s);
    match block_on(s.put(b"k", 0, &make_value(1, 3000), None)) {
        Err(StoreError::Busy(why)) => assert_eq!(why, "DMA buffers"),
        other => panic!("expected Busy, got {other:?}"),
    }
    let c = s.counters();
    assert_eq!(c.busy, 1);
    assert_eq!(c.busy_reasons, vec![("DMA buffers", 1)]);
    drop(held);
    block_on(s.put(b"k", 0, &make_value(2, 3000), None)).unwrap();
}
