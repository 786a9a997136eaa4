#!/usr/bin/env bash
# RESP SET (or GET: MIX=get PRELOAD=--preload) of 4 KiB values, redis-benchmark -c 50 -P 16
# -r KEYS (10,000 by default), against an older build (REV, built into target/ab-old) and
# this one running side by side, and Redis appendonly yes + appendfsync always, all three
# on core 0 and taken in turn within each round (the harness interleaves them); each
# node's and Redis's RSS at the end. Made for session 20's allocator change.
# Usage: bench/ab-resp-write.sh REV [DURATION]    (OLD_BIN=DIR: an old build already made)
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab-resp-write.sh REV [DURATION]}
d=${2:-5s}
keys=${KEYS:-10000}
source bench/node-setup.sh
node_profile abwrite 7840 7849 256
OLD=${OLD_BIN:-target/ab-old/release}
[ -n "${OLD_BIN:-}" ] || build_old "$rev"
for x in "old 7840 6400" "new 7860 6421"; do
    set -- $x
    mkdir -p "$work/$1"
    sed -e "s|$work/data|$work/$1/data|" -e "s|base_port = 7840|base_port = $2|" \
        -e "s|admin_port = 7849|admin_port = $(($2 + 9))\nresp_port = $3|" \
        "$work/node.toml" > "$work/$1/node.toml"
done
mkdir -p "$work/aof"
taskset -c 0 "$OLD/hotshard" serve --config "$work/old/node.toml" > "$work/old/log" 2>&1 &
old=$!
taskset -c 0 target/release/hotshard serve --config "$work/new/node.toml" > "$work/new/log" 2>&1 &
new=$!
taskset -c 0 redis-server --port 6393 --save "" --appendonly yes --appendfsync always \
    --dir "$(realpath "$work/aof")" > "$work/aof.log" 2>&1 &
redis=$!
trap 'kill $old $new $redis 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work/old/data" "$work/new/data" "$work/aof"' EXIT
# A node takes seconds to make its 2 GiB file: wait for each to answer.
for port in 6400 6421 6393; do
    for _ in $(seq 150); do redis-cli -p $port ping > /dev/null 2>&1 && break; sleep 0.2; done
done
echo "### RESP ${MIX:-put} 4 KiB, -r $keys -c 50 -P 16: old $rev (:6400) / new (:6421) / Redis always (:6393)"
taskset -c 1 $B compare --target redis-benchmark://127.0.0.1:6400 --target redis-benchmark://127.0.0.1:6421 \
    --target redis-benchmark://127.0.0.1:6393 --mix "${MIX:-put}" ${PRELOAD:-} --keys "$keys" \
    --connections 50 --pipeline 16 --value-size 4096 --rounds "${ROUNDS:-3}" --duration "$d" --quiet
echo "RSS KiB: old $(ps -o rss= -p $old) new $(ps -o rss= -p $new) redis $(ps -o rss= -p $redis)"
