//! The in-memory index of one shard: key to the location, length, checksum and version of
//! its newest value, and the object's partition. Built to be small: a hash table of 8-byte
//! (slot id, hash) pairs, a dense array of 40-byte slots, and the key bytes in one arena
//! (no per-key allocation). Keeping 32 hash bits in the table lets it grow without touching
//! slots or keys. Each partition keeps the list of its slot ids (and each slot its place in
//! that list, in an array beside the slots), so "every object of partition P" costs the
//! objects of P, not of the shard: a resync page or a listing of one partition does not
//! walk the whole index (issue 31). 8 bytes per key more than the slot's 40.

use hashbrown::HashTable;

use crate::ordered::{is_ordered, KeyOf, ListQuery, Listing, OrderedKeys};

/// The index's slots and arena, for the ordered view to read keys by slot id.
struct ArenaKeys<'a> {
    slots: &'a [Slot],
    keys: &'a [u8],
}

impl KeyOf for ArenaKeys<'_> {
    fn key_of(&self, id: u32) -> &[u8] {
        Index::key_of(self.keys, &self.slots[id as usize])
    }
}

/// Where a key's newest value lives and what it is. 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub version: u64,
    pub segment: u32,
    /// Offset of the value within its segment.
    pub value_offset: u32,
    /// Value length, with `TOMBSTONE_BIT` set for a delete.
    len_and_flags: u32,
    pub value_crc: u32,
    /// When the object expires, Unix milliseconds; 0: never.
    pub expires_ms: u64,
}

const TOMBSTONE_BIT: u32 = 1 << 31;

impl IndexEntry {
    pub fn new(
        version: u64,
        segment: u32,
        value_offset: u32,
        value_len: u32,
        value_crc: u32,
        tombstone: bool,
    ) -> Self {
        debug_assert!(value_len < TOMBSTONE_BIT);
        let len_and_flags = value_len | if tombstone { TOMBSTONE_BIT } else { 0 };
        IndexEntry {
            version,
            segment,
            value_offset,
            len_and_flags,
            value_crc,
            expires_ms: 0,
        }
    }

    /// The entry with an expiry (Unix milliseconds; 0: never).
    pub fn expiring_at(mut self, expires_ms: u64) -> Self {
        self.expires_ms = expires_ms;
        self
    }

    /// Whether the object has expired at `now_ms` (Unix milliseconds).
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_ms != 0 && self.expires_ms <= now_ms
    }

    /// Whether the object exists at `now_ms`: not deleted and not expired.
    pub fn live_at(&self, now_ms: u64) -> bool {
        !self.tombstone() && !self.expired(now_ms)
    }

    pub fn value_len(&self) -> u32 {
        self.len_and_flags & !TOMBSTONE_BIT
    }

    pub fn tombstone(&self) -> bool {
        self.len_and_flags & TOMBSTONE_BIT != 0
    }
}

/// What `insert_unless_older` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// The entry went in; here is the one it replaced, if any.
    Replaced(Option<IndexEntry>),
    /// An entry with a newer version was already there and stays.
    KeptNewer,
}

/// The wall clock in Unix milliseconds: what expiries are compared with (they survive
/// restarts, so they cannot be on a monotonic clock).
pub fn now_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_add_signed(planted_clock_offset_ms())
}

