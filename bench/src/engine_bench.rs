//! `hotshard-bench engine`: the storage engine without any network. Durable 4 KiB puts
//! from concurrent writers, uncached 4 KiB gets at a queue depth, recovery time, and the
//! index's memory per object; each beside its fio anchor from the same invocation.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use glommio::{LocalExecutorBuilder, Placement};
use hotshard_node::store::index::{Index, IndexEntry};
use hotshard_node::store::{RecoveryReport, Store, StoreConfig};
use hotshard_nvme::{Device, DeviceOptions, SplitMix64, UringOptions, UringQueue};
use serde::Serialize;

use crate::fio_anchor::{run_fio, FioJob};
use crate::latency::{new_histogram, print_table, process_cpu_seconds, RunFigures};

#[derive(Debug, Clone)]
pub struct EngineRun {
    pub path: PathBuf,
    pub size: u64,
    pub objects: u64,
    pub value_bytes: usize,
    pub writers: usize,
    pub readers: usize,
    pub duration: Duration,
    pub recovery_objects: u64,
    pub recovery_value_bytes: usize,
    pub index_objects: Vec<u64>,
    pub core: usize,
    pub vs_fio: bool,
}

#[derive(Debug, Serialize)]
struct RecoveryFigures {
    objects: usize,
    bytes_scanned: u64,
    seconds: f64,
    fio_seq_read_seconds: Option<f64>,
}

fn store_config(size: u64, cache: usize) -> StoreConfig {
    let mut cfg = StoreConfig::new(0, size);
    cfg.cache_bytes = cache;
    cfg
}

/// Opens the device's queue, starts its poller on this executor, and opens the store.
async fn open_store(path: &PathBuf, size: u64) -> anyhow::Result<(Store<UringQueue>, RecoveryReport)> {
    let dev = Device::open(&DeviceOptions::new(path))?;
    let queue = UringQueue::new(
        dev,
        &UringOptions {
            pool_bytes: 128 << 20,
            entries: 512,
            ..UringOptions::default()
        },
    )?;
    glommio::spawn_local(queue.poller()).detach();
    Ok(Store::open(queue, store_config(size, 0)).await?)
}

fn key(i: u64) -> Vec<u8> {
    format!("obj-{i:012}").into_bytes()
}

