//! The background GC task of a shard (`gc_task`): a task beside the foreground's that
//! collects while foreground writes churn.

#[path = "../store/tests/common/mod.rs"]
mod common;

use common::*;
use hotshard_node::gc_task::{start_background_gc, GcPacing};
use hotshard_node::store::StoreError;
use hotshard_nvme::SimDevice;

fn sim() -> SimDevice {
    SimDevice::new(SIM_BYTES, 4096, 1).unwrap()
}

#[test]
fn background_gc_frees_space_during_churn() {
    let done = glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let dev = sim();
            let s = sim_store(&dev, small_config(SIM_BYTES));
            let pacing = GcPacing {
                idle_sleep: std::time::Duration::from_millis(1),
                ..GcPacing::default()
            };
            let gc = start_background_gc(s.clone(), pacing);
            // Overwrite 40 keys with 4 KiB values far beyond the device's size.
            for i in 0..3000u64 {
                loop {
                    match s
                        .put(format!("k{}", i % 40).as_bytes(), 0, &make_value(i, 4000), None)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::NoSpace) => {
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            for k in 0..40u64 {
                let (v, _) = s.get(format!("k{k}").as_bytes(), None).await.unwrap();
                assert_eq!(check_value(v.as_slice()), Some(2960 + k));
            }
            drop(gc);
            s.counters().gc_freed_segments
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(done > 10, "background GC freed {done} segments");
}

/// Sustained overwrites by many writers, with GC only in its background task (default
/// pacing): writers must be slowed down to GC's pace, never refused with
/// NoSpace, while the live data is well under the device's size.
#[test]
fn sustained_overwrites_wait_for_gc_instead_of_failing_with_no_space() {
    use std::cell::Cell;
    use std::rc::Rc;
    const WRITERS: u64 = 32;
    const KEYS: u64 = 150; // 150 x 4 KB: about a third of the device live
    const PUTS_PER_WRITER: u64 = 250; // 8,000 puts: 16x the device
    let (no_space, freed) = glommio::LocalExecutorBuilder::default()
        .spawn(|| async {
            let dev = sim();
            let s = sim_store(&dev, small_config(SIM_BYTES));
            let gc = start_background_gc(s.clone(), GcPacing::default());
            let no_space = Rc::new(Cell::new(0u64));
            let mut writers = Vec::new();
            for w in 0..WRITERS {
                let (s, no_space) = (s.clone(), no_space.clone());
                writers.push(glommio::spawn_local(async move {
                    for i in 0..PUTS_PER_WRITER {
                        let id = w * PUTS_PER_WRITER + i;
                        let key = format!("k{}", id.wrapping_mul(0x9E37_79B9) % KEYS);
                        match s.put(key.as_bytes(), 0, &make_value(id, 4000), None).await {
                            Ok(_) => {}
                            Err(StoreError::NoSpace) => no_space.set(no_space.get() + 1),
                            Err(e) => panic!("{e}"),
                        }
                    }
                }));
            }
            for w in writers {
                w.await;
            }
            drop(gc);
            (no_space.get(), s.counters().gc_freed_segments)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        no_space, 0,
        "{no_space} puts refused with NoSpace ({freed} segments freed)"
    );
}
