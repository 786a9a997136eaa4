//! `hotshard serve`: lock the data, size the device, split it into one region per shard,
//! build the shard map and the shard-to-shard channels, then start one pinned glommio
//! executor per shard and wait for SIGINT or SIGTERM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement};
use hotshard_nvme::{Device, DeviceOptions};
use hotshard_placement::shard_map::{ShardAddr, ShardMap};

use crate::config::{NodeConfig, DEFAULT_DATA_CAP_BYTES};
use crate::data_lock::DataLock;
use crate::peers::mesh;
use crate::shard::{run_shard, ShardSetup};
use crate::store::format::{Superblock, SEGMENTS_START};

/// Blocks SIGINT and SIGTERM in this thread (and the threads it starts) and sets `flag`
/// from a dedicated thread when one arrives. A second one ends the process at once
/// (status 128 + signal): the drain can take up to its 10 s deadline, and every
/// acknowledged write is already durable, so an impatient operator loses nothing.
fn watch_signals(flag: Arc<AtomicBool>) {
    // SAFETY: plain signal-mask calls on a sigset we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!(
                "hotshard: signal {sig}: stopping (finishing requests in flight; a second signal exits now)"
            );
            flag.store(true, Ordering::Relaxed);
            libc::sigwait(&set, &mut sig);
            eprintln!("hotshard: signal {sig} again: exiting without waiting for requests in flight");
            std::process::exit(128 + sig);
        });
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: statvfs fills the struct we own from a valid C path.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) == 0 {
            st.f_bavail as u64 * st.f_frsize as u64
        } else {
            0
        }
    }
}

/// Refuses to start when the data was written by a different number of shards, before
/// any shard opens (and a new one formats) its region: regions are cut from the device by
/// shard count, so another count would lay new regions over existing data, and keys would
/// be looked for on shards that never stored them (acknowledged writes answering NotFound).
fn check_shard_count(device: &std::path::Path, shards: usize) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(device).map_err(|e| format!("reading {}: {e}", device.display()))?;
    let mut head = vec![0u8; SEGMENTS_START as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("reading {}: {e}", device.display()))?;
    let written_by = Superblock::decode_copies(&head)
        .into_iter()
        .find_map(|copy| copy.ok().flatten())
        .map(|sb| sb.shard_count as usize);
    match written_by {
        Some(n) if n != shards => Err(format!(
            "the data in {} was written by {n} shard(s) and this configuration runs {shards} \
             (node.cores): start with {n} cores, or give this configuration its own data_dir",
            device.display()
        )),
        _ => Ok(()),
    }
}

/// The device to use, created (zero-filled) if it is a new data file.
fn prepare_device(cfg: &NodeConfig) -> Result<(PathBuf, u64), String> {
    if let Some(dev) = &cfg.node.device {
        let d = Device::open(&DeviceOptions::new(dev)).map_err(|e| e.to_string())?;
        return Ok((dev.clone(), d.info().size));
    }
    let path = cfg.node.data_dir.join("data.img");
    let size = if path.exists() {
        std::fs::metadata(&path).map_err(|e| e.to_string())?.len()
    } else if cfg.node.data_bytes > 0 {
        cfg.node.data_bytes
    } else {
        (free_bytes(&cfg.node.data_dir) / 4).min(DEFAULT_DATA_CAP_BYTES)
    };
    let size = size / (1 << 20) * (1 << 20);
    if size < 64 << 20 {
        return Err(format!(
            "not enough space for data in {} ({size} bytes)",
            cfg.node.data_dir.display()
        ));
    }
    let d = Device::open(&DeviceOptions::new(&path).file_size(size).zero_fill(true))
        .map_err(|e| e.to_string())?;
    Ok((path, d.info().size))
}

/// A panic anywhere in the node is a bug (nothing from the network or the disk may cause
/// one). It ends the process at once, status 101, after the usual message: otherwise the
/// process stays up with a dead shard, its clients time out, and the main thread waits
/// for that shard for ever (seen in session 5). Every acknowledged write is durable, so a
/// supervisor's restart loses nothing.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::exit(101);
    }));
}

/// Starts the `[s3]` gateway if it has an address; returns what the start-up line says of it.
fn start_s3_gateway(cfg: &NodeConfig, host: &str) -> Result<String, String> {
    let s3 = &cfg.s3;
    if s3.listen.is_empty() {
        return Ok(String::new());
    }
    let configured = s3.access_key.clone().zip(s3.secret_key.clone());
    let (credentials, from) = hotshard_s3::credentials::resolve(
        configured,
        |k| std::env::var(k).ok(),
        std::path::Path::new(&cfg.node.data_dir),
    )
    .map_err(|e| format!("the S3 gateway's keys: {e}"))?;
    let gateway = hotshard_s3::GatewayConfig {
        listen: s3.listen.parse().map_err(|e| format!("s3.listen: {e}"))?,
        backend: hotshard_s3::backend::BackendConfig {
            seeds: vec![format!("{host}:{}", cfg.node.base_port)],
            client: hotshard_net::client::ClientConfig {
                timeout: std::time::Duration::from_secs(10),
                secret: cfg.secret()?,
            },
            threads: s3.threads,
        },
        credentials: credentials.clone(),
        chunk_bytes: s3.chunk_kib << 10,
        http_threads: s3.threads,
        sweep_every: std::time::Duration::from_secs(s3.sweep_every_secs),
        orphan_after: std::time::Duration::from_secs(s3.orphan_after_secs),
    };
    let addr = hotshard_s3::spawn_gateway(gateway).map_err(|e| {
        format!(
            "the S3 port {}: {e} (set s3.listen, or \"\" to turn it off)",
            s3.listen
        )
    })?;
    let keys = match from {
        hotshard_s3::KeysFrom::Config => "keys from the config".to_string(),
        hotshard_s3::KeysFrom::Environment => "keys from the environment".to_string(),
        hotshard_s3::KeysFrom::Generated(p) | hotshard_s3::KeysFrom::File(p) => {
            format!(
                "access key {}, both keys in {}",
                credentials.access_key,
                p.display()
            )
        }
    };
    Ok(format!(", S3 on http://{addr} ({keys})"))
}

