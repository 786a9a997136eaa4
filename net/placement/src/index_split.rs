//! Index ranges that split (issue 33): a bucket index (the keys that begin with one index
//! tag, `{bucket}...`) is placed whole by its tag until the coordinator splits it by key.
//! A split names its first key (`from`) and the partition its range moves to; the range
//! runs from `from` to the next moved split of the same tag (or the tag's last key).
//!
//! A split goes through three states, each a map the coordinator publishes, each step
//! taken once every replica in the write path of the new range's chain has reported it
//! done (`SplitDone`):
//! - `Copying`: the range is still served by its old partition; the new chain's replicas
//!   copy it from the old chain's head, in the background, as writes go on.
//! - `Fenced`: the old chain's head refuses new writes of the range (clients retry on
//!   Busy), so the range stops changing once the writes in flight settle; the new chain's
//!   replicas copy what changed since (and remove what was deleted), listing the old head
//!   once it is clean.
//! - `Moved`: placement sends the range to its new partition. Versions copied keep their
//!   number and raise the new replicas' next version past them, so a version never goes
//!   back.
//!
//! Only keys that begin with their tag (`{tag}...`) follow splits; a key whose tag is
//! elsewhere (`x{tag}y`) stays on the tag's partition.

use rkyv::{Archive, Deserialize, Serialize};

use crate::partition::{index_tag, key_hash, partition_of};

/// Where a split stands.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[rkyv(derive(Debug))]
pub enum SplitState {
    Copying,
    Fenced,
    Moved,
}

impl SplitState {
    pub fn name(self) -> &'static str {
        match self {
            SplitState::Copying => "copying",
            SplitState::Fenced => "fenced",
            SplitState::Moved => "moved",
        }
    }

    pub fn parse(s: &str) -> Option<SplitState> {
        [SplitState::Copying, SplitState::Fenced, SplitState::Moved]
            .into_iter()
            .find(|x| x.name() == s)
    }
}

/// One split of a bucket index: the keys of `tag` from `from` on (up to the next moved
/// split of the tag) go to `partition` once `state` is `Moved`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct IndexSplit {
    /// The epoch of the map that declared it: names it in reports.
    pub id: u64,
    pub tag: Vec<u8>,
    /// The range's first key (begins with `{tag}`).
    pub from: Vec<u8>,
    pub partition: u32,
    pub state: SplitState,
}

/// A replica of a split's new chain has finished the copy of `stage` (reported through
/// etcd): (split id, node, shard, stage).
pub type SplitDone = (u64, u32, u32, SplitState);

/// Most splits a map may hold.
pub const MAX_SPLITS: usize = 4096;
/// Longest `from` key a split may name (the engine's key limit).
pub const MAX_SPLIT_KEY_BYTES: usize = 1024;

/// The tag `key` begins with (`{tag}...`), if any: the keys that follow splits.
pub fn leading_tag(key: &[u8]) -> Option<&[u8]> {
    if key.first() != Some(&b'{') {
        return None;
    }
    index_tag(key)
}

/// The range of keys a key belongs to under the moved splits: its partition and bounds
/// (`lo` inclusive, `hi` exclusive; None: the tag's first or last key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange<'a> {
    pub partition: u32,
    pub lo: Option<&'a [u8]>,
    pub hi: Option<&'a [u8]>,
}

/// The range of `key` among `splits` (sorted by tag, then from), `bits` partition bits.
pub fn range_of<'a>(splits: &'a [IndexSplit], key: &[u8], bits: u8) -> KeyRange<'a> {
    let whole = KeyRange {
        partition: partition_of(key, bits),
        lo: None,
        hi: None,
    };
    let Some(tag) = leading_tag(key).filter(|_| !splits.is_empty()) else {
        return whole;
    };
    // The moved splits of this tag, in order of `from`.
    let start = splits.partition_point(|s| s.tag.as_slice() < tag);
    let mut range = whole;
    for s in splits[start..].iter().take_while(|s| s.tag == tag) {
        if s.state != SplitState::Moved {
            continue;
        }
        if s.from.as_slice() <= key {
            range.partition = s.partition;
            range.lo = Some(&s.from);
        } else {
            range.hi = Some(&s.from);
            break;
        }
    }
    range
}

/// The split in progress (copying or fenced), if any: at most one at a time.
pub fn in_progress(splits: &[IndexSplit]) -> Option<&IndexSplit> {
    splits.iter().find(|s| s.state != SplitState::Moved)
}

/// The partition a split's range comes from: the range holding its first key under the
/// other moved splits.
pub fn source_partition(splits: &[IndexSplit], split: &IndexSplit, bits: u8) -> u32 {
    let others: Vec<IndexSplit> = splits
        .iter()
        .filter(|s| !(s.tag == split.tag && s.from == split.from))
        .cloned()
        .collect();
    range_of(&others, &split.from, bits).partition
}