/// A planted fault, for the tests of expiry across replicas: with the `planted-clock`
/// feature, `HOTSHARD_PLANTED_CLOCK_OFFSET_MS` (signed) moves this process's expiry clock
/// by that much. A store built for use has no such switch.
fn planted_clock_offset_ms() -> i64 {
    #[cfg(feature = "planted-clock")]
    {
        static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
        *OFFSET.get_or_init(|| {
            std::env::var("HOTSHARD_PLANTED_CLOCK_OFFSET_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
    }
    #[cfg(not(feature = "planted-clock"))]
    0
}

struct Slot {
    entry: IndexEntry,
    key_at: u32,
    key_len: u16,
    /// The object's partition, as its writer named it (in the two bytes a 32-byte slot has
    /// spare).
    partition: u16,
}

/// A key's hash for the shard's in-memory tables (index, cache, pending writes): computed
/// once per operation by `Index::hash` and carried to each of them. Seeded per process
/// (ahash), so that clients cannot pick keys that collide; never stored or routed (that is
/// placement's xxh3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(pub u64);

/// Key bytes to entry. ahash is fine here: nothing about it is stored or routed.
pub struct Index {
    /// (slot id, 32 bits of the key's hash).
    table: HashTable<(u32, u32)>,
    slots: Vec<Slot>,
    /// Slot ids of each partition (indexed by partition), in no order.
    members: Vec<Vec<u32>>,
    /// For each slot (same index), its place in its partition's `members` list.
    member_at: Vec<u32>,
    /// The heap bytes of the partitions' lists (`members`' inner lists), kept as they grow:
    /// summing 65,536 lists' capacities on every PUT's budget check took 16 % of a durable
    /// SET's CPU (issue 32's profile, session 19).
    member_bytes: usize,
    keys: Vec<u8>,
    /// Arena bytes of removed keys, reclaimed by compaction.
    garbage: usize,
    hasher: ahash::RandomState,
    live_objects: usize,
    /// An entry with an expiry has been inserted (the expiry sweep has work only then).
    expiring: bool,
    /// The keys naming an index tag, per partition in key order (issue 33).
    ordered: OrderedKeys,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            table: HashTable::new(),
            slots: Vec::new(),
            members: Vec::new(),
            member_at: Vec::new(),
            member_bytes: 0,
            keys: Vec::new(),
            garbage: 0,
            hasher: ahash::RandomState::new(),
            live_objects: 0,
            expiring: false,
            ordered: OrderedKeys::default(),
        }
    }
}

/// Spreads 32 hash bits over the 64 the table reads: low bits pick the bucket, the top
/// seven are the control tag.
fn table_hash(h32: u32) -> u64 {
    (h32 as u64) | ((h32 as u64) << 32)
}

impl Index {
    fn key_of<'a>(keys: &'a [u8], slot: &Slot) -> &'a [u8] {
        &keys[slot.key_at as usize..slot.key_at as usize + slot.key_len as usize]
    }

    /// The hash of `key` for this shard's in-memory tables.
    pub fn hash(&self, key: &[u8]) -> KeyHash {
        KeyHash(self.hasher.hash_one(key))
    }

    /// The 32 stored hash bits, and the 64-bit hash the table uses, built from them so
    /// that growing the table needs only what the table holds.
    fn split(h: KeyHash) -> (u32, u64) {
        let h32 = h.0 as u32;
        (h32, table_hash(h32))
    }

    fn find_hashed(&self, key: &[u8], h32: u32, hash: u64) -> Option<u32> {
        let (slots, keys) = (&self.slots, &self.keys);
        self.table
            .find(hash, |&(id, h)| {
                h == h32 && Self::key_of(keys, &slots[id as usize]) == key
            })
            .map(|&(id, _)| id)
    }

    pub fn get(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.get_hashed(key, self.hash(key))
    }

    /// `get` with the key's hash already taken.
    pub fn get_hashed(&self, key: &[u8], h: KeyHash) -> Option<&IndexEntry> {
        let (h32, hash) = Self::split(h);
        self.find_hashed(key, h32, hash)
            .map(|id| &self.slots[id as usize].entry)
    }

    /// A live entry: not deleted, not expired.
    pub fn get_live(&self, key: &[u8]) -> Option<&IndexEntry> {
        let now = now_ms();
        self.get(key).filter(|e| e.live_at(now))
    }

    /// Inserts or replaces; returns the previous entry.
    pub fn insert(&mut self, key: &[u8], partition: u16, entry: IndexEntry) -> Option<IndexEntry> {
        let h = self.hash(key);
        self.insert_hashed(key, h, partition, entry)
    }

    /// `insert` with the key's hash already taken.
    pub fn insert_hashed(
        &mut self,
        key: &[u8],
        h: KeyHash,
        partition: u16,
        entry: IndexEntry,
    ) -> Option<IndexEntry> {
        match self.insert_unless_older_hashed(key, h, partition, entry) {
            Upsert::Replaced(old) => old,
            Upsert::KeptNewer => None,
        }
    }

    /// Like `insert`, but leaves a newer existing version in place. One lookup: recovery
    /// calls this for every record it replays.
    pub fn insert_unless_older(&mut self, key: &[u8], partition: u16, entry: IndexEntry) -> Upsert {
        let h = self.hash(key);
        self.insert_unless_older_hashed(key, h, partition, entry)
    }

    /// `insert_unless_older` with the key's hash already taken.
    pub fn insert_unless_older_hashed(
        &mut self,
        key: &[u8],
        h: KeyHash,
        partition: u16,
        entry: IndexEntry,
    ) -> Upsert {
        let (h32, hash) = Self::split(h);
        let found = self.find_hashed(key, h32, hash);
        if let Some(id) = found {
            if self.slots[id as usize].entry.version > entry.version {
                return Upsert::KeptNewer;
            }
        }
        self.expiring |= entry.expires_ms != 0;
        let old = match found {
            Some(id) => {
                if self.slots[id as usize].partition != partition {
                    // A key of a split index's range, moved to (or, while the split copies,
                    // written again in) another partition (issue 33).
                    self.move_to_partition(id, partition, key);
                }
                let slot = &mut self.slots[id as usize];
                Some(std::mem::replace(&mut slot.entry, entry))
            }
            None => {
                self.grow_if_full();
                let id = self.slots.len() as u32;
                let key_at = self.keys.len() as u32;
                self.keys.extend_from_slice(key);
                self.slots.push(Slot {
                    entry,
                    key_at,
                    key_len: key.len() as u16,
                    partition,
                });
                self.join_partition(id, partition);
                if is_ordered(key) {
                    let arena = ArenaKeys {
                        slots: &self.slots,
                        keys: &self.keys,
                    };
                    self.ordered.insert(&arena, partition, id, key);
                }
                self.table.insert_unique(hash, (id, h32), |&(_, h)| table_hash(h));
                None
            }
        };
        let was_live = old.is_some_and(|o| !o.tombstone());
        match (was_live, entry.tombstone()) {
            (false, false) => self.live_objects += 1,
            (true, true) => self.live_objects -= 1,
            _ => {}
        }
        Upsert::Replaced(old)
    }

    /// Adds slot `id` to its partition's list.
    fn join_partition(&mut self, id: u32, partition: u16) {
        let p = partition as usize;
        if self.members.len() <= p {
            self.members.resize_with(p + 1, Vec::new);
        }
        let list = &mut self.members[p];
        if list.len() == list.capacity() {
            // A quarter more, as the slots grow: doubling would leave a big partition's
            // list up to half spare.
            let before = list.capacity();
            list.reserve_exact((list.len() / 4).max(8));
            self.member_bytes += (list.capacity() - before) * 4;
        }
        self.member_at.push(list.len() as u32);
        list.push(id);
    }

    /// Moves slot `id` (holding `key`) from its partition's list and ordered view into
    /// `partition`'s.
    fn move_to_partition(&mut self, id: u32, partition: u16, key: &[u8]) {
        let old = self.slots[id as usize].partition;
        if is_ordered(key) {
            let arena = ArenaKeys {
                slots: &self.slots,
                keys: &self.keys,
            };
            self.ordered.remove(&arena, old, key);
        }
        let at = self.member_at[id as usize] as usize;
        let list = &mut self.members[old as usize];
        list.swap_remove(at);
        if let Some(&moved) = list.get(at) {
            self.member_at[moved as usize] = at as u32;
        }
        self.slots[id as usize].partition = partition;
        let p = partition as usize;
        if self.members.len() <= p {
            self.members.resize_with(p + 1, Vec::new);
        }
        let list = &mut self.members[p];
        if list.len() == list.capacity() {
            let before = list.capacity();
            list.reserve_exact((list.len() / 4).max(8));
            self.member_bytes += (list.capacity() - before) * 4;
        }
        self.member_at[id as usize] = list.len() as u32;
        list.push(id);
        if is_ordered(key) {
            let arena = ArenaKeys {
                slots: &self.slots,
                keys: &self.keys,
            };
            self.ordered.insert(&arena, partition, id, key);
        }
    }

    /// The partition `key` is kept in here, if the index holds it.
    pub fn partition_of(&self, key: &[u8]) -> Option<u16> {
        let h = self.hash(key);
        let (h32, hash) = Self::split(h);
        self.find_hashed(key, h32, hash)
            .map(|id| self.slots[id as usize].partition)
    }

    /// Takes slot `id` out of its partition's list, and renames slot `last` (which is about
    /// to move into `id`'s place) to `id` in its own list; then the position array follows
    /// the slots' swap.
    fn leave_partition(&mut self, id: u32, last: u32) {
        let slot_partition = |i: u32| self.slots[i as usize].partition as usize;
        let (p, at) = (slot_partition(id), self.member_at[id as usize] as usize);
        let list = &mut self.members[p];
        list.swap_remove(at);
        if let Some(&moved) = list.get(at) {
            self.member_at[moved as usize] = at as u32;
        }
        if id != last {
            let (lp, lat) = (slot_partition(last), self.member_at[last as usize] as usize);
            self.members[lp][lat] = id;
        }
        self.member_at.swap_remove(id as usize);
    }

    /// Grows the slot array by a quarter instead of doubling, so that a big index never
    /// carries half its memory as spare capacity.
    fn grow_if_full(&mut self) {
        if self.slots.len() == self.slots.capacity() {
            self.slots.reserve_exact((self.slots.len() / 4).max(64));
            self.member_at
                .reserve_exact(self.slots.capacity() - self.member_at.len());
        }
        if self.keys.capacity() - self.keys.len() < 1024 {
            self.keys.reserve_exact((self.keys.len() / 4).max(4096));
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<IndexEntry> {
        self.remove_hashed(key, self.hash(key))
    }

    /// `remove` with the key's hash already taken.
    pub fn remove_hashed(&mut self, key: &[u8], h: KeyHash) -> Option<IndexEntry> {
        let (h32, hash) = Self::split(h);
        let (slots, keys) = (&self.slots, &self.keys);
        let found = self
            .table
            .find_entry(hash, |&(id, h)| {
                h == h32 && Self::key_of(keys, &slots[id as usize]) == key
            })
            .ok()?;
        let ((id, _), _) = found.remove();
        let last = self.slots.len() as u32 - 1;
        if id != last {
            // The last slot moves into the hole: repoint its table entry.
            let (moved_h32, moved_hash) =
                Self::split(self.hash(Self::key_of(&self.keys, &self.slots[last as usize])));
            if let Some(t) = self
                .table
                .find_mut(moved_hash, |&(i, h)| i == last && h == moved_h32)
            {
                t.0 = id;
            }
        }
        self.leave_partition(id, last);
        {
            // Out of the ordered view before the slots move (its comparisons read them),
            // and the last slot, about to move into `id`'s place, renumbered there.
            let arena = ArenaKeys {
                slots: &self.slots,
                keys: &self.keys,
            };
            if is_ordered(key) {
                self.ordered
                    .remove(&arena, self.slots[id as usize].partition, key);
            }
            let moved = Self::key_of(&self.keys, &self.slots[last as usize]);
            if id != last && is_ordered(moved) {
                self.ordered
                    .renumber(&arena, self.slots[last as usize].partition, moved, id);
            }
        }
        let slot = self.slots.swap_remove(id as usize);
        self.garbage += slot.key_len as usize;
        if !slot.entry.tombstone() {
            self.live_objects -= 1;
        }
        if self.garbage > 4096 && self.garbage > self.keys.len() / 2 {
            self.compact_keys();
        }
        Some(slot.entry)
    }

    fn compact_keys(&mut self) {
        let mut keys = Vec::with_capacity(self.keys.len() - self.garbage + 4096);
        for slot in &mut self.slots {
            let at = keys.len() as u32;
            keys.extend_from_slice(
                &self.keys[slot.key_at as usize..slot.key_at as usize + slot.key_len as usize],
            );
            slot.key_at = at;
        }
        self.keys = keys;
        self.garbage = 0;
    }

    /// Whether an entry with an expiry has ever been inserted.
    pub fn has_expiring(&self) -> bool {
        self.expiring
    }

    /// Objects that exist (tombstones excluded).
    pub fn live_objects(&self) -> usize {
        self.live_objects
    }

    /// Entries including tombstones.
    pub fn entries(&self) -> usize {
        self.slots.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &IndexEntry)> {
        self.slots.iter().map(|s| (Self::key_of(&self.keys, s), &s.entry))
    }

    /// Every entry in `segment` (tombstones included) with its key and partition, among the
    /// slots in `range` (clamped to the slots there are): a walk of the slots, for GC to find
    /// what is live in a victim without reading it, cut into pieces with other work between.
    pub fn iter_segment_slots(
        &self,
        segment: u32,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (&[u8], u16, &IndexEntry)> {
        let end = range.end.min(self.slots.len());
        self.slots[range.start.min(end)..end]
            .iter()
            .filter(move |s| s.entry.segment == segment)
            .map(|s| (Self::key_of(&self.keys, s), s.partition, &s.entry))
    }

    /// Slots in the table (live keys and tombstones): the bound of `iter_segment_slots`.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Every entry with its key and partition (tombstones included): a walk of the slots.
    pub fn iter_with_partition(&self) -> impl Iterator<Item = (&[u8], u16, &IndexEntry)> {
        self.slots
            .iter()
            .map(|s| (Self::key_of(&self.keys, s), s.partition, &s.entry))
    }

    /// Every entry of `partition` (tombstones included), in no order: a walk of that
    /// partition's list, costing its objects only.
    pub fn iter_partition(&self, partition: u16) -> impl Iterator<Item = (&[u8], &IndexEntry)> {
        self.members
            .get(partition as usize)
            .map_or(&[][..], |l| l.as_slice())
            .iter()
            .map(|&id| {
                let s = &self.slots[id as usize];
                (Self::key_of(&self.keys, s), &s.entry)
            })
    }

    /// How many entries (tombstones included) `partition` holds.
    pub fn partition_entries(&self, partition: u16) -> usize {
        self.members.get(partition as usize).map_or(0, |l| l.len())
    }

    /// Bytes of heap this index holds: table, slots and key arena, capacity included.
    pub fn heap_bytes(&self) -> usize {
        self.table.allocation_size()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.member_at.capacity() * 4
            + self.members.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.member_bytes
            + self.keys.capacity()
            + self.ordered.heap_bytes()
    }

    /// `heap_bytes` by a walk of every list and block (the tests check the kept sums
    /// against it).
    pub fn heap_bytes_walked(&self) -> usize {
        self.table.allocation_size()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.member_at.capacity() * 4
            + self.members.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.members.iter().map(|l| l.capacity() * 4).sum::<usize>()
            + self.keys.capacity()
            + self.ordered.heap_bytes_walked()
    }

    /// Entries of the ordered view (keys naming an index tag, tombstones included).
    /// The ordered keys (those naming an index tag) `partition` holds.
    pub fn ordered_in_partition(&self, partition: u16) -> usize {
        self.ordered.partition_entries(partition)
    }

    pub fn ordered_entries(&self) -> usize {
        self.ordered.entries()
    }

    /// Heap bytes of the ordered view alone.
    pub fn ordered_heap_bytes(&self) -> usize {
        self.ordered.heap_bytes()
    }

    /// A page of `partition`'s ordered keys (`ordered::OrderedKeys::list`): live objects
    /// only (not deleted, not expired at `now_ms`), each with its entry.
    pub fn list(&self, partition: u16, q: &ListQuery<'_>, now_ms: u64) -> Listing<IndexEntry> {
        self.list_watching(partition, q, now_ms, |_| {})
    }

    /// `list`, calling `passed` with every key it looks at.
    pub fn list_watching(
        &self,
        partition: u16,
        q: &ListQuery<'_>,
        now_ms: u64,
        passed: impl Fn(&[u8]),
    ) -> Listing<IndexEntry> {
        let arena = ArenaKeys {
            slots: &self.slots,
            keys: &self.keys,
        };
        self.ordered.list(&arena, partition, q, |k, id| {
            passed(k);
            Some(self.slots[id as usize].entry).filter(|e| e.live_at(now_ms))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, tombstone: bool) -> IndexEntry {
        IndexEntry::new(version, 0, 64, 50, 7, tombstone)
    }

    #[test]
    fn sizes_are_what_the_memory_budget_assumes() {
        // 8 bytes more per key since issue 21: the expiry, checked on every read without
        // another lookup.
        assert_eq!(std::mem::size_of::<IndexEntry>(), 32);
        assert_eq!(std::mem::size_of::<Slot>(), 40);
    }

    #[test]
    fn live_count_follows_puts_and_tombstones() {
        let mut idx = Index::default();
        idx.insert(b"a", 0, entry(1, false));
        idx.insert(b"a", 0, entry(2, false));
        idx.insert(b"b", 0, entry(1, false));
        assert_eq!(idx.live_objects(), 2);
        idx.insert(b"a", 0, entry(3, true));
        assert_eq!(idx.live_objects(), 1);
        assert!(idx.get_live(b"a").is_none());
        assert_eq!(idx.get(b"a").unwrap().version, 3);
        idx.remove(b"a");
        idx.remove(b"b");
        assert_eq!((idx.live_objects(), idx.entries()), (0, 0));
    }

    #[test]
    fn removal_moves_slots_and_compaction_keeps_every_key() {
        let mut idx = Index::default();
        let mut model = std::collections::HashMap::new();
        let mut x = 12345u64;
        for i in 0..50_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("key-{}", x % 5000).into_bytes();
            if x.is_multiple_of(3) {
                assert_eq!(
                    idx.remove(&key).map(|e| e.version),
                    model.remove(&key),
                    "remove {i}"
                );
            } else {
                let partition = (x % 5000 % 7) as u16;
                idx.insert(&key, partition, entry(i, false));
                model.insert(key, i);
            }
        }
        assert_eq!(idx.entries(), model.len());
        assert_eq!(
            idx.heap_bytes(),
            idx.heap_bytes_walked(),
            "the kept sums are the walk's"
        );
        for (k, v) in &model {
            assert_eq!(idx.get(k).map(|e| e.version), Some(*v));
        }
        assert_eq!(idx.iter().count(), model.len());
        // Slots moved by removals kept their partitions, and each partition's list names
        // each of its keys once, with its newest version.
        let mut listed = std::collections::HashSet::new();
        for p in 0..7u16 {
            for (k, e) in idx.iter_partition(p) {
                let n: u64 = std::str::from_utf8(&k[4..]).unwrap().parse().unwrap();
                assert_eq!((n % 7) as u16, p, "{}", String::from_utf8_lossy(k));
                assert_eq!(Some(&e.version), model.get(k));
                assert!(listed.insert(k.to_vec()), "listed twice");
            }
            assert_eq!(
                idx.partition_entries(p),
                model
                    .keys()
                    .filter(|k| {
                        let n: u64 = std::str::from_utf8(&k[4..]).unwrap().parse().unwrap();
                        (n % 7) as u16 == p
                    })
                    .count()
            );
        }
        assert_eq!(listed.len(), model.len());
    }
}
