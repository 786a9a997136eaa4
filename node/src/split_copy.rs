//! Splits of a bucket index (issue 33), at the replicas of the chain a range moves to
//! (`hotshard_placement::index_split` has the states):
//! - copying and fenced: each replica in the new chain's write path lists the range at the
//!   old chain's head, page by page, and copies every key whose version it lacks (a GET
//!   there, kept with its version). A replica that is also in the old chain keeps what it
//!   copies in the old partition (it answers for the range there until the move); the
//!   others keep it in the new one. The fenced pass names the fencing map's epoch, so the
//!   old head answers it only once it refuses the range's writes and every write begun
//!   before has finished; that pass also removes what the old range no longer has. Each
//!   pass done is reported (etcd, through the control thread), and the coordinator moves
//!   the split on once every writer of the new chain has reported it.
//! - moved: a replica that kept keys of the range in another partition moves them into
//!   the new one at the same version (`Store::rehome`), once after every start; until then
//!   it answers no listing of the range (Busy).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hotshard_net::{ListStart, Request, Status, Target};
use hotshard_nvme::BlockQueue;
use hotshard_placement::index_split::{source_partition, split_end};
use hotshard_placement::{IndexSplit, ShardMap, SplitState};

use crate::chain_view::ChainPlace;
use crate::map_cell::MapBoard;
use crate::shard_handler::ShardHandler;
use crate::store::ordered::{ListQuery, Listed};

/// How often a shard looks for split work.
const LOOK_EVERY: Duration = Duration::from_millis(100);
/// Keys a page of the old head's listing holds.
const PAGE: u32 = 1000;
/// Keys fetched from the old head at once.
const KEYS_AT_ONCE: usize = 16;
/// Local writes (gathering or dropping a range) in flight at once.
const WRITES_AT_ONCE: usize = 64;
/// How long one call to the old head may take.
const CALL_LIMIT: Duration = Duration::from_secs(5);

/// A shard's split progress and counters.
#[derive(Default)]
pub struct SplitProgress {
    /// (split, state) passes done and reported since the shard started.
    reported: RefCell<HashSet<(u64, SplitState)>>,
    /// Moved splits whose range this shard has gathered into the new partition since it
    /// started.
    rehomed: RefCell<HashSet<u64>>,
    /// Moved splits whose range this shard (in the old chain only) has dropped.
    dropped: RefCell<HashSet<u64>>,
    /// When this shard last looked for a bucket index past its size, and last asked.
    looked: Cell<Option<Instant>>,
    asked: Cell<Option<Instant>>,
    pub passes: Cell<u64>,
    pub keys_copied: Cell<u64>,
    pub keys_rehomed: Cell<u64>,
    pub keys_removed: Cell<u64>,
}

impl SplitProgress {
    /// Whether this shard may list the range a moved split made (it has gathered it).
    pub fn listable(&self, split: u64) -> bool {
        self.rehomed.borrow().contains(&split)
    }
}

/// What a shard has to do for a split next.
enum Work {
    Copy {
        split: IndexSplit,
        source: u32,
        end: Option<Vec<u8>>,
        /// The old chain's head: its listener.
        head: String,
        epoch: u64,
        /// This shard is in the old chain's write path too.
        in_source: bool,
    },
    Gather {
        split: IndexSplit,
        source: u32,
        end: Option<Vec<u8>>,
    },
    /// A moved range left behind in the old partition by a replica of the old chain only:
    /// its space is given back.
    Drop {
        split: IndexSplit,
        source: u32,
        end: Option<Vec<u8>>,
    },
}

fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// Runs for the shard's life in a cluster (`keep_syncing`'s neighbour).
    pub async fn keep_splitting(
        self: Rc<Self>,
        board: Arc<MapBoard>,
        shutdown: Arc<std::sync::atomic::AtomicBool>,
    ) {
        while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            self.ask_for_splits(&board);
            let work = self.split_work();
            if work.is_empty() {
                glommio::timer::sleep(LOOK_EVERY).await;
                continue;
            }
            for w in work {
                let (id, state) = match &w {
                    Work::Copy { split, .. } => (split.id, split.state),
                    Work::Gather { split, .. } | Work::Drop { split, .. } => (split.id, SplitState::Moved),
                };
                match self.do_split_work(&w).await {
                    Ok(()) => match w {
                        Work::Copy { .. } => {
                            self.splits.reported.borrow_mut().insert((id, state));
                            let me = self.my_address();
                            board.report_split_done((id, me.0, me.1, state));
                        }
                        Work::Gather { .. } => {
                            self.splits.rehomed.borrow_mut().insert(id);
                        }
                        Work::Drop { .. } => {
                            self.splits.dropped.borrow_mut().insert(id);
                        }
                    },
                    Err(why) => {
                        tracing::info!(
                            split = id,
                            state = state.name(),
                            "split pass: {why}; trying again"
                        );
                        glommio::timer::sleep(LOOK_EVERY * 5).await;
                    }
                }
            }
        }
    }

    /// Split progress for metrics: passes, keys copied, gathered and removed, and the
    /// split work the current map leaves this shard (0 once every split is copied, gathered
    /// or dropped here).
    pub(crate) fn render_split_metrics(&self, l: &str) -> String {
        let sp = &self.splits;
        format!(
            "hotshard_split_passes_total{{{l}}} {}\nhotshard_split_keys_copied_total{{{l}}} {}\n\
             hotshard_split_keys_gathered_total{{{l}}} {}\nhotshard_split_keys_removed_total{{{l}}} {}\n\
             hotshard_split_work_pending{{{l}}} {}\n",
            sp.passes.get(),
            sp.keys_copied.get(),
            sp.keys_rehomed.get(),
            sp.keys_removed.get(),
            self.split_work().len()
        )
    }

    fn my_address(&self) -> (u32, u32) {
        (self.node_id, self.shard as u32)
    }

    /// The split passes due here by the current map.
    fn split_work(&self) -> Vec<Work> {
        let map: Rc<ShardMap> = self.map.borrow().clone();
        if map.splits.is_empty() {
            return Vec::new();
        }
        let bits = map.partition_bits;
        let mine = |p: u32| {
            ChainPlace::of(&map, p, self.node_id, self.shard)
                .takes_writes()
                .is_some()
        };
        let mut work = Vec::new();
        for s in &map.splits {
            let source = source_partition(&map.splits, s, bits);
            let end = split_end(&map.splits, s).map(<[u8]>::to_vec);
            if !mine(s.partition) {
                if s.state == SplitState::Moved
                    && mine(source)
                    && !self.splits.dropped.borrow().contains(&s.id)
                {
                    work.push(Work::Drop {
                        split: s.clone(),
                        source,
                        end,
                    });
                }
                continue;
            }
            match s.state {
                SplitState::Moved => {
                    if !self.splits.rehomed.borrow().contains(&s.id) {
                        work.push(Work::Gather {
                            split: s.clone(),
                            source,
                            end,
                        });
                    }
                }
                state => {
                    if self.splits.reported.borrow().contains(&(s.id, state)) {
                        continue;
                    }
                    let Some(head) = map.owner(source) else { continue };
                    work.push(Work::Copy {
                        split: s.clone(),
                        source,
                        end,
                        head: head.addr.clone(),
                        epoch: map.epoch,
                        in_source: mine(source),
                    });
                }
            }
        }
        work
    }

    async fn do_split_work(self: &Rc<Self>, work: &Work) -> Result<(), String> {
        match work {
            Work::Copy {
                split,
                source,
                end,
                head,
                epoch,
                in_source,
            } => {
                add(&self.splits.passes, 1);
                let keep_in = if *in_source { *source } else { split.partition };
                self.copy_range(split, *source, end.as_deref(), head, *epoch, keep_in as u16)
                    .await
            }
            Work::Gather { split, source, end } => {
                self.gather_range(split, *source as u16, end.as_deref()).await
            }
            Work::Drop { split, source, end } => {
                let none = HashSet::new();
                self.remove_gone(split, *source as u16, end.as_deref(), &none)
                    .await
            }
        }
    }

    /// One pass of a split's copy (see the module's comment).
    async fn copy_range(
        self: &Rc<Self>,
        split: &IndexSplit,
        source: u32,
        end: Option<&[u8]>,
        head: &str,
        epoch: u64,
        keep_in: u16,
    ) -> Result<(), String> {
        let fenced = split.state == SplitState::Fenced;
        let prefix = tag_prefix(&split.tag);
        let mut theirs: HashSet<Vec<u8>> = HashSet::new();
        let mut start = ListStart::At(split.from.clone());
        loop {
            let request = Request::List {
                index: start.key().to_vec(),
                target: Target {
                    partition: source,
                    epoch,
                },
                prefix: prefix.clone(),
                start: Some(start.clone()),
                delimiter: Vec::new(),
                limit: PAGE,
            };
            let (response, page) = self
                .links
                .call(head, &request, &[], CALL_LIMIT)
                .await
                .map_err(|e| format!("listing at {head}: {e:?}"))?;
            if response.status() != Status::Ok {
                return Err(format!("listing at {head}: {:?}", response.status()));
            }
            let (items, _) = hotshard_net::listing::decode_page_resuming(&page)?;
            let mut fetches = Vec::new();
            let mut last = None;
            for item in items {
                let hotshard_net::listing::ListItem::Key {
                    key, version, crc32c, ..
                } = item
                else {
                    continue;
                };
                if end.is_some_and(|e| &key[..] >= e) {
                    break;
                }
                last = Some(key.clone());
                let mine = self.store.manifest_entry(&key);
                let have = mine.as_ref().is_some_and(|m| {
                    !m.tombstone && (m.version > version || (m.version == version && m.crc32c == crc32c))
                });
                if fenced {
                    theirs.insert(key.clone());
                }
                if have {
                    continue;
                }
                let (me, head) = (self.clone(), head.to_string());
                fetches.push(glommio::spawn_local(async move {
                    me.copy_key(key, source, epoch, &head, keep_in).await
                }));
                if fetches.len() == KEYS_AT_ONCE {
                    for f in fetches.drain(..) {
                        f.await?;
                    }
                }
            }
            for f in fetches {
                f.await?;
            }
            match (response.arg, last) {
                (1, Some(last)) => start = ListStart::After(last),
                _ => break,
            }
        }
        if fenced {
            // Both partitions: a replica that left the old chain may still keep keys of the
            // range there that the range has since lost; they would be gathered later.
            self.remove_gone(split, keep_in, end, &theirs).await?;
            if keep_in != source as u16 {
                self.remove_gone(split, source as u16, end, &theirs).await?;
            }
        }
        Ok(())
    }

    /// Copies one key from the old head and keeps it with its version in `keep_in`.
    async fn copy_key(
        &self,
        key: Vec<u8>,
        source: u32,
        epoch: u64,
        head: &str,
        keep_in: u16,
    ) -> Result<(), String> {
        let get = Request::Get {
            key: key.clone(),
            range: None,
            target: Target {
                partition: source,
                epoch,
            },
        };
        let (response, value) = self
            .links
            .call(head, &get, &[], CALL_LIMIT)
            .await
            .map_err(|e| format!("get at {head}: {e:?}"))?;
        match response.status() {
            Status::Ok => {}
            // Deleted since it was listed: the fenced pass settles it.
            Status::NotFound => return Ok(()),
            other => return Err(format!("get at {head}: {other:?}")),
        }
        self.store
            .apply_versioned_expiring(&key, keep_in, Some(&value), response.version, response.expires_ms)
            .await
            .map_err(|e| format!("store: {e}"))?;
        add(&self.splits.keys_copied, 1);
        Ok(())
    }

    /// The fenced pass's end: keys of the range kept here in `keep_in` that the old range
    /// no longer has (deleted after an earlier pass copied them) get a tombstone, at a
    /// version past the one kept.
    async fn remove_gone(
        self: &Rc<Self>,
        split: &IndexSplit,
        keep_in: u16,
        end: Option<&[u8]>,
        theirs: &HashSet<Vec<u8>>,
    ) -> Result<(), String> {
        let prefix = tag_prefix(&split.tag);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let q = ListQuery {
                prefix: &prefix,
                start_after: after.as_deref(),
                limit: PAGE as usize,
                start_at: Some(&split.from),
                end,
                ..Default::default()
            };
            let page = self.store.list_watching(keep_in, &q, |_| {});
            let gone: Vec<(Vec<u8>, u64)> = page
                .items
                .iter()
                .filter_map(|item| match item {
                    Listed::Key(key, stat) if !theirs.contains(key) => Some((key.clone(), stat.version)),
                    _ => None,
                })
                .collect();
            let removed = self
                .each_at_once(gone, move |me, key, version| async move {
                    me.store
                        .apply_versioned(&key, keep_in, None, version + 1)
                        .await
                        .map_err(|e| format!("store: {e}"))
                })
                .await?;
            add(&self.splits.keys_removed, removed);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(()),
            }
        }
    }

    /// A moved split's range, kept here in the old partition (this shard was in both
    /// chains), moved into the new one.
    async fn gather_range(
        self: &Rc<Self>,
        split: &IndexSplit,
        source: u16,
        end: Option<&[u8]>,
    ) -> Result<(), String> {
        let prefix = tag_prefix(&split.tag);
        let to = split.partition as u16;
        if source == to {
            return Ok(());
        }
        loop {
            let q = ListQuery {
                prefix: &prefix,
                limit: PAGE as usize,
                start_at: Some(&split.from),
                end,
                ..Default::default()
            };
            let page = self.store.list_watching(source, &q, |_| {});
            if page.items.is_empty() {
                return Ok(());
            }
            let keys: Vec<(Vec<u8>, u64)> = page
                .items
                .iter()
                .filter_map(|item| match item {
                    Listed::Key(key, stat) => Some((key.clone(), stat.version)),
                    _ => None,
                })
                .collect();
            let moved = self
                .each_at_once(keys, move |me, key, _| async move {
                    me.store.rehome(&key, to).await.map_err(|e| format!("store: {e}"))
                })
                .await?;
            add(&self.splits.keys_rehomed, moved);
            if moved == 0 {
                // Live keys that would not move (expired ones): nothing more to gather.
                return Ok(());
            }
        }
    }

    /// Runs `f` on each key (with its version), `WRITES_AT_ONCE` at a time, so that their
    /// durable writes share group-commit batches (one at a time, gathering 50,000 keys
    /// took 80 s); returns how many `f` said it wrote.
    async fn each_at_once<F, Fut>(self: &Rc<Self>, keys: Vec<(Vec<u8>, u64)>, f: F) -> Result<u64, String>
    where
        F: Fn(Rc<Self>, Vec<u8>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<bool, String>> + 'static,
    {
        let mut wrote = 0;
        let mut tasks = Vec::with_capacity(WRITES_AT_ONCE);
        for (key, version) in keys {
            tasks.push(glommio::spawn_local(f(self.clone(), key, version)));
            if tasks.len() == WRITES_AT_ONCE {
                for t in tasks.drain(..) {
                    wrote += u64::from(t.await?);
                }
            }
        }
        for t in tasks {
            wrote += u64::from(t.await?);
        }
        Ok(wrote)
    }
}

