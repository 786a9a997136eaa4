//! `hotshard-bench`: the benchmark harness. Every figure is printed beside an anchor
//! measured in the same invocation (fio for the device).

mod compare;
mod device_bench;
mod duration_arg;
mod engine_bench;
mod fio_anchor;
mod latency;
mod list_bench;
mod load;
mod managed_node;
mod ping_bench;
mod plot;
mod redis_benchmark;
mod report;
mod s3_bench;
mod sigv4;
mod sweep;

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
    /// Load against hotshard://, redis:// or memcached:// targets (one generator for all).
    Run(RunArgs),
    /// One workload against several targets, interleaved round by round, with ratios.
    /// `redis-benchmark://host:port` runs Redis's own benchmark as a target.
    Compare(CompareArgs),
    /// Vary one or two knobs and print (and plot) the table.
    Sweep(SweepArgs),
    /// Search a profile's knobs for the most ops/s under a p99 target; write the profile.
    Tune(TuneArgs),
    /// Pages of an ordered index over the network, against a BTreeMap, a TCP ping-pong
    /// and SCAN over the same keys (issue 33).
    List(list_bench::ListArgsCli),
    /// S3 load (SigV4 PUT, GET or LIST of one bucket) on any S3 endpoint (issue 34).
    S3(s3_bench::S3Args),
}

