//! The nemesis runs' workload and checks, shared by the loopback runs
//! (`chain_nemesis.rs`) and the network-namespace runs (`cluster_bed_nemesis.rs`): clients
//! write unique values to a few keys and read them, every operation recorded with its
//! invocation and response times and what it returned; each key's history is checked for
//! linearizability, and the serving replicas of every key must agree at the end. A few of
//! the keys share an index tag, so they live in one partition's ordered view, and are also
//! listed (issue 33): a listing is a read of every key it passes, checked by the digest of
//! the value it shows.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::linearizability::{check, Event, Op};
use hotshard_net::blocking::BlockingClient;
use hotshard_net::client::ClientError;
use hotshard_net::{Request, Status, Target};
use hotshard_nvme::SplitMix64;
use hotshard_placement::ReplicaState;

/// Keys placed by their own hash (spread so that every node heads some).
pub const KEYS: usize = 6;
/// Keys of one index tag after them, read by GETs and by listings of their prefix.
pub const LISTED: usize = 3;
/// Every key of a run.
pub const ALL_KEYS: usize = KEYS + LISTED;
pub const CLIENTS: u64 = 4;

/// Operations by key, and how writes ended.
#[derive(Default)]
pub struct History {
    pub by_key: Vec<Vec<Event>>,
    /// Per key, for each read answered: its call time, and the replica and map epoch it
    /// was answered from (printed beside a violating history).
    pub read_from: Vec<std::collections::HashMap<u64, String>>,
    pub acked: usize,
    pub unknown: usize,
    pub refused: usize,
    pub reads: usize,
    /// Listings answered.
    pub lists: usize,
}

/// A refusal that wrote nothing: the write is left out of the history.
pub fn definitely_not_applied(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::NoOwner(_) => true,
        ClientError::Status(s) => matches!(
            s,
            Status::Busy
                | Status::WrongShard { .. }
                | Status::NoSpace
                | Status::TooLarge
                | Status::BadRequest { .. }
                | Status::Unauthorized
        ),
        _ => false,
    }
}

