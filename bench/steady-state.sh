#!/usr/bin/env bash
# The engine at steady state (issue 18): one shard on core 0, 2 GiB store, cache off,
# generator on core 1 (bench/node-setup.sh), durable PUT 4 KiB over KEYS keys (default
# 200,000: 800 MB live, 40 % of the store), 4 x 8 in flight:
#   1. fresh: a run of DURATION on an empty store;
#   2. the store overwritten OVERWRITES times (default 3: KEYS x 4 KiB x 3 bytes of puts);
#   3. steady: a run of DURATION, with the GC counters read before and after it.
# Prints throughput and p99.9 of both runs and their ratios, and GC's bytes read per byte
# reclaimed during the steady run (reclaimed = freed segments x segment size - bytes moved).
# DIST=zipfian:0.99 (any --dist of hotshard-bench) overwrites hot keys more often.
# Usage: bench/steady-state.sh [DURATION] [KEYS] [OVERWRITES]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-8s}
keys=${2:-200000}
overwrites=${3:-3}
source bench/node-setup.sh
node_profile steady 7840 7841 0
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
start_node
load() {
    $B run --target hotshard://127.0.0.1:$port --mix put --keys "$keys" --pipeline 8 --stream \
        --dist "${DIST:-uniform}" --duration "$1" --quiet --allow-errors | awk '$1 ~ /^hotshard:/ {print $2, $6, $8}'
}
gc() {
    "$BIN/hotshard" stats --addr 127.0.0.1:$port | awk '
        /^hotshard_gc_read_bytes_total/ {r += $2} /^hotshard_gc_moved_bytes_total/ {m += $2}
        /^hotshard_gc_freed_segments_total/ {f += $2} /^hotshard_write_stalls_total/ {w += $2}
        /^hotshard_store_busy_total/ {b += $2} END {printf "%.0f %.0f %.0f %.0f %.0f\n", r, m, f, w, b}'
}
read -r fresh_ops fresh_p999 fresh_err <<< "$(load "$d")"
echo "fresh store: $fresh_ops ops/s, p99.9 $fresh_p999 us, $fresh_err error replies"
# Overwrite: at the fresh rate, KEYS x OVERWRITES puts take this long (at least 10 s).
secs=$(awk -v k="$keys" -v o="$overwrites" -v r="$fresh_ops" 'BEGIN {s = k * o / (r > 0 ? r : 1); print (s < 10 ? 10 : int(s) + 1)}')
read -r o_ops _ o_err <<< "$(load "${secs}s")"
echo "overwriting: ${secs} s at $o_ops ops/s ($o_err error replies)"
read -r r0 m0 f0 w0 b0 <<< "$(gc)"
read -r steady_ops steady_p999 steady_err <<< "$(load "$d")"
read -r r1 m1 f1 w1 b1 <<< "$(gc)"
seg=$((16 << 20))
echo "steady state: $steady_ops ops/s, p99.9 $steady_p999 us, $steady_err error replies"
awk -v fo="$fresh_ops" -v so="$steady_ops" -v fp="$fresh_p999" -v sp="$steady_p999" \
    -v r=$((r1 - r0)) -v m=$((m1 - m0)) -v f=$((f1 - f0)) -v w=$((w1 - w0)) -v b=$((b1 - b0)) -v seg=$seg 'BEGIN {
    printf "throughput steady / fresh: %.2f (bar >= 0.9)\n", so / fo
    printf "p99.9 steady / fresh: %.2f (bar <= 2)\n", sp / fp
    rec = f * seg - m
    printf "GC during the steady run: %.0f MB read, %.0f MB moved, %d segments freed, %d write stalls, %d engine Busy\n", r / 1e6, m / 1e6, f, w, b
    if (rec > 0) printf "GC bytes read per byte reclaimed: %.2f (bar <= 1.5)\n", r / rec
    else print "GC reclaimed nothing during the steady run"
}'
