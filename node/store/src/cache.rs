//! The hot-object cache of one shard: S3-FIFO (Yang et al., SOSP 2023) with a byte budget.
//! New objects enter a small FIFO; only those hit again move to the main FIFO, so a scan
//! of cold keys cannot flush the hot set. A ghost FIFO remembers keys evicted from the
//! small queue, and a key seen again there goes straight to main. Every call takes the
//! key's hash (`KeyHash`, taken once per operation by the index), so that no key is hashed
//! again here.

use std::collections::{HashSet, VecDeque};
use std::rc::Rc;

use hashbrown::HashTable;

use crate::index::KeyHash;

/// Per-entry bookkeeping bytes counted against the budget besides key and value.
const ENTRY_OVERHEAD: usize = 96;
/// The small FIFO gets this share of the budget (the paper's 10 %).
const SMALL_SHARE: f64 = 0.10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Entry {
    key: Box<[u8]>,
    hash: u64,
    value: Rc<[u8]>,
    version: u64,
    freq: u8,
    queue: Queue,
    /// Matches the FIFO slot that owns this entry; older slots for the key are stale.
    generation: u64,
}

/// Counters a person reads in `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    pub evictions: u64,
    pub bytes: usize,
    pub objects: usize,
}

pub struct Cache {
    budget: usize,
    small_budget: usize,
    map: HashTable<Entry>,
    /// FIFO slots: (key hash, generation); a slot whose generation no longer matches its
    /// entry's is stale.
    small: VecDeque<(u64, u64)>,
    main: VecDeque<(u64, u64)>,
    /// Hashes of keys evicted from the small FIFO.
    ghost: VecDeque<u64>,
    ghost_set: HashSet<u64, ahash::RandomState>,
    small_bytes: usize,
    main_bytes: usize,
    next_generation: u64,
    stats: CacheStats,
}

