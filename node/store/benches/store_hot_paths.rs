//! criterion benches for the engine's hot pure functions: index lookup and insert, the
//! value checksum, and the batch record header codec; and the CPU cost of one durable put
//! on SimDevice (no device wait) with its value received into an ordinary vector and copied
//! into the batch, against received into a buffer of the pool and written from it.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hotshard_store::format::value_crc;
use hotshard_store::index::{Index, IndexEntry};

fn key(i: u64) -> Vec<u8> {
    format!("key:{i:010}").into_bytes()
}

fn index(c: &mut Criterion) {
    let n = 1_000_000u64;
    let mut idx = Index::default();
    for i in 0..n {
        idx.insert(
            &key(i),
            (i % 4096) as u16,
            IndexEntry::new(i, 1, 4096, 4096, 7, false),
        );
    }
    let keys: Vec<Vec<u8>> = (0..4096).map(|i| key(i * 244 % n)).collect();
    let mut at = 0;
    c.bench_function("index get (1M keys)", |b| {
        b.iter(|| {
            at = (at + 1) % keys.len();
            black_box(idx.get(black_box(&keys[at])));
        })
    });
    c.bench_function("index overwrite (1M keys)", |b| {
        b.iter(|| {
            at = (at + 1) % keys.len();
            black_box(idx.insert(&keys[at], 0, IndexEntry::new(at as u64, 2, 0, 4096, 1, false)));
        })
    });
    c.bench_function("index insert 4096 new keys", |b| {
        b.iter_batched(
            Index::default,
            |mut fresh| {
                for k in keys.iter().take(4096) {
                    fresh.insert(k, 0, IndexEntry::new(1, 1, 0, 1, 1, false));
                }
                fresh
            },
            BatchSize::LargeInput,
        )
    });
}

fn checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("value crc32c");
    for size in [64usize, 4096, 1 << 20] {
        let v: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size} B"), |b| {
            b.iter(|| black_box(value_crc(black_box(&v))))
        });
    }
    g.finish();
}

/// One put per batch on SimDevice (in memory, no wait), the same 8 keys overwritten (GC
/// frees each superseded segment without reading it). Each iteration includes receiving
/// the value (a copy from a source slice, standing in for `recv`) into where it lands:
/// a zero-filled vector, as the node did before issue 17, or a `ValueBuf` of the pool.
fn put_path(c: &mut Criterion) {
    use futures::executor::block_on;
    use hotshard_nvme::SimDevice;
    use hotshard_store::{Store, StoreConfig};
    let region = 512u64 << 20;
    let dev = SimDevice::new(region, 4096, 1).unwrap();
    let (store, _) = block_on(Store::open(
        dev.queue(64 << 20).unwrap(),
        StoreConfig::new(0, region),
    ))
    .unwrap();
    let mut g = c.benchmark_group("durable put on SimDevice");
    for size in [4096usize, 64 << 10, 1 << 20] {
        let source: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut n = 0u64;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size} B copied"), |b| {
            b.iter(|| {
                n += 1;
                let mut v = vec![0u8; size];
                v.copy_from_slice(black_box(&source));
                block_on(store.put(format!("k{}", n % 8).as_bytes(), 0, &v, None)).unwrap()
            })
        });
        g.bench_function(format!("{size} B in place"), |b| {
            b.iter(|| {
                n += 1;
                let mut v = store.value_buffer(size).expect("pool room");
                v.as_mut().copy_from_slice(black_box(&source));
                block_on(store.put_buf(format!("k{}", n % 8).as_bytes(), 0, v, None)).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, index, checksum, put_path);
criterion_main!(benches);
