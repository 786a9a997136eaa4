#!/usr/bin/env bash
# Issue 33's listing benchmark: an index of KEYS entries (default 1,000,000) of one tag
# loaded into a one-shard node (core 0) through RESP, then pages of 1,000 keys from random
# places through the native client (core 1), against the same pages from a BTreeMap in the
# harness's process, a loopback TCP ping-pong carrying a reply of the page's size, and SCAN
# COUNT 1000 over the same keys on hotshard and on Redis (no persistence, core 0).
# Needs redis-server. Usage: KEYS=N bench/list-pages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
keys=${KEYS:-1000000}
source bench/node-setup.sh
node_profile listpages 7870 7879 256
taskset -c 0 redis-server --port 6397 --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis=$!
start_node
trap 'kill $node $redis 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
sleep 0.5
taskset -c 1 $B list --addr 127.0.0.1:$port --resp 127.0.0.1:6400 --redis 127.0.0.1:6397 --keys "$keys" --pages 300
