//! The in-memory index of one shard: key to the location and version of its newest record.

use std::collections::HashMap;

/// Where a key's newest record lives and what it is. 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub version: u64,
    pub segment: u32,
    /// Offset of the record within its segment.
    pub offset: u32,
    /// Whole record length (header + key + value).
    pub record_len: u32,
    pub partition: u16,
    pub tombstone: bool,
}

impl IndexEntry {
    pub fn value_len(&self, key_len: usize) -> usize {
        self.record_len as usize - super::format::RECORD_HEADER_BYTES - key_len
    }
}

/// Key bytes to entry. ahash is fine here: nothing about it is stored or routed.
#[derive(Default)]
pub struct Index {
    map: HashMap<Box<[u8]>, IndexEntry, ahash::RandomState>,
    live_objects: usize,
}

impl Index {
    pub fn get(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.map.get(key)
    }

    /// A live (not deleted) entry.
    pub fn get_live(&self, key: &[u8]) -> Option<&IndexEntry> {
        self.map.get(key).filter(|e| !e.tombstone)
    }

    /// Inserts or replaces; returns the previous entry.
    pub fn insert(&mut self, key: &[u8], entry: IndexEntry) -> Option<IndexEntry> {
        let old = match self.map.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, entry)),
            None => {
                self.map.insert(key.into(), entry);
                None
            }
        };
        let was_live = old.is_some_and(|o| !o.tombstone);
        match (was_live, entry.tombstone) {
            (false, false) => self.live_objects += 1,
            (true, true) => self.live_objects -= 1,
            _ => {}
        }
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<IndexEntry> {
        let old = self.map.remove(key);
        if old.is_some_and(|o| !o.tombstone) {
            self.live_objects -= 1;
        }
        old
    }

    /// Objects that exist (tombstones excluded).
    pub fn live_objects(&self) -> usize {
        self.live_objects
    }

    /// Entries including tombstones.
    pub fn entries(&self) -> usize {
        self.map.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &IndexEntry)> {
        self.map.iter().map(|(k, v)| (&**k, v))
    }

    /// Bytes of heap this index holds: the table's slots and control bytes plus each
    /// boxed key (rounded up to the allocator's 16-byte granule, with its 8-byte header).
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<[u8]>, IndexEntry)>() + 1;
        let table = self.map.capacity() * slot;
        let keys: usize = self.map.keys().map(|k| (k.len() + 8).div_ceil(16) * 16).sum();
        table + keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, tombstone: bool) -> IndexEntry {
        IndexEntry {
            version,
            segment: 0,
            offset: 64,
            record_len: 50,
            partition: 1,
            tombstone,
        }
    }

    #[test]
    fn live_count_follows_puts_and_tombstones() {
        let mut idx = Index::default();
        assert_eq!(std::mem::size_of::<IndexEntry>(), 24);
        idx.insert(b"a", entry(1, false));
        idx.insert(b"a", entry(2, false));
        idx.insert(b"b", entry(1, false));
        assert_eq!(idx.live_objects(), 2);
        idx.insert(b"a", entry(3, true));
        assert_eq!(idx.live_objects(), 1);
        assert!(idx.get_live(b"a").is_none());
        assert_eq!(idx.get(b"a").unwrap().version, 3);
        idx.remove(b"a");
        idx.remove(b"b");
        assert_eq!((idx.live_objects(), idx.entries()), (0, 0));
    }
}
