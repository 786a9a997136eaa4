//! Issue 18: GC reads only what is live in a victim, found through the index, not the
//! whole segment; what it moves reads back after a power cut; and a value the device
//! returns damaged is not moved under a fresh checksum.

mod common;

use common::*;
use futures::executor::block_on;
use hotshard_nvme::SimDevice;
use hotshard_store::{GcOutcome, GcWrites};

#[test]
fn gc_of_a_segment_with_few_live_records_reads_only_their_blocks() {
    gc_reads_only_live_blocks_and_its_moves_survive_a_power_cut(GcWrites::Shared);
}

/// The same with GC's own head: its moves are written without FUA, and the flush before
/// the freed mark is what keeps them (without it this test loses records).
#[test]
fn gc_with_its_own_head_flushes_its_moves_before_freeing_a_victim() {
    gc_reads_only_live_blocks_and_its_moves_survive_a_power_cut(GcWrites::OwnHead);
}

fn gc_reads_only_live_blocks_and_its_moves_survive_a_power_cut(head: GcWrites) {
    let dev = SimDevice::new(SIM_BYTES, 4096, 1).unwrap();
    let cfg = || {
        let mut c = small_config(SIM_BYTES);
        c.gc_writes = head;
        c
    };
    let s = sim_store(&dev, cfg());
    // 30 keys of 3,000 bytes fill the first 128 KiB segments; then all but k0 and k15 are
    // overwritten by small values in later segments, so the first segment holds two live
    // records among ~30.
    for k in 0..30u64 {
        block_on(s.put(format!("k{k}").as_bytes(), 0, &make_value(k, 3000), None)).unwrap();
    }
    for k in (0..30u64).filter(|k| *k != 0 && *k != 15) {
        block_on(s.put(format!("k{k}").as_bytes(), 0, &make_value(100 + k, 100), None)).unwrap();
    }
    let mut freed_with_moves = 0;
    loop {
        let (before, reads) = (s.counters().gc_read_bytes, dev.stats().reads);
        match block_on(s.gc_step()).unwrap() {
            GcOutcome::Freed {
                moved_records,
                moved_bytes,
                ..
            } if moved_records > 0 => {
                let read = s.counters().gc_read_bytes - before;
                // Each live record costs its own blocks (3,000 bytes: one or two blocks),
                // where the whole segment was read before: 128 KiB.
                assert!(
                    read <= moved_records * 2 * 4096,
                    "{read} bytes read to move {moved_records} records ({moved_bytes} bytes)"
                );
                assert!(dev.stats().reads - reads <= moved_records + 1);
                freed_with_moves += 1;
            }
            GcOutcome::Freed { .. } => {}
            GcOutcome::Idle => break,
            GcOutcome::Deferred { segment } => panic!("segment {segment} deferred"),
        }
    }
    assert!(
        freed_with_moves >= 1,
        "no segment with live records was collected"
    );
    let flushes = s.counters().gc_flushes;
    match head {
        GcWrites::Shared => assert_eq!(flushes, 0, "the log's batches are durable already"),
        GcWrites::OwnHead => assert!(flushes >= freed_with_moves, "{flushes} flushes"),
    }
    dev.cut_power();
    drop(s);
    dev.recover();
    let s = sim_store(&dev, cfg());
    for k in 0..30u64 {
        let want = if k == 0 || k == 15 { k } else { 100 + k };
        let (v, _) = block_on(s.get(format!("k{k}").as_bytes(), None)).unwrap();
        assert_eq!(check_value(v.as_slice()), Some(want), "k{k}");
    }
}
