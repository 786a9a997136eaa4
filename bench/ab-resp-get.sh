#!/usr/bin/env bash
# RESP GET of one key and of 10,000 cached keys (redis-benchmark -c 50 -d 4096, keys
# preloaded, pipelines of 16 and of 1: PIPELINES="16 1" by default) for an older build (REV, built into target/ab-old) and this one, interleaved,
# Redis without persistence in the same round as the anchor: the RESP read path's cost
# per command, old against new, in one run.
# Usage: bench/ab-resp-get.sh REV [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab-resp-get.sh REV [DURATION]}
d=${2:-5s}
source bench/node-setup.sh
node_profile abresp 7850 7859 256
OLD=target/ab-old/release
NEW=target/release
build_old "$rev"
taskset -c 0 redis-server --port 6394 --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis=$!
node=
trap 'kill $node $redis 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
sleep 0.5
get() {
    rm -rf "$work/data"; run_node "$1"
    $B compare --target redis-benchmark://127.0.0.1:6400 --target redis-benchmark://127.0.0.1:6394 \
        --mix get --keys "$2" --preload --connections 50 --pipeline "$3" --value-size 4096 \
        --rounds 1 --duration "$d" --quiet | awk '/^1 / {printf "%s %s  ", $2, $3}'
    echo
    kill $node; wait $node 2>/dev/null || true; node=
}
for pipeline in ${PIPELINES:-16 1}; do
    for keys in 1 10000; do
        echo "### RESP GET 4 KiB, -r $keys, -P $pipeline, old $rev / new, Redis in each round"
        for r in 1 2 3; do
            echo "round $r old: $(get $OLD $keys $pipeline)"
            echo "round $r new: $(get $NEW $keys $pipeline)"
        done
    done
done
