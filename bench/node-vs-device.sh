#!/usr/bin/env bash
# Reproduces the node-against-device table of BENCHMARKS.md on one shard (core 0) with the
# generator on core 1: durable PUT 4 KiB against the engine alone (`hotshard-bench engine`;
# three interleaved rounds with core 1 idle, then once with core 1 kept busy: see
# BENCHMARKS.md for why both), and GET 4 KiB served from the device (cache off) against fio
# randread at the same total queue depth on the node's own data file, three interleaved
# rounds. Needs fio.
# Usage: bench/node-vs-device.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
source bench/node-setup.sh
node_profile device 7810 7881 0
start_node
hog=
trap 'kill $node $hog 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT

echo "### durable PUT 4 KiB, 4 connections x 8 in flight, fresh store, against the engine alone"
echo "### (put phase of hotshard-bench engine: same size, 32 writers, same core), 3 interleaved rounds"
engine_put() {
    $B engine --path "$work/engine.img" --size 2147483648 --objects 200000 --writers 32 --readers 32 \
        --duration "$d" --recovery-objects 0 --index-objects 1000 --core 0 > "$work/engine.out"
    rm -f "$work/engine.img"
    awk '/^hotshard put/ {print $4}' "$work/engine.out"
}
for r in 1 2 3; do
    [ "$r" = 1 ] || { kill $node; wait $node 2>/dev/null || true; start_node; }
    n=$($B run --target hotshard://127.0.0.1:$port --mix put --keys 200000 --pipeline 8 --stream \
        --duration "$d" --quiet | awk '$1 ~ /^hotshard:/ {print $2}')
    e=$(engine_put)
    echo "round $r: hotshard $n ops/s, engine alone $e ops/s, ratio $(awk -v a="$n" -v b="$e" 'BEGIN {printf "%.2f", a / b}')" |
        tee -a "$work/put-rounds.txt"
done
echo "median ratio: $(awk '{print $NF}' "$work/put-rounds.txt" | sort -n | sed -n 2p)"
echo "### the engine alone, last round's full output"
cat "$work/engine.out"
spin_core1() { taskset -c 1 sh -c 'while :; do :; done' & hog=$!; }
echo "### the engine alone, core 1 kept busy by a spin loop (as the generator keeps it in the node run)"
spin_core1
echo "engine alone, core 1 busy: $(engine_put) ops/s"
grep -E "^(run|hotshard put)" "$work/engine.out"
kill $hog; wait $hog 2>/dev/null || true
# A fresh store for the reads: the put phase leaves it full of overwritten values.
kill $node; wait $node 2>/dev/null || true
start_node
echo "### GET 4 KiB from the device (cache off), 4 x 8 = 32 in flight, against fio randread"
echo "### QD 32 on the node's data file (core 0), 3 interleaved rounds"
for r in 1 2 3; do
    pre=""; [ "$r" = 1 ] && pre=--preload
    n=$($B run --target hotshard://127.0.0.1:$port --mix get --keys 200000 --pipeline 8 --stream $pre \
        --duration "$d" --quiet | awk '$1 ~ /^hotshard:/ {print $2}')
    f=$(fio_randread)
    echo "round $r: hotshard $n ops/s, fio $f IOPS, ratio $(awk -v a="$n" -v b="$f" 'BEGIN {printf "%.2f", a / b}')"
done | tee "$work/get-rounds.txt"
echo "median ratio: $(awk '{print $NF}' "$work/get-rounds.txt" | sort -n | sed -n 2p)"
echo "### fio randread QD 32 again, with core 1 kept busy by a spin loop"
spin_core1
echo "fio randread QD32, core 1 busy: $(fio_randread) IOPS"
kill $hog; wait $hog 2>/dev/null || true
grep -E "virtio.*req|nvme" /proc/interrupts | head -2
