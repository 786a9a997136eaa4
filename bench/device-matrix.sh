#!/usr/bin/env bash
# Reproduces the device table of BENCHMARKS.md: for a file on the disk and for a loop
# device on a file in /dev/shm, each workload runs under fio and under hotshard in the same
# invocation. Needs root (losetup) and fio. Usage: bench/device-matrix.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
cargo build --release -q -p hotshard-bench
bin=target/release/hotshard-bench

backing=/dev/shm/hotshard-matrix.img
truncate -s 2G "$backing"
loopdev=$(losetup -f --show --direct-io=on "$backing")
trap 'losetup -d "$loopdev"; rm -f "$backing"' EXIT
# Fill the loop device so reads move real bytes.
dd if=/dev/urandom of="$loopdev" bs=1M count=2048 oflag=direct status=none

for target in target/bench/bench.img "$loopdev"; do
    for run in "--op randread --qd 32" "--op randread --qd 1" "--op randwrite --qd 32" \
               "--op write --qd 32" "--op randread --qd 32 --backend dmafile" \
               "--op randread --qd 1 --backend dmafile"; do
        echo "### $target: $run"
        $bin device --path "$target" --size $((1 << 30)) --duration "$duration" --vs-fio $run
        echo
    done
done
