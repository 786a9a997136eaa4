//! The log seam for records that already carry a version (a replica applying what its
//! predecessor wrote): versions kept, the newest wins whatever the arrival order, stale
//! records skipped, local versions outrank kept ones (after a restart too), and GC and
//! power cuts keep all of it.

mod common;

use common::*;
use futures::executor::block_on;
use hotshard_nvme::{SimDevice, SimQueue, SplitMix64};
use hotshard_store::{GcOutcome, Store, StoreError};

fn sim() -> SimDevice {
    SimDevice::new(SIM_BYTES, 4096, 1).unwrap()
}

fn power_cycle(dev: &SimDevice, s: Store<SimQueue>) -> Store<SimQueue> {
    dev.cut_power();
    drop(s);
    dev.recover();
    sim_store(dev, small_config(SIM_BYTES))
}

fn version_of(s: &Store<SimQueue>, key: &[u8]) -> Option<u64> {
    match block_on(s.get(key, None)) {
        Ok((v, version)) => {
            assert!(check_value(v.as_slice()).is_some(), "self-checking value");
            Some(version)
        }
        Err(StoreError::NotFound) => None,
        Err(e) => panic!("get: {e}"),
    }
}

#[test]
fn a_kept_version_wins_only_if_newer_and_local_versions_outrank_it() {
    let dev = sim();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    let apply = |s: &Store<SimQueue>, key: &[u8], value: Option<Vec<u8>>, version| {
        block_on(s.apply_versioned(key, 3, value.as_deref(), version)).unwrap()
    };
    assert!(apply(&s, b"a", Some(make_value(1, 5000)), 1000));
    assert_eq!(version_of(&s, b"a"), Some(1000));
    assert!(!apply(&s, b"a", Some(make_value(2, 100)), 500), "older: skipped");
    assert!(
        !apply(&s, b"a", Some(make_value(3, 100)), 1000),
        "the same: skipped"
    );
    assert_eq!(version_of(&s, b"a"), Some(1000));
    // A local write after it gets a greater version, though the log's own LSNs are small.
    let local = block_on(s.put(b"b", 0, &make_value(4, 100), None)).unwrap();
    assert!(local > 1000, "local version {local}");
    // A tombstone with a kept version; an older put behind it is skipped.
    assert!(apply(&s, b"a", None, 2000));
    assert_eq!(version_of(&s, b"a"), None);
    assert!(!apply(&s, b"a", Some(make_value(5, 100)), 1500));
    assert_eq!(s.keys_in_partition(3), Vec::<(Vec<u8>, u64)>::new());
    assert!(matches!(
        block_on(s.apply_versioned(b"c", 3, Some(b"x"), 0)),
        Err(StoreError::BadRequest(_))
    ));
    let c = s.counters();
    assert_eq!(c.versioned_writes, 2);
    // After a power cut: the tombstone holds, and the clock is past every kept version.
    let s = power_cycle(&dev, s);
    assert_eq!(version_of(&s, b"a"), None);
    let after = block_on(s.put(b"d", 0, &make_value(6, 100), None)).unwrap();
    assert!(after > 2000, "version after restart {after}");
}

