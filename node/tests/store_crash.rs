//! Crash safety of the storage engine on SimDevice: for thousands of seeds, a random
//! concurrent workload (puts, deletes, gets, GC), a power cut at a random moment, recovery,
//! then every acknowledged put reads back with its exact bytes, every acknowledged delete
//! stays deleted, and nothing torn or corrupt is ever returned.
//!
//! Both commit modes: every batch written durable (`Fua`, the default) and batches written
//! volatile then flushed (`WriteThenFlush`, `store.durability = "flush"`).
//!
//! `HOTSHARD_CRASH_SEEDS=N` runs N seeds per mode (default 1500); `HOTSHARD_CRASH_SEED=S`
//! replays one.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use common::*;
use futures::executor::{block_on, LocalPool};
use futures::task::LocalSpawnExt;
use hotshard_node::store::{CommitDurability, Store, StoreError};
use hotshard_nvme::{SimDevice, SimQueue, SplitMix64};

const KEYS: u64 = 16;
const ROUNDS: usize = 3;

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
}

#[derive(Default)]
struct Model {
    history: HashMap<u64, Vec<Op>>,
    /// Which key each value id was written under.
    id_key: HashMap<u64, u64>,
    next_id: u64,
}

impl Model {
    /// States the key may be in after recovery: the last acknowledged one, or that of any
    /// later operation whose outcome is unknown.
    fn acceptable(&self, key: u64) -> Vec<Option<u64>> {
        let hist = self.history.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let last = hist.iter().rposition(|o| o.outcome == Outcome::Acked);
        let mut ok = vec![last.and_then(|i| hist[i].put)];
        let after = last.map_or(0, |i| i + 1);
        for o in &hist[after..] {
            if matches!(o.outcome, Outcome::InFlight | Outcome::Unknown) {
                ok.push(o.put);
            }
        }
        ok
    }
}

fn key_name(k: u64) -> Vec<u8> {
    format!("key-{k:02}").into_bytes()
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
    for k in 0..KEYS {
        let got = match block_on(store.get(&key_name(k), None)) {
            Ok((v, _)) => match check_value(v.as_slice()) {
                Some(id) => Some(id),
                None => return Err(format!("seed {seed} round {round}: key {k} returned torn bytes")),
            },
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(format!("seed {seed} round {round}: key {k}: {e}")),
        };
        let ok = model.acceptable(k);
        if !ok.contains(&got) {
            return Err(format!(
                "seed {seed} round {round}: key {k} is {got:?}, expected one of {ok:?}; history {:?}",
                model.history.get(&k)
            ));
        }
        // What recovery decided is now the acknowledged state.
        model.history.insert(
            k,
            vec![Op {
                put: got,
                outcome: Outcome::Acked,
            }],
        );
    }
    Ok(())
}

fn run_seed(seed: u64, durability: CommitDurability) -> Result<(), String> {
    let mut cfg = small_config(SIM_BYTES);
    cfg.durability = durability;
    let dev = SimDevice::new(SIM_BYTES, 4096, seed).map_err(|e| e.to_string())?;
    let mut rng = SplitMix64::new(seed ^ 0x5eed);
    let model = Rc::new(RefCell::new(Model::default()));
    for round in 0..=ROUNDS {
        let q = dev.queue(4 << 20).map_err(|e| e.to_string())?;
        let (store, _) = block_on(Store::open(q, cfg.clone()))
            .map_err(|e| format!("seed {seed} round {round}: open failed: {e}"))?;
        verify(&store, &mut model.borrow_mut(), seed, round)?;
        if round == ROUNDS {
            return Ok(());
        }
        dev.cut_power_after(1 + rng.below(300));
        let mut pool = LocalPool::new();
        let failure: Rc<RefCell<Option<String>>> = Rc::default();
        let writers = 1 + rng.below(8);
        for w in 0..writers {
            let (store, model, failure) = (store.clone(), model.clone(), failure.clone());
            let mut rng = SplitMix64::new(rng.next_u64());
            let gc = w == 0 && rng.chance(1, 2);
            pool.spawner()
                .spawn_local(async move {
                    for _ in 0..200 {
                        let k = rng.below(KEYS);
                        let key = key_name(k);
                        if gc && rng.chance(1, 10) {
                            if store.gc_step().await.is_err() {
                                return;
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
                            let h = m.history.entry(k).or_default();
                            h.push(Op {
                                put,
                                outcome: Outcome::InFlight,
                            });
                            h.len() - 1
                        };
                        let result = match put {
                            Some(id) => store
                                .put(&key, &make_value(id, 8 + rng.below(9000) as usize), None)
                                .await
                                .map(drop),
                            None => store.delete(&key, None).await.map(drop),
                        };
                        let outcome = match &result {
                            Ok(()) => Outcome::Acked,
                            Err(e) => classify(e),
                        };
                        model.borrow_mut().history.get_mut(&k).expect("recorded")[slot].outcome = outcome;
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
    Ok(())
}

/// Runs the configured seeds (or the one being replayed) in one commit mode.
fn run_seeds(durability: CommitDurability) {
    let replay = |seed: u64| {
        format!("replay: HOTSHARD_CRASH_SEED={seed} cargo test -p hotshard-node --test store_crash (mode {durability:?})")
    };
    if let Some(seed) = std::env::var("HOTSHARD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed(seed, durability).unwrap_or_else(|e| panic!("{e}\n{}", replay(seed)));
        return;
    }
    let seeds: u64 = std::env::var("HOTSHARD_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed, durability) {
            panic!("{e}\n{}", replay(seed));
        }
    }
    eprintln!("{durability:?}: {seeds} seeds x {ROUNDS} power cuts: every acknowledged write survived");
}

#[test]
fn acknowledged_writes_survive_power_cuts_for_many_seeds() {
    run_seeds(CommitDurability::Fua);
}

#[test]
fn acknowledged_writes_survive_power_cuts_when_batches_are_flushed() {
    run_seeds(CommitDurability::WriteThenFlush);
}
