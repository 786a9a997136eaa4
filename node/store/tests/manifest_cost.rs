//! What one SyncManifest page costs the source shard (issue 31 item 5): one partition's
//! manifest walks that partition's list of slots, not every slot of the shard, so a page
//! costs O(partition), and a resync of a whole shard O(shard) rather than O(shard ×
//! partitions). Checked against a walk of the whole index (what a page cost before) in the
//! same run. The figure for 2 million keys:
//! `HOTSHARD_MANIFEST_KEYS=2000000 cargo test --release -p hotshard-store --test manifest_cost -- --nocapture`.

use std::time::{Duration, Instant};

use hotshard_store::index::{Index, IndexEntry};

fn manifest(index: &Index, p: u16) -> Vec<(Vec<u8>, u64)> {
    let mut page: Vec<(Vec<u8>, u64)> = index
        .iter_partition(p)
        .map(|(k, e)| (k.to_vec(), e.version))
        .collect();
    page.sort_unstable();
    page
}

#[test]
fn one_partitions_manifest_costs_that_partition_not_the_shard() {
    let keys: u32 = std::env::var("HOTSHARD_MANIFEST_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    const PARTITIONS: u16 = 2048;
    const SAMPLED: u16 = 16;
    let mut index = Index::default();
    let built = Instant::now();
    for i in 0..keys {
        let key = format!("object/{i:010}/chunk");
        index.insert(
            key.as_bytes(),
            (i % PARTITIONS as u32) as u16,
            IndexEntry::new(i as u64 + 1, 0, 0, 64, 7, false),
        );
    }
    let built = built.elapsed();
    // The old cost: every slot of the shard looked at for one partition.
    let walked = Instant::now();
    let whole: usize = index.iter().filter(|(k, _)| k.len() == usize::MAX).count();
    let walk = walked.elapsed();
    let started = Instant::now();
    let mut entries = 0;
    for p in 0..SAMPLED {
        let page = manifest(&index, p);
        assert!(page.windows(2).all(|w| w[0] < w[1]));
        entries += page.len();
    }
    let per_page = started.elapsed() / SAMPLED as u32;
    eprintln!(
        "{keys} keys in {PARTITIONS} partitions (built in {built:?}): one partition's manifest ({} entries) takes {per_page:?}; a resync of every partition of the shard about {:?}; one walk of the whole index (a page's cost before): {walk:?}",
        entries / SAMPLED as usize,
        per_page * PARTITIONS as u32
    );
    assert_eq!(whole, 0);
    let expected = (0..keys)
        .filter(|i| i % (PARTITIONS as u32) < SAMPLED as u32)
        .count();
    assert_eq!(entries, expected);
    // A page of 1/2048 of the keys, sorted, against a bare walk of all of them: far less.
    assert!(
        per_page < walk / 8 + Duration::from_micros(50),
        "a page ({per_page:?}) costs about as much as walking the shard ({walk:?})"
    );
}
