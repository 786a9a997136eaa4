//! `hotshard-bench device`: one queue per selected core, `qd` operations in flight on each,
//! for a fixed time; optionally fio on the same target in the same invocation.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use hotshard_nvme::{
    AnyQueue, BlockQueue, Device, DeviceKind, DeviceOptions, DmaFileQueue, Durability, SplitMix64,
    UringOptions, UringQueue,
};

use crate::fio_anchor::{run_fio, FioJob};
use crate::latency::{new_histogram, print_table, process_cpu_seconds, RunFigures};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceOp {
    Randread,
    Randwrite,
    /// Sequential writes.
    Write,
}

impl DeviceOp {
    fn fio_rw(self) -> &'static str {
        match self {
            DeviceOp::Randread => "randread",
            DeviceOp::Randwrite => "randwrite",
            DeviceOp::Write => "write",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Uring,
    Dmafile,
}

/// Everything one device run needs.
#[derive(Debug, Clone)]
pub struct DeviceRun {
    pub path: PathBuf,
    pub file_size: u64,
    pub op: DeviceOp,
    pub bs: usize,
    pub qd: usize,
    pub cores: Vec<usize>,
    pub duration: Duration,
    pub backend: Backend,
    pub uring: UringOptions,
}

struct ShardResult {
    hist: Histogram<u64>,
    errors: u64,
}

/// Opens the target, creating and zero-filling a file if it is one, and returns the
/// bytes each shard (and each fio job) works on.
pub fn prepare_target(run: &DeviceRun) -> anyhow::Result<u64> {
    if let Some(dir) = run.path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let exists = run.path.exists();
    let mut opts = DeviceOptions::new(&run.path);
    if !exists || std::fs::metadata(&run.path)?.is_file() {
        opts = opts.file_size(run.file_size).zero_fill(true);
    }
    let dev = Device::open(&opts).with_context(|| format!("opening {}", run.path.display()))?;
    if dev.info().kind == DeviceKind::NvmeCharDevice {
        bail!("NVMe char devices are not driven by the device bench yet");
    }
    let per_shard = dev.info().size / run.cores.len() as u64 / run.bs as u64 * run.bs as u64;
    if per_shard < run.bs as u64 * 16 {
        bail!(
            "target is too small: {} bytes for {} shards",
            dev.info().size,
            run.cores.len()
        );
    }
    Ok(per_shard)
}

/// Runs our queues; returns the merged figures.
pub fn run_ours(run: &DeviceRun, region: u64, label: &str) -> anyhow::Result<RunFigures> {
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let mut handles = Vec::new();
    for (shard, &core) in run.cores.iter().enumerate() {
        let run = run.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("bench-shard-{shard}"))
            .spawn(move || async move { shard_load(&run, shard, region).await })
            .map_err(|e| anyhow::anyhow!("starting a glommio executor: {e}"))?;
        handles.push(handle);
    }
    let mut hist = new_histogram();
    let mut errors = 0;
    for h in handles {
        let r = h.join().map_err(|e| anyhow::anyhow!("shard thread: {e:?}"))??;
        hist.add(&r.hist).ok();
        errors += r.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    if errors > 0 {
        bail!("{errors} I/O errors during the run");
    }
    Ok(RunFigures::from_histogram(
        label,
        &hist,
        seconds,
        run.bs,
        process_cpu_seconds() - cpu_before,
    ))
}

async fn open_queue(run: &DeviceRun) -> anyhow::Result<AnyQueue> {
    let dev = Device::open(&DeviceOptions::new(&run.path))?;
    let pool = (run.qd * run.bs * 2).max(1 << 20);
    Ok(match run.backend {
        Backend::Uring => {
            let opts = UringOptions {
                pool_bytes: pool,
                entries: (run.qd as u32).next_power_of_two().max(8),
                ..run.uring.clone()
            };
            AnyQueue::Uring(UringQueue::new(dev, &opts)?)
        }
        Backend::Dmafile => AnyQueue::DmaFile(DmaFileQueue::open(dev.info().clone(), pool).await?),
    })
}

async fn shard_load(run: &DeviceRun, shard: usize, region: u64) -> anyhow::Result<ShardResult> {
    let queue = Rc::new(open_queue(run).await?);
    if let AnyQueue::Uring(q) = &*queue {
        glommio::spawn_local(q.poller()).detach();
    }
    let hist = Rc::new(RefCell::new(new_histogram()));
    let errors = Rc::new(RefCell::new(0u64));
    let base = shard as u64 * region;
    let blocks = region / run.bs as u64;
    let next_seq = Rc::new(RefCell::new(0u64));
    let deadline = Instant::now() + run.duration;
    let mut workers = Vec::new();
    for worker in 0..run.qd {
        let (queue, hist, errors, next_seq) = (queue.clone(), hist.clone(), errors.clone(), next_seq.clone());
        let (op, bs) = (run.op, run.bs);
        let mut rng = SplitMix64::new(((shard as u64) << 32) | worker as u64);
        workers.push(glommio::spawn_local(async move {
            let mut buf = match queue.pool().alloc(bs).await {
                Ok(b) => b,
                Err(_) => {
                    *errors.borrow_mut() += 1;
                    return;
                }
            };
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (i as u64 ^ rng.next_u64()) as u8;
            }
            while Instant::now() < deadline {
                let block = match op {
                    DeviceOp::Write => {
                        let mut n = next_seq.borrow_mut();
                        *n += 1;
                        (*n - 1) % blocks
                    }
                    _ => rng.below(blocks),
                };
                let offset = base + block * bs as u64;
                let t0 = Instant::now();
                let res = match op {
                    DeviceOp::Randread => queue.read_at(offset, buf).await,
                    DeviceOp::Randwrite | DeviceOp::Write => {
                        queue.write_at(offset, buf, Durability::Volatile).await
                    }
                };
                let ns = t0.elapsed().as_nanos() as u64;
                match res {
                    Ok(b) => {
                        buf = b;
                        hist.borrow_mut().record(ns.max(1)).ok();
                    }
                    Err(e) => {
                        eprintln!("shard {shard}: {e}");
                        *errors.borrow_mut() += 1;
                        return;
                    }
                }
            }
        }));
    }
    for w in workers {
        w.await;
    }
    let hist = hist.borrow().clone();
    let errors = *errors.borrow();
    Ok(ShardResult { hist, errors })
}

/// The whole `device` subcommand: ours, then fio if asked, then the table.
pub fn device_command(run: &DeviceRun, vs_fio: bool, json: bool) -> anyhow::Result<Vec<RunFigures>> {
    let region = prepare_target(run)?;
    let label = format!("hotshard {:?}", run.backend).to_lowercase();
    let mut rows = Vec::new();
    let fio_job = FioJob {
        path: run.path.clone(),
        rw: run.op.fio_rw().into(),
        bs: run.bs,
        iodepth: run.qd,
        numjobs: run.cores.len(),
        region_bytes: region,
        runtime: run.duration,
        extra: vec![
            format!("--cpus_allowed={}", join(&run.cores)),
            "--cpus_allowed_policy=split".into(),
        ],
    };
    if vs_fio {
        if !json {
            eprintln!("fio {}", fio_job.command_line().join(" "));
        }
        rows.push(run_fio(&fio_job)?);
    }
    rows.push(run_ours(run, region, &label)?);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows, vs_fio);
    }
    Ok(rows)
}

fn join(cores: &[usize]) -> String {
    cores.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}
