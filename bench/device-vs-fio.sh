#!/usr/bin/env bash
# The device layer against fio (issue 18): 4 KiB randread at QD 32 on one core (core 0), on
# a 1 GiB file under target/, ROUNDS rounds (default 5), each round fio then ours back to
# back (`hotshard-bench device --vs-fio`), for each completion mode in MODES: "spin" (the
# default profile: poll the ring every turn while reads are in flight) and "wait:N" (block
# in io_uring_enter after N idle polls, as fio blocks for its completions). Prints every
# round's IOPS, CPU per read and ratio, and the median ratio per mode.
# Usage: bench/device-vs-fio.sh [DURATION] [ROUNDS]   (env MODES, default "spin wait:1")
set -euo pipefail
cd "$(dirname "$0")/.."
d=${1:-5s}
rounds=${2:-5}
modes=${MODES:-spin wait:1}
cargo build --release -q -p hotshard-bench
B=target/release/hotshard-bench
file=target/bench/device/randread.img
mkdir -p "$(dirname "$file")"
trap 'rm -f "$file"' EXIT
for r in $(seq "$rounds"); do
    for mode in $modes; do
        extra=()
        [[ $mode == wait:* ]] && extra=(--wait-after-idle-polls "${mode#wait:}")
        $B device --path "$file" --op randread --qd 32 --duration "$d" --cores 0 --vs-fio --json "${extra[@]}" |
            python3 -c '
import json, sys
rows = json.load(sys.stdin)
fio, ours = rows[0], rows[1]
print("round %s %-7s fio %9.0f IOPS %5.2f us/op | ours %9.0f IOPS %5.2f us/op | ratio %.3f" % (
    sys.argv[1], sys.argv[2], fio["iops"], fio["cpu_us_per_op"], ours["iops"], ours["cpu_us_per_op"],
    ours["iops"] / fio["iops"]))
' "$r" "$mode"
    done
done | tee /dev/stderr | python3 -c '
import sys, statistics
by_mode = {}
for line in sys.stdin:
    f = line.split()
    by_mode.setdefault(f[2], []).append(float(f[-1]))
for mode, r in by_mode.items():
    print("%s: median ratio %.3f of %d rounds (bar >= 0.95)" % (mode, statistics.median(r), len(r)))
'
