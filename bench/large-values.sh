#!/usr/bin/env bash
# Large values at the device's speed (issues 18 and 36): durable PUTs of 64 KiB, 256 KiB and
# 1 MiB (SIZES="bytes ..." to choose), 4
# connections x 2 in flight (8), 500 keys, on one shard (core 0, 2 GiB, cache off, generator
# on core 1), against fio random writes of the same size at queue depth 8 on the node's own
# data file with O_DSYNC (each write durable when it completes, as a PUT's batch is), after
# the node has stopped. Prints MB/s of each and the ratio.
# Usage: bench/large-values.sh [DURATION]    (SIZES="...", STORE="writes_in_flight = 16")
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
source bench/node-setup.sh
node_profile large 7850 7851 0
# STORE="key = value" adds a [store] setting (an A/B of one knob).
[ -n "${STORE:-}" ] && echo "$STORE" >> "$work/node.toml"
trap 'kill $node 2>/dev/null || true; wait 2>/dev/null || true; remove_node_data' EXIT
for size in ${SIZES:-65536 262144 1048576}; do
    start_node
    node_mbs=$($B run --target hotshard://127.0.0.1:$port --mix put --keys 500 --value-size $size \
        --connections 4 --pipeline 2 --stream --duration "$d" --quiet --allow-errors |
        awk '$1 ~ /^hotshard:/ {print $3, $8}')
    kill $node; wait $node 2>/dev/null || true; node=
    fio_mbs=$(fio --name=anchor --filename="$work/data/data.img" --rw=randwrite --bs=$size --iodepth=8 \
        --ioengine=io_uring --direct=1 --sync=dsync --runtime="${d%s}" --time_based --cpus_allowed=0 \
        --size=2G --output-format=terse --terse-version=3 | awk -F';' '{printf "%.1f", $48 * 1024 / 1e6}')
    read -r mbs errors <<< "$node_mbs"
    awk -v s=$size -v n="$mbs" -v f="$fio_mbs" -v e="$errors" 'BEGIN {
        printf "%d KiB: hotshard %.1f MB/s (%s error replies), fio randwrite QD 8 O_DSYNC %.1f MB/s, ratio %.2f (bar >= 0.8)\n",
            s / 1024, n, e, f, (f > 0 ? n / f : 0)}'
done
