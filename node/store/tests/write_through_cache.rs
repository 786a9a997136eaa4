//! Issue 18's write-through cache: a write of a cached key leaves its new value in the
//! cache once its batch is durable (copied or received in place, a new write or a
//! replica's), a delete drops it, writes to keys nobody reads take no room, a value too
//! large to cache is not kept, and a stream of writes to cold keys does not flush keys
//! that are read again and again.

mod common;

use common::*;
use futures::executor::block_on;
use hotshard_nvme::{SimDevice, SimQueue};
use hotshard_store::{Store, StoreError};

fn store() -> Store<SimQueue> {
    // small_config: a 256 KiB cache, so values up to 4 KiB are cached.
    let dev = SimDevice::new(SIM_BYTES * 4, 4096, 1).unwrap();
    sim_store(&dev, small_config(SIM_BYTES * 4))
}

/// Reads `key`, checks the bytes, and says whether the cache answered.
fn read_from_cache(s: &Store<SimQueue>, key: &[u8], id: u64) -> bool {
    let (v, _) = block_on(s.get(key, None)).unwrap();
    assert_eq!(
        check_value(v.as_slice()),
        Some(id),
        "{}",
        String::from_utf8_lossy(key)
    );
    v.from_cache()
}

#[test]
fn a_cached_key_keeps_its_place_across_writes_and_a_delete_drops_it() {
    let s = store();
    block_on(s.put(b"k", 0, &make_value(1, 3000), None)).unwrap();
    assert!(
        !read_from_cache(&s, b"k", 1),
        "a key never read is not cached by its write"
    );
    assert!(read_from_cache(&s, b"k", 1), "its first read cached it");
    block_on(s.put(b"k", 0, &make_value(2, 3000), None)).unwrap();
    assert!(read_from_cache(&s, b"k", 2), "the write updated the cached copy");
    // Received in place, then written from the pool's buffer: the same.
    let mut buf = s.value_buffer(2500).unwrap();
    buf.as_mut().copy_from_slice(&make_value(3, 2500));
    block_on(s.put_buf(b"k", 0, buf, None)).unwrap();
    assert!(read_from_cache(&s, b"k", 3));
    // A replica's record too, once its key is cached.
    assert!(block_on(s.apply_versioned(b"r", 0, Some(&make_value(4, 3000)), 1 << 40)).unwrap());
    assert!(!read_from_cache(&s, b"r", 4));
    assert!(block_on(s.apply_versioned(b"r", 0, Some(&make_value(5, 3000)), 1 << 41)).unwrap());
    assert!(read_from_cache(&s, b"r", 5));
    // Writes to keys nobody reads take no room.
    let objects = s.cache_stats().objects;
    for k in 0..50u64 {
        block_on(s.put(format!("w{k}").as_bytes(), 0, &make_value(k, 3000), None)).unwrap();
    }
    assert_eq!(s.cache_stats().objects, objects);
    block_on(s.delete(b"k", 0, None)).unwrap();
    assert!(matches!(block_on(s.get(b"k", None)), Err(StoreError::NotFound)));
    assert_eq!(s.cache_stats().objects, 1, "only r is left in the cache");
}

#[test]
fn a_value_too_large_to_cache_is_read_from_the_device() {
    let s = store();
    block_on(s.put(b"big", 0, &make_value(5, 20_000), None)).unwrap();
    assert!(!read_from_cache(&s, b"big", 5));
    assert!(
        !read_from_cache(&s, b"big", 5),
        "and is not cached by its read either"
    );
    assert_eq!(s.cache_stats().objects, 0);
}

#[test]
fn writes_to_cold_keys_do_not_flush_the_keys_read_often() {
    let s = store();
    // 20 hot keys of 3 KiB (about a quarter of the 256 KiB cache), read twice each.
    for k in 0..20u64 {
        block_on(s.put(format!("hot{k}").as_bytes(), 0, &make_value(k, 3000), None)).unwrap();
    }
    for _ in 0..2 {
        for k in 0..20u64 {
            read_from_cache(&s, format!("hot{k}").as_bytes(), k);
        }
    }
    // 400 writes of cold keys, 1.2 MB: nearly five times the cache.
    for k in 0..400u64 {
        block_on(s.put(
            format!("cold{k}").as_bytes(),
            0,
            &make_value(1000 + k, 3000),
            None,
        ))
        .unwrap();
    }
    let still = (0..20u64)
        .filter(|k| read_from_cache(&s, format!("hot{k}").as_bytes(), *k))
        .count();
    assert!(still >= 18, "only {still} of 20 hot keys still cached");
    assert!(s.cache_stats().bytes <= 256 << 10, "the budget holds");
}

/// `get_at_once` (a RESP GET answered in place, issue 32) answers what needs no I/O —
/// a cached value, with its version, or a key the index lacks — and leaves the rest to
/// `get` without counting it: every read is counted once, hit or miss.
#[test]
fn a_read_at_once_answers_a_cached_or_absent_key_and_leaves_the_rest_to_get() {
    let s = store();
    let v1 = block_on(s.put(b"k", 0, &make_value(1, 3000), None)).unwrap();
    assert!(
        s.get_at_once(b"k", None, false).is_none(),
        "not cached yet: the device's"
    );
    assert_eq!(
        (s.counters().gets, s.cache_stats().misses),
        (0, 0),
        "nothing counted"
    );
    assert!(
        !read_from_cache(&s, b"k", 1),
        "the full read goes to the device, and caches it"
    );
    assert_eq!((s.counters().gets, s.cache_stats().misses), (1, 1));
    let (v, version) = s.get_at_once(b"k", None, false).unwrap().unwrap();
    assert_eq!((check_value(v.as_slice()), version), (Some(1), v1));
    assert_eq!((s.counters().gets, s.cache_stats().hits), (2, 1));
    // A write of the key: the new version, never the old value.
    let v2 = block_on(s.put(b"k", 0, &make_value(2, 3000), None)).unwrap();
    let (v, version) = s.get_at_once(b"k", None, false).unwrap().unwrap();
    assert_eq!((check_value(v.as_slice()), version), (Some(2), v2));
    assert!(matches!(
        s.get_at_once(b"none", None, false),
        Some(Err(StoreError::NotFound))
    ));
    // Expired: absent by the clock, live when expiry is ignored (a replica's read).
    block_on(s.put_expiring(b"e", 0, &make_value(3, 100), None, 1)).unwrap();
    block_on(s.get_ignoring_expiry(b"e", None)).unwrap();
    assert!(matches!(
        s.get_at_once(b"e", None, false),
        Some(Err(StoreError::NotFound))
    ));
    let (v, _) = s.get_at_once(b"e", None, true).unwrap().unwrap();
    assert_eq!(check_value(v.as_slice()), Some(3));
    block_on(s.delete(b"k", 0, None)).unwrap();
    assert!(matches!(
        s.get_at_once(b"k", None, false),
        Some(Err(StoreError::NotFound))
    ));
}
