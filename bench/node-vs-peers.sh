#!/usr/bin/env bash
# Reproduces the node-against-peers tables of BENCHMARKS.md: one hotshard shard, Redis and
# memcached (one worker thread) all pinned to core 0, the generator on core 1, loopback;
# in the mixed load also Redis with every write fsynced (appendfsync always, its data on the
# same file system as the node's), the durable peer.
# Needs redis-server, redis-benchmark and memcached. Usage: bench/node-vs-peers.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
source bench/node-setup.sh
node_profile peers 7800 7880 256
taskset -c 0 redis-server --port 6390 --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis=$!
mkdir -p "$work/redis-aof"
taskset -c 0 redis-server --port 6393 --save "" --appendonly yes --appendfsync always \
    --dir "$(realpath "$work/redis-aof")" > "$work/redis-aof.log" 2>&1 &
redis_aof=$!
taskset -c 0 memcached -u root -p 11311 -l 127.0.0.1 -m 1024 -t 1 > "$work/memcached.log" 2>&1 &
mc=$!
start_node
trap 'kill $node $redis $redis_aof $mc 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work/redis-aof"; remove_node_data' EXIT
sleep 0.5

echo "### generator check: our redis:// target against redis-benchmark, GET then SET"
$B compare --target redis://127.0.0.1:6390 --target redis-benchmark://127.0.0.1:6390 \
    --mix get --keys 10000 --preload --rounds 3 --duration "$d" --quiet
$B compare --target redis://127.0.0.1:6390 --target redis-benchmark://127.0.0.1:6390 \
    --mix put --keys 10000 --rounds 3 --duration "$d" --quiet

echo "### GET 4 KiB, uniform, 4 connections x 16 pipelined"
$B compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6390 \
    --target memcached://127.0.0.1:11311 --mix get --keys 10000 --preload --rounds 3 --duration "$d" --quiet

echo "### 90% GET / 10% PUT 4 KiB, zipfian 0.99 (hotshard's and the second Redis's puts are"
echo "### durable, 6393 with appendfsync always; the others' are not)"
$B compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6390 \
    --target redis://127.0.0.1:6393 --target memcached://127.0.0.1:11311 --mix get=90,put=10 \
    --dist zipfian:0.99 --keys 10000 --rounds 3 --duration "$d" --quiet

echo "### open loop: latency against offered rate, GET 4 KiB from the cache"
$B sweep --target hotshard://127.0.0.1:$port --knob rate=50000,100000,200000,300000 \
    --mix get --keys 10000 --connections 8 --pipeline 32 --duration "$d" --warmup 1s \
    --plot bench/results/node-open-loop.svg --quiet
$B sweep --target redis://127.0.0.1:6390 --knob rate=50000,100000,200000,300000 \
    --mix get --keys 10000 --connections 8 --pipeline 32 --duration "$d" --warmup 1s \
    --plot bench/results/redis-open-loop.svg --quiet
