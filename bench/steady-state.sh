#!/usr/bin/env bash
# The engine at steady state (issues 18 and 36): one shard on core 0, 2 GiB store, cache
# off, generator on core 1 (bench/node-setup.sh), durable PUT 4 KiB over KEYS keys (default
# 230,000: 940 MB live, about 45 % of the store), 4 x 8 in flight. Each of RUNS runs
# (default 1), on a store made fresh for it:
#   1. fresh: a run of DURATION on the empty store;
#   2. the store overwritten OVERWRITES times (default 4: KEYS x 4 KiB x 4 bytes of puts);
#   3. steady: a run of DURATION, with the GC counters read before and after it and the
#      free segments sampled every 0.2 s during it.
# Prints, per run, throughput and p50/p99/p99.9 of both runs and their ratios; writes that
# waited for GC and how long; where GC's time went (reading victims, moving their records,
# marking them free); GC's bytes read and written per byte reclaimed (reclaimed = freed
# segments x segment size - bytes moved); the fewest free segments seen.
# DIST=zipfian:0.99 (any --dist of hotshard-bench) overwrites hot keys more often.
# GC_HEAD=own|shared sets store.gc_head (where GC writes what it moves; default: the node's);
# GC_VICTIMS=greedy|cost-benefit sets store.gc_victims.
# Usage: bench/steady-state.sh [DURATION] [KEYS] [OVERWRITES]    (RUNS=N, DIST=..., GC_HEAD=..., GC_VICTIMS=...)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-8s}
keys=${2:-230000}
overwrites=${3:-4}
source bench/node-setup.sh
node_profile steady 7840 7841 0
[ -n "${GC_HEAD:-}" ] && echo "gc_head = \"$GC_HEAD\"" >> "$work/node.toml"
[ -n "${GC_VICTIMS:-}" ] && echo "gc_victims = \"$GC_VICTIMS\"" >> "$work/node.toml"
trap 'kill $node 2>/dev/null || true; kill $sampler 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
sampler=
load() {
    $B run --target hotshard://127.0.0.1:$port --mix put --keys "$keys" --pipeline 8 --stream \
        --dist "${DIST:-uniform}" --duration "$1" --quiet --allow-errors |
        awk '$1 ~ /^hotshard:/ {print $2, $4, $5, $6, $8}'
}
stats() { "$BIN/hotshard" stats --raw --addr 127.0.0.1:$port; }
gc() {
    stats | awk '
        /^hotshard_gc_read_bytes_total/ {r += $2} /^hotshard_gc_moved_bytes_total/ {m += $2}
        /^hotshard_gc_freed_segments_total/ {f += $2} /^hotshard_stalled_writes_total/ {w += $2}
        /^hotshard_stalled_write_us_total/ {wu += $2} /^hotshard_store_busy_total/ {b += $2}
        /^hotshard_gc_read_us_total/ {gr += $2} /^hotshard_gc_move_us_total/ {gm += $2}
        /^hotshard_gc_free_us_total/ {gf += $2} /^hotshard_gc_flushes_total/ {fl += $2}
        END {printf "%.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n", r, m, f, w, wu, b, gr, gm, gf, fl}'
}
# The fewest free segments seen, every 0.2 s until killed, into $1.
sample_free() {
    local min=999999 f
    while true; do
        f=$(stats 2>/dev/null | awk '/^hotshard_segments_free/ {s += $2} END {print s + 0}')
        [ "$f" -lt "$min" ] && min=$f && echo "$min" > "$1"
        sleep 0.2
    done
}
for run in $(seq "${RUNS:-1}"); do
    start_node
    read -r f_ops f_p50 f_p99 f_p999 f_err <<< "$(load "$d")"
    # Overwrite: at the fresh rate, KEYS x OVERWRITES puts take this long (at least 10 s).
    secs=$(awk -v k="$keys" -v o="$overwrites" -v r="$f_ops" 'BEGIN {s = k * o / (r > 0 ? r : 1); print (s < 10 ? 10 : int(s) + 1)}')
    read -r o_ops _ _ _ o_err <<< "$(load "${secs}s")"
    read -r r0 m0 fr0 w0 wu0 b0 gr0 gm0 gf0 fl0 <<< "$(gc)"
    sample_free "$work/free-min" &
    sampler=$!
    read -r s_ops s_p50 s_p99 s_p999 s_err <<< "$(load "$d")"
    kill $sampler 2>/dev/null || true
    wait $sampler 2>/dev/null || true
    read -r r1 m1 fr1 w1 wu1 b1 gr1 gm1 gf1 fl1 <<< "$(gc)"
    echo "### run $run of ${RUNS:-1} (${DIST:-uniform}, gc_head ${GC_HEAD:-default}, victims ${GC_VICTIMS:-default}, $keys keys, overwritten ${secs} s at $o_ops ops/s, $o_err errors)"
    awk -v fo="$f_ops" -v so="$s_ops" -v f50="$f_p50" -v f99="$f_p99" -v f999="$f_p999" \
        -v s50="$s_p50" -v s99="$s_p99" -v s999="$s_p999" -v fe="$f_err" -v se="$s_err" \
        -v r=$((r1 - r0)) -v m=$((m1 - m0)) -v fr=$((fr1 - fr0)) -v w=$((w1 - w0)) -v wu=$((wu1 - wu0)) \
        -v b=$((b1 - b0)) -v gr=$((gr1 - gr0)) -v gm=$((gm1 - gm0)) -v gf=$((gf1 - gf0)) -v fl=$((fl1 - fl0)) \
        -v freemin="$(cat "$work/free-min" 2>/dev/null || echo '?')" -v seg=$((16 << 20)) 'BEGIN {
        printf "fresh:  %.0f ops/s, p50 %.0f us, p99 %.0f us, p99.9 %.0f us, %d errors\n", fo, f50, f99, f999, fe
        printf "steady: %.0f ops/s, p50 %.0f us, p99 %.0f us, p99.9 %.0f us, %d errors\n", so, s50, s99, s999, se
        printf "steady / fresh: throughput %.2f (bar >= 0.9), p50 %.2f, p99 %.2f, p99.9 %.2f (bar <= 2)\n", so / fo, s50 / f50, s99 / f99, s999 / f999
        printf "writes that waited for GC: %d (goal 0), %.1f ms in all, %.1f ms each; engine Busy %d\n", w, wu / 1000, (w > 0 ? wu / w / 1000 : 0), b
        t = gr + gm + gf
        printf "GC time: %.0f ms (read %.0f %%, move %.0f %%, free mark %.0f %%); fewest free segments %s\n", t / 1000, (t ? 100 * gr / t : 0), (t ? 100 * gm / t : 0), (t ? 100 * gf / t : 0), freemin
        rec = fr * seg - m
        printf "GC: %.0f MB read, %.0f MB moved, %d segments freed, %d flushes\n", r / 1e6, m / 1e6, fr, fl
        if (rec > 0) printf "GC bytes per byte reclaimed: read %.2f (bar <= 1.5), written %.2f\n", r / rec, m / rec
        else print "GC reclaimed nothing during the steady run"
    }'
    kill $node 2>/dev/null || true
    wait $node 2>/dev/null || true
    rm -f "$work/free-min"
done
