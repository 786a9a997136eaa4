#!/usr/bin/env bash
# Where a RESP GET's time goes, against Redis's own (issue 32): redis-benchmark GETs of
# 10,000 cached 4 KiB keys (-c 50, -P 16 and -P 1) against hotshard's RESP port (one shard
# on core 0) and against Redis without persistence (core 0), each profiled with
# `perf record` while the load runs; prints throughput, CPU time per GET (perf's task-clock
# over the GETs answered) and the top symbols of each server, and keeps perf's data.
# Needs perf, redis-server and redis-benchmark. Usage: bench/profile-resp-get.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
source bench/node-setup.sh
node_profile profget 7860 7869 256
taskset -c 0 redis-server --port 6395 --save "" --appendonly no > "$work/redis.log" 2>&1 &
redis=$!
start_node
trap 'kill $node $redis 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
sleep 0.5
keys=10000
for p in 6400 6395; do
    taskset -c 1 redis-benchmark -p $p -t set -d 4096 -r $keys -n $((keys * 3)) -c 50 -P 16 -q > /dev/null
done
# GETs answered over the run, from the server's own count.
gets() {
    redis-cli -p "$1" info stats | tr -d '\r' | awk -F: '/^total_commands_processed/ {print $2}'
}
profile() {
    local name=$1 port=$2 pid=$3 pipeline=$4
    local before after
    before=$(gets "$port")
    taskset -c 1 redis-benchmark -p "$port" -t get -d 4096 -r $keys -n 100000000 -c 50 -P "$pipeline" -q \
        > "$work/$name-P$pipeline.rb" 2>&1 &
    local rb=$!
    sleep 1
    perf record -g -F 2999 -p "$pid" -o "$work/$name-P$pipeline.perf" -- sleep "$secs" 2> /dev/null
    perf stat -e task-clock -p "$pid" -x, -o "$work/$name-P$pipeline.stat" -- sleep "$secs"
    after=$(gets "$port")
    kill $rb 2>/dev/null || true
    wait $rb 2>/dev/null || true
    local ms
    ms=$(awk -F, '/task-clock/ {print $1}' "$work/$name-P$pipeline.stat")
    # The perf stat window is the last $secs of the two windows; GETs counted over both.
    awk -v n=$((after - before)) -v ms="$ms" -v s="$secs" -v name="$name" -v p="$pipeline" 'BEGIN {
        rate = n / (2 * s + 0.0);
        printf "%s -P %s: %.0f GET/s, %.2f us of CPU per GET\n", name, p, rate, ms * 1000 / (rate * s) }'
    perf report -i "$work/$name-P$pipeline.perf" --no-children --percent-limit 1.5 --stdio 2> /dev/null \
        | grep -E '^ +[0-9]' | head -25
}
for pipeline in 16 1; do
    echo "### GET 4 KiB, -r $keys, -c 50 -P $pipeline"
    profile hotshard 6400 $node $pipeline
    profile redis 6395 $redis $pipeline
done
