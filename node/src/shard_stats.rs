//! Per-shard request counters and latency histograms, rendered as Prometheus text.

use std::cell::{Cell, RefCell};
use std::fmt::Write;

use hotshard_nvme::BlockQueue;

use crate::store::Store;

/// Latency buckets in microseconds (upper bounds) for the histograms.
const BUCKETS_US: [u64; 12] = [
    25, 50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 51_200, 204_800,
];

#[derive(Default)]
pub struct OpStats {
    pub count: Cell<u64>,
    pub errors: Cell<u64>,
    pub bytes: Cell<u64>,
    buckets: RefCell<[u64; BUCKETS_US.len() + 1]>,
    sum_us: Cell<u64>,
}

impl OpStats {
    pub fn record(&self, micros: u64, bytes: u64, ok: bool) {
        self.count.set(self.count.get() + 1);
        if !ok {
            self.errors.set(self.errors.get() + 1);
        }
        self.bytes.set(self.bytes.get() + bytes);
        self.sum_us.set(self.sum_us.get() + micros);
        let i = BUCKETS_US
            .iter()
            .position(|b| micros <= *b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets.borrow_mut()[i] += 1;
    }
}

#[derive(Default)]
pub struct ShardStats {
    pub put: OpStats,
    pub get: OpStats,
    pub delete: OpStats,
    pub stat: OpStats,
    /// Records applied for a predecessor in a chain (time: until the tail had them).
    pub replicate: OpStats,
    /// Round trips to the next replica of a chain.
    pub pass_down: OpStats,
    /// Records this shard has written and is waiting for its successor to acknowledge.
    pub waiting_on_successor: Cell<u64>,
    pub forwarded: Cell<u64>,
    pub wrong_shard: Cell<u64>,
    /// Node-to-node requests refused because they named another node or shard.
    pub misaddressed: Cell<u64>,
    pub connections: Cell<u64>,
    /// Native connections open now.
    pub connections_open: Cell<u64>,
    pub connections_refused: Cell<u64>,
    /// Failed accepts (out of file descriptors, aborted handshakes), on any listener.
    pub accept_errors: Cell<u64>,
    pub protocol_errors: Cell<u64>,
    /// Requests answered Busy (over the shard's pending budget).
    pub busy: Cell<u64>,
    /// Keyed requests answered Busy because the node could not confirm its lease recently
    /// enough (self-fencing).
    pub fenced: Cell<u64>,
    /// Connections closed because a frame or a reply stalled past the frame timeout.
    pub frame_timeouts: Cell<u64>,
    /// Connections refused for a missing or wrong proof of the shared secret.
    pub auth_failures: Cell<u64>,
    /// Connections closed for a node-to-node request (Replicate, Reassert, SyncManifest)
    /// without a proof of the cluster's peer key.
    pub node_requests_refused: Cell<u64>,
    /// The addresses already logged for that (once each, at most `LOGGED_PEERS_MAX`).
    pub node_requests_refused_from: std::cell::RefCell<std::collections::HashSet<std::net::IpAddr>>,
    /// PUT payload bytes that arrived with their frame's header and were copied out of the
    /// connection's read buffer.
    pub payload_bytes_buffered: Cell<u64>,
    /// PUT payload bytes received from the socket straight into the payload's buffer.
    pub payload_bytes_direct: Cell<u64>,
    /// Expired objects buried by the expiry sweep (`expiry_sweep`).
    pub expired_buried: Cell<u64>,
    /// RESP connections accepted, and open now.
    pub resp_connections: Cell<u64>,
    pub resp_connections_open: Cell<u64>,
    /// RESP commands by name (COMMAND's names; "unknown" for the rest): (calls, errors).
    resp_commands: RefCell<std::collections::BTreeMap<&'static str, (u64, u64)>>,
}

impl ShardStats {
    /// Counts one RESP command, and whether its reply was an error.
    pub fn count_resp(&self, name: &'static str, ok: bool) {
        let mut m = self.resp_commands.borrow_mut();
        let e = m.entry(name).or_default();
        e.0 += 1;
        e.1 += u64::from(!ok);
    }

