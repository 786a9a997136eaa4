//! The index's ordered view (issue 33): the keys that name an index tag (`{bucket}/...`,
//! placed by the tag, so one bucket index is one partition), kept per partition in key
//! order, and listed by prefix, start point and delimiter as an object store lists a
//! bucket. Kept by the index itself on every insert and removal, so writes, replicated
//! records, recovery, GC and resync all keep it without knowing of it. No disk: rebuilt at
//! recovery from the log as the rest of the index is.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

/// Heap bytes one entry costs besides its key's bytes, as measured: `ordered_memory` in
/// `tests/ordered_listing.rs` grew the RSS by 132.6 B per entry of a ~30-byte key over
/// what the same keys cost untagged (the box, the key's own allocation with its header
/// and rounding, the B-tree's nodes at their usual fill). A B-tree of slot ids comparing
/// keys in the index's arena would cost a tenth of it; not built yet.
pub const ENTRY_OVERHEAD: usize = 100;

/// Most index entries a listing walks past without answering them (tombstones, expired
/// keys) before it stops and says where to go on: a page's work stays bounded.
pub const MAX_SKIPPED: usize = 10_000;

/// Whether `key` is kept in order: it names an index tag.
pub fn is_ordered(key: &[u8]) -> bool {
    hotshard_placement::index_tag(key).is_some()
}

/// The ordered keys of each partition.
#[derive(Default)]
pub struct OrderedKeys {
    by_partition: HashMap<u16, BTreeSet<Box<[u8]>>>,
    entries: usize,
    key_bytes: usize,
}

impl OrderedKeys {
    /// Adds `key` (the index calls this for a key it did not hold).
    pub fn insert(&mut self, partition: u16, key: &[u8]) {
        if self.by_partition.entry(partition).or_default().insert(key.into()) {
            self.entries += 1;
            self.key_bytes += key.len();
        }
    }

    /// Removes `key` (the index calls this when the key leaves it).
    pub fn remove(&mut self, partition: u16, key: &[u8]) {
        let Some(set) = self.by_partition.get_mut(&partition) else {
            return;
        };
        if set.remove(key) {
            self.entries -= 1;
            self.key_bytes -= key.len();
        }
        if set.is_empty() {
            self.by_partition.remove(&partition);
        }
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    /// What the view costs, by `ENTRY_OVERHEAD` per entry.
    pub fn heap_bytes(&self) -> usize {
        self.entries * ENTRY_OVERHEAD + self.key_bytes
    }

    /// A page of `partition`'s ordered keys as `q` asks (see `ListQuery`), each key kept
    /// only if `live` gives it something (the index's entry of a live object).
    pub fn list<T>(
        &self,
        partition: u16,
        q: &ListQuery<'_>,
        live: impl Fn(&[u8]) -> Option<T>,
    ) -> Listing<T> {
        let mut out = Listing {
            items: Vec::new(),
            next: None,
        };
        let Some(set) = self.by_partition.get(&partition) else {
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
        let mut skipped = 0;
        'walk: loop {
            let range = set.range::<[u8], _>((as_ref(&from), Bound::Unbounded));
            for key in range {
                let key: &[u8] = key;
                if !key.starts_with(q.prefix) {
                    break 'walk;
                }
                if let Some(group) = q.group_of(key) {
                    // A common prefix stands for every key under it: once (if one of them
                    // is live, looking from this key on), then past them.
                    match group_live_from(set, key, group, &live, &mut skipped) {
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
                match live(key) {
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
                set.range::<[u8], _>((as_ref(&from), Bound::Unbounded))
                    .next()
                    .is_some_and(|k| k.starts_with(q.prefix))
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

/// Whether a common prefix is listed: `GroupLive::Yes` if a key under `group`, from
/// `first` on, is live; each dead one passed counts in the page's `skipped`, and once
/// those reach `MAX_SKIPPED` the page ends at the last one looked at.
enum GroupLive {
    Yes,
    No,
    OutOfBudget(Vec<u8>),
}

fn group_live_from<T>(
    set: &BTreeSet<Box<[u8]>>,
    first: &[u8],
    group: &[u8],
    live: &impl Fn(&[u8]) -> Option<T>,
    skipped: &mut usize,
) -> GroupLive {
    for k in set
        .range::<[u8], _>((Bound::Included(first), Bound::Unbounded))
        .take_while(|k| k.starts_with(group))
    {
        if live(k).is_some() {
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
#[derive(Debug, Clone, Copy)]
pub struct ListQuery<'a> {
    pub prefix: &'a [u8],
    pub start_after: Option<&'a [u8]>,
    pub delimiter: &'a [u8],
    pub limit: usize,
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

    #[test]
    fn a_page_walks_past_a_bounded_number_of_dead_keys() {
        let mut keys = OrderedKeys::default();
        for i in 0..25_000u32 {
            keys.insert(0, format!("{{b}}/{}/{i:06}", i % 3).as_bytes());
        }
        for delimiter in [&b""[..], b"/"] {
            let (mut after, mut pages) = (None::<Vec<u8>>, 0);
            loop {
                let q = ListQuery {
                    prefix: b"{b}/",
                    start_after: after.as_deref(),
                    delimiter,
                    limit: 10,
                };
                let calls = std::cell::Cell::new(0);
                let page = keys.list(0, &q, |_| {
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
