//! The io_uring backend on a file on the disk and on a loop device.

mod common;

use std::future::Future;
use std::rc::Rc;

use common::*;
use hotshard_nvme::limits::IO_ALIGN;
use hotshard_nvme::{
    BlockQueue, Device, DeviceKind, DeviceOptions, Durability, NvmeError, UringOptions, UringQueue,
};

fn file_queue(dir: &tempfile::TempDir, opts: UringOptions) -> UringQueue {
    let dev = Device::open(&DeviceOptions::new(dir.path().join("dev.img")).file_size(8 << 20)).unwrap();
    UringQueue::new(dev, &opts).unwrap()
}

fn small_pool() -> UringOptions {
    UringOptions {
        pool_bytes: 4 << 20,
        ..UringOptions::default()
    }
}

#[test]
fn conformance_on_a_file() {
    let dir = test_dir();
    let q = file_queue(&dir, small_pool());
    futures_lite::future::block_on(conformance(&q));
    assert_eq!(q.in_flight(), 0);
}

#[test]
fn every_ring_flavour_works_on_this_kernel() {
    let dir = test_dir();
    for (defer, register) in [(true, true), (false, true), (true, false), (false, false)] {
        let q = file_queue(
            &dir,
            UringOptions {
                defer_taskrun: defer,
                register_buffers: register,
                ..small_pool()
            },
        );
        let f = q.features();
        assert_eq!(f.fixed_buffers, register, "{f:?}");
        futures_lite::future::block_on(conformance(&q));
    }
}

#[test]
fn many_operations_in_flight_on_glommio() {
    on_glommio(|| async {
        let dir = test_dir();
        let q = file_queue(&dir, small_pool());
        concurrent_io(&q, 200).await;
        assert_eq!(q.in_flight(), 0);
    });
}

#[test]
fn a_full_ring_is_a_typed_error() {
    let dir = test_dir();
    let q = file_queue(
        &dir,
        UringOptions {
            entries: 4,
            ..small_pool()
        },
    );
    futures_lite::future::block_on(async {
        let mut futs = Vec::new();
        for i in 0..64u64 {
            futs.push(q.read_at(i * 4096, q.pool().try_alloc(4096).unwrap()));
        }
        let results = join_all(futs).await;
        let full = results
            .iter()
            .filter(|r| matches!(r, Err(NvmeError::RingFull { .. })))
            .count();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert!(full > 0, "some reads beyond the ring's capacity must be refused");
        assert!(ok > 0 && ok + full == 64, "ok {ok} full {full}");
    });
}

#[test]
fn an_exhausted_pool_is_a_typed_error() {
    let dir = test_dir();
    let q = file_queue(
        &dir,
        UringOptions {
            pool_bytes: 2 * IO_ALIGN,
            ..UringOptions::default()
        },
    );
    let _a = q.pool().try_alloc(IO_ALIGN).unwrap();
    let _b = q.pool().try_alloc(IO_ALIGN).unwrap();
    assert!(matches!(
        q.pool().try_alloc(IO_ALIGN),
        Err(NvmeError::PoolExhausted { .. })
    ));
}

#[test]
fn a_dropped_operation_keeps_its_buffer_until_the_kernel_is_done() {
    let dir = test_dir();
    let q = file_queue(&dir, small_pool());
    let free_before = q.pool().free_bytes();
    {
        let fut = q.write_at(0, filled(&q, 65536, 3), Durability::Fua);
        let mut fut = Box::pin(fut);
        // Poll once so that the write is submitted, then abandon it.
        let waker = std::task::Waker::noop();
        let _ = fut.as_mut().poll(&mut std::task::Context::from_waker(waker));
    }
    // The queue still works, and the abandoned buffer comes back once reaped.
    futures_lite::future::block_on(async {
        let r = q.read_at(0, q.pool().try_alloc(4096).unwrap()).await.unwrap();
        assert_eq!(r.len(), 4096);
    });
    for _ in 0..10_000 {
        if q.in_flight() == 0 {
            break;
        }
        futures_lite::future::block_on(q.flush()).unwrap();
    }
    assert_eq!(q.in_flight(), 0);
    assert_eq!(q.pool().free_bytes(), free_before);
}