/// `KEYS` keys of `run`, as many headed by each node as `KEYS` allows (so that a fault on any node
/// hits writes in flight).
pub fn keys(seed: &str, run: &str) -> Vec<Vec<u8>> {
    let map = BlockingClient::connect(seed, Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    let nodes: Vec<u32> = {
        let mut n: Vec<u32> = map.shards.iter().map(|s| s.node).collect();
        n.dedup();
        n
    };
    let per_node = KEYS.div_ceil(nodes.len());
    let mut chosen = Vec::new();
    for node in nodes {
        let headed = (0..1_000_000)
            .map(|i| format!("{run}-{i}").into_bytes())
            .filter(|k| map.owner(map.partition(k)).is_some_and(|o| o.node == node));
        chosen.extend(headed.take(per_node));
    }
    chosen.truncate(KEYS);
    assert_eq!(
        chosen.len(),
        KEYS,
        "the map of {seed} does not give every node partitions"
    );
    chosen.extend((0..LISTED).map(|i| format!("{}{i}", listed_prefix(run)).into_bytes()));
    chosen
}

/// The prefix the listed keys of `run` share: their index tag and a slash.
pub fn listed_prefix(run: &str) -> String {
    format!("{{{run}-index}}/")
}

/// One listing of the listed keys (`keys[KEYS..]`): per key, the digest of the value it
/// shows (None: not shown); None if the listing failed (it then shows nothing). A page that
/// is not a plain listing of those keys reads as values nobody wrote (the check fails).
fn list_once(cl: &mut BlockingClient, keys: &[Vec<u8>]) -> Option<Vec<Option<u32>>> {
    let listed = &keys[KEYS..];
    let prefix = &listed[0][..listed[0].len() - 1];
    let args = hotshard_net::client::ListArgs {
        index: &listed[0],
        prefix,
        start_after: None,
        delimiter: b"",
        limit: 100,
        start_at: None,
    };
    let page = cl.list(args).ok()?;
    let (items, more) = (page.items, page.next.is_some());
    let mut seen = vec![None; listed.len()];
    for item in items {
        let place = match &item {
            hotshard_net::listing::ListItem::Key { key, .. } => listed.iter().position(|k| k == key),
            hotshard_net::listing::ListItem::Prefix(_) => None,
        };
        match (place, item) {
            (Some(i), hotshard_net::listing::ListItem::Key { crc32c, .. }) => seen[i] = Some(crc32c),
            (_, other) => {
                eprintln!("a listing of the listed keys showed {other:?}");
                return Some(vec![Some(u32::MAX); listed.len()]);
            }
        }
    }
    if more {
        eprintln!("a listing of {} keys said more follow", listed.len());
        return Some(vec![Some(u32::MAX); listed.len()]);
    }
    Some(seen)
}

/// What one client did: its operations by key index, and its counts of writes
/// acknowledged, unknown and refused, of reads answered and of listings answered.
pub type ClientRecord = (Vec<(usize, Event)>, [usize; 5], Vec<(usize, u64, String)>);

pub struct Workload {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<ClientRecord>>,
}

/// Clients writing unique values to and reading `keys` through any of `seeds`.
pub fn workload(keys: Vec<Vec<u8>>, seeds: Vec<String>) -> Workload {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients = (0..CLIENTS)
        .map(|c| {
            let (stop, seeds, keys) = (stop.clone(), seeds.clone(), keys.clone());
            std::thread::spawn(move || {
                let now = || started.elapsed().as_micros() as u64;
                let mut rng = SplitMix64::new(c * 7919 + 1);
                let mut events = Vec::new();
                let mut read_from = Vec::new();
                let mut counts = [0usize; 5];
                let mut client = None;
                let mut written = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if client.is_none() {
                        let seed = &seeds[rng.next_u64() as usize % seeds.len()];
                        client = BlockingClient::connect(seed, Duration::from_secs(5)).ok();
                        if client.is_none() {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                    let cl = client.as_mut().unwrap();
                    let k = rng.next_u64() as usize % ALL_KEYS;
                    let call = now();
                    if k >= KEYS && rng.next_u64().is_multiple_of(3) {
                        // A failed listing shows nothing.
                        let Some(seen) = list_once(cl, &keys) else {
                            continue;
                        };
                        counts[4] += 1;
                        let ret = now();
                        for (i, d) in seen.into_iter().enumerate() {
                            read_from.push((
                                KEYS + i,
                                call,
                                format!("list at {} e{}", cl.last_addr(), cl.shard_map().epoch),
                            ));
                            events.push((
                                KEYS + i,
                                Event {
                                    op: Op::Listed(d),
                                    call,
                                    ret: Some(ret),
                                },
                            ));
                        }
                        continue;
                    }
                    if rng.next_u64().is_multiple_of(2) {
                        written += 1;
                        let value = (c + 1) << 32 | written;
                        match cl.put(&keys[k], value.to_string().as_bytes()) {
                            Ok(_) => {
                                counts[0] += 1;
                                events.push((
                                    k,
                                    Event {
                                        op: Op::Put(value),
                                        call,
                                        ret: Some(now()),
                                    },
                                ));
                            }
                            Err(e) if definitely_not_applied(&e) => counts[2] += 1,
                            Err(_) => {
                                counts[1] += 1;
                                events.push((
                                    k,
                                    Event {
                                        op: Op::Put(value),
                                        call,
                                        ret: None,
                                    },
                                ));
                            }
                        }
                    } else {
                        // A failed read shows nothing.
                        if let Ok(found) = cl.get(&keys[k], None) {
                            counts[3] += 1;
                            read_from.push((
                                k,
                                call,
                                format!("{} e{}", cl.last_addr(), cl.shard_map().epoch),
                            ));
                            let seen =
                                found.map(|(v, _)| std::str::from_utf8(&v).unwrap().parse::<u64>().unwrap());
                            events.push((
                                k,
                                Event {
                                    op: Op::Get(seen),
                                    call,
                                    ret: Some(now()),
                                },
                            ));
                        }
                    }
                }
                (events, counts, read_from)
            })
        })
        .collect();
    Workload { stop, clients }
}

impl Workload {
    pub fn finish(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let mut h = History {
            by_key: vec![Vec::new(); ALL_KEYS],
            read_from: vec![Default::default(); ALL_KEYS],
            ..History::default()
        };
        for c in self.clients {
            let (events, counts, read_from) = c.join().unwrap();
            for (k, e) in events {
                h.by_key[k].push(e);
            }
            for (k, call, from) in read_from {
                h.read_from[k].insert(call, from);
            }
            h.acked += counts[0];
            h.unknown += counts[1];
            h.refused += counts[2];
            h.reads += counts[3];
            h.lists += counts[4];
        }
        h
    }
}

/// Keys whose history no order explains; each one's history is printed (by call time).
pub fn violations(h: &History) -> Vec<usize> {
    let bad: Vec<usize> = (0..ALL_KEYS).filter(|&k| !check(&h.by_key[k], None)).collect();
    for &k in &bad {
        let mut events = h.by_key[k].clone();
        events.sort_by_key(|e| e.call);
        let text: String = events
            .iter()
            .map(|e| {
                let ret = e.ret.map_or("unknown".into(), |r| r.to_string());
                let from = h.read_from.get(k).and_then(|m| m.get(&e.call));
                let from = from.map_or(String::new(), |f| format!("  from {f}"));
                format!("{:>10} .. {:>10}  {:?}{from}\n", e.call, ret, e.op)
            })
            .collect();
        // Named by the test (its thread's name) and the process, so that another test's
        // history (the planted bug's, found on purpose) does not overwrite this one.
        let test = std::thread::current()
            .name()
            .unwrap_or("test")
            .rsplit("::")
            .next()
            .unwrap_or("test")
            .to_string();
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("history-{test}-{}-key{k}.txt", std::process::id()));
        let _ = std::fs::write(&path, text);
        eprintln!(
            "key {k}: not linearizable; its {} operations (µs, by call) are in {}",
            events.len(),
            path.display()
        );
    }
    bad
}

/// A second detector beside the histories, for writes that reach fewer replicas than
/// their acknowledgement says: one client writes `keys` in turn (only it writes them) and,
/// after each acknowledged write, reads the key at every serving replica of its chain by
/// its map of the moment. A replica that answers Ok with an older version than the one
/// just acknowledged is a stale read however the clients' reads happen to fall (the
/// workload's few keys are read at a given replica only now and then).
pub struct ReadEverywhere {
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<(usize, Vec<String>)>>,
}

impl ReadEverywhere {
    /// `writers` clients, each writing its own share of `keys` (a write held up somewhere
    /// holds up only its own client).
    pub fn start(seeds: Vec<String>, keys: Vec<Vec<u8>>, writers: usize) -> ReadEverywhere {
        let stop = Arc::new(AtomicBool::new(false));
        let writers = (0..writers)
            .map(|w| {
                let (flag, seeds) = (stop.clone(), seeds.clone());
                let mine: Vec<Vec<u8>> = keys.iter().skip(w).step_by(writers).cloned().collect();
                std::thread::spawn(move || write_and_read_everywhere(&flag, &seeds, &mine))
            })
            .collect();
        ReadEverywhere { stop, writers }
    }

    /// Stops it: the writes checked, and each stale read found.
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut checked, mut stale) = (0, Vec::new());
        for w in self.writers {
            let (c, s) = w.join().unwrap();
            checked += c;
            stale.extend(s);
        }
        (checked, stale)
    }
}

