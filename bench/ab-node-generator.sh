#!/usr/bin/env bash
# Which side of a change moved a figure: builds REV (an older commit) next to the working
# tree and runs every pairing of node and generator, old and new, in interleaved rounds on
# the bench/node-setup.sh profile (one shard on core 0, generator on core 1, cache off):
# GET 4 KiB from the device (32 in flight) with fio randread QD 32 on the same file in each
# round, then durable PUT 4 KiB (4 x 8 in flight) on a fresh store for each run.
# Needs fio. Usage: bench/ab-node-generator.sh REV [DURATION] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab-node-generator.sh REV [DURATION] [ROUNDS]}
d=${2:-5s}
rounds=${3:-3}
source bench/node-setup.sh
node_profile ab 7890 7991 0
OLD=target/ab-old/release
NEW=target/release  # built by node_profile below
build_old "$rev"
node=
stop_node() { kill $node; wait $node 2>/dev/null || true; }
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
# load NODE_BIN GEN_BIN MIX [--preload]: ops/s of one run.
load() {
    run_node "$1"
    "$2/hotshard-bench" run --target hotshard://127.0.0.1:$port --mix "$3" --keys 200000 --pipeline 8 \
        --stream ${4:-} --duration "$d" --quiet | awk '$1 ~ /^hotshard:/ {print $2}'
    stop_node
}
pairs=("$OLD $OLD" "$NEW $OLD" "$OLD $NEW" "$NEW $NEW")
echo "node/generator:            old/old   new/old   old/new   new/new   (old = $(git rev-parse --short "$rev"), new = working tree)"
rm -rf "$work/data"
load $NEW $NEW get --preload > /dev/null
for r in $(seq "$rounds"); do
    line=""
    for p in "${pairs[@]}"; do line="$line $(load $p get)"; done
    f=$(fio_randread)
    echo "round $r device GET ops/s: $line   fio QD 32: $f IOPS; ratios:" \
        $(for n in $line; do awk -v a="$n" -v b="$f" 'BEGIN {printf "%.2f ", a / b}'; done)
done
for r in $(seq "$rounds"); do
    line=""
    for p in "${pairs[@]}"; do rm -rf "$work/data"; line="$line $(load $p put)"; done
    echo "round $r durable PUT ops/s: $line"
done
