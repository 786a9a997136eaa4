//! The index's ordered view (issue 33): the keys that name an index tag (`{bucket}/...`,
//! placed by the tag, so one bucket index is one partition), kept per partition in key
//! order, and listed by prefix, start point and delimiter as an object store lists a
//! bucket. Kept by the index itself on every insert and removal, so writes, replicated
//! records, recovery, GC and resync all keep it without knowing of it. No disk: rebuilt at
//! recovery from the log as the rest of the index is.
//!
//! Each partition's keys are the index's slot ids (4 bytes each) in blocks of at most
//! `BLOCK` ids, each block sorted by key and every key of a block before the next block's;
//! keys are compared where the index keeps them (its arena, through `KeyOf`), so no key is
//! stored twice. An insert or removal is a binary search over the blocks' last keys, one in
//! a block, and a move of at most `BLOCK` ids.

use std::collections::HashMap;
use std::ops::Bound;

/// Most slot ids in one block (a full block splits in two).
const BLOCK: usize = 256;

/// Heap bytes one entry costs, at most: its id (4), the blocks' spare room (a block is half
/// to wholly full) and a block's header per `BLOCK / 2` ids. The index counts the view's
/// blocks themselves (`heap_bytes`); `ordered_memory` in `tests/ordered_listing.rs`
/// measures it.
pub const ENTRY_OVERHEAD: usize = 8;

/// Most index entries a listing walks past without answering them (tombstones, expired
/// keys) before it stops and says where to go on: a page's work stays bounded.
pub const MAX_SKIPPED: usize = 10_000;

/// Whether `key` is kept in order: it names an index tag.
pub fn is_ordered(key: &[u8]) -> bool {
    hotshard_placement::index_tag(key).is_some()
}

/// The key of a slot id, as the index holds it.
pub trait KeyOf {
    fn key_of(&self, id: u32) -> &[u8];
}

/// One partition's ids in key order.
#[derive(Default)]
struct Blocks(Vec<Vec<u32>>);

impl Blocks {
    /// The block and the place in it of the first key at or past `bound`'s.
    fn locate(&self, keys: &impl KeyOf, bound: Bound<&[u8]>) -> (usize, usize) {
        let before = |k: &[u8]| match bound {
            Bound::Included(t) => k < t,
            Bound::Excluded(t) => k <= t,
            Bound::Unbounded => false,
        };
        let b = self
            .0
            .partition_point(|blk| before(keys.key_of(*blk.last().unwrap())));
        match self.0.get(b) {
            Some(blk) => (b, blk.partition_point(|&id| before(keys.key_of(id)))),
            None => (b, 0),
        }
    }

