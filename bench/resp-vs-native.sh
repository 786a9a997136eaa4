#!/usr/bin/env bash
# The RESP path against the native one on the same node and the same generator: the
# harness's redis:// target on the RESP port (6400) next to its hotshard:// target on the
# native port, GET (10,000 keys preloaded, from the cache) and durable PUT/SET, 4 KiB,
# 4 connections x 16, 3 interleaved rounds. One shard on core 0, the generator on core 1.
# Usage: bench/resp-vs-native.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
source bench/node-setup.sh
node_profile resp-native 7840 7849 256
start_node
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
sleep 0.5
echo "### GET 4 KiB: native (hotshard://) against RESP (redis://), same node"
$B compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6400 \
    --mix get --keys 10000 --preload --rounds 3 --duration "$d" --quiet
echo "### durable PUT / SET 4 KiB: native against RESP"
$B compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6400 \
    --mix put --keys 10000 --rounds 3 --duration "$d" --quiet
