//! Helpers for the storage engine tests: stores on SimDevice and on real files, a
//! deterministic local executor, and self-checking values.
#![allow(dead_code)]

use futures::executor::LocalPool;
use hotshard_nvme::{Device, DeviceOptions, SimDevice, SimQueue, UringOptions, UringQueue};
use hotshard_store::{Store, StoreConfig};

pub const SIM_BYTES: u64 = 2 << 20;
pub const SIM_SEGMENT: u64 = 128 << 10;

/// A small layout so that tests fill segments and exercise GC quickly.
pub fn small_config(region_bytes: u64) -> StoreConfig {
    let mut cfg = StoreConfig::new(0, region_bytes);
    cfg.segment_bytes = SIM_SEGMENT;
    cfg.max_value_bytes = 32 << 10;
    cfg.batch_bytes = 32 << 10;
    cfg.cache_bytes = 256 << 10;
    cfg
}

pub fn sim_store(sim: &SimDevice, cfg: StoreConfig) -> Store<SimQueue> {
    let q = sim.queue(4 << 20).unwrap();
    let (store, _) = futures::executor::block_on(Store::open(q, cfg)).unwrap();
    store
}

/// A scratch directory on a real file system (not tmpfs).
pub fn test_dir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

pub fn file_queue(path: &std::path::Path, bytes: u64) -> UringQueue {
    let dev = Device::open(&DeviceOptions::new(path).file_size(bytes)).unwrap();
    UringQueue::new(
        dev,
        &UringOptions {
            pool_bytes: 8 << 20,
            ..UringOptions::default()
        },
    )
    .unwrap()
}

/// A value that proves its own integrity: 8 bytes of id, then bytes derived from it.
pub fn make_value(id: u64, len: usize) -> Vec<u8> {
    let len = len.max(8);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&id.to_le_bytes());
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// The id of a self-checking value, or None if its bytes are not exactly `make_value`.
pub fn check_value(v: &[u8]) -> Option<u64> {
    if v.len() < 8 {
        return None;
    }
    let id = u64::from_le_bytes(v[..8].try_into().unwrap());
    (make_value(id, v.len()) == v).then_some(id)
}

pub fn pool() -> LocalPool {
    LocalPool::new()
}