fn cost(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

impl Cache {
    pub fn new(budget: usize) -> Self {
        Cache {
            budget,
            small_budget: (budget as f64 * SMALL_SHARE) as usize,
            map: HashTable::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::default(),
            small_bytes: 0,
            main_bytes: 0,
            next_generation: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            bytes: self.small_bytes + self.main_bytes,
            objects: self.map.len(),
            ..self.stats
        }
    }

    /// The cached value if it is of `version`; a miss is counted if `count_miss`.
    pub fn get(&mut self, key: &[u8], h: KeyHash, version: u64, count_miss: bool) -> Option<Rc<[u8]>> {
        match self.map.find_mut(h.0, |e| *e.key == *key) {
            Some(e) if e.version == version => {
                e.freq = (e.freq + 1).min(3);
                self.stats.hits += 1;
                Some(e.value.clone())
            }
            _ => {
                self.stats.misses += u64::from(count_miss);
                None
            }
        }
    }

    /// Whether a write of `key` should leave its value here: the key is cached, or was
    /// evicted from the small FIFO recently (the ghost). A write to any other key does not
    /// allocate: a stream of writes to cold keys costs the cache nothing and flushes
    /// nothing, and a key read again and again stays cached across its writes.
    pub fn admits_write(&self, key: &[u8], h: KeyHash) -> bool {
        self.budget > 0 && (self.ghost_set.contains(&h.0) || self.map.find(h.0, |e| *e.key == *key).is_some())
    }

    /// A write of `key` is durable: a cached copy takes the new value in place (keeping
    /// its queue and its hits); a key in the ghost goes in as a read would put it.
    pub fn update_written(&mut self, key: &[u8], h: KeyHash, version: u64, value: Rc<[u8]>) {
        let new_cost = cost(key, &value);
        if new_cost > self.budget / 4 {
            self.remove(key, h);
            return;
        }
        match self.map.find_mut(h.0, |e| *e.key == *key) {
            Some(e) => {
                let old_cost = cost(key, &e.value);
                let queue = e.queue;
                e.value = value;
                e.version = version;
                let bytes = match queue {
                    Queue::Small => &mut self.small_bytes,
                    Queue::Main => &mut self.main_bytes,
                };
                *bytes = *bytes - old_cost + new_cost;
                self.evict();
            }
            None => self.insert(key, h, version, value),
        }
    }

    pub fn insert(&mut self, key: &[u8], h: KeyHash, version: u64, value: Rc<[u8]>) {
        // Whatever happens to the new value, a stale copy never stays.
        self.remove(key, h);
        let c = cost(key, &value);
        if c > self.budget / 4 || self.budget == 0 {
            return; // one object may not take over the cache
        }
        let queue = if self.ghost_set.remove(&h.0) {
            Queue::Main
        } else {
            Queue::Small
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        match queue {
            Queue::Small => {
                self.small.push_back((h.0, generation));
                self.small_bytes += c;
            }
            Queue::Main => {
                self.main.push_back((h.0, generation));
                self.main_bytes += c;
            }
        }
        self.map.insert_unique(
            h.0,
            Entry {
                key: key.into(),
                hash: h.0,
                value,
                version,
                freq: 0,
                queue,
                generation,
            },
            |e| e.hash,
        );
        self.stats.inserts += 1;
        self.evict();
    }

    /// Drops `key` (a put or delete made the cached copy stale).
    pub fn remove(&mut self, key: &[u8], h: KeyHash) {
        if let Ok(found) = self.map.find_entry(h.0, |e| *e.key == *key) {
            let (e, _) = found.remove();
            let c = cost(key, &e.value);
            match e.queue {
                Queue::Small => self.small_bytes -= c,
                Queue::Main => self.main_bytes -= c,
            }
        }
    }

    /// The entry a FIFO slot (hash, generation) still owns, if any (generations are
    /// unique, so the hash and the generation name one entry).
    fn owned_by_slot(&mut self, hash: u64, generation: u64) -> Option<&mut Entry> {
        self.map.find_mut(hash, |e| e.generation == generation)
    }

    fn drop_slot_entry(&mut self, hash: u64, generation: u64) {
        if let Ok(found) = self.map.find_entry(hash, |e| e.generation == generation) {
            found.remove();
        }
    }

    fn evict(&mut self) {
        while self.small_bytes + self.main_bytes > self.budget {
            if self.small_bytes > self.small_budget || self.main.is_empty() {
                self.evict_small();
            } else {
                self.evict_main();
            }
        }
    }

    fn evict_small(&mut self) {
        while let Some((h, generation)) = self.small.pop_front() {
            let Some(e) = self.owned_by_slot(h, generation) else {
                continue;
            };
            let c = cost(&e.key, &e.value);
            let promote = e.freq > 0;
            if promote {
                e.freq = 0;
                e.queue = Queue::Main;
            }
            self.small_bytes -= c;
            if promote {
                self.main_bytes += c;
                self.main.push_back((h, generation));
            } else {
                self.drop_slot_entry(h, generation);
                self.stats.evictions += 1;
                self.ghost.push_back(h);
                self.ghost_set.insert(h);
                // The ghost remembers about as many keys as main holds.
                while self.ghost.len() > self.main.len().max(64) {
                    if let Some(old) = self.ghost.pop_front() {
                        self.ghost_set.remove(&old);
                    }
                }
            }
            return;
        }
    }

    fn evict_main(&mut self) {
        while let Some((h, generation)) = self.main.pop_front() {
            let Some(e) = self.owned_by_slot(h, generation) else {
                continue;
            };
            if e.freq > 0 {
                e.freq -= 1;
                self.main.push_back((h, generation));
                continue;
            }
            let c = cost(&e.key, &e.value);
            self.main_bytes -= c;
            self.drop_slot_entry(h, generation);
            self.stats.evictions += 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(n: usize) -> Rc<[u8]> {
        vec![7u8; n].into()
    }

    fn h(key: &[u8]) -> KeyHash {
        KeyHash(ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(key))
    }

    #[test]
    fn hits_misses_and_versions() {
        let mut c = Cache::new(1 << 20);
        assert!(c.get(b"a", h(b"a"), 1, true).is_none());
        c.insert(b"a", h(b"a"), 1, v(100));
        assert_eq!(c.get(b"a", h(b"a"), 1, true).unwrap().len(), 100);
        assert!(
            c.get(b"a", h(b"a"), 2, true).is_none(),
            "a newer version is a miss"
        );
        c.remove(b"a", h(b"a"));
        assert!(c.get(b"a", h(b"a"), 1, true).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.objects, s.bytes), (1, 3, 0, 0));
    }

    #[test]
    fn a_write_updates_a_cached_key_in_place_and_keeps_the_budget() {
        let mut c = Cache::new(1 << 20);
        assert!(!c.admits_write(b"a", h(b"a")), "never seen: no room taken");
        c.insert(b"a", h(b"a"), 1, v(100));
        assert!(c.admits_write(b"a", h(b"a")));
        c.get(b"a", h(b"a"), 1, true);
        c.update_written(b"a", h(b"a"), 2, v(300));
        assert!(c.get(b"a", h(b"a"), 1, true).is_none(), "the old version is gone");
        assert_eq!(c.get(b"a", h(b"a"), 2, true).unwrap().len(), 300);
        assert_eq!(c.stats().bytes, cost(b"a", &v(300)));
        c.update_written(b"a", h(b"a"), 3, v(300 << 10));
        assert_eq!((c.stats().objects, c.stats().bytes), (0, 0), "too large: dropped");
    }

    #[test]
    fn the_budget_holds() {
        let mut c = Cache::new(64 * 1024);
        for i in 0..10_000u32 {
            c.insert(&i.to_le_bytes(), h(&i.to_le_bytes()), 1, v(500));
            assert!(c.stats().bytes <= 64 * 1024);
        }
        assert!(c.stats().evictions > 9_000);
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let mut c = Cache::new(200 * (600 + ENTRY_OVERHEAD));
        let hot: Vec<[u8; 4]> = (0..100u32).map(|i| i.to_le_bytes()).collect();
        for _ in 0..3 {
            for k in &hot {
                if c.get(k, h(k), 1, true).is_none() {
                    c.insert(k, h(k), 1, v(600));
                }
            }
        }
        // A one-pass scan of 5,000 cold keys.
        for i in 1_000_000..1_005_000u32 {
            c.insert(&i.to_le_bytes(), h(&i.to_le_bytes()), 1, v(600));
        }
        let still = hot
            .iter()
            .filter(|k| c.get(&k[..], h(&k[..]), 1, true).is_some())
            .count();
        assert!(still >= 90, "only {still} of 100 hot keys survived a scan");
    }
}
