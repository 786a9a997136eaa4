//! `hotshard-bench run`: one load generator for every target (hotshard, Redis, memcached),
//! thread-per-core like the node, so a comparison differs only in the server.

pub mod conn;
pub mod progress;
pub mod reply_reader;
pub mod socket;
pub mod verify;
pub mod wire;
pub mod workload;
pub mod zipf;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hotshard_net::blocking::BlockingClient;
use hotshard_net::shard_map::ShardMap;
use serde::Serialize;

use crate::latency::{new_histogram, RunFigures};
use conn::{closed_loop, open_loop_receiver, open_loop_sender, Conn, KeyName, ThreadStats};
use progress::Progress;
use reply_reader::ReplyReader;
use verify::KeyBook;
use wire::{parse_target, Answer, Protocol};
use workload::{fill_value, KeyDist, Mix, OpGen, ValueSizes};

#[derive(Debug, Clone, Serialize)]
pub struct LoadSpec {
    pub target: String,
    pub mix: Mix,
    pub keys: u64,
    /// Every key named inside this index tag (`{tag}key:...`); empty: no tag.
    pub key_tag: String,
    pub dist: KeyDist,
    pub sizes: ValueSizes,
    pub connections: usize,
    pub pipeline: usize,
    /// Closed loop: keep `pipeline` in flight instead of batches of `pipeline`.
    pub stream: bool,
    /// Open loop at this many operations per second in total.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Stop after this many operations (after warm-up) instead of after `duration`.
    pub ops: Option<u64>,
    pub warmup: Duration,
    /// Generator cores, one thread each.
    pub cores: Vec<usize>,
    pub preload: bool,
    pub verify: bool,
    pub progress: bool,
}

impl LoadSpec {
    pub fn check(&self) -> anyhow::Result<()> {
        parse_target(&self.target)?;
        anyhow::ensure!(self.keys >= 1, "--keys must be at least 1");
        anyhow::ensure!(self.connections >= 1, "--connections must be at least 1");
        anyhow::ensure!(self.pipeline >= 1, "--pipeline must be at least 1");
        anyhow::ensure!(!self.cores.is_empty(), "--cores needs at least one core");
        anyhow::ensure!(
            self.connections >= self.cores.len(),
            "{} connections cannot spread over {} generator cores",
            self.connections,
            self.cores.len()
        );
        anyhow::ensure!(
            self.sizes.max() <= 16 << 20,
            "values over 16 MiB are not supported"
        );
        if let Some(r) = self.rate {
            anyhow::ensure!(r > 0.0 && r.is_finite(), "--rate must be positive");
        }
        if self.verify {
            anyhow::ensure!(
                self.sizes.min() >= workload::TAG_BYTES,
                "--verify needs values of at least {} bytes (they carry a tag)",
                workload::TAG_BYTES
            );
        }
        Ok(())
    }

    /// A one-line description of the workload, for tables.
    pub fn describe(&self) -> String {
        let mix = &self.mix;
        let pace = match self.rate {
            Some(r) => format!("open {r:.0}/s"),
            None => "closed".into(),
        };
        format!(
            "get={} put={} del={} {:?} {:?} c{} p{} {pace}",
            mix.get, mix.put, mix.del, self.dist, self.sizes, self.connections, self.pipeline
        )
    }
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    #[serde(flatten)]
    pub figures: RunFigures,
    pub target: String,
    pub by_op: BTreeMap<String, u64>,
    pub not_found: u64,
    pub errors: BTreeMap<String, u64>,
    pub verified: u64,
    pub verify_failures: u64,
    pub first_verify_failures: Vec<String>,
    pub offered_rate: Option<f64>,
}

struct ThreadResult {
    hist: hdrhistogram::Histogram<u64>,
    by_op: BTreeMap<&'static str, u64>,
    not_found: u64,
    errors: BTreeMap<String, u64>,
    bytes: u64,
    warm_end: Instant,
    last_done: Instant,
    deadline: Instant,
    checked: u64,
    failures: u64,
    first_failures: Vec<String>,
}

