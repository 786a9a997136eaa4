//! The index's ordered view (issue 33) against a model: random puts, deletes (tombstones),
//! expired entries and removals of keys naming an index tag, in two partitions beside keys
//! that name none; random listings (prefix, start_after, delimiter, limit) compared with
//! the same listing of a `BTreeMap`, page by page, and whole by following `next`. Also
//! the memory one entry costs.

use std::collections::BTreeMap;

use hotshard_store::index::{Index, IndexEntry};
use hotshard_store::ordered::{ListQuery, Listed};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The partition the model test writes to.
const PARTITION: u16 = 3;

/// What a key is in the model: its version, and whether it is a live object.
type Model = BTreeMap<Vec<u8>, (u64, bool)>;

fn random_key(rng: &mut Rng) -> Vec<u8> {
    let mut k = b"{b}".to_vec();
    for _ in 0..rng.below(6) {
        k.push(b"ab/x\xff"[rng.below(5) as usize]);
    }
    k
}

fn group_of<'k>(key: &'k [u8], prefix: &[u8], delimiter: &[u8]) -> Option<&'k [u8]> {
    if delimiter.is_empty() || !key.starts_with(prefix) {
        return None;
    }
    let rest = &key[prefix.len()..];
    let at = rest.windows(delimiter.len()).position(|w| w == delimiter)?;
    Some(&key[..prefix.len() + at + delimiter.len()])
}

/// Every item the model lists for `q` from its start, in order (no limit).
fn model_items(model: &Model, q: &ListQuery<'_>) -> Vec<Listed<u64>> {
    let mut items: Vec<Listed<u64>> = Vec::new();
    for (k, &(version, live)) in model.range(q.prefix.to_vec()..) {
        if !k.starts_with(q.prefix) {
            break;
        }
        if !live {
            continue;
        }
        if let Some(after) = q.start_after {
            if &k[..] <= after {
                continue;
            }
            // After a common prefix: past every key under it.
            if group_of(after, q.prefix, q.delimiter).is_some_and(|g| g == after) && k.starts_with(after) {
                continue;
            }
        }
        match group_of(k, q.prefix, q.delimiter) {
            Some(g) => {
                if !matches!(items.last(), Some(Listed::Prefix(p)) if p == g) {
                    items.push(Listed::Prefix(g.to_vec()));
                }
            }
            None => items.push(Listed::Key(k.clone(), version)),
        }
    }
    items
}

fn name(item: &Listed<u64>) -> &[u8] {
    match item {
        Listed::Key(k, _) | Listed::Prefix(k) => k,
    }
}

