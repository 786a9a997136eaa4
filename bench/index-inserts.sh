#!/usr/bin/env bash
# Issue 33's insert benchmark: a million new entries of one bucket index (`{bucket}key:%010d`,
# every key written once, in key order) through a three-node cluster with replication factor
# 3, against a million plain PUTs of the same 256-byte values (no tag: spread over every
# chain) on the same cluster shape, a fresh cluster for each run, rounds interleaved. The
# generator runs on core 1, sending each PUT to its partition's head. Prints entries/s, p50
# and p99 per run and the medians' ratio.
# Usage: bench/index-inserts.sh [ENTRIES] [ROUNDS]
#   (env SPLIT_ENTRIES: the nodes' cluster.split_entries, default 0 = the index never splits)
set -euo pipefail
cd "$(dirname "$0")/.."
entries=${1:-1000000}
rounds=${2:-3}
work=target/bench/index-inserts
EXTRA_TOML="split_entries = ${SPLIT_ENTRIES:-0}"
source bench/cluster-setup.sh

# insert KIND: ENTRIES new keys (tagged for "index"); prints "ops/s p50 p99".
insert() {
    local tag=()
    [ "$1" = index ] && tag=(--key-tag bucket)
    taskset -c 1 "$B/hotshard-bench" run --target hotshard://127.0.0.1:7900 --mix put \
        --dist sequential --keys $((2 * entries)) --ops "$entries" --value-size 256 \
        --connections 6 --pipeline 16 --stream --quiet --allow-errors "${tag[@]}" \
        | awk '$1 ~ /^hotshard:/ {print $2, $4, $5}'
}

declare -A res
for r in $(seq "$rounds"); do
    for kind in index plain; do
        start_cluster "$kind-$r" 3
        res[$kind-$r]=$(insert "$kind")
        [ "$kind" = index ] && "$B/hotshard" ls '{bucket}' --addr 127.0.0.1:7900 2>/dev/null \
            | wc -l | xargs echo "  entries listed after the run:"
        stop_cluster
        echo "round $r $kind: ${res[$kind-$r]}   (entries/s p50 p99)"
    done
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for kind in index plain; do
    m=$(for r in $(seq "$rounds"); do echo "${res[$kind-$r]}" | awk '{print $1}'; done | median)
    echo "median $kind: $m entries/s"
    declare "m_$kind=$m"
done
awk -v a="$m_index" -v b="$m_plain" 'BEGIN {printf "index inserts / plain PUTs: %.2f\n", a / b}'