/// Where requests go: the shard map's listeners, or the one address.
fn resolve(proto: Protocol, addr: &str) -> anyhow::Result<(Vec<String>, Option<ShardMap>)> {
    if proto != Protocol::Hotshard {
        return Ok((vec![addr.to_string()], None));
    }
    let client = BlockingClient::connect_with_secret(
        addr,
        Duration::from_secs(5),
        hotshard_net::auth::secret_from_env(),
    )
    .map_err(|e| anyhow::anyhow!("hotshard://{addr}: {e}"))?;
    let map = client.shard_map().clone();
    let addrs = map.shards.iter().map(|s| s.addr.clone()).collect();
    Ok((addrs, Some(map)))
}

/// Writes every key of the workload once, without measuring.
pub fn preload_target(spec: &LoadSpec) -> anyhow::Result<()> {
    spec.check()?;
    let (proto, addr) = parse_target(&spec.target)?;
    let (addrs, map) = resolve(proto, &addr)?;
    preload_on(spec, proto, addrs, map)
}

fn preload_on(
    spec: &LoadSpec,
    proto: Protocol,
    addrs: Vec<String>,
    map: Option<ShardMap>,
) -> anyhow::Result<()> {
    let spec2 = spec.clone();
    LocalExecutorBuilder::new(Placement::Fixed(spec.cores[0]))
        .name("preload")
        .spawn(move || async move { preload(&spec2, proto, &addrs, map.as_ref()).await })
        .map_err(|e| anyhow::anyhow!("preload executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("preload thread: {e:?}"))?
}

/// Runs one workload against one target.
pub fn run_load(spec: &LoadSpec) -> anyhow::Result<LoadFigures> {
    spec.check()?;
    let (proto, addr) = parse_target(&spec.target)?;
    let (addrs, map) = resolve(proto, &addr)?;
    if spec.preload {
        preload_on(spec, proto, addrs.clone(), map.clone())?;
    }
    let progress = spec.progress.then(Progress::new);
    let ticker = progress.as_ref().map(|p| p.start(spec.target.clone()));
    let cpu = crate::latency::process_cpu_seconds();
    let start = Instant::now() + Duration::from_millis(50);
    let mut handles = Vec::new();
    for (t, &core) in spec.cores.iter().enumerate() {
        let (spec2, addrs2, map2, progress2) = (spec.clone(), addrs.clone(), map.clone(), progress.clone());
        let h = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("load-{t}"))
            .spawn(
                move || async move { thread_load(&spec2, t, proto, &addrs2, map2, progress2, start).await },
            )
            .map_err(|e| anyhow::anyhow!("load executor on core {core}: {e}"))?;
        handles.push(h);
    }
    let mut results = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("load thread: {e:?}"));
            }
        }
    }
    if let (Some(p), Some(t)) = (&progress, ticker) {
        p.finish(t);
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let cpu = crate::latency::process_cpu_seconds() - cpu;
    Ok(merge(spec, results, cpu))
}

fn merge(spec: &LoadSpec, results: Vec<ThreadResult>, cpu: f64) -> LoadFigures {
    let mut hist = new_histogram();
    let mut by_op = BTreeMap::new();
    let mut errors = BTreeMap::new();
    let (mut not_found, mut bytes, mut checked, mut failures) = (0, 0, 0, 0);
    let mut first_failures = Vec::new();
    let warm_end = results.iter().map(|r| r.warm_end).min();
    let end = results
        .iter()
        .map(|r| match spec.ops {
            Some(_) => r.last_done,
            None => r.last_done.max(r.deadline),
        })
        .max();
    for r in &results {
        hist.add(&r.hist).ok();
        for (k, v) in &r.by_op {
            *by_op.entry(k.to_string()).or_insert(0) += v;
        }
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        not_found += r.not_found;
        bytes += r.bytes;
        checked += r.checked;
        failures += r.failures;
        first_failures.extend(r.first_failures.iter().cloned());
    }
    let seconds = match (warm_end, end) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => spec.duration.as_secs_f64(),
    };
    let (proto, _) = parse_target(&spec.target).expect("checked before the run");
    let label = format!("{proto:?} {}", spec.describe()).to_lowercase();
    let mut figures = RunFigures::from_histogram(&label, &hist, seconds, 0, cpu);
    figures.mb_per_s = bytes as f64 / seconds / 1e6;
    LoadFigures {
        figures,
        target: spec.target.clone(),
        by_op,
        not_found,
        errors,
        verified: checked,
        verify_failures: failures,
        first_verify_failures: first_failures,
        offered_rate: spec.rate,
    }
}