#[test]
fn listings_match_a_sorted_map_under_random_writes() {
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let now = 1_000_000;
    for round in 0..40 {
        let mut index = Index::default();
        let mut model = Model::new();
        let mut version = 0;
        for _ in 0..rng.below(300) + 1 {
            version += 1;
            let key = random_key(&mut rng);
            match rng.below(10) {
                0..=5 => {
                    index.insert(&key, PARTITION, IndexEntry::new(version, 0, 0, 10, 0, false));
                    model.insert(key, (version, true));
                }
                6 => {
                    index.insert(&key, PARTITION, IndexEntry::new(version, 0, 0, 0, 0, true));
                    model.insert(key, (version, false));
                }
                7 => {
                    let e = IndexEntry::new(version, 0, 0, 10, 0, false).expiring_at(now - 1);
                    index.insert(&key, PARTITION, e);
                    model.insert(key, (version, false));
                }
                8 => {
                    index.remove(&key);
                    model.remove(&key);
                }
                _ => {
                    // Not to be listed: another partition's tagged key, a key with no tag.
                    let other = format!("{{b}}other{version}");
                    index.insert(
                        other.as_bytes(),
                        PARTITION + 1,
                        IndexEntry::new(version, 0, 0, 10, 0, false),
                    );
                    index.insert(b"{b", PARTITION, IndexEntry::new(version, 0, 0, 10, 0, false));
                }
            }
        }
        let others = index.ordered_entries() - model.len();
        assert!(
            index
                .list(
                    PARTITION + 1,
                    &ListQuery {
                        prefix: b"{b}o",
                        start_after: None,
                        delimiter: b"",
                        limit: 1000,
                        ..Default::default()
                    },
                    now
                )
                .items
                .len()
                == others,
            "round {round}"
        );
        for _ in 0..50 {
            let prefix: Vec<u8> = {
                let mut p = b"{b}".to_vec();
                for _ in 0..rng.below(3) {
                    p.push(b"ab/x"[rng.below(4) as usize]);
                }
                if rng.below(8) == 0 {
                    p.truncate(rng.below(3) as usize)
                }
                p
            };
            let delimiter: &[u8] = [&b""[..], b"/", b"x", b"ab"][rng.below(4) as usize];
            let limit = rng.below(6) as usize + 1;
            let start_after = (rng.below(3) == 0).then(|| random_key(&mut rng));
            let q = ListQuery {
                prefix: &prefix,
                start_after: start_after.as_deref(),
                delimiter,
                limit,
                ..Default::default()
            };
            let expected = model_items(&model, &q);
            // One page.
            let page = index.list(PARTITION, &q, now);
            let got: Vec<Listed<u64>> = page
                .items
                .iter()
                .map(|i| match i {
                    Listed::Key(k, e) => Listed::Key(k.clone(), e.version),
                    Listed::Prefix(p) => Listed::Prefix(p.clone()),
                })
                .collect();
            let want: Vec<Listed<u64>> = expected.iter().take(limit).cloned().collect();
            assert_eq!(got, want, "round {round}: {q:?}");
            if expected.len() > limit {
                assert_eq!(
                    page.next.as_deref(),
                    want.last().map(name),
                    "round {round}: {q:?}"
                );
            }
            // Every page, following `next`: the whole listing, each item once.
            let mut all = Vec::new();
            let mut after = start_after.clone();
            loop {
                let q = ListQuery {
                    start_after: after.as_deref(),
                    ..q
                };
                let page = index.list(PARTITION, &q, now);
                all.extend(page.items.into_iter().map(|i| match i {
                    Listed::Key(k, e) => Listed::Key(k, e.version),
                    Listed::Prefix(p) => Listed::Prefix(p),
                }));
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(all, expected, "round {round}: paging {q:?}");
            // The same listing over an index split into ranges (the split points from
            // random keys), each range listed alone up to its end and the listing going
            // on where the page says: every item once, in order.
            let mut splits: Vec<Vec<u8>> = (0..rng.below(4)).map(|_| random_key(&mut rng)).collect();
            splits.sort();
            splits.dedup();
            assert_eq!(
                list_across(&index, &q, &splits, now),
                expected,
                "round {round}: across {splits:?}, {q:?}"
            );
        }
    }
}

/// A listing as a client and the nodes of a split index make it: each request goes to
/// the range holding its start (the latest of prefix, `start_after` and the resume point),
/// which lists only between its bounds; a page that ends at its range's end says where the
/// next range takes over (`resume_past_end`).
fn list_across(index: &Index, q: &ListQuery<'_>, splits: &[Vec<u8>], now: u64) -> Vec<Listed<u64>> {
    let mut all = Vec::new();
    let mut after = q.start_after.map(<[u8]>::to_vec);
    let mut at: Option<Vec<u8>> = None;
    for _ in 0..10_000 {
        let mut route = q.prefix.to_vec();
        for k in [&after, &at].into_iter().flatten() {
            route = route.max(k.clone());
        }
        let lo = splits.iter().rev().find(|s| **s <= route);
        let hi = splits.iter().find(|s| **s > route);
        let start_at = match (&at, lo) {
            (Some(a), Some(l)) => Some(a.clone().max(l.clone())),
            (a, l) => a.clone().or(l.cloned()),
        };
        let page_q = ListQuery {
            start_after: after.as_deref(),
            start_at: start_at.as_deref(),
            end: hi.map(Vec::as_slice),
            ..*q
        };
        let page = index.list(PARTITION, &page_q, now);
        let last = page.items.last().map(|i| name(&plain(i)).to_vec());
        all.extend(page.items.iter().map(plain));
        match page.next {
            Some(n) => after = Some(n),
            None => match page_q.resume_past_end(last.as_deref()) {
                Some(r) => {
                    after = None;
                    at = Some(r);
                }
                None => return all,
            },
        }
    }
    panic!("a listing across {splits:?} that never ends: {q:?}");
}

fn plain<E: HasVersion>(i: &Listed<E>) -> Listed<u64> {
    match i {
        Listed::Key(k, e) => Listed::Key(k.clone(), e.version()),
        Listed::Prefix(p) => Listed::Prefix(p.clone()),
    }
}

trait HasVersion {
    fn version(&self) -> u64;
}

impl HasVersion for IndexEntry {
    fn version(&self) -> u64 {
        self.version
    }
}

fn crate_overhead() -> f64 {
    hotshard_store::ordered::ENTRY_OVERHEAD as f64
}

/// What one ordered entry costs: RSS growth per entry over a million index inserts of
/// tagged keys, against the same keys untagged (the 40-byte slot and the rest of the
/// index). `cargo test --release -p hotshard-store --test ordered_listing -- --ignored --nocapture`.
#[test]
#[ignore]
fn ordered_memory() {
    fn rss() -> usize {
        let s = std::fs::read_to_string("/proc/self/statm").unwrap();
        s.split(' ').nth(1).unwrap().parse::<usize>().unwrap() * 4096
    }
    const N: u64 = 1_000_000;
    let grow = |tag: &str| {
        let before = rss();
        let mut index = Index::default();
        for i in 0..N {
            let key = format!("{tag}photos/2026/{i:010}.jpg");
            index.insert(key.as_bytes(), 1, IndexEntry::new(i + 1, 0, 0, 100, 0, false));
        }
        let grown = rss() - before;
        let heap = index.heap_bytes();
        let view = index.ordered_heap_bytes();
        drop(index);
        (
            grown as f64 / N as f64,
            heap as f64 / N as f64,
            view as f64 / N as f64,
        )
    };
    let (plain_rss, plain_heap, _) = grow("");
    let (tagged_rss, tagged_heap, view) = grow("{b}");
    eprintln!(
        "per entry, 1M keys of ~27 B: untagged {plain_rss:.1} B RSS ({plain_heap:.1} by the index's count); tagged {tagged_rss:.1} B RSS ({tagged_heap:.1}); the ordered view's own blocks: {view:.2} B per entry"
    );
    assert!(view < crate_overhead(), "{view:.2} B per entry");
}

/// A 1,000-key page from an index of a million entries, at random start points: the
/// ordered view's listing against a `BTreeMap` range of the same keys in the same run.
/// `cargo test --release -p hotshard-store --test ordered_listing -- --ignored --nocapture`.
#[test]
#[ignore]
fn a_page_from_a_million_entries() {
    const N: u64 = 1_000_000;
    let mut index = Index::default();
    let mut model = BTreeMap::new();
    for i in 0..N {
        let key = format!("{{b}}objects/{:010}", i * 7919 % N);
        index.insert(key.as_bytes(), 1, IndexEntry::new(i + 1, 0, 0, 100, 0, false));
        model.insert(key.into_bytes(), i + 1);
    }
    let mut rng = Rng(42);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let start = format!("{{b}}objects/{:010}", rng.below(N - 2000)).into_bytes();
        let q = ListQuery {
            prefix: b"{b}objects/",
            start_after: Some(&start),
            delimiter: b"",
            limit: 1000,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        let page = index.list(1, &q, 0);
        ours.push(t.elapsed());
        let t = std::time::Instant::now();
        let want: Vec<(&Vec<u8>, &u64)> = model
            .range::<Vec<u8>, _>((std::ops::Bound::Excluded(&start), std::ops::Bound::Unbounded))
            .take(1000)
            .collect();
        theirs.push(t.elapsed());
        assert_eq!(page.items.len(), want.len());
    }
    ours.sort();
    theirs.sort();
    let pct = |v: &[std::time::Duration], p: usize| v[v.len() * p / 100];
    eprintln!(
        "1,000-key page of 1M entries: ordered view p50 {:?} p99 {:?}; BTreeMap range p50 {:?} p99 {:?}",
        pct(&ours, 50),
        pct(&ours, 99),
        pct(&theirs, 50),
        pct(&theirs, 99)
    );
}
