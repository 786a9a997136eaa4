//! Crash safety of the storage engine on SimDevice: for thousands of seeds, a random
//! concurrent workload (puts, deletes, gets, GC), a power cut at a random moment, recovery,
//! then every acknowledged put reads back with its exact bytes, every acknowledged delete
//! stays deleted, and nothing torn or corrupt is ever returned.
//!
//! Both commit modes: every batch written durable (`Fua`, the default) and batches written
//! volatile then flushed (`WriteThenFlush`, `store.durability = "flush"`).
//!
//! Under pressure too (issue 16: a happy-path crash test found none of the defects that a
//! pool under pressure exposed): a DMA pool from barely enough to plenty, a task that
//! grabs and holds pool buffers, and large values (up to the value limit, 8 MiB in one
//! seed of every `HUGE_EVERY`).
//!
//! `HOTSHARD_CRASH_SEEDS=N` runs N seeds per mode (default 1500 plain, 1500 under
//! pressure); `HOTSHARD_CRASH_SEED=S` replays one.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use common::*;
use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use hotshard_nvme::{BlockQueue, SimDevice, SimQueue, SplitMix64};
use hotshard_store::{CommitDurability, GcOutcome, GcWrites, Store, StoreError, VictimChoice};

const KEYS: u64 = 16;
const ROUNDS: usize = 3;
/// One pressure seed in this many stores values up to 8 MiB (the node's value limit).
const HUGE_EVERY: u64 = 50;

/// The store, device and pool a seed runs on, and how hard it is pushed.
#[derive(Debug, Clone, Copy)]
struct Profile {
    sim_bytes: u64,
    segment_bytes: u64,
    max_value: usize,
    pool_bytes: usize,
    /// Chance in 100 that a put's value is large (up to `max_value`).
    large_percent: u64,
    /// A task grabs and holds DMA buffers while the writers run.
    hog: bool,
    /// Chance in 100 that the first writer's next step is a GC step, and whether it always
    /// runs GC (otherwise one seed in two).
    gc_percent: u64,
    gc_always: bool,
    /// Large values spread from 64 KiB to `max_value`, evenly on a log scale (otherwise
    /// from half of `max_value` to all of it).
    large_from_64k: bool,
}

impl Profile {
    fn plain() -> Profile {
        Profile {
            sim_bytes: SIM_BYTES,
            segment_bytes: SIM_SEGMENT,
            max_value: 32 << 10,
            pool_bytes: 4 << 20,
            large_percent: 0,
            hog: false,
            gc_percent: 10,
            gc_always: false,
            large_from_64k: false,
        }
    }

    /// Small pools, a hog, large values; every `HUGE_EVERY`th seed with 8 MiB values.
    fn pressure(seed: u64) -> Profile {
        let mut rng = SplitMix64::new(seed ^ 0xb16_b0b5);
        let huge = seed % HUGE_EVERY == HUGE_EVERY - 1;
        let (segment_bytes, max_value, segments) = if huge {
            ((8 << 20) + (64 << 10), 8 << 20, 6)
        } else {
            (SIM_SEGMENT, 32 << 10, 16)
        };
        // Recovery reads two segments at once; a batch holds up to one largest value.
        let least = 2 * segment_bytes as usize + max_value + (64 << 10);
        Profile {
            sim_bytes: 8192 + segments * segment_bytes,
            segment_bytes,
            max_value,
            pool_bytes: least + rng.below(least as u64) as usize,
            large_percent: if huge { 8 } else { 5 + rng.below(30) },
            hog: rng.chance(2, 3),
            gc_percent: 10,
            gc_always: false,
            large_from_64k: false,
        }
    }