/// The end of a split's range (exclusive; None: the tag's last key): the next moved split
/// of its tag.
pub fn split_end<'a>(splits: &'a [IndexSplit], split: &IndexSplit) -> Option<&'a [u8]> {
    splits
        .iter()
        .filter(|s| s.tag == split.tag && s.state == SplitState::Moved && s.from > split.from)
        .map(|s| &s.from[..])
        .min()
}

/// Whether `key` lies in a fenced split's range: its writes are refused at the old head.
pub fn is_fenced(splits: &[IndexSplit], key: &[u8], bits: u8) -> bool {
    let Some(s) = in_progress(splits).filter(|s| s.state == SplitState::Fenced) else {
        return false;
    };
    if leading_tag(key) != Some(&s.tag[..]) || key < &s.from[..] {
        return false;
    }
    range_of(splits, key, bits).lo == range_of(splits, &s.from, bits).lo
}

/// Where a new range from `from` goes: a partition picked by hashing the tag and `from`
/// with a salt, the first that `ok` accepts (None if 64 salts find none).
pub fn pick_partition(tag: &[u8], from: &[u8], bits: u8, ok: impl Fn(u32) -> bool) -> Option<u32> {
    (0u32..64).find_map(|salt| {
        let mut seed = Vec::with_capacity(tag.len() + from.len() + 5);
        seed.extend_from_slice(tag);
        seed.push(0);
        seed.extend_from_slice(from);
        seed.extend_from_slice(&salt.to_le_bytes());
        let p = (key_hash(&seed) >> (64 - bits as u32)) as u32;
        ok(p).then_some(p)
    })
}

/// Whether `splits` is well formed for a map of `partitions`: each names a tag its `from`
/// begins with, a partition of the map, sorted by (tag, from) with no two alike, at most one
/// in progress.
pub fn well_formed(splits: &[IndexSplit], partitions: usize) -> bool {
    splits.len() <= MAX_SPLITS
        && splits.iter().all(|s| {
            (s.partition as usize) < partitions
                && s.from.len() <= MAX_SPLIT_KEY_BYTES
                && leading_tag(&s.from) == Some(&s.tag[..])
        })
        && splits
            .windows(2)
            .all(|w| (&w[0].tag, &w[0].from) < (&w[1].tag, &w[1].from))
        && splits.iter().filter(|s| s.state != SplitState::Moved).count() <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(from: &str, partition: u32, state: SplitState) -> IndexSplit {
        IndexSplit {
            id: 1,
            tag: leading_tag(from.as_bytes()).unwrap().to_vec(),
            from: from.as_bytes().to_vec(),
            partition,
            state,
        }
    }

    #[test]
    fn ranges_follow_moved_splits_only() {
        let bits = 12;
        let base = partition_of(b"{b}/a", bits);
        let splits = vec![
            split("{a}/zz", 7, SplitState::Moved),
            split("{b}/m", 11, SplitState::Moved),
            split("{b}/t", 12, SplitState::Fenced),
        ];
        assert!(well_formed(&splits, 4096));
        let r = range_of(&splits, b"{b}/a", bits);
        assert_eq!((r.partition, r.lo, r.hi), (base, None, Some(&b"{b}/m"[..])));
        let r = range_of(&splits, b"{b}/m", bits);
        assert_eq!((r.partition, r.lo, r.hi), (11, Some(&b"{b}/m"[..]), None));
        // The fenced split does not route yet, but fences its range.
        assert_eq!(range_of(&splits, b"{b}/u", bits).partition, 11);
        assert!(is_fenced(&splits, b"{b}/t", bits));
        assert!(is_fenced(&splits, b"{b}/zzz", bits));
        assert!(!is_fenced(&splits, b"{b}/s", bits));
        assert!(!is_fenced(&splits, b"{a}/zzz", bits));
        // Another tag, and a key whose tag is not at its start, are untouched.
        assert_eq!(range_of(&splits, b"{a}/zzz", bits).partition, 7);
        assert_eq!(
            range_of(&splits, b"{a}/y", bits).partition,
            partition_of(b"{a}", bits)
        );
        assert_eq!(range_of(&splits, b"x{b}/z", bits).partition, base);
        // Refused: out of order, two in progress, a from without its tag, a bad partition.
        let mut bad = splits.clone();
        bad.swap(1, 2);
        assert!(!well_formed(&bad, 4096));
        let mut bad = splits.clone();
        bad[1].state = SplitState::Copying;
        assert!(!well_formed(&bad, 4096));
        let mut bad = splits.clone();
        bad[0].from = b"x{a}".to_vec();
        assert!(!well_formed(&bad, 4096));
        assert!(!well_formed(&splits, 12));
    }

    #[test]
    fn a_new_range_avoids_refused_partitions() {
        let p = pick_partition(b"b", b"{b}/m", 12, |_| true).unwrap();
        let q = pick_partition(b"b", b"{b}/m", 12, |x| x != p).unwrap();
        assert_ne!(p, q);
        assert_eq!(pick_partition(b"b", b"{b}/m", 12, |_| false), None);
    }
}