/// Writes `objects` values with `writers` concurrent writers; returns the put figures.
async fn load(
    store: &Store<UringQueue>,
    objects: u64,
    value_bytes: usize,
    writers: usize,
    label: &str,
) -> anyhow::Result<RunFigures> {
    let hist = Rc::new(RefCell::new(new_histogram()));
    let next = Rc::new(RefCell::new(0u64));
    let value: Rc<[u8]> = (0..value_bytes).map(|i| (i * 7) as u8).collect::<Vec<_>>().into();
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, hist, next, value) = (store.clone(), hist.clone(), next.clone(), value.clone());
        tasks.push(glommio::spawn_local(async move {
            loop {
                let i = {
                    let mut n = next.borrow_mut();
                    if *n >= objects {
                        return Ok::<(), anyhow::Error>(());
                    }
                    *n += 1;
                    *n - 1
                };
                let t0 = Instant::now();
                store
                    .put(&key(i), 0, &value, None)
                    .await
                    .with_context(|| format!("put {i}"))?;
                hist.borrow_mut()
                    .record(t0.elapsed().as_nanos().max(1) as u64)
                    .ok();
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let h = hist.borrow();
    Ok(RunFigures::from_histogram(
        label,
        &h,
        secs,
        value_bytes,
        process_cpu_seconds() - cpu,
    ))
}

async fn read_load(
    store: &Store<UringQueue>,
    objects: u64,
    readers: usize,
    duration: Duration,
    value_bytes: usize,
) -> anyhow::Result<RunFigures> {
    let hist = Rc::new(RefCell::new(new_histogram()));
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for r in 0..readers {
        let (store, hist) = (store.clone(), hist.clone());
        let mut rng = SplitMix64::new(r as u64 + 1);
        tasks.push(glommio::spawn_local(async move {
            while Instant::now() < deadline {
                let i = rng.below(objects);
                let t0 = Instant::now();
                let (v, _) = store
                    .get(&key(i), None)
                    .await
                    .with_context(|| format!("get {i}"))?;
                if v.len() != value_bytes {
                    bail!("get {i} returned {} bytes", v.len());
                }
                hist.borrow_mut()
                    .record(t0.elapsed().as_nanos().max(1) as u64)
                    .ok();
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let h = hist.borrow();
    Ok(RunFigures::from_histogram(
        "hotshard get (no cache)",
        &h,
        secs,
        value_bytes,
        process_cpu_seconds() - cpu,
    ))
}

fn fresh_target(path: &PathBuf, size: u64) -> anyhow::Result<()> {
    if path.exists() && std::fs::metadata(path)?.is_file() {
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    Device::open(&DeviceOptions::new(path).file_size(size).zero_fill(true))?;
    Ok(())
}

/// Index memory per object for `n` keys like the bench's, measured two ways: the
/// structure's own heap accounting and the process's resident-set growth.
pub fn index_memory(n: u64) -> IndexFigures {
    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut idx = Index::default();
    let mut key_bytes = 0u64;
    for i in 0..n {
        let k = key(i);
        key_bytes += k.len() as u64;
        idx.insert(
            &k,
            (i % 4096) as u16,
            IndexEntry::new(
                i + 1,
                (i / 4096) as u32,
                (i % 4096) as u32 * 4096,
                4096,
                i as u32,
                false,
            ),
        );
    }
    let insert_seconds = started.elapsed().as_secs_f64();
    let rss_after = rss_bytes();
    let figures = IndexFigures {
        insert_ns_per_object: insert_seconds * 1e9 / n as f64,
        objects: n,
        key_bytes_avg: key_bytes as f64 / n as f64,
        heap_bytes_per_object: idx.heap_bytes() as f64 / n as f64,
        rss_bytes_per_object: rss_after.saturating_sub(rss_before) as f64 / n as f64,
    };
    drop(idx);
    figures
}

/// Index memory per object.
#[derive(Debug, Serialize, Clone)]
pub struct IndexFigures {
    pub objects: u64,
    pub insert_ns_per_object: f64,
    pub key_bytes_avg: f64,
    pub heap_bytes_per_object: f64,
    pub rss_bytes_per_object: f64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

pub fn engine_command(run: &EngineRun, json: bool) -> anyhow::Result<()> {
    // 1. Durable puts and uncached gets on a fresh store.
    fresh_target(&run.path, run.size)?;
    let r = run.clone();
    let (puts, gets) = on_core(run.core, move || async move {
        let (store, _) = open_store(&r.path, r.size).await?;
        let puts = load(
            &store,
            r.objects,
            r.value_bytes,
            r.writers,
            &format!("hotshard put x{}", r.writers),
        )
        .await?;
        let gets = read_load(&store, r.objects, r.readers, r.duration, r.value_bytes).await?;
        Ok((puts, gets))
    })?;
    let mut rows = Vec::new();
    let region = run.size;
    if run.vs_fio {
        let put_anchor = run_fio(&FioJob {
            path: run.path.clone(),
            rw: "write".into(),
            bs: 4096,
            iodepth: 1,
            numjobs: 1,
            region_bytes: region,
            runtime: run.duration,
            extra: vec!["--fdatasync=1".into(), format!("--cpus_allowed={}", run.core)],
        })?;
        let get_anchor = run_fio(&FioJob {
            path: run.path.clone(),
            rw: "randread".into(),
            bs: 4096,
            iodepth: run.readers,
            numjobs: 1,
            region_bytes: region,
            runtime: run.duration,
            extra: vec![format!("--cpus_allowed={}", run.core)],
        })?;
        rows.push(RunFigures {
            label: "fio write+fdatasync QD1".into(),
            ..put_anchor
        });
        rows.push(puts.clone());
        rows.push(RunFigures {
            label: format!("fio randread QD{}", run.readers),
            ..get_anchor
        });
        rows.push(gets.clone());
    } else {
        rows.push(puts.clone());
        rows.push(gets.clone());
    }
    if !json {
        print_table(&rows, false);
        if run.vs_fio {
            println!(
                "ratio put ops/s: hotshard {} writers / fio fdatasync QD1 = {:.2}",
                run.writers,
                rows[1].iops / rows[0].iops
            );
            println!(
                "ratio get ops/s: hotshard (no cache) / fio randread QD{} = {:.3}",
                run.readers,
                rows[3].iops / rows[2].iops
            );
        }
    }

    // 2. Recovery of many small objects.
    let mut recovery = None;
    if run.recovery_objects > 0 {
        fresh_target(&run.path, run.size)?;
        let r = run.clone();
        let (report, scanned) = on_core(run.core, move || async move {
            {
                let (store, _) = open_store(&r.path, r.size).await?;
                load(&store, r.recovery_objects, r.recovery_value_bytes, 256, "load").await?;
            }
            let (store, report) = open_store(&r.path, r.size).await?;
            if report.objects as u64 != r.recovery_objects {
                bail!("recovered {} objects of {}", report.objects, r.recovery_objects);
            }
            let scanned = report.bytes_scanned;
            drop(store);
            Ok((report, scanned))
        })?;
        let fio_secs = if run.vs_fio && scanned > 0 {
            let f = run_fio(&FioJob {
                path: run.path.clone(),
                rw: "read".into(),
                bs: 1 << 20,
                iodepth: 4,
                numjobs: 1,
                region_bytes: scanned,
                runtime: Duration::ZERO,
                extra: vec![],
            })?;
            Some(f.seconds)
        } else {
            None
        };
        if !json {
            println!(
                "recovery: {} objects, {:.1} MB scanned in {:.3} s{}",
                report.objects,
                scanned as f64 / 1e6,
                report.seconds,
                fio_secs.map_or(String::new(), |f| format!(
                    "; fio sequential read of the same bytes {f:.3} s; ratio {:.2}",
                    report.seconds / f
                ))
            );
        }
        recovery = Some(RecoveryFigures {
            objects: report.objects,
            bytes_scanned: scanned,
            seconds: report.seconds,
            fio_seq_read_seconds: fio_secs,
        });
    }

    // 3. Index memory per object.
    let mut index = Vec::new();
    for &n in &run.index_objects {
        let f = index_memory(n);
        if !json {
            println!(
                "index: {} objects, keys {:.0} B: {:.1} B/object by structure ({:.1} + key), {:.1} B/object by RSS; {:.0} ns per insert",
                f.objects,
                f.key_bytes_avg,
                f.heap_bytes_per_object,
                f.heap_bytes_per_object - f.key_bytes_avg,
                f.rss_bytes_per_object,
                f.insert_ns_per_object
            );
        }
        index.push(f);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "rows": rows, "recovery": recovery, "index": index })
            )?
        );
    }
    Ok(())
}

/// Runs `f` on a glommio executor pinned to `core`, with the queue's poller.
fn on_core<T, F, Fut>(core: usize, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>> + 'static,
{
    LocalExecutorBuilder::new(Placement::Fixed(core))
        .name("bench-engine")
        .spawn(f)
        .map_err(|e| anyhow::anyhow!("starting a glommio executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("engine thread: {e:?}"))?
}
