//! Large batches are written several at once (`writes_in_flight`), and the device may
//! complete them in any order; they are still acknowledged in log order. A later batch
//! that lands first waits for the earlier one: if power is cut before the earlier one is
//! durable, recovery stops at its torn bytes and the later one is gone, so it must never
//! have been acknowledged.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::*;
use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use hotshard_nvme::{SimDevice, SimQueue};
use hotshard_store::format::SEGMENTS_START;
use hotshard_store::{Store, StoreConfig, StoreError};

fn open(dev: &SimDevice, cfg: &StoreConfig) -> Store<SimQueue> {
    block_on(Store::open(dev.queue(4 << 20).unwrap(), cfg.clone()))
        .unwrap()
        .0
}

fn read(store: &Store<SimQueue>, key: &[u8]) -> Option<u64> {
    match block_on(store.get(key, None)) {
        Ok((v, _)) => Some(check_value(v.as_slice()).expect("self-checking value")),
        Err(StoreError::NotFound) => None,
        Err(e) => panic!("get {:?}: {e}", String::from_utf8_lossy(key)),
    }
}

/// What each put answered, in the order the answers came.
type Answers = Rc<RefCell<Vec<(&'static str, Result<(), String>)>>>;

fn spawn_put(pool: &LocalPool, store: &Store<SimQueue>, answers: &Answers, key: &'static str, id: u64) {
    let (store, answers) = (store.clone(), answers.clone());
    let value = make_value(id, 20 << 10);
    pool.spawner()
        .spawn_local(async move {
            let r = store.put(key.as_bytes(), 0, &value, None).await;
            answers
                .borrow_mut()
                .push((key, r.map(drop).map_err(|e| e.to_string())));
        })
        .unwrap();
}

/// The first batch of the store starts its first segment; slowing writes there slows it
/// alone.
fn slow_first_batch(dev: &SimDevice, turns: u32) {
    dev.slow_writes(SEGMENTS_START..SEGMENTS_START + 4096, turns);
}

/// A fresh store on a seeded SimDevice whose first batch is slow, an executor, and the
/// list its puts answer into.
fn setup(seed: u64) -> (StoreConfig, SimDevice, Store<SimQueue>, LocalPool, Answers) {
    let cfg = small_config(SIM_BYTES);
    let dev = SimDevice::new(SIM_BYTES, 4096, seed).unwrap();
    let store = open(&dev, &cfg);
    slow_first_batch(&dev, 40);
    (cfg, dev, store, LocalPool::new(), Rc::default())
}

#[test]
fn a_later_batch_that_lands_first_is_acknowledged_after_the_earlier_one() {
    let (cfg, dev, store, mut pool, answers) = setup(21);
    assert!(cfg.writes_in_flight > 1);
    // Each 20 KiB value fills most of a 32 KiB batch: three batches, written at once.
    spawn_put(&pool, &store, &answers, "a", 1);
    spawn_put(&pool, &store, &answers, "b", 2);
    spawn_put(&pool, &store, &answers, "c", 3);
    pool.run();
    let got = answers.borrow().clone();
    assert_eq!(
        got,
        vec![("a", Ok(())), ("b", Ok(())), ("c", Ok(()))],
        "acknowledged in log order"
    );
    // The three were in flight together: b and c did not wait for a's slow write to start.
    assert_eq!(store.counters().batches, 3);
    dev.clear_faults();
    for (k, id) in [("a", 1), ("b", 2), ("c", 3)] {
        assert_eq!(read(&store, k.as_bytes()), Some(id));
    }
}

#[test]
fn a_power_cut_before_the_earlier_batch_is_durable_acknowledges_nothing_behind_it() {
    let (cfg, dev, store, mut pool, answers) = setup(22);
    spawn_put(&pool, &store, &answers, "a", 1);
    spawn_put(&pool, &store, &answers, "b", 2);
    // Power goes while a's write is still in flight and b's has landed (FUA: durable).
    {
        let dev = dev.clone();
        pool.spawner()
            .spawn_local(async move {
                for _ in 0..15 {
                    futures_lite::future::yield_now().await;
                }
                dev.cut_power();
            })
            .unwrap();
    }
    pool.run();
    let got = answers.borrow().clone();
    assert_eq!(got.len(), 2);
    for (k, r) in &got {
        assert!(
            r.is_err(),
            "{k} was acknowledged, but a's batch before it never became durable"
        );
    }
    drop(store);
    dev.clear_faults();
    dev.recover();
    let store = open(&dev, &cfg);
    // a's batch is torn, so recovery ends the segment before b's durable bytes.
    assert_eq!(read(&store, b"a"), None);
    assert_eq!(read(&store, b"b"), None);
}

#[test]
fn an_abandoned_write_fails_the_batches_behind_it_in_its_segment_and_strands_none() {
    let (_, dev, store, mut pool, answers) = setup(23);
    // b's and c's writes (behind a's in the first segment) take long enough for b's
    // request to be dropped while its write is in flight.
    dev.slow_writes(SEGMENTS_START + 4096..SEGMENTS_START + SIM_SEGMENT, 20);
    spawn_put(&pool, &store, &answers, "a", 1);
    // b leads its own write and is dropped while it is in flight: its outcome is unknown,
    // so c, behind it in the same segment, cannot be acknowledged either.
    {
        let (store, value) = (store.clone(), make_value(2, 20 << 10));
        pool.spawner()
            .spawn_local(async move {
                let put = store.put(b"b", 0, &value, None);
                let _ = futures_lite::future::or(async { Some(put.await) }, async {
                    futures_lite::future::yield_now().await;
                    futures_lite::future::yield_now().await;
                    None
                })
                .await;
            })
            .unwrap();
    }
    spawn_put(&pool, &store, &answers, "c", 3);
    pool.run();
    let got = answers.borrow().clone();
    assert_eq!(got.len(), 2, "every put ended (none stranded): {got:?}");
    assert_eq!(got[0], ("a", Ok(())));
    assert_eq!(got[1].0, "c");
    assert!(got[1].1.is_err(), "c sits behind an abandoned write: {got:?}");
    // The store goes on in a new segment.
    block_on(store.put(b"d", 0, &make_value(4, 100), None)).unwrap();
    assert_eq!(read(&store, b"a"), Some(1));
    assert_eq!(read(&store, b"c"), None);
    assert_eq!(read(&store, b"d"), Some(4));
}
