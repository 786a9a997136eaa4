#!/usr/bin/env bash
# Replicated durable PUT 4 KiB: three one-shard nodes on loopback (cores 0, 1, 0), etcd and a
# coordinator, formed once with replication factor 3 and once with 1 (a fresh cluster and
# fresh stores each time), rounds interleaved; the generator (core 1) sends every PUT to its
# partition's head. Then GET 4 KiB (cache hits, preloaded) on the same two clusters: the
# read path of a replicated cluster against an unreplicated one on the same nodes.
# Prints ops/s, p50 and p99 per round and the medians' ratios.
# Usage: bench/replicated-put.sh [DURATION] [ROUNDS]   (env EXTRA_TOML: appended to each node's config)
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
rounds=${2:-3}
work=target/bench/replicated
source bench/cluster-setup.sh

# load MIX: the generator on core 1 against the cluster; prints "ops/s p50 p99".
load() {
    local extra=()
    [ "$1" = get ] && extra=(--preload --keys 20000) || extra=(--keys 100000)
    taskset -c 1 "$B/hotshard-bench" run --target hotshard://127.0.0.1:7900 --mix "$1" \
        --connections "${CONNS:-4}" --pipeline "${PIPELINE:-8}" --stream --duration "$d" --quiet "${extra[@]}" \
        | awk '$1 ~ /^hotshard:/ {print $2, $4, $5}'
}

declare -A res
for r in $(seq "$rounds"); do
    for rf in 3 1; do
        for mix in put get; do
            start_cluster "rf$rf-$mix-$r" "$rf"
            out=$(load "$mix")
            stop_cluster
            res[$rf-$mix-$r]=$out
            echo "round $r RF $rf $mix: $out   (ops/s p50 p99)"
        done
    done
done
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for mix in put get; do
    for rf in 3 1; do
        ops=$(for r in $(seq "$rounds"); do echo "${res[$rf-$mix-$r]}" | awk '{print $1}'; done | median)
        p50=$(for r in $(seq "$rounds"); do echo "${res[$rf-$mix-$r]}" | awk '{print $2}'; done | median)
        echo "median RF $rf $mix: $ops ops/s, p50 $p50"
        declare "m_${rf}_$mix=$ops" "p_${rf}_$mix=$p50"
    done
    awk -v a="$(eval echo \$m_3_$mix)" -v b="$(eval echo \$m_1_$mix)" -v pa="$(eval echo \$p_3_$mix)" \
        -v pb="$(eval echo \$p_1_$mix)" -v m="$mix" \
        'BEGIN {printf "%s: RF 3 / RF 1 throughput %.2f, p50 %.2fx\n", m, a / b, pa / pb}'
done
