//! Shared checks that every backend must pass, and helpers for the backend tests.
#![allow(dead_code)]

use hotshard_nvme::{BlockQueue, DmaBuffer, Durability, NvmeError};

/// A scratch directory on a real file system (not tmpfs).
pub fn test_dir() -> tempfile::TempDir {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

pub fn filled<Q: BlockQueue>(q: &Q, len: usize, seed: u8) -> DmaBuffer {
    let mut b = q.pool().try_alloc(len).unwrap();
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    b
}

/// Round trips through every operation, then each kind of bad input.
pub async fn conformance<Q: BlockQueue>(q: &Q) {
    let bs = q.info().logical_block_size as usize;
    let size = q.info().size;

    // write / read back
    let w = filled(q, 8192, 7);
    let w = q.write_at(4096, w, Durability::Volatile).await.unwrap();
    let r = q.read_at(4096, q.pool().try_alloc(8192).unwrap()).await.unwrap();
    assert_eq!(&r[..], &w[..], "read returns what was written");

    // FUA write, flush
    let f = filled(q, 4096, 99);
    let f = q.write_at(0, f, Durability::Fua).await.unwrap();
    q.flush().await.unwrap();
    let r = q.read_at(0, q.pool().try_alloc(4096).unwrap()).await.unwrap();
    assert_eq!(&r[..], &f[..]);

    // vectored write lands back to back
    let parts = vec![filled(q, 4096, 1), filled(q, 8192, 2), filled(q, 4096, 3)];
    let expect: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
    let parts = q.writev_at(65536, parts, Durability::Fua).await.unwrap();
    assert_eq!(parts.len(), 3);
    let r = q
        .read_at(65536, q.pool().try_alloc(16384).unwrap())
        .await
        .unwrap();
    assert_eq!(&r[..], &expect[..]);

    // the last block of the device is reachable, one past it is not
    let last = size - bs as u64;
    q.write_at(last, filled(q, bs, 5), Durability::Volatile)
        .await
        .unwrap();
    let err = q
        .read_at(last, q.pool().try_alloc(2 * bs).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, NvmeError::OutOfRange { .. }), "{err}");
    let err = q
        .read_at(u64::MAX - 4095, q.pool().try_alloc(4096).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, NvmeError::OutOfRange { .. }), "{err}");

    // misaligned offset and length
    let err = q
        .read_at(bs as u64 / 2, q.pool().try_alloc(4096).unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, NvmeError::Misaligned { what: "offset", .. }),
        "{err}"
    );
    let err = q
        .write_at(0, q.pool().try_alloc(bs + 1).unwrap(), Durability::Volatile)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NvmeError::Misaligned { what: "length", .. }),
        "{err}"
    );
    let err = q.writev_at(0, vec![], Durability::Volatile).await.unwrap_err();
    assert!(matches!(err, NvmeError::TooLarge { .. }), "{err}");
}

/// Many reads and writes in flight at once, each checked.
pub async fn concurrent_io<Q: BlockQueue>(q: &Q, ops: usize) {
    let writes: Vec<_> = (0..ops)
        .map(|i| {
            let b = filled(q, 4096, i as u8);
            q.write_at((i as u64) * 4096, b, Durability::Volatile)
        })
        .collect();
    for w in join_all(writes).await {
        w.unwrap();
    }
    let reads: Vec<_> = (0..ops)
        .map(|i| q.read_at((i as u64) * 4096, q.pool().try_alloc(4096).unwrap()))
        .collect();
    for (i, r) in join_all(reads).await.into_iter().enumerate() {
        let r = r.unwrap();
        let expect = filled(q, 4096, i as u8);
        assert_eq!(&r[..], &expect[..], "block {i}");
    }
}

pub use hotshard_nvme::queue::join_all;

/// Runs `f` on a fresh glommio executor.
pub fn on_glommio<T, F>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .expect("glommio executor (is `ulimit -l` at least 512 KiB?)")
        .join()
        .expect("executor thread")
}