#[test]
fn out_of_order_versions_through_gc_and_power_cuts_leave_the_newest() {
    // Versions of 40 keys arrive in a shuffled order (as from several predecessors), with
    // values big enough to fill segments so that GC moves and frees while they arrive.
    let dev = sim();
    let mut s = sim_store(&dev, small_config(SIM_BYTES));
    let mut rng = SplitMix64::new(17);
    let mut updates: Vec<(u64, u64)> = (0..40u64)
        .flat_map(|k| (1..=12u64).map(move |n| (k, 100 + n * 7 + k)))
        .collect();
    for i in (1..updates.len()).rev() {
        updates.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut newest = std::collections::HashMap::new();
    for (n, (k, version)) in updates.iter().enumerate() {
        let key = format!("key-{k}");
        let value = make_value(*version, 2500);
        block_on(s.apply_versioned(key.as_bytes(), 1, Some(&value), *version)).unwrap();
        let e = newest.entry(*k).or_insert(0);
        *e = (*e).max(*version);
        if n % 60 == 59 {
            while !matches!(block_on(s.gc_step()).unwrap(), GcOutcome::Idle) {}
            s = power_cycle(&dev, s);
        }
    }
    let check = |s: &Store<SimQueue>| {
        for (k, v) in &newest {
            let key = format!("key-{k}");
            let (value, version) = block_on(s.get(key.as_bytes(), None)).unwrap();
            assert_eq!(version, *v, "{key}");
            assert_eq!(check_value(value.as_slice()), Some(*v), "{key}");
        }
        assert_eq!(s.keys_in_partition(1).len(), newest.len());
    };
    check(&s);
    assert!(s.counters().gc_freed_segments > 0 || s.space().free_segments > 0);
    let s = power_cycle(&dev, s);
    check(&s);
}

/// A record that arrives while a newer one of its key is staged but not yet durable is
/// answered only once that one is readable: a replica acknowledges a record on this
/// answer, so answering at once let a read at the tail return a value older than one
/// already acknowledged (found by the cluster's nemesis history check).
#[test]
fn a_record_behind_a_newer_staged_one_is_answered_once_that_one_is_readable() {
    let dev = sim();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    let newer = s.apply_versioned(b"k", 3, Some(b"new"), 20);
    let older = async {
        let skipped = !s.apply_versioned(b"k", 3, Some(b"old"), 10).await.unwrap();
        // Read at once, before anything else runs.
        (skipped, s.stat(b"k").ok().map(|st| st.version))
    };
    let (applied, (skipped, seen)) = block_on(futures::future::join(newer, older));
    assert!(applied.unwrap());
    assert!(skipped, "the older record is covered by the newer one");
    assert_eq!(seen, Some(20), "answered before the newer record was readable");
}

/// What a resync uses: the partition's manifest (tombstones included, in key order), a
/// head raising its versions past a replica's copy, and a tombstone written only where the
/// key is absent; the raised versions and the tombstone hold after a power cut.
#[test]
fn manifest_raised_versions_and_burying_an_absent_key() {
    let dev = sim();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    block_on(s.put(b"b", 2, &make_value(1, 300), None)).unwrap();
    block_on(s.put(b"a", 2, &make_value(2, 300), None)).unwrap();
    block_on(s.put(b"c", 2, &make_value(3, 300), None)).unwrap();
    block_on(s.delete(b"c", 2, None)).unwrap();
    block_on(s.put(b"z", 1, &make_value(4, 300), None)).unwrap();
    let m = s.partition_manifest(2);
    let keys: Vec<&[u8]> = m.iter().map(|e| e.key.as_slice()).collect();
    assert_eq!(keys, [&b"a"[..], b"b", b"c"], "key order, the tombstone kept");
    assert_eq!(
        m.iter().map(|e| e.tombstone).collect::<Vec<_>>(),
        [false, false, true]
    );
    let stat = s.stat(b"a").unwrap();
    assert_eq!((m[0].version, m[0].crc32c), (stat.version, stat.crc32c));

    // A live key is not buried; an absent one gets a tombstone with a new version.
    assert!(matches!(
        block_on(s.bury_if_absent(b"a", 2)),
        Err(StoreError::VersionMismatch { .. })
    ));
    s.raise_versions_past(1 << 40).unwrap();
    let buried = block_on(s.bury_if_absent(b"never", 2)).unwrap();
    assert!(buried > 1 << 40, "{buried}");
    let s = power_cycle(&dev, s);
    let m = s.partition_manifest(2);
    let never = m
        .iter()
        .find(|e| e.key == b"never")
        .expect("the tombstone is kept");
    assert!(never.tombstone && never.version == buried);
    let c = s.manifest_entry(b"c").expect("a delete's tombstone is kept");
    assert!(c.tombstone, "{c:?}");
    let next = block_on(s.put(b"a", 2, &make_value(5, 300), None)).unwrap();
    assert!(next > buried, "versions stay raised after a restart: {next}");
    assert_eq!(version_of(&s, b"never"), None);
}

#[test]
fn a_key_moved_to_another_partition_keeps_its_version_and_stays_moved_after_a_power_cut() {
    // Issue 33: a split index's range moves to another partition's chain; a store that is
    // a replica of both moves its copy (`rehome`) at the same version.
    let dev = sim();
    let s = sim_store(&dev, small_config(SIM_BYTES));
    let keys: Vec<Vec<u8>> = (0..20).map(|i| format!("{{b}}/k{i:02}").into_bytes()).collect();
    let mut versions = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        versions.push(block_on(s.put(k, 1, &make_value(i as u64, 3000), None)).unwrap());
    }
    let listed = |s: &Store<SimQueue>, p: u16| -> Vec<(Vec<u8>, u64)> {
        let q = hotshard_store::ordered::ListQuery {
            prefix: b"{b}/",
            limit: 1000,
            ..Default::default()
        };
        s.list_watching(p, &q, |_| {})
            .items
            .into_iter()
            .filter_map(|i| match i {
                hotshard_store::ordered::Listed::Key(k, st) => Some((k, st.version)),
                _ => None,
            })
            .collect()
    };
    for k in &keys[10..] {
        assert!(block_on(s.rehome(k, 2)).unwrap());
        assert!(!block_on(s.rehome(k, 2)).unwrap(), "already there");
    }
    assert!(!block_on(s.rehome(b"{b}/absent", 2)).unwrap());
    let expect = |from: usize, to: usize| -> Vec<(Vec<u8>, u64)> {
        (from..to).map(|i| (keys[i].clone(), versions[i])).collect()
    };
    assert_eq!(listed(&s, 1), expect(0, 10));
    assert_eq!(listed(&s, 2), expect(10, 20));
    assert_eq!(s.keys_in_partition(2).len(), 10);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(version_of(&s, k), Some(versions[i]));
    }
    // A later write in the old partition (the old chain still takes the range's writes
    // while it is copied) moves the key back.
    let back = block_on(s.put(&keys[15], 1, &make_value(99, 100), None)).unwrap();
    assert_eq!(listed(&s, 2).len(), 9);
    // GC moves the records, then a power cut: the same partitions.
    for _ in 0..50 {
        if matches!(block_on(s.gc_step()), Ok(GcOutcome::Idle)) {
            break;
        }
    }
    let s = power_cycle(&dev, s);
    let mut old = expect(0, 10);
    old.push((keys[15].clone(), back));
    old.sort();
    assert_eq!(listed(&s, 1), old);
    let mut new = expect(10, 20);
    new.retain(|(k, _)| *k != keys[15]);
    assert_eq!(listed(&s, 2), new);
}
