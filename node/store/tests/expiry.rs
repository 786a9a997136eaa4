//! Objects that expire (issue 21): an expired object reads as absent (get, stat, listings,
//! conditional writes), its expiry is kept across power cuts and GC moves, burying it
//! gives its space back, and GC that finds one expired turns it into a tombstone, so that
//! an older version of the key never comes back after a restart.

mod common;

use std::time::Duration;

use common::*;
use futures::executor::block_on;
use hotshard_nvme::{SimDevice, SimQueue};
use hotshard_store::index::now_ms;
use hotshard_store::{GcOutcome, Store, StoreError};

fn sim() -> SimDevice {
    SimDevice::new(SIM_BYTES, 4096, 5).unwrap()
}

fn power_cycle(dev: &SimDevice, s: Store<SimQueue>) -> Store<SimQueue> {
    let cfg = s.config().clone();
    dev.cut_power();
    drop(s);
    dev.recover();
    sim_store(dev, cfg)
}

fn present(s: &Store<SimQueue>, key: &[u8]) -> bool {
    match block_on(s.get(key, None)) {
        Ok(_) => true,
        Err(StoreError::NotFound) => false,
        Err(e) => panic!("get: {e}"),
    }
}

#[test]
fn an_expired_object_reads_as_absent_and_its_expiry_survives_a_power_cut() {
    let dev = sim();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    let soon = now_ms() + 300;
    let later = now_ms() + 3_600_000;
    block_on(s.put_expiring(b"soon", 1, &make_value(1, 100), None, soon)).unwrap();
    block_on(s.put_expiring(b"later", 1, &make_value(2, 20_000), None, later)).unwrap();
    block_on(s.put(b"never", 1, &make_value(3, 100), None)).unwrap();
    let (v, _) = block_on(s.get(b"later", None)).unwrap();
    assert_eq!(v.expires_ms(), later);
    assert_eq!(s.stat(b"soon").unwrap().expires_ms, soon);
    assert_eq!(s.stat(b"never").unwrap().expires_ms, 0);

    let s = power_cycle(&dev, s);
    assert_eq!(s.stat(b"later").unwrap().expires_ms, later, "kept across the cut");
    assert_eq!(s.stat(b"soon").unwrap().expires_ms, soon);
    std::thread::sleep(Duration::from_millis(400));
    assert!(!present(&s, b"soon"), "expired: absent");
    assert!(matches!(s.stat(b"soon"), Err(StoreError::NotFound)));
    assert!(present(&s, b"later") && present(&s, b"never"));
    assert_eq!(s.keys_in_partition(1).len(), 2);
    assert_eq!(s.expired_keys(10).len(), 1);
    // An expired key is absent to writes too: a delete finds nothing, a put "only if
    // absent" (version 0) succeeds.
    assert!(matches!(
        block_on(s.delete(b"soon", 1, None)),
        Err(StoreError::NotFound)
    ));
    // Burying it, as the node's sweep does, frees its bytes.
    let live = s.space().live_bytes;
    for (key, partition, _) in s.expired_keys(10) {
        block_on(s.bury_if_absent(&key, partition)).unwrap();
    }
    assert!(s.expired_keys(10).is_empty());
    assert!(s.space().live_bytes < live);
    block_on(s.put(b"soon", 1, &make_value(4, 100), Some(0))).unwrap();
    assert!(present(&s, b"soon"));
    assert_eq!(
        s.stat(b"soon").unwrap().expires_ms,
        0,
        "a plain put has no expiry"
    );
    assert!(s.expired_keys(10).is_empty());
    assert!(matches!(
        block_on(s.put_expiring(b"x", 1, b"v", None, 1 << 50)),
        Err(StoreError::BadRequest(_))
    ));
}