/// The keys thread `t` of `threads` may use on each listener: key k belongs to thread
/// k % threads and to the shard that owns it, so no request is forwarded.
fn key_lists(spec: &LoadSpec, t: usize, shards: usize, map: Option<&ShardMap>) -> Vec<Rc<Vec<u64>>> {
    let threads = spec.cores.len() as u64;
    let mut lists = vec![Vec::new(); shards];
    for k in (t as u64..spec.keys).step_by(threads as usize) {
        let s = match map {
            Some(m) => m
                .owner(m.partition(&KeyName::of(spec.key_tag.as_bytes(), k)))
                .and_then(|o| m.shards.iter().position(|s| s == o))
                .unwrap_or(0),
            None => 0,
        };
        lists[s.min(shards - 1)].push(k);
    }
    lists.into_iter().map(Rc::new).collect()
}

async fn connect(proto: Protocol, addr: &str) -> anyhow::Result<glommio::net::TcpStream> {
    let mut s = glommio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let (Protocol::Hotshard, Some(secret)) = (proto, hotshard_net::auth::secret_from_env()) {
        prove_secret(&mut s, &secret)
            .await
            .map_err(|e| anyhow::anyhow!("{addr}: authentication: {e}"))?;
    }
    Ok(s)
}

/// The challenge-response handshake on a fresh connection, before any load.
async fn prove_secret(s: &mut glommio::net::TcpStream, secret: &[u8]) -> anyhow::Result<()> {
    use futures_lite::AsyncWriteExt;
    use hotshard_net::codec::{access_response, encode_request};
    use hotshard_net::frame_io::read_head;
    s.write_all(&encode_request(1, &hotshard_net::Request::AuthChallenge, 0)?)
        .await?;
    let (_, header) = read_head(s).await?.ok_or_else(|| anyhow::anyhow!("closed"))?;
    let resp = access_response(&header)?;
    anyhow::ensure!(
        resp.status() == hotshard_net::Status::Ok,
        "challenge refused: {:?}",
        resp.status()
    );
    let nonce =
        hotshard_net::auth::from_hex(resp.reason.as_str()).ok_or_else(|| anyhow::anyhow!("bad challenge"))?;
    let proof = hotshard_net::auth::proof(secret, &nonce);
    s.write_all(&encode_request(
        2,
        &hotshard_net::Request::AuthProof { proof },
        0,
    )?)
    .await?;
    let (_, header) = read_head(s)
        .await?
        .ok_or_else(|| anyhow::anyhow!("closed: wrong secret?"))?;
    let status = access_response(&header)?.status();
    anyhow::ensure!(
        status == hotshard_net::Status::Ok,
        "proof refused: {status:?} (check HOTSHARD_SECRET)"
    );
    Ok(())
}

