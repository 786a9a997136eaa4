#!/usr/bin/env bash
# What the device and the threads do during GET 4 KiB from the device (cache off), 4 x 8 =
# 32 in flight, shard on core 0 and generator on core 1, against fio randread QD 32 on the
# same data file: traces 50 ms of block events and of the threads' syscalls with ftrace in
# the middle of each run and prints the device's mean reads in flight and latency and each
# thread's time per syscall (bench/trace_waves.py). Kernel timestamps inside one run, so
# they do not depend on the run-to-run swing. Needs root, tracefs, fio and python3.
# Usage: bench/trace-device-get.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/node-setup.sh
node_profile trace-get 7870 7971 0
source bench/ftrace.sh
EVENTS="block/block_rq_issue block/block_rq_complete"
SYSCALLS="raw_syscalls/sys_enter raw_syscalls/sys_exit"
# trace_threads FILE TID...: block events, and the syscalls of the given threads.
trace_threads() {
    local out=$1 filter="" t
    shift
    for t in "$@"; do filter="${filter:+$filter || }common_pid == $t"; done
    trace_50ms "$out" "$EVENTS" "$SYSCALLS" "$filter"
}
# labels PID NAME: TID=NAME-comm for every thread of PID.
labels() { for t in /proc/$1/task/*; do echo "${t##*/}=$2:$(cat "$t/comm")"; done; }
start_node
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
$B run --target hotshard://127.0.0.1:$port --mix get --keys 200000 --pipeline 8 --stream --preload \
    --duration 1s --quiet > /dev/null
$B run --target hotshard://127.0.0.1:$port --mix get --keys 200000 --pipeline 8 --stream \
    --duration 6s --quiet > "$work/load.out" &
load=$!
sleep 3
names="$(labels $node node) $(labels $load generator)"
trace_threads "$work/node.trace" $(for n in $names; do echo "${n%%=*}"; done)
wait $load
echo "### node: GET 4 KiB from the device, 4 x 8 in flight"
grep -E "^hotshard:" "$work/load.out"
python3 bench/trace_waves.py "$work/node.trace" $names
kill $node; wait $node 2>/dev/null || true
fio --name=anchor --filename="$work/data/data.img" --rw=randread --bs=4096 --iodepth=32 \
    --ioengine=io_uring --direct=1 --runtime=6 --time_based --cpus_allowed=0 --size=2G \
    --output-format=terse --terse-version=3 > "$work/fio.out" &
load=$!
sleep 3
names=$(for p in $(pgrep -f "name=anchor"); do labels "$p" fio; done)
trace_threads "$work/fio.trace" $(for n in $names; do echo "${n%%=*}"; done)
wait $load
echo "### fio randread QD 32, same file, core 0: $(awk -F';' '{print $8}' "$work/fio.out") IOPS"
python3 bench/trace_waves.py "$work/fio.trace" $names
