//! The hot-object cache of one shard: S3-FIFO (Yang et al., SOSP 2023) with a byte budget.
//! New objects enter a small FIFO; only those hit again move to the main FIFO, so a scan
//! of cold keys cannot flush the hot set. A ghost FIFO remembers keys evicted from the
//! small queue, and a key seen again there goes straight to main.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

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
    map: HashMap<Box<[u8]>, Entry, ahash::RandomState>,
    small: VecDeque<(Box<[u8]>, u64)>,
    main: VecDeque<(Box<[u8]>, u64)>,
    ghost: VecDeque<u64>,
    ghost_set: HashSet<u64, ahash::RandomState>,
    ghost_hasher: ahash::RandomState,
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
            map: HashMap::default(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashSet::default(),
            ghost_hasher: ahash::RandomState::new(),
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

    /// The cached value if it is of `version`.
    pub fn get(&mut self, key: &[u8], version: u64) -> Option<Rc<[u8]>> {
        match self.map.get_mut(key) {
            Some(e) if e.version == version => {
                e.freq = (e.freq + 1).min(3);
                self.stats.hits += 1;
                Some(e.value.clone())
            }
            _ => {
                self.stats.misses += 1;
                None
            }
        }
    }

    pub fn insert(&mut self, key: &[u8], version: u64, value: Rc<[u8]>) {
        let c = cost(key, &value);
        if c > self.budget / 4 || self.budget == 0 {
            return; // one object may not take over the cache
        }
        self.remove(key);
        let h = self.ghost_hasher.hash_one(key);
        let queue = if self.ghost_set.remove(&h) {
            Queue::Main
        } else {
            Queue::Small
        };
        let generation = self.next_generation;
        self.next_generation += 1;
        match queue {
            Queue::Small => {
                self.small.push_back((key.into(), generation));
                self.small_bytes += c;
            }
            Queue::Main => {
                self.main.push_back((key.into(), generation));
                self.main_bytes += c;
            }
        }
        self.map.insert(
            key.into(),
            Entry {
                value,
                version,
                freq: 0,
                queue,
                generation,
            },
        );
        self.stats.inserts += 1;
        self.evict();
    }

    /// Drops `key` (a put or delete made the cached copy stale).
    pub fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.map.remove(key) {
            let c = cost(key, &e.value);
            match e.queue {
                Queue::Small => self.small_bytes -= c,
                Queue::Main => self.main_bytes -= c,
            }
        }
    }

    fn live(&self, key: &[u8], generation: u64) -> bool {
        self.map.get(key).is_some_and(|e| e.generation == generation)
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
        while let Some((key, generation)) = self.small.pop_front() {
            if !self.live(&key, generation) {
                continue;
            }
            let e = self.map.get_mut(&key).expect("live entry");
            let c = cost(&key, &e.value);
            self.small_bytes -= c;
            if e.freq > 0 {
                e.freq = 0;
                e.queue = Queue::Main;
                self.main_bytes += c;
                self.main.push_back((key, generation));
            } else {
                self.map.remove(&key);
                self.stats.evictions += 1;
                let h = self.ghost_hasher.hash_one(&*key);
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
        while let Some((key, generation)) = self.main.pop_front() {
            if !self.live(&key, generation) {
                continue;
            }
            let e = self.map.get_mut(&key).expect("live entry");
            if e.freq > 0 {
                e.freq -= 1;
                self.main.push_back((key, generation));
                continue;
            }
            let c = cost(&key, &e.value);
            self.main_bytes -= c;
            self.map.remove(&key);
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

    #[test]
    fn hits_misses_and_versions() {
        let mut c = Cache::new(1 << 20);
        assert!(c.get(b"a", 1).is_none());
        c.insert(b"a", 1, v(100));
        assert_eq!(c.get(b"a", 1).unwrap().len(), 100);
        assert!(c.get(b"a", 2).is_none(), "a newer version is a miss");
        c.remove(b"a");
        assert!(c.get(b"a", 1).is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.objects, s.bytes), (1, 3, 0, 0));
    }

    #[test]
    fn the_budget_holds() {
        let mut c = Cache::new(64 * 1024);
        for i in 0..10_000u32 {
            c.insert(&i.to_le_bytes(), 1, v(500));
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
                if c.get(k, 1).is_none() {
                    c.insert(k, 1, v(600));
                }
            }
        }
        // A one-pass scan of 5,000 cold keys.
        for i in 1_000_000..1_005_000u32 {
            c.insert(&i.to_le_bytes(), 1, v(600));
        }
        let still = hot.iter().filter(|k| c.get(&k[..], 1).is_some()).count();
        assert!(still >= 90, "only {still} of 100 hot keys survived a scan");
    }
}
