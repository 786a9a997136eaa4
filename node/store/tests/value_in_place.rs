//! Values written from the buffer they were received into (`value_buffer` + `put_buf`):
//! no copy of the value, the same bytes on the device and after a reopen as a copied put,
//! batches that mix both, the iovec limit of one batch write, and when there is no buffer.

mod common;

use common::*;
use futures::executor::block_on;
use futures::task::LocalSpawnExt;
use hotshard_nvme::{SimDevice, SimQueue};
use hotshard_store::{Store, StoreConfig};

fn put_in_place(s: &Store<SimQueue>, key: &[u8], value: &[u8]) -> u64 {
    let mut buf = s.value_buffer(value.len()).expect("a buffer for this value");
    buf.as_mut().copy_from_slice(value);
    block_on(s.put_buf(key, 0, buf, None)).unwrap()
}

fn read_id(s: &Store<SimQueue>, key: &[u8]) -> Option<u64> {
    let (v, _) = block_on(s.get(key, None)).ok()?;
    check_value(v.as_slice())
}

#[test]
fn a_value_in_its_own_buffer_is_written_without_a_copy_and_reads_back_after_reopen() {
    let dev = SimDevice::new(SIM_BYTES, 4096, 1).unwrap();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    // 2 KiB is the first length that does not ride inline behind its key (block / 2);
    // the others cross block boundaries and fill the largest value exactly.
    let lens = [2048usize, 4096, 4097, 10_000, 32 << 10];
    let mut total = 0u64;
    for (i, len) in lens.iter().enumerate() {
        put_in_place(&s, format!("k{i}").as_bytes(), &make_value(i as u64, *len));
        total += *len as u64;
    }
    let c = s.counters();
    assert_eq!(c.value_bytes_in_place, total);
    assert_eq!(c.value_bytes_copied, 0, "no value byte was copied");
    for (i, len) in lens.iter().enumerate() {
        let (v, _) = block_on(s.get(format!("k{i}").as_bytes(), None)).unwrap();
        assert_eq!(v.len(), *len);
        assert_eq!(check_value(v.as_slice()), Some(i as u64));
    }
    dev.cut_power();
    drop(s);
    dev.recover();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    for i in 0..lens.len() {
        assert_eq!(
            read_id(&s, format!("k{i}").as_bytes()),
            Some(i as u64),
            "key k{i} after reopen"
        );
    }
}

#[test]
fn batches_mixing_copied_inline_and_in_place_values_survive_a_power_cut() {
    let dev = SimDevice::new(SIM_BYTES, 4096, 1).unwrap();
    // One write at a time, so that records group into mixed batches: with 32 KiB batches
    // two 5 KiB values already make a batch large enough to go beside the one in flight.
    let mut cfg = small_config(SIM_BYTES);
    cfg.writes_in_flight = 1;
    let s = sim_store(&dev, cfg);
    let mut pool = pool();
    for w in 0..12u64 {
        let s = s.clone();
        pool.spawner()
            .spawn_local(async move {
                for i in 0..10u64 {
                    let id = w * 100 + i;
                    // Inline (100 B), copied (3 KiB) and in place (5 KiB) by turns.
                    let value = make_value(id, [100, 3000, 5000][(id % 3) as usize]);
                    let key = format!("key-{id}");
                    let buf = (id % 3 == 2).then(|| s.value_buffer(value.len())).flatten();
                    match buf {
                        Some(mut buf) => {
                            buf.as_mut().copy_from_slice(&value);
                            s.put_buf(key.as_bytes(), 0, buf, None).await.unwrap();
                        }
                        None => {
                            s.put(key.as_bytes(), 0, &value, None).await.unwrap();
                        }
                    }
                }
            })
            .unwrap();
    }
    pool.run();
    let c = s.counters();
    assert!(c.batches < c.puts / 2, "{} puts in {} batches", c.puts, c.batches);
    assert!(c.value_bytes_in_place > 0 && c.value_bytes_copied > 0);
    dev.cut_power();
    drop(s);
    dev.recover();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    for id in (0..12u64).flat_map(|w| (0..10).map(move |i| w * 100 + i)) {
        assert_eq!(read_id(&s, format!("key-{id}").as_bytes()), Some(id), "key-{id}");
    }
}

#[test]
fn a_batch_of_many_small_in_place_values_stays_within_one_writes_iovec_limit() {
    // 1,100 values of one block each, all staged before the first write: with one iovec
    // per value a single batch would need 1,101 iovecs, over the kernel's 1,024.
    let region = 96u64 << 20;
    let dev = SimDevice::new(region, 4096, 1).unwrap();
    let mut cfg = StoreConfig::new(0, region);
    cfg.segment_bytes = 16 << 20;
    cfg.batch_bytes = 8 << 20;
    let q = dev.queue(32 << 20).unwrap();
    let (s, _) = block_on(Store::open(q, cfg.clone())).unwrap();
    let mut pool = pool();
    for id in 0..1100u64 {
        let s = s.clone();
        let value = make_value(id, 4096);
        let mut buf = s.value_buffer(value.len()).expect("the pool holds every value");
        buf.as_mut().copy_from_slice(&value);
        pool.spawner()
            .spawn_local(async move {
                s.put_buf(format!("k{id}").as_bytes(), 0, buf, None)
                    .await
                    .unwrap();
            })
            .unwrap();
    }
    pool.run();
    let c = s.counters();
    assert_eq!((c.puts, c.write_errors), (1100, 0));
    assert!(
        c.batches >= 2,
        "1,100 values need at least two writes, took {}",
        c.batches
    );
    for id in (0..1100u64).step_by(97) {
        assert_eq!(read_id(&s, format!("k{id}").as_bytes()), Some(id));
    }
}

#[test]
fn there_is_no_buffer_for_an_inline_value_an_oversized_one_or_from_an_empty_pool() {
    let dev = SimDevice::new(SIM_BYTES, 4096, 1).unwrap();
    let cfg = small_config(SIM_BYTES);
    let q = dev.queue(64 << 10).unwrap();
    let (s, _) = block_on(Store::open(q, cfg.clone())).unwrap();
    assert!(
        s.value_buffer(2047).is_none(),
        "rides inline: a copy costs nothing extra"
    );
    assert!(
        s.value_buffer(cfg.max_value_bytes + 1).is_none(),
        "over the value limit"
    );
    let held: Vec<_> = std::iter::from_fn(|| s.value_buffer(4096)).take(64).collect();
    assert_eq!(held.len(), 16, "64 KiB of pool holds 16 buffers of one block");
    assert!(s.value_buffer(4096).is_none());
    drop(held);
    // With the buffers back, a copied put and an in-place one both go through.
    block_on(s.put(b"copied", 0, &make_value(1, 4096), None)).unwrap();
    put_in_place(&s, b"in-place", &make_value(2, 4096));
    assert_eq!(read_id(&s, b"copied"), Some(1));
    assert_eq!(read_id(&s, b"in-place"), Some(2));
}