/// One `ReadEverywhere` client: writes `keys` in turn until `stop`, each acknowledged write
/// read back at every serving replica; the writes checked and the stale reads found.
fn write_and_read_everywhere(stop: &AtomicBool, seeds: &[String], keys: &[Vec<u8>]) -> (usize, Vec<String>) {
    let (mut checked, mut stale) = (0usize, Vec::new());
    let mut client = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && !keys.is_empty() {
        n += 1;
        let Some(c) = client.as_mut() else {
            client = connect_some(seeds, n as usize);
            continue;
        };
        let key = &keys[n as usize % keys.len()];
        let Ok(version) = c.put(key, n.to_string().as_bytes()) else {
            client = None;
            continue;
        };
        let map = c.shard_map().clone();
        for (addr, status, held, _) in held_by_replicas(c, &map, key) {
            if status == Status::Ok && held < version {
                stale.push(format!(
                    "{} at {addr} (map epoch {}): version {held} answered after {version} was acknowledged",
                    String::from_utf8_lossy(key),
                    map.epoch
                ));
            }
        }
        checked += 1;
    }
    (checked, stale)
}

/// Stops `everywhere` and fails the run `run` if it found a stale read or checked too few
/// writes to mean anything.
pub fn assert_read_everywhere(run: &str, everywhere: ReadEverywhere) {
    let (checked, stale) = everywhere.finish();
    eprintln!("{run}: {checked} writes read back at every serving replica");
    assert!(checked > 100, "{run}: too few writes read back to mean anything");
    assert!(
        stale.is_empty(),
        "{run}: stale reads after acknowledged writes:\n{}",
        stale.join("\n")
    );
}