/// Called with each key of a walk; false stops it.
type KeyVisitor<'a> = Box<dyn FnMut(&[u8]) -> bool + 'a>;

/// How often a head looks for a bucket index past `cluster.split_entries`.
const SIZE_LOOK_EVERY: Duration = Duration::from_secs(5);
/// How long after asking for a split a shard asks for another.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// Asks for a split of the largest bucket index in a partition this shard heads once
    /// the partition holds more than `split_entries` of its keys, at its middle key (only
    /// with no split under way).
    fn ask_for_splits(&self, board: &MapBoard) {
        let limit = self.split_entries as usize;
        let now = Instant::now();
        if limit == 0
            || self
                .splits
                .looked
                .get()
                .is_some_and(|t| now - t < SIZE_LOOK_EVERY)
            || self.splits.asked.get().is_some_and(|t| now - t < ASK_AGAIN_AFTER)
        {
            return;
        }
        self.splits.looked.set(Some(now));
        let map: Rc<ShardMap> = self.map.borrow().clone();
        if hotshard_placement::index_split::in_progress(&map.splits).is_some() {
            return;
        }
        for p in 0..map.chains.len() as u32 {
            let heads = matches!(
                ChainPlace::of(&map, p, self.node_id, self.shard),
                ChainPlace::Serving { is_head: true, .. }
            );
            if !heads || self.store.ordered_in_partition(p as u16) <= limit {
                continue;
            }
            if let Some(from) = self.split_point(&map, p, limit) {
                tracing::info!(partition = p, at = %String::from_utf8_lossy(&from), "a bucket index past its size: asking for a split");
                board.ask_split(from);
                self.splits.asked.set(Some(now));
                return;
            }
        }
    }

    /// The middle key of the largest bucket index `partition` holds (counting only keys
    /// the map places there), if it holds more than `limit`.
    fn split_point(&self, map: &ShardMap, partition: u32, limit: usize) -> Option<Vec<u8>> {
        let sp = partition as u16;
        let walk = |prefix: &[u8], mut each: KeyVisitor<'_>| {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let q = ListQuery {
                    prefix,
                    start_after: after.as_deref(),
                    limit: 10_000,
                    ..Default::default()
                };
                let page = self.store.list_watching(sp, &q, |_| {});
                for item in &page.items {
                    if let Listed::Key(k, _) = item {
                        if map.partition(k) == partition && !each(k) {
                            return;
                        }
                    }
                }
                match page.next {
                    Some(n) => after = Some(n),
                    None => return,
                }
            }
        };
        let mut counts: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
        walk(
            b"{",
            Box::new(|k| {
                if let Some(tag) = hotshard_placement::index_split::leading_tag(k) {
                    *counts.entry(tag.to_vec()).or_default() += 1;
                }
                true
            }),
        );
        let (tag, n) = counts.into_iter().max_by_key(|(_, n)| *n)?;
        if n <= limit {
            return None;
        }
        let mut seen = 0;
        let mut middle = None;
        walk(
            &tag_prefix(&tag),
            Box::new(|k| {
                seen += 1;
                if seen > n / 2 {
                    middle = Some(k.to_vec());
                    return false;
                }
                true
            }),
        );
        middle
    }
}

/// `{tag}`: the prefix every key of a split index begins with.
fn tag_prefix(tag: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(tag.len() + 2);
    p.push(b'{');
    p.extend_from_slice(tag);
    p.push(b'}');
    p
}