#[test]
fn gc_turns_an_expired_object_into_a_tombstone_and_older_versions_never_return() {
    let dev = sim();
    let mut s = sim_store(&dev, small_config(SIM_BYTES));
    let value = |i: u64| make_value(i, 3_000);
    // k0..k2 without an expiry; then, in later segments, a version of each that expires,
    // among keys overwritten at once: those segments are left holding the expired objects
    // alone, the cheapest GC can take (expired bytes still count as live until GC or the
    // sweep turns them into tombstones). Had GC dropped them instead of writing
    // tombstones, recovery would find the first versions again.
    for i in 0..3u64 {
        block_on(s.put(format!("k{i}").as_bytes(), 2, &value(i), None)).unwrap();
    }
    let at = now_ms() + 200;
    for i in 0..3u64 {
        block_on(s.put_expiring(format!("k{i}").as_bytes(), 2, &value(100 + i), None, at)).unwrap();
        for j in 0..30u64 {
            block_on(s.put(format!("j{j}").as_bytes(), 3, &value(200 + j), None)).unwrap();
        }
    }
    for round in 0..3u64 {
        for j in 0..30u64 {
            block_on(s.put(format!("j{j}").as_bytes(), 3, &value(300 + round * 30 + j), None)).unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.expired_keys(100).len(), 3);
    while !matches!(block_on(s.gc_step()).unwrap(), GcOutcome::Idle) {}
    assert!(s.expired_keys(100).is_empty(), "GC wrote tombstones for them");
    assert_eq!(s.space().objects, 30);
    for _ in 0..2 {
        s = power_cycle(&dev, s);
        for i in 0..3u64 {
            assert!(!present(&s, format!("k{i}").as_bytes()), "k{i} came back");
        }
        assert!(present(&s, b"j7"));
    }
}

/// A replica's records carry the head's versions, which may be far below the replica's own
/// log positions. GC that found such a record expired wrote a tombstone stamped with that
/// version, and the tombstone's stamp is the log position GC compares with the oldest
/// segment's: a small one let the next GC forget it at once while an older version of the
/// key still lay in a segment kept for its other live records, and after a power cut the
/// older value was live again (for good: it had no expiry). The stamp is now the log
/// position the tombstone is written at, as every other tombstone's.
#[test]
fn an_expired_replicated_record_buried_by_gc_never_brings_an_older_version_back() {
    let dev = sim();
    let mut s = sim_store(&dev, small_config(SIM_BYTES));
    let value = |i: u64| make_value(i, 3_000);
    // This replica's log is far ahead of the head's versions.
    s.raise_versions_past(1 << 40).unwrap();
    block_on(s.apply_versioned(b"k", 2, Some(&value(1)), 10)).unwrap();
    // Records that stay live keep the old version's segment from being collected.
    for j in 0..30u64 {
        block_on(s.put(format!("a{j}").as_bytes(), 3, &value(500 + j), None)).unwrap();
    }
    let churn = |s: &Store<SimQueue>, from: u64| {
        for round in 0..4u64 {
            for j in 0..30u64 {
                block_on(s.put(format!("j{j}").as_bytes(), 3, &value(from + round * 30 + j), None)).unwrap();
            }
        }
    };
    // The expiring version lands among keys overwritten at once: its segment is left
    // holding it alone.
    churn(&s, 100);
    let at = now_ms() + 200;
    block_on(s.apply_versioned_expiring(b"k", 2, Some(&value(2)), 11, at)).unwrap();
    churn(&s, 1000);
    std::thread::sleep(Duration::from_millis(300));
    // GC takes the expiring record's segment (a tombstone is written), then, after more
    // churn, the tombstone's.
    for pass in 0..3u64 {
        while !matches!(block_on(s.gc_step()).unwrap(), GcOutcome::Idle) {}
        churn(&s, 2000 + pass * 1000);
    }
    while !matches!(block_on(s.gc_step()).unwrap(), GcOutcome::Idle) {}
    assert!(s.counters().gc_moved_records >= 1, "GC found the expired record");
    assert!(!present(&s, b"k"));
    for _ in 0..2 {
        s = power_cycle(&dev, s);
        assert!(
            !present(&s, b"k"),
            "the older version came back after a power cut"
        );
        assert!(present(&s, b"a7"));
    }
}

/// A store that is one replica of a chain leaves expiry to the head (`gc_buries_expired`
/// false): GC moves an expired object as it is, and reads that ignore expiry (a replica's)
/// still find it, until the head's burial comes down as a tombstone.
#[test]
fn a_replica_store_keeps_an_expired_object_through_gc_until_it_is_buried() {
    let dev = sim();
    let mut cfg = small_config(SIM_BYTES);
    cfg.gc_buries_expired = false;
    let mut s = sim_store(&dev, cfg);
    let value = |i: u64| make_value(i, 3_000);
    let at = now_ms() + 200;
    block_on(s.apply_versioned_expiring(b"k", 2, Some(&value(1)), 10, at)).unwrap();
    let churn = |s: &Store<SimQueue>, from: u64| {
        for round in 0..4u64 {
            for j in 0..30u64 {
                block_on(s.put(format!("j{j}").as_bytes(), 3, &value(from + round * 30 + j), None)).unwrap();
            }
        }
    };
    churn(&s, 100);
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.is_expired(b"k"));
    assert!(!present(&s, b"k"), "by this store's clock it has expired");
    let moved = s.counters().gc_moved_records;
    while !matches!(block_on(s.gc_step()).unwrap(), GcOutcome::Idle) {}
    assert!(
        s.counters().gc_moved_records > moved,
        "GC took the expired record's segment"
    );
    s = power_cycle(&dev, s);
    let (v, version) = block_on(s.get_ignoring_expiry(b"k", None)).expect("kept through GC and the cut");
    assert_eq!((v.len(), version), (3_000, 10));
    assert_eq!(s.stat_ignoring_expiry(b"k").unwrap().version, 10);
    // The head's burial comes down the chain as a tombstone at the next version.
    block_on(s.apply_versioned(b"k", 2, None, 11)).unwrap();
    assert!(block_on(s.get_ignoring_expiry(b"k", None)).is_err());
    assert!(!s.is_expired(b"k"));
}

