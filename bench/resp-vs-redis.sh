#!/usr/bin/env bash
# Issue 21's benchmark, every figure against peers measured in the same run on this machine:
#  1. redis-benchmark -t set / -t get, -d 4096 -c 50 -P 16 -r KEYS (through the harness's
#     redis-benchmark:// target, 3 interleaved rounds) against hotshard's RESP port (one
#     shard, pinned to core 0), Redis with appendonly yes + appendfsync always (its data on
#     the same file system as the node's) and Redis without persistence, both on core 0;
#     redis-benchmark on core 1.
#  2. the harness's own generator: its redis:// target on hotshard's RESP port next to its
#     hotshard:// target on the native port (same node, same workload).
#  3. 1 again with the node on two shards (cores 0 and 1, shared with the generator).
# Needs redis-server and redis-benchmark (redis-tools). Usage: bench/resp-vs-redis.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
source bench/node-setup.sh
node_profile resp 7840 7849 256   # the RESP port is the default, 6400; admin clear of a second shard
taskset -c 0 redis-server --port 6390 --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis=$!
mkdir -p "$work/redis-aof"
taskset -c 0 redis-server --port 6393 --save "" --appendonly yes --appendfsync always \
    --dir "$(realpath "$work/redis-aof")" > "$work/redis-aof.log" 2>&1 &
redis_aof=$!
start_node
trap 'kill $node $redis $redis_aof 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work/redis-aof"; remove_node_data' EXIT
sleep 0.5

# redis-benchmark's -r is --keys: 1 is the issue's command as written (one key,
# "key:__rand_int__" never replaced), 10000 a working set in the node's cache (40 MB),
# 100000 one past it (400 MB against a 256 MiB cache: GETs reach the device).
rb="--connections 50 --pipeline 16 --value-size 4096 --rounds 3 --duration $d --quiet"
peers="--target redis-benchmark://127.0.0.1:6393 --target redis-benchmark://127.0.0.1:6390"
for keys in ${KEYS:-1 10000 100000}; do
    echo "### 1. SET 4 KiB, redis-benchmark -c 50 -P 16 -r $keys: hotshard RESP (durable), Redis appendfsync always, Redis without persistence"
    $B compare --target redis-benchmark://127.0.0.1:6400 $peers --mix put --keys "$keys" $rb
    echo "### 1. GET 4 KiB, redis-benchmark -c 50 -P 16 -r $keys (keys preloaded)"
    $B compare --target redis-benchmark://127.0.0.1:6400 $peers --mix get --keys "$keys" --preload $rb
done

echo "### 2. the harness's generator: native GET and PUT (hotshard://) against RESP (redis://) on the same node"
$B compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6400 \
    --mix get --keys 10000 --preload --rounds 3 --duration "$d" --quiet
$B compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6400 \
    --mix put --keys 10000 --rounds 3 --duration "$d" --quiet

echo "### 3. two shards (cores 0 and 1, shared with redis-benchmark; the node not pinned by taskset)"
kill $node; wait $node 2>/dev/null || true
sed -i 's/^cores = \[0\]/cores = [0, 1]/' "$work/node.toml"
remove_node_data
"$BIN/hotshard" serve --config "$work/node.toml" > "$work/node.log" 2>&1 &
node=$!
for _ in $(seq 300); do
    "$BIN/hotshard" map --addr "127.0.0.1:$port" >/dev/null 2>&1 && break
    sleep 0.1
done
$B compare --target redis-benchmark://127.0.0.1:6400 $peers --mix put --keys 10000 $rb
$B compare --target redis-benchmark://127.0.0.1:6400 $peers --mix get --keys 10000 --preload $rb