pub fn serve(mut cfg: NodeConfig) -> Result<(), String> {
    exit_on_panic();
    hotshard_nvme::memlock::ensure_memlock()?;
    let _lock = DataLock::acquire(&cfg.node.data_dir)?;
    let (device, size) = prepare_device(&cfg)?;
    let cores = cfg.shard_cores();
    let shards = cores.len();
    check_shard_count(&device, shards)?;
    if let Some(warning) = crate::fd_limit::raise_open_files_limit(shards, cfg.net.max_connections) {
        eprintln!("hotshard: warning: {warning}");
    }
    let region = size / shards as u64 / 4096 * 4096;
    let cluster = cfg.cluster.enabled();
    if cluster {
        // In a cluster the node is who its data says it is.
        cfg.node.node_id = crate::node_identity::load_or_create(&cfg.node.data_dir)?;
    }
    let host = if cluster {
        cfg.advertised_host()
    } else {
        cfg.node.listen.clone()
    };
    let shard_addrs: Vec<ShardAddr> = (0..shards)
        .map(|i| ShardAddr {
            node: cfg.node.node_id,
            shard: i as u32,
            addr: format!("{host}:{}", cfg.node.base_port as usize + i),
        })
        .collect();
    // In a cluster: what the node registers, and the board its shards take maps from.
    let mut record = None;
    let (map, board) = if cluster {
        record = Some(hotshard_cluster::registration::NodeRecord {
            id: cfg.node.node_id,
            addr: shard_addrs[0].addr.clone(),
            shards: shard_addrs.iter().map(|s| s.addr.clone()).collect(),
            lease: 0,
        });
        (
            ShardMap::unassigned(cfg.node.partition_bits, shard_addrs),
            // Fenced at half the lease: before the coordinator could give its chains away.
            Some(Arc::new(crate::map_cell::MapBoard::fencing_after(
                std::time::Duration::from_millis(cfg.cluster.lease_ttl_secs as u64 * 500),
            ))),
        )
    } else {
        // The embedded coordinator: this node owns every partition, spread over its shards.
        (ShardMap::spread(1, cfg.node.partition_bits, shard_addrs), None)
    };
    // The RESP port: checked free here, then each shard binds a socket of its own on it.
    let resp = match cfg.node.resp_port {
        0 => None,
        port => {
            let addr = format!("{}:{port}", cfg.node.listen);
            crate::listener::Listener::check_free(&addr).map_err(|e| {
                format!("the RESP port {addr}: {e} (set node.resp_port, or 0 to turn it off)")
            })?;
            Some(addr)
        }
    };
    // The S3 gateway: its port bound now (a port in use stops the start), its clients
    // reaching the shards once they listen.
    let s3_note = start_s3_gateway(&cfg, &host)?;
    let shutdown = Arc::new(AtomicBool::new(false));
    watch_signals(shutdown.clone());

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel();
    let listening = Arc::new(crate::shard::StartGate::default());
    let mut executors = Vec::new();
    for ((index, core), peers) in cores.iter().copied().enumerate().zip(mesh(shards)) {
        let setup = ShardSetup {
            index,
            cfg: cfg.clone(),
            device: device.clone(),
            region_offset: index as u64 * region,
            region_bytes: region,
            map: map.clone(),
            shard_count: shards,
            board: board.clone(),
            peers,
            resp: resp.clone(),
            shutdown: shutdown.clone(),
            ready: ready_tx.clone(),
            listening: listening.clone(),
            stopped: stopped_tx.clone(),
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(core))
            .name(&format!("shard-{index}"))
            .spawn(move || run_shard(setup))
            .map_err(|e| format!("starting shard {index} on core {core}: {e}"))?;
        executors.push(handle);
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(msg)) => println!("{msg}"),
            Ok(Err(e)) => failed = Some(e),
            Err(_) => break,
        }
    }
    if let Some(e) = failed {
        shutdown.store(true, Ordering::Relaxed);
        for h in executors {
            let _ = h.join();
        }
        return Err(e);
    }
    let control = match (record, &board) {
        (Some(record), Some(board)) => Some(crate::control_plane::start(
            &cfg,
            record,
            board.clone(),
            shutdown.clone(),
        )?),
        _ => None,
    };
    let resp_note = match cfg.node.resp_port {
        0 => String::new(),
        port => format!(", Redis protocol on {}:{port}", cfg.node.listen),
    };
    println!(
        "hotshard serving {shards} shards on {}:{}..{}{resp_note}{s3_note}, data in {} ({} MB); Ctrl-C stops",
        cfg.node.listen,
        cfg.node.base_port,
        cfg.node.base_port as usize + shards - 1,
        device.display(),
        size >> 20
    );
    drop(stopped_tx);
    // Every acknowledged write is already durable (FUA or a covering flush), so once each
    // shard has drained its requests the process may end; the executors' detached tasks
    // (pollers, GC, idle connections) end with it.
    for _ in 0..shards {
        if stopped_rx.recv().is_err() {
            return Err("a shard stopped without draining (see the log above)".into());
        }
    }
    // The control thread revokes the node's lease once it sees the stop, so that the
    // cluster takes this node's replicas out of their chains at once.
    if let Some(control) = control {
        let _ = control.join();
    }
    println!("hotshard stopped");
    Ok(())
}