    /// Prometheus text for this shard.
    pub fn render<Q: BlockQueue>(&self, shard: usize, store: &Store<Q>) -> String {
        let mut out = String::new();
        let l = format!("shard=\"{shard}\"");
        for (name, op) in [
            ("put", &self.put),
            ("get", &self.get),
            ("delete", &self.delete),
            ("stat", &self.stat),
            ("replicate", &self.replicate),
            ("pass_down", &self.pass_down),
        ] {
            let _ = writeln!(out, "hotshard_ops_total{{{l},op=\"{name}\"}} {}", op.count.get());
            let _ = writeln!(
                out,
                "hotshard_op_errors_total{{{l},op=\"{name}\"}} {}",
                op.errors.get()
            );
            let _ = writeln!(
                out,
                "hotshard_op_bytes_total{{{l},op=\"{name}\"}} {}",
                op.bytes.get()
            );
            let buckets = op.buckets.borrow();
            let mut cumulative = 0;
            for (i, b) in BUCKETS_US.iter().enumerate() {
                cumulative += buckets[i];
                let _ = writeln!(
                    out,
                    "hotshard_op_latency_seconds_bucket{{{l},op=\"{name}\",le=\"{}\"}} {cumulative}",
                    *b as f64 / 1e6
                );
            }
            cumulative += buckets[BUCKETS_US.len()];
            let _ = writeln!(
                out,
                "hotshard_op_latency_seconds_bucket{{{l},op=\"{name}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                out,
                "hotshard_op_latency_seconds_sum{{{l},op=\"{name}\"}} {}",
                op.sum_us.get() as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "hotshard_op_latency_seconds_count{{{l},op=\"{name}\"}} {cumulative}"
            );
        }
        let c = store.counters();
        let cache = store.cache_stats();
        let space = store.space();
        let gauges: [(&str, u64); 43] = [
            ("hotshard_forwarded_total", self.forwarded.get()),
            ("hotshard_connections_open", self.connections_open.get()),
            ("hotshard_segment_bytes", space.segment_bytes),
            ("hotshard_wrong_shard_total", self.wrong_shard.get()),
            ("hotshard_misaddressed_total", self.misaddressed.get()),
            ("hotshard_connections_total", self.connections.get()),
            (
                "hotshard_connections_refused_total",
                self.connections_refused.get(),
            ),
            ("hotshard_accept_errors_total", self.accept_errors.get()),
            ("hotshard_protocol_errors_total", self.protocol_errors.get()),
            ("hotshard_busy_total", self.busy.get()),
            ("hotshard_fenced_refusals_total", self.fenced.get()),
            ("hotshard_frame_timeouts_total", self.frame_timeouts.get()),
            ("hotshard_auth_failures_total", self.auth_failures.get()),
            (
                "hotshard_node_requests_refused_total",
                self.node_requests_refused.get(),
            ),
            ("hotshard_cache_hits_total", cache.hits),
            ("hotshard_cache_misses_total", cache.misses),
            ("hotshard_cache_bytes", cache.bytes as u64),
            ("hotshard_objects", space.objects as u64),
            ("hotshard_live_bytes", space.live_bytes),
            ("hotshard_index_bytes", space.index_heap_bytes as u64),
            ("hotshard_segments_free", space.free_segments as u64),
            ("hotshard_segments_total", space.segments as u64),
            ("hotshard_gc_freed_segments_total", c.gc_freed_segments),
            ("hotshard_gc_flushes_total", c.gc_flushes),
            ("hotshard_write_stalls_total", c.write_stalls),
            ("hotshard_stalled_writes_total", c.stalled_writes),
            ("hotshard_stalled_write_us_total", c.stalled_write_us),
            ("hotshard_gc_read_us_total", c.gc_read_us),
            ("hotshard_gc_move_us_total", c.gc_move_us),
            ("hotshard_gc_free_us_total", c.gc_free_us),
            ("hotshard_gc_moved_bytes_total", c.gc_moved_bytes),
            ("hotshard_gc_read_bytes_total", c.gc_read_bytes),
            ("hotshard_corrupt_reads_total", c.corrupt_reads),
            ("hotshard_read_errors_total", c.read_errors),
            ("hotshard_write_errors_total", c.write_errors),
            ("hotshard_no_space_total", c.no_space),
            ("hotshard_batches_total", c.batches),
            ("hotshard_store_busy_total", c.busy),
            ("hotshard_recovery_lsn_anomalies_total", c.recovery_lsn_anomalies),
            ("hotshard_store_value_bytes_copied_total", c.value_bytes_copied),
            (
                "hotshard_store_value_bytes_in_place_total",
                c.value_bytes_in_place,
            ),
            (
                "hotshard_put_payload_bytes_buffered_total",
                self.payload_bytes_buffered.get(),
            ),
            (
                "hotshard_put_payload_bytes_direct_total",
                self.payload_bytes_direct.get(),
            ),
        ];
        for (name, v) in gauges {
            let _ = writeln!(out, "{name}{{{l}}} {v}");
        }
        let _ = writeln!(
            out,
            "hotshard_expired_buried_total{{{l}}} {}",
            self.expired_buried.get()
        );
        let _ = writeln!(
            out,
            "hotshard_resp_connections_total{{{l}}} {}",
            self.resp_connections.get()
        );
        let _ = writeln!(
            out,
            "hotshard_resp_connections_open{{{l}}} {}",
            self.resp_connections_open.get()
        );
        for (name, (calls, errors)) in self.resp_commands.borrow().iter() {
            let name = name.to_ascii_lowercase();
            let _ = writeln!(
                out,
                "hotshard_resp_commands_total{{{l},command=\"{name}\"}} {calls}"
            );
            let _ = writeln!(
                out,
                "hotshard_resp_command_errors_total{{{l},command=\"{name}\"}} {errors}"
            );
        }
        // Why the engine answered Busy (each a write that waited `max_write_wait`).
        for (why, n) in &c.busy_reasons {
            let _ = writeln!(
                out,
                "hotshard_store_busy_by_reason_total{{{l},reason=\"{why}\"}} {n}"
            );
        }
        out
    }
}
