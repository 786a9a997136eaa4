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
print(f"round {sys.argv[1]} {sys.argv[2]:<7} fio {fio[\"iops\"]:>9.0f} IOPS {fio[\"cpu_us_per_op\"]:5.2f} us/op | ours {ours[\"iops\"]:>9.0f} IOPS {ours[\"cpu_us_per_op\"]:5.2f} us/op | ratio {ours[\"iops\"] / fio[\"iops\"]:.3f}")
' "$r" "$mode"
    done
done | tee /dev/stderr | awk '{ratio[$3] = ratio[$3] " " $NF} END {
    for (m in ratio) {
        n = split(substr(ratio[m], 2), v, " "); asort(v)
        printf "%s: median ratio %.3f of %d rounds (bar >= 0.95)\n", m, (n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2), n
    }}'
