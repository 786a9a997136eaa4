#!/usr/bin/env bash
# Where a durable group-commit batch spends its time, in the node (durable PUT 4 KiB, 4 x 8
# in flight, generator on core 1) and in the engine alone (32 writers, core 0, core 1 idle):
# traces 50 ms of block and workqueue events with ftrace in the middle of each
# run and prints the steps of one batch (bench/trace_batch.py). Needs root, tracefs and
# python3. The numbers come from the kernel's own timestamps, so they do not depend on
# the run-to-run swing of throughput on this VM. GEN=PATH runs another build's generator
# (BIN=DIR another build's node and engine). Usage: bench/trace-durable-put.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/node-setup.sh
node_profile trace 7850 7951 0
source bench/ftrace.sh
EVENTS="block/block_rq_issue block/block_rq_complete workqueue/workqueue_execute_start
        workqueue/workqueue_execute_end"
# The shard's own replies and requests (sendmsg, recvfrom), filtered to its thread: they
# split the wait for the next batch into the node's turnaround and the clients' round trip.
SYSCALLS="syscalls/sys_enter_sendmsg syscalls/sys_exit_recvfrom"
start_node
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
shard_tid=$(grep -l "^shard-0" /proc/$node/task/*/comm | head -1 | cut -d/ -f5)
${GEN:-$B} run --target hotshard://127.0.0.1:$port --mix put --keys 200000 --pipeline 8 --stream --duration 6s --quiet &
load=$!
sys=""
[ -d $T/events/syscalls ] && sys=$SYSCALLS
sleep 3; trace_50ms "$work/node.trace" "$EVENTS" "$sys" "common_pid == $shard_tid"; wait $load
echo "### node: durable PUT 4 KiB, 4 x 8 in flight, shard on core 0, generator on core 1"
python3 bench/trace_batch.py "$work/node.trace"
kill $node; wait $node 2>/dev/null || true
$B engine --path "$work/engine.img" --size 4294967296 --objects 600000 --writers 32 --readers 32 \
    --duration 2s --recovery-objects 0 --index-objects 1000 --core 0 > "$work/engine.out" &
load=$!
# The put phase starts after the file is laid out (a few seconds): trace a window every
# half second and keep the one with the most durable writes in it.
best=0
for i in $(seq 16); do
    sleep 0.45; kill -0 $load 2>/dev/null || break
    trace_50ms "$work/window.trace" "$EVENTS" "" ""
    n=$(grep -c "block_rq_issue.* WS " "$work/window.trace" || true)
    if [ "$n" -gt "$best" ]; then best=$n; cp "$work/window.trace" "$work/engine.trace"; fi
done
wait $load
echo "### the engine alone: 32 writers on core 0, core 1 idle"
python3 bench/trace_batch.py "$work/engine.trace"
grep -E "^hotshard put" "$work/engine.out"
