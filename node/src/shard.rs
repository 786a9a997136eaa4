//! One shard: its queue, its store, its listener, its peers. Runs on its own pinned glommio
//! executor and shares nothing on the data path with other shards.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use hotshard_net::server::{serve_connection_until, ServerConfig};
use hotshard_net::stop::StopSignal;
use hotshard_nvme::{AnyQueue, Device, DeviceOptions, DmaFileQueue, UringOptions};
use hotshard_placement::shard_map::ShardMap;

use crate::config::NodeConfig;
use crate::gc_task::{start_background_gc, GcPacing};
use crate::listener::Listener;
use crate::peers::{PeerEnds, PeerMsg, Peers};
use crate::shard_handler::ShardHandler;
use crate::shard_stats::ShardStats;
use crate::store::{CommitDurability, GcWrites, Store, StoreConfig, VictimChoice};
use crate::waitable_count::WaitableCount;

/// How long a stopping shard waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a shard needs, handed over from the main thread.
pub struct ShardSetup {
    pub index: usize,
    pub cfg: NodeConfig,
    pub device: PathBuf,
    pub region_offset: u64,
    pub region_bytes: u64,
    /// The map the shard starts with (the node's own; in a cluster, until the cluster's
    /// arrives on `board`).
    pub map: ShardMap,
    /// Shards on this node (the map may name other nodes' too).
    pub shard_count: usize,
    /// Where the control thread posts newer maps (in a cluster).
    pub board: Option<Arc<crate::map_cell::MapBoard>>,
    pub peers: PeerEnds,
    /// The node's RESP address, on which every shard accepts (None: RESP is off).
    pub resp: Option<String>,
    pub shutdown: Arc<AtomicBool>,
    pub ready: std::sync::mpsc::Sender<Result<String, String>>,
    /// Shards that have bound their listeners: none accepts before all have, so that a
    /// client given the map by one shard never finds another's port closed.
    pub listening: Arc<StartGate>,
    /// Told when the shard has stopped serving and drained its requests.
    pub stopped: std::sync::mpsc::Sender<usize>,
}

fn store_config(s: &ShardSetup) -> StoreConfig {
    let c = &s.cfg.store;
    let mut sc = StoreConfig::new(s.region_offset, s.region_bytes);
    sc.segment_bytes = c.segment_mib << 20;
    sc.batch_bytes = c.batch_kib << 10;
    sc.cache_bytes = c.cache_mib << 20;
    sc.index_budget_bytes = s.cfg.index_budget_bytes();
    sc.durability = if c.durability == "flush" {
        CommitDurability::WriteThenFlush
    } else {
        CommitDurability::Fua
    };
    sc.gc_writes = if c.gc_head == "shared" {
        GcWrites::Shared
    } else {
        GcWrites::OwnHead
    };
    sc.gc_victims = if c.gc_victims == "cost-benefit" {
        VictimChoice::CostBenefit
    } else {
        VictimChoice::Greedy
    };
    sc.gc_max_live_fraction = c.gc_max_live_fraction;
    sc.writes_in_flight = c.writes_in_flight;
    // Half the ring: batch writes and GC's reads take entries too.
    sc.reads_in_flight = (s.cfg.queue.entries as usize / 2).max(1);
    // A write waits inside the engine for buffers or a batch slot as long as a client's
    // frame may take to arrive: past that, the client has likely given up.
    sc.max_write_wait = std::time::Duration::from_millis(s.cfg.net.frame_timeout_ms);
    sc.partition_bits = s.cfg.node.partition_bits;
    sc.shard_index = s.index as u32;
    sc.shard_count = s.shard_count as u32;
    // Expiry is decided at each chain's head and comes down the chain as a burial
    // (`expiry_sweep`); no store buries on its own clock.
    sc.gc_buries_expired = false;
    sc
}

