//! No bytes on the disk can make opening a store panic or return wrong bytes: a store is
//! written, then its medium is damaged at random (bit flips anywhere in the region,
//! sometimes whole runs of random bytes, sometimes aimed at segment and batch headers),
//! then opened again. Opening may fail with an error; if it opens, every key reads back a
//! value once written under it, or an error, never foreign bytes.
//!
//! `HOTSHARD_DAMAGE_SEEDS=N` runs N seeds (default 300).

mod common;

use std::collections::HashMap;

use common::*;
use futures::executor::block_on;
use hotshard_nvme::{SimDevice, SplitMix64};
use hotshard_store::Store;

/// What the damaged stores did, over all seeds.
#[derive(Default, Debug)]
struct Seen {
    refused_to_open: u64,
    opened: u64,
    reads_ok: u64,
    reads_failed: u64,
}

fn run_seed(seed: u64, seen: &mut Seen) -> Result<(), String> {
    let dev = SimDevice::new(SIM_BYTES, 4096, seed).map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(seed);
    // Which key each value id went under.
    let mut written: HashMap<u64, String> = HashMap::new();
    {
        let q = dev.queue(4 << 20).map_err(|e| e.to_string())?;
        let (store, _) = block_on(Store::open(q, small_config(SIM_BYTES))).map_err(|e| e.to_string())?;
        block_on(async {
            for id in 0..40 + rng.below(80) {
                let key = format!("k{}", rng.below(30));
                let big = rng.chance(1, 4);
                let len = 8 + rng.below(if big { 20_000 } else { 300 }) as usize;
                if store
                    .put(key.as_bytes(), 0, &make_value(id, len), None)
                    .await
                    .is_ok()
                {
                    written.insert(id, key);
                } else {
                    break;
                }
                if rng.chance(1, 10) {
                    let _ = store
                        .delete(format!("k{}", rng.below(30)).as_bytes(), 0, None)
                        .await;
                }
            }
        });
    }
    let used = SIM_BYTES;
    for _ in 0..1 + rng.below(40) {
        match rng.below(4) {
            // Anywhere.
            0 | 1 => {
                dev.flip_random_bit(0..used);
            }
            // The start of a segment or of a 4 KiB block (segment, batch headers).
            2 => {
                let at = rng.below(used / 4096) * 4096 + rng.below(64);
                dev.flip_bit(at, rng.below(8) as u8);
            }
            // A run of random bytes.
            _ => {
                let at = rng.below(used - 512);
                for i in 0..1 + rng.below(512) {
                    for bit in 0..8 {
                        if rng.chance(1, 2) {
                            dev.flip_bit(at + i, bit);
                        }
                    }
                }
            }
        }
    }
    let q = dev.queue(4 << 20).map_err(|e| e.to_string())?;
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        block_on(Store::open(q, small_config(SIM_BYTES)))
    }))
    .map_err(|_| format!("seed {seed}: opening a damaged store panicked"))?;
    let Ok((store, _)) = opened else {
        seen.refused_to_open += 1; // refused with an error: allowed
        return Ok(());
    };
    seen.opened += 1;
    for k in 0..30 {
        let key = format!("k{k}");
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            block_on(store.get(key.as_bytes(), None))
        }))
        .map_err(|_| format!("seed {seed}: reading {key} panicked"))?;
        if got.is_err() {
            seen.reads_failed += 1;
        }
        if let Ok((v, _)) = got {
            seen.reads_ok += 1;
            let id = check_value(v.as_slice());
            if id.and_then(|id| written.get(&id)) != Some(&key) {
                return Err(format!(
                    "seed {seed}: {key} returned bytes never written under it"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn a_damaged_disk_never_panics_or_returns_foreign_bytes() {
    let seeds: u64 = std::env::var("HOTSHARD_DAMAGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut failures = Vec::new();
    let mut seen = Seen::default();
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed, &mut seen) {
            failures.push(e);
        }
    }
    eprintln!("{seeds} damaged stores: {seen:?}");
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
