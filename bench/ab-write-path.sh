#!/usr/bin/env bash
# The write path before and after a change: builds REV (an older commit) next to the
# working tree and runs, interleaved round by round, on the bench/node-setup.sh profile
# (one shard on core 0, generator on core 1, cache off, default pool):
#   - durable PUT 4 KiB through the node (4 x 8 in flight, fresh store each run), each
#     build with its own generator, and the engine alone (hotshard-bench engine);
#     with the node's CPU per put (from /proc: user + system time over acknowledged puts);
#   - durable PUT 1 MiB (500 keys, C x 2 in flight for C in $CONNS, default "4 12"), with
#     the new generator against both nodes, so that error replies are counted apart, and
#     the new node's engine Busy count (hotshard_store_busy_total).
# Needs nothing but the two builds. Usage: bench/ab-write-path.sh REV [DURATION] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab-write-path.sh REV [DURATION] [ROUNDS]}
d=${2:-5s}
rounds=${3:-3}
source bench/node-setup.sh
node_profile ab-write 7870 7871 0
OLD=target/ab-old/release
NEW=target/release  # built by node_profile above
build_old "$rev"
node=
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
stop_node() { kill $node; wait $node 2>/dev/null || true; node=; }

# cpu_ticks PID: user + system CPU the process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# cpu_per_op TICKS OPS_PER_S: the node's CPU microseconds per operation over the run, and
# the share of its core it used.
cpu_per_op() {
    awk -v t="$1" -v r="$2" -v hz="$(getconf CLK_TCK)" -v d="${d%s}" \
        'BEGIN {s = t / hz; per = 0; if (r > 0) per = s * 1e6 / (r * d); printf "node CPU %.2f us/op (%.0f%% of its core)", per, 100 * s / d}'
}

# put_4k BIN: ops/s, p99 and p99.9 (us) of durable 4 KiB puts through that build's node,
# and the node's CPU per put.
put_4k() {
    rm -rf "$work/data"
    run_node "$1"
    local t0 ops
    t0=$(cpu_ticks $node)
    "$1/hotshard-bench" run --target hotshard://127.0.0.1:$port --mix put --keys 200000 --pipeline 8 \
        --stream --duration "$d" --quiet > "$work/out.txt"
    ops=$(awk '$1 ~ /^hotshard:/ {print $2}' "$work/out.txt")
    awk '$1 ~ /^hotshard:/ {printf "%s ops/s, p99 %s, p99.9 %s, ", $2, $5, $6}' "$work/out.txt"
    cpu_per_op $(( $(cpu_ticks $node) - t0 )) "$ops"
    echo
    stop_node
}
# engine_4k BIN: the engine alone, put phase, ops/s.
engine_4k() {
    "$1/hotshard-bench" engine --path "$work/engine.img" --size 2147483648 --objects 200000 --writers 32 \
        --readers 32 --duration "$d" --recovery-objects 0 --index-objects 1000 --core 0 > "$work/engine.out"
    rm -f "$work/engine.img"
    awk '/^hotshard put/ {print $4}' "$work/engine.out"
}
# put_1m BIN CONNECTIONS: completed 1 MiB puts/s, MB/s, p99, error replies, engine Busy.
put_1m() {
    rm -rf "$work/data"
    run_node "$1"
    local t0
    t0=$(cpu_ticks $node)
    taskset -c 1 $NEW/hotshard-bench run --target hotshard://127.0.0.1:$port --mix put --keys 500 \
        --value-size 1048576 --connections "$2" --pipeline 2 --stream --duration "$d" --cores 1 --quiet \
        --allow-errors > "$work/out.txt"
    awk '$1 ~ /^hotshard:/ {printf "%s ops/s, %s MB/s, p99 %s us, %s error replies, ", $2, $3, $5, $8}' "$work/out.txt"
    cpu_per_op $(( $(cpu_ticks $node) - t0 )) "$(awk '$1 ~ /^hotshard:/ {print $2}' "$work/out.txt")"
    echo ", engine Busy $($NEW/hotshard stats --addr 127.0.0.1:$port |
        awk '/^hotshard_store_busy_total/ {s += $2; n++} END {print n ? s : "not counted"}')"
    stop_node
}

echo "### durable PUT 4 KiB (old $rev / new), node and engine alone, $rounds interleaved rounds of $d"
for r in $(seq "$rounds"); do
    echo "round $r node:   old $(put_4k $OLD) | new $(put_4k $NEW)"
    echo "round $r engine: old $(engine_4k $OLD) ops/s | new $(engine_4k $NEW) ops/s"
done
for c in ${CONNS:-4 12}; do
    echo "### durable PUT 1 MiB, $c x 2 in flight, the new generator against both nodes"
    for r in $(seq "$rounds"); do
        echo "round $r old: $(put_1m $OLD "$c")"
        echo "round $r new: $(put_1m $NEW "$c")"
    done
done
