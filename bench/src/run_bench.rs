//! `hotshard-bench run`: the same closed-loop generator against hotshard or Redis: a fixed
//! number of connections, each sending `pipeline` requests in one write and then reading
//! their answers (as redis-benchmark -P does), GETs or durable PUTs of fixed-size values
//! over a key space that can be loaded first.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hotshard_net::client::{Client, ClientConfig};
use hotshard_net::codec::{access_response, encode_request};
use hotshard_net::frame_io::read_head;
use hotshard_net::runtime::Glommio;
use hotshard_net::{Request, Status, Target};
use hotshard_nvme::SplitMix64;

use crate::latency::{new_histogram, RunFigures};
use crate::resp::Resp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadOp {
    Get,
    Put,
}

#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: String,
    pub op: LoadOp,
    pub keys: u64,
    pub value_bytes: usize,
    pub connections: usize,
    pub pipeline: usize,
    pub duration: Duration,
    pub core: usize,
    pub preload: bool,
    /// Keep `pipeline` requests in flight at all times (a new one as each answer arrives),
    /// as fio keeps its queue depth; otherwise send `pipeline`, then wait for all of them.
    pub stream: bool,
}

fn key(i: u64) -> Vec<u8> {
    format!("key:{i:010}").into_bytes()
}

pub fn run_load(spec: &LoadSpec) -> anyhow::Result<RunFigures> {
    let spec = spec.clone();
    LocalExecutorBuilder::new(Placement::Fixed(spec.core))
        .name("load")
        .spawn(move || async move {
            if let Some(addr) = spec.target.strip_prefix("hotshard://") {
                hotshard_load(&spec, addr).await
            } else if let Some(addr) = spec.target.strip_prefix("redis://") {
                redis_load(&spec, addr).await
            } else {
                anyhow::bail!(
                    "unknown target {} (hotshard://host:port or redis://host:port)",
                    spec.target
                )
            }
        })
        .map_err(|e| anyhow::anyhow!("load executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("load thread: {e:?}"))?
}

async fn hotshard_load(spec: &LoadSpec, addr: &str) -> anyhow::Result<RunFigures> {
    let value: Vec<u8> = (0..spec.value_bytes).map(|i| i as u8).collect();
    let mut clients = Vec::new();
    for _ in 0..spec.connections {
        clients.push(Rc::new(
            Client::<Glommio>::connect(&[addr], ClientConfig::default()).await?,
        ));
    }
    if spec.preload {
        let c = clients[0].clone();
        let next = Rc::new(RefCell::new(0u64));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (c, next, value, keys) = (c.clone(), next.clone(), value.clone(), spec.keys);
            tasks.push(glommio::spawn_local(async move {
                loop {
                    let i = {
                        let mut n = next.borrow_mut();
                        *n += 1;
                        *n - 1
                    };
                    if i >= keys {
                        return Ok::<(), anyhow::Error>(());
                    }
                    c.put(&key(i), &value, None).await?;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
    }
    // The same model as the Redis target: each connection sends `pipeline` requests in one
    // write, then reads their answers. Each connection talks to one shard, with keys that
    // shard owns, so no request is forwarded.
    let map = clients[0].shard_map();
    let hist = Rc::new(RefCell::new(new_histogram()));
    let deadline = Instant::now() + spec.duration;
    let started = Instant::now();
    let cpu = crate::latency::process_cpu_seconds();
    let mut tasks = Vec::new();
    for ci in 0..spec.connections {
        let shard = ci % map.shards.len().max(1);
        let addr = map
            .shards
            .get(shard)
            .map(|s| s.addr.clone())
            .unwrap_or_else(|| addr.to_string());
        let owned: Vec<u64> = (0..spec.keys)
            .filter(|k| {
                map.owner(map.partition(&key(*k)))
                    .is_some_and(|o| o.shard as usize == shard)
            })
            .collect();
        anyhow::ensure!(
            !owned.is_empty(),
            "shard {shard} owns none of the {} keys",
            spec.keys
        );
        let (hist, value, spec, map) = (hist.clone(), value.clone(), spec.clone(), map.clone());
        let mut rng = SplitMix64::new(ci as u64 + 7);
        tasks.push(glommio::spawn_local(async move {
            let stream = glommio::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            stream.set_nodelay(true).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (r, mut w) = futures_lite::io::split(stream);
            let mut r = futures_lite::io::BufReader::with_capacity(256 << 10, r);
            let mut out = Vec::new();
            let mut id = 0u64;
            let mut body = vec![0u8; spec.value_bytes.max(1 << 16)];
            let mut next_request = |out: &mut Vec<u8>, rng: &mut SplitMix64| -> anyhow::Result<()> {
                let k = key(owned[rng.below(owned.len() as u64) as usize]);
                let target = Target {
                    partition: map.partition(&k),
                    epoch: map.epoch,
                };
                id += 1;
                match spec.op {
                    LoadOp::Get => out.extend(encode_request(
                        id,
                        &Request::Get {
                            key: k,
                            range: None,
                            target,
                        },
                        0,
                    )?),
                    LoadOp::Put => {
                        out.extend(encode_request(
                            id,
                            &Request::Put {
                                key: k,
                                if_version: None,
                                target,
                            },
                            value.len(),
                        )?);
                        out.extend_from_slice(&value);
                    }
                }
                Ok(())
            };
            let mut sent_at = std::collections::VecDeque::new();
            let mut first = true;
            while Instant::now() < deadline || (spec.stream && !sent_at.is_empty()) {
                out.clear();
                let refill = if first || !spec.stream { spec.pipeline } else { 1 };
                first = false;
                if Instant::now() < deadline {
                    for _ in 0..refill {
                        next_request(&mut out, &mut rng)?;
                        sent_at.push_back(Instant::now());
                    }
                    futures_lite::AsyncWriteExt::write_all(&mut w, &out).await?;
                }
                let answers = if spec.stream { 1 } else { spec.pipeline };
                for _ in 0..answers.min(sent_at.len()) {
                    let (pre, header) = read_head(&mut r)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("server closed"))?;
                    let status = access_response(&header)?.status();
                    anyhow::ensure!(status == Status::Ok, "{:?} answered {status:?}", spec.op);
                    let len = pre.payload_len as usize;
                    anyhow::ensure!(len <= body.len(), "payload of {len} bytes");
                    futures_lite::AsyncReadExt::read_exact(&mut r, &mut body[..len]).await?;
                    if spec.op == LoadOp::Get {
                        anyhow::ensure!(len == spec.value_bytes, "get returned {len} bytes");
                    }
                    let t0 = sent_at.pop_front().expect("one per request");
                    hist.borrow_mut()
                        .record(t0.elapsed().as_nanos().max(1) as u64)
                        .ok();
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    finish("hotshard", spec, tasks, &hist, started, cpu).await
}

/// Waits for the load tasks and turns the histogram into figures.
async fn finish(
    target: &str,
    spec: &LoadSpec,
    tasks: Vec<glommio::Task<anyhow::Result<()>>>,
    hist: &RefCell<hdrhistogram::Histogram<u64>>,
    started: Instant,
    cpu: f64,
) -> anyhow::Result<RunFigures> {
    for t in tasks {
        t.await?;
    }
    let label = format!("{target} {:?} c{} p{}", spec.op, spec.connections, spec.pipeline).to_lowercase();
    let seconds = started.elapsed().as_secs_f64();
    let cpu = crate::latency::process_cpu_seconds() - cpu;
    Ok(RunFigures::from_histogram(
        &label,
        &hist.borrow(),
        seconds,
        spec.value_bytes,
        cpu,
    ))
}

async fn redis_load(spec: &LoadSpec, addr: &str) -> anyhow::Result<RunFigures> {
    let value: Vec<u8> = (0..spec.value_bytes).map(|i| i as u8).collect();
    if spec.preload {
        let mut r = Resp::connect(addr).await?;
        let mut i = 0;
        while i < spec.keys {
            let n = (spec.keys - i).min(256);
            let mut out = Vec::new();
            for j in i..i + n {
                Resp::encode_set(&mut out, &key(j), &value);
            }
            r.send(&out).await?;
            for _ in 0..n {
                r.reply().await?;
            }
            i += n;
        }
    }
    let hist = Rc::new(RefCell::new(new_histogram()));
    let deadline = Instant::now() + spec.duration;
    let started = Instant::now();
    let cpu = crate::latency::process_cpu_seconds();
    let mut tasks = Vec::new();
    for ci in 0..spec.connections {
        let (hist, value, spec, addr) = (hist.clone(), value.clone(), spec.clone(), addr.to_string());
        let mut rng = SplitMix64::new(ci as u64 + 7);
        tasks.push(glommio::spawn_local(async move {
            let mut r = Resp::connect(&addr).await?;
            let mut out = Vec::new();
            while Instant::now() < deadline {
                // Like redis-benchmark -P: send `pipeline` commands, then read their replies.
                out.clear();
                for _ in 0..spec.pipeline {
                    let k = key(rng.below(spec.keys));
                    match spec.op {
                        LoadOp::Get => Resp::encode_get(&mut out, &k),
                        LoadOp::Put => Resp::encode_set(&mut out, &k, &value),
                    }
                }
                let t0 = Instant::now();
                r.send(&out).await?;
                for _ in 0..spec.pipeline {
                    let len = r.reply().await?;
                    if spec.op == LoadOp::Get {
                        anyhow::ensure!(len == spec.value_bytes as i64, "redis GET returned {len} bytes");
                    }
                    hist.borrow_mut()
                        .record(t0.elapsed().as_nanos().max(1) as u64)
                        .ok();
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    finish("redis", spec, tasks, &hist, started, cpu).await
}