async fn open_queue(s: &ShardSetup) -> Result<AnyQueue, String> {
    let dev = Device::open(&DeviceOptions::new(&s.device)).map_err(|e| e.to_string())?;
    let q = &s.cfg.queue;
    let pool = q.pool_mib << 20;
    if q.backend == "dmafile" {
        return DmaFileQueue::open(dev.info().clone(), pool)
            .await
            .map(AnyQueue::DmaFile)
            .map_err(|e| e.to_string());
    }
    let opts = UringOptions {
        entries: q.entries,
        pool_bytes: pool,
        sqpoll_idle_ms: (q.sqpoll_idle_ms > 0).then_some(q.sqpoll_idle_ms),
        iopoll: q.iopoll,
        wait_after_idle_polls: q.wait_after_idle_polls,
        idle_sleep_us: q.poll_sleep_us,
        ..UringOptions::default()
    };
    let queue = AnyQueue::uring(dev, &opts).map_err(|e| e.to_string())?;
    if let AnyQueue::Uring(u) = &queue {
        glommio::spawn_local(u.poller()).detach();
        // While the device poller spins, the socket poller must not sleep (see
        // `Readiness::set_busy_probe`). Without a readiness set, sockets go through glommio.
        if let Ok(readiness) = hotshard_net::ready_stream::Readiness::for_this_thread() {
            readiness.set_busy_probe(u.busy_probe());
        }
    }
    Ok(queue)
}

/// Runs the shard until the shutdown flag is set; then stops accepting, lets requests in
/// flight finish, and closes its store (every acknowledged write is already durable).
pub async fn run_shard(mut s: ShardSetup) -> Result<(), String> {
    // The shard's thread lives as long as the node: its cache of freed blocks is bounded
    // and never outlives it.
    crate::block_cache::cache_this_thread();
    let peer_ends = std::mem::replace(
        &mut s.peers,
        PeerEnds {
            senders: Vec::new(),
            receivers: Vec::new(),
        },
    );
    let started = match start_shard(&s, peer_ends).await {
        Ok(started) => started,
        Err(e) => {
            s.listening.fail();
            let _ = s.ready.send(Err(format!("shard {}: {e}", s.index)));
            return Err(e);
        }
    };
    let _ = s.ready.send(Ok(started.summary.clone()));
    // Fault injection for the process tests (the `planted-faults` feature only): a shard
    // that panics once it serves.
    #[cfg(feature = "planted-faults")]
    if s.index == 0 && std::env::var_os("HOTSHARD_FAULT_PANIC_SHARD0").is_some() {
        glommio::spawn_local(async {
            glommio::timer::sleep(Duration::from_millis(200)).await;
            panic!("injected by HOTSHARD_FAULT_PANIC_SHARD0");
        })
        .detach();
    }
    let connections = serve_connections(&s, &started).await;
    drain_shard(&s, started, connections).await;
    let _ = s.stopped.send(s.index);
    Ok(())
}

/// How often a shard looks for a newer map on the board (one atomic load when there is
/// none). A keyed request also adopts a posted map before it is routed (`MapCell::fenced`),
/// so this bounds only how long an idle shard holds an older map.
const MAP_CHECK_EVERY: Duration = Duration::from_millis(20);

/// How often it looks while a request waits for a newer epoch than the shard holds
/// (`MapCell::taken`): one look per shard, however many requests wait.
const MAP_CHECK_WHILE_WAITED_FOR: Duration = Duration::from_millis(2);

/// Adopts every newer map the control thread posts, until the shard stops.
async fn adopt_posted_maps(
    board: Arc<crate::map_cell::MapBoard>,
    cell: Rc<crate::map_cell::MapCell>,
    shutdown: Arc<AtomicBool>,
) {
    while !shutdown.load(std::sync::atomic::Ordering::Relaxed) {
        if let Some(map) = board.newer_than(cell.epoch()) {
            let epoch = map.epoch;
            if cell.adopt((*map).clone()) {
                tracing::info!(epoch, "shard adopted a newer map");
            }
        }
        if cell.has_waiters() {
            glommio::timer::sleep(MAP_CHECK_WHILE_WAITED_FOR).await;
        } else {
            // Woken early when a request starts to wait.
            futures_lite::future::or(glommio::timer::sleep(MAP_CHECK_EVERY), cell.first_waiter()).await;
        }
    }
}

