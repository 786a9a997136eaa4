#!/usr/bin/env bash
# The 90/10 zipfian mix of bench/node-vs-peers.sh (90 % GET / 10 % durable PUT, 4 KiB,
# zipfian 0.99, 10,000 keys preloaded, 4 x 16) for an older build (REV, built into
# target/ab-old) and this one, interleaved, each with its own generator and a 256 MiB
# cache, with Redis (no persistence) in the same round as the anchor; then durable PUT
# 4 KiB alone with the cache on, which is what a write-through cache costs a pure writer.
# Usage: bench/ab-mixed.sh REV [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab-mixed.sh REV [DURATION]}
d=${2:-5s}
source bench/node-setup.sh
node_profile abmixed 7830 7831 256
OLD=target/ab-old/release
NEW=target/release  # built by node_profile above
build_old "$rev"
taskset -c 0 redis-server --port 6392 --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis=$!
node=
trap 'kill $node $redis 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
sleep 0.5
mixed() {
    rm -rf "$work/data"; run_node "$1"
    $1/hotshard-bench compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6392 \
        --mix get=90,put=10 --dist zipfian:0.99 --keys 10000 --preload --rounds 1 --duration "$d" \
        --quiet | awk '/^1 / {printf "%s %s  ", $2, $3}'
    echo "cache hits $($1/hotshard stats --addr 127.0.0.1:$port | awk '/^hotshard_cache_hits_total/ {s += $2} END {print s}')"
    kill $node; wait $node 2>/dev/null || true; node=
}
puts() {
    rm -rf "$work/data"; run_node "$1"
    $1/hotshard-bench run --target hotshard://127.0.0.1:$port --mix put --keys 200000 --pipeline 8 \
        --stream --duration "$d" --quiet | awk '$1 ~ /^hotshard:/ {print $2 " ops/s, p99 " $5 ", p99.9 " $6}'
    kill $node; wait $node 2>/dev/null || true; node=
}
echo "### 90/10 zipfian 0.99, 4 KiB, 4 x 16, cache 256 MiB (old $rev / new), with Redis in each round"
for r in 1 2 3; do
    echo "round $r old: $(mixed $OLD)"
    echo "round $r new: $(mixed $NEW)"
done
echo "### durable PUT 4 KiB, 4 x 8, cache 256 MiB (what caching every write costs a writer)"
for r in 1 2 3; do
    echo "round $r old: $(puts $OLD) | new: $(puts $NEW)"
done