    /// Ids in key order from (`b`, `at`) on.
    fn from(&self, (b, at): (usize, usize)) -> impl Iterator<Item = u32> + '_ {
        self.0
            .get(b..)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .flat_map(move |(i, blk)| blk[if i == 0 { at } else { 0 }..].iter().copied())
    }

    /// The place of `key` if it is here.
    fn find(&self, keys: &impl KeyOf, key: &[u8]) -> Option<(usize, usize)> {
        let (b, at) = self.locate(keys, Bound::Included(key));
        let id = *self.0.get(b)?.get(at)?;
        (keys.key_of(id) == key).then_some((b, at))
    }

    /// Adds `id` at `key`'s place; None if `key` is here already, else how many heap
    /// bytes the blocks grew by (or shrank: negative).
    fn insert(&mut self, keys: &impl KeyOf, id: u32, key: &[u8]) -> Option<isize> {
        if self.find(keys, key).is_some() {
            return None;
        }
        let (outer_before, first) = (self.0.capacity(), self.0.is_empty());
        let (mut b, mut at) = self.locate(keys, Bound::Included(key));
        if first {
            self.0.push(Vec::with_capacity(8));
        } else if b == self.0.len() {
            b -= 1;
            at = self.0[b].len();
        }
        let last_block = b + 1 == self.0.len();
        let blk = &mut self.0[b];
        let block_before = if first { 0 } else { blk.capacity() };
        if blk.len() == blk.capacity() {
            // Never past one block and one id: doubling would leave blocks half empty.
            blk.reserve_exact((blk.len() / 2).clamp(8, BLOCK + 1 - blk.len()));
        }
        blk.insert(at, id);
        let split = blk.len() > BLOCK;
        if split {
            // In two halves; but a key past every other starts a block of its own, so that
            // keys written in order (object names often are) leave full blocks behind.
            let keep = if at == BLOCK && last_block {
                BLOCK
            } else {
                BLOCK / 2
            };
            let mut upper = Vec::with_capacity(BLOCK + 1);
            upper.extend_from_slice(&blk[keep..]);
            blk.truncate(keep);
            self.0.insert(b + 1, upper);
        }
        let block_after = self.0[b].capacity() + if split { self.0[b + 1].capacity() } else { 0 };
        Some(Self::delta(
            outer_before,
            self.0.capacity(),
            block_before,
            block_after,
        ))
    }

    /// Heap bytes gained when the outer list's capacity went from `outer` to `outer2` and
    /// the blocks touched from `blocks` to `blocks2` ids.
    fn delta(outer: usize, outer2: usize, blocks: usize, blocks2: usize) -> isize {
        let id_bytes = (blocks2 as isize - blocks as isize) * 4;
        id_bytes + (outer2 as isize - outer as isize) * std::mem::size_of::<Vec<u32>>() as isize
    }

    /// Takes `key` out; None if it is not here, else the heap bytes gained (negative).
    fn remove(&mut self, keys: &impl KeyOf, key: &[u8]) -> Option<isize> {
        let (b, at) = self.find(keys, key)?;
        let (outer_before, block_before) = (self.0.capacity(), self.0[b].capacity());
        self.0[b].remove(at);
        let block_after = if self.0[b].is_empty() {
            self.0.remove(b);
            0
        } else {
            self.0[b].capacity()
        };
        Some(Self::delta(
            outer_before,
            self.0.capacity(),
            block_before,
            block_after,
        ))
    }

    fn heap_bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.0.iter().map(|b| b.capacity() * 4).sum::<usize>()
    }
}

/// The ordered keys of each partition.
#[derive(Default)]
pub struct OrderedKeys {
    by_partition: HashMap<u16, Blocks>,
    entries: usize,
    /// The heap bytes of every partition's blocks, kept as they change: summing them on
    /// each write cost 16 % of a durable SET's CPU once the index's partition lists were
    /// summed the same way.
    block_bytes: usize,
}

impl OrderedKeys {
    /// Adds slot `id` holding `key` (the index calls this for a key it did not hold).
    pub fn insert(&mut self, keys: &impl KeyOf, partition: u16, id: u32, key: &[u8]) {
        if let Some(grew) = self
            .by_partition
            .entry(partition)
            .or_default()
            .insert(keys, id, key)
        {
            self.entries += 1;
            self.block_bytes = self.block_bytes.saturating_add_signed(grew);
        }
    }

    /// Removes `key` (the index calls this when the key leaves it, before its slot goes).
    pub fn remove(&mut self, keys: &impl KeyOf, partition: u16, key: &[u8]) {
        let Some(blocks) = self.by_partition.get_mut(&partition) else {
            return;
        };
        if let Some(grew) = blocks.remove(keys, key) {
            self.entries -= 1;
            self.block_bytes = self.block_bytes.saturating_add_signed(grew);
        }
        if blocks.0.is_empty() {
            let outer = blocks.0.capacity() * std::mem::size_of::<Vec<u32>>();
            self.block_bytes = self.block_bytes.saturating_sub(outer);
            self.by_partition.remove(&partition);
        }
    }

    /// The slot holding `key` is now `id` (the index moved it into a removed slot's place).
    pub fn renumber(&mut self, keys: &impl KeyOf, partition: u16, key: &[u8], id: u32) {
        if let Some(blocks) = self.by_partition.get_mut(&partition) {
            if let Some((b, at)) = blocks.find(keys, key) {
                blocks.0[b][at] = id;
            }
        }
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The ordered keys `partition` holds (a sum over its blocks).
    pub fn partition_entries(&self, partition: u16) -> usize {
        self.by_partition
            .get(&partition)
            .map_or(0, |b| b.0.iter().map(Vec::len).sum())
    }

    /// What the view holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.by_partition.capacity() * 40 + self.block_bytes
    }

    /// `heap_bytes` by a walk of every block (the tests check the kept sum against it).
    pub fn heap_bytes_walked(&self) -> usize {
        self.by_partition.capacity() * 40 + self.by_partition.values().map(Blocks::heap_bytes).sum::<usize>()
    }

