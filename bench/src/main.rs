//! `hotshard-bench`: the benchmark harness. Every figure is printed beside an anchor
//! measured in the same invocation (fio for the device).

mod device_bench;
mod duration_arg;
mod engine_bench;
mod fio_anchor;
mod latency;
mod ping_bench;
mod resp;
mod run_bench;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use device_bench::{device_command, Backend, DeviceOp, DeviceRun};
use hotshard_nvme::UringOptions;

#[derive(Parser)]
#[command(name = "hotshard-bench", version, about = "hotshard benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive one device queue per core and report IOPS, MB/s and latency percentiles.
    Device(DeviceArgs),
    /// Drive one shard's storage engine without any network.
    Engine(EngineArgs),
    /// Loopback Ping round trip through the protocol against a plain TCP ping-pong.
    Ping(PingArgs),
    /// Closed-loop load against hotshard://host:port or redis://host:port (same generator).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// One or more targets, run one after the other and printed side by side.
    #[arg(long, required = true)]
    target: Vec<String>,
    #[arg(long, value_enum, default_value_t = run_bench::LoadOp::Get)]
    op: run_bench::LoadOp,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pipeline: usize,
    #[arg(long, default_value = "10s", value_parser = duration_arg::parse_duration)]
    duration: Duration,
    /// Core the generator runs on (keep it off the server's cores).
    #[arg(long, default_value_t = 1)]
    core: usize,
    /// Write every key once before measuring.
    #[arg(long)]
    preload: bool,
    /// hotshard target: keep the pipeline full (fio-like queue depth) instead of batches.
    #[arg(long)]
    stream: bool,
}

#[derive(clap::Args)]
struct PingArgs {
    #[arg(long, default_value = "5s", value_parser = duration_arg::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    #[arg(long, default_value_t = 1)]
    client_core: usize,
}

#[derive(clap::Args)]
struct EngineArgs {
    /// File or block device; a file is recreated and zero-filled for each phase.
    #[arg(long, default_value = "hotshard-data/engine.img")]
    path: PathBuf,
    #[arg(long, default_value_t = 2 << 30)]
    size: u64,
    /// Objects written by the put phase and read by the get phase.
    #[arg(long, default_value_t = 200_000)]
    objects: u64,
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// Concurrent writers in the put phase.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Concurrent readers (queue depth) in the get phase.
    #[arg(long, default_value_t = 32)]
    readers: usize,
    /// Length of the get phase and of each fio anchor.
    #[arg(long, default_value = "10s", value_parser = duration_arg::parse_duration)]
    duration: Duration,
    /// Objects written for the recovery measurement (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    recovery_objects: u64,
    #[arg(long, default_value_t = 64)]
    recovery_value_bytes: usize,
    /// Object counts for the index memory measurement.
    #[arg(long, value_delimiter = ',', default_value = "1000000,10000000")]
    index_objects: Vec<u64>,
    #[arg(long, default_value_t = 0)]
    core: usize,
    #[arg(long)]
    vs_fio: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct DeviceArgs {
    /// File, partition or block device. A file is created and zero-filled if missing.
    #[arg(long, default_value = "hotshard-data/bench.img")]
    path: PathBuf,
    /// Size of the file to create.
    #[arg(long, default_value_t = 1 << 30)]
    size: u64,
    #[arg(long, value_enum, default_value_t = DeviceOp::Randread)]
    op: DeviceOp,
    /// Block size in bytes.
    #[arg(long, default_value_t = 4096)]
    bs: usize,
    /// Operations in flight per core.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Number of shards (one core each, from core 0); ignored when --cores is given.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Comma-separated cores to run shards on.
    #[arg(long, value_delimiter = ',')]
    cores: Vec<usize>,
    #[arg(long, default_value = "10s", value_parser = duration_arg::parse_duration)]
    duration: Duration,
    #[arg(long, value_enum, default_value_t = Backend::Uring)]
    backend: Backend,
    /// Also run fio with the same target, size, block size and depth, and print ratios.
    #[arg(long)]
    vs_fio: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Turn off SINGLE_ISSUER + DEFER_TASKRUN (for comparison).
    #[arg(long)]
    no_defer_taskrun: bool,
    /// Turn off registered buffers (for comparison).
    #[arg(long)]
    no_register_buffers: bool,
    /// Kernel submission polling with this idle time in ms.
    #[arg(long)]
    sqpoll: Option<u32>,
    /// Polled completions (block devices with poll queues only).
    #[arg(long)]
    iopoll: bool,
    /// Block for a completion after this many idle polls (0: always spin).
    #[arg(long, default_value_t = 0)]
    wait_after_idle_polls: u32,
    /// Longest such block, in microseconds.
    #[arg(long, default_value_t = 100)]
    wait_timeout_us: u32,
    /// Hold submissions until the next reap and send them in one io_uring_enter.
    #[arg(long)]
    batch: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    hotshard_nvme::memlock::ensure_memlock().map_err(anyhow::Error::msg)?;
    match cli.command {
        Command::Device(a) => {
            let cores = if a.cores.is_empty() {
                (0..a.shards.max(1)).collect()
            } else {
                a.cores
            };
            if a.qd == 0 || a.bs == 0 {
                anyhow::bail!("--qd and --bs must be positive");
            }
            let run = DeviceRun {
                path: a.path,
                file_size: a.size,
                op: a.op,
                bs: a.bs,
                qd: a.qd,
                cores,
                duration: a.duration,
                backend: a.backend,
                uring: UringOptions {
                    defer_taskrun: !a.no_defer_taskrun,
                    register_buffers: !a.no_register_buffers,
                    sqpoll_idle_ms: a.sqpoll,
                    iopoll: a.iopoll,
                    wait_after_idle_polls: a.wait_after_idle_polls,
                    wait_timeout_us: a.wait_timeout_us,
                    batch_submissions: a.batch,
                    ..UringOptions::default()
                },
            };
            device_command(&run, a.vs_fio, a.json)?;
        }
        Command::Engine(a) => {
            let run = engine_bench::EngineRun {
                path: a.path,
                size: a.size,
                objects: a.objects,
                value_bytes: a.value_bytes,
                writers: a.writers.max(1),
                readers: a.readers.max(1),
                duration: a.duration,
                recovery_objects: a.recovery_objects,
                recovery_value_bytes: a.recovery_value_bytes,
                index_objects: a.index_objects,
                core: a.core,
                vs_fio: a.vs_fio,
            };
            engine_bench::engine_command(&run, a.json)?;
        }
        Command::Ping(a) => ping_bench::ping_command(a.duration, a.server_core, a.client_core)?,
        Command::Run(a) => {
            let mut rows = Vec::new();
            for target in &a.target {
                let spec = run_bench::LoadSpec {
                    target: target.clone(),
                    op: a.op,
                    keys: a.keys.max(1),
                    value_bytes: a.value_bytes,
                    connections: a.connections.max(1),
                    pipeline: a.pipeline.max(1),
                    duration: a.duration,
                    core: a.core,
                    preload: a.preload,
                    stream: a.stream,
                };
                rows.push(run_bench::run_load(&spec)?);
            }
            latency::print_table(&rows, rows.len() > 1);
        }
    }
    Ok(())
}