    /// GC running hard with values up to the 8 MiB limit (issue 36): five segments of a
    /// little over 8 MiB, a tenth of the puts large (64 KiB to 8 MiB, even on a log scale), 16 keys
    /// overwritten, and GC a third of the first writer's steps in every seed, so that the
    /// cuts land in the middle of moving megabyte records.
    fn gc_heavy(seed: u64) -> Profile {
        let mut rng = SplitMix64::new(seed ^ 0x6c_6ea7);
        let (segment_bytes, max_value) = ((8 << 20) + (64 << 10), 8 << 20);
        let least = 2 * segment_bytes as usize + max_value + (64 << 10);
        Profile {
            sim_bytes: 8192 + 5 * segment_bytes,
            segment_bytes,
            max_value,
            pool_bytes: least + rng.below(least as u64) as usize,
            large_percent: 10,
            hog: rng.chance(1, 2),
            gc_percent: 33,
            gc_always: true,
            large_from_64k: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    InFlight,
    Acked,
    /// Refused before anything was written (validation, NoSpace, Busy).
    Rejected,
    /// Failed after it may have reached the device: outcome unknown.
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    /// Value id for a put, None for a delete.
    put: Option<u64>,
    outcome: Outcome,
    /// Logical times at which the operation was issued and answered (None: never).
    start: u64,
    end: Option<u64>,
}

#[derive(Default)]
struct Model {
    history: HashMap<u64, Vec<Op>>,
    /// Which key each value id was written under.
    id_key: HashMap<u64, u64>,
    next_id: u64,
    /// Ticks at every issue and every answer: real-time order between operations.
    clock: u64,
}

impl Model {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// States the key may be in after recovery. Concurrent operations may take effect in
    /// either order (a delete waits for the key's pending puts, so it can take effect after
    /// puts issued later), so the final state is that of any acknowledged, unknown or
    /// interrupted operation that no acknowledged operation followed in real time (issued
    /// after it was answered).
    fn acceptable(&self, key: u64) -> Vec<Option<u64>> {
        let Some(hist) = self.history.get(&key) else {
            return vec![None]; // never written
        };
        let followed = |o: &Op| {
            o.end
                .is_some_and(|end| hist.iter().any(|b| b.outcome == Outcome::Acked && b.start > end))
        };
        hist.iter()
            .filter(|o| o.outcome != Outcome::Rejected && !followed(o))
            .map(|o| o.put)
            .collect()
    }
}

/// Even keys name an index tag (issue 33): the ordered view must come back from recovery
/// as the keys themselves do.
fn key_name(k: u64) -> Vec<u8> {
    if k.is_multiple_of(2) {
        format!("{{b}}key-{k:02}").into_bytes()
    } else {
        format!("key-{k:02}").into_bytes()
    }
}

fn classify(e: &StoreError) -> Outcome {
    match e {
        StoreError::NotFound
        | StoreError::VersionMismatch { .. }
        | StoreError::NoSpace
        | StoreError::Busy(_)
        | StoreError::TooLarge { .. }
        | StoreError::BadRequest(_) => Outcome::Rejected,
        _ => Outcome::Unknown,
    }
}

fn verify(store: &Store<SimQueue>, model: &mut Model, seed: u64, round: usize) -> Result<(), String> {
    let mut present = Vec::new();
    for k in 0..KEYS {
        let got = match block_on(store.get(&key_name(k), None)) {
            Ok((v, _)) => match check_value(v.as_slice()) {
                Some(id) => Some(id),
                None => return Err(format!("seed {seed} round {round}: key {k} returned torn bytes")),
            },
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(format!("seed {seed} round {round}: key {k}: {e}")),
        };
        if got.is_some() && k.is_multiple_of(2) {
            present.push(key_name(k));
        }
        let ok = model.acceptable(k);
        if !ok.contains(&got) {
            return Err(format!(
                "seed {seed} round {round}: key {k} is {got:?}, expected one of {ok:?}; history {:?}",
                model.history.get(&k)
            ));
        }
        // What recovery decided is now the acknowledged state.
        let now = model.tick();
        model.history.insert(
            k,
            vec![Op {
                put: got,
                outcome: Outcome::Acked,
                start: now,
                end: Some(now),
            }],
        );
    }
    // The ordered view lists exactly the tagged keys that are there, in order.
    present.sort();
    let q = hotshard_store::ordered::ListQuery {
        prefix: b"",
        start_after: None,
        delimiter: b"",
        limit: KEYS as usize + 1,
        ..Default::default()
    };
    let listed: Vec<Vec<u8>> = store
        .list(0, &q)
        .items
        .into_iter()
        .map(|i| match i {
            hotshard_store::ordered::Listed::Key(k, _) | hotshard_store::ordered::Listed::Prefix(k) => k,
        })
        .collect();
    if listed != present {
        return Err(format!(
            "seed {seed} round {round}: the ordered view lists {listed:?}, the keys present are {present:?}"
        ));
    }
    Ok(())
}

/// What GC did in a seed's lives before their power cuts.
#[derive(Default, Clone, Copy)]
struct GcWork {
    /// Segments freed that had live records to move.
    freed_with_moves: u64,
    moved_bytes: u64,
    /// Of those, segments freed in a seed with values of 1 MiB or more.
    freed_with_large_values: u64,
}

fn run_seed(seed: u64, durability: CommitDurability, profile: Profile) -> Result<GcWork, String> {
    let work = Rc::new(std::cell::Cell::new(GcWork::default()));
    let mut cfg = small_config(profile.sim_bytes);
    cfg.durability = durability;
    cfg.segment_bytes = profile.segment_bytes;
    cfg.max_value_bytes = profile.max_value;
    // GC's own head (the default: moves written without FUA, one flush before a victim is
    // freed) in three seeds of four, the log's durable batches in the fourth.
    cfg.gc_writes = if seed % 4 == 3 {
        GcWrites::Shared
    } else {
        GcWrites::OwnHead
    };
    cfg.gc_victims = if seed % 2 == 1 {
        VictimChoice::CostBenefit
    } else {
        VictimChoice::Greedy
    };
    let dev = SimDevice::new(profile.sim_bytes, 4096, seed).map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let model = Rc::new(RefCell::new(Model::default()));
    for round in 0..=ROUNDS {
        let q = dev.queue(profile.pool_bytes).map_err(|e| e.to_string())?;
        let (store, _) = block_on(Store::open(q, cfg.clone()))
            .map_err(|e| format!("seed {seed} round {round}: open failed: {e}"))?;
        verify(&store, &mut model.borrow_mut(), seed, round)?;
        if round == ROUNDS {
            return Ok(work.get());
        }
        dev.cut_power_after(1 + rng.below(300));
        let mut pool = LocalPool::new();
        let failure: Rc<RefCell<Option<String>>> = Rc::default();
        if profile.hog {
            // Takes DMA buffers of random sizes and holds each for a few turns of the
            // executor: the engine meets an exhausted pool at every step of a write.
            let (queue_pool, mut rng) = (store.queue().pool().clone(), SplitMix64::new(rng.next_u64()));
            pool.spawner()
                .spawn_local(async move {
                    for _ in 0..300 {
                        let want = 4096 + rng.below(queue_pool.capacity() as u64 / 2) as usize;
                        let held = queue_pool.try_alloc(want).ok();
                        for _ in 0..1 + rng.below(6) {
                            futures_lite::future::yield_now().await;
                        }
                        drop(held);
                        futures_lite::future::yield_now().await;
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        let writers = 1 + rng.below(8);
        for w in 0..writers {
            let (store, model, failure) = (store.clone(), model.clone(), failure.clone());
            let (work, large) = (work.clone(), profile.max_value >= 1 << 20);
            let mut rng = SplitMix64::new(rng.next_u64());
            let gc = w == 0 && (profile.gc_always || rng.chance(1, 2));
            pool.spawner()
                .spawn_local(async move {
                    for _ in 0..200 {
                        let k = rng.below(KEYS);
                        let key = key_name(k);
                        if gc && rng.chance(profile.gc_percent, 100) {
                            match store.gc_step().await {
                                Ok(GcOutcome::Freed {
                                    moved_bytes,
                                    moved_records,
                                    ..
                                }) if moved_records > 0 => {
                                    let mut w = work.get();
                                    w.freed_with_moves += 1;
                                    w.moved_bytes += moved_bytes;
                                    w.freed_with_large_values += large as u64;
                                    work.set(w);
                                }
                                Ok(_) => {}
                                Err(_) => return,
                            }
                            continue;
                        }
                        let dice = rng.below(10);
                        if dice < 2 {
                            match store.get(&key, None).await {
                                Ok((v, _)) => {
                                    let m = model.borrow();
                                    let good = check_value(v.as_slice())
                                        .is_some_and(|id| m.id_key.get(&id) == Some(&k));
                                    if !good {
                                        *failure.borrow_mut() = Some(format!(
                                            "seed {seed}: get {k} returned bytes never written there"
                                        ));
                                    }
                                }
                                Err(StoreError::NotFound) => {}
                                Err(StoreError::Corrupt(e)) => {
                                    *failure.borrow_mut() =
                                        Some(format!("seed {seed}: healthy read answered Corrupt: {e}"));
                                }
                                Err(_) => return, // the device lost power
                            }
                            continue;
                        }
                        let put = (dice >= 4).then(|| {
                            let mut m = model.borrow_mut();
                            m.next_id += 1;
                            let id = (seed << 24) | m.next_id;
                            m.id_key.insert(id, k);
                            id
                        });
                        let slot = {
                            let mut m = model.borrow_mut();
                            let start = m.tick();
                            let h = m.history.entry(k).or_default();
                            h.push(Op {
                                put,
                                outcome: Outcome::InFlight,
                                start,
                                end: None,
                            });
                            h.len() - 1
                        };
                        let result = match put {
                            // Half of the puts go as the node sends them: received into a
                            // buffer of the pool and written from it (when the pool has
                            // room and the value does not ride inline), the rest copied.
                            Some(id) => {
                                let value = make_value(id, value_len(&mut rng, &profile));
                                match store.value_buffer(value.len()).filter(|_| id % 2 == 0) {
                                    Some(mut buf) => {
                                        buf.as_mut().copy_from_slice(&value);
                                        store.put_buf(&key, 0, buf, None).await.map(drop)
                                    }
                                    None => store.put(&key, 0, &value, None).await.map(drop),
                                }
                            }
                            None => store.delete(&key, 0, None).await.map(drop),
                        };
                        let outcome = match &result {
                            Ok(()) => Outcome::Acked,
                            Err(e) => classify(e),
                        };
                        {
                            let mut m = model.borrow_mut();
                            let end = m.tick();
                            let op = &mut m.history.get_mut(&k).expect("recorded")[slot];
                            op.outcome = outcome;
                            op.end = Some(end);
                        }
                        if outcome == Outcome::Unknown {
                            return;
                        }
                    }
                })
                .map_err(|e| e.to_string())?;
        }
        pool.run();
        if let Some(f) = failure.borrow_mut().take() {
            return Err(f);
        }
        drop(store);
        dev.recover();
    }
    Ok(work.get())
}

/// Bytes of one put's value: mostly small, sometimes large.
fn value_len(rng: &mut SplitMix64, profile: &Profile) -> usize {
    if !rng.chance(profile.large_percent, 100) {
        8 + rng.below(9000) as usize
    } else if profile.large_from_64k {
        // 2^16 to 2^23 bytes: 64 KiB to 8 MiB, each octave as likely.
        let octave = 16 + rng.below(7) as u32;
        ((1usize << octave) + rng.below(1 << octave) as usize).min(profile.max_value)
    } else {
        (profile.max_value / 2) + rng.below(profile.max_value as u64 / 2 + 1) as usize
    }
}

/// The workloads the seeds run: their profile, test name and default number of seeds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Pressure,
    GcHeavy,
}

impl Mode {
    fn profile(self, seed: u64) -> Profile {
        match self {
            Mode::Plain => Profile::plain(),
            Mode::Pressure => Profile::pressure(seed),
            Mode::GcHeavy => Profile::gc_heavy(seed),
        }
    }

    fn test(self) -> &'static str {
        match self {
            Mode::Plain => "",
            Mode::Pressure => " under_pressure",
            Mode::GcHeavy => " gc_running_hard",
        }
    }

    fn default_seeds(self) -> u64 {
        match self {
            Mode::Plain | Mode::Pressure => 1500,
            Mode::GcHeavy => 40,
        }
    }
}

/// Runs the configured seeds (or the one being replayed) in one commit mode.
fn run_seeds(durability: CommitDurability, mode: Mode) {
    let test = mode.test();
    let replay = |seed: u64| {
        format!(
            "replay: HOTSHARD_CRASH_SEED={seed} cargo test -p hotshard-store --test store_crash{test} (mode {durability:?}, {:?})",
            mode.profile(seed)
        )
    };
    if let Some(seed) = std::env::var("HOTSHARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed(seed, durability, mode.profile(seed)).unwrap_or_else(|e| panic!("{e}\n{}", replay(seed)));
        return;
    }
    let seeds: u64 = std::env::var("HOTSHARD_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(mode.default_seeds());
    let mut total = GcWork::default();
    for seed in 0..seeds {
        match run_seed(seed, durability, mode.profile(seed)) {
            Ok(w) => {
                total.freed_with_moves += w.freed_with_moves;
                total.moved_bytes += w.moved_bytes;
                total.freed_with_large_values += w.freed_with_large_values;
            }
            Err(e) => panic!("{e}\n{}", replay(seed)),
        }
    }
    eprintln!(
        "{durability:?}{test}: {seeds} seeds x {ROUNDS} power cuts: every acknowledged write survived; GC freed {} segments with live records ({} in seeds with values of 1 MiB or more), moving {} bytes",
        total.freed_with_moves, total.freed_with_large_values, total.moved_bytes
    );
    // The cuts must land while GC moves records, not only beside an idle GC.
    assert!(total.freed_with_moves > 0, "GC never moved a live record");
    let large_seeds = match mode {
        Mode::Plain => false,
        Mode::Pressure => seeds >= HUGE_EVERY,
        Mode::GcHeavy => seeds >= 10,
    };
    if large_seeds {
        assert!(
            total.freed_with_large_values > 0,
            "GC never moved records in a seed with values of 1 MiB or more"
        );
    }
}

#[test]
fn acknowledged_writes_survive_power_cuts_for_many_seeds() {
    run_seeds(CommitDurability::Fua, Mode::Plain);
}

#[test]
fn acknowledged_writes_survive_power_cuts_when_batches_are_flushed() {
    run_seeds(CommitDurability::WriteThenFlush, Mode::Plain);
}

#[test]
fn acknowledged_writes_survive_power_cuts_under_pressure() {
    run_seeds(CommitDurability::Fua, Mode::Pressure);
}

#[test]
fn acknowledged_writes_survive_power_cuts_under_pressure_when_batches_are_flushed() {
    run_seeds(CommitDurability::WriteThenFlush, Mode::Pressure);
}

#[test]
fn acknowledged_writes_survive_power_cuts_with_gc_running_hard() {
    run_seeds(CommitDurability::Fua, Mode::GcHeavy);
}

#[test]
fn acknowledged_writes_survive_power_cuts_with_gc_running_hard_when_batches_are_flushed() {
    run_seeds(CommitDurability::WriteThenFlush, Mode::GcHeavy);
}
