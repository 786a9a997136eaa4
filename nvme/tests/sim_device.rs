//! SimDevice: the same interface, plus power cuts, EIO ranges and bit flips, all seeded.

mod common;

use common::*;
use futures_lite::future::block_on;
use hotshard_nvme::{BlockQueue, Durability, NvmeError, SimDevice};

const SIZE: u64 = 1 << 20;

fn sim(seed: u64) -> (SimDevice, hotshard_nvme::SimQueue) {
    let dev = SimDevice::new(SIZE, 4096, seed).unwrap();
    let q = dev.queue(1 << 20).unwrap();
    (dev, q)
}

fn read(q: &hotshard_nvme::SimQueue, offset: u64, len: usize) -> Vec<u8> {
    block_on(q.read_at(offset, q.pool().try_alloc(len).unwrap()))
        .unwrap()
        .to_vec()
}

#[test]
fn conformance_on_sim() {
    let (_dev, q) = sim(1);
    block_on(conformance(&q));
    block_on(concurrent_io(&q, 64));
}

#[test]
fn fua_writes_survive_a_power_cut_and_volatile_ones_may_not() {
    for seed in 0..50 {
        let (dev, q) = sim(seed);
        block_on(async {
            q.write_at(0, filled(&q, 4096, 1), Durability::Fua).await.unwrap();
            q.write_at(8192, filled(&q, 65536, 2), Durability::Volatile)
                .await
                .unwrap();
        });
        dev.cut_power();
        let err = block_on(q.read_at(0, q.pool().try_alloc(4096).unwrap())).unwrap_err();
        assert!(matches!(err, NvmeError::PoweredOff));
        dev.recover();
        assert_eq!(
            read(&q, 0, 4096),
            filled(&q, 4096, 1).to_vec(),
            "seed {seed}: FUA write lost"
        );
        // Each 512-byte sector of the volatile write is either all new or all old.
        let after = read(&q, 8192, 65536);
        let new = filled(&q, 65536, 2).to_vec();
        for (i, (a, n)) in after.chunks(512).zip(new.chunks(512)).enumerate() {
            assert!(
                a == n || a.iter().all(|b| *b == 0),
                "seed {seed}: sector {i} is torn inside"
            );
        }
    }
}

#[test]
fn power_cuts_tear_at_sector_granularity_and_replay_from_the_seed() {
    let image = |seed| {
        let (dev, q) = sim(seed);
        block_on(q.write_at(0, filled(&q, 65536, 9), Durability::Volatile)).unwrap();
        dev.recover();
        (read(&q, 0, 65536), dev.stats())
    };
    let (a, stats) = image(42);
    let (b, _) = image(42);
    assert_eq!(a, b, "the same seed tears the same sectors");
    assert!(stats.sectors_kept > 0 && stats.sectors_dropped > 0, "{stats:?}");
    assert_eq!(stats.sectors_kept + stats.sectors_dropped, 128);
    let (c, _) = image(43);
    assert_ne!(a, c, "another seed tears differently");
}

#[test]
fn flush_makes_completed_writes_durable() {
    for seed in 0..20 {
        let (dev, q) = sim(seed);
        block_on(async {
            q.write_at(0, filled(&q, 16384, 4), Durability::Volatile)
                .await
                .unwrap();
            q.flush().await.unwrap();
            q.write_at(16384, filled(&q, 4096, 5), Durability::Volatile)
                .await
                .unwrap();
        });
        dev.recover();
        assert_eq!(read(&q, 0, 16384), filled(&q, 16384, 4).to_vec(), "seed {seed}");
    }
}

#[test]
fn a_scheduled_cut_fails_that_operation_and_every_later_one() {
    let (dev, q) = sim(7);
    dev.cut_power_after(3);
    block_on(async {
        q.write_at(0, filled(&q, 4096, 1), Durability::Fua).await.unwrap();
        q.write_at(4096, filled(&q, 4096, 2), Durability::Fua)
            .await
            .unwrap();
        let err = q
            .write_at(8192, filled(&q, 4096, 3), Durability::Fua)
            .await
            .unwrap_err();
        assert!(matches!(err, NvmeError::PoweredOff));
        assert!(q.flush().await.is_err());
    });
    dev.recover();
    assert_eq!(read(&q, 4096, 4096), filled(&q, 4096, 2).to_vec());
    assert_eq!(
        read(&q, 8192, 4096),
        vec![0; 4096],
        "the refused write never happened"
    );
}

#[test]
fn eio_ranges_fail_only_what_they_cover() {
    let (dev, q) = sim(3);
    dev.fail_reads(8192..12288);
    dev.fail_writes(65536..69632);
    block_on(async {
        let err = q
            .read_at(8192, q.pool().try_alloc(4096).unwrap())
            .await
            .unwrap_err();
        assert!(err.is_device_error(), "{err}");
        q.read_at(4096, q.pool().try_alloc(4096).unwrap()).await.unwrap();
        let err = q
            .write_at(65536, filled(&q, 4096, 1), Durability::Fua)
            .await
            .unwrap_err();
        assert!(err.is_device_error());
        q.write_at(69632, filled(&q, 4096, 1), Durability::Fua)
            .await
            .unwrap();
    });
    assert_eq!(
        read(&q, 65536, 4096),
        vec![0; 4096],
        "a failed write changes nothing"
    );
    let s = dev.stats();
    assert_eq!((s.injected_read_errors, s.injected_write_errors), (1, 1));
    dev.clear_faults();
    read(&q, 8192, 4096);
}

#[test]
fn flipped_bits_are_stored_and_survive_recovery() {
    let (dev, q) = sim(5);
    block_on(q.write_at(0, filled(&q, 4096, 8), Durability::Fua)).unwrap();
    let at = dev.flip_random_bit(0..4096);
    let got = read(&q, 0, 4096);
    let want = filled(&q, 4096, 8).to_vec();
    let diff: Vec<usize> = (0..4096).filter(|&i| got[i] != want[i]).collect();
    assert_eq!(diff, vec![at as usize]);
    assert_eq!((got[at as usize] ^ want[at as usize]).count_ones(), 1);
    dev.recover();
    assert_eq!(read(&q, 0, 4096), got);
}