    /// A page of `partition`'s ordered keys as `q` asks (see `ListQuery`), each key kept
    /// only if `live` gives it something for its slot (the index's entry of a live object).
    pub fn list<T>(
        &self,
        keys: &impl KeyOf,
        partition: u16,
        q: &ListQuery<'_>,
        live: impl Fn(&[u8], u32) -> Option<T>,
    ) -> Listing<T> {
        let mut out = Listing {
            items: Vec::new(),
            next: None,
        };
        let Some(blocks) = self.by_partition.get(&partition) else {
            return out;
        };
        if q.limit == 0 {
            return out;
        }
        let mut from: Bound<Vec<u8>> = match q.start_after {
            Some(after) if after >= q.prefix => match q.group_of(after) {
                // The last page ended on a common prefix: go on after all of it.
                Some(group) if group == after => match successor(group) {
                    Some(s) => Bound::Included(s),
                    None => return out,
                },
                _ => Bound::Excluded(after.to_vec()),
            },
            _ => Bound::Included(q.prefix.to_vec()),
        };
        // A range's lower bound (a split index's range begins there).
        if let Some(at) = q.start_at {
            let past = match &from {
                Bound::Included(f) => at > &f[..],
                Bound::Excluded(f) => at > &f[..],
                Bound::Unbounded => true,
            };
            if past {
                from = Bound::Included(at.to_vec());
            }
        }
        let below_end = |k: &[u8]| q.end.is_none_or(|e| k < e);
        let mut skipped = 0;
        'walk: loop {
            let start = blocks.locate(keys, as_ref(&from));
            for id in blocks.from(start) {
                let key = keys.key_of(id);
                if !key.starts_with(q.prefix) || !below_end(key) {
                    break 'walk;
                }
                if let Some(group) = q.group_of(key) {
                    // A common prefix stands for every key under it: once (if one of them
                    // below the range's end is live, looking from this key on), then past
                    // them.
                    let under = blocks
                        .from(blocks.locate(keys, Bound::Included(key)))
                        .take_while(|&id| below_end(keys.key_of(id)));
                    match group_live(keys, under, group, &live, &mut skipped) {
                        GroupLive::Yes => out.items.push(Listed::Prefix(group.to_vec())),
                        GroupLive::No => {}
                        GroupLive::OutOfBudget(last) => {
                            // Resume inside the group, after the last dead key looked at.
                            out.next = Some(last);
                            break 'walk;
                        }
                    }
                    match successor(group) {
                        Some(s) => from = Bound::Included(s),
                        None => break 'walk,
                    }
                    if out.items.len() == q.limit || skipped >= MAX_SKIPPED {
                        out.next = Some(group.to_vec());
                        break 'walk;
                    }
                    continue 'walk;
                }
                match live(key, id) {
                    Some(t) => out.items.push(Listed::Key(key.to_vec(), t)),
                    None => skipped += 1,
                }
                if out.items.len() == q.limit || skipped >= MAX_SKIPPED {
                    out.next = Some(key.to_vec());
                    break 'walk;
                }
            }
            break;
        }
        // A full page says where the next begins only if something may follow (after a
        // common prefix: past every key under it).
        if let Some(last) = &out.next {
            let after = match q.group_of(last) {
                Some(group) if group == &last[..] => successor(group).map(Bound::Included),
                _ => Some(Bound::Excluded(last.clone())),
            };
            let more = after.is_some_and(|from| {
                blocks
                    .from(blocks.locate(keys, as_ref(&from)))
                    .next()
                    .is_some_and(|id| keys.key_of(id).starts_with(q.prefix) && below_end(keys.key_of(id)))
            });
            if !more {
                out.next = None;
            }
        }
        out
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(&v[..]),
        Bound::Excluded(v) => Bound::Excluded(&v[..]),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Whether a common prefix is listed: `GroupLive::Yes` if a key under `group`, from the
/// ids given on, is live; each dead one passed counts in the page's `skipped`, and once
/// those reach `MAX_SKIPPED` the page ends at the last one looked at.
enum GroupLive {
    Yes,
    No,
    OutOfBudget(Vec<u8>),
}

fn group_live<T>(
    keys: &impl KeyOf,
    ids: impl Iterator<Item = u32>,
    group: &[u8],
    live: &impl Fn(&[u8], u32) -> Option<T>,
    skipped: &mut usize,
) -> GroupLive {
    for id in ids {
        let k = keys.key_of(id);
        if !k.starts_with(group) {
            break;
        }
        if live(k, id).is_some() {
            return GroupLive::Yes;
        }
        *skipped += 1;
        if *skipped >= MAX_SKIPPED {
            return GroupLive::OutOfBudget(k.to_vec());
        }
    }
    GroupLive::No
}

/// The least byte string greater than every string starting with `p` (None: there is
/// none, `p` is all 0xFF).
pub fn successor(p: &[u8]) -> Option<Vec<u8>> {
    let mut s = p.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xFF {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

/// What a listing asks: keys starting with `prefix`, after `start_after`, at most `limit`
/// items (keys and common prefixes); with a `delimiter`, keys with it after the prefix are
/// rolled up into their common prefix (up to and including its first occurrence).
///
/// `start_at` and `end` bound the walk to one range of a split index (issue 33: `start_at`
/// inclusive, `end` exclusive): a common prefix is listed only for a live key under it in
/// the range.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    pub prefix: &'a [u8],
    pub start_after: Option<&'a [u8]>,
    pub delimiter: &'a [u8],
    pub limit: usize,
    pub start_at: Option<&'a [u8]>,
    pub end: Option<&'a [u8]>,
}

impl ListQuery<'_> {
    /// Where a listing goes on in the next range once a page that did not fill ended at
    /// this range's `end` with keys of the prefix possibly beyond it: at `end`, or past
    /// every key under the common prefix the page (or the page it follows) ended on, when
    /// that reaches further. None: nothing of the prefix lies past `end`.
    pub fn resume_past_end(&self, last: Option<&[u8]>) -> Option<Vec<u8>> {
        let end = self.end?;
        if !(end.starts_with(self.prefix) || end < self.prefix) {
            return None;
        }
        let last = last.or(self.start_after);
        let past_group = last
            .and_then(|l| self.group_of(l).filter(|g| *g == l))
            .map(successor);
        match past_group {
            Some(None) => None,
            Some(Some(s)) if &s[..] > end => (s.starts_with(self.prefix)).then_some(s),
            _ => Some(end.to_vec()),
        }
    }
}

impl ListQuery<'_> {
    /// The common prefix `key` rolls up into, if the delimiter follows the prefix in it.
    fn group_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        if self.delimiter.is_empty() || !key.starts_with(self.prefix) {
            return None;
        }
        let rest = &key[self.prefix.len()..];
        let at = rest
            .windows(self.delimiter.len())
            .position(|w| w == self.delimiter)?;
        Some(&key[..self.prefix.len() + at + self.delimiter.len()])
    }
}