/// A third detector, for writes in flight: writers write `keys` in turn while readers read
/// each key at every serving replica of its chain, one replica after another, without
/// pause. Once a reader has been answered a version of a key, no replica may answer it an
/// older one later: a replica answers only a version the chain has (CRAQ: a dirty key
/// waits), and versions of a key only grow. Reading while the writes are on their way is
/// what finds a replica that lets a write it holds be read before the replicas after it
/// have it (the histories sample that window only now and then).
pub struct ReadsInFlight {
    stop: Arc<AtomicBool>,
    found: Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<JoinHandle<(usize, Vec<String>)>>,
}

impl ReadsInFlight {
    /// `clients` writers and as many readers, each pair on its own share of `keys`.
    pub fn start(seeds: Vec<String>, keys: Vec<Vec<u8>>, clients: usize) -> ReadsInFlight {
        let stop = Arc::new(AtomicBool::new(false));
        let found = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut threads = Vec::new();
        for w in 0..clients {
            let mine: Vec<Vec<u8>> = keys.iter().skip(w).step_by(clients).cloned().collect();
            let (flag, seeds_w, keys_w) = (stop.clone(), seeds.clone(), mine.clone());
            threads.push(std::thread::spawn(move || {
                (write_in_turn(&flag, &seeds_w, &keys_w), Vec::new())
            }));
            let (flag, seeds_r, found) = (stop.clone(), seeds.clone(), found.clone());
            threads.push(std::thread::spawn(move || {
                read_while_written(&flag, &found, &seeds_r, &mine)
            }));
        }
        ReadsInFlight { stop, found, threads }
    }

    /// Stale reads found so far.
    pub fn found(&self) -> usize {
        self.found.load(Ordering::Relaxed)
    }

    /// Stops it: writes acknowledged and reads answered, and each stale read found.
    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut n, mut stale) = (0, Vec::new());
        for t in self.threads {
            let (c, s) = t.join().unwrap();
            n += c;
            stale.extend(s);
        }
        (n, stale)
    }
}

/// Connects to one of `seeds` (the `n`th, round), or None.
fn connect_some(seeds: &[String], n: usize) -> Option<BlockingClient> {
    let c = BlockingClient::connect(&seeds[n % seeds.len()], Duration::from_secs(5)).ok();
    if c.is_none() {
        std::thread::sleep(Duration::from_millis(50));
    }
    c
}

/// Writes `keys` in turn until `stop`; the writes acknowledged.
fn write_in_turn(stop: &AtomicBool, seeds: &[String], keys: &[Vec<u8>]) -> usize {
    let (mut acked, mut n, mut client) = (0, 0usize, None);
    while !stop.load(Ordering::Relaxed) && !keys.is_empty() {
        n += 1;
        let Some(c) = client.as_mut() else {
            client = connect_some(seeds, n);
            continue;
        };
        match c.put(&keys[n % keys.len()], n.to_string().as_bytes()) {
            Ok(_) => acked += 1,
            Err(_) => client = None,
        }
    }
    acked
}

/// Reads `keys` at every serving replica until `stop`; the reads answered Ok, and each
/// older version answered after a newer one.
fn read_while_written(
    stop: &AtomicBool,
    found: &std::sync::atomic::AtomicUsize,
    seeds: &[String],
    keys: &[Vec<u8>],
) -> (usize, Vec<String>) {
    let (mut answered, mut stale, mut n, mut client) = (0, Vec::new(), 0usize, None);
    let mut newest: Vec<(u64, String)> = vec![(0, String::new()); keys.len()];
    while !stop.load(Ordering::Relaxed) && !keys.is_empty() {
        n += 1;
        let Some(c) = client.as_mut() else {
            client = connect_some(seeds, n);
            continue;
        };
        if n % 16 == 0 {
            let _ = c.refresh_map();
        }
        let map = c.shard_map().clone();
        let k = n % keys.len();
        // Replicas in chain order from a different one each time (the head's read of a
        // key in flight waits for it; the ones after it are where a write shows early).
        let mut held = held_by_replicas_from(c, &map, &keys[k], n / keys.len());
        held.retain(|h| h.1 == Status::Ok);
        for (addr, status, held, _) in held {
            if status != Status::Ok {
                continue;
            }
            answered += 1;
            let (seen, seen_at) = &newest[k];
            if held < *seen {
                found.fetch_add(1, Ordering::Relaxed);
                stale.push(format!(
                    "{} at {addr} (map epoch {}): version {held} after {seen} was answered at {seen_at}",
                    String::from_utf8_lossy(&keys[k]),
                    map.epoch
                ));
            } else if held > *seen {
                newest[k] = (held, addr);
            }
        }
    }
    (answered, stale)
}

