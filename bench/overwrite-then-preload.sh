#!/usr/bin/env bash
# Reproduces RELIABILITY.md's by-hand check of the write stall: durable overwrites streamed
# at full speed through a one-shard 2 GiB node (core 0) for DURATION, then a preload of
# every key and a read pass. Before writes waited for GC, the preload was refused with
# NoSpace. Usage: bench/overwrite-then-preload.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-20s}
source bench/node-setup.sh
node_profile overwrite 7820 7891 0
start_node
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
echo "### durable PUT 4 KiB over 200K keys, 4 x 8 in flight, $d"
$B run --target hotshard://127.0.0.1:$port --mix put --keys 200000 --pipeline 8 --stream --duration "$d" --quiet
echo "### preload every key, then GET for 3 s"
$B run --target hotshard://127.0.0.1:$port --mix get --keys 200000 --pipeline 8 --stream --preload --duration 3s --quiet
curl -s "127.0.0.1:$admin/metrics" | grep -E "^hotshard_(write_stalls|no_space|gc_freed)"
