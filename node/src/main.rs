//! `hotshard`: the data node (`serve`) and the commands a person uses against it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hotshard_net::blocking::BlockingClient;
use hotshard_node::config::NodeConfig;
use hotshard_nvme::{Device, DeviceOptions};

/// glibc's malloc, with the shard threads' cache of 1-16 KiB blocks in front (`block_cache`).
#[global_allocator]
static ALLOCATOR: hotshard_node::block_cache::ShardAllocator = hotshard_node::block_cache::ShardAllocator;

#[derive(Parser)]
#[command(name = "hotshard", version, about = "hotshard: a thread-per-core data node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Target {
    /// Any shard of the node: host:port.
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: String,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 5)]
    timeout: u64,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: one shard per configured core (the embedded default without --config).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run a stateless S3 gateway in front of a node or cluster (issue 34): as many as the
    /// load needs, each with the same keys, from HOTSHARD_S3_ACCESS_KEY and
    /// HOTSHARD_S3_SECRET_KEY (never arguments: arguments show in `ps`); the nodes' secret,
    /// if they have one, from HOTSHARD_SECRET.
    S3 {
        /// Shards to learn the cluster's map from (host:port, any node; several: comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:7400")]
        seeds: Vec<String>,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Chunk size of new objects, in KiB.
        #[arg(long, default_value_t = 1024)]
        chunk_kib: u64,
        /// HTTP threads, and threads holding node clients.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Seconds between sweeps of chunks a crash left without an entry (0: never).
        #[arg(long, default_value_t = 300)]
        sweep_every_secs: u64,
        /// How old a PUT's intent must be before a sweep settles it.
        #[arg(long, default_value_t = 3600)]
        orphan_after_secs: u64,
    },
    /// Store a value (the argument, or the contents of --file).
    Put {
        key: String,
        value: Option<String>,
        #[arg(long)]
        file: Option<PathBuf>,
        /// Expire the object after this long (`60s`, `1500ms`, `2m`, `1h`): it then reads as
        /// absent on every protocol, and GC reclaims it.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<std::time::Duration>,
        #[command(flatten)]
        target: Target,
    },
    /// Print a value (or write it to --out).
    Get {
        key: String,
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a key.
    Del {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Length, version and CRC32C of a key's value.
    Stat {
        key: String,
        #[command(flatten)]
        target: Target,
    },
    /// The keys of an ordered index in key order (issue 33): INDEX is its tag in braces,
    /// `{photos}`; keys naming it (`{photos}/2026/a.jpg`) are listed, every page in turn.
    Ls {
        index: String,
        /// Only keys starting with this (the whole key, tag included).
        #[arg(long, default_value = "")]
        prefix: String,
        /// Roll keys with this after the prefix up into common prefixes (`/`: folders).
        #[arg(long, default_value = "")]
        delimiter: String,
        /// Items per page asked of the node (at most 1000).
        #[arg(long, default_value_t = 1000)]
        page: u32,
        #[command(flatten)]
        target: Target,
    },
    /// One screen on the node: per shard and in all, ops/s, latency, errors, cache, space,
    /// GC, connections and chains, over the next second (or every second with --watch).
    Stats {
        #[command(flatten)]
        target: Target,
        /// Every shard's raw counters and histograms (Prometheus text, as /metrics serves).
        #[arg(long, conflicts_with = "watch")]
        raw: bool,
        /// Refresh the summary every interval until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds the rates are measured over (and between refreshes with --watch).
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
    },
    /// The shard map: which shard owns which partitions.
    Map {
        #[command(flatten)]
        target: Target,
    },
    /// Run a coordinator of a cluster whose state lives in etcd (several may run; exactly
    /// one acts). Never on the data path.
    Coordinator(hotshard_node::cluster_cli::CoordinatorArgs),
    /// Operate a cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Open a device (creating a file of --size bytes if asked) and print what it supports.
    Probe {
        path: PathBuf,
        #[arg(long)]
        size: Option<u64>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The acting coordinator, every node, the map's epoch, chains per node by role, and
    /// degraded or unavailable chains.
    Status {
        #[command(flatten)]
        etcd: hotshard_node::cluster_cli::EtcdArgs,
        /// The replication factor chains are held to.
        #[arg(long, default_value_t = 3)]
        replication: usize,
        #[arg(long)]
        json: bool,
    },
    /// Move every replica off node NODE (its id, as `cluster status` lists it); the node is
    /// removable once it holds none. Refused for an unknown node, below the replication
    /// factor, or while another drain is under way.
    Drain {
        node: u32,
        #[command(flatten)]
        etcd: hotshard_node::cluster_cli::EtcdArgs,
        /// The replication factor chains are held to.
        #[arg(long, default_value_t = 3)]
        replication: usize,
    },
    /// Split a bucket index (issue 33): the keys of KEY's tag from KEY on move to another
    /// chain, with writes and listings going on. Waits until it has moved, at most --wait
    /// seconds.
    Split {
        key: String,
        #[command(flatten)]
        etcd: hotshard_node::cluster_cli::EtcdArgs,
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Cancel a drain.
    Undrain {
        node: u32,
        #[command(flatten)]
        etcd: hotshard_node::cluster_cli::EtcdArgs,
    },
    /// PARTITION's chain in every map etcd still holds, oldest first: one line per change
    /// (epoch, etcd revision, chain version, replicas as node/shard:state, registrations).
    History {
        partition: u32,
        #[command(flatten)]
        etcd: hotshard_node::cluster_cli::EtcdArgs,
    },
    /// Serve again chains that no replica holding every write they acknowledged can serve,
    /// from what is left: the writes only the lost replicas held are given up. The
    /// PARTITIONs named (which must have no serving replica); else with --node, every
    /// unavailable chain waiting only for that node (it will not come back); else every
    /// chain `cluster status` lists as LOST.
    AcceptLoss {
        partitions: Vec<u32>,
        /// A node that will not come back (its disk is gone).
        #[arg(long)]
        node: Option<u32>,
        #[command(flatten)]
        etcd: hotshard_node::cluster_cli::EtcdArgs,
    },
}

/// The CLI proves the node's secret when `HOTSHARD_SECRET` holds it (never an argument:
/// arguments show in `ps`).
fn client(t: &Target) -> Result<BlockingClient, String> {
    let secret = hotshard_net::auth::secret_from_env();
    BlockingClient::connect_with_secret(&t.addr, Duration::from_secs(t.timeout), secret).map_err(|e| {
        let hint = if e.to_string().contains("Unauthorized") {
            " (set HOTSHARD_SECRET to the node's auth secret)"
        } else {
            ""
        };
        format!("{}: {e}{hint}", t.addr)
    })
}

/// `hotshard s3`: a gateway with no data directory, so its keys must be given.
fn run_s3_gateway(
    seeds: Vec<String>,
    listen: String,
    chunk_kib: u64,
    threads: usize,
    (sweep_every, orphan_after): (u64, u64),
) -> Result<(), String> {
    if chunk_kib == 0 || chunk_kib > (hotshard_net::limits::MAX_PAYLOAD_BYTES >> 10) as u64 {
        return Err("--chunk-kib must be 1 to 8192 (the node's value limit)".into());
    }
    let env = |k: &str| std::env::var(k).ok();
    let (Some(access_key), Some(secret_key)) = (env("HOTSHARD_S3_ACCESS_KEY"), env("HOTSHARD_S3_SECRET_KEY"))
    else {
        return Err("set the gateway's keys in HOTSHARD_S3_ACCESS_KEY and HOTSHARD_S3_SECRET_KEY".into());
    };
    let cfg = hotshard_s3::GatewayConfig {
        listen: listen.parse().map_err(|e| format!("--listen {listen}: {e}"))?,
        backend: hotshard_s3::backend::BackendConfig {
            seeds,
            client: hotshard_net::client::ClientConfig {
                timeout: std::time::Duration::from_secs(10),
                secret: hotshard_net::auth::secret_from_env(),
            },
            threads: threads.max(1),
        },
        credentials: hotshard_s3::Credentials {
            access_key,
            secret_key,
        },
        chunk_bytes: chunk_kib << 10,
        http_threads: threads.max(1),
        sweep_every: Duration::from_secs(sweep_every),
        orphan_after: Duration::from_secs(orphan_after),
    };
    let addr = hotshard_s3::spawn_gateway(cfg).map_err(|e| format!("--listen {listen}: {e}"))?;
    println!("hotshard S3 gateway on http://{addr}; Ctrl-C stops");
    loop {
        std::thread::park();
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = NodeConfig::load(config.as_deref())?;
            hotshard_node::serve::serve(cfg)
        }
        Command::S3 {
            seeds,
            listen,
            chunk_kib,
            threads,
            sweep_every_secs,
            orphan_after_secs,
        } => run_s3_gateway(
            seeds,
            listen,
            chunk_kib,
            threads,
            (sweep_every_secs, orphan_after_secs),
        ),
        Command::Put {
            key,
            value,
            file,
            ttl,
            target,
        } => {
            let bytes = match (value, file) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(f)) => std::fs::read(&f).map_err(|e| format!("reading {}: {e}", f.display()))?,
                _ => return Err("give either a VALUE or --file".into()),
            };
            let expires_ms = match ttl {
                // Taken by the key's chain head's clock, not this machine's.
                Some(t) => hotshard_net::expiry::expires_in(t.as_millis().max(1) as u64),
                None => 0,
            };
            let version = client(&target)?
                .put_expiring(key.as_bytes(), &bytes, expires_ms)
                .map_err(|e| e.to_string())?;
            println!("stored {} bytes, version {version}", bytes.len());
            Ok(())
        }
        Command::Get { key, out, target } => match client(&target)?
            .get(key.as_bytes(), None)
            .map_err(|e| e.to_string())?
        {
            None => Err(format!("{key}: not found")),
            Some((value, _)) => match out {
                Some(path) => {
                    std::fs::write(&path, &value).map_err(|e| format!("writing {}: {e}", path.display()))
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&value).map_err(|e| e.to_string())?;
                    println!();
                    Ok(())
                }
            },
        },
        Command::Del { key, target } => {
            let v = client(&target)?
                .delete(key.as_bytes())
                .map_err(|e| e.to_string())?;
            println!("deleted {key} (version {v})");
            Ok(())
        }
        Command::Stat { key, target } => {
            match client(&target)?.stat(key.as_bytes()).map_err(|e| e.to_string())? {
                None => Err(format!("{key}: not found")),
                Some((len, version, crc)) => {
                    println!("{key}: {len} bytes, version {version}, crc32c {crc:08x}");
                    Ok(())
                }
            }
        }
        Command::Ls {
            index,
            prefix,
            delimiter,
            page,
            target,
        } => {
            let mut c = client(&target)?;
            let args = hotshard_net::client::ListArgs {
                index: index.as_bytes(),
                prefix: prefix.as_bytes(),
                start_after: None,
                delimiter: delimiter.as_bytes(),
                limit: page,
                start_at: None,
            };
            for items in c.list_pages(args) {
                for item in &items.map_err(|e| e.to_string())? {
                    match item {
                        hotshard_net::listing::ListItem::Key {
                            key, len, version, ..
                        } => {
                            println!("{}\t{len}\tv{version}", String::from_utf8_lossy(key))
                        }
                        hotshard_net::listing::ListItem::Prefix(p) => {
                            println!("{}\t(prefix)", String::from_utf8_lossy(p))
                        }
                    }
                }
            }
            Ok(())
        }
        Command::Stats {
            target,
            raw,
            watch,
            interval,
        } => stats(&target, raw, watch, interval),
        Command::Map { target } => {
            let c = client(&target)?;
            let map = c.shard_map();
            println!("epoch {}, {} partitions", map.epoch, map.chains.len());
            for (i, s) in map.shards.iter().enumerate() {
                let owned = map.partitions_headed_by(i);
                println!(
                    "node {} shard {} at {}: {owned} partitions",
                    s.node, s.shard, s.addr
                );
            }
            Ok(())
        }
        Command::Coordinator(args) => hotshard_node::cluster_cli::coordinator(args),
        Command::Cluster(ClusterCommand::Status {
            etcd,
            replication,
            json,
        }) => hotshard_node::cluster_cli::status(etcd, replication, json),
        Command::Cluster(ClusterCommand::Drain {
            node,
            etcd,
            replication,
        }) => hotshard_node::cluster_cli::drain(etcd, node, Some(replication)),
        Command::Cluster(ClusterCommand::Split { key, etcd, wait }) => {
            hotshard_node::cluster_cli::split(etcd, key, std::time::Duration::from_secs(wait))
        }
        Command::Cluster(ClusterCommand::Undrain { node, etcd }) => {
            hotshard_node::cluster_cli::drain(etcd, node, None)
        }
        Command::Cluster(ClusterCommand::History { partition, etcd }) => {
            hotshard_node::cluster_cli::history(etcd, partition)
        }
        Command::Cluster(ClusterCommand::AcceptLoss {
            partitions,
            node,
            etcd,
        }) => hotshard_node::cluster_cli::accept_loss(etcd, &partitions, node),
        Command::Probe { path, size } => {
            let mut opts = DeviceOptions::new(&path);
            opts.file_size = size;
            let dev = Device::open(&opts).map_err(|e| format!("opening {}: {e}", path.display()))?;
            println!("{:#?}", dev.info());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        // A client command writing into a closed pipe (`hotshard stats | head`) ends
        // quietly like other command-line tools; Rust ignores SIGPIPE, which turned that
        // into a panic on `println!`. The server keeps ignoring it (sockets report EPIPE).
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotshard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Every shard of the node `target` names: its address on this node (in a cluster, the
/// map lists other nodes' shards too).
fn node_shards(c: &BlockingClient, target: &Target) -> Vec<String> {
    let map = c.shard_map();
    let node = map.shards.iter().find(|s| s.addr == target.addr).map(|s| s.node);
    let mine: Vec<String> = map
        .shards
        .iter()
        .filter(|s| node.is_none_or(|n| s.node == n))
        .map(|s| s.addr.clone())
        .collect();
    if mine.is_empty() {
        vec![target.addr.clone()]
    } else {
        mine
    }
}

/// `hotshard stats`: the raw text of every shard, or the summary of two scrapes an
/// interval apart (again and again with `watch`).
fn stats(target: &Target, raw: bool, watch: bool, interval: f64) -> Result<(), String> {
    use hotshard_node::stats_summary::{summarize, Heading, Snapshot};
    let mut c = client(target)?;
    let addrs = node_shards(&c, target);
    if raw {
        for addr in &addrs {
            println!("# shard at {addr}");
            print!("{}", c.stats(addr).map_err(|e| format!("{addr}: {e}"))?);
        }
        return Ok(());
    }
    let scrape = |c: &mut BlockingClient| -> Result<(Snapshot, std::time::Instant), String> {
        let mut snapshot = Snapshot::default();
        for (i, addr) in addrs.iter().enumerate() {
            snapshot.add_text(i, &c.stats(addr).map_err(|e| format!("{addr}: {e}"))?);
        }
        Ok((snapshot, std::time::Instant::now()))
    };
    let redraw = watch && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut before = scrape(&mut c)?;
    loop {
        std::thread::sleep(Duration::from_secs_f64(interval));
        let after = scrape(&mut c)?;
        let text = summarize(
            &before.0,
            &after.0,
            &Heading {
                addr: &target.addr,
                seconds: after.1.duration_since(before.1).as_secs_f64(),
            },
        );
        if redraw {
            // Home and clear, then the new screen: a terminal shows one summary at a time.
            print!("\x1b[H\x1b[2J{text}");
        } else {
            print!("{text}");
            if watch {
                println!();
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if !watch {
            return Ok(());
        }
        before = after;
    }
}

/// `--interval`: seconds, from 0.1 to an hour.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}': an interval is 0.1 to 3600 seconds")),
    }
}

/// A `--ttl`: a number and a unit (ms, s, m, h; seconds without one), more than zero and
/// at most ten years.
fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a duration like 60s, 1500ms, 2m or 1h"))?;
    let ms = match &s[digits.len()..] {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        unit => return Err(format!("unknown unit '{unit}' in '{s}' (ms, s, m or h)")),
    };
    match ms {
        Some(ms) if ms > 0 && ms <= 10 * 365 * 86_400_000 => Ok(std::time::Duration::from_millis(ms)),
        _ => Err(format!("'{s}': a ttl is more than zero and at most ten years")),
    }
}
