#!/usr/bin/env bash
# Cache GET 4 KiB (4 x 16, 10,000 keys, preloaded) against Redis in the same round, for an old
# build (REV, built into target/ab-old) and this one, interleaved, each with its own generator.
# Usage: bench/ab-cache-get.sh REV
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: bench/ab-cache-get.sh REV}
source bench/node-setup.sh
node_profile abget 7820 7821 256
OLD=target/ab-old/release
NEW=target/release  # built by node_profile above
build_old "$rev"
taskset -c 0 redis-server --port 6391 --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis=$!
node=
trap 'kill $node $redis 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
sleep 0.5
one() {
    rm -rf "$work/data"; run_node "$1"
    $1/hotshard-bench compare --target hotshard://127.0.0.1:$port --target redis://127.0.0.1:6391 \
        --mix get --keys 10000 --preload --rounds 1 --duration 5s --quiet | awk '/^1 / {printf "%s %s  ", $2, $3}'
    echo
    kill $node; wait $node 2>/dev/null || true; node=
}
for r in 1 2 3; do
    echo "round $r old: $(one $OLD)"
    echo "round $r new: $(one $NEW)"
done