/// The probe the shard's socket poller asks (`busy_probe`): busy from the moment an
/// operation is queued until its completion is reaped, idle otherwise, and idle for good
/// once the queue is gone.
#[test]
fn the_busy_probe_follows_operations_in_flight() {
    let dir = test_dir();
    let q = file_queue(&dir, small_pool());
    let busy = q.busy_probe();
    assert!(!busy(), "busy with nothing queued");
    let mut write = Box::pin(q.write_at(0, filled(&q, 4096, 7), Durability::Fua));
    let waker = std::task::Waker::noop();
    let _ = write.as_mut().poll(&mut std::task::Context::from_waker(waker));
    assert!(busy(), "idle with a write queued");
    futures_lite::future::block_on(write).unwrap();
    assert!(!busy(), "busy after the write was reaped");
    drop(q);
    assert!(!busy(), "busy after the queue was dropped");
}

/// Lets a test move a queue to another thread to prove the runtime check.
struct ForceSend<T>(T);
// SAFETY: only used to hand the queue to a thread that must be refused; the original
// thread does not touch the queue while the other thread holds it (it joins first).
unsafe impl<T> Send for ForceSend<T> {}

#[test]
fn a_queue_touched_from_another_thread_is_refused() {
    let dir = test_dir();
    let q = Rc::new(file_queue(&dir, small_pool()));
    let moved = ForceSend(q.clone());
    let err = std::thread::spawn(move || {
        let moved = moved;
        let own_pool = hotshard_nvme::BufferPool::new(IO_ALIGN).unwrap();
        let res = futures_lite::future::block_on(moved.0.read_at(0, own_pool.try_alloc(IO_ALIGN).unwrap()));
        // The Rc must not be released from this thread.
        std::mem::forget(moved);
        res.unwrap_err()
    })
    .join()
    .unwrap();
    assert!(matches!(err, NvmeError::WrongThread), "{err}");
}

#[test]
fn nvme_char_devices_are_not_driven_by_the_block_queue() {
    let dir = test_dir();
    let dev = Device::open(&DeviceOptions::new(dir.path().join("d")).file_size(1 << 20)).unwrap();
    assert_eq!(dev.info().kind, DeviceKind::File);
    assert!(!dev.info().passthrough);
}

/// A loop device on a file in /dev/shm: a fast block device (needs root and losetup).
struct LoopDevice {
    path: String,
    _backing: tempfile::TempDir,
}

impl LoopDevice {
    fn attach(size: u64) -> Option<LoopDevice> {
        let root = unsafe { libc::geteuid() } == 0;
        let backing = tempfile::tempdir_in("/dev/shm").ok()?;
        let file = backing.path().join("loop.img");
        std::fs::File::create(&file).ok()?.set_len(size).ok()?;
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", "--direct-io=on"])
            .arg(&file)
            .output()
            .ok()?;
        if !root || !out.status.success() {
            eprintln!(
                "skipped: loop device unavailable (root: {root}, losetup: {:?})",
                out.status
            );
            return None;
        }
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some(LoopDevice {
            path,
            _backing: backing,
        })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.path])
            .status();
    }
}

#[test]
fn conformance_on_a_loop_device() {
    let Some(lo) = LoopDevice::attach(16 << 20) else {
        return;
    };
    let dev = Device::open(&DeviceOptions::new(&lo.path)).unwrap();
    assert_eq!(dev.info().kind, DeviceKind::BlockDevice);
    assert_eq!(dev.info().size, 16 << 20);
    let q = UringQueue::new(dev, &small_pool()).unwrap();
    futures_lite::future::block_on(conformance(&q));
    on_glommio(move || async move {
        let dev = Device::open(&DeviceOptions::new(&lo.path)).unwrap();
        let q = UringQueue::new(dev, &small_pool()).unwrap();
        concurrent_io(&q, 128).await;
        drop(q);
        drop(lo);
    });
}

#[test]
fn a_poller_task_reaps_for_everyone_in_each_mode() {
    for (batch, wait_after) in [(false, 0), (true, 0), (false, 1), (true, 4)] {
        on_glommio(move || async move {
            let dir = test_dir();
            let opts = UringOptions {
                batch_submissions: batch,
                wait_after_idle_polls: wait_after,
                ..small_pool()
            };
            let q = file_queue(&dir, opts);
            let poller = glommio::spawn_local(q.poller());
            concurrent_io(&q, 300).await;
            conformance(&q).await;
            assert_eq!(q.in_flight(), 0);
            // The poller sleeps while nothing is in flight and ends with the queue.
            drop(q);
            poller.await;
        });
    }
}