/// `n` keys of `run` for `ReadEverywhere`, spread over partitions by their hash.
pub fn read_everywhere_keys(run: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{run}-everywhere-{i}").into_bytes())
        .collect()
}

/// Every serving replica of each of `keys` holds the same version and value, by the newest
/// map any of `seeds` answers with.
pub fn replicas_agree(seeds: &[String], keys: &[Vec<u8>]) {
    let mut c = seeds
        .iter()
        .filter_map(|a| BlockingClient::connect(a, Duration::from_secs(2)).ok())
        .max_by_key(|c| c.shard_map().epoch)
        .filter(|c| c.shard_map().epoch >= 1)
        .expect("a node with the cluster's map");
    for key in keys {
        // A replica whose node has not yet adopted the newest map answers WrongShard (or
        // Busy, while it waits for it): a map in transit, not a difference in data. Wait
        // for the adoption (bounded), then compare.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let held = loop {
            let map = c.shard_map().clone();
            let held = held_by_replicas(&mut c, &map, key);
            let in_transit = held
                .iter()
                .any(|h| matches!(h.1, Status::WrongShard { .. } | Status::Busy));
            if !in_transit || std::time::Instant::now() > deadline {
                break held;
            }
            std::thread::sleep(Duration::from_millis(50));
            let _ = c.refresh_map();
        };
        assert!(
            held.windows(2)
                .all(|w| (w[0].1.clone(), w[0].2, &w[0].3) == (w[1].1.clone(), w[1].2, &w[1].3)),
            "replicas of {} differ: {held:?}",
            String::from_utf8_lossy(key)
        );
    }
}

pub fn report(run: &str, h: &History) {
    eprintln!(
        "{run}: {} writes acknowledged, {} unknown, {} refused; {} reads, {} listings",
        h.acked, h.unknown, h.refused, h.reads, h.lists
    );
}

/// What every serving replica of `key`'s chain by `map` answers to a GET sent to it
/// directly: its address, status, version and value.
pub fn held_by_replicas(
    c: &mut BlockingClient,
    map: &hotshard_placement::ShardMap,
    key: &[u8],
) -> Vec<(String, Status, u64, Vec<u8>)> {
    held_by_replicas_from(c, map, key, 0)
}

/// `held_by_replicas`, asked in chain order from the `start`th serving replica (round).
pub fn held_by_replicas_from(
    c: &mut BlockingClient,
    map: &hotshard_placement::ShardMap,
    key: &[u8],
    start: usize,
) -> Vec<(String, Status, u64, Vec<u8>)> {
    let partition = map.partition(key);
    let chain = map.chain(partition).expect("the key's chain");
    let mut serving: Vec<String> = chain
        .replicas
        .iter()
        .filter(|r| r.state == ReplicaState::Serving)
        .map(|r| map.shards[r.shard as usize].addr.clone())
        .collect();
    if !serving.is_empty() {
        let by = start % serving.len();
        serving.rotate_left(by);
    }
    serving
        .into_iter()
        .map(|addr| {
            let get = Request::Get {
                key: key.to_vec(),
                range: None,
                target: Target {
                    partition,
                    epoch: map.epoch,
                },
            };
            // A replica that cannot be reached right now reads as Busy (asked again).
            match c.call_at(&addr, &get, &[]) {
                Ok((resp, body)) => (addr, resp.status(), resp.version, body),
                Err(_) => (addr, Status::Busy, 0, Vec::new()),
            }
        })
        .collect()
}

/// Ends a nemesis run: stops `load`, reports it as `run`, and checks that it meant
/// something (enough acknowledged writes), that every key's history is linearizable
/// (printing `logs` if not) and that the serving replicas agree.
pub fn verify_run(
    run: &str,
    load: Workload,
    seeds: &[String],
    keys: &[Vec<u8>],
    logs: impl FnOnce(&[Vec<u8>]) -> String,
) -> History {
    let h = load.finish();
    report(run, &h);
    assert!(h.acked > 100, "too few acknowledged writes to mean anything");
    let bad = violations(&h);
    if !bad.is_empty() {
        let bad_keys: Vec<Vec<u8>> = bad.iter().map(|&k| keys[k].clone()).collect();
        panic!("{run}: keys {bad:?} not linearizable\n{}", logs(&bad_keys));
    }
    replicas_agree(seeds, keys);
    h
}