/// Rewrites both superblock copies of the store on `dev` as format `version` (CRC fixed).
fn mark_format(dev: &SimDevice, version: u32) {
    use hotshard_nvme::{BlockQueue, Durability};
    let q = dev.queue(1 << 20).unwrap();
    let buf = q.pool().try_alloc(8192).unwrap();
    let mut buf = block_on(q.read_at(0, buf)).unwrap();
    for copy in [0usize, 4096] {
        let b = &mut buf[copy..copy + 4096];
        b[8..12].copy_from_slice(&version.to_le_bytes());
        let c = crc32c::crc32c(&b[..72]);
        b[72..76].copy_from_slice(&c.to_le_bytes());
    }
    block_on(q.write_at(0, buf, Durability::Fua)).unwrap();
}

fn format_of(dev: &SimDevice) -> u32 {
    use hotshard_nvme::BlockQueue;
    let q = dev.queue(1 << 20).unwrap();
    let buf = q.pool().try_alloc(8192).unwrap();
    let buf = block_on(q.read_at(0, buf)).unwrap();
    let sb = hotshard_store::format::Superblock::decode(&buf[..4096])
        .unwrap()
        .unwrap();
    sb.format_version
}

/// A store written in format 2 (records with no expiry field) opens, its objects intact,
/// and is marked format 3 before anything is written, so that a format-2 build refuses it
/// from then on instead of misreading an expiry. Format 1 is refused, naming it.
#[test]
fn a_format_2_store_is_upgraded_and_older_ones_are_refused() {
    let dev = sim();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    for i in 0..20u64 {
        block_on(s.put(format!("k{i}").as_bytes(), 1, &make_value(i, 2000), None)).unwrap();
    }
    drop(s);
    mark_format(&dev, 2);
    assert_eq!(format_of(&dev), 2);
    let q = dev.queue(4 << 20).unwrap();
    let (s, report) = block_on(Store::open(q, small_config(SIM_BYTES))).unwrap();
    assert_eq!(report.upgraded_from, Some(2));
    assert_eq!(format_of(&dev), hotshard_store::format::FORMAT_VERSION);
    for i in 0..20u64 {
        let (v, _) = block_on(s.get(format!("k{i}").as_bytes(), None)).unwrap();
        assert_eq!(check_value(v.as_slice()), Some(i));
        assert_eq!(v.expires_ms(), 0);
    }
    drop(s);
    let (_, report) = block_on(Store::open(dev.queue(4 << 20).unwrap(), small_config(SIM_BYTES))).unwrap();
    assert_eq!(report.upgraded_from, None, "upgraded once");
    mark_format(&dev, 1);
    let err = block_on(Store::open(dev.queue(4 << 20).unwrap(), small_config(SIM_BYTES)))
        .err()
        .unwrap();
    assert!(err.to_string().contains("format version 1"), "{err}");
}
