//! What one SyncManifest page costs the source shard today (issue 31 item 5, measured, not
//! yet fixed): the manifest of one partition is a walk of every index slot of the shard,
//! so a page costs O(keys in the shard), not O(page). Ignored by default (it builds a
//! 2-million-key index): `cargo test --release -p hotshard-store --test manifest_cost -- --ignored --nocapture`.

use std::time::Instant;

use hotshard_store::index::{Index, IndexEntry};

#[test]
#[ignore]
fn one_partitions_manifest_walks_the_whole_shard() {
    const KEYS: u32 = 2_000_000;
    const PARTITIONS: u16 = 2048;
    let mut index = Index::default();
    let built = Instant::now();
    for i in 0..KEYS {
        let key = format!("object/{i:010}/chunk");
        index.insert(
            key.as_bytes(),
            (i % PARTITIONS as u32) as u16,
            IndexEntry::new(i as u64 + 1, 0, 0, 64, 7, false),
        );
    }
    let built = built.elapsed();
    let started = Instant::now();
    let mut entries = 0;
    for p in 0..16u16 {
        let mut page: Vec<(Vec<u8>, u64)> = index
            .iter_partition(p)
            .map(|(k, e)| (k.to_vec(), e.version))
            .collect();
        page.sort_unstable();
        entries += page.len();
    }
    let per_page = started.elapsed() / 16;
    eprintln!(
        "{KEYS} keys in {PARTITIONS} partitions (built in {built:?}): one partition's manifest ({} entries) takes {per_page:?}; a resync of every partition of the shard: {:?}",
        entries / 16,
        per_page * PARTITIONS as u32
    );
    assert!(entries >= 16 * (KEYS as usize / PARTITIONS as usize), "{entries}");
}