#[derive(clap::Args)]
struct CompareArgs {
    #[arg(long, required = true)]
    target: Vec<String>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct SweepArgs {
    /// The target for client knobs; server knobs start their own node from --profile.
    #[arg(long)]
    target: Option<String>,
    /// NAME=V1,V2,...: pipeline, connections, keys, rate, value-size, dist, mix (client),
    /// or shards / SECTION.KEY of the profile (server). Once or twice.
    #[arg(long, required = true)]
    knob: Vec<sweep::Knob>,
    /// A hw-configs TOML for server knobs.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// The hotshard binary for server knobs (default: next to this one).
    #[arg(long)]
    hotshard: Option<PathBuf>,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[arg(long)]
    json: bool,
    /// Write throughput-vs-knob and latency-vs-throughput curves to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TuneArgs {
    /// The profile to start from.
    #[arg(long)]
    profile: PathBuf,
    /// Server knobs to search, NAME=V1,V2,... (the first value is the starting point).
    #[arg(long, default_values = ["queue.poll_sleep_us=0,5,20", "store.batch_kib=1024,256,4096", "net.max_in_flight=128,32,512"])]
    knob: Vec<sweep::Knob>,
    /// The p99 latency a configuration must stay under, microseconds.
    #[arg(long)]
    p99_us: f64,
    /// Where to write the tuned profile.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 1)]
    passes: usize,
    #[arg(long)]
    hotshard: Option<PathBuf>,
    #[command(flatten)]
    workload: WorkloadArgs,
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// A workload, shared by run, compare, sweep and tune.
#[derive(clap::Args, Clone)]
pub struct WorkloadArgs {
    /// Operation mix: `get`, `put`, or weights such as `get=90,put=9,del=1`.
    #[arg(long, alias = "op", default_value = "get")]
    mix: load::workload::Mix,
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Name every key inside this index tag, `{TAG}key:%010d`: the keys are then one bucket
    /// index's entries, placed together and kept in key order (at most 64 bytes).
    #[arg(long, default_value = "", value_parser = key_tag_arg)]
    key_tag: String,
    /// Key distribution: uniform, zipfian[:θ] (default θ 0.99), sequential.
    #[arg(long, default_value = "uniform")]
    dist: load::workload::KeyDist,
    /// Value size: `4096`, a range `1024-8192`, or weights `512:50,4096:50`.
    #[arg(long, alias = "value-bytes", default_value = "4096")]
    value_size: load::workload::ValueSizes,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pipeline: usize,
    /// Closed loop: keep the pipeline full (fio-like queue depth) instead of batches.
    #[arg(long)]
    stream: bool,
    /// Open loop: this many operations per second in total, latency from the intended
    /// send time. Without it the loop is closed.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = "10s", value_parser = duration_arg::parse_duration)]
    duration: Duration,
    /// Stop after this many operations instead of after --duration.
    #[arg(long)]
    ops: Option<u64>,
    /// Run this long before measuring.
    #[arg(long, default_value = "0s", value_parser = duration_arg::parse_duration_or_zero)]
    warmup: Duration,
    /// Generator cores, one thread each (keep them off the server's cores).
    #[arg(long, alias = "core", value_delimiter = ',', default_value = "1")]
    cores: Vec<usize>,
    /// Write every key once before measuring.
    #[arg(long)]
    preload: bool,
    /// Check that every GET returns the bytes last acknowledged for its key (implies
    /// --preload, so every key starts from a known value).
    #[arg(long)]
    verify: bool,
    /// Print the live progress line even when stderr is not a terminal (or never: --quiet).
    #[arg(long)]
    progress: bool,
    #[arg(long)]
    quiet: bool,
    /// Print ratios even for runs with error replies (Busy, NoSpace...). Without it, a run
    /// with errors gets no ratio: a target that sheds load is not comparable.
    #[arg(long)]
    allow_errors: bool,
}

impl WorkloadArgs {
    pub fn spec(&self, target: &str) -> load::LoadSpec {
        load::LoadSpec {
            target: target.to_string(),
            mix: self.mix.clone(),
            keys: self.keys,
            key_tag: self.key_tag.clone(),
            dist: self.dist.clone(),
            sizes: self.value_size.clone(),
            connections: self.connections,
            pipeline: self.pipeline,
            stream: self.stream,
            rate: self.rate,
            duration: self.duration,
            ops: self.ops,
            warmup: self.warmup,
            cores: self.cores.clone(),
            preload: self.preload || self.verify,
            verify: self.verify,
            progress: !self.quiet && (self.progress || load::progress::stderr_is_terminal()),
        }
    }
}

/// An index tag for `--key-tag`: at most 64 bytes, without braces.
fn key_tag_arg(s: &str) -> Result<String, String> {
    if s.len() > load::conn::MAX_KEY_TAG {
        return Err(format!("a key tag is at most {} bytes", load::conn::MAX_KEY_TAG));
    }
    if s.contains(['{', '}']) {
        return Err("a key tag has no braces: they are added around it".into());
    }
    Ok(s.to_string())
}

#[derive(clap::Args)]
struct RunArgs {
    /// hotshard://host:port, redis://host:port or memcached://host:port; several are run
    /// one after the other and printed side by side with ratios to the first.
    #[arg(long, required = true)]
    target: Vec<String>,
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
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
        Command::List(a) => list_bench::list_command(&a)?,
        Command::S3(a) => s3_bench::s3_command(&a)?,
        Command::Ping(a) => ping_bench::ping_command(a.duration, a.server_core, a.client_core)?,
        Command::Run(a) => {
            let mut rows = Vec::new();
            for target in &a.target {
                rows.push(load::run_load(&a.workload.spec(target))?);
            }
            report::print_load(&rows, a.json, a.workload.allow_errors)?;
            report::fail_on_verify(&rows)?;
        }
        Command::Compare(a) => {
            let spec = a.workload.spec(&a.target[0]);
            let c = compare::compare(&spec, &a.target, a.rounds)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                compare::print(&c, a.workload.allow_errors);
            }
        }
        Command::Sweep(a) => {
            let server = a.knob.iter().any(sweep::Knob::is_server);
            let node = match (&a.profile, server) {
                (Some(p), true) => Some(sweep::NodeSetup::new(p, a.hotshard.clone())?),
                (None, true) => anyhow::bail!("server knobs need --profile (a hw-configs TOML)"),
                _ => None,
            };
            let target = match (&a.target, server) {
                (Some(t), _) => t.clone(),
                (None, true) => "hotshard://managed".to_string(),
                (None, false) => anyhow::bail!("client knobs need --target"),
            };
            let mut spec = a.workload.spec(&target);
            spec.progress = false;
            let points = sweep::sweep(&spec, &a.knob, node.as_ref())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&points)?);
            } else {
                sweep::print_points(&points);
            }
            if let Some(path) = &a.plot {
                std::fs::write(path, plot::render(&sweep::sweep_plot(&points, &a.knob)))?;
                eprintln!("plot written to {}", path.display());
            }
        }
        Command::Tune(a) => {
            let node = sweep::NodeSetup::new(&a.profile, a.hotshard.clone())?;
            let mut spec = a.workload.spec("hotshard://managed");
            spec.progress = false;
            let sweep::Tuned { chosen, best, trials } =
                sweep::tune(&spec, &a.knob, &node, a.p99_us, a.passes)?;
            sweep::print_points(&trials);
            let text =
                sweep::tuned_profile(&node, &chosen, best.as_ref(), &trials, a.p99_us, &spec.describe())?;
            std::fs::write(&a.out, text)?;
            match &best {
                Some(b) => println!(
                    "best under p99 {} us: {} ({:.0} ops/s); written to {}",
                    a.p99_us,
                    chosen
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    b.figures.figures.iops,
                    a.out.display()
                ),
                None => println!(
                    "no trial met p99 {} us; {} keeps the starting values",
                    a.p99_us,
                    a.out.display()
                ),
            }
            if let Some(path) = &a.plot {
                std::fs::write(path, plot::render(&sweep::sweep_plot(&trials, &a.knob[..1])))?;
            }
        }
    }
    Ok(())
}