async fn thread_load(
    spec: &LoadSpec,
    t: usize,
    proto: Protocol,
    addrs: &[String],
    map: Option<ShardMap>,
    progress: Option<Arc<Progress>>,
    start: Instant,
) -> anyhow::Result<ThreadResult> {
    let threads = spec.cores.len();
    let lists = key_lists(spec, t, addrs.len(), map.as_ref());
    let map = map.map(Rc::new);
    let book = spec.verify.then(|| {
        Rc::new(RefCell::new(KeyBook::new(
            spec.keys.div_ceil(threads as u64),
            spec.preload,
        )))
    });
    let value: Rc<Vec<u8>> = Rc::new((0..spec.sizes.max().max(1)).map(|i| i as u8).collect());
    let warm_end = start + spec.warmup;
    let quota = spec
        .ops
        .map(|n| n / threads as u64 + (t == 0) as u64 * (n % threads as u64));
    let stats = Rc::new(RefCell::new(ThreadStats {
        hist: new_histogram(),
        by_op: BTreeMap::new(),
        not_found: 0,
        errors: BTreeMap::new(),
        bytes: 0,
        warm_end,
        last_done: warm_end,
        quota,
        deadline: if spec.ops.is_some() {
            start + Duration::from_secs(24 * 3600)
        } else {
            warm_end + spec.duration
        },
        progress,
    }));
    let mut zipfs: HashMap<usize, zipf::Zipf> = HashMap::new();
    let my_conns: Vec<usize> = (t..spec.connections).step_by(threads).collect();
    let mut tasks = Vec::new();
    // Listeners that take none of this thread's keys (a node of the map that heads no
    // chain: down, or joined and not yet moved up a chain) get no connection.
    let with_keys: Vec<usize> = (0..addrs.len()).filter(|&s| !lists[s].is_empty()).collect();
    anyhow::ensure!(
        !with_keys.is_empty(),
        "generator thread {t} has none of the {} keys on any listener",
        spec.keys
    );
    for (j, &c) in my_conns.iter().enumerate() {
        let shard = with_keys[j % with_keys.len()];
        let keys = lists[shard].clone();
        let z = match spec.dist {
            KeyDist::Zipfian(theta) => Some(match zipfs.get(&keys.len()) {
                Some(z) => z.clone(),
                None => {
                    let z = zipf::Zipf::new(keys.len() as u64, theta)?;
                    zipfs.insert(keys.len(), z.clone());
                    z
                }
            }),
            _ => None,
        };
        let mut gen = OpGen::new(
            &spec.mix,
            &spec.dist,
            z.as_ref(),
            &spec.sizes,
            keys.len(),
            c as u64 * 7919 + 7,
        );
        // This thread's connections on the same listener share its key list: a sequential
        // walk starts each at an even share of it.
        let on_list = my_conns.len().div_ceil(with_keys.len());
        gen.start_walk_at(j / with_keys.len() * keys.len() / on_list);
        let conn = Rc::new(RefCell::new(Conn::new(
            proto,
            map.clone(),
            keys,
            gen,
            book.clone(),
            threads as u64,
            Rc::from(spec.key_tag.as_bytes()),
            value.clone(),
            stats.clone(),
        )));
        let stream = connect(proto, &addrs[shard]).await?;
        let (r, mut w) = socket::split(stream)?;
        let mut reader = ReplyReader::new(r);
        let (pipeline, stream_mode, rate) = (spec.pipeline, spec.stream, spec.rate);
        let conns = spec.connections as f64;
        tasks.push(glommio::spawn_local(async move {
            let now = Instant::now();
            if start > now {
                glommio::timer::sleep(start - now).await;
            }
            match rate {
                None => closed_loop(&conn, &mut reader, &mut w, pipeline, stream_mode).await,
                Some(rate) => {
                    let permits = Rc::new(glommio::sync::Semaphore::new(pipeline as u64));
                    let (tx, rx) = glommio::channels::local_channel::new_unbounded();
                    let interval = Duration::from_secs_f64(conns / rate);
                    // Connections start spread over one interval, not all at once.
                    let offset = interval.mul_f64(c as f64 / conns);
                    let recv =
                        glommio::spawn_local(open_loop_receiver(conn.clone(), reader, permits.clone(), rx));
                    let sent =
                        open_loop_sender(conn.clone(), &mut w, interval, permits, tx, start + offset).await;
                    let received = recv.await;
                    sent.and(received)
                }
            }
        }));
    }
    let mut first_err = None;
    for task in tasks {
        if let Err(e) = task.await {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let s = Rc::try_unwrap(stats)
        .map_err(|_| anyhow::anyhow!("load tasks still hold the stats"))?
        .into_inner();
    let (checked, failures, first_failures) = match &book {
        Some(b) => {
            let b = b.borrow();
            (b.checked, b.failures, b.first_failures.clone())
        }
        None => (0, 0, Vec::new()),
    };
    Ok(ThreadResult {
        hist: s.hist,
        by_op: s.by_op,
        not_found: s.not_found,
        errors: s.errors,
        bytes: s.bytes,
        warm_end: s.warm_end,
        last_done: s.last_done,
        deadline: s.deadline,
        checked,
        failures,
        first_failures,
    })
}

/// An error reply that means "try later": hotshard's Busy, or a RESP `-BUSY` line.
fn is_busy(error: &str) -> bool {
    error == "Busy" || error.starts_with("-BUSY")
}

/// Appends the preload's put of key `k` to `out`: a value of the spec's size, write 1 of
/// the key in verify mode.
fn encode_preload_put(
    spec: &LoadSpec,
    proto: Protocol,
    map: Option<&ShardMap>,
    rng: &mut hotshard_nvme::SplitMix64,
    value: &mut [u8],
    k: u64,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let len = match &spec.sizes {
        ValueSizes::Fixed(n) => *n,
        s => s.min() + rng.below((s.max() - s.min() + 1) as u64) as usize,
    };
    if spec.verify {
        fill_value(k, 1, &mut value[..len]);
    } else {
        for (i, b) in value[..len].iter_mut().enumerate() {
            *b = i as u8;
        }
    }
    proto.encode(
        out,
        k,
        workload::Op::Put,
        &KeyName::of(spec.key_tag.as_bytes(), k),
        &value[..len],
        map,
    )
}

/// First pause before a preload put answered Busy goes again; it doubles up to the max.
const PRELOAD_FIRST_PAUSE: Duration = Duration::from_millis(1);
const PRELOAD_MAX_PAUSE: Duration = Duration::from_millis(100);
/// A node Busy for this long during a preload is not coming back: the run stops.
const PRELOAD_MAX_WAIT: Duration = Duration::from_secs(60);

/// Writes every key once (write number 1 in verify mode), pipelined, one connection per
/// listener; a put answered Busy is retried after a pause.
async fn preload(
    spec: &LoadSpec,
    proto: Protocol,
    addrs: &[String],
    map: Option<&ShardMap>,
) -> anyhow::Result<()> {
    let lists = {
        let mut one = spec.clone();
        one.cores = vec![0];
        key_lists(&one, 0, addrs.len(), map)
    };
    let mut tasks = Vec::new();
    for (shard, keys) in lists.into_iter().enumerate() {
        let (addr, spec, map) = (addrs[shard].clone(), spec.clone(), map.cloned());
        tasks.push(glommio::spawn_local(async move {
            let stream = connect(proto, &addr).await?;
            let (r, mut w) = socket::split(stream)?;
            let mut reader = ReplyReader::new(r);
            let mut value = vec![0u8; spec.sizes.max().max(1)];
            let mut rng = hotshard_nvme::SplitMix64::new(shard as u64);
            let mut out = Vec::new();
            for chunk in keys.chunks(128) {
                out.clear();
                for &k in chunk {
                    encode_preload_put(&spec, proto, map.as_ref(), &mut rng, &mut value, k, &mut out)?;
                }
                futures_lite::AsyncWriteExt::write_all(&mut w, &out).await?;
                let mut busy = Vec::new();
                for &k in chunk {
                    let reply = proto.read_reply(&mut reader).await?;
                    match reply.answer {
                        Answer::Error(e) if is_busy(&e) => busy.push(reply.id.unwrap_or(k)),
                        Answer::Error(e) => anyhow::bail!("preload to {addr}: {e}"),
                        _ => {}
                    }
                }
                // Busy means try later: the keys it refused go again, one at a time, with
                // a growing pause, until every one is in (or the node stays busy too long).
                for k in busy {
                    let mut pause = PRELOAD_FIRST_PAUSE;
                    let mut waited = Duration::ZERO;
                    loop {
                        out.clear();
                        encode_preload_put(&spec, proto, map.as_ref(), &mut rng, &mut value, k, &mut out)?;
                        futures_lite::AsyncWriteExt::write_all(&mut w, &out).await?;
                        match proto.read_reply(&mut reader).await?.answer {
                            Answer::Error(e) if is_busy(&e) => {}
                            Answer::Error(e) => anyhow::bail!("preload to {addr}: {e}"),
                            _ => break,
                        }
                        anyhow::ensure!(
                            waited < PRELOAD_MAX_WAIT,
                            "preload to {addr}: still Busy after {waited:?} of retries"
                        );
                        glommio::timer::sleep(pause).await;
                        waited += pause;
                        pause = (pause * 2).min(PRELOAD_MAX_PAUSE);
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}