/// One item of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed<T> {
    Key(Vec<u8>, T),
    Prefix(Vec<u8>),
}

/// A page: its items in key order, and where the next page starts (the last item, to
/// pass as `start_after`) when more may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<T> {
    pub items: Vec<Listed<T>>,
    pub next: Option<Vec<u8>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys by id, as the index's arena holds them.
    struct Keys(Vec<Vec<u8>>);

    impl KeyOf for Keys {
        fn key_of(&self, id: u32) -> &[u8] {
            &self.0[id as usize]
        }
    }

    #[test]
    #[allow(clippy::map_entry)] // the model is changed beside the blocks, in each branch
    fn blocks_split_and_empty_and_keep_key_order() {
        // Keys by id in an arena that only grows (ids are never reused here).
        let mut arena = Keys(Vec::new());
        let mut blocks = Blocks::default();
        let mut model = std::collections::BTreeMap::new();
        // The heap bytes the blocks say they gained, summed (`OrderedKeys` keeps this sum).
        let mut bytes = 0isize;
        let mut x = 0x1234_5678_9abc_def1u64;
        for round in 0..40_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Runs in order (appends) and at random, as object names come.
            let n = if round.is_multiple_of(3) { round } else { x % 6000 };
            let key = format!("{{b}}/{n:08}").into_bytes();
            if x.is_multiple_of(5) {
                let removed = blocks.remove(&arena, &key);
                assert_eq!(removed.is_some(), model.remove(&key).is_some());
                bytes += removed.unwrap_or(0);
            } else if !model.contains_key(&key) {
                let id = arena.0.len() as u32;
                arena.0.push(key.clone());
                bytes += blocks.insert(&arena, id, &key).expect("a new key");
                model.insert(key, id);
            } else if x.is_multiple_of(7) {
                // The index moved the key's slot: renumbered to a new id.
                let id = arena.0.len() as u32;
                arena.0.push(key.clone());
                let (b, at) = blocks.find(&arena, &key).unwrap();
                blocks.0[b][at] = id;
                model.insert(key, id);
            }
        }
        assert_eq!(
            bytes,
            blocks.heap_bytes() as isize,
            "the gains sum to the blocks' heap"
        );
        let ids: Vec<u32> = blocks.from((0, 0)).collect();
        assert_eq!(ids, model.values().copied().collect::<Vec<_>>());
        assert!(blocks.0.iter().all(|b| !b.is_empty() && b.len() <= BLOCK));
        assert!(
            blocks.0.len() > 10,
            "{} blocks: the splits were exercised",
            blocks.0.len()
        );
        // Every key found where it is, from any bound.
        for (k, id) in model.iter().step_by(97) {
            let (b, at) = blocks.find(&arena, k).unwrap();
            assert_eq!(blocks.0[b][at], *id);
            let next: Vec<u32> = blocks
                .from(blocks.locate(&arena, Bound::Excluded(k)))
                .take(1)
                .collect();
            let want: Vec<u32> = model
                .range::<Vec<u8>, _>((Bound::Excluded(k), Bound::Unbounded))
                .map(|(_, i)| *i)
                .take(1)
                .collect();
            assert_eq!(next, want);
        }
    }

    /// The view's kept sum of its blocks' heap bytes is what a walk of them finds, through
    /// inserts, removals, partitions emptied and refilled.
    #[test]
    fn the_kept_heap_bytes_are_the_walks() {
        let mut arena = Keys(Vec::new());
        let mut view = OrderedKeys::default();
        let mut live = std::collections::BTreeSet::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..30_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (partition, n) = ((x % 5) as u16, x % 3000);
            let key = format!("{{p{partition}}}/{n:06}").into_bytes();
            if x.is_multiple_of(3) && live.remove(&(partition, key.clone())) {
                view.remove(&arena, partition, &key);
            } else if live.insert((partition, key.clone())) {
                let id = arena.0.len() as u32;
                arena.0.push(key.clone());
                view.insert(&arena, partition, id, &key);
            }
        }
        assert_eq!(view.entries(), live.len());
        assert_eq!(view.heap_bytes(), view.heap_bytes_walked());
        for (partition, key) in std::mem::take(&mut live) {
            view.remove(&arena, partition, &key);
        }
        assert_eq!(
            view.heap_bytes(),
            view.heap_bytes_walked(),
            "every partition emptied"
        );
        assert_eq!(view.entries(), 0);
    }

    #[test]
    fn a_page_walks_past_a_bounded_number_of_dead_keys() {
        let arena = Keys(
            (0..25_000u32)
                .map(|i| format!("{{b}}/{}/{i:06}", i % 3).into_bytes())
                .collect(),
        );
        let mut keys = OrderedKeys::default();
        for (id, k) in arena.0.iter().enumerate() {
            keys.insert(&arena, 0, id as u32, k);
        }
        for delimiter in [&b""[..], b"/"] {
            let (mut after, mut pages) = (None::<Vec<u8>>, 0);
            loop {
                let q = ListQuery {
                    prefix: b"{b}/",
                    start_after: after.as_deref(),
                    delimiter,
                    limit: 10,
                    ..Default::default()
                };
                let calls = std::cell::Cell::new(0);
                let page = keys.list(&arena, 0, &q, |_, _| {
                    calls.set(calls.get() + 1);
                    None::<()>
                });
                assert!(calls.get() <= MAX_SKIPPED + 1, "{} looked at", calls.get());
                assert!(page.items.is_empty(), "nothing live, nothing listed");
                pages += 1;
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert!(pages <= 4, "{pages} pages for {delimiter:?}");
        }
    }

    #[test]
    fn successors_skip_everything_under_a_prefix() {
        assert_eq!(successor(b"a/"), Some(b"a0".to_vec()));
        assert_eq!(successor(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(successor(b"\xff\xff"), None);
    }
}