/// A count of shards that have reached a point of their start, and whether one failed.
#[derive(Default)]
pub struct StartGate {
    arrived: std::sync::atomic::AtomicUsize,
    failed: AtomicBool,
}

impl StartGate {
    pub fn arrive(&self) {
        self.arrived.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    pub fn fail(&self) {
        self.failed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Waits until `shards` have arrived; an error if one failed or the node is stopping.
    /// Polled (start-up only, a millisecond apart): shards live on different executors.
    async fn wait_for(&self, shards: usize, shutdown: &AtomicBool) -> Result<(), String> {
        use std::sync::atomic::Ordering;
        while self.arrived.load(Ordering::Acquire) < shards {
            if self.failed.load(Ordering::Acquire) {
                return Err("another shard failed to start".into());
            }
            if shutdown.load(Ordering::Relaxed) {
                return Err("stopped while starting".into());
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

/// A shard that is ready to serve.
struct Started {
    store: Store<AnyQueue>,
    /// Background GC runs while this is held.
    gc: glommio::Task<()>,
    peers: Rc<Peers>,
    handler: Rc<ShardHandler<AnyQueue>>,
    stats: Rc<ShardStats>,
    listener: Listener,
    /// This shard's copy of the RESP socket, and what answers its commands.
    resp: Option<(Rc<Listener>, Rc<crate::resp_front::RespFront<AnyQueue>>)>,
    admin: Option<glommio::Task<()>>,
    /// What the shard says when it is ready.
    summary: String,
}

/// The connections a shard is serving, and the signal that stops them.
struct Connections {
    open: Rc<WaitableCount>,
    stop: Rc<StopSignal>,
}

/// Opens the store (recovering it), starts background GC, connects to the other shards,
/// binds the listener (and shard 0's admin endpoint), and starts answering what other
/// shards forward.
async fn start_shard(s: &ShardSetup, peer_ends: PeerEnds) -> Result<Started, String> {
    let queue = open_queue(s).await?;
    let (store, report) = Store::open(queue, store_config(s))
        .await
        .map_err(|e| e.to_string())?;
    let gc = start_background_gc(store.clone(), GcPacing::default());
    let (peers, receivers) = Peers::connect(s.index, peer_ends).await;
    let addr = format!(
        "{}:{}",
        s.cfg.node.listen,
        s.cfg.node.base_port as usize + s.index
    );
    if s.cfg.net.yield_when_idle {
        hotshard_net::ready_stream::Readiness::for_this_thread()
            .map_err(|e| format!("socket readiness set: {e}"))?
            .set_yield_when_idle(true);
    }
    let listener = Listener::bind(&addr)
        .await
        .map_err(|e| format!("listening on {addr}: {e}"))?;
    let stats = Rc::new(ShardStats::default());
    let handler = Rc::new(ShardHandler {
        shard: s.index,
        node_id: s.cfg.node.node_id,
        store: store.clone(),
        map: Rc::new(match &s.board {
            Some(board) => crate::map_cell::MapCell::fenced_by(s.map.clone(), board.clone()),
            None => crate::map_cell::MapCell::new(s.map.clone()),
        }),
        peers: peers.clone(),
        stats: stats.clone(),
        in_flight: WaitableCount::default(),
        admission: crate::admission::Admission::new(s.cfg.net.max_pending_requests, s.cfg.pending_bytes()),
        secret: s.cfg.secret()?,
        dirty: crate::dirty_keys::DirtyKeys::default(),
        links: crate::chain_links::ChainLinks::new(s.cfg.secret()?, s.board.clone()),
        answer_wait: Duration::from_millis(s.cfg.net.frame_timeout_ms),
        updating: Default::default(),
        started_writes: Default::default(),
        splits: Default::default(),
        sync: Default::default(),
        sync_bytes_per_sec: s.cfg.cluster.sync_bytes_per_sec,
        split_entries: s.cfg.cluster.split_entries,
    });
    glommio::spawn_local(handler.clone().keep_burying_expired(s.shutdown.clone())).detach();
    for (from, rx) in receivers {
        glommio::spawn_local(answer_peer(from, rx, handler.clone(), peers.clone())).detach();
    }
    if let Some(board) = s.board.clone() {
        glommio::spawn_local(adopt_posted_maps(
            board.clone(),
            handler.map.clone(),
            s.shutdown.clone(),
        ))
        .detach();
        glommio::spawn_local(handler.clone().keep_splitting(board.clone(), s.shutdown.clone())).detach();
        glommio::spawn_local(handler.clone().keep_syncing(board, s.shutdown.clone())).detach();
    }
    let resp = match &s.resp {
        Some(addr) => {
            let listener =
                Listener::bind_reuseport(addr).map_err(|e| format!("the RESP port {addr}: {e}"))?;
            let front = crate::resp_front::RespFront {
                shard: handler.clone(),
                shards: s.shard_count,
                cfg: s.cfg.resp.clone(),
                port: s.cfg.node.resp_port,
                started: std::time::Instant::now(),
                durability: s.cfg.store.durability.clone(),
                reply_bytes: Default::default(),
            };
            Some((Rc::new(listener), Rc::new(front)))
        }
        None => None,
    };
    let mut admin = None;
    if s.index == 0 && s.cfg.node.admin_port != 0 {
        let admin_addr = format!("{}:{}", s.cfg.node.listen, s.cfg.node.admin_port);
        let admin_listener = Listener::bind(&admin_addr)
            .await
            .map_err(|e| format!("admin endpoint on {admin_addr}: {e}"))?;
        admin = Some(glommio::spawn_local(crate::admin::serve_admin(
            admin_listener,
            handler.clone(),
            s.shard_count,
            s.shutdown.clone(),
        )));
    }
    // Every shard has recovered its store (the peer channels connect only once all have
    // opened them); wait until every one listens too.
    s.listening.arrive();
    s.listening.wait_for(s.shard_count, &s.shutdown).await?;
    let summary = format!(
        "shard {} on {addr}: {} objects recovered ({:.1} MB scanned in {:.3} s){}",
        s.index,
        report.objects,
        report.bytes_scanned as f64 / 1e6,
        report.seconds,
        if report.formatted { ", new store" } else { "" }
    );
    Ok(Started {
        store,
        gc,
        peers,
        handler,
        stats,
        listener,
        resp,
        admin,
        summary,
    })
}

/// Answers what shard `from` sends over its channel: forwarded requests (each on its own
/// task, counted in flight from its arrival, so that a stopping shard that has heard
/// `Drained` from every peer still waits for it), replies to what this shard forwarded,
/// and `Drained`.
async fn answer_peer(
    from: usize,
    rx: glommio::channels::shared_channel::ConnectedReceiver<PeerMsg>,
    handler: Rc<ShardHandler<AnyQueue>>,
    peers: Rc<Peers>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            PeerMsg::Forward {
                token,
                request,
                payload,
                ..
            } => {
                handler.in_flight.add();
                let (handler, peers) = (handler.clone(), peers.clone());
                glommio::spawn_local(async move {
                    let reply = handler.clone().answer_forwarded(request, payload).await;
                    peers.reply(from, token, reply.0, reply.1).await;
                    handler.in_flight.sub();
                })
                .detach();
            }
            PeerMsg::Drained => peers.drained.add(),
            PeerMsg::Reply {
                token,
                response,
                payload,
            } => peers.deliver(token, response, payload),
        }
    }
}

/// Accepts connections (up to the configured count) and serves each on its own task,
/// until the shutdown flag is set; then the listener is closed.
async fn serve_connections(s: &ShardSetup, started: &Started) -> Connections {
    let server_cfg = ServerConfig {
        max_in_flight: s.cfg.net.max_in_flight,
        frame_timeout: std::time::Duration::from_millis(s.cfg.net.frame_timeout_ms),
        peers_only: false,
    };
    // Connections taken beyond `max_connections` for other nodes only.
    let reserve_open = Rc::new(std::cell::Cell::new(0u64));
    let max_connections = s.cfg.net.max_connections as u64;
    let stats = &started.stats;
    let open = Rc::new(WaitableCount::default());
    let stop = StopSignal::new();
    let resp = started.resp.as_ref().map(|(listener, front)| {
        glommio::spawn_local(serve_resp(
            listener.clone(),
            front.clone(),
            RespLoop {
                shard: s.index,
                shards: s.shard_count,
                max_connections,
                frame_timeout: server_cfg.frame_timeout,
                max_in_flight: server_cfg.max_in_flight,
            },
            s.shutdown.clone(),
            open.clone(),
            stop.clone(),
        ))
    });
    while let Some(stream) = started.listener.next(&s.shutdown, &stats.accept_errors).await {
        // Native connections only: RESP ones have slots of their own, so that idle RESP
        // sockets never keep a client, or a chain link from another node, out. With the
        // clients' slots full, `PEER_SLOTS` more are kept for other nodes of the cluster:
        // such a connection must prove the peer key first (`ServerConfig::peers_only`).
        let full = stats.connections_open.get() >= max_connections;
        if full && (s.board.is_none() || reserve_open.get() >= PEER_SLOTS) {
            stats.connections_refused.set(stats.connections_refused.get() + 1);
            continue;
        }
        let server_cfg = ServerConfig {
            peers_only: full,
            ..server_cfg
        };
        let reserved = full.then(|| {
            reserve_open.set(reserve_open.get() + 1);
            reserve_open.clone()
        });
        let _ = stream.set_nodelay(true);
        let from = stream.peer_addr().ok();
        stats.connections.set(stats.connections.get() + 1);
        stats.connections_open.set(stats.connections_open.get() + 1);
        open.add();
        let (handler, open, stats, stop) =
            (started.handler.clone(), open.clone(), stats.clone(), stop.clone());
        glommio::spawn_local(async move {
            let report = serve_connection_until(stream, handler, server_cfg, &stop).await;
            if report.protocol_error.is_some() {
                stats.protocol_errors.set(stats.protocol_errors.get() + 1);
            }
            if report.timed_out {
                stats.frame_timeouts.set(stats.frame_timeouts.get() + 1);
            }
            if report.unauthorized {
                stats.auth_failures.set(stats.auth_failures.get() + 1);
            }
            if report.refused_node_request {
                note_refused_node_request(&stats, from);
            }
            if let Some(r) = reserved {
                r.set(r.get() - 1);
            }
            stats.connections_open.set(stats.connections_open.get() - 1);
            open.sub();
        })
        .detach();
    }
    started.listener.stop();
    if let Some(resp) = resp {
        resp.await;
    }
    Connections { open, stop }
}

/// Connections a shard takes beyond `net.max_connections` for other nodes of the cluster
/// (chain links), each of which must prove the peer key first: clients that fill every
/// slot never cut a chain.
const PEER_SLOTS: u64 = 64;

/// Most addresses a shard remembers having logged a refused node-to-node request from: a
/// flood from many addresses is counted, not remembered without bound.
const LOGGED_PEERS_MAX: usize = 1024;

/// A connection sent a node-to-node request without proving the cluster's peer key:
/// counted, and logged once per address.
fn note_refused_node_request(stats: &ShardStats, from: Option<std::net::SocketAddr>) {
    stats
        .node_requests_refused
        .set(stats.node_requests_refused.get() + 1);
    let Some(from) = from else { return };
    let mut logged = stats.node_requests_refused_from.borrow_mut();
    if logged.len() < LOGGED_PEERS_MAX && logged.insert(from.ip()) {
        tracing::warn!(
            %from,
            "refused a node-to-node request from a connection that did not prove the cluster's peer key (logged once per address)"
        );
    }
}

/// What a shard's RESP accept loop needs to know.
struct RespLoop {
    shard: usize,
    shards: usize,
    max_connections: u64,
    frame_timeout: Duration,
    max_in_flight: usize,
}

/// Accepts RESP connections from this shard's copy of the node's RESP socket and serves
/// each on its own task (counted with the native ones in `open`, for the drain, but in
/// slots of their own: `max_connections` RESP connections besides the native ones), until
/// the node stops.
async fn serve_resp(
    listener: Rc<Listener>,
    front: Rc<crate::resp_front::RespFront<AnyQueue>>,
    how: RespLoop,
    shutdown: Arc<AtomicBool>,
    open: Rc<WaitableCount>,
    stop: Rc<StopSignal>,
) {
    use hotshard_net::resp::server::{serve_resp_connection, RespServerConfig};
    let stats = front.shard.stats.clone();
    let mut accepted = 0u64;
    while let Some(stream) = listener.next(&shutdown, &stats.accept_errors).await {
        if stats.resp_connections_open.get() >= how.max_connections {
            stats.connections_refused.set(stats.connections_refused.get() + 1);
            continue;
        }
        let _ = stream.set_nodelay(true);
        accepted += 1;
        let cfg = RespServerConfig {
            limits: hotshard_net::resp::RespLimits::default(),
            max_in_flight: how.max_in_flight,
            frame_timeout: how.frame_timeout,
            max_command_bytes: hotshard_net::limits::MAX_PAYLOAD_BYTES + (1 << 20),
            // Unique on the node: the shard's index, then its own count.
            client_id: accepted * how.shards as u64 + how.shard as u64,
        };
        stats.resp_connections.set(stats.resp_connections.get() + 1);
        stats
            .resp_connections_open
            .set(stats.resp_connections_open.get() + 1);
        open.add();
        let (front, open, stats, stop) = (front.clone(), open.clone(), stats.clone(), stop.clone());
        glommio::spawn_local(async move {
            let report = serve_resp_connection(stream, front, cfg, &stop).await;
            if report.protocol_error.is_some() {
                stats.protocol_errors.set(stats.protocol_errors.get() + 1);
            }
            if report.timed_out {
                stats.frame_timeouts.set(stats.frame_timeouts.get() + 1);
            }
            stats
                .auth_failures
                .set(stats.auth_failures.get() + report.auth_failures);
            stats
                .resp_connections_open
                .set(stats.resp_connections_open.get() - 1);
            open.sub();
        })
        .detach();
    }
    listener.stop();
}

/// Stops a shard that has stopped accepting, within `DRAIN_TIMEOUT` in all: each
/// connection stops reading, answers what it has read (requests it forwarded to other
/// shards included) and closes; a peer that does not read its replies holds it up to the
/// frame timeout. Then the shard keeps answering requests forwarded from other shards
/// until each of them says it forwards nothing more (a shard leaving earlier would strand
/// them until the deadline), and every request here is answered. Every wait is on a
/// count, none in a sleeping loop.
async fn drain_shard(s: &ShardSetup, started: Started, connections: Connections) {
    let Started {
        store,
        gc,
        peers,
        handler,
        listener,
        admin,
        ..
    } = started;
    drop(listener);
    // The admin endpoint sees the same flag and stops listening before the executor ends.
    if let Some(admin) = admin {
        admin.await;
    }
    connections.stop.stop();
    let drained = async {
        connections.open.wait_until(|n| n == 0).await;
        peers.announce_drained().await;
        let others = peers.others();
        loop {
            peers.drained.wait_until(|n| n >= others).await;
            handler.in_flight.wait_until(|n| n == 0).await;
            if peers.drained.get() >= others && handler.in_flight.get() == 0 {
                return;
            }
        }
    };
    if glommio::timer::timeout(DRAIN_TIMEOUT, async {
        drained.await;
        Ok(())
    })
    .await
    .is_err()
    {
        tracing::warn!(shard = s.index, "drain deadline passed with requests in flight");
    }
    drop(gc);
    tracing::info!(shard = s.index, "stopped; {} objects", store.space().objects);
}
